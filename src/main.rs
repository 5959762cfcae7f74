// The global allocator is chosen by exactly one `alloc-*` feature, so a
// benchmark can compare builds of the same appliance. snmalloc is the
// default: the original system chose it for its tail latency.
#[cfg(not(any(
    feature = "alloc-snmalloc",
    feature = "alloc-mimalloc",
    feature = "alloc-jemalloc",
    feature = "alloc-system"
)))]
compile_error!(
    "no allocator chosen: enable exactly one of the features alloc-snmalloc (the default), \
     alloc-mimalloc, alloc-jemalloc, alloc-system"
);
#[cfg(any(
    all(
        feature = "alloc-snmalloc",
        any(
            feature = "alloc-mimalloc",
            feature = "alloc-jemalloc",
            feature = "alloc-system"
        )
    ),
    all(
        feature = "alloc-mimalloc",
        any(feature = "alloc-jemalloc", feature = "alloc-system")
    ),
    all(feature = "alloc-jemalloc", feature = "alloc-system")
))]
compile_error!(
    "more than one allocator feature is enabled; alloc-snmalloc is on by default, so build \
     another with `--no-default-features --features alloc-<name>` (mimalloc, jemalloc, system)"
);

#[cfg(feature = "alloc-snmalloc")]
#[global_allocator]
static SNMALLOC: snmalloc_rs::SnMalloc = snmalloc_rs::SnMalloc;

#[cfg(feature = "alloc-mimalloc")]
#[global_allocator]
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "alloc-jemalloc")]
#[global_allocator]
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// alloc-system: no #[global_allocator], so Rust's System (libc malloc).

fn main() -> std::process::ExitCode {
    cluecast::cli::main()
}
