//! Crash consistency: SIGKILL the daemon at random moments of a mixed
//! workload and check what survives.
//!
//! One volume lives through every kill point. Each round mounts it in the
//! foreground (`sealfs mount -f`, a child of this test), checks it against
//! the model kept in this process (outside the mount), and runs a workload
//! thread (create/overwrite, append, write at an offset, truncate, rename of
//! files and directories, mkdir/rmdir, unlink, `sealfs ctl rotate`,
//! `sealfs ctl rewrap --background`, `sealfs ctl grant create/revoke`) while the main thread sleeps a random
//! time and then SIGKILLs the daemon, detaches the dead mount
//! (`fusermount3 -uz`), runs `sealfs fsck --json` offline, remounts, and
//! checks:
//!
//! * every file that was not being modified at the kill has its exact
//!   content (the model's bytes);
//! * every directory lists exactly the names the model has (none lost, none
//!   invented), apart from the one operation in flight;
//! * the operation in flight left its old or its new state: a rename shows
//!   the file (with its exact content) at one of the two names, a directory
//!   rename the whole subtree at one of them, an unlink the file or
//!   nothing; only a write in flight may leave mixed or unreadable content;
//! * the keyring and config load (the mount and fsck open them), and fsck
//!   reports at most the paths of the operation in flight (plus leftover
//!   temp files, which salvage removes);
//! * the live grants are exactly those created and not revoked, apart
//!   from the grant operation in flight (its old or its new state);
//! * the audit log verifies offline (`sealfs audit verify`) after every
//!   kill and never loses a record (its count never goes down).
//!
//! What counts as durable (see README, "Crash safety"): the daemon writes
//! to the backing files when the kernel hands it the data; with the
//! writeback cache that is at the latest when `close()` or `fsync()`
//! returns. So an operation is *done* once its last call returned: for a
//! write, its `close` (checked, not dropped). A SIGKILL of the daemon keeps
//! everything done (it is in the backing filesystem); a power loss keeps
//! what was fsync'd. This harness tests the daemon kill.
//!
//! Half the kills come at a random moment, the other half are aimed 0-3 ms
//! into an operation of a chosen kind (rename, mkdir/rmdir, unlink, rotate,
//! rewrap), which a random moment rarely hits. When fsck finds something,
//! `fsck --salvage` runs on it and a second fsck must then find nothing
//! but what cannot be repaired on the path in flight.
//!
//! Seeded: the seed is printed and `SEALFS_CRASH_SEED` replays the same
//! workload and kill plan (the kill timing itself varies with the machine);
//! `SEALFS_CRASH_ROUNDS` sets the number of kill points (default 60).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// The operation in flight (at most one: a single workload thread).
#[derive(Clone)]
enum Pending {
    /// Create, overwrite, append, write at an offset, or truncate.
    Write {
        path: String,
        old: Option<Vec<u8>>,
    },
    Unlink {
        path: String,
    },
    RenameFile {
        from: String,
        to: String,
    },
    RenameDir {
        from: String,
        to: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Rotate,
    Rewrap,
    /// `sealfs ctl grant create` for a prefix.
    GrantCreate {
        prefix: String,
    },
    /// `sealfs ctl grant revoke`.
    GrantRevoke {
        id: String,
    },
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pending::Write { path, old } => write!(
                f,
                "Write {path} (was {})",
                old.as_ref()
                    .map(|o| format!("{} bytes", o.len()))
                    .unwrap_or_else(|| "absent".into())
            ),
            Pending::Unlink { path } => write!(f, "Unlink {path}"),
            Pending::RenameFile { from, to } => write!(f, "RenameFile {from} -> {to}"),
            Pending::RenameDir { from, to } => write!(f, "RenameDir {from} -> {to}"),
            Pending::Mkdir { path } => write!(f, "Mkdir {path}"),
            Pending::Rmdir { path } => write!(f, "Rmdir {path}"),
            Pending::Rotate => write!(f, "Rotate"),
            Pending::Rewrap => write!(f, "Rewrap"),
            Pending::GrantCreate { prefix } => write!(f, "GrantCreate {prefix}"),
            Pending::GrantRevoke { id } => write!(f, "GrantRevoke {id}"),
        }
    }
}

