// The original system chose snmalloc for its tail latency; cluecast keeps it.
#[global_allocator]
static ALLOCATOR: snmalloc_rs::SnMalloc = snmalloc_rs::SnMalloc;

fn main() -> std::process::ExitCode {
    cluecast::cli::main()
}
