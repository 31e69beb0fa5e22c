//! The cipher directory is attacker-controlled input: whoever can write it
//! (a synced folder, a NAS, a shared disk) must not be able to make the
//! daemon — often root — follow a planted symlink out of it, open a FIFO or
//! device planted where sealfs keeps its own files, or hang on one.
//!
//! Each case plants one object (a symlink to a file outside, a dangling
//! symlink to a path outside, a FIFO, a directory) at one of sealfs's own
//! names (replacing the real file where there is one), then runs mount (with
//! a write, rotate, rewrap and a grant through the control socket),
//! unmount, offline rotate, fsck, fsck --salvage, passwd and audit verify,
//! each under a time limit. After every case: nothing outside the cipher
//! directory was created, changed or read (content, mtime, atime of a
//! victim file whose atime is set before its mtime, so that any read
//! moves it), no command panicked, and no daemon or mount is left.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long any single command may take before the test calls it hung.
const LIMIT: Duration = Duration::from_secs(20);

/// What gets planted.
#[derive(Clone, Copy, Debug)]
enum Plant {
    /// A symlink to an existing file outside the cipher directory.
    SymlinkToVictim,
    /// A symlink to a path outside that does not exist (must not be created).
    DanglingSymlink,
    /// A FIFO (an open for reading would block forever).
    Fifo,
    /// A directory.
    Directory,
}

const PLANTS: [Plant; 4] = [
    Plant::SymlinkToVictim,
    Plant::DanglingSymlink,
    Plant::Fifo,
    Plant::Directory,
];

/// sealfs's own names in the cipher directory's root (and, with `sub/`,
/// in a backing subdirectory), real files and temp names alike.
const ROOT_NAMES: [&str; 16] = [
    "sealfs.root",
    "sealfs.root.tmp",
    "sealfs.toml",
    "sealfs.toml.tmp",
    "sealfs.keyring",
    "sealfs.keyring.tmp",
    "sealfs.keyring.bak",
    "sealfs.keyring.bak.tmp",
    "sealfs.lock",
    "sealfs.grants",
    "sealfs.grants.tmp",
    "sealfs.audit",
    "sealfs.dir",
    "sealfs.dir.bak",
    "sealfs.dir.tmp",
    "sealfs.dir.bak.tmp",
];
const SUB_NAMES: [&str; 5] = [
    "sub/sealfs.dir",
    "sub/sealfs.dir.bak",
    "sub/sealfs.dir.tmp",
    "sub/sealfs.dir.bak.tmp",
    // The sidecar of the long name in /sub (listing /sub and fsck read it).
    SIDECAR,
];
/// Stands for the sidecar (`sealfs.L.<hash>.name`) of `/sub`'s long name.
const SIDECAR: &str = "sub/<sidecar>";
/// A name long enough for a sidecar in every name scheme.
const LONG_NAME: &str = "a-name-of-two-hundred-bytes-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
const AUDIT_NAMES: [&str; 2] = ["sealfs.audit/00000001.log", "sealfs.audit/00000002.log.tmp"];

/// Files outside the cipher directory that must stay untouched.
struct Outside {
    dir: PathBuf,
    victim: PathBuf,
    victim_dir: PathBuf,
    dangling: PathBuf,
}

/// What can be seen of the outside without reading it: names in the
/// outside folder, and lstat of the victims (size, mode, and all three
/// times: a write moves mtime and ctime, a read or listing moves atime).
#[derive(Debug, PartialEq)]
struct Snapshot {
    names: BTreeSet<PathBuf>,
    victim: [i64; 8],
    victim_dir: [i64; 8],
}

