//! Syscall-level behaviour of a sealfs mount, checked against what Linux
//! filesystems do (and against an in-memory model for content).

mod common;

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

const CHUNK: u64 = 4096;
const GROUP: u64 = 128 * CHUNK; // plaintext bytes per metadata group (512 KiB)

fn read_all(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Compares two byte strings and reports the first differing offset.
#[track_caller]
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: content differs: got {} bytes, want {} bytes, first difference at offset {first} (chunk {}, got {:?}, want {:?})",
        got.len(),
        want.len(),
        first as u64 / CHUNK,
        got.get(first),
        want.get(first)
    );
}

/// Entry names as readdir(3) returns them, `.` and `..` included.
fn raw_readdir(dir: &Path) -> BTreeSet<Vec<u8>> {
    let c = cpath(dir);
    let mut out = BTreeSet::new();
    // SAFETY: plain opendir/readdir/closedir on a valid C string; each
    // dirent is read before the next readdir call.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null(), "opendir {}: errno {}", dir.display(), errno());
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = CStr::from_ptr((*e).d_name.as_ptr()).to_bytes().to_vec();
            assert!(
                out.insert(name.clone()),
                "readdir returned {:?} twice",
                String::from_utf8_lossy(&name)
            );
        }
        libc::closedir(d);
    }
    out
}

fn names(list: &[&str]) -> BTreeSet<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------- content

/// Picks an offset biased towards chunk and group boundaries.
fn pick_offset(rng: &mut Rng, max: u64, cur_len: u64) -> u64 {
    let off = match rng.below(5) {
        0 => rng.below(max),
        1 => {
            let k = rng.below(max / CHUNK);
            (k * CHUNK + rng.below(128)).saturating_sub(64)
        }
        2 => {
            let g = 1 + rng.below(max / GROUP);
            (g * GROUP + rng.below(2 * CHUNK + 1)).saturating_sub(CHUNK)
        }
        3 => (cur_len + rng.below(2 * CHUNK)).saturating_sub(CHUNK),
        _ => rng.below(max / CHUNK) * CHUNK,
    };
    off.min(max - 1)
}

fn pick_len(rng: &mut Rng) -> usize {
    (match rng.below(5) {
        0 => 1 + rng.below(16),
        1 => 1 + rng.below(2 * CHUNK),
        2 => CHUNK,
        3 => 1 + rng.below(70_000),
        _ => 3 * CHUNK + 1,
    }) as usize
}

/// Runs `n` random writes, truncates and reads on `path`, mirroring them in `model`.
fn random_ops(path: &Path, model: &mut Vec<u8>, rng: &mut Rng, n: usize, max: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    for i in 0..n {
        match rng.below(10) {
            0..=5 => {
                let off = pick_offset(rng, max, model.len() as u64);
                let n = pick_len(rng);
                let data = rng.bytes(n);
                f.write_all_at(&data, off)
                    .unwrap_or_else(|e| panic!("op {i}: pwrite {} at {off}: {e}", data.len()));
                let end = off as usize + data.len();
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            6 => {
                let len = pick_offset(rng, max, model.len() as u64);
                f.set_len(len)
                    .unwrap_or_else(|e| panic!("op {i}: ftruncate to {len}: {e}"));
                model.resize(len as usize, 0);
            }
            _ => {
                let off = pick_offset(rng, max, model.len() as u64);
                let len = pick_len(rng);
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    let r = f
                        .read_at(&mut buf[got..], off + got as u64)
                        .unwrap_or_else(|e| panic!("op {i}: pread {len} at {off}: {e}"));
                    if r == 0 {
                        break;
                    }
                    got += r;
                }
                let lo = (off as usize).min(model.len());
                let hi = (off as usize + len).min(model.len());
                assert_same(
                    &buf[..got],
                    &model[lo..hi],
                    &format!("op {i}: pread {len} at {off}"),
                );
            }
        }
        if i % 50 == 49 {
            assert_eq!(
                f.metadata().unwrap().len(),
                model.len() as u64,
                "op {i}: fstat size"
            );
        }
    }
    f.sync_all().unwrap();
}

#[test]
fn random_io_matches_model_across_chunk_and_group_boundaries() {
    let mut fx = Fixture::mounted();
    let path = fx.p("model.bin");
    let mut model = Vec::new();
    let mut rng = Rng::new(0x5EA1_F5C0_FFEE);
    let max = 2 * GROUP + 3 * CHUNK + 17; // spans two group boundaries
    random_ops(&path, &mut model, &mut rng, 300, max);
    assert_same(&read_all(&path), &model, "after 300 ops");
    assert_eq!(fs::metadata(&path).unwrap().len(), model.len() as u64);

    fx.remount();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        model.len() as u64,
        "size after remount"
    );
    assert_same(&read_all(&path), &model, "after remount");

    // More operations on the reopened volume, then again from a cold cache.
    random_ops(&path, &mut model, &mut rng, 200, max);
    assert_same(&read_all(&path), &model, "after 200 more ops");
    fx.remount();
    assert_same(&read_all(&path), &model, "after second remount");
}

#[test]
fn many_small_unaligned_writes_then_remount() {
    // Sequential odd-sized writes through a buffered writer: every chunk
    // boundary gets crossed in the middle of a write.
    let mut fx = Fixture::mounted();
    let path = fx.p("seq.bin");
    let mut rng = Rng::new(42);
    let mut model = Vec::new();
    {
        let mut f = File::create(&path).unwrap();
        while model.len() < (GROUP + 5 * CHUNK) as usize {
            let n = 1 + rng.below(1000) as usize;
            let d = rng.bytes(n);
            f.write_all(&d).unwrap();
            model.extend_from_slice(&d);
        }
    }
    assert_same(&read_all(&path), &model, "before remount");
    fx.remount();
    assert_same(&read_all(&path), &model, "after remount");
}

#[test]
fn sparse_holes_read_as_zeros() {
    let mut fx = Fixture::mounted();
    let path = fx.p("sparse");
    let far = GROUP + 3 * CHUNK + 123;
    {
        let f = File::create(&path).unwrap();
        f.write_all_at(b"head", 10).unwrap();
        f.write_all_at(b"tail", far).unwrap();
    }
    let mut want = vec![0u8; far as usize + 4];
    want[10..14].copy_from_slice(b"head");
    want[far as usize..].copy_from_slice(b"tail");
    assert_eq!(fs::metadata(&path).unwrap().len(), far + 4);
    assert_same(&read_all(&path), &want, "sparse file");

    // A hole that starts in the middle of the file, created by seek+write.
    let p2 = fx.p("sparse2");
    {
        let f = File::create(&p2).unwrap();
        f.write_all_at(&[0xAB; 100], 3 * GROUP).unwrap();
    }
    fx.remount();
    assert_same(&read_all(&path), &want, "sparse file after remount");
    let got = read_all(&p2);
    assert_eq!(got.len() as u64, 3 * GROUP + 100);
    assert!(
        got[..(3 * GROUP) as usize].iter().all(|&b| b == 0),
        "hole is not zero"
    );
    assert!(got[(3 * GROUP) as usize..].iter().all(|&b| b == 0xAB));
}

