//! Hard links, extended attributes, POSIX ACLs and timestamps on a live
//! mount (docs/FORMAT.md §4.6, §9.1): what ext4 does, across remounts, and
//! what an attacker with write access to the cipher directory cannot do
//! (a planted backing link, a tampered link table, an xattr value moved to
//! another file or name all fail with EIO and an audit record).

mod common;

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn xset(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// getxattr with a buffer of `size` bytes (0: the size query).
fn xget_sized(p: &Path, name: &str, size: usize) -> io::Result<Vec<u8>> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; size];
    // SAFETY: valid C strings; the buffer holds `size` bytes.
    let r = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            n.as_ptr(),
            if size == 0 {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            size,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if size == 0 {
        return Ok(vec![0; r as usize]);
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn xget(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    xget_sized(p, name, 65536)
}

fn xlist(p: &Path) -> io::Result<Vec<String>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let r = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut v: Vec<String> = buf[..r as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    Ok(v)
}

fn xremove(p: &Path, name: &str) -> io::Result<()> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid C strings.
    if unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Backing entries of a backing directory (reserved names contain a dot).
fn backing_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().contains('.'))
        .collect();
    v.sort();
    v
}

fn ctl(fx: &Fixture, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("ctl")
        .arg("--socket")
        .arg(&fx.ctl_socket)
        .args(args)
        .output()
        .unwrap()
}

fn integrity_records(fx: &Fixture, path: &str) -> usize {
    fx.integrity_records(path)
        .iter()
        .filter(|r| r["outcome"] == "error")
        .count()
}

/// The kinds of problems `sealfs fsck --json` (with `extra` arguments) reports.
fn fsck_kinds(fx: &Fixture, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "fsck".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
        "--json".as_ref(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let out = sealfs(&args);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fsck --json: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect()
}

fn nlink(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().nlink()
}

#[test]
fn hard_links_share_one_file_across_unlink_rename_and_remount() {
    let mut fx = Fixture::mounted();
    fs::create_dir(fx.p("d")).unwrap();
    fs::write(fx.p("a"), b"one").unwrap();
    fs::hard_link(fx.p("a"), fx.p("b")).unwrap();
    fs::hard_link(fx.p("b"), fx.p("d/c")).unwrap();
    let ino = fs::metadata(fx.p("a")).unwrap().ino();
    for n in ["a", "b", "d/c"] {
        let m = fs::metadata(fx.p(n)).unwrap();
        assert_eq!((m.ino(), m.nlink()), (ino, 3), "{n}");
    }
    fs::write(fx.p("b"), b"two!").unwrap();
    assert_eq!(fs::read(fx.p("a")).unwrap(), b"two!");
    assert_eq!(fs::read(fx.p("d/c")).unwrap(), b"two!");
    assert_errno(
        fs::hard_link(fx.p("a"), fx.p("b")),
        libc::EEXIST,
        "link over a name",
    );
    assert_errno(
        fs::hard_link(fx.p("d"), fx.p("d2")),
        libc::EPERM,
        "link a directory",
    );
    assert_errno(
        fs::hard_link(fx.p("nope"), fx.p("x")),
        libc::ENOENT,
        "link a missing file",
    );

    fs::remove_file(fx.p("a")).unwrap();
    assert_eq!(nlink(&fx.p("b")), 2);
    fs::rename(fx.p("b"), fx.p("d/e")).unwrap();
    assert_eq!(nlink(&fx.p("d/e")), 2);
    fx.remount();
    for n in ["d/e", "d/c"] {
        let m = fs::metadata(fx.p(n)).unwrap();
        assert_eq!(m.nlink(), 2, "{n}");
        assert_eq!(fs::read(fx.p(n)).unwrap(), b"two!", "{n}");
    }
    assert_eq!(
        fs::metadata(fx.p("d/e")).unwrap().ino(),
        fs::metadata(fx.p("d/c")).unwrap().ino()
    );
    // A rename over one name of a linked file drops that name only.
    fs::write(fx.p("other"), b"other").unwrap();
    fs::rename(fx.p("other"), fx.p("d/c")).unwrap();
    assert_eq!(nlink(&fx.p("d/e")), 1);
    assert_eq!(fs::read(fx.p("d/c")).unwrap(), b"other");
    fx.remount();
    assert_eq!(fs::read(fx.p("d/e")).unwrap(), b"two!");
    // Symlinks and FIFOs get links too (they carry no key).
    std::os::unix::fs::symlink("d/e", fx.p("s")).unwrap();
    fs::hard_link(fx.p("s"), fx.p("s2")).unwrap();
    assert_eq!(fs::read_link(fx.p("s2")).unwrap(), Path::new("d/e"));
    assert_eq!(nlink(&fx.p("s")), 2);
    fx.unmount();
    fx.assert_fsck_clean("after the test");
}

#[test]
fn many_links_move_the_table_out_of_block_0_until_emlink() {
    let mut fx = Fixture::mounted();
    let data = Rng::new(7).bytes(10_000);
    fs::write(fx.p("f"), &data).unwrap();
    fs::create_dir(fx.p("l")).unwrap();
    let mut n = 1u64;
    let err = loop {
        match fs::hard_link(fx.p("f"), fx.p(&format!("l/{n}"))) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 5000, "no limit");
    };
    // A clear EMLINK at the limit the backing filesystem's xattr space
    // sets (ext4, 4 KiB blocks: about 240 names); dozens fit.
    assert_eq!(err.raw_os_error(), Some(libc::EMLINK), "{err}");
    assert!(n >= 100, "only {n} names");
    assert_eq!(nlink(&fx.p("f")), n);
    fx.remount();
    assert_eq!(nlink(&fx.p("f")), n);
    for k in (1..n).step_by(17) {
        assert_eq!(fs::read(fx.p(&format!("l/{k}"))).unwrap(), data, "l/{k}");
    }
    for k in 2..n {
        fs::remove_file(fx.p(&format!("l/{k}"))).unwrap();
    }
    fs::remove_file(fx.p("f")).unwrap();
    fx.remount();
    assert_eq!(nlink(&fx.p("l/1")), 1);
    assert_eq!(fs::read(fx.p("l/1")).unwrap(), data);
    fs::hard_link(fx.p("l/1"), fx.p("again")).unwrap();
    assert_eq!(fs::read(fx.p("again")).unwrap(), data);
    fx.unmount();
    fx.assert_fsck_clean("after the test");
}

