#!/usr/bin/env bash
# Installs what is missing, builds a release binary and starts the appliance
# on its built-in defaults (127.0.0.1:7400). Extra arguments go to `run`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/setup.sh
target=$(target_dir)
warn_first_build "$target" release 16
cargo build --release --bin cluecast
exec "$target/release/cluecast" run "$@"