#[test]
fn far_sparse_offset_beyond_4_gib() {
    let mut fx = Fixture::mounted();
    let path = fx.p("huge-sparse");
    let far: u64 = 5 * (1 << 30) + 3;
    {
        let f = File::create(&path).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"end", far).unwrap();
    }
    let check = |fx: &Fixture| {
        let m = fs::metadata(&path).unwrap();
        assert_eq!(m.len(), far + 3);
        // Sealed group states (docs/FORMAT.md §4.2): every group up to the
        // end holds its state, one 4 KiB metadata page per 512 KiB of hole;
        // nothing else of the hole is allocated (2 % for the backing file
        // system's own extent blocks of so fragmented a file).
        let groups = far / (128 * 4096) + 1;
        assert!(
            m.blocks() <= groups * 8 * 102 / 100 + 64,
            "a sparse file should stay sparse: {} blocks for {groups} groups",
            m.blocks()
        );
        let f = File::open(&path).unwrap();
        let mut b = vec![0xEEu8; 8192];
        f.read_exact_at(&mut b, 4 * (1 << 30) + 1000).unwrap();
        assert!(b.iter().all(|&x| x == 0), "hole at 4 GiB is not zero");
        let mut e = [0u8; 3];
        f.read_exact_at(&mut e, far).unwrap();
        assert_eq!(&e, b"end");
        let mut s = [0u8; 5];
        f.read_exact_at(&mut s, 0).unwrap();
        assert_eq!(&s, b"start");
        let _ = fx;
    };
    check(&fx);
    fx.remount();
    check(&fx);
}

#[test]
fn o_append_appends() {
    let mut fx = Fixture::mounted();
    let path = fx.p("log.txt");
    fs::write(&path, b"first\n").unwrap();
    let mut want = b"first\n".to_vec();
    for i in 0..50 {
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let line = format!("line {i} {}\n", "x".repeat(i * 37));
        f.write_all(line.as_bytes()).unwrap();
        want.extend_from_slice(line.as_bytes());
    }
    {
        // Two append handles interleaving.
        let mut a = OpenOptions::new().append(true).open(&path).unwrap();
        let mut b = OpenOptions::new().append(true).open(&path).unwrap();
        a.write_all(b"AAAA").unwrap();
        b.write_all(b"BBBB").unwrap();
        a.write_all(b"aaaa").unwrap();
        want.extend_from_slice(b"AAAABBBBaaaa");
    }
    assert_same(&read_all(&path), &want, "appended");
    fx.remount();
    assert_same(&read_all(&path), &want, "appended, after remount");
}

#[test]
fn truncate_up_and_down() {
    let mut fx = Fixture::mounted();
    let path = fx.p("t");
    let mut rng = Rng::new(7);
    let mut model = rng.bytes((3 * CHUNK + 500) as usize);
    fs::write(&path, &model).unwrap();

    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // ftruncate down into the middle of chunk 1, then up past a group boundary.
    for &len in &[
        CHUNK + 1000,
        CHUNK,
        GROUP + 77,
        5,
        0,
        2 * CHUNK + 3,
        GROUP,
        GROUP - 1,
    ] {
        f.set_len(len).unwrap();
        model.resize(len as usize, 0);
        assert_eq!(f.metadata().unwrap().len(), len);
        assert_same(
            &read_all(&path),
            &model,
            &format!("after ftruncate to {len}"),
        );
        // Write a bit of data at the new end so the next cut keeps something.
        let d = rng.bytes(300);
        f.write_all_at(&d, len).unwrap();
        model.extend_from_slice(&d);
    }
    drop(f);

    // truncate(2) by path, both directions.
    let c = cpath(&path);
    // SAFETY: valid C string.
    assert_eq!(
        unsafe { libc::truncate(c.as_ptr(), 3 * CHUNK as i64 + 10) },
        0,
        "truncate up: errno {}",
        errno()
    );
    model.resize((3 * CHUNK + 10) as usize, 0);
    // SAFETY: valid C string.
    assert_eq!(
        unsafe { libc::truncate(c.as_ptr(), 4097) },
        0,
        "truncate down: errno {}",
        errno()
    );
    model.resize(4097, 0);
    assert_same(&read_all(&path), &model, "after truncate(2)");
    fx.remount();
    assert_eq!(fs::metadata(&path).unwrap().len(), 4097);
    assert_same(&read_all(&path), &model, "after remount");

    // O_TRUNC on open.
    File::create(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    fx.remount();
    assert_eq!(read_all(&path), b"");
}

#[test]
fn fallocate_extends_size() {
    let mut fx = Fixture::mounted();
    let path = fx.p("fa");
    fs::write(&path, b"0123456789").unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let len = 2 * CHUNK + 321;
    // SAFETY: valid fd.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as i64) };
    assert_eq!(r, 0, "fallocate mode 0: errno {}", errno());
    assert_eq!(f.metadata().unwrap().len(), len);
    // KEEP_SIZE must not change the size.
    // SAFETY: valid fd.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            10 * CHUNK as i64,
        )
    };
    assert_eq!(r, 0, "fallocate KEEP_SIZE: errno {}", errno());
    assert_eq!(f.metadata().unwrap().len(), len);
    // A range beyond the end with mode 0 extends too.
    // SAFETY: valid fd.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, GROUP as i64, 100) };
    assert_eq!(r, 0, "fallocate beyond end: errno {}", errno());
    // Hole punching is not supported; it must fail cleanly and change nothing.
    // SAFETY: valid fd.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4,
        )
    };
    assert_eq!(r, -1, "punch hole unexpectedly succeeded");
    assert_eq!(errno(), libc::EOPNOTSUPP, "punch hole errno");
    drop(f);
    let mut want = vec![0u8; (GROUP + 100) as usize];
    want[..10].copy_from_slice(b"0123456789");
    assert_same(&read_all(&path), &want, "after fallocate");
    fx.remount();
    assert_eq!(fs::metadata(&path).unwrap().len(), GROUP + 100);
    assert_same(&read_all(&path), &want, "after fallocate and remount");
}

// ---------------------------------------------------------------- namespace

