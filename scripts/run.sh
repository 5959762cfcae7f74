#!/usr/bin/env bash
# Installs what is missing, builds a release binary and starts the appliance
# on its built-in defaults (127.0.0.1:7400). Extra arguments go to `run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bin cluecast
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "$target_dir/release/cluecast" run "$@"
