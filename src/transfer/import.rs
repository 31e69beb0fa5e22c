//! `sealfs import`: a plain directory tree copied into a volume (see the
//! [parent module](super) for what is kept and how a re-run behaves).
//!
//! Owns: scanning the plain tree, and writing files, symlinks and
//! directories into the volume (files staged, so a crash never leaves half
//! a file under its name).
//! Must never: follow a symlink in the source, or log names or contents.

use std::ffi::OsString;
use std::fs::{self};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, UNIX_EPOCH};

use super::{
    failed, plain_xattrs, run_jobs, same_time, Direction, EntryResult, Item, Options, ProblemKind,
    Progress, Report, Shared, TransferError,
};
use crate::vault::{EntryKind, Vault, VaultError};

/// Lists the plain tree under `top` (pre-order; `top` itself excluded).
fn scan_plain(top: &Path, sh: &Shared<'_>) -> Vec<Item> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = top.join(&rel);
        let mut names: Vec<OsString> = match fs::read_dir(&dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                sh.problem(ProblemKind::Failed, &rel, format!("cannot list: {e}"));
                continue;
            }
        };
        names.sort();
        // Reverse, so the stack pops them in name order.
        for name in names.into_iter().rev() {
            let r = rel.join(&name);
            let md = match fs::symlink_metadata(top.join(&r)) {
                Ok(m) => m,
                Err(e) => {
                    sh.problem(ProblemKind::Failed, &r, format!("cannot stat: {e}"));
                    continue;
                }
            };
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                EntryKind::File
            } else if ft.is_symlink() {
                EntryKind::Symlink
            } else {
                let what = if ft.is_fifo() {
                    "FIFO"
                } else if ft.is_socket() {
                    "socket"
                } else if ft.is_block_device() {
                    "block device"
                } else if ft.is_char_device() {
                    "character device"
                } else {
                    "special file"
                };
                sh.problem(
                    ProblemKind::Special,
                    &r,
                    format!(
                        "{what} not imported (import copies regular files, directories and symlinks)"
                    ),
                );
                continue;
            };
            let item = item_of(r.clone(), kind, &md);
            match kind {
                EntryKind::Dir => {
                    stack.push(r);
                }
                _ => {
                    sh.progress.files_total.fetch_add(1, Relaxed);
                    if kind == EntryKind::File {
                        sh.progress.bytes_total.fetch_add(item.size, Relaxed);
                    }
                }
            }
            out.push(item);
        }
    }
    // The stack visits directories depth first, but entries were pushed as
    // each directory was listed: sort into a proper pre-order (parents first).
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn item_of(rel: PathBuf, kind: EntryKind, md: &fs::Metadata) -> Item {
    Item {
        rel,
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if kind == EntryKind::File { md.len() } else { 0 },
        accessed: md.accessed().unwrap_or(UNIX_EPOCH),
        modified: md.modified().unwrap_or(UNIX_EPOCH),
        link: (kind == EntryKind::File && md.nlink() > 1).then(|| (md.dev(), md.ino())),
    }
}

/// Copies the plain directory tree `src` into the root of `vault`. See the
/// [module docs](super) for what is kept and how a re-run behaves.
pub fn import(
    src: &Path,
    vault: &Vault,
    opts: &Options,
    progress: &Progress,
) -> Result<Report, TransferError> {
    let started = Instant::now();
    match fs::metadata(src) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(TransferError::Top(
                src.into(),
                "not a directory (import copies a directory tree)".into(),
            ))
        }
        Err(e) => return Err(TransferError::Top(src.into(), e.to_string())),
    }
    let sh = Shared::new(progress);
    let mut report = Report::default();
    let items = scan_plain(src, &sh);
    progress.scanned.store(true, Relaxed);
    report.leftovers_removed += vault.remove_staged_leftovers(Path::new(""))? as u64;
    report.directories += 1;
    let into = IntoVolume { src, vault, opts };
    run_jobs(&items, &into, opts, &sh, &mut report);
    Ok(sh.into_report(report, started))
}

/// Import's side of the job loop: entries of the plain tree `src` made in
/// `vault`.
struct IntoVolume<'a> {
    src: &'a Path,
    vault: &'a Vault,
    opts: &'a Options,
}

impl IntoVolume<'_> {
    /// The source's extended attributes of `rel` set in the volume.
    fn copy_xattrs(&self, rel: &Path) -> Result<(), String> {
        let attrs = plain_xattrs(&self.src.join(rel))
            .map_err(|e| format!("cannot read extended attributes: {e}"))?;
        for (name, value) in attrs {
            self.vault
                .set_xattr(rel, &name, &value, 0)
                .map_err(|e| format!("extended attribute {name} not imported: {e}"))?;
        }
        Ok(())
    }
}

