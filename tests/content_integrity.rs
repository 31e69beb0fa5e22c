//! Issue 16, finding 2, on the sealed-group-state format (every new
//! volume): a chunk that was never stored, or was cut or zeroed by someone
//! with access to CIPHERDIR, never reads back as zeros and never silently
//! vanishes. Each case damages the ciphertext of an unmounted volume by
//! hand, then checks through a real mount (EIO, and an `integrity_failure`
//! audit record) and with `sealfs fsck` (the damage is reported).
//! Appended bytes are the one harmless case: they are a stray tail past the
//! sealed size, never read, reported by fsck and trimmed by the next write.

mod common;

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::Value;

use common::*;
use sealfs::format::layout::{chunk_data_offset, chunk_meta_offset, ciphertext_size};

fn zero_at(path: &Path, off: u64, len: usize) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; len], off).unwrap();
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// `sealfs fsck --json` of the unmounted volume: its problems.
fn fsck_problems(fx: &Fixture, extra: &[&str]) -> Vec<Value> {
    let mut args: Vec<&OsStr> = vec![
        "fsck".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
        "--json".as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let out = sealfs(&args);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["problems"].as_array().cloned().unwrap_or_default()
}

#[track_caller]
fn assert_reported(problems: &[Value], path: &str, kind: &str) -> Value {
    problems
        .iter()
        .find(|p| p["path"] == path && p["kind"] == kind)
        .unwrap_or_else(|| panic!("fsck did not report {kind} for {path}: {problems:?}"))
        .clone()
}

/// The review's case: a 14,096-byte file's ciphertext cut to
/// data_off(2)+1, that byte zeroed and entries 2–3 zeroed. The first
/// format read chunk 2 as a 1-byte hole (a zero) and lost the rest
/// silently; now the file is EIO, recorded, and fsck names the lost range.
#[test]
fn cut_and_zeroed_tail_reads_eio_and_is_reported() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let data = Rng::new(0x1609).bytes(14_096);
    let b = fx.create_tracked("review", &data);
    fx.unmount();
    set_len(&b, chunk_data_offset(2) + 1);
    zero_at(&b, chunk_data_offset(2), 1);
    zero_at(&b, chunk_meta_offset(2), 2 * 28);
    fx.mount_ctl();
    let p = fx.p("review");
    assert_eio(fs::read(&p), "the cut file");
    assert_eio(pread(&p, 8192, 1), "the zeroed byte");
    assert!(
        !fx.integrity_records("/review").is_empty(),
        "no integrity_failure record"
    );
    fx.unmount();
    let ps = fsck_problems(&fx, &[]);
    let t = assert_reported(&ps, "/review", "truncated");
    assert_eq!(t["ranges"][0]["end"], 14_096, "{t}");
    assert_eq!(t["ranges"][0]["first_chunk"], 2, "{t}");
}

/// 4,096 zero bytes appended to an 8,192-byte file: a stray tail past the
/// sealed size. Reads return exactly the old content; fsck reports the
/// tail; the next write through the mount trims it.
#[test]
fn appended_bytes_are_a_stray_tail_never_read() {
    let mut fx = Fixture::mounted();
    let data = Rng::new(0x1610).bytes(8192);
    let b = fx.create_tracked("appended", &data);
    fx.unmount();
    let len = fs::metadata(&b).unwrap().len();
    zero_at(&b, len, 4096);
    let ps = fsck_problems(&fx, &[]);
    assert_reported(&ps, "/appended", "size-tail");
    fx.mount();
    let p = fx.p("appended");
    assert!(fs::read(&p).unwrap() == data, "old content, nothing more");
    assert_eq!(pread(&p, 8192, 4096).unwrap(), b"", "nothing past the size");
    // A write through the mount trims the tail.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&data[..1], 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fx.unmount();
    assert_eq!(fs::metadata(&b).unwrap().len(), len, "tail trimmed");
    fx.mount();
    assert_eq!(fs::metadata(fx.p("appended")).unwrap().len(), 8192);
    assert!(
        fs::read(fx.p("appended")).unwrap() == data,
        "after the trim"
    );
}