#[test]
fn rename_files_and_directories() {
    let mut fx = Fixture::mounted();
    fs::write(fx.p("a"), b"content of a").unwrap();
    fs::rename(fx.p("a"), fx.p("b")).unwrap();
    assert!(!fx.p("a").exists());
    assert_eq!(read_all(&fx.p("b")), b"content of a");

    // A directory with a nested tree keeps its children readable.
    fs::create_dir_all(fx.p("d1/sub/deeper")).unwrap();
    let big = Rng::new(1).bytes((CHUNK * 3 + 1) as usize);
    fs::write(fx.p("d1/f"), b"f in d1").unwrap();
    fs::write(fx.p("d1/sub/g"), &big).unwrap();
    fs::write(fx.p("d1/sub/deeper/h"), b"h").unwrap();
    std::os::unix::fs::symlink("../f", fx.p("d1/sub/link")).unwrap();
    fs::create_dir(fx.p("other")).unwrap();
    fs::rename(fx.p("d1"), fx.p("other/moved")).unwrap();
    // Move a file across directories too.
    fs::rename(fx.p("b"), fx.p("other/moved/sub/b2")).unwrap();

    let check = |fx: &Fixture| {
        assert!(!fx.p("d1").exists());
        assert_eq!(read_all(&fx.p("other/moved/f")), b"f in d1");
        assert_same(&read_all(&fx.p("other/moved/sub/g")), &big, "moved g");
        assert_eq!(read_all(&fx.p("other/moved/sub/deeper/h")), b"h");
        assert_eq!(read_all(&fx.p("other/moved/sub/b2")), b"content of a");
        assert_eq!(
            fs::read_link(fx.p("other/moved/sub/link")).unwrap(),
            Path::new("../f")
        );
        assert_eq!(read_all(&fx.p("other/moved/sub/link")), b"f in d1");
        assert_eq!(
            raw_readdir(&fx.p("other/moved/sub")),
            names(&[".", "..", "g", "deeper", "link", "b2"])
        );
    };
    check(&fx);
    fx.remount();
    check(&fx);

    // Rename of a directory onto an empty directory replaces it.
    fs::create_dir(fx.p("empty")).unwrap();
    fs::rename(fx.p("other/moved"), fx.p("empty")).unwrap();
    assert_eq!(read_all(&fx.p("empty/sub/deeper/h")), b"h");
    // ... but not onto a non-empty one.
    fs::create_dir(fx.p("full")).unwrap();
    fs::write(fx.p("full/x"), b"x").unwrap();
    assert_errno(
        fs::rename(fx.p("empty"), fx.p("full")),
        libc::ENOTEMPTY,
        "rename dir onto non-empty dir",
    );
    fx.remount();
    assert_eq!(read_all(&fx.p("empty/sub/b2")), b"content of a");
    assert_eq!(read_all(&fx.p("full/x")), b"x");
}

#[test]
fn rename_replaces_existing_target() {
    let mut fx = Fixture::mounted();
    fs::write(fx.p("src"), b"new content").unwrap();
    fs::write(fx.p("dst"), Rng::new(3).bytes(20_000)).unwrap();
    // Keep the target open across the rename: it must stay readable.
    let mut old = File::open(fx.p("dst")).unwrap();
    fs::rename(fx.p("src"), fx.p("dst")).unwrap();
    assert!(!fx.p("src").exists());
    assert_eq!(read_all(&fx.p("dst")), b"new content");
    let mut buf = Vec::new();
    old.read_to_end(&mut buf).unwrap();
    assert_eq!(buf.len(), 20_000, "an open, replaced file stays readable");
    drop(old);

    // Replace across directories.
    fs::create_dir(fx.p("d")).unwrap();
    fs::write(fx.p("d/dst"), b"old").unwrap();
    fs::rename(fx.p("dst"), fx.p("d/dst")).unwrap();
    assert_eq!(read_all(&fx.p("d/dst")), b"new content");
    assert_eq!(raw_readdir(&fx.mnt), names(&[".", "..", "d"]));
    fx.remount();
    assert_eq!(read_all(&fx.p("d/dst")), b"new content");
    assert_eq!(raw_readdir(&fx.p("d")), names(&[".", "..", "dst"]));
}

