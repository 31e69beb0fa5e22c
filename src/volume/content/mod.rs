//! Content I/O of one open ciphertext file: reads, writes and size changes at
//! any offset, chunk by chunk, in either content format of docs/FORMAT.md §4:
//!
//! * **sealed group states** (feature `sealed-group-state`, new volumes):
//!   each group's sealed state says which chunks hold data and the last
//!   group's state holds the size, so a chunk that was never stored, or was
//!   cut or zeroed, fails authentication instead of reading as zeros, and
//!   the size is the sealed one (ciphertext past it is a stray tail, never
//!   read; ciphertext short of it a truncation). Writes keep the orders of
//!   §4.3: data and entries, then the states; the new last group's state
//!   (the commit) before the old one drops its flag; a truncation's state
//!   before the ciphertext is cut.
//! * **last-chunk flag** (the first format, the frozen fixture
//!   `tests/fixtures/v1`): the final chunk carries the flag, never-written
//!   chunks are all-zero holes, the size is the ciphertext's. Its bytes and
//!   behaviour are kept as they were (`v1`).
//!
//! A write that cannot be stored (a full disk) fails, and the file keeps
//! what it held: growth is rolled back (the backing file cut to its old
//! length), chunks inside the old size that the failed request covered are
//! marked written with an entry that does not authenticate (EIO, never
//! their old content or zeros), and the open file is *poisoned*: every
//! later write fails with the same error until the size is set again (a
//! truncate), so nothing is ever stored past a lost range. See [`poisoned`].
//!
//! All chunk I/O goes through one group-run reader/writer (`run`): a run of
//! chunks inside one group has its data and its (nonce, tag) entries each
//! contiguous on disk. This module and [`crate::format::layout`] are the
//! only places that compute backing offsets.
//!
//! Owns: the backing file descriptor of an open file, its plaintext size,
//! its group states, and where every byte of it lives in the backing file.
//! Must never: decide what a header says (see [`crate::volume`]), return
//! bytes of a chunk that failed authentication or past the sealed size, or
//! read a chunk whose written bit is set as zeros.
//!
//! [`poisoned`]: SealedFile::poisoned

mod check;
mod direct;
mod groups;
mod packed;
mod preseal;
mod run;
#[cfg(test)]
mod tests;
mod v1;
mod v2;

use std::fs::File;

use crate::crypto::SecretKey;
use crate::format::chunk::{ChunkCipher, ContentFormat};
use crate::format::group_state::{GroupState, StateCipher, STATE_AREA};
use crate::format::header::RECORD_LEN;
use crate::format::layout::{
    chunk_data_offset, chunk_len, chunk_meta_offset, chunks_touched, ciphertext_size, group_of,
    group_offset, plaintext_size, state_offset, ChunkIndex, CHUNKS_PER_GROUP, CHUNK_SIZE,
    META_BLOCK, META_STATE_OFFSET,
};
use crate::sys::fallocate;
use crate::volume::error::VolumeError;

pub use check::{ChunkScan, Rebuilt, Reseal};
pub use groups::{Discovery, End};
pub use preseal::{PresealedWrite, WriteSealer};
pub use run::{read_header, write_header};

use groups::Groups;
use run::{last_chunk, pread_exact, pread_some, pwrite, runs, Run, CS, ML};

/// The largest request whose buffers are kept per thread (a FUSE request
/// is at most 1 MiB).
pub const SCRATCH_MAX: usize = 2 << 20;

/// Grows write buffers (chunks, metadata entries) for `n` chunks and
/// returns where in `buf` the chunk slots start on a page boundary, so
/// that whole runs can be written directly (`direct::DirectIo::write`).
fn fit_write_buffers(buf: &mut Vec<u8>, entries: &mut Vec<u8>, n: usize) -> std::ops::Range<usize> {
    if buf.len() < n * CS + direct::ALIGN {
        buf.resize(n * CS + direct::ALIGN, 0);
    }
    if entries.len() < n * ML {
        entries.resize(n * ML, 0);
    }
    let base = buf.as_ptr().align_offset(direct::ALIGN);
    base..base + n * CS
}

