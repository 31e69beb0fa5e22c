//! Direct (`O_DIRECT`) backing reads of long group runs.
//!
//! A sequential read arrives as 1 MiB requests, two whole group runs of
//! 512 KiB each. Read through the page cache, the ciphertext of such a run
//! is copied twice (disk to the backing file's page cache, then into the
//! request's buffer) and stays cached next to the plaintext the kernel
//! keeps for the mount. Read directly, the disk fills the request's buffer
//! and nothing of the ciphertext is cached: a run that starts at its
//! group's first chunk is one `preadv` of the group's metadata block and
//! the run's data (contiguous on disk, docs/FORMAT.md §4).
//!
//! Short runs (random reads) keep the page cache: their metadata block
//! stays hot there, and a direct read of data that was written through the
//! page cache but not yet stored would make the kernel write it first.
//! Coherence with buffered writes is the kernel's: a direct read writes
//! back dirty pages of its range before it reads.
//!
//! Owns: the second, read-only `O_DIRECT` descriptor of an open file and
//! when a read may use it. Must never: write through it, open or seal
//! anything, or return a short read as if it were the file's end (a short
//! direct read is answered "not served", and the caller reads again
//! through the page cache).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::format::layout::META_BLOCK;

/// Address and length alignment of a direct read (the page size; any
/// block device's logical block size divides it).
pub(super) const ALIGN: usize = 4096;

/// Runs shorter than this are read through the page cache.
pub(super) const DIRECT_MIN: usize = 128 * 1024;

/// One metadata block, aligned for a direct read.
#[repr(C, align(4096))]
pub(super) struct MetaPage(pub(super) [u8; META_BLOCK as usize]);

impl MetaPage {
    pub(super) fn zeroed() -> Self {
        MetaPage([0u8; META_BLOCK as usize])
    }
}

/// `n` rounded up to a multiple of [`ALIGN`].
pub(super) fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// The `O_DIRECT` descriptor of one open file, opened at its first long
/// read; None when the backing file system refuses direct I/O.
#[derive(Debug, Default)]
pub(super) struct DirectReads {
    fd: OnceLock<Option<File>>,
    /// A direct read failed with EINVAL (alignment the file system does
    /// not accept): every later read goes through the page cache.
    refused: AtomicBool,
    /// Where the previous read of this open file ended (plaintext).
    last_end: AtomicU64,
}

/// How far from the previous read's end a read still continues a
/// sequential stream (the kernel sends several readahead requests at
/// once, to different threads, so they may arrive out of order).
const STREAM_SLACK: u64 = 4 << 20;

impl DirectReads {
    /// Notes a read of `offset..end` and says whether it continues a
    /// sequential stream (or starts the file): only those read directly.
    /// A random read pattern keeps the page cache and its readahead, which
    /// a readahead request of the kernel's (up to 1 MiB, also under
    /// random reads) would otherwise bypass.
    pub(super) fn sequential(&self, offset: u64, end: u64) -> bool {
        let last = self.last_end.swap(end, Ordering::Relaxed);
        offset == 0 || offset.abs_diff(last) <= STREAM_SLACK
    }

    fn fd(&self, file: &File) -> Option<&File> {
        if self.refused.load(Ordering::Relaxed) {
            return None;
        }
        self.fd
            .get_or_init(|| crate::sys::reopen(file.as_fd(), libc::O_RDONLY | libc::O_DIRECT).ok())
            .as_ref()
    }

    /// Reads `data.len()` bytes at `data_at` (both multiples of [`ALIGN`],
    /// `data` aligned) directly, preceded by the metadata block right
    /// before them into `meta` when given. Some(()) when every byte was
    /// read; None when this read cannot be served directly (no direct
    /// descriptor, misaligned, or short: the end of the file is in range),
    /// and the caller reads through the page cache.
    pub(super) fn read(
        &self,
        file: &File,
        meta: Option<&mut MetaPage>,
        data: &mut [u8],
        data_at: u64,
    ) -> io::Result<Option<()>> {
        let aligned = data.as_ptr() as usize % ALIGN == 0
            && data.len() % ALIGN == 0
            && data_at % ALIGN as u64 == 0
            && !data.is_empty();
        let Some(fd) = self.fd(file).filter(|_| aligned) else {
            return Ok(None);
        };
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        let mut count = 0;
        let mut at = data_at;
        if let Some(m) = meta {
            if data_at < META_BLOCK {
                return Ok(None);
            }
            iov[0] = libc::iovec {
                iov_base: m.0.as_mut_ptr().cast(),
                iov_len: m.0.len(),
            };
            count = 1;
            at -= META_BLOCK;
        }
        iov[count] = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        count += 1;
        let want: usize = iov[..count].iter().map(|v| v.iov_len).sum();
        let n = loop {
            // SAFETY: every iovec points into a live, exclusively
            // borrowed buffer of its length; fd is open.
            let n = unsafe {
                libc::preadv(
                    fd.as_raw_fd(),
                    iov.as_ptr(),
                    count as libc::c_int,
                    at as libc::off_t,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL) => {
                    self.refused.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                _ => return Err(e),
            }
        };
        #[cfg(test)]
        if n == want {
            SERVED.with(|c| c.set(c.get() + 1));
        }
        Ok((n == want).then_some(()))
    }
}

#[cfg(test)]
thread_local! {
    /// Direct reads served on this thread (tests: was the path taken).
    pub(super) static SERVED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
