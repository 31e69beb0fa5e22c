//! Packed tails (feature `packed-tails`, docs/FORMAT.md §4.7): a file that
//! ends in group 0 keeps its final chunk's data in block 0, between the end
//! of that chunk's entry and the link table's area, so a small file takes
//! one backing block instead of two.
//!
//! Every change of a file that ends in group 0 before and after it is made
//! here, with one commit: the data of the chunks that do not live in block
//! 0 first (at their place in the group, where the state on disk does not
//! read them yet, or where a failed chunk is allowed), then **one write of
//! block 0's bytes 160..3840**: group 0's state (the packed flag, the size,
//! the bits), the entries of every chunk the change sealed, and the tail's
//! data. A crash before that write leaves the old file, after it the new
//! one. Only then is the ciphertext cut (a truncation) and the chunk's old
//! place punched out (when the tail moved into block 0).
//!
//! A change that takes the file past group 0 first *unpacks* the tail: its
//! ciphertext (unchanged: same entry, same AAD) is copied to its place in
//! the group, then group 0's state is rewritten without the flag; from
//! there the orders of §4.3 apply unchanged.
//!
//! Owns: where a packed tail lives, when a change packs or unpacks it, and
//! the order of those writes.
//! Must never: write a packed tail's bytes anywhere but in the one write
//! that commits the state saying where it is, or read a tail from block 0
//! unless group 0's authenticated state says it is packed.

use crate::format::chunk::MetaEntry;
use crate::format::group_state::GroupState;
use crate::format::layout::{
    chunk_count, chunk_data_offset, chunk_len, chunk_meta_offset, ciphertext_size, last_group,
    packed_tail_offset, ChunkIndex, CHUNK_SIZE, META_ENTRIES_OFFSET, META_ENTRY_LEN,
    META_STATE_OFFSET, PACKED_TAIL_END,
};
use crate::volume::error::VolumeError;

use super::groups::local_count;
use super::run::{last_chunk, pread_exact, pwrite, set_len, CS, ML};
use super::{SealedFile, WriteSpan};

/// Bytes of block 0 one commit writes: the state, every entry of group 0
/// and the free room up to the link table's area.
const COMMIT_LEN: usize = (PACKED_TAIL_END - META_STATE_OFFSET) as usize;

/// A chunk the change re-sealed, outside the write's own chunks: the old
/// final chunk padded to its new length (growth past it) or the new final
/// chunk cut to its length (a truncation inside it).
struct Resealed {
    k: ChunkIndex,
    data: Vec<u8>,
    entry: MetaEntry,
}

/// Where a packed tail is: chunk, offset in block 0, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tail {
    pub(super) k: ChunkIndex,
    pub(super) at: u64,
    pub(super) len: usize,
}

impl Tail {
    /// The packed tail a state says the file has (None: not packed).
    pub(super) fn of(s: &GroupState) -> Option<Tail> {
        if !s.packed {
            return None;
        }
        let k = (s.size - 1) / CHUNK_SIZE;
        let len = chunk_len(k, s.size);
        Some(Tail {
            k,
            at: packed_tail_offset(len),
            len,
        })
    }
}

/// Block 0's bytes 160..3840 being assembled for a commit.
struct Commit {
    bytes: [u8; COMMIT_LEN],
}

impl Commit {
    fn put(&mut self, at: u64, data: &[u8]) {
        let a = (at - META_STATE_OFFSET) as usize;
        self.bytes[a..a + data.len()].copy_from_slice(data);
    }

    fn entry(&mut self, k: ChunkIndex, e: &[u8]) {
        self.put(chunk_meta_offset(k), &e[..ML]);
    }

    /// Zeros from the end of chunk `k`'s entry (every entry for `None`) to
    /// the link table's area: entries past the size mean nothing, and an
    /// old tail must not linger.
    fn clear_after(&mut self, k: Option<ChunkIndex>) {
        let from = META_ENTRIES_OFFSET + k.map_or(0, |k| (k + 1) * META_ENTRY_LEN);
        self.bytes[(from - META_STATE_OFFSET) as usize..].fill(0);
    }
}

