//! Other local users are hostile (issue 16, findings 4, 5 and 9), on a real
//! mount with `-o allow_other`:
//! * 45 idle (and then trickling) connections of uid 65534 leave the
//!   owner's `ctl status` and `grant revoke` working at once; the stranger
//!   gets 4 slots, and loses them when no request line completes in 10 s;
//! * 100,000 denied socket requests and 100,000 denied FUSE lookups of
//!   uid 65534 grow the fail-closed audit log by a bounded amount, every
//!   denial is still counted (summaries and metrics), and the owner keeps
//!   working;
//! * a fake daemon on the socket path a client computes is refused by
//!   `sealfs ctl` (it checks the server's SO_PEERCRED uid);
//! * a process that gets the pid of a process with a `gid:` grant does not
//!   inherit its groups from the requester cache;
//! * the default socket directory is private.
//!
//! The hostile users are child processes that fork and set their uid with
//! raw system calls (no allocation after fork), or `setpriv`.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, grant_create_args, Fixture};
use serde_json::Value;

const NOBODY: u32 = 65534;
const GRANTEE: u32 = 1001;

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

// ------------------------------------------------------------ hostile children

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just returned by pipe2.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A `sockaddr_un` for `path`, built before a fork.
fn sockaddr(path: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_os_str().as_bytes();
    assert!(b.len() < a.sun_path.len());
    for (d, s) in a.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    (
        a,
        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
    )
}

/// A child process running as another user; its output pipe, and a pipe
/// whose closing tells it to end.
struct Stranger {
    pid: libc::pid_t,
    out: Option<fs::File>,
    release: Option<OwnedFd>,
}

/// Forks a child that drops to `uid`/`gid` (no supplementary groups
/// unless `groups`) and runs `body(out, release)`: it must only make
/// system calls (no allocation, no locks) and return an exit code.
fn spawn_as(uid: u32, groups: &[libc::gid_t], body: impl FnOnce(i32, i32) -> i32) -> Stranger {
    let (out_r, out_w) = pipe();
    let (rel_r, rel_w) = pipe();
    // SAFETY: the child only makes async-signal-safe system calls and
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: raw system calls in the child.
        unsafe {
            // Keep only our two pipe ends (as fds 3 and 4) and stdio: the
            // parent's other fds (its ends of these pipes, and pipes other
            // test threads made meanwhile) must not stay open here.
            let out = libc::fcntl(out_w.as_raw_fd(), libc::F_DUPFD, 1000);
            let rel = libc::fcntl(rel_r.as_raw_fd(), libc::F_DUPFD, 1000);
            if out < 0
                || rel < 0
                || libc::dup2(out, 3) != 3
                || libc::dup2(rel, 4) != 4
                || libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) != 0
            {
                libc::_exit(101);
            }
            let ok = libc::setgroups(groups.len(), groups.as_ptr()) == 0
                && libc::setresgid(uid, uid, uid) == 0
                && libc::setresuid(uid, uid, uid) == 0;
            if !ok {
                libc::_exit(100);
            }
            let code = body(3, 4);
            libc::_exit(code);
        }
    }
    drop(out_w);
    drop(rel_r);
    Stranger {
        pid,
        out: Some(fs::File::from(out_r)),
        release: Some(rel_w),
    }
}

impl Stranger {
    /// Reads exactly `n` bytes of the child's output.
    fn read(&mut self, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut b = vec![0; n];
        self.out.as_mut().unwrap().read_exact(&mut b).unwrap();
        b
    }

    fn read_u64(&mut self) -> u64 {
        u64::from_le_bytes(self.read(8).try_into().unwrap())
    }

