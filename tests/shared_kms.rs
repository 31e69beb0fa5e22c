//! Issue 20 with the OpenBao provider: two daemons ("hosts") on one cipher
//! dir in shared-storage mode, each unlocking through the same Transit key
//! with a token of its own. Revoking one host's token stops that host
//! only, and only at its next unlock: the other keeps working, both keep
//! following each other's key changes while mounted, and the revoked host
//! cannot mount again until it has a valid token.

mod common;
mod external;

use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use external::OpenBao;

/// One host: its token file, mount point, socket and daemon.
struct Host {
    name: &'static str,
    token: String,
    tok: PathBuf,
    mnt: PathBuf,
    sock: PathBuf,
    mounted: Option<Mounted>,
}

impl Host {
    fn try_mount(&mut self, cipher: &std::path::Path) -> Result<(), String> {
        let log = self.mnt.with_extension(format!("log{}", rand_suffix()));
        let sock = self.sock.to_str().unwrap().to_string();
        let m = Mounted::try_start(
            cipher,
            &self.mnt,
            &[OsStr::new("--transit-token-file"), self.tok.as_os_str()],
            &[
                "--shared-storage",
                "--host-id",
                self.name,
                "--ctl-socket",
                &sock,
            ],
            &log,
        )?;
        assert!(
            wait_until(Duration::from_secs(20), || {
                std::os::unix::net::UnixStream::connect(&self.sock).is_ok()
            }),
            "{}: control socket not ready",
            self.name
        );
        self.mounted = Some(m);
        Ok(())
    }

    fn ctl(&self, args: &[&str]) -> serde_json::Value {
        ctl_json(&self.sock, self.name, args)
    }

    fn primary(&self) -> u64 {
        self.ctl(&["status"])["primary"].as_u64().unwrap()
    }

    fn unmount(&mut self) {
        if let Some(m) = self.mounted.take() {
            m.unmount();
        }
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn revoking_one_host_s_token_stops_that_host_only_at_its_next_unlock() {
    let Some(bao) = OpenBao::start() else { return };
    bao.create_transit_key("vault", true);
    let fx = Fixture::new();
    let base = fx.root.path().to_path_buf();
    let host = |name: &'static str| {
        let token = bao.token_with_policy(
            &format!("sealfs-{name}"),
            &OpenBao::unlock_policy("vault", "sealfs"),
        );
        let tok = base.join(format!("{name}.token"));
        fs::write(&tok, format!("{token}\n")).unwrap();
        let mnt = base.join(format!("mnt-{name}"));
        fs::create_dir_all(&mnt).unwrap();
        Host {
            name,
            token,
            tok,
            mnt,
            sock: base.join(format!("{name}.sock")),
            mounted: None,
        }
    };
    let mut a = host("node-a");
    let mut b = host("node-b");
    // A Transit slot on the passphrase volume (any of the hosts' tokens
    // opens it: the slot names the key, the token is each host's own).
    let out = Command::new(bin())
        .args(["keyslot", "add"])
        .arg(&fx.cipher)
        .arg("--passfile")
        .arg(&fx.passfile)
        .args([
            "--new-transit-addr",
            bao.addr(),
            "--new-transit-key",
            "vault",
        ])
        .arg("--new-transit-token-file")
        .arg(&a.tok)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keyslot add: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    a.try_mount(&fx.cipher).unwrap();
    b.try_mount(&fx.cipher).unwrap();
    fs::write(a.mnt.join("from-a"), b"a").unwrap();
    fs::write(b.mnt.join("from-b"), b"b").unwrap();

    bao.revoke_token(&b.token);
    // Both mounted hosts keep working from memory, and keep following
    // each other's key changes (no KMS call for that).
    let p0 = a.primary();
    a.ctl(&["rotate"]);
    assert!(
        wait_until(Duration::from_secs(6), || b.primary() == p0 + 1),
        "node-b did not follow node-a's rotation"
    );
    fs::write(b.mnt.join("after-revoke-b"), b"still b").unwrap();
    assert!(wait_until(Duration::from_secs(6), || {
        fs::read(a.mnt.join("after-revoke-b")).ok().as_deref() == Some(&b"still b"[..])
    }));

    // node-b's next unlock is refused; node-a is untouched.
    b.unmount();
    let err = b
        .try_mount(&fx.cipher)
        .expect_err("a revoked token unlocked");
    assert!(
        err.contains("denied") || err.contains("permission"),
        "{err}"
    );
    assert!(!err.contains(&b.token), "the token in an error: {err}");
    assert!(!is_mounted(&b.mnt));
    a.ctl(&["rotate"]);
    assert_eq!(fs::read(a.mnt.join("from-b")).unwrap(), b"b");
    a.unmount();
    a.try_mount(&fx.cipher).unwrap();
    assert_eq!(fs::read(a.mnt.join("after-revoke-b")).unwrap(), b"still b");

    // node-b with a new token of its own is back.
    b.token = bao.token_with_policy("sealfs-node-b2", &OpenBao::unlock_policy("vault", "sealfs"));
    fs::write(&b.tok, format!("{}\n", b.token)).unwrap();
    b.try_mount(&fx.cipher).unwrap();
    assert_eq!(fs::read(b.mnt.join("from-a")).unwrap(), b"a");
    b.unmount();
    a.unmount();
}
