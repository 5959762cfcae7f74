//! scripts/setup.sh finds exactly what the build and the tests use.
//!
//! Its checks run against fake trees (`CLUECAST_SETUP_ROOT`): for each
//! dependency a tree with everything but it, and for libclang the trees
//! that fooled the old glob (only libclang-cpp, a 32-bit or non-ELF file, a
//! dangling link). Then, as root, setup runs for real in a private mount
//! namespace over this machine's own /usr, with a dependency's files hidden
//! under an overlay and a stub apt-get first on PATH: it must ask for the
//! package that has them.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::TempDir;

const SETUP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup.sh");
/// The PATH the checks search in the fake trees.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every dependency setup checks: its name in setup's output, where the
/// fake tree has it, and the Debian package setup installs for it.
const DEPENDENCIES: &[(&str, &str, &str)] = &[
    ("cc", "/usr/bin/cc", "gcc"),
    ("c++", "/usr/bin/c++", "g++"),
    ("ar", "/usr/bin/ar", "binutils"),
    (
        "libclang",
        "/usr/lib/x86_64-linux-gnu/libclang-14.so.1",
        "libclang-dev",
    ),
    ("systemd-analyze", "/usr/bin/systemd-analyze", "systemd"),
    ("ip", "/usr/sbin/ip", "iproute2"),
    ("taskset", "/usr/bin/taskset", "util-linux"),
    // Debian puts daemons in /usr/sbin, off an ordinary user's PATH.
    ("nats-server", "/usr/sbin/nats-server", "nats-server"),
    ("mosquitto", "/usr/sbin/mosquitto", "mosquitto"),
    ("cargo", "/usr/local/bin/cargo", "rustup"),
];

/// The first bytes of a 64-bit ELF file, all clang-sys reads of one.
const ELF64: &[u8] = b"\x7fELF\x02\x01\x01\0";

/// A fake root holding what `files` name: programs are executable, .so
/// files start with a 64-bit ELF header.
fn tree(files: &[&str]) -> TempDir {
    let root = TempDir::new("setup-root");
    for file in files {
        let path = root.0.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if file.contains(".so") {
            std::fs::write(&path, ELF64).unwrap();
        } else {
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    root
}

fn everything_but(left_out: &str) -> Vec<&'static str> {
    DEPENDENCIES
        .iter()
        .filter(|(name, _, _)| *name != left_out)
        .map(|(_, path, _)| *path)
        .collect()
}

/// `setup.sh --check` against `root`, with `env` added.
fn check(root: &Path, env: &[(&str, &str)]) -> Output {
    Command::new("bash")
        .args([SETUP, "--check"])
        .env_clear()
        .env("PATH", PATH)
        .env("CLUECAST_SETUP_ROOT", root)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// What setup said of one dependency: `Ok(path)` or `Err(package)`.
fn verdict(output: &Output, name: &str) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let prefix = format!("setup: {name:<16} ");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{stdout}"));
    let rest = &line[prefix.len()..];
    if let Some(path) = rest.strip_prefix("found ") {
        return Ok(path.to_string());
    }
    let package = rest
        .split("package ")
        .nth(1)
        .unwrap_or_else(|| panic!("neither found nor missing: {line}"));
    Err(package.to_string())
}

fn libclang_verdict(root: &TempDir, env: &[(&str, &str)]) -> Result<String, String> {
    verdict(&check(&root.0, env), "libclang")
}

#[test]
fn each_dependency_is_found_where_the_build_looks_and_installed_when_missing() {
    let root = tree(&everything_but(""));
    let all = check(&root.0, &[]);
    assert_eq!(
        all.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&all.stdout)
    );
    for (name, path, _) in DEPENDENCIES {
        assert_eq!(
            verdict(&all, name),
            Ok(format!("{}{path}", root.path_str()))
        );
    }
    for (name, _, package) in DEPENDENCIES {
        let root = tree(&everything_but(name));
        let output = check(&root.0, &[]);
        assert_eq!(output.status.code(), Some(1), "{name} missing");
        assert_eq!(verdict(&output, name), Err(package.to_string()));
        let missing = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.contains(" missing "))
            .count();
        assert_eq!(missing, 1, "only {name} is missing");
    }
}

