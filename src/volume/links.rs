//! File headers with their link state: opening a file's key for the name it
//! was reached through (a path-bound slot, or a linked slot plus the link
//! table), adding and dropping names of a linked file, re-binding a header
//! for a rename, and re-wrapping one (docs/FORMAT.md §4.6, §6).
//!
//! Crash orders (the reasons are in docs/FORMAT.md §6.2):
//! * link of a one-name file: table {old, new} at 3840 + a linked slot
//!   beside the path slot, flag set → fdatasync → backing `linkat` → the
//!   path slot goes (no sync);
//! * link of a linked file: the table with the new tag, durably (inline:
//!   pwrite + fdatasync; external: setxattr + fsync, then the inline note
//!   pinning its generation + fdatasync) → `linkat`;
//! * unlink of one name of a linked file: backing `unlinkat` → its tag
//!   goes (inline: no sync, a stale tag is harmless; external: setxattr +
//!   fsync before the note pins the new generation, so a note is never
//!   ahead of the table it pins);
//! * rename of a linked file: the new tag, durably → `renameat2` → fsync of
//!   the new parent → the old tag goes.
//!
//! Every header or table write here keeps the backing file's mtime (the
//! plaintext file's mtime; a rename, a link or a rewrap is no write of
//! content).
//!
//! Owns: these steps and the link table's place on disk.
//! Must never: change a backing name (that is [`super::namespace`]), or
//! write content.

use std::fs::File;
use std::os::fd::AsFd;

use crate::crypto::SecretKey;
use crate::format::config::FEATURE_HARD_LINKS;
use crate::format::header::FLAG_LINKED;
use crate::format::header::{Binding, EncryptionContext, HeaderError, RecordKind, SealedRecord};
use crate::format::links::{
    external_generation_ok, Inline, LinkKeys, LinkTable, LinkTableError, LINKS_XATTR,
    LINK_TABLE_LEN, LINK_TABLE_OFFSET, MAX_LINKS,
};
use crate::sys::{self, TimeSpec};
use crate::volume::rewrap::RewrapTo;
use crate::volume::{content, Volume, VolumeError};

/// A file header opened for one of the file's names.
pub struct OpenedHeader {
    /// The decoded header.
    pub rec: SealedRecord,
    /// The file's data key.
    pub key: SecretKey,
    /// The slot that opened.
    pub slot: usize,
    /// Whether that slot is bound to the name itself (else: the linked slot).
    pub via_path: bool,
    /// Of a linked file: its link table. None for a file with one name (or
    /// one whose first link was cut short before its table was readable).
    pub links: Option<Links>,
}

impl OpenedHeader {
    /// The key version of the slot that opened (0 if none).
    pub fn version(&self) -> u32 {
        self.rec.slots[self.slot].map_or(0, |s| s.key_version)
    }
}

impl std::fmt::Debug for OpenedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedHeader")
            .field("slot", &self.slot)
            .field("linked", &self.links.is_some())
            .finish_non_exhaustive()
    }
}

/// A linked file's table, as read.
#[derive(Debug)]
pub struct Links {
    /// The table's keys.
    pub keys: LinkKeys,
    /// The tags.
    pub table: LinkTable,
    /// Stored in the backing xattr rather than inline.
    pub external: bool,
}

/// What step 1 of a rename left to do in step 3 (see
/// [`Volume::finish_rebind_file`]).
#[derive(Debug)]
pub enum FileRebind {
    /// A one-name file: the record with both slots; step 3 keeps the new one.
    Slot(SealedRecord),
    /// A linked file: step 3 drops the old name's tag.
    Table {
        /// The old name's tag.
        old: crate::format::links::LinkTag,
    },
}

/// What a link's step 1 left to do once the backing link exists.
#[derive(Debug)]
pub enum LinkStep {
    /// The file became linked; its path slot (index) goes.
    Converted(SealedRecord, usize),
    /// A tag was added to an existing table.
    Added,
}

/// Runs `f`, then puts the file's mtime back (header and table writes are
/// not content writes).
fn keeping_mtime<T>(
    file: &File,
    f: impl FnOnce() -> Result<T, VolumeError>,
) -> Result<T, VolumeError> {
    let before = sys::fstat(file.as_fd())?;
    let out = f()?;
    let m = TimeSpec::At(before.st_mtime, before.st_mtime_nsec);
    if let Err(e) = sys::futimens(file, TimeSpec::Omit, m) {
        tracing::warn!("mtime not restored after a header write: {e}");
    }
    Ok(out)
}

