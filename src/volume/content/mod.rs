//! Content I/O of one open ciphertext file: reads, writes and size changes at
//! any offset, chunk by chunk, keeping the invariants of docs/FORMAT.md §3:
//! the final chunk carries the last-chunk flag, never-written chunks are
//! all-zero holes, and metadata entries past the end of the file are zero.
//!
//! All chunk I/O goes through one group-run reader/writer (`runs`,
//! `SealedFile::read_run`/`write_run`): a run of chunks inside one group
//! has its data and its (nonce, tag) entries each contiguous on disk, so a
//! run costs one read or write of each. Reads, writes, fsck's scan and its
//! salvage use it; this module and [`crate::format::layout`] are the only
//! places that compute backing offsets (the header's place included: see
//! [`read_header`]).
//!
//! Owns: the backing file descriptor of an open file, its plaintext size,
//! and where every byte of it lives in the backing file.
//! Must never: decide what a header says (see [`crate::volume`]), or return
//! bytes of a chunk that failed authentication.

use std::fs::File;
use std::ops::RangeInclusive;

use crate::format::chunk::{ChunkCipher, MetaEntry};
use crate::format::header::RECORD_LEN;
use crate::format::layout::{
    chunk_count, chunk_data_offset, chunk_len, chunk_meta_offset, chunks_touched, ciphertext_size,
    group_runs, ChunkIndex, CHUNKS_PER_GROUP, CHUNK_SIZE, META_BLOCK, META_ENTRIES_OFFSET,
    META_ENTRY_LEN,
};
use crate::sys::{fallocate, read_exact_at, write_all_at};
use crate::volume::error::VolumeError;

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

/// Reads the header record of a ciphertext file (the start of its first
/// metadata block); a file too short for it is [`VolumeError::Truncated`].
pub fn read_header(file: &File) -> Result<[u8; RECORD_LEN], VolumeError> {
    let mut buf = [0u8; RECORD_LEN];
    read_exact_at(file, &mut buf, 0).map_err(VolumeError::short_read)?;
    Ok(buf)
}

/// Rewrites the header record of a ciphertext file in place (no sync).
pub fn write_header(file: &File, record: &[u8; RECORD_LEN]) -> std::io::Result<()> {
    write_all_at(file, record, 0)
}

/// Writes the first metadata block of a new, empty ciphertext file: its
/// header record, then zeros (no chunk entries yet).
pub fn write_first_block(file: &File, record: &[u8; RECORD_LEN]) -> std::io::Result<()> {
    let mut block = vec![0u8; META_BLOCK as usize];
    block[..RECORD_LEN].copy_from_slice(record);
    write_all_at(file, &block, 0)
}

/// Chunks of one group, `first..=last`: their data and their metadata
/// entries are each contiguous on disk.
#[derive(Debug, Clone, Copy)]
struct Run {
    first: ChunkIndex,
    last: ChunkIndex,
    /// Bytes of data of the run (its last chunk may be partial).
    data_len: usize,
}

impl Run {
    fn chunks(&self) -> RangeInclusive<ChunkIndex> {
        self.first..=self.last
    }

    /// Bytes of the run's metadata entries.
    fn meta_len(&self) -> usize {
        (self.last - self.first + 1) as usize * ML
    }

    /// Where chunk `k` of the run starts in the run's data.
    fn data_at(&self, k: ChunkIndex) -> usize {
        (k - self.first) as usize * CS
    }

    /// Chunk `k`'s entry in the run's metadata.
    fn entry<'m>(&self, meta: &'m [u8], k: ChunkIndex) -> &'m MetaEntry {
        meta[(k - self.first) as usize * ML..][..ML]
            .try_into()
            .expect("entry length")
    }
}

/// The group runs covering chunks `first..=last` of a file of `size` bytes.
fn runs(first: ChunkIndex, last: ChunkIndex, size: u64) -> impl Iterator<Item = Run> {
    group_runs(first, last).map(move |(s, e)| Run {
        first: s,
        last: e,
        data_len: (e - s) as usize * CS + chunk_len(e, size),
    })
}

fn last_chunk(size: u64) -> Option<ChunkIndex> {
    (size > 0).then(|| (size - 1) / CHUNK_SIZE)
}

/// One write request, in chunks.
struct WriteSpan<'d> {
    offset: u64,
    data: &'d [u8],
    first: ChunkIndex,
    last: ChunkIndex,
    /// Plaintext size before and after the write.
    old_size: u64,
    new_size: u64,
}

