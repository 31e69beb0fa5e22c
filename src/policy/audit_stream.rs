//! Which audit stream a log is (docs/FORMAT.md §12.4): the volume's local
//! stream in `sealfs.audit/` itself, or one host's stream in
//! `sealfs.audit/hosts/<HOST>/` when several daemons share the cipher dir
//! (`--shared-storage`). Each stream is a chain of its own (its own
//! segment numbers, sequence numbers and keys); `audit verify` and
//! `audit export` read them all.
//!
//! Owns: [`AuditStream`], where each stream's folder is, finding every
//! stream of a volume ([`AuditStream::list`]), and each stream's keys.
//! Must never: follow a symlink where a stream's folder should be, or
//! write a record (that is [`super::audit::AuditLog`]'s).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::crypto::SecretKey;
use crate::format::audit::{AuditKeys, AuditRecord, ChainBreak, ChainEvent};
use crate::format::host_id::HostId;
use crate::format::reserved::{AUDIT_DIR, AUDIT_HOSTS_DIR};
use crate::sys;
use crate::volume::Volume;

use super::audit::verify_stream;

/// One append stream of a volume's audit log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuditStream {
    /// `sealfs.audit/` itself: what a volume mounted by one daemon has.
    Local,
    /// `sealfs.audit/hosts/<HOST>/`: one host's stream on shared storage.
    Host(HostId),
}

impl std::fmt::Display for AuditStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditStream::Local => f.write_str("local"),
            AuditStream::Host(h) => write!(f, "host {h}"),
        }
    }
}