fn stat_of(p: &Path) -> [i64; 8] {
    let md = fs::symlink_metadata(p).unwrap();
    [
        md.size() as i64,
        md.mode() as i64,
        md.atime(),
        md.atime_nsec(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
    ]
}

impl Outside {
    fn new(base: &Path) -> Self {
        let dir = base.join("outside");
        fs::create_dir(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, b"precious, must never change\n").unwrap();
        let victim_dir = dir.join("victim-dir");
        fs::create_dir(&victim_dir).unwrap();
        fs::write(victim_dir.join("inner"), b"inner").unwrap();
        // atime before mtime: with relatime, any read moves atime.
        for p in [&victim, &victim_dir] {
            run_ok(
                Command::new("touch")
                    .args(["-a", "-d", "2001-01-01 00:00:00"])
                    .arg(p),
            );
        }
        Outside {
            dangling: dir.join("created-by-sealfs"),
            dir,
            victim,
            victim_dir,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            names: fs::read_dir(&self.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into())
                .collect(),
            victim: stat_of(&self.victim),
            victim_dir: stat_of(&self.victim_dir),
        }
    }
}

/// The backing directory of `/sub` (the only subdirectory of the root
/// besides the audit folder).
fn sub_backing(cipher: &Path) -> PathBuf {
    fs::read_dir(cipher)
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| {
            e.file_type().unwrap().is_dir()
                && !e.file_name().to_string_lossy().starts_with("sealfs")
        })
        .expect("backing directory of /sub")
        .path()
}

fn resolve(cipher: &Path, name: &str) -> PathBuf {
    if name == SIDECAR {
        let sub = sub_backing(cipher);
        return fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with("sealfs.L.") && n.ends_with(".name")
            })
            .expect("the long name's sidecar in /sub");
    }
    match name.strip_prefix("sub/") {
        Some(rest) => sub_backing(cipher).join(rest),
        None => cipher.join(name),
    }
}

fn plant(at: &Path, what: Plant, outside: &Outside) {
    match fs::symlink_metadata(at) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(at).unwrap(),
        Ok(_) => fs::remove_file(at).unwrap(),
        Err(_) => {}
    }
    let is_dir_name = at.file_name() == Some(OsStr::new("sealfs.audit"));
    match what {
        Plant::SymlinkToVictim => {
            let target = if is_dir_name {
                &outside.victim_dir
            } else {
                &outside.victim
            };
            std::os::unix::fs::symlink(target, at).unwrap()
        }
        Plant::DanglingSymlink => std::os::unix::fs::symlink(&outside.dangling, at).unwrap(),
        Plant::Fifo => {
            let c = cpath(at);
            // SAFETY: valid C string.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        }
        Plant::Directory => fs::create_dir(at).unwrap(),
    }
}

/// Waits for `child` at most [`LIMIT`]; a child still running then is
/// killed and reported as hung.
fn wait_limited(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} hung for {LIMIT:?} (killed); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_limited(args: &[&OsStr], what: &str) -> Output {
    let child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_limited(child, what);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{what} panicked:\n{err}");
    if !out.status.success() {
        assert!(
            !err.trim().is_empty(),
            "{what} failed ({}) without saying why",
            out.status
        );
    }
    out
}

