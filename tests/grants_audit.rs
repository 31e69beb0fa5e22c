//! Grants and the audit log on a real mount with `-o allow_other`, acting as
//! other users through `setpriv --reuid/--regid --clear-groups` (no user
//! accounts needed): denial without a grant, prefix and operation limits,
//! revocation of an open handle, expiry, retirement by the grantee, prefix
//! escapes, persistence across a remount; offline `sealfs audit verify`
//! finding a removed, an edited and a reordered record; and fail-closed
//! refusal when the audit log's disk is full.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{as_user, bin, grant_create_args, Fixture};
use serde_json::Value;

const GRANTEE: u32 = 1001;

fn ok_as(uid: u32, args: &[&str]) -> String {
    let o = as_user(uid, args);
    assert!(
        o.status.success(),
        "{args:?} as uid {uid} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts `args` fails as `uid` with "Permission denied".
#[track_caller]
fn denied_as(uid: u32, args: &[&str]) {
    let o = as_user(uid, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Permission denied"),
        "{args:?} as uid {uid} should be denied: status {}, stderr {err}",
        o.status
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A mounted volume (allow_other) whose tempdir other users can traverse,
/// with /projects/x/f, /projects/x/sub/g and /other/secret.
fn shared() -> Fixture {
    let mut f = Fixture::new();
    fs::set_permissions(f.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    f.mount_ctl_with(&["-o", "allow_other"]);
    fs::create_dir_all(f.p("projects/x/sub")).unwrap();
    fs::create_dir_all(f.p("other")).unwrap();
    fs::write(f.p("projects/x/f"), b"project data\n").unwrap();
    fs::write(f.p("projects/x/sub/g"), b"deeper\n").unwrap();
    fs::write(f.p("other/secret"), b"not shared\n").unwrap();
    fs::write(f.p("projects/x/big"), vec![b'p'; 1 << 20]).unwrap();
    // Modes let everyone in: the grant is the only gate being tested.
    for d in ["projects", "projects/x", "projects/x/sub", "other"] {
        fs::set_permissions(f.p(d), fs::Permissions::from_mode(0o777)).unwrap();
    }
    f
}

fn ctl_out(f: &Fixture, uid: u32, args: &[&str]) -> Output {
    let mut all = vec![bin(), "ctl", "--socket", s(&f.ctl_socket), "--json"];
    all.extend_from_slice(args);
    if uid == 0 {
        Command::new(all[0])
            .args(&all[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    } else {
        as_user(uid, &all)
    }
}

#[track_caller]
fn ctl(f: &Fixture, args: &[&str]) -> Value {
    let o = ctl_out(f, 0, args);
    assert!(
        o.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON")
}

fn grant(f: &Fixture, grantee: &str, ops: &str, prefix: &str, extra: &[&str]) -> (String, String) {
    let mut args = grant_create_args(grantee, ops, prefix);
    args.extend_from_slice(extra);
    let v = ctl(f, &args);
    (
        v["grant_id"].as_str().unwrap().to_string(),
        v["grant_token"].as_str().unwrap().to_string(),
    )
}

/// The audit records the daemon exports with `args` as filters.
fn export(f: &Fixture, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "export"];
    all.extend_from_slice(args);
    let o = ctl_out(f, 0, &all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn has(records: &[Value], op: &str, outcome: &str, path: &str, uid: u32) -> bool {
    records.iter().any(|r| {
        r["op"] == op
            && r["outcome"] == outcome
            && r["path"].as_str() == Some(path)
            && r["principal"]["uid"] == uid
    })
}

#[test]
fn without_a_grant_other_users_are_denied_and_recorded() {
    let f = shared();
    let file = f.p("projects/x/f");
    denied_as(GRANTEE, &["cat", s(&file)]);
    denied_as(GRANTEE, &["ls", s(&f.p("projects"))]);
    let o = as_user(
        GRANTEE,
        &[
            "sh",
            "-c",
            &format!("echo x > {}", s(&f.p("projects/x/new"))),
        ],
    );
    assert!(!o.status.success());
    assert!(!f.p("projects/x/new").exists());
    // The owner (root) is not affected.
    assert_eq!(fs::read(&file).unwrap(), b"project data\n");
    let recs = export(&f, &["--principal", "uid:1001"]);
    assert!(
        recs.iter().any(|r| r["outcome"] == "denied"),
        "no denied record for uid 1001: {recs:?}"
    );
    assert!(recs.iter().all(|r| r["outcome"] == "denied"), "{recs:?}");
    assert!(recs.iter().all(|r| r["principal"]["gid"] == 1001));
}

#[test]
fn a_read_grant_allows_reading_its_prefix_only() {
    let f = shared();
    let (id, _) = grant(&f, "uid:1001", "read", "/projects/x", &[]);
    assert_eq!(
        ok_as(GRANTEE, &["cat", s(&f.p("projects/x/f"))]),
        "project data\n"
    );
    assert_eq!(
        ok_as(GRANTEE, &["cat", s(&f.p("projects/x/sub/g"))]),
        "deeper\n"
    );
    // Not another path, not another operation, not another user.
    denied_as(GRANTEE, &["cat", s(&f.p("other/secret"))]);
    denied_as(GRANTEE, &["ls", s(&f.p("projects/x"))]); // no "list"
    let w = as_user(
        GRANTEE,
        &[
            "sh",
            "-c",
            &format!("echo x >> {}", s(&f.p("projects/x/f"))),
        ],
    );
    assert!(!w.status.success(), "append through a read grant worked");
    denied_as(GRANTEE, &["rm", "-f", s(&f.p("projects/x/f"))]);
    denied_as(GRANTEE, &["touch", s(&f.p("projects/x/new"))]);
    denied_as(1002, &["cat", s(&f.p("projects/x/f"))]);
    assert_eq!(fs::read(f.p("projects/x/f")).unwrap(), b"project data\n");
    // Each use through the grant is recorded with the grant id.
    let recs = export(&f, &["--principal", "uid:1001", "--op", "decrypt"]);
    let ok: Vec<&Value> = recs.iter().filter(|r| r["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 2, "{recs:?}");
    assert!(ok
        .iter()
        .all(|r| r["grant"] == id.as_str() && r["key_version"] == 1));
    assert!(has(&recs, "decrypt", "ok", "/projects/x/sub/g", GRANTEE));
    let listed = ctl(&f, &["grant", "list", "--grantee", "uid:1001"]);
    assert_eq!(listed["grants"][0]["grant_id"], id.as_str());
    assert_eq!(listed["grants"][0]["ops"], serde_json::json!(["read"]));
}

#[test]
fn a_write_grant_creates_and_modifies_inside_its_prefix() {
    let f = shared();
    grant(&f, "uid:1001", "read,write,create,list", "/projects/x", &[]);
    ok_as(
        GRANTEE,
        &[
            "sh",
            "-c",
            &format!("echo new > {}", s(&f.p("projects/x/new"))),
        ],
    );
    assert_eq!(fs::read(f.p("projects/x/new")).unwrap(), b"new\n");
    ok_as(GRANTEE, &["mkdir", s(&f.p("projects/x/d"))]);
    let ls = ok_as(GRANTEE, &["ls", s(&f.p("projects/x"))]);
    assert!(
        ls.contains("new") && ls.contains("d") && ls.contains("sub"),
        "{ls}"
    );
    // Still nothing outside.
    let o = as_user(
        GRANTEE,
        &["sh", "-c", &format!("echo x > {}", s(&f.p("other/new")))],
    );
    assert!(!o.status.success());
    let recs = export(
        &f,
        &["--principal", "uid:1001", "--op", "generate_data_key"],
    );
    assert!(has(
        &recs,
        "generate_data_key",
        "ok",
        "/projects/x/new",
        GRANTEE
    ));
    assert!(has(
        &recs,
        "generate_data_key",
        "ok",
        "/projects/x/d",
        GRANTEE
    ));
    let all = export(&f, &["--principal", "uid:1001"]);
    assert!(all.iter().any(|r| r["outcome"] == "denied"
        && r["path"].as_str().is_some_and(|p| p.starts_with("/other"))
        && r["principal"]["uid"] == GRANTEE));
}

#[test]
fn revoking_a_grant_stops_an_open_handle() {
    let f = shared();
    let (id, _) = grant(&f, "uid:1001", "read", "/projects/x", &[]);
    let fifo = f.scratch.join("go");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    fs::set_permissions(&f.scratch, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o666)).unwrap();
    let out = f.scratch.join("out");
    // Opens the file once (fd 3), reads 7 bytes, waits on the fifo, reads again.
    let script = format!(
        "exec 3< {file}; head -c 7 <&3 > {out}.1; read x < {fifo}; head -c 5 <&3 > {out}.2 2> {out}.err; echo $? > {out}.rc",
        file = s(&f.p("projects/x/big")),
        out = s(&out),
        fifo = s(&fifo)
    );
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=1001",
            "--regid=1001",
            "--clear-groups",
            "sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    let first = PathBuf::from(format!("{}.1", s(&out)));
    assert!(common::wait_until(Duration::from_secs(10), || fs::read(
        &first
    )
    .is_ok_and(|b| b.len() == 7)));
    assert_eq!(fs::read(&first).unwrap(), b"ppppppp");
    ctl(&f, &["grant", "revoke", &id]);
    fs::write(&fifo, b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    let rc = fs::read_to_string(format!("{}.rc", s(&out))).unwrap();
    let err = fs::read_to_string(format!("{}.err", s(&out))).unwrap();
    assert_ne!(rc.trim(), "0", "read after revoke succeeded");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(fs::read(format!("{}.2", s(&out))).unwrap(), b"");
    // New opens fail too; the revocation and the refused read are recorded.
    denied_as(GRANTEE, &["cat", s(&f.p("projects/x/f"))]);
    let recs = export(&f, &[]);
    assert!(recs
        .iter()
        .any(|r| r["op"] == "grant_revoked" && r["grant"] == id.as_str()));
    assert!(recs
        .iter()
        .any(|r| r["op"] == "use_handle" && r["outcome"] == "denied" && r["grant"] == id.as_str()));
}

#[test]
fn grants_expire() {
    let f = shared();
    let (id, _) = grant(&f, "uid:1001", "read", "/projects/x", &["--expires", "2s"]);
    assert_eq!(
        ok_as(GRANTEE, &["cat", s(&f.p("projects/x/f"))]),
        "project data\n"
    );
    std::thread::sleep(Duration::from_millis(2600));
    denied_as(GRANTEE, &["cat", s(&f.p("projects/x/f"))]);
    assert!(common::wait_until(Duration::from_secs(5), || ctl(
        &f,
        &["grant", "list"]
    )["grants"]
        .as_array()
        .unwrap()
        .is_empty()));
    let recs = export(&f, &["--op", "grant_expired"]);
    assert!(recs.iter().any(|r| r["grant"] == id.as_str()), "{recs:?}");
    // A past expiry is refused.
    let o = ctl_out(
        &f,
        0,
        &[
            "grant",
            "create",
            "--grantee",
            "uid:1001",
            "--ops",
            "read",
            "--path-prefix",
            "/x",
            "--expires",
            "2020-01-01T00:00Z",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("past"));
}

#[test]
fn the_grantee_retires_its_own_grant_and_nobody_else_can() {
    let f = shared();
    let (id, token) = grant(&f, "uid:1001", "read", "/projects/x", &[]);
    // Another user cannot, even with the token; nor use any admin operation.
    let o = ctl_out(&f, 1002, &["grant", "retire", &token]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not yours"));
    let o = ctl_out(&f, GRANTEE, &["grant", "revoke", &id]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("forbidden"));
    let o = ctl_out(
        &f,
        GRANTEE,
        &[
            "grant",
            "create",
            "--grantee",
            "uid:1001",
            "--ops",
            "all",
            "--path-prefix",
            "/",
        ],
    );
    assert!(!o.status.success());
    let o = ctl_out(&f, GRANTEE, &["grant", "retire", "sgt_wrong"]);
    assert!(!o.status.success());
    assert_eq!(
        ok_as(GRANTEE, &["cat", s(&f.p("projects/x/f"))]),
        "project data\n"
    );
    // The token from stdin (kept out of ps and shell history).
    let tokfile = f.scratch.join("token");
    fs::write(&tokfile, format!("{token}\n")).unwrap();
    fs::set_permissions(&f.scratch, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&tokfile, fs::Permissions::from_mode(0o644)).unwrap();
    let o = Command::new("setpriv")
        .args([
            "--reuid=1001",
            "--regid=1001",
            "--clear-groups",
            bin(),
            "ctl",
        ])
        .arg("--socket")
        .arg(&f.ctl_socket)
        .args(["grant", "retire", "-"])
        .stdin(fs::File::open(&tokfile).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    denied_as(GRANTEE, &["cat", s(&f.p("projects/x/f"))]);
    let recs = export(&f, &["--op", "grant_retired"]);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["grant"], id.as_str());
    assert_eq!(recs[0]["principal"]["uid"], GRANTEE);
}

#[test]
fn prefix_escapes_are_denied() {
    let f = shared();
    grant(
        &f,
        "uid:1001",
        "read,write,create,list,rename,delete",
        "/projects/x",
        &[],
    );
    // `..` resolves to a path outside the prefix.
    denied_as(
        GRANTEE,
        &[
            "cat",
            &format!("{}/../../other/secret", s(&f.p("projects/x"))),
        ],
    );
    // A symlink inside the prefix pointing out of it (made by the owner).
    std::os::unix::fs::symlink("../../other/secret", f.p("projects/x/link")).unwrap();
    denied_as(GRANTEE, &["cat", s(&f.p("projects/x/link"))]);
    // Renames out of the prefix, and into it, are refused even where the
    // grantee may look names up (a read-only grant on /other); inside the
    // prefix they work.
    grant(&f, "uid:1001", "read", "/other", &[]);
    denied_as(
        GRANTEE,
        &["mv", s(&f.p("projects/x/f")), s(&f.p("other/f"))],
    );
    assert!(f.p("projects/x/f").exists() && !f.p("other/f").exists());
    denied_as(
        GRANTEE,
        &["mv", s(&f.p("other/secret")), s(&f.p("projects/x/stolen"))],
    );
    assert!(f.p("other/secret").exists());
    ok_as(
        GRANTEE,
        &["mv", s(&f.p("projects/x/f")), s(&f.p("projects/x/sub/f2"))],
    );
    assert_eq!(
        fs::read(f.p("projects/x/sub/f2")).unwrap(),
        b"project data\n"
    );
    // A sibling whose name extends the prefix is not inside it.
    fs::create_dir(f.p("projects/xy")).unwrap();
    fs::write(f.p("projects/xy/z"), b"z").unwrap();
    denied_as(GRANTEE, &["cat", s(&f.p("projects/xy/z"))]);
    let recs = export(&f, &["--principal", "uid:1001"]);
    assert!(
        has(&recs, "re_encrypt", "denied", "/other/f", GRANTEE),
        "{recs:?}"
    );
    assert!(has(
        &recs,
        "re_encrypt",
        "ok",
        "/projects/x/sub/f2",
        GRANTEE
    ));
    assert!(recs
        .iter()
        .any(|r| r["outcome"] == "denied"
            && r["path"].as_str().is_some_and(|p| p.starts_with("/other"))));
}

#[test]
fn grants_survive_a_remount_and_revocations_stay() {
    let mut f = shared();
    let (keep, _) = grant(&f, "uid:1001", "read", "/projects/x", &["--name", "kept"]);
    let (gone, _) = grant(&f, "uid:1001", "read", "/other", &[]);
    ctl(&f, &["grant", "revoke", &gone]);
    // The store is sealed: no prefix or grantee in the clear.
    let bytes = fs::read(f.cipher.join("sealfs.grants")).unwrap();
    assert!(!bytes.windows(8).any(|w| w == b"projects"));
    f.unmount();
    f.mount_ctl_with(&["-o", "allow_other"]);
    let list = ctl(&f, &["grant", "list"]);
    let ids: Vec<&str> = list["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["grant_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![keep.as_str()]);
    assert_eq!(list["grants"][0]["name"], "kept");
    assert_eq!(
        ok_as(GRANTEE, &["cat", s(&f.p("projects/x/f"))]),
        "project data\n"
    );
    denied_as(GRANTEE, &["cat", s(&f.p("other/secret"))]);
    // A rotation re-seals the store; it still opens after a remount.
    ctl(&f, &["rotate"]);
    f.unmount();
    f.mount_ctl_with(&["-o", "allow_other"]);
    assert_eq!(
        ok_as(GRANTEE, &["cat", s(&f.p("projects/x/f"))]),
        "project data\n"
    );
}

/// Record boundaries of a segment: (offset, length) of each record.
fn records_of(seg: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 128;
    while off + 12 <= seg.len() {
        let len = u32::from_le_bytes(seg[off..off + 4].try_into().unwrap()) as usize;
        let total = 12 + len + 32;
        if off + total > seg.len() {
            break;
        }
        out.push((off, total));
        off += total;
    }
    out
}

fn audit_verify(cipher: &Path, passfile: &Path) -> (i32, Value) {
    let o = Command::new(bin())
        .args([
            "audit",
            "verify",
            s(cipher),
            "--passfile",
            s(passfile),
            "--json",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), v)
}

#[test]
fn audit_verify_finds_removed_edited_and_reordered_records() {
    let mut f = shared();
    grant(&f, "uid:1001", "read", "/projects/x", &[]);
    for _ in 0..3 {
        ok_as(GRANTEE, &["cat", s(&f.p("projects/x/f"))]);
    }
    // Live verify through the socket, then offline after unmounting.
    let live = ctl(&f, &["audit", "verify"]);
    assert!(live["first_break"].is_null(), "{live}");
    f.unmount();
    let (code, clean) = audit_verify(&f.cipher, &f.passfile);
    assert_eq!(code, 0, "{clean}");
    let n = clean["records"].as_u64().unwrap();
    assert!(n >= 10, "{clean}");
    let seg = f.cipher.join("sealfs.audit/00000001.log");
    let orig = fs::read(&seg).unwrap();
    let recs = records_of(&orig);
    assert_eq!(recs.len() as u64, n);
    let (a, b) = (recs[4], recs[5]);

    // Removed.
    let mut removed = orig.clone();
    removed.drain(a.0..a.0 + a.1);
    fs::write(&seg, &removed).unwrap();
    let (code, v) = audit_verify(&f.cipher, &f.passfile);
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["first_break"]["expected_seq"], 5, "{v}");
    assert!(
        v["first_break"]["reason"]
            .as_str()
            .unwrap()
            .contains("removed"),
        "{v}"
    );

    // Edited (one bit of the sealed body).
    let mut edited = orig.clone();
    edited[a.0 + 30] ^= 0x01;
    fs::write(&seg, &edited).unwrap();
    let (code, v) = audit_verify(&f.cipher, &f.passfile);
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["first_break"]["expected_seq"], 5, "{v}");

    // Reordered.
    let mut reordered = orig[..a.0].to_vec();
    reordered.extend_from_slice(&orig[b.0..b.0 + b.1]);
    reordered.extend_from_slice(&orig[a.0..a.0 + a.1]);
    reordered.extend_from_slice(&orig[b.0 + b.1..]);
    fs::write(&seg, &reordered).unwrap();
    let (code, v) = audit_verify(&f.cipher, &f.passfile);
    assert_eq!(code, 3, "{v}");
    assert!(
        v["first_break"]["reason"]
            .as_str()
            .unwrap()
            .contains("reordered"),
        "{v}"
    );

    // The offline export carries on past the break, and says where it was:
    // records 5 and 6 were swapped, so 5, 6 and 7 (chained from 6's MAC,
    // which now sits elsewhere) cannot be verified; 8 onwards can.
    let o = Command::new(bin())
        .args([
            "audit",
            "export",
            s(&f.cipher),
            "--passfile",
            s(&f.passfile),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, n - 3);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(&seqs[..5], [1, 2, 3, 4, 8]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("records 5-7 missing or unverifiable, resumed at record 8"),
        "{err}"
    );

    // A record torn by a crash is not a break; the next mount cuts it off
    // and records that it did.
    let mut torn = orig.clone();
    torn.truncate(orig.len() - 7);
    fs::write(&seg, &torn).unwrap();
    let (code, v) = audit_verify(&f.cipher, &f.passfile);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["records"].as_u64(), Some(n - 1));
    f.mount_ctl_with(&["-o", "allow_other"]);
    let recs = export(&f, &["--op", "audit_recovered"]);
    assert_eq!(recs.len(), 1, "{recs:?}");
    f.unmount();
    let (code, v) = audit_verify(&f.cipher, &f.passfile);
    assert_eq!(code, 0, "{v}");
}

/// A size-limited tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for args in [&[][..], &["-l"][..]] {
            let ok = Command::new("umount")
                .args(args)
                .arg(&self.0)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn a_full_disk_for_the_audit_log_refuses_the_operation() {
    let mut f = Fixture::new();
    // Move the volume onto a 4 MiB tmpfs.
    let disk = f.scratch.join("disk");
    fs::create_dir(&disk).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "sealfs-auditfull"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());
    let _tmpfs = Tmpfs(disk.clone());
    let cipher = disk.join("cipher");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&f.cipher)
        .arg(&cipher)
        .status()
        .unwrap()
        .success());
    f.cipher = cipher;
    f.mount_ctl();
    fs::write(f.p("doc"), b"content").unwrap();
    // Fill the disk behind the mount's back.
    let filler = disk.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", s(&filler)))
        .stderr(Stdio::null())
        .status();
    // Opens need an audit record; once a record no longer fits, opens fail.
    let mut opened = 0;
    let mut refused = None;
    // The log keeps 512 KiB reserved ahead (about 1500 records): used up first.
    for _ in 0..20000 {
        match fs::read(f.p("doc")) {
            Ok(b) => {
                assert_eq!(b, b"content");
                opened += 1;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("every open succeeded on a full disk: audit is not fail-closed");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    // Space back: opens work again, and the log verifies, with one decrypt
    // record per successful open and none for the refused one.
    fs::remove_file(&filler).unwrap();
    assert_eq!(fs::read(f.p("doc")).unwrap(), b"content");
    let recs = export(&f, &["--op", "decrypt", "--path-prefix", "/doc"]);
    assert_eq!(recs.len(), opened + 1, "opened {opened}: {recs:?}");
    assert!(recs.iter().all(|r| r["outcome"] == "ok"));
    let v = ctl(&f, &["audit", "verify"]);
    assert!(v["first_break"].is_null(), "{v}");
    f.unmount();
}

/// The non-dotted entries of a backing directory (encrypted names).
fn backing_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().contains('.'))
        .collect();
    v.sort();
    v
}

#[test]
fn integrity_failures_are_recorded() {
    let mut f = Fixture::new();
    f.mount_ctl();
    fs::create_dir(f.p("d")).unwrap();
    fs::write(f.p("d/one"), vec![1u8; 10_000]).unwrap();
    fs::write(f.p("d/two"), vec![2u8; 10_000]).unwrap();
    f.unmount();
    let dirs = backing_entries(&f.cipher);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let files = backing_entries(&dirs[0]);
    assert_eq!(files.len(), 2, "{files:?}");
    // Swap the two ciphertexts (each is bound to its own name) ...
    let tmp = dirs[0].join("swap.tmp");
    fs::rename(&files[0], &tmp).unwrap();
    fs::rename(&files[1], &files[0]).unwrap();
    fs::rename(&tmp, &files[1]).unwrap();
    f.mount_ctl();
    for name in ["d/one", "d/two"] {
        let e = fs::read(f.p(name)).expect_err("a moved ciphertext opened");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    let recs = export(&f, &["--op", "integrity_failure"]);
    for path in ["/d/one", "/d/two"] {
        assert!(
            recs.iter()
                .any(|r| r["path"] == path && r["outcome"] == "error"),
            "no integrity record for {path}: {recs:?}"
        );
    }
    // ... and a tampered chunk: the read fails and is recorded.
    fs::write(f.p("d/three"), vec![3u8; 10_000]).unwrap();
    f.unmount();
    let before: Vec<PathBuf> = files.clone();
    let three: Vec<PathBuf> = backing_entries(&dirs[0])
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(three.len(), 1);
    let mut bytes = fs::read(&three[0]).unwrap();
    // A byte of the first chunk's data (the final chunk's own place is a
    // hole with packed tails, docs/FORMAT.md §4.7: never read).
    bytes[4096 + 100] ^= 0x40;
    fs::write(&three[0], &bytes).unwrap();
    f.mount_ctl();
    assert!(fs::read(f.p("d/three")).is_err(), "tampered chunk read");
    let recs = export(
        &f,
        &["--op", "integrity_failure", "--path-prefix", "/d/three"],
    );
    assert!(!recs.is_empty(), "tampered chunk not recorded");
    let v = ctl(&f, &["audit", "verify"]);
    assert!(v["first_break"].is_null(), "{v}");
}
