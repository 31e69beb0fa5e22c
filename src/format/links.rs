//! Hard-link tables: which (parent directory id, name) pairs may reach a
//! file that has more than one name (docs/FORMAT.md §4.6).
//!
//! A file with one name keeps its key slot bound to that name (§4.1). A
//! file that got a second name is *linked*: its slot is bound to a context
//! that names no path, and the table lists a keyed tag of every name the
//! file may be opened through, sealed under a key derived from the file's
//! data key. The table lives in bytes 3840..4096 of block 0 (after the last
//! chunk entry) while it holds up to [`INLINE_LINKS`] tags; a longer one is
//! stored in the backing xattr [`LINKS_XATTR`] of the file's own inode
//! (shared by all its backing links, gone with the inode), and the inline
//! area then only says so.
//!
//! Owns: the byte layout of both forms, the tag of a name, and the key
//! derivations (labels below).
//! Must never: do I/O, or decide what a missing tag means (the volume layer
//! turns it into an integrity failure).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::{random_nonce, SealingKey, SecretKey, NONCE_LEN, TAG_LEN};
use crate::format::header::EncryptionContext;
use crate::format::layout::{CHUNKS_PER_GROUP, META_BLOCK, META_ENTRIES_OFFSET, META_ENTRY_LEN};

/// Offset of the inline link table in block 0: right after the last chunk
/// entry of group 0.
pub const LINK_TABLE_OFFSET: u64 = META_ENTRIES_OFFSET + CHUNKS_PER_GROUP * META_ENTRY_LEN;
/// Bytes of the inline link table area (to the end of block 0).
pub const LINK_TABLE_LEN: usize = (META_BLOCK - LINK_TABLE_OFFSET) as usize;
const _: () = assert!(LINK_TABLE_OFFSET == 3840 && LINK_TABLE_LEN == 256);

/// Bytes of one tag.
pub const TAG_BYTES: usize = 16;
/// Tags the inline table holds.
pub const INLINE_LINKS: usize = 13;
/// Most tags any table holds (the external form's cap: its value stays
/// under the kernel's 64 KiB xattr limit). The backing filesystem usually
/// refuses far earlier (ext4 with 4 KiB blocks: about 240).
pub const MAX_LINKS: usize = 4000;
/// Backing xattr holding an external table.
pub const LINKS_XATTR: &str = "user.sealfs.links";

const BODY_LEN: usize = LINK_TABLE_LEN - NONCE_LEN - TAG_LEN; // 228
const BODY_HEAD: usize = 8;
const _: () = assert!(BODY_HEAD + INLINE_LINKS * TAG_BYTES <= BODY_LEN);

const TABLE_LABEL: &[u8] = b"sealfs v2 link table";
const TAG_LABEL: &[u8] = b"sealfs v2 link names";
const INLINE_AAD: &[u8] = b"sealfs:link-table:v1";
const EXTERNAL_AAD: &[u8] = b"sealfs:link-table-ext:v1";
const TAG_DOMAIN: &[u8] = b"sealfs:link:v1";

/// Where the table stands, flag byte of the inline body.
const WHERE_INLINE: u8 = 0;
const WHERE_EXTERNAL: u8 = 1;
/// Byte 7 of an external note: its generation pins the external table's
/// (0 in notes written before, which pin nothing).
const NOTE_PINNED: u8 = 1;

/// Errors decoding a link table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkTableError {
    /// The sealed table does not open: tampered, from another file, or torn.
    #[error("link table does not authenticate")]
    Tampered,
    /// Opened, but its content is impossible (a count beyond the capacity,
    /// an unknown form).
    #[error("link table is malformed")]
    Malformed,
    /// An external table older than the generation the inline note pins:
    /// an earlier value put back.
    #[error("link table rolled back to an older generation")]
    RolledBack,
    /// More names than a table can hold.
    #[error("link table full ({0} names)")]
    Full(usize),
    /// Random number generator failure while sealing.
    #[error("random number generator failed")]
    Random,
}

/// A keyed tag of one name: HMAC-SHA256 of (parent directory id, name),
/// truncated to 16 bytes.
pub type LinkTag = [u8; TAG_BYTES];

/// The keys of one file's link table, derived from its data key.
pub struct LinkKeys {
    table: SealingKey,
    tags: Zeroizing<[u8; 32]>,
    volume_id: [u8; 16],
    file_id: [u8; 16],
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKeys(<redacted>)")
    }
}

