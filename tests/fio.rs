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

/// Every job file users are pointed at (contrib/fio/*.fio, the benchmark's
/// workloads) runs through a mount without errors and does I/O, at a small
/// SIZE and RUNTIME so that it is a smoke test, not a measurement.
#[test]
fn contrib_fio_job_files_run_on_a_mount() {
    if !fio_available() {
        eprintln!("SKIP: fio not installed (contrib/setup.sh installs it)");
        return;
    }
    let fx = Fixture::mounted();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/fio");
    let mut jobs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "fio"))
        .collect();
    jobs.sort();
    assert!(jobs.len() >= 8, "job files in {}: {jobs:?}", dir.display());
    let small = tempfile::tempdir().unwrap();
    for job in &jobs {
        // Some jobs name fixed sizes and counts: smaller here.
        let text = std::fs::read_to_string(job).unwrap();
        let text = text
            .replace("size=256m", "size=4m")
            .replace("size=64m", "size=4m")
            .replace("nrfiles=2000", "nrfiles=200")
            .replace("size=8000k", "size=800k");
        let copy = small.path().join(job.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        let out = Command::new("fio")
            .arg(format!("--directory={}", fx.mnt.display()))
            .arg("--output-format=json")
            .arg(&copy)
            .env("SIZE", "4m")
            .env("RUNTIME", "1s")
            .output()
            .expect("run fio");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed: {}\n{stdout}",
            job.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&stdout[stdout.find('{').unwrap_or(0)..]).expect("fio json");
        let results = v["jobs"].as_array().expect("jobs");
        assert!(!results.is_empty(), "{}: no jobs ran", job.display());
        for j in results {
            assert_eq!(j["error"], 0, "{}: {j}", job.display());
            let bytes = j["read"]["io_bytes"].as_u64().unwrap_or(0)
                + j["write"]["io_bytes"].as_u64().unwrap_or(0);
            assert!(
                bytes > 0,
                "{}: job {} did no I/O",
                job.display(),
                j["jobname"]
            );
        }
        for f in std::fs::read_dir(&fx.mnt).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
    }
}
