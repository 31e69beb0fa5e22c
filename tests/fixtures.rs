//! Frozen format fixtures: every volume under tests/fixtures/<version>/ was
//! made once by contrib/make-fixture.sh and committed; every later sealfs
//! must mount it (a copy, read-only) and read every file byte-exact, every
//! symlink and directory as recorded in its manifest, with the same key
//! versions in use (v1 and v2-keyslots: the last-chunk-flag content format;
//! v3-group-states: sealed group states, with sparse and multi-group files;
//! v4-keyless-ids: all features, xattrs of symlinks bound to node ids;
//! v5-packed-tails: packed tails in block 0, files around every boundary).
//! A format change adds a fixture, never edits one: the
//! cipher files are pinned by `cipher.sha256`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("tests/fixtures")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("cipher").is_dir())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixture under {}", dir.display());
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One line per entry of the cipher tree (type, path, content hash or
/// symlink target), sorted: what `cipher.sha256` pins.
fn cipher_fingerprint(cipher: &Path) -> String {
    let mut lines = Vec::new();
    walk(cipher, &mut |p, md| {
        let rel = p.strip_prefix(cipher).unwrap().display().to_string();
        if md.file_type().is_symlink() {
            lines.push(format!("l {rel} {}", fs::read_link(p).unwrap().display()));
        } else if md.is_dir() {
            lines.push(format!("d {rel}"));
        } else if rel != "sealfs.lock" {
            lines.push(format!(
                "f {rel} {}",
                hex(&Sha256::digest(fs::read(p).unwrap()))
            ));
        }
    });
    lines.sort();
    lines.join("\n") + "\n"
}

/// What the plaintext view holds: path → (type, size, sha256 or target).
fn plaintext_view(mnt: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    walk(mnt, &mut |p, md| {
        let rel = p.strip_prefix(mnt).unwrap().to_str().unwrap().to_string();
        let v = if md.file_type().is_symlink() {
            serde_json::json!({"path": rel, "type": "symlink",
                "target": fs::read_link(p).unwrap().to_str().unwrap()})
        } else if md.is_dir() {
            serde_json::json!({"path": rel, "type": "dir"})
        } else {
            let b = fs::read(p).unwrap_or_else(|e| panic!("read {rel}: {e}"));
            assert_eq!(
                md.len(),
                b.len() as u64,
                "{rel}: stat size differs from content"
            );
            serde_json::json!({"path": rel, "type": "file", "size": b.len(),
                "sha256": hex(&Sha256::digest(&b))})
        };
        out.insert(rel, v);
    });
    out
}

#[test]
fn frozen_fixtures_mount_and_read_byte_exact() {
    for fixture in fixtures() {
        let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
        let cipher_src = fixture.join("cipher");
        let pinned = fs::read_to_string(fixture.join("cipher.sha256"))
            .unwrap_or_else(|e| panic!("{name}: cipher.sha256: {e}"));
        let got = hex(&Sha256::digest(cipher_fingerprint(&cipher_src)));
        assert_eq!(
            got,
            pinned.trim(),
            "fixture {name} was edited: a format change adds a fixture, never edits one"
        );

        // v1 and v2-* keep the last-chunk-flag content format;
        // v3-group-states and later have sealed group states (docs/FORMAT.md
        // §4.2); v4-keyless-ids binds keyless nodes' xattrs to their ids.
        let toml = fs::read_to_string(cipher_src.join("sealfs.toml")).unwrap();
        assert_eq!(
            toml.contains("\"sealed-group-state\""),
            !name.starts_with("v1") && !name.starts_with("v2"),
            "fixture {name}: content format"
        );
        assert_eq!(
            toml.contains("\"keyless-xattr-ids\""),
            name.starts_with("v4") || name.starts_with("v5"),
            "fixture {name}: keyless xattr ids"
        );
        assert_eq!(
            toml.contains("\"packed-tails\""),
            name.starts_with("v5"),
            "fixture {name}: packed tails (docs/FORMAT.md §4.7)"
        );

        // Work on a copy: a mount (even read-only) must not touch the fixture.
        let tmp = tempfile::Builder::new()
            .prefix("sealfs-fixture.")
            .tempdir()
            .unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let cipher = base.join("cipher");
        let mnt = base.join("mnt");
        fs::create_dir(&mnt).unwrap();
        run_ok(Command::new("cp").arg("-a").arg(&cipher_src).arg(&cipher));
        // git keeps no hard links: a fixture with linked files lists its
        // backing link groups, linked again here (each group's files hold
        // the same bytes, or the list is wrong).
        if let Ok(groups) = fs::read_to_string(fixture.join("backing-links.txt")) {
            for group in groups.lines().filter(|l| !l.trim().is_empty()) {
                let mut names = group.split(' ');
                let first = cipher.join(names.next().unwrap());
                let bytes = fs::read(&first).unwrap();
                for other in names {
                    let other = cipher.join(other);
                    assert_eq!(
                        fs::read(&other).unwrap(),
                        bytes,
                        "fixture {name}: backing-links.txt groups files that differ"
                    );
                    fs::remove_file(&other).unwrap();
                    fs::hard_link(&first, &other).unwrap();
                }
            }
        }
        // git keeps no xattrs: a fixture with sealed attributes and
        // external link tables carries its backing xattrs as a dump.
        if let Ok(dump) = fs::read(fixture.join("backing-xattrs.txt")) {
            let pinned = fs::read_to_string(fixture.join("backing-xattrs.sha256")).unwrap();
            assert_eq!(
                hex(&Sha256::digest(&dump)),
                pinned.trim(),
                "fixture {name}: backing-xattrs.txt was edited"
            );
            run_ok(
                Command::new("setfattr")
                    // Symlinks carry their own (trusted.*) attributes.
                    .arg("-h")
                    .arg(format!(
                        "--restore={}",
                        fixture.join("backing-xattrs.txt").display()
                    ))
                    .current_dir(&cipher),
            );
        }
        let pass = fixture.join("passphrase");

        let m = Mounted::start(
            &cipher,
            &mnt,
            &pass,
            &["--read-only"],
            &base.join("daemon.log"),
        );
        let view = plaintext_view(&mnt);
        // A fixture with hard links and xattrs: the same link groups, and
        // every attribute (ACLs included) with the same value.
        let links_xattrs = fixture
            .join("links.json")
            .exists()
            .then(|| links_and_xattrs(&mnt));
        m.unmount();
        if let Some((groups, xattrs)) = links_xattrs {
            let want = |f: &str| -> serde_json::Value {
                serde_json::from_str(&fs::read_to_string(fixture.join(f)).unwrap()).unwrap()
            };
            assert_eq!(groups, want("links.json"), "fixture {name}: link groups");
            assert_eq!(xattrs, want("xattrs.json"), "fixture {name}: xattrs");
        }
        let manifest: BTreeMap<String, serde_json::Value> =
            fs::read_to_string(fixture.join("manifest.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    (v["path"].as_str().unwrap().to_string(), v)
                })
                .collect();
        for (path, want) in &manifest {
            match view.get(path) {
                None => panic!("fixture {name}: {path} is missing"),
                Some(got) => assert_eq!(got, want, "fixture {name}: {path}"),
            }
        }
        let extra: Vec<_> = view.keys().filter(|k| !manifest.contains_key(*k)).collect();
        assert!(
            extra.is_empty(),
            "fixture {name}: unexpected entries {extra:?}"
        );

        // The same key versions in use, with the same header counts.
        let out = run_ok(
            Command::new(bin())
                .arg("info")
                .arg(&cipher)
                .arg("--passfile")
                .arg(&pass)
                .arg("--json"),
        );
        let info: serde_json::Value = serde_json::from_str(&out).unwrap();
        let want: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(fixture.join("key-versions.json")).unwrap())
                .unwrap();
        let counts = |v: &serde_json::Value| -> Vec<(u64, u64, u64)> {
            v["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    (
                        x["version"].as_u64().unwrap(),
                        x["files"].as_u64().unwrap(),
                        x["dirs"].as_u64().unwrap(),
                    )
                })
                .collect()
        };
        assert_eq!(
            counts(&info),
            counts(&want),
            "fixture {name}: key versions in use"
        );
        assert_eq!(info["unreadable"], 0, "fixture {name}: unreadable headers");
        assert!(
            counts(&info).iter().filter(|(_, f, _)| *f > 0).count() >= 2,
            "fixture {name}: two key versions should be in use"
        );

        // A fixture with keyslots: the same slots, and each of its other
        // secrets opens it too.
        if let Ok(want) = fs::read_to_string(fixture.join("keyslots.json")) {
            let out = run_ok(
                Command::new(bin())
                    .args(["keyslot", "list", "--json"])
                    .arg(&cipher),
            );
            let got: serde_json::Value = serde_json::from_str(&out).unwrap();
            let want: serde_json::Value = serde_json::from_str(&want).unwrap();
            assert_eq!(got, want, "fixture {name}: keyslots");
            assert_eq!(info["rollback_check"], "ok", "fixture {name}");
            for (opt, file) in [
                ("--key-file", "key-file"),
                ("--recovery-key", "recovery-key"),
            ] {
                let out = run_ok(
                    Command::new(bin())
                        .arg("info")
                        .arg(&cipher)
                        .arg(opt)
                        .arg(fixture.join(file))
                        .arg("--json"),
                );
                let other: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(
                    counts(&other),
                    counts(&want_versions(&fixture)),
                    "fixture {name}: {opt}"
                );
            }
        }
    }
}