#[test]
fn libclang_is_what_clang_sys_would_load_and_never_libclang_cpp() {
    let arch = "/usr/lib/x86_64-linux-gnu";
    let missing = Err("libclang-dev".to_string());
    // The image this machine came with: Clang's C++ library only.
    let cpp_only = tree(&[&format!("{arch}/libclang-cpp.so.14")]);
    assert_eq!(libclang_verdict(&cpp_only, &[]), missing);
    assert_eq!(libclang_verdict(&tree(&[]), &[]), missing);
    // What libclang1-14 installs, and the other names clang-sys accepts.
    for file in [
        format!("{arch}/libclang-14.so.1"),
        "/usr/lib/llvm-14/lib/libclang.so.1".to_string(),
        "/usr/lib/llvm-16/lib/libclang.so".to_string(),
        "/usr/local/lib/libclang-17.so".to_string(),
    ] {
        let root = tree(&[&format!("{arch}/libclang-cpp.so.14"), &file]);
        assert_eq!(
            libclang_verdict(&root, &[]),
            Ok(format!("{}{file}", root.path_str()))
        );
    }
    // Not a library clang-sys would take: a 32-bit ELF, a linker script, a
    // link to nothing, a name it does not match.
    let odd = tree(&[]);
    let dir = odd.0.join(arch.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("libclang-14.so.1"), b"\x7fELF\x01\x01\x01\0").unwrap();
    std::fs::write(dir.join("libclang.so"), b"INPUT(libclang-14.so.1)\n").unwrap();
    symlink(dir.join("libclang-15.so.1"), dir.join("libclang.so.1")).unwrap();
    std::fs::write(dir.join("clang.so"), ELF64).unwrap();
    assert_eq!(libclang_verdict(&odd, &[]), missing);
}

#[test]
fn libclang_follows_clang_sys_search_order_settings() {
    let root = tree(&[
        "/opt/llvm/lib/libclang.so",
        "/usr/lib/llvm-14/lib/libclang.so.1",
    ]);
    let base = root.path_str();
    // LIBCLANG_PATH alone is searched when set, as clang-sys does.
    assert_eq!(
        libclang_verdict(&root, &[("LIBCLANG_PATH", "/opt/llvm/lib")]),
        Ok(format!("{base}/opt/llvm/lib/libclang.so"))
    );
    assert_eq!(
        libclang_verdict(&root, &[("LIBCLANG_PATH", "/opt/none")]),
        Err("libclang-dev".to_string())
    );
    // llvm-config --prefix names a directory outside the usual patterns.
    let only_opt = tree(&["/opt/llvm/lib/libclang.so"]);
    assert_eq!(
        libclang_verdict(&only_opt, &[]),
        Err("libclang-dev".to_string())
    );
    let llvm_config = only_opt.0.join("usr/bin/llvm-config");
    std::fs::create_dir_all(llvm_config.parent().unwrap()).unwrap();
    std::fs::write(&llvm_config, "#!/bin/sh\necho /opt/llvm\n").unwrap();
    std::fs::set_permissions(&llvm_config, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        libclang_verdict(&only_opt, &[]),
        Ok(format!("{}/opt/llvm/lib/libclang.so", only_opt.path_str()))
    );
}

