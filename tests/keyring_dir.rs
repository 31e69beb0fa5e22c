//! Issue 21.10: the keyring outside CIPHERDIR (gocryptfs's `-config`):
//! `init --keyring-dir DIR` keeps both keyring copies in DIR, the cipher
//! dir alone neither unlocks nor offers anything to guess against, every
//! command that unlocks finds the keyring with `--keyring-dir`, and a
//! missing or needless `--keyring-dir` is a clear error.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

fn run(args: &[&OsStr]) -> Output {
    sealfs(args)
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Setup {
    root: tempfile::TempDir,
    cipher: PathBuf,
    keys: PathBuf,
    mnt: PathBuf,
    pass: PathBuf,
}

fn setup() -> Setup {
    let root = tempfile::Builder::new()
        .prefix("sealfs-krdir.")
        .tempdir()
        .unwrap();
    let base = root.path().canonicalize().unwrap();
    let (cipher, keys, mnt, pass) = (
        base.join("cipher"),
        base.join("keys"),
        base.join("mnt"),
        base.join("pass"),
    );
    fs::create_dir(&keys).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    let mut args = vec![
        os("init"),
        cipher.as_os_str(),
        os("--passfile"),
        pass.as_os_str(),
        os("--keyring-dir"),
        keys.as_os_str(),
    ];
    args.extend(FAST_KDF.iter().map(|s| os(s)));
    let out = run(&args);
    assert!(out.status.success(), "init: {}", stderr(&out));
    Setup {
        root,
        cipher,
        keys,
        mnt,
        pass,
    }
}

fn has_keyring(dir: &Path) -> bool {
    dir.join("sealfs.keyring").exists() || dir.join("sealfs.keyring.bak").exists()
}

#[test]
fn a_volume_with_its_keyring_elsewhere_works_only_with_it() {
    let s = setup();
    assert!(!has_keyring(&s.cipher), "the cipher dir holds a keyring");
    assert!(s.keys.join("sealfs.keyring").is_file());
    assert!(s.keys.join("sealfs.keyring.bak").is_file());
    let toml = fs::read_to_string(s.cipher.join("sealfs.toml")).unwrap();
    assert!(toml.contains("external-keyring"), "{toml}");

    // Without the directory: a clear error, nothing mounted.
    let out = mount_expect_failure(&s.cipher, &s.mnt, &[os("--passfile"), s.pass.as_os_str()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--keyring-dir"), "{}", stderr(&out));

    // With it: a working mount; a rotation rewrites the keyring in DIR only.
    let before = fs::read(s.keys.join("sealfs.keyring")).unwrap();
    let log = s.root.path().join("daemon.log");
    let sock = s.root.path().join("ctl.sock");
    let m = Mounted::start(
        &s.cipher,
        &s.mnt,
        &s.pass,
        &[
            "--keyring-dir",
            s.keys.to_str().unwrap(),
            "--ctl-socket",
            sock.to_str().unwrap(),
        ],
        &log,
    );
    fs::write(s.mnt.join("f"), b"kept elsewhere").unwrap();
    assert!(wait_until(TIMEOUT, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    }));
    let out = run(&[os("ctl"), os("--socket"), sock.as_os_str(), os("rotate")]);
    assert!(out.status.success(), "{}", stderr(&out));
    m.unmount();
    assert_ne!(fs::read(s.keys.join("sealfs.keyring")).unwrap(), before);
    assert!(!has_keyring(&s.cipher));

    // Offline commands find it too.
    let with = |cmd: &[&str]| {
        let mut a: Vec<&OsStr> = cmd.iter().map(|c| os(c)).collect();
        a.push(s.cipher.as_os_str());
        a.extend([
            os("--passfile"),
            s.pass.as_os_str(),
            os("--keyring-dir"),
            s.keys.as_os_str(),
        ]);
        run(&a)
    };
    let out = with(&["fsck"]);
    assert!(
        out.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let out = with(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", stderr(&out));
    let out = run(&[
        os("export"),
        s.cipher.as_os_str(),
        s.root.path().join("out").as_os_str(),
        os("--passfile"),
        s.pass.as_os_str(),
        os("--keyring-dir"),
        s.keys.as_os_str(),
    ]);
    assert!(out.status.success(), "export: {}", stderr(&out));
    assert_eq!(
        fs::read(s.root.path().join("out/f")).unwrap(),
        b"kept elsewhere"
    );
    let out = run(&[
        os("keyslot"),
        os("list"),
        s.cipher.as_os_str(),
        os("--keyring-dir"),
        s.keys.as_os_str(),
    ]);
    assert!(out.status.success(), "keyslot list: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("passphrase"));
    let out = run(&[
        os("fsck"),
        s.cipher.as_os_str(),
        os("--passfile"),
        s.pass.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--keyring-dir"), "{}", stderr(&out));
}

#[test]
fn keyring_dir_mistakes_are_refused_clearly() {
    let s = setup();
    let other = s.root.path().join("other");
    let init_other = |keys: &Path| {
        let mut args = vec![
            os("init"),
            other.as_os_str(),
            os("--passfile"),
            s.pass.as_os_str(),
            os("--keyring-dir"),
            keys.as_os_str(),
        ];
        args.extend(FAST_KDF.iter().map(|a| os(a)));
        let out = run(&args);
        assert!(!out.status.success());
        stderr(&out)
    };
    // A second volume may not share the directory.
    let err = init_other(&s.keys);
    assert!(err.contains("already holds a keyring"), "{err}");
    // A missing directory.
    let err = init_other(&s.root.path().join("nowhere"));
    assert!(err.contains("create it first"), "{err}");
    assert!(!other.join("sealfs.toml").exists(), "nothing half-made");
    // --keyring-dir on a volume that keeps its keyring inside.
    let fx = Fixture::new();
    let out = mount_expect_failure(
        &fx.cipher,
        &fx.mnt,
        &[
            os("--passfile"),
            fx.passfile.as_os_str(),
            os("--keyring-dir"),
            s.keys.as_os_str(),
        ],
    );
    assert!(
        stderr(&out).contains("drop --keyring-dir"),
        "{}",
        stderr(&out)
    );
}
