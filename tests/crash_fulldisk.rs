//! Crash consistency on a full disk: SIGKILL the daemon while writes fail
//! with ENOSPC.
//!
//! The volume's CIPHERDIR is an 8 MiB tmpfs (below the free-space margin,
//! so files open write-through and ENOSPC reaches write()). A workload
//! thread keeps a dozen files at more than the disk holds: appends of
//! 4 KiB–512 KiB, overwrites inside the size, truncations down, deletions
//! (which free space again), fsyncs; most rounds hit the full disk many
//! times. Every byte ever written at offset `o` of file `i` is
//! `pattern(i, o)`, never zero, and no write leaves a gap, so the files
//! have no holes. After a random delay the daemon is SIGKILLed, `sealfs
//! fsck --json` runs offline, the volume is mounted again, and every file
//! is read chunk by chunk:
//!
//! * a chunk reads back as the pattern (bytes that were written) or fails
//!   with EIO (a write that could not be stored or was cut by the kill):
//!   never zeros, never other bytes;
//! * a file is never larger than the largest size a write asked for; a
//!   read that ends before the size `stat` gave is a stray tail of a write
//!   cut by the kill (counted by `stat` until the next write, FORMAT.md
//!   §4.4), and fsck must report it (`size-tail`);
//! * fsck reports exactly the chunks that read EIO (its ranges, per path),
//!   and nothing on any other path.
//!
//! At the end `fsck --salvage` repairs everything and a second fsck is
//! clean. Mounted with `--no-audit`: the audit log's own full-disk rule
//! (fail-closed, with a reserve) is tested elsewhere; here every failure
//! is content.
//!
//! Seeded like tests/crash.rs: `SEALFS_CRASH_SEED`, `SEALFS_CRASH_ROUNDS`
//! (default 10).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const FILES: usize = 12;
const CHUNK: u64 = 4096;

/// The byte every write puts at offset `off` of file `i`: never zero.
fn pattern_byte(i: usize, off: u64) -> u8 {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ off;
    x = (x ^ (x >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    (x as u8) | 1
}

fn pattern(i: usize, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|k| pattern_byte(i, off + k)).collect()
}

fn name(i: usize) -> String {
    format!("f{i:02}")
}

fn close(f: File) -> io::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: we own fd (taken from the File).
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the workload shares with the checker.
struct Shared {
    killed: AtomicBool,
    /// Per file: the largest size any write asked for since it was made.
    max_size: Mutex<[u64; FILES]>,
    /// Writes that failed with ENOSPC (or EIO of a poisoned file).
    full_errors: Mutex<u64>,
    ops: Mutex<u64>,
}

/// Errors a write may meet on a full disk: ENOSPC, and EIO of a file
/// poisoned by an earlier failed write. After the kill: anything.
fn expected(e: &io::Error, killed: bool) -> bool {
    killed || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EIO))
}

/// One change of file `i`, open as `f`, by the workload's operation `op`
/// (8-99): an append, an overwrite inside the size, a truncation down,
/// or an fsync.
fn change(f: &File, i: usize, op: u64, rng: &mut Rng, sh: &Shared) -> io::Result<()> {
    let size = f.metadata()?.len();
    if op < 60 {
        // Append: at the end, no gap.
        let len = (1 + rng.below(128)) as usize * 4096 - rng.below(4096) as usize;
        {
            let mut m = sh.max_size.lock().unwrap();
            m[i] = m[i].max(size + len as u64);
        }
        f.write_all_at(&pattern(i, size, len), size)
    } else if op < 80 && size > 0 {
        let off = rng.below(size);
        let len = (rng.below(256 * 1024) + 1).min(size - off) as usize;
        f.write_all_at(&pattern(i, off, len), off)
    } else if op < 92 {
        f.set_len(rng.below(size + 1))
    } else {
        f.sync_all()
    }
}