/// Opens `name` under `dir`, creating it (mode 0700) when `create`.
fn subdir(dir: BorrowedFd<'_>, name: &str, create: bool) -> io::Result<Option<OwnedFd>> {
    match sys::open_subdir(dir, OsStr::new(name)) {
        Ok(d) => return Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    match sys::mkdirat(dir, OsStr::new(name), 0o700) {
        Ok(()) => sys::fsync_dir(dir)?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    sys::open_subdir(dir, OsStr::new(name)).map(Some)
}

impl AuditStream {
    /// The host whose stream this is (`None`: the local stream).
    pub fn host(&self) -> Option<&HostId> {
        match self {
            AuditStream::Local => None,
            AuditStream::Host(h) => Some(h),
        }
    }

    /// The stream as it is named in reports and the keyring's anchors:
    /// `None` for the local stream, the host id for a host's.
    pub fn name(&self) -> Option<String> {
        self.host().map(|h| h.to_string())
    }

    /// The stream a name from [`AuditStream::name`] stands for.
    pub fn from_name(name: Option<&str>) -> Option<AuditStream> {
        match name {
            None => Some(AuditStream::Local),
            Some(n) => HostId::parse(n).ok().map(AuditStream::Host),
        }
    }

    /// The stream's folder in the cipher directory `root` (never through a
    /// symlink), created with its parents when `create`; `None` when it
    /// does not exist and `create` is false.
    pub fn open_dir(&self, root: BorrowedFd<'_>, create: bool) -> io::Result<Option<OwnedFd>> {
        let Some(audit) = subdir(root, AUDIT_DIR, create)? else {
            return Ok(None);
        };
        let AuditStream::Host(h) = self else {
            return Ok(Some(audit));
        };
        let Some(hosts) = subdir(audit.as_fd(), AUDIT_HOSTS_DIR, create)? else {
            return Ok(None);
        };
        subdir(hosts.as_fd(), h.as_str(), create)
    }

    /// The audit keys of this stream under one master key version.
    pub fn keys(&self, master: &SecretKey, volume_id: &[u8; 16]) -> AuditKeys {
        AuditKeys::derive_for_stream(master, volume_id, self.host().map(HostId::as_str))
    }

    /// Every stream of the volume in `root`: the local one first (always,
    /// even with no segment: a log that lost everything must still be
    /// checked), then each host's in name order. A folder under `hosts/`
    /// whose name is no valid host id is no stream (nothing there can
    /// verify) and is skipped with a warning.
    pub fn list(root: BorrowedFd<'_>) -> io::Result<Vec<AuditStream>> {
        let mut out = vec![AuditStream::Local];
        let Some(audit) = subdir(root, AUDIT_DIR, false)? else {
            return Ok(out);
        };
        let Some(hosts) = subdir(audit.as_fd(), AUDIT_HOSTS_DIR, false)? else {
            return Ok(out);
        };
        let mut found = Vec::new();
        for ent in std::fs::read_dir(sys::proc_path(hosts.as_fd()))? {
            let ent = ent?;
            let name = ent.file_name();
            match name.to_str().map(HostId::parse) {
                Some(Ok(h)) if ent.file_type()?.is_dir() => found.push(h),
                _ => tracing::warn!(
                    "audit log: {:?} in {AUDIT_DIR}/{AUDIT_HOSTS_DIR} is not a host's stream; ignored",
                    name
                ),
            }
        }
        found.sort();
        out.extend(found.into_iter().map(AuditStream::Host));
        Ok(out)
    }
}

/// One stream's verification ([`verify_streams`]).
#[derive(Debug, Clone)]
pub struct StreamReport {
    /// Which stream.
    pub stream: AuditStream,
    /// What its walk found.
    pub report: crate::format::audit::ChainReport,
}

/// An event of [`verify_streams`], owned so streams can be merged.
enum Owned {
    Record(Box<AuditRecord>),
    Break(ChainBreak),
}

/// Verifies every stream of `vol`'s log (each chain on its own: a break
/// in one says nothing of the others) and hands every record and break to
/// `on_event` with its stream, **merged in time order** across streams
/// (records by their time; a break right after the record before it in
/// its own stream). With the local stream alone nothing is buffered.
///
/// A host stream the keyring anchors (docs/FORMAT.md §2.5) that is not
/// there as a folder (deleted, renamed, or something else at its name) is
/// a break of that stream.
pub fn verify_streams(
    vol: &Arc<Volume>,
    on_event: &mut dyn FnMut(&AuditStream, ChainEvent<'_>),
) -> io::Result<Vec<StreamReport>> {
    let streams = AuditStream::list(vol.root())?;
    let missing: Vec<(AuditStream, ChainBreak)> = vol
        .keyring()
        .read()
        .stream_anchors()
        .iter()
        .filter_map(|(host, a)| {
            let stream = AuditStream::from_name(Some(host))?;
            (!streams.contains(&stream)).then(|| {
                let brk = ChainBreak {
                    segment: a.segment,
                    offset: 0,
                    expected_seq: a.seq,
                    reason: format!(
                        "{stream}'s audit stream is gone ({AUDIT_DIR}/{AUDIT_HOSTS_DIR}/{host} is missing or not a folder), but the keyring was stored when it had reached segment {}, record {}",
                        a.segment, a.seq
                    ),
                    resumed_seq: None,
                };
                (stream, brk)
            })
        })
        .collect();
    let mut reports_missing = Vec::new();
    for (stream, brk) in &missing {
        on_event(stream, ChainEvent::Break(brk));
        reports_missing.push(StreamReport {
            stream: stream.clone(),
            report: crate::format::audit::ChainReport {
                breaks: vec![brk.clone()],
                ..Default::default()
            },
        });
    }
    let mut reports = verify_present(vol, &streams, on_event)?;
    reports.extend(reports_missing);
    Ok(reports)
}

/// [`verify_streams`] of the streams that are there.
fn verify_present(
    vol: &Arc<Volume>,
    streams: &[AuditStream],
    on_event: &mut dyn FnMut(&AuditStream, ChainEvent<'_>),
) -> io::Result<Vec<StreamReport>> {
    if streams.len() == 1 {
        let stream = &streams[0];
        let report = verify_stream(vol, stream, None, &mut |e| on_event(stream, e))?;
        return Ok(vec![StreamReport {
            stream: stream.clone(),
            report,
        }]);
    }
    // (time, stream index, order in the stream, event)
    let mut events: Vec<(u64, usize, usize, Owned)> = Vec::new();
    let mut reports = Vec::with_capacity(streams.len());
    for (i, stream) in streams.iter().enumerate() {
        let mut last_time = 0;
        let mut n = 0;
        let report = verify_stream(vol, stream, None, &mut |e| {
            let owned = match e {
                ChainEvent::Record(r) => {
                    last_time = last_time.max(r.time_ms);
                    Owned::Record(Box::new(r.clone()))
                }
                ChainEvent::Break(b) => Owned::Break(b.clone()),
            };
            events.push((last_time, i, n, owned));
            n += 1;
        })?;
        reports.push(StreamReport {
            stream: stream.clone(),
            report,
        });
    }
    events.sort_by_key(|(t, i, n, _)| (*t, *i, *n));
    for (_, i, _, e) in &events {
        match e {
            Owned::Record(r) => on_event(&streams[*i], ChainEvent::Record(r)),
            Owned::Break(b) => on_event(&streams[*i], ChainEvent::Break(b)),
        }
    }
    Ok(reports)
}
