//! The binary names the global allocator it was built with, so benchmark
//! results can be told apart (see bench/build-allocators.sh).

use std::process::Command;

use cluecast::build_info::ALLOCATOR;

const BIN: &str = env!("CARGO_BIN_EXE_cluecast");

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn print_settings_and_version_name_the_allocator() {
    // Integration tests see the package's features: snmalloc by default.
    if cfg!(feature = "alloc-snmalloc") {
        assert_eq!(ALLOCATOR, "snmalloc");
    }
    let settings = stdout_of(&["run", "--print-settings"]);
    let line = settings
        .lines()
        .find(|l| l.contains("allocator"))
        .unwrap_or_else(|| panic!("no allocator line in:\n{settings}"));
    assert_eq!(line, format!("# allocator: {ALLOCATOR}"));
    // A comment, so the output is still a valid --config file.
    settings.parse::<toml::Table>().unwrap();

    let version = stdout_of(&["--version"]);
    assert!(
        version.contains(&format!("allocator={ALLOCATOR}")),
        "{version}"
    );
}
