//! fstab and systemd integration, for real: the binary is installed as
//! its own mount helper `/sbin/mount.fuse.sealfs` (removed again, or the
//! previous file restored, when the test ends) and util-linux `mount -t fuse.sealfs`
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

/// The binary under test installed as [`HELPER`] (a symbolic link, as
/// `contrib/install.sh` makes it: the binary is its own mount helper by
/// the name it is run under) while alive; what was there before comes
/// back after.
struct InstalledHelper {
    previous: Option<PathBuf>,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl InstalledHelper {
    fn install() -> Self {
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let lock = ONE.lock().unwrap_or_else(|p| p.into_inner());
        let saved = PathBuf::from(format!("{HELPER}.sealfs-test-saved.{}", std::process::id()));
        let previous = fs::symlink_metadata(HELPER)
            .is_ok()
            .then(|| fs::rename(HELPER, &saved).map(|()| saved.clone()).ok())
            .flatten();
        let tmp = format!("{HELPER}.sealfs-test.{}", std::process::id());
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(bin(), &tmp).expect("link the helper into /sbin");
        fs::rename(&tmp, HELPER).expect("install the helper");
        InstalledHelper {
            previous,
            _one_at_a_time: lock,
        }
    }
}

impl Drop for InstalledHelper {
    fn drop(&mut self) {
        let _ = fs::remove_file(HELPER);
        if let Some(saved) = &self.previous {
            let _ = fs::rename(saved, HELPER);
        }
    }
}

/// The /proc/mounts line for `mnt`: (fstype, options), after checking that
/// it is a FUSE mount of `cipher` (the source field is the cipher dir).
/// The type is `fuse.sealfs` (`findmnt -t fuse.sealfs` finds it).
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
    assert_eq!(entry.1, "fuse.sealfs", "the type in /proc/mounts");
    Some((entry.1, entry.2))
}

/// Runs util-linux `mount ARGS…` with the helper pointed at the binary under test.
fn util_mount(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("mount")
        .args(args)
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

/// A script under the mount, executable by its mode.
fn script_runs(fx: &Fixture) -> bool {
    let script = fx.p("s.sh");
    if !script.exists() {
        fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    }
    Command::new(&script)
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"ran\n")
}

/// `findmnt -t fuse.sealfs` lists `mnt`.
fn findmnt_lists(mnt: &Path) -> bool {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "TARGET", "-t", "fuse.sealfs"])
        .output()
        .expect("run findmnt");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| Path::new(l.trim()) == mnt)
}

