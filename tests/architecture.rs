//! The layout holds: no cycle among `src`'s top-level modules. A module's
//! dependencies are the `crate::NAME` paths written in its files (macros
//! such as `crate::warn!` are not modules and do not count).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn files(dir: &Path, module: Option<&str>, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let owner = module.map_or(name.clone(), str::to_string);
        if path.is_dir() {
            files(&path, Some(&owner), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((owner, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// Module → the modules it names.
fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(src, None, &mut all);
    let modules: BTreeSet<String> = all.iter().map(|(m, _)| m.clone()).collect();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &all {
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) && name != *module {
                deps.entry(module.clone()).or_default().insert(name);
            }
        }
    }
    deps
}

/// A cycle through `from`, if there is one: the modules along it.
fn cycle_from(deps: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut path = vec![from.to_string()];
    let mut seen = BTreeSet::new();
    fn walk(
        deps: &BTreeMap<String, BTreeSet<String>>,
        target: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let here = path.last().unwrap().clone();
        for next in deps.get(&here).into_iter().flatten() {
            if next == target {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(deps, target, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(deps, from, &mut path, &mut seen).then_some(path)
}

#[test]
fn no_module_cycles() {
    let deps = dependencies(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        deps.get("shard").is_some_and(|d| d.contains("topics")),
        "the scan sees the modules' paths: {deps:?}"
    );
    let cycles: Vec<String> = deps
        .keys()
        .filter_map(|m| cycle_from(&deps, m))
        .map(|c| c.join(" → "))
        .collect();
    assert!(cycles.is_empty(), "module cycles: {cycles:#?}");
}

#[test]
fn a_cycle_is_found() {
    let deps: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(m, d)| (m.to_string(), BTreeSet::from([d.to_string()])))
        .collect();
    assert_eq!(
        cycle_from(&deps, "a").unwrap(),
        ["a", "b", "c", "a"].map(String::from)
    );
}
