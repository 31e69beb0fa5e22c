//! Unit tests of the content layer: both formats against a plain model,
//! every crash point of an operation (each prefix of its writes, replayed),
//! full-disk failures, and what tampering reads as.

use super::run::testing::{self, Fault};
use super::*;
use crate::crypto::SecretKey;
use crate::format::layout::{chunk_count, chunk_meta_offset, GROUP_BYTES, GROUP_PLAIN};
use proptest::prelude::*;

const V1: ContentFormat = ContentFormat::LastChunkFlag;
const V2: ContentFormat = ContentFormat::SealedGroupState;
const PT: ContentFormat = ContentFormat::PackedTails;
const ID: [u8; 16] = [1; 16];

#[derive(Debug, Clone)]
enum Act {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn act() -> impl Strategy<Value = Act> {
    // Offsets cluster around chunk and group boundaries.
    let anchor = prop_oneof![
        Just(0u64),
        Just(4096),
        Just(8192),
        // Where a packed tail stops fitting (docs/FORMAT.md §4.7).
        Just(3556),
        Just(4096 + 3528),
        Just(GROUP_PLAIN),
        Just(2 * GROUP_PLAIN)
    ];
    prop_oneof![
        (
            anchor.clone(),
            -5000i64..5000,
            proptest::collection::vec(any::<u8>(), 1..9000)
        )
            .prop_map(|(a, d, v)| Act::Write((a as i64 + d).max(0) as u64, v)),
        (anchor, -5000i64..5000).prop_map(|(a, d)| Act::SetLen((a as i64 + d).max(0) as u64)),
    ]
}

fn path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("f")
}

fn fresh(dir: &tempfile::TempDir, key: &SecretKey, format: ContentFormat) -> SealedFile {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path(dir))
        .unwrap();
    SealedFile::create(f, &[0xAB; RECORD_LEN], key, ID, format).unwrap()
}

fn open_at(
    p: &std::path::Path,
    key: &SecretKey,
    format: ContentFormat,
) -> Result<SealedFile, VolumeError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    SealedFile::open(f, key, ID, format)
}

/// Opens like fsck does (a cut file opens; its reads say what is gone).
fn open_checking(dir: &tempfile::TempDir, key: &SecretKey, format: ContentFormat) -> SealedFile {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path(dir))
        .unwrap();
    SealedFile::open_for_check(f, key, ID, format).unwrap()
}

fn reopen(dir: &tempfile::TempDir, key: &SecretKey, format: ContentFormat) -> SealedFile {
    open_at(&path(dir), key, format).unwrap()
}

fn apply(f: &mut SealedFile, model: &mut Vec<u8>, a: &Act) {
    match a {
        Act::Write(off, data) => {
            f.write(*off, data).unwrap();
            let end = *off as usize + data.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[*off as usize..end].copy_from_slice(data);
        }
        Act::SetLen(n) => {
            f.set_len(*n).unwrap();
            model.resize(*n as usize, 0);
        }
    }
}

fn raw(dir: &tempfile::TempDir) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path(dir))
        .unwrap()
}

