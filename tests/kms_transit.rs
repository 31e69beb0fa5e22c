//! Transit keyslots against a real OpenBao dev server (started by each
//! test, [`external::OpenBao`]): init and mount through Transit (token
//! file, AppRole, unattended with BAO_TOKEN), the KMS's authority (a
//! disabled key or a revoked token refuses the next mount and `ctl rewrap`
//! while a running mount keeps working and `ctl status` shows what the KMS
//! said), rotation + `keyslot rewrap` + min_decryption_version, the
//! external anchor catching a rollback of the whole cipher dir, and a dead
//! or silent server failing a mount in bounded time.

mod common;
mod external;

use std::fs;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::vol::Vol;
use common::*;
use external::OpenBao;

/// A server with a derived key `vault`, a token that may only use it (and
/// the anchor's KV tree), and a volume with a Transit slot and a recovery
/// slot holding `hello.txt`.
struct Kms {
    bao: OpenBao,
    v: Vol,
    token: String,
    tok: String,
}

impl Kms {
    fn start() -> Option<Kms> {
        let bao = OpenBao::start()?;
        bao.create_transit_key("vault", true);
        let token = bao.token_with_policy("sealfs", &OpenBao::unlock_policy("vault", "sealfs"));
        let v = Vol::new();
        let tok = v.p("token");
        fs::write(&tok, format!("{token}\n")).unwrap();
        let k = Kms {
            tok: tok.to_str().unwrap().to_string(),
            token,
            v,
            bao,
        };
        let out = k.v.ok(&[
            "init",
            k.v.c(),
            "--transit-addr",
            k.bao.addr(),
            "--transit-key",
            "vault",
            "--transit-token-file",
            &k.tok,
            "--recovery-key",
        ]);
        fs::write(k.v.p("rk"), out.trim()).unwrap();
        let m = k.mount();
        fs::write(k.v.mnt.join("hello.txt"), b"hello\n").unwrap();
        m.unmount();
        Some(k)
    }

    fn secret(&self) -> [&str; 2] {
        ["--transit-token-file", &self.tok]
    }

    fn mount(&self) -> Mounted {
        self.v.mount(&self.secret())
    }

    fn mount_fails(&self, code: i32) -> String {
        let v = &self.v;
        let mut args = vec!["mount", v.c(), v.mnt.to_str().unwrap()];
        args.extend(self.secret());
        let err = v.fails(&args, code);
        assert!(!is_mounted(&v.mnt));
        err
    }

    fn status(&self) -> serde_json::Value {
        let mnt = self.v.mnt.to_str().unwrap();
        serde_json::from_str(&self.v.ok(&["ctl", "--mount", mnt, "status", "--json"])).unwrap()
    }
}

