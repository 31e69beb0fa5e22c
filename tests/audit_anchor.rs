//! The audit side of the rollback anchor (issue 16, finding 3), through
//! the library, without a mount: `AuditLog::head()`, `check_anchor`,
//! `verify_log_anchored`, `read_head`, and the keyring generation in the
//! records of keyring changes. The keyring side (storing the head in the
//! keyring, refusing a mount) calls these.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use sealfs::crypto::{Argon2Params, SecretKey};
use sealfs::format::audit::{AuditRecord, ChainEvent, Principal};
use sealfs::policy::audit::{
    check_anchor, read_head, verify_log, verify_log_anchored, AnchorCheck, AuditHead, AuditLog,
    KeyringAnchor,
};
use sealfs::volume::Volume;
use sealfs::UnlockSecret;

fn secret() -> UnlockSecret {
    UnlockSecret::KeyFile(SecretKey::from_bytes([9; 32]))
}

fn volume(dir: &Path) -> Arc<Volume> {
    let cipher = dir.join("c");
    if !cipher.join("sealfs.toml").exists() {
        Volume::create(&cipher, &secret(), Argon2Params::DEFAULT).unwrap();
    }
    Arc::new(Volume::open(&cipher, &secret(), false).unwrap())
}

fn record(op: &str) -> AuditRecord {
    AuditRecord::new(Principal::default(), op, "ok")
}

/// Appends `n` records; a small segment size makes several segments.
fn log_with(vol: &Arc<Volume>, n: usize) -> Arc<AuditLog> {
    let log = AuditLog::open(vol.clone(), 64 * 1024).unwrap();
    for i in 0..n {
        let mut r = record("decrypt");
        r.path = Some(format!(
            "/some/fairly/long/path/for/record/{i:06}/{}",
            "x".repeat(300)
        ));
        log.append(r).unwrap();
    }
    log
}

