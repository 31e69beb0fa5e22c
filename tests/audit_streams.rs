//! Per-host audit streams (issue 20, audit part; docs/FORMAT.md §12.4), on
//! live mounts: daemons mounted with `--host-id` append to their own
//! stream in `sealfs.audit/hosts/<HOST>/`; `audit verify` and `audit
//! export` (offline and over the socket) read every stream, report each
//! one's breaks and merge the records in time order; the keyring anchors
//! every host's stream, so deleting, renaming or cutting one, or putting
//! back an older keyring, is caught at the next mount.
//!
//! The hosts here mount one after the other (the multi-daemon tests of
//! shared storage are in tests/shared_storage.rs); what is checked is
//! the log's format and the checks on it.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use common::*;

fn hosts_dir(fx: &Fixture) -> PathBuf {
    fx.cipher.join("sealfs.audit/hosts")
}

/// Mounts as host `h` (or the local stream), writes `files` files, rotates.
fn session(fx: &mut Fixture, host: Option<&str>, tag: &str) {
    match host {
        Some(h) => fx.mount_ctl_with(&["--host-id", h]),
        None => fx.mount_ctl(),
    }
    for i in 0..3 {
        fs::write(fx.p(&format!("{tag}{i}")), format!("from {tag} {i}")).unwrap();
    }
    fx.ctl_ok(&["rotate"]);
    fx.unmount();
}

/// `sealfs audit SUB CIPHERDIR` offline: (exit code, stdout, stderr).
fn audit_offline(fx: &Fixture, sub: &str, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["audit", sub])
        .arg(&fx.cipher)
        .arg("--passfile")
        .arg(&fx.passfile)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify_json(fx: &Fixture) -> (i32, Value) {
    let (code, out, err) = audit_offline(fx, "verify", &["--json"]);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (code, v)
}

fn exported(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A mount that must be refused: its log.
fn refused_mount(fx: &mut Fixture, extra: &[&str]) -> String {
    let log = fx.root.path().join("refused.log");
    let pass = fx.passfile.clone();
    match Mounted::try_start(
        &fx.cipher,
        &fx.mnt,
        &[OsStr::new("--passfile"), pass.as_os_str()],
        extra,
        &log,
    ) {
        Ok(m) => {
            m.unmount();
            panic!("mount with {extra:?} was not refused");
        }
        Err(e) => e,
    }
}

#[test]
fn each_host_appends_to_its_own_stream_and_verify_reads_them_all() {
    let mut fx = Fixture::new();
    session(&mut fx, None, "l");
    session(&mut fx, Some("alpha"), "a");
    session(&mut fx, Some("beta"), "b");
    session(&mut fx, Some("alpha"), "c");

    let mut hosts: Vec<String> = fs::read_dir(hosts_dir(&fx))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["alpha", "beta"]);
    for h in &hosts {
        assert!(
            hosts_dir(&fx).join(h).join("00000001.log").is_file(),
            "{h}'s stream starts at its own segment 1"
        );
    }

    let (code, v) = verify_json(&fx);
    assert_eq!(code, 0, "{v}");
    let streams = v["streams"].as_array().unwrap();
    let names: Vec<Option<&str>> = streams.iter().map(|s| s["host"].as_str()).collect();
    assert_eq!(names, [None, Some("alpha"), Some("beta")]);
    for s in streams {
        assert!(s["records"].as_u64().unwrap() > 5, "{s}");
        assert_eq!(s["breaks"], 0, "{s}");
    }
    let total: u64 = streams.iter().map(|s| s["records"].as_u64().unwrap()).sum();
    assert_eq!(v["records"].as_u64(), Some(total));
    let (_, text, _) = audit_offline(&fx, "verify", &[]);
    assert!(
        text.contains("3 stream(s)") && text.contains("host beta:"),
        "{text}"
    );

    // Export: every record once, with its host, in time order; each
    // stream's sequence numbers go up without a gap.
    let (code, out, err) = audit_offline(&fx, "export", &[]);
    assert_eq!(code, 0, "{err}");
    let recs = exported(&out);
    assert_eq!(recs.len() as u64, total);
    let times: Vec<u64> = recs
        .iter()
        .map(|r| r["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not in time order");
    for host in [None, Some("alpha"), Some("beta")] {
        let seqs: Vec<u64> = recs
            .iter()
            .filter(|r| r["host"].as_str() == host)
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        assert!(!seqs.is_empty());
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{host:?}: {seqs:?}"
        );
    }
    // Writes by each host are in that host's stream.
    let created_by = |host: Option<&str>| -> Vec<String> {
        recs.iter()
            .filter(|r| r["host"].as_str() == host && r["op"] == "generate_data_key")
            .filter_map(|r| r["path"].as_str().map(String::from))
            .collect()
    };
    assert!(created_by(Some("beta")).contains(&"/b0".to_string()));
    assert!(!created_by(Some("beta")).contains(&"/a0".to_string()));
    assert!(created_by(Some("alpha")).contains(&"/c2".to_string()));
    assert!(created_by(None).contains(&"/l1".to_string()));

    // The mounted view (over the socket) sees the same streams.
    fx.mount_ctl_with(&["--host-id", "gamma"]);
    let st = fx.ctl_ok(&["status"]);
    assert!(st.contains("audit log (host gamma's stream):"), "{st}");
    let v: Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "verify"])).unwrap();
    let names: Vec<Option<&str>> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["host"].as_str())
        .collect();
    assert_eq!(names, [None, Some("alpha"), Some("beta"), Some("gamma")]);
    let out = fx.ctl_ok(&["audit", "export"]);
    let hosts_seen: std::collections::BTreeSet<Option<String>> = exported(&out)
        .iter()
        .map(|r| r["host"].as_str().map(String::from))
        .collect();
    assert_eq!(hosts_seen.len(), 4, "{hosts_seen:?}");
    fx.unmount();
}