impl WriteSpan<'_> {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    fn chunk_count(&self) -> usize {
        (self.last - self.first + 1) as usize
    }
}

/// What a scan of every chunk of a file found ([`SealedFile::scan`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkScan {
    /// Chunks that fail authentication (or could not be read), ascending.
    pub bad: Vec<ChunkIndex>,
    /// The final chunk, if it is authentic but lacks the last flag (the
    /// file was cut at a chunk boundary).
    pub cut: Option<ChunkIndex>,
    /// Chunks authenticated (tried).
    pub checked: u64,
}

/// How [`SealedFile::reseal`] re-seals one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// As zeros of the same length (its content is lost).
    Zeros,
    /// With its own (authentic) content, and the right last flag.
    KeepContent,
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

    // ------------------------------------------------------------ group runs

    /// Reads the data of `run` into `data` (`run.data_len` bytes) and its
    /// entries into `meta` (`run.meta_len()` bytes).
    fn read_run(&self, run: &Run, data: &mut [u8], meta: &mut [u8]) -> Result<(), VolumeError> {
        read_exact_at(&self.file, data, chunk_data_offset(run.first))
            .map_err(VolumeError::short_read)?;
        read_exact_at(&self.file, meta, chunk_meta_offset(run.first))
            .map_err(VolumeError::short_read)
    }

    /// Writes the sealed data of `run` and its entries.
    fn write_run(&self, run: &Run, data: &[u8], meta: &[u8]) -> Result<(), VolumeError> {
        write_all_at(&self.file, data, chunk_data_offset(run.first))?;
        write_all_at(&self.file, meta, chunk_meta_offset(run.first))?;
        Ok(())
    }

    /// Reads and opens the single chunk `k` (`buf`: its length) as the
    /// final chunk or not.
    fn read_chunk_as(&self, k: ChunkIndex, last: bool, buf: &mut [u8]) -> Result<(), VolumeError> {
        let run = Run {
            first: k,
            last: k,
            data_len: buf.len(),
        };
        let mut entry = [0u8; ML];
        self.read_run(&run, buf, &mut entry)?;
        self.chunks.open(k, last, buf, &entry)?;
        Ok(())
    }

    fn read_chunk(&self, k: ChunkIndex, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.read_chunk_as(k, Some(k) == last_chunk(self.size), buf)
    }

    /// Seals `buf` (chunk `k`'s plaintext, its whole length) in place and
    /// writes it with its entry.
    fn store_chunk(&self, k: ChunkIndex, last: bool, buf: &mut [u8]) -> Result<(), VolumeError> {
        let entry = self.chunks.seal(k, last, buf)?;
        let run = Run {
            first: k,
            last: k,
            data_len: buf.len(),
        };
        self.write_run(&run, buf, &entry)
    }

    fn put_chunk(&self, k: ChunkIndex, last: bool, plain: &[u8]) -> Result<(), VolumeError> {
        self.store_chunk(k, last, &mut plain.to_vec())
    }

    // ------------------------------------------------------------ reads

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
        for run in runs(first, last, size) {
            let at = (run.first - first) as usize * CS;
            let data = &mut out[at..at + run.data_len];
            let meta = &mut meta[..run.meta_len()];
            self.read_run(&run, data, meta)?;
            for k in run.chunks() {
                let a = run.data_at(k);
                let chunk = &mut data[a..a + chunk_len(k, size)];
                self.chunks
                    .open(k, Some(k) == final_chunk, chunk, run.entry(meta, k))?;
            }
        }
        let skip = (offset - first * CHUNK_SIZE) as usize;
        Ok(skip..skip + (end - offset) as usize)
    }

    // ------------------------------------------------------------ writes

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
        let mut grown_past: Option<(ChunkIndex, Vec<u8>, usize)> = None;
        if let Some(ol) = last_chunk(old) {
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
        let span = WriteSpan {
            offset,
            data,
            first,
            last,
            old_size: old,
            new_size: new,
        };
        if let Err(e) = self.store(&span) {
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

    /// Seals and stores the chunks of `span`, on this thread's scratch
    /// buffers (or fresh ones for a request bigger than any FUSE request).
    fn store(&self, span: &WriteSpan<'_>) -> Result<(), VolumeError> {
        let n = span.chunk_count();
        if n * CS > SCRATCH_MAX {
            // Bigger than any FUSE request: not worth keeping around.
            let (mut buf, mut entries) = (vec![0u8; n * CS], vec![0u8; n * ML]);
            return self.seal_and_store(span, &mut buf, &mut entries);
        }
        WRITE_SCRATCH.with_borrow_mut(|(buf, entries)| {
            if buf.len() < n * CS {
                buf.resize(n * CS, 0);
            }
            if entries.len() < n * ML {
                entries.resize(n * ML, 0);
            }
            self.seal_and_store(span, buf, entries)
        })
    }

    /// The body of [`SealedFile::store`] on scratch buffers that hold stale
    /// bytes of earlier requests: each touched chunk is assembled (old
    /// content or zeros where the write does not cover it), sealed, and
    /// every group run written with its entries.
    fn seal_and_store(
        &self,
        span: &WriteSpan<'_>,
        buf: &mut [u8],
        entries: &mut [u8],
    ) -> Result<(), VolumeError> {
        let WriteSpan {
            offset,
            data,
            first,
            last,
            old_size: old,
            new_size: new,
        } = *span;
        let end = span.end();
        let old_last = last_chunk(old);
        let new_last = last_chunk(new).expect("non-empty file");
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
                self.read_chunk_as(k, Some(k) == old_last, &mut slot[..olen])?;
            }
            slot[(w0 - cstart) as usize..(w1 - cstart) as usize]
                .copy_from_slice(&data[(w0 - offset) as usize..(w1 - offset) as usize]);
            let e = self.chunks.seal(k, k == new_last, slot)?;
            entries[(k - first) as usize * ML..][..ML].copy_from_slice(&e);
        }
        for run in runs(first, last, new) {
            let at = (run.first - first) as usize * CS;
            let mat = (run.first - first) as usize * ML;
            self.write_run(
                &run,
                &buf[at..at + run.data_len],
                &entries[mat..mat + run.meta_len()],
            )?;
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
        self.store_chunk(nl, true, &mut buf)?;
        // Entries of the dropped chunks that share the final metadata block.
        let group_end = (nl / CHUNKS_PER_GROUP + 1) * CHUNKS_PER_GROUP;
        if nl + 1 < group_end {
            let zeros = vec![0u8; (group_end - nl - 1) as usize * ML];
            write_all_at(&self.file, &zeros, chunk_meta_offset(nl + 1))?;
        }
        self.size = new;
        Ok(())
    }

    /// Reserves backing space for the plaintext range `[offset,
    /// offset+len)` (`fallocate` with `FALLOC_FL_KEEP_SIZE` on the chunks
    /// and metadata blocks it covers, from the current end of the
    /// ciphertext at the earliest), then, unless `keep_size`, extends the
    /// file to the range's end. A range past the largest offset is `EFBIG`.
    pub fn allocate(&mut self, offset: u64, len: u64, keep_size: bool) -> Result<(), VolumeError> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        if let Some((first, _)) = chunks_touched(offset, len) {
            let start = chunk_data_offset(first).min(ciphertext_size(self.size));
            let cend = ciphertext_size(end);
            if cend > start {
                fallocate(&self.file, libc::FALLOC_FL_KEEP_SIZE, start, cend - start)?;
            }
        }
        if !keep_size && end > self.size {
            self.set_len(end)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ checking

    /// Authenticates every chunk of the file (one group run at a time): the
    /// bad ones, and the final chunk if it is authentic but lacks the last
    /// flag. A run that cannot be read counts as bad chunks.
    pub fn scan(&self) -> ChunkScan {
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
            if self.read_run(&run, data, meta).is_err() {
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

    /// Re-seals chunks in place (fsck's salvage), each with the right last
    /// flag: as zeros, or with its own content (a cut file's final chunk,
    /// read without the flag it lacks). Only these chunks' bytes are
    /// written, then the file's data is synced.
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

    /// Ciphertext bytes after the last chunk that no plaintext size maps to
    /// (a crash while the file grew), for a backing file of `csize` bytes.
    pub fn stray_tail(&self, csize: u64) -> u64 {
        csize.saturating_sub(ciphertext_size(self.size))
    }

    /// The same file opened again for writing (an fsck that checked it
    /// read-only and now salvages it).
    pub fn reopen_writable(&self) -> std::io::Result<SealedFile> {
        use std::os::fd::AsFd;
        let file = crate::sys::reopen(self.file.as_fd(), libc::O_RDWR)?;
        Ok(
            SealedFile::new(file, self.chunks.clone(), self.size)
                .with_key_version(self.key_version),
        )
    }

    /// Cuts the backing file back to its last chunk (see
    /// [`SealedFile::stray_tail`]) and syncs it.
    pub fn trim_stray_tail(&self) -> std::io::Result<()> {
        self.file.set_len(ciphertext_size(self.size))?;
        self.file.sync_data()
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
