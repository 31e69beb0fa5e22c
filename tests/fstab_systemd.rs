//! fstab and systemd integration, for real: `contrib/mount.sealfs` is
//! installed as `/sbin/mount.fuse.sealfs` (removed again, or the previous
//! file restored, when the test ends) and util-linux `mount -t fuse.sealfs`
//! and `mount -T FSTAB` mount through it; `contrib/systemd/sealfs@.service`
//! is checked with `systemd-analyze verify` where that exists, and its
//! ExecStart line, expanded as systemd would, mounts a volume and the
//! daemon unmounts on the unit's KillSignal.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;

const HELPER: &str = "/sbin/mount.fuse.sealfs";

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(rel)
}

/// `contrib/mount.sealfs` installed as [`HELPER`] while alive.
struct InstalledHelper {
    previous: Option<Vec<u8>>,
}

impl InstalledHelper {
    fn install() -> Self {
        let previous = fs::read(HELPER).ok();
        let tmp = format!("{HELPER}.sealfs-test.{}", std::process::id());
        fs::copy(contrib("mount.sealfs"), &tmp).expect("copy the helper into /sbin");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, HELPER).expect("install the helper");
        InstalledHelper { previous }
    }
}

impl Drop for InstalledHelper {
    fn drop(&mut self) {
        match &self.previous {
            Some(bytes) => {
                let _ = fs::write(HELPER, bytes);
            }
            None => {
                let _ = fs::remove_file(HELPER);
            }
        }
    }
}

/// The /proc/mounts line for `mnt`: (fstype, options), after checking that
/// it is a FUSE mount of `cipher` (the source field is the cipher dir).
///
/// The type shows as plain `fuse`: fuser's own mount(2) path does not pass
/// the `subtype=sealfs` option to the kernel (only fusermount3 would), so
/// `fuse.sealfs` appears only if that changes.
fn mount_entry(mnt: &Path, cipher: &Path) -> Option<(String, String)> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let want = mnt.to_str().unwrap();
    let entry = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[1] == want)
            .then(|| (f[0].to_string(), f[2].to_string(), f[3].to_string()))
    })?;
    assert!(
        entry.0.contains(cipher.to_str().unwrap()),
        "mount source {} is not the cipher dir",
        entry.0
    );
    assert!(
        entry.1 == "fuse" || entry.1 == "fuse.sealfs",
        "not a FUSE mount: {}",
        entry.1
    );
    Some((entry.1, entry.2))
}

/// Runs util-linux `mount ARGS…` with the helper pointed at the binary under test.
fn util_mount(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("mount")
        .args(args)
        .env("SEALFS_BIN", bin())
        .stdin(Stdio::null())
        .output()
        .expect("run mount(8)")
}

/// Unmounts with util-linux `umount` and waits for the daemon to exit.
#[track_caller]
fn util_umount(fx: &Fixture) {
    run_ok(Command::new("umount").arg(&fx.mnt));
    assert!(!is_mounted(&fx.mnt), "still mounted after umount");
    let start = Instant::now();
    while !sealfs_pids_mentioning(&fx.cipher).is_empty() {
        assert!(
            start.elapsed() < TIMEOUT,
            "daemon still running after umount"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn mount_t_fuse_sealfs_and_an_fstab_line_mount_through_the_helper() {
    let fx = Fixture::new();
    let _helper = InstalledHelper::install();
    let log = fx.scratch.join("mount.log");

    // mount -t fuse.sealfs, read-write, allow_other.
    let opts = format!("passfile={},allow_other", fx.passfile.display());
    let out = util_mount(&[
        "-t".as_ref(),
        "fuse.sealfs".as_ref(),
        fx.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "-o".as_ref(),
        opts.as_ref(),
    ]);
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &log);
    assert!(
        out.status.success(),
        "mount -t fuse.sealfs failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, mopts) = mount_entry(&fx.mnt, &fx.cipher).expect("mount listed in /proc/mounts");
    assert!(mopts.contains("allow_other"), "options: {mopts}");
    fs::write(fx.p("via-mount-t"), b"written through mount -t").unwrap();
    util_umount(&fx);
    drop(guard);

    // read-only
    let opts = format!("ro,passfile={}", fx.passfile.display());
    let out = util_mount(&[
        "-t".as_ref(),
        "fuse.sealfs".as_ref(),
        fx.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "-o".as_ref(),
        opts.as_ref(),
    ]);
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &log);
    assert!(
        out.status.success(),
        "ro mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(fx.p("via-mount-t")).unwrap(),
        b"written through mount -t"
    );
    assert_errno(
        fs::write(fx.p("nope"), b"x"),
        libc::EROFS,
        "write on a ro mount",
    );
    util_umount(&fx);
    drop(guard);

    // An fstab line (from an alternative fstab file), with the generic
    // options an fstab entry usually carries.
    let fstab = fx.scratch.join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\n{} {} fuse.sealfs passfile={},idle=1h,noauto,nofail,_netdev,x-systemd.device-timeout=5 0 0\n",
            fx.cipher.display(),
            fx.mnt.display(),
            fx.passfile.display()
        ),
    )
    .unwrap();
    let out = util_mount(&["-T".as_ref(), fstab.as_os_str(), fx.mnt.as_os_str()]);
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &log);
    assert!(
        out.status.success(),
        "mount from the fstab line failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mount_entry(&fx.mnt, &fx.cipher).is_some());
    assert_eq!(
        fs::read(fx.p("via-mount-t")).unwrap(),
        b"written through mount -t"
    );
    util_umount(&fx);
    drop(guard);

    // An unknown option is refused with a message naming it, and nothing mounts.
    let opts = format!("passfile={},bogus_opt", fx.passfile.display());
    let out = util_mount(&[
        "-t".as_ref(),
        "fuse.sealfs".as_ref(),
        fx.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "-o".as_ref(),
        opts.as_ref(),
    ]);
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &log);
    assert!(!out.status.success(), "mount with a bogus option succeeded");
    assert!(!is_mounted(&fx.mnt));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown option 'bogus_opt'"), "{err}");
    drop(guard);

    // A wrong passfile: sealfs's own message comes through mount(8).
    let wrong = fx.scratch.join("wrong");
    fs::write(&wrong, "nope\n").unwrap();
    let opts = format!("passfile={}", wrong.display());
    let out = util_mount(&[
        "-t".as_ref(),
        "fuse.sealfs".as_ref(),
        fx.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "-o".as_ref(),
        opts.as_ref(),
    ]);
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &log);
    assert!(!out.status.success());
    assert!(!is_mounted(&fx.mnt));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong passphrase"), "{err}");
    drop(guard);
}