#[test]
fn planted_link_and_tampered_table_fail_with_eio_and_audit() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::create_dir(fx.p("d")).unwrap();
    fs::write(fx.p("d/x"), b"victim").unwrap();
    fs::write(fx.p("secret"), b"secret data").unwrap();
    fs::hard_link(fx.p("secret"), fx.p("secret2")).unwrap();
    fx.unmount();
    // The attacker replaces d/x's backing entry by a backing link to the
    // linked file (whose slot names no path).
    let root = backing_entries(&fx.cipher);
    let linked: Vec<&PathBuf> = root
        .iter()
        .filter(|p| p.is_file() && fs::metadata(p).unwrap().nlink() == 2)
        .collect();
    assert_eq!(linked.len(), 2, "{root:?}");
    let dir = root.iter().find(|p| p.is_dir()).unwrap();
    let x = backing_entries(dir);
    assert_eq!(x.len(), 1);
    fs::remove_file(&x[0]).unwrap();
    fs::hard_link(linked[0], &x[0]).unwrap();
    fx.mount_ctl();
    let e = fs::read(fx.p("d/x")).expect_err("a planted link opened");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        integrity_records(&fx, "/d/x") >= 1,
        "planted link not audited"
    );
    assert_eq!(fs::read(fx.p("secret")).unwrap(), b"secret data");
    assert_eq!(fs::read(fx.p("secret2")).unwrap(), b"secret data");
    fx.unmount();
    // fsck names the planted link too.
    assert_eq!(fsck_kinds(&fx, &[]), ["context-mismatch"]);
    fs::remove_file(&x[0]).unwrap();
    // A tampered link table (bytes 3840..4096 of block 0).
    let mut bytes = fs::read(linked[0]).unwrap();
    bytes[3840 + 40] ^= 1;
    fs::write(linked[0], &bytes).unwrap();
    fx.mount_ctl();
    for n in ["secret", "secret2"] {
        let e = fs::read(fx.p(n)).expect_err("a tampered table opened");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{n}: {e}");
    }
    assert!(
        integrity_records(&fx, "/secret") >= 1,
        "tampered table not audited"
    );
    fx.unmount();
}

