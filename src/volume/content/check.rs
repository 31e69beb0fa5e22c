//! Checking and repairing one file's content, for fsck: authenticate every
//! chunk that should hold data and every group state, and re-seal what
//! salvage repairs.
//!
//! Owns: what a file's content must look like, and the repairs salvage
//! writes to it (always reported by the caller, never silent).
//! Must never: write a chunk or state that checked clean.

use std::collections::BTreeSet;

use crate::format::chunk::ContentFormat;
use crate::format::group_state::{GroupState, StateError};
use crate::format::layout::{
    chunk_count, chunk_data_offset, chunk_len, chunk_meta_offset, ciphertext_size, last_group,
    plaintext_size, ChunkIndex, CHUNKS_PER_GROUP,
};
use crate::volume::error::VolumeError;

use super::groups::{local_count, End};
use super::packed::Tail;
use super::run::{pread_some, runs, set_len, CS, ML};
use super::SealedFile;

/// What a scan of every chunk of a file found ([`SealedFile::scan`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkScan {
    /// Chunks that should hold data and fail authentication (or could not
    /// be read), ascending; chunks past the end of a cut ciphertext are not
    /// here (see [`ChunkScan::lost_from`]).
    pub bad: Vec<ChunkIndex>,
    /// The final chunk, if it is authentic but lacks the last flag (the
    /// file was cut at a chunk boundary; last-chunk-flag format).
    pub cut: Option<ChunkIndex>,
    /// Chunks authenticated (tried).
    pub checked: u64,
    /// Groups inside the size whose state is missing or does not open
    /// (sealed group states): which of their chunks hold data is unknown.
    pub bad_states: Vec<(u64, StateError)>,
    /// Groups before the last one whose state still carries the last flag
    /// (a crash while the file grew).
    pub stale_last: Vec<u64>,
    /// The last group's own state does not carry the size (a truncation
    /// was interrupted; the size is in a later group's state).
    pub unsettled: bool,
    /// The ciphertext ends before the sealed size: plaintext bytes from
    /// this offset on are not stored (the file was cut).
    pub lost_from: Option<u64>,
    /// No state carries the size: the file's end is lost (the size used is
    /// the one the ciphertext's length maps to).
    pub end_lost: bool,
}

/// How [`SealedFile::reseal`] re-seals one chunk (last-chunk-flag format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// As zeros of the same length (its content is lost).
    Zeros,
    /// With its own (authentic) content, and the right last flag.
    KeepContent,
}

/// What [`SealedFile::rebuild`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Chunks re-sealed as zeros (their bit kept: they read as zeros now).
    pub zeroed: Vec<ChunkIndex>,
    /// Chunks of groups whose state was lost that were found all-zero and
    /// taken as holes.
    pub taken_as_holes: Vec<ChunkIndex>,
    /// Group states written.
    pub states: u64,
    /// The size the file has now.
    pub size: u64,
}

impl SealedFile {
    /// Authenticates every chunk of the file that should hold data (one
    /// group run at a time), and with sealed group states every group's
    /// state. A run that cannot be read counts as bad chunks.
    pub fn scan(&self) -> ChunkScan {
        match self.format() {
            ContentFormat::LastChunkFlag => self.scan_v1(),
            ContentFormat::SealedGroupState | ContentFormat::PackedTails => self.scan_v2(),
        }
    }

    fn scan_v1(&self) -> ChunkScan {
        let size = self.size;
        let mut out = ChunkScan::default();
        let n = chunk_count(size);
        if n == 0 {
            return out;
        }
        let last = n - 1;
        let mut data = vec![0u8; CHUNKS_PER_GROUP as usize * CS];
        let mut meta = vec![0u8; CHUNKS_PER_GROUP as usize * ML];
        for run in runs(0, last, size) {
            let (data, meta) = (&mut data[..run.data_len], &mut meta[..run.meta_len()]);
            let read = super::run::pread_exact(&self.file, data, chunk_data_offset(run.first))
                .and_then(|_| {
                    super::run::pread_exact(&self.file, meta, chunk_meta_offset(run.first))
                });
            if read.is_err() {
                out.bad.extend(run.chunks());
                continue;
            }
            for k in run.chunks() {
                out.checked += 1;
                let a = run.data_at(k);
                let chunk = &mut data[a..a + chunk_len(k, size)];
                let entry = run.entry(meta, k);
                if self.chunks.open(k, k == last, chunk, entry).is_ok() {
                    continue;
                }
                if k == last && self.chunks.open(k, false, chunk, entry).is_ok() {
                    out.cut = Some(k);
                } else {
                    out.bad.push(k);
                }
            }
        }
        out
    }