fn is_integrity<T: std::fmt::Debug>(r: Result<T, VolumeError>) -> bool {
    matches!(r, Err(e) if e.is_integrity())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn matches_a_plain_model(acts in proptest::collection::vec(act(), 1..12), which in 0..3u8) {
        let format = [V1, V2, PT][which as usize];
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key, format);
        let mut model: Vec<u8> = Vec::new();
        for a in &acts {
            apply(&mut f, &mut model, a);
            prop_assert_eq!(f.size(), model.len() as u64);
        }
        prop_assert!(f.read(0, model.len() + 10).unwrap() == model.clone(), "content differs: f.read(0, model.len() + 10).unwrap()");
        // The size and every chunk survive a reopen from disk alone, and
        // the ciphertext has exactly the size's length.
        let g = reopen(&dir, &key, format);
        prop_assert_eq!(g.size(), model.len() as u64);
        prop_assert_eq!(g.stray_tail(), 0);
        prop_assert!(g.read(0, model.len()).unwrap() == model.clone(), "content differs: g.read(0, model.len()).unwrap()");
        prop_assert_eq!(
            std::fs::metadata(path(&dir)).unwrap().len(),
            ciphertext_size(model.len() as u64)
        );
        if format.has_group_states() {
            let scan = g.scan();
            prop_assert_eq!(&scan, &ChunkScan { checked: scan.checked, ..ChunkScan::default() });
        }
        // Unaligned sub-ranges.
        if model.len() > 10 {
            let a = model.len() / 3;
            let b = (model.len() - a).min(7000);
            prop_assert!(g.read(a as u64, b).unwrap() == model[a..a + b].to_vec(), "content differs: g.read(a as u64, b).unwrap()");
        }
    }

    /// Every prefix of the writes of the last operation (what a kill of
    /// the daemon can leave) opens, has the old or the new size, and reads
    /// every chunk as its old or its new content; only chunks a write was
    /// storing may fail authentication (never read as zeros or garbage).
    #[test]
    fn every_crash_point_reads_old_or_new(acts in proptest::collection::vec(act(), 1..8), packed in any::<bool>()) {
        let format = if packed { PT } else { V2 };
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key, format);
        let mut model: Vec<u8> = Vec::new();
        let (last, before) = acts.split_last().unwrap();
        for a in before {
            apply(&mut f, &mut model, a);
        }
        let old_bytes = std::fs::read(path(&dir)).unwrap();
        let old = model.clone();
        testing::start_journal();
        apply(&mut f, &mut model, last);
        let ops = testing::take_journal();
        let new = model;
        // Chunks being stored: a write's, and the one chunk a size change
        // re-seals at another length (the old final chunk when growing past
        // it, the new one when cutting inside it): data and entry are two
        // writes, so a kill between them fails that chunk (as in the
        // last-chunk-flag format).
        let old_final = (old.len() as u64).div_ceil(4096).saturating_sub(1);
        let touched = match last {
            Act::Write(off, d) => Some((
                (off / 4096).min(old_final),
                (off + d.len() as u64 - 1) / 4096,
            )),
            Act::SetLen(n) if *n > old.len() as u64 => Some((old_final, old_final)),
            Act::SetLen(n) => Some((n.div_ceil(4096).saturating_sub(1), n.div_ceil(4096).saturating_sub(1))),
        };
        let probe = dir.path().join("probe");
        for i in 0..=ops.len() {
            let mut bytes = old_bytes.clone();
            testing::replay(&mut bytes, &ops[..i]);
            std::fs::write(&probe, &bytes).unwrap();
            let g = open_at(&probe, &key, format)
                .unwrap_or_else(|e| panic!("prefix {i}/{}: open: {e}", ops.len()));
            let size = g.size() as usize;
            prop_assert!(size == old.len() || size == new.len(),
                "prefix {}/{}: size {} is neither {} nor {}", i, ops.len(), size, old.len(), new.len());
            for k in 0..chunk_count(size as u64) {
                let (a, b) = ((k * 4096) as usize, ((k + 1) * 4096).min(size as u64) as usize);
                let want = |m: &Vec<u8>| -> Vec<u8> {
                    (a..b).map(|x| m.get(x).copied().unwrap_or(0)).collect()
                };
                match g.read(a as u64, b - a) {
                    Ok(got) => prop_assert!(got == want(&old) || got == want(&new),
                        "prefix {}/{}: chunk {} reads neither old nor new ({:?})", i, ops.len(), k, last),
                    Err(e) => prop_assert!(
                        e.is_integrity() && touched.is_some_and(|(x, y)| k >= x && k <= y),
                        "prefix {}/{}: chunk {}: {} ({:?})", i, ops.len(), k, e, last),
                }
            }
        }
    }
}

#[test]
fn v1_truncation_at_chunk_boundary_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let mut f = fresh(&dir, &key, V1);
    f.write(0, &vec![7u8; 3 * 4096]).unwrap();
    drop(f);
    raw(&dir).set_len(ciphertext_size(2 * 4096)).unwrap();
    let g = reopen(&dir, &key, V1);
    assert_eq!(g.size(), 8192);
    assert!(g.read(0, 4096).is_ok(), "untouched chunk 0 still reads");
    assert!(matches!(g.read(4096, 4096), Err(VolumeError::Chunk(_))));
}

#[test]
fn tampered_chunk_fails_alone() {
    for format in [V1, V2] {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key, format);
        f.write(0, &vec![9u8; 3 * 4096]).unwrap();
        drop(f);
        // Flipped (a byte set to 0xff would be no change 1 time in 256).
        let mut b = [0u8; 1];
        crate::sys::read_exact_at(&raw(&dir), &mut b, chunk_data_offset(1) + 17).unwrap();
        b[0] ^= 0xff;
        crate::sys::write_all_at(&raw(&dir), &b, chunk_data_offset(1) + 17).unwrap();
        let g = reopen(&dir, &key, format);
        assert!(g.read(0, 4096).is_ok());
        assert!(g.read(8192, 4096).is_ok());
        assert!(matches!(g.read(4096, 10), Err(VolumeError::Chunk(_))));
        assert!(g.read(0, 3 * 4096).is_err());
    }
}