/// Issue 21.5: the kernel's generic options pass through both entry
/// points (`sealfs mount -o` and `mount -t fuse.sealfs`); `noexec` is
/// honoured; the type is `fuse.sealfs`; unknown options are refused.
#[test]
fn generic_mount_options_pass_through_both_entry_points() {
    let mut fx = Fixture::new();
    // Without noexec, a script runs (the baseline) and findmnt finds it.
    fx.mount();
    assert!(findmnt_lists(&fx.mnt), "findmnt -t fuse.sealfs");
    assert!(script_runs(&fx), "a script on a plain mount must run");
    fx.unmount();

    // sealfs mount -o
    fx.mount_with(&["-o", "noexec,noatime,nodiratime,nosuid,nodev"]);
    let (_, opts) = mount_entry(&fx.mnt, &fx.cipher).unwrap();
    for o in ["noexec", "noatime", "nodiratime", "nosuid", "nodev"] {
        assert!(opts.split(',').any(|x| x == o), "{o} missing: {opts}");
    }
    assert!(!script_runs(&fx), "a script ran under -o noexec");
    fx.unmount();

    // Refused: unknown, and suid (always nosuid).
    for (bad, says) in [
        ("noatime,bogus", "unknown mount option 'bogus'"),
        ("suid", "nosuid"),
    ] {
        let out = sealfs(&[
            "mount".as_ref(),
            fx.cipher.as_os_str(),
            fx.mnt.as_os_str(),
            "--passfile".as_ref(),
            fx.passfile.as_os_str(),
            "-o".as_ref(),
            bad.as_ref(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{bad}: {err}");
        assert!(!is_mounted(&fx.mnt));
    }

    // mount -t fuse.sealfs through the helper.
    let _helper = InstalledHelper::install();
    let opts = format!("passfile={},noexec,noatime,nofail", fx.passfile.display());
    let out = util_mount(&[
        "-t".as_ref(),
        "fuse.sealfs".as_ref(),
        fx.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "-o".as_ref(),
        opts.as_ref(),
    ]);
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &fx.scratch.join("none"));
    assert!(
        out.status.success(),
        "mount -t fuse.sealfs -o noexec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, opts) = mount_entry(&fx.mnt, &fx.cipher).unwrap();
    assert!(
        opts.contains("noexec") && opts.contains("noatime"),
        "{opts}"
    );
    assert!(findmnt_lists(&fx.mnt));
    assert!(!script_runs(&fx), "a script ran under mount -o noexec");
    util_umount(&fx);
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

/// The unit's `KEY=` value.
fn unit_key(unit: &str, k: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{k}=")))
        .unwrap_or_else(|| panic!("unit has no {k}="))
        .to_string()
}

/// What systemd would apply that `setpriv`/`prlimit` can emulate: the
/// capability bounding set, no new privileges, the memlock limit.
#[derive(Debug)]
struct Sandbox {
    /// `CAP_…` names kept in the bounding set.
    caps: Vec<String>,
    /// `LimitMEMLOCK=` in prlimit's spelling (`unlimited` or bytes).
    memlock: String,
    no_new_privs: bool,
}

impl Sandbox {
    fn of_unit(unit: &str) -> Self {
        let memlock = match unit_key(unit, "LimitMEMLOCK").as_str() {
            "infinity" => "unlimited".to_string(),
            v => v.to_string(),
        };
        Sandbox {
            caps: unit_key(unit, "CapabilityBoundingSet")
                .split_whitespace()
                .map(String::from)
                .collect(),
            memlock,
            no_new_privs: unit_key(unit, "NoNewPrivileges") == "yes",
        }
    }

    /// `prlimit … setpriv … argv…` (the limit first: raising it needs
    /// CAP_SYS_RESOURCE, which the bounding set takes away, as systemd
    /// sets limits before it drops capabilities).
    fn command(&self, argv: &[String]) -> Command {
        let bounding: Vec<String> = std::iter::once("-all".to_string())
            .chain(
                self.caps
                    .iter()
                    .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())),
            )
            .collect();
        let limit = format!("--memlock={0}:{0}", self.memlock);
        // Raising a limit needs CAP_SYS_RESOURCE, which a container may
        // lack: then the limit in force stands in (CAP_IPC_LOCK decides).
        let can = Command::new("prlimit")
            .args([&limit, "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !can {
            println!("cannot set {limit} here: running under the limit in force");
        }
        let mut c = Command::new(if can { "prlimit" } else { "env" });
        if can {
            c.arg(limit).arg("--");
        }
        c.arg("setpriv");
        if self.no_new_privs {
            c.arg("--no-new-privs");
        }
        c.arg(format!("--bounding-set={}", bounding.join(",")))
            .arg("--inh-caps=-all")
            .args(argv);
        c
    }
}

/// Runs the unit's ExecStart under `sandbox` with `NOTIFY_SOCKET` set,
/// waits for `READY=1`, checks the mount is there at that moment, then
/// stops it as `systemctl stop` would (SIGTERM). Returns the daemon's
/// stderr (the journal).
fn start_as_unit(fx: &Fixture, argv: &[String], sandbox: &Sandbox) -> String {
    let notify = fx.scratch.join("notify.sock");
    let _ = fs::remove_file(&notify);
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let journal = fx.scratch.join("journal");
    let mut child = sandbox
        .command(argv)
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stderr(fs::File::create(&journal).unwrap())
        .spawn()
        .expect("run ExecStart under setpriv/prlimit");
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &journal);
    let mut buf = [0u8; 4096];
    let got = sock.recv(&mut buf);
    let mounted_when_ready = is_mounted(&fx.mnt);
    let msg = got
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        .unwrap_or_else(|e| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no READY=1 within {TIMEOUT:?} ({e}); journal:\n{}",
                fs::read_to_string(&journal).unwrap_or_default()
            )
        });
    assert!(msg.lines().any(|l| l == "READY=1"), "notification: {msg:?}");
    assert!(mounted_when_ready, "READY=1 before the mount was in place");
    fs::write(fx.p("from-unit"), b"unit").unwrap();
    assert_eq!(fs::read(fx.p("from-unit")).unwrap(), b"unit");
    // systemctl stop: KillSignal to the main process.
    // SAFETY: signalling a process this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(
        wait_until(TIMEOUT, || matches!(child.try_wait(), Ok(Some(_)))),
        "SIGTERM did not stop the daemon"
    );
    let st = child.wait().unwrap();
    assert!(!is_mounted(&fx.mnt), "SIGTERM did not unmount");
    drop(guard);
    let journal = fs::read_to_string(&journal).unwrap_or_default();
    assert!(st.success(), "daemon exit {st}; journal:\n{journal}");
    journal
}