fn read_inline(file: &File) -> Result<[u8; LINK_TABLE_LEN], VolumeError> {
    let mut buf = [0u8; LINK_TABLE_LEN];
    sys::read_exact_at(file, &mut buf, LINK_TABLE_OFFSET).map_err(VolumeError::short_read)?;
    Ok(buf)
}

fn full_or_io(e: std::io::Error) -> VolumeError {
    match e.raw_os_error() {
        // The backing filesystem cannot hold a bigger table.
        Some(libc::ENOSPC | libc::E2BIG | libc::ERANGE) => VolumeError::TooManyLinks,
        Some(libc::ENOTSUP) => VolumeError::TooManyLinks,
        _ => VolumeError::Io(e),
    }
}

impl Volume {
    fn wrapper_for(&self) -> impl Fn(u32) -> Option<crate::crypto::SealingKey> + '_ {
        move |v| self.keyring().read().wrapper(v, RecordKind::File)
    }

    /// Reads a linked file's table (inline, or from the backing xattr).
    pub(crate) fn load_links(
        &self,
        file: &File,
        rec: &SealedRecord,
        key: &SecretKey,
    ) -> Result<Links, VolumeError> {
        let keys = LinkKeys::derive(key, self.volume_id(), rec.id);
        match keys.open_inline(&read_inline(file)?)? {
            Inline::Table(table) => Ok(Links {
                keys,
                table,
                external: false,
            }),
            note @ Inline::External { .. } => {
                let bytes = sys::fget_xattr(file, LINKS_XATTR)?.ok_or(LinkTableError::Tampered)?;
                let table = keys.open_external(&bytes)?;
                if !external_generation_ok(&note, table.generation) {
                    // An older value put back: it may list a name the
                    // file no longer has.
                    return Err(LinkTableError::RolledBack.into());
                }
                Ok(Links {
                    keys,
                    table,
                    external: true,
                })
            }
        }
    }

    /// Opens a file's header for the name `ctx`: its path slot, or, for a
    /// linked file, its linked slot and then the link table, which must
    /// list `ctx` ([`VolumeError::LinkNotListed`] otherwise).
    pub fn open_header(
        &self,
        file: &File,
        ctx: &EncryptionContext<'_>,
    ) -> Result<OpenedHeader, VolumeError> {
        let buf = content::read_header(file)?;
        let rec = SealedRecord::decode(RecordKind::File, &buf)?;
        let vid = self.volume_id();
        let wrapper = self.wrapper_for();
        // Shared storage: wrapped under a version another host made and
        // this daemon has not loaded yet: follow the stored keyring first.
        if self.shared().is_some()
            && rec
                .slots
                .iter()
                .flatten()
                .any(|s| wrapper(s.key_version).is_none())
        {
            let _ = self.refresh_keyring();
        }
        let opened = match rec.open(&vid, ctx, &wrapper) {
            Ok((key, slot)) => {
                // A file in the middle of becoming linked has a path slot and
                // a table; without a table it is a one-name file.
                let links = if rec.is_linked() {
                    self.load_links(file, &rec, &key).ok()
                } else {
                    None
                };
                OpenedHeader {
                    rec,
                    key,
                    slot,
                    via_path: true,
                    links,
                }
            }
            Err(first) if rec.is_linked() => {
                let (key, slot) = match rec.open_linked(&vid, &wrapper) {
                    Ok(k) => k,
                    Err(HeaderError::ContextMismatch) => return Err(first.into()),
                    Err(e) => return Err(e.into()),
                };
                let links = self.load_links(file, &rec, &key)?;
                if !links.table.contains(&links.keys.tag(ctx)) {
                    return Err(VolumeError::LinkNotListed);
                }
                OpenedHeader {
                    rec,
                    key,
                    slot,
                    via_path: false,
                    links: Some(links),
                }
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(s) = &opened.rec.slots[opened.slot] {
            crate::metrics::key_use(crate::metrics::KeyUse::Unwrap, s.key_version);
        }
        Ok(opened)
    }

    /// A linked file opened through a path slot left by a link cut short
    /// (flag, table and linked slot written, path slot not yet dropped):
    /// drops that path slot now, after making sure the table is durable, so
    /// the name is from now on vouched for by the table alone.
    fn complete_conversion(&self, file: &File, h: &mut OpenedHeader) -> Result<(), VolumeError> {
        if !(h.via_path && h.links.is_some()) {
            return Ok(());
        }
        let linked = match h.rec.open_linked(&self.volume_id(), &self.wrapper_for()) {
            Ok((_, i)) if i != h.slot => i,
            // No linked slot beside it: not a linked file after all.
            _ => {
                h.links = None;
                return Ok(());
            }
        };
        file.sync_data()?;
        h.rec.slots[h.slot] = None;
        content::write_header(file, &h.rec.encode())?;
        h.slot = linked;
        h.via_path = false;
        Ok(())
    }

    /// Stores `links` (inline while it fits and was inline; else in the
    /// backing xattr), durably when `durable` (before a backing link or
    /// rename that needs it).
    fn store_links(
        &self,
        file: &File,
        links: &mut Links,
        durable: bool,
    ) -> Result<(), VolumeError> {
        if links.table.tags.len() > MAX_LINKS {
            return Err(VolumeError::TooManyLinks);
        }
        if !links.external && links.table.fits_inline() {
            let inline = links.keys.seal_inline(Some(&links.table), 0)?;
            sys::write_all_at(file, &inline, LINK_TABLE_OFFSET)?;
            if durable {
                file.sync_data()?;
            }
            return Ok(());
        }
        let ext = links.keys.seal_external(&links.table)?;
        sys::fset_xattr(file, LINKS_XATTR, &ext, 0).map_err(full_or_io)?;
        // The external table is durable before the inline note pins its
        // generation (a note ahead of the table would refuse it).
        file.sync_all()?;
        let note = links.keys.seal_inline(None, links.table.generation)?;
        sys::write_all_at(file, &note, LINK_TABLE_OFFSET)?;
        if durable {
            file.sync_data()?;
        }
        links.external = true;
        Ok(())
    }

    /// Step 1 of a link: makes the file reached as `src` also openable as
    /// `dst`, durably, before the caller makes the backing link. A one-name
    /// file becomes linked (table {src, dst}, a linked slot beside its path
    /// slot); a linked file gains `dst`'s tag. Finish with
    /// [`Volume::finish_link`] (also after a failed backing link, with
    /// `made` false).
    pub fn begin_link(
        &self,
        file: &File,
        src: &EncryptionContext<'_>,
        dst: &EncryptionContext<'_>,
    ) -> Result<LinkStep, VolumeError> {
        self.check_writable()?;
        if !self.config().has_feature(FEATURE_HARD_LINKS) {
            return Err(VolumeError::FeatureMissing(FEATURE_HARD_LINKS));
        }
        let mut h = self.open_header(file, src)?;
        keeping_mtime(file, || {
            self.complete_conversion(file, &mut h)?;
            self.link_step(file, &mut h, src, dst)
        })
    }

    fn link_step(
        &self,
        file: &File,
        h: &mut OpenedHeader,
        src: &EncryptionContext<'_>,
        dst: &EncryptionContext<'_>,
    ) -> Result<LinkStep, VolumeError> {
        match &mut h.links {
            Some(links) => {
                links.table.add(links.keys.tag(dst));
                self.store_links(file, links, true)?;
                Ok(LinkStep::Added)
            }
            _ => {
                let keys = LinkKeys::derive(&h.key, self.volume_id(), h.rec.id);
                let mut links = Links {
                    table: LinkTable {
                        generation: 1,
                        tags: vec![keys.tag(src), keys.tag(dst)],
                    },
                    keys,
                    external: false,
                };
                self.store_links(file, &mut links, false)?;
                let (v, w) = self.same_key_wrapper(h.version(), RecordKind::File)?;
                let vid = self.volume_id();
                let linked = h.rec.make_slot(&vid, &h.key, v, &w, Binding::Linked)?;
                let mut rec = h.rec.clone();
                rec.flags |= FLAG_LINKED;
                rec.slots[1 - h.slot] = Some(linked);
                content::write_header(file, &rec.encode())?;
                file.sync_data()?;
                Ok(LinkStep::Converted(rec, h.slot))
            }
        }
    }

    /// Step 3 of a link (after the backing link, or after it failed:
    /// `made` false drops `dst`'s tag again). A converted file loses its
    /// path slot (no sync: the table that lists the first name is durable).
    pub fn finish_link(
        &self,
        file: &File,
        step: LinkStep,
        dst: &EncryptionContext<'_>,
        made: bool,
    ) -> Result<(), VolumeError> {
        keeping_mtime(file, || {
            if let LinkStep::Converted(mut rec, path_slot) = step {
                rec.slots[path_slot] = None;
                content::write_header(file, &rec.encode())?;
            }
            if !made {
                self.drop_link(file, dst)?;
            }
            Ok(())
        })
    }

    /// Drops the tag of the name `ctx` from a linked file's table, after
    /// that backing name is gone (unlink, or replaced by a rename): no sync,
    /// a stale tag is harmless. A one-name file is left alone.
    pub fn drop_link(&self, file: &File, ctx: &EncryptionContext<'_>) -> Result<(), VolumeError> {
        self.check_writable()?;
        let mut h = self.open_header(file, ctx)?;
        if h.links.is_none() {
            return Ok(());
        }
        keeping_mtime(file, || {
            self.complete_conversion(file, &mut h)?;
            if let Some(links) = &mut h.links {
                if links.table.remove(&links.keys.tag(ctx)) {
                    self.store_links(file, links, false)?;
                }
            }
            Ok(())
        })
    }

    /// Step 1 of a file rename: makes the file openable as `new` beside
    /// `old`, durably. A one-name file gets a slot bound to `new` beside the
    /// one bound to `old`; a linked file gets `new`'s tag.
    pub fn begin_rebind_file(
        &self,
        file: &File,
        old: &EncryptionContext<'_>,
        new: &EncryptionContext<'_>,
    ) -> Result<FileRebind, VolumeError> {
        self.check_writable()?;
        // Shared storage: the header re-read and rewritten under its lock.
        let _locked = self.lock_header(file)?;
        let mut h = self.open_header(file, old)?;
        keeping_mtime(file, || {
            self.complete_conversion(file, &mut h)?;
            self.rebind_step(file, &mut h, old, new)
        })
    }

    fn rebind_step(
        &self,
        file: &File,
        h: &mut OpenedHeader,
        old: &EncryptionContext<'_>,
        new: &EncryptionContext<'_>,
    ) -> Result<FileRebind, VolumeError> {
        match &mut h.links {
            Some(links) => {
                let old_tag = links.keys.tag(old);
                links.table.add(links.keys.tag(new));
                self.store_links(file, links, true)?;
                Ok(FileRebind::Table { old: old_tag })
            }
            _ => {
                let (v, w) = self.same_key_wrapper(h.version(), RecordKind::File)?;
                let vid = self.volume_id();
                let fresh = h.rec.make_slot(&vid, &h.key, v, &w, Binding::Path(new))?;
                let mut rec = h.rec.clone();
                rec.slots = [rec.slots[h.slot], Some(fresh)];
                content::write_header(file, &rec.encode())?;
                file.sync_data()?;
                Ok(FileRebind::Slot(rec))
            }
        }
    }

    /// Step 3 of a file rename: drops the old binding (no sync needed: it
    /// only matters for the old, now vacant, name).
    pub fn finish_rebind_file(
        &self,
        file: &File,
        step: FileRebind,
        new: &EncryptionContext<'_>,
    ) -> Result<(), VolumeError> {
        let _locked = self.lock_header(file)?;
        keeping_mtime(file, || match step {
            FileRebind::Slot(mut rec) => {
                rec.slots = [rec.slots[1], None];
                content::write_header(file, &rec.encode())?;
                Ok(())
            }
            FileRebind::Table { old } => {
                let mut h = self.open_header(file, new)?;
                if let Some(links) = &mut h.links {
                    if links.table.remove(&old) {
                        self.store_links(file, links, false)?;
                    }
                }
                Ok(())
            }
        })
    }

    /// Re-wraps a file header under the primary key version with its
    /// binding unchanged (a path slot for a one-name file, a linked slot for
    /// a linked one): the new slot is added durably, then the old one goes.
    /// Returns whether anything changed.
    pub(crate) fn rewrap_file_header(
        &self,
        file: &File,
        ctx: &EncryptionContext<'_>,
        to: RewrapTo,
    ) -> Result<bool, VolumeError> {
        let _locked = self.lock_header(file)?;
        let buf = content::read_header(file)?;
        let rec = SealedRecord::decode(RecordKind::File, &buf)?;
        let Some(target) = self.rewrap_target(&rec, to) else {
            return Ok(false);
        };
        let mut h = self.open_header(file, ctx)?;
        let (v, w) = self.key_wrapper(target, RecordKind::File)?;
        let vid = self.volume_id();
        keeping_mtime(file, || {
            self.complete_conversion(file, &mut h)?;
            let binding = if h.links.is_some() {
                Binding::Linked
            } else {
                Binding::Path(ctx)
            };
            let fresh = h.rec.make_slot(&vid, &h.key, v, &w, binding)?;
            let mut rec = h.rec.clone();
            rec.slots = [rec.slots[h.slot], Some(fresh)];
            content::write_header(file, &rec.encode())?;
            file.sync_data()?;
            rec.slots = [Some(fresh), None];
            content::write_header(file, &rec.encode())?;
            Ok(true)
        })
    }
}
