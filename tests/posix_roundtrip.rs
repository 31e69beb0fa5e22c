//! Round trips of a real tree with hard links, extended attributes and
//! POSIX ACLs through a mount, compared with the source: content, type,
//! mode, owner, mtime to the nanosecond, symlink targets, every xattr (ACLs
//! included, as `system.posix_acl_*`), and the link structure (which paths
//! share an inode). Tools: `rsync -aHAX`, an `rsync --link-dest` series of
//! three generations, `tar --xattrs --acls` both ways, `cp -a` (no
//! warnings) and `cp -al`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<(i64, i64)>,
    content: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let r = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr {}", p.display());
    let mut out = BTreeMap::new();
    for name in buf[..r as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let n = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer.
        let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(r >= 0, "getxattr {} {:?}", p.display(), n);
        v.truncate(r as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), v);
    }
    out
}

/// Everything compared, per relative path, and the link groups.
type Snapshot = (BTreeMap<String, Entry>, BTreeSet<Vec<String>>);

fn snapshot(root: &Path) -> Snapshot {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let kind = m.mode() & libc::S_IFMT;
            let content = match kind {
                libc::S_IFREG => fs::read(&p).unwrap(),
                libc::S_IFLNK => fs::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes(),
                _ => Vec::new(),
            };
            if kind == libc::S_IFDIR {
                stack.push(p.clone());
            } else {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            entries.insert(
                rel,
                Entry {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: (kind != libc::S_IFLNK).then(|| (m.mtime(), m.mtime_nsec())),
                    content,
                    xattrs: xattrs(&p),
                },
            );
        }
    }
    let groups = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    (entries, groups)
}