#[test]
fn systemd_unit_verifies_and_its_exec_start_mounts() {
    let unit = fs::read_to_string(contrib("systemd/sealfs@.service")).unwrap();
    let key = |k: &str| unit_key(&unit, k);
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
    assert_eq!(key("Type"), "notify", "READY=1 once mounted");
    assert_eq!(key("NotifyAccess"), "main");
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

    // What /etc/sealfs/vault.conf would hold.
    let env = [
        ("CIPHERDIR", fx.cipher.display().to_string()),
        ("MOUNTPOINT", fx.mnt.display().to_string()),
        (
            "SEALFS_SECRET",
            format!("--passfile {}", fx.passfile.display()),
        ),
        ("SEALFS_OPTIONS", "-o allow_other".to_string()),
    ];
    let argv = expand_exec(&exec, "vault", &env);
    assert_eq!(argv[0], bin());
    assert!(
        argv.iter().any(|a| a == "--foreground" || a == "-f"),
        "Type=notify: the daemon must stay the main process: {argv:?}"
    );

    // As the unit runs it: its capabilities and LimitMEMLOCK. Memory locked.
    let sandbox = Sandbox::of_unit(&unit);
    assert!(
        sandbox.caps.iter().any(|c| c == "CAP_IPC_LOCK"),
        "{sandbox:?}"
    );
    assert_eq!(sandbox.memlock, "unlimited");
    let journal = start_as_unit(&fx, &argv, &sandbox);
    assert!(
        !journal.contains("memory not locked"),
        "under the unit's limits memory must be locked: {journal}"
    );

    // As systemd's defaults would (no CAP_IPC_LOCK, LimitMEMLOCK 8 MiB): it
    // still mounts, and warns instead of dying in its first allocation.
    let strict = Sandbox {
        caps: sandbox
            .caps
            .iter()
            .filter(|c| *c != "CAP_IPC_LOCK")
            .cloned()
            .collect(),
        memlock: (8 << 20).to_string(),
        no_new_privs: true,
    };
    let journal = start_as_unit(&fx, &argv, &strict);
    assert!(
        journal.contains("memory not locked") && journal.contains("CAP_IPC_LOCK"),
        "no warning about the unlocked memory: {journal}"
    );
    // The mount made with the right to lock is readable after all that.
    let mut fx = fx;
    fx.mount();
    assert_eq!(fs::read(fx.p("from-unit")).unwrap(), b"unit");
    fx.unmount();
}

/// A daemonized `sealfs mount` under systemd's default limits for a root
/// service without `CAP_IPC_LOCK` (the old daemon called mlockall because
/// it ran as root, then died in its first allocation past 8 MiB with the
/// kernel mount in place), and a daemon that dies right after the kernel
/// mount: both leave no mount behind and a usable mount point.
#[test]
fn a_failed_start_leaves_no_dead_mount() {
    let fx = Fixture::new();
    let pass = fx.passfile.display().to_string();
    let argv: Vec<String> = [
        bin(),
        "mount",
        fx.cipher.to_str().unwrap(),
        fx.mnt.to_str().unwrap(),
        "--passfile",
        &pass,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let strict = Sandbox {
        caps: vec!["CAP_SYS_ADMIN".into(), "CAP_DAC_OVERRIDE".into()],
        memlock: (8 << 20).to_string(),
        no_new_privs: false,
    };
    let out = strict.command(&argv).stdin(Stdio::null()).output().unwrap();
    let guard = Mounted::adopt_daemon(&fx.cipher, &fx.mnt, &fx.scratch.join("none"));
    assert!(
        out.status.success(),
        "mount without CAP_IPC_LOCK under an 8 MiB memlock limit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(fx.p("f"), b"x").unwrap();
    drop(guard);
    assert!(!is_mounted(&fx.mnt));

    // Killed right after the kernel mount (a crash the daemon cannot report).
    let out = Command::new(bin())
        .args(&argv[1..])
        .env("SEALFS_TEST_KILL_POINT", "mounted")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        wait_until(TIMEOUT, || !is_mounted(&fx.mnt)),
        "a dead mount was left behind: {err}"
    );
    assert!(err.contains("undone"), "{err}");
    let errors = err
        .lines()
        .filter(|l| l.starts_with("sealfs: ") && !l.starts_with("sealfs: warning"))
        .count();
    assert_eq!(errors, 1, "printed once: {err}");
    fs::read_dir(&fx.mnt).expect("the mount point works again");
    // And the next mount works.
    let mut fx = fx;
    fx.mount();
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"x");
    fx.unmount();
}