/// The table: a generation (bumped on every change) and the tags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkTable {
    /// Bumped on every change.
    pub generation: u32,
    /// One tag per name, no duplicates.
    pub tags: Vec<LinkTag>,
}

/// What the inline area says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inline {
    /// The whole table is here.
    Table(LinkTable),
    /// The table is in the backing xattr [`LINKS_XATTR`].
    External {
        /// Pinned: the external table's generation as last stored (it may
        /// be one ahead: a crash between storing it and this note). Not
        /// pinned (a note written before pinning existed): the generation
        /// when the table moved out, which says nothing of later ones.
        generation: u32,
        /// Whether `generation` pins the external table's.
        pinned: bool,
    },
}

/// Whether an external table of generation `external` may stand beside
/// the inline note `note`: a pinned note admits its own generation and the
/// next one (the external table is stored first, then the note), so an
/// older external value put back is refused.
pub fn external_generation_ok(note: &Inline, external: u32) -> bool {
    match note {
        Inline::External {
            generation,
            pinned: true,
        } => external.wrapping_sub(*generation) <= 1,
        _ => true,
    }
}

impl LinkKeys {
    /// The keys of the file `file_id` of volume `volume_id` with data key `data_key`.
    pub fn derive(data_key: &SecretKey, volume_id: [u8; 16], file_id: [u8; 16]) -> Self {
        let tags = data_key.derive(&file_id, TAG_LABEL);
        LinkKeys {
            table: data_key.derive(&file_id, TABLE_LABEL).cipher(),
            tags: Zeroizing::new(*tags.expose()),
            volume_id,
            file_id,
        }
    }

    /// The tag of the name `ctx` (parent directory id, name).
    pub fn tag(&self, ctx: &EncryptionContext<'_>) -> LinkTag {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.tags[..])
            .expect("HMAC takes any key length");
        mac.update(TAG_DOMAIN);
        mac.update(&ctx.parent_dir_id);
        mac.update(&(ctx.name.len() as u32).to_le_bytes());
        mac.update(ctx.name);
        let full = mac.finalize().into_bytes();
        let mut t = [0u8; TAG_BYTES];
        t.copy_from_slice(&full[..TAG_BYTES]);
        t
    }

    fn aad(&self, label: &[u8]) -> Vec<u8> {
        let mut a = Vec::with_capacity(label.len() + 32);
        a.extend_from_slice(label);
        a.extend_from_slice(&self.volume_id);
        a.extend_from_slice(&self.file_id);
        a
    }

    /// Seals the inline area: the whole `table` (at most [`INLINE_LINKS`]
    /// tags), or, with `table` `None`, the note that the table is external,
    /// pinned at the external table's `generation`.
    pub fn seal_inline(
        &self,
        table: Option<&LinkTable>,
        generation: u32,
    ) -> Result<[u8; LINK_TABLE_LEN], LinkTableError> {
        let mut body = Zeroizing::new([0u8; BODY_LEN]);
        match table {
            Some(t) => {
                if t.tags.len() > INLINE_LINKS {
                    return Err(LinkTableError::Full(t.tags.len()));
                }
                body[0..4].copy_from_slice(&t.generation.to_le_bytes());
                body[4..6].copy_from_slice(&(t.tags.len() as u16).to_le_bytes());
                body[6] = WHERE_INLINE;
                for (i, tag) in t.tags.iter().enumerate() {
                    let o = BODY_HEAD + i * TAG_BYTES;
                    body[o..o + TAG_BYTES].copy_from_slice(tag);
                }
            }
            None => {
                body[0..4].copy_from_slice(&generation.to_le_bytes());
                body[6] = WHERE_EXTERNAL;
                body[7] = NOTE_PINNED;
            }
        }
        let nonce = random_nonce().map_err(|_| LinkTableError::Random)?;
        let tag = self
            .table
            .seal_in_place(&nonce, &self.aad(INLINE_AAD), &mut body[..]);
        let mut out = [0u8; LINK_TABLE_LEN];
        out[..NONCE_LEN].copy_from_slice(&nonce);
        out[NONCE_LEN..NONCE_LEN + BODY_LEN].copy_from_slice(&body[..]);
        out[NONCE_LEN + BODY_LEN..].copy_from_slice(&tag);
        Ok(out)
    }

