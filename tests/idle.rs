//! `sealfs mount --idle DURATION`: an unused mount unmounts itself and the
//! daemon exits; an open file, ongoing requests, or a busy mount point (a
//! process's working directory inside) keep it mounted.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const IDLE: Duration = Duration::from_secs(2);

/// Waits up to `limit` for the mount to go away; returns when it went.
fn wait_unmounted(fx: &Fixture, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !is_mounted(&fx.mnt) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn idle_mount_unmounts_only_when_unused() {
    let mut fx = Fixture::new();
    fx.mount_with(&["--idle", "2s"]);

    // An open file keeps it mounted, however long nothing else happens.
    let f = fs::File::create(fx.p("held-open")).unwrap();
    std::thread::sleep(IDLE * 2);
    assert!(is_mounted(&fx.mnt), "unmounted while a file was open");
    drop(f);

    // Steady use keeps it mounted past the idle period.
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < IDLE + Duration::from_secs(1) {
        fs::write(fx.p(&format!("busy-{i}")), b"x").unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(300));
        assert!(is_mounted(&fx.mnt), "unmounted while in use");
    }

    // A process whose working directory is inside makes umount fail with
    // EBUSY: the mount stays (no lazy unmount) until the process is gone.
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .current_dir(&fx.mnt)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    std::thread::sleep(IDLE * 2);
    let still = is_mounted(&fx.mnt);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(still, "unmounted under a process's working directory");

    // One last use, then nothing: it goes, not before the idle period.
    fs::write(fx.p("last"), b"last").unwrap();
    let went = wait_unmounted(&fx, IDLE * 4);
    let Some(after) = went else {
        panic!(
            "still mounted {:?} after the last use; log:\n{}",
            IDLE * 4,
            fx.log()
        );
    };
    assert!(
        after >= IDLE - Duration::from_millis(100),
        "unmounted {after:?} after the last use, before the idle period {IDLE:?}"
    );
    let start = Instant::now();
    while fx.daemon_alive() {
        assert!(
            start.elapsed() < TIMEOUT,
            "daemon still running after idle unmount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The data is intact for the next mount.
    fx.mounted = None;
    fx.mount();
    assert_eq!(fs::read(fx.p("busy-0")).unwrap(), b"x");
    assert!(fx.p("held-open").exists());
    assert_eq!(fs::read(fx.p("last")).unwrap(), b"last");
    fx.unmount();
}

#[test]
fn idle_rejects_a_bad_duration() {
    let fx = Fixture::new();
    let out = sealfs(&[
        "mount".as_ref(),
        fx.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
        "--idle".as_ref(),
        "soon".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(2), "usage error expected");
    assert!(!is_mounted(&fx.mnt));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a duration like"), "{err}");
}
