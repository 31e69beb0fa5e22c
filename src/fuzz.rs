//! Fuzz entry points: one function per decoder of untrusted bytes (what a
//! cipher directory or the control socket can hand the daemon). Each takes
//! arbitrary bytes and must return without panicking; where a decoder
//! accepts its input, the function also checks a round trip.
//!
//! The cargo-fuzz targets in `fuzz/` call these (`contrib/fuzz.sh` runs them
//! with libFuzzer on nightly); `tests/fuzz_corpus.rs` replays the committed
//! corpora and random mutations through the same functions on stable Rust.
//!
//! Must never: perform I/O. Keys used here are fixed test keys.

use crate::crypto::{SecretKey, NONCE_LEN, TAG_LEN};
use crate::format::chunk::{ChunkCipher, ContentFormat};
use crate::format::config::VolumeConfig;
use crate::format::header::{EncryptionContext, RecordKind, SealedRecord, RECORD_LEN};
use crate::format::keyring;
use crate::format::layout;
use crate::format::names::{
    classify_entry, long_entry_name, unpad_name, EntryClass, NameCipher, NameScheme,
};

/// A fuzz entry point: arbitrary bytes in, no panic.
pub type Target = fn(&[u8]);

/// Every fuzz target by name, for the corpus replay test and `contrib/fuzz.sh`.
pub const TARGETS: &[(&str, Target)] = &[
    ("header", header),
    ("chunk", chunk),
    ("name", name),
    ("config", config),
    ("keyring", keyring_file),
    ("ctl_request", ctl_request),
    ("layout", layout_arith),
    ("grants", grant_store),
    ("audit", audit_record),
];

fn test_key(b: u8) -> SecretKey {
    SecretKey::from_bytes([b; 32])
}

fn u64_at(data: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = data.get(i * 8 + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// A file header or directory record (`sealfs.dir`): decode, open with a
/// fixed wrapper, and re-encode what decoded.
pub fn header(data: &[u8]) {
    let kind = if data.first().is_some_and(|b| b & 1 == 1) {
        RecordKind::Dir
    } else {
        RecordKind::File
    };
    for kind in [kind, RecordKind::File, RecordKind::Dir] {
        let Ok(rec) = SealedRecord::decode(kind, data) else {
            continue;
        };
        let bytes = rec.encode();
        assert_eq!(bytes.len(), RECORD_LEN);
        let again = SealedRecord::decode(kind, &bytes).expect("an encoded record decodes");
        assert_eq!(again.encode(), bytes, "decode/encode is not stable");
        let wrapper = test_key(7).cipher();
        let ctx = EncryptionContext {
            parent_dir_id: [1; 16],
            name: b"name",
        };
        let _ = rec.open(&[2; 16], &ctx, &|v| (v == 1).then(|| wrapper.clone()));
    }
}

/// A chunk and its (nonce, tag) entry: open under a fixed key at an index
/// taken from the input, in the content format its second flag bit picks;
/// then a seal/open round trip of the same bytes.
pub fn chunk(data: &[u8]) {
    let k = u64_at(data, 0);
    let last = data.get(8).is_some_and(|b| b & 1 == 1);
    let format = if data.get(8).is_some_and(|b| b & 2 == 2) {
        ContentFormat::SealedGroupState
    } else {
        ContentFormat::LastChunkFlag
    };
    let rest = data.get(9..).unwrap_or(&[]);
    let mut entry = [0u8; (NONCE_LEN + TAG_LEN)];
    let n = rest.len().min(entry.len());
    entry[..n].copy_from_slice(&rest[..n]);
    let body = &rest[n..];
    let body = &body[..body.len().min(layout::CHUNK_SIZE as usize)];
    let c = ChunkCipher::new(&test_key(3), [4; 16], format);
    let mut buf = body.to_vec();
    let _ = c.open(k, last, &mut buf, &entry);
    let mut buf = body.to_vec();
    if let Ok(e) = c.seal(k, last, &mut buf) {
        c.open(k, last, &mut buf, &e)
            .expect("a sealed chunk opens under its own index");
        assert_eq!(buf, body, "chunk round trip");
        if !buf.is_empty() {
            let mut moved = body.to_vec();
            let e = c.seal(k, last, &mut moved).expect("seal");
            assert!(
                c.open(k.wrapping_add(1), last, &mut moved, &e).is_err(),
                "a chunk opened at another index"
            );
        }
    }
}

/// An encrypted entry name (short, or a long name's sidecar) and a sealed
/// symlink target, as found in a backing directory; and the name round trip
/// for the input taken as a plaintext name.
pub fn name(data: &[u8]) {
    for scheme in [NameScheme::Exact, NameScheme::Padded16] {
        name_in(data, NameCipher::with_scheme(&test_key(5), [6; 16], scheme));
    }
    let _ = unpad_name(data);
}

fn name_in(data: &[u8], nc: NameCipher) {
    let text = String::from_utf8_lossy(data);
    let class = classify_entry(&text);
    if class != EntryClass::Internal {
        let _ = nc.decrypt_name(&text);
    }
    let _ = long_entry_name(&text);
    let _ = nc.open_symlink_target(data);
    if let Ok(bn) = nc.encrypt_name(data) {
        let full = bn
            .sidecar
            .as_ref()
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| bn.entry.clone());
        assert!(bn.entry.len() <= 255, "backing name longer than 255");
        assert_eq!(
            nc.decrypt_name(&full).expect("an encrypted name decrypts"),
            data,
            "name round trip"
        );
        let expect = if bn.sidecar.is_some() {
            EntryClass::Long
        } else {
            EntryClass::Short
        };
        assert_eq!(classify_entry(&bn.entry), expect, "entry class");
    }
    if let Ok(s) = nc.seal_symlink_target(data) {
        assert_eq!(nc.open_symlink_target(s.as_bytes()).unwrap(), data);
    }
}

/// `sealfs.toml`: parse, and re-parse what it serializes to.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = VolumeConfig::parse(text) {
        let again = VolumeConfig::parse(&c.to_toml()).expect("a written config parses");
        assert_eq!(again, c, "config round trip");
    }
}