impl SealedFile {
    /// Group 0's state (read from disk the first time).
    fn load_group0(&mut self) -> Result<GroupState, VolumeError> {
        let file = &self.file;
        self.groups.as_mut().expect("groups").load(file, 0)
    }

    /// Whether this file's volume packs tails.
    pub(super) fn packs_tails(&self) -> bool {
        self.groups.as_ref().is_some_and(|g| g.cipher.packs_tails())
    }

    /// The packed tail, as group 0's state on disk says (loaded and
    /// remembered the first time; a state that does not open packs
    /// nothing, and its chunks fail on their own).
    pub(super) fn packed_tail(&self) -> Option<Tail> {
        let g = self.groups.as_ref()?;
        if !g.cipher.packs_tails() {
            return None;
        }
        let s = match g.get(0) {
            Some(s) => s,
            None => {
                let s = g.read(&self.file, 0).ok()?;
                g.remember(0, s);
                s
            }
        };
        Tail::of(&s)
    }

    /// Reads and opens a packed tail into `buf` (its length).
    pub(super) fn read_packed(&self, t: Tail, buf: &mut [u8]) -> Result<(), VolumeError> {
        if buf.len() != t.len {
            return Err(VolumeError::Truncated);
        }
        let mut entry = [0u8; ML];
        pread_exact(&self.file, buf, t.at)?;
        pread_exact(&self.file, &mut entry, chunk_meta_offset(t.k))?;
        self.chunks.open(t.k, false, buf, &entry)?;
        Ok(())
    }

    /// Whether a change to `new` bytes is made in block 0 (see the module
    /// docs): the volume packs tails, the file ends in group 0 before and
    /// after, and group 0's own state carries the size (no stray tail or
    /// unsettled truncation left).
    pub(super) fn in_block0(&mut self, new: u64) -> Result<bool, VolumeError> {
        if !self.packs_tails() || last_group(self.size) != 0 || last_group(new) != 0 {
            return Ok(false);
        }
        if self.stray_tail() > 0 {
            return Ok(false);
        }
        let s0 = self.load_group0()?;
        Ok(s0.last && s0.size == self.size)
    }

    /// Moves a packed tail back to its place in group 0: its ciphertext is
    /// copied there (the range is a hole that the state does not read),
    /// then group 0's state is rewritten without the flag. Nothing to do
    /// for a file without one.
    pub(super) fn unpack_tail(&mut self) -> Result<(), VolumeError> {
        let Some(t) = self.packed_tail() else {
            return Ok(());
        };
        let mut data = vec![0u8; t.len];
        pread_exact(&self.file, &mut data, t.at)?;
        pwrite(&self.file, &data, chunk_data_offset(t.k))?;
        crate::keyring::kill_point("tail-unpack-copied");
        let file = &self.file;
        let groups = self.groups.as_mut().expect("groups");
        let s = groups.load(file, 0)?;
        groups.store(file, 0, GroupState { packed: false, ..s })?;
        Ok(())
    }

    /// Writes block 0's commit: group 0's state `s`, the entries and tail
    /// `fill` puts in, zeros after the final chunk's entry up to the tail.
    fn commit_block0(
        &mut self,
        s: GroupState,
        fill: impl FnOnce(&mut Commit),
    ) -> Result<(), VolumeError> {
        let mut c = Commit {
            bytes: [0u8; COMMIT_LEN],
        };
        pread_exact(&self.file, &mut c.bytes, META_STATE_OFFSET)?;
        c.clear_after(last_chunk(s.size));
        let area = self.groups_mut().seal(0, &s)?;
        c.put(META_STATE_OFFSET, &area);
        fill(&mut c);
        pwrite(&self.file, &c.bytes, META_STATE_OFFSET)?;
        self.groups_mut().remember(0, s);
        Ok(())
    }

    /// After a commit that packed chunk `k`'s data into block 0: its old
    /// place is punched out when it may hold data (it was the stored final
    /// chunk, or a full chunk before a truncation). Best effort: a
    /// filesystem without hole punching keeps the block (it is never read).
    fn punch_old_place(&self, k: ChunkIndex) {
        if let Err(e) = crate::sys::fallocate(
            &self.file,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            chunk_data_offset(k),
            CHUNK_SIZE,
        ) {
            tracing::debug!("punching a packed tail's old place: {e}");
        }
    }

