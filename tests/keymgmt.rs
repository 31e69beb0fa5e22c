//! Key management on live mounts (docs/CONTROL.md): rotation under load,
//! rewrap killed mid-way and resumed, disable/enable with open handles,
//! crypto-shredding through the retire → pending deletion → destroyed
//! lifecycle, passwd, the offline tools, automatic rotation, and the control
//! socket's security and robustness.
//!
//! Every mount is held by the fixture's guard, so it is unmounted (and its
//! daemon reaped) even when a test panics. Each test uses a control socket
//! of its own (`--ctl-socket` inside its tempdir).

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

// ------------------------------------------------------------ control-socket helpers

/// One connection to a control socket, for several requests.
struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
    next_id: u64,
}

impl Conn {
    #[track_caller]
    fn open(sock: &Path) -> Self {
        let s = UnixStream::connect(sock)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", sock.display()));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            next_id: 1,
        }
    }

    /// Sends one raw line (a newline is added) and reads one response line.
    #[track_caller]
    fn raw(&mut self, line: &[u8]) -> Value {
        self.w.write_all(line).expect("send request");
        self.w.write_all(b"\n").expect("send newline");
        self.recv()
    }

    #[track_caller]
    fn recv(&mut self) -> Value {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).expect("read response line");
        assert!(n > 0, "the daemon closed the connection without answering");
        assert!(
            l.ends_with('\n'),
            "response line not newline-terminated: {l:?}"
        );
        let v: Value = serde_json::from_str(&l)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {l:?}"));
        assert_eq!(v["v"], 1, "response without protocol version: {v}");
        v
    }

    /// Sends `op` with `v` and a fresh numeric `id`; returns the whole
    /// response after checking that the id is echoed.
    #[track_caller]
    fn request(&mut self, mut op: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        op["v"] = json!(1);
        op["id"] = json!(id);
        let resp = self.raw(op.to_string().as_bytes());
        assert_eq!(resp["id"], json!(id), "id not echoed: {resp}");
        resp
    }

    /// Like [`Conn::request`], returning the result; panics on an error response.
    #[track_caller]
    fn call(&mut self, op: Value) -> Value {
        let resp = self.request(op.clone());
        assert_eq!(resp["ok"], true, "request {op} failed: {resp}");
        resp["result"].clone()
    }

    /// Like [`Conn::request`], expecting an error; returns its code.
    #[track_caller]
    fn call_err(&mut self, op: Value) -> String {
        let resp = self.request(op.clone());
        assert_eq!(resp["ok"], false, "request {op} should have failed: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without message: {resp}"
        );
        resp["error"]["code"].as_str().unwrap_or("").to_string()
    }
}

/// `sealfs ctl --socket SOCK --json ARGS…` (stdin is /dev/null).
fn ctl_out(sock: &Path, args: &[&str]) -> Output {
    ctl_json_output(sock, args)
}

/// `sealfs ctl --json ARGS…`, asserting success; returns the parsed result.
#[track_caller]
fn ctl(sock: &Path, args: &[&str]) -> Value {
    let out = ctl_out(sock, args);
    assert!(
        out.status.success(),
        "sealfs ctl {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sealfs ctl {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `sealfs ctl ARGS…` expected to fail with exit 1; returns stderr.
#[track_caller]
fn ctl_fails(sock: &Path, args: &[&str]) -> String {
    let out = ctl_out(sock, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "sealfs ctl {args:?} should fail with exit 1; stdout {} stderr {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

#[track_caller]
fn status(sock: &Path) -> Value {
    ctl(sock, &["status"])
}

/// The status entry of key version `v`.
#[track_caller]
fn version_entry(st: &Value, v: u64) -> Value {
    st["versions"]
        .as_array()
        .expect("versions array")
        .iter()
        .find(|e| e["version"] == v)
        .unwrap_or_else(|| panic!("no version {v} in {st}"))
        .clone()
}

fn state_of(st: &Value, v: u64) -> String {
    version_entry(st, v)["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// A census map entry (`files` / `dirs` / `unreadable_by_version` are keyed by version).
fn count(map: &Value, v: u64) -> u64 {
    map.get(v.to_string()).and_then(Value::as_u64).unwrap_or(0)
}

fn sum(map: &Value) -> u64 {
    map.as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Polls `cond` every 50 ms; panics with `what` after `timeout`.
#[track_caller]
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------ file-set helpers

/// Writes `n` small files `dir/PREFIXnnnn` with seeded content.
fn write_set(dir: &Path, prefix: &str, n: usize, seed: u64) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut rng = Rng::new(seed);
    let mut out = BTreeMap::new();
    for i in 0..n {
        let p = dir.join(format!("{prefix}{i:04}"));
        let len = 1 + rng.below(200) as usize;
        let mut data = format!("{prefix}{i} ").into_bytes();
        data.extend(rng.bytes(len));
        fs::write(&p, &data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        out.insert(p, data);
    }
    out
}

/// Reads every file back; panics listing the first mismatches.
#[track_caller]
fn check_set(set: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    let mut bad = Vec::new();
    for (p, want) in set {
        match fs::read(p) {
            Ok(got) if &got == want => {}
            Ok(got) => bad.push(format!(
                "{}: content differs ({} bytes, want {})",
                p.display(),
                got.len(),
                want.len()
            )),
            Err(e) => bad.push(format!("{}: {e}", p.display())),
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} files wrong, e.g.:\n{}",
        bad.len(),
        set.len(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Every file of the set must refuse to open with EIO or EACCES.
#[track_caller]
fn check_unreadable(set: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    for p in set.keys() {
        match File::open(p) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                let r = f.read_to_end(&mut buf);
                panic!(
                    "{what}: {} opened although its key version is destroyed (read: {r:?})",
                    p.display()
                );
            }
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EACCES)),
                "{what}: open of {} failed with {e}, expected EIO or EACCES",
                p.display()
            ),
        }
    }
}

/// The daemon still serves file I/O.
#[track_caller]
fn assert_io_works(fx: &mut Fixture, what: &str) {
    assert!(
        fx.daemon_alive(),
        "{what}: the daemon died; log:\n{}",
        fx.log()
    );
    let p = fx.p("io-probe");
    let data = format!("probe after {what}");
    fs::write(&p, &data).unwrap_or_else(|e| panic!("{what}: write through the mount: {e}"));
    assert_eq!(
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{what}: read back: {e}")),
        data,
        "{what}: read back differs"
    );
}

fn offline(args: &[&OsStr]) -> Output {
    sealfs(args)
}

/// `sealfs info CIPHER --passfile P --json`, asserting success.
#[track_caller]
fn info(cipher: &Path, passfile: &Path) -> Value {
    let out = offline(&[
        "info".as_ref(),
        cipher.as_os_str(),
        "--passfile".as_ref(),
        passfile.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "sealfs info failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("info --json prints JSON")
}

/// Marks backing files immutable (chattr +i) so a rewrap must leave them
/// alone; clears the flag again on drop, even when the test panics.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(paths: Vec<PathBuf>) -> Option<Self> {
        let mut guard = Immutable(Vec::new());
        for p in paths {
            let ok = Command::new("chattr")
                .arg("+i")
                .arg(&p)
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return None; // drop clears what was set
            }
            guard.0.push(p);
        }
        Some(guard)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(p).status();
        }
    }
}

// ------------------------------------------------------------ rotation under load

#[test]
fn rotate_three_times_while_a_writer_keeps_writing() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();
    let dir = fx.p("w");
    fs::create_dir(&dir).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(0x5EA1);
            let mut expect: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
            // One append handle held open across all three rotations.
            let log_path = dir.join("append.log");
            let mut log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap();
            let mut log_content = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                let p = dir.join(format!("f{i:05}"));
                let len = rng.below(12_000) as usize;
                let data = rng.bytes(len);
                fs::write(&p, &data).unwrap();
                expect.insert(p, data);
                if i % 5 == 4 {
                    // Rewrite an older file (its header may be under an older version).
                    let j = rng.below(i);
                    let q = dir.join(format!("f{j:05}"));
                    let len = rng.below(9_000) as usize;
                    let data = rng.bytes(len);
                    fs::write(&q, &data).unwrap();
                    expect.insert(q, data);
                }
                let line = format!("record {i}: {}\n", "x".repeat((i % 97) as usize));
                log.write_all(line.as_bytes()).unwrap();
                log_content.extend_from_slice(line.as_bytes());
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            log.sync_all().unwrap();
            drop(log);
            expect.insert(log_path, log_content);
            expect
        })
    };

    std::thread::sleep(Duration::from_millis(300));
    for want in 2..=4u64 {
        let r = ctl(&sock, &["rotate"]);
        assert_eq!(r["primary"], want, "rotate result {r}");
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Release);
    let expect = writer.join().expect("writer thread failed");
    eprintln!("writer wrote {} files across 3 rotations", expect.len());

    check_set(&expect, "after three rotations (live)");

    let st = status(&sock);
    assert_eq!(st["primary"], 4, "status: {st}");
    let versions = st["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 4, "status: {st}");
    for v in 1..=4u64 {
        assert_eq!(state_of(&st, v), "enabled", "status: {st}");
        assert_eq!(version_entry(&st, v)["primary"], v == 4, "status: {st}");
    }

    // Files were created under every version; all of them are counted.
    let c = ctl(&sock, &["census"]);
    assert_eq!(c["unreadable"], 0, "census: {c}");
    let files = &c["files"];
    assert_eq!(
        sum(files),
        expect.len() as u64,
        "census counts every file once: {c}"
    );
    for v in 1..=4u64 {
        assert!(count(files, v) > 0, "no file under version {v}: {c}");
    }

    // A fresh daemon (keyring loaded from disk, no caches) reads the same.
    fx.remount_ctl();
    check_set(&expect, "after three rotations and a remount");
    assert_eq!(status(&sock)["primary"], 4);
}

