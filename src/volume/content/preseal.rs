//! Sealing a long write's whole chunks before the file's lock is taken.
//!
//! A file's writes hold its exclusive content lock (size and group states
//! change under it), so with the lock held for sealing and storing, the
//! kernel's writeback requests of one file run one at a time: the second
//! request's encryption waits for the first one's I/O. A chunk the write
//! covers entirely is sealed the same way whatever the file holds (the
//! chunk key, its index and a fresh nonce; with sealed group states no
//! last flag), so such chunks are sealed first, with no lock, and only the
//! partial chunks at the write's edges (which need the old content), the
//! storing and the states are left for under the lock. Requests of one
//! file then overlap: one is sealed while the one before it is stored.
//!
//! A presealed write is only a head start: the write under the lock uses
//! its chunks when they were sealed for that file's cipher and that span
//! (and seals them itself otherwise), so nothing about what is stored or
//! in what order changes. An unused presealed chunk costs nothing but the
//! work: its nonce was fresh and it was never stored.
//!
//! Owns: [`WriteSealer`] (the chunk cipher of an open file, usable with
//! no lock) and [`PresealedWrite`] (the sealed chunks of one request, on
//! the thread's write buffers). Must never: touch the backing file or any
//! state of the open file, or seal a chunk the write does not cover whole.

use std::ops::Range;
use std::sync::Arc;

use crate::format::chunk::ChunkCipher;
use crate::format::layout::{chunks_touched, ChunkIndex, CHUNK_SIZE};
use crate::volume::error::VolumeError;

use super::run::{CS, ML};
use super::{direct, fit_write_buffers, WRITE_SCRATCH};

/// Writes with fewer whole chunks than this are sealed under the lock (a
/// head start is not worth the bookkeeping for them).
const PRESEAL_MIN_CHUNKS: u64 = 16;

/// The chunk cipher of an open file with sealed group states, to seal
/// with no lock held.
#[derive(Debug, Clone)]
pub struct WriteSealer(pub(super) Arc<ChunkCipher>);

/// The whole chunks of one write, sealed in place on this thread's write
/// buffers (taken from the thread until this is dropped).
pub struct PresealedWrite {
    cipher: Arc<ChunkCipher>,
    /// The write this was sealed for.
    offset: u64,
    len: usize,
    /// The chunks sealed: every chunk the write covers whole.
    whole: Range<ChunkIndex>,
    /// Where in `buf` the (page-aligned) slots of the chunks the write
    /// touches are.
    slots: Range<usize>,
    buf: Vec<u8>,
    entries: Vec<u8>,
}

impl std::fmt::Debug for PresealedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresealedWrite")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("whole", &self.whole)
            .finish_non_exhaustive()
    }
}

impl WriteSealer {
    /// Seals the chunks that `data`, written at `offset`, covers whole;
    /// None when there are too few of them to be worth it.
    pub fn preseal(&self, offset: u64, data: &[u8]) -> Result<Option<PresealedWrite>, VolumeError> {
        let Some((first, last)) = chunks_touched(offset, data.len() as u64) else {
            return Ok(None);
        };
        let end = offset + data.len() as u64;
        let whole = offset.div_ceil(CHUNK_SIZE)..end / CHUNK_SIZE;
        if whole.end < whole.start + PRESEAL_MIN_CHUNKS {
            return Ok(None);
        }
        let n = (last - first + 1) as usize;
        let (mut buf, mut entries) = WRITE_SCRATCH.with_borrow_mut(std::mem::take);
        let slots = fit_write_buffers(&mut buf, &mut entries, n);
        let mut pre = PresealedWrite {
            cipher: self.0.clone(),
            offset,
            len: data.len(),
            whole: whole.clone(),
            slots,
            buf,
            entries,
        };
        for k in whole {
            let at = pre.slots.start + (k - first) as usize * CS;
            let from = (k * CHUNK_SIZE - offset) as usize;
            let slot = &mut pre.buf[at..at + CS];
            slot.copy_from_slice(&data[from..from + CS]);
            let e = self.0.seal(k, false, slot)?;
            pre.entries[(k - first) as usize * ML..][..ML].copy_from_slice(&e);
        }
        Ok(Some(pre))
    }
}

impl PresealedWrite {
    /// The chunk slots and entries, when this was sealed for a write of
    /// `len` bytes at `offset` with `cipher`.
    pub(super) fn buffers_for(
        &mut self,
        cipher: &Arc<ChunkCipher>,
        offset: u64,
        len: usize,
    ) -> Option<(&mut [u8], &mut [u8], Range<ChunkIndex>)> {
        if !Arc::ptr_eq(&self.cipher, cipher) || self.offset != offset || self.len != len {
            return None;
        }
        let count = self.slots.len() / CS;
        Some((
            &mut self.buf[self.slots.clone()],
            &mut self.entries[..count * ML],
            self.whole.clone(),
        ))
    }
}

impl Drop for PresealedWrite {
    /// The buffers go back to the thread for its next write (unless it
    /// has bigger ones again, or these are bigger than it keeps).
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let entries = std::mem::take(&mut self.entries);
        if buf.len() > super::SCRATCH_MAX + direct::ALIGN {
            return;
        }
        WRITE_SCRATCH.with_borrow_mut(|(b, e)| {
            if b.len() < buf.len() {
                *b = buf;
            }
            if e.len() < entries.len() {
                *e = entries;
            }
        });
    }
}