    /// Opens the inline area.
    pub fn open_inline(&self, bytes: &[u8; LINK_TABLE_LEN]) -> Result<Inline, LinkTableError> {
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&bytes[NONCE_LEN + BODY_LEN..]);
        let mut body = Zeroizing::new([0u8; BODY_LEN]);
        body.copy_from_slice(&bytes[NONCE_LEN..NONCE_LEN + BODY_LEN]);
        self.table
            .open_in_place(&nonce, &self.aad(INLINE_AAD), &mut body[..], &tag)
            .map_err(|_| LinkTableError::Tampered)?;
        let generation = u32::from_le_bytes(body[0..4].try_into().expect("4 bytes"));
        let count = u16::from_le_bytes([body[4], body[5]]) as usize;
        match body[6] {
            WHERE_INLINE if count <= INLINE_LINKS => {
                let tags = (0..count)
                    .map(|i| {
                        let o = BODY_HEAD + i * TAG_BYTES;
                        body[o..o + TAG_BYTES].try_into().expect("16 bytes")
                    })
                    .collect();
                Ok(Inline::Table(LinkTable { generation, tags }))
            }
            WHERE_EXTERNAL if count == 0 && body[7] <= NOTE_PINNED => Ok(Inline::External {
                generation,
                pinned: body[7] == NOTE_PINNED,
            }),
            _ => Err(LinkTableError::Malformed),
        }
    }

    /// Seals the external form of `table` (the value of [`LINKS_XATTR`]).
    pub fn seal_external(&self, table: &LinkTable) -> Result<Vec<u8>, LinkTableError> {
        if table.tags.len() > MAX_LINKS {
            return Err(LinkTableError::Full(table.tags.len()));
        }
        let mut body = Zeroizing::new(Vec::with_capacity(8 + table.tags.len() * TAG_BYTES));
        body.extend_from_slice(&table.generation.to_le_bytes());
        body.extend_from_slice(&(table.tags.len() as u32).to_le_bytes());
        for t in &table.tags {
            body.extend_from_slice(t);
        }
        let nonce = random_nonce().map_err(|_| LinkTableError::Random)?;
        let tag = self
            .table
            .seal_in_place(&nonce, &self.aad(EXTERNAL_AAD), &mut body[..]);
        let mut out = Vec::with_capacity(NONCE_LEN + body.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens the external form.
    pub fn open_external(&self, bytes: &[u8]) -> Result<LinkTable, LinkTableError> {
        if bytes.len() < NONCE_LEN + 8 + TAG_LEN {
            return Err(LinkTableError::Tampered);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let split = bytes.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&bytes[split..]);
        let mut body = Zeroizing::new(bytes[NONCE_LEN..split].to_vec());
        self.table
            .open_in_place(&nonce, &self.aad(EXTERNAL_AAD), &mut body[..], &tag)
            .map_err(|_| LinkTableError::Tampered)?;
        let generation = u32::from_le_bytes(body[0..4].try_into().expect("4 bytes"));
        let count = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes")) as usize;
        if count > MAX_LINKS || body.len() != 8 + count * TAG_BYTES {
            return Err(LinkTableError::Malformed);
        }
        let tags = body[8..]
            .chunks_exact(TAG_BYTES)
            .map(|c| c.try_into().expect("16 bytes"))
            .collect();
        Ok(LinkTable { generation, tags })
    }
}

impl LinkTable {
    /// Whether `tag` is listed.
    pub fn contains(&self, tag: &LinkTag) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Adds `tag` (if new) and bumps the generation.
    pub fn add(&mut self, tag: LinkTag) {
        if !self.contains(&tag) {
            self.tags.push(tag);
        }
        self.generation = self.generation.wrapping_add(1);
    }

    /// Removes `tag` (if listed) and bumps the generation. Returns whether it was.
    pub fn remove(&mut self, tag: &LinkTag) -> bool {
        let before = self.tags.len();
        self.tags.retain(|t| t != tag);
        self.generation = self.generation.wrapping_add(1);
        self.tags.len() != before
    }

    /// Whether the table fits the inline area.
    pub fn fits_inline(&self) -> bool {
        self.tags.len() <= INLINE_LINKS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> LinkKeys {
        LinkKeys::derive(&SecretKey::from_bytes([7; 32]), [1; 16], [2; 16])
    }

    fn ctx(name: &[u8]) -> EncryptionContext<'_> {
        EncryptionContext {
            parent_dir_id: [3; 16],
            name,
        }
    }

    #[test]
    fn tags_bind_parent_and_name() {
        let k = keys();
        let a = k.tag(&ctx(b"a"));
        assert_eq!(a, k.tag(&ctx(b"a")));
        assert_ne!(a, k.tag(&ctx(b"b")));
        let other_dir = EncryptionContext {
            parent_dir_id: [4; 16],
            name: b"a",
        };
        assert_ne!(a, k.tag(&other_dir));
        // Another file's keys give another tag for the same name.
        let k2 = LinkKeys::derive(&SecretKey::from_bytes([8; 32]), [1; 16], [2; 16]);
        assert_ne!(a, k2.tag(&ctx(b"a")));
        // Length-prefixed: ("ab", "") and ("a", "b") style ambiguity is impossible.
        assert_ne!(k.tag(&ctx(b"ab")), k.tag(&ctx(b"a")));
    }

    #[test]
    fn inline_round_trip_and_binding() {
        let k = keys();
        let mut t = LinkTable::default();
        for n in 0..INLINE_LINKS {
            t.add(k.tag(&ctx(format!("n{n}").as_bytes())));
        }
        let sealed = k.seal_inline(Some(&t), 0).unwrap();
        assert_eq!(k.open_inline(&sealed).unwrap(), Inline::Table(t.clone()));
        // Another file (id) or volume cannot open it.
        let other = LinkKeys::derive(&SecretKey::from_bytes([7; 32]), [1; 16], [9; 16]);
        assert_eq!(other.open_inline(&sealed), Err(LinkTableError::Tampered));
        let other_vol = LinkKeys::derive(&SecretKey::from_bytes([7; 32]), [5; 16], [2; 16]);
        assert_eq!(
            other_vol.open_inline(&sealed),
            Err(LinkTableError::Tampered)
        );
        // One more tag does not fit inline.
        t.add([0xee; 16]);
        assert_eq!(k.seal_inline(Some(&t), 0), Err(LinkTableError::Full(14)));
        let ext = k.seal_inline(None, 9).unwrap();
        let note = k.open_inline(&ext).unwrap();
        assert_eq!(
            note,
            Inline::External {
                generation: 9,
                pinned: true
            }
        );
        // A pinned note admits its generation and the next, nothing older.
        assert!(external_generation_ok(&note, 9));
        assert!(external_generation_ok(&note, 10));
        assert!(!external_generation_ok(&note, 8));
        assert!(!external_generation_ok(&note, 11));
        let unpinned = Inline::External {
            generation: 9,
            pinned: false,
        };
        assert!(external_generation_ok(&unpinned, 2));
        // All-zero bytes (a file that never had a table) do not open.
        assert_eq!(
            k.open_inline(&[0u8; LINK_TABLE_LEN]),
            Err(LinkTableError::Tampered)
        );
    }

    #[test]
    fn external_round_trip() {
        let k = keys();
        let mut t = LinkTable::default();
        for n in 0..300u32 {
            t.add(k.tag(&ctx(&n.to_le_bytes())));
        }
        let sealed = k.seal_external(&t).unwrap();
        assert_eq!(sealed.len(), 12 + 8 + 300 * 16 + 16);
        assert_eq!(k.open_external(&sealed).unwrap(), t);
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        assert_eq!(k.open_external(&bad), Err(LinkTableError::Tampered));
        assert_eq!(
            k.open_external(&sealed[..10]),
            Err(LinkTableError::Tampered)
        );
        // The inline and external forms use different AAD: one cannot stand in for the other.
        let inline = k.seal_inline(Some(&LinkTable::default()), 0).unwrap();
        assert_eq!(k.open_external(&inline), Err(LinkTableError::Tampered));
    }

    #[test]
    fn add_remove() {
        let mut t = LinkTable::default();
        t.add([1; 16]);
        t.add([1; 16]);
        assert_eq!(t.tags.len(), 1);
        assert_eq!(t.generation, 2);
        assert!(t.remove(&[1; 16]));
        assert!(!t.remove(&[1; 16]));
        assert!(t.tags.is_empty());
    }

    proptest! {
        #[test]
        fn tampered_inline_fails(pos in 0usize..LINK_TABLE_LEN, bit in 0u8..8) {
            let k = keys();
            let mut t = LinkTable::default();
            t.add(k.tag(&ctx(b"x")));
            let mut sealed = k.seal_inline(Some(&t), 0).unwrap();
            sealed[pos] ^= 1 << bit;
            prop_assert_eq!(k.open_inline(&sealed), Err(LinkTableError::Tampered));
        }

        #[test]
        fn external_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = keys().open_external(&bytes);
        }
    }
}
