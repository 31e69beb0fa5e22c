//! Writes and size changes with sealed group states (docs/FORMAT.md §4.3).
//!
//! Write orders, each keeping every crash point readable as the old or
//! the new state:
//! * a write: the chunks' data and entries, then each touched group's
//!   state (written with the entries when the run starts at the group's
//!   first chunk: one write of the metadata page); new groups in between
//!   first; the state with the new size last (the commit); then the old
//!   last group drops its last flag;
//! * growing past a partial final chunk: that chunk is re-sealed padded
//!   first (read back at the length stored until the commit);
//! * truncating: the state with the new size first (in the old last group
//!   when the new end is in an earlier group: the ciphertext past it is
//!   then a stray tail), then the new last group's state, the new final
//!   chunk re-sealed at its length, and only then the backing file cut;
//! * extending by a truncate: the backing file extended (sparse), new
//!   groups' states, then the commit.
//!
//! A write that fails is undone: see [`SealedFile::write_failed`].
//!
//! Owns: the v2 write and truncate orders, and what a failure leaves.
//! Must never: write a state before the chunks it vouches for, or cut the
//! ciphertext before the state that makes the cut a stray tail.

use crate::format::group_state::GroupState;
use crate::format::group_state::STATE_AREA;
use crate::format::layout::{
    chunk_data_offset, chunk_len, chunk_meta_offset, ciphertext_size, group_of, last_group,
    state_offset, ChunkIndex, CHUNKS_PER_GROUP, CHUNK_SIZE,
};
use crate::volume::error::VolumeError;

use super::groups::{local_count, plan_shrink, plan_write, Plan};
use super::run::{last_chunk, pwrite, pwrite_run_data, runs, set_len, CS, ML};
use super::{SealedFile, WriteSpan};

/// A write that could not be stored: the error, and the first chunk whose
/// run was not (entirely) written.
pub(super) struct StoreFailure {
    pub(super) error: VolumeError,
    pub(super) from: ChunkIndex,
}

impl SealedFile {
    pub(super) fn groups_mut(&mut self) -> &mut super::Groups {
        self.groups.as_mut().expect("sealed group states")
    }

    /// Plans a change with `make`, which loads the states it needs.
    fn plan(
        &mut self,
        make: impl FnOnce(
            &mut dyn FnMut(u64) -> Result<GroupState, VolumeError>,
        ) -> Result<Plan, VolumeError>,
    ) -> Result<Plan, VolumeError> {
        let file = &self.file;
        let groups = self.groups.as_mut().expect("sealed group states");
        let mut load = |g: u64| groups.load(file, g);
        make(&mut load)
    }

    /// Writes `data` at `offset` with sealed group states.
    /// `presealed`: the whole chunks of this write sealed beforehand, used
    /// when they were sealed for this file and this write.
    pub(super) fn write_v2(
        &mut self,
        offset: u64,
        data: &[u8],
        presealed: Option<&mut super::PresealedWrite>,
    ) -> Result<(), VolumeError> {
        let span = WriteSpan::new(offset, data, self.size);
        let (first, last, old, new) = (span.first, span.last, span.old_size, span.new_size);
        if self.in_block0(new)? {
            return self.write_small(offset, data);
        }
        self.unpack_tail()?;
        let plan = self.plan(|load| plan_write(old, new, Some((first, last)), load))?;
        let csize_before = self.csize;
        let final_old = self.final_chunk_growing(old, new)?;
        if let Err(e) = self.pad_final_chunk(&final_old, new, Some(first)) {
            let f = StoreFailure {
                error: e,
                from: first,
            };
            return Err(self.write_failed(&span, f, csize_before, final_old));
        }
        let presealed = presealed.and_then(|p| p.buffers_for(&self.chunks, offset, data.len()));
        let stored = match presealed {
            Some((buf, entries, sealed)) => self.store_v2(&span, &plan, buf, entries, sealed),
            None => Self::with_scratch(&span, |buf, entries| {
                self.store_v2(&span, &plan, buf, entries, 0..0)
            }),
        };
        if let Err(f) = stored {
            return Err(self.write_failed(&span, f, csize_before, final_old));
        }
        self.size = new;
        self.csize = self.csize.max(ciphertext_size(new));
        self.post_commit(&plan);
        Ok(())
    }

    /// After the commit: the old last group drops its flag. A failure
    /// leaves a middle group flagged last, which reads fine (fsck reports
    /// it): no reason to fail a write that is stored.
    fn post_commit(&mut self, plan: &Plan) {
        if let Some((g, s)) = plan.post {
            let file = &self.file;
            if let Err(e) = self.groups.as_mut().expect("groups").store(file, g, s) {
                tracing::warn!("clearing an old last-group flag failed: {e}");
            }
        }
    }