    /// Tells the child to end and waits for it: its exit code and the rest
    /// of its output.
    fn finish(mut self) -> (i32, Vec<u8>) {
        use std::io::Read;
        self.release.take();
        let mut rest = Vec::new();
        let _ = self.out.take().unwrap().read_to_end(&mut rest);
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        (libc::WEXITSTATUS(status), rest)
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        if self.out.is_some() {
            // SAFETY: our own child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let mut status = 0;
            // SAFETY: our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

/// In a child: writes `v` to `fd`.
fn put_u64(fd: i32, v: u64) {
    let b = v.to_le_bytes();
    // SAFETY: a valid buffer.
    unsafe { libc::write(fd, b.as_ptr().cast(), 8) };
}

/// In a child: connects a new socket to `addr`; -1 on failure.
fn connect(addr: &(libc::sockaddr_un, libc::socklen_t)) -> i32 {
    // SAFETY: raw socket calls with valid arguments.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return -1;
        }
        if libc::connect(fd, (&addr.0 as *const libc::sockaddr_un).cast(), addr.1) != 0 {
            libc::close(fd);
            return -1;
        }
        fd
    }
}

/// In a child: reads from `fd` into `buf` until a newline or `buf` is
/// full; the bytes read (0 on EOF or timeout).
fn read_line_raw(fd: i32, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        // SAFETY: reads into the rest of `buf`.
        let r = unsafe { libc::read(fd, buf[n..].as_mut_ptr().cast(), buf.len() - n) };
        if r <= 0 {
            break;
        }
        let got = r as usize;
        let done = buf[n..n + got].contains(&b'\n');
        n += got;
        if done {
            break;
        }
    }
    n
}

/// In a child: waits until the parent closes `release`.
fn wait_release(release: i32) {
    let mut b = [0u8; 1];
    // SAFETY: a valid buffer.
    unsafe { libc::read(release, b.as_mut_ptr().cast(), 1) };
}

/// One request on a new connection as `uid`: the first response line.
fn probe_as(uid: u32, socket: &Path, request: &'static [u8]) -> String {
    let addr = sockaddr(socket);
    let child = spawn_as(uid, &[], move |out, _| {
        let fd = connect(&addr);
        if fd < 0 {
            return 1;
        }
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        let mut buf = [0u8; 1024];
        // SAFETY: raw socket calls with valid buffers.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            libc::send(
                fd,
                request.as_ptr().cast(),
                request.len(),
                libc::MSG_NOSIGNAL,
            );
        }
        let n = read_line_raw(fd, &mut buf);
        // SAFETY: a valid buffer.
        unsafe { libc::write(out, buf.as_ptr().cast(), n) };
        0
    });
    let (code, out) = child.finish();
    assert_eq!(code, 0, "probe as uid {uid} could not connect");
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------------------ the owner's side

