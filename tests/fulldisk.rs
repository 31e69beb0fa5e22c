//! A full backing filesystem: CIPHERDIR on an 8 MiB tmpfs (unmounted by a
//! guard, even when the test fails). Filling it through the mount fails with
//! ENOSPC at write() (below the free-space margin files are opened
//! write-through, see README "Full disk"), then at fsync (the file is
//! poisoned); what was stored before stays byte-exact,
//! also after a remount; mkdir/create/rename on the full disk fail cleanly
//! and leave both copies of every directory record valid; after freeing space
//! everything works again.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const ENOSPC: i32 = libc::ENOSPC;

/// Relative path → content (None for a directory, Some(target) for a
/// symlink is kept apart).
#[derive(Default, Clone, Debug, PartialEq)]
struct Tree {
    files: BTreeMap<String, Vec<u8>>,
    dirs: Vec<String>,
    links: BTreeMap<String, String>,
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Writes a file durably through the mount.
fn write_durably(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(p)?;
    f.write_all(data)?;
    f.sync_all()?;
    close_checked(f)
}

/// close(2) with its result (std's drop ignores it).
fn close_checked(f: File) -> io::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: we own fd (taken from the File).
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every entry under `root` through the mount, as a Tree.
fn read_tree(root: &Path) -> Tree {
    let mut t = Tree::default();
    walk(root, &mut |p, md| {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if md.is_dir() {
            t.dirs.push(rel);
        } else if md.file_type().is_symlink() {
            t.links.insert(
                rel,
                fs::read_link(p).unwrap().to_string_lossy().into_owned(),
            );
        } else {
            let data = fs::read(p).unwrap_or_else(|e| panic!("read {rel}: {e}"));
            t.files.insert(rel, data);
        }
    });
    t.dirs.sort();
    t
}

#[track_caller]
fn assert_tree(got: &Tree, want: &Tree, what: &str) {
    assert_eq!(got.dirs, want.dirs, "{what}: directories");
    assert_eq!(got.links, want.links, "{what}: symlinks");
    let gk: Vec<_> = got.files.keys().collect();
    let wk: Vec<_> = want.files.keys().collect();
    assert_eq!(gk, wk, "{what}: file names");
    for (k, v) in &want.files {
        let g = &got.files[k];
        assert!(
            g == v,
            "{what}: {k}: {} bytes, want {} bytes (first difference at {:?})",
            g.len(),
            v.len(),
            g.iter().zip(v).position(|(a, b)| a != b)
        );
    }
}

/// Every backing directory under the cipherdir.
fn backing_dirs(cipher: &Path) -> Vec<PathBuf> {
    let mut out = vec![cipher.to_path_buf()];
    walk(cipher, &mut |p, md| {
        // Every backing directory but the audit log's folder.
        if md.is_dir() && p != cipher.join("sealfs.audit") {
            out.push(p.to_path_buf());
        }
    });
    out
}

struct Vol {
    cipher: PathBuf,
    mnt: PathBuf,
    passfile: PathBuf,
    logs: PathBuf,
    n: u32,
}

impl Vol {
    fn mount(&mut self, extra: &[&str]) -> Mounted {
        self.n += 1;
        let log = self.logs.join(format!("daemon.{}.log", self.n));
        Mounted::start(&self.cipher, &self.mnt, &self.passfile, extra, &log)
    }