#[test]
fn init_and_mount_through_transit() {
    let Some(k) = Kms::start() else { return };
    let v = &k.v;
    let list = v.ok(&["keyslot", "list", v.c()]);
    assert!(list.contains("transit/keys/vault v1"), "{list}");
    let m = k.mount();
    let st = k.status();
    assert_eq!(st["keyring"]["unlocked_by"]["provider"], "transit", "{st}");
    assert_eq!(st["keyring"]["kms"]["state"], "ok", "{st}");
    let log = m.log();
    m.unmount();
    assert!(!log.contains(&k.token), "the token in the daemon's log");
    assert!(!st.to_string().contains(&k.token));
    let audit = v.audit_with(&k.secret());
    assert!(
        audit.iter().any(|r| r["op"] == "mount"
            && r["detail"]
                .as_str()
                .unwrap()
                .contains("(transit: transit http")),
        "{audit:?}"
    );
    assert!(!format!("{audit:?}").contains(&k.token));
    // The generation is anchored in KV.
    let kv = k
        .bao
        .bao_json(&["kv", "list", "-format=json", "secret/sealfs"]);
    assert_eq!(kv.as_array().unwrap().len(), 1, "{kv}");

    // Unattended: a token in BAO_TOKEN, no option.
    let out = v.run_env(
        &["mount", v.c(), v.mnt.to_str().unwrap()],
        None,
        &[("BAO_TOKEN", &k.token)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mounted::adopt_daemon(&v.cipher, &v.mnt, &v.p("d.log")).unmount();

    // AppRole.
    let (role, secret) = k.bao.approle("sealfs", "sealfs");
    fs::write(v.p("role"), &role).unwrap();
    fs::write(v.p("sid"), &secret).unwrap();
    let m = v.mount(&[
        "--transit-approle-role-id-file",
        v.p("role").to_str().unwrap(),
        "--transit-approle-secret-id-file",
        v.p("sid").to_str().unwrap(),
    ]);
    assert_eq!(fs::read(v.mnt.join("hello.txt")).unwrap(), b"hello\n");
    m.unmount();
}

#[test]
fn a_disabled_key_refuses_the_next_mount_while_the_running_one_keeps_working() {
    let Some(k) = Kms::start() else { return };
    let v = &k.v;
    let mnt = v.mnt.to_str().unwrap();
    let m = k.mount();
    k.bao.bao(&["delete", "transit/keys/vault/soft-delete"]);
    // ctl rewrap asks the KMS first: refused.
    let err = v.fails(&["ctl", "--mount", mnt, "rewrap"], 1);
    assert!(err.contains("disabled") && err.contains("(kms)"), "{err}");
    let st = k.status();
    let kms = &st["keyring"]["kms"];
    assert_eq!(kms["state"], "key_disabled", "{st}");
    assert!(kms["checked_at"].as_u64().unwrap() > 0);
    // The running mount keeps working from memory.
    fs::write(v.mnt.join("new.txt"), b"still writable\n").unwrap();
    assert_eq!(fs::read(v.mnt.join("hello.txt")).unwrap(), b"hello\n");
    m.unmount();
    let err = k.mount_fails(36);
    assert!(err.contains("disabled"), "{err}");
    // keyslot add through the Transit slot is refused as well.
    let mut add = vec!["keyslot", "add", v.c(), "--new-recovery-key"];
    add.extend(k.secret());
    v.fails(&add, 36);
    // The recovery key still opens the volume (that is what it is for).
    v.ok(&["info", v.c(), "--recovery-key", v.p("rk").to_str().unwrap()]);
    k.bao
        .bao(&["write", "-f", "transit/keys/vault/soft-delete-restore"]);
    k.mount().unmount();
}

#[test]
fn a_revoked_token_refuses_the_mount() {
    let Some(k) = Kms::start() else { return };
    k.bao.revoke_token(&k.token);
    let err = k.mount_fails(35);
    assert!(err.contains("denied"), "{err}");
    assert!(!err.contains(&k.token), "{err}");
}

#[test]
fn rotated_key_rewrapped_slot_and_old_version_retired_server_side() {
    let Some(k) = Kms::start() else { return };
    let v = &k.v;
    // A second volume on the same key that is not rewrapped.
    let other = Vol::new();
    other.ok(&[
        "init",
        other.c(),
        "--transit-addr",
        k.bao.addr(),
        "--transit-key",
        "vault",
        "--transit-token-file",
        &k.tok,
    ]);
    k.bao.bao(&["write", "-f", "transit/keys/vault/rotate"]);
    let mut args = vec!["keyslot", "rewrap", v.c(), "1"];
    args.extend(k.secret());
    v.ok(&args);
    let list = v.ok(&["keyslot", "list", v.c()]);
    assert!(list.contains("transit/keys/vault v2"), "{list}");
    k.bao.bao(&[
        "write",
        "transit/keys/vault/config",
        "min_decryption_version=2",
    ]);
    let info = k
        .bao
        .bao_json(&["read", "-format=json", "transit/keys/vault"]);
    assert_eq!(info["data"]["min_decryption_version"], 2);
    let m = k.mount();
    assert_eq!(fs::read(v.mnt.join("hello.txt")).unwrap(), b"hello\n");
    m.unmount();
    // The volume left on version 1 no longer opens: its ciphertext is
    // below min_decryption_version (the key is "disabled" for it: 36).
    let mut args = vec!["info", other.c()];
    args.extend(k.secret());
    let err = other.fails(&args, 36);
    assert!(err.contains("min_decryption_version"), "{err}");
    // Rewrap only concerns Transit slots.
    let err = v.fails(
        &[
            "keyslot",
            "rewrap",
            v.c(),
            "2",
            "--recovery-key",
            v.p("rk").to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("slot"), "{err}");
}

/// `cp -a SRC DST`.
fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn a_rollback_of_the_whole_cipher_dir_is_caught_by_the_kms_anchor() {
    let Some(k) = Kms::start() else { return };
    let v = &k.v;
    let copy = v.p("copy");
    copy_dir(&v.cipher, &copy);
    // Change the keys: rotate on a mount.
    let m = k.mount();
    v.ok(&["ctl", "--mount", v.mnt.to_str().unwrap(), "rotate"]);
    m.unmount();
    // Put the whole old cipher dir back: keyring and audit log agree with
    // each other, so only the KMS can tell.
    fs::remove_dir_all(&v.cipher).unwrap();
    copy_dir(&copy, &v.cipher);
    let err = k.mount_fails(40);
    assert!(err.contains("KMS anchor"), "{err}");
    let rk = v.p("rk");
    let recovery = ["--recovery-key", rk.to_str().unwrap()];
    // Without the KMS (the recovery key) the local anchor alone is
    // consistent: this is the limit the README states.
    let info: serde_json::Value =
        serde_json::from_str(&v.ok(&["info", v.c(), recovery[0], recovery[1], "--json"])).unwrap();
    assert_eq!(info["rollback_check"], "ok", "{info}");
    // Accepted: mounts, recorded, and from then on mounts as usual.
    let mut args = k.secret().to_vec();
    args.push("--accept-rollback");
    k.v.mount(&args).unmount();
    let audit = v.audit_with(&k.secret());
    assert!(
        audit.iter().any(|r| r["op"] == "rollback_accepted"
            && r["detail"].as_str().unwrap().contains("KMS anchor")),
        "{audit:?}"
    );
    k.mount().unmount();
}

#[test]
fn a_dead_or_silent_server_fails_the_mount_in_bounded_time() {
    let Some(mut k) = Kms::start() else { return };
    let v = &k.v;
    // Silent: accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", silent.local_addr().unwrap());
    let keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().take(8) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let t = Instant::now();
    let err = v.fails(
        &[
            "mount",
            v.c(),
            v.mnt.to_str().unwrap(),
            "--transit-token-file",
            &k.tok,
            "--transit-addr",
            &addr,
        ],
        34,
    );
    let took = t.elapsed();
    assert!(took < Duration::from_secs(20), "silent server: {took:?}");
    assert!(
        err.contains("did not answer") || err.contains("unreachable"),
        "{err}"
    );
    drop(keep);
    // Killed while a mount starts: it either mounted before the kill, or
    // fails with "unreachable" (34); never a hang.
    let mut child = std::process::Command::new(bin())
        .args([
            "mount",
            v.c(),
            v.mnt.to_str().unwrap(),
            "--transit-token-file",
            &k.tok,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    k.bao.kill();
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || matches!(
            child.try_wait(),
            Ok(Some(_))
        )),
        "sealfs mount hung with the server gone"
    );
    let code = child.wait().unwrap().code();
    eprintln!(
        "mount with the server killed mid-way: exit {code:?} after {:?}",
        t.elapsed()
    );
    if code == Some(0) {
        Mounted::adopt_daemon(&v.cipher, &v.mnt, &v.p("d.log")).unmount();
    } else {
        assert_eq!(code, Some(34));
    }
    // Dead: connection refused at once, retried with backoff, then 34.
    let t = Instant::now();
    let err = k.mount_fails(34);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(err.contains("unreachable"), "{err}");
}
