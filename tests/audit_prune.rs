//! Audit log retention (issue 21, item 13), on live mounts: `ctl audit
//! prune` and the retention rule remove whole segments from the front of
//! the log, a sealed checkpoint keeps what is left verifiable (online,
//! offline, and for the keyring's rollback anchor at the next mount), and
//! every way of tampering with a pruned log shows as a break. Also the
//! daemon's own duration checks (raw protocol clients get no more than the
//! CLI gives).

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::*;

fn audit_dir(fx: &Fixture) -> PathBuf {
    fx.cipher.join("sealfs.audit")
}

fn segments(fx: &Fixture) -> Vec<u64> {
    let mut out: Vec<u64> = fs::read_dir(audit_dir(fx))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// Writes a file and rotates, `n` times: every rotation starts a segment.
fn rotate_with_records(fx: &Fixture, n: usize, tag: &str) {
    for i in 0..n {
        fs::write(fx.p(&format!("{tag}{i}")), format!("content {tag}{i}")).unwrap();
        let _ = fs::read(fx.p(&format!("{tag}{i}"))).unwrap();
        fx.ctl_ok(&["rotate"]);
    }
}

/// `sealfs audit verify CIPHERDIR` offline: (exit code, stdout + stderr).
fn verify_offline(fx: &Fixture) -> (i32, String) {
    let out = Command::new(bin())
        .args(["audit", "verify"])
        .arg(&fx.cipher)
        .arg("--passfile")
        .arg(&fx.passfile)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn status(fx: &Fixture) -> Value {
    serde_json::from_str(&fx.ctl_ok(&["--json", "status"])).unwrap()
}

#[test]
fn prune_keeps_the_rest_verifiable_through_remounts() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    rotate_with_records(&fx, 3, "a");
    let before = segments(&fx);
    assert!(before.len() >= 4, "rotations start segments: {before:?}");
    let current = *before.last().unwrap();

    // Nothing matches a date in the past.
    let out = fx.ctl_ok(&["audit", "prune", "--before", "2000-01-01"]);
    assert!(out.contains("nothing to prune"), "{out}");
    assert_eq!(segments(&fx), before);

    let out = fx.ctl_ok(&["--json", "audit", "prune", "--before", "2099-01-01"]);
    let pruned: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pruned["segments"], json!(before.len() - 1), "{pruned}");
    let through = pruned["through_seq"].as_u64().unwrap();
    assert!(through > 3, "{pruned}");
    assert_eq!(
        segments(&fx),
        vec![current],
        "only the segment being written is kept"
    );
    assert!(audit_dir(&fx).join("pruned.ckpt").is_file());

    // Online verify and export start right after the checkpoint, and the
    // prune itself is on record.
    let v: Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "verify"])).unwrap();
    assert_eq!(v["breaks"], json!([]), "{v}");
    assert_eq!(v["pruned"]["through_seq"], json!(through), "{v}");
    let human = fx.ctl_ok(&["audit", "verify"]);
    assert!(human.contains(&format!("records 1-{through}")), "{human}");
    let export = fx.ctl_ok(&["audit", "export"]);
    let recs: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs[0]["seq"], json!(through + 1), "{}", recs[0]);
    assert!(
        recs.iter()
            .any(|r| r["op"] == "audit_prune" && r["principal"]["uid"] == 0),
        "the prune is recorded"
    );
    let st = status(&fx);
    assert_eq!(st["audit"]["pruned_through"], json!(through), "{st}");
    assert_eq!(st["audit"]["segments"], json!(1), "{st}");
    assert!(st["audit"]["bytes"].as_u64().unwrap() > 128, "{st}");
    assert!(st["audit"]["headroom"].as_u64().unwrap() > 1 << 20, "{st}");
    let metrics = fx.ctl_ok(&["metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sealfs_audit_records_pruned{")
                && l.ends_with(&format!("}} {through}"))),
        "{metrics}"
    );
    assert!(metrics.contains("sealfs_audit_log_bytes{"), "{metrics}");

    // The keyring's anchor now lies in a pruned segment: the next mount
    // accepts it through the checkpoint; files are untouched.
    fx.unmount();
    let (code, out) = verify_offline(&fx);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("records 1-{through}")), "{out}");
    fx.mount_ctl();
    assert_eq!(fs::read_to_string(fx.p("a1")).unwrap(), "content a1");
    rotate_with_records(&fx, 2, "b");
    let out = fx.ctl_ok(&["--json", "audit", "prune", "--before", "2099-01-01"]);
    let second: Value = serde_json::from_str(&out).unwrap();
    assert!(second["segments"].as_u64().unwrap() >= 2, "{second}");
    fx.remount_ctl();
    let v: Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "verify"])).unwrap();
    assert_eq!(v["breaks"], json!([]), "{v}");
    assert!(
        v["pruned"]["through_seq"].as_u64().unwrap() > through,
        "{v}"
    );
    assert_eq!(fs::read_to_string(fx.p("b1")).unwrap(), "content b1");
}

