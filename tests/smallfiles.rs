//! The small-file paths with fewer system calls per request (issue 19):
//! a CREATE whose one `fstatat` both fixes the mode and answers the
//! kernel, an UNLINK whose attributes and link count come from the pin's
//! `fstat`. Each test tries to break what the cut could break, on a live
//! mount, and again after a remount (the kernel's caches gone).

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;

/// Unmounts, checks the volume with `sealfs fsck` (nothing found), mounts
/// again.
fn fsck_clean(fx: &mut Fixture, what: &str) {
    fx.unmount();
    fx.assert_fsck_clean(what);
    fx.mount();
}

/// Creates `path` with `open(O_CREAT | O_EXCL, mode)` under umask 0, in a
/// child (the umask is process-wide), and writes `data` through the same
/// descriptor.
fn create_with_mode(path: &std::path::Path, mode: u32, data: &str) {
    let script = format!(
        "import os\nos.umask(0)\nfd = os.open({:?}, os.O_CREAT | os.O_EXCL | os.O_WRONLY, {mode:#o})\n\
         os.write(fd, {data:?}.encode())\nos.close(fd)\n",
        path.to_str().unwrap()
    );
    run_ok(Command::new("python3").arg("-c").arg(script));
}

/// The attributes the CREATE reply gave the kernel (a stat right after
/// the create is served from them) hold the mode asked for, set-ID bits
/// included, now that the mode is fixed after the header is written and
/// its one `fstatat` is the reply's; the same after a remount.
#[test]
fn a_created_file_shows_the_mode_it_asked_for_at_once_and_after_a_remount() {
    let mut fx = Fixture::mounted();
    let cases = [
        ("plain", 0o644),
        ("wide", 0o666),
        ("private", 0o600),
        ("setid", 0o6755),
        ("sticky", 0o1700),
        ("none", 0o000),
    ];
    for (name, mode) in cases {
        let p = fx.p(name);
        create_with_mode(&p, mode, "x");
        let md = fs::symlink_metadata(&p).unwrap();
        assert_eq!(md.mode() & 0o7777, mode, "{name}: {:o}", md.mode());
        assert_eq!(md.len(), 1, "{name}: size");
        assert_eq!(md.nlink(), 1, "{name}: links");
    }
    // An empty new file: plaintext size 0 from the reply's backing size.
    let empty = fx.p("empty");
    create_with_mode(&empty, 0o640, "");
    assert_eq!(fs::metadata(&empty).unwrap().len(), 0);
    assert_eq!(fs::metadata(&empty).unwrap().mode() & 0o7777, 0o640);
    fx.remount();
    for (name, mode) in cases {
        let md = fs::symlink_metadata(fx.p(name)).unwrap();
        assert_eq!(md.mode() & 0o7777, mode, "{name} after remount");
        assert_eq!(fs::read(fx.p(name)).unwrap(), b"x", "{name} content");
    }
    assert_eq!(fs::metadata(&empty).unwrap().len(), 0);
    fsck_clean(&mut fx, "after the creates");
}

/// An exclusive create of an existing name still fails with EEXIST and
/// leaves the existing file alone; a non-exclusive one opens it.
#[test]
fn creating_an_existing_name_keeps_the_file() {
    let fx = Fixture::mounted();
    let p = fx.p("f");
    fs::write(&p, b"first").unwrap();
    let e = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    assert_eq!(fs::read(&p).unwrap(), b"first");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "first");
}

/// Unlinking one name of a hard-linked file: the link count that decides
/// whether the link table is updated now comes from the pin's `fstat`.
/// The other name keeps the content, the count drops to one, and fsck
/// finds no stale tag, live and after a remount; removing the last name
/// frees the file.
#[test]
fn unlinking_one_name_of_a_linked_file_keeps_the_other_and_the_link_table_right() {
    let mut fx = Fixture::mounted();
    fs::create_dir(fx.p("d")).unwrap();
    fs::write(fx.p("a"), b"linked content").unwrap();
    fs::hard_link(fx.p("a"), fx.p("d/b")).unwrap();
    fs::hard_link(fx.p("a"), fx.p("c")).unwrap();
    assert_eq!(fs::metadata(fx.p("a")).unwrap().nlink(), 3);
    fs::remove_file(fx.p("a")).unwrap();
    assert_eq!(fs::metadata(fx.p("d/b")).unwrap().nlink(), 2);
    assert_eq!(fs::read(fx.p("c")).unwrap(), b"linked content");
    fx.remount();
    assert!(!fx.p("a").exists());
    assert_eq!(fs::metadata(fx.p("c")).unwrap().nlink(), 2);
    assert_eq!(fs::read(fx.p("d/b")).unwrap(), b"linked content");
    fsck_clean(&mut fx, "after one name of three went");
    fs::remove_file(fx.p("c")).unwrap();
    assert_eq!(fs::metadata(fx.p("d/b")).unwrap().nlink(), 1);
    fx.remount();
    assert_eq!(fs::read(fx.p("d/b")).unwrap(), b"linked content");
    fsck_clean(&mut fx, "after two names of three went");
    fs::remove_file(fx.p("d/b")).unwrap();
    fs::remove_dir(fx.p("d")).unwrap();
    fx.remount();
    assert_eq!(fs::read_dir(&fx.mnt).unwrap().count(), 0);
    fsck_clean(&mut fx, "after every name went");
}