#[track_caller]
fn assert_same_tree(got: &Path, want: &Path, what: &str) {
    let (g, gl) = snapshot(got);
    let (w, wl) = snapshot(want);
    let gk: BTreeSet<&String> = g.keys().collect();
    let wk: BTreeSet<&String> = w.keys().collect();
    assert_eq!(gk, wk, "{what}: paths differ");
    for (k, we) in &w {
        assert_eq!(&g[k], we, "{what}: {k} differs");
    }
    assert_eq!(gl, wl, "{what}: link groups differ");
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A source tree on the backing filesystem (ext4): files with several
/// names (within and across directories), xattrs on files and
/// directories, access and default ACLs, odd modes and owners, a symlink,
/// a FIFO, nanosecond mtimes.
fn make_source(src: &Path) {
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::create_dir_all(src.join("shared")).unwrap();
    fs::write(src.join("f1"), Rng::new(1).bytes(70_000)).unwrap();
    fs::write(src.join("sub/f2"), b"second file").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::hard_link(src.join("f1"), src.join("f1.link")).unwrap();
    fs::hard_link(src.join("f1"), src.join("sub/deeper/f1.again")).unwrap();
    fs::hard_link(src.join("sub/f2"), src.join("shared/f2")).unwrap();
    std::os::unix::fs::symlink("../f1", src.join("sub/to-f1")).unwrap();
    let s = src.display();
    sh(&format!(
        "mkfifo {s}/fifo && \
         setfattr -n user.color -v blue {s}/f1 && \
         setfattr -n user.bin -v 0x00ff10 {s}/sub/f2 && \
         setfattr -n user.dir -v yes {s}/sub && \
         setfacl -m u:nobody:r,g:nogroup:rw {s}/sub/f2 && \
         setfacl -m d:u:nobody:rwx {s}/shared && \
         setfacl -m u:nobody:rx {s}/shared && \
         chmod 0751 {s}/sub/deeper && chmod 0604 {s}/empty && \
         chown 65534:65534 {s}/empty && \
         touch -h -d '2015-01-02 03:04:05.123456789Z' {s}/f1 {s}/sub/f2 {s}/empty {s}/fifo && \
         touch -d '2016-02-03 04:05:06.5Z' {s}/sub/deeper {s}/sub {s}/shared"
    ));
}

fn tools() -> bool {
    ["rsync", "setfattr", "setfacl", "tar", "mkfifo"]
        .iter()
        .all(|t| have_tool(t))
}

#[test]
fn rsync_ahax_and_a_link_dest_series_round_trip() {
    if !tools() {
        eprintln!("SKIP: rsync/attr/acl missing (contrib/setup.sh)");
        return;
    }
    let mut fx = Fixture::mounted();
    let src = fx.scratch.join("src");
    make_source(&src);
    let m = fx.mnt.display().to_string();
    let s = src.display();
    sh(&format!("rsync -aHAX {s}/ {m}/gen1/"));
    assert_same_tree(&fx.p("gen1"), &src, "rsync -aHAX");
    // Two more generations with --link-dest: unchanged files are links
    // into the previous generation.
    fs::write(src.join("sub/f2"), b"second file, changed").unwrap();
    fs::write(src.join("new"), b"new in gen2").unwrap();
    sh(&format!(
        "rsync -aHAX --link-dest={m}/gen1 {s}/ {m}/gen2/ && \
         touch -d '2017-01-01Z' {s}/new && \
         rsync -aHAX --link-dest={m}/gen2 {s}/ {m}/gen3/"
    ));
    assert_same_tree(&fx.p("gen3"), &src, "rsync --link-dest gen3");
    let ino = |p: &str| fs::metadata(fx.p(p)).unwrap().ino();
    assert_eq!(ino("gen1/f1"), ino("gen3/f1"), "unchanged f1 not linked");
    assert_eq!(ino("gen1/empty"), ino("gen3/empty"));
    assert_ne!(ino("gen1/sub/f2"), ino("gen2/sub/f2"));
    assert_ne!(ino("gen2/new"), ino("gen3/new"), "changed mtime, new copy");
    // f1 has three names per generation.
    assert_eq!(fs::metadata(fx.p("gen1/f1")).unwrap().nlink(), 9);
    fx.remount();
    assert_same_tree(&fx.p("gen3"), &src, "gen3 after a remount");
    // And back out: the mount as the source.
    let back = fx.scratch.join("back");
    sh(&format!("rsync -aHAX {m}/gen3/ {}/", back.display()));
    assert_same_tree(&back, &src, "rsync -aHAX out of the mount");
    fx.unmount();
    fx.assert_fsck_clean("after rsync -aHAX out");
}

#[test]
fn tar_and_cp_round_trip() {
    if !tools() {
        eprintln!("SKIP: rsync/attr/acl missing (contrib/setup.sh)");
        return;
    }
    let mut fx = Fixture::mounted();
    let src = fx.scratch.join("src");
    make_source(&src);
    let (m, s, t) = (
        fx.mnt.display().to_string(),
        src.display().to_string(),
        fx.scratch.display().to_string(),
    );
    let tar = "tar --xattrs --xattrs-include='*' --acls --numeric-owner";
    // tar into the mount, and out of it.
    sh(&format!(
        "{tar} -cpf {t}/in.tar -C {s} . && mkdir {m}/tar && {tar} -xpf {t}/in.tar -C {m}/tar"
    ));
    assert_same_tree(&fx.p("tar"), &src, "tar extracted into the mount");
    sh(&format!(
        "{tar} -cpf {t}/out.tar -C {m}/tar . && mkdir {t}/untar && {tar} -xpf {t}/out.tar -C {t}/untar"
    ));
    assert_same_tree(
        &fx.scratch.join("untar"),
        &src,
        "tar created from the mount",
    );
    // cp -a in, with no warnings; cp -al inside the mount.
    let out = Command::new("cp")
        .args(["-a", &s, &format!("{m}/cp")])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "cp -a warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&fx.p("cp"), &src, "cp -a");
    let out = Command::new("cp")
        .args(["-al", &format!("{m}/cp"), &format!("{m}/cpl")])
        .output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{:?}", out);
    let (g, _) = snapshot(&fx.p("cpl"));
    for (rel, e) in g {
        if e.kind != libc::S_IFDIR {
            let a = fs::symlink_metadata(fx.p(&format!("cp/{rel}"))).unwrap();
            let b = fs::symlink_metadata(fx.p(&format!("cpl/{rel}"))).unwrap();
            assert_eq!(a.ino(), b.ino(), "cp -al: {rel} not linked");
        }
    }
    fx.remount();
    assert_same_tree(&fx.p("cp"), &src, "cp -a after a remount");
    assert_eq!(fs::read(fx.p("cpl/sub/f2")).unwrap(), b"second file");
}
