//! How this build of the appliance was made, for the operator to see:
//! `--version`, the start-up line and `run --print-settings` name the global
//! allocator, so a benchmark result can be matched to its binary.

// The name is a macro so that `concat!` can put it into VERSION. The library
// may be built with any set of the `alloc-*` features (only src/main.rs
// insists on exactly one), so the cfgs are a first-match chain; with none of
// the other three, the binary keeps Rust's system allocator.
#[cfg(feature = "alloc-snmalloc")]
macro_rules! allocator_name {
    () => {
        "snmalloc"
    };
}
#[cfg(all(feature = "alloc-mimalloc", not(feature = "alloc-snmalloc")))]
macro_rules! allocator_name {
    () => {
        "mimalloc"
    };
}
#[cfg(all(
    feature = "alloc-jemalloc",
    not(any(feature = "alloc-snmalloc", feature = "alloc-mimalloc"))
))]
macro_rules! allocator_name {
    () => {
        "jemalloc"
    };
}
#[cfg(not(any(
    feature = "alloc-snmalloc",
    feature = "alloc-mimalloc",
    feature = "alloc-jemalloc"
)))]
macro_rules! allocator_name {
    () => {
        "system"
    };
}

/// The global allocator of the `cluecast` binary: "snmalloc", "mimalloc",
/// "jemalloc" or "system", after the crate's `alloc-*` feature.
pub const ALLOCATOR: &str = allocator_name!();

/// What `cluecast --version` prints after the name.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (allocator=",
    allocator_name!(),
    ")"
);