/// unlink(2) of a directory is refused (EISDIR, from the pin's `fstat`)
/// and leaves the directory and its content in place.
#[test]
fn unlink_of_a_directory_is_refused_and_keeps_it() {
    let fx = Fixture::mounted();
    fs::create_dir(fx.p("d")).unwrap();
    fs::write(fx.p("d/f"), b"kept").unwrap();
    let c = std::ffi::CString::new(fx.p("d").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    let r = unsafe { libc::unlink(c.as_ptr()) };
    let e = std::io::Error::last_os_error();
    assert_eq!(r, -1);
    assert_eq!(e.raw_os_error(), Some(libc::EISDIR), "{e}");
    assert_eq!(fs::read(fx.p("d/f")).unwrap(), b"kept");
}

/// A file unlinked while open keeps working through its descriptor: its
/// size, content and times still change (the kernel's SETATTR of an
/// unlinked inode), and the name is gone.
#[test]
fn an_open_unlinked_file_still_changes_size_content_and_times() {
    let fx = Fixture::mounted();
    let p = fx.p("f");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    f.write_all(&[7u8; 5000]).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    f.write_all(b"tail").unwrap();
    assert_eq!(f.metadata().unwrap().len(), 5004);
    f.set_len(100).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 100);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(md.mtime(), 1_000_000_000);
    assert_eq!(md.atime(), 1_000_000_000);
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o600);
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back, vec![7u8; 100]);
}

/// A private mount lets the kernel keep entries and attributes for ten
/// seconds (not one): every change the daemon makes still shows at once,
/// since each goes through the kernel or drops its caches. Names renamed,
/// removed and re-created, modes, sizes set through another descriptor,
/// link counts, and a disabled key (the cached pages go too).
#[test]
fn a_private_mount_shows_every_change_at_once() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::create_dir_all(fx.p("a/b")).unwrap();
    fs::write(fx.p("a/b/f"), b"one").unwrap();
    // Listed and looked up: now in the kernel's caches.
    assert_eq!(fs::read_dir(fx.p("a/b")).unwrap().count(), 1);
    let ino = fs::metadata(fx.p("a/b/f")).unwrap().ino();

    fs::rename(fx.p("a/b/f"), fx.p("a/g")).unwrap();
    assert!(!fx.p("a/b/f").exists(), "old name gone at once");
    assert_eq!(fs::metadata(fx.p("a/g")).unwrap().ino(), ino);
    fs::rename(fx.p("a/b"), fx.p("c")).unwrap();
    assert!(!fx.p("a/b").exists());
    assert!(fx.p("c").is_dir());

    fs::remove_file(fx.p("a/g")).unwrap();
    assert!(!fx.p("a/g").exists());
    fs::write(fx.p("a/g"), b"second file").unwrap();
    assert_eq!(fs::read(fx.p("a/g")).unwrap(), b"second file");
    assert_eq!(fs::metadata(fx.p("a/g")).unwrap().len(), 11);

    fs::set_permissions(fx.p("a/g"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(fx.p("a/g")).unwrap().mode() & 0o7777, 0o600);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(fx.p("a/g"))
        .unwrap();
    f.set_len(3).unwrap();
    drop(f);
    assert_eq!(fs::metadata(fx.p("a/g")).unwrap().len(), 3);
    assert_eq!(fs::read(fx.p("a/g")).unwrap(), b"sec");

    fs::hard_link(fx.p("a/g"), fx.p("c/h")).unwrap();
    assert_eq!(fs::metadata(fx.p("a/g")).unwrap().nlink(), 2);
    fs::remove_file(fx.p("c/h")).unwrap();
    assert_eq!(fs::metadata(fx.p("a/g")).unwrap().nlink(), 1);
    fs::remove_dir(fx.p("c")).unwrap();
    assert!(!fx.p("c").exists());

    // A disabled key: the content cached a moment ago is refused at once.
    assert_eq!(fs::read(fx.p("a/g")).unwrap(), b"sec");
    fx.ctl_ok(&["disable"]);
    assert!(fs::read(fx.p("a/g")).is_err(), "read after disable");
    fx.ctl_ok(&["enable"]);
    assert_eq!(fs::read(fx.p("a/g")).unwrap(), b"sec");
}
