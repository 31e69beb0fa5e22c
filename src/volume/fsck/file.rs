//! fsck of one regular file: its header under its path's context, then its
//! content through [`crate::volume::content`]'s scan: bad chunks, a cut
//! final chunk (last-chunk-flag format), group states that are missing or
//! do not open, a lost end, a truncation and a stray tail (sealed group
//! states). Salvage re-seals bad chunks as zeros (and a cut final chunk with
//! its flag), rebuilds lost group states, and cuts the ciphertext to the
//! sealed size, each repair reported with the ranges it touched.
//!
//! Owns: what a file must look like, and which of its chunks salvage writes.
//! Must never: write a chunk that checked clean, or compute backing offsets
//! (the content layer does).

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::format::chunk::ContentFormat;
use crate::format::header::{EncryptionContext, HeaderError};
use crate::format::layout::{plaintext_size, CHUNKS_PER_GROUP};
use crate::format::names::{classify_entry, EntryClass};
use crate::format::xattrs::{Owner, XattrCipher};
use crate::sys;
use crate::volume::backing;
use crate::volume::content::{ChunkScan, Reseal, SealedFile};
use crate::volume::VolumeError;

use super::report::ByteRange;
use super::{chunk_ranges, Checker, ProblemKind};

/// Plaintext ranges of chunks `ks` in words: "bytes a..b (chunks x-y), …".
fn describe(ranges: &[ByteRange]) -> String {
    let v: Vec<String> = ranges
        .iter()
        .map(|r| {
            format!(
                "bytes {}..{} (chunks {}-{})",
                r.start, r.end, r.first_chunk, r.last_chunk
            )
        })
        .collect();
    v.join(", ")
}

/// The plaintext range of groups `gs` in a file of `size` bytes.
fn group_ranges(gs: &[u64], size: u64) -> Vec<ByteRange> {
    let chunks: Vec<u64> = gs
        .iter()
        .flat_map(|g| g * CHUNKS_PER_GROUP..(g + 1) * CHUNKS_PER_GROUP)
        .filter(|k| k * 4096 < size.max(1))
        .collect();
    let mut r = chunk_ranges(&chunks, size);
    if r.is_empty() {
        // An empty file's group 0.
        r.push(ByteRange {
            first_chunk: 0,
            last_chunk: 0,
            start: 0,
            end: 0,
        });
    }
    r
}

