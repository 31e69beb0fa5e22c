//! Access policy at the FUSE edge: who is asking (uid, groups and command
//! of the requesting process), whether the mount owner's key policy lets
//! them (owner and root always; anyone else only through a live grant), and
//! the audit record of every key use and every denial.
//!
//! Owns: the caller identity cache (`/proc/PID/status` and `comm`, kept for
//! a moment so a busy process is not re-read per request), the decision
//! call into [`GrantStore`], and turning events into [`AuditRecord`]s.
//! Must never: allow a non-owner without a grant, report success for an
//! operation whose audit record could not be written (fail-closed), or log
//! a path (paths go only into the sealed audit log).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{Errno, Request};
use parking_lot::Mutex;

use crate::format::audit::{AuditRecord, Principal};
use crate::format::grants::{Access, GrantOp};
use crate::volume::audit::AuditLog;
use crate::volume::grants::{GrantStore, LiveGrant};

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

/// The key policy and audit trail of one mount.
pub struct Policy {
    owner_uid: u32,
    grants: Option<Arc<GrantStore>>,
    audit: Option<Arc<AuditLog>>,
    procs: Mutex<HashMap<u32, ProcInfo>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("owner_uid", &self.owner_uid)
            .field("audit", &self.audit.is_some())
            .finish_non_exhaustive()
    }
}

/// What an audited event is about.
pub struct Event<'a> {
    /// Operation name (docs/CONTROL.md §14).
    pub op: &'a str,
    /// Master key version used.
    pub key_version: Option<u32>,
    /// Plaintext path.
    pub path: Option<&'a [u8]>,
    /// Grant that allowed it.
    pub grant: Option<&'a str>,
    /// "ok", "denied" or "error".
    pub outcome: &'a str,
    /// What went wrong.
    pub error: Option<String>,
    /// Extra detail.
    pub detail: Option<String>,
}

impl<'a> Event<'a> {
    /// A successful `op` at `path`.
    pub fn ok(op: &'a str, path: Option<&'a [u8]>) -> Self {
        Event {
            op,
            key_version: None,
            path,
            grant: None,
            outcome: "ok",
            error: None,
            detail: None,
        }
    }
}

impl Policy {
    /// A policy for a mount owned by `owner_uid`, with its grants and audit log.
    pub fn new(
        owner_uid: u32,
        grants: Option<Arc<GrantStore>>,
        audit: Option<Arc<AuditLog>>,
    ) -> Self {
        Policy {
            owner_uid,
            grants,
            audit,
            procs: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `uid` holds the key policy (the mount owner or root).
    pub fn is_owner(&self, uid: u32) -> bool {
        uid == self.owner_uid || uid == 0
    }

    /// Whether key uses are recorded.
    pub fn audited(&self) -> bool {
        self.audit.is_some()
    }

    /// The audit log, if any.
    pub fn audit_log(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    /// The grant store, if any.
    pub fn grant_store(&self) -> Option<&Arc<GrantStore>> {
        self.grants.as_ref()
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
    fn groups(&self, c: Caller) -> Vec<u32> {
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

    /// Appends an audit record for `e` by `c`. Err means the operation must
    /// be refused (the record could not be written).
    pub fn record(&self, c: Caller, e: Event<'_>) -> Result<(), Errno> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        self.record_as(log, self.principal(c), e)
    }

    /// Like [`Policy::record`] for a principal that is not a FUSE caller.
    pub fn record_principal(&self, p: Principal, e: Event<'_>) -> Result<(), Errno> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        self.record_as(log, p, e)
    }

    fn record_as(&self, log: &AuditLog, principal: Principal, e: Event<'_>) -> Result<(), Errno> {
        let rec = AuditRecord {
            seq: 0,
            time_ms: 0,
            principal,
            op: e.op.to_string(),
            key_version: e.key_version,
            path: e.path.map(|p| String::from_utf8_lossy(p).into_owned()),
            grant: e.grant.map(str::to_string),
            outcome: e.outcome.to_string(),
            error: e.error,
            detail: e.detail,
        };
        log.append(rec).map(|_| ()).map_err(|err| {
            tracing::error!(
                op = e.op,
                "audit record not written, operation refused: {err}"
            );
            Errno::from_i32(err.errno())
        })
    }

    /// Checks that `c` may do `access` at the path `path()` yields (only
    /// computed for non-owners). `Ok(None)`: the owner; `Ok(Some(g))`:
    /// allowed by grant `g`; `Err(EACCES)`: denied, and the denial recorded
    /// as operation `op`.
    pub fn authorize(
        &self,
        c: Caller,
        path: impl FnOnce() -> Vec<u8>,
        access: Access,
        op: &str,
    ) -> Result<Option<Arc<LiveGrant>>, Errno> {
        if self.is_owner(c.uid) {
            return Ok(None);
        }
        let path = path();
        let granted = self.grants.as_ref().and_then(|g| {
            if g.is_empty() {
                None
            } else {
                g.decide(c.uid, &self.groups(c), &path, access)
            }
        });
        match granted {
            Some(g) => Ok(Some(g)),
            None => {
                crate::metrics::denied(crate::metrics::Denial::Grant);
                let what = match access {
                    Access::Lookup => "look up".to_string(),
                    Access::Op(o) => o.name().to_string(),
                };
                let _ = self.record(
                    c,
                    Event {
                        outcome: "denied",
                        error: Some(format!("no live grant allows {what} here")),
                        ..Event::ok(op, Some(&path))
                    },
                );
                Err(Errno::EACCES)
            }
        }
    }

    /// Checks a handle opened through grant `g` before each use; a revoked
    /// or expired grant refuses (and records) the request.
    pub fn check_handle(
        &self,
        c: Caller,
        g: &LiveGrant,
        op: &str,
        path: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), Errno> {
        if g.usable(crate::keyring::now_secs()) {
            return Ok(());
        }
        crate::metrics::denied(crate::metrics::Denial::Grant);
        let path = path();
        let _ = self.record(
            c,
            Event {
                grant: Some(&g.id),
                outcome: "denied",
                error: Some("grant revoked, retired or expired".into()),
                ..Event::ok(op, Some(&path))
            },
        );
        Err(Errno::EACCES)
    }
}

/// A grant operation as an [`Access`].
pub fn op(o: GrantOp) -> Access {
    Access::Op(o)
}