#[test]
fn growth_after_partial_final_chunk_reads_zero_gap() {
    for format in [V1, V2] {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key, format);
        f.write(0, b"abc").unwrap();
        f.write(GROUP_PLAIN * 2 + 5, b"xyz").unwrap();
        let g = reopen(&dir, &key, format);
        let all = g.read(0, (GROUP_PLAIN * 3) as usize).unwrap();
        assert_eq!(&all[..3], b"abc");
        assert!(all[3..(GROUP_PLAIN * 2 + 5) as usize]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(&all[(GROUP_PLAIN * 2 + 5) as usize..], b"xyz");
    }
}

// ---------------------------------------------------------------- issue 16, finding 2

/// A 14,096-byte file cut to data_off(2)+1, that byte and the entries of
/// chunks 2-3 zeroed: the v1 format read it as 8,193 bytes; now the sealed
/// size says 14,096 and the missing chunks fail.
#[test]
fn v2_cut_and_zeroed_tail_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let data: Vec<u8> = (0..14_096u32).map(|i| (i * 7 + 1) as u8).collect();
    let mut f = fresh(&dir, &key, V2);
    f.write(0, &data).unwrap();
    drop(f);
    let r = raw(&dir);
    r.set_len(chunk_data_offset(2) + 1).unwrap();
    crate::sys::write_all_at(&r, &[0], chunk_data_offset(2)).unwrap();
    crate::sys::write_all_at(&r, &[0u8; 56], chunk_meta_offset(2)).unwrap();
    // Short of its sealed size: the file does not open (the kernel, which
    // takes the size from stat, would never ask for the chunks past the cut).
    assert!(open_at(&path(&dir), &key, V2).is_err_and(|e| e.is_integrity()));
    let g = open_checking(&dir, &key, V2);
    assert_eq!(g.size(), 14_096);
    assert!(
        g.read(0, 8192).unwrap() == data[..8192],
        "content differs: g.read(0, 8192).unwrap()"
    );
    assert!(is_integrity(g.read(8192, 4096)));
    assert!(is_integrity(g.read(12288, 1808)));
    assert!(is_integrity(g.read(0, 14_096)));
    let scan = g.scan();
    assert_eq!(scan.lost_from, Some(8193));
}

/// 4,096 zero bytes appended to an 8,192-byte file's ciphertext: a stray
/// tail, never read; the file reads exactly its old content.
#[test]
fn v2_appended_bytes_are_a_stray_tail() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let data = vec![0x5Au8; 8192];
    let mut f = fresh(&dir, &key, V2);
    f.write(0, &data).unwrap();
    drop(f);
    let r = raw(&dir);
    let len = r.metadata().unwrap().len();
    crate::sys::write_all_at(&r, &[0u8; 4096], len).unwrap();
    let mut g = reopen(&dir, &key, V2);
    assert_eq!(g.size(), 8192);
    assert_eq!(g.stray_tail(), 4096);
    assert!(
        g.read(0, 20_000).unwrap() == data,
        "content differs: g.read(0, 20_000).unwrap()"
    );
    assert!(
        g.read(8192, 4096).unwrap() == b"",
        "content differs: g.read(8192, 4096).unwrap()"
    );
    g.trim_stray_tail().unwrap();
    assert_eq!(r.metadata().unwrap().len(), ciphertext_size(8192));
    assert!(
        reopen(&dir, &key, V2).read(0, 9000).unwrap() == data,
        "content differs: reopen(&dir, &key, V2).read(0, 9000).unwrap()"
    );
}

#[test]
fn v2_zeroed_final_chunk_or_state_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let data = vec![3u8; 3 * 4096 + 10];
    let mut f = fresh(&dir, &key, V2);
    f.write(0, &data).unwrap();
    drop(f);
    let r = raw(&dir);
    // The final chunk and its entry zeroed.
    crate::sys::write_all_at(&r, &[0u8; 10], chunk_data_offset(3)).unwrap();
    crate::sys::write_all_at(&r, &[0u8; 28], chunk_meta_offset(3)).unwrap();
    let g = reopen(&dir, &key, V2);
    assert!(is_integrity(g.read(3 * 4096, 10)));
    assert!(
        g.read(0, 3 * 4096).unwrap() == data[..3 * 4096],
        "content differs: g.read(0, 3 * 4096).unwrap()"
    );
    assert_eq!(g.scan().bad, vec![3]);
    // The state zeroed too: the end is lost, the open fails.
    crate::sys::write_all_at(&r, &[0u8; 96], 160).unwrap();
    let e = open_at(&path(&dir), &key, V2).unwrap_err();
    assert!(e.is_integrity(), "{e}");
}

