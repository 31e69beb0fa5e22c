//! Direct (`O_DIRECT`) backing reads and writes of long group runs.
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
//! Writes are the mirror image: the kernel's writeback sends a sequential
//! writer's pages as requests of up to 1 MiB, and a run's sealed data
//! written through the page cache is copied once more into the backing
//! file's cache, dirty next to the mount's own dirty plaintext, so a
//! writer meets the kernel's dirty-memory limit at half the data. A long
//! run's whole chunks are written directly from the (page-aligned) buffer
//! they were sealed in; a partial final chunk, the metadata entries and the
//! group states stay buffered. The write order of the content layer is
//! unchanged: each write returns before the next starts, and durability is
//! still `fsync`'s (a direct write is not a synchronous one).
//!
//! Short runs (random I/O) keep the page cache: their metadata block
//! stays hot there, and a direct read of data that was written through the
//! page cache but not yet stored would make the kernel write it first.
//! Coherence with buffered I/O is the kernel's: a direct read or write
//! writes back dirty pages of its range first, and a direct write drops
//! the cached pages of its range.
//!
//! Owns: the two `O_DIRECT` descriptors of an open file (one to read, one
//! to write) and when an I/O may use them. Must never: write anything but
//! whole sealed chunks through them, open or seal anything, or return a
//! short read as if it were the file's end (a short direct read is
//! answered "not served", and the caller reads again through the page
//! cache; a direct write that cannot go on is finished through the page
//! cache).

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

/// One `O_DIRECT` descriptor of an open file, opened at its first use;
/// None when the backing file system refuses direct I/O.
#[derive(Debug, Default)]
struct DirectFd {
    fd: OnceLock<Option<File>>,
    /// A direct I/O failed with EINVAL (alignment the file system does not
    /// accept): every later one goes through the page cache.
    refused: AtomicBool,
}

impl DirectFd {
    /// The descriptor (`file` reopened with `flags | O_DIRECT`), unless
    /// refused.
    fn get(&self, file: &File, flags: i32) -> Option<&File> {
        if self.refused.load(Ordering::Relaxed) {
            return None;
        }
        self.fd
            .get_or_init(|| crate::sys::reopen(file.as_fd(), flags | libc::O_DIRECT).ok())
            .as_ref()
    }

    fn refuse(&self) {
        self.refused.store(true, Ordering::Relaxed);
    }
}

/// The `O_DIRECT` descriptors of one open file: one to read, one to write.
#[derive(Debug, Default)]
pub(super) struct DirectIo {
    reads: DirectFd,
    writes: DirectFd,
    /// Where the previous read of this open file ended (plaintext).
    last_end: AtomicU64,
}

/// How far from the previous read's end a read still continues a
/// sequential stream (the kernel sends several readahead requests at
/// once, to different threads, so they may arrive out of order).
const STREAM_SLACK: u64 = 4 << 20;

impl DirectIo {
    /// Notes a read of `offset..end` and says whether it continues a
    /// sequential stream (or starts the file): only those read directly.
    /// A random read pattern keeps the page cache and its readahead, which
    /// a readahead request of the kernel's (up to 1 MiB, also under
    /// random reads) would otherwise bypass.
    pub(super) fn sequential(&self, offset: u64, end: u64) -> bool {
        let last = self.last_end.swap(end, Ordering::Relaxed);
        offset == 0 || offset.abs_diff(last) <= STREAM_SLACK
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
        let Some(fd) = self.reads.get(file, libc::O_RDONLY).filter(|_| aligned) else {
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
                    self.reads.refuse();
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

    /// Writes `data` (sealed chunks, a run's data) at `at`: its whole
    /// pages directly when it is a long run and the file system takes
    /// direct I/O, the rest (a partial final chunk; everything, when the
    /// direct descriptor is refused) through the page cache. Both parts
    /// are stored when this returns Ok.
    pub(super) fn write(&self, file: &File, data: &[u8], at: u64) -> io::Result<()> {
        let whole = data.len() / ALIGN * ALIGN;
        let aligned = data.as_ptr() as usize % ALIGN == 0 && at % ALIGN as u64 == 0;
        let mut done = 0;
        if let Some(fd) = (aligned && whole >= DIRECT_MIN)
            .then(|| self.writes.get(file, libc::O_WRONLY))
            .flatten()
        {
            while done < whole {
                let part = &data[done..whole];
                // SAFETY: part is a live buffer of its length; fd is open.
                let n = unsafe {
                    libc::pwrite(
                        fd.as_raw_fd(),
                        part.as_ptr().cast(),
                        part.len(),
                        (at + done as u64) as libc::off_t,
                    )
                };
                match n {
                    // A short write off a page boundary: the rest cannot
                    // go directly.
                    1.. => {
                        done += n as usize;
                        if done % ALIGN != 0 {
                            break;
                        }
                    }
                    0 => break,
                    _ => {
                        let e = io::Error::last_os_error();
                        match e.raw_os_error() {
                            Some(libc::EINTR) => {}
                            Some(libc::EINVAL) => {
                                self.writes.refuse();
                                break;
                            }
                            _ => return Err(e),
                        }
                    }
                }
            }
            #[cfg(test)]
            if done > 0 {
                WRITTEN.with(|c| c.set(c.get() + 1));
            }
        }
        if done < data.len() {
            crate::sys::write_all_at(file, &data[done..], at + done as u64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    /// Direct reads served on this thread (tests: was the path taken).
    pub(super) static SERVED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Direct writes made on this thread.
    pub(super) static WRITTEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}
