//! The audit log on disk: `sealfs.audit/NNNNNNNN.log` segments in CIPHERDIR
//! (format in [`crate::format::audit`], docs/FORMAT.md §12), or, for one
//! host of several sharing the cipher dir, the same in that host's stream
//! folder `sealfs.audit/hosts/<HOST>/` ([`AuditStream`], §12.4). One
//! [`AuditLog`] appends to one stream; reading every stream is
//! [`super::audit_stream::verify_streams`]'s.
//!
//! Owns: appending records (one `write` each, rolled back on a short write,
//! so a failed append leaves no partial record and the caller refuses the
//! operation: fail-closed), rolling to a new segment by size and after a
//! rotation, recovering the chain at open (a record torn by a crash is cut
//! off and the cut itself recorded), syncing in the background, and reading
//! all segments back for verification and export.
//! Must never: write a record that is not chained, reuse a sequence number,
//! or let a failed append look like a success.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

pub use super::audit_stream::AuditStream;
use crate::format::audit::{
    self as afmt, AuditKeys, AuditRecord, ChainEvent, ChainReport, Principal, PrunePlan,
    PruneRefusal, PruneRule, RecordStep, SegmentHeader, MAC_LEN, SEGMENT_HEADER_LEN,
};
pub use crate::format::audit::{AnchorCheck, AuditHead, KeyringAnchor};
use crate::format::reserved;
use crate::{sys, volume::Volume};

