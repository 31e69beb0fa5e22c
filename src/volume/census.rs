//! Counting headers and directory records per master key version (a full
//! scan), and reporting each with its plaintext path: what `ctl census`,
//! `trim`'s safety check and the library's `files_by_key_version` show.
//!
//! Owns: the tally, on a snapshot of the wrapping keys (a scan never holds
//! the keyring lock, so rotation is not blocked).
//! Must never: change anything, or report key material.

use std::collections::BTreeMap;
use std::ffi::OsStr;

use serde::Serialize;

use crate::format::header::{EncryptionContext, RecordKind, SealedRecord};
use crate::format::reserved::DIR_RECORDS;
use crate::volume::backing;
use crate::volume::walk::Item;
use crate::volume::{content, read_record_copy, Volume, VolumeError};

/// Headers per master key version, from a full scan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Census {
    /// File headers per key version (of the slot that opens).
    pub files: BTreeMap<u32, u64>,
    /// Directory records per key version.
    pub dirs: BTreeMap<u32, u64>,
    /// Headers or records that did not open (tampered, moved, or under a
    /// retired/destroyed version).
    pub unreadable: u64,
    /// Unreadable ones per key version they name (e.g. a destroyed version).
    pub unreadable_by_version: BTreeMap<u32, u64>,
    /// When the scan finished (seconds since the epoch).
    pub scanned_at: u64,
}

/// What a census found for one directory or file: its plaintext path and
/// the key version of the slot that opens its header.
#[derive(Debug)]
pub struct CensusEntry<'a> {
    /// Plaintext path from the volume root, components joined by `/`
    /// (empty for the root directory).
    pub path: &'a [u8],
    /// A directory (its record) rather than a file (its header).
    pub is_dir: bool,
    /// The key version that opens it; `None` if it does not open (tampered,
    /// moved, or under a retired or destroyed version).
    pub key_version: Option<u32>,
}

impl Volume {
    /// Counts headers and directory records per key version (a full scan).
    pub fn census(&self) -> Result<Census, VolumeError> {
        self.census_with(&mut |_| {})
    }

    /// Like [`Volume::census`], and reports every directory and file it
    /// reaches to `on_entry`, with its plaintext path and key version.
    pub fn census_with(
        &self,
        on_entry: &mut dyn FnMut(CensusEntry<'_>),
    ) -> Result<Census, VolumeError> {
        let mut c = Census::default();
        // Snapshot the wrapping keys so rotation is not blocked by the scan.
        let wrappers: std::collections::HashMap<(u32, bool), crate::crypto::SealingKey> = {
            let kr = self.keyring().read();
            kr.keys()
                .iter()
                .flat_map(|key| key.versions.iter())
                .flat_map(|v| {
                    [RecordKind::File, RecordKind::Dir]
                        .into_iter()
                        .filter_map(|k| {
                            kr.census_wrapper(v.version, k)
                                .map(|w| ((v.version, k == RecordKind::File), w))
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let wrapper = |kind: RecordKind| {
            let wrappers = &wrappers;
            move |v: u32| wrappers.get(&(v, kind == RecordKind::File)).cloned()
        };
        let vid = self.volume_id();
        let mut tally =
            |kind: RecordKind, bytes: &[u8], ctx: &EncryptionContext<'_>, path: &[u8]| {
                let report = |key_version| CensusEntry {
                    path,
                    is_dir: kind == RecordKind::Dir,
                    key_version,
                };
                let rec = match SealedRecord::decode(kind, bytes) {
                    Ok(r) => r,
                    Err(_) => {
                        c.unreadable += 1;
                        on_entry(report(None));
                        return;
                    }
                };
                let w = wrapper(kind);
                // A linked file's slot names no path (its table is for
                // opening, not for counting key versions).
                let opened = rec.open(&vid, ctx, &w).or_else(|e| {
                    if rec.is_linked() {
                        rec.open_linked(&vid, &w)
                    } else {
                        Err(e)
                    }
                });
                match opened {
                    Ok((_, slot)) => {
                        let v = rec.slots[slot].map(|s| s.key_version).unwrap_or(0);
                        let map = if kind == RecordKind::File {
                            &mut c.files
                        } else {
                            &mut c.dirs
                        };
                        *map.entry(v).or_default() += 1;
                        on_entry(report(Some(v)));
                    }
                    Err(_) => {
                        c.unreadable += 1;
                        on_entry(report(None));
                        if let Some(s) = rec.slots.iter().flatten().next() {
                            *c.unreadable_by_version.entry(s.key_version).or_default() += 1;
                        }
                    }
                }
            };
        self.walk(
            &mut |item| {
                match item {
                    Item::Dir { fd, ctx, path } => {
                        let name = DIR_RECORDS
                            .into_iter()
                            .find(|n| backing::stat(fd, OsStr::new(n)).is_ok())
                            .unwrap_or(DIR_RECORDS[0]);
                        let buf = read_record_copy(fd, name)?;
                        tally(RecordKind::Dir, &buf, &ctx, path);
                    }
                    Item::File {
                        parent,
                        entry,
                        ctx,
                        path,
                    } => {
                        let f = backing::open_regular(parent, OsStr::new(entry), libc::O_RDONLY)?;
                        match content::read_header(&f) {
                            Ok(header) => tally(RecordKind::File, &header, &ctx, path),
                            Err(_) => tally(RecordKind::File, &[], &ctx, path),
                        }
                    }
                }
                Ok(())
            },
            &mut |_| {},
        )?;
        c.scanned_at = crate::sys::now_secs();
        Ok(c)
    }
}
