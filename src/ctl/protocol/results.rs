//! The `result` of every operation, as one typed struct each (docs/CONTROL.md
//! §6), and the conversions from the library's own types. The daemon builds
//! these; `sealfs ctl` (and any Rust client) reads them back with
//! [`crate::ctl::client::call`].
//!
//! These are the wire contract, kept apart from the library's internal
//! types on purpose: renaming a field inside the library must not rename it
//! on the wire. The `From` conversions are where the two meet, and the tests
//! check that each mirror serializes exactly as the type it mirrors.
//!
//! Owns: the shape of every result.
//! Must never: carry key material, or change a field's name or meaning
//! within protocol version 1.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::format::audit::{AuditRecord, ChainBreak, ChainReport};
use crate::format::grants::{format_utc, Grant};
use crate::format::keyring::KeyState;
use crate::keyring::{KmsSeen, SlotInfo, UnlockedBy};
use crate::kms::{DeletionPlan, RotationSchedule, Trimmed};
use crate::policy::audit_stream::{AuditStream, StreamReport};
use crate::volume::fsck::FsckReport;
use crate::volume::walk::{Census, RewrapReport};

/// The lifecycle state of a master key version, by its wire name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Wraps (if primary) and unwraps.
    Enabled,
    /// Kept, refuses to unwrap (trimmed).
    Retired,
    /// Retired and scheduled for destruction.
    PendingDeletion,
    /// Key bytes erased.
    Destroyed,
}

impl VersionState {
    /// The wire name (`pending_deletion`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Enabled => "enabled",
            VersionState::Retired => "retired",
            VersionState::PendingDeletion => "pending_deletion",
            VersionState::Destroyed => "destroyed",
        }
    }
}

impl From<KeyState> for VersionState {
    fn from(s: KeyState) -> Self {
        match s {
            KeyState::Enabled => VersionState::Enabled,
            KeyState::Retired => VersionState::Retired,
            KeyState::PendingDeletion => VersionState::PendingDeletion,
            KeyState::Destroyed => VersionState::Destroyed,
        }
    }
}

/// One entry of [`StatusResult::versions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionStatus {
    /// Version number.
    pub version: u32,
    /// Lifecycle state.
    pub state: VersionState,
    /// Creation (Unix seconds).
    pub created: u64,
    /// Wraps new keys?
    pub primary: bool,
    /// Destruction time, only when `pending_deletion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_due: Option<u64>,
    /// File headers under it, from the last census (only once one ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Directory records under it, from the last census.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirs: Option<u64>,
}

impl VersionStatus {
    /// The status of version `v`, with its counts from `census` (once one ran).
    pub fn of(v: &crate::kms::VersionInfo, census: Option<&Census>) -> Self {
        VersionStatus {
            version: v.version,
            state: v.state.into(),
            created: v.created,
            primary: v.primary,
            deletion_due: v.deletion_due,
            files: census.map(|c| c.files.get(&v.version).copied().unwrap_or(0)),
            dirs: census.map(|c| c.dirs.get(&v.version).copied().unwrap_or(0)),
        }
    }
}

/// Progress of the current or last rewrap (`status.rewrap`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrapStatus {
    /// Running?
    pub running: bool,
    /// Headers and directory records to visit.
    pub total: u64,
    /// Visited.
    pub done: u64,
    /// Re-wrapped.
    pub rewrapped: u64,
    /// Left as they were.
    pub failed: u64,
}

impl From<RewrapReport> for RewrapStatus {
    fn from(r: RewrapReport) -> Self {
        RewrapStatus {
            running: r.running,
            total: r.total,
            done: r.done,
            rewrapped: r.rewrapped,
            failed: r.failed,
        }
    }
}

/// The result of `census` (and `status.census`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusResult {
    /// File headers per key version.
    pub files: BTreeMap<u32, u64>,
    /// Directory records per key version.
    pub dirs: BTreeMap<u32, u64>,
    /// Headers or records that did not open.
    pub unreadable: u64,
    /// Those by the version their slot names.
    pub unreadable_by_version: BTreeMap<u32, u64>,
    /// When the scan finished (Unix seconds).
    pub scanned_at: u64,
}

impl From<&Census> for CensusResult {
    fn from(c: &Census) -> Self {
        CensusResult {
            files: c.files.clone(),
            dirs: c.dirs.clone(),
            unreadable: c.unreadable,
            unreadable_by_version: c.unreadable_by_version.clone(),
            scanned_at: c.scanned_at,
        }
    }
}

