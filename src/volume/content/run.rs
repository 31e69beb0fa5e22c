//! Group runs and the backing-file I/O under every content read and write.
//!
//! A run is the chunks of one group a request touches: their data are
//! contiguous on disk and so are their (nonce, tag) entries, so a run costs
//! one read or write of each. Every byte the content layer writes goes
//! through [`pwrite`] and every length change through [`set_len`]; in test
//! builds both can be made to fail (a full disk) or be journaled (to replay
//! every prefix of an operation as a crash would leave it).
//!
//! Owns: the shape of a run, and the I/O primitives of content.
//! Must never: seal or open anything.

use std::fs::File;
use std::io;
use std::ops::RangeInclusive;

use crate::format::chunk::MetaEntry;
use crate::format::header::RECORD_LEN;
use crate::format::layout::{chunk_len, group_runs, ChunkIndex, CHUNK_SIZE, META_ENTRY_LEN};
use crate::volume::error::VolumeError;

pub(super) const CS: usize = CHUNK_SIZE as usize;
pub(super) const ML: usize = META_ENTRY_LEN as usize;

/// Chunks of one group, `first..=last`: their data and their metadata
/// entries are each contiguous on disk.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pub(super) first: ChunkIndex,
    pub(super) last: ChunkIndex,
    /// Bytes of data of the run (its last chunk may be partial).
    pub(super) data_len: usize,
}

impl Run {
    pub(super) fn chunks(&self) -> RangeInclusive<ChunkIndex> {
        self.first..=self.last
    }

    /// Bytes of the run's metadata entries.
    pub(super) fn meta_len(&self) -> usize {
        (self.last - self.first + 1) as usize * ML
    }

    /// Where chunk `k` of the run starts in the run's data.
    pub(super) fn data_at(&self, k: ChunkIndex) -> usize {
        (k - self.first) as usize * CS
    }

    /// Chunk `k`'s entry in the run's metadata.
    pub(super) fn entry<'m>(&self, meta: &'m [u8], k: ChunkIndex) -> &'m MetaEntry {
        meta[(k - self.first) as usize * ML..][..ML]
            .try_into()
            .expect("entry length")
    }
}

/// The group runs covering chunks `first..=last` of a file of `size` bytes.
pub(super) fn runs(first: ChunkIndex, last: ChunkIndex, size: u64) -> impl Iterator<Item = Run> {
    group_runs(first, last).map(move |(s, e)| Run {
        first: s,
        last: e,
        data_len: (e - s) as usize * CS + chunk_len(e, size),
    })
}

/// The final chunk of a file of `size` bytes.
pub(super) fn last_chunk(size: u64) -> Option<ChunkIndex> {
    (size > 0).then(|| (size - 1) / CHUNK_SIZE)
}

/// Reads exactly `buf.len()` bytes at `offset`; a file too short for them
/// is [`VolumeError::Truncated`].
pub(super) fn pread_exact(file: &File, buf: &mut [u8], offset: u64) -> Result<(), VolumeError> {
    crate::sys::read_exact_at(file, buf, offset).map_err(VolumeError::short_read)
}

/// Reads up to `buf.len()` bytes at `offset` (fewer at the end of the
/// file); returns how many.
pub(super) fn pread_some(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    crate::sys::read_at_most(file, buf, offset)
}

/// Writes all of `buf` at `offset`.
pub(super) fn pwrite(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(test)]
    if let Some(r) = testing::intercept_write(file, buf, offset) {
        return r;
    }
    crate::sys::write_all_at(file, buf, offset)
}

/// Writes a run's sealed data (`buf`, page-aligned) at `offset`, directly
/// where `direct` can (see [`super::direct`]).
pub(super) fn pwrite_run_data(
    file: &File,
    direct: &super::direct::DirectIo,
    buf: &[u8],
    offset: u64,
) -> io::Result<()> {
    #[cfg(test)]
    if let Some(r) = testing::intercept_write(file, buf, offset) {
        return r;
    }
    direct.write(file, buf, offset)
}

/// Sets the backing file's length.
pub(super) fn set_len(file: &File, len: u64) -> io::Result<()> {
    #[cfg(test)]
    testing::journal(testing::Op::SetLen(len));
    file.set_len(len)
}

/// Reads the header record of a ciphertext file (the start of its first
/// metadata block); a file too short for it is [`VolumeError::Truncated`].
pub fn read_header(file: &File) -> Result<[u8; RECORD_LEN], VolumeError> {
    let mut buf = [0u8; RECORD_LEN];
    pread_exact(file, &mut buf, 0)?;
    Ok(buf)
}

/// Rewrites the header record of a ciphertext file in place (no sync).
pub fn write_header(file: &File, record: &[u8; RECORD_LEN]) -> io::Result<()> {
    crate::sys::write_all_at(file, record, 0)
}

/// Failure injection and a write journal for the content layer's tests.
#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use std::cell::RefCell;

    /// One change to a backing file, as journaled.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
    }

    /// How writes fail on this thread.
    #[derive(Debug, Clone, Copy)]
    pub enum Fault {
        /// Bytes at or past this offset cannot be written (ENOSPC): a
        /// write across it stores the part before it and fails.
        From(u64),
        /// The write after this many more succeeds fails (ENOSPC),
        /// storing nothing.
        After(usize),
    }

    thread_local! {
        static FAULT: RefCell<Option<Fault>> = const { RefCell::new(None) };
        static JOURNAL: RefCell<Option<Vec<Op>>> = const { RefCell::new(None) };
    }

    /// Makes writes on this thread fail as `f` says (None: never).
    pub fn set_fault(f: Option<Fault>) {
        FAULT.with_borrow_mut(|x| *x = f);
    }

    /// Starts journaling this thread's writes.
    pub fn start_journal() {
        JOURNAL.with_borrow_mut(|j| *j = Some(Vec::new()));
    }

    /// Stops journaling and returns what was written.
    pub fn take_journal() -> Vec<Op> {
        JOURNAL.with_borrow_mut(|j| j.take().unwrap_or_default())
    }

    pub(super) fn journal(op: Op) {
        JOURNAL.with_borrow_mut(|j| {
            if let Some(j) = j {
                j.push(op)
            }
        });
    }

    fn enospc() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOSPC)
    }

    pub(super) fn intercept_write(file: &File, buf: &[u8], offset: u64) -> Option<io::Result<()>> {
        let fault = FAULT.with_borrow_mut(|f| match f {
            Some(Fault::After(0)) => Some(None),
            Some(Fault::After(n)) => {
                *n -= 1;
                None
            }
            Some(Fault::From(at)) if offset + buf.len() as u64 > *at => Some(Some(*at)),
            _ => None,
        });
        match fault {
            None => {
                journal(Op::Write(offset, buf.to_vec()));
                None
            }
            Some(None) => Some(Err(enospc())),
            Some(Some(at)) => {
                let keep = at.saturating_sub(offset) as usize;
                if keep > 0 {
                    journal(Op::Write(offset, buf[..keep].to_vec()));
                    if let Err(e) = crate::sys::write_all_at(file, &buf[..keep], offset) {
                        return Some(Err(e));
                    }
                }
                Some(Err(enospc()))
            }
        }
    }

    /// Applies `ops` to the bytes of a file.
    pub fn replay(bytes: &mut Vec<u8>, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Write(off, data) => {
                    let end = *off as usize + data.len();
                    if bytes.len() < end {
                        bytes.resize(end, 0);
                    }
                    bytes[*off as usize..end].copy_from_slice(data);
                }
                Op::SetLen(n) => bytes.resize(*n as usize, 0),
            }
        }
    }
}
