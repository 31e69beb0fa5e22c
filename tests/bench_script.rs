//! `contrib/bench.sh` produces the benchmark table the README shows: run in
//! a tiny configuration (16 MiB files, 1 s per timed job, 200 small files,
//! smaller fixed-size fio files), every workload row must carry a number
//! for sealfs and the plain disk, a number for gocryptfs and securefs when
//! they are installed ("n/a" when not), the best peer of the row and the
//! direction-aware ratios against it and against the plain disk; fio's
//! verify job must pass; the space rows and the space-against-plaintext
//! table must be there; with `--requests` the per-file FUSE request counts
//! (one CREATE per created file, one UNLINK per deleted one) follow; and
//! nothing it mounted or started, no tracefs instance and no tracefs mount
//! of its own, may outlive it.
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

/// Where tracefs is mounted, per /proc/self/mounts.
fn tracefs_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "tracefs").then(|| f[1].to_string())
        })
        .collect()
}

/// Tracefs instances that fuse-requests.sh names after itself.
fn our_trace_instances() -> Vec<PathBuf> {
    tracefs_mounts()
        .iter()
        .flat_map(|m| {
            fs::read_dir(Path::new(m).join("instances"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                // sealfs-requests.<pid of fuse-requests.sh>.<fs>.<kind>: an
                // instance whose script still runs belongs to another run
                // (a benchmark beside the suite), not a leftover of ours.
                n.strip_prefix("sealfs-requests.")
                    .and_then(|r| r.split('.').next())
                    .is_some_and(|pid| !Path::new("/proc").join(pid).exists())
            })
        })
        .collect()
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

fn number(cell: &str) -> Option<f64> {
    cell.trim_matches('*')
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

fn is_number(cell: &str) -> bool {
    number(cell).is_some_and(|v| v > 0.0)
}

/// The markdown tables of `text`: each a list of rows (header first, the
/// `|---|` line dropped), each row a list of trimmed cells.
fn tables(text: &str) -> Vec<Vec<Vec<&str>>> {
    let mut all = Vec::new();
    let mut cur: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        if line.starts_with('|') {
            if !line.starts_with("|---") {
                cur.push(line.trim_matches('|').split('|').map(str::trim).collect());
            }
        } else if !cur.is_empty() {
            all.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        all.push(cur);
    }
    all
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
    let tracefs_before = tracefs_mounts();

    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .args(["--runs", "1", "--requests"])
        .env("SEALFS_BIN", common::bin())
        .env("BENCH_DIR", &scratch)
        .env("BENCH_RESULTS", &results)
        .env("TARBALL_CACHE", tmp.path())
        .env("SIZE", "16m")
        .env("RUNTIME", "1s")
        .env("NFILES", "200")
        .env("NTARFILES", "100")
        .env("REQUESTS_NFILES", "200")
        .env("RANDSIZE", "16m")
        .env("VERIFYSIZE", "8m")
        .env("FIO_TIMEOUT", "300")
        .output()
        .expect("run contrib/bench.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("bench.sh took {:.1} s", started.elapsed().as_secs_f64());
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
    let securefs = have_tool("securefs");
    let all = tables(&stdout);
    assert!(all.len() >= 2, "{stdout}");
    let table = &all[0];
    let head = &table[0];
    assert_eq!(head[0], "workload", "{stdout}");
    assert_eq!(head[1], "better", "{stdout}");
    let col = |name: &str| head.iter().position(|h| *h == name);
    let sealfs = col("sealfs").expect("a sealfs column");
    let goc = col("gocryptfs").expect("a gocryptfs column");
    let sec = col("securefs").expect("a securefs column");
    let best = col("best peer").expect("a best-peer column");
    let vs_best = col("sealfs/best peer").expect("a sealfs/best peer ratio column");
    // The backing filesystem is named by its type (ext4 here), as is the
    // ratio against it.
    let plain = best - 1;
    let plain_name = head[plain];
    assert!(
        !["gocryptfs", "securefs", "sealfs"].contains(&plain_name),
        "{stdout}"
    );
    let vs_plain = col(&format!("sealfs/{plain_name}")).expect("a sealfs/plain ratio column");
    assert_eq!(head.len(), vs_plain + 1, "{stdout}");

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
        "space, small files: apparent (KiB)",
        "space, small files: blocks (KiB)",
        "space, untar tree: apparent (KiB)",
        "space, untar tree: blocks (KiB)",
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
            assert_eq!(row[1], "-", "{stdout}");
            assert_eq!(row[sealfs], "ok", "{stdout}");
            assert_eq!(row[plain], "ok", "{stdout}");
            for (installed, c) in [(gocryptfs, goc), (securefs, sec)] {
                assert_eq!(row[c], if installed { "ok" } else { "n/a" }, "{stdout}");
            }
            continue;
        }
        let higher = row[0].ends_with("(MiB/s)") || row[0].ends_with("(IOPS)");
        assert_eq!(
            row[1],
            if higher { "higher" } else { "lower" },
            "direction of {:?}:\n{stdout}",
            row[0]
        );
        for (name, c) in [("sealfs", sealfs), ("plain", plain)] {
            assert!(is_number(row[c]), "{name} cell of {:?}:\n{stdout}", row[0]);
        }
        for (name, installed, c) in [("gocryptfs", gocryptfs, goc), ("securefs", securefs, sec)] {
            if installed {
                assert!(is_number(row[c]), "{name} cell of {:?}:\n{stdout}", row[0]);
            } else {
                assert_eq!(row[c], "n/a", "{name} cell of {:?}:\n{stdout}", row[0]);
            }
        }
        assert!(
            is_number(row[vs_plain]),
            "sealfs/plain of {:?}:\n{stdout}",
            row[0]
        );
        // The best peer is the better of the installed peers in this row's
        // direction, and the ratio is sealfs against it, > 1 = sealfs better.
        let peers: Vec<(&str, f64)> = [("gocryptfs", goc), ("securefs", sec)]
            .into_iter()
            .filter_map(|(n, c)| number(row[c]).map(|v| (n, v)))
            .collect();
        if peers.is_empty() {
            assert_eq!(row[best], "-", "{stdout}");
            assert_eq!(row[vs_best], "-", "{stdout}");
            continue;
        }
        let &(best_name, best_value) = peers
            .iter()
            .max_by(|a, b| {
                let o = a.1.partial_cmp(&b.1).unwrap();
                if higher {
                    o
                } else {
                    o.reverse()
                }
            })
            .unwrap();
        let tied = peers.iter().all(|p| p.1 == best_value);
        assert!(
            row[best] == best_name || tied,
            "best peer of {:?}:\n{stdout}",
            row[0]
        );
        // The ratio comes from the unrounded medians: compare its side of 1
        // with the printed cells only.
        let s = number(row[sealfs]).unwrap();
        let got = number(row[vs_best]).expect("a sealfs/best peer ratio");
        let sealfs_better = if higher {
            s > best_value
        } else {
            s < best_value
        };
        let sealfs_worse = if higher {
            s < best_value
        } else {
            s > best_value
        };
        assert!(
            !(sealfs_better && got < 1.0 || sealfs_worse && got > 1.0),
            "sealfs/best peer of {:?} is {got}:\n{stdout}",
            row[0]
        );
    }
    assert!(stdout.contains("Median of 1 run;"), "{stdout}");

    // The space against the plaintext: one ratio per cipher filesystem.
    let space = all
        .iter()
        .find(|t| t[0][0] == "space / plaintext")
        .unwrap_or_else(|| panic!("no space / plaintext table:\n{stdout}"));
    assert_eq!(
        space[1..].iter().map(|r| r[0]).collect::<Vec<_>>(),
        [
            "small files, apparent",
            "small files, blocks",
            "untar tree, apparent",
            "untar tree, blocks"
        ],
        "{stdout}"
    );
    for row in &space[1..] {
        for (i, h) in space[0].iter().enumerate().skip(1) {
            let missing = (*h == "gocryptfs" && !gocryptfs) || (*h == "securefs" && !securefs);
            if missing {
                assert_eq!(row[i], "n/a", "{stdout}");
            } else {
                assert!(is_number(row[i]), "space {h} of {:?}:\n{stdout}", row[0]);
            }
        }
    }

    // --requests: per-file FUSE request counts, or the reason there are none
    // (a kernel without the fuse tracepoints).
    if stderr.contains("has no fuse:fuse_request_send tracepoint") {
        eprintln!("NOTE: no fuse tracepoints on this kernel; request counts not checked");
    } else {
        let req = all
            .iter()
            .find(|t| t[0][..2] == ["phase", "request"])
            .unwrap_or_else(|| panic!("no FUSE request table:\n{stdout}\n{stderr}"));
        let rhead = &req[0];
        let count = |phase: &str, request: &str, fs: &str| -> &str {
            let c = rhead
                .iter()
                .position(|h| *h == fs)
                .expect("a column per filesystem");
            req.iter()
                .find(|r| r[0] == phase && r[1] == request)
                .map(|r| r[c])
                .unwrap_or_else(|| panic!("no {phase} {request} row:\n{stdout}"))
        };
        for (fs, installed) in [
            ("sealfs", true),
            ("gocryptfs", gocryptfs),
            ("securefs", securefs),
        ] {
            if !installed {
                assert_eq!(count("create", "CREATE", fs), "n/a", "{stdout}");
                continue;
            }
            // One CREATE per file made, one UNLINK per file removed.
            assert_eq!(count("create", "CREATE", fs), "1.00", "{fs}:\n{stdout}");
            assert_eq!(count("delete", "UNLINK", fs), "1.00", "{fs}:\n{stdout}");
            for phase in ["create", "read", "delete", "untar"] {
                assert!(
                    number(count(phase, "**total**", fs)).is_some_and(|v| v >= 1.0),
                    "{fs} {phase} total:\n{stdout}"
                );
            }
        }
        assert!(
            all.iter().any(|t| t[0][..2] == ["phase", "syscall"]),
            "no daemon syscall table:\n{stdout}"
        );
    }

    // Everything printed is kept with the raw results.
    let kept = fs::read_to_string(results.join("table.md")).unwrap();
    assert_eq!(kept.trim(), stdout.trim());
    assert!(fs::metadata(results.join("results.tsv")).unwrap().len() > 0);

    // Nothing mounted or running is left, no tracing instance, the tracefs
    // mounts as they were, and the scratch space is removed.
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
    assert!(
        our_trace_instances().is_empty(),
        "tracefs instances left: {:?}",
        our_trace_instances()
    );
    assert_eq!(tracefs_mounts(), tracefs_before, "tracefs mounts changed");
    let left: Vec<_> = fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}
