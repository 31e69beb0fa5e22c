//! Tests of [`super`]: chains built record by record, then broken, cut,
//! reordered and anchored.

use super::super::{encode_header, encode_record, Principal, SegmentHeader};
use super::*;
use crate::crypto::SecretKey;

fn keys() -> Arc<AuditKeys> {
    Arc::new(AuditKeys::derive(&SecretKey::from_bytes([7; 32]), &[1; 16]))
}

fn rec(seq: u64) -> AuditRecord {
    let mut r = AuditRecord::new(
        Principal {
            uid: 1001,
            gid: 100,
            pid: 42,
            comm: Some("cat".into()),
        },
        "decrypt",
        "ok",
    );
    r.seq = seq;
    r.time_ms = 1000 + seq;
    r.key_version = Some(1);
    r.path = Some(format!("/f{seq}"));
    r
}

/// A log of `segs` segments with `per` records each: (number, bytes,
/// record offsets), and the head after each record.
type Log = Vec<(u64, Vec<u8>, Vec<usize>)>;

fn build_with(segs: u64, per: u64, edit: &mut dyn FnMut(&mut AuditRecord)) -> Log {
    let k = keys();
    let mut out = Vec::new();
    let mut prev = [0u8; MAC_LEN];
    let mut seq = 1;
    for s in 1..=segs {
        let h = SegmentHeader {
            key_version: 1,
            volume_id: [1; 16],
            segment: s,
            first_seq: seq,
            created_ms: 5,
            prev_mac: prev,
        };
        let (mut bytes, mut chain) = encode_header(&h, &k);
        let mut offs = Vec::new();
        for _ in 0..per {
            offs.push(bytes.len());
            let mut r = rec(seq);
            edit(&mut r);
            let (r, m) = encode_record(&r, &chain, &k).unwrap();
            bytes.extend_from_slice(&r);
            chain = m;
            seq += 1;
        }
        prev = chain;
        out.push((s, bytes, offs));
    }
    out
}

fn build(segs: u64, per: u64) -> Log {
    build_with(segs, per, &mut |_| {})
}

fn verify(log: &[(u64, Vec<u8>, Vec<usize>)]) -> ChainReport {
    let k = keys();
    verify_chain(
        log.iter().map(|(n, b, _)| (*n, b.as_slice())),
        &[1; 16],
        &mut |v| (v == 1).then(|| k.clone()),
        &mut |_| {},
    )
}

fn seqs(log: &[(u64, Vec<u8>, Vec<usize>)]) -> Vec<u64> {
    let k = keys();
    let mut out = Vec::new();
    verify_chain(
        log.iter().map(|(n, b, _)| (*n, b.as_slice())),
        &[1; 16],
        &mut |v| (v == 1).then(|| k.clone()),
        &mut |r| out.push(r.seq),
    );
    out
}

fn anchor_check(log: &[(u64, Vec<u8>, Vec<usize>)], head: &AuditHead) -> AnchorCheck {
    let k = keys();
    check_anchor(
        log.iter().map(|(n, b, _)| (*n, b.as_slice())),
        None,
        &[1; 16],
        &mut |v| (v == 1).then(|| k.clone()),
        head,
    )
}

#[test]
fn clean_log_verifies_and_ends_at_its_head() {
    let log = build(3, 4);
    let r = verify(&log);
    assert!(r.is_intact(), "{:?}", r.breaks);
    assert_eq!((r.segments, r.records, r.last_seq), (3, 12, 12));
    let end = r.end.unwrap();
    assert_eq!((end.segment, end.seq), (3, 12));
    assert_eq!(end.chain_mac, log[2].1[log[2].1.len() - 32..]);
}

#[test]
fn edited_byte_is_found_and_the_walk_goes_on() {
    let mut log = build(2, 3);
    let off = log[1].2[1];
    log[1].1[off + 20] ^= 1;
    let r = verify(&log);
    assert_eq!(r.breaks.len(), 1, "{:?}", r.breaks);
    let b = r.first_break().unwrap();
    assert_eq!((b.segment, b.expected_seq), (2, 5));
    assert!(b.reason.contains("MAC"), "{}", b.reason);
    // Only the edited record is lost.
    assert_eq!(b.resumed_seq, Some(6));
    assert_eq!(seqs(&log), [1, 2, 3, 4, 6]);
}

