//! Shared fixture for the integration tests: a fresh volume in its own
//! tempdir, mounted through the real `sealfs` binary.
//!
//! The daemon normally runs in the foreground (`-f`) as a child process held
//! by a [`Mounted`] guard, so the guard can always unmount and reap it, even
//! when a test panics. Every helper here panics with a clear message on
//! failure: these are tests.

#![allow(dead_code)]

pub mod vol;

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The passphrase written to every fixture's passfile.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// How long a mount or an unmount may take before the fixture gives up.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The path of the binary under test: `SEALFS_TEST_BIN` if set (to run a
/// test against another build, e.g. the one before a change), else the
/// crate's own.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("SEALFS_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sealfs").into())
    })
}

/// Runs `sealfs ARGS…` to completion and returns its output.
pub fn sealfs(args: &[&OsStr]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the sealfs binary")
}

/// Low KDF costs so that init and mount take milliseconds.
pub const FAST_KDF: [&str; 4] = ["--kdf-memory-kib", "8192", "--kdf-iterations", "1"];

/// `sealfs init CIPHERDIR --passfile PASSFILE` with the fast KDF; panics on failure.
pub fn init_volume(cipher: &Path, passfile: &Path) {
    let mut args: Vec<&OsStr> = vec![
        "init".as_ref(),
        cipher.as_os_str(),
        "--passfile".as_ref(),
        passfile.as_os_str(),
    ];
    args.extend(FAST_KDF.iter().map(|s| OsStr::new(*s)));
    let out = sealfs(&args);
    assert!(
        out.status.success(),
        "sealfs init failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The mount points listed in /proc/mounts, unescaped.
pub fn mount_points() -> Vec<PathBuf> {
    let mounts = fs::read("/proc/mounts").expect("read /proc/mounts");
    mounts
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(1))
        .map(|f| PathBuf::from(OsStr::from_bytes(&unescape_mount_field(f))))
        .collect()
}

/// Whether `mnt` is a mount point according to /proc/mounts.
pub fn is_mounted(mnt: &Path) -> bool {
    mount_points().iter().any(|m| m == mnt)
}

fn unescape_mount_field(f: &[u8]) -> Vec<u8> {
    // /proc/mounts escapes space, tab, newline and backslash as \ooo.
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\' && i + 4 <= f.len() && f[i + 1..i + 4].iter().all(|c| c.is_ascii_digit()) {
            let v = (f[i + 1] - b'0') * 64 + (f[i + 2] - b'0') * 8 + (f[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
}

/// Pids of live (non-zombie) processes, other than this one, whose
/// command line (arguments split at NUL) satisfies `matches`.
pub fn pids_whose_cmdline(mut matches: impl FnMut(&[&[u8]]) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return pids;
    };
    for ent in rd.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(ent.path().join("cmdline")) else {
            continue;
        };
        if pid == me || cmdline.is_empty() {
            continue; // ourselves, a zombie or a kernel thread
        }
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if !matches(&args) {
            continue;
        }
        // A zombie keeps no cmdline, but be explicit about the state too.
        let state = fs::read_to_string(ent.path().join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false);
        if !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// Pids of live (non-zombie) processes whose command line mentions `needle`
/// and whose argv[0] ends in `sealfs`.
pub fn sealfs_pids_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_bytes();
    pids_whose_cmdline(|args| {
        args.first().is_some_and(|a0| a0.ends_with(b"sealfs")) && args[1..].contains(&needle)
    })
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts `mnt` with `fusermount3 -u` (retried briefly, a just-closed file
/// may still be busy), then lazily with `-uz`. Returns whether it is gone.
pub fn force_unmount(mnt: &Path) -> bool {
    for _ in 0..25 {
        if !is_mounted(mnt) {
            return true;
        }
        let ok = Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    wait_until(Duration::from_secs(2), || !is_mounted(mnt))
}

/// A live mount. Dropping it unmounts (falling back to a lazy unmount) and
/// waits, bounded, for the daemon to exit, killing it if it will not.
pub struct Mounted {
    mnt: PathBuf,
    cipher: PathBuf,
    /// The foreground daemon; `None` for a daemonized mount.
    child: Option<Child>,
    log: PathBuf,
    /// The daemon is known to have exited (a mount that failed): nothing
    /// to wait for, even while other daemons serve the same cipher dir.
    exited: bool,
}

impl Mounted {
    /// Starts `sealfs mount CIPHER MNT --passfile PASSFILE -f EXTRA…` and
    /// waits until the mount shows in /proc/mounts.
    pub fn start(cipher: &Path, mnt: &Path, passfile: &Path, extra: &[&str], log: &Path) -> Self {
        Self::start_with_secret(
            cipher,
            mnt,
            &["--passfile".as_ref(), passfile.as_os_str()],
            extra,
            log,
        )
    }

    /// Like [`Mounted::start`], with the unlock arguments given explicitly
    /// (e.g. `--key-file FILE`).
    pub fn start_with_secret(
        cipher: &Path,
        mnt: &Path,
        secret: &[&OsStr],
        extra: &[&str],
        log: &Path,
    ) -> Self {
        Self::try_start(cipher, mnt, secret, extra, log).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Mounted::start_with_secret`], with extra environment
    /// variables for the daemon (e.g. `SEALFS_TEST_KILL_POINT`).
    pub fn start_env(
        cipher: &Path,
        mnt: &Path,
        secret: &[&OsStr],
        extra: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Self {
        Self::try_start_env(cipher, mnt, secret, extra, env, log).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Mounted::start_with_secret`], for a mount that may fail: the
    /// daemon's exit status and log when it exits before the mount is
    /// ready (a timeout still tears down what it started).
    pub fn try_start(
        cipher: &Path,
        mnt: &Path,
        secret: &[&OsStr],
        extra: &[&str],
        log: &Path,
    ) -> Result<Self, String> {
        Self::try_start_env(cipher, mnt, secret, extra, &[], log)
    }

    fn try_start_env(
        cipher: &Path,
        mnt: &Path,
        secret: &[&OsStr],
        extra: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Self, String> {
        let logf = fs::File::create(log).expect("create daemon log");
        let child = Command::new(bin())
            .arg("mount")
            .arg(cipher)
            .arg(mnt)
            .args(secret)
            .arg("-f")
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .expect("spawn sealfs mount -f");
        let mut m = Mounted {
            mnt: mnt.to_path_buf(),
            cipher: cipher.to_path_buf(),
            child: Some(child),
            log: log.to_path_buf(),
            exited: false,
        };
        let start = Instant::now();
        loop {
            if is_mounted(mnt) {
                return Ok(m);
            }
            if let Some(st) = m.child.as_mut().unwrap().try_wait().expect("try_wait") {
                m.child = None;
                m.exited = true;
                return Err(format!(
                    "sealfs mount -f exited ({st}) before the mount was ready; log:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                ));
            }
            if start.elapsed() > TIMEOUT {
                // Drop unmounts/kills.
                let msg = fs::read_to_string(log).unwrap_or_default();
                drop(m);
                panic!("mount did not appear within {TIMEOUT:?}; log:\n{msg}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Adopts a mount made by a daemonized `sealfs mount` (no `-f`).
    pub fn adopt_daemon(cipher: &Path, mnt: &Path, log: &Path) -> Self {
        Mounted {
            mnt: mnt.to_path_buf(),
            cipher: cipher.to_path_buf(),
            child: None,
            log: log.to_path_buf(),
            exited: false,
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mnt
    }

    /// The foreground daemon's pid (`None` for an adopted daemonized mount).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the foreground daemon is still running (true for an adopted
    /// mount whose daemon is still found in /proc).
    pub fn daemon_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => !sealfs_pids_mentioning(&self.cipher).is_empty(),
        }
    }

    /// Simulates a crash: SIGKILLs the foreground daemon, reaps it, and
    /// detaches the dead mount with `fusermount3 -uz`. Panics if the mount
    /// does not go away.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("kill9 needs a foreground daemon");
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        self.exited = true;
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            wait_until(TIMEOUT, || !is_mounted(&self.mnt)),
            "dead mount {} did not go away after fusermount3 -uz",
            self.mnt.display()
        );
        // Drop finds nothing left to do.
    }

    /// The daemon's log so far (stderr of the foreground daemon).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts and waits for the daemon; panics if either fails.
    pub fn unmount(mut self) {
        let (unmounted, exited) = self.teardown();
        assert!(unmounted, "could not unmount {}", self.mnt.display());
        assert!(
            exited,
            "the sealfs daemon for {} did not exit within {TIMEOUT:?} after unmount",
            self.cipher.display()
        );
    }

    /// Returns (mount gone, daemon gone). Idempotent.
    fn teardown(&mut self) -> (bool, bool) {
        let unmounted = force_unmount(&self.mnt);
        let exited = match self.child.take() {
            Some(mut child) => {
                let done = wait_until(TIMEOUT, || matches!(child.try_wait(), Ok(Some(_))));
                if !done {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                self.exited = true;
                done
            }
            None if self.exited => true,
            None => {
                let done = wait_until(TIMEOUT, || sealfs_pids_mentioning(&self.cipher).is_empty());
                if !done {
                    // Our own daemon, found by its exact cipherdir argument.
                    for pid in sealfs_pids_mentioning(&self.cipher) {
                        // SAFETY: plain kill(2) of a pid we started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                done
            }
        };
        (unmounted, exited)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let (unmounted, exited) = self.teardown();
        if !std::thread::panicking() {
            assert!(unmounted, "could not unmount {}", self.mnt.display());
            assert!(exited, "daemon for {} did not exit", self.cipher.display());
        }
    }
}

/// A volume in its own tempdir: `root/cipher`, `root/mnt`, `root/passfile`.
/// Field order matters: the mount is dropped before the tempdir.
pub struct Fixture {
    pub mounted: Option<Mounted>,
    pub cipher: PathBuf,
    pub mnt: PathBuf,
    pub passfile: PathBuf,
    /// A control socket path of this fixture's own (`mount_ctl` passes it
    /// with `--ctl-socket`), so tests never share a socket.
    pub ctl_socket: PathBuf,
    /// Scratch space outside the volume.
    pub scratch: PathBuf,
    logs: u32,
    pub root: tempfile::TempDir,
}

impl Fixture {
    /// A fresh, initialised, unmounted volume.
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("sealfs-it.")
            .tempdir()
            .expect("tempdir");
        let base = root.path().canonicalize().expect("canonicalize tempdir");
        let cipher = base.join("cipher");
        let mnt = base.join("mnt");
        let passfile = base.join("passfile");
        let scratch = base.join("scratch");
        fs::create_dir(&mnt).unwrap();
        fs::create_dir(&scratch).unwrap();
        fs::write(&passfile, format!("{PASSPHRASE}\n")).unwrap();
        init_volume(&cipher, &passfile);
        Fixture {
            mounted: None,
            ctl_socket: base.join("ctl.sock"),
            cipher,
            mnt,
            passfile,
            scratch,
            logs: 0,
            root,
        }
    }

    /// A fresh volume, mounted read-write.
    pub fn mounted() -> Self {
        let mut f = Self::new();
        f.mount();
        f
    }

    fn next_log(&mut self) -> PathBuf {
        self.logs += 1;
        self.root.path().join(format!("daemon.{}.log", self.logs))
    }

    /// Mounts (foreground daemon) with extra mount arguments.
    pub fn mount_with(&mut self, extra: &[&str]) {
        assert!(self.mounted.is_none(), "already mounted");
        let log = self.next_log();
        self.mounted = Some(Mounted::start(
            &self.cipher,
            &self.mnt,
            &self.passfile,
            extra,
            &log,
        ));
    }

    pub fn mount(&mut self) {
        self.mount_with(&[]);
    }

    /// `sealfs ctl --socket <the fixture's socket> ARGS…`, run to completion.
    pub fn ctl_output(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&self.ctl_socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// [`Fixture::ctl_output`] that must succeed; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args);
        assert!(
            out.status.success(),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sealfs fsck CIPHERDIR --json EXTRA…` offline: its exit code and
    /// report (`Null` if it printed none).
    /// `sealfs fsck` of the unmounted volume must find nothing.
    #[track_caller]
    pub fn assert_fsck_clean(&self, what: &str) {
        let out = sealfs(&[
            "fsck".as_ref(),
            self.cipher.as_os_str(),
            "--passfile".as_ref(),
            self.passfile.as_os_str(),
        ]);
        assert!(
            out.status.success(),
            "{what}: fsck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn fsck_json(&self, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
        let mut args: Vec<&OsStr> = vec![
            "fsck".as_ref(),
            self.cipher.as_os_str(),
            "--passfile".as_ref(),
            self.passfile.as_os_str(),
            "--json".as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let out = sealfs(&args);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.code(), v)
    }

    /// Mounts with the fixture's own control socket (`--ctl-socket`) and extra arguments.
    pub fn mount_ctl_with(&mut self, extra: &[&str]) {
        let sock = self
            .ctl_socket
            .to_str()
            .expect("UTF-8 socket path")
            .to_string();
        let mut all: Vec<&str> = vec!["--ctl-socket", &sock];
        all.extend_from_slice(extra);
        self.mount_with(&all);
        self.wait_ctl_socket();
    }

    /// Waits until the control socket accepts connections: a foreground
    /// daemon shows in /proc/mounts a moment before it binds the socket (and
    /// a crashed daemon's stale socket file refuses connections).
    pub fn wait_ctl_socket(&self) {
        let sock = &self.ctl_socket;
        assert!(
            wait_until(TIMEOUT, || std::os::unix::net::UnixStream::connect(sock)
                .is_ok()),
            "control socket {} not ready within {TIMEOUT:?}; log:\n{}",
            sock.display(),
            self.log()
        );
    }

    /// Mounts with the fixture's own control socket.
    pub fn mount_ctl(&mut self) {
        self.mount_ctl_with(&[]);
    }

    /// Mounts with explicit unlock arguments (e.g. `--key-file F`) and the
    /// fixture's own control socket.
    pub fn mount_with_secret(&mut self, secret: &[&OsStr]) {
        assert!(self.mounted.is_none(), "already mounted");
        let log = self.next_log();
        let sock = self
            .ctl_socket
            .to_str()
            .expect("UTF-8 socket path")
            .to_string();
        self.mounted = Some(Mounted::start_with_secret(
            &self.cipher,
            &self.mnt,
            secret,
            &["--ctl-socket", &sock],
            &log,
        ));
        self.wait_ctl_socket();
    }

    /// Unmounts and mounts again with the fixture's own control socket.
    pub fn remount_ctl(&mut self) {
        self.unmount();
        self.mount_ctl();
    }

    /// SIGKILLs the daemon of the current mount and detaches the dead mount.
    pub fn kill_daemon(&mut self) {
        self.mounted.take().expect("not mounted").kill9();
    }

    /// Whether the current mount's daemon is still running.
    pub fn daemon_alive(&mut self) -> bool {
        self.mounted
            .as_mut()
            .map(|m| m.daemon_alive())
            .unwrap_or(false)
    }

    /// Unmounts; panics if the mount or daemon does not go away.
    pub fn unmount(&mut self) {
        if let Some(m) = self.mounted.take() {
            m.unmount();
        }
    }

    /// Unmounts and mounts again (read-write), dropping every kernel cache.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// A path inside the mounted plaintext view.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The daemon's log of the current mount.
    pub fn log(&self) -> String {
        self.mounted.as_ref().map(|m| m.log()).unwrap_or_default()
    }

    /// The log of the most recent mount, also after it ended (a killed
    /// daemon's last words).
    pub fn last_log(&self) -> String {
        fs::read_to_string(self.root.path().join(format!("daemon.{}.log", self.logs)))
            .unwrap_or_default()
    }

    /// Every path under the cipherdir (relative), sorted.
    pub fn cipher_listing(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.cipher, &mut |p, _| {
            out.push(p.strip_prefix(&self.cipher).unwrap().to_path_buf())
        });
        out.sort();
        out
    }

    /// Runs `f` and returns the new regular backing files it made in the
    /// cipherdir that hold content (not `.name` sidecars, not sealfs.* records).
    pub fn new_backing_files(&mut self, f: impl FnOnce(&Self)) -> Vec<PathBuf> {
        let before: std::collections::BTreeSet<_> = self.cipher_listing().into_iter().collect();
        f(self);
        self.cipher_listing()
            .into_iter()
            .filter(|p| !before.contains(p))
            .map(|p| self.cipher.join(p))
            .filter(|p| {
                let md = fs::symlink_metadata(p).unwrap();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                md.file_type().is_file()
                    && !name.ends_with(".name")
                    && !name.starts_with("sealfs.dir")
            })
            .collect()
    }

    /// A stable digest of every name, type, mode and content in the cipherdir.
    pub fn cipher_digest(&self) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let audit = self.cipher.join("sealfs.audit");
        walk(&self.cipher, &mut |p, md| {
            // The audit log grows with every key use, reads included.
            if p.starts_with(&audit) {
                return;
            }
            use std::os::unix::fs::MetadataExt;
            let content = if md.file_type().is_file() {
                fs::read(p).unwrap()
            } else if md.file_type().is_symlink() {
                fs::read_link(p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            out.insert(
                p.strip_prefix(&self.cipher).unwrap().to_path_buf(),
                (md.mode(), content),
            );
        });
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.as_ref() {
            if std::thread::panicking() {
                eprintln!("--- sealfs daemon log ---\n{}\n---", m.log());
            }
        }
    }
}

/// Depth-first walk calling `f(path, metadata)` for every entry (not following symlinks).
pub fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let md = fs::symlink_metadata(&p).unwrap();
        f(&p, &md);
        if md.is_dir() {
            walk(&p, f);
        }
    }
}

/// A deterministic xorshift64* generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// A C string from a path.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// The errno of the last failed libc call.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Asserts that an io::Result failed with `code`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, code: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected errno {code}, got success {v:?}"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(code),
            "{what}: expected errno {code} ({}), got {e}",
            io::Error::from_raw_os_error(code)
        ),
    }
}

/// [`assert_errno`] for EIO, for results that need not be `Debug`.
#[track_caller]
pub fn assert_eio<T>(r: io::Result<T>, what: &str) {
    match r {
        Ok(_) => panic!("{what}: expected EIO, but it succeeded"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}"),
    }
}

/// Damages the byte at `off` of `path` (a backing file): XORs it with
/// `mask` (not zero, so it always changes).
pub fn xor_byte(path: &Path, off: u64, mask: u8) {
    use std::os::unix::fs::FileExt;
    assert_ne!(mask, 0);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, off).unwrap();
}

/// Reads up to `len` bytes at `off` of `path` (through the mount) with
/// pread, until the end of the file.
pub fn pread(path: &Path, off: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

impl Fixture {
    /// Starts a daemon that stops dead at the kill point `point`
    /// (`SEALFS_TEST_KILL_POINT`), runs `op` on the mount point, waits
    /// until the daemon has died there and detaches the dead mount.
    pub fn run_to_kill_point(&mut self, point: &str, what: &str, op: impl FnOnce(&Path)) {
        assert!(self.mounted.is_none(), "already mounted");
        let log = self.root.path().join(format!("kill-{point}.log"));
        let mut m = Mounted::start_env(
            &self.cipher,
            &self.mnt,
            &["--passfile".as_ref(), self.passfile.as_os_str()],
            &[],
            &[("SEALFS_TEST_KILL_POINT", point)],
            &log,
        );
        op(&self.mnt);
        // Generous: a loaded machine may take a while to get there.
        assert!(
            wait_until(Duration::from_secs(30), || !m.daemon_alive()),
            "{what}: the daemon did not reach its kill point"
        );
        m.kill9();
    }

    /// The mounted daemon's `integrity_failure` audit records for `path`
    /// (a mount made with `mount_ctl`).
    pub fn integrity_records(&self, path: &str) -> Vec<serde_json::Value> {
        let o = Command::new(bin())
            .args(["ctl", "--socket"])
            .arg(&self.ctl_socket)
            .args([
                "--json",
                "audit",
                "export",
                "--op",
                "integrity_failure",
                "--path-prefix",
                path,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .filter(|r: &serde_json::Value| r["path"] == path)
            .collect()
    }

    /// Creates `rel` with `data` through the mount and returns its single
    /// new backing file.
    pub fn create_tracked(&mut self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.p(rel);
        let new = self.new_backing_files(|_| fs::write(&p, data).unwrap());
        assert_eq!(
            new.len(),
            1,
            "expected one new backing file for {rel}, got {new:?}"
        );
        new.into_iter().next().unwrap()
    }
}

/// Whether a program is on PATH.
/// The ctl arguments `grant create --grantee G --ops OPS --path-prefix P`.
pub fn grant_create_args<'a>(grantee: &'a str, ops: &'a str, prefix: &'a str) -> Vec<&'a str> {
    vec![
        "grant",
        "create",
        "--grantee",
        grantee,
        "--ops",
        ops,
        "--path-prefix",
        prefix,
    ]
}

/// `sealfs ctl --socket SOCK --json ARGS…` (no stdin): its output.
pub fn ctl_json_output(sock: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("ctl")
        .arg("--socket")
        .arg(sock)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// [`ctl_json_output`], which must succeed (`who` names the caller in the
/// failure): the parsed JSON.
#[track_caller]
pub fn ctl_json(sock: &Path, who: &str, args: &[&str]) -> serde_json::Value {
    let o = ctl_json_output(sock, args);
    assert!(
        o.status.success(),
        "{who}: ctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON")
}

pub fn have_tool(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command, panicking with its output if it fails; returns stdout.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `sealfs mount CIPHER MNT ARGS…` (daemonizing) when it is expected to
/// fail, and returns its output. If it mounted after all, the mount is torn
/// down before panicking, so no mount leaks.
#[track_caller]
pub fn mount_expect_failure(cipher: &Path, mnt: &Path, args: &[&OsStr]) -> Output {
    let mut all: Vec<&OsStr> = vec!["mount".as_ref(), cipher.as_os_str(), mnt.as_os_str()];
    all.extend_from_slice(args);
    let out = sealfs(&all);
    if is_mounted(mnt) {
        drop(Mounted::adopt_daemon(cipher, mnt, Path::new("/dev/null")));
        panic!(
            "sealfs mount unexpectedly succeeded ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A size-limited tmpfs mounted on a directory (a small backing disk for
/// the full-disk tests); unmounted on drop, lazily if still busy.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Self {
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0700"))
                .arg("sealfs-test-tmpfs")
                .arg(dir),
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(&self.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !quiet(&[]) {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if !quiet(&[]) {
                quiet(&["-l"]);
            }
        }
    }
}

/// The seed of a crash harness: `SEALFS_CRASH_SEED` (a replay), else the
/// clock.
pub fn crash_seed() -> u64 {
    match std::env::var("SEALFS_CRASH_SEED") {
        Ok(s) => s.parse().expect("SEALFS_CRASH_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Runs `args` as `uid` (gid = uid, no supplementary groups) with
/// `setpriv`: another local user without an account.
pub fn as_user(uid: u32, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv")
}