#[test]
fn xattrs_behave_as_on_ext4_and_survive_remount() {
    let mut fx = Fixture::mounted();
    let f = fx.p("f");
    fs::write(&f, b"x").unwrap();
    assert_eq!(xlist(&f).unwrap(), Vec::<String>::new());
    assert_errno(xget(&f, "user.a"), libc::ENODATA, "get missing");
    xset(&f, "user.a", b"value one", 0).unwrap();
    xset(&f, "user.empty", b"", 0).unwrap();
    assert_eq!(xget(&f, "user.a").unwrap(), b"value one");
    assert_eq!(xget(&f, "user.empty").unwrap(), b"");
    assert_eq!(xget_sized(&f, "user.a", 0).unwrap().len(), 9, "size query");
    assert_errno(xget_sized(&f, "user.a", 3), libc::ERANGE, "small buffer");
    assert_errno(
        xset(&f, "user.a", b"v", libc::XATTR_CREATE),
        libc::EEXIST,
        "XATTR_CREATE on an existing name",
    );
    assert_errno(
        xset(&f, "user.b", b"v", libc::XATTR_REPLACE),
        libc::ENODATA,
        "XATTR_REPLACE on a missing name",
    );
    xset(&f, "user.a", b"two", libc::XATTR_REPLACE).unwrap();
    assert_errno(xremove(&f, "user.nope"), libc::ENODATA, "remove missing");
    assert_errno(
        xset(&f, "bogus.a", b"v", 0),
        libc::EOPNOTSUPP,
        "unknown namespace",
    );
    xset(&f, "trusted.t", b"root only", 0).unwrap();
    let big = Rng::new(3).bytes(3000);
    xset(&f, "user.big", &big, 0).unwrap();
    assert_eq!(
        xlist(&f).unwrap(),
        ["trusted.t", "user.a", "user.big", "user.empty"]
    );
    // Directories take user.*; symlinks refuse it (EPERM, as on ext4).
    fs::create_dir(fx.p("d")).unwrap();
    xset(&fx.p("d"), "user.dir", b"dir value", 0).unwrap();
    std::os::unix::fs::symlink("f", fx.p("s")).unwrap();
    assert_errno(
        xset(&fx.p("s"), "user.x", b"v", 0),
        libc::EPERM,
        "user.* on a symlink",
    );
    // Values live encrypted: no backing xattr shows a name or a value.
    fx.remount();
    assert_eq!(xget(&f, "user.a").unwrap(), b"two");
    assert_eq!(xget(&f, "user.big").unwrap(), big);
    assert_eq!(xget(&f, "trusted.t").unwrap(), b"root only");
    assert_eq!(xget(&fx.p("d"), "user.dir").unwrap(), b"dir value");
    fs::rename(&f, fx.p("d/g")).unwrap();
    assert_eq!(xget(&fx.p("d/g"), "user.a").unwrap(), b"two");
    xremove(&fx.p("d/g"), "user.a").unwrap();
    assert_errno(xget(&fx.p("d/g"), "user.a"), libc::ENODATA, "removed");
    fx.unmount();
    let out = Command::new("getfattr")
        .args(["-R", "-d", "-m", "-", "-e", "text"])
        .arg(&fx.cipher)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for plain in [
        "user.big",
        "user.dir",
        "trusted.t",
        "root only",
        "dir value",
    ] {
        assert!(!text.contains(plain), "{plain} in the clear:\n{text}");
    }
    fx.assert_fsck_clean("after the test");
}

