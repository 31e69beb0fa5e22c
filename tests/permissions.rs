//! Issue 16, finding 6: who may read what the cipher directory holds.
//! `init` makes CIPHERDIR 0700 and every bookkeeping file 0600 (also after
//! passwd, a salvage, an import that creates the volume, a grant); a mount
//! warns when the keyring or config is readable by others; and the mount
//! root's mode, owner and group are its own (`sealfs.root`), so a 0700
//! cipher directory still serves a 0755 root to `allow_other` users, and
//! chmod/chown of the root never touch the cipher directory's mode.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{bin, sealfs, Fixture, FAST_KDF};

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every regular file directly in the cipher dir whose name starts with
/// `sealfs.` (the bookkeeping files), with its mode.
fn bookkeeping_modes(cipher: &Path) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = fs::read_dir(cipher)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| n.starts_with("sealfs."))
        .map(|(n, p)| (n, mode(&p)))
        .collect();
    v.sort();
    v
}

#[track_caller]
fn assert_private(cipher: &Path) {
    let modes = bookkeeping_modes(cipher);
    assert!(
        modes.iter().any(|(n, _)| n == "sealfs.keyring"),
        "{modes:?}"
    );
    for (n, m) in &modes {
        if n == "sealfs.lock" {
            continue;
        }
        assert_eq!(m & 0o077, 0, "{n} is {m:o}: {modes:?}");
    }
}

#[test]
fn init_makes_the_cipher_dir_and_its_files_private() {
    let f = Fixture::new();
    assert_eq!(mode(&f.cipher), 0o700, "CIPHERDIR as init made it");
    assert_private(&f.cipher);
    // An existing empty directory keeps its mode (the user made it so).
    let t = tempfile::tempdir().unwrap();
    let mine = t.path().join("mine");
    fs::create_dir(&mine).unwrap();
    fs::set_permissions(&mine, fs::Permissions::from_mode(0o750)).unwrap();
    let mut args = vec!["init", s(&mine), "--passfile", s(&f.passfile)];
    args.extend(FAST_KDF);
    let o = Command::new(bin()).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&mine), 0o750);
    assert_private(&mine);
}

#[test]
fn every_rewrite_keeps_the_files_private() {
    let mut f = Fixture::new();
    // passwd (re-seals the keyring, rewrites the config).
    let new_pass = f.scratch.join("new-pass");
    fs::write(&new_pass, "another passphrase\n").unwrap();
    let mut args = vec![
        "passwd",
        s(&f.cipher),
        "--passfile",
        s(&f.passfile),
        "--new-passfile",
        s(&new_pass),
    ];
    args.extend(FAST_KDF);
    let o = Command::new(bin()).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fs::copy(&new_pass, &f.passfile).unwrap();
    assert_private(&f.cipher);
    // A salvage rebuilding a damaged keyring copy and a lost config.
    fs::write(f.cipher.join("sealfs.keyring.bak"), b"junk").unwrap();
    fs::remove_file(f.cipher.join("sealfs.toml")).unwrap();
    let o = sealfs(&[
        "fsck".as_ref(),
        f.cipher.as_os_str(),
        "--passfile".as_ref(),
        f.passfile.as_os_str(),
        "--salvage".as_ref(),
    ]);
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(f.cipher.join("sealfs.toml").exists());
    assert_private(&f.cipher);
    // A grant store, through a mount.
    f.mount_ctl_with(&["-o", "allow_other"]);
    let o = Command::new(bin())
        .args(["ctl", "--socket", s(&f.ctl_socket), "grant", "create"])
        .args([
            "--grantee",
            "uid:1001",
            "--ops",
            "read",
            "--path-prefix",
            "/",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    f.unmount();
    assert!(f.cipher.join("sealfs.grants").exists());
    assert_private(&f.cipher);
    // A volume that `import` creates.
    let plain = f.scratch.join("plain");
    fs::create_dir(&plain).unwrap();
    fs::write(plain.join("a"), b"a").unwrap();
    let made = f.scratch.join("imported");
    let mut args = vec!["import", s(&plain), s(&made), "--passfile", s(&f.passfile)];
    args.extend(FAST_KDF);
    let o = Command::new(bin()).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&made), 0o700);
    assert_private(&made);
}