/// Everything a user or the daemon does with a volume, each step limited
/// in time. Returns the stderr of every step that failed, for the caller's
/// checks on how refusals are worded.
fn exercise(base: &Path, cipher: &Path, passfile: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let note = |failures: &mut Vec<String>, what: &str, out: &Output| {
        if !out.status.success() {
            failures.push(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    };
    let mnt = base.join("mnt");
    let sock = base.join("ctl.sock");
    let _ = fs::remove_file(&sock);
    let pass = passfile.as_os_str();
    let c = cipher.as_os_str();

    // Mount in front, with a time limit on getting ready.
    let log = base.join("daemon.log");
    let logf = fs::File::create(&log).unwrap();
    let mut child = Command::new(bin())
        .arg("mount")
        .arg(cipher)
        .arg(&mnt)
        .arg("--passfile")
        .arg(passfile)
        .arg("--ctl-socket")
        .arg(&sock)
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mounted = loop {
        if is_mounted(&mnt) && std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            break true;
        }
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            force_unmount(&mnt);
            panic!(
                "mount hung; log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if mounted {
        // A write, a directory and a read through the mount, off this thread
        // so that a hang is caught.
        let m = mnt.clone();
        let io = std::thread::spawn(move || {
            let _ = fs::write(m.join("new.txt"), b"hello");
            let _ = fs::create_dir(m.join("newdir"));
            let _ = fs::read(m.join("sub/file.txt"));
            let _ = fs::read_dir(m.join("sub")).map(|d| d.count());
        });
        let t0 = Instant::now();
        while !io.is_finished() {
            if t0.elapsed() > LIMIT {
                force_unmount(&mnt);
                let _ = child.kill();
                panic!("I/O through the mount hung");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = sock.as_os_str();
        for (what, args) in [
            ("ctl rotate", vec!["rotate"]),
            ("ctl rewrap", vec!["rewrap"]),
            (
                "ctl grant create",
                vec![
                    "grant",
                    "create",
                    "--grantee",
                    "uid:4242",
                    "--ops",
                    "read",
                    "--path-prefix",
                    "/sub",
                ],
            ),
            ("ctl status", vec!["status"]),
        ] {
            let mut all: Vec<&OsStr> = vec!["ctl".as_ref(), "--socket".as_ref(), s];
            all.extend(args.iter().map(OsStr::new));
            let out = run_limited(&all, what);
            note(&mut failures, what, &out);
        }
        assert!(force_unmount(&mnt), "unmount failed");
        wait_limited(child, "daemon exit after unmount");
    } else {
        let _ = child.wait();
        failures.push(format!(
            "mount: {}",
            fs::read_to_string(&log).unwrap_or_default()
        ));
        assert!(
            !fs::read_to_string(&log).unwrap().contains("panicked"),
            "mount panicked"
        );
    }
    assert!(!is_mounted(&mnt), "a mount was left behind");

    let steps: Vec<(&str, Vec<&OsStr>)> = vec![
        (
            "info",
            vec!["info".as_ref(), c, "--passfile".as_ref(), pass],
        ),
        (
            "offline rotate",
            vec!["rotate".as_ref(), c, "--passfile".as_ref(), pass],
        ),
        (
            "fsck",
            vec!["fsck".as_ref(), c, "--passfile".as_ref(), pass],
        ),
        (
            "fsck --salvage",
            vec![
                "fsck".as_ref(),
                c,
                "--passfile".as_ref(),
                pass,
                "--salvage".as_ref(),
            ],
        ),
        (
            "passwd",
            vec![
                "passwd".as_ref(),
                c,
                "--passfile".as_ref(),
                pass,
                "--new-passfile".as_ref(),
                pass,
                "--kdf-memory-kib".as_ref(),
                "8192".as_ref(),
                "--kdf-iterations".as_ref(),
                "1".as_ref(),
            ],
        ),
        (
            "audit verify",
            vec![
                "audit".as_ref(),
                "verify".as_ref(),
                c,
                "--passfile".as_ref(),
                pass,
            ],
        ),
    ];
    for (what, args) in steps {
        let out = run_limited(&args, what);
        note(&mut failures, what, &out);
    }
    failures
}

/// A volume with a file in `/sub`, a grant and two key versions, copied
/// fresh for every case.
fn template(base: &Path) -> (PathBuf, PathBuf) {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::create_dir(fx.p("sub")).unwrap();
    fs::write(fx.p("sub/file.txt"), b"content").unwrap();
    assert_eq!(LONG_NAME.len(), 200);
    fs::write(fx.p(&format!("sub/{LONG_NAME}")), b"long").unwrap();
    let sock = fx.ctl_socket.clone();
    run_ok(
        Command::new(bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&sock)
            .arg("rotate"),
    );
    run_ok(
        Command::new(bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&sock)
            .args(["grant", "create", "--grantee", "uid:4243", "--ops", "read"])
            .args(["--path-prefix", "/sub"]),
    );
    fx.unmount();
    let cipher = base.join("template");
    run_ok(Command::new("cp").arg("-a").arg(&fx.cipher).arg(&cipher));
    let pass = base.join("passfile");
    fs::copy(&fx.passfile, &pass).unwrap();
    (cipher, pass)
}

fn run_cases(names: &[&str]) {
    let tmp = tempfile::Builder::new()
        .prefix("sealfs-tb.")
        .tempdir()
        .unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let (template, pass) = template(&base);
    let outside = Outside::new(&base);
    let before = outside.snapshot();
    for name in names {
        for what in PLANTS {
            let case = base.join("case");
            let _ = fs::remove_dir_all(&case);
            fs::create_dir(&case).unwrap();
            fs::create_dir(case.join("mnt")).unwrap();
            let cipher = case.join("cipher");
            run_ok(Command::new("cp").arg("-a").arg(&template).arg(&cipher));
            let at = resolve(&cipher, name);
            plant(&at, what, &outside);
            let failures = exercise(&case, &cipher, &pass);
            let after = outside.snapshot();
            assert_eq!(
                before, after,
                "{what:?} at {name}: something outside the cipher directory changed or was read"
            );
            assert!(
                !outside.dangling.exists(),
                "{what:?} at {name}: a file was created through a dangling symlink"
            );
            // A refusal names the object and what to do about it.
            for f in &failures {
                assert!(
                    !f.contains("Too many levels of symbolic links"),
                    "{what:?} at {name}: a raw ELOOP reached the user: {f}"
                );
            }
            assert!(
                sealfs_pids_mentioning(&cipher).is_empty(),
                "{what:?} at {name}: a sealfs process is left"
            );
        }
    }
}

#[test]
fn planted_objects_at_root_bookkeeping_names_are_never_followed() {
    run_cases(&ROOT_NAMES);
}

#[test]
fn planted_objects_in_subdirectories_and_the_audit_folder_are_never_followed() {
    let mut names = SUB_NAMES.to_vec();
    names.extend(AUDIT_NAMES);
    run_cases(&names);
}

/// The reproduction of the review: with the keyring's second copy gone, a
/// symlink at its temp name made a mount overwrite the symlink's target
/// with keyring bytes, and a symlink at `sealfs.lock` made root create a
/// file anywhere. Now the mount refuses, naming the object, and writes
/// nothing.
#[test]
fn keyring_temp_and_lock_symlinks_are_refused_with_a_clear_message() {
    let tmp = tempfile::Builder::new()
        .prefix("sealfs-tb.")
        .tempdir()
        .unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let (template, pass) = template(&base);
    let outside = Outside::new(&base);
    let before = outside.snapshot();
    let mnt = base.join("mnt");
    fs::create_dir(&mnt).unwrap();

    for (name, setup) in [
        ("sealfs.keyring.bak.tmp", "sealfs.keyring.bak"),
        ("sealfs.lock", ""),
    ] {
        let cipher = base.join(format!("cipher-{name}"));
        run_ok(Command::new("cp").arg("-a").arg(&template).arg(&cipher));
        if !setup.is_empty() {
            fs::remove_file(cipher.join(setup)).unwrap();
        }
        let target = if name == "sealfs.lock" {
            &outside.dangling
        } else {
            &outside.victim
        };
        let _ = fs::remove_file(cipher.join(name));
        std::os::unix::fs::symlink(target, cipher.join(name)).unwrap();
        let out = mount_expect_failure(&cipher, &mnt, &["--passfile".as_ref(), pass.as_os_str()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(name) && err.contains("symbolic link"),
            "the refusal should name {name} and say it is a symbolic link: {err}"
        );
        assert!(
            err.contains("Move it away"),
            "the refusal should say what to do: {err}"
        );
        assert_eq!(before, outside.snapshot(), "{name}: outside changed");
        assert!(!outside.dangling.exists(), "{name}: a file was created");
    }
}

/// docs/FORMAT.md §11: a directory a crash left half made (no record,
/// only a leftover temp file) is removed by `rmdir` through a mount; it
/// used to fail with ENOTEMPTY.
#[test]
fn rmdir_through_a_mount_removes_a_half_made_directory() {
    let mut fx = Fixture::new();
    fx.mount();
    fs::create_dir(fx.p("half")).unwrap();
    fs::create_dir(fx.p("keep")).unwrap();
    fx.unmount();
    let before: BTreeSet<PathBuf> = fs::read_dir(&fx.cipher)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("sealfs")
        })
        .collect();
    assert_eq!(before.len(), 2);
    // Which backing directory is `half`? Mount, mark `keep`, and look.
    fx.mount();
    fs::write(fx.p("keep/marker"), b"m").unwrap();
    fx.unmount();
    let half = before
        .iter()
        .find(|d| fs::read_dir(d).unwrap().count() == 2)
        .expect("the backing directory of /half")
        .clone();
    for r in ["sealfs.dir", "sealfs.dir.bak"] {
        fs::remove_file(half.join(r)).unwrap();
    }
    fs::write(half.join("sealfs.dir.tmp"), b"half-written record").unwrap();
    fx.mount();
    fs::remove_dir(fx.p("half")).expect("rmdir of a half-made directory");
    assert!(!half.exists());
    assert_eq!(fs::read(fx.p("keep/marker")).unwrap(), b"m");
}
