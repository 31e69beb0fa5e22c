//! Who is asking: the uid, groups and command of the process behind a FUSE
//! request or a control connection, read from `/proc` and kept for a moment
//! so a busy process is not re-read per request.
//!
//! Owns: [`Caller`], the `/proc/PID/status`, `stat` and `comm` readers,
//! and the short-lived cache of command names ([`Requesters`]; groups are
//! read fresh for every decision), keyed by (pid, process start time,
//! uid), with recent callers' `/proc/PID/stat` kept open.
//! Must never: decide anything (the decision is [`super::AccessControl`]'s),
//! keep an entry past its time to live, or give one process what was read
//! about another that had its pid.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::Request;
use parking_lot::Mutex;

use crate::format::audit::Principal;

/// How long a process's command name and groups are reused.
const PROC_TTL: Duration = Duration::from_secs(2);
const PROC_CACHE_MAX: usize = 4096;

/// The requester of one FUSE request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Process id.
    pub pid: u32,
}

impl Caller {
    /// The caller of a FUSE request.
    pub fn of(req: &Request) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        }
    }
}

/// Which process an entry is about: a pid alone is reused, so the entry
/// is keyed by the pid, the process's start time (clock ticks after boot,
/// `/proc/PID/stat` field 22) and the uid that asked: a new process that
/// got the pid of an old one never inherits the old one's groups (and so
/// its `gid:` grants), even within the time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ProcKey {
    pid: u32,
    start: u64,
    uid: u32,
}