/// A zeroed final chunk (data and entry), or its data alone: EIO for that
/// chunk (recorded), never zeros; the chunks before it still read.
#[test]
fn zeroed_final_chunk_reads_eio_never_zeros() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let data = Rng::new(0x1611).bytes(3 * 4096);
    let both = fx.create_tracked("zeroed", &data);
    let only_data = fx.create_tracked("zeroed-data", &data);
    fx.unmount();
    zero_at(&both, chunk_data_offset(2), 4096);
    zero_at(&both, chunk_meta_offset(2), 28);
    zero_at(&only_data, chunk_data_offset(2), 4096);
    fx.mount_ctl();
    for name in ["zeroed", "zeroed-data"] {
        let p = fx.p(name);
        assert_eq!(fs::metadata(&p).unwrap().len(), 3 * 4096);
        assert_eio(pread(&p, 2 * 4096, 4096), name);
        assert_eio(fs::read(&p), name);
        assert_eq!(pread(&p, 0, 8192).unwrap(), &data[..8192], "{name}");
        assert!(
            !fx.integrity_records(&format!("/{name}")).is_empty(),
            "{name}: no integrity_failure record"
        );
    }
    fx.unmount();
    let ps = fsck_problems(&fx, &[]);
    for name in ["/zeroed", "/zeroed-data"] {
        let c = assert_reported(&ps, name, "chunk");
        assert_eq!(c["ranges"][0]["start"], 8192, "{c}");
        assert_eq!(c["ranges"][0]["end"], 12288, "{c}");
    }
}

/// Cuts at and inside chunks, inside the last group, and one that takes
/// the last group's state with it: the file does not open (EIO, recorded);
/// fsck reports a truncation with the range the cut took (or, when the
/// state that carried the size is gone, a lost end); salvage re-seals the
/// lost range as zeros knowingly (reported) or, for a lost end, keeps what
/// the ciphertext holds; the bytes before the cut read back as written.
#[test]
fn cuts_at_and_inside_chunks_are_reported_never_silent() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let small = Rng::new(0x1612).bytes(3 * 4096);
    let big = Rng::new(0x1613).bytes(131 * 4096);
    // (name, content, cut, plaintext bytes the cut leaves, fsck's kind)
    let cuts: [(&str, &[u8], u64, u64, &str); 4] = [
        (
            "at-chunk",
            &small,
            ciphertext_size(2 * 4096),
            2 * 4096,
            "truncated",
        ),
        (
            "inside-chunk",
            &small,
            ciphertext_size(2 * 4096) + 100,
            2 * 4096 + 100,
            "truncated",
        ),
        (
            "inside-last-group",
            &big,
            ciphertext_size(129 * 4096),
            129 * 4096,
            "truncated",
        ),
        (
            "end-lost",
            &big,
            ciphertext_size(128 * 4096),
            128 * 4096,
            "group-state",
        ),
    ];
    let mut backing = Vec::new();
    for (name, data, ..) in &cuts {
        backing.push(fx.create_tracked(name, data));
    }
    fx.unmount();
    for (b, (_, _, cut, ..)) in backing.iter().zip(&cuts) {
        set_len(b, *cut);
    }
    fx.mount_ctl();
    for (name, ..) in &cuts {
        let p = fx.p(name);
        assert_eio(fs::read(&p), name);
        assert_eio(pread(&p, 0, 10), name);
        assert!(
            !fx.integrity_records(&format!("/{name}")).is_empty(),
            "{name}: no integrity_failure record"
        );
    }
    fx.unmount();
    let ps = fsck_problems(&fx, &[]);
    for (name, data, _, stored, kind) in &cuts {
        let t = assert_reported(&ps, &format!("/{name}"), kind);
        if *kind == "truncated" {
            let start = t["ranges"][0]["start"].as_u64().unwrap();
            assert!(start <= *stored && start + 4096 > *stored, "{name}: {t}");
            assert_eq!(t["ranges"][0]["end"], data.len() as u64, "{name}: {t}");
        }
    }
    let ps = fsck_problems(&fx, &["--salvage"]);
    for (name, _, _, _, kind) in &cuts {
        let t = assert_reported(&ps, &format!("/{name}"), kind);
        assert_eq!(t["repair"], "repaired", "{name}: {t}");
    }
    let left = fsck_problems(&fx, &[]);
    assert!(left.is_empty(), "salvage left problems: {left:?}");
    fx.mount();
    for (name, data, _, stored, kind) in &cuts {
        let got = fs::read(fx.p(name)).unwrap();
        let keep = (*stored / 4096 * 4096) as usize;
        if *kind == "truncated" {
            assert_eq!(got.len(), data.len(), "{name}: the sealed size stays");
            assert!(
                got[keep..].iter().all(|&b| b == 0),
                "{name}: the lost range is zeros after salvage"
            );
        } else {
            assert_eq!(got.len() as u64, *stored, "{name}: what is stored");
        }
        assert!(got[..keep] == data[..keep], "{name}: bytes before the cut");
    }
}
