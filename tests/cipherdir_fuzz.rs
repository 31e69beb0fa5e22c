//! The cipher directory as a whole under random damage: a volume with files
//! of every shape (empty, one byte, chunk edges, several chunks, two groups,
//! sparse, in subdirectories, a long name) is damaged while unmounted —
//! bit flips, truncations, appended bytes (random or zero), zeroed ranges,
//! deleted, duplicated and swapped files, applied to random backing files
//! (file contents, directory records, long-name sidecars; the config,
//! keyring, audit log and grant store have their own tests) — then
//! mounted, every file read, and `fsck` run. Never a panic, a hang, or a
//! silent wrong read: every read returns exactly the bytes that were
//! written or fails with EIO, and nothing is written outside CIPHERDIR.
//!
//! `SEALFS_FUZZ_ROUNDS` (default 12) and `SEALFS_FUZZ_SEED` (default: from
//! the clock, printed) choose the run.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// Bound on reading the whole tree through the mount, and on fsck.
const HANG: Duration = Duration::from_secs(90);

/// Backing files the damage may hit.
fn targets(cipher: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(cipher, &mut |p, md| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let top = p.parent() == Some(cipher);
        let theirs = top
            && (name.starts_with("sealfs.toml")
                || name.starts_with("sealfs.keyring")
                || name.starts_with("sealfs.grants")
                || name == "sealfs.lock"
                || name == "sealfs.root");
        let audit = p.starts_with(cipher.join("sealfs.audit"));
        if md.is_file() && !theirs && !audit {
            out.push(p.to_path_buf());
        }
    });
    out.sort();
    out
}

/// One random change to the backing files; returns what it did.
fn mutate(rng: &mut Rng, cipher: &Path) -> String {
    let files = targets(cipher);
    if files.is_empty() {
        return "nothing to damage".into();
    }
    let f = &files[rng.below(files.len() as u64) as usize];
    let len = fs::metadata(f).map(|m| m.len()).unwrap_or(0);
    let at = |rng: &mut Rng| if len == 0 { 0 } else { rng.below(len) };
    let what = rng.below(9);
    let short = f.strip_prefix(cipher).unwrap().display().to_string();
    match what {
        0 | 1 => {
            let mut b = fs::read(f).unwrap();
            if b.is_empty() {
                return format!("flip in empty {short}: nothing");
            }
            let i = at(rng) as usize;
            b[i] ^= 1 << rng.below(8);
            fs::write(f, b).unwrap();
            format!("flip {short}@{i}")
        }
        2 => {
            let n = at(rng);
            fs::OpenOptions::new()
                .write(true)
                .open(f)
                .unwrap()
                .set_len(n)
                .unwrap();
            format!("truncate {short} {len}->{n}")
        }
        3 => {
            let n = 1 + rng.below(9000) as usize;
            let zeros = rng.below(2) == 0;
            let extra = if zeros { vec![0u8; n] } else { rng.bytes(n) };
            let mut b = fs::read(f).unwrap();
            b.extend_from_slice(&extra);
            fs::write(f, b).unwrap();
            format!(
                "append {n} {} bytes to {short}",
                if zeros { "zero" } else { "random" }
            )
        }
        4 | 5 => {
            let mut b = fs::read(f).unwrap();
            if b.is_empty() {
                return format!("zero in empty {short}: nothing");
            }
            let i = at(rng) as usize;
            let n = (1 + rng.below(6000) as usize).min(b.len() - i);
            b[i..i + n].fill(0);
            fs::write(f, b).unwrap();
            format!("zero {short}[{i}..{}]", i + n)
        }
        6 => {
            fs::remove_file(f).unwrap();
            format!("delete {short}")
        }
        7 => {
            let g = &files[rng.below(files.len() as u64) as usize];
            let dst = g.with_file_name(format!(
                "{}A",
                f.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches(".name")
            ));
            if dst.exists() || dst.to_string_lossy().contains("sealfs.dir") {
                fs::copy(f, g).unwrap();
                return format!(
                    "copy {short} over {}",
                    g.strip_prefix(cipher).unwrap().display()
                );
            }
            fs::copy(f, &dst).unwrap();
            format!(
                "duplicate {short} as {}",
                dst.strip_prefix(cipher).unwrap().display()
            )
        }
        _ => {
            let g = &files[rng.below(files.len() as u64) as usize];
            let (a, b) = (fs::read(f).unwrap(), fs::read(g).unwrap());
            fs::write(f, b).unwrap();
            fs::write(g, a).unwrap();
            format!(
                "swap {short} <-> {}",
                g.strip_prefix(cipher).unwrap().display()
            )
        }
    }
}

/// What reading one name through the mount gave.
#[derive(Debug)]
enum Seen {
    Dir,
    File(io::Result<Vec<u8>>),
    Listing(io::Error),
}