/// `sealfs.keyring`: the cleartext header, then opening under a fixed KEK.
/// Since random bytes never pass the tag, the input is also sealed as a
/// keyring (header from the input, body = the rest) so the body parser
/// sees arbitrary plaintext.
pub fn keyring_file(data: &[u8]) {
    let kek = test_key(9);
    let _ = keyring::parse_header(data);
    let _ = keyring::open(data, &kek);
    const HEADER_LEN: usize = 72;
    let mut sealed = Vec::with_capacity(data.len() + HEADER_LEN + TAG_LEN);
    sealed.extend_from_slice(b"sealfs.K");
    sealed.extend_from_slice(&1u16.to_le_bytes());
    let head = data.get(..HEADER_LEN - 10).unwrap_or(data);
    sealed.extend_from_slice(head);
    sealed.resize(HEADER_LEN, 0);
    let mut body = data.get(HEADER_LEN - 10..).unwrap_or(&[]).to_vec();
    let nonce: [u8; NONCE_LEN] = sealed[60..72].try_into().expect("12 bytes");
    let tag = kek
        .cipher()
        .seal_in_place(&nonce, &sealed.clone(), &mut body);
    sealed.extend_from_slice(&body);
    sealed.extend_from_slice(&tag);
    if let Ok(b) = keyring::open(&sealed, &kek) {
        let k = b.default();
        assert!(k.versions.iter().any(|v| v.version == k.primary));
        if let Ok(h) = keyring::parse_header(&sealed) {
            let again = keyring::seal(&b, &h, &kek).expect("seal");
            let b2 = keyring::open(&again, &kek).expect("a sealed keyring opens");
            assert_eq!(b2.default().primary, k.primary);
            assert_eq!(b2.flags, b.flags);
            assert_eq!(b2.default().versions.len(), k.versions.len());
        }
    }
    keyring_v2_body(data);
}

/// The plaintext of a layout-2 keyring body (metadata JSON and key table):
/// never a panic, and what decodes encodes back to what decodes the same.
fn keyring_v2_body(data: &[u8]) {
    if let Ok(b) = keyring::body::decode(data) {
        let again = keyring::body::encode(&b).expect("a decoded body encodes");
        let b2 = keyring::body::decode(&again).expect("an encoded body decodes");
        assert_eq!(b2.keys.len(), b.keys.len());
        assert_eq!(b2.anchor, b.anchor);
    }
    // And as a whole layout-2 file under a fixed KEK.
    let kek = test_key(9);
    let _ = keyring::v2::parse_header(data);
    let _ = keyring::v2::open(data, &kek);
}

/// One control request line from the socket.
pub fn ctl_request(data: &[u8]) {
    match crate::ctl::protocol::parse_request(data) {
        Ok(_) => {}
        Err(e) => {
            let line = crate::ctl::protocol::error_line(&e.id, e.code, &e.message);
            assert!(!line.contains('\n'), "an error response spans lines");
        }
    }
}