/// Expands a systemd command line: `%i`, `${VAR}` (one word), `$VAR` (split
/// on whitespace; nothing if empty), as systemd.service(5) describes.
fn expand_exec(line: &str, instance: &str, env: &[(&str, String)]) -> Vec<String> {
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for word in line.replace("%i", instance).split_whitespace() {
        if let Some(var) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            out.push(get(var));
        } else if let Some(var) = word.strip_prefix('$') {
            out.extend(get(var).split_whitespace().map(String::from));
        } else {
            out.push(word.to_string());
        }
    }
    out
}

#[test]
fn systemd_unit_verifies_and_its_exec_start_mounts() {
    let unit = fs::read_to_string(contrib("systemd/sealfs@.service")).unwrap();
    let key = |k: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("unit has no {k}="))
            .to_string()
    };
    // A private mount namespace would hide the mount from everyone else.
    for hiding in [
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "ReadWritePaths=",
        "ProtectKernelTunables=",
        "PrivateMounts=",
        "TemporaryFileSystem=",
    ] {
        assert!(
            !unit.lines().any(|l| l.starts_with(hiding)),
            "{hiding} would put the daemon in its own mount namespace"
        );
    }
    assert_eq!(key("Type"), "forking", "the unit must wait for the mount");
    assert_eq!(key("NoNewPrivileges"), "yes");
    assert_eq!(key("KillSignal"), "SIGTERM");

    let fx = Fixture::new();
    let exec = key("ExecStart").replace("/usr/local/bin/sealfs", bin());

    if have_tool("systemd-analyze") {
        // Verified under an instance name, with the binary under test.
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("sealfs@.service"),
            unit.replace("/usr/local/bin/sealfs", bin()),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.path().join("sealfs@vault.service"))
            .output()
            .expect("run systemd-analyze");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "systemd-analyze verify: {err}");
        // It reports unknown keys and bad values as warnings with exit 0.
        assert!(
            !err.contains("sealfs@"),
            "systemd-analyze verify warns: {err}"
        );
    } else {
        println!("systemd-analyze not installed: unit checked by running its ExecStart only");
    }

    // What /etc/sealfs/vault.conf would hold; LogsDirectory=sealfs would
    // make /var/log/sealfs, here a scratch directory stands in for it.
    let env = [
        ("CIPHERDIR", fx.cipher.display().to_string()),
        ("MOUNTPOINT", fx.mnt.display().to_string()),
        (
            "SEALFS_SECRET",
            format!("--passfile {}", fx.passfile.display()),
        ),
        ("SEALFS_OPTIONS", "-o allow_other".to_string()),
    ];
    let logs = fx.scratch.join("logs");
    fs::create_dir(&logs).unwrap();
    let exec = exec.replace("/var/log/sealfs/", &format!("{}/", logs.display()));
    let argv = expand_exec(&exec, "vault", &env);
    assert_eq!(argv[0], bin());
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .expect("run ExecStart");
    // Type=forking: the start command's exit means "ready".
    let mounted_at_exit = is_mounted(&fx.mnt);
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &logs.join("vault.log"));
    assert!(
        out.status.success(),
        "ExecStart {argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        mounted_at_exit,
        "ExecStart returned before the mount was ready"
    );
    let (_, opts) = mount_entry(&fx.mnt, &fx.cipher).unwrap();
    assert!(
        opts.contains("allow_other"),
        "SEALFS_OPTIONS not applied: {opts}"
    );
    fs::write(fx.p("from-unit"), b"unit").unwrap();
    assert!(
        logs.join("vault.log").exists(),
        "no log file in LogsDirectory"
    );

    // systemctl stop: KillSignal to the daemon; it unmounts and exits.
    let pids = sealfs_pids_mentioning(&fx.cipher);
    assert_eq!(pids.len(), 1, "one daemon expected: {pids:?}");
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGTERM) }, 0);
    let start = Instant::now();
    while is_mounted(&fx.mnt) || !sealfs_pids_mentioning(&fx.cipher).is_empty() {
        assert!(
            start.elapsed() < TIMEOUT,
            "SIGTERM did not unmount and stop the daemon"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(guard);
}