    /// A write of a file that ends in group 0 before and after it.
    pub(super) fn write_small(&mut self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        let span = WriteSpan::new(offset, data, self.size);
        let (first, old, new) = (span.first, span.old_size, span.new_size);
        let csize_before = self.csize;
        let final_old = self.final_chunk_growing(old, new)?;
        let stored = Self::with_scratch(&span, |buf, entries| {
            self.store_small(&span, final_old.as_ref(), buf, entries)
        });
        if let Err(error) = stored {
            let f = super::v2::StoreFailure { error, from: first };
            return Err(self.write_failed(&span, f, csize_before, final_old));
        }
        self.size = new;
        self.csize = self.csize.max(ciphertext_size(new));
        Ok(())
    }

    /// Seals the chunks of `span`, stores those that do not go into block
    /// 0, then commits block 0 (module docs).
    fn store_small(
        &mut self,
        span: &WriteSpan<'_>,
        final_old: Option<&(ChunkIndex, Vec<u8>)>,
        buf: &mut [u8],
        entries: &mut [u8],
    ) -> Result<(), VolumeError> {
        let (first, last, old, new) = (span.first, span.last, span.old_size, span.new_size);
        let s0 = self.load_group0()?;
        let old_tail = Tail::of(&s0);
        self.seal_span(
            span,
            buf,
            entries,
            |k, slot| self.read_chunk_v2(k, old, slot),
            |_| false,
            0..0,
        )?;
        // The old final chunk, padded, when the write does not cover it.
        let padded = match final_old {
            Some((ol, plain)) if *ol < first => Some(self.sealed_at_len(*ol, plain, new)?),
            _ => None,
        };
        let mut s = GroupState {
            written: s0.written_below(local_count(old, 0)),
            last: true,
            size: new,
            packed: false,
        };
        for k in first..=last {
            s.written |= 1u128 << k;
        }
        let nl = last_chunk(new).expect("a write leaves data");
        // The tail goes into block 0 when it fits and this change has its
        // ciphertext: the write's last chunk, or an unchanged packed tail.
        let tail_sealed = last == nl;
        let keep_old = old == new && old_tail.is_some_and(|t| t.k == nl);
        s.packed = s.may_pack(0) && (tail_sealed || keep_old);
        let mut n_data = (last - first) as usize * CS + chunk_len(last, new);
        if s.packed && tail_sealed {
            n_data -= chunk_len(nl, new);
        }
        if n_data > 0 {
            pwrite(&self.file, &buf[..n_data], chunk_data_offset(first))?;
        }
        if let Some(p) = &padded {
            pwrite(&self.file, &p.data, chunk_data_offset(p.k))?;
        }
        if ciphertext_size(new) > self.csize {
            set_len(&self.file, ciphertext_size(new))?;
            self.csize = ciphertext_size(new);
        }
        let kept = match (keep_old, old_tail) {
            (true, Some(t)) if s.packed && !tail_sealed => {
                let mut b = vec![0u8; t.len];
                pread_exact(&self.file, &mut b, t.at)?;
                Some(b)
            }
            _ => None,
        };
        let tail_len = chunk_len(nl, new);
        crate::keyring::kill_point("tail-chunks-stored");
        self.commit_block0(s, |c| {
            for k in first..=last {
                c.entry(k, &entries[(k - first) as usize * ML..]);
            }
            if let Some(p) = &padded {
                c.entry(p.k, &p.entry);
            }
            if s.packed {
                let bytes = match &kept {
                    Some(b) => &b[..],
                    None => &buf[(nl - first) as usize * CS..][..tail_len],
                };
                c.put(packed_tail_offset(tail_len), bytes);
            }
        })?;
        crate::keyring::kill_point("tail-committed");
        // The final chunk was stored at its place before (not packed).
        if s.packed && old_tail.is_none() && chunk_count(old) == nl + 1 {
            self.punch_old_place(nl);
        }
        Ok(())
    }