/// Chunk arithmetic on sizes and offsets taken from the input (kept below
/// 2^62, far past any backing filesystem's limit).
pub fn layout_arith(data: &[u8]) {
    const LIMIT: u64 = 1 << 62;
    let p = u64_at(data, 0) % LIMIT;
    let c = u64_at(data, 1) % LIMIT;
    let off = u64_at(data, 2) % LIMIT;
    let len = u64_at(data, 3) % (1 << 24);
    let cs = layout::ciphertext_size(p);
    assert_eq!(layout::plaintext_size(cs), Ok(p), "size round trip");
    assert!(
        cs >= p + layout::META_BLOCK,
        "ciphertext smaller than plaintext"
    );
    if let Ok(q) = layout::plaintext_size(c) {
        assert!(layout::ciphertext_size(q) <= c, "size past the ciphertext");
    }
    if let Some((a, z)) = layout::chunks_touched(off, len) {
        assert!(a <= z);
        assert!(a * layout::CHUNK_SIZE <= off);
        assert!((z + 1) * layout::CHUNK_SIZE >= off + len);
        let mut next = a;
        for (s, e) in layout::group_runs(a, z.min(a + 4096)) {
            assert_eq!(s, next, "runs are contiguous");
            assert_eq!(
                s / layout::CHUNKS_PER_GROUP,
                e / layout::CHUNKS_PER_GROUP,
                "a run crosses a group"
            );
            next = e + 1;
        }
        assert_eq!(next, z.min(a + 4096) + 1, "runs cover the range");
    }
    let k = off / layout::CHUNK_SIZE;
    let d = layout::chunk_data_offset(k);
    let m = layout::chunk_meta_offset(k);
    assert_eq!(d % layout::CHUNK_SIZE, 0, "chunk data not page aligned");
    assert!(m < d, "entry after its data");
    assert!(
        m + layout::META_ENTRY_LEN <= d - (k % layout::CHUNKS_PER_GROUP) * layout::CHUNK_SIZE,
        "entry outside its metadata block"
    );
}

/// The grant store (`sealfs.grants`) and the grant fields a request
/// carries: the sealed file under a fixed key (random bytes never pass the
/// tag), the body as JSON (what decodes seals and opens back the same),
/// and the text parsers (grantee, operations, expiry, path prefix).
pub fn grant_store(data: &[u8]) {
    use crate::format::grants as g;
    let key = test_key(5);
    let vid = [7u8; 16];
    let _ = g::store_header(data);
    let _ = g::open_store(data, &key, &vid);
    if let Ok(grants) = serde_json::from_slice::<Vec<g::Grant>>(data) {
        if let Ok(sealed) = g::seal_store(&grants, 1, 1, &key, &vid) {
            let back = g::open_store(&sealed, &key, &vid).expect("a sealed store opens");
            assert_eq!(
                serde_json::to_value(&back).ok(),
                serde_json::to_value(&grants).ok(),
                "grant store round trip"
            );
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(who) = g::Grantee::parse(text) {
            assert_eq!(g::Grantee::parse(&who.display()).ok(), Some(who));
        }
        let ops: Vec<&str> = text.split(',').collect();
        if let Ok(set) = g::OpSet::parse(&ops) {
            assert_eq!(g::OpSet::parse(&set.names()).ok(), Some(set));
        }
        let _ = g::parse_expiry(text, 1_800_000_000);
        if g::check_prefix(text).is_ok() {
            assert!(g::is_within(text.as_bytes(), text.as_bytes()));
        }
    }
}

/// An audit log segment: its header, a record chained after a zero MAC
/// under fixed keys (random bytes never pass the MAC), and a record body
/// as JSON (what decodes seals and verifies back to the same record).
pub fn audit_record(data: &[u8]) {
    use crate::format::audit as a;
    let keys = a::AuditKeys::derive(&test_key(6), &[8u8; 16]);
    let zero = [0u8; a::MAC_LEN];
    let _ = a::parse_header(data);
    let _ = a::check_header(data, &keys);
    let _ = a::decode_record(data, &zero, &keys);
    if let Ok(rec) = serde_json::from_slice::<a::AuditRecord>(data) {
        if let Ok((bytes, mac)) = a::encode_record(&rec, &zero, &keys) {
            match a::decode_record(&bytes, &zero, &keys) {
                Ok(a::RecordStep::Record(back, len, m)) => {
                    assert_eq!(len, bytes.len());
                    assert_eq!(m, mac);
                    assert_eq!(
                        serde_json::to_value(&*back).ok(),
                        serde_json::to_value(&rec).ok(),
                        "audit record round trip"
                    );
                }
                other => panic!("an encoded record does not decode: {other:?}"),
            }
        }
    }
}