#[test]
fn rename_noreplace_gives_eexist() {
    let fx = Fixture::mounted();
    fs::write(fx.p("a"), b"a").unwrap();
    fs::write(fx.p("b"), b"b").unwrap();
    assert_errno(
        renameat2(&fx.p("a"), &fx.p("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "RENAME_NOREPLACE onto existing",
    );
    assert_eq!(read_all(&fx.p("a")), b"a");
    assert_eq!(read_all(&fx.p("b")), b"b");
    // Without a target it works.
    renameat2(&fx.p("a"), &fx.p("c"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(read_all(&fx.p("c")), b"a");
    assert!(!fx.p("a").exists());
}

#[test]
fn unlink_removes_file_and_its_ciphertext() {
    let mut fx = Fixture::mounted();
    let before = fx.cipher_listing();
    fs::write(fx.p("gone"), b"soon gone").unwrap();
    assert_ne!(fx.cipher_listing(), before);
    fs::remove_file(fx.p("gone")).unwrap();
    assert_errno(
        fs::metadata(fx.p("gone")),
        libc::ENOENT,
        "stat after unlink",
    );
    assert_errno(fs::remove_file(fx.p("gone")), libc::ENOENT, "second unlink");
    assert_eq!(fx.cipher_listing(), before, "backing file left behind");
    // An open file survives its unlink until closed.
    fs::write(fx.p("open"), b"still here").unwrap();
    let mut f = File::open(fx.p("open")).unwrap();
    fs::remove_file(fx.p("open")).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    drop(f);
    fx.remount();
    assert_eq!(raw_readdir(&fx.mnt), names(&[".", ".."]));
}

/// An open file whose name is gone keeps working through its descriptor
/// (fstat, fchmod, futimens), and never touches a new file that took its
/// name.
#[test]
fn open_unlinked_file_keeps_its_own_attributes() {
    // allow_other: the kernel keeps attributes for one second (a private
    // mount keeps them ten), so the stats past it below reach the daemon.
    let mut fx = Fixture::new();
    fx.mount_with(&["-o", "allow_other"]);
    let p = fx.p("name");
    fs::write(&p, b"first").unwrap();
    let old = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    let st = old.metadata().expect("fstat of an open, unlinked file");
    assert_eq!((st.len(), st.nlink()), (5, 0));

    fs::write(&p, b"second file").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    old.set_permissions(fs::Permissions::from_mode(0o640))
        .expect("fchmod of an open, unlinked file");
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        },
    ];
    // SAFETY: valid fd and a two-element timespec array.
    let r = unsafe { libc::futimens(old.as_raw_fd(), times.as_ptr()) };
    assert_eq!(r, 0, "futimens: errno {}", errno());
    // Past the attribute timeout, so that both stats come from the daemon.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let st = old.metadata().unwrap();
    assert_eq!(st.mode() & 0o7777, 0o640);
    assert_eq!((st.mtime(), st.len()), (1_000_000_000, 5));
    let new = fs::metadata(&p).unwrap();
    assert_eq!(new.mode() & 0o7777, 0o600, "fchmod reached the new file");
    assert_ne!(new.mtime(), 1_000_000_000, "futimens reached the new file");
    assert_eq!(new.len(), 11);
    let mut s = String::new();
    (&old).read_to_string(&mut s).unwrap();
    assert_eq!(s, "first");
    assert_eq!(read_all(&p), b"second file");
}
/// Free bytes of the filesystem under `p`, as statvfs reports them.
fn free_bytes(p: &Path) -> u64 {
    let c = cpath(p);
    // SAFETY: zeroed POD out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    assert_eq!(
        unsafe { libc::statvfs(c.as_ptr(), &mut s) },
        0,
        "statvfs: errno {}",
        errno()
    );
    s.f_bavail * s.f_frsize
}

#[test]
fn space_of_deleted_files_is_free_at_the_next_statfs() {
    // Unlinked files are freed in the background; statfs must not show
    // the space as still used.
    let fx = Fixture::mounted();
    let chunk = vec![0x5au8; 1 << 20];
    fs::create_dir(fx.p("many")).unwrap();
    let mut written = 0u64;
    for i in 0..24 {
        let mut f = File::create(fx.p(&format!("many/f{i}"))).unwrap();
        f.write_all(&chunk).unwrap();
        f.sync_all().unwrap();
        written += chunk.len() as u64;
    }
    let mut big = File::create(fx.p("big")).unwrap();
    for _ in 0..24 {
        big.write_all(&chunk).unwrap();
    }
    big.sync_all().unwrap();
    drop(big);
    written += 24 << 20;
    let full = free_bytes(&fx.mnt);
    fs::remove_dir_all(fx.p("many")).unwrap();
    fs::remove_file(fx.p("big")).unwrap();
    let freed = free_bytes(&fx.mnt).saturating_sub(full);
    // Other tests write to the same disk meanwhile: allow a margin.
    assert!(
        freed >= written * 3 / 4,
        "only {freed} of {written} bytes free again after the deletes"
    );
}

#[test]
fn mkdir_and_rmdir() {
    let mut fx = Fixture::mounted();
    fs::create_dir(fx.p("d")).unwrap();
    assert!(fs::metadata(fx.p("d")).unwrap().is_dir());
    assert_errno(fs::create_dir(fx.p("d")), libc::EEXIST, "mkdir existing");
    fs::write(fx.p("d/f"), b"x").unwrap();
    assert_errno(
        fs::remove_dir(fx.p("d")),
        libc::ENOTEMPTY,
        "rmdir non-empty",
    );
    fs::create_dir(fx.p("d/sub")).unwrap();
    fs::remove_file(fx.p("d/f")).unwrap();
    assert_errno(
        fs::remove_dir(fx.p("d")),
        libc::ENOTEMPTY,
        "rmdir with subdir",
    );
    fs::remove_dir(fx.p("d/sub")).unwrap();
    fs::remove_dir(fx.p("d")).unwrap();
    assert_errno(fs::metadata(fx.p("d")), libc::ENOENT, "stat after rmdir");
    assert_errno(fs::remove_dir(fx.p("nope")), libc::ENOENT, "rmdir missing");
    fs::write(fx.p("file"), b"").unwrap();
    assert_errno(
        fs::remove_dir(fx.p("file")),
        libc::ENOTDIR,
        "rmdir of a file",
    );
    // A directory's mode survives.
    fs::create_dir(fx.p("m")).unwrap();
    fs::set_permissions(fx.p("m"), fs::Permissions::from_mode(0o750)).unwrap();
    // The cipherdir holds only the volume's files and the two we left.
    fx.remount();
    assert_eq!(raw_readdir(&fx.mnt), names(&[".", "..", "file", "m"]));
    assert_eq!(fs::metadata(fx.p("m")).unwrap().mode() & 0o7777, 0o750);
    fs::remove_dir(fx.p("m")).unwrap();
}

#[test]
fn readdir_lists_exactly_the_entries() {
    let mut fx = Fixture::mounted();
    assert_eq!(raw_readdir(&fx.mnt), names(&[".", ".."]));
    let mut want = vec![".".to_string(), "..".to_string()];
    for i in 0..150 {
        let n = format!("file-{i:03}-{}", "z".repeat(i % 40));
        fs::write(fx.p(&n), n.as_bytes()).unwrap();
        want.push(n);
    }
    for n in [
        "dir one",
        "ünïcödé",
        ".hidden",
        "sealfs.dir",
        "sealfs.toml",
        "x.name",
    ] {
        fs::create_dir(fx.p(n)).unwrap();
        want.push(n.to_string());
    }
    std::os::unix::fs::symlink("nowhere", fx.p("dangling")).unwrap();
    want.push("dangling".into());
    let mut want: BTreeSet<Vec<u8>> = want.into_iter().map(String::into_bytes).collect();
    // Linux names are bytes: not UTF-8, with a newline and a tab.
    let raw: &[u8] = b"bytes\xff\xfe\n\tname";
    fs::write(fx.mnt.join(std::ffi::OsStr::from_bytes(raw)), b"raw").unwrap();
    want.insert(raw.to_vec());
    assert_eq!(raw_readdir(&fx.mnt), want);
    fx.remount();
    assert_eq!(raw_readdir(&fx.mnt), want);
    // Names that look like sealfs' own files are ordinary entries inside the mount.
    assert!(fs::metadata(fx.p("sealfs.toml")).unwrap().is_dir());
    assert_eq!(
        read_all(&fx.mnt.join(std::ffi::OsStr::from_bytes(raw))),
        b"raw"
    );
    assert_eq!(raw_readdir(&fx.p("sealfs.dir")), names(&[".", ".."]));
    // File types from readdir.
    for e in fs::read_dir(&fx.mnt).unwrap() {
        let e = e.unwrap();
        let n = e.file_name();
        let t = e.file_type().unwrap();
        let n = n.to_string_lossy();
        if n.starts_with("file-") || n.starts_with("bytes") {
            assert!(t.is_file(), "{n}");
        } else if n == "dangling" {
            assert!(t.is_symlink(), "{n}");
        } else {
            assert!(t.is_dir(), "{n}");
        }
    }
}

/// The inode number readdir(3) gives for `name` in `dir`.
fn listed_ino(dir: &Path, name: &[u8]) -> Option<u64> {
    let c = cpath(dir);
    let mut found = None;
    // SAFETY: as in raw_readdir.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null(), "opendir {}: errno {}", dir.display(), errno());
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            if CStr::from_ptr((*e).d_name.as_ptr()).to_bytes() == name {
                found = Some((*e).d_ino);
            }
        }
        libc::closedir(d);
    }
    found
}