fn workload(mnt: PathBuf, seed: u64, sh: Arc<Shared>) -> Option<String> {
    let mut rng = Rng::new(seed);
    while !sh.killed.load(Ordering::SeqCst) {
        let i = rng.below(FILES as u64) as usize;
        let p = mnt.join(name(i));
        let op = rng.below(100);
        let r: io::Result<()> = (|| {
            if op < 8 {
                return match fs::remove_file(&p) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                    r => r,
                };
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&p)?;
            let r = change(&f, i, op, &mut rng, &sh);
            let c = close(f);
            r.and(c)
        })();
        if let Err(e) = r {
            let killed = sh.killed.load(Ordering::SeqCst);
            if !expected(&e, killed) {
                return Some(format!("{}: op {op}: {e}", name(i)));
            }
            if !killed {
                *sh.full_errors.lock().unwrap() += 1;
            }
        } else {
            *sh.ops.lock().unwrap() += 1;
            if op < 8 {
                // Deleted: a new file of this name starts from nothing.
                sh.max_size.lock().unwrap()[i] = 0;
            }
        }
    }
    None
}

/// What reading every file found.
#[derive(Default)]
struct Found {
    /// Per file (`/fNN`): the chunks that read EIO.
    bad: BTreeMap<String, BTreeSet<u64>>,
    /// Files whose reads end before the size `stat` gives: a stray tail
    /// of a write cut by the kill, which `stat` counts until the file is
    /// next written (docs/FORMAT.md §4.4) and fsck reports (`size-tail`).
    short: BTreeSet<String>,
}

/// Reads every file chunk by chunk. Panics on a wrong byte, another
/// error, or a size no write asked for.
fn check(mnt: &Path, max: &[u64; FILES], what: &str) -> Found {
    let mut found = Found::default();
    for (i, &max_i) in max.iter().enumerate() {
        let p = mnt.join(name(i));
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => panic!("{what}: open {}: {e}", name(i)),
        };
        let size = f.metadata().unwrap().len();
        assert!(
            size <= max_i,
            "{what}: {} is {size} bytes, no write asked for more than {max_i}",
            name(i)
        );
        let mut buf = vec![0u8; CHUNK as usize];
        let mut k = 0u64;
        while k * CHUNK < size {
            let off = k * CHUNK;
            let want = CHUNK.min(size - off) as usize;
            match f.read_at(&mut buf[..want], off) {
                Ok(n) => {
                    if n < want {
                        found.short.insert(format!("/{}", name(i)));
                    }
                    if buf[..n] != pattern(i, off, n)[..] {
                        let at = (0..n)
                            .find(|&j| buf[j] != pattern_byte(i, off + j as u64))
                            .unwrap();
                        panic!(
                            "{what}: {} byte {} reads {:#04x}, was written as {:#04x} (zeros for lost data?)",
                            name(i),
                            off + at as u64,
                            buf[at],
                            pattern_byte(i, off + at as u64)
                        );
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    found
                        .bad
                        .entry(format!("/{}", name(i)))
                        .or_insert_with(BTreeSet::new)
                        .insert(k);
                }
                Err(e) => panic!("{what}: {} read at {off}: {e}", name(i)),
            }
            if found.short.contains(&format!("/{}", name(i))) {
                break;
            }
            k += 1;
        }
    }
    found
}

fn fsck(fx: &Fixture, extra: &[&str]) -> (Option<i32>, Value) {
    let (code, v) = fx.fsck_json(extra);
    assert!(!v.is_null(), "fsck printed no report");
    (code, v)
}

