//! The layout holds: no cycle among the top-level modules of `src` (the
//! appliance) or of `bench/src` (the load generator). A module's
//! dependencies are the `crate::NAME` paths written in its files (macros
//! such as `crate::warn!` are not modules and do not count). And the walk
//! in docs/ARCHITECTURE.md, "The path of one event", names only functions
//! and types that are where it says.

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

/// The cycles among the top-level modules under `dir`, each written out.
fn cycles(deps: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    deps.keys()
        .filter_map(|m| cycle_from(deps, m))
        .map(|c| c.join(" → "))
        .collect()
}

#[test]
fn no_module_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The appliance, and the load generator (its own crate, same rule).
    for (dir, module, uses) in [("src", "shard", "topics"), ("bench/src", "fanload", "wire")] {
        let deps = dependencies(&root.join(dir));
        assert!(
            deps.get(module).is_some_and(|d| d.contains(uses)),
            "the scan sees {dir}'s paths: {deps:?}"
        );
        let found = cycles(&deps);
        assert!(found.is_empty(), "module cycles in {dir}: {found:#?}");
    }
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

/// The `file::name` (or `file::Type::name`) references in the walk.
fn walk_references(doc: &str) -> Vec<(String, String)> {
    let start = doc
        .find("## The path of one event")
        .expect("the walk's heading");
    let walk = &doc[start..];
    let walk = &walk[..walk[3..].find("\n## ").map_or(walk.len(), |end| end + 3)];
    walk.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|code| {
            let (file, rest) = code.split_once("::")?;
            let name = rest.rsplit("::").next()?;
            let plain =
                |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (plain(file) && plain(name) && file != "file")
                .then(|| (file.to_string(), name.to_string()))
        })
        .collect()
}

/// Whether `text` defines `name`: a function, a type, or an enum variant.
fn defines(text: &str, name: &str) -> bool {
    [
        format!("fn {name}("),
        format!("fn {name}<"),
        format!("struct {name} "),
        format!("struct {name}<"),
        format!("enum {name} "),
        format!("enum {name}<"),
        format!("    {name} {{"),
        format!("    {name}("),
        format!("    {name},"),
    ]
    .iter()
    .any(|d| text.contains(d.as_str()))
}

#[test]
fn the_event_walk_names_what_is_there() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let references = walk_references(&doc);
    assert!(
        references.len() >= 20,
        "the walk's references: {references:?}"
    );
    let mut sources = Vec::new();
    files(&root.join("src"), None, &mut sources);
    let missing: Vec<String> = references
        .iter()
        .filter(|(scope, name)| {
            if scope.starts_with(char::is_uppercase) {
                // `Type::Variant`: in the file that defines the type.
                let enum_of = [format!("enum {scope} "), format!("enum {scope}<")];
                !sources.iter().any(|(_, text)| {
                    enum_of.iter().any(|e| text.contains(e.as_str())) && defines(text, name)
                })
            } else {
                // `file::name`: in src/shard/file.rs.
                let path = root.join("src/shard").join(format!("{scope}.rs"));
                !defines(&std::fs::read_to_string(path).unwrap_or_default(), name)
            }
        })
        .map(|(scope, name)| format!("{scope}::{name}"))
        .collect();
    assert!(
        missing.is_empty(),
        "the walk names what is not there: {missing:#?}"
    );
}

#[test]
fn a_renamed_function_is_caught() {
    let doc = "## The path of one event\n`net::on_recv` then `mesh::Mesh::gone`, `file::function`.\n## Next\n`net::later`";
    assert_eq!(
        walk_references(doc),
        [("net", "on_recv"), ("mesh", "gone")].map(|(f, n)| (f.to_string(), n.to_string()))
    );
}
