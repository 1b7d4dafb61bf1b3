//! Entry point: parse the command line, run the command, map errors to exit codes
//! (0 ok, 1 runtime failure, 2 bad config or usage).

use std::process::ExitCode;

/// The static musl build allocates through dlmalloc, not musl's mallocng: mallocng unmaps a
/// group of slots as soon as its last allocation is freed and maps it again for the next
/// burst, so the idle daemon's once-a-second work (rounds, `state.json`) cost an `mmap` and a
/// `munmap` each time (a fifth of the event loop's CPU). dlmalloc keeps freed memory for reuse.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() -> ExitCode {
    multiwan::cli::main()
}
