//! Every name sealfs reserves in a cipher directory, and the rule that tells
//! them apart from encrypted entry names (docs/FORMAT.md §1).
//!
//! Encrypted names are base64url (§7.1), which never contains `.` (nor `+`):
//! so every dotted name in a backing directory is sealfs's own, except a
//! long-name entry `sealfs.L.<hash>` (§7.2), which stands for an encrypted
//! name. In the root of CIPHERDIR live the volume's bookkeeping files; in
//! every backing directory, the two copies of its directory record; and
//! anywhere, long-name sidecars and the temp files of interrupted writes.
//!
//! Owns: the reserved names and their classification ([`is_reserved`],
//! [`classify`]), used by directory listing, fsck, rmdir's emptiness check
//! and the library instead of lists of their own.
//! Must never: perform I/O, or decide what to do with a name (listing skips
//! it, fsck reports it: that is theirs).

/// Volume config (§1.1).
pub const CONFIG_FILE: &str = "sealfs.toml";
/// The sealed keyring (§2).
pub const KEYRING_FILE: &str = "sealfs.keyring";
/// The keyring's second copy.
pub const KEYRING_BACKUP: &str = "sealfs.keyring.bak";
/// A directory's record (§5), in every backing directory.
pub const DIR_RECORD: &str = "sealfs.dir";
/// Its second copy.
pub const DIR_RECORD_BACKUP: &str = "sealfs.dir.bak";
/// Lock file: `flock`ed by the one process that has the volume open for writing.
pub const LOCK_FILE: &str = "sealfs.lock";
/// The schedule lease of a shared-storage volume (§1.2).
pub const LEASE_FILE: &str = "sealfs.lease";
/// The sealed grant store (§13).
pub const GRANTS_FILE: &str = "sealfs.grants";
/// The audit log's folder (§12).
pub const AUDIT_DIR: &str = "sealfs.audit";
/// Inside [`AUDIT_DIR`]: one folder per host's audit stream,
/// `hosts/<HOST>/` (docs/FORMAT.md §12.4).
pub const AUDIT_HOSTS_DIR: &str = "hosts";
/// The prune checkpoint, inside [`AUDIT_DIR`] (docs/FORMAT.md §12.3).
pub const AUDIT_CHECKPOINT: &str = "pruned.ckpt";
/// The mount root's presented mode, owner and group, sealed (§5.1).
pub const ROOT_ATTRS_FILE: &str = "sealfs.root";
/// Prefix of long-name entries: `sealfs.L.<base64url(sha256(full))>` (§7.2).
pub const LONG_NAME_PREFIX: &str = "sealfs.L.";
/// Suffix of the sidecar file holding a long name's full encrypted form.
pub const LONG_NAME_SIDECAR_SUFFIX: &str = ".name";
/// Suffix of a file being written before it is renamed into place.
pub const TEMP_SUFFIX: &str = ".tmp";
/// Prefix of the temp file of a staged library write (`Vault::create_staged`):
/// `sealfs-staged-<pid>-<n>.tmp`.
pub const STAGED_PREFIX: &str = "sealfs-staged-";
/// Prefix of the temp file fsck's salvage seals an unrecognised orphan's
/// bytes into: `salvage-<pid>.tmp`.
pub const SALVAGE_PREFIX: &str = "salvage-";
/// A backing entry of this name in CIPHERDIR itself is the backing
/// filesystem's (an ext4 mount root), not sealfs's: ignored. (sealfs's own
/// `lost+found` is an ordinary encrypted directory, see fsck.)
pub const BACKING_LOST_FOUND: &str = "lost+found";

/// Bookkeeping names of the volume root (besides [`DIR_RECORDS`]).
pub const ROOT_BOOKKEEPING: [&str; 9] = [
    CONFIG_FILE,
    KEYRING_FILE,
    KEYRING_BACKUP,
    LOCK_FILE,
    LEASE_FILE,
    AUDIT_DIR,
    GRANTS_FILE,
    ROOT_ATTRS_FILE,
    BACKING_LOST_FOUND,
];

/// The record copies every backing directory holds, first copy first.
pub const DIR_RECORDS: [&str; 2] = [DIR_RECORD, DIR_RECORD_BACKUP];

/// What a reserved name in a backing directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved<'a> {
    /// One of sealfs's bookkeeping files: a directory record copy anywhere,
    /// or (in the root) [`ROOT_BOOKKEEPING`].
    Bookkeeping,
    /// A temp file of a write that replaces something (`*.tmp`).
    Temp,
    /// The sidecar of the long-name entry `owner`.
    Sidecar {
        /// The long-name entry it belongs to.
        owner: &'a str,
    },
    /// A dotted name sealfs does not write (not an encrypted name either).
    Unknown,
}