    /// Mounts read-only with only one copy of every directory record
    /// present (`keep` = "sealfs.dir" or "sealfs.dir.bak") and returns the tree.
    fn tree_with_only(&mut self, keep: &str) -> Tree {
        let other = if keep == "sealfs.dir" {
            "sealfs.dir.bak"
        } else {
            "sealfs.dir"
        };
        let hidden = "sealfs.hidden-by-test";
        let dirs = backing_dirs(&self.cipher);
        for d in &dirs {
            assert!(d.join(keep).is_file(), "{} has no {keep}", d.display());
            fs::rename(d.join(other), d.join(hidden))
                .unwrap_or_else(|e| panic!("{} has no {other}: {e}", d.display()));
        }
        let m = self.mount(&["--read-only"]);
        let t = read_tree(&self.mnt);
        m.unmount();
        for d in &dirs {
            fs::rename(d.join(hidden), d.join(other)).unwrap();
        }
        t
    }
}

/// Fills the backing filesystem completely from outside the mount (an
/// ignored dotted name), so that not a single page is left.
fn fill_backing(cipher: &Path, fillers: &mut Vec<PathBuf>) {
    let p = cipher.join(format!("filler{}.test", fillers.len()));
    let mut f = File::create(&p).unwrap();
    fillers.push(p);
    let page = vec![0x5au8; 4096];
    loop {
        match f.write(&page) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if errno_of(&e) == ENOSPC => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    let _ = f.write(&[0u8; 1]);
}

/// A new volume whose CIPHERDIR is a tmpfs of `size`; None (a SKIP) when
/// not root. Fields drop in order: the tmpfs goes after every mount the
/// test made (they are its locals) and before the temporary directory.
struct SmallDisk {
    vol: Vol,
    _tmpfs: Tmpfs,
    _root: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: mounting a tmpfs needs root");
            return None;
        }
        let root = tempfile::Builder::new()
            .prefix("sealfs-fulldisk.")
            .tempdir()
            .unwrap();
        let base = root.path().canonicalize().unwrap();
        let cipher = base.join("cipher");
        let mnt = base.join("mnt");
        let passfile = base.join("passfile");
        fs::create_dir(&cipher).unwrap();
        fs::create_dir(&mnt).unwrap();
        fs::write(&passfile, format!("{PASSPHRASE}\n")).unwrap();
        let tmpfs = Tmpfs::mount(&cipher, size);
        init_volume(&cipher, &passfile);
        Some(SmallDisk {
            vol: Vol {
                cipher,
                mnt,
                passfile,
                logs: base,
                n: 0,
            },
            _tmpfs: tmpfs,
            _root: root,
        })
    }
}