#[test]
fn one_flipped_bit_hides_at_most_two_records_wherever_it_is() {
    let log = build(2, 6);
    let total: usize = log.iter().map(|s| s.1.len()).sum();
    for bit in (0..total * 8).step_by(53) {
        let mut l = log.clone();
        let (mut at, mut seg) = (bit / 8, 0);
        while at >= l[seg].1.len() {
            at -= l[seg].1.len();
            seg += 1;
        }
        if seg == 0 && at < 32 {
            // Magic, version, key version and volume id of the first
            // segment: nothing tells which key to try (a later
            // segment's header would), so its records are lost.
            continue;
        }
        l[seg].1[at] ^= 1 << (bit % 8);
        let got = seqs(&l);
        // A flipped record body or MAC costs that record and, for a
        // MAC, the next one; a flipped header field costs nothing
        // after its segment's first record.
        assert!(got.len() >= 10, "bit {bit}: {got:?}");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        assert!(!verify(&l).is_intact() || got.len() == 12, "bit {bit}");
    }
}

#[test]
fn every_break_is_listed() {
    let mut log = build(3, 4);
    let a = log[0].2[1];
    log[0].1[a + 30] ^= 1;
    let b = log[2].2[2];
    log[2].1[b + 30] ^= 1;
    let r = verify(&log);
    assert_eq!(r.breaks.len(), 2, "{:?}", r.breaks);
    assert_eq!(
        (r.breaks[0].expected_seq, r.breaks[0].resumed_seq),
        (2, Some(3))
    );
    assert_eq!(
        (r.breaks[1].expected_seq, r.breaks[1].resumed_seq),
        (11, Some(12))
    );
    assert_eq!(r.records, 10);
}

#[test]
fn removed_record_is_found() {
    let mut log = build(1, 4);
    let (a, b) = (log[0].2[1], log[0].2[2]);
    log[0].1.drain(a..b);
    let brk = verify(&log).first_break().cloned().unwrap();
    assert_eq!(brk.expected_seq, 2);
    assert!(brk.reason.contains("found record 3"), "{}", brk.reason);
    // Record 3 lost the chain value it was made after; 4 verifies.
    assert_eq!(brk.resumed_seq, Some(4));
}

#[test]
fn reordered_records_are_found() {
    let mut log = build(1, 6);
    let (a, b, c) = (log[0].2[1], log[0].2[2], log[0].2[3]);
    let bytes = &mut log[0].1;
    let r2 = bytes[a..b].to_vec();
    let r3 = bytes[b..c].to_vec();
    let mut swapped = r3;
    swapped.extend_from_slice(&r2);
    bytes.splice(a..c, swapped);
    let r = verify(&log);
    let brk = r.first_break().unwrap();
    assert_eq!(brk.expected_seq, 2);
    assert!(brk.reason.contains("reordered"), "{}", brk.reason);
    assert_eq!(seqs(&log), [1, 5, 6]);
}

#[test]
fn removed_segments_and_tail_of_segment_are_found() {
    let log = build(3, 2);
    let r = verify(&[log[0].clone(), log[2].clone()]);
    assert!(r.breaks[0].reason.contains("segment 2 is missing"));
    assert_eq!(r.records, 4);
    // The first segments removed: reported, the rest still exported.
    let r = verify(&[log[2].clone()]);
    assert!(r.breaks[0].reason.contains("segments 1-2 are missing"));
    assert_eq!((r.records, r.breaks[0].resumed_seq), (2, Some(5)));
    let mut log = build(2, 3);
    let cut = log[0].2[2];
    log[0].1.truncate(cut);
    let r = verify(&log);
    assert!(!r.is_intact());
    assert_eq!(seqs(&log), [1, 2, 4, 5, 6]);
}

#[test]
fn a_segment_header_edit_loses_no_record() {
    let mut log = build(2, 3);
    log[1].1[50] ^= 1;
    let r = verify(&log);
    assert!(r.breaks[0].reason.contains("header MAC"), "{:?}", r.breaks);
    assert_eq!(seqs(&log), [1, 2, 3, 4, 5, 6]);
}

