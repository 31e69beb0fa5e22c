//! What an fsck run hands back: every problem found (kind, plaintext and
//! backing path, affected byte ranges), what salvage did about it, and
//! counts of what was checked. Serialized as the stable JSON of `sealfs
//! fsck --json`.
//!
//! Owns: the report's types and their stable names.
//! Must never: hold key material or plaintext content (paths only).

use serde::Serialize;

use crate::format::layout::CHUNK_SIZE;

/// The kind of a problem (stable names in the JSON output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// `sealfs.toml` is damaged, missing, or disagrees with the keyring.
    Config,
    /// One keyring copy is missing, damaged or stale.
    Keyring,
    /// A key version in the keyring is unusable (e.g. its key is missing).
    KeyVersion,
    /// One copy of a directory record is missing or damaged, or they disagree.
    DirRecordCopy,
    /// Both copies of a directory record are lost: the names below it are.
    DirRecordLost,
    /// A file header is truncated or damaged (its data key is lost).
    Header,
    /// A header or directory record does not open for its path: moved,
    /// copied or tampered with.
    ContextMismatch,
    /// A header is under a key version that is retired, destroyed or absent.
    KeyUnavailable,
    /// Chunks fail authentication.
    Chunk,
    /// The file was cut: at a chunk boundary (its final chunk lacks the
    /// last flag), or short of its sealed size (sealed group states).
    Truncated,
    /// A ciphertext tail that no plaintext size maps to (a crash while
    /// growing), or past the sealed size (sealed group states).
    SizeTail,
    /// A chunk group's sealed state is missing, does not open, or is stale
    /// (sealed group states).
    GroupState,
    /// A symlink target does not decrypt.
    Symlink,
    /// An extended attribute does not open (moved from another object or
    /// name, or tampered with).
    Xattr,
    /// A backing entry no directory record accounts for.
    Orphan,
    /// A leftover temp file of an interrupted write.
    TempFile,
    /// A long-name sidecar without its entry.
    StraySidecar,
    /// Something could not be read.
    Io,
}

/// What salvage did about a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Repair {
    /// Checking only.
    NotAttempted,
    /// Repaired (see the action).
    Repaired,
    /// Cannot be repaired (e.g. the key that would open it is gone).
    Unrepairable,
    /// A repair was tried and failed (see the action).
    Failed,
}

/// A plaintext byte range of a file, with the chunks it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ByteRange {
    /// First chunk index.
    pub first_chunk: u64,
    /// Last chunk index (inclusive).
    pub last_chunk: u64,
    /// First plaintext byte.
    pub start: u64,
    /// One past the last plaintext byte.
    pub end: u64,
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// Plaintext path in the volume (`/a/b`), where it could be recovered.
    pub path: Option<String>,
    /// Backing path relative to CIPHERDIR.
    pub backing: String,
    /// What is wrong, in words.
    pub message: String,
    /// Affected plaintext ranges (chunk problems).
    pub ranges: Vec<ByteRange>,
    /// What salvage did.
    pub repair: Repair,
    /// How it was repaired, or why not.
    pub action: Option<String>,
}

/// Counts of what was checked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckStats {
    /// Directories (root included).
    pub directories: u64,
    /// Regular files.
    pub files: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// FIFOs, sockets, devices.
    pub other: u64,
    /// Chunks authenticated.
    pub chunks: u64,
    /// Plaintext bytes of the files checked.
    pub bytes: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
    /// What was checked.
    pub stats: FsckStats,
    /// Whether salvage ran.
    pub salvage: bool,
}

impl Problem {
    /// Records the outcome of a repair (`done`: what it did, when it worked).
    pub(crate) fn record_repair<E: std::fmt::Display>(&mut self, r: Result<(), E>, done: &str) {
        match r {
            Ok(()) => {
                self.repair = Repair::Repaired;
                self.action = Some(done.into());
            }
            Err(e) => {
                self.repair = Repair::Failed;
                self.action = Some(format!("repair failed: {e}"));
            }
        }
    }
}

impl FsckReport {
    /// No problem at all.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Problems were found and every one was repaired.
    pub fn all_repaired(&self) -> bool {
        !self.problems.is_empty() && self.problems.iter().all(|p| p.repair == Repair::Repaired)
    }
}

/// Merges sorted chunk indices into plaintext byte ranges of a file of `size` bytes.
pub fn chunk_ranges(chunks: &[u64], size: u64) -> Vec<ByteRange> {
    let mut out: Vec<ByteRange> = Vec::new();
    for &k in chunks {
        let start = k * CHUNK_SIZE;
        let end = (start + CHUNK_SIZE).min(size.max(start));
        match out.last_mut() {
            Some(r) if r.last_chunk + 1 == k => {
                r.last_chunk = k;
                r.end = end;
            }
            _ => out.push(ByteRange {
                first_chunk: k,
                last_chunk: k,
                start,
                end,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_clip() {
        let r = chunk_ranges(&[0, 1, 3], 3 * 4096 + 10);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].start, r[0].end, r[0].first_chunk, r[0].last_chunk),
            (0, 8192, 0, 1)
        );
        assert_eq!((r[1].start, r[1].end), (3 * 4096, 3 * 4096 + 10));
        assert!(chunk_ranges(&[], 100).is_empty());
    }

    #[test]
    fn report_states() {
        let mut r = FsckReport::default();
        assert!(r.is_clean() && !r.all_repaired());
        r.problems.push(Problem {
            kind: ProblemKind::Chunk,
            path: None,
            backing: ".".into(),
            message: String::new(),
            ranges: vec![],
            repair: Repair::Repaired,
            action: None,
        });
        assert!(!r.is_clean() && r.all_repaired());
        r.problems[0].repair = Repair::Failed;
        assert!(!r.all_repaired());
    }
}