#[test]
fn full_backing_disk_fails_cleanly_and_recovers() {
    let Some(mut disk) = SmallDisk::new("8m") else {
        return;
    };
    let vol = &mut disk.vol;
    let (cipher, mnt) = (vol.cipher.clone(), vol.mnt.clone());

    // 1. Files stored before the disk fills.
    let mut want = Tree::default();
    let m = vol.mount(&[]);
    let mut rng = Rng::new(6);
    fs::create_dir_all(mnt.join("keep/sub/deep")).unwrap();
    want.dirs = vec!["keep".into(), "keep/sub".into(), "keep/sub/deep".into()];
    let long = "L".repeat(200); // a long name: a sidecar file
    for (i, size) in [0usize, 1, 4095, 4096, 4097, 300_000, (1 << 20) + 3]
        .into_iter()
        .enumerate()
    {
        let rel = match i % 3 {
            0 => format!("keep/f{i}"),
            1 => format!("keep/sub/f{i}"),
            _ => format!("keep/sub/deep/f{i}"),
        };
        let data = rng.bytes(size);
        write_durably(&mnt.join(&rel), &data).unwrap();
        want.files.insert(rel, data);
    }
    let data = rng.bytes(5000);
    write_durably(&mnt.join("keep").join(&long), &data).unwrap();
    want.files.insert(format!("keep/{long}"), data);
    fs::create_dir(mnt.join("keep/empty")).unwrap();
    want.dirs.push("keep/empty".into());
    want.dirs.sort();
    symlink("sub/f1", mnt.join("keep/link")).unwrap();
    want.links.insert("keep/link".into(), "sub/f1".into());

    // 2. Fill the disk through the mount: the error is ENOSPC, from write(),
    // fsync() or close().
    let pattern = rng.bytes(256 << 10);
    let mut f = File::create(mnt.join("big")).unwrap();
    let mut errors = Vec::new();
    let mut written = 0usize;
    while written < (16 << 20) {
        match f.write(&pattern) {
            Ok(n) => written += n,
            Err(e) => {
                errors.push(("write", e));
                break;
            }
        }
    }
    if let Err(e) = f.sync_all() {
        errors.push(("fsync", e));
    }
    if let Err(e) = close_checked(f) {
        errors.push(("close", e));
    }
    assert!(
        !errors.is_empty(),
        "filling an 8 MiB backing filesystem with 16 MiB reported no error"
    );
    eprintln!("filling: wrote {written} bytes; errors {errors:?}");
    for (what, e) in &errors {
        assert_eq!(errno_of(e), ENOSPC, "{what} failed with {e}, want ENOSPC");
    }
    // An 8 MiB disk is below the default margin (at least 64 MiB): the file
    // was opened write-through, so write() itself saw the full disk, and
    // the poisoned file reports it again at fsync.
    assert_eq!(errors[0].0, "write", "the first error: {errors:?}");
    assert!(
        errors.iter().any(|(w, _)| *w == "fsync"),
        "fsync of the poisoned file succeeded: {errors:?}"
    );
    // Make sure not a page is left, then try namespace changes.
    let mut fillers = Vec::new();
    fill_backing(&cipher, &mut fillers);
    let tree_before = read_tree(&mnt);
    assert_tree(
        &Tree {
            files: tree_before
                .files
                .clone()
                .into_iter()
                .filter(|(k, _)| k != "big")
                .collect(),
            ..tree_before.clone()
        },
        &want,
        "through the mount on the full disk",
    );

    // 3. mkdir / create / rename on the full disk fail with ENOSPC (or
    // succeed); nothing else.
    // Each operation runs on a disk filled again (a success may free space).
    let mut expect_ok_or_enospc = |what: &str, r: io::Result<()>| -> bool {
        eprintln!("{what} on the full disk: {r:?}");
        fill_backing(&cipher, &mut fillers);
        match r {
            Ok(()) => true,
            Err(e) if errno_of(&e) == ENOSPC => false,
            Err(e) => panic!("{what} on a full disk: {e}, want success or ENOSPC"),
        }
    };
    if expect_ok_or_enospc("mkdir", fs::create_dir(mnt.join("newdir"))) {
        want.dirs.push("newdir".into());
    }
    if expect_ok_or_enospc("mkdir nested", fs::create_dir(mnt.join("keep/sub/newdir"))) {
        want.dirs.push("keep/sub/newdir".into());
    }
    if expect_ok_or_enospc("create", write_durably(&mnt.join("newfile"), b"x")) {
        want.files.insert("newfile".into(), b"x".to_vec());
    }
    if expect_ok_or_enospc(
        "create long name",
        write_durably(&mnt.join(format!("keep/{}", "N".repeat(220))), b""),
    ) {
        want.files
            .insert(format!("keep/{}", "N".repeat(220)), Vec::new());
    }
    // Onto an existing long name (its sidecar must survive a failure) and
    // onto an existing empty directory (its records must survive a failure).
    if expect_ok_or_enospc(
        "rename onto a long name",
        fs::rename(mnt.join("keep/f3"), mnt.join("keep").join(&long)),
    ) {
        let v = want.files.remove("keep/f3").unwrap();
        want.files.insert(format!("keep/{long}"), v);
    }
    if expect_ok_or_enospc(
        "rename onto an empty directory",
        fs::rename(mnt.join("keep/sub/deep"), mnt.join("keep/empty")),
    ) {
        let rename = |s: &String| s.replacen("keep/sub/deep", "keep/empty", 1);
        want.dirs.retain(|d| d != "keep/sub/deep");
        want.files = want
            .files
            .into_iter()
            .map(|(k, v)| (rename(&k), v))
            .collect();
    }
    if expect_ok_or_enospc(
        "rename directory",
        fs::rename(mnt.join("keep/sub"), mnt.join("keep/moved")),
    ) {
        let rename = |s: &String| s.replacen("keep/sub", "keep/moved", 1);
        want.dirs = want.dirs.iter().map(rename).collect();
        want.files = want
            .files
            .into_iter()
            .map(|(k, v)| (rename(&k), v))
            .collect();
    }
    if expect_ok_or_enospc(
        "rename file",
        fs::rename(mnt.join("keep/f0"), mnt.join("keep/f0-renamed")),
    ) {
        let v = want.files.remove("keep/f0").unwrap();
        want.files.insert("keep/f0-renamed".into(), v);
    }
    want.dirs.sort();
    // A failed record replacement leaves no temporary file behind.
    let mut leftovers = Vec::new();
    walk(&cipher, &mut |p, _| {
        let s = p.to_string_lossy();
        // A temporary record, or a long name's sidecar without its entry.
        let orphan_sidecar = s
            .strip_suffix(".name")
            .is_some_and(|entry| fs::symlink_metadata(entry).is_err());
        if s.ends_with(".tmp") || orphan_sidecar {
            leftovers.push(p.to_path_buf());
        }
    });
    assert!(
        leftovers.is_empty(),
        "left behind on the full disk: {leftovers:?}"
    );
    let big_len = fs::metadata(mnt.join("big")).map(|m| m.len()).unwrap_or(0);
    m.unmount();

    // 4. After a remount: everything stored is byte-exact; the big file holds
    // a prefix of what was written, readable to its end.
    let m = vol.mount(&[]);
    let mut got = read_tree(&mnt);
    let big = got.files.remove("big").expect("big is still listed");
    assert!(big.len() as u64 <= big_len, "big grew over a remount");
    for (i, c) in big.chunks(pattern.len()).enumerate() {
        assert!(
            c == &pattern[..c.len()],
            "big: stored content differs in its record {i}"
        );
    }
    assert_tree(&got, &want, "after a remount");
    m.unmount();

    // 5. Both copies of every directory record are valid on their own.
    for keep in ["sealfs.dir", "sealfs.dir.bak"] {
        let mut t = vol.tree_with_only(keep);
        t.files.remove("big");
        assert_tree(&t, &want, &format!("with only {keep}"));
    }

    // 6. Free space (rm through the mount) and everything works again.
    for f in &fillers {
        fs::remove_file(f).unwrap();
    }
    let m = vol.mount(&[]);
    fs::remove_file(mnt.join("big")).unwrap();
    fs::create_dir(mnt.join("after")).unwrap();
    let data = rng.bytes(3 << 20);
    write_durably(&mnt.join("after/file"), &data).unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .custom_flags(0)
        .open(mnt.join("after/file"))
        .unwrap();
    f.write_all(b"appended").unwrap();
    f.sync_all().unwrap();
    close_checked(f).unwrap();
    let mut full = data;
    full.extend_from_slice(b"appended");
    fs::rename(mnt.join("after"), mnt.join("after-renamed")).unwrap();
    want.dirs.push("after-renamed".into());
    want.dirs.sort();
    want.files.insert("after-renamed/file".into(), full);
    assert_tree(&read_tree(&mnt), &want, "after freeing space");
    m.unmount();
    let m = vol.mount(&[]);
    assert_tree(&read_tree(&mnt), &want, "after freeing space and a remount");
    m.unmount();
    for keep in ["sealfs.dir", "sealfs.dir.bak"] {
        assert_tree(
            &vol.tree_with_only(keep),
            &want,
            &format!("at the end, with only {keep}"),
        );
    }
}