/// Where the audit log stands (`status.audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPosition {
    /// Current segment number.
    pub segment: u64,
    /// Records appended so far.
    pub records: u64,
    /// The key version the current segment is under.
    pub key_version: u32,
    /// Bytes of all segments on disk.
    #[serde(default)]
    pub bytes: u64,
    /// Segments on disk.
    #[serde(default)]
    pub segments: u64,
    /// Records up to this one were pruned (null: never pruned).
    #[serde(default)]
    pub pruned_through: Option<u64>,
    /// Records pruned in all.
    #[serde(default)]
    pub records_pruned: u64,
    /// Bytes the log can still grow by before it fails closed: free space
    /// in CIPHERDIR plus the space reserved ahead of the current segment.
    #[serde(default)]
    pub headroom: u64,
    /// The retention rule (null: records are kept until pruned by hand).
    #[serde(default)]
    pub retention: Option<RetentionResult>,
    /// The host whose stream this daemon appends to (absent: the local
    /// stream; docs/FORMAT.md §12.4). The figures above are that stream's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// The audit log's retention rule (`audit_retention`, `status.audit.retention`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionResult {
    /// Records older than this are pruned.
    pub max_age: Option<String>,
    /// The log is kept below this many bytes.
    pub max_bytes: Option<u64>,
}

impl From<Option<crate::format::keyring::AuditRetention>> for RetentionResult {
    fn from(r: Option<crate::format::keyring::AuditRetention>) -> Self {
        let r = r.unwrap_or_default();
        RetentionResult {
            max_age: r.max_age,
            max_bytes: r.max_bytes,
        }
    }
}

/// The result of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResult {
    /// Volume id (hex).
    pub volume_id: String,
    /// On-disk format version.
    pub format_version: u32,
    /// The cipher directory (canonical).
    pub cipherdir: PathBuf,
    /// The mount point.
    pub mountpoint: PathBuf,
    /// Mounted read-only?
    pub read_only: bool,
    /// Key disabled?
    pub disabled: bool,
    /// The primary version.
    pub primary: u32,
    /// Every version.
    pub versions: Vec<VersionStatus>,
    /// Automatic rotation period, if on.
    pub rotation_period: Option<String>,
    /// Next automatic rotation, if on.
    pub next_rotation: Option<u64>,
    /// Current or last rewrap.
    pub rewrap: RewrapStatus,
    /// The last census on this mount, if one ran.
    pub census: Option<CensusResult>,
    /// Live grants (null without a grant store).
    pub grants: Option<u64>,
    /// The audit log's position (null with `--no-audit`).
    pub audit: Option<AuditPosition>,
    /// The keyring: layout, generation, keyslots, the slot that unlocked
    /// the volume, and what its KMS said when last asked (absent from
    /// daemons before keyslots).
    #[serde(default)]
    pub keyring: KeyringStatus,
    /// Free space in CIPHERDIR against the ENOSPC margin (null on a
    /// read-only mount, or before the first check).
    #[serde(default)]
    pub space: Option<SpaceStatus>,
    /// Every named key (issue 22; absent from older daemons).
    #[serde(default)]
    pub keys: Vec<super::keys::KeyEntry>,
}

/// The free-space part of `status`: below `margin` free bytes, files are
/// opened write-through so that a full disk shows at `write()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceStatus {
    /// Free bytes in CIPHERDIR at the last check (at most 100 ms old
    /// while files are being opened).
    pub free: u64,
    /// The margin in bytes.
    pub margin: u64,
    /// New opens are write-through.
    pub write_through: bool,
}

/// The keyring part of `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringStatus {
    /// Keyring layout: 1 (no keyslots) or 2.
    pub layout: u16,
    /// How many times the keyring was stored.
    pub generation: u32,
    /// The slot that unlocked this mount.
    pub unlocked_by: Option<UnlockedSlot>,
    /// Every keyslot (empty for layout 1).
    pub keyslots: Vec<KeyslotStatus>,
    /// What the KMS behind the unlocking slot said when last asked (null
    /// without a KMS slot). The mount keeps working from memory whatever it
    /// says, until unmounted.
    pub kms: Option<KmsStatus>,
}

/// The slot that unlocked a mount (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockedSlot {
    /// Slot id (null for a layout-1 keyring).
    pub slot: Option<u32>,
    /// Provider kind.
    pub provider: String,
    /// The slot's label.
    pub label: String,
    /// Its public description (a URI without PIN, a server and key).
    pub description: String,
}

