//! Hardening: a config whose KDF parameters were weakened below the minimum
//! (or raised past the maximum), or that names an unknown feature flag, is
//! refused with a clear message; `init` refuses weak parameters; the mount
//! daemon cannot dump core and locks its memory (as root).

mod common;

use std::fs;

use common::*;

/// Rewrites one line of the volume's sealfs.toml.
fn edit_config(fx: &Fixture, from: &str, to: &str) -> String {
    let p = fx.cipher.join("sealfs.toml");
    let before = fs::read_to_string(&p).unwrap();
    assert!(
        before.contains(from),
        "sealfs.toml has no '{from}':\n{before}"
    );
    fs::write(&p, before.replace(from, to)).unwrap();
    before
}

#[track_caller]
fn assert_mount_refused(fx: &Fixture, want: &str) {
    let out = mount_expect_failure(
        &fx.cipher,
        &fx.mnt,
        &["--passfile".as_ref(), fx.passfile.as_os_str()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(23), "exit code; stderr: {err}");
    assert!(err.contains(want), "stderr lacks '{want}': {err}");
}

#[test]
fn weakened_kdf_parameters_are_refused() {
    // Layout 1 (the frozen fixture): the KDF parameters are in sealfs.toml.
    let fx = Fixture::new();
    fs::remove_dir_all(&fx.cipher).unwrap();
    let v1 = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(v1.join("cipher"))
        .arg(&fx.cipher)
        .status()
        .unwrap();
    assert!(ok.success());
    fs::copy(v1.join("passphrase"), &fx.passfile).unwrap();
    let orig = edit_config(&fx, "memory_kib = 8192", "memory_kib = 64");
    assert_mount_refused(&fx, "Argon2id memory 64KiB is below the minimum 8192KiB");
    fs::write(fx.cipher.join("sealfs.toml"), &orig).unwrap();
    edit_config(&fx, "iterations = 1", "iterations = 0");
    assert_mount_refused(&fx, "passes 0 is below the minimum 1");
    fs::write(fx.cipher.join("sealfs.toml"), &orig).unwrap();
    edit_config(&fx, "memory_kib = 8192", "memory_kib = 4000000000");
    assert_mount_refused(&fx, "above the maximum");
    // Restored, it mounts.
    fs::write(fx.cipher.join("sealfs.toml"), &orig).unwrap();
    let mut fx = fx;
    fx.mount();
    fx.unmount();
}

/// Rewrites the Argon2id memory cost of keyslot 1 (a passphrase slot) in
/// both keyring copies of a layout-2 volume; returns the originals.
fn edit_slot_memory(fx: &Fixture, kib: u32) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut orig = Vec::new();
    for n in ["sealfs.keyring", "sealfs.keyring.bak"] {
        let p = fx.cipher.join(n);
        let mut b = fs::read(&p).unwrap();
        orig.push((p.clone(), b.clone()));
        // Header: 52 bytes, then slot 1: 18 bytes, its label, its parameters.
        assert_eq!(b[56], 1, "slot 1 is a passphrase slot");
        let at = 52 + 18 + b[57] as usize;
        b[at..at + 4].copy_from_slice(&kib.to_le_bytes());
        fs::write(&p, b).unwrap();
    }
    orig
}

