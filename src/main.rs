//! The `llmvisor` command: parse the command line, hand over to the library.

fn main() -> std::process::ExitCode {
    llmvisor::cli::main()
}

// glibc malloc showed up at ~7% of llmvisor's CPU under load (malloc_consolidate
// included); mimalloc keeps per-thread free lists and is a well-kept drop-in.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