impl From<UnlockedBy> for UnlockedSlot {
    fn from(u: UnlockedBy) -> Self {
        UnlockedSlot {
            slot: u.slot,
            provider: u.provider,
            label: u.label,
            description: u.description,
        }
    }
}

/// One keyslot (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyslotStatus {
    /// Slot id.
    pub id: u32,
    /// Provider kind: `passphrase`, `key-file`, `recovery-key`, `pkcs11`, `transit`.
    pub provider: String,
    /// Label.
    pub label: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Public description.
    pub description: String,
}

impl From<SlotInfo> for KeyslotStatus {
    fn from(s: SlotInfo) -> Self {
        KeyslotStatus {
            id: s.id,
            provider: s.provider,
            label: s.label,
            created: s.created,
            description: s.description,
        }
    }
}

/// What a KMS said when last asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsStatus {
    /// Provider kind (`transit`).
    pub provider: String,
    /// The slot.
    pub slot: u32,
    /// Server and key (never a token).
    pub target: String,
    /// `ok`, `key_disabled`, `key_not_found`, `permission_denied`, `unreachable`, `error`.
    pub state: String,
    /// The KMS's words when not `ok`.
    pub message: Option<String>,
    /// When, seconds since the epoch.
    pub checked_at: u64,
}

impl From<KmsSeen> for KmsStatus {
    fn from(k: KmsSeen) -> Self {
        KmsStatus {
            provider: k.provider,
            slot: k.slot,
            target: k.target,
            state: k.state,
            message: k.message,
            checked_at: k.checked_at,
        }
    }
}

/// The result of `rotate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateResult {
    /// The new primary version.
    pub primary: u32,
}

/// The result of `rewrap` (it runs on in the background).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrapStarted {
    /// Always true.
    pub started: bool,
    /// The version it re-wraps to.
    pub primary: u32,
}

/// The result of `metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsResult {
    /// The Prometheus text exposition.
    pub text: String,
}

/// The result of `disable` and `enable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisabledResult {
    /// The flag now.
    pub disabled: bool,
}

/// The result of `set_rotation_period`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationPeriodResult {
    /// The period, if on.
    pub rotation_period: Option<String>,
    /// The next rotation, if on.
    pub next_rotation: Option<u64>,
}

impl From<RotationSchedule> for RotationPeriodResult {
    fn from(s: RotationSchedule) -> Self {
        RotationPeriodResult {
            rotation_period: s.rotation_period,
            next_rotation: s.next_rotation,
        }
    }
}

/// The result of `trim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimResult {
    /// Versions this call retired.
    pub retired: Vec<u32>,
    /// Directory records re-wrapped first.
    pub directory_records_rewrapped: u64,
    /// Headers a forced trim left unreadable.
    pub headers_left_unreadable: u64,
}

impl From<Trimmed> for TrimResult {
    fn from(t: Trimmed) -> Self {
        TrimResult {
            retired: t.retired,
            directory_records_rewrapped: t.directory_records_rewrapped,
            headers_left_unreadable: t.headers_left_unreadable,
        }
    }
}

/// The result of `untrim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntrimResult {
    /// The version enabled again.
    pub enabled: u32,
}

/// The result of `schedule_deletion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleDeletionResult {
    /// The version.
    pub version: u32,
    /// Headers and records that would become unreadable.
    pub would_orphan: u64,
    /// Destruction time, when confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_due: Option<u64>,
    /// Done (true) or a dry run.
    pub confirmed: bool,
}

impl From<DeletionPlan> for ScheduleDeletionResult {
    fn from(p: DeletionPlan) -> Self {
        ScheduleDeletionResult {
            version: p.version,
            would_orphan: p.would_orphan,
            deletion_due: p.deletion_due,
            confirmed: p.confirmed,
        }
    }
}

/// The result of `cancel_deletion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelDeletionResult {
    /// The version.
    pub version: u32,
    /// Its state now (`retired`).
    pub state: VersionState,
}

/// One grant as listed (`grant_list`, `grant_create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantInfo {
    /// Grant id (`g-…`).
    pub grant_id: String,
    /// Label.
    pub name: Option<String>,
    /// `uid:N` or `gid:N`.
    pub grantee: String,
    /// Operations.
    pub ops: Vec<String>,
    /// Path prefix.
    pub path_prefix: String,
    /// Creation (UTC).
    pub created: String,
    /// Expiry (UTC), if any.
    pub expires: Option<String>,
    /// Uid that created it.
    pub created_by: u32,
    /// The id of the key whose entries it opens (absent: the default key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<u32>,
}

