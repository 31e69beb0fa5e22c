//! A volume in a tempdir driven through the `sealfs` binary with any
//! unlock options: the helper of the keyslot tests (keyslots, kms_pkcs11,
//! kms_transit, keyslot_crash).

use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::{bin, Mounted, PASSPHRASE};

/// A volume's paths: `base/cipher`, `base/mnt`, `base/pass` (holding
/// [`PASSPHRASE`]).
pub struct Vol {
    _tmp: tempfile::TempDir,
    pub base: PathBuf,
    pub cipher: PathBuf,
    pub mnt: PathBuf,
    pub pass: PathBuf,
}

impl Vol {
    pub fn new() -> Vol {
        let tmp = tempfile::Builder::new()
            .prefix("sealfs-keyslots.")
            .tempdir()
            .unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let mnt = base.join("mnt");
        fs::create_dir(&mnt).unwrap();
        let pass = base.join("pass");
        fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
        Vol {
            cipher: base.join("cipher"),
            mnt,
            pass,
            base,
            _tmp: tmp,
        }
    }

    pub fn p(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }

    /// `sealfs ARGS…` with stdin from `stdin` (or /dev/null).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.run_env(args, stdin, &[])
    }

    /// [`Vol::run`] with extra environment variables.
    pub fn run_env(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin())
            .args(args)
            .env("SEALFS_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(s) = stdin {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        c.wait_with_output().unwrap()
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args, None);
        assert!(
            o.status.success(),
            "sealfs {args:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    #[track_caller]
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args, None);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        if args.first() == Some(&"mount") && super::is_mounted(&self.mnt) {
            // It mounted after all: leave nothing behind, then fail.
            drop(Mounted::adopt_daemon(
                &self.cipher,
                &self.mnt,
                &self.p("d.log"),
            ));
            panic!("sealfs {args:?} mounted, expected exit {code}: {err}");
        }
        assert_eq!(o.status.code(), Some(code), "sealfs {args:?}: {err}");
        err
    }

    pub fn c(&self) -> &str {
        self.cipher.to_str().unwrap()
    }

    pub fn mount(&self, secret: &[&str]) -> Mounted {
        let s: Vec<&OsStr> = secret.iter().map(OsStr::new).collect();
        Mounted::start_with_secret(&self.cipher, &self.mnt, &s, &[], &self.p("daemon.log"))
    }

    /// Mounts with `secret`, checks the file written at init, unmounts.
    pub fn mount_reads(&self, secret: &[&str]) {
        let m = self.mount(secret);
        assert_eq!(fs::read(self.mnt.join("hello.txt")).unwrap(), b"hello\n");
        m.unmount();
    }

    /// The volume's audit records (offline export, unlocked with the
    /// passphrase).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.audit_with(&["--passfile", self.pass.to_str().unwrap()])
    }

    /// The volume's audit records (offline export, unlocked with `secret`).
    pub fn audit_with(&self, secret: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["audit", "export", self.c()];
        args.extend_from_slice(secret);
        let out = self.run(&args, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