use crate::format::reserved::AUDIT_CHECKPOINT;
/// The audit folder in CIPHERDIR.
pub use crate::format::reserved::AUDIT_DIR;
/// Default size at which a new segment starts.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;
/// How often appended records are made durable.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How often the retention rule runs when no new segment started.
const RETENTION_RECHECK: Duration = Duration::from_secs(3600);
/// Disk space reserved ahead of the end of the current segment
/// (`fallocate` with `KEEP_SIZE`), so that a disk filled by file content
/// still leaves room for a few thousand records: the volume stays usable
/// (and every use recorded) until the reserve runs out too.
const RESERVE_STEP: u64 = 512 * 1024;

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing the log failed.
    #[error("audit log I/O: {0}")]
    Io(#[from] io::Error),
    /// The key version a segment needs is destroyed or unknown.
    #[error("audit log: no usable key for master key version {0}")]
    NoKey(u32),
    /// Randomness failure.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

impl AuditError {
    /// The errno an operation refused for want of an audit record gets.
    pub fn errno(&self) -> i32 {
        match self {
            AuditError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }
}

/// Why a prune did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The log cannot be pruned as it is.
    #[error(transparent)]
    Refused(#[from] PruneRefusal),
    /// The prune could not be recorded (nothing was pruned).
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Reading or writing the log failed.
    #[error("audit log I/O: {0}")]
    Io(#[from] io::Error),
}

/// What a prune did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PruneOutcome {
    /// Segments pruned.
    pub segments: u64,
    /// Records pruned.
    pub records: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// The last record pruned, if any was.
    pub through_seq: Option<u64>,
    /// Segments removed that an interrupted earlier prune had left.
    pub leftovers_removed: u64,
}

/// The audit log's size and what was pruned (`status.audit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditUsage {
    /// Bytes in all segments.
    pub bytes: u64,
    /// Segments on disk.
    pub segments: u64,
    /// Disk space reserved ahead of the current segment's end.
    pub reserve_left: u64,
    /// Records up to this one were pruned (a checkpoint that verifies).
    pub pruned_through_seq: Option<u64>,
    /// Records pruned in all.
    pub records_pruned: u64,
}

fn describe_rule(rule: &PruneRule) -> String {
    let mut out = String::new();
    if let Some(b) = rule.before_ms {
        out.push_str(&format!("; rule: records before {} ms", b));
    }
    if let Some(m) = rule.max_bytes {
        out.push_str(&format!("; rule: log at most {m} bytes"));
    }
    out
}

fn segment_name(n: u64) -> String {
    format!("{n:08}.log")
}

/// Segment numbers present in the audit folder `dir`, ascending.
fn list_segments(dir: BorrowedFd<'_>) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(sys::proc_path(dir))?;
    for ent in rd {
        let name = ent?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(num) = name.strip_suffix(".log") {
            if num.len() == 8 && num.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = num.parse() {
                    out.push(n);
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads every segment of `stream` in the cipher directory `root`:
/// (number, bytes).
pub fn read_segments(
    root: BorrowedFd<'_>,
    stream: &AuditStream,
) -> io::Result<Vec<(u64, Vec<u8>)>> {
    read_segments_from(root, stream, 1)
}

/// The prune checkpoint's bytes of `stream`, if there is one (never
/// through a symlink; anything but a regular file at its name is an error).
pub fn read_checkpoint(root: BorrowedFd<'_>, stream: &AuditStream) -> io::Result<Option<Vec<u8>>> {
    let Some(dir) = stream.open_dir(root, false)? else {
        return Ok(None);
    };
    read_checkpoint_in(dir.as_fd())
}

fn read_checkpoint_in(dir: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    match sys::read_regular_limited(dir, OsStr::new(AUDIT_CHECKPOINT), afmt::CHECKPOINT_LEN) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the segments numbered `first` and up (see [`read_segments`]).
/// Nothing is created: no log, no segments.
pub fn read_segments_from(
    root: BorrowedFd<'_>,
    stream: &AuditStream,
    first: u64,
) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let Some(dir) = stream.open_dir(root, false)? else {
        return Ok(Vec::new());
    };
    list_segments(dir.as_fd())?
        .into_iter()
        .filter(|n| *n >= first)
        .map(|n| sys::read_regular(dir.as_fd(), OsStr::new(&segment_name(n))).map(|b| (n, b)))
        .collect()
}

/// Audit keys of one stream per master key version, derived once.
struct KeyCache {
    vol: Arc<Volume>,
    stream: AuditStream,
    keys: Mutex<HashMap<u32, Arc<AuditKeys>>>,
}

impl KeyCache {
    fn new(vol: &Arc<Volume>, stream: &AuditStream) -> Self {
        KeyCache {
            vol: vol.clone(),
            stream: stream.clone(),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, version: u32) -> Option<Arc<AuditKeys>> {
        if let Some(k) = self.keys.lock().get(&version) {
            return Some(k.clone());
        }
        let kr = self.vol.keyring().read();
        let k = Arc::new(
            self.stream
                .keys(kr.master_key(version)?, &self.vol.volume_id()),
        );
        self.keys.lock().insert(version, k.clone());
        Some(k)
    }
}

/// Verifies the local stream of `vol`'s log (offline or live); each good
/// record goes to `on_record`. The walk goes on past every break (all are
/// in the report). [`verify_streams`](super::audit_stream::verify_streams) reads every stream.
pub fn verify_log(
    vol: &Arc<Volume>,
    on_record: &mut dyn FnMut(&AuditRecord),
) -> io::Result<ChainReport> {
    verify_log_anchored(vol, None, &mut |e| {
        if let ChainEvent::Record(r) = e {
            on_record(r)
        }
    })
}

/// [`verify_log`] with records and breaks in log order, and checked
/// against the keyring's `anchor` (see
/// [`verify_chain_anchored`](crate::format::audit::verify_chain_anchored)):
/// a deleted log, or one cut before the anchor, does not verify.
pub fn verify_log_anchored(
    vol: &Arc<Volume>,
    anchor: Option<&KeyringAnchor>,
    on_event: &mut dyn FnMut(ChainEvent<'_>),
) -> io::Result<ChainReport> {
    verify_stream(vol, &AuditStream::Local, anchor, on_event)
}

/// [`verify_log_anchored`] for one stream of the log.
pub fn verify_stream(
    vol: &Arc<Volume>,
    stream: &AuditStream,
    anchor: Option<&KeyringAnchor>,
    on_event: &mut dyn FnMut(ChainEvent<'_>),
) -> io::Result<ChainReport> {
    let segs = read_segments(vol.root(), stream)?;
    let checkpoint = read_checkpoint(vol.root(), stream)?;
    let cache = KeyCache::new(vol, stream);
    Ok(afmt::verify_log_view(
        segs.iter().map(|(n, b)| (*n, b.as_slice())),
        checkpoint.as_deref(),
        &vol.volume_id(),
        &mut |v| cache.get(v),
        anchor,
        on_event,
    ))
}

/// Whether `head` (the keyring's rollback anchor) is still in the log of
/// `vol`, and which keyring generation the records after it name last.
/// Reads the head's segment and those after it; creates nothing, so call
/// it before [`AuditLog::open`] (which starts a new log where there is
/// none). A missing `sealfs.audit` is [`AnchorCheck::Missing`].
pub fn check_anchor(vol: &Arc<Volume>, head: &AuditHead) -> io::Result<AnchorCheck> {
    let stream = &AuditStream::Local;
    let checkpoint = read_checkpoint(vol.root(), stream)?;
    // After a prune the walk may start before the head's segment (right
    // after the checkpoint): then every segment is read.
    let first = if checkpoint.is_some() {
        1
    } else {
        head.segment
    };
    let earlier = match stream.open_dir(vol.root(), false)? {
        Some(dir) => list_segments(dir.as_fd())?
            .into_iter()
            .filter(|n| *n < first)
            .collect(),
        None => Vec::new(),
    };
    let segs = read_segments_from(vol.root(), stream, first)?;
    let cache = KeyCache::new(vol, stream);
    Ok(afmt::check_anchor(
        earlier
            .into_iter()
            .map(|n| (n, &[][..]))
            .chain(segs.iter().map(|(n, b)| (*n, b.as_slice()))),
        checkpoint.as_deref(),
        &vol.volume_id(),
        &mut |v| cache.get(v),
        head,
    ))
}

/// The head of the log of `vol` as it is on disk (offline: without
/// opening it for appending), or None when there is no log or its last
/// segment does not verify to its end. What an offline keyring change
/// anchors to.
pub fn read_head(vol: &Arc<Volume>) -> io::Result<Option<AuditHead>> {
    Ok(verify_log(vol, &mut |_| {})?.end)
}

struct Writer {
    file: Arc<File>,
    segment: u64,
    key_version: u32,
    keys: Arc<AuditKeys>,
    /// Bytes in the current segment.
    len: u64,
    /// Bytes of the current segment with disk space reserved.
    reserved: u64,
    next_seq: u64,
    chain: [u8; MAC_LEN],
}

impl Writer {
    /// Reserves disk space up to [`RESERVE_STEP`] past the end (best
    /// effort: on a full disk the remaining reserve is used up first).
    fn reserve(&mut self) {
        let want = self.len + RESERVE_STEP;
        match sys::fallocate(
            &self.file,
            libc::FALLOC_FL_KEEP_SIZE,
            self.len,
            RESERVE_STEP,
        ) {
            Ok(()) => self.reserved = want,
            Err(e) => tracing::debug!("audit log: cannot reserve space: {e}"),
        }
    }
}

/// The open audit log of a mounted volume: one stream, appended to by
/// this daemon only.
pub struct AuditLog {
    dir: OwnedFd,
    keys: KeyCache,
    writer: Mutex<Writer>,
    /// One prune at a time.
    pruning: Mutex<()>,
    /// When the retention rule last ran, and on which segment.
    retention_ran: Mutex<Option<(std::time::Instant, u64)>>,
    segment_bytes: u64,
    dirty: AtomicBool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

pub use crate::sys::now_ms;

impl AuditLog {
    /// Opens (creating if needed) the local stream of `vol`'s log and
    /// recovers its chain; what recovery did is recorded in the log.
    pub fn open(vol: Arc<Volume>, segment_bytes: u64) -> Result<Arc<AuditLog>, AuditError> {
        Self::open_stream(vol, segment_bytes, AuditStream::Local)
    }

    /// [`AuditLog::open`] for `stream` (a host's, on shared storage).
    pub fn open_stream(
        vol: Arc<Volume>,
        segment_bytes: u64,
        stream: AuditStream,
    ) -> Result<Arc<AuditLog>, AuditError> {
        let dir = stream
            .open_dir(vol.root(), true)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let keys = KeyCache::new(&vol, &stream);
        let mut notes = Vec::new();
        let mut segments = list_segments(dir.as_fd())?;
        let checkpoint = Self::finish_prune(dir.as_fd(), &keys, &vol, &mut segments)?;
        let writer = match (segments.last(), checkpoint) {
            (None, None) => Self::new_segment(dir.as_fd(), &keys, &vol, 1, 1, [0; MAC_LEN])?,
            (None, Some(c)) => {
                // Not chained to the checkpoint: verify reports the loss.
                notes.push(format!(
                    "the audit log after the prune checkpoint (segment {}, record {}) is missing; starting segment {}",
                    c.segment,
                    c.last_seq,
                    c.segment + 1
                ));
                Self::new_segment(
                    dir.as_fd(),
                    &keys,
                    &vol,
                    c.segment + 1,
                    c.last_seq + 1,
                    [0; MAC_LEN],
                )?
            }
            (Some(&last), _) => Self::resume(dir.as_fd(), &keys, &vol, last, &mut notes)?,
        };
        let log = Arc::new(AuditLog {
            dir,
            keys,
            writer: Mutex::new(writer),
            pruning: Mutex::new(()),
            retention_ran: Mutex::new(None),
            segment_bytes: segment_bytes.max(64 * 1024),
            dirty: AtomicBool::new(false),
        });
        for n in notes {
            tracing::warn!("audit log: {n}");
            log.append(AuditRecord {
                op: "audit_recovered".into(),
                outcome: "ok".into(),
                detail: Some(n),
                ..Self::daemon_record()
            })?;
        }
        log.sync()?;
        Self::spawn_syncer(Arc::downgrade(&log));
        Ok(log)
    }

    /// Removes segments a prune checkpoint (one that verifies) covers but
    /// an interrupted prune left behind; returns the checkpoint.
    fn finish_prune(
        dir: BorrowedFd<'_>,
        keys: &KeyCache,
        vol: &Volume,
        segments: &mut Vec<u64>,
    ) -> io::Result<Option<afmt::PruneCheckpoint>> {
        let Some(b) = read_checkpoint_in(dir)? else {
            return Ok(None);
        };
        let Ok(c) = afmt::open_checkpoint(&b, &vol.volume_id(), &mut |v| keys.get(v)) else {
            tracing::warn!(
                "audit log: the prune checkpoint does not verify; `sealfs audit verify` reports it"
            );
            return Ok(None);
        };
        let (gone, kept): (Vec<u64>, Vec<u64>) = segments.iter().partition(|n| **n <= c.segment);
        for n in &gone {
            sys::unlinkat(dir, OsStr::new(&segment_name(*n)), false)?;
        }
        if !gone.is_empty() {
            sys::fsync_dir(dir)?;
        }
        *segments = kept;
        Ok(Some(c))
    }

    /// A record template for events the daemon itself causes.
    pub fn daemon_record() -> AuditRecord {
        // SAFETY: getuid/getgid/getpid have no failure modes.
        let (uid, gid, pid) = unsafe { (libc::geteuid(), libc::getegid(), libc::getpid()) };
        AuditRecord::new(
            Principal {
                uid,
                gid,
                pid: pid as u32,
                comm: Some("sealfs".into()),
            },
            "",
            "ok",
        )
    }

    fn new_segment(
        dir: BorrowedFd<'_>,
        keys: &KeyCache,
        vol: &Volume,
        segment: u64,
        first_seq: u64,
        prev_mac: [u8; MAC_LEN],
    ) -> Result<Writer, AuditError> {
        let key_version = vol.keyring().read().primary();
        let k = keys
            .get(key_version)
            .ok_or(AuditError::NoKey(key_version))?;
        let header = SegmentHeader {
            key_version,
            volume_id: vol.volume_id(),
            segment,
            first_seq,
            created_ms: now_ms(),
            prev_mac,
        };
        let (bytes, chain) = afmt::encode_header(&header, &k);
        // Made whole under a temporary name, then linked in: a crash never
        // leaves a segment without its complete header.
        let name = segment_name(segment);
        let tmp = reserved::temp_name(&name);
        let (name, tmp) = (OsStr::new(&name), OsStr::new(&tmp));
        sys::remove_stale_regular(dir, tmp)?;
        let made = (|| -> io::Result<File> {
            // O_APPEND: a record cut off after a failed write leaves the
            // next one at the (new) end, never after a gap.
            let flags =
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
            let mut f = File::from(sys::openat(dir, tmp, flags, 0o600)?);
            f.write_all(&bytes)?;
            f.sync_all()?;
            // Fails (EEXIST) rather than replace anything at the name.
            sys::linkat(dir, tmp, dir, name)?;
            Ok(f)
        })();
        let _ = sys::unlinkat(dir, tmp, false);
        let f = made?;
        sys::fsync_dir(dir)?;
        let mut w = Writer {
            file: Arc::new(f),
            segment,
            key_version,
            keys: k,
            len: bytes.len() as u64,
            reserved: 0,
            next_seq: first_seq,
            chain,
        };
        w.reserve();
        Ok(w)
    }

    /// Continues the last segment: walks its records to the end of the
    /// chain. A torn last record is cut off; a segment that does not verify
    /// is left as it is (verify reports it) and a new one starts.
    fn resume(
        dir: BorrowedFd<'_>,
        keys: &KeyCache,
        vol: &Volume,
        last: u64,
        notes: &mut Vec<String>,
    ) -> Result<Writer, AuditError> {
        let name = segment_name(last);
        let name = OsStr::new(&name);
        let bytes = sys::read_regular(dir, name)?;
        let header = afmt::parse_header(&bytes).ok();
        let k = header.and_then(|h| keys.get(h.key_version));
        let (Some(header), Some(k)) = (header, k) else {
            notes.push(format!(
                "segment {last} has an unreadable header or its key version is destroyed; starting segment {}",
                last + 1
            ));
            return Self::new_segment(dir, keys, vol, last + 1, 1, [0; MAC_LEN]);
        };
        let mut chain = match afmt::check_header(&bytes, &k) {
            Ok(c) => c,
            Err(e) => {
                notes.push(format!(
                    "segment {last}: {e}; starting segment {}",
                    last + 1
                ));
                return Self::new_segment(dir, keys, vol, last + 1, header.first_seq, [0; MAC_LEN]);
            }
        };
        let mut off = SEGMENT_HEADER_LEN;
        let mut next_seq = header.first_seq;
        loop {
            match afmt::decode_record(&bytes[off..], &chain, &k) {
                Ok(RecordStep::End) => break,
                Ok(RecordStep::Record(rec, len, mac)) if rec.seq == next_seq => {
                    chain = mac;
                    next_seq += 1;
                    off += len;
                }
                Ok(RecordStep::Torn(left)) => {
                    let f = sys::open_regular(dir, name, libc::O_WRONLY)?;
                    f.set_len(off as u64)?;
                    f.sync_all()?;
                    notes.push(format!(
                        "dropped {left} bytes of a record torn by a crash at the end of segment {last}"
                    ));
                    break;
                }
                Ok(RecordStep::Record(..)) | Err(_) => {
                    notes.push(format!(
                        "segment {last} does not verify after record {}; starting segment {}",
                        next_seq.saturating_sub(1),
                        last + 1
                    ));
                    return Self::new_segment(dir, keys, vol, last + 1, next_seq, chain);
                }
            }
        }
        let file = sys::open_regular(dir, name, libc::O_WRONLY | libc::O_APPEND)?;
        let mut w = Writer {
            file: Arc::new(file),
            segment: last,
            key_version: header.key_version,
            keys: k,
            len: off as u64,
            reserved: 0,
            next_seq,
            chain,
        };
        w.reserve();
        Ok(w)
    }

    /// Appends `rec` (its `seq` and `time_ms` are filled in). On error
    /// nothing was appended and the operation it describes must be refused.
    pub fn append(&self, mut rec: AuditRecord) -> Result<u64, AuditError> {
        let mut w = self.writer.lock();
        rec.seq = w.next_seq;
        rec.time_ms = now_ms();
        let (bytes, mac) = afmt::encode_record(&rec, &w.chain, &w.keys)?;
        if let Err(e) = (&*w.file).write_all(&bytes) {
            // Cut off whatever part of the record reached the file.
            if let Err(t) = w.file.set_len(w.len) {
                tracing::error!("audit log: cannot cut off a partial record: {t}");
            }
            return Err(e.into());
        }
        w.len += bytes.len() as u64;
        if w.reserved < w.len + RESERVE_STEP / 4 {
            w.reserve();
        }
        w.chain = mac;
        w.next_seq += 1;
        self.dirty.store(true, Ordering::Release);
        let seq = rec.seq;
        if w.len >= self.segment_bytes {
            if let Err(e) = self.roll(&mut w) {
                tracing::warn!("audit log: cannot start a new segment (will retry): {e}");
            }
        }
        Ok(seq)
    }

    fn roll(&self, w: &mut Writer) -> Result<(), AuditError> {
        w.file.sync_data()?;
        let next = Self::new_segment(
            self.dir.as_fd(),
            &self.keys,
            &self.keys.vol,
            w.segment + 1,
            w.next_seq,
            w.chain,
        )?;
        *w = next;
        Ok(())
    }

    /// Starts a new segment under the primary key version if the current
    /// one uses another (after a rotation), so destroying old versions
    /// later only affects old segments.
    pub fn follow_primary(&self) -> Result<(), AuditError> {
        let primary = self.keys.vol.keyring().read().primary();
        let mut w = self.writer.lock();
        if w.key_version != primary {
            self.roll(&mut w)?;
        }
        Ok(())
    }

    /// Prunes whole segments from the front of the log under `rule`
    /// (docs/FORMAT.md §12.3): the prune is recorded first (refused if that
    /// fails), then the checkpoint is stored durably, then the segments are
    /// removed. The segment being written, and everything from the first
    /// break on, are kept. A crash after the checkpoint leaves segments it
    /// covers, which the next prune or open removes.
    pub fn prune(&self, rule: PruneRule, by: Principal) -> Result<PruneOutcome, PruneError> {
        let _one = self.pruning.lock();
        let keep_from = self.writer.lock().segment;
        let vol = &self.keys.vol;
        let segs = read_segments(vol.root(), &self.keys.stream)?;
        let checkpoint = read_checkpoint_in(self.dir.as_fd())?;
        let plan = afmt::plan_prune(
            segs.iter().map(|(n, b)| (*n, b.as_slice())),
            checkpoint.as_deref(),
            &vol.volume_id(),
            &mut |v| self.keys.get(v),
            rule,
            keep_from,
        )?;
        drop(segs);
        let mut outcome = PruneOutcome {
            segments: plan.segments,
            records: plan.records,
            bytes: plan.bytes,
            through_seq: None,
            leftovers_removed: 0,
        };
        if let Some(mut c) = plan.checkpoint {
            let mut rec = AuditRecord::new(by, "audit_prune", "ok");
            rec.detail = Some(format!(
                "pruning segments through {} (records through {}; {} records, {} bytes){}",
                c.segment,
                c.last_seq,
                plan.records,
                plan.bytes,
                describe_rule(&rule)
            ));
            self.append(rec)?;
            self.sync()?;
            let version = vol.keyring().read().primary();
            let keys = self.keys.get(version).ok_or(AuditError::NoKey(version))?;
            c.key_version = version;
            c.pruned_ms = now_ms();
            let bytes = afmt::encode_checkpoint(&c, &keys);
            sys::write_durably(self.dir.as_fd(), AUDIT_CHECKPOINT, &bytes, 0o600)?;
            outcome.through_seq = Some(c.last_seq);
        }
        outcome.leftovers_removed = self.remove_segments(&plan)?;
        Ok(outcome)
    }

    /// Whether the retention rule should run now: at the first call, after
    /// a new segment started, after the rule changed, and hourly (records
    /// age past a `max_age` without any new segment). Marks it as run.
    pub fn retention_due(&self) -> bool {
        let segment = self.writer.lock().segment;
        let mut ran = self.retention_ran.lock();
        let due = match *ran {
            None => true,
            Some((at, seg)) => seg != segment || at.elapsed() >= RETENTION_RECHECK,
        };
        if due {
            *ran = Some((std::time::Instant::now(), segment));
        }
        due
    }

    /// The retention rule changed: it runs at the next schedule tick.
    pub fn retention_changed(&self) {
        *self.retention_ran.lock() = None;
    }

    /// Removes the segments a prune plan lets go; returns how many of them
    /// were leftovers of an earlier, interrupted prune.
    fn remove_segments(&self, plan: &PrunePlan) -> io::Result<u64> {
        let newly = plan.segments as usize;
        let leftovers = plan.remove.len().saturating_sub(newly) as u64;
        for n in &plan.remove {
            match sys::unlinkat(self.dir.as_fd(), OsStr::new(&segment_name(*n)), false) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if !plan.remove.is_empty() {
            sys::fsync_dir(self.dir.as_fd())?;
        }
        Ok(leftovers)
    }

    /// The log's size on disk and what a prune left, for status and
    /// metrics: a directory listing and one `fstat` per segment.
    pub fn usage(&self) -> io::Result<AuditUsage> {
        let reserve_left = {
            let w = self.writer.lock();
            w.reserved.saturating_sub(w.len)
        };
        let mut u = AuditUsage {
            reserve_left,
            ..AuditUsage::default()
        };
        for n in list_segments(self.dir.as_fd())? {
            if let Ok(st) = sys::fstatat(self.dir.as_fd(), OsStr::new(&segment_name(n))) {
                u.bytes += st.st_size as u64;
                u.segments += 1;
            }
        }
        if let Some(b) = read_checkpoint_in(self.dir.as_fd())? {
            let c =
                afmt::open_checkpoint(&b, &self.keys.vol.volume_id(), &mut |v| self.keys.get(v))
                    .ok();
            u.pruned_through_seq = c.map(|c| c.last_seq);
            u.records_pruned = c.map_or(0, |c| c.records_pruned);
        }
        Ok(u)
    }

    /// Makes every appended record durable.
    pub fn sync(&self) -> io::Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            let f = self.writer.lock().file.clone();
            if let Err(e) = f.sync_data() {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Where the log stands: the position after its last record (see
    /// [`super::audit_head`]).
    pub fn head(&self) -> super::audit_head::AuditHead {
        let w = self.writer.lock();
        super::audit_head::AuditHead {
            segment: w.segment,
            seq: w.next_seq,
            chain_mac: w.chain,
        }
    }

    /// The position after the last record appended, in the form
    /// [`check_anchor`] and [`verify_log_anchored`] take (`seq` is the
    /// last record's, not the next one's as in [`AuditLog::head`]).
    /// Appends after this call move it on: take it under the same lock as
    /// the change it anchors if nothing may come in between.
    pub fn last_position(&self) -> AuditHead {
        let w = self.writer.lock();
        AuditHead {
            segment: w.segment,
            seq: w.next_seq - 1,
            chain_mac: w.chain,
        }
    }

    /// The stream this log appends to.
    pub fn stream(&self) -> &AuditStream {
        &self.keys.stream
    }

    /// (segment, next sequence number, key version) for status.
    pub fn position(&self) -> (u64, u64, u32) {
        let w = self.writer.lock();
        (w.segment, w.next_seq, w.key_version)
    }

    fn spawn_syncer(weak: Weak<AuditLog>) {
        let _ = std::thread::Builder::new()
            .name("sealfs-audit".into())
            .spawn(move || loop {
                std::thread::sleep(SYNC_INTERVAL);
                let Some(log) = weak.upgrade() else { return };
                if let Err(e) = log.sync() {
                    tracing::warn!("audit log sync failed: {e}");
                }
            });
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}