thread_local! {
    /// Per-thread buffers for sealing a write (chunks, metadata entries):
    /// grown to the largest request seen, reused by every later one.
    static WRITE_SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
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

impl<'d> WriteSpan<'d> {
    /// The write of `data` (not empty) at `offset` into a file of
    /// `old_size` bytes.
    fn new(offset: u64, data: &'d [u8], old_size: u64) -> Self {
        let end = offset + data.len() as u64;
        let (first, last) = chunks_touched(offset, data.len() as u64).expect("non-empty");
        WriteSpan {
            offset,
            data,
            first,
            last,
            old_size,
            new_size: old_size.max(end),
        }
    }

    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    fn chunk_count(&self) -> usize {
        (self.last - self.first + 1) as usize
    }
}

/// An open ciphertext file with its chunk cipher and plaintext size.
#[derive(Debug)]
pub struct SealedFile {
    file: File,
    chunks: std::sync::Arc<ChunkCipher>,
    /// Plaintext size (with sealed group states: the sealed one).
    size: u64,
    /// Master key version whose wrapping of the data key was used (0: unknown).
    key_version: u32,
    /// Sealed group states (None: the last-chunk-flag format).
    groups: Option<Groups>,
    /// What opening found at the file's end (sealed group states).
    found: Option<Discovery>,
    /// The backing file's length as this open last left it.
    csize: u64,
    /// A write failed with this errno: later writes fail with it too.
    poisoned: Option<i32>,
    /// Writes that could not be stored so far, and the errno of the last
    /// one: a handle reports each new one once at close (FLUSH).
    write_errors: (u32, i32),
    /// Direct reads and writes of long runs.
    direct: direct::DirectIo,
}

impl SealedFile {
    /// Assembles and seals every chunk `span` touches, in place in `buf`
    /// (scratch space that may hold stale bytes of earlier requests), and
    /// its metadata entry into `entries`: what the write does not cover is
    /// the chunk's old content (`read_old`) or zeros. `last(k)` is the v1
    /// last-chunk flag (always false with sealed group states). Chunks in
    /// `presealed` are already sealed in `buf` and `entries` (see
    /// [`preseal`]). The one chunk loop of both formats' write paths;
    /// storing is theirs.
    fn seal_span(
        &self,
        span: &WriteSpan<'_>,
        buf: &mut [u8],
        entries: &mut [u8],
        read_old: impl Fn(ChunkIndex, &mut [u8]) -> Result<(), VolumeError>,
        last: impl Fn(ChunkIndex) -> bool,
        presealed: std::ops::Range<ChunkIndex>,
    ) -> Result<(), VolumeError> {
        let end = span.end();
        for k in (span.first..=span.last).filter(|k| !presealed.contains(k)) {
            let cstart = k * CHUNK_SIZE;
            let clen = chunk_len(k, span.new_size);
            let slot = &mut buf[(k - span.first) as usize * CS..][..clen];
            let w0 = span.offset.max(cstart);
            let w1 = end.min(cstart + clen as u64);
            if !(w0 == cstart && w1 == cstart + clen as u64) {
                // What this write does not cover is old content or zeros.
                slot.fill(0);
                if cstart < span.old_size {
                    read_old(k, &mut slot[..chunk_len(k, span.old_size)])?;
                }
            }
            slot[(w0 - cstart) as usize..(w1 - cstart) as usize].copy_from_slice(
                &span.data[(w0 - span.offset) as usize..(w1 - span.offset) as usize],
            );
            let e = self.chunks.seal(k, last(k), slot)?;
            entries[(k - span.first) as usize * ML..][..ML].copy_from_slice(&e);
        }
        Ok(())
    }
}

impl SealedFile {
    fn with_parts(
        file: File,
        key: &SecretKey,
        id: [u8; 16],
        format: ContentFormat,
        size: u64,
        csize: u64,
    ) -> Self {
        let groups = format.has_group_states().then(|| {
            Groups::new(
                StateCipher::new(key, id).with_packed_tails(format == ContentFormat::PackedTails),
            )
        });
        SealedFile {
            file,
            chunks: std::sync::Arc::new(ChunkCipher::new(key, id, format)),
            size,
            key_version: 0,
            groups,
            found: None,
            csize,
            poisoned: None,
            write_errors: (0, 0),
            direct: direct::DirectIo::default(),
        }
    }

    /// Writes the first metadata block of a new, empty ciphertext file (its
    /// header record; with sealed group states the state of group 0 with
    /// size 0; zeros) and returns the file open.
    pub fn create(
        file: File,
        record: &[u8; RECORD_LEN],
        key: &SecretKey,
        id: [u8; 16],
        format: ContentFormat,
    ) -> Result<SealedFile, VolumeError> {
        let mut f = SealedFile::with_parts(file, key, id, format, 0, META_BLOCK);
        let mut block = vec![0u8; META_BLOCK as usize];
        block[..RECORD_LEN].copy_from_slice(record);
        let empty = GroupState {
            last: true,
            ..GroupState::EMPTY
        };
        if let Some(g) = &mut f.groups {
            let at = META_STATE_OFFSET as usize;
            block[at..at + STATE_AREA].copy_from_slice(&g.seal(0, &empty)?);
            g.remember(0, empty);
        }
        pwrite(&f.file, &block, 0)?;
        Ok(f)
    }

    /// Opens the content of an existing file whose header was verified.
    /// With sealed group states the size is the one sealed at the file's
    /// end; a file whose end state is lost (cut or zeroed), or whose
    /// ciphertext is shorter than its sealed size needs, is an integrity
    /// failure.
    pub fn open(
        file: File,
        key: &SecretKey,
        id: [u8; 16],
        format: ContentFormat,
    ) -> Result<SealedFile, VolumeError> {
        let f = SealedFile::open_for_check(file, key, id, format)?;
        if let Some(Discovery {
            end: End::Lost,
            csize,
        }) = f.found
        {
            return Err(crate::format::group_state::StateError::Missing(
                crate::format::layout::end_group(csize),
            )
            .into());
        }
        // Ciphertext short of the sealed size: the file was cut. The kernel
        // takes the size from `stat` (the ciphertext's) and would never ask
        // for the chunks that are gone, so the file would silently end
        // early: it does not open (fsck says which range is gone; salvage
        // cuts the file to what its states vouch for).
        if f.found.is_some_and(|d| d.missing() > 0) {
            return Err(VolumeError::Truncated);
        }
        Ok(f)
    }

    /// Like [`SealedFile::open`], but a lost end state is no error: the size
    /// is then the one the ciphertext's length maps to (fsck looks at the
    /// file and says what it found).
    pub fn open_for_check(
        file: File,
        key: &SecretKey,
        id: [u8; 16],
        format: ContentFormat,
    ) -> Result<SealedFile, VolumeError> {
        let csize = file.metadata()?.len();
        let size = plaintext_size(csize).map_err(|_| VolumeError::Truncated)?;
        let mut f = SealedFile::with_parts(file, key, id, format, size, csize);
        if let Some(g) = &mut f.groups {
            let d = g.discover(&f.file, csize)?;
            f.size = d.size();
            f.found = Some(d);
        }
        Ok(f)
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

    /// The file's content format.
    pub fn format(&self) -> ContentFormat {
        self.chunks.format()
    }

    /// What opening found at the file's end (sealed group states only).
    pub fn discovery(&self) -> Option<&Discovery> {
        self.found.as_ref()
    }

    /// Ciphertext bytes past the sealed size that this open has not trimmed
    /// yet (sealed group states only; a crash while the file grew, or bytes
    /// appended by someone else). `stat` counts them until they are trimmed.
    pub fn stray_tail(&self) -> u64 {
        match self.found {
            Some(d) => d.stray(),
            None => self.csize.saturating_sub(ciphertext_size(self.size)),
        }
    }

    /// Cuts the stray tail (see [`SealedFile::stray_tail`]); with sealed
    /// group states the last group's own state is made to carry the size
    /// first. Does nothing without one.
    pub fn trim_stray_tail(&mut self) -> Result<(), VolumeError> {
        if self.groups.is_some() {
            return self.trim_stray_tail_v2();
        }
        if self.stray_tail() > 0 {
            run::set_len(&self.file, ciphertext_size(self.size))?;
            self.csize = ciphertext_size(self.size);
        }
        Ok(())
    }

    /// The errno every write has failed with since one could not be
    /// stored (None: writes work). Setting the size clears it.
    pub fn poisoned(&self) -> Option<i32> {
        self.poisoned
    }

    /// How many writes of this open file could not be stored, and the
    /// errno of the last one (0 if none): a handle compares the count
    /// with the one it saw at open to report a new failure once, at
    /// close, as ext4 and NFS report a writeback error.
    pub fn write_errors(&self) -> (u32, i32) {
        self.write_errors
    }

    /// A write could not be stored with `e` (not an integrity failure):
    /// the file is poisoned with its errno and the failure counted.
    fn poison_with(&mut self, e: &VolumeError) {
        if !e.is_integrity() {
            let errno = e.errno();
            self.poisoned = Some(errno);
            self.write_errors = (self.write_errors.0.wrapping_add(1), errno);
        }
    }

    // ------------------------------------------------------------ chunks

    /// Reads and opens the single chunk `k` (`buf`: its length) as the
    /// final chunk or not (last-chunk-flag format).
    fn read_chunk_as(&self, k: ChunkIndex, last: bool, buf: &mut [u8]) -> Result<(), VolumeError> {
        let mut entry = [0u8; ML];
        pread_exact(&self.file, buf, chunk_data_offset(k))?;
        pread_exact(&self.file, &mut entry, chunk_meta_offset(k))?;
        self.chunks.open(k, last, buf, &entry)?;
        Ok(())
    }

    /// Seals `buf` (chunk `k`'s plaintext, its whole length) in place and
    /// writes it with its entry.
    fn store_chunk(&self, k: ChunkIndex, last: bool, buf: &mut [u8]) -> Result<(), VolumeError> {
        let entry = self.chunks.seal(k, last, buf)?;
        pwrite(&self.file, buf, chunk_data_offset(k))?;
        pwrite(&self.file, &entry, chunk_meta_offset(k))?;
        Ok(())
    }

    /// Whether chunk `k` holds data according to its group's state
    /// (sealed group states; read from disk when this open has not loaded
    /// it; a state that does not open counts as holding data, so the chunk
    /// is authenticated and fails).
    fn written(&self, k: ChunkIndex) -> bool {
        match &self.groups {
            None => true,
            Some(g) => match g.get(group_of(k)) {
                Some(s) => s.is_written(k % CHUNKS_PER_GROUP),
                None => g
                    .read(&self.file, group_of(k))
                    .map_or(true, |s| s.is_written(k % CHUNKS_PER_GROUP)),
            },
        }
    }

    /// Opens chunk `k` of a file of `size` bytes from its stored bytes
    /// (`buf`: its length) with sealed group states. The final chunk may be
    /// stored longer than its length (a crash while the file grew or
    /// shrank left it so): it is then opened at the length stored, up to a
    /// whole chunk, and only its first bytes are kept.
    fn open_v2(
        &self,
        k: ChunkIndex,
        size: u64,
        buf: &mut [u8],
        entry: &crate::format::chunk::MetaEntry,
    ) -> Result<(), VolumeError> {
        match self.chunks.open(k, false, buf, entry) {
            Ok(_) => Ok(()),
            Err(e) if Some(k) == last_chunk(size) && buf.len() < CS => {
                let mut whole = [0u8; CS];
                let n = pread_some(&self.file, &mut whole, chunk_data_offset(k))?;
                if n <= buf.len() {
                    return Err(e.into());
                }
                self.chunks.open(k, false, &mut whole[..n], entry)?;
                buf.copy_from_slice(&whole[..buf.len()]);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads chunk `k` of a file of `size` bytes into `buf` (its length)
    /// with sealed group states: zeros for a hole, else authenticated.
    fn read_chunk_v2(&self, k: ChunkIndex, size: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        if !self.written(k) {
            buf.fill(0);
            return Ok(());
        }
        if let Some(t) = self.packed_tail().filter(|t| t.k == k) {
            return self.read_packed(t, buf);
        }
        let mut entry = [0u8; ML];
        let n = pread_some(&self.file, buf, chunk_data_offset(k))?;
        if n < buf.len() {
            return Err(VolumeError::Truncated);
        }
        pread_exact(&self.file, &mut entry, chunk_meta_offset(k))?;
        self.open_v2(k, size, buf, &entry)
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
        // The bytes start at an aligned address and the final run may be
        // read up to a whole page (direct reads).
        let room = direct::align_up(span);
        if buf.len() < room + direct::ALIGN {
            buf.resize(room + direct::ALIGN, 0);
        }
        let base = buf.as_ptr().align_offset(direct::ALIGN);
        // Every byte of out[..span] is overwritten by the reads below.
        let out = &mut buf[base..base + room];
        let stream = self.direct.sequential(offset, end);
        for run in runs(first, last, size) {
            let at = (run.first - first) as usize * CS;
            match &self.groups {
                None => self.read_run_v1(&run, &mut out[at..at + run.data_len], size)?,
                Some(g) => {
                    let data = &mut out[at..at + direct::align_up(run.data_len)];
                    self.read_run_v2(g, &run, data, size, stream)?
                }
            }
        }
        let skip = base + (offset - first * CHUNK_SIZE) as usize;
        Ok(skip..skip + (end - offset) as usize)
    }

    fn read_run_v1(&self, run: &Run, data: &mut [u8], size: u64) -> Result<(), VolumeError> {
        let mut meta = [0u8; CHUNKS_PER_GROUP as usize * ML];
        let meta = &mut meta[..run.meta_len()];
        pread_exact(&self.file, data, chunk_data_offset(run.first))?;
        pread_exact(&self.file, meta, chunk_meta_offset(run.first))?;
        let final_chunk = last_chunk(size);
        for k in run.chunks() {
            let a = run.data_at(k);
            let chunk = &mut data[a..a + chunk_len(k, size)];
            self.chunks
                .open(k, Some(k) == final_chunk, chunk, run.entry(meta, k))?;
        }
        Ok(())
    }

    /// One run with sealed group states: the group's state (unless this
    /// open knows it) and the run's entries in one read from the metadata
    /// page, the data in another (a long run that starts a group: both in
    /// one direct read); holes are zeros, every other chunk is
    /// authenticated, and data missing from the ciphertext (a cut file) is
    /// an integrity failure. `data` holds the run's data, padded to a
    /// whole page; `stream`: the read continues a sequential stream.
    fn read_run_v2(
        &self,
        groups: &Groups,
        run: &Run,
        data: &mut [u8],
        size: u64,
        stream: bool,
    ) -> Result<(), VolumeError> {
        let g = group_of(run.first);
        let data_at = chunk_data_offset(run.first);
        let mut page = direct::MetaPage::zeroed();
        let starts_group = run.first % CHUNKS_PER_GROUP == 0;
        let direct = stream
            && run.data_len >= direct::DIRECT_MIN
            && self
                .direct
                .read(&self.file, starts_group.then_some(&mut page), data, data_at)?
                .is_some();
        let data = &mut data[..run.data_len];
        let entries_at = chunk_meta_offset(run.first);
        let (state, entries) = if direct && starts_group {
            let block = &page.0;
            let s = match groups.get(g) {
                Some(s) => s,
                None => {
                    let at = META_STATE_OFFSET as usize;
                    let s = groups.cipher.open(g, &block[at..at + STATE_AREA])?;
                    groups.remember(g, s);
                    s
                }
            };
            let from = (entries_at - group_offset(g)) as usize;
            (s, &block[from..from + run.meta_len()])
        } else {
            self.read_entries_v2(groups, run, &mut page)?
        };
        let got = if direct {
            data.len()
        } else {
            pread_some(&self.file, data, data_at)?
        };
        // A packed tail (group 0 only) is read from block 0 (in the page
        // cache: the file's open read its state).
        let tail = packed::Tail::of(&state).filter(|_| g == 0);
        for k in run.chunks() {
            let a = run.data_at(k);
            let clen = chunk_len(k, size);
            let chunk = &mut data[a..a + clen];
            if !state.is_written(k % CHUNKS_PER_GROUP) {
                chunk.fill(0);
                continue;
            }
            if let Some(t) = tail.filter(|t| t.k == k) {
                self.read_packed(t, chunk)?;
                continue;
            }
            if got < a + clen {
                return Err(VolumeError::Truncated);
            }
            self.open_v2(k, size, chunk, run.entry(entries, k))?;
        }
        Ok(())
    }

    /// The group state of `run` (from this open's cache, else read) and
    /// its entries, through the page cache; `page` holds what was read.
    fn read_entries_v2<'p>(
        &self,
        groups: &Groups,
        run: &Run,
        page: &'p mut direct::MetaPage,
    ) -> Result<(GroupState, &'p [u8]), VolumeError> {
        let g = group_of(run.first);
        let meta = &mut page.0;
        let entries_at = chunk_meta_offset(run.first);
        Ok(match groups.get(g) {
            Some(s) => {
                let m = &mut meta[..run.meta_len()];
                pread_some(&self.file, m, entries_at)?;
                (s, &meta[..run.meta_len()])
            }
            None => {
                let from = state_offset(g);
                let n = (entries_at - from) as usize + run.meta_len();
                pread_some(&self.file, &mut meta[..n], from)?;
                let s = groups.cipher.open(g, &meta[..STATE_AREA])?;
                groups.remember(g, s);
                (s, &meta[(entries_at - from) as usize..n])
            }
        })
    }

    // ------------------------------------------------------------ writes

    /// Writes `data` at `offset`, growing the file if needed (a gap becomes
    /// a hole). On a failure nothing past the old size is kept, the chunks
    /// of the request inside it never read as their old content (sealed
    /// group states), and the file is poisoned (see the module docs).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.write_presealed(offset, data, None)
    }

    /// The chunk cipher of this file, to seal a write's whole chunks with
    /// no lock held ([`WriteSealer::preseal`]); None in the last-chunk-flag
    /// format, whose final chunk's seal depends on the file's size.
    pub fn write_sealer(&self) -> Option<WriteSealer> {
        self.groups
            .is_some()
            .then(|| WriteSealer(self.chunks.clone()))
    }

    /// [`SealedFile::write`] with some of its chunks sealed beforehand
    /// (ignored unless sealed by this file's [`SealedFile::write_sealer`]
    /// for exactly this write).
    pub fn write_presealed(
        &mut self,
        offset: u64,
        data: &[u8],
        presealed: Option<&mut PresealedWrite>,
    ) -> Result<(), VolumeError> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(errno) = self.poisoned {
            return Err(std::io::Error::from_raw_os_error(errno).into());
        }
        offset
            .checked_add(data.len() as u64)
            .filter(|&e| ciphertext_size(e) >= e)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        if self.groups.is_none() {
            return self.write_v1(offset, data);
        }
        self.trim_stray_tail()?;
        self.write_v2(offset, data, presealed)
    }

    /// Truncates or extends to `new` bytes (extension reads as zeros), and
    /// ends a poisoning (the writer chose a new size).
    pub fn set_len(&mut self, new: u64) -> Result<(), VolumeError> {
        self.poisoned = None;
        if self.groups.is_none() {
            return self.set_len_v1(new);
        }
        self.trim_stray_tail()?;
        self.set_len_v2(new)
    }

    /// Reserves backing space for the plaintext range `[offset,
    /// offset+len)` (`fallocate` with `FALLOC_FL_KEEP_SIZE` on the chunks
    /// and metadata blocks it covers, from its first group's metadata
    /// block), then, unless `keep_size`, extends the file to the range's
    /// end. A range past the largest offset is `EFBIG`.
    pub fn allocate(&mut self, offset: u64, len: u64, keep_size: bool) -> Result<(), VolumeError> {
        let end = offset
            .checked_add(len)
            .filter(|&e| ciphertext_size(e) >= e)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        if let Some((first, _)) = chunks_touched(offset, len) {
            let start = if self.groups.is_some() {
                crate::format::layout::group_offset(group_of(first))
            } else {
                chunk_data_offset(first).min(ciphertext_size(self.size))
            };
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

    /// Seals and stores the chunks of `span` on this thread's scratch
    /// buffers (or fresh ones for a request bigger than any FUSE request):
    /// `body` gets the chunk buffer and the entry buffer.
    fn with_scratch<R>(span: &WriteSpan<'_>, body: impl FnOnce(&mut [u8], &mut [u8]) -> R) -> R {
        let n = span.chunk_count();
        if n * CS > SCRATCH_MAX {
            // Bigger than any FUSE request: not worth keeping around.
            let (mut buf, mut entries) = (Vec::new(), Vec::new());
            let r = fit_write_buffers(&mut buf, &mut entries, n);
            return body(&mut buf[r], &mut entries);
        }
        WRITE_SCRATCH.with_borrow_mut(|(buf, entries)| {
            let r = fit_write_buffers(buf, entries, n);
            body(&mut buf[r], &mut entries[..n * ML])
        })
    }

    /// Shared storage: forgets what this open file knows of its length,
    /// size and group states and reads them again from the backing file,
    /// as an open does (another host may have written it since). Called
    /// under the file's content lock, so nothing changes meanwhile.
    pub fn reload_from_disk(&mut self) -> Result<(), VolumeError> {
        let csize = self.file.metadata()?.len();
        self.size = plaintext_size(csize).map_err(|_| VolumeError::Truncated)?;
        self.csize = csize;
        if let Some(g) = &mut self.groups {
            *g = Groups::new(g.cipher.clone());
            let d = g.discover(&self.file, csize)?;
            self.size = d.size();
            self.found = Some(d);
        }
        Ok(())
    }

    /// The same file opened again for writing (an fsck that checked it
    /// read-only and now salvages it).
    pub fn reopen_writable(&self) -> std::io::Result<SealedFile> {
        use std::os::fd::AsFd;
        let file = crate::sys::reopen(self.file.as_fd(), libc::O_RDWR)?;
        let groups = self.groups.as_ref().map(|g| Groups::new(g.cipher.clone()));
        Ok(SealedFile {
            file,
            chunks: self.chunks.clone(),
            size: self.size,
            key_version: self.key_version,
            groups,
            found: self.found,
            csize: self.csize,
            poisoned: None,
            write_errors: (0, 0),
            direct: direct::DirectIo::default(),
        })
    }
}