/// Listings are kept per directory version: every change through the mount
/// (many within one clock tick) shows in the next listing, `..` follows a
/// move to another parent, and a change made in the cipher dir underneath
/// shows too.
#[test]
fn listing_follows_every_change() {
    let mut fx = Fixture::mounted();
    let d = fx.p("d");
    fs::create_dir(&d).unwrap();
    let mut want = names(&[".", ".."]);
    let add = |want: &mut BTreeSet<Vec<u8>>, n: &str| want.insert(n.as_bytes().to_vec());
    for i in 0..100 {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        fs::write(d.join(&a), b"x").unwrap();
        add(&mut want, &a);
        assert_eq!(raw_readdir(&d), want, "after create {i}");
        fs::rename(d.join(&a), d.join(&b)).unwrap();
        want.remove(a.as_bytes());
        add(&mut want, &b);
        assert_eq!(raw_readdir(&d), want, "after rename {i}");
        if i % 2 == 0 {
            fs::remove_file(d.join(&b)).unwrap();
            want.remove(b.as_bytes());
            assert_eq!(raw_readdir(&d), want, "after unlink {i}");
        }
    }
    fs::create_dir(d.join("sub")).unwrap();
    add(&mut want, "sub");
    std::os::unix::fs::symlink("b1", d.join("link")).unwrap();
    add(&mut want, "link");
    assert_eq!(raw_readdir(&d), want, "after mkdir and symlink");
    fs::rename(d.join("b1"), fx.p("moved-out")).unwrap();
    want.remove(&b"b1"[..]);
    assert_eq!(raw_readdir(&d), want, "after a move to another directory");
    fs::rename(fx.p("moved-out"), d.join("moved-in")).unwrap();
    add(&mut want, "moved-in");
    assert_eq!(raw_readdir(&d), want, "after a move into it");
    fs::remove_dir(d.join("sub")).unwrap();
    want.remove(&b"sub"[..]);
    assert_eq!(raw_readdir(&d), want, "after rmdir");

    // `..` of a directory moved to another parent.
    fs::create_dir_all(fx.p("p1/child")).unwrap();
    fs::create_dir(fx.p("p2")).unwrap();
    let p1 = fs::metadata(fx.p("p1")).unwrap().ino();
    assert_eq!(listed_ino(&fx.p("p1/child"), b".."), Some(p1));
    fs::rename(fx.p("p1/child"), fx.p("p2/child")).unwrap();
    let p2 = fs::metadata(fx.p("p2")).unwrap().ino();
    assert_eq!(listed_ino(&fx.p("p2/child"), b".."), Some(p2));

    // Changes made in the cipher dir underneath the mount show in the next
    // listing (the backing directory's times changed): a ciphertext moved
    // out of it, then back.
    let added = fx.new_backing_files(|fx| fs::write(fx.p("d/ext"), b"x").unwrap());
    assert_eq!(added.len(), 1, "one backing file per short name: {added:?}");
    let aside = fx.cipher.parent().unwrap().join("held-aside");
    // Past one clock tick each, for kernels without fine-grained timestamps.
    let tick = || std::thread::sleep(std::time::Duration::from_millis(20));
    tick();
    fs::rename(&added[0], &aside).unwrap();
    assert_eq!(raw_readdir(&d), want, "after a removal underneath");
    tick();
    fs::rename(&aside, &added[0]).unwrap();
    add(&mut want, "ext");
    assert_eq!(raw_readdir(&d), want, "after an addition underneath");
    assert_eq!(read_all(&d.join("ext")), b"x");
}