impl From<&Grant> for GrantInfo {
    fn from(g: &Grant) -> Self {
        GrantInfo {
            grant_id: g.id.clone(),
            name: g.name.clone(),
            grantee: g.grantee.display(),
            ops: g.ops.names().into_iter().map(str::to_string).collect(),
            path_prefix: g.path_prefix.clone(),
            created: format_utc(g.created),
            expires: g.expires.map(format_utc),
            created_by: g.created_by,
            key: g.key,
        }
    }
}

/// The result of `grant_create`: the grant and its token (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantCreated {
    /// The grant.
    #[serde(flatten)]
    pub grant: GrantInfo,
    /// The bearer token the grantee retires it with.
    pub grant_token: String,
}

/// The result of `grant_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantList {
    /// Live grants.
    pub grants: Vec<GrantInfo>,
}

/// The result of `grant_retire`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRetired {
    /// The grant id.
    pub retired: String,
}

/// The result of `grant_revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRevoked {
    /// The grant id.
    pub revoked: String,
}

/// Where an audit chain breaks ([`VerifyResult::breaks`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreakInfo {
    /// Segment number.
    pub segment: u64,
    /// Byte offset in it.
    pub offset: u64,
    /// The sequence number expected there (0: unknown).
    pub expected_seq: u64,
    /// What is wrong.
    pub reason: String,
    /// The first record that verified again after the break: records
    /// `expected_seq .. resumed_seq` are missing or unverifiable (absent:
    /// nothing after the break verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_seq: Option<u64>,
    /// The host whose audit stream breaks (absent: the local stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl From<&ChainBreak> for ChainBreakInfo {
    fn from(b: &ChainBreak) -> Self {
        ChainBreakInfo {
            segment: b.segment,
            offset: b.offset,
            expected_seq: b.expected_seq,
            reason: b.reason.clone(),
            resumed_seq: b.resumed_seq,
            host: None,
        }
    }
}

impl ChainBreakInfo {
    /// The break `b` in the stream `stream`.
    pub fn in_stream(b: &ChainBreak, stream: &AuditStream) -> Self {
        ChainBreakInfo {
            host: stream.name(),
            ..ChainBreakInfo::from(b)
        }
    }
}

/// One host's audit stream in [`VerifyResult::streams`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamVerifyInfo {
    /// The host (absent: the local stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Segments read.
    pub segments: u64,
    /// Records that verified.
    pub records: u64,
    /// Sequence number of the stream's last good record.
    pub last_seq: u64,
    /// Breaks in this stream.
    pub breaks: u64,
}

/// The result of `audit_verify` (and the report of `sealfs audit verify`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// Segments read.
    pub segments: u64,
    /// Records that verified (the walk goes on past a break).
    pub records: u64,
    /// Sequence number of the last good record.
    pub last_seq: u64,
    /// Bytes of an incomplete last record (not an error).
    pub torn_tail_bytes: u64,
    /// The first break, if any (the first of `breaks`).
    pub first_break: Option<ChainBreakInfo>,
    /// Every break, in log order.
    #[serde(default)]
    pub breaks: Vec<ChainBreakInfo>,
    /// What earlier prunes removed (a checkpoint that verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<crate::format::audit::PrunedInfo>,
    /// Each stream on its own, when hosts' streams exist (shared storage;
    /// the totals above are then sums, `last_seq` the local stream's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamVerifyInfo>,
}

impl From<&[StreamReport]> for VerifyResult {
    fn from(reports: &[StreamReport]) -> Self {
        if let [only] = reports {
            if only.stream == AuditStream::Local {
                return VerifyResult::from(&only.report);
            }
        }
        let mut v = VerifyResult::default();
        for StreamReport { stream, report: r } in reports {
            v.segments += r.segments;
            v.records += r.records;
            v.torn_tail_bytes += r.torn_tail_bytes;
            v.breaks.extend(
                r.breaks
                    .iter()
                    .map(|b| ChainBreakInfo::in_stream(b, stream)),
            );
            if *stream == AuditStream::Local {
                v.last_seq = r.last_seq;
                v.pruned = r.pruned;
            }
            v.streams.push(StreamVerifyInfo {
                host: stream.name(),
                segments: r.segments,
                records: r.records,
                last_seq: r.last_seq,
                breaks: r.breaks.len() as u64,
            });
        }
        v.first_break = v.breaks.first().cloned();
        v
    }
}

