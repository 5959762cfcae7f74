#!/usr/bin/env bash
# Installs what is missing and runs every check and test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/setup.sh
cargo fmt --all -- --check
warn_first_build "$(target_dir)" debug 10
# The test profile: clippy then shares `cargo test`'s build of RocksDB
# instead of compiling its C++ a second time.
cargo clippy --workspace --all-targets --profile test -- -D warnings
cargo test --workspace
# Every fuzz target for 20 s from its checked-in corpus (fuzz/). It needs
# the nightly toolchain, which a machine may not have: then it says SKIPPED.
CLUECAST_FUZZ_OPTIONAL=${CLUECAST_FUZZ_OPTIONAL:-1} scripts/fuzz.sh 20
