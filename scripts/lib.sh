# Sourced by run.sh, test.sh and fuzz.sh: what they share.

# The target directory cargo builds into here (.cargo/config.toml, unless
# CARGO_TARGET_DIR says otherwise).
target_dir() {
  cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

# warn_first_build TARGET_DIR PROFILE_DIR MINUTES: says, before a build that
# will compile RocksDB's C++ for the first time, that it takes minutes, so
# a newcomer does not take the silence for a hang.
warn_first_build() {
  local target=$1 profile=$2 minutes=$3
  if ! compgen -G "$target/$profile/build/librocksdb-sys-*/output" >/dev/null; then
    echo "build: first build in $target/$profile: RocksDB compiles from C++ source," \
      "about $minutes minutes on 2 cores (once; later builds reuse it)"
  fi
}