/// close(2) reports a write that could not be stored, once per open file
/// description (FLUSH), as NFS does: a write-through file (the disk is
/// below the margin) whose write() failed with ENOSPC and that was never
/// fsynced; a second open of the same file made before the failure also
/// hears of it at its close; an open made after it does not.
#[test]
fn close_reports_a_write_that_could_not_be_stored() {
    let Some(mut disk) = SmallDisk::new("4m") else {
        return;
    };
    let vol = &mut disk.vol;
    let m = vol.mount(&[]);
    let p = vol.mnt.join("big");
    let mut rng = Rng::new(23);
    let chunk = rng.bytes(256 << 10);
    let mut f = File::create(&p).unwrap();
    let other = File::open(&p).unwrap();
    // A dup shares the open file description (one FUSE handle).
    let dup = f.try_clone().unwrap();
    let mut written = 0usize;
    let failed = loop {
        match f.write(&chunk) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(written < (16 << 20), "4 MiB took 16 MiB without an error");
    };
    assert_eq!(errno_of(&failed), ENOSPC, "write failed with {failed}");
    let later = File::open(&p).unwrap();
    let first = close_checked(dup);
    assert_eq!(
        first.as_ref().map_err(errno_of),
        Err(ENOSPC),
        "the first close after a failed write: {first:?}"
    );
    assert!(
        close_checked(f).is_ok(),
        "the error was already reported on this file description"
    );
    let r = close_checked(other);
    assert_eq!(
        r.as_ref().map_err(errno_of),
        Err(ENOSPC),
        "an open made before the failure: {r:?}"
    );
    let r = close_checked(later);
    assert!(r.is_ok(), "an open made after the failure: {r:?}");
    // What was stored reads back byte-exact after a remount.
    m.unmount();
    let m = vol.mount(&[]);
    let got = fs::read(&p).unwrap();
    assert!(
        got.len() <= written,
        "{} bytes, {written} accepted",
        got.len()
    );
    for (i, c) in got.chunks(chunk.len()).enumerate() {
        assert!(c == &chunk[..c.len()], "record {i} differs");
    }
    m.unmount();
}

