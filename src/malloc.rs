//! glibc's allocator, tuned at startup (docs/benchmarks.md, "Streaming
//! ingest", memory): by default glibc keeps up to 8 arenas per core, and a
//! write path that allocates a group on one thread and frees it on another
//! leaves freed memory spread over many arenas. Capping the arenas at one per
//! core (at least 2) halved the peak RssAnon of a 10M `_stream` ingest
//! (565 -> 270 MB) at the same rate. `MALLOC_ARENA_MAX` in the environment,
//! read by glibc itself, wins.

/// Caps glibc's malloc arenas; call before threads start. Does nothing on
/// other C libraries or when `MALLOC_ARENA_MAX` is set.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter; no memory is
        // touched, and no other thread runs yet.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
        if ok != 1 {
            eprintln!("fpnode: mallopt(M_ARENA_MAX, {arenas}) refused");
        }
    }
}