/// What is known about one process, each part read when first needed.
#[derive(Clone)]
struct ProcInfo {
    at: Instant,
    comm: Option<Option<String>>,
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`, after
/// the command name in parentheses, which may itself hold spaces and ')').
/// Asked on every audited request: one `read` into a stack buffer (the line
/// is a few hundred bytes) instead of `std::fs::read`'s size probe and
/// growing reads; a line that does not fit is read whole.
pub fn read_start_time(pid: u32) -> Option<u64> {
    let f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    start_time_through(&f)
}

/// The start time of the process whose `/proc/PID/stat` is open as `f`
/// (read again from offset 0). An open `/proc/PID/stat` stays bound to the
/// process it was opened for: once that process is gone (reaped), reading
/// it fails (ESRCH) even if another process has the pid by then, so `None`
/// here means the process is gone, never "the pid's new owner".
fn start_time_through(f: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 2048];
    let n = f.read_at(&mut buf, 0).ok()?;
    if n < buf.len() {
        return start_time_of(&buf[..n]);
    }
    // A line that does not fit (a very long command name): read it whole.
    let mut all = Vec::with_capacity(2 * buf.len());
    let mut at = 0;
    loop {
        let n = f.read_at(&mut buf, at).ok()?;
        if n == 0 {
            return start_time_of(&all);
        }
        all.extend_from_slice(&buf[..n]);
        at += n as u64;
    }
}

/// Field 22 of a `/proc/PID/stat` line.
fn start_time_of(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // After ") ": field 3 (state) is the first; field 22 is the 20th.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// The filesystem uid of `pid` (the fourth number of `Uid:` in
/// `/proc/PID/status`): the uid a FUSE request carries.
fn fs_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// The command name of `pid` (`/proc/PID/comm`).
pub fn read_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

fn groups_of(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The supplementary groups of `pid` (`/proc/PID/status`).
pub fn read_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| groups_of(&s))
        .unwrap_or_default()
}

/// The supplementary groups of the process `pid` that started at `start`
/// and runs as (filesystem) `uid`; empty if `pid` is now another process,
/// or of another user.
pub fn read_groups_of(pid: u32, start: u64, uid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    // Read between two looks at the start time: the status is this
    // process's only if the pid did not change hands in between.
    if fs_uid(&status) != Some(uid) || read_start_time(pid) != Some(start) {
        return Vec::new();
    }
    groups_of(&status)
}

/// The command name and supplementary groups of `pid`.
pub fn read_proc(pid: u32) -> (Option<String>, Vec<u32>) {
    (read_comm(pid), read_groups(pid))
}

/// How many callers' `/proc/PID/stat` files are kept open.
const STAT_FILES_MAX: usize = 64;

/// The requester cache of one mount: what `/proc` said about recent callers.
#[derive(Default)]
pub struct Requesters {
    procs: Mutex<HashMap<ProcKey, ProcInfo>>,
    /// `/proc/PID/stat` of recent callers, kept open: the start time of
    /// every audited request is one `pread` on it instead of an `openat`,
    /// a `read` and a `close`, and it tells a reused pid apart exactly
    /// (see [`start_time_through`]), not only by a start time of 10 ms
    /// resolution.
    stat_files: Mutex<HashMap<u32, Arc<std::fs::File>>>,
}

impl Requesters {
    /// An empty cache.
    pub fn new() -> Self {
        Requesters::default()
    }

    /// The cached entry of `key` with `fill` applied to it (which reads
    /// whatever part is still missing).
    fn proc_info(&self, key: ProcKey, fill: impl FnOnce(&mut ProcInfo)) -> ProcInfo {
        let mut info = match self.procs.lock().get(&key) {
            Some(p) if p.at.elapsed() < PROC_TTL => p.clone(),
            _ => ProcInfo {
                at: Instant::now(),
                comm: None,
            },
        };
        fill(&mut info);
        let mut procs = self.procs.lock();
        if procs.len() >= PROC_CACHE_MAX {
            procs.retain(|_, p| p.at.elapsed() < PROC_TTL);
            if procs.len() >= PROC_CACHE_MAX {
                procs.clear();
            }
        }
        procs.insert(key, info.clone());
        info
    }

    /// The key of a caller's process, if it still runs.
    fn key(&self, c: Caller) -> Option<ProcKey> {
        (c.pid != 0).then_some(())?;
        Some(ProcKey {
            pid: c.pid,
            start: self.start_time(c.pid)?,
            uid: c.uid,
        })
    }

    /// The start time of the process that has `pid` now, through its kept
    /// `/proc/PID/stat` (opened and kept on first use). When the kept file
    /// says its process is gone, whatever was cached about that pid goes
    /// with it, and the pid's current owner (if any) is read afresh.
    fn start_time(&self, pid: u32) -> Option<u64> {
        let kept = self.stat_files.lock().get(&pid).cloned();
        if let Some(f) = kept {
            if let Some(t) = start_time_through(&f) {
                return Some(t);
            }
            self.stat_files.lock().remove(&pid);
            self.procs.lock().retain(|k, _| k.pid != pid);
        }
        let f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
        let t = start_time_through(&f)?;
        let mut files = self.stat_files.lock();
        if files.len() >= STAT_FILES_MAX {
            files.clear();
        }
        files.insert(pid, Arc::new(f));
        Some(t)
    }

    /// The audit principal of a caller.
    pub fn principal(&self, c: Caller) -> Principal {
        Principal {
            uid: c.uid,
            gid: c.gid,
            pid: c.pid,
            comm: self.key(c).and_then(|k| {
                self.proc_info(k, |p| {
                    if p.comm.is_none() {
                        p.comm = Some(read_comm(c.pid));
                    }
                })
                .comm
                .flatten()
            }),
        }
    }

    /// The caller's groups: primary and supplementary (the supplementary
    /// ones only while the process that made the request still holds its
    /// pid). Read from `/proc` on every call, never cached: the start time
    /// has a 10 ms resolution, so a process that reuses a pid within the
    /// same tick would otherwise inherit the old one's `gid:` grants
    /// (tests/local_users.rs, `a_reused_pid_does_not_inherit_a_gid_grant`).
    pub fn groups(&self, c: Caller) -> Vec<u32> {
        let mut g = match self.key(c) {
            None => Vec::new(),
            Some(k) => read_groups_of(k.pid, k.start, k.uid),
        };
        g.push(c.gid);
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_after_a_command_name_with_parentheses_and_spaces() {
        let line = b"42 (a) b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0\n";
        assert_eq!(start_time_of(line), Some(987654));
        assert_eq!(start_time_of(b"42 (no end"), None);
        assert_eq!(start_time_of(b"42 (x) S 1 2"), None);
    }

    #[test]
    fn start_time_and_uid_of_this_process() {
        let me = std::process::id();
        let t = read_start_time(me).unwrap();
        assert!(t > 0);
        assert_eq!(read_start_time(me), Some(t));
        // SAFETY: getuid has no failure mode.
        let uid = unsafe { libc::getuid() };
        let status = std::fs::read_to_string(format!("/proc/{me}/status")).unwrap();
        assert_eq!(fs_uid(&status), Some(uid));
        assert_eq!(read_groups_of(me, t, uid), read_groups(me));
        // Another start time (a reused pid) or another uid: no groups.
        assert!(read_groups_of(me, t + 1, uid).is_empty());
        assert!(read_groups_of(me, t, uid + 1).is_empty());
    }

    #[test]
    fn a_kept_stat_file_of_a_gone_process_is_never_taken_for_the_pids_new_owner() {
        let r = Requesters::new();
        let me = std::process::id();
        // SAFETY: getuid/getgid have no failure mode.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let c = Caller { uid, gid, pid: me };
        let mine = r.key(c).unwrap().start;
        // A child's /proc/PID/stat, kept open past its end: reading it fails.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = std::fs::File::open(format!("/proc/{}/stat", child.id())).unwrap();
        assert!(start_time_through(&gone).is_some());
        child.wait().unwrap();
        assert_eq!(start_time_through(&gone), None);
        // Kept as if it were this pid's earlier owner's, with a comm cached
        // for that owner: this process gets its own start time and name.
        r.stat_files.lock().insert(me, Arc::new(gone));
        r.procs.lock().insert(
            ProcKey {
                pid: me,
                start: mine,
                uid,
            },
            ProcInfo {
                at: Instant::now(),
                comm: Some(Some("old".into())),
            },
        );
        assert_eq!(r.key(c).unwrap().start, mine);
        assert_ne!(r.principal(c).comm.as_deref(), Some("old"));
        assert_eq!(r.principal(c).comm, read_comm(me));
        // From then on through this process's own kept file.
        let kept = r.stat_files.lock().get(&me).cloned().unwrap();
        assert_eq!(start_time_through(&kept), Some(mine));
    }

    #[test]
    fn a_reused_pid_does_not_inherit_groups() {
        let r = Requesters::new();
        let me = std::process::id();
        // SAFETY: getuid/getgid have no failure mode.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let c = Caller { uid, gid, pid: me };
        let key = r.key(c).unwrap();
        // A cached entry of an earlier process with this pid (another start
        // time): its name is never used for this one, and groups are
        // never cached at all.
        r.procs.lock().insert(
            ProcKey {
                start: key.start.wrapping_sub(1),
                ..key
            },
            ProcInfo {
                at: Instant::now(),
                comm: Some(Some("old".into())),
            },
        );
        assert!(!r.groups(c).contains(&4242));
        assert_ne!(r.principal(c).comm.as_deref(), Some("old"));
        // Nor does a request of another uid with the same pid.
        let other = Caller {
            uid: uid + 1,
            gid,
            pid: me,
        };
        assert!(r.groups(other).iter().all(|g| *g == gid));
    }
}
