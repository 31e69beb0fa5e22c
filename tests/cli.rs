//! The `sealfs` command line: daemonized and foreground mounts, unmount,
//! key-file volumes and the documented exit codes.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn daemonized_mount_is_ready_on_exit_and_unmount_leaves_no_process() {
    let fx = Fixture::new();
    let errlog = fx.scratch.join("mount.stderr");
    let status = Command::new(bin())
        .arg("mount")
        .arg(&fx.cipher)
        .arg(&fx.mnt)
        .arg("--passfile")
        .arg(&fx.passfile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&errlog).unwrap())
        .status()
        .expect("run sealfs mount");
    // Checked before anything else: exit 0 must mean "mounted".
    let mounted_at_exit = is_mounted(&fx.mnt);
    // From here on a guard cleans up whatever happens.
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &errlog);
    assert_eq!(
        status.code(),
        Some(0),
        "daemonizing mount failed: {}",
        guard.log()
    );
    assert!(
        mounted_at_exit,
        "sealfs mount exited 0 before the mount appeared in /proc/mounts"
    );
    let pids = sealfs_pids_mentioning(&fx.cipher);
    assert_eq!(
        pids.len(),
        1,
        "expected one daemon for the cipherdir, found {pids:?}"
    );

    // It serves.
    fs::write(fx.p("hello"), b"daemon mode").unwrap();
    assert_eq!(fs::read(fx.p("hello")).unwrap(), b"daemon mode");

    // The daemon detached from the session (setsid) and the parent is gone.
    let stat = fs::read_to_string(format!("/proc/{}/stat", pids[0])).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let (sid, pid) = (fields[3].parse::<i32>().unwrap(), pids[0]);
    assert_eq!(sid, pid, "daemon is not a session leader");

    let out = sealfs(&["unmount".as_ref(), fx.mnt.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "sealfs unmount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&fx.mnt), "still mounted after sealfs unmount");
    let start = Instant::now();
    while !sealfs_pids_mentioning(&fx.cipher).is_empty() {
        assert!(
            start.elapsed() < TIMEOUT,
            "sealfs daemon still running {TIMEOUT:?} after unmount: {:?}",
            sealfs_pids_mentioning(&fx.cipher)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    guard.unmount();

    // The data survived; a second daemonized mount sees it.
    let out = sealfs(&[
        "mount".as_ref(),
        fx.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
    ]);
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &errlog);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(fx.p("hello")).unwrap(), b"daemon mode");
    guard.unmount();
    assert!(sealfs_pids_mentioning(&fx.cipher).is_empty());
}

#[test]
fn foreground_daemon_unmounts_on_sigterm_and_sigint() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let fx = Fixture::new();
        let log = fx.scratch.join("fg.log");
        let mut child = Command::new(bin())
            .arg("mount")
            .arg(&fx.cipher)
            .arg(&fx.mnt)
            .arg("--passfile")
            .arg(&fx.passfile)
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &log);
        let start = Instant::now();
        while !is_mounted(&fx.mnt) {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("foreground mount exited early ({st}): {}", guard.log());
            }
            assert!(start.elapsed() < TIMEOUT, "mount did not appear");
            std::thread::sleep(Duration::from_millis(10));
        }
        fs::write(fx.p("f"), b"x").unwrap();
        // SAFETY: signalling the child we spawned.
        unsafe { libc::kill(child.id() as i32, sig) };
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("foreground daemon ignored signal {sig}: {}", guard.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let still = is_mounted(&fx.mnt);
        assert!(
            !still && status.success(),
            "after signal {sig} the foreground daemon exited with {status} and the mount is {}; \
             it must unmount and exit 0. Log: {}",
            if still { "still there (dead)" } else { "gone" },
            guard.log()
        );
        guard.unmount();
    }
}