#[test]
fn tampering_with_a_pruned_log_is_a_break() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    rotate_with_records(&fx, 2, "a");
    let first_segment_copy = fs::read(audit_dir(&fx).join("00000001.log")).unwrap();
    fx.ctl_ok(&["audit", "prune", "--before", "2099-01-01"]);
    let ckpt_a = fs::read(audit_dir(&fx).join("pruned.ckpt")).unwrap();
    rotate_with_records(&fx, 2, "b");
    fx.ctl_ok(&["audit", "prune", "--before", "2099-01-01"]);
    fx.unmount();
    let dir = audit_dir(&fx);
    let ckpt = dir.join("pruned.ckpt");
    let ckpt_b = fs::read(&ckpt).unwrap();
    let kept = segments(&fx);
    assert_eq!(verify_offline(&fx).0, 0);

    // The checkpoint deleted: the pruned segments show as missing.
    fs::remove_file(&ckpt).unwrap();
    let (code, out) = verify_offline(&fx);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("missing"), "{out}");

    // Edited: a bit flipped anywhere.
    for at in [0usize, 40, 60, 100, 140] {
        let mut b = ckpt_b.clone();
        b[at] ^= 1;
        fs::write(&ckpt, &b).unwrap();
        let (code, out) = verify_offline(&fx);
        assert_eq!(code, 3, "byte {at}: {out}");
        assert!(out.contains("checkpoint"), "byte {at}: {out}");
    }

    // An older checkpoint put back: the segments pruned since are missing.
    fs::write(&ckpt, &ckpt_a).unwrap();
    let (code, out) = verify_offline(&fx);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("missing"), "{out}");

    // Everything after the checkpoint deleted.
    fs::write(&ckpt, &ckpt_b).unwrap();
    let saved: Vec<(PathBuf, Vec<u8>)> = kept
        .iter()
        .map(|n| {
            let p = dir.join(format!("{n:08}.log"));
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    for (p, _) in &saved {
        fs::remove_file(p).unwrap();
    }
    let (code, out) = verify_offline(&fx);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("after the prune checkpoint"), "{out}");
    for (p, b) in &saved {
        fs::write(p, b).unwrap();
    }

    // A pruned segment left behind by a crash mid-prune is no break, and
    // the next mount removes it.
    fs::write(dir.join("00000001.log"), &first_segment_copy).unwrap();
    let (code, out) = verify_offline(&fx);
    assert_eq!(code, 0, "{out}");
    fx.mount_ctl();
    assert!(
        !dir.join("00000001.log").exists(),
        "leftover removed at mount"
    );
    let v: Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "verify"])).unwrap();
    assert_eq!(v["breaks"], json!([]), "{v}");
}

#[test]
fn a_break_stops_the_prune_there() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    rotate_with_records(&fx, 4, "a");
    let segs = segments(&fx);
    // Flip a byte in the middle of the second segment's records.
    let victim = audit_dir(&fx).join(format!("{:08}.log", segs[1]));
    let mut b = fs::read(&victim).unwrap();
    let at = b.len() - 40;
    b[at] ^= 0x40;
    fs::write(&victim, &b).unwrap();
    let out = fx.ctl_ok(&["--json", "audit", "prune", "--before", "2099-01-01"]);
    let p: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        p["segments"],
        json!(1),
        "only the segment before the break: {p}"
    );
    assert!(victim.exists(), "the evidence is kept");
    let v = fx.ctl_output(&["audit", "verify"]);
    assert_eq!(v.status.code(), Some(3));
}