fn segments(cipher: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(cipher.join("sealfs.audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_head_is_found_again_while_the_log_grows() {
    let t = tempfile::tempdir().unwrap();
    let vol = volume(t.path());
    let log = log_with(&vol, 400);
    let head = log.last_position();
    assert!(head.segment >= 2, "{head:?}");
    assert_eq!(head.seq, 400);
    log.sync().unwrap();
    assert_eq!(
        check_anchor(&vol, &head).unwrap(),
        AnchorCheck::Present {
            records_after: 0,
            last_keyring_generation: None
        }
    );
    // A keyring change is recorded with the generation it stored.
    let mut r = record("rotate");
    r.keyring_generation = Some(7);
    log.append(r).unwrap();
    for _ in 0..5 {
        log.append(record("list")).unwrap();
    }
    log.sync().unwrap();
    assert_eq!(
        check_anchor(&vol, &head).unwrap(),
        AnchorCheck::Present {
            records_after: 6,
            last_keyring_generation: Some(7)
        }
    );
    // What an offline command reads is the live head.
    let live = log.last_position();
    drop(log);
    assert_eq!(read_head(&vol).unwrap(), Some(live));
    // The record carries the field through export.
    let mut gens = Vec::new();
    verify_log(&vol, &mut |r| gens.extend(r.keyring_generation)).unwrap();
    assert_eq!(gens, [7]);
}

#[test]
fn a_head_after_a_fresh_segment_header_is_found() {
    let t = tempfile::tempdir().unwrap();
    let vol = volume(t.path());
    let log = AuditLog::open(vol.clone(), 64 * 1024).unwrap();
    let head = log.last_position();
    assert_eq!((head.segment, head.seq), (1, 0));
    drop(log);
    assert!(matches!(
        check_anchor(&vol, &head).unwrap(),
        AnchorCheck::Present { .. }
    ));
}

#[test]
fn a_deleted_or_cut_log_misses_the_anchor_and_fails_verify() {
    let t = tempfile::tempdir().unwrap();
    let cipher = t.path().join("c");
    let vol = volume(t.path());
    let log = log_with(&vol, 400);
    let head = log.last_position();
    drop(log);
    let anchor = KeyringAnchor {
        head,
        keyring_generation: 1,
    };
    let verify = |vol: &Arc<Volume>| verify_log_anchored(vol, Some(&anchor), &mut |_| {}).unwrap();
    assert!(verify(&vol).is_intact());
    let segs = segments(&cipher);
    let saved: Vec<Vec<u8>> = segs.iter().map(|p| fs::read(p).unwrap()).collect();

    // The newest records cut off: the anchor is gone.
    let last = segs.last().unwrap();
    let len = fs::metadata(last).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 500)
        .unwrap();
    let AnchorCheck::Missing(why) = check_anchor(&vol, &head).unwrap() else {
        panic!("a cut log still has the anchor")
    };
    assert!(why.contains("cut off"), "{why}");
    // (Without the anchor, a cut at the end looks like a torn record.)
    let r = verify(&vol);
    assert!(!r.is_intact(), "{r:?}");

    // The first segments deleted: verify names them, with or without anchor.
    fs::write(last, &saved[saved.len() - 1]).unwrap();
    fs::remove_file(&segs[0]).unwrap();
    fs::remove_file(&segs[1]).unwrap();
    let r = verify_log(&vol, &mut |_| {}).unwrap();
    assert!(
        r.breaks[0].reason.contains("segments 1-2 are missing"),
        "{r:?}"
    );
    assert!(r.records > 0);

    // The whole folder deleted: the anchor says there was a log.
    fs::remove_dir_all(cipher.join("sealfs.audit")).unwrap();
    let AnchorCheck::Missing(why) = check_anchor(&vol, &head).unwrap() else {
        panic!("a deleted log still has the anchor")
    };
    assert!(why.contains("deleted"), "{why}");
    let mut breaks = Vec::new();
    let r = verify_log_anchored(&vol, Some(&anchor), &mut |e| {
        if let ChainEvent::Break(b) = e {
            breaks.push(b.reason.clone());
        }
    })
    .unwrap();
    assert!(!r.is_intact());
    assert_eq!(breaks.len(), 1, "{breaks:?}");
    // check_anchor created nothing.
    assert!(!cipher.join("sealfs.audit").exists());

    // A new log started in its place is not the anchored one.
    let log = log_with(&vol, 450);
    drop(log);
    let AnchorCheck::Missing(why) = check_anchor(&vol, &head).unwrap() else {
        panic!("a restarted log has the anchor")
    };
    assert!(
        why.contains("rolled back") || why.contains("replaced"),
        "{why}"
    );
}

#[test]
fn a_keyring_older_than_the_log_is_reported_by_verify() {
    let t = tempfile::tempdir().unwrap();
    let vol = volume(t.path());
    let log = log_with(&vol, 3);
    let head = log.last_position();
    let mut r = record("disable");
    r.keyring_generation = Some(5);
    log.append(r).unwrap();
    drop(log);
    let stale = KeyringAnchor {
        head,
        keyring_generation: 4,
    };
    let r = verify_log_anchored(&vol, Some(&stale), &mut |_| {}).unwrap();
    assert!(
        r.breaks[0].reason.contains("older keyring was put back"),
        "{r:?}"
    );
    let current = KeyringAnchor {
        head,
        keyring_generation: 5,
    };
    assert!(verify_log_anchored(&vol, Some(&current), &mut |_| {})
        .unwrap()
        .is_intact());
}

#[test]
fn one_flipped_bit_leaves_the_rest_of_the_trail() {
    let t = tempfile::tempdir().unwrap();
    let cipher = t.path().join("c");
    let vol = volume(t.path());
    let log = log_with(&vol, 2223);
    drop(log);
    let mut all = 0;
    verify_log(&vol, &mut |_| all += 1).unwrap();
    assert_eq!(all, 2223);
    // One bit of the first record's sealed body.
    let first = &segments(&cipher)[0];
    let mut b = fs::read(first).unwrap();
    b[128 + 40] ^= 0x10;
    fs::write(first, &b).unwrap();
    let mut seqs = Vec::new();
    let r = verify_log(&vol, &mut |r| seqs.push(r.seq)).unwrap();
    assert_eq!(r.breaks.len(), 1, "{:?}", r.breaks);
    assert_eq!(r.breaks[0].resumed_seq, Some(2));
    assert_eq!(seqs.len(), 2222);
    assert_eq!(seqs[0], 2);
    // Anchors are plain values the keyring can seal.
    let h: AuditHead = read_head(&vol).unwrap().unwrap();
    assert_eq!(h.seq, 2223);
}