fn want_versions(fixture: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(fixture.join("key-versions.json")).unwrap()).unwrap()
}

/// The link groups (paths sharing an inode, each sorted, the list sorted)
/// and every path's xattrs (name -> hex value) of a mounted fixture.
fn links_and_xattrs(mnt: &Path) -> (serde_json::Value, serde_json::Value) {
    use std::os::unix::fs::MetadataExt;
    let mut groups: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut xattrs = serde_json::Map::new();
    walk(mnt, &mut |p, md| {
        let rel = p.strip_prefix(mnt).unwrap().to_str().unwrap().to_string();
        if !md.is_dir() && md.nlink() > 1 {
            groups.entry(md.ino()).or_default().push(rel.clone());
        }
        let c = cpath(p);
        let mut buf = vec![0u8; 65536];
        // SAFETY: valid C string and buffer.
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n >= 0, "listxattr {rel}");
        let mut names: Vec<&[u8]> = buf[..n as usize]
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .collect();
        names.sort();
        let mut one = serde_json::Map::new();
        for x in names {
            let xn = std::ffi::CString::new(x).unwrap();
            let mut v = vec![0u8; 65536];
            // SAFETY: valid C strings and buffer.
            let r =
                unsafe { libc::lgetxattr(c.as_ptr(), xn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
            assert!(r >= 0, "getxattr {rel}");
            one.insert(
                String::from_utf8_lossy(x).into_owned(),
                hex(&v[..r as usize]).into(),
            );
        }
        if !one.is_empty() {
            xattrs.insert(rel, one.into());
        }
    });
    let mut g: Vec<Vec<String>> = groups
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    g.sort();
    (serde_json::json!(g), xattrs.into())
}