#[test]
fn xattr_value_moved_to_another_file_or_name_fails() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::write(fx.p("p"), b"p").unwrap();
    fs::write(fx.p("q"), b"q").unwrap();
    xset(&fx.p("p"), "user.k", b"pv", 0).unwrap();
    xset(&fx.p("p"), "user.k2", b"p2", 0).unwrap();
    xset(&fx.p("q"), "user.k", b"qv", 0).unwrap();
    fx.unmount();
    let files = backing_entries(&fx.cipher);
    let sealed = |p: &Path| -> Vec<String> {
        xlist(p)
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with("user.sealfs.x."))
            .collect()
    };
    let (pb, qb): (Vec<&PathBuf>, Vec<&PathBuf>) = files.iter().partition(|f| sealed(f).len() == 2);
    let (pb, qb) = (pb[0], qb[0]);
    let (pn, qn) = (sealed(pb), sealed(qb));
    assert_eq!(qn.len(), 1);
    // q's attribute gets one of p's values.
    let moved = xget(pb, &pn[0]).unwrap();
    xset(qb, &qn[0], &moved, 0).unwrap();
    // p's two attributes swap values.
    let (v0, v1) = (xget(pb, &pn[0]).unwrap(), xget(pb, &pn[1]).unwrap());
    xset(pb, &pn[0], &v1, 0).unwrap();
    xset(pb, &pn[1], &v0, 0).unwrap();
    fx.mount_ctl();
    for (f, n) in [("q", "user.k"), ("p", "user.k"), ("p", "user.k2")] {
        assert_errno(xget(&fx.p(f), n), libc::EIO, &format!("{f} {n}"));
    }
    assert!(integrity_records(&fx, "/q") >= 1, "moved xattr not audited");
    assert_eq!(fs::read(fx.p("q")).unwrap(), b"q");
    fx.unmount();
    // fsck finds the three, salvage removes them, and the volume is clean.
    assert_eq!(fsck_kinds(&fx, &[]), ["xattr", "xattr", "xattr"]);
    fsck_kinds(&fx, &["--salvage"]);
    assert_eq!(fsck_kinds(&fx, &[]), Vec::<String>::new());
}

fn getfacl(p: &Path) -> String {
    run_ok(Command::new("getfacl").args(["-c", "-p"]).arg(p))
}

