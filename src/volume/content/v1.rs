//! Writes and size changes in the last-chunk-flag format (volumes without
//! `sealed-group-state`, the frozen fixture `tests/fixtures/v1`): the bytes
//! written are those of the first format, unchanged (docs/FORMAT.md §4.4).
//!
//! Owns: the v1 write order (pad the old final chunk still flagged last,
//! write the new chunks, clear the old chunk's flag) and its truncation.
//! Must never: write a group state.

use crate::format::layout::{
    chunk_len, chunk_meta_offset, chunks_touched, ciphertext_size, ChunkIndex, CHUNKS_PER_GROUP,
    CHUNK_SIZE, META_BLOCK, META_ENTRIES_OFFSET, META_ENTRY_LEN,
};
use crate::volume::error::VolumeError;

use super::run::{last_chunk, pwrite, runs, set_len, CS, ML};
use super::{SealedFile, WriteSpan};

impl SealedFile {
    fn read_chunk_v1(&self, k: ChunkIndex, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.read_chunk_as(k, Some(k) == last_chunk(self.size), buf)
    }

    fn put_chunk(&self, k: ChunkIndex, last: bool, plain: &[u8]) -> Result<(), VolumeError> {
        self.store_chunk(k, last, &mut plain.to_vec())
    }

    /// Writes `data` at `offset` (v1).
    ///
    /// When the file grows past its old final chunk without this write
    /// covering it, that chunk must end up zero-padded to a full chunk and
    /// without the last flag. The order keeps every crash point readable:
    /// (1) re-seal it padded but still flagged last (the file is then just
    /// longer by zeros), (2) write the new chunks, (3) clear its flag (a
    /// middle chunk still flagged last is accepted). If (2) fails (ENOSPC),
    /// the old chunk and size are restored and the file is poisoned.
    pub(super) fn write_v1(&mut self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        let old = self.size;
        let end = offset + data.len() as u64;
        let new = old.max(end);
        let (first, last) = chunks_touched(offset, data.len() as u64).expect("non-empty");
        let mut grown_past: Option<(ChunkIndex, Vec<u8>, usize)> = None;
        // The old final chunk when this write grows it in place: restored
        // if the write fails part-way (its data may be half-written).
        let mut grown_in_place: Option<(ChunkIndex, Vec<u8>)> = None;
        if let Some(ol) = last_chunk(old) {
            if new > old && ol == first && offset >= old {
                let mut plain = vec![0u8; chunk_len(ol, old)];
                self.read_chunk_v1(ol, &mut plain)?;
                grown_in_place = Some((ol, plain));
            }
            if new > old && ol < first {
                let mut plain = vec![0u8; CS];
                let l = chunk_len(ol, old);
                self.read_chunk_v1(ol, &mut plain[..l])?;
                if l < CS {
                    self.put_chunk(ol, true, &plain)?;
                }
                grown_past = Some((ol, plain, l));
            }
        }
        let span = WriteSpan {
            offset,
            data,
            first,
            last,
            old_size: old,
            new_size: new,
        };
        let stored = Self::with_scratch(&span, |buf, entries| {
            self.seal_and_store_v1(&span, buf, entries)
        });
        if let Err(e) = stored {
            if new > old {
                if let Some((ol, plain, l)) = &grown_past {
                    let _ = self.put_chunk(*ol, true, &plain[..*l]);
                }
                let _ = set_len(&self.file, ciphertext_size(old));
                if let Some((ol, plain)) = &grown_in_place {
                    let _ = self.put_chunk(*ol, true, plain);
                }
            }
            self.poison_with(&e);
            return Err(e);
        }
        self.size = new;
        self.csize = ciphertext_size(new);
        if let Some((ol, plain, _)) = grown_past {
            self.put_chunk(ol, false, &plain)?;
        }
        Ok(())
    }

    /// Seals the chunks of `span` on scratch buffers that hold stale bytes
    /// of earlier requests: each touched chunk is assembled (old content or
    /// zeros where the write does not cover it), sealed, and every group
    /// run written with its entries.
    fn seal_and_store_v1(
        &self,
        span: &WriteSpan<'_>,
        buf: &mut [u8],
        entries: &mut [u8],
    ) -> Result<(), VolumeError> {
        let (first, last, new) = (span.first, span.last, span.new_size);
        let old_last = last_chunk(span.old_size);
        let new_last = last_chunk(new).expect("non-empty file");
        self.seal_span(
            span,
            buf,
            entries,
            |k, slot| self.read_chunk_as(k, Some(k) == old_last, slot),
            |k| k == new_last,
            0..0,
        )?;
        for run in runs(first, last, new) {
            let at = (run.first - first) as usize * CS;
            let mat = (run.first - first) as usize * ML;
            pwrite(
                &self.file,
                &buf[at..at + run.data_len],
                crate::format::layout::chunk_data_offset(run.first),
            )?;
            pwrite(
                &self.file,
                &entries[mat..mat + run.meta_len()],
                chunk_meta_offset(run.first),
            )?;
        }
        Ok(())
    }

    /// Truncates or extends to `new` bytes (v1; extension reads as zeros).
    pub(super) fn set_len_v1(&mut self, new: u64) -> Result<(), VolumeError> {
        let old = self.size;
        if new == old {
            return Ok(());
        }
        if new > old {
            // Seal the new final chunk explicitly so a truncation of the
            // extended file stays detectable; chunks in between are holes.
            let new_last = (new - 1) / CHUNK_SIZE;
            let start = old.max(new_last * CHUNK_SIZE);
            let zeros = vec![0u8; (new - start) as usize];
            return self.write_v1(start, &zeros);
        }
        // Shrinking.
        let Some(nl) = last_chunk(new) else {
            set_len(&self.file, META_BLOCK)?;
            // The chunk entries only: bytes 3840..4096 of block 0 are left
            // to a later feature (main's link table lives there).
            let zeros = vec![0u8; (CHUNKS_PER_GROUP * META_ENTRY_LEN) as usize];
            pwrite(&self.file, &zeros, META_ENTRIES_OFFSET)?;
            self.size = 0;
            self.csize = META_BLOCK;
            return Ok(());
        };
        let keep = chunk_len(nl, new);
        let mut buf = vec![0u8; chunk_len(nl, old)];
        self.read_chunk_v1(nl, &mut buf)?;
        buf.truncate(keep);
        set_len(&self.file, ciphertext_size(new))?;
        self.store_chunk(nl, true, &mut buf)?;
        // Entries of the dropped chunks that share the final metadata block.
        let group_end = (nl / CHUNKS_PER_GROUP + 1) * CHUNKS_PER_GROUP;
        if nl + 1 < group_end {
            let zeros = vec![0u8; (group_end - nl - 1) as usize * ML];
            pwrite(&self.file, &zeros, chunk_meta_offset(nl + 1))?;
        }
        self.size = new;
        self.csize = ciphertext_size(new);
        Ok(())
    }
}