fn shared() -> Fixture {
    let mut f = Fixture::new();
    fs::set_permissions(f.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    f.mount_ctl_with(&["-o", "allow_other"]);
    fs::create_dir_all(f.p("projects/x")).unwrap();
    fs::create_dir_all(f.p("other")).unwrap();
    fs::write(f.p("projects/x/f"), b"project data\n").unwrap();
    fs::write(f.p("other/secret"), b"not shared\n").unwrap();
    for d in ["projects", "projects/x", "other"] {
        fs::set_permissions(f.p(d), fs::Permissions::from_mode(0o777)).unwrap();
    }
    f
}

fn ctl_out(f: &Fixture, args: &[&str]) -> Output {
    Command::new(bin())
        .args(["ctl", "--socket", s(&f.ctl_socket), "--json"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ctl(f: &Fixture, args: &[&str]) -> Value {
    let o = ctl_out(f, args);
    assert!(
        o.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn grant(f: &Fixture, grantee: &str, ops: &str, prefix: &str) -> String {
    let v = ctl(f, &grant_create_args(grantee, ops, prefix));
    v["grant_id"].as_str().unwrap().to_string()
}

fn audit_bytes(cipher: &Path) -> u64 {
    fs::read_dir(cipher.join("sealfs.audit"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn export(f: &Fixture, args: &[&str]) -> Vec<Value> {
    let o = Command::new(bin())
        .args(["ctl", "--socket", s(&f.ctl_socket), "audit", "export"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `name` as `name{reason="x"}`: its value in `metrics --json` (one
/// object, series → value), whatever the volume label says.
fn metric(f: &Fixture, name: &str) -> u64 {
    let v = ctl(f, &["metrics"]);
    let obj = v.as_object().expect("metrics --json is an object");
    let (family, labels) = name.split_once('{').unwrap_or((name, "}"));
    obj.iter()
        .find_map(|(k, x)| {
            let (kf, kl) = k.split_once('{').unwrap_or((k, "}"));
            // Drop the volume label every series carries.
            let kl =
                kl.split_once(',').map_or(
                    kl,
                    |(v, rest)| {
                        if v.starts_with("volume=") {
                            rest
                        } else {
                            kl
                        }
                    },
                );
            let kl = if kl.starts_with("volume=") { "}" } else { kl };
            (kf == family && kl == labels).then(|| x.as_u64())?
        })
        .unwrap_or_else(|| panic!("no {name} in\n{v}"))
}

// ------------------------------------------------------------ finding 4

#[test]
fn idle_connections_of_another_user_leave_the_owner_working() {
    let f = shared();
    let g = grant(&f, &format!("uid:{GRANTEE}"), "read", "/projects/x");
    let addr = sockaddr(&f.ctl_socket);
    // 45 connections of uid 65534 that send nothing, then one byte per
    // second on each (never a whole line), for 14 s.
    let mut hold = spawn_as(NOBODY, &[], move |out, release| {
        let mut fds = [-1i32; 45];
        let mut n = 0u64;
        for fd in fds.iter_mut() {
            *fd = connect(&addr);
            if *fd >= 0 {
                n += 1;
            }
        }
        put_u64(out, n);
        for _ in 0..14 {
            // SAFETY: sleep has no memory effects.
            unsafe { libc::sleep(1) };
            for fd in fds.iter().filter(|fd| **fd >= 0) {
                // SAFETY: a valid buffer; MSG_NOSIGNAL: a closed peer is EPIPE.
                unsafe { libc::send(*fd, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
            }
        }
        wait_release(release);
        0
    });
    let held_since = Instant::now();
    assert_eq!(hold.read_u64(), 45, "uid 65534 could not connect 45 times");
    std::thread::sleep(Duration::from_millis(300));

    // The owner at once: status and revoke.
    let t = Instant::now();
    let st = ctl(&f, &["status"]);
    assert!(st["volume_id"].is_string(), "{st}");
    let r = ctl(&f, &["grant", "revoke", &g]);
    assert_eq!(r["revoked"], g.as_str(), "{r}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the owner waited {:?}",
        t.elapsed()
    );
    // The stranger holds its 4 slots; a fifth connection is refused.
    let busy = probe_as(
        NOBODY,
        &f.ctl_socket,
        b"{\"v\":1,\"id\":1,\"op\":\"status\"}\n",
    );
    assert!(
        busy.contains("too many control connections from this user"),
        "{busy}"
    );
    // Trickled bytes do not keep a slot: 10 s after they connected without
    // a complete request line, the slots are free again.
    let wait = Duration::from_secs(12).saturating_sub(held_since.elapsed());
    std::thread::sleep(wait);
    let again = probe_as(
        NOBODY,
        &f.ctl_socket,
        b"{\"v\":1,\"id\":2,\"op\":\"grant_retire\",\"token\":\"sgt_0000\"}\n",
    );
    assert!(!again.contains("too many"), "{again}");
    assert!(again.contains("\"ok\":false"), "{again}");
    let (code, _) = hold.finish();
    assert_eq!(code, 0);
    // A line longer than a stranger may send is refused (4 KiB).
    let mut long = b"{\"v\":1,\"id\":3,\"op\":\"grant_retire\",\"token\":\"".to_vec();
    long.extend(std::iter::repeat_n(b'a', 5000));
    long.extend_from_slice(b"\"}\n");
    let long: &'static [u8] = Box::leak(long.into_boxed_slice());
    let r = probe_as(NOBODY, &f.ctl_socket, long);
    assert!(r.contains("too_large"), "{r}");
}

// ------------------------------------------------------------ finding 5

#[test]
fn a_flood_of_denials_costs_bounded_log_space() {
    const N: u64 = 100_000;
    let f = shared();
    let before = audit_bytes(&f.cipher);
    let denied_peer = metric(&f, "sealfs_denied_total{reason=\"control_peer\"}");
    let denied_grant = metric(&f, "sealfs_denied_total{reason=\"grant\"}");
    let addr = sockaddr(&f.ctl_socket);
    let secret = CString::new(f.p("other/secret").as_os_str().as_bytes()).unwrap();
    let flood = spawn_as(NOBODY, &[], move |out, _| {
        let req = b"{\"v\":1,\"id\":7,\"op\":\"status\"}\n";
        let fd = connect(&addr);
        if fd < 0 {
            return 1;
        }
        let mut forbidden = 0u64;
        let mut buf = [0u8; 512];
        for _ in 0..N {
            // SAFETY: a valid buffer.
            unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), libc::MSG_NOSIGNAL) };
            let n = read_line_raw(fd, &mut buf);
            if buf[..n].windows(9).any(|w| w == b"forbidden") {
                forbidden += 1;
            }
        }
        put_u64(out, forbidden);
        let mut eacces = 0u64;
        // SAFETY: all-zero is a valid stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        for _ in 0..N {
            // SAFETY: a valid path and buffer.
            if unsafe { libc::stat(secret.as_ptr(), &mut st) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EACCES)
            {
                eacces += 1;
            }
        }
        put_u64(out, eacces);
        0
    });
    // The owner keeps working during the flood.
    for i in 0..5 {
        let st = ctl(&f, &["status"]);
        assert!(st["volume_id"].is_string());
        fs::write(f.p(&format!("projects/owner{i}")), b"still here").unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut flood = flood;
    assert_eq!(flood.read_u64(), N, "every socket request was forbidden");
    assert_eq!(flood.read_u64(), N, "every stat was denied");
    let (code, _) = flood.finish();
    assert_eq!(code, 0);
    assert_eq!(
        fs::read(f.p("projects/owner4")).unwrap(),
        b"still here",
        "the owner's writes went through"
    );

    // Every denial is counted, in records (a summary stands for `count`)
    // and in the metrics.
    let recs = export(&f, &["--principal", "uid:65534"]);
    let total = |op: &str| -> u64 {
        recs.iter()
            .filter(|r| r["op"] == op)
            .map(|r| r["count"].as_u64().unwrap_or(1))
            .sum()
    };
    assert_eq!(total("control"), N, "{recs:?}");
    // Each stat is refused at the lookup of /other, or (once the kernel
    // asks about the root first) at the root's getattr.
    assert!(total("lookup") + total("getattr") >= N, "{recs:?}");
    assert!(
        recs.len() <= 40,
        "{} records for {} denials: {recs:?}",
        recs.len(),
        2 * N
    );
    let summary = recs
        .iter()
        .find(|r| r["count"].as_u64().is_some_and(|c| c > 1000))
        .unwrap_or_else(|| panic!("no summary record: {recs:?}"));
    let detail = summary["detail"].as_str().unwrap();
    assert!(
        detail.contains("denials of") && detail.contains("by uid 65534 under"),
        "{detail}"
    );
    let grown = audit_bytes(&f.cipher) - before;
    assert!(
        grown < 64 * 1024,
        "{grown} bytes of audit log for {} denials",
        2 * N
    );
    assert!(
        metric(&f, "sealfs_denied_total{reason=\"control_peer\"}") - denied_peer >= N,
        "metrics count every socket denial"
    );
    assert!(
        metric(&f, "sealfs_denied_total{reason=\"grant\"}") - denied_grant >= N,
        "metrics count every FUSE denial"
    );
    let v = ctl(&f, &["audit", "verify"]);
    assert!(v["first_break"].is_null(), "{v}");
}

// ------------------------------------------------------------ finding 9

/// The first 16 hex digits of SHA-256 of `p`: the default socket name.
fn socket_name_of(mountpoint: &Path) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(mountpoint.as_os_str().as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("mnt-{}.sock", &hex[..16])
}

#[test]
fn a_fake_daemon_on_the_socket_path_is_refused() {
    // uid 54321 has no XDG_RUNTIME_DIR: its client looks in
    // /tmp/sealfs-54321/. uid 65534 got there first with a fake daemon
    // that answers "revoked" to anything.
    const VICTIM: u32 = 54321;
    let f = shared();
    let dir = Path::new("/tmp/sealfs-54321");
    let _ = fs::remove_dir_all(dir);
    let sock = dir.join(socket_name_of(&f.mnt));
    let addr = sockaddr(&sock);
    let cdir = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let fake = spawn_as(NOBODY, &[], move |out, release| {
        let answer =
            b"{\"id\":1,\"ok\":true,\"result\":{\"revoked\":\"g-0123456789abcdef\"},\"v\":1}\n";
        // SAFETY: raw calls with valid arguments.
        unsafe {
            libc::mkdir(cdir.as_ptr(), 0o777);
            libc::chmod(cdir.as_ptr(), 0o777);
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            libc::umask(0);
            if libc::bind(fd, (&addr.0 as *const libc::sockaddr_un).cast(), addr.1) != 0
                || libc::listen(fd, 8) != 0
            {
                return 1;
            }
            put_u64(out, 1);
            loop {
                let c = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
                if c < 0 {
                    break;
                }
                let mut buf = [0u8; 4096];
                read_line_raw(c, &mut buf);
                libc::send(c, answer.as_ptr().cast(), answer.len(), libc::MSG_NOSIGNAL);
                libc::close(c);
                let mut p = libc::pollfd {
                    fd: release,
                    events: libc::POLLIN,
                    revents: 0,
                };
                if libc::poll(&mut p, 1, 0) != 0 {
                    break;
                }
            }
        }
        0
    });
    let mut fake = fake;
    assert_eq!(fake.read_u64(), 1, "the fake daemon could not listen");
    let o = Command::new("setpriv")
        .args([
            &format!("--reuid={VICTIM}"),
            &format!("--regid={VICTIM}"),
            "--clear-groups",
            "env",
            "-u",
            "XDG_RUNTIME_DIR",
            bin(),
            "ctl",
            "--mount",
            s(&f.mnt),
            "grant",
            "revoke",
            "g-0123456789abcdef",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    drop(fake);
    let _ = fs::remove_dir_all(dir);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && !out.contains("revoked"),
        "the client believed a fake daemon: {out} {err}"
    );
    assert!(
        err.contains("uid 65534") && err.contains("fake daemon"),
        "{err}"
    );
}

#[test]
fn a_reused_pid_does_not_inherit_a_gid_grant() {
    const GROUP: u32 = 4242;
    let f = shared();
    grant(&f, &format!("gid:{GROUP}"), "read", "/projects/x");
    let file = f.p("projects/x/f");
    let run = |groups: &[&str]| -> (u32, Output) {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={GRANTEE}"))
            .arg(format!("--regid={GRANTEE}"));
        c.args(groups);
        c.args(["cat", s(&file)]).stdin(Stdio::null());
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = c.spawn().unwrap();
        let pid = child.id();
        (pid, child.wait_with_output().unwrap())
    };
    let (pid, o) = run(&["--groups", &GROUP.to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The next process of the same user gets the same pid (ns_last_pid),
    // without the group, within the cache's time to live.
    let mut tries = 0;
    loop {
        tries += 1;
        fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", pid - 1)).unwrap();
        let (again, o) = run(&["--clear-groups"]);
        if again != pid {
            assert!(tries < 50, "could not get pid {pid} again");
            continue;
        }
        assert!(
            !o.status.success(),
            "pid {pid} reused without group {GROUP} read the file: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        break;
    }
}

#[test]
fn the_socket_directory_is_private_and_checked() {
    use sealfs::ctl::socket::open_private_dir;
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    // Created 0700 (0711 for an allow_other mount's socket).
    let d = t.path().join("sealfs-1");
    open_private_dir(&d, false).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o700);
    open_private_dir(&d, true).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o711);
    // Too open: fixed through the opened directory.
    fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    open_private_dir(&d, false).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o711);
    // A symlink at the name is refused, and its target left alone.
    let target = t.path().join("elsewhere");
    fs::create_dir(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    let link = t.path().join("sealfs-2");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = open_private_dir(&link, false).unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o755);
    // Not a directory.
    let file = t.path().join("sealfs-3");
    fs::write(&file, b"").unwrap();
    let e = open_private_dir(&file, false).unwrap_err().to_string();
    assert!(e.contains("regular file"), "{e}");
    // Someone else's.
    let theirs = t.path().join("sealfs-4");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let e = open_private_dir(&theirs, false).unwrap_err().to_string();
    assert!(e.contains("owned by uid 65534"), "{e}");
}

#[test]
fn a_mount_keeps_its_default_socket_directory_private() {
    let mut f = Fixture::new();
    f.mount(); // the default socket: /run/sealfs for root
    let o = Command::new(bin())
        .args(["ctl", "--json", "--mount", s(&f.mnt), "status"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    use std::os::unix::fs::MetadataExt;
    let md = fs::symlink_metadata("/run/sealfs").unwrap();
    assert!(md.is_dir());
    assert_eq!(md.uid(), 0);
    // 0700, or 0711 while another mount with allow_other keeps its socket
    // there; never readable or writable by others.
    assert_eq!(md.mode() & 0o066, 0, "{:o}", md.mode());
}
