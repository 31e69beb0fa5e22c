//! Content I/O of one open ciphertext file: reads, writes and size changes at
//! any offset, chunk by chunk, keeping the invariants of docs/FORMAT.md §3:
//! the final chunk carries the last-chunk flag, never-written chunks are
//! all-zero holes, and metadata entries past the end of the file are zero.
//!
//! Owns: the backing file descriptor of an open file and its plaintext size.
//! Must never: write the header (see [`crate::volume`]), or return bytes of a
//! chunk that failed authentication.

use std::fs::File;

use crate::format::chunk::{ChunkCipher, MetaEntry};
use crate::format::layout::{
    chunk_data_offset, chunk_len, chunk_meta_offset, chunks_touched, ciphertext_size, group_runs,
    ChunkIndex, CHUNKS_PER_GROUP, CHUNK_SIZE, META_BLOCK, META_ENTRIES_OFFSET, META_ENTRY_LEN,
};
use crate::volume::sys::{read_exact_at, write_all_at};
use crate::volume::VolumeError;

const CS: usize = CHUNK_SIZE as usize;
const ML: usize = META_ENTRY_LEN as usize;

/// An open ciphertext file with its chunk cipher and plaintext size.
#[derive(Debug)]
pub struct SealedFile {
    file: File,
    chunks: ChunkCipher,
    size: u64,
}

fn last_chunk(size: u64) -> Option<ChunkIndex> {
    (size > 0).then(|| (size - 1) / CHUNK_SIZE)
}

impl SealedFile {
    /// Wraps an open backing file whose header was already verified.
    pub fn new(file: File, chunks: ChunkCipher, size: u64) -> Self {
        SealedFile { file, chunks, size }
    }

    /// Plaintext size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The backing file.
    pub fn backing(&self) -> &File {
        &self.file
    }

