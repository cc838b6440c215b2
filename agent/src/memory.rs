//! The agent's own memory: the allocator and what it hands back.
//!
//! Parsing and compiling a large policy allocates several times what the
//! agent keeps of it. With jemalloc (glibc builds) the pages freed after an
//! apply are purged, so that the agent's resident memory is what it holds:
//! the policy, its compiled form, the rule registry and each slot's
//! contents (`Agent::compact`). musl builds use
//! the system allocator and release nothing.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Copies `value` into fresh allocations and frees the original: what an
/// apply kept is then packed together instead of spread over the pages its
/// temporaries used, and those pages can go back to the kernel.
pub fn compact<T: Clone>(value: &mut T) {
    *value = value.clone();
}

/// Hands every free page of every arena back to the kernel.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // `arena.<MALLCTL_ARENAS_ALL>.purge`: a command without a value.
        const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
        // SAFETY: the name is NUL-terminated; the command reads and
        // writes no value, so every pointer is null.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            tracing::debug!(rc, "purging the allocator's free pages failed");
        }
    }
}

/// Bytes the program has allocated and not freed, when the allocator
/// counts them.
pub fn allocated() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        tikv_jemalloc_ctl::epoch::advance().ok()?;
        tikv_jemalloc_ctl::stats::allocated::read().ok().map(|b| b as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}