#[test]
fn retention_rule_is_kept_in_the_keyring_and_applied_by_the_mount() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    rotate_with_records(&fx, 3, "a");
    // Floors, unless --allow-short.
    let out = fx.ctl_output(&["audit", "retention", "--max-size", "1K"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allow-short"), "{err}");
    let out = fx.ctl_output(&["audit", "retention", "--max-age", "1h"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shorter than a day"));
    assert!(!fx.ctl_output(&["audit", "retention"]).status.success());

    let out = fx.ctl_ok(&["audit", "retention", "--max-size", "1K", "--allow-short"]);
    assert!(out.contains("1024 bytes"), "{out}");
    // The mount's schedule (every 5 s) prunes down to the current segment.
    assert!(
        wait_until(Duration::from_secs(30), || segments(&fx).len() == 1),
        "retention did not prune: {:?}\n{}",
        segments(&fx),
        fx.log()
    );
    let st = status(&fx);
    assert_eq!(st["audit"]["retention"]["max_bytes"], json!(1024), "{st}");
    assert!(st["audit"]["pruned_through"].as_u64().is_some(), "{st}");
    let human = fx.ctl_ok(&["status"]);
    assert!(
        human.contains("retention: max age none, max size 0 MiB"),
        "{human}"
    );

    // Kept across a remount (in the keyring, not in sealfs.toml).
    fx.remount_ctl();
    let st = status(&fx);
    assert_eq!(st["audit"]["retention"]["max_bytes"], json!(1024), "{st}");
    let toml = fs::read_to_string(fx.cipher.join("sealfs.toml")).unwrap();
    assert!(!toml.contains("1024"), "{toml}");
    fx.ctl_ok(&["audit", "retention", "--max-age", "400d"]);
    let st = status(&fx);
    assert_eq!(st["audit"]["retention"]["max_age"], json!("400d"), "{st}");
    fx.ctl_ok(&["audit", "retention", "--off"]);
    let st = status(&fx);
    assert_eq!(st["audit"]["retention"], Value::Null, "{st}");
    let v: Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "verify"])).unwrap();
    assert_eq!(v["breaks"], json!([]), "{v}");
    assert!(
        fx.ctl_ok(&["audit", "export", "--op", "set_audit_retention"])
            .lines()
            .count()
            >= 3
    );
}

/// One request on a raw connection: the response.
fn raw_request(sock: &Path, op: Value) -> Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut op = op;
    op["v"] = json!(1);
    op["id"] = json!(1);
    s.write_all(format!("{op}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn the_daemon_checks_durations_whatever_the_client() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();
    let refused = |op: Value, needle: &str| {
        let r = raw_request(&sock, op.clone());
        assert_eq!(r["ok"], false, "{op}: {r}");
        let m = r["error"]["message"].as_str().unwrap().to_string();
        assert!(m.contains(needle), "{op}: {m}");
    };
    refused(
        json!({"op": "set_rotation_period", "period": "90"}),
        "no unit",
    );
    refused(
        json!({"op": "set_rotation_period", "period": "1h"}),
        "shorter than a day",
    );
    let ok = raw_request(
        &sock,
        json!({"op": "set_rotation_period", "period": "1h", "allow_short": true}),
    );
    assert_eq!(ok["ok"], true, "{ok}");
    refused(
        json!({"op": "schedule_deletion", "version": 1, "wait": "7"}),
        "no unit",
    );
    refused(json!({"op": "audit_retention", "max_age": "90"}), "no unit");
    refused(json!({"op": "audit_prune"}), "say what to prune");
    refused(json!({"op": "audit_prune", "before": "90"}), "no unit");
    refused(
        json!({"op": "grant_create", "grantee": "uid:4242", "ops": ["read"],
               "path_prefix": "/", "expires": "90"}),
        "no unit",
    );
    let out = fx.ctl_output(&[
        "grant",
        "create",
        "--grantee",
        "uid:4242",
        "--ops",
        "read",
        "--path-prefix",
        "/",
        "--expires",
        "90",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unit"));
}