#[test]
fn acls_are_stored_inherited_and_enforced() {
    if !have_tool("setfacl") || !have_tool("setpriv") {
        eprintln!("SKIP: setfacl/setpriv missing");
        return;
    }
    let mut fx = Fixture::new();
    fs::set_permissions(fx.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fx.mount_ctl_with(&["-o", "allow_other"]);
    let o = ctl(
        &fx,
        &[
            "grant",
            "create",
            "--grantee",
            "uid:65534",
            "--ops",
            "all",
            "--path-prefix",
            "/",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fs::create_dir(fx.p("d")).unwrap();
    run_ok(
        Command::new("setfacl")
            .args(["-m", "d:u:nobody:rwx,d:m::rwx"])
            .arg(fx.p("d")),
    );
    fs::write(fx.p("d/f"), b"acl").unwrap();
    fs::create_dir(fx.p("d/sub")).unwrap();
    let f_acl = getfacl(&fx.p("d/f"));
    assert!(f_acl.contains("user:nobody:rwx"), "{f_acl}");
    let sub_acl = getfacl(&fx.p("d/sub"));
    assert!(sub_acl.contains("default:user:nobody:rwx"), "{sub_acl}");
    // An access ACL grants what the mode does not; chmod rewrites its mask.
    fs::write(fx.p("private"), b"for nobody").unwrap();
    fs::set_permissions(fx.p("private"), fs::Permissions::from_mode(0o600)).unwrap();
    let as_nobody = |p: &Path| {
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "cat",
            ])
            .arg(p)
            .output()
            .unwrap()
    };
    assert!(!as_nobody(&fx.p("private")).status.success());
    run_ok(
        Command::new("setfacl")
            .args(["-m", "u:nobody:r"])
            .arg(fx.p("private")),
    );
    assert_eq!(fs::metadata(fx.p("private")).unwrap().mode() & 0o777, 0o640);
    let o = as_nobody(&fx.p("private"));
    assert_eq!(
        o.stdout,
        b"for nobody",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    fs::set_permissions(fx.p("private"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(getfacl(&fx.p("private")).contains("mask::---"));
    assert!(!as_nobody(&fx.p("private")).status.success());
    fs::set_permissions(fx.p("private"), fs::Permissions::from_mode(0o640)).unwrap();
    // Surviving a remount and a rename.
    fx.unmount();
    fx.mount_ctl_with(&["-o", "allow_other"]);
    fs::rename(fx.p("private"), fx.p("d/sub/private")).unwrap();
    let o = as_nobody(&fx.p("d/sub/private"));
    assert_eq!(o.stdout, b"for nobody");
    assert!(getfacl(&fx.p("d/f")).contains("user:nobody:rwx"));
    run_ok(Command::new("setfacl").arg("-b").arg(fx.p("d/sub/private")));
    assert!(!as_nobody(&fx.p("d/sub/private")).status.success());
    fx.unmount();
    fx.assert_fsck_clean("after the test");
}

fn times(p: &Path) -> ((i64, i64), (i64, i64)) {
    let m = fs::symlink_metadata(p).unwrap();
    ((m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()))
}

fn utimens(p: &Path, a: libc::timespec, m: libc::timespec) {
    let c = cpath(p);
    let ts = [a, m];
    // SAFETY: valid C string and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat: {}", io::Error::last_os_error());
}

fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

#[test]
fn timestamps_are_set_per_field_to_the_nanosecond() {
    let mut fx = Fixture::mounted();
    let f = fx.p("f");
    fs::write(&f, b"t").unwrap();
    utimens(
        &f,
        ts(1_000_000_000, 123_456_789),
        ts(1_100_000_000, 987_654_321),
    );
    assert_eq!(
        times(&f),
        ((1_000_000_000, 123_456_789), (1_100_000_000, 987_654_321))
    );
    // touch -m leaves atime alone; touch -a leaves mtime alone.
    run_ok(
        Command::new("touch")
            .args(["-m", "-d", "2010-05-05 05:05:05Z"])
            .arg(&f),
    );
    assert_eq!(
        times(&f),
        ((1_000_000_000, 123_456_789), (1_273_035_905, 0))
    );
    run_ok(
        Command::new("touch")
            .args(["-a", "-d", "2011-01-01 00:00:00.5Z"])
            .arg(&f),
    );
    assert_eq!(
        times(&f),
        ((1_293_840_000, 500_000_000), (1_273_035_905, 0))
    );
    // UTIME_NOW for one, UTIME_OMIT for the other.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    utimens(&f, ts(0, libc::UTIME_OMIT), ts(0, libc::UTIME_NOW));
    let (a, m) = times(&f);
    assert_eq!(a, (1_293_840_000, 500_000_000));
    assert!(m.0 >= before, "{m:?}");
    // The times survive a write through the writeback cache and a remount.
    utimens(&f, ts(1_200_000_000, 1), ts(1_300_000_000, 2));
    let ctime0 = fs::metadata(&f).unwrap().ctime();
    fx.remount();
    assert_eq!(times(&f), ((1_200_000_000, 1), (1_300_000_000, 2)));
    assert_eq!(fs::metadata(&f).unwrap().ctime(), ctime0);
    // A directory, and a link changes the file's ctime.
    fs::create_dir(fx.p("d")).unwrap();
    utimens(&fx.p("d"), ts(5, 6), ts(7, 8));
    assert_eq!(times(&fx.p("d")), ((5, 6), (7, 8)));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let c0 = fs::metadata(&f).unwrap();
    fs::hard_link(&f, fx.p("d/f2")).unwrap();
    let c1 = fs::metadata(&f).unwrap();
    assert!(
        (c1.ctime(), c1.ctime_nsec()) > (c0.ctime(), c0.ctime_nsec()),
        "link did not change ctime"
    );
    assert_eq!(
        times(&f),
        ((1_200_000_000, 1), (1_300_000_000, 2)),
        "link changed a/mtime"
    );
}

#[test]
fn the_library_makes_links_and_xattrs_the_mount_sees() {
    use sealfs::keyring::UnlockSecret;
    use sealfs::vault::Vault;
    let mut fx = Fixture::new();
    {
        let v = Vault::open(
            &fx.cipher,
            &UnlockSecret::from_passfile(&fx.passfile).unwrap(),
        )
        .unwrap();
        v.create_dir_all(Path::new("d")).unwrap();
        v.write(Path::new("d/f"), b"from the library").unwrap();
        v.hard_link(Path::new("d/f"), Path::new("g")).unwrap();
        v.set_xattr(Path::new("g"), "user.k", b"v1", 0).unwrap();
        v.set_xattr(Path::new("d"), "user.dir", b"dv", 0).unwrap();
        assert_eq!(
            v.get_xattr(Path::new("d/f"), "user.k").unwrap().unwrap(),
            b"v1"
        );
        assert_eq!(v.list_xattrs(Path::new("d/f")).unwrap(), ["user.k"]);
    }
    fx.mount();
    assert_eq!(nlink(&fx.p("g")), 2);
    assert_eq!(fs::read(fx.p("d/f")).unwrap(), b"from the library");
    assert_eq!(xget(&fx.p("d/f"), "user.k").unwrap(), b"v1");
    assert_eq!(xget(&fx.p("d"), "user.dir").unwrap(), b"dv");
    xset(&fx.p("g"), "user.k2", b"v2", 0).unwrap();
    fx.unmount();
    let v = Vault::open(
        &fx.cipher,
        &UnlockSecret::from_passfile(&fx.passfile).unwrap(),
    )
    .unwrap();
    assert_eq!(
        v.get_xattr(Path::new("g"), "user.k2").unwrap().unwrap(),
        b"v2"
    );
    v.remove_xattr(Path::new("g"), "user.k").unwrap();
    assert_eq!(v.get_xattr(Path::new("d/f"), "user.k").unwrap(), None);
}

/// `Vault::remove_file` of one name of a linked file drops that name's
/// tag from the link table, as an unlink through the mount does: a backing
/// link an attacker plants again under the removed name then fails with
/// EIO instead of opening.
#[test]
fn the_library_removing_a_link_drops_its_tag() {
    use sealfs::keyring::UnlockSecret;
    use sealfs::vault::Vault;
    let mut fx = Fixture::mounted();
    fs::write(fx.p("a"), b"linked data").unwrap();
    let before = backing_entries(&fx.cipher);
    fs::hard_link(fx.p("a"), fx.p("b")).unwrap();
    let b_backing: Vec<PathBuf> = backing_entries(&fx.cipher)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(b_backing.len(), 1, "{b_backing:?}");
    let a_backing = before
        .iter()
        .find(|p| p.is_file() && fs::metadata(p).unwrap().nlink() == 2)
        .unwrap()
        .clone();
    fx.unmount();
    {
        let v = Vault::open(
            &fx.cipher,
            &UnlockSecret::from_passfile(&fx.passfile).unwrap(),
        )
        .unwrap();
        v.remove_file(Path::new("b")).unwrap();
    }
    assert!(!b_backing[0].exists());
    // The attacker puts the removed name back as a backing link.
    fs::hard_link(&a_backing, &b_backing[0]).unwrap();
    fx.mount();
    assert_eq!(fs::read(fx.p("a")).unwrap(), b"linked data");
    let e = fs::read(fx.p("b")).expect_err("a removed name opened again");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    fx.unmount();
}

/// An external link table (more than 13 names) rolled back: the attacker
/// saved `user.sealfs.links` while the file had a name, and after that
/// name was unlinked puts the old value back with a backing link under
/// the old name. The inline note in block 0 pins the table's generation,
/// so the old value is refused (EIO, an integrity record), for every name.
#[test]
fn an_external_link_table_put_back_is_refused() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::write(fx.p("f"), b"many names").unwrap();
    fs::create_dir(fx.p("l")).unwrap();
    for n in 1..=15 {
        fs::hard_link(fx.p("f"), fx.p(&format!("l/{n}"))).unwrap();
    }
    let ldir = backing_entries(&fx.cipher)
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap();
    let before = backing_entries(&ldir);
    let old_table = xget(&before[0], "user.sealfs.links").expect("an external table");
    fs::remove_file(fx.p("l/15")).unwrap();
    let after = backing_entries(&ldir);
    let gone: Vec<&PathBuf> = before.iter().filter(|p| !after.contains(p)).collect();
    assert_eq!(gone.len(), 1);
    // The current table still works through the mount.
    assert_eq!(fs::read(fx.p("l/3")).unwrap(), b"many names");
    fx.unmount();
    let current = xget(&after[0], "user.sealfs.links").unwrap();
    assert_ne!(current, old_table);
    fs::hard_link(&after[0], gone[0]).unwrap();
    xset(&after[0], "user.sealfs.links", &old_table, 0).unwrap();
    fx.mount_ctl();
    for n in ["l/15", "l/3", "f"] {
        let e = fs::read(fx.p(n)).expect_err("a rolled-back table opened");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{n}: {e}");
    }
    assert!(integrity_records(&fx, "/l/15") >= 1, "rollback not audited");
    fx.unmount();
    // The value as it was makes the file whole again.
    fs::remove_file(gone[0]).unwrap();
    xset(&after[0], "user.sealfs.links", &current, 0).unwrap();
    fx.mount();
    assert_eq!(fs::read(fx.p("l/3")).unwrap(), b"many names");
    fx.unmount();
}

/// Symlinks and FIFOs (keyless nodes) have attributes bound to their own
/// id (`keyless-xattr-ids`): a value moved from one such node to another
/// fails with EIO, while a rename or a hard link (the same inode, so the
/// same id) keeps them readable; fsck names the moved value and salvage
/// removes it.
#[test]
fn keyless_node_xattrs_are_bound_to_the_node() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: trusted.* attributes on symlinks need root");
        return;
    }
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let cfg = fs::read_to_string(fx.cipher.join("sealfs.toml")).unwrap();
    assert!(cfg.contains("\"keyless-xattr-ids\""), "{cfg}");
    std::os::unix::fs::symlink("target-a", fx.p("s1")).unwrap();
    std::os::unix::fs::symlink("target-b", fx.p("s2")).unwrap();
    let fifo = cpath(&fx.p("pipe"));
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    xset(&fx.p("s1"), "trusted.k", b"one", 0).unwrap();
    xset(&fx.p("s2"), "trusted.k", b"two", 0).unwrap();
    xset(&fx.p("pipe"), "trusted.k", b"fifo", 0).unwrap();
    // A rename and a hard link keep them.
    fs::rename(fx.p("s1"), fx.p("s3")).unwrap();
    fs::hard_link(fx.p("s3"), fx.p("s4")).unwrap();
    fx.unmount();
    fx.mount_ctl();
    assert_eq!(xget(&fx.p("s3"), "trusted.k").unwrap(), b"one");
    assert_eq!(xget(&fx.p("s4"), "trusted.k").unwrap(), b"one");
    assert_eq!(xget(&fx.p("pipe"), "trusted.k").unwrap(), b"fifo");
    fx.unmount();
    // The attacker moves s3's value onto s2 (under s2's own backing name).
    let sealed = |p: &Path| -> Vec<String> {
        xlist(p)
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with("trusted.sealfs.x."))
            .collect()
    };
    let entries: Vec<PathBuf> = backing_entries(&fx.cipher)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).unwrap().file_type().is_symlink())
        .collect();
    let (linked, single): (Vec<&PathBuf>, Vec<&PathBuf>) = entries
        .iter()
        .partition(|p| fs::symlink_metadata(p).unwrap().nlink() == 2);
    let (s3b, s2b) = (linked[0], single[0]);
    let (n3, n2) = (sealed(s3b), sealed(s2b));
    assert_eq!((n3.len(), n2.len()), (1, 1));
    assert_ne!(n3, n2, "two nodes share their attribute keys");
    let moved = xget(s3b, &n3[0]).unwrap();
    xset(s2b, &n2[0], &moved, 0).unwrap();
    fx.mount_ctl();
    assert_errno(xget(&fx.p("s2"), "trusted.k"), libc::EIO, "s2 trusted.k");
    assert_eq!(xget(&fx.p("s3"), "trusted.k").unwrap(), b"one");
    fx.unmount();
    // fsck checks keyless nodes' attributes too: the moved one, once.
    assert_eq!(fsck_kinds(&fx, &[]), ["xattr"]);
    fsck_kinds(&fx, &["--salvage"]);
    assert_eq!(fsck_kinds(&fx, &[]), Vec::<String>::new());
}
