//! Issue 19: long reads (a sequential read's 1 MiB requests) read the
//! ciphertext with O_DIRECT, past the backing file's page cache, and long
//! writes (the kernel's writeback of a sequential writer) write it so. Through a
//! real mount: what they return is always current and authenticated: after
//! a write through another handle that is still only in the backing page
//! cache, after a truncate and regrowth, and after a backing block was
//! tampered with from outside while mounted (EIO, never the old plaintext).
//! And the ciphertext of such a read is not left cached next to the
//! plaintext.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use sealfs::format::layout::{chunk_data_offset, chunk_meta_offset};

const MIB: usize = 1 << 20;

/// Drops the clean cached pages of `path` (through the mount: the
/// plaintext the kernel keeps, so the next read reaches the daemon; of a
/// backing file: its ciphertext).
fn drop_cached(path: &Path) {
    let f = File::open(path).unwrap();
    // SAFETY: a valid fd; advice only.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "fadvise {}", path.display());
}

/// How many pages of `path`'s first `len` bytes are in the page cache.
fn cached_pages(path: &Path, len: usize) -> usize {
    let f = File::open(path).unwrap();
    // SAFETY: a read-only shared mapping of an open file, unmapped below;
    // mincore only reports residency.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let mut v = vec![0u8; len.div_ceil(4096)];
        assert_eq!(libc::mincore(p, len, v.as_mut_ptr()), 0);
        libc::munmap(p, len);
        v.iter().filter(|b| *b & 1 == 1).count()
    }
}

#[test]
fn long_reads_see_other_handles_writes_and_truncates_and_skip_the_backing_cache() {
    let mut fx = Fixture::mounted();
    let mut data = Rng::new(0x1901).bytes(4 * MIB);
    let backing = fx.create_tracked("f", &data);
    let p = fx.p("f");
    // Stored, then nothing of the ciphertext cached: a cold read.
    File::open(&p).unwrap().sync_all().unwrap();
    drop_cached(&backing);
    drop_cached(&p);
    let reader = File::open(&p).unwrap();
    let mut buf = vec![0u8; MIB];
    reader.read_exact_at(&mut buf, MIB as u64).unwrap();
    assert_eq!(buf, &data[MIB..2 * MIB]);
    let backing_len = fs::metadata(&backing).unwrap().len() as usize;
    let cached = cached_pages(&backing, backing_len);
    assert!(
        cached <= 16,
        "{cached} pages of the ciphertext cached after a cold 1 MiB read"
    );

    // A write through another handle, closed (flushed to the daemon, in
    // the backing page cache, not yet stored): the long read sees it.
    let new = Rng::new(0x1902).bytes(MIB + 5000);
    let w = OpenOptions::new().write(true).open(&p).unwrap();
    w.write_all_at(&new, MIB as u64 - 2000).unwrap();
    drop(w);
    data[MIB - 2000..2 * MIB + 3000].copy_from_slice(&new);
    drop_cached(&p);
    reader.read_exact_at(&mut buf, MIB as u64).unwrap();
    assert_eq!(
        buf,
        &data[MIB..2 * MIB],
        "after a write through another handle"
    );

    // Truncate into group 2, grow again: the rest reads as zeros.
    let cut = 2 * MIB + 300_000;
    let w = OpenOptions::new().write(true).open(&p).unwrap();
    w.set_len(cut as u64).unwrap();
    w.set_len(4 * MIB as u64).unwrap();
    drop(w);
    data[cut..].fill(0);
    drop_cached(&p);
    let mut all = vec![0u8; 4 * MIB];
    reader.read_exact_at(&mut all, 0).unwrap();
    assert!(all == data, "after truncate and regrowth");
    drop(reader);
    fx.unmount();
}

#[test]
fn a_block_tampered_while_mounted_fails_a_long_read_never_reads_old_plaintext() {
    let mut fx = Fixture::mounted();
    let data = Rng::new(0x1903).bytes(3 * MIB);
    let backing = fx.create_tracked("t", &data);
    let p = fx.p("t");
    let reader = File::open(&p).unwrap();
    let mut buf = vec![0u8; MIB];
    // Read once whole (the daemon knows the group states now).
    reader.read_exact_at(&mut buf, MIB as u64).unwrap();
    assert_eq!(buf, &data[MIB..2 * MIB]);
    // Chunk 300 (group 2): its data; chunk 400 (group 3): its entry.
    xor_byte(&backing, chunk_data_offset(300) + 100, 0xff);
    xor_byte(&backing, chunk_meta_offset(400) + 5, 0xff);
    drop_cached(&p);
    // Both cover chunks 300 and 400.
    for at in [MIB - 10 * 4096, MIB + 4096] {
        assert_eio(
            reader.read_exact_at(&mut buf, at as u64),
            &format!("1 MiB at {at}"),
        );
    }
    // The kernel retries page by page: the other chunks stay readable.
    assert_eio(pread(&p, 300 * 4096, 4096), "chunk 300");
    assert_eio(pread(&p, 400 * 4096, 4096), "chunk 400");
    assert_eq!(
        pread(&p, 301 * 4096, 4096).unwrap(),
        &data[301 * 4096..302 * 4096]
    );
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, &data[..MIB]);
    drop(reader);
    fx.unmount();
}

#[test]
fn long_writes_skip_the_backing_cache_and_read_back_everywhere() {
    let mut fx = Fixture::mounted();
    let mut data = Rng::new(0x1904).bytes(8 * MIB + 1234);
    // One 8 MiB write, stored at close: the kernel's writeback sends it
    // as long requests, whose whole chunks go to the disk directly.
    let backing = fx.create_tracked("w", &data);
    let p = fx.p("w");
    File::open(&p).unwrap().sync_all().unwrap();
    let backing_len = fs::metadata(&backing).unwrap().len() as usize;
    let cached = cached_pages(&backing, backing_len);
    // Buffered: each group's metadata block and the partial final chunk
    // (17 groups), and any short run where a request's edge fell.
    assert!(
        cached <= backing_len / 4096 / 10,
        "{cached} of {} ciphertext pages cached after long writes",
        backing_len / 4096
    );
    drop_cached(&p);
    assert!(fs::read(&p).unwrap() == data, "read back after long writes");

    // Long overwrites through another handle, one starting and ending
    // mid-chunk, read back through a handle that was open all along.
    let reader = File::open(&p).unwrap();
    let w = OpenOptions::new().write(true).open(&p).unwrap();
    for (at, seed) in [(3 * MIB + 777, 0x1905), (100_000, 0x1906)] {
        let new = Rng::new(seed).bytes(2 * MIB);
        w.write_all_at(&new, at as u64).unwrap();
        data[at..at + 2 * MIB].copy_from_slice(&new);
    }
    w.sync_all().unwrap();
    drop(w);
    drop_cached(&p);
    let mut all = vec![0u8; data.len()];
    reader.read_exact_at(&mut all, 0).unwrap();
    assert!(all == data, "after long overwrites");
    drop(reader);

    // And from the disk alone, after a remount.
    fx.remount();
    assert!(fs::read(fx.p("w")).unwrap() == data, "after a remount");
    fx.unmount();
}
