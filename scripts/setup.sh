#!/usr/bin/env bash
# Installs what building and testing cluecast needs and is missing here.
#
# Each check looks for the exact file or program the build or a test uses
# (for bindgen: a libclang that clang-sys would load, never libclang-cpp)
# and prints one line: where it was found, or the package that supplies it.
# Safe to re-run; installs nothing when everything is present.
#
#   scripts/setup.sh           check, then install what is missing (as root)
#   scripts/setup.sh --check   check only: exit 1 when something is missing
#
# CLUECAST_SETUP_ROOT=DIR checks the tree under DIR instead of / (tests/setup.rs
# runs the checks against fake trees); with it set, nothing is installed.
set -euo pipefail
export LC_ALL=C

root=${CLUECAST_SETUP_ROOT:-}
root=${root%/}
check_only=0
case "${1:-}" in
  "") ;;
  --check) check_only=1 ;;
  *)
    echo "usage: scripts/setup.sh [--check]" >&2
    exit 2
    ;;
esac

# The first executable NAME in a PATH directory, or in the sbin directories
# Debian puts daemons in (not on an ordinary user's PATH).
find_program() {
  local dir
  local IFS=:
  for dir in $PATH /usr/local/sbin /usr/sbin /sbin; do
    [[ -n $dir && -f $root$dir/$1 && -x $root$dir/$1 ]] && { echo "$root$dir/$1"; return 0; }
  done
  return 1
}

# Whether FILE starts with a 64-bit ELF header, the one check clang-sys makes
# before it takes a file as libclang.
is_elf64() {
  local header
  IFS= read -r -N 5 header <"$1" 2>/dev/null && [[ $header == $'\x7fELF\x02' ]]
}

# The directories clang-sys 1.9 (bindgen's libclang loader, Cargo.lock) looks
# in, in its order: LIBCLANG_PATH alone when set; else `llvm-config --prefix`,
# LD_LIBRARY_PATH, LIBRARY_PATH, then fixed system patterns.
libclang_dirs() {
  if [[ -n ${LIBCLANG_PATH:-} ]]; then
    if [[ -f $root$LIBCLANG_PATH ]]; then dirname "$root$LIBCLANG_PATH"; else echo "$root$LIBCLANG_PATH"; fi
    return
  fi
  local llvm_config prefix dir pattern
  if llvm_config=$(find_program "${LLVM_CONFIG_PATH:-llvm-config}") &&
    prefix=$("$llvm_config" --prefix 2>/dev/null | head -n 1) && [[ -n $prefix ]]; then
    printf '%s\n' "$root$prefix/bin" "$root$prefix/lib" "$root$prefix/lib64"
  fi
  local IFS=:
  for dir in ${LD_LIBRARY_PATH:-} ${LIBRARY_PATH:-}; do
    [[ -n $dir ]] && echo "$root$dir"
  done
  IFS=$' \t\n'
  for pattern in '/usr/local/llvm*/lib*' '/usr/local/lib*/*/*' '/usr/local/lib*/*' \
    '/usr/local/lib*' '/usr/lib*/*/*' '/usr/lib*/*' '/usr/lib*'; do
    compgen -G "$root$pattern" || true
  done
}

# The libclang bindgen would load: clang-sys's file names (libclang.so,
# libclang-N.so, libclang.so.N, libclang-N.so.N) less libclang-cpp, which is
# Clang's C++ library and not the C API bindgen calls.
find_libclang() {
  local dir file
  while IFS= read -r dir; do
    [[ -d $dir ]] || continue
    for file in "$dir"/libclang.so "$dir"/libclang-*.so "$dir"/libclang.so.* "$dir"/libclang-*.so.*; do
      [[ -e $file && $(basename "$file") != *-cpp.* ]] || continue
      is_elf64 "$file" && { echo "$file"; return 0; }
    done
  done < <(libclang_dirs)
  return 1
}

missing=()
daemons=()
# check WHAT PACKAGE WHY FINDER [ARG]: one line per dependency.
check() {
  local what=$1 package=$2 why=$3 found
  if found=$("${@:4}"); then
    printf 'setup: %-16s found %s\n' "$what" "$found"
  else
    printf 'setup: %-16s missing (%s): package %s\n' "$what" "$why" "$package"
    missing+=("$package")
  fi
}

check cc gcc "the C code of zstd, ring, snmalloc" find_program cc
check c++ g++ "RocksDB's C++" find_program c++
check ar binutils "archives of the C and C++ objects" find_program ar
check libclang libclang-dev "bindgen, for RocksDB's C header" find_libclang
check systemd-analyze systemd "tests/systemd.rs checks the unit files" find_program systemd-analyze
check ip iproute2 "tests that make network namespaces" find_program ip
check taskset util-linux "tests that pin the appliance to a CPU" find_program taskset
for daemon in nats-server mosquitto; do
  before=${#missing[@]}
  check "$daemon" "$daemon" "the bench's adapter is tested against it" find_program "$daemon"
  ((${#missing[@]} > before)) && daemons+=("$daemon")
done
check cargo rustup "the Rust toolchain; install it with rustup" find_program cargo

if ((${#missing[@]} == 0)); then
  echo "setup: everything is present"
  exit 0
fi
if ((check_only)) || [[ -n $root ]]; then
  exit 1
fi
apt_packages=()
for package in "${missing[@]}"; do
  if [[ $package == rustup ]]; then
    echo "setup: no Rust toolchain (cargo) on PATH; install one with rustup (https://rustup.rs)" >&2
    exit 1
  fi
  apt_packages+=("$package")
done
if [[ $(id -u) -ne 0 ]]; then
  echo "setup: missing packages ${apt_packages[*]}; run as root or install them" >&2
  exit 1
fi
echo "setup: installing ${apt_packages[*]} (apt-get, about a minute)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
# Debian starts them as services; the tests start their own.
if [[ -d /run/systemd/system ]]; then
  for daemon in "${daemons[@]}"; do systemctl disable --now "$daemon" >/dev/null 2>&1 || true; done
fi
# What was installed must now be found, or the build would fail later and
# further from the cause.
exec "$0" --check
