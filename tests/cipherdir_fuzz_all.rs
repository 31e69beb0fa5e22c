//! The cipher directory as a whole is hostile input (issue 16): random
//! damage to random files of an unmounted volume, sealfs's own files
//! included (keyring, its copy, config, grants, audit segments, lock:
//! tests/cipherdir_fuzz.rs covers content, records and names in depth) — flipped bytes, cuts,
//! appended bytes (random, and the zero chunk that once read as a longer
//! file), zeroed ranges, deleted files, a symlink or a FIFO in place of a
//! file — then a mount, a read of everything, an unmount and an fsck.
//!
//! What must hold in every round: no panic (daemon, fsck), no hang (every
//! step is bounded), no silent wrong read (a read that succeeds returns
//! exactly the bytes written there; the only accepted exception is a file
//! cut to zero length, the one cut the format cannot see), nothing outside
//! CIPHERDIR created or changed (a planted symlink points at a victim).
//!
//! `SEALFS_FUZZ_SEED` replays a run; `SEALFS_FUZZ_ROUNDS` (default 30)
//! sets its length.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Plaintext path (relative to the mount) → content, for the tree the
/// rounds start from.
type Tree = BTreeMap<PathBuf, Vec<u8>>;

fn make_tree(fx: &Fixture, rng: &mut Rng) -> Tree {
    let mut tree = Tree::new();
    let sizes = [0usize, 1, 100, 4095, 4096, 4097, 12_000, 70_000, 600_000];
    for (i, size) in sizes.iter().enumerate() {
        let dir = if i % 3 == 0 { "" } else { "d/e/" };
        let name = if i == 4 {
            format!("{dir}{}", "L".repeat(200))
        } else {
            format!("{dir}f{i}")
        };
        tree.insert(PathBuf::from(name), rng.bytes(*size));
    }
    for (rel, data) in &tree {
        let p = fx.p(rel.to_str().unwrap());
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
    }
    std::os::unix::fs::symlink("f0", fx.p("link")).unwrap();
    tree
}

/// Every regular file in `dir`, recursively (the backing files to damage).
fn backing_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut |p, md| {
        if md.is_file() {
            out.push(p.to_path_buf());
        }
    });
    out.sort();
    out
}