#[test]
fn v2_cut_at_and_inside_chunks_is_detected() {
    for cut in [
        ciphertext_size(2 * 4096),
        ciphertext_size(2 * 4096) + 100,
        ciphertext_size(GROUP_PLAIN),
        ciphertext_size(GROUP_PLAIN) + 100,
        GROUP_BYTES + 4096,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let data: Vec<u8> = (0..(GROUP_PLAIN + 3 * 4096) as usize)
            .map(|i| i as u8)
            .collect();
        let mut f = fresh(&dir, &key, V2);
        f.write(0, &data).unwrap();
        drop(f);
        raw(&dir).set_len(cut).unwrap();
        // Every cut is refused at open: the end state is gone, or the
        // ciphertext is short of the sealed size.
        assert!(
            open_at(&path(&dir), &key, V2).is_err_and(|e| e.is_integrity()),
            "cut {cut}: opened"
        );
        let f = std::fs::OpenOptions::new()
            .read(true)
            .open(path(&dir))
            .unwrap();
        match SealedFile::open_for_check(f, &key, ID, V2) {
            Err(e) => panic!("cut {cut}: {e}"),
            Ok(g) if cut <= GROUP_BYTES + 256 => {
                // The cut took the last group's state: the end is lost.
                assert!(matches!(g.discovery().unwrap().end, End::Lost), "cut {cut}");
            }
            Ok(g) => {
                assert_eq!(g.size(), data.len() as u64, "cut {cut}");
                let stored = plaintext_size(cut).unwrap();
                assert!(
                    is_integrity(g.read(stored, 4096)),
                    "cut {cut}: past the cut"
                );
                assert!(is_integrity(g.read(0, data.len())), "cut {cut}: whole");
                assert!(
                    g.read(0, 4096).unwrap() == data[..4096],
                    "content differs: g.read(0, 4096).unwrap()"
                );
            }
        }
    }
}

#[test]
fn v2_states_are_bound_to_their_group_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let data = vec![1u8; (2 * GROUP_PLAIN + 10) as usize];
    let mut f = fresh(&dir, &key, V2);
    f.write(0, &data).unwrap();
    drop(f);
    let r = raw(&dir);
    let mut s1 = [0u8; 96];
    r.read_exact_at_compat(&mut s1, state_offset(1));
    // Group 1's state put in group 0's place.
    crate::sys::write_all_at(&r, &s1, state_offset(0)).unwrap();
    let g = reopen(&dir, &key, V2);
    assert!(is_integrity(g.read(0, 4096)));
    assert_eq!(g.read(GROUP_PLAIN, 4096).unwrap(), vec![1u8; 4096]);
    assert_eq!(g.scan().bad_states.len(), 1);
}

trait ReadCompat {
    fn read_exact_at_compat(&self, buf: &mut [u8], off: u64);
}

impl ReadCompat for std::fs::File {
    fn read_exact_at_compat(&self, buf: &mut [u8], off: u64) {
        crate::sys::read_exact_at(self, buf, off).unwrap()
    }
}

#[test]
fn v2_holes_read_zeros_and_take_no_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let mut f = fresh(&dir, &key, V2);
    f.set_len(3 * GROUP_PLAIN + 5).unwrap();
    f.write(GROUP_PLAIN + 4096, b"mid").unwrap();
    let g = reopen(&dir, &key, V2);
    assert_eq!(g.size(), 3 * GROUP_PLAIN + 5);
    let all = g.read(0, (3 * GROUP_PLAIN + 5) as usize).unwrap();
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, &b)| b == 0 || (GROUP_PLAIN + 4096..GROUP_PLAIN + 4099).contains(&(i as u64))));
    assert_eq!(&all[(GROUP_PLAIN + 4096) as usize..][..3], b"mid");
    // A hole's entry and data stay zero on disk.
    let mut e = [0u8; 28];
    raw(&dir).read_exact_at_compat(&mut e, chunk_meta_offset(5));
    assert_eq!(e, [0u8; 28]);
}

// ---------------------------------------------------------------- full disk