// ------------------------------------------------------------ rewrap: crash and resume

#[test]
fn rewrap_killed_mid_way_resumes_and_then_trim_keeps_everything_readable() {
    const OLD1: usize = 2000; // under v1
    const OLD2: usize = 1000; // under v2
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();

    let t = Instant::now();
    let mut all = BTreeMap::new();
    for (d, n, seed) in [("a", OLD1 / 2, 1), ("b", OLD1 / 2, 2)] {
        fs::create_dir(fx.p(d)).unwrap();
        all.extend(write_set(&fx.p(d), "f", n, seed));
    }
    assert_eq!(ctl(&sock, &["rotate"])["primary"], 2);
    fs::create_dir(fx.p("c")).unwrap();
    all.extend(write_set(&fx.p("c"), "g", OLD2, 3));
    assert_eq!(ctl(&sock, &["rotate"])["primary"], 3);
    eprintln!("created {} files in {:?}", all.len(), t.elapsed());

    let c = ctl(&sock, &["census"]);
    assert_eq!(count(&c["files"], 1), OLD1 as u64, "census {c}");
    assert_eq!(count(&c["files"], 2), OLD2 as u64, "census {c}");
    assert_eq!(count(&c["dirs"], 1), 3, "root, a, b under v1: {c}");
    assert_eq!(count(&c["dirs"], 2), 1, "c under v2: {c}");
    let items = (OLD1 + OLD2 + 4) as u64;

    // Start a background rewrap and SIGKILL the daemon part-way through.
    let started = ctl(&sock, &["rewrap", "--background"]);
    assert_eq!(started["started"], true, "{started}");
    assert_eq!(started["primary"], 3, "{started}");
    let t = Instant::now();
    let mut conn = Conn::open(&sock);
    // Only one rewrap at a time.
    assert_eq!(conn.call_err(json!({"op": "rewrap"})), "busy");
    let (done_at_kill, total) = loop {
        let r = conn.call(json!({"op": "status"}))["rewrap"].clone();
        let (done, total) = (r["done"].as_u64().unwrap(), r["total"].as_u64().unwrap());
        if total > 0 && done >= total / 10 {
            fx.kill_daemon();
            break (done, total);
        }
        assert!(
            r["running"] == true,
            "the rewrap finished before it could be killed ({r}); use more files"
        );
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "rewrap made no progress: {r}"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    drop(conn);
    eprintln!(
        "killed the daemon at rewrap progress {done_at_kill}/{total} after {:?}",
        t.elapsed()
    );
    assert_eq!(total, items, "rewrap total counts every header and record");
    assert!(
        done_at_kill < total,
        "the rewrap was already done when killed; use more files"
    );

    // Remount over the same (stale) socket path; everything must read back.
    fx.mount_ctl();
    check_set(&all, "after kill -9 during rewrap");
    let c = ctl(&sock, &["census"]);
    assert_eq!(c["unreadable"], 0, "a header was damaged by the kill: {c}");
    let files_new = count(&c["files"], 3);
    let files_old = count(&c["files"], 1) + count(&c["files"], 2);
    let dirs_old = count(&c["dirs"], 1) + count(&c["dirs"], 2);
    assert_eq!(files_new + files_old, (OLD1 + OLD2) as u64, "census {c}");
    assert!(files_new > 0, "nothing was re-wrapped before the kill: {c}");
    assert!(
        files_old + dirs_old > 0,
        "nothing was left for the resumed rewrap: {c}"
    );
    eprintln!("after the kill: {files_new} files under v3, {files_old} files and {dirs_old} dirs still under v1/v2");

    // Resume: the second run skips what is done and re-wraps the rest.
    let t = Instant::now();
    let r = ctl(&sock, &["rewrap"]);
    eprintln!(
        "resumed rewrap of {} items took {:?}: {r}",
        items,
        t.elapsed()
    );
    assert_eq!(r["running"], false, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["total"], items, "{r}");
    assert_eq!(r["done"], items, "{r}");
    assert_eq!(
        r["rewrapped"],
        files_old + dirs_old,
        "the resumed rewrap re-wraps exactly what was left: {r}"
    );
    let c = ctl(&sock, &["census"]);
    assert_eq!(c["unreadable"], 0, "census {c}");
    assert_eq!(c["files"], json!({"3": OLD1 + OLD2}), "census {c}");
    assert_eq!(c["dirs"], json!({"3": 4}), "census {c}");
    check_set(&all, "after the resumed rewrap");

    // Retire v1 and v2: nothing uses them any more.
    let r = ctl(&sock, &["trim", "3"]);
    assert_eq!(r["retired"], json!([1, 2]), "{r}");
    let st = status(&sock);
    assert_eq!(state_of(&st, 1), "retired");
    assert_eq!(state_of(&st, 2), "retired");
    assert_eq!(state_of(&st, 3), "enabled");
    check_set(&all, "after trim 3 (live)");
    fx.remount_ctl();
    check_set(&all, "after trim 3 and a remount");
    let c = ctl(&sock, &["census"]);
    assert_eq!(c["unreadable"], 0, "census {c}");
}

// ------------------------------------------------------------ disable / enable

#[test]
fn disable_refuses_even_open_handles_and_enable_restores_them() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();
    let data = Rng::new(42).bytes(50_000);
    let p = fx.p("secret.bin");
    fs::write(&p, &data).unwrap();
    fs::write(fx.p("w.txt"), b"0123456789").unwrap();

    // Handles opened (and pages cached) before the disable.
    let rd = File::open(&p).unwrap();
    let mut buf = vec![0u8; data.len()];
    rd.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, data);
    let wr = OpenOptions::new().write(true).open(fx.p("w.txt")).unwrap();

    let r = ctl(&sock, &["disable"]);
    assert_eq!(r["disabled"], true, "{r}");
    assert_eq!(status(&sock)["disabled"], true);

    let mut small = [0u8; 4096];
    assert_errno(
        rd.read_at(&mut small, 0),
        libc::EACCES,
        "read on an fd opened before disable",
    );
    assert_errno(
        rd.read_at(&mut small, 40_960),
        libc::EACCES,
        "read elsewhere on that fd",
    );
    assert_errno(
        wr.write_at(b"X", 0),
        libc::EACCES,
        "write on an fd opened before disable",
    );
    assert_errno(File::open(&p), libc::EACCES, "open after disable");
    assert_errno(
        File::create(fx.p("new.txt")),
        libc::EACCES,
        "create after disable",
    );
    assert!(fx.daemon_alive());

    let r = ctl(&sock, &["enable"]);
    assert_eq!(r["disabled"], false, "{r}");
    assert_eq!(status(&sock)["disabled"], false);
    rd.read_exact_at(&mut buf, 0)
        .expect("the same fd reads again after enable");
    assert_eq!(buf, data);
    wr.write_at(b"A", 0)
        .expect("the same fd writes again after enable");
    drop(wr);
    assert_eq!(fs::read(fx.p("w.txt")).unwrap(), b"A123456789");
    assert_eq!(fs::read(&p).unwrap(), data);
    fs::write(fx.p("new.txt"), b"new").unwrap();
    drop(rd);

    // The flag is sealed in the keyring: it survives a remount.
    ctl(&sock, &["disable"]);
    fx.remount_ctl();
    assert_eq!(
        status(&sock)["disabled"],
        true,
        "disable must survive a remount"
    );
    assert_errno(
        File::open(&p),
        libc::EACCES,
        "open after disable and remount",
    );
    ctl(&sock, &["enable"]);
    assert_eq!(fs::read(&p).unwrap(), data);
    assert_eq!(fs::read(fx.p("new.txt")).unwrap(), b"new");
}