#[test]
fn torn_tail_of_last_segment_is_not_a_break() {
    let mut log = build(1, 3);
    let len = log[0].1.len();
    log[0].1.truncate(len - 10);
    let r = verify(&log);
    assert!(r.is_intact());
    assert_eq!(r.records, 2);
    assert!(r.torn_tail_bytes > 0);
}

#[test]
fn wrong_key_fails_at_the_header() {
    let log = build(1, 1);
    let other = Arc::new(AuditKeys::derive(&SecretKey::from_bytes([8; 32]), &[1; 16]));
    let r = verify_chain(
        log.iter().map(|(n, b, _)| (*n, b.as_slice())),
        &[1; 16],
        &mut |_| Some(other.clone()),
        &mut |_| {},
    );
    assert!(r.breaks[0].reason.contains("header MAC"));
    assert_eq!(r.records, 0);
}

#[test]
fn crafted_segments_stay_cheap() {
    // Every offset looks like a record start: the resync budget keeps
    // the walk bounded.
    let log = build(1, 1);
    let mut bytes = log[0].1[..SEGMENT_HEADER_LEN].to_vec();
    let mut fake = Vec::new();
    fake.extend_from_slice(&(MAX_BODY as u32).to_le_bytes());
    fake.extend_from_slice(&1u64.to_le_bytes());
    while bytes.len() < 4 << 20 {
        bytes.extend_from_slice(&fake);
    }
    let k = keys();
    let t = std::time::Instant::now();
    let r = verify_chain(
        [(1u64, bytes.as_slice())],
        &[1; 16],
        &mut |_| Some(k.clone()),
        &mut |_| {},
    );
    assert!(!r.is_intact());
    assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
}

fn head_after(log: &[(u64, Vec<u8>, Vec<usize>)], seg: usize, rec: usize) -> AuditHead {
    let (n, bytes, offs) = &log[seg];
    let end = offs.get(rec + 1).copied().unwrap_or(bytes.len());
    let first = match parse_header(bytes) {
        Ok(h) => h.first_seq,
        Err(_) => unreachable!(),
    };
    AuditHead {
        segment: *n,
        seq: first + rec as u64,
        chain_mac: bytes[end - MAC_LEN..end].try_into().unwrap(),
    }
}

#[test]
fn an_anchor_is_found_with_what_follows() {
    let log = build_with(3, 4, &mut |r| {
        if r.seq == 10 {
            r.keyring_generation = Some(7);
        }
    });
    let h = head_after(&log, 1, 1); // record 6
    assert_eq!(
        anchor_check(&log, &h),
        AnchorCheck::Present {
            records_after: 6,
            last_keyring_generation: Some(7)
        }
    );
    // A head right after a segment header (no record in it yet).
    let b = &log[2].1;
    let h = AuditHead {
        segment: 3,
        seq: 8,
        chain_mac: b[SEGMENT_HEADER_LEN - MAC_LEN..SEGMENT_HEADER_LEN]
            .try_into()
            .unwrap(),
    };
    assert!(matches!(
        anchor_check(&log, &h),
        AnchorCheck::Present {
            records_after: 4,
            ..
        }
    ));
    // The very end of the log.
    let h = head_after(&log, 2, 3);
    assert_eq!(
        anchor_check(&log, &h),
        AnchorCheck::Present {
            records_after: 0,
            last_keyring_generation: None
        }
    );
}

#[test]
fn a_cut_replaced_or_deleted_log_misses_the_anchor() {
    let log = build(3, 4);
    let h = head_after(&log, 2, 2);
    // Records cut from the end.
    let mut cut = log.clone();
    let at = cut[2].2[1];
    cut[2].1.truncate(at);
    let AnchorCheck::Missing(why) = anchor_check(&cut, &h) else {
        panic!()
    };
    assert!(why.contains("cut off"), "{why}");
    // The anchored segment removed, or the whole log.
    let AnchorCheck::Missing(why) = anchor_check(&log[..2], &h) else {
        panic!()
    };
    assert!(why.contains("missing"), "{why}");
    let AnchorCheck::Missing(why) = anchor_check(&[], &h) else {
        panic!()
    };
    assert!(why.contains("deleted"), "{why}");
    // Another log with the same shape (a rollback to an older copy
    // that went on differently).
    let other = build_with(3, 4, &mut |r| r.op = "list".into());
    let AnchorCheck::Missing(why) = anchor_check(&other, &h) else {
        panic!()
    };
    assert!(why.contains("rolled back"), "{why}");
    // A destroyed key version: cannot say.
    let k = keys();
    let r = check_anchor(
        log.iter().map(|(n, b, _)| (*n, b.as_slice())),
        None,
        &[1; 16],
        &mut |v| (v == 2).then(|| k.clone()),
        &h,
    );
    assert!(matches!(r, AnchorCheck::Unverifiable(_)), "{r:?}");
}

