//! Issue 20: several daemons on one cipher dir (`--shared-storage`), each
//! with its own mount point and control socket, standing in for hosts on
//! shared storage. What each test tries to break:
//! * the mode locks: a mount without `--shared-storage` beside shared ones
//!   (and the reverse), and `shared_storage = true` in sealfs.toml;
//! * lost updates: a rotation on A followed by a write on B and a read on
//!   A; grants made on one host and revoked on another; rotations and
//!   grants made from every host at once, none of them lost;
//! * staleness: a revoked grant still honoured, a directory renamed on A
//!   still served under its old name by B beyond the bound;
//! * the schedule lease: two hosts both rotating on a schedule, and a dead
//!   holder never replaced;
//! * a daemon SIGKILLed in the middle of its changes.
//!
//! Every daemon keeps its audit stream (`sealfs.audit/hosts/<NAME>/`);
//! after the concurrent changes `audit verify` checks all of them.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{as_user, bin, wait_until, Fixture, Mounted};
use serde_json::Value;

/// Others' changes show within the refresh period (1 s) plus the kernel's
/// entry timeout (≤ 1 s); this allows for a loaded 2-core CI machine.
const BOUND: Duration = Duration::from_secs(4);

/// One daemon ("host") on the fixture's cipher dir.
struct Host {
    name: String,
    mnt: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    mounted: Option<Mounted>,
}

impl Host {
    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    fn ctl_out(&self, args: &[&str]) -> Output {
        common::ctl_json_output(&self.sock, args)
    }

    #[track_caller]
    fn ctl(&self, args: &[&str]) -> Value {
        common::ctl_json(&self.sock, &self.name, args)
    }

    /// `grant create` of `ops` under `prefix` for `grantee`: its id.
    fn grant(&self, grantee: &str, ops: &str, prefix: &str) -> String {
        let g = self.ctl(&common::grant_create_args(grantee, ops, prefix));
        g["grant_id"].as_str().unwrap().to_string()
    }

    fn primary(&self) -> u64 {
        self.ctl(&["status"])["primary"].as_u64().unwrap()
    }