    /// When the file grows from `old` to `new` bytes past a partial final
    /// chunk that holds data, that chunk and its plaintext: it is stored
    /// longer from now on, and restored if the growth fails.
    pub(super) fn final_chunk_growing(
        &self,
        old: u64,
        new: u64,
    ) -> Result<Option<(ChunkIndex, Vec<u8>)>, VolumeError> {
        let Some(ol) = last_chunk(old) else {
            return Ok(None);
        };
        let l = chunk_len(ol, old);
        if new <= old || l == chunk_len(ol, new) || !self.written(ol) {
            return Ok(None);
        }
        let mut plain = vec![0u8; l];
        self.read_chunk_v2(ol, old, &mut plain)?;
        Ok(Some((ol, plain)))
    }

    /// Growing past a partial final chunk that a write starting at `first`
    /// does not cover (or a truncate up: `first` None): that chunk is
    /// re-sealed zero-padded to its new length (a hole stays a hole).
    fn pad_final_chunk(
        &self,
        final_old: &Option<(ChunkIndex, Vec<u8>)>,
        new: u64,
        first: Option<ChunkIndex>,
    ) -> Result<(), VolumeError> {
        let Some((ol, plain)) = final_old else {
            return Ok(());
        };
        if first.is_some_and(|f| f <= *ol) {
            return Ok(());
        }
        let mut padded = vec![0u8; chunk_len(*ol, new)];
        padded[..plain.len()].copy_from_slice(plain);
        self.store_chunk(*ol, false, &mut padded)
    }

    /// Before the ciphertext is cut back to `size` bytes: a final chunk
    /// stored longer than its length there (a growth that failed or was
    /// interrupted re-sealed it longer) is re-sealed at its length, with
    /// whatever content authenticates, else `fallback`.
    pub(super) fn settle_final_chunk(
        &self,
        size: u64,
        fallback: Option<&(ChunkIndex, Vec<u8>)>,
    ) -> Result<(), VolumeError> {
        let Some(k) = last_chunk(size) else {
            return Ok(());
        };
        if self.packed_tail().is_some_and(|t| t.k == k) {
            // A packed tail is stored at its length, with its state.
            return Ok(());
        }
        if !self.written(k) {
            return Ok(());
        }
        let mut plain = vec![0u8; chunk_len(k, size)];
        let mut entry = [0u8; ML];
        let exact = super::run::pread_exact(&self.file, &mut plain, chunk_data_offset(k))
            .and_then(|_| super::run::pread_exact(&self.file, &mut entry, chunk_meta_offset(k)))
            .is_ok()
            && self.chunks.open(k, false, &mut plain, &entry).is_ok();
        if exact {
            return Ok(());
        }
        let mut plain = vec![0u8; chunk_len(k, size)];
        if self.read_chunk_v2(k, size, &mut plain).is_err() {
            match fallback {
                Some((f, p)) if *f == k => plain.copy_from_slice(p),
                _ => return Ok(()),
            }
        }
        self.store_chunk(k, false, &mut plain)
    }