    fn scan_v2(&self) -> ChunkScan {
        let size = self.size;
        let groups = self.groups.as_ref().expect("groups");
        let d = self.found.expect("opened with sealed group states");
        let mut out = ChunkScan {
            end_lost: d.end == End::Lost,
            ..ChunkScan::default()
        };
        if d.missing() > 0 {
            out.lost_from = Some(plaintext_size(d.csize).unwrap_or(0));
        }
        let stored_end = out.lost_from.unwrap_or(size);
        let gl = last_group(size);
        let mut buf = [0u8; CS];
        for g in 0..=gl {
            let s = match groups.read(&self.file, g) {
                Ok(s) => s,
                Err(VolumeError::GroupState(e)) => {
                    out.bad_states.push((g, e));
                    continue;
                }
                Err(_) => {
                    out.bad_states.push((g, StateError::Missing(g)));
                    continue;
                }
            };
            if g < gl && s.last {
                out.stale_last.push(g);
            }
            if g == gl && !(s.last && s.size == size) && !out.end_lost {
                out.unsettled = true;
            }
            let tail = Tail::of(&s).filter(|_| g == 0);
            for i in 0..local_count(size, g) {
                let k = g * CHUNKS_PER_GROUP + i;
                if !s.is_written(i) || k * CS as u64 >= stored_end {
                    continue;
                }
                out.checked += 1;
                let chunk = &mut buf[..chunk_len(k, size)];
                let read = match tail.filter(|t| t.k == k) {
                    Some(t) => self.read_packed(t, chunk),
                    None => self.read_stored_chunk(k, size, chunk),
                };
                if read.is_err() {
                    out.bad.push(k);
                }
            }
        }
        out
    }

    /// Reads and authenticates chunk `k` (its bit is set), whatever its
    /// group's state says.
    fn read_stored_chunk(
        &self,
        k: ChunkIndex,
        size: u64,
        buf: &mut [u8],
    ) -> Result<(), VolumeError> {
        let mut entry = [0u8; ML];
        let n = pread_some(&self.file, buf, chunk_data_offset(k))?;
        if n < buf.len() {
            return Err(VolumeError::Truncated);
        }
        super::run::pread_exact(&self.file, &mut entry, chunk_meta_offset(k))?;
        self.open_v2(k, size, buf, &entry)
    }

    /// Re-seals chunks in place (fsck's salvage, last-chunk-flag format),
    /// each with the right last flag: as zeros, or with its own content (a
    /// cut file's final chunk, read without the flag it lacks). Only these
    /// chunks' bytes are written, then the file's data is synced.
    pub fn reseal(&self, chunks: &[(ChunkIndex, Reseal)]) -> Result<(), VolumeError> {
        let last = chunk_count(self.size).saturating_sub(1);
        for &(k, how) in chunks {
            let mut buf = vec![0u8; chunk_len(k, self.size)];
            if how == Reseal::KeepContent {
                self.read_chunk_as(k, false, &mut buf)?;
            }
            self.store_chunk(k, k == last, &mut buf)?;
        }
        self.file.sync_data()?;
        Ok(())
    }

