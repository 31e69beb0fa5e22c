//! Issue 21.4: Ctrl-C with a file open. The daemon says which processes
//! hold the mount (pid and command, from /proc), a second signal ends it
//! at once (no daemon left behind), and the volume mounts again.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn a_second_sigint_ends_a_busy_mount_and_names_what_held_it() {
    let mut fx = Fixture::new();
    let log = fx.scratch.join("fg.log");
    let mut daemon = Command::new(bin())
        .arg("mount")
        .arg(&fx.cipher)
        .arg(&fx.mnt)
        .arg("--passfile")
        .arg(&fx.passfile)
        .arg("-f")
        .stdin(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &log);
    assert!(wait_until(TIMEOUT, || is_mounted(&fx.mnt)));
    fs::write(fx.p("held"), b"x").unwrap();
    // A process holding a file open under the mount.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3<'{}'; exec sleep 60",
            fx.p("held").display()
        ))
        .spawn()
        .unwrap();
    assert!(wait_until(TIMEOUT, || fs::read_dir(format!(
        "/proc/{}/fd",
        holder.id()
    ))
    .map(|d| d
        .flatten()
        .any(|e| fs::read_link(e.path()).is_ok_and(|p| p.starts_with(&fx.mnt))))
    .unwrap_or(false)));

    // Ctrl-C: the daemon names the holder and stays to serve it.
    // SAFETY: signalling a child we spawned.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGINT) };
    let named = format!("pid {} (sleep", holder.id());
    assert!(
        wait_until(TIMEOUT, || fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&named)),
        "the holder is not named: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("again"),
        "no word of the second signal: {text}"
    );
    assert!(daemon.try_wait().unwrap().is_none());

    // Ctrl-C again: it ends now.
    // SAFETY: as above.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGINT) };
    assert!(
        wait_until(TIMEOUT, || matches!(daemon.try_wait(), Ok(Some(_)))),
        "a second SIGINT did not end the daemon: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!is_mounted(&fx.mnt));
    assert!(
        sealfs_pids_mentioning(&fx.cipher).is_empty(),
        "a daemon is left"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    drop(guard);

    // And the volume mounts again, with its content.
    fx.mount();
    assert_eq!(fs::read(fx.p("held")).unwrap(), b"x");
    fx.unmount();
}
