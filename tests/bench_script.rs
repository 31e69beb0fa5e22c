//! `contrib/bench.sh` produces the benchmark table the README shows: run in
//! a tiny configuration (16 MiB files, 1 s per timed job, 200 small files),
//! every workload row must carry a number for sealfs and the plain disk, a
//! gocryptfs column and ratio when gocryptfs is installed, fio's verify job
//! must pass, and nothing it mounted or started may outlive it.
//!
//! The figures themselves are not checked (a smoke run on a shared machine
//! measures nothing); this guards the script a user runs to get the table.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{force_unmount, have_tool, mount_points, pids_whose_cmdline, wait_until};

/// Mount points under `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Live processes (any program) whose command line mentions `dir`.
fn pids_mentioning(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_bytes();
    pids_whose_cmdline(|args| {
        args.iter()
            .any(|a| a.windows(needle.len()).any(|w| w == needle))
    })
}

/// Unmounts whatever the script may have left under its scratch directory
/// and kills what still runs there, also when the test fails.
struct ScratchGuard(PathBuf);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        for m in mounts_under(&self.0) {
            force_unmount(&m);
        }
        for pid in pids_mentioning(&self.0) {
            // SAFETY: plain kill(2) on a pid we found; no memory involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn is_number(cell: &str) -> bool {
    cell.parse::<f64>()
        .map(|v| v.is_finite() && v > 0.0)
        .unwrap_or(false)
}

#[test]
fn bench_script_prints_a_full_table_and_leaves_nothing_behind() {
    if !have_tool("fio") || !have_tool("python3") {
        eprintln!("SKIP: fio or python3 not installed (contrib/setup.sh installs them)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    let results = tmp.path().join("results");
    fs::create_dir(&scratch).unwrap();
    let _guard = ScratchGuard(scratch.clone());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/bench.sh");

    let out = Command::new("bash")
        .arg(&script)
        .args(["--runs", "1"])
        .env("SEALFS_BIN", common::bin())
        .env("BENCH_DIR", &scratch)
        .env("BENCH_RESULTS", &results)
        .env("TARBALL_CACHE", tmp.path())
        .env("SIZE", "16m")
        .env("RUNTIME", "1s")
        .env("NFILES", "200")
        .env("NTARFILES", "100")
        .env("FIO_TIMEOUT", "300")
        .output()
        .expect("run contrib/bench.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // bash reports its own errors as "SCRIPT: line N: ..."; none may appear.
    assert!(
        !stderr.contains(": line "),
        "bash errors from bench.sh:\n{stderr}"
    );

    let gocryptfs = have_tool("gocryptfs");
    let table: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let head = &table[0];
    assert_eq!(head[0], "workload", "{stdout}");
    let col = |name: &str| head.iter().position(|h| *h == name);
    let sealfs = col("sealfs").expect("a sealfs column");
    let goc = col("gocryptfs").expect("a gocryptfs column");
    let ratio = col("sealfs/gocryptfs").expect("a ratio column");
    let plain = head.len() - 2; // the backing filesystem, named by its type
    assert!(
        head[plain] != "gocryptfs" && head[plain] != "sealfs",
        "{stdout}"
    );

    let labels = [
        "seq write 1M (MiB/s)",
        "seq read 1M, cold (MiB/s)",
        "rand read 4k qd1 (IOPS)",
        "rand read 4k qd16 libaio (IOPS)",
        "rand write 4k + fsync (IOPS)",
        "mixed 70/30 rand r/w 4k, 2 jobs (IOPS)",
        "2 seq writers 1M (MiB/s)",
        "fio verify crc32c",
        "small files: create (s)",
        "small files: read, cold (s)",
        "small files: delete (s)",
        "untar source tree (s)",
    ];
    let rows = &table[1..];
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        labels,
        "{stdout}"
    );
    for row in rows {
        assert_eq!(row.len(), head.len(), "{stdout}");
        if row[0] == "fio verify crc32c" {
            assert_eq!(row[sealfs], "ok", "{stdout}");
            assert_eq!(row[plain], "ok", "{stdout}");
            if gocryptfs {
                assert_eq!(row[goc], "ok", "{stdout}");
            }
            continue;
        }
        assert!(
            is_number(row[sealfs]),
            "sealfs cell of {:?}:\n{stdout}",
            row[0]
        );
        assert!(
            is_number(row[plain]),
            "plain cell of {:?}:\n{stdout}",
            row[0]
        );
        if gocryptfs {
            assert!(
                is_number(row[goc]),
                "gocryptfs cell of {:?}:\n{stdout}",
                row[0]
            );
            assert!(is_number(row[ratio]), "ratio of {:?}:\n{stdout}", row[0]);
        } else {
            assert_eq!(row[goc], "-", "{stdout}");
        }
    }
    assert!(stdout.contains("Median of 1 run;"), "{stdout}");

    // The same table is kept with the raw results.
    let kept = fs::read_to_string(results.join("table.md")).unwrap();
    assert_eq!(kept.trim(), stdout.trim());
    assert!(fs::metadata(results.join("results.tsv")).unwrap().len() > 0);

    // Nothing mounted or running is left, and the scratch space is removed.
    assert!(
        mounts_under(&scratch).is_empty(),
        "left mounted: {:?}",
        mounts_under(&scratch)
    );
    assert!(
        wait_until(std::time::Duration::from_secs(5), || pids_mentioning(
            &scratch
        )
        .is_empty()),
        "left running: {:?}",
        pids_mentioning(&scratch)
    );
    let left: Vec<_> = fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}