#[test]
fn a_segment_moved_to_another_stream_does_not_verify() {
    let mut fx = Fixture::new();
    session(&mut fx, Some("alpha"), "a");
    session(&mut fx, Some("beta"), "b");
    // alpha's first segment put in place of beta's.
    let a1 = hosts_dir(&fx).join("alpha/00000001.log");
    let b1 = hosts_dir(&fx).join("beta/00000001.log");
    fs::copy(&a1, &b1).unwrap();
    let (code, v) = verify_json(&fx);
    assert_eq!(code, 3, "{v}");
    let breaks = v["breaks"].as_array().unwrap();
    assert!(!breaks.is_empty());
    assert!(
        breaks.iter().all(|b| b["host"] == "beta"),
        "only beta's stream breaks: {v}"
    );
    let streams = v["streams"].as_array().unwrap();
    let alpha = streams.iter().find(|s| s["host"] == "alpha").unwrap();
    assert_eq!(alpha["breaks"], 0);
    let (_, _, err) = audit_offline(&fx, "verify", &[]);
    assert!(err.contains("of host beta's stream"), "{err}");
    // The segment the keyring's anchor for beta points into, too: the
    // mount is refused.
    fs::copy(
        hosts_dir(&fx).join("alpha/00000002.log"),
        hosts_dir(&fx).join("beta/00000002.log"),
    )
    .unwrap();
    let why = refused_mount(&mut fx, &["--host-id", "alpha"]);
    assert!(why.contains("host beta's audit stream"), "{why}");
}