// ------------------------------------------------------------ destruction (crypto-shredding)

/// The scenario of the lifecycle as a user meets it: nothing re-wrapped,
/// the old version trimmed (forced) and destroyed. Only the files created
/// under it may be lost; set B, created under v2, must survive.
#[test]
fn destroy_orphans_exactly_the_files_under_the_destroyed_version() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();
    let set_a = write_set(&fx.mnt, "a", 12, 11);
    assert_eq!(ctl(&sock, &["rotate"])["primary"], 2);
    let set_b = write_set(&fx.mnt, "b", 12, 12);

    // Headers still use v1, so a plain trim is refused and changes nothing.
    let err = ctl_fails(&sock, &["trim", "2"]);
    assert!(err.contains("(invalid)") && err.contains("rewrap"), "{err}");
    assert_eq!(state_of(&status(&sock), 1), "enabled");
    check_set(&set_a, "set A after a refused trim");

    let r = ctl(&sock, &["trim", "2", "--force"]);
    assert_eq!(r["retired"], json!([1]), "{r}");
    check_unreadable(&set_a, "set A after trim (live)");
    check_set(&set_b, "set B after trim (live)");

    // schedule-deletion counts what it would orphan with a census first.
    let c = ctl_out(&sock, &["census"]);
    assert!(
        c.status.success(),
        "after `trim 2 --force`, census (which schedule-deletion runs first) fails, because \
         the root directory record is still wrapped under the now retired v1: {}",
        String::from_utf8_lossy(&c.stderr)
    );

    // A version that is not retired cannot be scheduled.
    let err = ctl_fails(&sock, &["schedule-deletion", "2", "--wait", "1s", "--yes"]);
    assert!(err.contains("(invalid)"), "{err}");
    assert_eq!(state_of(&status(&sock), 2), "enabled");
    // Without --yes (and no terminal) nothing happens.
    let err = ctl_fails(&sock, &["schedule-deletion", "1", "--wait", "1s"]);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(state_of(&status(&sock), 1), "retired");

    let r = ctl(&sock, &["schedule-deletion", "1", "--wait", "1s", "--yes"]);
    assert_eq!(r["confirmed"], true, "{r}");
    let would_orphan = r["would_orphan"].as_u64().unwrap();
    assert!(would_orphan >= set_a.len() as u64, "{r}");
    wait_for("version 1 destroyed", Duration::from_secs(15), || {
        state_of(&status(&sock), 1) == "destroyed"
    });
    check_unreadable(&set_a, "set A after destroy (live)");
    check_set(&set_b, "set B after destroy (live)");

    fx.unmount();
    let log = fx.scratch.join("remount.log");
    let mounted = mount_or_error(&mut fx, &log);
    assert!(
        mounted.is_ok(),
        "after destroying v1 (would_orphan was {would_orphan}: the {} files of set A plus the root \
         directory record, still wrapped under v1), the volume no longer mounts, so set B \
         (under v2) is lost as well: {}",
        set_a.len(),
        mounted.err().unwrap_or_default()
    );
    check_unreadable(&set_a, "set A after destroy and remount");
    check_set(&set_b, "set B after destroy and remount");
}