impl Pending {
    fn paths(&self) -> Vec<&str> {
        match self {
            Pending::Write { path, .. }
            | Pending::Unlink { path }
            | Pending::Mkdir { path }
            | Pending::Rmdir { path } => vec![path],
            Pending::RenameFile { from, to } | Pending::RenameDir { from, to } => vec![from, to],
            Pending::Rotate
            | Pending::Rewrap
            | Pending::GrantCreate { .. }
            | Pending::GrantRevoke { .. } => vec![],
        }
    }
}

#[derive(Debug, Default)]
struct Model {
    /// Relative path → exact content.
    files: BTreeMap<String, Vec<u8>>,
    /// Relative paths of directories ("" is the root).
    dirs: BTreeSet<String>,
    /// Entries an interrupted operation left unreadable and unremovable:
    /// never touched again, allowed in fsck's report.
    poisoned: BTreeSet<String>,
    pending: Option<Pending>,
    /// Live grants: id → path prefix.
    grants: BTreeMap<String, String>,
    ops_done: u64,
    /// In-flight entries the kill left unreadable (allowed).
    torn: u64,
    /// Completed operations (for failure messages).
    history: Vec<(Pending, String)>,
}

fn parent(p: &str) -> &str {
    p.rfind('/').map(|i| &p[..i]).unwrap_or("")
}