#[test]
fn symlinks_round_trip() {
    let mut fx = Fixture::mounted();
    fs::create_dir(fx.p("a")).unwrap();
    fs::create_dir(fx.p("b")).unwrap();
    fs::write(fx.p("target.txt"), b"pointed at").unwrap();
    let long_target = format!("/{}", "long/".repeat(300));
    let cases = [
        ("rel", "target.txt".to_string()),
        ("abs", "/etc/hostname".to_string()),
        ("a/up", "../target.txt".to_string()),
        ("a/long", long_target.clone()),
        ("a/weird", "sp ace/ünï\\x".to_string()),
    ];
    for (l, t) in &cases {
        std::os::unix::fs::symlink(t, fx.p(l)).unwrap();
        assert_eq!(
            fs::read_link(fx.p(l)).unwrap().as_os_str().as_bytes(),
            t.as_bytes(),
            "{l}"
        );
        let md = fs::symlink_metadata(fx.p(l)).unwrap();
        assert!(md.file_type().is_symlink());
        assert_eq!(
            md.len(),
            t.len() as u64,
            "symlink size = target length for {l}"
        );
    }
    assert_eq!(read_all(&fx.p("rel")), b"pointed at");
    assert_eq!(read_all(&fx.p("a/up")), b"pointed at");

    // Across directories by rename; checked from a cold cache (the check
    // right after the rename is its own test below).
    fs::rename(fx.p("a/up"), fx.p("b/up")).unwrap();
    fs::rename(fx.p("a/long"), fx.p("b/long")).unwrap();
    fs::rename(fx.p("rel"), fx.p("a/rel")).unwrap();
    fs::rename(fx.p("a/weird"), fx.p("a/weird2")).unwrap();
    fx.remount();
    assert_eq!(
        fs::read_link(fx.p("b/up")).unwrap(),
        Path::new("../target.txt")
    );
    assert_eq!(read_all(&fx.p("b/up")), b"pointed at");
    assert_eq!(
        fs::read_link(fx.p("b/long"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        long_target.as_bytes()
    );
    assert_eq!(
        fs::read_link(fx.p("a/rel")).unwrap(),
        Path::new("target.txt")
    );
    assert_eq!(
        fs::read_link(fx.p("a/weird2")).unwrap(),
        Path::new("sp ace/ünï\\x")
    );
    assert_eq!(
        fs::read_link(fx.p("abs")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert_errno(
        fs::symlink_metadata(fx.p("a/up")),
        libc::ENOENT,
        "old symlink name",
    );
    // A directory holding a symlink renamed: link still resolves.
    fs::rename(fx.p("b"), fx.p("a/b")).unwrap();
    assert_eq!(
        fs::read_link(fx.p("a/b/up")).unwrap(),
        Path::new("../target.txt")
    );
    fs::remove_file(fx.p("a/b/up")).unwrap();
    assert!(fs::symlink_metadata(fx.p("a/b/up")).is_err());
    fx.remount();
    assert_eq!(
        fs::read_link(fx.p("a/b/long"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        long_target.as_bytes()
    );
}

#[test]
fn symlink_readable_right_after_cross_directory_rename() {
    let mut fx = Fixture::mounted();
    fs::create_dir(fx.p("a")).unwrap();
    fs::create_dir(fx.p("b")).unwrap();
    fs::write(fx.p("t"), b"pointed at").unwrap();
    std::os::unix::fs::symlink("../t", fx.p("a/l")).unwrap();
    // Looked up (and so cached by the kernel) before the rename.
    assert_eq!(fs::read_link(fx.p("a/l")).unwrap(), Path::new("../t"));
    fs::rename(fx.p("a/l"), fx.p("b/l")).unwrap();
    // Same process, immediately: the kernel reuses its inode for b/l.
    let now = fs::read_link(fx.p("b/l"));
    let size = fs::symlink_metadata(fx.p("b/l")).map(|m| m.len());
    let via = fs::read(fx.p("b/l"));
    let ok = matches!(&now, Ok(p) if p == Path::new("../t"))
        && matches!(&size, Ok(4))
        && matches!(&via, Ok(d) if d == b"pointed at");
    assert!(
        ok,
        "right after renaming a symlink a/l -> b/l: readlink = {now:?}, lstat size = {size:?}, read through it = {:?}",
        via.as_ref().map(|d| String::from_utf8_lossy(d).into_owned())
    );
    fx.remount();
    assert_eq!(fs::read_link(fx.p("b/l")).unwrap(), Path::new("../t"));
}

#[test]
fn chmod_chown_utimens_visible_in_stat() {
    let mut fx = Fixture::mounted();
    let f = fx.p("f");
    fs::write(&f, b"data").unwrap();
    fs::create_dir(fx.p("d")).unwrap();
    File::open(&f).unwrap().sync_all().unwrap();

    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(fx.p("d"), fs::Permissions::from_mode(0o1770)).unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(fx.p("d"), Some(4321), None).unwrap();

    let times = [
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_234_567_890,
            tv_nsec: 987_654_321,
        },
    ];
    let c = cpath(&f);
    // SAFETY: valid C string and a two-element timespec array.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat: errno {}", errno());
    // UTIME_OMIT keeps one of the two.
    let dtimes = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
    ];
    let cd = cpath(&fx.p("d"));
    // SAFETY: as above.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, cd.as_ptr(), dtimes.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat dir: errno {}", errno());

    let check = |fx: &Fixture| {
        let m = fs::metadata(&f).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        assert_eq!(
            (m.atime(), m.atime_nsec()),
            (1_500_000_000, 123_456_789),
            "atime"
        );
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            (1_234_567_890, 987_654_321),
            "mtime"
        );
        assert_eq!(m.len(), 4);
        let d = fs::metadata(fx.p("d")).unwrap();
        assert_eq!(d.mode() & 0o7777, 0o1770);
        assert_eq!(d.uid(), 4321);
        assert_eq!((d.mtime(), d.mtime_nsec()), (1_000_000_000, 5), "dir mtime");
    };
    check(&fx);
    fx.remount();
    check(&fx);
    // Writing updates mtime (to about now).
    {
        let mut h = OpenOptions::new().append(true).open(&f).unwrap();
        h.write_all(b"more").unwrap();
        h.sync_all().unwrap();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let m = fs::metadata(&f).unwrap();
    assert!(
        (m.mtime() - now).abs() < 60,
        "mtime after write: {} vs now {now}",
        m.mtime()
    );
    assert_eq!(m.len(), 8);
}

#[test]
fn statfs_works() {
    let fx = Fixture::mounted();
    let c = cpath(&fx.mnt);
    // SAFETY: zeroed POD out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(r, 0, "statvfs: errno {}", errno());
    assert_eq!(s.f_namemax, 255);
    assert!(
        s.f_bsize > 0 && s.f_blocks > 0,
        "bsize {} blocks {}",
        s.f_bsize,
        s.f_blocks
    );
    assert!(s.f_bavail <= s.f_blocks);
    // And through an fd inside the mount.
    fs::write(fx.p("x"), b"x").unwrap();
    let f = File::open(fx.p("x")).unwrap();
    // SAFETY: zeroed POD out-parameter.
    let mut s2: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    assert_eq!(
        unsafe { libc::fstatfs(f.as_raw_fd(), &mut s2) },
        0,
        "fstatfs: errno {}",
        errno()
    );
    assert_eq!(s2.f_namelen, 255);
}

#[test]
fn fsync_and_fdatasync_succeed() {
    let mut fx = Fixture::mounted();
    let mut f = File::create(fx.p("s")).unwrap();
    f.write_all(&Rng::new(9).bytes(100_000)).unwrap();
    f.sync_all().unwrap();
    // SAFETY: valid fd.
    assert_eq!(
        unsafe { libc::fdatasync(f.as_raw_fd()) },
        0,
        "fdatasync: errno {}",
        errno()
    );
    // SAFETY: valid fd.
    assert_eq!(
        unsafe { libc::fsync(f.as_raw_fd()) },
        0,
        "fsync: errno {}",
        errno()
    );
    f.sync_data().unwrap();
    drop(f);
    // fsync of a read-only handle and of a directory.
    File::open(fx.p("s")).unwrap().sync_all().unwrap();
    File::open(&fx.mnt).unwrap().sync_all().unwrap();
    fx.remount();
    assert_same(
        &read_all(&fx.p("s")),
        &Rng::new(9).bytes(100_000),
        "synced file",
    );
}

#[test]
fn shared_writable_mmap() {
    let mut fx = Fixture::mounted();
    let path = fx.p("mm");
    let len = 3 * CHUNK as usize + 100;
    let mut want = Rng::new(11).bytes(len);
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(len as u64).unwrap();
        // SAFETY: mapping a file we own; the slice is used only while mapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap: errno {}", errno());
            let s = std::slice::from_raw_parts_mut(p as *mut u8, len);
            assert!(s.iter().all(|&b| b == 0), "fresh mapping not zero");
            s.copy_from_slice(&want);
            assert_eq!(
                libc::msync(p, len, libc::MS_SYNC),
                0,
                "msync: errno {}",
                errno()
            );
            // Change a byte in chunk 2 after the msync; munmap+close must still write it back.
            s[2 * CHUNK as usize + 5] ^= 0xFF;
            want[2 * CHUNK as usize + 5] ^= 0xFF;
            assert_eq!(libc::munmap(p, len), 0);
        }
        // Read back through read() on the same file.
        let mut got = vec![0u8; len];
        f.read_exact_at(&mut got, 0).unwrap();
        assert_same(&got, &want, "read() after mmap write");
        f.sync_all().unwrap();
    }
    assert_same(&read_all(&path), &want, "fresh open after mmap write");
    fx.remount();
    assert_same(&read_all(&path), &want, "after remount");
}

#[test]
fn stat_size_is_exact() {
    let mut fx = Fixture::mounted();
    let sizes: Vec<u64> = vec![
        0,
        1,
        2,
        100,
        4095,
        4096,
        4097,
        8191,
        8192,
        8193,
        12288,
        65543,
        GROUP - 1,
        GROUP,
        GROUP + 1,
        GROUP + CHUNK,
        2 * GROUP,
        2 * GROUP + 1,
        1_500_000,
    ];
    for &s in &sizes {
        let data = Rng::new(s + 1).bytes(s as usize);
        fs::write(fx.p(&format!("size-{s}")), &data).unwrap();
        assert_eq!(fs::metadata(fx.p(&format!("size-{s}"))).unwrap().len(), s);
    }
    fx.remount();
    for &s in &sizes {
        let p = fx.p(&format!("size-{s}"));
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.len(), s, "stat size after remount");
        // st_blocks is sane for du: at least the data, not absurdly more.
        assert!(m.blocks() * 512 >= s.min(m.blocks() * 512), "blocks");
        assert!(
            m.blocks() * 512 <= s + 2 * CHUNK + s / 64 + 8192,
            "st_blocks {} too large for size {s}",
            m.blocks()
        );
        assert_same(
            &read_all(&p),
            &Rng::new(s + 1).bytes(s as usize),
            &format!("size {s}"),
        );
    }
}

#[test]
fn names_of_255_bytes_work_and_256_fail() {
    let mut fx = Fixture::mounted();
    let n255 = "a".repeat(250) + "12345";
    let m255 = "é".repeat(127) + "b"; // 255 bytes of UTF-8
    assert_eq!(n255.len(), 255);
    assert_eq!(m255.len(), 255);
    let n256 = "c".repeat(256);

    fs::write(fx.p(&n255), b"long name content").unwrap();
    assert_eq!(raw_readdir(&fx.mnt), names(&[".", "..", &n255]));
    assert_eq!(read_all(&fx.p(&n255)), b"long name content");
    fs::create_dir(fx.p(&m255)).unwrap();
    fs::write(fx.p(&format!("{m255}/{n255}")), b"nested").unwrap();
    fx.remount();
    assert_eq!(raw_readdir(&fx.mnt), names(&[".", "..", &n255, &m255]));
    assert_eq!(read_all(&fx.p(&n255)), b"long name content");
    assert_eq!(read_all(&fx.p(&format!("{m255}/{n255}"))), b"nested");

    // Rename long → long, long → short, short → long.
    let o255 = "o".repeat(255);
    fs::rename(fx.p(&n255), fx.p(&o255)).unwrap();
    assert_eq!(read_all(&fx.p(&o255)), b"long name content");
    assert_errno(fs::metadata(fx.p(&n255)), libc::ENOENT, "old long name");
    fs::rename(fx.p(&o255), fx.p("short")).unwrap();
    fs::rename(fx.p("short"), fx.p(&format!("{m255}/{o255}"))).unwrap();
    assert_eq!(raw_readdir(&fx.mnt), names(&[".", "..", &m255]));
    assert_eq!(raw_readdir(&fx.p(&m255)), names(&[".", "..", &n255, &o255]));
    fx.remount();
    assert_eq!(
        read_all(&fx.p(&format!("{m255}/{o255}"))),
        b"long name content"
    );
    // Unlink and rmdir with long names leave no leftovers.
    fs::remove_file(fx.p(&format!("{m255}/{o255}"))).unwrap();
    fs::remove_file(fx.p(&format!("{m255}/{n255}"))).unwrap();
    fs::remove_dir(fx.p(&m255)).unwrap();
    assert_eq!(raw_readdir(&fx.mnt), names(&[".", ".."]));
    let leftovers: Vec<_> = fx
        .cipher_listing()
        .into_iter()
        .filter(|p| {
            !p.to_string_lossy().starts_with("sealfs.toml")
                && !p.to_string_lossy().starts_with("sealfs.lock")
                && !p.to_string_lossy().starts_with("sealfs.keyring")
                && !p.to_string_lossy().starts_with("sealfs.dir")
                && !p.to_string_lossy().starts_with("sealfs.audit")
                && p.to_string_lossy() != "sealfs.root"
        })
        .collect();
    assert!(leftovers.is_empty(), "cipherdir still holds {leftovers:?}");

    // A directory and a symlink with long names, moved across directories.
    let d255 = "d".repeat(255);
    let e255 = "e".repeat(255);
    fs::create_dir_all(fx.p(&format!("{d255}/inner"))).unwrap();
    fs::write(fx.p(&format!("{d255}/inner/{n255}")), b"deep").unwrap();
    std::os::unix::fs::symlink(&n255, fx.p(&format!("{d255}/{e255}"))).unwrap();
    fs::create_dir(fx.p("dest")).unwrap();
    fs::rename(fx.p(&d255), fx.p(&format!("dest/{e255}"))).unwrap();
    fs::rename(
        fx.p(&format!("dest/{e255}/{e255}")),
        fx.p(&format!("dest/{d255}")),
    )
    .unwrap();
    fx.remount();
    assert_eq!(
        read_all(&fx.p(&format!("dest/{e255}/inner/{n255}"))),
        b"deep"
    );
    assert_eq!(
        fs::read_link(fx.p(&format!("dest/{d255}")))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        n255.as_bytes()
    );
    assert_eq!(
        raw_readdir(&fx.p("dest")),
        names(&[".", "..", &d255, &e255])
    );
    assert_eq!(
        raw_readdir(&fx.p(&format!("dest/{e255}"))),
        names(&[".", "..", "inner"])
    );
    fs::remove_file(fx.p(&format!("dest/{d255}"))).unwrap();
    fs::remove_file(fx.p(&format!("dest/{e255}/inner/{n255}"))).unwrap();
    fs::remove_dir(fx.p(&format!("dest/{e255}/inner"))).unwrap();
    fs::remove_dir(fx.p(&format!("dest/{e255}"))).unwrap();
    fs::remove_dir(fx.p("dest")).unwrap();
    let leftovers: Vec<_> = fx
        .cipher_listing()
        .into_iter()
        .filter(|p| {
            !p.to_string_lossy().starts_with("sealfs.toml")
                && !p.to_string_lossy().starts_with("sealfs.lock")
                && !p.to_string_lossy().starts_with("sealfs.keyring")
                && !p.to_string_lossy().starts_with("sealfs.dir")
                && !p.to_string_lossy().starts_with("sealfs.audit")
                && p.to_string_lossy() != "sealfs.root"
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "cipherdir still holds {leftovers:?} after removing long-named entries"
    );

    // 256 bytes: ENAMETOOLONG everywhere.
    assert_errno(File::create(fx.p(&n256)), libc::ENAMETOOLONG, "create 256");
    assert_errno(fs::create_dir(fx.p(&n256)), libc::ENAMETOOLONG, "mkdir 256");
    assert_errno(
        std::os::unix::fs::symlink("x", fx.p(&n256)),
        libc::ENAMETOOLONG,
        "symlink 256",
    );
    fs::write(fx.p("s"), b"s").unwrap();
    assert_errno(
        fs::rename(fx.p("s"), fx.p(&n256)),
        libc::ENAMETOOLONG,
        "rename to 256",
    );
    assert_errno(fs::metadata(fx.p(&n256)), libc::ENAMETOOLONG, "stat 256");
}

/// A volume made before hard links and extended attributes (its
/// sealfs.toml without the `hard-links` and `xattrs` features, as every
/// format-1 volume before them) keeps refusing both, as it always did.
fn mounted_without_link_and_xattr_features() -> Fixture {
    let mut fx = Fixture::new();
    let cfg = fx.cipher.join("sealfs.toml");
    let text = fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("\"hard-links\"") && text.contains("\"xattrs\""));
    let old: String = text
        .lines()
        .filter(|l| !l.contains("\"hard-links\"") && !l.contains("\"xattrs\""))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&cfg, old).unwrap();
    fx.mount();
    fx
}