/// Whether `name` in a backing directory is reserved (sealfs's own, or a
/// dotted name no encrypted entry can have) rather than an entry name.
/// Long-name entries (`sealfs.L.<hash>`) are entry names, not reserved.
pub fn is_reserved(name: &str) -> bool {
    if let Some(rest) = name.strip_prefix(LONG_NAME_PREFIX) {
        return rest.ends_with(LONG_NAME_SIDECAR_SUFFIX);
    }
    name.contains('.')
}

/// Classifies a reserved name of a backing directory (`at_root`: the
/// volume root, where the bookkeeping files live); `None` for an entry name.
pub fn classify(name: &str, at_root: bool) -> Option<Reserved<'_>> {
    if DIR_RECORDS.contains(&name) || (at_root && ROOT_BOOKKEEPING.contains(&name)) {
        return Some(Reserved::Bookkeeping);
    }
    if name.ends_with(TEMP_SUFFIX) {
        return Some(Reserved::Temp);
    }
    if !is_reserved(name) {
        return None;
    }
    match name.strip_suffix(LONG_NAME_SIDECAR_SUFFIX) {
        Some(owner) if owner.starts_with(LONG_NAME_PREFIX) => Some(Reserved::Sidecar { owner }),
        _ => Some(Reserved::Unknown),
    }
}

/// Whether a backing directory holding only entries named so is empty as a
/// directory of the volume (its record copies and leftover temp files are
/// not entries): what rmdir and a replacing rename check.
pub fn is_empty_dir_leftover(name: &str) -> bool {
    DIR_RECORDS.contains(&name) || name.ends_with(TEMP_SUFFIX)
}

/// The temp name `name` is written under before it is renamed into place.
pub fn temp_name(name: &str) -> String {
    format!("{name}{TEMP_SUFFIX}")
}

/// The sidecar name of the long-name entry `entry`.
pub fn sidecar_name(entry: &str) -> String {
    format!("{entry}{LONG_NAME_SIDECAR_SUFFIX}")
}

/// The temp name of the `n`th staged write of process `pid`.
pub fn staged_name(pid: u32, n: u64) -> String {
    format!("{STAGED_PREFIX}{pid}-{n}{TEMP_SUFFIX}")
}

/// Whether `name` is the temp file of a staged write (of any process).
pub fn is_staged(name: &str) -> bool {
    name.starts_with(STAGED_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

/// The temp name fsck's salvage of process `pid` writes a raw copy under.
pub fn salvage_name(pid: u32) -> String {
    format!("{SALVAGE_PREFIX}{pid}{TEMP_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_names_are_reserved_and_classified() {
        for n in ROOT_BOOKKEEPING.iter().chain(DIR_RECORDS.iter()) {
            assert_eq!(classify(n, true), Some(Reserved::Bookkeeping), "{n}");
        }
        for n in DIR_RECORDS {
            assert_eq!(classify(n, false), Some(Reserved::Bookkeeping));
        }
        // Root-only names below the root: dotted ones are unknown files,
        // `lost+found` (no dot) is an entry name that will not decrypt.
        assert_eq!(classify(KEYRING_FILE, false), Some(Reserved::Unknown));
        assert_eq!(classify(BACKING_LOST_FOUND, false), None);
        assert!(!is_reserved(BACKING_LOST_FOUND));
    }

    #[test]
    fn long_names_sidecars_and_temps() {
        let entry = format!("{LONG_NAME_PREFIX}abcDEF_-");
        assert!(!is_reserved(&entry));
        assert_eq!(classify(&entry, false), None);
        let side = sidecar_name(&entry);
        assert!(is_reserved(&side));
        assert_eq!(
            classify(&side, false),
            Some(Reserved::Sidecar { owner: &entry })
        );
        assert_eq!(
            classify(&temp_name(DIR_RECORD), false),
            Some(Reserved::Temp)
        );
        assert_eq!(classify(&staged_name(7, 3), false), Some(Reserved::Temp));
        assert!(is_staged(&staged_name(7, 3)));
        assert_eq!(classify(&salvage_name(7), true), Some(Reserved::Temp));
        assert!(is_empty_dir_leftover(DIR_RECORD_BACKUP));
        assert!(is_empty_dir_leftover(&temp_name(DIR_RECORD)));
        assert!(!is_empty_dir_leftover(&side));
        // base64url never has a dot: an encrypted short name is never reserved.
        assert!(!is_reserved("aGVsbG8td29ybGQ_-x"));
    }
}