    /// Reads up to `len` bytes at `offset` (fewer at end of file). Fails with
    /// an integrity error if any touched chunk fails authentication.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, VolumeError> {
        let size = self.size;
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = size.min(offset + len as u64);
        let (first, last) = chunks_touched(offset, end - offset).expect("non-empty range");
        let span = (last - first) as usize * CS + chunk_len(last, size);
        let mut out = vec![0u8; span];
        let mut meta = vec![0u8; CHUNKS_PER_GROUP as usize * ML];
        let final_chunk = last_chunk(size);
        for (s, e) in group_runs(first, last) {
            let a = (s - first) as usize * CS;
            let b = (e - first) as usize * CS + chunk_len(e, size);
            read_exact_at(&self.file, &mut out[a..b], chunk_data_offset(s))
                .map_err(VolumeError::short_read)?;
            let n = (e - s + 1) as usize * ML;
            read_exact_at(&self.file, &mut meta[..n], chunk_meta_offset(s))
                .map_err(VolumeError::short_read)?;
            for k in s..=e {
                let ca = (k - first) as usize * CS;
                let cl = chunk_len(k, size);
                let entry: &MetaEntry = meta[(k - s) as usize * ML..][..ML]
                    .try_into()
                    .expect("entry");
                self.chunks
                    .open(k, Some(k) == final_chunk, &mut out[ca..ca + cl], entry)?;
            }
        }
        let skip = (offset - first * CHUNK_SIZE) as usize;
        out.truncate(skip + (end - offset) as usize);
        out.drain(..skip);
        Ok(out)
    }

    fn read_chunk(&self, k: ChunkIndex, buf: &mut [u8]) -> Result<(), VolumeError> {
        read_exact_at(&self.file, buf, chunk_data_offset(k)).map_err(VolumeError::short_read)?;
        let mut entry = [0u8; ML];
        read_exact_at(&self.file, &mut entry, chunk_meta_offset(k))
            .map_err(VolumeError::short_read)?;
        self.chunks
            .open(k, Some(k) == last_chunk(self.size), buf, &entry)?;
        Ok(())
    }

    /// Writes `data` at `offset`, growing the file if needed (a gap becomes a hole).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        if data.is_empty() {
            return Ok(());
        }
        let old = self.size;
        let end = offset + data.len() as u64;
        let new = old.max(end);
        let (first, last) = chunks_touched(offset, data.len() as u64).expect("non-empty");
        let old_last = last_chunk(old);
        let new_last = last_chunk(new).expect("non-empty file");
        // The old final chunk loses its last flag (and is zero-padded to a full
        // chunk) when the file grows past it without this write covering it.
        if let Some(ol) = old_last {
            if new > old && ol < first {
                let mut buf = vec![0u8; CS];
                let l = chunk_len(ol, old);
                self.read_chunk(ol, &mut buf[..l])?;
                let entry = self.chunks.seal(ol, false, &mut buf)?;
                write_all_at(&self.file, &buf, chunk_data_offset(ol))?;
                write_all_at(&self.file, &entry, chunk_meta_offset(ol))?;
            }
        }
        let n = (last - first + 1) as usize;
        let mut buf = vec![0u8; n * CS];
        let mut entries = vec![0u8; n * ML];
        for k in first..=last {
            let cstart = k * CHUNK_SIZE;
            let clen = chunk_len(k, new);
            let slot = &mut buf[(k - first) as usize * CS..][..clen];
            let w0 = offset.max(cstart);
            let w1 = end.min(cstart + clen as u64);
            let covers_all = w0 == cstart && w1 == cstart + clen as u64;
            if !covers_all && cstart < old {
                let olen = chunk_len(k, old);
                read_exact_at(&self.file, &mut slot[..olen], chunk_data_offset(k))
                    .map_err(VolumeError::short_read)?;
                let mut entry = [0u8; ML];
                read_exact_at(&self.file, &mut entry, chunk_meta_offset(k))
                    .map_err(VolumeError::short_read)?;
                self.chunks
                    .open(k, Some(k) == old_last, &mut slot[..olen], &entry)?;
            }
            slot[(w0 - cstart) as usize..(w1 - cstart) as usize]
                .copy_from_slice(&data[(w0 - offset) as usize..(w1 - offset) as usize]);
            let e = self.chunks.seal(k, k == new_last, slot)?;
            entries[(k - first) as usize * ML..][..ML].copy_from_slice(&e);
        }
        for (s, e) in group_runs(first, last) {
            let a = (s - first) as usize * CS;
            let b = (e - first) as usize * CS + chunk_len(e, new);
            write_all_at(&self.file, &buf[a..b], chunk_data_offset(s))?;
            let ma = (s - first) as usize * ML;
            let mb = (e - first + 1) as usize * ML;
            write_all_at(&self.file, &entries[ma..mb], chunk_meta_offset(s))?;
        }
        self.size = new;
        Ok(())
    }

    /// Truncates or extends to `new` bytes (extension reads as zeros).
    pub fn set_len(&mut self, new: u64) -> Result<(), VolumeError> {
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
            return self.write(start, &zeros);
        }
        // Shrinking.
        let Some(nl) = last_chunk(new) else {
            self.file.set_len(META_BLOCK)?;
            let zeros = vec![0u8; (META_BLOCK - META_ENTRIES_OFFSET) as usize];
            write_all_at(&self.file, &zeros, META_ENTRIES_OFFSET)?;
            self.size = 0;
            return Ok(());
        };
        let keep = chunk_len(nl, new);
        let mut buf = vec![0u8; chunk_len(nl, old)];
        self.read_chunk(nl, &mut buf)?;
        buf.truncate(keep);
        self.file.set_len(ciphertext_size(new))?;
        let entry = self.chunks.seal(nl, true, &mut buf)?;
        write_all_at(&self.file, &buf, chunk_data_offset(nl))?;
        write_all_at(&self.file, &entry, chunk_meta_offset(nl))?;
        // Entries of the dropped chunks that share the final metadata block.
        let group_end = (nl / CHUNKS_PER_GROUP + 1) * CHUNKS_PER_GROUP;
        if nl + 1 < group_end {
            let zeros = vec![0u8; (group_end - nl - 1) as usize * ML];
            write_all_at(&self.file, &zeros, chunk_meta_offset(nl + 1))?;
        }
        self.size = new;
        Ok(())
    }
}