#[test]
fn a_wrong_argument_is_refused() {
    let output = Command::new("bash")
        .args([SETUP, "--fix"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage"));
}

// ---- this machine, with a dependency hidden -------------------------------

/// Runs setup.sh for real in a private mount namespace in which `hide`'s
/// files are deleted from an overlay over their directory, with a stub
/// apt-get that records what it is asked to install. Returns setup's
/// output and the recorded request, or None when this host cannot (not
/// root, no unshare or overlayfs).
fn setup_with_hidden(hide: &[&str]) -> Option<(Output, String)> {
    let scratch = TempDir::new("setup-hidden");
    let stub_dir = scratch.0.join("stub");
    std::fs::create_dir(&stub_dir).unwrap();
    let asked = scratch.0.join("asked");
    let stub = stub_dir.join("apt-get");
    std::fs::write(
        &stub,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", asked.display()),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dirs: std::collections::BTreeSet<PathBuf> = hide
        .iter()
        .map(|f| Path::new(f).parent().unwrap().to_path_buf())
        .collect();
    let mut script = String::from("set -e\n");
    for (i, dir) in dirs.iter().enumerate() {
        let layer = scratch.0.join(format!("layer{i}"));
        script += &format!(
            "mkdir -p {l}/upper {l}/work\nmount -t overlay overlay -o \
             lowerdir={d},upperdir={l}/upper,workdir={l}/work {d}\n",
            l = layer.display(),
            d = dir.display()
        );
    }
    for file in hide {
        script += &format!("rm -f {file}\n");
    }
    script += &format!("PATH={}:$PATH exec bash {SETUP}\n", stub_dir.display());
    let output = in_private_mounts(&script)?;
    let asked = std::fs::read_to_string(&asked).unwrap_or_default();
    Some((output, asked))
}

/// Runs `script` in a private mount namespace; None (and why, printed)
/// when this host cannot give one with overlayfs.
fn in_private_mounts(script: &str) -> Option<Output> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root for a private mount namespace");
        return None;
    }
    let probe = TempDir::new("overlay-probe");
    let p = probe.path_str();
    let probe_script = format!(
        "mkdir {p}/l {p}/u {p}/w {p}/m && mount -t overlay overlay \
         -o lowerdir={p}/l,upperdir={p}/u,workdir={p}/w {p}/m"
    );
    let unshare = |script: &str| {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .output()
    };
    match unshare(&probe_script) {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr);
            eprintln!("SKIPPED: no private mount namespace with overlayfs: {why}");
            return None;
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot run unshare: {e}");
            return None;
        }
    }
    Some(unshare(script).unwrap())
}

/// The files under /usr/lib clang-sys would take as libclang (not
/// libclang-cpp), found the way setup finds them.
fn libclang_files() -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::from("/usr/lib")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_dir()) && dir.components().count() < 5 {
                dirs.push(path);
            } else if name.starts_with("libclang")
                && name.contains(".so")
                && !name.contains("-cpp")
                && (name.starts_with("libclang.") || name.starts_with("libclang-"))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn on_this_machine_setup_asks_apt_for_each_hidden_dependency() {
    let Some((output, asked)) = setup_with_hidden(&[]) else {
        return;
    };
    assert!(
        output.status.success() && asked.is_empty(),
        "with nothing hidden, nothing is installed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        asked
    );
    // Every copy setup could find (iproute2 has /usr/bin/ip and /usr/sbin/ip).
    let copies = |program: &str| -> Vec<String> {
        ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"]
            .iter()
            .map(|dir| format!("{dir}/{program}"))
            .filter(|path| Path::new(path).exists())
            .collect()
    };
    let libclang = libclang_files();
    assert!(!libclang.is_empty(), "setup ran, so libclang is installed");
    let mut cases: Vec<(Vec<String>, &str)> = vec![(libclang, "libclang-dev")];
    for (program, package) in [
        ("systemd-analyze", "systemd"),
        ("nats-server", "nats-server"),
        ("mosquitto", "mosquitto"),
        ("ip", "iproute2"),
    ] {
        cases.push((copies(program), package));
    }
    for (files, package) in cases {
        let hide: Vec<&str> = files.iter().map(String::as_str).collect();
        let (output, asked) = setup_with_hidden(&hide).expect("ran once already");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            asked.contains("install") && asked.split_whitespace().any(|w| w == package),
            "hiding {files:?}: apt-get was asked {asked:?}; setup said:\n{stdout}"
        );
        // The stub installed nothing: setup's check afterwards says so.
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(&format!("package {package}")), "{stdout}");
    }
}