impl From<&ChainReport> for VerifyResult {
    fn from(r: &ChainReport) -> Self {
        VerifyResult {
            segments: r.segments,
            records: r.records,
            last_seq: r.last_seq,
            torn_tail_bytes: r.torn_tail_bytes,
            first_break: r.first_break().map(ChainBreakInfo::from),
            breaks: r.breaks.iter().map(ChainBreakInfo::from).collect(),
            pruned: r.pruned,
            streams: Vec::new(),
        }
    }
}

/// One exported audit record: the record plus its time as UTC text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRecord {
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// `time_ms` as `2026-11-22T22:33:43.125Z`.
    pub time: String,
    /// The host whose audit stream holds the record (absent: the local
    /// stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl ExportedRecord {
    /// The record `r` of the stream `stream`.
    pub fn in_stream(r: &AuditRecord, stream: &AuditStream) -> Self {
        ExportedRecord {
            host: stream.name(),
            ..ExportedRecord::from(r)
        }
    }
}

impl From<&AuditRecord> for ExportedRecord {
    fn from(r: &AuditRecord) -> Self {
        ExportedRecord {
            host: None,
            record: r.clone(),
            time: format!(
                "{}.{:03}Z",
                format_utc(r.time_ms / 1000).trim_end_matches('Z'),
                r.time_ms % 1000
            ),
        }
    }
}

/// A line `audit_export` streams before its response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedLine {
    /// The record.
    pub record: ExportedRecord,
}

/// A line `audit_export` streams where the chain breaks, between the
/// records before and after the break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedBreak {
    /// Where and why.
    #[serde(rename = "break")]
    pub brk: ChainBreakInfo,
}

/// The result of `audit_export` (after the streamed records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSummary {
    /// Records written.
    pub exported: u64,
    /// The chain check of the whole log.
    pub verify: VerifyResult,
}

/// A plaintext byte range a problem affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckRange {
    /// First chunk index.
    pub first_chunk: u64,
    /// Last chunk index (inclusive).
    pub last_chunk: u64,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// One problem of an fsck report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckProblem {
    /// What kind (`chunk`, `orphan`, …: fsck's vocabulary).
    pub kind: String,
    /// Plaintext path, where known.
    pub path: Option<String>,
    /// Backing path relative to CIPHERDIR.
    pub backing: String,
    /// What is wrong.
    pub message: String,
    /// Affected ranges.
    pub ranges: Vec<FsckRange>,
    /// `not-attempted`, `repaired`, `unrepairable` or `failed`.
    pub repair: String,
    /// How it was repaired, or why not.
    pub action: Option<String>,
}

impl FsckProblem {
    /// Whether salvage repaired it.
    pub fn repaired(&self) -> bool {
        self.repair == "repaired"
    }
}

/// Counts of what fsck checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckCounts {
    /// Directories.
    pub directories: u64,
    /// Regular files.
    pub files: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Other entries.
    pub other: u64,
    /// Chunks authenticated.
    pub chunks: u64,
    /// Plaintext bytes.
    pub bytes: u64,
}

/// The result of `fsck` (and the report `sealfs fsck --json` prints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckResult {
    /// Every problem, in the order found.
    pub problems: Vec<FsckProblem>,
    /// What was checked.
    pub stats: FsckCounts,
    /// Whether salvage ran.
    pub salvage: bool,
}

/// The wire name of a unit enum that serializes as a string.
fn wire_name<T: Serialize>(t: &T) -> String {
    match serde_json::to_value(t) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

impl From<&FsckReport> for FsckResult {
    fn from(r: &FsckReport) -> Self {
        FsckResult {
            problems: r
                .problems
                .iter()
                .map(|p| FsckProblem {
                    kind: wire_name(&p.kind),
                    path: p.path.clone(),
                    backing: p.backing.clone(),
                    message: p.message.clone(),
                    ranges: p
                        .ranges
                        .iter()
                        .map(|x| FsckRange {
                            first_chunk: x.first_chunk,
                            last_chunk: x.last_chunk,
                            start: x.start,
                            end: x.end,
                        })
                        .collect(),
                    repair: wire_name(&p.repair),
                    action: p.action.clone(),
                })
                .collect(),
            stats: FsckCounts {
                directories: r.stats.directories,
                files: r.stats.files,
                symlinks: r.stats.symlinks,
                other: r.stats.other,
                chunks: r.stats.chunks,
                bytes: r.stats.bytes,
            },
            salvage: r.salvage,
        }
    }
}