#[test]
fn hard_links_are_refused_with_eperm_without_the_feature() {
    let fx = mounted_without_link_and_xattr_features();
    fs::write(fx.p("a"), b"a").unwrap();
    assert_errno(fs::hard_link(fx.p("a"), fx.p("b")), libc::EPERM, "link");
    assert!(!fx.p("b").exists());
    assert_eq!(fs::metadata(fx.p("a")).unwrap().nlink(), 1);
}

#[test]
fn xattrs_are_not_supported_without_the_feature() {
    let fx = mounted_without_link_and_xattr_features();
    fs::write(fx.p("a"), b"a").unwrap();
    let c = cpath(&fx.p("a"));
    let name = c"user.test";
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(r, -1);
    assert_eq!(errno(), libc::EOPNOTSUPP, "setxattr errno");
    let mut buf = [0u8; 16];
    // SAFETY: as above.
    let r = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(r, -1);
    let e = errno();
    assert!(
        e == libc::EOPNOTSUPP || e == libc::ENODATA,
        "getxattr errno {e}"
    );
    // The file is unaffected.
    assert_eq!(read_all(&fx.p("a")), b"a");
}

#[test]
fn read_only_mount_refuses_changes_but_reads() {
    let mut fx = Fixture::mounted();
    fs::write(fx.p("a"), b"readable").unwrap();
    fs::create_dir(fx.p("d")).unwrap();
    fs::write(fx.p("d/b"), Rng::new(5).bytes(10_000)).unwrap();
    std::os::unix::fs::symlink("a", fx.p("l")).unwrap();
    fx.unmount();
    let before = fx.cipher_digest();
    fx.mount_with(&["--read-only"]);

    assert_eq!(read_all(&fx.p("a")), b"readable");
    assert_same(&read_all(&fx.p("d/b")), &Rng::new(5).bytes(10_000), "d/b");
    assert_eq!(fs::read_link(fx.p("l")).unwrap(), Path::new("a"));
    assert_eq!(raw_readdir(&fx.mnt), names(&[".", "..", "a", "d", "l"]));

    assert_errno(File::create(fx.p("new")), libc::EROFS, "create");
    assert_errno(
        OpenOptions::new().write(true).open(fx.p("a")),
        libc::EROFS,
        "open for write",
    );
    assert_errno(
        OpenOptions::new().append(true).open(fx.p("a")),
        libc::EROFS,
        "open for append",
    );
    assert_errno(fs::create_dir(fx.p("nd")), libc::EROFS, "mkdir");
    assert_errno(fs::remove_file(fx.p("a")), libc::EROFS, "unlink");
    assert_errno(fs::remove_dir(fx.p("d")), libc::EROFS, "rmdir");
    assert_errno(fs::rename(fx.p("a"), fx.p("z")), libc::EROFS, "rename");
    assert_errno(
        std::os::unix::fs::symlink("x", fx.p("s")),
        libc::EROFS,
        "symlink",
    );
    assert_errno(
        fs::set_permissions(fx.p("a"), fs::Permissions::from_mode(0o600)),
        libc::EROFS,
        "chmod",
    );
    let c = cpath(&fx.p("a"));
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 0) }, -1);
    assert_eq!(errno(), libc::EROFS, "truncate");
    // Reading changed nothing in the cipherdir (atime aside, contents and names).
    fx.unmount();
    let after = fx.cipher_digest();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (k, v) in &before {
        assert!(
            after[k] == *v,
            "{} changed during a read-only mount",
            k.display()
        );
    }
}

