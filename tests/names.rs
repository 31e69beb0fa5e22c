//! Issue 16, finding 7: what the cipher directory reveals about name
//! lengths. A new volume (feature `padded-names`) pads every name to a
//! multiple of 16 bytes before sealing it, so the backing entry (or a long
//! name's sidecar) shows only the length rounded up to 16 bytes; the
//! frozen v1 fixture, without the feature, still reads byte-exact
//! (tests/fixtures.rs).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::Fixture;

/// The backing name (or, for a long name, its sidecar's content) that a
/// plaintext entry of the root got: the one name `f` added.
fn stored_length(f: &mut Fixture, name: &str) -> usize {
    let before: Vec<String> = listing(&f.cipher);
    fs::write(f.p(name), b"x").unwrap();
    let after = listing(&f.cipher);
    let new: Vec<&String> = after
        .iter()
        .filter(|n| !before.contains(n) && !n.ends_with(".name") && !n.ends_with(".tmp"))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let entry = new[0];
    if entry.starts_with("sealfs.L.") {
        fs::read_to_string(f.cipher.join(format!("{entry}.name")))
            .unwrap()
            .len()
    } else {
        entry.len()
    }
}

fn listing(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn name_lengths_show_only_in_16_byte_steps() {
    let mut f = Fixture::mounted();
    let cfg = fs::read_to_string(f.cipher.join("sealfs.toml")).unwrap();
    assert!(cfg.contains("\"padded-names\""), "{cfg}");
    let mut by_len: BTreeMap<usize, usize> = BTreeMap::new();
    for n in 1..=255usize {
        let name: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        by_len.insert(n, stored_length(&mut f, &name));
    }
    for n in 1..=255usize {
        let step = (n / 16 * 16).max(1);
        assert_eq!(
            by_len[&n], by_len[&step],
            "names of {n} and {step} bytes are stored at different lengths: the length leaks"
        );
    }
    // 1..15 bytes look alike, 16 does not.
    assert_eq!(by_len[&1], by_len[&15]);
    assert!(by_len[&16] > by_len[&15]);
    // Every name still reads back, long or short.
    f.remount();
    let names = listing(&f.mnt);
    assert_eq!(names.len(), 255);
    for n in [1usize, 15, 16, 159, 160, 255] {
        let name: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        assert_eq!(fs::read(f.p(&name)).unwrap(), b"x", "{n}");
    }
}
