//! Keeping the resident set small on boards with little memory (glibc only).
//!
//! glibc gives each thread that allocates its own arena and keeps freed memory in it. The
//! daemon's short bursts (verifying and unpacking a bundle on blocking threads) would leave
//! megabytes resident for nothing, so the number of arenas is capped at start and the heap is
//! trimmed after each install or rollback.

/// Caps malloc arenas at two; call once at start, before any thread is spawned.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes two plain integers and only changes allocator tuning; it is
    // called before the runtime spawns threads, so no allocation races with the change, and
    // M_ARENA_MAX is a parameter glibc documents for exactly this use.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns free heap memory to the OS.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes a plain integer (the padding to keep) and only releases
    // memory that is free; glibc serialises it with every arena's lock, so it is safe to call
    // from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
