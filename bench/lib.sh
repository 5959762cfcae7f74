# shellcheck shell=bash
# Sourced by the bench scripts: builds the appliance and cluecast-bench
# (release) from the repository root and copies both binaries into a fresh
# private directory, $work, named after $1 (/tmp/cluecast-$1.XXXXXX).
# Private copies: the build cache is shared, and a rebuild by someone else
# during the run must not swap the binary under test. The caller removes
# $work (its EXIT trap).

# Makes $work; call it before setting the trap that removes it.
bench_workdir() {
  work=$(mktemp -d "/tmp/cluecast-$1.XXXXXX")
}

bench_build() {
  cargo build --release -p cluecast -p cluecast-bench
  bench_target_dir
}

# Sets $target_dir: where cargo builds (the shared cache).
bench_target_dir() {
  target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
}

# Copies the built binaries into $work.
bench_copy() {
  cp "$target_dir/release/cluecast" "$target_dir/release/cluecast-bench" "$work/"
}