    /// Repairs a file with sealed group states after `scan` (fsck's
    /// salvage), knowingly: chunks marked written that do not authenticate,
    /// and chunks a cut ciphertext lost, are re-sealed as zeros with their
    /// bit kept; a group whose state is lost gets a new one (chunks that
    /// authenticate hold data, all-zero ones are taken as holes, the rest
    /// are re-sealed as zeros); a lost end takes the size the ciphertext
    /// maps to; every state is rewritten where it differs (the last one
    /// carrying the size), then the ciphertext is cut or extended to the
    /// size and synced. What it did is returned for the report.
    pub fn rebuild(&mut self, scan: &ChunkScan) -> Result<Rebuilt, VolumeError> {
        let size = self.size;
        let gl = last_group(size);
        let bad: BTreeSet<ChunkIndex> = scan.bad.iter().copied().collect();
        let lost_states: BTreeSet<u64> = scan.bad_states.iter().map(|(g, _)| *g).collect();
        let stored_end = scan.lost_from.unwrap_or(size);
        let mut out = Rebuilt {
            size,
            ..Rebuilt::default()
        };
        let mut buf = [0u8; CS];
        for g in 0..=gl {
            let known = if lost_states.contains(&g) {
                None
            } else {
                self.groups
                    .as_ref()
                    .expect("groups")
                    .read(&self.file, g)
                    .ok()
            };
            let mut s = known.unwrap_or(GroupState::EMPTY);
            s.written = s.written_below(local_count(size, g));
            // A packed tail that is kept stays packed; one re-sealed as
            // zeros goes to its place in the group.
            let tail = known
                .filter(|st| g == 0 && st.size == size)
                .and_then(|st| Tail::of(&st));
            s.packed = tail.is_some();
            for i in 0..local_count(size, g) {
                let k = g * CHUNKS_PER_GROUP + i;
                let len = chunk_len(k, size);
                let zero = if k * CS as u64 >= stored_end {
                    // Lost with the cut: zeros, and said so (a known hole
                    // stays a hole).
                    if known.is_some_and(|st| !st.is_written(i)) {
                        false
                    } else {
                        s.written |= 1u128 << i;
                        true
                    }
                } else if known.is_none() {
                    let chunk = &mut buf[..len];
                    if self.read_stored_chunk(k, size, chunk).is_ok() {
                        s.written |= 1u128 << i;
                        false
                    } else if let Some(t) = self.lost_packed_tail(g, k, size) {
                        // Group 0's state was lost with a packed tail: the
                        // tail authenticates in block 0 and stays there.
                        let _ = t;
                        s.written |= 1u128 << i;
                        s.packed = true;
                        false
                    } else if self.all_zero(k, len)? {
                        out.taken_as_holes.push(k);
                        false
                    } else {
                        s.written |= 1u128 << i;
                        true
                    }
                } else {
                    s.is_written(i) && bad.contains(&k)
                };
                if zero {
                    let mut z = vec![0u8; len];
                    self.store_chunk(k, false, &mut z)?;
                    out.zeroed.push(k);
                    if tail.is_some_and(|t| t.k == k) {
                        s.packed = false;
                    }
                }
            }
            s.last = g == gl;
            s.size = if s.last { size } else { 0 };
            s.packed = s.packed && s.may_pack(g);
            if known != Some(s) {
                let (file, groups) = (&self.file, self.groups.as_mut().expect("groups"));
                groups.store(file, g, s)?;
                out.states += 1;
            }
        }
        let cut = ciphertext_size(size);
        set_len(&self.file, cut)?;
        self.csize = cut;
        self.groups.as_mut().expect("groups").forget_from(gl + 1);
        self.found = Some(super::Discovery {
            csize: cut,
            end: End::Sealed { size, at: gl },
        });
        self.file.sync_data()?;
        Ok(out)
    }

    /// Chunk `k` of a file of `size` bytes as a packed tail in block 0,
    /// when it could be one and authenticates there (a salvage of a lost
    /// group 0 state).
    fn lost_packed_tail(&self, g: u64, k: ChunkIndex, size: u64) -> Option<Tail> {
        let candidate = GroupState {
            written: 1u128 << k,
            last: true,
            size,
            packed: true,
        };
        if !self.packs_tails() || !candidate.may_pack(g) {
            return None;
        }
        let t = Tail::of(&candidate)?;
        let mut buf = vec![0u8; t.len];
        self.read_packed(t, &mut buf).ok().map(|_| t)
    }

    /// Whether chunk `k`'s stored data (`len` bytes) and entry are all zero.
    fn all_zero(&self, k: ChunkIndex, len: usize) -> Result<bool, VolumeError> {
        let mut d = vec![0u8; len];
        let mut e = [0u8; ML];
        pread_some(&self.file, &mut d, chunk_data_offset(k))?;
        pread_some(&self.file, &mut e, chunk_meta_offset(k))?;
        Ok(d.iter().chain(e.iter()).all(|&b| b == 0))
    }
}
