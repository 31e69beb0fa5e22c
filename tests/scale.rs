//! The daemon's open descriptors must not grow with the number of files the
//! kernel remembers: only directories hold one. A daemon limited to 256
//! descriptors serves a directory of 2,000 files, all stat'ed and read.

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, force_unmount, init_volume, is_mounted};

struct Daemon {
    child: Child,
    mnt: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        force_unmount(&self.mnt);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn many_files_with_few_descriptors() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("SKIP: prlimit (util-linux) not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cipher, mnt, pass) = (
        dir.path().join("c"),
        dir.path().join("m"),
        dir.path().join("p"),
    );
    fs::create_dir(&mnt).unwrap();
    fs::write(&pass, "pw for scale test\n").unwrap();
    init_volume(&cipher, &pass);
    let child = Command::new("prlimit")
        .arg("--nofile=256:256")
        .arg(bin())
        .args(["mount", "-f", "--passfile"])
        .arg(&pass)
        .arg("--ctl-socket")
        .arg(dir.path().join("ctl.sock"))
        .arg(&cipher)
        .arg(&mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        mnt: mnt.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "mount did not appear");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sub = mnt.join("many");
    fs::create_dir(&sub).unwrap();
    for i in 0..2000 {
        fs::write(sub.join(format!("f{i}")), format!("content {i}")).unwrap();
    }
    // Every file stays known to the kernel (stat) while more are opened.
    for i in 0..2000 {
        assert_eq!(
            fs::metadata(sub.join(format!("f{i}"))).unwrap().len(),
            format!("content {i}").len() as u64
        );
    }
    for i in (0..2000).step_by(7) {
        assert_eq!(
            fs::read_to_string(sub.join(format!("f{i}"))).unwrap(),
            format!("content {i}")
        );
    }
    assert_eq!(fs::read_dir(&sub).unwrap().count(), 2000);
    drop(d);
    assert!(!is_mounted(&mnt));
}