#[test]
fn v2_a_growth_that_cannot_be_stored_is_rolled_back_and_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let mut f = fresh(&dir, &key, V2);
    let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    f.write(0, &data).unwrap();
    let csize = std::fs::metadata(path(&dir)).unwrap().len();
    // The disk is full from 60 KiB of ciphertext on.
    testing::set_fault(Some(Fault::From(60 << 10)));
    let e = f.write(20_000, &vec![9u8; 100_000]).unwrap_err();
    testing::set_fault(None);
    assert_eq!(e.errno(), libc::ENOSPC);
    assert_eq!(f.size(), 20_000);
    assert_eq!(std::fs::metadata(path(&dir)).unwrap().len(), csize);
    assert_eq!(f.poisoned(), Some(libc::ENOSPC));
    assert_eq!(f.write(0, b"x").unwrap_err().errno(), libc::ENOSPC);
    assert!(
        f.read(0, 30_000).unwrap() == data,
        "content differs: f.read(0, 30_000).unwrap()"
    );
    assert!(
        reopen(&dir, &key, V2).read(0, 30_000).unwrap() == data,
        "content differs: reopen(&dir, &key, V2).read(0, 30_000).unwrap()"
    );
    // A new size ends the poisoning.
    f.set_len(10).unwrap();
    f.write(10, b"again").unwrap();
    assert!(
        reopen(&dir, &key, V2).read(0, 100).unwrap() == [&data[..10], b"again"].concat(),
        "content differs: reopen(&dir, &key, V2).read(0, 100).unwrap()"
    );
}

#[test]
fn v2_a_write_into_a_hole_that_cannot_be_stored_reads_eio_never_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let mut f = fresh(&dir, &key, V2);
    f.write(0, &[1u8; 4096]).unwrap();
    f.set_len(40 * 4096).unwrap();
    f.write(39 * 4096, &[2u8; 4096]).unwrap();
    // The hole's data pages cannot be allocated.
    testing::set_fault(Some(Fault::From(chunk_data_offset(10))));
    let e = f.write(10 * 4096, &[3u8; 3 * 4096]).unwrap_err();
    testing::set_fault(None);
    assert_eq!(e.errno(), libc::ENOSPC);
    for g in [&f, &reopen(&dir, &key, V2)] {
        assert_eq!(g.size(), 40 * 4096);
        for k in 10..13 {
            assert!(
                is_integrity(g.read(k * 4096, 4096)),
                "chunk {k} must not read as zeros"
            );
        }
        assert_eq!(g.read(9 * 4096, 4096).unwrap(), vec![0u8; 4096]);
        assert_eq!(g.read(13 * 4096, 4096).unwrap(), vec![0u8; 4096]);
        assert_eq!(g.read(0, 4096).unwrap(), vec![1u8; 4096]);
        assert_eq!(g.read(39 * 4096, 4096).unwrap(), vec![2u8; 4096]);
    }
    assert_eq!(reopen(&dir, &key, V2).scan().bad, vec![10, 11, 12]);
}

/// Whichever write of a growing request fails, what is left reopens with
/// the old size and content: a chunk inside the old size the request
/// covered reads EIO or (its run was stored) the new content, nothing else.
/// `data[a..b]` after the failed write of the test below stored its bytes.
fn written_over(data: &[u8], a: usize, b: usize) -> Vec<u8> {
    let from = data.len() - 5000;
    (a..b)
        .map(|i| if i >= from { 0xEE } else { data[i] })
        .collect()
}

#[test]
fn v2_a_failure_at_any_write_of_a_growth_leaves_the_old_file() {
    let data: Vec<u8> = (0..(GROUP_PLAIN + 9000) as u32)
        .map(|i| (i % 251) as u8)
        .collect();
    for n in 0..12 {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key, V2);
        f.write(0, &data).unwrap();
        testing::set_fault(Some(Fault::After(n)));
        let r = f.write(
            data.len() as u64 - 5000,
            &vec![0xEE; 2 * GROUP_PLAIN as usize],
        );
        testing::set_fault(None);
        let g = reopen(&dir, &key, V2);
        if r.is_ok() {
            assert_eq!(g.size(), data.len() as u64 - 5000 + 2 * GROUP_PLAIN);
            continue;
        }
        assert_eq!(g.size(), data.len() as u64, "failure after {n} writes");
        let first_touched = (data.len() as u64 - 5000) / 4096;
        for k in 0..chunk_count(data.len() as u64) {
            let (a, b) = (k as usize * 4096, ((k as usize + 1) * 4096).min(data.len()));
            match g.read(a as u64, b - a) {
                Ok(got) => assert!(
                    got == data[a..b] || got == written_over(&data, a, b),
                    "n {n} chunk {k}: neither old nor new content"
                ),
                Err(e) => assert!(
                    e.is_integrity() && k >= first_touched,
                    "n {n} chunk {k}: {e}"
                ),
            }
        }
    }
}

