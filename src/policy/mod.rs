//! Access control of a mount: who may use the volume's keys (the mount
//! owner and root always; anyone else only through a live grant), and the
//! audit trail of every key use and every denial.
//!
//! Owns: [`AccessControl`] (the decision call into [`GrantStore`] and
//! turning events into [`AuditRecord`]s), and, in its submodules, the grant
//! store ([`grants`]), the audit log on disk ([`audit`]), the aggregation
//! of denials ([`denials`]), and the requester cache ([`requester`]).
//! Must never: allow a non-owner without a grant, report success for an
//! operation whose audit record could not be written (fail-closed), log a
//! path (paths go only into the sealed audit log), or know about the FUSE
//! layer or the control socket (both call in here).

pub mod audit;
pub mod audit_head;
pub mod audit_stream;
pub mod denials;
pub mod filter;
pub mod grants;
pub mod key_policy;
pub mod requester;

use std::sync::Arc;

use fuser::Errno;

use crate::format::audit::{AuditRecord, Principal};
use crate::format::grants::{Access, GrantOp};
use audit::AuditLog;
use denials::{Denials, First};
use grants::{GrantStore, LiveGrant};
pub use requester::{read_comm, read_groups, read_proc, Caller, Requesters};

/// The access control of one mount: the owner's key policy (who may use
/// the keys, through which grant) and the audit trail of each decision.
pub struct AccessControl {
    owner_uid: u32,
    grants: Option<Arc<GrantStore>>,
    audit: Option<Arc<AuditLog>>,
    denials: Option<Arc<Denials>>,
    requesters: Requesters,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl")
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
    /// The keyring generation an operation that stores the keyring stored
    /// (docs/CONTROL.md §15): set it on every such record.
    pub keyring_generation: Option<u64>,
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
            keyring_generation: None,
        }
    }
}