#[test]
fn weakened_keyslot_parameters_do_not_open_and_huge_ones_are_refused_early() {
    // Layout 2: the parameters are in the keyslot, bound to its sealed KEK:
    // weakened, the slot simply does not open (nothing to gain).
    let fx = Fixture::new();
    let orig = edit_slot_memory(&fx, 64);
    let out = mount_expect_failure(
        &fx.cipher,
        &fx.mnt,
        &["--passfile".as_ref(), fx.passfile.as_os_str()],
    );
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Beyond the ceiling: refused before Argon2 runs (no 4 TiB allocation).
    edit_slot_memory(&fx, 4_000_000_000);
    let start = std::time::Instant::now();
    let out = mount_expect_failure(
        &fx.cipher,
        &fx.mnt,
        &["--passfile".as_ref(), fx.passfile.as_os_str()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(23), "{err}");
    assert!(err.contains("out of range"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    for (p, b) in orig {
        fs::write(p, b).unwrap();
    }
    let mut fx = fx;
    fx.mount();
    fx.unmount();
}

#[test]
fn unknown_feature_flag_is_refused() {
    let fx = Fixture::new();
    edit_config(
        &fx,
        "\"long-names\"",
        "\"long-names\", \"compression-zstd\"",
    );
    assert_mount_refused(&fx, "feature 'compression-zstd'");
}

#[test]
fn init_and_passwd_refuse_weak_parameters() {
    let fx = Fixture::new();
    let dir = fx.scratch.join("weak");
    let out = sealfs(&[
        "init".as_ref(),
        dir.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
        "--kdf-memory-kib".as_ref(),
        "1024".as_ref(),
        "--kdf-iterations".as_ref(),
        "1".as_ref(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "weak init succeeded");
    assert!(err.contains("below the minimum"), "{err}");
    assert!(
        !dir.join("sealfs.toml").exists() && !dir.join("sealfs.keyring").exists(),
        "a refused init left a volume behind"
    );
    // The lock file appears at the first writable open; it holds nothing.
    let digest = |fx: &Fixture| {
        let mut d = fx.cipher_digest();
        d.remove(std::path::Path::new("sealfs.lock"));
        d
    };
    let before = digest(&fx);
    let out = sealfs(&[
        "passwd".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
        "--new-passfile".as_ref(),
        fx.passfile.as_os_str(),
        "--kdf-memory-kib".as_ref(),
        "1024".as_ref(),
    ]);
    assert!(!out.status.success(), "weak passwd succeeded");
    assert!(String::from_utf8_lossy(&out.stderr).contains("below the minimum"));
    assert!(digest(&fx) == before, "a refused passwd changed the volume");
}

#[test]
fn library_disables_core_dumps() {
    sealfs::hardening::disable_core_dumps().unwrap();
    assert!(sealfs::hardening::core_dumps_disabled());
    let mut lim = libc::rlimit {
        rlim_cur: 1,
        rlim_max: 1,
    };
    // SAFETY: getrlimit with a valid out pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }, 0);
    assert_eq!((lim.rlim_cur, lim.rlim_max), (0, 0));
}

/// A /proc/PID/limits or /proc/PID/status line's fields.
fn proc_line(pid: u32, file: &str, key: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("/proc/{pid}/{file} has no {key}"))
        .to_string()
}

#[test]
fn daemon_has_no_core_dumps_and_locked_memory() {
    let mut fx = Fixture::mounted();
    fs::write(fx.p("f"), vec![7u8; 100_000]).unwrap();
    let pid = fx.mounted.as_ref().unwrap().pid().unwrap();
    let core = proc_line(pid, "limits", "Max core file size");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], &["0", "0"], "{core}");
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } == 0 {
        let lck = proc_line(pid, "status", "VmLck:");
        let kb: u64 = lck.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(kb > 0, "daemon memory not locked: {lck}");
    }
    // A daemonized mount (fork) keeps both.
    fx.unmount();
    let out = sealfs(&[
        "mount".as_ref(),
        fx.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
    ]);
    let m = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, std::path::Path::new("/dev/null"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = sealfs_pids_mentioning(&fx.cipher)[0] as u32;
    let core = proc_line(pid, "limits", "Max core file size");
    assert_eq!(
        &core.split_whitespace().collect::<Vec<_>>()[4..6],
        &["0", "0"]
    );
    if unsafe { libc::geteuid() } == 0 {
        let lck = proc_line(pid, "status", "VmLck:");
        assert_ne!(lck.split_whitespace().nth(1), Some("0"), "{lck}");
    }
    m.unmount();
}