#[test]
fn v2_a_truncate_up_that_cannot_be_stored_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let mut f = fresh(&dir, &key, V2);
    f.write(0, &[5u8; 100]).unwrap();
    testing::set_fault(Some(Fault::From(GROUP_BYTES)));
    let e = f.set_len(5 * GROUP_PLAIN).unwrap_err();
    testing::set_fault(None);
    assert_eq!(e.errno(), libc::ENOSPC);
    assert_eq!(f.size(), 100);
    assert_eq!(f.poisoned(), None);
    let g = reopen(&dir, &key, V2);
    assert_eq!(g.read(0, 200).unwrap(), vec![5u8; 100]);
}

#[test]
fn v1_a_growth_that_cannot_be_stored_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let mut f = fresh(&dir, &key, V1);
    f.write(0, &[1u8; 5000]).unwrap();
    testing::set_fault(Some(Fault::From(20_000)));
    assert!(f.write(5000, &vec![2u8; 50_000]).is_err());
    testing::set_fault(None);
    assert_eq!(f.poisoned(), Some(libc::ENOSPC));
    assert_eq!(
        reopen(&dir, &key, V1).read(0, 60_000).unwrap(),
        vec![1u8; 5000]
    );
}

// ---------------------------------------------------------------- salvage

#[test]
fn v2_rebuild_zeroes_bad_chunks_knowingly_and_cuts_to_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let data = vec![4u8; 5 * 4096];
    let mut f = fresh(&dir, &key, V2);
    f.write(0, &data).unwrap();
    drop(f);
    let r = raw(&dir);
    crate::sys::write_all_at(&r, &[0u8; 28], chunk_meta_offset(1)).unwrap();
    let len = r.metadata().unwrap().len();
    crate::sys::write_all_at(&r, &[7u8; 100], len).unwrap();
    let g = reopen(&dir, &key, V2);
    let scan = g.scan();
    assert_eq!(scan.bad, vec![1]);
    assert_eq!(g.stray_tail(), 100);
    let mut w = g.reopen_writable().unwrap();
    let done = w.rebuild(&scan).unwrap();
    assert_eq!(done.zeroed, vec![1]);
    let h = reopen(&dir, &key, V2);
    assert_eq!(h.stray_tail(), 0);
    let all = h.read(0, 5 * 4096).unwrap();
    assert_eq!(&all[..4096], &data[..4096]);
    assert_eq!(&all[4096..8192], &[0u8; 4096][..]);
    assert_eq!(&all[8192..], &data[8192..]);
    assert_eq!(
        h.scan(),
        ChunkScan {
            checked: 5,
            ..ChunkScan::default()
        }
    );
}

#[test]
fn v2_rebuild_of_a_lost_end_takes_the_ciphertext_size() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let mut f = fresh(&dir, &key, V2);
    f.write(0, &[6u8; 3 * 4096]).unwrap();
    drop(f);
    crate::sys::write_all_at(&raw(&dir), &[0u8; 96], 160).unwrap();
    let file = raw(&dir);
    let g = SealedFile::open_for_check(file, &key, ID, V2).unwrap();
    let scan = g.scan();
    assert!(scan.end_lost);
    assert_eq!(
        scan.bad_states,
        vec![(0, crate::format::group_state::StateError::Missing(0))]
    );
    let done = g.reopen_writable().unwrap().rebuild(&scan).unwrap();
    assert!(done.zeroed.is_empty());
    let h = reopen(&dir, &key, V2);
    assert_eq!(h.read(0, 5 * 4096).unwrap(), vec![6u8; 3 * 4096]);
}

/// tests/posix.rs truncate_up_and_down, on the content alone: ftruncates
/// down and up across a group boundary with a write at each new end, then
/// a truncate through a new open.
#[test]
fn truncates_across_a_group_then_reopen() {
    for format in [V1, V2] {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key, format);
        let mut model = vec![3u8; 3 * 4096 + 500];
        f.write(0, &model).unwrap();
        for len in [
            4096 + 1000,
            4096,
            GROUP_PLAIN + 77,
            5,
            0,
            2 * 4096 + 3,
            GROUP_PLAIN,
            GROUP_PLAIN - 1,
        ] {
            f.set_len(len).unwrap();
            model.resize(len as usize, 0);
            assert_eq!(f.read(0, model.len() + 10).unwrap(), model, "after {len}");
            let d = vec![(len % 251) as u8; 300];
            f.write(len, &d).unwrap();
            model.extend_from_slice(&d);
        }
        drop(f);
        let mut g = reopen(&dir, &key, format);
        assert_eq!(g.read(0, model.len() + 10).unwrap(), model, "reopened");
        g.set_len(3 * 4096 + 10).unwrap();
        model.resize(3 * 4096 + 10, 0);
        drop(g);
        let mut g = reopen(&dir, &key, format);
        assert_eq!(
            g.read(0, model.len() + 10).unwrap(),
            model,
            "after truncate"
        );
        g.set_len(4097).unwrap();
        model.resize(4097, 0);
        drop(g);
        let g = reopen(&dir, &key, format);
        assert_eq!(g.read(0, 10000).unwrap(), model, "at the end");
    }
}

