#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time, starting
# from its checked-in corpus, fuzz/corpus/TARGET. The checked-in corpus is
# only read: what the fuzzer finds goes to a scratch directory, deleted after.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 30)
#
# A crash fails the run, naming the input that crashes
# (fuzz/artifacts/TARGET/crash-...) and the command that reproduces it.
# Needs the nightly toolchain (cargo-fuzz's sanitizers are nightly-only):
# without it this fails, or with CLUECAST_FUZZ_OPTIONAL=1 says SKIPPED.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

seconds=${1:-30}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
  exit 2
fi
cargo_fuzz_version=0.13.2
targets=(frame_decode token_verify path_block_decode handshake)
# Outside the clone, like the main build cache (.cargo/config.toml), and
# apart from it: nightly and the sanitizer flags build everything anew,
# RocksDB's C++ included (about 15 minutes on 2 cores, once).
export CARGO_TARGET_DIR=${CLUECAST_FUZZ_TARGET_DIR:-/var/tmp/cluecast-fuzz-target}

unavailable() {
  if [[ ${CLUECAST_FUZZ_OPTIONAL:-0} == 1 ]]; then
    echo "fuzz: SKIPPED: $1 (CLUECAST_FUZZ_OPTIONAL=1)"
    exit 0
  fi
  echo "fuzz: $1" >&2
  echo "fuzz: (CLUECAST_FUZZ_OPTIONAL=1 skips fuzzing instead)" >&2
  exit 1
}

if ! cargo +nightly --version >/dev/null 2>&1; then
  unavailable "the nightly toolchain is missing: rustup toolchain install nightly"
fi
if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $cargo_fuzz_version" ]]; then
  echo "fuzz: installing cargo-fuzz $cargo_fuzz_version (builds from source, under a minute)"
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --force --quiet ||
    unavailable "cannot install cargo-fuzz $cargo_fuzz_version"
fi

start=$SECONDS
warn_first_build "$CARGO_TARGET_DIR" x86_64-unknown-linux-gnu/release 15
cargo +nightly fuzz build
echo "fuzz: targets built in $((SECONDS - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  echo "fuzz: $target for ${seconds} s"
  # New inputs go to the first directory; the second is only read.
  # -timeout: an input taking 10 s is a hang (they take microseconds to
  # milliseconds).
  if ! cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 2>"$scratch/$target.log"; then
    tail -n 40 "$scratch/$target.log" >&2
    echo >&2
    grep -A 2 -E 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' \
      "$scratch/$target.log" | head -n 20 >&2 || true
    found=$(grep -o 'Test unit written to [^ ]*' "$scratch/$target.log" | tail -n 1 | cut -d' ' -f5 || true)
    echo >&2
    if [[ -n $found ]]; then
      found=$(realpath --relative-to=. "$found")
      echo "fuzz: $target FAILED on $found" >&2
      echo "fuzz: reproduce with: CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo +nightly fuzz run $target $found" >&2
    else
      echo "fuzz: $target FAILED without writing an input (log above)" >&2
    fi
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|Done )' \
    "$scratch/$target.log" || true
done
echo "fuzz: all ${#targets[@]} targets ran ${seconds} s each without a crash"