    /// Chunk `k` with plaintext `plain`, zero-padded (or cut) to its
    /// length in a file of `size` bytes, sealed.
    fn sealed_at_len(
        &self,
        k: ChunkIndex,
        plain: &[u8],
        size: u64,
    ) -> Result<Resealed, VolumeError> {
        let mut data = vec![0u8; chunk_len(k, size)];
        let n = plain.len().min(data.len());
        data[..n].copy_from_slice(&plain[..n]);
        let entry = self.chunks.seal(k, false, &mut data)?;
        Ok(Resealed { k, data, entry })
    }

    /// A size change of a file that ends in group 0 before and after it.
    pub(super) fn set_len_small(&mut self, new: u64) -> Result<(), VolumeError> {
        let old = self.size;
        let s0 = self.load_group0()?;
        let old_tail = Tail::of(&s0);
        let nl = last_chunk(new);
        let mut s = GroupState {
            written: s0.written_below(local_count(old.min(new), 0)),
            last: true,
            size: new,
            packed: false,
        };
        if new > old {
            let csize_before = self.csize;
            let final_old = self.final_chunk_growing(old, new)?;
            let grown = (|| -> Result<(), VolumeError> {
                let padded = match &final_old {
                    Some((ol, plain)) => Some(self.sealed_at_len(*ol, plain, new)?),
                    None => None,
                };
                s.packed = s.may_pack(0) && padded.as_ref().is_some_and(|p| Some(p.k) == nl);
                if let Some(p) = padded.as_ref().filter(|_| !s.packed) {
                    pwrite(&self.file, &p.data, chunk_data_offset(p.k))?;
                }
                set_len(&self.file, ciphertext_size(new))?;
                self.csize = ciphertext_size(new);
                crate::keyring::kill_point("tail-chunks-stored");
                self.commit_block0(s, |c| {
                    if let Some(p) = &padded {
                        c.entry(p.k, &p.entry);
                        if s.packed {
                            c.put(packed_tail_offset(p.data.len()), &p.data);
                        }
                    }
                })
            })();
            if let Err(e) = grown {
                let _ = self.settle_final_chunk(old, final_old.as_ref());
                let _ = set_len(&self.file, csize_before);
                self.csize = csize_before;
                self.groups_mut().remember(0, s0);
                return Err(e);
            }
            self.size = new;
            if s.packed && old_tail.is_none() {
                self.punch_old_place(nl.expect("grown"));
            }
            return Ok(());
        }
        // Truncation: the new final chunk, cut to its length when it is cut.
        let recut = match nl {
            Some(k) if chunk_len(k, new) < chunk_len(k, old) && s0.is_written(k) => {
                let mut plain = vec![0u8; chunk_len(k, old)];
                self.read_chunk_v2(k, old, &mut plain)?;
                plain.truncate(chunk_len(k, new));
                Some((k, plain))
            }
            _ => None,
        };
        s.packed = s.may_pack(0) && recut.is_some();
        if s.packed {
            let (k, plain) = recut.as_ref().expect("packed");
            let r = self.sealed_at_len(*k, plain, new)?;
            self.commit_block0(s, |c| {
                c.entry(r.k, &r.entry);
                c.put(packed_tail_offset(r.data.len()), &r.data);
            })?;
        } else {
            // The state first (the commit), then the cut chunk at its place:
            // until then it is stored longer, and read at its new length.
            self.commit_block0(s, |_| {})?;
        }
        self.size = new;
        crate::keyring::kill_point("tail-committed");
        if let (Some((k, mut plain)), false) = (recut, s.packed) {
            self.store_chunk(k, false, &mut plain)?;
        }
        let cut = ciphertext_size(new);
        match set_len(&self.file, cut) {
            Ok(()) => self.csize = cut,
            Err(e) => tracing::warn!(
                "cutting a truncated file's ciphertext failed (a stray tail stays): {e}"
            ),
        }
        let moved_in = s.packed && old_tail.is_none_or(|t| Some(t.k) != nl);
        if moved_in {
            self.punch_old_place(nl.expect("packed"));
        }
        Ok(())
    }
}