#[test]
fn sigkill_on_a_full_disk_never_reads_zeros_and_fsck_names_the_bad_ranges() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: mounting a tmpfs needs root");
        return;
    }
    let seed = crash_seed();
    let rounds: u64 = std::env::var("SEALFS_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    eprintln!("full-disk crash harness: seed {seed} (SEALFS_CRASH_SEED={seed}), {rounds} kills");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut fx = Fixture::new();
    // A small disk under the volume: a new volume on a tmpfs mounted over
    // the fixture's (the one below stays hidden and unused).
    let tmpfs = Tmpfs::mount(&fx.cipher, "8m");
    init_volume(&fx.cipher, &fx.passfile);
    let sh = Arc::new(Shared {
        killed: AtomicBool::new(false),
        max_size: Mutex::new([0; FILES]),
        full_errors: Mutex::new(0),
        ops: Mutex::new(0),
    });
    let mut eio_chunks = 0usize;
    let mut fsck_problems: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_fsck: Option<Value> = None;
    let mut short_reads = 0usize;
    for round in 0..=rounds {
        let what = format!("seed {seed}, round {round}");
        fx.mount_with(&["--no-audit"]);
        let max = *sh.max_size.lock().unwrap();
        let Found { bad, short } = check(&fx.mnt, &max, &what);
        if let Some(report) = last_fsck.take() {
            // The offline fsck after the kill saw the volume this mount reads.
            let mut reported: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
            let mut tails = BTreeSet::new();
            for p in report["problems"].as_array().unwrap() {
                let kind = p["kind"].as_str().unwrap().to_string();
                *fsck_problems.entry(kind.clone()).or_default() += 1;
                let path = p["path"].as_str().unwrap_or("").to_string();
                assert!(
                    (path.len() == 4 && path.starts_with("/f")) || kind == "temp-file",
                    "{what}: fsck reports {p} outside the workload's files"
                );
                if kind == "size-tail" {
                    tails.insert(path.clone());
                }
                for r in p["ranges"].as_array().unwrap() {
                    let (a, b) = (
                        r["first_chunk"].as_u64().unwrap(),
                        r["last_chunk"].as_u64().unwrap(),
                    );
                    reported.entry(path.clone()).or_default().extend(a..=b);
                }
            }
            assert!(
                short.is_subset(&tails),
                "{what}: reads of {short:?} end before their stat size, fsck found tails in {tails:?}"
            );
            short_reads += short.len();
            assert_eq!(
                reported, bad,
                "{what}: fsck's ranges (left) are not the chunks that read EIO (right): {report}"
            );
        }
        eio_chunks += bad.values().map(|s| s.len()).sum::<usize>();
        if round == rounds {
            break;
        }
        sh.killed.store(false, Ordering::SeqCst);
        let wseed = rng.next_u64();
        let (mnt, s2) = (fx.mnt.clone(), sh.clone());
        let worker = std::thread::spawn(move || workload(mnt, wseed, s2));
        std::thread::sleep(Duration::from_millis(200 + rng.below(1500)));
        sh.killed.store(true, Ordering::SeqCst);
        fx.kill_daemon();
        if let Some(err) = worker.join().expect("workload thread") {
            panic!("{what}: {err}\ndaemon log:\n{}", fx.last_log());
        }
        let (_, report) = fsck(&fx, &[]);
        assert!(
            report.get("error").is_none(),
            "{what}: fsck could not run: {report}"
        );
        last_fsck = Some(report);
    }
    fx.unmount();
    let (code, salvaged) = fsck(&fx, &["--salvage"]);
    assert!(
        matches!(code, Some(0) | Some(1)),
        "fsck --salvage: {salvaged}"
    );
    let (code, after) = fsck(&fx, &[]);
    assert_eq!(code, Some(0), "after salvage: {after}");
    eprintln!(
        "full-disk crash harness: seed {seed}: {rounds} kills, {} operations, {} writes failed on the full disk, {eio_chunks} chunk reads EIO over all rounds (all reported by fsck), {short_reads} stat sizes counting a stray tail, fsck problems {fsck_problems:?}; {:.1}s",
        sh.ops.lock().unwrap(),
        sh.full_errors.lock().unwrap(),
        started.elapsed().as_secs_f64()
    );
    drop(tmpfs);
}
