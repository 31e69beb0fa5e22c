//! Denials cost bounded log space: per (uid, operation, path prefix) and
//! interval, the first denial is recorded on its own (with its exact path
//! and process) and the rest are counted into one record of the same `op`
//! with `count`, `first_ms` and `last_ms` (its `detail`: "N denials of OP
//! by uid U under P between T1 and T2"; its `path`: the prefix P) written
//! when the interval ends. A hostile user who floods denied requests can therefore
//! add at most two records per key and interval to the fail-closed log,
//! never one per request, and cannot fill the disk the owner's operations
//! need. (The metrics count every denial, as before.)
//!
//! Owns: the aggregation table, its key (the prefix is the denied path's
//! directory, cut to [`PREFIX_DEPTH`] components), its size cap (past
//! [`MAX_KEYS`] keys, new ones fold into one key per uid), and flushing
//! summaries: on a timer, on demand (before a verify or export), and when
//! dropped (at unmount).
//! Must never: drop a denial from the count, refuse anything (the denial
//! already happened), or log a path outside the sealed audit log.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::audit::AuditLog;
use crate::format::audit::{AuditRecord, Principal};
use crate::format::grants::format_utc;
use crate::sys::now_ms;

/// How long denials of one key are counted into one summary record.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Path components of the denied path's directory kept in the key.
pub const PREFIX_DEPTH: usize = 3;
/// Keys counted at once; past this, a new key folds into `(uid, "*", "/")`
/// (op `*`: any operation).
pub const MAX_KEYS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: u32,
    op: String,
    /// The denied path's directory, cut to [`PREFIX_DEPTH`] components
    /// (None: a request without a path, e.g. on the control socket).
    prefix: Option<String>,
}

struct Pending {
    /// Denials after the first one recorded on its own.
    count: u64,
    first_ms: u64,
    last_ms: u64,
    gid: u32,
    pid: u32,
    started: Instant,
}

/// The directory of `path`, cut to [`PREFIX_DEPTH`] components: `/a/b/c/d/e`
/// → `/a/b/c`, `/a/f` → `/a`, `/f` → `/`.
pub fn prefix_of(path: &[u8]) -> String {
    let path = String::from_utf8_lossy(path);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let dir = &parts[..parts.len().saturating_sub(1)];
    let kept = &dir[..dir.len().min(PREFIX_DEPTH)];
    format!("/{}", kept.join("/"))
}

/// The denial aggregation of one mount's audit log.
pub struct Denials {
    log: Arc<AuditLog>,
    pending: Mutex<HashMap<Key, Pending>>,
    interval: Duration,
}

impl std::fmt::Debug for Denials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Denials")
            .field("keys", &self.pending.lock().len())
            .finish_non_exhaustive()
    }
}

/// What the first denial of a key must record on its own.
pub enum First {
    /// Nothing: the denial was counted into the key's summary.
    Counted,
    /// Record it as usual.
    Record,
}

impl Denials {
    /// The aggregation for `log`, with a thread that writes the summaries
    /// of finished intervals (it ends when the returned value is dropped).
    pub fn start(log: Arc<AuditLog>, interval: Duration) -> Arc<Denials> {
        let d = Arc::new(Denials {
            log,
            pending: Mutex::new(HashMap::new()),
            interval,
        });
        let weak: Weak<Denials> = Arc::downgrade(&d);
        let tick = interval.min(Duration::from_secs(1));
        let _ = std::thread::Builder::new()
            .name("sealfs-denials".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let Some(d) = weak.upgrade() else { return };
                d.flush(false);
            });
        d
    }

    /// Notes a denial of `op` by (`uid`, `gid`, `pid`) at `path`: whether
    /// the caller must record it on its own (the first of its key in this
    /// interval) or it was counted.
    pub fn note(&self, uid: u32, gid: u32, pid: u32, op: &str, path: Option<&[u8]>) -> First {
        let mut key = Key {
            uid,
            op: op.to_string(),
            prefix: path.map(prefix_of),
        };
        let now = now_ms();
        let mut p = self.pending.lock();
        if p.len() >= MAX_KEYS && !p.contains_key(&key) {
            key = Key {
                uid,
                op: "*".into(),
                prefix: Some("/".into()),
            };
        }
        match p.get_mut(&key) {
            Some(e) => {
                if e.count == 0 {
                    e.first_ms = now;
                }
                e.count += 1;
                e.last_ms = now;
                e.gid = gid;
                e.pid = pid;
                First::Counted
            }
            None => {
                p.insert(
                    key,
                    Pending {
                        count: 0,
                        first_ms: now,
                        last_ms: now,
                        gid,
                        pid,
                        started: Instant::now(),
                    },
                );
                First::Record
            }
        }
    }

    /// Writes the summaries of keys whose interval ended (`all`: of every
    /// key) and forgets those keys.
    pub fn flush(&self, all: bool) {
        let due: Vec<(Key, Pending)> = {
            let mut p = self.pending.lock();
            let keys: Vec<Key> = p
                .iter()
                .filter(|(_, e)| all || e.started.elapsed() >= self.interval)
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| p.remove(&k).map(|e| (k, e)))
                .collect()
        };
        for (k, e) in due.into_iter().filter(|(_, e)| e.count > 0) {
            let mut r = AuditRecord::new(
                Principal {
                    uid: k.uid,
                    gid: e.gid,
                    pid: e.pid,
                    comm: None,
                },
                &k.op,
                "denied",
            );
            let under = k.prefix.clone().unwrap_or_else(|| "the socket".into());
            r.detail = Some(format!(
                "{} denials of {} by uid {} under {} between {} and {}",
                e.count,
                k.op,
                k.uid,
                under,
                utc_ms(e.first_ms),
                utc_ms(e.last_ms)
            ));
            r.path = k.prefix;
            r.count = Some(e.count);
            r.first_ms = Some(e.first_ms);
            r.last_ms = Some(e.last_ms);
            if let Err(err) = self.log.append(r) {
                tracing::warn!("audit log: cannot write a denial summary: {err}");
            }
        }
    }
}

fn utc_ms(ms: u64) -> String {
    format!(
        "{}.{:03}Z",
        format_utc(ms / 1000).trim_end_matches('Z'),
        ms % 1000
    )
}

impl Drop for Denials {
    fn drop(&mut self) {
        self.flush(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(prefix_of(b"/"), "/");
        assert_eq!(prefix_of(b"/f"), "/");
        assert_eq!(prefix_of(b"/a/f"), "/a");
        assert_eq!(prefix_of(b"/a/b/c/d/e"), "/a/b/c");
        assert_eq!(prefix_of(b"/a/b/c/d"), "/a/b/c");
    }
}