/// The same lifecycle where the directory records (root included) are
/// already under the newer version: a rewrap ran but could not touch set A
/// (its backing files are immutable), so exactly set A stays under v1.
#[test]
fn destroy_after_partial_rewrap_orphans_only_what_is_left_under_the_version() {
    if !have_tool("chattr") {
        eprintln!("skipped: no chattr");
        return;
    }
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();
    let mut set_a = BTreeMap::new();
    let mut backing_a = Vec::new();
    for i in 0..8 {
        let p = fx.p(&format!("a{i}"));
        let data = format!("set A file {i}").into_bytes();
        let new = fx.new_backing_files(|_| fs::write(&p, &data).unwrap());
        assert_eq!(new.len(), 1, "{new:?}");
        backing_a.extend(new);
        set_a.insert(p, data);
    }
    assert_eq!(ctl(&sock, &["rotate"])["primary"], 2);
    fs::create_dir(fx.p("d")).unwrap();
    let mut set_b = write_set(&fx.mnt, "b", 8, 21);
    set_b.extend(write_set(&fx.p("d"), "b", 8, 22));

    let Some(immutable) = Immutable::set(backing_a) else {
        eprintln!("skipped: chattr +i not supported here");
        return;
    };
    let out = ctl_out(&sock, &["rewrap"]);
    assert_eq!(out.status.code(), Some(1), "a rewrap with failures exits 1");
    let r: Value = serde_json::from_slice(&out.stdout).expect("rewrap --json report");
    assert_eq!(r["failed"], set_a.len(), "{r}");
    drop(immutable);
    let c = ctl(&sock, &["census"]);
    assert_eq!(
        c["files"],
        json!({"1": set_a.len(), "2": set_b.len()}),
        "{c}"
    );
    assert_eq!(c["dirs"], json!({"2": 2}), "{c}");

    let err = ctl_fails(&sock, &["trim", "2"]);
    assert!(
        err.contains(&format!(
            "{} headers still use versions below 2",
            set_a.len()
        )),
        "{err}"
    );
    assert_eq!(ctl(&sock, &["trim", "2", "--force"])["retired"], json!([1]));
    check_unreadable(&set_a, "set A after trim");
    check_set(&set_b, "set B after trim");

    // Refusals change nothing.
    let err = ctl_fails(&sock, &["schedule-deletion", "2", "--wait", "1s", "--yes"]);
    assert!(err.contains("(invalid)"), "non-retired version: {err}");
    let err = ctl_fails(&sock, &["schedule-deletion", "1", "--wait", "1s"]);
    assert!(err.contains("--yes"), "without --yes: {err}");
    assert!(
        err.contains(&format!("{} headers", set_a.len())),
        "reports the orphans: {err}"
    );
    let st = status(&sock);
    assert_eq!(state_of(&st, 1), "retired", "{st}");
    assert_eq!(state_of(&st, 2), "enabled", "{st}");
    assert!(version_entry(&st, 1).get("deletion_due").is_none(), "{st}");
    // A bad waiting period is a usage error (exit 2) of the command line.
    let out = ctl_out(
        &sock,
        &["schedule-deletion", "1", "--wait", "soon", "--yes"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "bad waiting period: {err}");
    assert!(err.contains("not a duration"), "bad waiting period: {err}");

    // Schedule, cancel, untrim: all reversible until destruction.
    let r = ctl(&sock, &["schedule-deletion", "1", "--wait", "1h", "--yes"]);
    assert_eq!(r["would_orphan"], set_a.len(), "{r}");
    let st = status(&sock);
    assert_eq!(state_of(&st, 1), "pending_deletion", "{st}");
    let due = version_entry(&st, 1)["deletion_due"].as_u64().unwrap();
    assert!(due == r["deletion_due"].as_u64().unwrap(), "{st} vs {r}");
    assert!(ctl_fails(&sock, &["untrim", "1"]).contains("(invalid)"));
    let r = ctl(&sock, &["cancel-deletion", "1"]);
    assert_eq!(r, json!({"version": 1, "state": "retired"}));
    assert_eq!(state_of(&status(&sock), 1), "retired");
    assert!(ctl_fails(&sock, &["cancel-deletion", "1"]).contains("(invalid)"));
    assert_eq!(ctl(&sock, &["untrim", "1"]), json!({"enabled": 1}));
    check_set(&set_a, "set A after untrim");
    assert_eq!(ctl(&sock, &["trim", "2", "--force"])["retired"], json!([1]));

    // Destroy for real.
    let r = ctl(&sock, &["schedule-deletion", "1", "--wait", "1s", "--yes"]);
    assert_eq!(r["confirmed"], true, "{r}");
    assert_eq!(r["would_orphan"], set_a.len(), "{r}");
    let t = Instant::now();
    wait_for("version 1 destroyed", Duration::from_secs(15), || {
        state_of(&status(&sock), 1) == "destroyed"
    });
    eprintln!(
        "destroyed {:?} after scheduling with --wait 1s",
        t.elapsed()
    );
    check_unreadable(&set_a, "set A after destroy (live)");
    check_set(&set_b, "set B after destroy (live)");
    assert!(ctl_fails(&sock, &["untrim", "1"]).contains("(invalid)"));
    assert!(ctl_fails(&sock, &["cancel-deletion", "1"]).contains("(invalid)"));

    fx.remount_ctl();
    let st = status(&sock);
    assert_eq!(state_of(&st, 1), "destroyed", "{st}");
    check_unreadable(&set_a, "set A after destroy and remount");
    check_set(&set_b, "set B after destroy and remount");
    let c = ctl(&sock, &["census"]);
    assert_eq!(c["unreadable"], set_a.len(), "{c}");
    assert_eq!(c["unreadable_by_version"], json!({"1": set_a.len()}), "{c}");
    assert_eq!(c["files"], json!({"2": set_b.len()}), "{c}");
}

/// A waiting period too large for the clock (u64 seconds overflow when
/// added to now) must be refused or honoured: never destroy early, never
/// leave the request unanswered, never use up the connection cap.
#[test]
fn absurd_waiting_period_neither_destroys_early_nor_wedges_the_socket() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();
    fs::write(fx.p("f"), b"kept").unwrap();
    assert_eq!(ctl(&sock, &["rotate"])["primary"], 2);
    assert_eq!(ctl(&sock, &["rewrap"])["failed"], 0);
    assert_eq!(ctl(&sock, &["trim", "2"])["retired"], json!([1]));

    // 213503982334601d = 18446744073709526400 s: parses, but now + wait overflows.
    let huge = r#"{"v":1,"id":"huge","op":"schedule_deletion","version":1,"wait":"213503982334601d","confirm":true}"#;
    let mut problems = Vec::new();
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("{huge}\n").as_bytes()).unwrap();
    let mut line = String::new();
    let n = BufReader::new(&s).read_line(&mut line).unwrap_or(0);
    drop(s);
    if n == 0 {
        problems.push("schedule_deletion with wait 213503982334601d: the daemon closed the connection without answering (the connection thread died)".to_string());
    } else {
        let r: Value = serde_json::from_str(&line).unwrap();
        if r["ok"] == true {
            let due = r["result"]["deletion_due"].as_u64().unwrap_or(0);
            let year_2100 = 4_102_444_800;
            if due < year_2100 {
                problems.push(format!("a wait of 213503982334601d scheduled destruction at {due} (in the past or near future): {r}"));
            }
        } else if r["error"]["code"] != "invalid" {
            problems.push(format!("unexpected answer to an absurd wait: {r}"));
        }
    }
    // One scheduler tick later v1 must still exist.
    std::thread::sleep(Duration::from_millis(5500));
    let st = status(&sock);
    if state_of(&st, 1) == "destroyed" {
        problems.push(format!(
            "version 1 was destroyed although the requested wait was ~585 billion years: {st}"
        ));
    }

    // More such requests than the connection cap (32): the socket must still answer.
    for _ in 0..40 {
        if let Ok(mut s) = UnixStream::connect(&sock) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(format!("{huge}\n").as_bytes());
            let mut sink = String::new();
            let _ = BufReader::new(&s).read_line(&mut sink);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut c = Conn::open(&sock);
    let r = c.raw(br#"{"v":1,"id":1,"op":"status"}"#);
    if r["ok"] != true {
        problems.push(format!(
            "after 40 requests with an absurd wait the control socket refuses everyone: {r}"
        ));
    }
    drop(c);
    assert_io_works(&mut fx, "absurd waiting periods");
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"kept");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Trimming never-re-wrapped versions must not lock the owner out of the
/// whole volume. A plain trim refuses; a forced one promises the headers
/// stay unreadable only "until untrim", so the volume must still mount
/// afterwards for `untrim` to be possible.
#[test]
fn trim_of_the_version_holding_the_root_record_keeps_the_volume_recoverable() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();
    fs::write(fx.p("old"), b"under v1").unwrap();
    assert_eq!(ctl(&sock, &["rotate"])["primary"], 2);
    fs::write(fx.p("new"), b"under v2").unwrap();

    let err = ctl_fails(&sock, &["trim", "2"]);
    assert!(err.contains("(invalid)"), "{err}");
    assert_eq!(state_of(&status(&sock), 1), "enabled");

    assert_eq!(ctl(&sock, &["trim", "2", "--force"])["retired"], json!([1]));
    fx.unmount();
    let log = fx.scratch.join("remount.log");
    let out = mount_or_error(&mut fx, &log);
    assert!(
        out.is_ok(),
        "after `trim 2 --force` on a volume whose root directory record is still wrapped \
         under v1, the volume no longer mounts, and no command can untrim it: {}",
        out.err().unwrap_or_default()
    );
    ctl(&sock, &["untrim", "1"]);
    assert_eq!(fs::read(fx.p("new")).unwrap(), b"under v2");
    assert_eq!(fs::read(fx.p("old")).unwrap(), b"under v1");
}