/// A termination signal ends even a busy mount: with a file held open in
/// it, the daemon detaches the mount lazily (it disappears from the mount
/// table at once), the open file stays readable, and the daemon exits 0
/// once the file is closed. A busy mount used to make it ignore the signal.
#[test]
fn sigterm_detaches_a_busy_mount_and_exits_when_it_is_released() {
    let fx = Fixture::new();
    let log = fx.scratch.join("fg.log");
    let mut child = Command::new(bin())
        .arg("mount")
        .arg(&fx.cipher)
        .arg(&fx.mnt)
        .arg("--passfile")
        .arg(&fx.passfile)
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &log);
    assert!(
        wait_until(TIMEOUT, || is_mounted(&fx.mnt)),
        "mount did not appear: {}",
        guard.log()
    );
    fs::write(fx.p("held"), b"still readable").unwrap();
    let mut held = fs::File::open(fx.p("held")).unwrap();
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(
        wait_until(TIMEOUT, || !is_mounted(&fx.mnt)),
        "the busy mount was not detached after SIGTERM: {}",
        guard.log()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon must serve the open file until it is closed"
    );
    let mut s = String::new();
    std::io::Read::read_to_string(&mut held, &mut s).unwrap();
    assert_eq!(s, "still readable");
    drop(held);
    let mut status = None;
    assert!(
        wait_until(TIMEOUT, || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "the daemon did not exit once the detached mount was released: {}",
        guard.log()
    );
    assert!(
        status.unwrap().success(),
        "exit {status:?}: {}",
        guard.log()
    );
    guard.unmount();
}

#[test]
fn mountpoint_problems_exit_10() {
    let fx = Fixture::new();
    let pass = fx.passfile.as_os_str();
    let try_mount =
        |mp: &std::path::Path| mount_expect_failure(&fx.cipher, mp, &["--passfile".as_ref(), pass]);
    let missing = fx.scratch.join("missing");
    let out = try_mount(&missing);
    assert_eq!(
        out.status.code(),
        Some(10),
        "missing mountpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = fx.scratch.join("file");
    fs::write(&file, b"").unwrap();
    let out = try_mount(&file);
    assert_eq!(
        out.status.code(),
        Some(10),
        "mountpoint is a file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = fx.scratch.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), b"").unwrap();
    let out = try_mount(&full);
    assert_eq!(
        out.status.code(),
        Some(10),
        "non-empty mountpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn not_a_volume_exits_23_and_init_refuses_existing_volume() {
    let fx = Fixture::new();
    let empty = fx.scratch.join("empty");
    fs::create_dir(&empty).unwrap();
    let out = mount_expect_failure(
        &empty,
        &fx.mnt,
        &["--passfile".as_ref(), fx.passfile.as_os_str()],
    );
    assert_eq!(
        out.status.code(),
        Some(23),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a sealfs volume"));

    // init over an existing volume fails and changes nothing.
    let before = fx.cipher_digest();
    let out = sealfs(&[
        "init".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
        "--kdf-memory-kib".as_ref(),
        "8192".as_ref(),
        "--kdf-iterations".as_ref(),
        "1".as_ref(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        before == fx.cipher_digest(),
        "init changed an existing volume"
    );

    // No secret and no terminal: a clear error, not a hang.
    let out = mount_expect_failure(&fx.cipher, &fx.mnt, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("passfile"));
}

#[test]
fn key_file_volume() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let (cipher, mnt, key) = (base.join("c"), base.join("m"), base.join("key"));
    fs::create_dir(&mnt).unwrap();
    let keybytes: Vec<u8> = Rng::new(0x4B).bytes(32);
    fs::write(&key, &keybytes).unwrap();
    let out = sealfs(&[
        "init".as_ref(),
        cipher.as_os_str(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log = base.join("log");
    let child = Command::new(bin())
        .arg("mount")
        .arg(&cipher)
        .arg(&mnt)
        .arg("--key-file")
        .arg(&key)
        .stdin(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let guard = Mounted::adopt_daemon(&cipher, &mnt, &log);
    assert!(child.success(), "{}", guard.log());
    fs::write(mnt.join("f"), b"key file volume").unwrap();
    guard.unmount();

    // A different key: exit 12. A short key file: exit 1.
    let wrong = base.join("wrong");
    fs::write(&wrong, [0u8; 32]).unwrap();
    let out = mount_expect_failure(&cipher, &mnt, &["--key-file".as_ref(), wrong.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let short = base.join("short");
    fs::write(&short, [0u8; 31]).unwrap();
    let out = mount_expect_failure(&cipher, &mnt, &["--key-file".as_ref(), short.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A passphrase on a key-file volume is a wrong secret.
    let pf = base.join("pf");
    fs::write(&pf, "some passphrase\n").unwrap();
    let out = mount_expect_failure(&cipher, &mnt, &["--passfile".as_ref(), pf.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The right key reads the data back.
    let out = sealfs(&[
        "mount".as_ref(),
        cipher.as_os_str(),
        mnt.as_os_str(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ]);
    let guard = Mounted::adopt_daemon(&cipher, &mnt, &log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"key file volume");
    guard.unmount();
}
