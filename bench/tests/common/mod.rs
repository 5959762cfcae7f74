//! What the tests that run the appliance share: where it is.

use std::path::PathBuf;

/// The appliance built alongside cluecast-bench, or why not.
pub fn appliance() -> Result<PathBuf, String> {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_cluecast-bench"));
    let path = bench.with_file_name("cluecast");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built: run `cargo test --workspace` or `cargo build -p cluecast`",
            path.display()
        ))
    }
}