/// One piece of damage; returns what was done (for the failure message)
/// and whether it cut a file to zero length.
fn damage(rng: &mut Rng, file: &Path, victim: &Path) -> (String, bool) {
    let mut bytes = fs::read(file).unwrap();
    let len = bytes.len();
    let name = file.display();
    let (what, to_zero) = match rng.below(9) {
        0 | 1 if len > 0 => {
            let at = rng.below(len as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
            (format!("flip a bit at {at} of {name}"), false)
        }
        2 if len > 0 => {
            let at = rng.below(len as u64) as usize;
            bytes.truncate(at);
            (format!("cut {name} to {at} bytes"), at == 0)
        }
        3 => {
            let n = 1 + rng.below(5000) as usize;
            let extra = rng.bytes(n);
            bytes.extend_from_slice(&extra);
            (
                format!("append {} random bytes to {name}", extra.len()),
                false,
            )
        }
        4 => {
            bytes.extend_from_slice(&[0u8; 4096]);
            (format!("append 4096 zero bytes to {name}"), false)
        }
        5 if len > 0 => {
            let at = rng.below(len as u64) as usize;
            let n = (1 + rng.below(5000) as usize).min(len - at);
            bytes[at..at + n].fill(0);
            (format!("zero {n} bytes at {at} of {name}"), false)
        }
        6 => {
            fs::remove_file(file).unwrap();
            return (format!("delete {name}"), false);
        }
        7 => {
            fs::remove_file(file).unwrap();
            std::os::unix::fs::symlink(victim, file).unwrap();
            return (
                format!("replace {name} with a symlink to the victim"),
                false,
            );
        }
        _ => {
            fs::remove_file(file).unwrap();
            let c = cpath(file);
            // SAFETY: mkfifo(3) with a valid C string.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            return (format!("replace {name} with a FIFO"), false);
        }
    };
    fs::write(file, &bytes).unwrap();
    (what, to_zero)
}

/// Reads every file under the mount on a thread of its own, so a hang is
/// a failure, not a stuck test. Returns path → read result.
fn read_everything(mnt: &Path) -> BTreeMap<PathBuf, Result<Vec<u8>, i32>> {
    let (tx, rx) = mpsc::channel();
    let root = mnt.to_path_buf();
    std::thread::spawn(move || {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(md) = fs::symlink_metadata(&p) else {
                    continue;
                };
                let rel = p.strip_prefix(&root).unwrap().to_path_buf();
                if md.is_dir() {
                    stack.push(p);
                } else if md.is_file() {
                    let r = fs::File::open(&p).and_then(|mut f| {
                        let mut v = Vec::new();
                        f.read_to_end(&mut v).map(|_| v)
                    });
                    out.insert(rel, r.map_err(|e| e.raw_os_error().unwrap_or(-1)));
                } else if md.file_type().is_symlink() {
                    let _ = fs::read_link(&p);
                }
            }
        }
        let _ = tx.send(out);
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("reading the damaged volume hung for 60 s")
}

fn fsck(cipher: &Path, passfile: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(bin())
        .args([
            "fsck".as_ref(),
            cipher.as_os_str(),
            "--passfile".as_ref(),
            passfile.as_os_str(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let done = wait_until(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        panic!("fsck of the damaged volume hung for 60 s");
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

#[test]
fn random_damage_to_the_cipher_dir_never_reads_back_wrong() {
    let seed = std::env::var("SEALFS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let rounds: u64 = std::env::var("SEALFS_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    eprintln!(
        "cipher-dir fuzz: seed {seed} (replay with SEALFS_FUZZ_SEED={seed}), {rounds} rounds"
    );
    let mut rng = Rng::new(seed);

    let mut fx = Fixture::new();
    fx.mount();
    let tree = make_tree(&fx, &mut rng);
    fx.unmount();
    let pristine = fx.scratch.join("pristine");
    copy_tree(&fx.cipher, &pristine);

    let victim = fx.scratch.join("victim");
    fs::write(&victim, b"outside the cipher dir").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let victim_before = fs::metadata(&victim).unwrap();

    let mut mounted_rounds = 0;
    let mut reads_refused = 0;
    for round in 0..rounds {
        copy_tree(&pristine, &fx.cipher);
        let files = backing_files(&fx.cipher);
        let mut done = Vec::new();
        let mut cut_to_zero = false;
        for _ in 0..=rng.below(3) {
            let f = &files[rng.below(files.len() as u64) as usize];
            if fs::symlink_metadata(f)
                .map(|m| m.is_file())
                .unwrap_or(false)
            {
                let (what, zero) = damage(&mut rng, f, &victim);
                cut_to_zero |= zero;
                done.push(what);
            }
        }
        let ctx = format!("seed {seed}, round {round}: {}", done.join("; "));

        let log = fx.scratch.join(format!("daemon.{round}.log"));
        let secret: [&OsStr; 2] = ["--passfile".as_ref(), fx.passfile.as_os_str()];
        match Mounted::try_start(&fx.cipher, &fx.mnt, &secret, &[], &log) {
            Err(why) => {
                assert!(
                    !why.contains("panicked"),
                    "{ctx}: the mount panicked: {why}"
                );
                assert!(why.contains("exited (exit status:"), "{ctx}: {why}");
            }
            Ok(m) => {
                mounted_rounds += 1;
                let read = read_everything(&fx.mnt);
                for (rel, r) in &read {
                    match (r, tree.get(rel)) {
                        (Ok(got), Some(want)) => assert!(
                            got == want || (got.is_empty() && cut_to_zero),
                            "{ctx}: {} read back {} bytes without an error, want {} ({})",
                            rel.display(),
                            got.len(),
                            want.len(),
                            if got.len() == want.len() {
                                "same length, other bytes"
                            } else {
                                "another length"
                            }
                        ),
                        (Ok(got), None) => {
                            panic!("{ctx}: {} appeared ({} bytes)", rel.display(), got.len())
                        }
                        (Err(errno), _) => {
                            assert_eq!(*errno, libc::EIO, "{ctx}: {} failed", rel.display());
                            reads_refused += 1;
                        }
                    }
                }
                let daemon_log = m.log();
                m.unmount();
                assert!(
                    !daemon_log.contains("panicked"),
                    "{ctx}: the daemon panicked:\n{daemon_log}"
                );
            }
        }
        let (code, out) = fsck(&fx.cipher, &fx.passfile);
        assert!(
            code.is_some() && code != Some(101) && !out.contains("panicked"),
            "{ctx}: fsck crashed ({code:?}):\n{out}"
        );
        let v = fs::metadata(&victim).unwrap();
        assert_eq!(
            (fs::read(&victim).unwrap(), v.mtime(), v.ino()),
            (
                b"outside the cipher dir".to_vec(),
                victim_before.mtime(),
                victim_before.ino()
            ),
            "{ctx}: the victim outside CIPHERDIR changed"
        );
        let strays: Vec<_> = fs::read_dir(&fx.scratch)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !(n == "pristine" || n == "victim" || n.starts_with("daemon.")))
            .collect();
        assert!(
            strays.is_empty(),
            "{ctx}: files appeared outside CIPHERDIR: {strays:?}"
        );
    }
    eprintln!(
        "cipher-dir fuzz: {rounds} rounds, {mounted_rounds} mounted, {reads_refused} reads refused with EIO"
    );
    assert!(
        mounted_rounds > 0,
        "no round mounted: the damage is never to content alone"
    );
}
