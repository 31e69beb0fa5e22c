//! `sealfs export`: a volume copied out to a plain directory tree (see the
//! [parent module](super) for what is kept and how a re-run behaves).
//!
//! Owns: scanning the volume, and writing files (temp file, then rename),
//! symlinks and directories into the plain tree.
//! Must never: follow a symlink in the destination, write outside it, or
//! log names or contents.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{
    copies_xattr, failed, run_jobs, set_plain_xattrs, Direction, EntryResult, Item, Options,
    ProblemKind, Progress, Report, Shared, TransferError, EXPORT_TEMP_PREFIX,
};
use crate::vault::{EntryKind, Metadata, Vault, VaultError};

/// Lists the volume's tree (pre-order; the root excluded).
fn scan_vault(vault: &Vault, sh: &Shared<'_>) -> Result<Vec<Item>, VaultError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut first = true;
    while let Some(rel) = stack.pop() {
        let entries = match vault.list_dir_metadata(&rel) {
            Ok(e) => e,
            // The root must list; below it, a directory that does not is reported.
            Err(e) if first => return Err(e),
            Err(e) => {
                sh.problem(ProblemKind::Failed, &rel, format!("cannot list: {e}"));
                continue;
            }
        };
        first = false;
        for (name, md) in entries.into_iter().rev() {
            let r = rel.join(&name);
            let kind = match md.kind {
                EntryKind::Other => {
                    sh.problem(
                        ProblemKind::Special,
                        &r,
                        "FIFO, socket or device node not exported (export copies regular files, directories and symlinks)",
                    );
                    continue;
                }
                kind => kind,
            };
            if kind == EntryKind::Dir {
                stack.push(r.clone());
            } else {
                sh.progress.files_total.fetch_add(1, Relaxed);
                if kind == EntryKind::File {
                    sh.progress.bytes_total.fetch_add(md.size, Relaxed);
                }
            }
            out.push(vault_item(r, kind, &md));
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn vault_item(rel: PathBuf, kind: EntryKind, md: &Metadata) -> Item {
    Item {
        rel,
        kind,
        mode: md.mode,
        uid: md.uid,
        gid: md.gid,
        size: if kind == EntryKind::File { md.size } else { 0 },
        accessed: md.accessed,
        modified: md.modified,
        link: (kind == EntryKind::File && md.nlink > 1).then_some((0, md.ino)),
    }
}

fn remove_export_leftovers(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let s = name.to_string_lossy();
        if s.starts_with(EXPORT_TEMP_PREFIX) && s.ends_with(".tmp") {
            fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

fn temp_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{EXPORT_TEMP_PREFIX}{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    )
}

/// Sets owner, mode and times of a plain file through its open descriptor.
fn apply_plain(f: &File, it: &Item, opts: &Options) -> io::Result<()> {
    if opts.preserve_owner {
        std::os::unix::fs::fchown(f, Some(it.uid), Some(it.gid))?;
    }
    f.set_permissions(fs::Permissions::from_mode(it.mode))?;
    f.set_times(
        fs::FileTimes::new()
            .set_accessed(it.accessed)
            .set_modified(it.modified),
    )
}

/// Sets the times of a path without following a symlink.
fn lutimes(path: &Path, accessed: SystemTime, modified: SystemTime) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ts = |t: SystemTime| -> libc::timespec {
        let (s, n) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), d.subsec_nanos() as i64);
                if n > 0 {
                    s -= 1;
                    n = 1_000_000_000 - n;
                }
                (s, n)
            }
        };
        libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        }
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let times = [ts(accessed), ts(modified)];
    // SAFETY: valid C string and array of two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copies the whole volume `vault` into the plain directory `dst` (created
/// if absent). See the [module docs](super).
pub fn export(
    vault: &Vault,
    dst: &Path,
    opts: &Options,
    progress: &Progress,
) -> Result<Report, TransferError> {
    let started = Instant::now();
    match fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(TransferError::Top(dst.into(), "not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dst).map_err(|e| TransferError::Top(dst.into(), e.to_string()))?
        }
        Err(e) => return Err(TransferError::Top(dst.into(), e.to_string())),
    }
    let sh = Shared::new(progress);
    let mut report = Report::default();
    let items = scan_vault(vault, &sh)?;
    progress.scanned.store(true, Relaxed);
    report.leftovers_removed +=
        remove_export_leftovers(dst).map_err(|e| TransferError::Top(dst.into(), e.to_string()))?;
    report.directories += 1;

    let out = OutOfVolume { vault, dst, opts };
    run_jobs(&items, &out, opts, &sh, &mut report);
    Ok(sh.into_report(report, started))
}

/// Export's side of the job loop: entries of `vault` made in the plain
/// tree `dst`.
struct OutOfVolume<'a> {
    vault: &'a Vault,
    dst: &'a Path,
    opts: &'a Options,
}

/// The copied extended attributes of `rel` in the volume, as (name, value).
fn vault_xattrs(vault: &Vault, rel: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let names = vault
        .list_xattrs(rel)
        .map_err(|e| format!("cannot read extended attributes: {e}"))?;
    for name in names.into_iter().filter(|n| copies_xattr(n)) {
        if let Some(v) = vault
            .get_xattr(rel, &name)
            .map_err(|e| format!("cannot read extended attribute {name}: {e}"))?
        {
            out.push((name, v));
        }
    }
    Ok(out)
}