    /// Seals (but for the `presealed` chunks) and stores the chunks of
    /// `span` and the states of `plan` up to its commit, in the order of
    /// the module docs.
    fn store_v2(
        &mut self,
        span: &WriteSpan<'_>,
        plan: &Plan,
        buf: &mut [u8],
        entries: &mut [u8],
        presealed: std::ops::Range<ChunkIndex>,
    ) -> Result<(), StoreFailure> {
        let (first, last, new) = (span.first, span.last, span.new_size);
        let fail = |error: VolumeError, from: ChunkIndex| StoreFailure { error, from };
        self.seal_span(
            span,
            buf,
            entries,
            |k, slot| self.read_chunk_v2(k, span.old_size, slot),
            |_| false,
            presealed,
        )
        .map_err(|e| fail(e, first))?;
        // States of groups no run touches (new groups in a gap, the old last
        // group when it only loses stale bits) come first: they vouch for
        // no chunk of this write.
        let g_first = group_of(first);
        for &(g, s) in plan.pre.iter().filter(|(g, _)| *g < g_first) {
            self.groups
                .as_mut()
                .expect("groups")
                .store(&self.file, g, s)
                .map_err(|e| fail(e, first))?;
        }
        for run in runs(first, last, new) {
            let at = (run.first - first) as usize * CS;
            let mat = (run.first - first) as usize * ML;
            let f = |e: std::io::Error| fail(e.into(), run.first);
            pwrite_run_data(
                &self.file,
                &self.direct,
                &buf[at..at + run.data_len],
                chunk_data_offset(run.first),
            )
            .map_err(f)?;
            let g = group_of(run.first);
            let run_entries = &entries[mat..mat + run.meta_len()];
            match plan.for_group(g) {
                Some(s) if run.first % CHUNKS_PER_GROUP == 0 => {
                    // The state and the entries after it: one write.
                    let area = self
                        .groups_mut()
                        .seal(g, &s)
                        .map_err(|e| fail(e, run.first))?;
                    let mut page = [0u8; STATE_AREA + CHUNKS_PER_GROUP as usize * ML];
                    page[..STATE_AREA].copy_from_slice(&area);
                    page[STATE_AREA..STATE_AREA + run_entries.len()].copy_from_slice(run_entries);
                    pwrite(
                        &self.file,
                        &page[..STATE_AREA + run_entries.len()],
                        state_offset(g),
                    )
                    .map_err(f)?;
                    self.groups_mut().remember(g, s);
                }
                Some(s) => {
                    pwrite(&self.file, run_entries, chunk_meta_offset(run.first)).map_err(f)?;
                    let area = self
                        .groups_mut()
                        .seal(g, &s)
                        .map_err(|e| fail(e, run.first))?;
                    pwrite(&self.file, &area, state_offset(g)).map_err(f)?;
                    self.groups_mut().remember(g, s);
                }
                None => {
                    pwrite(&self.file, run_entries, chunk_meta_offset(run.first)).map_err(f)?;
                }
            }
        }
        // A commit in a group the write does not touch (none today: the
        // new last group always holds the write's last chunk) would go here.
        if let Some((g, s)) = plan.commit.filter(|(g, _)| *g > group_of(last)) {
            self.groups
                .as_mut()
                .expect("groups")
                .store(&self.file, g, s)
                .map_err(|e| fail(e, last))?;
        }
        Ok(())
    }

    /// Undoes what a failed write left (see [`crate::volume::content`]):
    /// growth is cut off (the backing file back to `csize_before`, the old
    /// final chunk re-sealed at its old length), the chunks of the request
    /// inside the old size whose in-size bytes it covered, from the first
    /// run that was not stored, get an entry that does not authenticate and
    /// their bit set, and the file is poisoned.
    pub(super) fn write_failed(
        &mut self,
        span: &WriteSpan<'_>,
        f: StoreFailure,
        csize_before: u64,
        final_old: Option<(ChunkIndex, Vec<u8>)>,
    ) -> VolumeError {
        let StoreFailure { error, from } = f;
        if error.is_integrity() {
            // Old content that did not authenticate: nothing was written.
            return error;
        }
        let old = span.old_size;
        // The chunks whose bytes inside the old size the request covered,
        // from the first run that was not stored.
        let marked = (span.offset < old)
            .then(|| (from.max(span.first), (span.end().min(old) - 1) / CHUNK_SIZE))
            .filter(|(lo, hi)| lo <= hi);
        if span.new_size > old {
            let skip_final = marked
                .zip(last_chunk(old))
                .is_some_and(|((lo, hi), k)| k >= lo && k <= hi);
            if !skip_final {
                if let Err(e) = self.settle_final_chunk(old, final_old.as_ref()) {
                    tracing::warn!("rolling back a failed write: re-sealing the final chunk: {e}");
                }
            }
            if let Err(e) = set_len(&self.file, csize_before) {
                tracing::warn!("rolling back a failed write: cutting the backing file failed: {e}");
            }
            self.csize = csize_before;
            self.groups_mut().forget_from(last_group(old) + 1);
        }
        if let Some((lo, hi)) = marked {
            if let Err(e) = self.mark_unstored(lo, hi) {
                tracing::warn!("marking chunks whose write failed: {e}");
            }
        }
        self.poison(error)
    }

    /// Poisons the file with `e`'s errno and returns `e`.
    fn poison(&mut self, e: VolumeError) -> VolumeError {
        self.poison_with(&e);
        e
    }

    /// Chunks `lo..=hi` (inside the size) lost a write: each gets an
    /// all-zero entry and its written bit, so it reads as an integrity
    /// failure, never as its old content or as zeros. Only the metadata
    /// pages are written (they exist: every group inside the size has its
    /// state).
    fn mark_unstored(&mut self, lo: ChunkIndex, hi: ChunkIndex) -> Result<(), VolumeError> {
        for run in runs(lo, hi, self.size) {
            let g = group_of(run.first);
            let file = &self.file;
            let groups = self.groups.as_mut().expect("groups");
            let mut s = groups.load(file, g)?;
            let zeros = vec![0u8; run.meta_len()];
            pwrite(file, &zeros, chunk_meta_offset(run.first))?;
            for k in run.chunks() {
                s.written |= 1u128 << (k % CHUNKS_PER_GROUP);
            }
            groups.store(file, g, s)?;
        }
        Ok(())
    }