fn direct_reads_served() -> u64 {
    super::direct::SERVED.with(|c| c.get())
}

#[test]
fn v2_long_reads_go_direct_and_match_what_was_written() {
    for format in [V2, PT] {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key, format);
        // Three whole groups and a partial final chunk, a hole in group 1.
        let mut data: Vec<u8> = (0..3 * GROUP_PLAIN as usize + 1000)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        data[GROUP_PLAIN as usize + 8192..GROUP_PLAIN as usize + 3 * 4096].fill(0);
        f.write(0, &data[..GROUP_PLAIN as usize + 8192]).unwrap();
        f.write(
            GROUP_PLAIN + 3 * 4096,
            &data[GROUP_PLAIN as usize + 3 * 4096..],
        )
        .unwrap();
        drop(f);
        let g = reopen(&dir, &key, format);
        let before = direct_reads_served();
        let mut got = Vec::new();
        for at in (0..data.len()).step_by(1 << 20) {
            got.extend(g.read(at as u64, 1 << 20).unwrap());
        }
        assert_eq!(got, data, "{format:?}");
        // Groups 0, 1 and 2 whole (metadata block and data in one read);
        // the final run is short of a whole page and goes through the
        // page cache.
        assert_eq!(direct_reads_served() - before, 3, "{format:?}");
        // Runs of 55, 128 and 74 chunks, all read directly; the first
        // starts inside group 0, so its entries come through the page cache.
        let at = 300_000usize;
        assert_eq!(
            g.read(at as u64, 1 << 20).unwrap(),
            &data[at..at + (1 << 20)]
        );
        assert_eq!(direct_reads_served() - before, 6, "{format:?}");
        // Short reads (random 4 KiB) stay in the page cache.
        assert_eq!(g.read(4096, 4096).unwrap(), &data[4096..8192]);
        assert_eq!(direct_reads_served() - before, 6, "{format:?}");
    }
}

#[test]
fn v2_tampered_chunk_or_entry_in_a_direct_run_fails() {
    for (what, at) in [
        ("data", chunk_data_offset(130) + 17),
        ("entry", chunk_meta_offset(130) + 3),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let mut f = fresh(&dir, &key, V2);
        f.write(0, &vec![5u8; 2 * GROUP_PLAIN as usize]).unwrap();
        // Read once while whole (its group states are now cached).
        assert!(f.read(GROUP_PLAIN, GROUP_PLAIN as usize).is_ok());
        let mut b = [0u8; 1];
        crate::sys::read_exact_at(&raw(&dir), &mut b, at).unwrap();
        b[0] ^= 0xff;
        crate::sys::write_all_at(&raw(&dir), &b, at).unwrap();
        let before = direct_reads_served();
        assert!(
            is_integrity(f.read(GROUP_PLAIN, GROUP_PLAIN as usize)),
            "{what}"
        );
        assert_eq!(direct_reads_served() - before, 1, "{what}");
        assert!(is_integrity(f.read(0, 2 * GROUP_PLAIN as usize)), "{what}");
        assert_eq!(f.read(131 * 4096, 4096).unwrap(), vec![5u8; 4096], "{what}");
        assert_eq!(
            f.read(0, GROUP_PLAIN as usize).unwrap().len(),
            GROUP_PLAIN as usize
        );
    }
}

#[test]
fn v2_a_long_read_far_from_the_previous_one_keeps_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let mut f = fresh(&dir, &key, V2);
    let mib = 1usize << 20;
    let far = 9 * mib as u64;
    f.write(0, &vec![3u8; mib]).unwrap();
    f.write(far, &vec![4u8; mib]).unwrap();
    let before = direct_reads_served();
    // The start of the file: a stream (two whole groups, direct).
    assert_eq!(f.read(0, mib).unwrap(), vec![3u8; mib]);
    assert_eq!(direct_reads_served() - before, 2);
    // 8 MiB past where it ended: a random jump, through the page cache.
    assert_eq!(f.read(far, mib).unwrap(), vec![4u8; mib]);
    assert_eq!(direct_reads_served() - before, 2);
    // Near the previous read again: direct.
    assert_eq!(f.read(far, mib).unwrap(), vec![4u8; mib]);
    assert_eq!(direct_reads_served() - before, 4);
    // A hole between them reads as zeros either way.
    assert_eq!(f.read(4 * mib as u64, 4096).unwrap(), vec![0u8; 4096]);
}