#[test]
fn verify_with_an_anchor_reports_deletion_and_an_older_keyring() {
    let log = build_with(2, 3, &mut |r| {
        if r.seq == 5 {
            r.keyring_generation = Some(4);
        }
    });
    let k = keys();
    let run = |log: &[(u64, Vec<u8>, Vec<usize>)], a: &KeyringAnchor| {
        verify_chain_anchored(
            log.iter().map(|(n, b, _)| (*n, b.as_slice())),
            &[1; 16],
            &mut |v| (v == 1).then(|| k.clone()),
            Some(a),
            &mut |_| {},
        )
    };
    let head = head_after(&log, 1, 0); // record 4
    let fine = KeyringAnchor {
        head,
        keyring_generation: 4,
    };
    assert!(run(&log, &fine).is_intact());
    let older = KeyringAnchor {
        head,
        keyring_generation: 3,
    };
    let r = run(&log, &older);
    assert!(r.breaks[0].reason.contains("older keyring"), "{r:?}");
    // The whole folder deleted: no longer passes.
    let r = run(&[], &fine);
    assert!(r.breaks[0].reason.contains("deleted"), "{r:?}");
    // The first segment deleted and the log restarted: both found.
    let fresh = build(1, 2);
    let r = run(&fresh, &fine);
    assert!(!r.is_intact());
}

/// Applies a prune plan to a built log: the checkpoint's bytes (MACed
/// with the test keys) and the segments left.
fn apply(log: &Log, plan: &super::super::PrunePlan) -> (Vec<u8>, Log) {
    let mut c = plan.checkpoint.expect("something pruned");
    c.key_version = 1;
    c.pruned_ms = 99;
    let bytes = super::super::encode_checkpoint(&c, &keys());
    let left = log
        .iter()
        .filter(|(n, _, _)| !plan.remove.contains(n))
        .cloned()
        .collect();
    (bytes, left)
}

fn plan(
    log: &Log,
    ckpt: Option<&[u8]>,
    rule: super::super::PruneRule,
    keep: u64,
) -> super::super::PrunePlan {
    let k = keys();
    super::super::plan_prune(
        log.iter().map(|(n, b, _)| (*n, b.as_slice())),
        ckpt,
        &[1; 16],
        &mut |v| (v == 1).then(|| k.clone()),
        rule,
        keep,
    )
    .unwrap()
}

fn verify_view(log: &Log, ckpt: Option<&[u8]>, anchor: Option<&KeyringAnchor>) -> ChainReport {
    let k = keys();
    verify_log_view(
        log.iter().map(|(n, b, _)| (*n, b.as_slice())),
        ckpt,
        &[1; 16],
        &mut |v| (v == 1).then(|| k.clone()),
        anchor,
        &mut |_| {},
    )
}