impl Direction for IntoVolume<'_> {
    fn make_dir(&self, it: &Item) -> Result<(bool, u64), String> {
        let vault = self.vault;
        let made = match vault.metadata(&it.rel) {
            Ok(m) if m.kind == EntryKind::Dir => false,
            Ok(_) => return Err("exists in the volume and is not a directory".to_string()),
            Err(VaultError::NotFound(_)) => {
                vault.create_dir(&it.rel).map_err(|e| e.to_string())?;
                true
            }
            Err(e) => return Err(e.to_string()),
        };
        // Writable for the copy; the real mode comes last.
        vault
            .set_permissions(&it.rel, 0o700)
            .map_err(|e| e.to_string())?;
        let leftovers = if made {
            0
        } else {
            vault
                .remove_staged_leftovers(&it.rel)
                .map_err(|e| e.to_string())? as u64
        };
        Ok((made, leftovers))
    }

    fn copy_file(&self, it: &Item, sh: &Shared<'_>, buf: &mut [u8]) -> EntryResult {
        import_file(self.src, self.vault, it, self.opts, sh, buf)?;
        self.copy_xattrs(&it.rel).map_err(failed)
    }

    fn copy_symlink(&self, it: &Item, sh: &Shared<'_>) -> EntryResult {
        import_symlink(self.src, self.vault, it, self.opts, sh)
    }

    fn link(&self, first: &Item, it: &Item) -> Result<bool, String> {
        let vault = self.vault;
        let want = vault.metadata(&first.rel).map_err(|e| e.to_string())?;
        match vault.metadata(&it.rel) {
            Ok(m) if m.kind == EntryKind::File && m.ino == want.ino => return Ok(false),
            Ok(m) if m.kind == EntryKind::Dir => {
                return Err("a directory of this name exists in the volume".into())
            }
            // A copy of an earlier run (or another file): replaced by the link.
            Ok(_) => vault.remove_file(&it.rel).map_err(|e| e.to_string())?,
            Err(VaultError::NotFound(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        vault
            .hard_link(&first.rel, &it.rel)
            .map_err(|e| format!("cannot link to {}: {e}", first.rel.display()))?;
        Ok(true)
    }

    fn finish_dir(&self, it: &Item) -> Result<(), String> {
        let vault = self.vault;
        self.copy_xattrs(&it.rel)?;
        (|| {
            if self.opts.preserve_owner {
                vault.set_owner(&it.rel, Some(it.uid), Some(it.gid))?;
            }
            vault.set_permissions(&it.rel, it.mode)?;
            vault.set_times(&it.rel, it.accessed, it.modified)
        })()
        .map_err(|e| format!("cannot set mode or times: {e}"))
    }
}

fn import_file(
    src: &Path,
    vault: &Vault,
    it: &Item,
    opts: &Options,
    sh: &Shared<'_>,
    buf: &mut [u8],
) -> EntryResult {
    let progress = sh.progress;
    if let Ok(m) = vault.metadata(&it.rel) {
        if m.kind == EntryKind::File && m.size == it.size && same_time(m.modified, it.modified) {
            // Unchanged since the last run; only the mode may differ.
            if m.mode != it.mode {
                vault.set_permissions(&it.rel, it.mode).map_err(failed)?;
            }
            sh.files_unchanged.fetch_add(1, Relaxed);
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Ok(());
        }
        if m.kind == EntryKind::Dir {
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Err(failed("a directory of this name exists in the volume"));
        }
    }
    let path = src.join(&it.rel);
    // O_NOATIME where allowed (our own files, or root): reading must not
    // change the access time being copied.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
        .open(&path)
        .or_else(|_| {
            fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        });
    let mut f = match f {
        Ok(f) => f,
        Err(e) => {
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Err(failed(format!("cannot open: {e}")));
        }
    };
    let mut w = match vault.create_staged(&it.rel) {
        Ok(w) => w,
        Err(e) => {
            progress.bytes_done.fetch_add(it.size, Relaxed);
            return Err(failed(e));
        }
    };
    let mut copied = 0u64;
    let r: io::Result<()> = (|| loop {
        let n = match f.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        copied += n as u64;
        progress.bytes_done.fetch_add(n as u64, Relaxed);
    })();
    // Whatever happened, the bar accounts for the file's whole size.
    let settle = |progress: &Progress| {
        if copied < it.size {
            progress.bytes_done.fetch_add(it.size - copied, Relaxed);
        }
    };
    if let Err(e) = r {
        settle(progress);
        return Err(failed(format!("copy failed: {e}")));
    }
    let after = f.metadata().map_err(failed)?;
    if after.len() != it.size || after.len() != copied || after.modified().ok() != Some(it.modified)
    {
        settle(progress);
        return Err((
            ProblemKind::Changed,
            "changed while it was read; not imported (run import again)".into(),
        ));
    }
    if opts.preserve_owner {
        w.set_owner(Some(it.uid), Some(it.gid));
    }
    w.set_permissions(it.mode);
    w.set_times(it.accessed, it.modified);
    w.finish().map_err(failed)?;
    sh.files_copied.fetch_add(1, Relaxed);
    sh.bytes_copied.fetch_add(copied, Relaxed);
    Ok(())
}

fn import_symlink(
    src: &Path,
    vault: &Vault,
    it: &Item,
    opts: &Options,
    sh: &Shared<'_>,
) -> EntryResult {
    let target =
        fs::read_link(src.join(&it.rel)).map_err(|e| failed(format!("cannot read: {e}")))?;
    match vault.metadata(&it.rel) {
        Ok(m) if m.kind == EntryKind::Symlink => {
            if vault.read_link(&it.rel).map_err(failed)? == target {
                if !same_time(m.modified, it.modified) {
                    vault
                        .set_times(&it.rel, it.accessed, it.modified)
                        .map_err(failed)?;
                }
                sh.symlinks_unchanged.fetch_add(1, Relaxed);
                return Ok(());
            }
            vault.remove_file(&it.rel).map_err(failed)?;
        }
        Ok(m) if m.kind == EntryKind::Dir => {
            return Err(failed("a directory of this name exists in the volume"))
        }
        Ok(_) => vault.remove_file(&it.rel).map_err(failed)?,
        Err(VaultError::NotFound(_)) => {}
        Err(e) => return Err(failed(e)),
    }
    vault.symlink(&target, &it.rel).map_err(failed)?;
    if opts.preserve_owner {
        vault
            .set_owner(&it.rel, Some(it.uid), Some(it.gid))
            .map_err(failed)?;
    }
    vault
        .set_times(&it.rel, it.accessed, it.modified)
        .map_err(failed)?;
    sh.symlinks.fetch_add(1, Relaxed);
    Ok(())
}