fn direct_writes_made() -> u64 {
    super::direct::WRITTEN.with(|c| c.get())
}

/// Writes `data` at `at` into `f`, its whole chunks sealed beforehand
/// with `sealer` when given (as the FUSE layer does before the lock).
fn write_with(f: &mut SealedFile, sealer: Option<&super::WriteSealer>, at: u64, data: &[u8]) {
    match sealer {
        Some(s) => {
            let mut pre = s.preseal(at, data).unwrap();
            f.write_presealed(at, data, pre.as_mut()).unwrap();
        }
        None => f.write(at, data).unwrap(),
    }
}

#[test]
fn v2_long_writes_go_direct_presealed_or_not_and_read_back() {
    // (offset, length): two whole groups; a run from inside group 0 that
    // ends mid-chunk in group 1; growth past a hole with a partial final
    // chunk; an overwrite inside the file of 40 whole chunks.
    let writes: [(u64, usize); 4] = [
        (0, 1 << 20),
        (300_001, 700_000),
        (2 * GROUP_PLAIN + 5, 200_000),
        (40_960, 40 * 4096),
    ];
    for format in [V2, PT] {
        for presealed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let key = SecretKey::generate().unwrap();
            let mut f = fresh(&dir, &key, format);
            let sealer = f.write_sealer();
            assert!(sealer.is_some(), "sealed group states have a sealer");
            let sealer = sealer.filter(|_| presealed);
            let mut model = Vec::new();
            for (i, &(at, len)) in writes.iter().enumerate() {
                let data: Vec<u8> = (0..len)
                    .map(|j| (j * 13 + i * 7 + j / 4096) as u8)
                    .collect();
                let before = direct_writes_made();
                write_with(&mut f, sealer.as_ref(), at, &data);
                assert!(
                    direct_writes_made() > before,
                    "{format:?} write {i}: a long run goes direct"
                );
                let end = at as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[at as usize..end].copy_from_slice(&data);
                assert_eq!(
                    f.read(0, model.len() + 10).unwrap(),
                    model,
                    "{format:?} {i}"
                );
            }
            // A short write stays buffered.
            let before = direct_writes_made();
            write_with(&mut f, sealer.as_ref(), 8192, &[9u8; 4096]);
            model[8192..12288].fill(9);
            assert_eq!(
                direct_writes_made(),
                before,
                "{format:?}: 4 KiB is not direct"
            );
            drop(f);
            let g = reopen(&dir, &key, format);
            assert_eq!(
                g.read(0, model.len() + 10).unwrap(),
                model,
                "{format:?} reopened"
            );
        }
    }
}

#[test]
fn a_presealed_write_for_another_span_or_file_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let mut f = fresh(&dir, &key, V2);
    let data: Vec<u8> = (0..256 * 1024).map(|j| (j % 251) as u8).collect();
    // Sealed for offset 0, written at 4096: the chunks sealed for 0 would
    // land one chunk off (and fail to authenticate) if used.
    let mut pre = f.write_sealer().unwrap().preseal(0, &data).unwrap();
    assert!(pre.is_some());
    f.write_presealed(4096, &data, pre.as_mut()).unwrap();
    // Sealed by another file (another key and id) for the same span.
    let other_dir = tempfile::tempdir().unwrap();
    let other_key = SecretKey::generate().unwrap();
    let other = fresh(&other_dir, &other_key, V2);
    let other_data = vec![7u8; 256 * 1024];
    let mut pre = other
        .write_sealer()
        .unwrap()
        .preseal(4096 * 100, &other_data)
        .unwrap();
    f.write_presealed(4096 * 100, &other_data, pre.as_mut())
        .unwrap();
    let mut model = vec![0u8; 4096];
    model.extend_from_slice(&data);
    model.resize(4096 * 100, 0);
    model.extend_from_slice(&other_data);
    drop(f);
    let g = reopen(&dir, &key, V2);
    assert_eq!(g.read(0, model.len() + 1).unwrap(), model);
}

#[test]
fn the_last_chunk_flag_format_has_no_write_sealer() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let f = fresh(&dir, &key, ContentFormat::LastChunkFlag);
    assert!(f.write_sealer().is_none());
}