/// Reads every entry under `root` (in a thread, so a hang is caught).
fn read_all(root: &Path) -> BTreeMap<String, Seen> {
    let root = root.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) => {
                    out.insert(rel(&root, &d), Seen::Listing(e));
                    continue;
                }
            };
            for e in rd {
                let e = match e {
                    Ok(e) => e,
                    Err(err) => {
                        out.insert(rel(&root, &d), Seen::Listing(err));
                        break;
                    }
                };
                let p = e.path();
                match fs::symlink_metadata(&p) {
                    Ok(md) if md.is_dir() => {
                        out.insert(rel(&root, &p), Seen::Dir);
                        stack.push(p);
                    }
                    Ok(_) => {
                        out.insert(rel(&root, &p), Seen::File(fs::read(&p)));
                    }
                    Err(err) => {
                        out.insert(rel(&root, &p), Seen::File(Err(err)));
                    }
                }
            }
        }
        let _ = tx.send(out);
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("reading the mount hung for {HANG:?}"))
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap().to_string_lossy().into_owned()
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// Every file outside `cipher` under `base`, with its length.
fn outside(base: &Path, cipher: &Path, snapshot: &Path) -> BTreeMap<PathBuf, u64> {
    let mut m = BTreeMap::new();
    walk(base, &mut |p, md| {
        if !p.starts_with(cipher) && !p.starts_with(snapshot) && md.is_file() {
            let name = p.file_name().unwrap().to_string_lossy();
            if !name.starts_with("daemon.") {
                m.insert(p.to_path_buf(), md.len());
            }
        }
    });
    m
}

#[test]
fn random_damage_never_reads_wrong_bytes() {
    let rounds: u64 = std::env::var("SEALFS_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("SEALFS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "cipherdir fuzz: seed {seed}, {rounds} rounds (SEALFS_FUZZ_SEED / SEALFS_FUZZ_ROUNDS)"
    );
    let mut fx = Fixture::mounted();
    let mut rng = Rng::new(seed);
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    fs::create_dir_all(fx.p("d/e")).unwrap();
    let long = "L".repeat(190);
    for (i, size) in [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 5, 130 * 4096 + 7]
        .into_iter()
        .enumerate()
    {
        let rel = match i % 3 {
            0 => format!("f{i}"),
            1 => format!("d/f{i}"),
            _ => format!("d/e/f{i}"),
        };
        let data = rng.bytes(size);
        fs::write(fx.p(&rel), &data).unwrap();
        want.insert(rel, data);
    }
    let data = rng.bytes(5000);
    fs::write(fx.p(&format!("d/{long}")), &data).unwrap();
    want.insert(format!("d/{long}"), data);
    // Sparse: data, a hole over a group boundary, data.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(fx.p("sparse")).unwrap();
        let (a, b) = (rng.bytes(3000), rng.bytes(5000));
        f.write_all_at(&a, 0).unwrap();
        f.write_all_at(&b, 600_000).unwrap();
        let mut s = vec![0u8; 605_000];
        s[..3000].copy_from_slice(&a);
        s[600_000..].copy_from_slice(&b);
        want.insert("sparse".into(), s);
    }
    fx.unmount();
    let base = fx.root.path().canonicalize().unwrap();
    let snapshot = base.join("snapshot");
    copy_tree(&fx.cipher, &snapshot);
    let before = outside(&base, &fx.cipher, &snapshot);

    let (mut reads_ok, mut reads_eio, mut damaged, mut refused) = (0u64, 0u64, 0u64, 0u64);
    for round in 0..rounds {
        copy_tree(&snapshot, &fx.cipher);
        let n = 1 + rng.below(4);
        let done: Vec<String> = (0..n).map(|_| mutate(&mut rng, &fx.cipher)).collect();
        let ctx = format!("seed {seed} round {round}: {done:?}");
        // Damage to the root's two records refuses the mount (cleanly: an
        // exit with a message, checked below); anything else mounts.
        let mounted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fx.mount())).is_ok();
        let seen = if mounted {
            let seen = read_all(&fx.mnt);
            fx.unmount();
            seen
        } else {
            refused += 1;
            BTreeMap::new()
        };
        let log = fx.last_log();
        assert!(
            !log.contains("panicked"),
            "{ctx}: the daemon panicked:\n{log}"
        );
        for (rel, s) in &seen {
            match s {
                Seen::Dir => {}
                Seen::Listing(e) => {
                    // A directory whose two records are lost lists as EIO,
                    // or as ENOENT when its first copy is gone (the error
                    // of the first copy is the one reported).
                    assert!(
                        matches!(e.raw_os_error(), Some(libc::EIO | libc::ENOENT)),
                        "{ctx}: listing {rel}: {e}"
                    );
                }
                Seen::File(Ok(got)) => {
                    let w = want
                        .get(rel)
                        .unwrap_or_else(|| panic!("{ctx}: a file {rel} that was never written"));
                    assert!(
                        got == w,
                        "{ctx}: {rel} read {} bytes, want {} (first difference at {:?})",
                        got.len(),
                        w.len(),
                        got.iter().zip(w).position(|(a, b)| a != b)
                    );
                    reads_ok += 1;
                }
                Seen::File(Err(e)) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{ctx}: {rel}: {e}");
                    reads_eio += 1;
                    damaged += 1;
                }
            }
        }
        // fsck: runs to the end (no panic, no hang) with a meaningful code.
        let (tx, rx) = mpsc::channel();
        let (cipher, passfile) = (fx.cipher.clone(), fx.passfile.clone());
        std::thread::spawn(move || {
            let _ = tx.send(sealfs(&[
                "fsck".as_ref(),
                cipher.as_os_str(),
                "--passfile".as_ref(),
                passfile.as_os_str(),
            ]));
        });
        let out = rx
            .recv_timeout(HANG)
            .unwrap_or_else(|_| panic!("{ctx}: fsck hung"));
        let code = out.status.code();
        assert!(
            matches!(code, Some(0 | 1 | 4 | 8)),
            "{ctx}: fsck exited {:?}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            outside(&base, &fx.cipher, &snapshot),
            before,
            "{ctx}: something was written outside CIPHERDIR"
        );
    }
    eprintln!(
        "cipherdir fuzz: {rounds} rounds, {reads_ok} reads right, {reads_eio} EIO, {damaged} damaged files seen, {refused} mounts refused"
    );
}