impl Direction for OutOfVolume<'_> {
    fn make_dir(&self, it: &Item) -> Result<(bool, u64), String> {
        let p = self.dst.join(&it.rel);
        let (made, leftovers) = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => (
                false,
                remove_export_leftovers(&p).map_err(|e| e.to_string())?,
            ),
            Ok(_) => return Err("exists and is not a directory".into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&p).map_err(|e| e.to_string())?;
                (true, 0)
            }
            Err(e) => return Err(e.to_string()),
        };
        // Writable for the copy; the real mode comes last.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        Ok((made, leftovers))
    }

    fn copy_file(&self, it: &Item, sh: &Shared<'_>, buf: &mut [u8]) -> EntryResult {
        export_file(self.vault, self.dst, it, self.opts, sh, buf)
    }

    fn copy_symlink(&self, it: &Item, sh: &Shared<'_>) -> EntryResult {
        export_symlink(self.vault, self.dst, it, self.opts, sh)
    }

    fn link(&self, first: &Item, it: &Item) -> Result<bool, String> {
        let target = self.dst.join(&first.rel);
        let path = self.dst.join(&it.rel);
        let want = fs::symlink_metadata(&target).map_err(|e| e.to_string())?;
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.ino() == want.ino() && m.dev() == want.dev() => {
                return Ok(false)
            }
            Ok(m) if m.is_dir() => {
                return Err("a directory of this name exists at the destination".into())
            }
            _ => {}
        }
        // A new link under a temp name, renamed over whatever is there.
        let temp = path.parent().unwrap_or(self.dst).join(temp_name());
        let r = fs::hard_link(&target, &temp).and_then(|()| fs::rename(&temp, &path));
        if let Err(e) = r {
            let _ = fs::remove_file(&temp);
            return Err(format!("cannot link to {}: {e}", first.rel.display()));
        }
        Ok(true)
    }

    fn finish_dir(&self, it: &Item) -> Result<(), String> {
        let p = self.dst.join(&it.rel);
        let attrs = vault_xattrs(self.vault, &it.rel)?;
        set_plain_xattrs(&p, &attrs).map_err(|e| format!("cannot set extended attributes: {e}"))?;
        (|| {
            if self.opts.preserve_owner {
                std::os::unix::fs::lchown(&p, Some(it.uid), Some(it.gid))?;
            }
            fs::set_permissions(&p, fs::Permissions::from_mode(it.mode))?;
            lutimes(&p, it.accessed, it.modified)
        })()
        .map_err(|e| format!("cannot set mode or times: {e}"))
    }
}

fn export_file(
    vault: &Vault,
    dst: &Path,
    it: &Item,
    opts: &Options,
    sh: &Shared<'_>,
    buf: &mut [u8],
) -> EntryResult {
    let progress = sh.progress;
    let path = dst.join(&it.rel);
    if let Ok(m) = fs::symlink_metadata(&path) {
        if m.is_file() && m.len() == it.size && m.modified().ok() == Some(it.modified) {
            if m.mode() & 0o7777 != it.mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(it.mode)).map_err(failed)?;
            }
            sh.files_unchanged.fetch_add(1, Relaxed);
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Ok(());
        }
        if m.is_dir() {
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Err(failed("a directory of this name exists at the destination"));
        }
    }
    let mut copied = 0u64;
    let r = (|| -> Result<(), String> {
        let mut src = vault
            .open_file(&it.rel)
            .map_err(|e| format!("cannot open in the volume: {e}"))?;
        let parent = path.parent().unwrap_or(dst);
        let temp = parent.join(temp_name());
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
        let body = (|| -> Result<(), String> {
            loop {
                let n = match src.read(buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("cannot read from the volume: {e}")),
                };
                out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                copied += n as u64;
                progress.bytes_done.fetch_add(n as u64, Relaxed);
            }
            let attrs = vault_xattrs(vault, &it.rel)?;
            set_plain_xattrs(&temp, &attrs)
                .map_err(|e| format!("cannot set extended attributes: {e}"))?;
            apply_plain(&out, it, opts).map_err(|e| format!("cannot set mode or times: {e}"))?;
            out.sync_all().map_err(|e| e.to_string())?;
            fs::rename(&temp, &path).map_err(|e| e.to_string())
        })();
        if body.is_err() {
            let _ = fs::remove_file(&temp);
        }
        body
    })();
    if copied < it.size {
        progress.bytes_done.fetch_add(it.size - copied, Relaxed);
    }
    r.map_err(failed)?;
    sh.files_copied.fetch_add(1, Relaxed);
    sh.bytes_copied.fetch_add(copied, Relaxed);
    Ok(())
}

fn export_symlink(
    vault: &Vault,
    dst: &Path,
    it: &Item,
    opts: &Options,
    sh: &Shared<'_>,
) -> EntryResult {
    let target = vault.read_link(&it.rel).map_err(failed)?;
    let path = dst.join(&it.rel);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() && fs::read_link(&path).map_err(failed)? == target => {
            if m.modified().ok() != Some(it.modified) {
                lutimes(&path, it.accessed, it.modified).map_err(failed)?;
            }
            sh.symlinks_unchanged.fetch_add(1, Relaxed);
            return Ok(());
        }
        Ok(m) if m.is_dir() => {
            return Err(failed("a directory of this name exists at the destination"))
        }
        _ => {}
    }
    // A new symlink under a temp name, renamed over whatever is there.
    let temp = path.parent().unwrap_or(dst).join(temp_name());
    let r = (|| {
        std::os::unix::fs::symlink(&target, &temp)?;
        if opts.preserve_owner {
            std::os::unix::fs::lchown(&temp, Some(it.uid), Some(it.gid))?;
        }
        lutimes(&temp, it.accessed, it.modified)?;
        fs::rename(&temp, &path)
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&temp);
        return Err(failed(e));
    }
    sh.symlinks.fetch_add(1, Relaxed);
    Ok(())
}
