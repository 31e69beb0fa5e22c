//! fsck's walk over the tree: both copies of every directory's record,
//! then every entry of the directory (names, kinds, bookkeeping files,
//! temp files, sidecars), handing files to `file` and what no record
//! accounts for to `orphans`.
//!
//! Owns: what a directory and its entries must look like.
//! Must never: write anything but the salvage repairs it reports (a record
//! copy restored from the good one, a leftover removed).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::DirEntryExt;
use std::path::Path;

use crate::format::header::{EncryptionContext, HeaderError, SealedRecord};
use crate::format::names::{classify_entry, long_entry_name, EntryClass, MAX_SIDECAR};
use crate::format::reserved::{self, Reserved, DIR_RECORD, DIR_RECORD_BACKUP};
use crate::sys;
use crate::volume::backing::{self, EntryKind};
use crate::volume::namespace;
use crate::volume::{Directory, VolumeError};

use super::{join, Checker, KnownDir, Orphan, ProblemKind};

/// What a copy of a directory record turned out to be.
enum RecordCopy {
    Good(SealedRecord, crate::crypto::SecretKey),
    Missing,
    Bad(VolumeError),
}

impl Checker<'_> {
    fn read_copy(&self, fd: BorrowedFd<'_>, name: &str, ctx: &EncryptionContext<'_>) -> RecordCopy {
        match self.vol.read_dir_record(fd, name, ctx) {
            Ok((rec, key, _)) => RecordCopy::Good(rec, key),
            Err(VolumeError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                RecordCopy::Missing
            }
            Err(e) => RecordCopy::Bad(e),
        }
    }

    /// Checks both copies of a directory's record (restoring a bad one from
    /// the good one when salvaging); returns the unlocked directory.
    pub(super) fn check_dir_record(
        &mut self,
        fd: BorrowedFd<'_>,
        ctx: &EncryptionContext<'_>,
        path: &[u8],
        rel: &Path,
    ) -> Option<Directory> {
        let a = self.read_copy(fd, DIR_RECORD, ctx);
        let b = self.read_copy(fd, DIR_RECORD_BACKUP, ctx);
        let describe = |c: &RecordCopy| match c {
            RecordCopy::Good(..) => "good".to_string(),
            RecordCopy::Missing => "missing".to_string(),
            RecordCopy::Bad(e) => e.to_string(),
        };
        let (rec, key, bad): (SealedRecord, _, Vec<&str>) = match (&a, &b) {
            (RecordCopy::Good(ra, ka), RecordCopy::Good(rb, kb)) => {
                if ra.id == rb.id && ka.expose() == kb.expose() {
                    (ra.clone(), ka.clone(), vec![])
                } else {
                    (ra.clone(), ka.clone(), vec![DIR_RECORD_BACKUP])
                }
            }
            (RecordCopy::Good(r, k), _) => (r.clone(), k.clone(), vec![DIR_RECORD_BACKUP]),
            (_, RecordCopy::Good(r, k)) => (r.clone(), k.clone(), vec![DIR_RECORD]),
            _ => {
                // Both copies gone: a leftover temp copy may still open.
                let tmp = [
                    reserved::temp_name(DIR_RECORD),
                    reserved::temp_name(DIR_RECORD_BACKUP),
                ]
                .into_iter()
                .find_map(|n| match self.read_copy(fd, &n, ctx) {
                    RecordCopy::Good(r, k) => Some((r, k)),
                    _ => None,
                });
                let unavailable = [&a, &b].iter().find_map(|c| match c {
                    RecordCopy::Bad(VolumeError::Header(HeaderError::KeyVersionUnavailable(v))) => {
                        Some(*v)
                    }
                    _ => None,
                });
                match (tmp, unavailable) {
                    (Some((r, k)), _) => (r, k, vec![DIR_RECORD, DIR_RECORD_BACKUP]),
                    (None, Some(v)) => {
                        let i = self.problem(
                            ProblemKind::KeyUnavailable,
                            Some(path),
                            rel,
                            format!("directory record is under key version {v}, which is retired, destroyed or absent: its entries were not checked"),
                        );
                        self.unrepairable(
                            i,
                            "re-enable the version ('sealfs ctl untrim') if it still exists",
                        );
                        return None;
                    }
                    (None, None) => {
                        let kind = match (&a, &b) {
                            (
                                RecordCopy::Bad(VolumeError::Header(HeaderError::ContextMismatch)),
                                _,
                            )
                            | (
                                _,
                                RecordCopy::Bad(VolumeError::Header(HeaderError::ContextMismatch)),
                            ) => ProblemKind::ContextMismatch,
                            _ => ProblemKind::DirRecordLost,
                        };
                        let i = self.problem(
                            kind,
                            Some(path),
                            rel,
                            format!(
                                "directory record unusable ({DIR_RECORD}: {}; {DIR_RECORD_BACKUP}: {}): the names below it cannot be decrypted",
                                describe(&a),
                                describe(&b)
                            ),
                        );
                        self.unrepairable(i, "no copy of the directory's key survives");
                        return None;
                    }
                }
            }
        };
        for name in bad {
            let which = if name == DIR_RECORD { &a } else { &b };
            let msg = match which {
                RecordCopy::Good(..) => {
                    format!("{name} disagrees with {DIR_RECORD} (different directory id or key)")
                }
                other => format!("{name}: {}", describe(other)),
            };
            let i = self.problem(ProblemKind::DirRecordCopy, Some(path), &rel.join(name), msg);
            if self.salvage {
                let r = self.vol.replace_dir_record(fd, &[name], &rec);
                self.record_repair(i, r, "restored from the good copy");
            }
        }
        let dir = Directory {
            id: rec.id,
            names: self.vol.name_cipher(&key, rec.id),
            key,
            key_version: rec
                .slots
                .iter()
                .flatten()
                .next()
                .map_or(0, |s| s.key_version),
        };
        self.check_xattrs(fd, OsStr::new(""), &dir.xattr_cipher(), path, rel);
        self.dirs.push(KnownDir {
            id: dir.id,
            names: dir.names.clone(),
            path: path.to_vec(),
        });
        Some(dir)
    }

    pub(super) fn walk_dir(
        &mut self,
        fd: BorrowedFd<'_>,
        dir: &Directory,
        path: &[u8],
        rel: &Path,
    ) {
        let mut entries: Vec<(String, u64)> = Vec::new();
        match backing::read_dir(fd) {
            Ok(rd) => {
                for e in rd {
                    match e {
                        Ok(e) => match e.file_name().into_string() {
                            Ok(n) => entries.push((n, e.ino())),
                            Err(raw) => {
                                let n = raw.to_string_lossy().into_owned();
                                self.problem(
                                    ProblemKind::Orphan,
                                    Some(path),
                                    &rel.join(&n),
                                    "backing name is not UTF-8 (not written by sealfs); left as is",
                                );
                            }
                        },
                        Err(e) => {
                            self.problem(ProblemKind::Io, Some(path), rel, format!("readdir: {e}"));
                        }
                    }
                }
            }
            Err(e) => {
                self.problem(ProblemKind::Io, Some(path), rel, format!("readdir: {e}"));
                return;
            }
        }
        entries.sort();
        let at_root = rel.as_os_str().is_empty();
        let names: std::collections::HashSet<String> =
            entries.iter().map(|(n, _)| n.clone()).collect();
        for (entry, _ino) in entries {
            let erel = rel.join(&entry);
            let reserved = reserved::classify(&entry, at_root);
            if reserved == Some(Reserved::Bookkeeping) {
                continue;
            }
            if reserved == Some(Reserved::Temp) {
                if self.live {
                    continue; // a record being replaced right now
                }
                let i = self.problem(
                    ProblemKind::TempFile,
                    Some(path),
                    &erel,
                    "leftover temp file of an interrupted write",
                );
                if self.salvage {
                    let r = sys::unlinkat(fd, OsStr::new(&entry), false);
                    self.record_repair(i, r, "removed");
                }
                continue;
            }
            let encoded = match (reserved, classify_entry(&entry)) {
                (Some(Reserved::Sidecar { owner }), _) => {
                    if !names.contains(owner) && !self.live {
                        let i = self.problem(
                            ProblemKind::StraySidecar,
                            Some(path),
                            &erel,
                            "long-name sidecar without its entry",
                        );
                        if self.salvage {
                            let r = sys::unlinkat(fd, OsStr::new(&entry), false);
                            self.record_repair(i, r, "removed");
                        }
                    }
                    continue;
                }
                (Some(_), _) | (None, EntryClass::Internal) => None,
                (None, EntryClass::Short) => Some(entry.clone()),
                (None, EntryClass::Long) => {
                    let side = reserved::sidecar_name(&entry);
                    let full = sys::read_regular_limited(fd, OsStr::new(&side), MAX_SIDECAR)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok());
                    match full {
                        Some(full) if long_entry_name(&full) == entry => Some(full),
                        _ => None,
                    }
                }
            };
            let st = match backing::stat(fd, OsStr::new(&entry)) {
                Ok(st) => st,
                Err(e) if self.vanished(&e) => continue,
                Err(e) => {
                    self.problem(ProblemKind::Io, Some(path), &erel, format!("stat: {e}"));
                    continue;
                }
            };
            let kind = EntryKind::of_mode(st.st_mode);
            let name = match encoded.as_deref().map(|e| dir.names.decrypt_name(e)) {
                Some(Ok(n)) => n,
                other => {
                    let why = match (&other, classify_entry(&entry)) {
                        (_, EntryClass::Internal) => "unknown file in the cipher directory".into(),
                        (None, _) => "long name whose sidecar is missing or does not match".into(),
                        (Some(Err(e)), _) => {
                            format!("name does not decrypt in this directory ({e})")
                        }
                        (Some(Ok(_)), _) => unreachable!(),
                    };
                    self.orphans.push(Orphan {
                        parent_rel: rel.to_path_buf(),
                        parent_plain: Some(path.to_vec()),
                        entry,
                        encoded,
                        kind,
                        why,
                    });
                    continue;
                }
            };
            let ctx = EncryptionContext {
                parent_dir_id: dir.id,
                name: &name,
            };
            let cpath = join(path, &name);
            self.check_entry(fd, &entry, kind, &ctx, &cpath, &erel);
        }
    }

    pub(super) fn check_entry(
        &mut self,
        parent: BorrowedFd<'_>,
        entry: &str,
        kind: EntryKind,
        ctx: &EncryptionContext<'_>,
        path: &[u8],
        rel: &Path,
    ) {
        match kind {
            EntryKind::Dir => {
                self.report.stats.directories += 1;
                let child = match backing::open_dir(parent, OsStr::new(entry)) {
                    Ok(c) => c,
                    Err(e) if self.vanished(&e) => return,
                    Err(e) => {
                        self.problem(ProblemKind::Io, Some(path), rel, format!("open: {e}"));
                        return;
                    }
                };
                let half_made = empty_without_records(child.as_fd()).filter(|tmps| {
                    // A temp copy that opens restores the record instead.
                    !tmps.iter().any(|t| {
                        matches!(self.read_copy(child.as_fd(), t, ctx), RecordCopy::Good(..))
                    })
                });
                if half_made.is_some() && self.live {
                    return; // being made or removed right now
                }
                if let Some(tmps) = half_made {
                    // Half made or half removed (a crash inside mkdir or
                    // rmdir): nothing below it can be lost.
                    let i = self.problem(
                        ProblemKind::DirRecordLost,
                        Some(path),
                        rel,
                        "empty directory without its record (a crash during mkdir or rmdir)",
                    );
                    if self.salvage {
                        drop(child);
                        let r = namespace::remove_half_made_dir(
                            parent,
                            &namespace::existing_entry(entry, None),
                            &tmps,
                        );
                        self.record_repair(i, r, "removed (it held nothing)");
                    }
                    return;
                }
                let d = self.check_until_stable(|c| {
                    let _ns = c.vol.namespace().read_recursive();
                    c.check_dir_record(child.as_fd(), ctx, path, rel)
                });
                if let Some(d) = d {
                    self.walk_dir(child.as_fd(), &d, path, rel);
                }
            }
            EntryKind::File => {
                self.report.stats.files += 1;
                self.check_until_stable(|c| {
                    let _ns = c.vol.namespace().read_recursive();
                    c.check_file(parent, entry, ctx, path, rel)
                });
            }
            EntryKind::Symlink => {
                self.report.stats.symlinks += 1;
                let target = backing::read_link(parent, OsStr::new(entry));
                if matches!(&target, Err(e) if self.vanished(e)) {
                    return;
                }
                let ok = match (&target, &self.root_dir) {
                    (Ok(t), Some(root)) => root.names.open_symlink_target(t).is_ok(),
                    (Ok(_), None) => true, // root key unknown: nothing to check against
                    (Err(_), _) => false,
                };
                if !ok {
                    let i = self.problem(
                        ProblemKind::Symlink,
                        Some(path),
                        rel,
                        "symlink target does not decrypt (tampered)",
                    );
                    self.unrepairable(
                        i,
                        "the target cannot be recovered; remove or recreate the link",
                    );
                }
                self.check_keyless_xattrs(parent, OsStr::new(entry), path, rel);
            }
            EntryKind::Other => {
                self.report.stats.other += 1;
                self.check_keyless_xattrs(parent, OsStr::new(entry), path, rel);
            }
        }
    }
}

/// If the backing directory `fd` has neither record copy and holds nothing
/// but temp files, those temp files' names.
fn empty_without_records(fd: BorrowedFd<'_>) -> Option<Vec<String>> {
    let mut tmps = Vec::new();
    for e in backing::read_dir(fd).ok()? {
        let n = e.ok()?.file_name().into_string().ok()?;
        if reserved::classify(&n, false) == Some(Reserved::Temp) {
            tmps.push(n);
        } else {
            return None;
        }
    }
    Some(tmps)
}