/// Mounts (daemonized, with the fixture's socket): Ok if it mounted (the
/// fixture then holds the mount, so it is torn down like any other), or Err
/// with the mount command's error output.
fn mount_or_error(fx: &mut Fixture, log: &Path) -> Result<(), String> {
    let sock = fx.ctl_socket.clone();
    mount_or_error_at(fx, log, &sock)
}

/// Like [`mount_or_error`] with an explicit `--ctl-socket`.
fn mount_or_error_at(fx: &mut Fixture, log: &Path, sock: &Path) -> Result<(), String> {
    assert!(fx.mounted.is_none(), "already mounted");
    let out = offline(&[
        "mount".as_ref(),
        fx.cipher.as_os_str(),
        fx.mnt.as_os_str(),
        "--passfile".as_ref(),
        fx.passfile.as_os_str(),
        "--ctl-socket".as_ref(),
        sock.as_os_str(),
    ]);
    if is_mounted(&fx.mnt) {
        fx.mounted = Some(Mounted::adopt_daemon(&fx.cipher, &fx.mnt, log));
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

// ------------------------------------------------------------ unlock secrets (passwd)

#[test]
fn passwd_changes_the_passphrase_and_switches_to_a_key_file() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::create_dir(fx.p("d")).unwrap();
    let set = write_set(&fx.p("d"), "p", 20, 5);
    fx.unmount();
    let old = fx.passfile.clone();
    let new = fx.scratch.join("new-pass");
    fs::write(&new, "a much better passphrase\n").unwrap();

    let cipher = fx.cipher.clone();
    let passwd = |cur: &[&OsStr], new_secret: &[&OsStr]| {
        let mut args: Vec<&OsStr> = vec!["passwd".as_ref(), cipher.as_os_str()];
        args.extend_from_slice(cur);
        args.extend_from_slice(new_secret);
        args.extend(FAST_KDF.iter().map(OsStr::new));
        offline(&args)
    };
    let info_with = |secret: &[&OsStr]| {
        let mut args: Vec<&OsStr> = vec!["info".as_ref(), cipher.as_os_str(), "--json".as_ref()];
        args.extend_from_slice(secret);
        offline(&args)
    };

    // A wrong current secret changes nothing.
    let before = fs::read(cipher.join("sealfs.keyring")).unwrap();
    let out = passwd(
        &["--passfile".as_ref(), new.as_os_str()],
        &["--new-passfile".as_ref(), new.as_os_str()],
    );
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(cipher.join("sealfs.keyring")).unwrap(), before);

    let out = passwd(
        &["--passfile".as_ref(), old.as_os_str()],
        &["--new-passfile".as_ref(), new.as_os_str()],
    );
    assert!(
        out.status.success(),
        "passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The old passphrase now fails with 12, for info and for mount.
    let out = info_with(&["--passfile".as_ref(), old.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mount_expect_failure(&cipher, &fx.mnt, &["--passfile".as_ref(), old.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The new one mounts and reads the data (file data was not touched).
    fx.passfile = new.clone();
    fx.mount_ctl();
    check_set(&set, "after passwd");
    fx.unmount();

    // Switch to a key file.
    let kf = fx.scratch.join("key");
    fs::write(&kf, Rng::new(99).bytes(32)).unwrap();
    let out = passwd(
        &["--passfile".as_ref(), new.as_os_str()],
        &["--new-key-file".as_ref(), kf.as_os_str()],
    );
    assert!(
        out.status.success(),
        "passwd to key file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The slot of the passphrase that unlocked is replaced by a key-file
    // slot (the keyring has keyslots; the config holds no KDF).
    let out = sealfs(&["keyslot".as_ref(), "list".as_ref(), cipher.as_os_str()]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("key-file") && !list.contains("passphrase ("),
        "the keyslots record the key file: {list}"
    );

    let out = info_with(&["--passfile".as_ref(), new.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(12),
        "passphrase after switching to a key file"
    );
    let wrong_kf = fx.scratch.join("wrong-key");
    fs::write(&wrong_kf, Rng::new(100).bytes(32)).unwrap();
    let out = info_with(&["--key-file".as_ref(), wrong_kf.as_os_str()]);
    assert_eq!(out.status.code(), Some(12), "wrong key file");
    let short_kf = fx.scratch.join("short-key");
    fs::write(&short_kf, [7u8; 31]).unwrap();
    let out = info_with(&["--key-file".as_ref(), short_kf.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a 31-byte key file is a usage error"
    );
    let out = info_with(&["--key-file".as_ref(), kf.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    fx.mount_with_secret(&["--key-file".as_ref(), kf.as_os_str()]);
    check_set(&set, "after switching to a key file");
    assert_eq!(status(&fx.ctl_socket)["primary"], 1);
}

// ------------------------------------------------------------ offline tools

#[test]
fn offline_rotate_rewrap_and_info() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::create_dir_all(fx.p("x/y")).unwrap();
    let mut set = write_set(&fx.p("x"), "o", 30, 8);
    set.extend(write_set(&fx.p("x/y"), "o", 30, 9));
    fx.unmount();
    let pf = fx.passfile.clone();
    let cipher = fx.cipher.clone();
    let tool = |cmd: &str| {
        let out = offline(&[
            cmd.as_ref(),
            cipher.as_os_str(),
            "--passfile".as_ref(),
            pf.as_os_str(),
        ]);
        assert!(
            out.status.success(),
            "sealfs {cmd} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let i = info(&cipher, &pf);
    assert_eq!(i["primary"], 1, "{i}");
    assert_eq!(i["disabled"], false, "{i}");
    assert_eq!(i["unreadable"], 0, "{i}");
    assert_eq!(i["versions"].as_array().unwrap().len(), 1, "{i}");
    assert_eq!(i["versions"][0]["files"], 60, "{i}");
    assert_eq!(i["versions"][0]["dirs"], 3, "{i}");
    assert_eq!(i["versions"][0]["state"], "enabled", "{i}");

    let msg = tool("rotate");
    assert!(msg.contains("key version 2 is now primary"), "{msg}");
    let i = info(&cipher, &pf);
    assert_eq!(i["primary"], 2, "{i}");
    assert_eq!(i["versions"][0]["files"], 60, "still under v1: {i}");
    assert_eq!(i["versions"][1]["files"], 0, "{i}");
    assert_eq!(i["versions"][1]["primary"], true, "{i}");

    let t = Instant::now();
    let msg = tool("rewrap");
    eprintln!("offline rewrap of 63 items: {:?}", t.elapsed());
    assert!(msg.contains("63 visited, 63 re-wrapped, 0 failed"), "{msg}");
    let i = info(&cipher, &pf);
    assert_eq!(i["versions"][0]["files"], 0, "{i}");
    assert_eq!(i["versions"][0]["dirs"], 0, "{i}");
    assert_eq!(i["versions"][1]["files"], 60, "{i}");
    assert_eq!(i["versions"][1]["dirs"], 3, "{i}");
    assert_eq!(i["unreadable"], 0, "{i}");
    // Idempotent: a second run has nothing left to do.
    let msg = tool("rewrap");
    assert!(msg.contains("63 visited, 0 re-wrapped, 0 failed"), "{msg}");

    fx.mount_ctl();
    check_set(&set, "after offline rotate + rewrap");
    let st = status(&fx.ctl_socket);
    assert_eq!(st["primary"], 2, "{st}");
}

/// The offline tools write the keyring directly; on a mounted volume they
/// must refuse (the daemon would overwrite their keyring with its own), and
/// so must a second read-write mount of the same cipher directory.
#[test]
fn offline_key_tools_refuse_a_mounted_volume() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();
    fs::write(fx.p("f"), b"precious").unwrap();
    let keyring = fs::read(fx.cipher.join("sealfs.keyring")).unwrap();
    let pf = fx.passfile.clone();
    let newpass = fx.scratch.join("newpass");
    fs::write(&newpass, "another passphrase\n").unwrap();
    let cipher = fx.cipher.clone();
    let base: Vec<&OsStr> = vec![cipher.as_os_str(), "--passfile".as_ref(), pf.as_os_str()];
    let mut passwd_args = base.clone();
    passwd_args.extend(["--new-passfile".as_ref(), newpass.as_os_str()]);
    passwd_args.extend(FAST_KDF.iter().map(OsStr::new));
    for (cmd, rest) in [
        ("rotate", base.clone()),
        ("rewrap", base.clone()),
        ("passwd", passwd_args),
    ] {
        let mut args: Vec<&OsStr> = vec![cmd.as_ref()];
        args.extend(rest);
        let out = offline(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "offline `sealfs {cmd}` ran on a mounted volume: {err}"
        );
        assert!(
            err.contains("in use"),
            "sealfs {cmd}: unclear refusal: {err}"
        );
    }
    assert_eq!(
        fs::read(fx.cipher.join("sealfs.keyring")).unwrap(),
        keyring,
        "a refused offline command changed the keyring"
    );
    // info only reads: it works while mounted.
    let i = info(&fx.cipher, &fx.passfile);
    assert_eq!(i["primary"], 1, "{i}");

    // A second read-write mount of the same cipher directory is refused too.
    let other_mnt = fx.scratch.join("mnt2");
    fs::create_dir(&other_mnt).unwrap();
    let out = mount_expect_failure(
        &fx.cipher,
        &other_mnt,
        &[
            "--passfile".as_ref(),
            pf.as_os_str(),
            "--ctl-socket".as_ref(),
            fx.scratch.join("ctl2.sock").as_os_str(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));

    // The mount is unaffected; once it is gone the offline tools work.
    assert_eq!(ctl(&sock, &["rotate"])["primary"], 2);
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"precious");
    fx.unmount();
    let out = offline(&[
        "rotate".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        pf.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fx.mount_ctl();
    assert_eq!(status(&sock)["primary"], 3);
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"precious");
}

// ------------------------------------------------------------ automatic rotation

#[test]
fn rotation_period_rotates_automatically_and_at_mount() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();
    fs::write(fx.p("f"), b"data").unwrap();

    let out = ctl_out(&sock, &["rotation-period", "soon"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a duration"), "{err}");

    let r = ctl(&sock, &["rotation-period", "2s", "--allow-short"]);
    assert_eq!(r["rotation_period"], "2s", "{r}");
    assert!(r["next_rotation"].as_u64().is_some(), "{r}");
    // Stored sealed in the keyring (a layout-1 volume keeps it in
    // sealfs.toml), where it cannot be edited in the cipher dir.
    let toml = fs::read_to_string(fx.cipher.join("sealfs.toml")).unwrap();
    assert!(!toml.contains("rotation_period"), "{toml}");

    // The scheduler checks every 5 s.
    let t = Instant::now();
    wait_for("an automatic rotation", Duration::from_secs(12), || {
        status(&sock)["primary"].as_u64().unwrap() >= 2
    });
    eprintln!("first automatic rotation after {:?}", t.elapsed());
    let st = status(&sock);
    assert_eq!(st["rotation_period"], "2s", "{st}");
    let primary = st["primary"].as_u64().unwrap();
    let created = version_entry(&st, primary)["created"].as_u64().unwrap();
    assert_eq!(st["next_rotation"].as_u64().unwrap(), created + 2, "{st}");

    // Checked at mount: unmounted while the next one falls due.
    let before = status(&sock)["primary"].as_u64().unwrap();
    fx.unmount();
    std::thread::sleep(Duration::from_millis(2500));
    fx.mount_ctl();
    let t = Instant::now();
    wait_for("a rotation at mount", Duration::from_millis(1500), || {
        status(&sock)["primary"].as_u64().unwrap() > before
    });
    eprintln!("rotation at mount seen {:?} after the mount", t.elapsed());
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"data");

    let r = ctl(&sock, &["rotation-period", "off"]);
    assert_eq!(r["rotation_period"], Value::Null, "{r}");
    assert_eq!(r["next_rotation"], Value::Null, "{r}");
    let toml = fs::read_to_string(fx.cipher.join("sealfs.toml")).unwrap();
    assert!(!toml.contains("rotation_period"), "{toml}");
    let p = status(&sock)["primary"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(5500));
    let st = status(&sock);
    assert_eq!(st["primary"], p, "rotated although the period is off: {st}");
    assert_eq!(st["rotation_period"], Value::Null, "{st}");
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"data");
}

// ------------------------------------------------------------ read-only mounts

#[test]
fn read_only_mount_reports_but_refuses_key_changes() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    fs::write(fx.p("f"), b"ro").unwrap();
    fx.unmount();
    let keyring = fs::read(fx.cipher.join("sealfs.keyring")).unwrap();
    fx.mount_ctl_with(&["--read-only"]);
    let sock = fx.ctl_socket.clone();
    let mut c = Conn::open(&sock);
    for op in [
        json!({"op": "rotate"}),
        json!({"op": "rewrap"}),
        json!({"op": "disable"}),
        json!({"op": "enable"}),
        json!({"op": "trim", "min_version": 1}),
        json!({"op": "set_rotation_period", "period": "1d"}),
    ] {
        assert_eq!(c.call_err(op.clone()), "read_only", "{op}");
    }
    let st = c.call(json!({"op": "status"}));
    assert_eq!(st["read_only"], true, "{st}");
    let census = c.call(json!({"op": "census"}));
    assert_eq!(census["files"], json!({"1": 1}), "{census}");
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"ro");
    fx.unmount();
    assert_eq!(
        fs::read(fx.cipher.join("sealfs.keyring")).unwrap(),
        keyring,
        "a read-only mount rewrote the keyring"
    );
}

// ------------------------------------------------------------ socket security and robustness

const NOBODY_CLIENT: &str = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect_errno": e.errno}))
    sys.exit(0)
f = s.makefile("rwb")
for line in sys.argv[2:]:
    f.write(line.encode() + b"\n")
    f.flush()
    sys.stdout.write(f.readline().decode())
"#;

/// Runs the Python client as uid/gid 65534 and returns its output lines as JSON.
fn as_nobody(sock: &Path, lines: &[&str]) -> Vec<Value> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg("/usr/bin/python3")
        .arg("-c")
        .arg(NOBODY_CLIENT)
        .arg(sock)
        .args(lines)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    assert!(
        out.status.success(),
        "client as nobody failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn control_socket_security_and_robustness() {
    let mut fx = Fixture::new();
    // A socket directory that uid 65534 can traverse (the fixture's root is 0700).
    let sdir = tempfile::Builder::new()
        .prefix("sealfs-ctl.")
        .tempdir()
        .unwrap();
    fs::set_permissions(sdir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fx.ctl_socket = sdir.path().join("ctl.sock");
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();

    // The socket is 0600 and owned by the mount owner.
    let md = fs::symlink_metadata(&sock).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.mode() & 0o777, 0o600, "socket mode {:o}", md.mode());
    assert_eq!(md.uid(), unsafe { libc::geteuid() });
    assert_io_works(&mut fx, "mount");

    let can_switch_user = have_tool("setpriv") && Path::new("/usr/bin/python3").exists();
    if can_switch_user && unsafe { libc::geteuid() } == 0 {
        // The mode alone keeps other users out...
        let r = as_nobody(&sock, &[r#"{"v":1,"id":1,"op":"status"}"#]);
        assert_eq!(r, vec![json!({"connect_errno": libc::EACCES})], "{r:?}");
        // ...and with the mode opened up, SO_PEERCRED still refuses them.
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
        let r = as_nobody(
            &sock,
            &[
                r#"{"v":1,"id":"n1","op":"rotate"}"#,
                r#"{"v":1,"id":"n2","op":"disable"}"#,
                r#"{"v":1,"id":"n3","op":"status"}"#,
            ],
        );
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(r.len(), 3, "{r:?}");
        for (resp, id) in r.iter().zip(["n1", "n2", "n3"]) {
            assert_eq!(resp["ok"], false, "{resp}");
            assert_eq!(resp["id"], id, "{resp}");
            assert_eq!(resp["error"]["code"], "forbidden", "{resp}");
        }
        let st = status(&sock);
        assert_eq!(st["primary"], 1, "a forbidden rotate happened: {st}");
        assert_eq!(st["disabled"], false, "a forbidden disable happened: {st}");
        assert_io_works(&mut fx, "forbidden requests");
    } else {
        eprintln!("skipped the other-uid checks (need root, setpriv and /usr/bin/python3)");
    }

    // Malformed requests get an error and the connection stays usable.
    let mut c = Conn::open(&sock);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "bad_request"),
        (b"[1,2,3]".to_vec(), "bad_request"),
        (b"\xff\xfe\x00garbage".to_vec(), "bad_request"),
        (br#"{"id":5,"op":"status"}"#.to_vec(), "bad_request"),
        (br#"{"v":1,"id":5,"op":"trim"}"#.to_vec(), "bad_request"),
        (
            br#"{"v":1,"id":5,"op":"trim","min_version":"two"}"#.to_vec(),
            "bad_request",
        ),
        (br#"{"v":1,"id":5}"#.to_vec(), "bad_request"),
        (
            br#"{"v":2,"id":5,"op":"status"}"#.to_vec(),
            "unsupported_version",
        ),
        (
            br#"{"v":"1","id":5,"op":"status"}"#.to_vec(),
            "unsupported_version",
        ),
        (
            br#"{"v":1,"id":5,"op":"launch_missiles"}"#.to_vec(),
            "unknown_op",
        ),
        (
            br#"{"v":1,"id":5,"op":"trim","min_version":9}"#.to_vec(),
            "invalid",
        ),
    ];
    for (line, code) in cases {
        let shown = String::from_utf8_lossy(&line).into_owned();
        let r = c.raw(&line);
        assert_eq!(r["ok"], false, "{shown}: {r}");
        assert_eq!(r["error"]["code"], code, "{shown}: {r}");
        let st = c.call(json!({"op": "status"}));
        assert_eq!(st["primary"], 1, "after {shown}");
    }
    assert_eq!(c.call_err(json!({"op": "untrim", "version": 1})), "invalid");
    assert_eq!(
        c.call_err(json!({"op": "cancel_deletion", "version": 7})),
        "invalid"
    );
    // The id of a request that parsed far enough is echoed, any JSON value.
    let r = c.raw(br#"{"v":1,"id":{"k":[1,"x"]},"op":"nope"}"#);
    assert_eq!(r["id"], json!({"k": [1, "x"]}), "{r}");
    // Unknown fields are ignored; blank lines get no answer.
    c.w.write_all(b"\n   \n").unwrap();
    let r = c.raw(br#"{"v":1,"id":6,"op":"status","future_option":true}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["id"], 6, "{r}");
    // Several requests in one write are answered in order.
    c.w.write_all(b"{\"v\":1,\"id\":7,\"op\":\"status\"}\n{\"v\":1,\"id\":8,\"op\":\"census\"}\n")
        .unwrap();
    assert_eq!(c.recv()["id"], 7);
    let r = c.recv();
    assert_eq!(
        (r["id"].clone(), r["ok"].clone()),
        (json!(8), json!(true)),
        "{r}"
    );
    drop(c);
    assert_io_works(&mut fx, "malformed requests");

    // The line limit: 65536 bytes pass, 65537 do not.
    let padded = |len: usize| {
        let head = r#"{"v":1,"id":9,"op":"status","pad":""#;
        let tail = r#""}"#;
        let mut s = head.to_string();
        s.push_str(&"p".repeat(len - head.len() - tail.len()));
        s.push_str(tail);
        assert_eq!(s.len(), len);
        s
    };
    let mut c = Conn::open(&sock);
    let r = c.raw(padded(65536).as_bytes());
    assert_eq!(r["ok"], true, "a 65536-byte line is allowed: {r}");
    let mut line = padded(65537).into_bytes();
    line.push(b'\n');
    // The daemon answers and closes after 65537 bytes, maybe before the
    // newline is sent: a write error here is expected.
    let _ = c.w.write_all(&line);
    let r = c.recv();
    assert_eq!(r["error"]["code"], "too_large", "{r}");
    let mut rest = String::new();
    let n = c.r.read_line(&mut rest).unwrap_or(0);
    assert_eq!(
        n, 0,
        "the connection is closed after too_large (got {rest:?})"
    );
    drop(c);

    // A 10 MiB line: too_large, and the daemon stays responsive.
    let t = Instant::now();
    let mut c = Conn::open(&sock);
    let mut w = c.w.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut big = br#"{"v":1,"id":10,"op":"status","pad":""#.to_vec();
        big.resize(10 << 20, b'a');
        big.push(b'\n');
        // The daemon stops reading after 64 KiB and closes: EPIPE is expected.
        let _ = w.write_all(&big);
    });
    let r = c.recv();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "too_large", "{r}");
    assert_eq!(r["id"], Value::Null, "{r}");
    sender.join().unwrap();
    drop(c);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "10 MiB line took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let st = ctl(&sock, &["status"]);
    assert_eq!(st["primary"], 1);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "status after abuse took {:?}",
        t.elapsed()
    );
    assert_io_works(&mut fx, "a 10 MiB request line");

    // A request without a newline, then a half-close: still answered.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(br#"{"v":1,"id":11,"op":"status"}"#).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let r: Value = serde_json::from_str(all.trim_end()).unwrap();
    assert_eq!(
        (r["id"].clone(), r["ok"].clone()),
        (json!(11), json!(true)),
        "{r}"
    );

    // The cap on concurrent connections: idle clients cannot starve the
    // daemon's file I/O, the extra ones get "busy", and the slots come back.
    // 64 is the whole table (ctl::server::Limits::DEFAULT.total): root may
    // use all of it, other users are held to 48 (tests/local_users.rs).
    let idle: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = UnixStream::connect(&sock).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&mut extra).read_line(&mut line).unwrap();
    let r: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(r["error"]["code"], "busy", "{r}");
    assert_io_works(&mut fx, "64 idle control connections");
    drop(idle);
    drop(extra);
    wait_for(
        "a control connection after the idle ones closed",
        Duration::from_secs(10),
        || {
            let mut c = Conn::open(&sock);
            c.raw(br#"{"v":1,"id":12,"op":"status"}"#)["ok"] == true
        },
    );
    assert_io_works(&mut fx, "the connection cap");
    let st = status(&sock);
    assert_eq!(st["primary"], 1, "{st}");
    assert_eq!(st["disabled"], false, "{st}");
}

#[test]
fn ctl_socket_path_in_use_or_naming_a_file_is_refused() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let sock = fx.ctl_socket.clone();

    // A second volume cannot take over a live mount's socket.
    let mut other = Fixture::new();
    let log = other.scratch.join("mount.log");
    let r = mount_or_error_at(&mut other, &log, &sock);
    let err = r.expect_err("a second mount took over a live control socket");
    assert!(err.contains("in use by another mount"), "{err}");
    assert!(!is_mounted(&other.mnt));
    assert_eq!(status(&sock)["cipherdir"], fx.cipher.to_str().unwrap());
    fx.unmount();
    assert!(!sock.exists(), "socket left behind after unmount");

    // A path that names an ordinary file must not cost the user that file.
    let notes = fx.scratch.join("notes.txt");
    fs::write(&notes, b"important notes").unwrap();
    let log = fx.scratch.join("mount.log");
    let r = mount_or_error_at(&mut fx, &log, &notes);
    let kept = fs::read(&notes)
        .ok()
        .map(|k| String::from_utf8_lossy(&k).into_owned());
    if r.is_ok() {
        fx.unmount();
    }
    assert_eq!(
        kept.as_deref(),
        Some("important notes"),
        "`sealfs mount --ctl-socket FILE` deleted the existing regular file FILE (mount result: {r:?})"
    );
}

#[test]
fn default_socket_path_is_found_by_ctl_mount_and_removed_at_unmount() {
    let mut fx = Fixture::new();
    fx.mount(); // no --ctl-socket
    let out = Command::new(bin())
        .args(["ctl", "--json", "--mount"])
        .arg(&fx.mnt)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["mountpoint"], fx.mnt.to_str().unwrap(), "{st}");
    assert_eq!(st["cipherdir"], fx.cipher.to_str().unwrap(), "{st}");
    // Where the default socket lives (root: /run/sealfs), and its mode.
    wait_for("the mount message", Duration::from_secs(5), || {
        fx.log().contains("control socket ")
    });
    let log = fx.log();
    let sock = log
        .split("control socket ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("the mount message names no socket: {log}"));
    if unsafe { libc::geteuid() } == 0 {
        assert!(sock.starts_with("/run/sealfs"), "{}", sock.display());
    }
    let md = fs::symlink_metadata(&sock).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.mode() & 0o777, 0o600);
    fx.unmount();
    assert!(
        !sock.exists(),
        "socket {} left behind after unmount",
        sock.display()
    );
    // ctl on an unmounted mount point says so.
    let out = Command::new(bin())
        .args(["ctl", "--mount"])
        .arg(&fx.mnt)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the volume mounted?"), "{err}");
}
