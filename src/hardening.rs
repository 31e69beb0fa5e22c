//! Process hardening for the daemon, which holds unwrapped keys in memory:
//! no core dumps, and memory locked so keys are not written to swap.
//!
//! Owns: the prctl/setrlimit/mlockall calls and their fallbacks.
//! Must never: fail a mount because the OS refuses a best-effort measure
//! (memory locking), or touch key material.

/// Makes the process non-dumpable (`PR_SET_DUMPABLE` 0: no core file, no
/// ptrace attach by other non-root processes, root-owned /proc entries)
/// and sets `RLIMIT_CORE` to 0. Both survive `fork`, so calling this before
/// daemonizing covers the daemon. Returns an error only if a call failed.
pub fn disable_core_dumps() -> std::io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether core dumps are off for this process (dumpable flag cleared).
pub fn core_dumps_disabled() -> bool {
    // SAFETY: prctl(PR_GET_DUMPABLE) takes no pointers.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 0 }
}

/// What [`lock_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLock {
    /// Every page of the process, now and later, is locked once touched.
    Locked,
    /// Not attempted: without root the locked-memory limit is small, and
    /// locking future allocations could make them fail.
    NotPermitted,
    /// The kernel refused (the errno).
    Refused(i32),
}

/// Locks the process's memory (`mlockall` with `MCL_CURRENT | MCL_FUTURE |
/// MCL_ONFAULT`: pages are locked as they are touched, so nothing is
/// pre-faulted) where that is safe: as root, or with an unlimited
/// `RLIMIT_MEMLOCK`. Memory locks do not survive `fork`: call it in the
/// process that serves. Best effort: the caller logs the outcome.
pub fn lock_memory() -> MemoryLock {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid out pointer; geteuid has no failure mode.
    let unlimited = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0
        && lim.rlim_cur == libc::RLIM_INFINITY;
    // SAFETY: as above.
    if !unlimited && unsafe { libc::geteuid() } != 0 {
        return MemoryLock::NotPermitted;
    }
    // SAFETY: mlockall takes flags only.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if r == 0 {
        MemoryLock::Locked
    } else {
        MemoryLock::Refused(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}