/// The bytes of every file directly in `dir` whose name starts with
/// `prefix` (sealfs's own files), to compare before and after.
fn own_files(dir: &Path, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .map(|n| (n.clone(), fs::read(dir.join(&n)).unwrap()))
        .collect()
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A grant of reading everything to uid 1001.
const GRANT_CREATE: [&str; 8] = [
    "grant",
    "create",
    "--grantee",
    "uid:1001",
    "--ops",
    "read",
    "--path-prefix",
    "/",
];

/// Key changes and grants on a full disk: a rotation offline and through
/// the control socket, and a grant creation, each fail with a clear error
/// that names the full disk; the keyring (both copies) and the grant store
/// stay byte for byte as they were, no temporary file is left, and after
/// space is freed the volume opens with its old key and both work.
#[test]
fn key_rotation_and_grants_on_a_full_disk_keep_the_old_copies() {
    let Some(mut disk) = SmallDisk::new("8m") else {
        return;
    };
    let vol = &mut disk.vol;
    let (cipher, mnt, passfile) = (vol.cipher.clone(), vol.mnt.clone(), vol.passfile.clone());
    let data = Rng::new(5).bytes(100_000);
    let m = vol.mount(&[]);
    write_durably(&mnt.join("f"), &data).unwrap();
    m.unmount();
    let keyring = own_files(&cipher, "sealfs.keyring");
    assert_eq!(keyring.len(), 2, "{:?}", keyring.keys());
    let mut fillers = Vec::new();
    fill_backing(&cipher, &mut fillers);

    // Offline rotation.
    let o = sealfs(&[
        "rotate".as_ref(),
        cipher.as_os_str(),
        "--passfile".as_ref(),
        passfile.as_os_str(),
    ]);
    assert!(!o.status.success(), "rotate on a full disk succeeded");
    let err = stderr_of(&o);
    assert!(
        err.contains("No space left on device"),
        "rotate's error does not say the disk is full: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        own_files(&cipher, "sealfs.keyring"),
        keyring,
        "keyring changed"
    );

    // Through a mount: a grant and a rotation.
    fill_backing(&cipher, &mut fillers);
    let sock = vol.logs.join("ctl.sock");
    let m = vol.mount(&["--ctl-socket", sock.to_str().unwrap()]);
    assert!(
        wait_until(TIMEOUT, || std::os::unix::net::UnixStream::connect(&sock)
            .is_ok()),
        "control socket not ready"
    );
    fill_backing(&cipher, &mut fillers);
    let grants_before = own_files(&cipher, "sealfs.grants");
    let ctl = |args: &[&str]| {
        Command::new(bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = ctl(&GRANT_CREATE);
    assert!(!o.status.success(), "grant create on a full disk succeeded");
    let err = stderr_of(&o);
    assert!(
        err.contains("No space left on device"),
        "grant create's error does not say the disk is full: {err}"
    );
    let listed = ctl(&["--json", "grant", "list"]);
    assert!(listed.status.success(), "{}", stderr_of(&listed));
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(v["grants"], serde_json::json!([]), "a half-made grant: {v}");
    assert_eq!(own_files(&cipher, "sealfs.grants"), grants_before);
    let o = ctl(&["rotate"]);
    assert!(!o.status.success(), "ctl rotate on a full disk succeeded");
    let err = stderr_of(&o);
    assert!(
        err.contains("No space left on device"),
        "ctl rotate's error does not say the disk is full: {err}"
    );
    assert_eq!(
        own_files(&cipher, "sealfs.keyring"),
        keyring,
        "keyring changed"
    );
    assert_eq!(fs::read(mnt.join("f")).unwrap(), data);
    m.unmount();
    let leftovers: Vec<String> = fs::read_dir(&cipher)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sealfs.") && n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Space again: the old key opens the volume, and both work.
    for f in fillers.drain(..) {
        fs::remove_file(f).unwrap();
    }
    let m = vol.mount(&["--ctl-socket", sock.to_str().unwrap()]);
    assert!(wait_until(TIMEOUT, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    }));
    assert_eq!(fs::read(mnt.join("f")).unwrap(), data);
    let o = ctl(&["rotate"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let o = ctl(&GRANT_CREATE);
    assert!(o.status.success(), "{}", stderr_of(&o));
    m.unmount();
}

/// `sealfs import` of more than fits: every file it could not store is
/// reported by name with the full disk as the reason, and every file the
/// volume then lists is complete and byte-exact (nothing half-imported,
/// no staged leftover under a visible name).
#[test]
fn import_onto_a_full_disk_reports_per_file_and_leaves_no_half_file() {
    let Some(disk) = SmallDisk::new("8m") else {
        return;
    };
    let vol = &disk.vol;
    let src = vol.logs.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let mut rng = Rng::new(9);
    let mut want = BTreeMap::new();
    for i in 0..14 {
        let rel = if i % 2 == 0 {
            format!("f{i:02}")
        } else {
            format!("sub/f{i:02}")
        };
        let data = rng.bytes(700_000 + i * 1000);
        fs::write(src.join(&rel), &data).unwrap();
        want.insert(rel, data);
    }
    let args = |extra: &[&str]| -> std::process::Output {
        let mut a: Vec<&std::ffi::OsStr> = vec![
            "import".as_ref(),
            src.as_os_str(),
            vol.cipher.as_os_str(),
            "--passfile".as_ref(),
            vol.passfile.as_os_str(),
        ];
        a.extend(extra.iter().map(std::ffi::OsStr::new));
        sealfs(&a)
    };
    let o = args(&["--json"]);
    let err = stderr_of(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(3), "import onto a full disk: {err}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert!(!problems.is_empty(), "{report}");
    for p in problems {
        let msg = p["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("No space left on device"),
            "a problem that does not name the full disk: {p}"
        );
        assert!(want.contains_key(p["path"].as_str().unwrap()), "{p}");
    }
    // Through a read-only mount: only complete files.
    let mut vol = Vol {
        cipher: vol.cipher.clone(),
        mnt: vol.mnt.clone(),
        passfile: vol.passfile.clone(),
        logs: vol.logs.clone(),
        n: 0,
    };
    let m = vol.mount(&["--read-only"]);
    let got = read_tree(&vol.mnt);
    m.unmount();
    assert!(!got.files.is_empty(), "nothing imported at all");
    for (k, v) in &got.files {
        let w = want
            .get(k)
            .unwrap_or_else(|| panic!("{k}: not a source file"));
        assert!(
            v == w,
            "{k}: {} bytes, want {} (half-imported)",
            v.len(),
            w.len()
        );
    }
    let reported: Vec<&str> = problems
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    for k in want.keys() {
        assert!(
            got.files.contains_key(k) ^ reported.contains(&k.as_str()),
            "{k}: in the volume {}, reported {}",
            got.files.contains_key(k),
            reported.contains(&k.as_str())
        );
    }
}
