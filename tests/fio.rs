//! fio works in every common mode through a live mount, each job checking
//! its data with verify=crc32c: buffered and O_DIRECT, psync, libaio and
//! io_uring, fallocate none/native/posix, and mmap.

mod common;

use std::process::Command;

use common::Fixture;

fn fio_available() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn fio_verifies_in_every_common_mode() {
    if !fio_available() {
        eprintln!("SKIP: fio not installed (contrib/setup.sh installs it)");
        return;
    }
    let fx = Fixture::mounted();
    let modes: &[&[&str]] = &[
        &["--ioengine=psync", "--direct=0"],
        &["--ioengine=psync", "--direct=1"],
        &["--ioengine=libaio", "--iodepth=16", "--direct=1"],
        &["--ioengine=libaio", "--iodepth=16", "--direct=0"],
        &["--ioengine=io_uring", "--iodepth=16", "--direct=0"],
        &["--ioengine=io_uring", "--iodepth=16", "--direct=1"],
        &["--ioengine=psync", "--fallocate=none"],
        &["--ioengine=psync", "--fallocate=native"],
        &["--ioengine=psync", "--fallocate=posix"],
        &["--ioengine=mmap"],
    ];
    for (i, mode) in modes.iter().enumerate() {
        let out = Command::new("fio")
            .arg(format!("--name=m{i}"))
            .arg(format!("--directory={}", fx.mnt.display()))
            .args([
                "--size=4m",
                "--bs=4k",
                "--rw=randrw",
                "--verify=crc32c",
                "--do_verify=1",
            ])
            .args([
                "--verify_fatal=1",
                "--verify_state_save=0",
                "--output-format=json",
            ])
            .args(*mode)
            .output()
            .expect("run fio");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "fio {mode:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&stdout[stdout.find('{').unwrap_or(0)..]).expect("fio json");
        let job = &v["jobs"][0];
        assert_eq!(job["error"], 0, "fio {mode:?} reported an error: {job}");
        assert!(
            job["write"]["io_bytes"].as_u64().unwrap_or(0) > 0,
            "fio {mode:?} wrote nothing"
        );
        assert!(
            job["read"]["io_bytes"].as_u64().unwrap_or(0) > 0,
            "fio {mode:?} read nothing"
        );
        for f in std::fs::read_dir(&fx.mnt).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
    }
}