impl AccessControl {
    /// The access control of a mount owned by `owner_uid`, with its grants
    /// and audit log.
    pub fn new(
        owner_uid: u32,
        grants: Option<Arc<GrantStore>>,
        audit: Option<Arc<AuditLog>>,
    ) -> Self {
        let denials = audit
            .as_ref()
            .map(|log| Denials::start(log.clone(), denials::INTERVAL));
        AccessControl {
            owner_uid,
            grants,
            audit,
            denials,
            requesters: Requesters::new(),
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

    /// The audit principal of a caller.
    pub fn principal(&self, c: Caller) -> Principal {
        self.requesters.principal(c)
    }

    /// Appends an audit record for `e` by `c`. Err means the operation must
    /// be refused (the record could not be written).
    pub fn record(&self, c: Caller, e: Event<'_>) -> Result<(), Errno> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        self.record_as(log, self.principal(c), e)
    }

    /// Like [`AccessControl::record`] for a principal that is not a FUSE caller.
    pub fn record_principal(&self, p: Principal, e: Event<'_>) -> Result<(), Errno> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        self.record_as(log, p, e)
    }

    fn record_as(&self, log: &AuditLog, principal: Principal, e: Event<'_>) -> Result<(), Errno> {
        let mut rec = AuditRecord::new(principal, e.op, e.outcome);
        rec.key_version = e.key_version;
        rec.path = e.path.map(|p| String::from_utf8_lossy(p).into_owned());
        rec.grant = e.grant.map(str::to_string);
        rec.error = e.error;
        rec.detail = e.detail;
        rec.keyring_generation = e.keyring_generation;
        log.append(rec).map(|_| ()).map_err(|err| {
            tracing::error!(
                op = e.op,
                "audit record not written, operation refused: {err}"
            );
            Errno::from_i32(err.errno())
        })
    }

    /// Records a denial (`e.outcome` is "denied") by the process (`uid`,
    /// `gid`, `pid`), aggregated ([`denials`]): the first of its (uid, op,
    /// path prefix) in an interval is recorded with `principal()`, later
    /// ones are counted into one summary record. Never refuses anything.
    pub fn record_denial(
        &self,
        (uid, gid, pid): (u32, u32, u32),
        principal: impl FnOnce() -> Principal,
        e: Event<'_>,
    ) {
        let Some(log) = &self.audit else { return };
        if let Some(d) = &self.denials {
            if let First::Counted = d.note(uid, gid, pid, e.op, e.path) {
                return;
            }
        }
        let _ = self.record_as(log, principal(), e);
    }

    /// Writes the summaries of denials counted so far (before a verify or
    /// an export, so they show every denial).
    pub fn flush_denials(&self) {
        if let Some(d) = &self.denials {
            d.flush(true);
        }
    }

    fn deny(&self, c: Caller, e: Event<'_>) {
        self.record_denial((c.uid, c.gid, c.pid), || self.principal(c), e);
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
                g.decide(c.uid, &self.requesters.groups(c), &path, access, None)
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
                self.deny(
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

    /// The groups of the process behind a FUSE request (read from
    /// `/proc/PID/status` now, guarded against a reused pid; see
    /// [`Requesters::groups`]), for a key policy's `gid:` principals.
    pub fn supplementary_groups(&self, c: Caller) -> Vec<u32> {
        self.requesters.groups(c)
    }

    /// Like [`AccessControl::authorize`] for an object known by several
    /// paths (a file with hard links, each name looked up and checked on
    /// its own): allowed when a grant covers any of them; a denial is
    /// recorded once, on the first path.
    pub fn authorize_any(
        &self,
        c: Caller,
        paths: impl FnOnce() -> Vec<Vec<u8>>,
        access: Access,
        op: &str,
    ) -> Result<Option<Arc<LiveGrant>>, Errno> {
        if self.is_owner(c.uid) {
            return Ok(None);
        }
        let mut paths = paths();
        if paths.len() > 1 {
            if let Some(g) = self.grants.as_ref().filter(|g| !g.is_empty()) {
                let groups = self.requesters.groups(c);
                if let Some(found) = paths[1..]
                    .iter()
                    .find_map(|p| g.decide(c.uid, &groups, p, access, None))
                {
                    return Ok(Some(found));
                }
            }
        }
        let first = if paths.is_empty() {
            Vec::new()
        } else {
            paths.swap_remove(0)
        };
        self.authorize(c, || first, access, op)
    }

    /// Where a request uses the key of an entry (opens its data key,
    /// lists or creates in a directory, reads or writes its attributes):
    /// a caller other than the owner needs a grant that allows `access`
    /// on one of `paths` and names that entry's key `key`. `grant` is the
    /// one that allowed the request by path ([`AccessControl::authorize`];
    /// `None` if not known): kept when it names `key`, else replaced by
    /// one that does (an open handle keeps that one: revoking it stops
    /// the handle). None: EACCES, recorded as `op`.
    pub fn authorize_key(
        &self,
        c: Caller,
        key: u32,
        (access, op): (Access, &str),
        paths: impl FnOnce() -> Vec<Vec<u8>>,
        grant: &mut Option<Arc<LiveGrant>>,
    ) -> Result<(), Errno> {
        if self.is_owner(c.uid) {
            return Ok(());
        }
        let Some(store) = self.grants.as_ref() else {
            return Err(Errno::EACCES);
        };
        if grant
            .as_ref()
            .is_some_and(|g| g.names_key(key, store.default_key()))
        {
            return Ok(());
        }
        let paths = paths();
        let groups = self.requesters.groups(c);
        if let Some(found) = paths
            .iter()
            .find_map(|p| store.decide(c.uid, &groups, p, access, Some(key)))
        {
            *grant = Some(found);
            return Ok(());
        }
        crate::metrics::denied(crate::metrics::Denial::Grant);
        self.deny(
            c,
            Event {
                outcome: "denied",
                error: Some(format!("no live grant on key {key} allows this")),
                ..Event::ok(op, paths.first().map(Vec::as_slice))
            },
        );
        Err(Errno::EACCES)
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
        self.deny(
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
