//! POSIX conformance: runs pjdfstest (crates.io `pjdfstest`, the Rust
//! rewrite of the POSIX filesystem test suite) against a live mount, as root
//! with `-o allow_other` (its cases switch to the users `nobody` and `tests`,
//! who get a grant of every operation on `/`).
//!
//! Fails on any failed case that is not listed in
//! `tests/pjdfstest-expected-failures`, and on any listed case that passes,
//! so the list can only shrink. contrib/setup.sh installs pjdfstest and
//! creates the `tests` user; without them the test is skipped, except under
//! CI (`CI` set), where it fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The runner's configuration: the same for sealfs, ext4 and gocryptfs when
/// the README's counts are measured (see `contrib/pjdfstest.sh`).
const CONFIG: &str = include_str!("../contrib/pjdfstest.toml");

/// Longest a whole run may take (it takes ~3 s).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn find_pjdfstest() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PJDFSTEST") {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("pjdfstest"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&h).join("bin/pjdfstest"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(Path::new(&h).join(".cargo/bin/pjdfstest"));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Skips (prints why) outside CI, fails in CI.
fn unavailable(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("pjdfstest cannot run under CI: {why} (contrib/setup.sh sets it up)");
    }
    eprintln!("SKIP: {why} (contrib/setup.sh sets it up)");
}

fn user_exists(name: &str) -> bool {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: getpwnam with a valid C string; only the null check is used.
    !unsafe { libc::getpwnam(c.as_ptr()) }.is_null()
}

/// The expected failures: case name → reason.
fn expected_failures() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest-expected-failures");
    let text = fs::read_to_string(&path).expect("read tests/pjdfstest-expected-failures");
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        assert!(
            !reason.trim().is_empty(),
            "pjdfstest-expected-failures line {}: '{name}' needs a reason",
            n + 1
        );
        assert!(
            out.insert(name.to_string(), reason.trim().to_string())
                .is_none(),
            "pjdfstest-expected-failures lists '{name}' twice"
        );
    }
    out
}

/// Outcome of every case from pjdfstest's output lines `NAME   ok|FAILED|skipped`.
fn parse_results(out: &str) -> BTreeMap<String, String> {
    let mut res = BTreeMap::new();
    for line in out.lines() {
        let t = line.trim_end();
        for outcome in ["ok", "FAILED", "skipped"] {
            if let Some(head) = t.strip_suffix(outcome) {
                if head.ends_with(' ') {
                    let name = head.trim();
                    if name.contains("::") && !name.contains(' ') {
                        res.insert(name.to_string(), outcome.to_string());
                    }
                }
            }
        }
    }
    res
}

#[test]
fn pjdfstest_conformance() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        unavailable("pjdfstest needs root");
        return;
    }
    let Some(bin) = find_pjdfstest() else {
        unavailable("pjdfstest is not installed");
        return;
    };
    if !user_exists("tests") || !user_exists("nobody") {
        unavailable("the users 'nobody' and 'tests' are missing");
        return;
    }
    let expected = expected_failures();

    let mut fx = Fixture::new();
    // The cases switch to unprivileged users, who must reach the mount.
    fs::set_permissions(fx.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fx.mount_ctl_with(&["-o", "allow_other"]);
    // Other users reach a sealfs mount only through grants: give both
    // every operation on the whole volume (file modes still apply).
    for user in ["nobody", "tests"] {
        let id = Command::new("id").args(["-u", user]).output().unwrap();
        let uid = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let out = Command::new(common::bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&fx.ctl_socket)
            .args(["grant", "create", "--grantee", &format!("uid:{uid}")])
            .args(["--ops", "all", "--path-prefix", "/"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grant for {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let config = fx.scratch.join("pjdfstest.toml");
    fs::write(&config, CONFIG).unwrap();
    let outfile = fx.scratch.join("pjdfstest.out");

    let start = Instant::now();
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&fx.mnt)
        // A path on another filesystem, for the EXDEV cases.
        .arg("-s")
        .arg(&fx.scratch)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&outfile).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pjdfstest did not finish within {RUN_TIMEOUT:?}; output so far:\n{}",
                fs::read_to_string(&outfile).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = fs::read_to_string(&outfile).unwrap();
    let results = parse_results(&out);
    assert!(
        results.len() > 300,
        "pjdfstest ran only {} cases ({status}):\n{out}",
        results.len()
    );

    let count = |o: &str| results.values().filter(|v| *v == o).count();
    let (pass, fail, skip) = (count("ok"), count("FAILED"), count("skipped"));
    eprintln!(
        "pjdfstest on sealfs: {pass} pass, {fail} fail ({} expected), {skip} skip, {} cases, {:.1} s",
        expected.len(),
        results.len(),
        start.elapsed().as_secs_f64()
    );

    let failed: BTreeSet<&String> = results
        .iter()
        .filter(|(_, o)| *o == "FAILED")
        .map(|(n, _)| n)
        .collect();
    let unexpected: Vec<&&String> = failed
        .iter()
        .filter(|n| !expected.contains_key(n.as_str()))
        .collect();
    let now_passing: Vec<&String> = expected
        .keys()
        .filter(|n| results.get(*n).map(String::as_str) == Some("ok"))
        .collect();
    let missing: Vec<&String> = expected
        .keys()
        .filter(|n| !results.contains_key(*n))
        .collect();
    if !unexpected.is_empty() {
        // The failing cases' explanations, from pjdfstest's output.
        let mut detail = String::new();
        let lines: Vec<&str> = out.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.trim_end().ends_with("FAILED") {
                detail.push_str(l);
                detail.push('\n');
                if let Some(next) = lines.get(i + 1) {
                    detail.push_str(next);
                    detail.push('\n');
                }
            }
        }
        panic!(
            "pjdfstest: {} unexpected failure(s): {unexpected:?}\n{detail}\ndaemon log:\n{}",
            unexpected.len(),
            fx.log()
        );
    }
    assert!(
        now_passing.is_empty(),
        "pjdfstest: cases listed in tests/pjdfstest-expected-failures now pass, remove them: {now_passing:?}"
    );
    assert!(
        missing.is_empty(),
        "pjdfstest: listed expected failures that no longer exist, remove them: {missing:?}"
    );
    // Skips: the erofs cases need a read-only filesystem the configuration
    // does not name (ext4 skips them too); link::link_count_max because
    // pathconf(_PC_LINK_MAX) cannot know a FUSE filesystem's limit (glibc
    // answers 127, "unknown", for an f_type it does not list, and the case
    // skips on that); tests/links_xattrs.rs checks EMLINK at the limit.
    let odd_skips: Vec<&String> = results
        .iter()
        .filter(|(n, o)| *o == "skipped" && !n.contains("erofs") && *n != "link::link_count_max")
        .map(|(n, _)| n)
        .collect();
    assert!(
        odd_skips.is_empty(),
        "pjdfstest: skipped for a reason ext4 does not share: {odd_skips:?}"
    );
    fx.unmount();
}