// ---------------------------------------------------------------- concurrency

#[test]
fn concurrent_clients_do_not_corrupt_each_other() {
    let mut fx = Fixture::mounted();
    let mnt = fx.mnt.clone();
    // Two writers on disjoint regions of one shared file, through their own fds.
    let shared = mnt.join("shared.bin");
    File::create(&shared).unwrap().set_len(4 * GROUP).unwrap();
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let mnt = mnt.clone();
        let shared = shared.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng::new(1000 + t);
            let dir = mnt.join(format!("t{t}"));
            fs::create_dir(&dir).unwrap();
            let mut kept = Vec::new();
            let f = OpenOptions::new().write(true).open(&shared).unwrap();
            for i in 0..40u64 {
                let n = rng.below(300_000) as usize;
                let data = rng.bytes(n);
                let tmp = dir.join(format!("tmp{i}"));
                fs::write(&tmp, &data).unwrap();
                assert!(
                    fs::read(&tmp).unwrap() == data,
                    "thread {t} file {i} reads back wrong"
                );
                let fin = dir.join(format!("file{i}"));
                fs::rename(&tmp, &fin).unwrap();
                if i % 3 == 0 {
                    fs::remove_file(&fin).unwrap();
                } else {
                    kept.push((fin, data));
                }
                // Our quarter of the shared file, chunk-unaligned pieces.
                let off = t * GROUP + rng.below(GROUP - 10_000);
                let piece = vec![t as u8 + 1; 1 + rng.below(9_000) as usize];
                f.write_all_at(&piece, off).unwrap();
                let _ = fs::read_dir(&mnt).unwrap().count();
            }
            kept
        }));
    }
    let kept: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let check = |what: &str| {
        for (p, d) in &kept {
            assert!(
                fs::read(p).unwrap() == *d,
                "{what}: {} differs",
                p.display()
            );
        }
        let s = read_all(&shared);
        assert_eq!(s.len() as u64, 4 * GROUP);
        for (i, b) in s.iter().enumerate() {
            let quarter = i as u64 / GROUP;
            assert!(
                *b == 0 || *b == quarter as u8 + 1,
                "{what}: shared byte {i} = {b} written by the wrong thread"
            );
        }
    };
    check("live");
    fx.remount();
    check("after remount");
    for t in 0..4 {
        let n = raw_readdir(&fx.p(&format!("t{t}"))).len();
        assert_eq!(n, 2 + 26, "t{t} holds {n} entries");
    }
}

/// New entries get exactly the mode the caller asked for less the caller's
/// umask, not less the daemon's umask too (pjdfstest
/// rename::write_access_required_subdir found a 0777 mkdir landing as 0755).
#[test]
fn new_entries_ignore_the_daemons_umask() {
    let fx = Fixture::mounted();
    // umask is process-wide: set it in a child shell, not in this test binary.
    run_ok(
        std::process::Command::new("sh")
            .arg("-c")
            .arg("umask 0 && mkdir d && : > f && mkfifo p")
            .current_dir(&fx.mnt),
    );
    for (name, want) in [("d", 0o777), ("f", 0o666), ("p", 0o666)] {
        let mode = fs::symlink_metadata(fx.p(name)).unwrap().mode() & 0o7777;
        assert_eq!(mode, want, "{name}: mode {mode:o}, want {want:o}");
    }
    // The same after the kernel's caches are gone.
    let mut fx = fx;
    fx.remount();
    for (name, want) in [("d", 0o777), ("f", 0o666), ("p", 0o666)] {
        let mode = fs::symlink_metadata(fx.p(name)).unwrap().mode() & 0o7777;
        assert_eq!(mode, want, "{name} after remount: mode {mode:o}");
    }
    // A set-group-ID directory passes its group and the bit to a new subdirectory.
    fs::set_permissions(fx.p("d"), fs::Permissions::from_mode(0o2777)).unwrap();
    std::os::unix::fs::chown(fx.p("d"), None, Some(65534)).unwrap();
    fs::set_permissions(fx.p("d"), fs::Permissions::from_mode(0o2777)).unwrap();
    fs::create_dir(fx.p("d/sub")).unwrap();
    let md = fs::metadata(fx.p("d/sub")).unwrap();
    assert_eq!(md.gid(), 65534, "new subdirectory of a setgid directory");
    assert_ne!(md.mode() & libc::S_ISGID, 0, "setgid bit inherited");
}