#[test]
fn a_mount_warns_about_a_readable_keyring_or_config() {
    let f = Fixture::new();
    fs::set_permissions(
        f.cipher.join("sealfs.keyring"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    fs::set_permissions(
        f.cipher.join("sealfs.toml"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    // A daemonized mount prints its warnings before it returns.
    let o = Command::new(bin())
        .args([
            "mount",
            s(&f.cipher),
            s(&f.mnt),
            "--passfile",
            s(&f.passfile),
        ])
        .args(["--ctl-socket", s(&f.ctl_socket)])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let _ = Command::new(bin()).args(["unmount", s(&f.mnt)]).output();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning:")
            && err.contains("sealfs.keyring is mode 0644")
            && err.contains("guess the passphrase"),
        "{err}"
    );
    assert!(err.contains("sealfs.toml is mode 0640"), "{err}");
    assert!(!err.contains("sealfs.keyring.bak is"), "{err}");
}

#[test]
fn the_mount_root_has_its_own_mode_and_owner() {
    let mut f = Fixture::new();
    fs::set_permissions(f.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    f.mount_with(&["-o", "allow_other"]);
    assert_eq!(mode(&f.cipher), 0o700);
    // The root shows what a mkdir would have made (umask 022 here).
    let root = mode(&f.mnt);
    assert_eq!(root & 0o077, 0o055, "root shows {root:o}");
    // Another user can list it although the cipher dir is 0700.
    let o = Command::new("setpriv")
        .args([
            "--reuid=1001",
            "--regid=1001",
            "--clear-groups",
            "stat",
            "-c",
            "%a",
        ])
        .arg(&f.mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // chmod/chown of the root change what it shows, never the cipher dir.
    fs::set_permissions(&f.mnt, fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(&f.mnt, Some(1001), Some(1002)).unwrap();
    let md = fs::metadata(&f.mnt).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o1777, 1001, 1002)
    );
    let cmd = fs::metadata(&f.cipher).unwrap();
    assert_eq!((cmd.mode() & 0o7777, cmd.uid()), (0o700, 0));
    // utimens of the root works.
    let o = Command::new("touch")
        .args(["-d", "2020-01-02 03:04:05"])
        .arg(&f.mnt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // It survives a remount (sealfs.root, sealed; 0600).
    f.unmount();
    assert_eq!(mode(&f.cipher.join("sealfs.root")), 0o600);
    f.mount_with(&["-o", "allow_other"]);
    let md = fs::metadata(&f.mnt).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o1777, 1001, 1002)
    );
    // The set-group-ID bit works as on a directory of its own: new entries
    // in the root get its group.
    fs::set_permissions(&f.mnt, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(f.p("child"), b"x").unwrap();
    assert_eq!(fs::metadata(f.p("child")).unwrap().gid(), 1002);
    assert_eq!(mode(&f.cipher) & 0o777, 0o700);
    f.unmount();
    // A tampered sealfs.root: the mount still works, showing the cipher
    // directory's own (closed) attributes, and fsck reports it.
    let p = f.cipher.join("sealfs.root");
    let mut b = fs::read(&p).unwrap();
    b[30] ^= 1;
    fs::write(&p, &b).unwrap();
    f.mount();
    assert_eq!(mode(&f.mnt) & 0o777, 0o700);
    f.unmount();
    let o = sealfs(&[
        "fsck".as_ref(),
        f.cipher.as_os_str(),
        "--passfile".as_ref(),
        f.passfile.as_os_str(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("sealfs.root"), "{out}");
}