    /// Truncates or extends to `new` bytes with sealed group states.
    pub(super) fn set_len_v2(&mut self, new: u64) -> Result<(), VolumeError> {
        let old = self.size;
        if new == old {
            return Ok(());
        }
        if self.in_block0(new)? {
            return self.set_len_small(new);
        }
        self.unpack_tail()?;
        if new < old {
            return self.shrink_v2(new);
        }
        let plan = self.plan(|load| plan_write(old, new, None, load))?;
        let csize_before = self.csize;
        let final_old = self.final_chunk_growing(old, new)?;
        let undo = |this: &mut Self, e: VolumeError| -> VolumeError {
            let _ = this.settle_final_chunk(old, final_old.as_ref());
            let _ = set_len(&this.file, csize_before);
            this.csize = csize_before;
            this.groups_mut().forget_from(last_group(old) + 1);
            e
        };
        if let Err(e) = self.pad_final_chunk(&final_old, new, None) {
            return Err(undo(self, e));
        }
        if let Err(e) = set_len(&self.file, ciphertext_size(new)) {
            return Err(undo(self, e.into()));
        }
        self.csize = ciphertext_size(new);
        for &(g, s) in plan.pre.iter().chain(plan.commit.iter()) {
            let stored = self
                .groups
                .as_mut()
                .expect("groups")
                .store(&self.file, g, s);
            if let Err(e) = stored {
                return Err(undo(self, e));
            }
        }
        self.size = new;
        self.post_commit(&plan);
        Ok(())
    }

    /// Truncation (`new` < size): see the module docs for the order.
    fn shrink_v2(&mut self, new: u64) -> Result<(), VolumeError> {
        let old = self.size;
        let recut = match last_chunk(new) {
            Some(nl) if chunk_len(nl, new) < chunk_len(nl, old) && self.written(nl) => {
                let mut plain = vec![0u8; chunk_len(nl, old)];
                self.read_chunk_v2(nl, old, &mut plain)?;
                plain.truncate(chunk_len(nl, new));
                Some((nl, plain))
            }
            _ => None,
        };
        let plan = self.plan(|load| plan_shrink(old, new, load))?;
        let (file, groups) = (&self.file, self.groups.as_mut().expect("groups"));
        if let Some((g, s)) = plan.commit {
            groups.store(file, g, s)?;
        }
        // Committed: the size is `new` whatever follows.
        self.size = new;
        if let Some((g, s)) = plan.post {
            groups.store(file, g, s)?;
        }
        if let Some((nl, mut plain)) = recut {
            self.store_chunk(nl, false, &mut plain)?;
        }
        let cut = ciphertext_size(new);
        match set_len(&self.file, cut) {
            Ok(()) => self.csize = cut,
            Err(e) => tracing::warn!(
                "cutting a truncated file's ciphertext failed (a stray tail stays): {e}"
            ),
        }
        self.groups_mut().forget_from(last_group(new) + 1);
        Ok(())
    }

    /// Cuts a stray tail the open found (see [`SealedFile::stray_tail`]):
    /// first makes sure the last group's own state carries the size (a
    /// truncation interrupted after its first state left the size in a later
    /// group, which the cut removes), then cuts the backing file. Does
    /// nothing without a stray tail.
    pub(super) fn trim_stray_tail_v2(&mut self) -> Result<(), VolumeError> {
        let Some(d) = self.found else {
            return Ok(());
        };
        if d.stray() == 0 {
            return Ok(());
        }
        let size = self.size;
        let gl = last_group(size);
        let (file, groups) = (&self.file, self.groups.as_mut().expect("groups"));
        let s = groups.load(file, gl)?;
        let want = GroupState {
            written: s.written_below(local_count(size, gl)),
            last: true,
            size,
            packed: s.packed && s.size == size,
        };
        if s != want {
            groups.store(file, gl, want)?;
        }
        self.settle_final_chunk(size, None)?;
        let cut = ciphertext_size(size);
        set_len(&self.file, cut)?;
        self.csize = cut;
        self.groups_mut().forget_from(gl + 1);
        self.found = Some(super::Discovery { csize: cut, ..d });
        Ok(())
    }
}
