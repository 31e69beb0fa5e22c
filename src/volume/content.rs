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
use crate::sys::{read_exact_at, write_all_at};
use crate::volume::VolumeError;

const CS: usize = CHUNK_SIZE as usize;
const ML: usize = META_ENTRY_LEN as usize;

/// The largest request whose buffers are kept per thread (a FUSE request
/// is at most 1 MiB).
pub const SCRATCH_MAX: usize = 2 << 20;

thread_local! {
    /// Per-thread buffers for sealing a write (chunks, metadata entries):
    /// grown to the largest request seen, reused by every later one.
    static WRITE_SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// An open ciphertext file with its chunk cipher and plaintext size.
#[derive(Debug)]
pub struct SealedFile {
    file: File,
    chunks: ChunkCipher,
    size: u64,
    /// Master key version whose wrapping of the data key was used (0: unknown).
    key_version: u32,
}

fn last_chunk(size: u64) -> Option<ChunkIndex> {
    (size > 0).then(|| (size - 1) / CHUNK_SIZE)
}

impl SealedFile {
    /// Wraps an open backing file whose header was already verified.
    pub fn new(file: File, chunks: ChunkCipher, size: u64) -> Self {
        SealedFile {
            file,
            chunks,
            size,
            key_version: 0,
        }
    }

    /// Records which master key version unwrapped (or wrapped) the data key.
    pub fn with_key_version(mut self, v: u32) -> Self {
        self.key_version = v;
        self
    }

    /// The master key version of the data key's wrapping in use (for audit).
    pub fn key_version(&self) -> u32 {
        self.key_version
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
        let mut buf = Vec::new();
        let range = self.read_into(offset, len, &mut buf)?;
        buf.truncate(range.end);
        buf.drain(..range.start);
        Ok(buf)
    }

    /// Like [`SealedFile::read`], into `buf` (grown when needed, never
    /// shrunk, so a per-thread buffer serves every request without a new
    /// allocation). Returns the range of `buf` that holds the bytes read.
    pub fn read_into(
        &self,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, VolumeError> {
        let size = self.size;
        if offset >= size || len == 0 {
            return Ok(0..0);
        }
        let end = size.min(offset + len as u64);
        let (first, last) = chunks_touched(offset, end - offset).expect("non-empty range");
        let span = (last - first) as usize * CS + chunk_len(last, size);
        if buf.len() < span {
            buf.resize(span, 0);
        }
        // Every byte of out[..span] is overwritten by the reads below.
        let out = &mut buf[..span];
        let mut meta = [0u8; CHUNKS_PER_GROUP as usize * ML];
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
        Ok(skip..skip + (end - offset) as usize)
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

    fn put_chunk(&self, k: ChunkIndex, last: bool, plain: &[u8]) -> Result<(), VolumeError> {
        let mut buf = plain.to_vec();
        let entry = self.chunks.seal(k, last, &mut buf)?;
        write_all_at(&self.file, &buf, chunk_data_offset(k))?;
        write_all_at(&self.file, &entry, chunk_meta_offset(k))?;
        Ok(())
    }

    /// Writes `data` at `offset`, growing the file if needed (a gap becomes a hole).
    ///
    /// When the file grows past its old final chunk without this write
    /// covering it, that chunk must end up zero-padded to a full chunk and
    /// without the last flag. The order keeps every crash point readable:
    /// (1) re-seal it padded but still flagged last (the file is then just
    /// longer by zeros), (2) write the new chunks, (3) clear its flag (a
    /// middle chunk still flagged last is accepted). If (2) fails (ENOSPC),
    /// the old chunk and size are restored.
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
        let mut grown_past: Option<(ChunkIndex, Vec<u8>, usize)> = None;
        if let Some(ol) = old_last {
            if new > old && ol < first {
                let mut plain = vec![0u8; CS];
                let l = chunk_len(ol, old);
                self.read_chunk(ol, &mut plain[..l])?;
                if l < CS {
                    self.put_chunk(ol, true, &plain)?;
                }
                grown_past = Some((ol, plain, l));
            }
        }
        if let Err(e) = self.write_chunks(offset, data, first, last, old, new, old_last, new_last) {
            if new > old {
                if let Some((ol, plain, l)) = &grown_past {
                    let _ = self.put_chunk(*ol, true, &plain[..*l]);
                }
                let _ = self.file.set_len(ciphertext_size(old));
            }
            return Err(e);
        }
        self.size = new;
        if let Some((ol, plain, _)) = grown_past {
            self.put_chunk(ol, false, &plain)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn write_chunks(
        &self,
        offset: u64,
        data: &[u8],
        first: ChunkIndex,
        last: ChunkIndex,
        old: u64,
        new: u64,
        old_last: Option<ChunkIndex>,
        new_last: ChunkIndex,
    ) -> Result<(), VolumeError> {
        let end = offset + data.len() as u64;
        let n = (last - first + 1) as usize;
        if n * CS > SCRATCH_MAX {
            // Bigger than any FUSE request: not worth keeping around.
            let (mut buf, mut entries) = (vec![0u8; n * CS], vec![0u8; n * ML]);
            return self.seal_and_store(
                offset,
                data,
                end,
                first,
                last,
                old,
                new,
                old_last,
                new_last,
                &mut buf,
                &mut entries,
            );
        }
        WRITE_SCRATCH.with_borrow_mut(|(buf, entries)| {
            if buf.len() < n * CS {
                buf.resize(n * CS, 0);
            }
            if entries.len() < n * ML {
                entries.resize(n * ML, 0);
            }
            self.seal_and_store(
                offset, data, end, first, last, old, new, old_last, new_last, buf, entries,
            )
        })
    }

    /// The body of [`SealedFile::write_chunks`] on scratch buffers that hold
    /// stale bytes of earlier requests.
    #[allow(clippy::too_many_arguments)]
    fn seal_and_store(
        &self,
        offset: u64,
        data: &[u8],
        end: u64,
        first: ChunkIndex,
        last: ChunkIndex,
        old: u64,
        new: u64,
        old_last: Option<ChunkIndex>,
        new_last: ChunkIndex,
        buf: &mut [u8],
        entries: &mut [u8],
    ) -> Result<(), VolumeError> {
        for k in first..=last {
            let cstart = k * CHUNK_SIZE;
            let clen = chunk_len(k, new);
            let slot = &mut buf[(k - first) as usize * CS..][..clen];
            let w0 = offset.max(cstart);
            let w1 = end.min(cstart + clen as u64);
            let covers_all = w0 == cstart && w1 == cstart + clen as u64;
            if !covers_all {
                // What this write does not cover is old content or zeros.
                slot.fill(0);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::format::layout::{plaintext_size, GROUP_PLAIN};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Offsets cluster around chunk and group boundaries.
        let anchor = prop_oneof![
            Just(0u64),
            Just(4096),
            Just(8192),
            Just(GROUP_PLAIN),
            Just(2 * GROUP_PLAIN)
        ];
        prop_oneof![
            (
                anchor.clone(),
                -5000i64..5000,
                proptest::collection::vec(any::<u8>(), 1..9000)
            )
                .prop_map(|(a, d, v)| Op::Write((a as i64 + d).max(0) as u64, v)),
            (anchor, -5000i64..5000).prop_map(|(a, d)| Op::SetLen((a as i64 + d).max(0) as u64)),
        ]
    }

    fn fresh(dir: &tempfile::TempDir, key: &SecretKey) -> SealedFile {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        f.set_len(META_BLOCK).unwrap();
        SealedFile::new(f, ChunkCipher::new(key, [1; 16]), 0)
    }

    fn reopen(dir: &tempfile::TempDir, key: &SecretKey) -> SealedFile {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join("f"))
            .unwrap();
        let size = plaintext_size(f.metadata().unwrap().len()).unwrap();
        SealedFile::new(f, ChunkCipher::new(key, [1; 16]), size)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_a_plain_model(ops in proptest::collection::vec(op(), 1..12)) {
            let dir = tempfile::tempdir().unwrap();
            let key = SecretKey::generate().unwrap();
            let mut f = fresh(&dir, &key);
            let mut model: Vec<u8> = Vec::new();
            for o in &ops {
                match o {
                    Op::Write(off, data) => {
                        f.write(*off, data).unwrap();
                        let end = *off as usize + data.len();
                        if model.len() < end { model.resize(end, 0); }
                        model[*off as usize..end].copy_from_slice(data);
                    }
                    Op::SetLen(n) => {
                        f.set_len(*n).unwrap();
                        model.resize(*n as usize, 0);
                    }
                }
                prop_assert_eq!(f.size(), model.len() as u64);
            }
            prop_assert_eq!(f.read(0, model.len() + 10).unwrap(), model.clone());
            // The size and every chunk survive a reopen from disk alone.
            let g = reopen(&dir, &key);
            prop_assert_eq!(g.size(), model.len() as u64);
            prop_assert_eq!(g.read(0, model.len()).unwrap(), model.clone());
            // Unaligned sub-ranges.
            if model.len() > 10 {
                let a = model.len() / 3;
                let b = (model.len() - a).min(7000);
                prop_assert_eq!(g.read(a as u64, b).unwrap(), model[a..a + b].to_vec());
            }
        }
    }

    #[test]
    fn truncation_at_chunk_boundary_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key);
        f.write(0, &vec![7u8; 3 * 4096]).unwrap();
        drop(f);
        let raw = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("f"))
            .unwrap();
        raw.set_len(crate::format::layout::ciphertext_size(2 * 4096))
            .unwrap();
        let g = reopen(&dir, &key);
        assert_eq!(g.size(), 8192);
        assert!(g.read(0, 4096).is_ok(), "untouched chunk 0 still reads");
        assert!(matches!(g.read(4096, 4096), Err(VolumeError::Chunk(_))));
    }

    #[test]
    fn tampered_chunk_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key);
        f.write(0, &vec![9u8; 3 * 4096]).unwrap();
        drop(f);
        let raw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join("f"))
            .unwrap();
        write_all_at(&raw, &[0xff], chunk_data_offset(1) + 17).unwrap();
        let g = reopen(&dir, &key);
        assert!(g.read(0, 4096).is_ok());
        assert!(g.read(8192, 4096).is_ok());
        assert!(matches!(g.read(4096, 10), Err(VolumeError::Chunk(_))));
        assert!(g.read(0, 3 * 4096).is_err());
    }

    #[test]
    fn growth_after_partial_final_chunk_reads_zero_gap() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key);
        f.write(0, b"abc").unwrap();
        f.write(GROUP_PLAIN * 2 + 5, b"xyz").unwrap();
        let g = reopen(&dir, &key);
        let all = g.read(0, (GROUP_PLAIN * 3) as usize).unwrap();
        assert_eq!(&all[..3], b"abc");
        assert!(all[3..(GROUP_PLAIN * 2 + 5) as usize]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(&all[(GROUP_PLAIN * 2 + 5) as usize..], b"xyz");
    }
}
