//! Who is asking: the uid, groups and command of the process behind a FUSE
//! request or a control connection, read from `/proc` and kept for a moment
//! so a busy process is not re-read per request.
//!
//! Owns: [`Caller`], the `/proc/PID/status` and `comm` readers, and the
//! short-lived cache of what they returned ([`Requesters`]).
//! Must never: decide anything (the decision is [`super::AccessControl`]'s),
//! or keep an entry past its time to live: a pid is reused.

use std::collections::HashMap;
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

/// What is known about one process, each part read when first needed.
#[derive(Clone)]
struct ProcInfo {
    at: Instant,
    comm: Option<Option<String>>,
    groups: Option<Vec<u32>>,
}

/// The command name of `pid` (`/proc/PID/comm`).
pub fn read_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// The supplementary groups of `pid` (`/proc/PID/status`).
pub fn read_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The command name and supplementary groups of `pid`.
pub fn read_proc(pid: u32) -> (Option<String>, Vec<u32>) {
    (read_comm(pid), read_groups(pid))
}

/// The requester cache of one mount: what `/proc` said about recent callers.
#[derive(Default)]
pub struct Requesters {
    procs: Mutex<HashMap<u32, ProcInfo>>,
}

impl Requesters {
    /// An empty cache.
    pub fn new() -> Self {
        Requesters::default()
    }

    /// The cached entry of `pid` with `fill` applied to it (which reads
    /// whatever part is still missing).
    fn proc_info(&self, pid: u32, fill: impl FnOnce(&mut ProcInfo)) -> ProcInfo {
        let mut info = match self.procs.lock().get(&pid) {
            Some(p) if p.at.elapsed() < PROC_TTL => p.clone(),
            _ => ProcInfo {
                at: Instant::now(),
                comm: None,
                groups: None,
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
        procs.insert(pid, info.clone());
        info
    }

    /// The audit principal of a caller.
    pub fn principal(&self, c: Caller) -> Principal {
        Principal {
            uid: c.uid,
            gid: c.gid,
            pid: c.pid,
            comm: if c.pid == 0 {
                None
            } else {
                self.proc_info(c.pid, |p| {
                    if p.comm.is_none() {
                        p.comm = Some(read_comm(c.pid));
                    }
                })
                .comm
                .flatten()
            },
        }
    }

    /// The caller's groups: primary and supplementary.
    pub fn groups(&self, c: Caller) -> Vec<u32> {
        let mut g = if c.pid == 0 {
            Vec::new()
        } else {
            self.proc_info(c.pid, |p| {
                if p.groups.is_none() {
                    p.groups = Some(read_groups(c.pid));
                }
            })
            .groups
            .unwrap_or_default()
        };
        g.push(c.gid);
        g
    }
}
