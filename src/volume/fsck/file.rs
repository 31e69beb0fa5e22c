//! fsck of one regular file: its header under its path's context, every
//! chunk (through [`crate::volume::content`]'s scan), a cut final chunk,
//! and a stray ciphertext tail; salvage re-seals bad chunks as zeros and a
//! cut final chunk with its flag, and trims the tail.
//!
//! Owns: what a file must look like, and which of its chunks salvage writes.
//! Must never: write a chunk that checked clean, or compute backing offsets
//! (the content layer does).

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::format::chunk::ChunkCipher;
use crate::format::header::{EncryptionContext, HeaderError};
use crate::format::layout::plaintext_size;
use crate::format::xattrs::{Owner, XattrCipher};
use crate::sys;
use crate::volume::backing;
use crate::volume::content::{ChunkScan, Reseal, SealedFile};
use crate::volume::VolumeError;

use super::{chunk_ranges, Checker, ProblemKind};

impl Checker<'_> {
    pub(super) fn check_file(
        &mut self,
        parent: BorrowedFd<'_>,
        entry: &str,
        ctx: &EncryptionContext<'_>,
        path: &[u8],
        rel: &Path,
    ) {
        let file = match backing::open_regular(parent, OsStr::new(entry), libc::O_RDONLY) {
            Ok(f) => f,
            Err(e) if self.vanished(&e) => return,
            Err(e) => {
                self.problem(ProblemKind::Io, Some(path), rel, format!("open: {e}"));
                return;
            }
        };
        let csize = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                self.problem(ProblemKind::Io, Some(path), rel, format!("stat: {e}"));
                return;
            }
        };
        let done = |c: &Self| {
            c.progress.done_bytes.fetch_add(csize, Ordering::Relaxed);
        };
        let Ok(size) = plaintext_size(csize) else {
            let i = self.problem(
                ProblemKind::Header,
                Some(path),
                rel,
                format!("file truncated inside its header block ({csize} bytes): its key is lost"),
            );
            self.unrepairable(i, "the file's data key is lost");
            return done(self);
        };
        // A linked file opens through its link table, which must list
        // this name (a planted backing link or a stale table does not).
        let opened = self.vol.open_header(&file, ctx);
        let (rec, key) = match opened {
            Ok(h) => (h.rec, h.key),
            Err(e) => {
                let (kind, why) = match &e {
                    VolumeError::Header(HeaderError::ContextMismatch) => (
                        ProblemKind::ContextMismatch,
                        "the file's key is bound to another path (moved, copied or tampered)",
                    ),
                    VolumeError::LinkNotListed => (
                        ProblemKind::ContextMismatch,
                        "the file's link table does not list this name (a planted or stale link)",
                    ),
                    VolumeError::LinkTable(_) => (
                        ProblemKind::Header,
                        "the file's link table does not open: its names cannot be vouched for",
                    ),
                    VolumeError::Header(HeaderError::KeyVersionUnavailable(_)) => (
                        ProblemKind::KeyUnavailable,
                        "re-enable the version ('sealfs ctl untrim') if it still exists",
                    ),
                    _ => (ProblemKind::Header, "the file's data key is lost"),
                };
                let i = self.problem(kind, Some(path), rel, format!("header: {e}"));
                self.unrepairable(i, why);
                return done(self);
            }
        };
        let xc = XattrCipher::new(&key, rec.id, Owner::File);
        self.check_xattrs(parent, OsStr::new(entry), &xc, path, rel);
        let sealed = SealedFile::new(file, ChunkCipher::new(&key, rec.id), size);
        let ChunkScan { bad, cut, checked } = sealed.scan();
        self.report.stats.chunks += checked;
        self.report.stats.bytes += size;
        let mut fixes: Vec<(u64, Reseal)> = Vec::new();
        let mut fixed_by_rewrite: Vec<(usize, &str)> = Vec::new();
        if !bad.is_empty() {
            let ranges = chunk_ranges(&bad, size);
            let desc: Vec<String> = ranges
                .iter()
                .map(|r| {
                    format!(
                        "bytes {}..{} (chunks {}-{})",
                        r.start, r.end, r.first_chunk, r.last_chunk
                    )
                })
                .collect();
            let i = self.problem(
                ProblemKind::Chunk,
                Some(path),
                rel,
                format!(
                    "{} chunk(s) fail authentication: {}",
                    bad.len(),
                    desc.join(", ")
                ),
            );
            self.report.problems[i].ranges = ranges;
            fixes.extend(bad.iter().map(|&k| (k, Reseal::Zeros)));
            fixed_by_rewrite.push((i, "bad chunks replaced by zeros"));
        }
        if let Some(k) = cut {
            let i = self.problem(
                ProblemKind::Truncated,
                Some(path),
                rel,
                format!("file was cut after chunk {k} (at byte {size}): what followed is lost"),
            );
            self.report.problems[i].ranges = chunk_ranges(&[k], size);
            fixes.push((k, Reseal::KeepContent));
            fixed_by_rewrite.push((i, "final chunk re-sealed as final (content kept)"));
        }
        if self.salvage && !fixes.is_empty() {
            let r = sealed
                .reopen_writable()
                .map_err(VolumeError::from)
                .and_then(|w| w.reseal(&fixes))
                .map_err(|e| e.to_string());
            for (i, what) in fixed_by_rewrite {
                self.record_repair(i, r.clone(), what);
            }
        }
        let tail = sealed.stray_tail(csize);
        if tail > 0 {
            let i = self.problem(
                ProblemKind::SizeTail,
                Some(path),
                rel,
                format!(
                    "{tail} stray ciphertext bytes after the last chunk (a crash while the file grew)"
                ),
            );
            if self.salvage {
                let r = sealed.reopen_writable().and_then(|w| w.trim_stray_tail());
                self.record_repair(i, r, "trimmed to the last chunk");
            }
        }
        done(self);
    }

    /// Every sealed attribute of an object must open with its keys (a value
    /// moved from another object or name, or tampered with, does not).
    /// Salvage removes one that does not: it cannot be read again.
    pub(super) fn check_xattrs(
        &mut self,
        dir: BorrowedFd<'_>,
        entry: &OsStr,
        cipher: &XattrCipher,
        path: &[u8],
        rel: &Path,
    ) {
        let Ok(names) = sys::list_xattrs(dir, entry) else {
            return;
        };
        let prefix = cipher.prefix().as_bytes();
        for b in names.into_iter().filter(|b| b.starts_with(prefix)) {
            let backing = String::from_utf8_lossy(&b).into_owned();
            let Ok(Some(sealed)) = sys::get_xattr(dir, entry, &backing) else {
                continue;
            };
            if cipher.open(&backing, &sealed).is_ok() {
                continue;
            }
            let i = self.problem(
                ProblemKind::Xattr,
                Some(path),
                rel,
                "an extended attribute does not open (moved from another file or name, or tampered)"
                    .to_string(),
            );
            if self.salvage {
                let r = sys::remove_xattr(dir, entry, &backing);
                self.record_repair(i, r, "the attribute removed");
            }
        }
    }
}