impl Checker<'_> {
    /// An empty backing file: a create cut by a crash or power loss before
    /// the file's header was written (a backing filesystem without
    /// `O_TMPFILE` names the file first; docs/FORMAT.md §11). It never held
    /// data, so salvage removes it (and its long-name sidecar). A live check
    /// leaves it alone: it may be a create in progress.
    fn cut_create(&mut self, parent: BorrowedFd<'_>, entry: &str, path: &[u8], rel: &Path) {
        let i = self.problem(
            ProblemKind::Header,
            Some(path),
            rel,
            "empty backing file without a header: a create cut by a crash (it never held data)",
        );
        if self.salvage {
            let r = sys::unlinkat(parent, OsStr::new(entry), false).map(|()| {
                if classify_entry(entry) == EntryClass::Long {
                    let side = crate::format::reserved::sidecar_name(entry);
                    let _ = sys::unlinkat(parent, OsStr::new(&side), false);
                }
            });
            self.record_repair(i, r, "removed (it held no data)");
        }
    }

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
        if csize == 0 {
            if !self.live {
                self.cut_create(parent, entry, path, rel);
            }
            return;
        }
        if plaintext_size(csize).is_err() {
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
        let format = self.vol.content_format();
        let sealed = match SealedFile::open_for_check(file, &key, rec.id, format) {
            Ok(s) => s,
            Err(e) => {
                self.problem(ProblemKind::Io, Some(path), rel, format!("open: {e}"));
                return done(self);
            }
        };
        let scan = sealed.scan();
        self.report.stats.chunks += scan.checked;
        self.report.stats.bytes += sealed.size();
        match format {
            ContentFormat::LastChunkFlag => self.check_content_v1(&sealed, scan, path, rel),
            ContentFormat::SealedGroupState | ContentFormat::PackedTails => {
                self.check_content_v2(&sealed, scan, path, rel)
            }
        }
        done(self);
    }

    fn check_content_v1(&mut self, sealed: &SealedFile, scan: ChunkScan, path: &[u8], rel: &Path) {
        let size = sealed.size();
        let ChunkScan { bad, cut, .. } = scan;
        let mut fixes: Vec<(u64, Reseal)> = Vec::new();
        let mut fixed_by_rewrite: Vec<(usize, &str)> = Vec::new();
        if !bad.is_empty() {
            let ranges = chunk_ranges(&bad, size);
            let i = self.problem(
                ProblemKind::Chunk,
                Some(path),
                rel,
                format!(
                    "{} chunk(s) fail authentication: {}",
                    bad.len(),
                    describe(&ranges)
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
        let tail = sealed.stray_tail();
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
                let r = sealed
                    .reopen_writable()
                    .map_err(VolumeError::from)
                    .and_then(|mut w| w.trim_stray_tail().map(|_| w))
                    .and_then(|w| Ok(w.backing().sync_data()?));
                self.record_repair(i, r, "trimmed to the last chunk");
            }
        }
    }

    fn check_content_v2(&mut self, sealed: &SealedFile, scan: ChunkScan, path: &[u8], rel: &Path) {
        let size = sealed.size();
        // Problems a rebuild repairs (their index), and whether only the
        // stray tail is wrong (then a cut is the whole repair).
        let mut rebuilt: Vec<usize> = Vec::new();
        if scan.end_lost {
            let lg = crate::format::layout::last_group(size);
            let i = self.problem(
                ProblemKind::GroupState,
                Some(path),
                rel,
                format!(
                    "no group state carries the file's size (its end was cut or zeroed): {size} bytes assumed from the ciphertext's length"
                ),
            );
            self.report.problems[i].ranges = group_ranges(&[lg], size);
            rebuilt.push(i);
        }
        if !scan.bad_states.is_empty() {
            let gs: Vec<u64> = scan.bad_states.iter().map(|(g, _)| *g).collect();
            let ranges = group_ranges(&gs, size);
            let why: Vec<String> = scan.bad_states.iter().map(|(_, e)| e.to_string()).collect();
            let i = self.problem(
                ProblemKind::GroupState,
                Some(path),
                rel,
                format!(
                    "{} group state(s) missing or failing authentication ({}): which chunks of {} hold data is unknown",
                    gs.len(),
                    why.join("; "),
                    describe(&ranges)
                ),
            );
            self.report.problems[i].ranges = ranges;
            rebuilt.push(i);
        }
        if !scan.bad.is_empty() {
            let ranges = chunk_ranges(&scan.bad, size);
            let i = self.problem(
                ProblemKind::Chunk,
                Some(path),
                rel,
                format!(
                    "{} chunk(s) marked written fail authentication (unstored, tampered or zeroed): {}",
                    scan.bad.len(),
                    describe(&ranges)
                ),
            );
            self.report.problems[i].ranges = ranges;
            rebuilt.push(i);
        }
        if let Some(from) = scan.lost_from {
            let first = from / 4096;
            let last = crate::format::layout::chunk_count(size).saturating_sub(1);
            let i = self.problem(
                ProblemKind::Truncated,
                Some(path),
                rel,
                format!(
                    "ciphertext cut: bytes {from}..{size} of the sealed size {size} are not stored"
                ),
            );
            self.report.problems[i].ranges = vec![ByteRange {
                first_chunk: first,
                last_chunk: last.max(first),
                start: from,
                end: size,
            }];
            rebuilt.push(i);
        }
        if !scan.stale_last.is_empty() {
            let i = self.problem(
                ProblemKind::GroupState,
                Some(path),
                rel,
                format!(
                    "group(s) {:?} before the last one still carry the last-group flag (a crash while the file grew)",
                    scan.stale_last
                ),
            );
            self.report.problems[i].ranges = group_ranges(&scan.stale_last, size);
            rebuilt.push(i);
        }
        let tail = sealed.stray_tail();
        let mut trimmed: Option<usize> = None;
        if tail > 0 {
            let i = self.problem(
                ProblemKind::SizeTail,
                Some(path),
                rel,
                format!(
                    "{tail} stray ciphertext bytes past the sealed size {size} (a crash while the file grew or shrank, or bytes appended): never read"
                ),
            );
            trimmed = Some(i);
        } else if scan.unsettled {
            let i = self.problem(
                ProblemKind::GroupState,
                Some(path),
                rel,
                "the last group's state does not carry the size (an interrupted truncation)"
                    .to_string(),
            );
            rebuilt.push(i);
        }
        if !self.salvage || (rebuilt.is_empty() && trimmed.is_none()) {
            return;
        }
        let mut w = match sealed.reopen_writable() {
            Ok(w) => w,
            Err(e) => {
                for i in rebuilt.into_iter().chain(trimmed) {
                    self.record_repair(i, Err(e.to_string()), "");
                }
                return;
            }
        };
        if rebuilt.is_empty() {
            let r = w
                .trim_stray_tail()
                .and_then(|_| Ok(w.backing().sync_data()?))
                .map_err(|e| e.to_string());
            if let Some(i) = trimmed {
                self.record_repair(i, r, "cut to the sealed size");
            }
            return;
        }
        match w.rebuild(&scan) {
            Ok(done) => {
                let mut what = Vec::new();
                if !done.zeroed.is_empty() {
                    what.push(format!(
                        "re-sealed as zeros (content lost): {}",
                        describe(&chunk_ranges(&done.zeroed, done.size))
                    ));
                }
                if !done.taken_as_holes.is_empty() {
                    what.push(format!(
                        "found empty and taken as holes: {}",
                        describe(&chunk_ranges(&done.taken_as_holes, done.size))
                    ));
                }
                what.push(format!(
                    "{} group state(s) rewritten, size {}; ciphertext cut to it",
                    done.states, done.size
                ));
                let what = what.join("; ");
                for i in rebuilt.into_iter().chain(trimmed) {
                    self.record_repair(i, Ok::<(), String>(()), &what);
                }
            }
            Err(e) => {
                for i in rebuilt.into_iter().chain(trimmed) {
                    self.record_repair(i, Err(e.to_string()), "");
                }
            }
        }
    }

    /// The sealed attributes of a symlink or special node: under the
    /// node's id (`keyless-xattr-ids`; a node without one has none that
    /// open) or, on an older volume, the root directory's. Nothing to check
    /// against while the root's key is unknown.
    pub(super) fn check_keyless_xattrs(
        &mut self,
        dir: BorrowedFd<'_>,
        entry: &OsStr,
        path: &[u8],
        rel: &Path,
    ) {
        let Some(root) = self.root_dir.clone() else {
            return;
        };
        let cipher = if self
            .vol
            .config()
            .has_feature(crate::format::config::FEATURE_KEYLESS_XATTR_IDS)
        {
            match crate::volume::xattrs::keyless_node_id(dir, entry, false) {
                Ok(id) => root.node_xattr_cipher(id.unwrap_or([0; 16])),
                Err(_) => {
                    self.problem(
                        ProblemKind::Xattr,
                        Some(path),
                        rel,
                        "the node id (trusted.sealfs.node) is malformed: its attributes cannot open"
                            .to_string(),
                    );
                    return;
                }
            }
        } else {
            root.keyless_xattr_cipher()
        };
        self.check_xattrs(dir, entry, &cipher, path, rel);
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
