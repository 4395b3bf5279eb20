//! The `voltar` binary: everything lives in the library; see `cli::main`.

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt is called once, before any other thread exists.
    unsafe {
        // Streaming buffers (1 MiB chunks, multi-MiB S3 parts) are allocated and freed all the time. glibc raises
        // its mmap threshold dynamically after such frees and then serves them from per-thread arenas that never
        // shrink: measured +70 MiB peak RSS on an S3 upload. A fixed threshold keeps every large buffer mmapped and
        // returned to the OS when freed, so RSS tracks what is actually in flight.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    std::process::exit(voltar::cli::main());
}