    fn grant_ids(&self) -> Vec<String> {
        let v = self.ctl(&["grant", "list"]);
        v["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["grant_id"].as_str().unwrap().to_string())
            .collect()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Mounts a shared-storage daemon named `name` on `f`'s cipher dir (with
/// its own audit stream, unless `audit` is false).
fn host(f: &Fixture, name: &str, audit: bool, extra: &[&str]) -> Host {
    let mnt = f.root.path().join(format!("mnt-{name}"));
    fs::create_dir_all(&mnt).unwrap();
    let sock = f.root.path().join(format!("{name}.sock"));
    let log = f.root.path().join(format!("{name}.log"));
    let sock_s = sock.to_str().unwrap().to_string();
    let mut args: Vec<&str> = vec![
        "--shared-storage",
        "--host-id",
        name,
        "--ctl-socket",
        &sock_s,
    ];
    if !audit {
        args.push("--no-audit");
    }
    args.extend_from_slice(extra);
    // At info, the log says which host runs the schedules.
    let m = Mounted::start_env(
        &f.cipher,
        &mnt,
        &["--passfile".as_ref(), f.passfile.as_os_str()],
        &args,
        &[("SEALFS_LOG", "info")],
        &log,
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        }),
        "{name}: control socket not ready"
    );
    Host {
        name: name.into(),
        mnt,
        sock,
        log,
        mounted: Some(m),
    }
}

/// N hosts, named a, b, c, …, each with its audit stream.
fn hosts(f: &Fixture, n: usize, extra: &[&str]) -> Vec<Host> {
    (0..n)
        .map(|i| {
            let name = ((b'a' + i as u8) as char).to_string();
            host(f, &name, true, extra)
        })
        .collect()
}

fn unmount_all(hs: &mut [Host]) {
    for h in hs.iter_mut() {
        if let Some(m) = h.mounted.take() {
            m.unmount();
        }
    }
}

/// Waits up to [`BOUND`] for `cond`; how long it took.
#[track_caller]
fn within_bound(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    assert!(wait_until(BOUND, &mut cond), "{what}: not within {BOUND:?}");
    let took = t.elapsed();
    eprintln!("{what}: {} ms", took.as_millis());
    took
}

/// `sealfs CMD… CIPHERDIR --passfile F` of `f`'s volume, offline.
fn offline(f: &Fixture, cmd: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = cmd.iter().map(std::ffi::OsStr::new).collect();
    args.extend([
        f.cipher.as_os_str(),
        "--passfile".as_ref(),
        f.passfile.as_os_str(),
    ]);
    common::sealfs(&args)
}

/// A mount of `f`'s volume on `mnt` with `extra` that must fail: its log.
#[track_caller]
fn refused_mount(
    f: &Fixture,
    mnt: &std::path::Path,
    extra: &[&str],
    log: &std::path::Path,
) -> String {
    Mounted::try_start(
        &f.cipher,
        mnt,
        &["--passfile".as_ref(), f.passfile.as_os_str()],
        extra,
        log,
    )
    .err()
    .unwrap_or_else(|| panic!("a mount with {extra:?} must be refused"))
}

#[test]
fn shared_daemons_coexist_and_other_modes_are_refused() {
    let f = Fixture::new();
    let mut hs = hosts(&f, 2, &[]);
    fs::write(hs[0].p("from-a"), b"written on a").unwrap();
    within_bound("a's file on b", || {
        fs::read(hs[1].p("from-a")).ok().as_deref() == Some(&b"written on a"[..])
    });

    // A mount without --shared-storage, and an offline command (fsck), are
    // refused while shared daemons hold the volume, naming the mode.
    let other = f.root.path().join("mnt-x");
    fs::create_dir(&other).unwrap();
    let log = f.root.path().join("x.log");
    let err = refused_mount(&f, &other, &[], &log);
    assert!(
        err.contains("shared-storage mode") && err.contains("--shared-storage"),
        "{err}"
    );
    let out = offline(&f, &["fsck"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("shared-storage mode"),
        "{err}"
    );
    unmount_all(&mut hs);

    // An exclusive mount refuses shared ones, naming the mode.
    let x = Mounted::start(&f.cipher, &other, &f.passfile, &[], &log);
    let mnt = f.root.path().join("mnt-y");
    fs::create_dir(&mnt).unwrap();
    let err = refused_mount(
        &f,
        &mnt,
        &["--shared-storage"],
        &f.root.path().join("y.log"),
    );
    assert!(err.contains("not in shared-storage mode"), "{err}");
    x.unmount();

    // shared_storage = true in the config: only shared mounts.
    let conf = f.cipher.join("sealfs.toml");
    let text = fs::read_to_string(&conf).unwrap();
    fs::write(&conf, format!("{text}shared_storage = true\n")).unwrap();
    let err = refused_mount(&f, &other, &[], &log);
    assert!(
        err.contains("must be mounted with --shared-storage"),
        "{err}"
    );
    let mut h = vec![host(&f, "solo", true, &[])];
    assert_eq!(
        fs::read(h[0].p("from-a")).unwrap(),
        b"written on a".to_vec()
    );
    unmount_all(&mut h);
    f.assert_fsck_clean("after shared mounts");
}

#[test]
fn rotation_on_a_is_used_by_b_and_read_back_on_a() {
    let f = Fixture::new();
    let mut hs = hosts(&f, 2, &[]);
    fs::write(hs[1].p("before"), b"v1 data").unwrap();
    assert_eq!(hs[0].ctl(&["rotate"])["primary"], 2);
    within_bound("b follows a's rotation", || hs[1].primary() == 2);
    fs::write(hs[1].p("after"), b"v2 data").unwrap();
    within_bound("b's file readable on a", || {
        fs::read(hs[0].p("after")).ok().as_deref() == Some(&b"v2 data"[..])
    });
    assert_eq!(fs::read(hs[0].p("before")).unwrap(), b"v1 data");
    // B rotates next: from the stored state (2), not its own old copy.
    assert_eq!(hs[1].ctl(&["rotate"])["primary"], 3);
    within_bound("a follows b's rotation", || hs[0].primary() == 3);
    // The census sees the file B wrote after the first rotation under 2.
    let census = hs[0].ctl(&["census"]);
    eprintln!("census: {census}");
    unmount_all(&mut hs);
    f.assert_fsck_clean("after rotations on two hosts");
}

#[test]
fn a_grant_revoked_on_b_stops_the_grantee_on_a() {
    let f = Fixture::new();
    fs::set_permissions(f.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut hs = hosts(&f, 2, &["-o", "allow_other"]);
    for h in &hs {
        fs::set_permissions(&h.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::create_dir_all(hs[0].p("projects/x")).unwrap();
    fs::set_permissions(hs[0].p("projects"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(hs[0].p("projects/x"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(hs[0].p("projects/x/plan"), b"plan\n").unwrap();
    let plan_a = hs[0].p("projects/x/plan");
    let plan_a = plan_a.to_str().unwrap();
    let cat = |p: &str| as_user(1001, &["cat", p]);
    assert!(!cat(plan_a).status.success(), "no grant yet");

    let id = hs[0].grant("uid:1001", "read", "/projects/x");
    assert_eq!(cat(plan_a).stdout, b"plan\n");
    // B follows the grant: its grantee reads through B too.
    let plan_b = hs[1].p("projects/x/plan");
    let plan_b = plan_b.to_str().unwrap().to_string();
    within_bound("the grant works on b", || cat(&plan_b).status.success());

    // Revoked on B: denied on A within the bound.
    hs[1].ctl(&["grant", "revoke", &id]);
    within_bound("the revocation stops the grantee on a", || {
        !cat(plan_a).status.success()
    });
    assert!(!cat(&plan_b).status.success());
    // A revoke of what B already revoked is an error, not a silent write.
    let o = hs[0].ctl_out(&["grant", "revoke", &id]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&id) && (err.contains("another host") || err.contains("no live grant")),
        "{err}"
    );
    assert!(hs[0].grant_ids().is_empty());
    unmount_all(&mut hs);
}

#[test]
fn concurrent_rotations_grants_and_rewraps_from_every_host_are_all_kept() {
    let f = Fixture::new();
    let mut hs = hosts(&f, 3, &[]);
    let run_for = Duration::from_secs(20);
    let results: Vec<(u64, Vec<String>)> = std::thread::scope(|s| {
        let ts: Vec<_> = hs
            .iter()
            .map(|h| {
                s.spawn(move || {
                    let start = Instant::now();
                    let (mut rotations, mut grants) = (0u64, Vec::new());
                    let mut i = 0u64;
                    while start.elapsed() < run_for {
                        if i % 6 == 5 {
                            // A rewrap from every host now and then: headers
                            // and records re-wrapped under their locks while
                            // the others rotate and write.
                            h.ctl(&["rewrap"]);
                        } else if i % 2 == 0 {
                            h.ctl(&["rotate"]);
                            rotations += 1;
                        } else {
                            let prefix = format!("/{}/{i}", h.name);
                            grants.push(h.grant("uid:1001", "read", &prefix));
                        }
                        // Files written between the changes stay readable.
                        let p = h.p(&format!("{}-{i}", h.name));
                        fs::write(&p, format!("{} {i}", h.name)).unwrap();
                        i += 1;
                    }
                    (rotations, grants)
                })
            })
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let rotations: u64 = results.iter().map(|r| r.0).sum();
    let mut made: Vec<String> = results.iter().flat_map(|r| r.1.clone()).collect();
    made.sort();
    eprintln!(
        "{rotations} rotations and {} grants from 3 hosts",
        made.len()
    );
    for h in &hs {
        within_bound(&format!("{} sees every rotation", h.name), || {
            h.primary() == 1 + rotations
        });
        within_bound(&format!("{} sees every grant", h.name), || {
            let mut ids = h.grant_ids();
            ids.sort();
            ids == made
        });
        let versions = h.ctl(&["status"])["versions"].as_array().unwrap().len() as u64;
        assert_eq!(versions, 1 + rotations, "{}", h.name);
    }
    // Every file any host wrote reads back on every host.
    for h in &hs {
        for e in fs::read_dir(&hs[0].mnt).unwrap() {
            let name = e.unwrap().file_name();
            let text = fs::read_to_string(h.mnt.join(&name)).unwrap();
            let name = name.to_str().unwrap();
            let (who, i) = name.split_once('-').unwrap();
            assert_eq!(text, format!("{who} {i}"), "{name} on {}", h.name);
        }
    }
    unmount_all(&mut hs);
    let out = offline(&f, &["audit", "verify"]);
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The streams hold every change: one `rotate` record per rotation and
    // one `grant_created` per grant, in the stream of the host that made it.
    let out = offline(&f, &["audit", "export"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let count = |op: &str| {
        recs.iter()
            .filter(|r| r["op"] == op && r["outcome"].as_str().is_none_or(|o| o == "ok"))
            .count() as u64
    };
    assert_eq!(count("rotate"), rotations, "rotate records");
    assert_eq!(
        count("grant_created"),
        made.len() as u64,
        "grant_created records"
    );
    f.assert_fsck_clean("after concurrent changes");
}

#[test]
fn a_directory_renamed_on_a_moves_for_b_within_the_bound() {
    let f = Fixture::new();
    let mut hs = hosts(&f, 2, &[]);
    fs::create_dir_all(hs[0].p("d1/sub")).unwrap();
    fs::write(hs[0].p("d1/sub/file"), b"below").unwrap();
    within_bound("b sees d1", || hs[1].p("d1/sub/file").exists());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // B lists and reads under d1 while A renames it.
        let b = &hs[1];
        let reader = s.spawn(|| {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                if let Ok(rd) = fs::read_dir(b.p("d1/sub")) {
                    for e in rd.flatten() {
                        if let Ok(t) = fs::read(e.path()) {
                            assert_eq!(t, b"below", "a read under the old name is whole");
                            reads += 1;
                        }
                    }
                }
            }
            reads
        });
        std::thread::sleep(Duration::from_millis(300));
        fs::rename(hs[0].p("d1"), hs[0].p("d2")).unwrap();
        within_bound(
            "b: the old name is gone",
            || matches!(fs::metadata(b.p("d1/sub/file")), Err(e) if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::ESTALE)),
        );
        within_bound("b: the new name works", || {
            fs::read(b.p("d2/sub/file")).ok().as_deref() == Some(&b"below"[..])
        });
        stop.store(true, std::sync::atomic::Ordering::Release);
        eprintln!("b read {} times during the rename", reader.join().unwrap());
    });
    // Removed on A: gone on B too.
    fs::remove_file(hs[0].p("d2/sub/file")).unwrap();
    fs::remove_dir(hs[0].p("d2/sub")).unwrap();
    within_bound("b: the removed directory is gone", || {
        !hs[1].p("d2/sub").exists()
    });
    unmount_all(&mut hs);
    f.assert_fsck_clean("after renames across hosts");
}

#[test]
fn one_host_runs_the_schedules_and_another_takes_over_after_its_death() {
    let f = Fixture::new();
    let mut hs = hosts(&f, 2, &[]);
    hs[0].ctl(&["rotation-period", "3s", "--allow-short"]);
    std::thread::sleep(Duration::from_secs(12));
    let rotated = |h: &Host| h.log_text().matches("schedule: rotated").count();
    let (ra, rb) = (rotated(&hs[0]), rotated(&hs[1]));
    eprintln!("automatic rotations: a {ra}, b {rb}");
    assert!(ra + rb >= 2, "the schedule ran: a {ra}, b {rb}");
    assert!(
        ra == 0 || rb == 0,
        "only the lease holder rotates: a {ra}, b {rb}"
    );
    // Exactly one rotation per due period: each new version is ≥ 3 s after
    // the one before.
    let st = hs[0].ctl(&["status"]);
    let mut created: Vec<u64> = st["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["created"].as_u64().unwrap())
        .collect();
    created.sort();
    for w in created.windows(2).skip(1) {
        assert!(
            w[1] - w[0] >= 3,
            "two rotations within one period: {created:?}"
        );
    }
    // SIGKILL of the holder: the other takes over within the lease (6 s)
    // and a tick (2 s).
    let (holder, other) = if ra > 0 { (0, 1) } else { (1, 0) };
    let before = rotated(&hs[other]);
    let m = hs[holder].mounted.take().unwrap();
    let t = Instant::now();
    m.kill9();
    assert!(
        wait_until(Duration::from_secs(15), || rotated(&hs[other]) > before),
        "{} never took over the schedules",
        hs[other].name
    );
    eprintln!("takeover after {} ms", t.elapsed().as_millis());
    hs[other].ctl(&["rotation-period", "off"]);
    unmount_all(&mut hs);
    f.assert_fsck_clean("after the schedule's takeover");
}

#[test]
fn a_daemon_killed_mid_change_leaves_the_others_working_and_fsck_clean() {
    let f = Fixture::new();
    let mut hs = hosts(&f, 3, &[]);
    // C rotates and grants in a loop; it dies in the middle.
    let c_sock = hs[2].sock.clone();
    let looping = std::thread::spawn(move || {
        let mut n = 0;
        for i in 0..200 {
            let args: Vec<String> = if i % 2 == 0 {
                vec!["rotate".into()]
            } else {
                vec![
                    "grant".into(),
                    "create".into(),
                    "--grantee".into(),
                    "uid:1001".into(),
                    "--ops".into(),
                    "read".into(),
                    "--path-prefix".into(),
                    format!("/c/{i}"),
                ]
            };
            let ok = Command::new(bin())
                .arg("ctl")
                .arg("--socket")
                .arg(&c_sock)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if !ok {
                break;
            }
            n += 1;
        }
        n
    });
    std::thread::sleep(Duration::from_millis(1500));
    hs[2].mounted.take().unwrap().kill9();
    let done = looping.join().unwrap();
    eprintln!("c made {done} changes before it died");
    // The survivors go on changing keys and grants and writing files; B
    // rotates from the stored keyring (C's last store included).
    std::thread::sleep(Duration::from_secs(2));
    let p = hs[1].primary();
    assert_eq!(hs[1].ctl(&["rotate"])["primary"].as_u64().unwrap(), p + 1);
    hs[0].grant("uid:1002", "read", "/after");
    fs::write(hs[0].p("after-kill"), b"still here").unwrap();
    within_bound("b reads a's file after c's death", || {
        fs::read(hs[1].p("after-kill")).ok().as_deref() == Some(&b"still here"[..])
    });
    let primary = hs[1].primary();
    within_bound("a and b agree on the keyring", || {
        hs[0].primary() == primary
    });
    unmount_all(&mut hs);
    common::force_unmount(&f.root.path().join("mnt-c"));
    f.assert_fsck_clean("after a daemon was killed mid-change");
}

#[test]
fn two_hosts_creating_and_renaming_in_one_directory_keep_every_name() {
    let f = Fixture::new();
    let mut hs = hosts(&f, 2, &[]);
    fs::create_dir(hs[0].p("shared")).unwrap();
    within_bound("b sees the directory", || hs[1].p("shared").is_dir());
    std::thread::scope(|s| {
        for h in &hs {
            s.spawn(move || {
                for i in 0..60 {
                    let p = h.p(&format!("shared/{}-{i}", h.name));
                    fs::write(&p, format!("{} {i}", h.name)).unwrap();
                    if i % 3 == 0 {
                        // A rename re-binds the header (two slots) under its lock.
                        fs::rename(&p, h.p(&format!("shared/{}-{i}-moved", h.name))).unwrap();
                    }
                }
            });
        }
    });
    let expect = |who: &str, i: u32| {
        if i % 3 == 0 {
            format!("{who}-{i}-moved")
        } else {
            format!("{who}-{i}")
        }
    };
    for h in &hs {
        within_bound(&format!("{} lists all 120 names", h.name), || {
            fs::read_dir(h.p("shared")).map(|d| d.count()).unwrap_or(0) == 120
        });
        for who in ["a", "b"] {
            for i in 0..60 {
                let name = expect(who, i);
                let text = fs::read_to_string(h.p(&format!("shared/{name}"))).unwrap();
                assert_eq!(text, format!("{who} {i}"), "{name} on {}", h.name);
            }
        }
    }
    unmount_all(&mut hs);
    f.assert_fsck_clean("after creating in one directory from two hosts");
}

#[test]
fn two_hosts_writing_one_file_at_the_same_offsets_leave_whole_chunks() {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 4096;
    const CHUNKS: usize = 16;
    let f = Fixture::new();
    let mut hs = hosts(&f, 2, &[]);
    fs::write(hs[0].p("contended"), vec![0u8; CHUNK * CHUNKS]).unwrap();
    within_bound("b sees the file whole", || {
        fs::metadata(hs[1].p("contended")).is_ok_and(|m| m.len() == (CHUNK * CHUNKS) as u64)
    });
    let run_for = Duration::from_secs(6);
    let eio = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        // Two writers per host, so writes of one host also overlap.
        for (t, (n, h)) in hs.iter().enumerate().flat_map(|x| [x, x]).enumerate() {
            let eio = &eio;
            s.spawn(move || {
                let file = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(h.p("contended"))
                    .unwrap();
                let mut rng = common::Rng::new(t as u64 + 1);
                let byte = b'A' + n as u8;
                let start = Instant::now();
                let mut writes = 0;
                while start.elapsed() < run_for {
                    // 1 to 6 whole chunks at a chunk boundary, sometimes
                    // across a run the other host writes too.
                    let first = rng.below(CHUNKS as u64 - 1) as usize;
                    let count = (1 + rng.below(3) as usize).min(CHUNKS - first);
                    file.write_all_at(&vec![byte; count * CHUNK], (first * CHUNK) as u64)
                        .unwrap();
                    writes += 1;
                    // Reads in between never see a torn chunk.
                    let mut buf = vec![0u8; CHUNK];
                    if let Err(e) = file.read_exact_at(&mut buf, (first * CHUNK) as u64) {
                        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                        eio.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                eprintln!("{}: {writes} writes", h.name);
            });
        }
    });
    assert_eq!(
        eio.into_inner(),
        0,
        "reads failed with EIO while both wrote"
    );
    // Every chunk authenticates and is one writer's, on both hosts.
    for h in &hs {
        let data = fs::read(h.p("contended")).unwrap_or_else(|e| panic!("{}: {e}", h.name));
        assert_eq!(data.len(), CHUNK * CHUNKS);
        for (k, c) in data.chunks(CHUNK).enumerate() {
            assert!(
                c.iter().all(|b| *b == c[0]) && [0, b'A', b'B'].contains(&c[0]),
                "{}: chunk {k} is not one writer's",
                h.name
            );
        }
    }
    unmount_all(&mut hs);
    f.assert_fsck_clean("after two hosts wrote one file");
}

#[test]
fn a_truncate_on_b_is_made_on_what_a_wrote_meanwhile() {
    // B holds the file open (its size and states loaded) while A appends
    // across a group boundary; B's truncate through that open handle must
    // be made on the file as A left it, under the content lock: A's bytes
    // below the new size stay, nothing past it, every chunk authenticates.
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 251) as u8 + 1).collect() };
    let f = Fixture::new();
    let mut hs = hosts(&f, 2, &[]);
    fs::write(hs[0].p("f"), pattern(8192)).unwrap();
    within_bound("b sees the file", || {
        fs::metadata(hs[1].p("f")).is_ok_and(|m| m.len() == 8192)
    });
    let on_b = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(hs[1].p("f"))
        .unwrap();
    let mut seen = Vec::new();
    std::io::Read::read_to_end(&mut &on_b, &mut seen).unwrap();
    assert_eq!(seen, pattern(8192));
    // A grows it to 608 KiB (past group 0's 512 KiB).
    fs::write(hs[0].p("f"), pattern(608 * 1024)).unwrap();
    on_b.set_len(300 * 1024).unwrap();
    drop(on_b);
    for h in &hs {
        within_bound(&format!("{} reads the truncated file", h.name), || {
            fs::read(h.p("f")).is_ok_and(|d| d == pattern(300 * 1024))
        });
    }
    unmount_all(&mut hs);
    f.assert_fsck_clean("after a truncate on b of what a wrote");
}