fn child(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn under(p: &str, dir: &str) -> bool {
    p.starts_with(dir) && p.as_bytes().get(dir.len()) == Some(&b'/')
}

impl Model {
    fn children(&self, dir: &str) -> BTreeSet<String> {
        let names = self
            .files
            .keys()
            .chain(self.dirs.iter())
            .chain(self.poisoned.iter())
            .filter(|p| !p.is_empty() && parent(p) == dir);
        names
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .collect()
    }

    fn occupied(&self, p: &str) -> bool {
        self.files.contains_key(p) || self.dirs.contains(p) || self.poisoned.contains(p)
    }

    fn has_poison_under(&self, dir: &str) -> bool {
        self.poisoned.iter().any(|p| under(p, dir))
    }

    fn move_subtree(&mut self, from: &str, to: &str) {
        let re = |p: &String| -> Option<String> {
            if p == from {
                Some(to.to_string())
            } else if under(p, from) {
                Some(format!("{to}{}", &p[from.len()..]))
            } else {
                None
            }
        };
        let files: Vec<_> = self
            .files
            .keys()
            .filter_map(|p| re(p).map(|n| (p.clone(), n)))
            .collect();
        for (o, n) in files {
            let c = self.files.remove(&o).unwrap();
            self.files.insert(n, c);
        }
        let dirs: Vec<_> = self
            .dirs
            .iter()
            .filter_map(|p| re(p).map(|n| (p.clone(), n)))
            .collect();
        for (o, n) in dirs {
            self.dirs.remove(&o);
            self.dirs.insert(n);
        }
    }
}

/// `close(2)` with its result: with the writeback cache, a failed
/// write-back is reported here, which `drop(File)` would swallow.
fn close(f: File) -> io::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: we own fd and close it once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn file_names(rng: &mut Rng) -> String {
    match rng.below(12) {
        // A long name (sidecar) now and then.
        0 => format!("{}{}", "L".repeat(190), rng.below(3)),
        n => format!("f{}", n % 8),
    }
}

struct Workload {
    mnt: std::path::PathBuf,
    sock: std::path::PathBuf,
    model: Arc<Mutex<Model>>,
    killed: Arc<AtomicBool>,
    round: u64,
}

impl Workload {
    fn abs(&self, rel: &str) -> std::path::PathBuf {
        self.mnt.join(rel)
    }

    /// Picks the next operation against the model and marks it in flight.
    fn plan(&self, rng: &mut Rng) -> Option<(Pending, Vec<u8>, u64)> {
        let mut m = self.model.lock().unwrap();
        let dirs: Vec<String> = m.dirs.iter().cloned().collect();
        let files: Vec<String> = m.files.keys().cloned().collect();
        let pick = |rng: &mut Rng, v: &[String]| v[rng.below(v.len() as u64) as usize].clone();
        let arg = rng.next_u64();
        let op = match rng.below(100) {
            0..=29 => {
                let dir = pick(rng, &dirs);
                let p = child(&dir, &file_names(rng));
                if m.dirs.contains(&p)
                    || m.poisoned.contains(&p)
                    || m.files.len() >= 30 && !m.files.contains_key(&p)
                {
                    return None;
                }
                let old = m.files.get(&p).cloned();
                Pending::Write { path: p, old }
            }
            30..=54 if !files.is_empty() => {
                let p = pick(rng, &files);
                let old = m.files.get(&p).cloned();
                Pending::Write { path: p, old }
            }
            55..=64 if !files.is_empty() => {
                let from = pick(rng, &files);
                let to = child(&pick(rng, &dirs), &file_names(rng));
                if from == to || m.dirs.contains(&to) || m.poisoned.contains(&to) {
                    return None;
                }
                Pending::RenameFile { from, to }
            }
            65..=70 if dirs.len() > 1 => {
                let from = pick(rng, &dirs);
                let to = child(&pick(rng, &dirs), &format!("d{}", rng.below(6)));
                if from.is_empty()
                    || m.occupied(&to)
                    || to == from
                    || under(&to, &from)
                    || m.has_poison_under(&from)
                    || to.matches('/').count() > 3
                {
                    return None;
                }
                Pending::RenameDir { from, to }
            }
            71..=78 => {
                let p = child(&pick(rng, &dirs), &format!("d{}", rng.below(6)));
                if m.occupied(&p) || m.dirs.len() >= 10 || p.matches('/').count() > 3 {
                    return None;
                }
                Pending::Mkdir { path: p }
            }
            79..=82 => {
                let p = pick(rng, &dirs);
                if p.is_empty() || !m.children(&p).is_empty() {
                    return None;
                }
                Pending::Rmdir { path: p }
            }
            83..=91 if !files.is_empty() => Pending::Unlink {
                path: pick(rng, &files),
            },
            92..=93 => Pending::Rotate,
            94..=95 => match m.grants.keys().nth(rng.below(4) as usize) {
                Some(id) if m.grants.len() >= 3 || rng.below(2) == 0 => {
                    Pending::GrantRevoke { id: id.clone() }
                }
                _ => Pending::GrantCreate {
                    prefix: format!("/g{}", rng.below(1000)),
                },
            },
            96..=99 => Pending::Rewrap,
            _ => return None,
        };
        m.pending = Some(op.clone());
        // Content of a write, decided now (kept outside the mount).
        let data = match &op {
            Pending::Write { .. } => {
                let n = match rng.below(10) {
                    0 => 0,
                    1 => 520_000 + rng.below(20_000) as usize, // crosses a chunk group
                    2..=5 => rng.below(4096 * 3) as usize,
                    _ => rng.below(60_000) as usize,
                };
                rng.bytes(n)
            }
            _ => Vec::new(),
        };
        Some((op, data, arg))
    }

    /// Runs one planned operation; on success updates the model.
    fn run(&self, op: &Pending, data: &[u8], arg: u64) -> io::Result<()> {
        match op {
            Pending::Write { path, old } => {
                let p = self.abs(path);
                let old_bytes = old.clone().unwrap_or_default();
                // How: 0 overwrite, 1 append, 2 write at an offset, 3 truncate.
                let how = if old.is_none() { 0 } else { arg % 4 };
                let new = match how {
                    0 => {
                        let f = OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .open(&p)?;
                        let mut off = 0;
                        let mut step = 1 + (arg as usize >> 8) % 70_000;
                        while off < data.len() {
                            let end = (off + step).min(data.len());
                            (&f).write_all(&data[off..end])?;
                            off = end;
                            step = step.max(4096);
                        }
                        if arg & 0x10 != 0 {
                            f.sync_all()?;
                        }
                        close(f)?;
                        data.to_vec()
                    }
                    1 => {
                        let f = OpenOptions::new().append(true).open(&p)?;
                        (&f).write_all(data)?;
                        close(f)?;
                        let mut n = old_bytes;
                        n.extend_from_slice(data);
                        n
                    }
                    2 => {
                        let off = (arg >> 20) % (old_bytes.len() as u64 + 8192);
                        let piece = &data[..data.len().min(20_000)];
                        let f = OpenOptions::new().write(true).open(&p)?;
                        f.write_all_at(piece, off)?;
                        if arg & 0x10 != 0 {
                            f.sync_data()?;
                        }
                        close(f)?;
                        let mut n = old_bytes;
                        let end = off as usize + piece.len();
                        // (An empty pwrite past the end does not extend the file.)
                        if n.len() < end && !piece.is_empty() {
                            n.resize(end, 0);
                        }
                        if !piece.is_empty() {
                            n[off as usize..end].copy_from_slice(piece);
                        }
                        n
                    }
                    _ => {
                        let len = (arg >> 24) % (old_bytes.len() as u64 * 2 + 4097);
                        let f = OpenOptions::new().write(true).open(&p)?;
                        f.set_len(len)?;
                        close(f)?;
                        let mut n = old_bytes;
                        n.resize(len as usize, 0);
                        n
                    }
                };
                let mut m = self.model.lock().unwrap();
                m.files.insert(path.clone(), new);
            }
            Pending::Unlink { path } => {
                fs::remove_file(self.abs(path))?;
                self.model.lock().unwrap().files.remove(path);
            }
            Pending::RenameFile { from, to } => {
                fs::rename(self.abs(from), self.abs(to))?;
                let mut m = self.model.lock().unwrap();
                let c = m.files.remove(from).unwrap();
                m.files.insert(to.clone(), c);
            }
            Pending::RenameDir { from, to } => {
                fs::rename(self.abs(from), self.abs(to))?;
                self.model.lock().unwrap().move_subtree(from, to);
            }
            Pending::Mkdir { path } => {
                fs::create_dir(self.abs(path))?;
                self.model.lock().unwrap().dirs.insert(path.clone());
            }
            Pending::Rmdir { path } => {
                fs::remove_dir(self.abs(path))?;
                self.model.lock().unwrap().dirs.remove(path);
            }
            Pending::GrantCreate { prefix } => {
                let v = ctl_json(
                    &self.sock,
                    &[
                        "grant",
                        "create",
                        "--grantee",
                        "uid:4242",
                        "--ops",
                        "read",
                        "--path-prefix",
                        prefix,
                    ],
                )?;
                let id = v["grant_id"].as_str().unwrap_or("").to_string();
                self.model.lock().unwrap().grants.insert(id, prefix.clone());
            }
            Pending::GrantRevoke { id } => {
                ctl_json(&self.sock, &["grant", "revoke", id])?;
                self.model.lock().unwrap().grants.remove(id);
            }
            Pending::Rotate | Pending::Rewrap => {
                let args: &[&str] = if matches!(op, Pending::Rotate) {
                    &["rotate"]
                } else {
                    &["rewrap", "--background"]
                };
                let mut all: Vec<&OsStr> =
                    vec!["ctl".as_ref(), "--socket".as_ref(), self.sock.as_os_str()];
                all.extend(args.iter().map(OsStr::new));
                let out = sealfs(&all);
                let busy = String::from_utf8_lossy(&out.stderr).contains("already running");
                if !out.status.success() && !busy {
                    return Err(io::Error::other(format!(
                        "sealfs ctl {args:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
            }
        }
        let mut m = self.model.lock().unwrap();
        m.pending = None;
        m.ops_done += 1;
        let note = match op {
            Pending::Write { path, .. } => format!(
                "round {} {op:?}: arg {arg:x}, now {} bytes",
                self.round,
                m.files.get(path).map(|c| c.len()).unwrap_or(0)
            ),
            _ => format!("round {} {op:?}", self.round),
        };
        m.history.push((op.clone(), note));
        Ok(())
    }

    /// Runs operations until one fails; returns the failure if it came
    /// before the kill (a bug), `None` if the kill ended it.
    fn go(&self, seed: u64) -> Option<String> {
        let mut rng = Rng::new(seed);
        loop {
            let Some((op, data, arg)) = self.plan(&mut rng) else {
                if self.killed.load(Ordering::SeqCst) {
                    return None;
                }
                continue;
            };
            if let Err(e) = self.run(&op, &data, arg) {
                if self.killed.load(Ordering::SeqCst) {
                    return None;
                }
                return Some(format!("{op:?} failed before the kill: {e}"));
            }
            if self.killed.load(Ordering::SeqCst) {
                return None;
            }
        }
    }
}

fn read_rel(mnt: &Path, rel: &str) -> io::Result<Vec<u8>> {
    fs::read(mnt.join(rel))
}

/// Settles the operation the kill interrupted by looking at the volume;
/// fails on a state that is neither its old nor its new one.
fn resolve(m: &mut Model, mnt: &Path, what: &str) {
    let Some(p) = m.pending.take() else { return };
    let gone = |r: &io::Result<Vec<u8>>| matches!(r, Err(e) if e.kind() == io::ErrorKind::NotFound);
    match &p {
        Pending::Write { path, old } => match read_rel(mnt, path) {
            Ok(c) => {
                m.files.insert(path.clone(), c);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                assert!(
                    old.is_none(),
                    "{what}: {path} vanished during a write to it"
                );
                m.files.remove(path);
            }
            Err(_) => {
                // Torn by the kill: allowed for the file being written.
                m.torn += 1;
                m.files.remove(path);
                if fs::remove_file(mnt.join(path)).is_err() {
                    m.poisoned.insert(path.clone());
                }
            }
        },
        Pending::Unlink { path } => {
            let r = read_rel(mnt, path);
            if gone(&r) {
                m.files.remove(path);
            } else {
                assert_eq!(
                    r.as_ref().ok(),
                    m.files.get(path),
                    "{what}: interrupted unlink of {path} left other content"
                );
            }
        }
        Pending::RenameFile { from, to } => {
            let (a, b) = (read_rel(mnt, from), read_rel(mnt, to));
            let content = m.files.get(from).cloned().unwrap();
            if gone(&a) {
                assert_eq!(
                    b.as_ref().ok(),
                    Some(&content),
                    "{what}: interrupted rename {from} -> {to}: target does not hold the file"
                );
                m.files.remove(from);
                m.files.insert(to.clone(), content);
            } else {
                assert_eq!(
                    a.as_ref().ok(),
                    Some(&content),
                    "{what}: interrupted rename {from} -> {to}: source damaged"
                );
                match m.files.get(to) {
                    Some(old) => assert_eq!(
                        b.as_ref().ok(),
                        Some(old),
                        "{what}: rename target {to} damaged"
                    ),
                    None => assert!(
                        gone(&b),
                        "{what}: rename target {to} appeared without the source going"
                    ),
                }
            }
        }
        Pending::RenameDir { from, to } => {
            let (a, b) = (mnt.join(from).is_dir(), mnt.join(to).is_dir());
            assert!(
                a ^ b,
                "{what}: interrupted directory rename {from} -> {to}: at old {a}, at new {b}"
            );
            if b {
                m.move_subtree(from, to);
            }
        }
        Pending::Mkdir { path } | Pending::Rmdir { path } => {
            // Made, not made, or (killed between the backing mkdir/rmdir
            // and the directory record) present without a record, which
            // rmdir still removes.
            let p = mnt.join(path);
            match fs::symlink_metadata(&p) {
                Ok(md) if md.is_dir() && fs::read_dir(&p).is_ok() => {
                    m.dirs.insert(path.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    m.dirs.remove(path);
                }
                _ => {
                    m.torn += 1;
                    m.dirs.remove(path);
                    if fs::remove_dir(&p).is_err() {
                        m.poisoned.insert(path.clone());
                    }
                }
            }
        }
        Pending::Rotate
        | Pending::Rewrap
        | Pending::GrantCreate { .. }
        | Pending::GrantRevoke { .. } => {}
    }
}

/// `sealfs ctl --socket SOCK --json ARGS`: the result, or the error.
fn ctl_json(sock: &Path, args: &[&str]) -> io::Result<Value> {
    let mut all: Vec<&OsStr> = vec![
        "ctl".as_ref(),
        "--socket".as_ref(),
        sock.as_os_str(),
        "--json".as_ref(),
    ];
    all.extend(args.iter().map(OsStr::new));
    let out = sealfs(&all);
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "sealfs ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(io::Error::other)
}

/// Checks the live grants after a remount: exactly the model's, apart from
/// the grant operation in flight at the kill (its old or its new state).
fn resolve_grants(m: &mut Model, sock: &Path, what: &str) {
    let v =
        ctl_json(sock, &["grant", "list"]).unwrap_or_else(|e| panic!("{what}: grant list: {e}"));
    let live: BTreeMap<String, String> = v["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["grant_id"].as_str().unwrap().to_string(),
                g["path_prefix"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    match &m.pending {
        Some(Pending::GrantCreate { prefix }) => {
            let new: Vec<String> = live
                .keys()
                .filter(|id| !m.grants.contains_key(*id))
                .cloned()
                .collect();
            assert!(new.len() <= 1, "{what}: grants appeared: {new:?}");
            if let Some(id) = new.first() {
                assert_eq!(&live[id], prefix, "{what}: grant {id} has another prefix");
                m.grants.insert(id.clone(), prefix.clone());
            }
        }
        Some(Pending::GrantRevoke { id }) if !live.contains_key(id) => {
            m.grants.remove(id);
        }
        _ => {}
    }
    assert_eq!(live, m.grants, "{what}: live grants differ from the model");
}

/// The completed operations that touched what is now at `path`, newest
/// first, following renames back.
fn trace(m: &Model, path: &str) -> Vec<String> {
    let mut p = path.to_string();
    let mut out = Vec::new();
    for (op, note) in m.history.iter().rev() {
        match op {
            Pending::RenameFile { from, to } if *to == p => {
                out.push(note.clone());
                p = from.clone();
            }
            Pending::RenameDir { from, to } if under(&p, to) => {
                out.push(note.clone());
                p = format!("{from}{}", &p[to.len()..]);
            }
            _ if op.paths().contains(&p.as_str()) => out.push(note.clone()),
            _ => {}
        }
    }
    out
}

/// Every file has its exact content; every directory lists exactly its names.
fn verify(m: &Model, mnt: &Path, what: &str) {
    for (p, want) in &m.files {
        match read_rel(mnt, p) {
            Ok(got) => assert!(
                got == *want,
                "{what}: /{p}: content differs ({} bytes, want {}; first difference at {:?}); history:\n{}",
                got.len(),
                want.len(),
                got.iter().zip(want.iter()).position(|(a, b)| a != b),
                trace(m, p).join("\n")
            ),
            Err(e) => panic!("{what}: /{p} unreadable: {e}"),
        }
    }
    for d in &m.dirs {
        let got: BTreeSet<String> = fs::read_dir(mnt.join(d))
            .unwrap_or_else(|e| panic!("{what}: directory /{d} unreadable: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, m.children(d), "{what}: names of directory /{d}");
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_that_was_not_in_flight() {
    let seed = crash_seed();
    let rounds: u64 = std::env::var("SEALFS_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    eprintln!(
        "crash harness: seed {seed} (replay with SEALFS_CRASH_SEED={seed}), {rounds} kill points"
    );
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut fx = Fixture::new();
    let model = Arc::new(Mutex::new(Model::default()));
    model.lock().unwrap().dirs.insert(String::new());
    let mut rounds_with_problems = 0u64;
    let mut salvage_actions = 0u64;
    let mut audit_records = 0u64;
    let mut fsck_reported = 0u64;
    let mut ops = 0u64;
    let mut in_flight_at_kill: BTreeMap<String, u64> = BTreeMap::new();
    let mut leftovers: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..rounds {
        let what = format!("seed {seed}, round {round}");
        fx.mount_ctl();
        {
            let mut m = model.lock().unwrap();
            resolve_grants(&mut m, &fx.ctl_socket, &what);
            resolve(&mut m, &fx.mnt, &what);
            verify(&m, &fx.mnt, &what);
        }
        let killed = Arc::new(AtomicBool::new(false));
        let w = Workload {
            mnt: fx.mnt.clone(),
            sock: fx.ctl_socket.clone(),
            model: model.clone(),
            killed: killed.clone(),
            round,
        };
        let wseed = rng.next_u64();
        let worker = std::thread::spawn(move || w.go(wseed));
        // Half the kills come at a random moment (mostly inside writes, the
        // bulk of the work); the other half aim at one kind of operation:
        // wait until one is in flight, then kill 0-3 ms into it.
        const AIMS: [&str; 8] = [
            "RenameFile",
            "RenameDir",
            "Mkdir",
            "Rmdir",
            "Unlink",
            "Rotate",
            "Rewrap",
            "Grant",
        ];
        let aim = (rng.below(2) == 0).then(|| AIMS[rng.below(AIMS.len() as u64) as usize]);
        match aim {
            None => std::thread::sleep(Duration::from_millis(30 + rng.below(500))),
            Some(kind) => {
                let deadline = Instant::now() + Duration::from_secs(1);
                while Instant::now() < deadline {
                    let hit = model
                        .lock()
                        .unwrap()
                        .pending
                        .as_ref()
                        .is_some_and(|p| format!("{p:?}").starts_with(kind));
                    if hit {
                        std::thread::sleep(Duration::from_micros(rng.below(3000)));
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        killed.store(true, Ordering::SeqCst);
        fx.kill_daemon();
        if let Some(err) = worker.join().expect("workload thread") {
            panic!("{what}: {err}\ndaemon log:\n{}", fx.last_log());
        }
        // Offline fsck: reports at most what was in flight.
        let out = sealfs(&[
            "fsck".as_ref(),
            fx.cipher.as_os_str(),
            "--passfile".as_ref(),
            fx.passfile.as_os_str(),
            "--json".as_ref(),
        ]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{what}: fsck printed no report ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(
            report.get("error").is_none(),
            "{what}: fsck could not run (keyring/config must load): {report}"
        );
        let m = model.lock().unwrap();
        let op_name = match &m.pending {
            Some(p) => format!("{p:?}")
                .split([' ', '{'])
                .next()
                .unwrap()
                .to_string(),
            None => "none".into(),
        };
        *in_flight_at_kill.entry(op_name).or_default() += 1;
        let allowed: BTreeSet<String> = m
            .pending
            .iter()
            .flat_map(|p| p.paths())
            .chain(m.poisoned.iter().map(|s| s.as_str()))
            .map(|p| format!("/{p}"))
            .collect();
        for p in report["problems"].as_array().unwrap() {
            let kind = p["kind"].as_str().unwrap();
            if matches!(kind, "temp-file" | "stray-sidecar") {
                // Leftovers of an interrupted write; salvage removes them.
                *leftovers.entry(kind.to_string()).or_default() += 1;
                continue;
            }
            if kind == "keyring" && matches!(m.pending, Some(Pending::Rotate)) {
                // The backup copy not yet rewritten when the kill came.
                *leftovers.entry("stale keyring backup".into()).or_default() += 1;
                continue;
            }
            let path = p["path"].as_str().unwrap_or("");
            assert!(
                allowed.contains(path),
                "{what}: fsck reports {p} but only {allowed:?} were in flight ({:?})",
                m.pending
            );
            fsck_reported += 1;
        }
        if !out.status.success() {
            rounds_with_problems += 1;
            // Salvage what the kill left, then nothing may be left but what
            // cannot be repaired on the path in flight.
            let fsck_json = |extra: &[&str]| fx.fsck_json(extra);
            let (code, salvaged) = fsck_json(&["--salvage"]);
            assert!(
                matches!(code, Some(1) | Some(4)),
                "{what}: fsck --salvage: {salvaged}"
            );
            for p in salvaged["problems"].as_array().unwrap() {
                salvage_actions += 1;
                assert!(
                    p["repair"] == "repaired" || allowed.contains(p["path"].as_str().unwrap_or("")),
                    "{what}: salvage left {p} (in flight: {:?})",
                    m.pending
                );
                assert!(
                    !p["action"].as_str().unwrap_or("").contains("lost+found"),
                    "{what}: a crash left orphaned ciphertext: {p}"
                );
            }
            let (code, after) = fsck_json(&[]);
            for p in after["problems"].as_array().unwrap() {
                assert!(
                    allowed.contains(p["path"].as_str().unwrap_or("")),
                    "{what}: after salvage fsck still reports {p}"
                );
            }
            assert!(matches!(code, Some(0) | Some(4)), "{what}: {after}");
        }
        // The audit chain survives the kill: every record before it verifies
        // (a record torn by the kill would be reported, not a break).
        let out = sealfs(&[
            "audit".as_ref(),
            "verify".as_ref(),
            fx.cipher.as_os_str(),
            "--passfile".as_ref(),
            fx.passfile.as_os_str(),
            "--json".as_ref(),
        ]);
        let audit: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            out.status.success() && audit["first_break"].is_null(),
            "{what}: audit verify after the kill: {audit} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let records = audit["records"].as_u64().unwrap_or(0);
        assert!(
            records >= audit_records,
            "{what}: the audit log shrank from {audit_records} to {records} records"
        );
        audit_records = records;
        ops = m.ops_done;
        drop(m);
    }
    // A last check after the final kill.
    fx.mount_ctl();
    {
        let mut m = model.lock().unwrap();
        resolve_grants(&mut m, &fx.ctl_socket, "final");
        resolve(&mut m, &fx.mnt, "final");
        verify(&m, &fx.mnt, "final");
        eprintln!(
            "crash harness: seed {seed}: {rounds} kill points, {ops} operations completed, {} files and {} directories at the end, {fsck_reported} fsck problem(s) on in-flight paths in {rounds_with_problems} round(s) ({salvage_actions} salvaged), {} poisoned, {} torn by the kill; in flight at the kills: {in_flight_at_kill:?}; other fsck findings: {leftovers:?}; {:.1}s",
            m.files.len(),
            m.dirs.len(),
            m.poisoned.len(),
            m.torn,
            started.elapsed().as_secs_f64()
        );
    }
    fx.unmount();
}