#[test]
fn removing_or_renaming_a_host_stream_is_caught_at_mount() {
    let mut fx = Fixture::new();
    session(&mut fx, Some("alpha"), "a");
    session(&mut fx, Some("beta"), "b");
    session(&mut fx, None, "l");

    // Renamed: beta's anchor has no stream, and "gamma" does not verify
    // under gamma's keys.
    fs::rename(hosts_dir(&fx).join("beta"), hosts_dir(&fx).join("gamma")).unwrap();
    let why = refused_mount(&mut fx, &[]);
    assert!(
        why.contains("host beta's audit stream") && why.contains("gone"),
        "{why}"
    );
    let (code, v) = verify_json(&fx);
    assert_eq!(code, 3, "{v}");
    let breaks = v["breaks"].as_array().unwrap();
    assert!(breaks.iter().any(|b| b["host"] == "gamma"), "{v}");
    assert!(
        breaks.iter().any(
            |b| b["host"] == "beta" && b["reason"].as_str().unwrap().contains("stream is gone")
        ),
        "the stream the keyring anchors is reported missing: {v}"
    );
    assert!(breaks
        .iter()
        .all(|b| b["host"] == "gamma" || b["host"] == "beta"));
    fs::rename(hosts_dir(&fx).join("gamma"), hosts_dir(&fx).join("beta")).unwrap();

    // Removed: the same.
    let saved = fx.root.path().join("beta-saved");
    fs::rename(hosts_dir(&fx).join("beta"), &saved).unwrap();
    let why = refused_mount(&mut fx, &["--host-id", "alpha"]);
    assert!(why.contains("host beta's audit stream"), "{why}");
    fs::rename(&saved, hosts_dir(&fx).join("beta")).unwrap();

    // Cut: beta's last segment cut right after its header (what is left
    // looks like a record torn by a crash, but the anchor is past it).
    let seg = hosts_dir(&fx).join("beta/00000002.log");
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(129).unwrap();
    drop(f);
    let why = refused_mount(&mut fx, &[]);
    assert!(why.contains("host beta's audit stream"), "{why}");
}

#[test]
fn an_older_keyring_is_caught_by_another_host_s_records() {
    let mut fx = Fixture::new();
    session(&mut fx, Some("alpha"), "a");
    let old = fx.root.path().join("keyring.old");
    let old_bak = fx.root.path().join("keyring.bak.old");
    fs::copy(fx.cipher.join("sealfs.keyring"), &old).unwrap();
    fs::copy(fx.cipher.join("sealfs.keyring.bak"), &old_bak).unwrap();
    // beta rotates: its own stream proves the newer generations.
    session(&mut fx, Some("beta"), "b");
    fs::copy(&old, fx.cipher.join("sealfs.keyring")).unwrap();
    fs::copy(&old_bak, fx.cipher.join("sealfs.keyring.bak")).unwrap();
    // Not even alpha, whose own stream is as the old keyring left it, may
    // mount it.
    let why = refused_mount(&mut fx, &["--host-id", "alpha"]);
    assert!(
        why.contains("an older copy of the keyring was put back"),
        "{why}"
    );
    // Accepting the rollback mounts, and the next store anchors afresh.
    fx.mount_ctl_with(&["--host-id", "alpha", "--accept-rollback"]);
    fx.unmount();
    fx.mount_ctl_with(&["--host-id", "beta"]);
    fx.unmount();
}

#[test]
fn host_ids_are_checked() {
    let fx = Fixture::new();
    for bad in ["", "a/b", ".x", "../up", &"h".repeat(33)] {
        let out = Command::new(bin())
            .arg("mount")
            .arg(&fx.cipher)
            .arg(&fx.mnt)
            .arg("--passfile")
            .arg(&fx.passfile)
            .args(["-f", "--host-id", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid host id"), "{bad:?}: {err}");
        assert!(!is_mounted(&fx.mnt));
    }
    assert!(!fx.cipher.join("sealfs.audit/hosts").exists());
}

#[test]
fn a_symlink_where_a_stream_folder_should_be_is_never_followed() {
    let mut fx = Fixture::new();
    session(&mut fx, Some("alpha"), "a");
    let outside = fx.root.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // alpha's stream replaced by a symlink to a folder outside the volume.
    let alpha = hosts_dir(&fx).join("alpha");
    fs::rename(&alpha, fx.root.path().join("alpha-saved")).unwrap();
    std::os::unix::fs::symlink(&outside, &alpha).unwrap();
    let why = refused_mount(&mut fx, &["--host-id", "alpha"]);
    assert!(why.contains("alpha"), "{why}");
    let (code, _, err) = audit_offline(&fx, "verify", &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("host alpha's audit stream is gone"), "{err}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through it"
    );
}