#[test]
fn pruning_by_date_and_size_leaves_a_log_that_verifies() {
    use super::super::PruneRule;
    // 4 segments of 3 records; record n was written at 1000 + n ms.
    let log = build(4, 3);
    // By date: segments whose last record is before 1007 (segments 1, 2).
    let p = plan(
        &log,
        None,
        PruneRule {
            before_ms: Some(1007),
            max_bytes: None,
        },
        4,
    );
    assert_eq!(
        (p.segments, p.records, p.remove.clone()),
        (2, 6, vec![1, 2])
    );
    let (ck, left) = apply(&log, &p);
    let r = verify_view(&left, Some(&ck), None);
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(r.pruned.unwrap().through_seq, 6);
    assert_eq!(r.records, 6);
    // The kept segment (4, being written) is never pruned, whatever the rule.
    let p = plan(
        &log,
        None,
        PruneRule {
            before_ms: Some(u64::MAX),
            max_bytes: Some(1),
        },
        4,
    );
    assert_eq!(p.remove, vec![1, 2, 3]);
    // By size: as few as needed to get under the limit.
    let total: usize = log.iter().map(|(_, b, _)| b.len()).sum();
    let p = plan(
        &log,
        None,
        PruneRule {
            before_ms: None,
            max_bytes: Some((total - log[0].1.len()) as u64),
        },
        9,
    );
    assert_eq!(p.remove, vec![1]);
    // A second prune continues from the first checkpoint, and counts both.
    let p1 = plan(
        &log,
        None,
        PruneRule {
            before_ms: Some(1004),
            max_bytes: None,
        },
        9,
    );
    let (ck1, left1) = apply(&log, &p1);
    let p2 = plan(
        &left1,
        Some(&ck1),
        PruneRule {
            before_ms: Some(1010),
            max_bytes: None,
        },
        9,
    );
    assert_eq!(p2.remove, vec![2, 3]);
    let c2 = p2.checkpoint.unwrap();
    assert_eq!((c2.segment, c2.last_seq, c2.records_pruned), (3, 9, 9));
    let (ck2, left2) = apply(&left1, &p2);
    assert!(verify_view(&left2, Some(&ck2), None).is_intact());
    // A leftover segment the checkpoint covers is skipped, not a break.
    let mut with_leftover = left2.clone();
    with_leftover.insert(0, log[1].clone());
    let r = verify_view(&with_leftover, Some(&ck2), None);
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(r.pruned.unwrap().leftover_segments, 1);
    // The older checkpoint put back: segments 2 and 3 are missing.
    assert!(!verify_view(&left2, Some(&ck1), None).is_intact());
    // No checkpoint at all: segments 1-3 are missing.
    assert!(!verify_view(&left2, None, None).is_intact());
}

#[test]
fn a_break_bounds_the_prune_and_an_anchor_in_the_pruned_part_holds() {
    use super::super::PruneRule;
    let log = build_with(4, 3, &mut |r| {
        if r.seq == 2 {
            r.keyring_generation = Some(7);
        }
    });
    let everything = PruneRule {
        before_ms: Some(u64::MAX),
        max_bytes: None,
    };
    // A flipped bit in segment 3: only 1 and 2 may go.
    let mut broken = log.clone();
    let off = broken[2].2[1] + 20;
    broken[2].1[off] ^= 1;
    assert_eq!(plan(&broken, None, everything, 9).remove, vec![1, 2]);
    // An anchor at record 2 (segment 1), generation 7: reached through the
    // checkpoint; an anchor claiming an older keyring is still caught.
    let p = plan(&log, None, everything, 4);
    let (ck, left) = apply(&log, &p);
    let head = head_after(&log, 0, 1);
    let fine = KeyringAnchor {
        head,
        keyring_generation: 7,
    };
    assert!(verify_view(&left, Some(&ck), Some(&fine)).is_intact());
    let older = KeyringAnchor {
        head,
        keyring_generation: 6,
    };
    let r = verify_view(&left, Some(&ck), Some(&older));
    assert!(
        r.breaks.iter().any(|b| b.reason.contains("older keyring")),
        "{r:?}"
    );
    // An anchor past the checkpoint's last record but in a pruned segment:
    // the log was replaced.
    let mut past = head;
    past.seq = 10;
    past.segment = 2;
    let r = verify_view(
        &left,
        Some(&ck),
        Some(&KeyringAnchor {
            head: past,
            keyring_generation: 7,
        }),
    );
    assert!(!r.is_intact(), "{r:?}");
    // Pure anchor check agrees.
    let k = keys();
    let found = check_anchor(
        left.iter().map(|(n, b, _)| (*n, b.as_slice())),
        Some(&ck),
        &[1; 16],
        &mut |v| (v == 1).then(|| k.clone()),
        &head,
    );
    assert!(matches!(found, AnchorCheck::Present { .. }), "{found:?}");
    // An edited checkpoint is a break, and the walk starts at segment 1.
    let mut bad = ck.clone();
    bad[45] ^= 1;
    let r = verify_view(&left, Some(&bad), None);
    assert!(r.breaks[0].reason.contains("checkpoint"), "{r:?}");
}
