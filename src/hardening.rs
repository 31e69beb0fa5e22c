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
    /// Not attempted: without `CAP_IPC_LOCK` and with a finite
    /// `RLIMIT_MEMLOCK` (the value, in bytes), locking future allocations
    /// would make them fail once the limit is reached.
    NotPermitted(u64),
    /// The kernel refused (the errno).
    Refused(i32),
}

impl std::fmt::Display for MemoryLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryLock::Locked => f.write_str("memory locked"),
            MemoryLock::NotPermitted(limit) => write!(
                f,
                "memory not locked (keys could reach swap): no CAP_IPC_LOCK and \
                 RLIMIT_MEMLOCK is {limit} bytes; give the daemon CAP_IPC_LOCK or \
                 an unlimited memlock limit (systemd: LimitMEMLOCK=infinity)"
            ),
            MemoryLock::Refused(e) => write!(
                f,
                "memory not locked (keys could reach swap): mlockall: {}",
                std::io::Error::from_raw_os_error(*e)
            ),
        }
    }
}

/// `CAP_IPC_LOCK`'s bit in the capability sets.
const CAP_IPC_LOCK: u32 = 14;

/// Whether `CAP_IPC_LOCK` is in this process's effective set (from
/// /proc/self/status: the euid says nothing once a service manager has
/// trimmed the bounding set).
pub fn has_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Locks the process's memory (`mlockall` with `MCL_CURRENT | MCL_FUTURE |
/// MCL_ONFAULT`: pages are locked as they are touched, so nothing is
/// pre-faulted) where that is safe: with `CAP_IPC_LOCK` in the effective
/// set, or with an unlimited `RLIMIT_MEMLOCK` (not by the euid: root
/// under a unit without the capability has the default 8 MiB limit, and
/// every allocation past it would fail). Memory locks do not survive
/// `fork`: call it in the process that serves. Best effort: the caller
/// logs the outcome (its `Display` says what to change).
pub fn lock_memory() -> MemoryLock {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid out pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0;
    let unlimited = ok && lim.rlim_cur == libc::RLIM_INFINITY;
    if !unlimited && !has_ipc_lock() {
        return MemoryLock::NotPermitted(lim.rlim_cur);
    }
    // SAFETY: mlockall takes flags only.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if r == 0 {
        MemoryLock::Locked
    } else {
        MemoryLock::Refused(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}
