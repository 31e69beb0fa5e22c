//! Real tools on a sealfs mount: cp, tar, rsync, git, sqlite3.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Returns false (and says why) when `tool` is not installed.
fn need(tool: &str) -> bool {
    if have_tool(tool) {
        true
    } else {
        eprintln!("SKIPPED: '{tool}' is not installed on this machine");
        false
    }
}

/// Builds a source tree with files of various sizes, modes, a subdir and symlinks.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::create_dir(root.join("empty")).unwrap();
    let mut rng = Rng::new(0xC0FFEE);
    let sizes = [0usize, 1, 4095, 4096, 4097, 12_345, 100_000, 600_000];
    for (i, s) in sizes.iter().enumerate() {
        fs::write(root.join(format!("f{i}-{s}.bin")), rng.bytes(*s)).unwrap();
    }
    fs::write(root.join("sub/readme.txt"), "hello from sub\n".repeat(100)).unwrap();
    fs::write(root.join("sub/deeper/big.bin"), rng.bytes(1_100_000)).unwrap();
    fs::write(root.join("sub/exec.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::write(root.join("sub/ro.txt"), "read only").unwrap();
    fs::write(root.join("name with spaces & ünïcödé"), "x").unwrap();
    std::os::unix::fs::symlink("sub/readme.txt", root.join("link-to-readme")).unwrap();
    std::os::unix::fs::symlink("../f1-1.bin", root.join("sub/deeper/up-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::set_permissions(root.join("sub/exec.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("sub/ro.txt"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(root.join("f0-0.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("sub/deeper"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o751)).unwrap();
    // Fixed mtimes on a few files so preservation is checked to the second.
    for (p, t) in [
        ("f3-4096.bin", 1_000_000_000i64),
        ("sub/readme.txt", 1_200_000_000),
    ] {
        let c = cpath(&root.join(p));
        let ts = [
            libc::timespec {
                tv_sec: t,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: t,
                tv_nsec: 0,
            },
        ];
        // SAFETY: valid C string and timespec array.
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) },
            0
        );
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        mtime: i64,
        data_len: usize,
        hash: u64,
    },
    Link {
        target: PathBuf,
    },
}

fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// How strictly two trees are compared.
#[derive(Clone, Copy, PartialEq)]
enum Strict {
    /// Types, modes, file mtimes, contents, link targets.
    Full,
    /// Contents and link targets only, directories ignored (what git keeps).
    ContentOnly,
}

/// A comparable description of a tree.
fn describe(root: &Path, strict: Strict) -> BTreeMap<PathBuf, Node> {
    let with_mtime = strict == Strict::Full;
    let modes = strict != Strict::ContentOnly;
    let mut out = BTreeMap::new();
    walk(root, &mut |p, md| {
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let ft = md.file_type();
        let node = if ft.is_dir() {
            if !modes {
                return;
            }
            Node::Dir {
                mode: md.mode() & 0o7777,
            }
        } else if ft.is_symlink() {
            Node::Link {
                target: fs::read_link(p).unwrap(),
            }
        } else {
            let data = fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            Node::File {
                mode: if modes { md.mode() & 0o7777 } else { 0 },
                mtime: if with_mtime { md.mtime() } else { 0 },
                data_len: data.len(),
                hash: fnv(&data),
            }
        };
        out.insert(rel, node);
    });
    out
}

#[track_caller]
fn assert_same_tree(got: &Path, want: &Path, strict: Strict) {
    let g = describe(got, strict);
    let w = describe(want, strict);
    for (k, v) in &w {
        match g.get(k) {
            None => panic!("{} missing from {}", k.display(), got.display()),
            Some(gv) => assert_eq!(gv, v, "{} differs", k.display()),
        }
    }
    for k in g.keys() {
        assert!(
            w.contains_key(k),
            "unexpected {} in {}",
            k.display(),
            got.display()
        );
    }
}

#[test]
fn cp_a_tree_and_diff() {
    if !need("cp") || !need("diff") {
        return;
    }
    let mut fx = Fixture::mounted();
    let src = fx.scratch.join("src");
    make_tree(&src);
    run_ok(Command::new("cp").arg("-a").arg(&src).arg(fx.p("copy")));
    run_ok(
        Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&src)
            .arg(fx.p("copy")),
    );
    assert_same_tree(&fx.p("copy"), &src, Strict::Full);
    fx.remount();
    run_ok(
        Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&src)
            .arg(fx.p("copy")),
    );
    assert_same_tree(&fx.p("copy"), &src, Strict::Full);
    // And back out again.
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(fx.p("copy"))
            .arg(fx.scratch.join("back")),
    );
    assert_same_tree(&fx.scratch.join("back"), &src, Strict::Full);
    // du works and counts something for the big files.
    let du = run_ok(Command::new("du").arg("-sk").arg(fx.p("copy")));
    let kib: u64 = du.split_whitespace().next().unwrap().parse().unwrap();
    assert!(kib >= 1_800, "du -sk reports {kib} KiB for ~1.9 MB of data");
}

#[test]
fn tar_round_trip() {
    if !need("tar") {
        return;
    }
    let mut fx = Fixture::mounted();
    let src = fx.scratch.join("src");
    make_tree(&src);
    let outside = fx.scratch.join("a.tar");
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&outside)
            .arg("-C")
            .arg(&src)
            .arg("."),
    );
    // Extract into the mount.
    fs::create_dir(fx.p("x")).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xpf")
            .arg(&outside)
            .arg("-C")
            .arg(fx.p("x")),
    );
    assert_same_tree(&fx.p("x"), &src, Strict::Full);
    // Archive from the mount into the mount, then extract it outside.
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(fx.p("b.tar"))
            .arg("-C")
            .arg(fx.p("x"))
            .arg("."),
    );
    fx.remount();
    let out = fx.scratch.join("out");
    fs::create_dir(&out).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xpf")
            .arg(fx.p("b.tar"))
            .arg("-C")
            .arg(&out),
    );
    assert_same_tree(&out, &src, Strict::Full);
    // tar's own compare mode agrees with the mounted copy.
    run_ok(
        Command::new("tar")
            .arg("--compare")
            .arg("-f")
            .arg(&outside)
            .arg("-C")
            .arg(fx.p("x")),
    );
}

#[test]
fn rsync_then_checksum_dry_run_has_nothing_to_do() {
    if !need("rsync") {
        return;
    }
    let mut fx = Fixture::mounted();
    let src = fx.scratch.join("src");
    make_tree(&src);
    let s = format!("{}/", src.display());
    let d = format!("{}/", fx.p("r").display());
    run_ok(Command::new("rsync").arg("-a").arg(&s).arg(&d));
    let check = || {
        let out = run_ok(
            Command::new("rsync")
                .args(["-a", "--checksum", "--dry-run", "--itemize-changes"])
                .arg(&s)
                .arg(&d),
        );
        assert!(out.trim().is_empty(), "rsync still finds changes:\n{out}");
    };
    check();
    assert_same_tree(&fx.p("r"), &src, Strict::Full);
    fx.remount();
    check();
    // An incremental update: change one file, rsync moves just that.
    fs::write(src.join("sub/readme.txt"), "changed\n").unwrap();
    let out = run_ok(
        Command::new("rsync")
            .args(["-a", "--itemize-changes"])
            .arg(&s)
            .arg(&d),
    );
    assert!(
        out.contains("sub/readme.txt"),
        "rsync did not update the changed file:\n{out}"
    );
    check();
    assert_eq!(
        fs::read_to_string(fx.p("r/sub/readme.txt")).unwrap(),
        "changed\n"
    );
}

fn git(dir: &Path, home: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_DATE", "2020-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2020-01-01T00:00:00Z")
        .args([
            "-c",
            "user.name=Sealfs Test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args(["-c", "init.defaultBranch=main"]);
    c
}

#[test]
fn git_init_commit_clone_fsck() {
    if !need("git") {
        return;
    }
    let mut fx = Fixture::mounted();
    let home = fx.scratch.clone();
    let repo = fx.p("repo");
    fs::create_dir(&repo).unwrap();
    run_ok(git(&repo, &home).arg("init").arg("-q"));
    make_tree(&repo.join("tree"));
    fs::write(repo.join("README"), "sealfs git test\n").unwrap();
    run_ok(git(&repo, &home).args(["add", "-A"]));
    run_ok(git(&repo, &home).args(["commit", "-q", "-m", "first commit"]));
    fs::write(repo.join("README"), "second version\n").unwrap();
    run_ok(git(&repo, &home).args(["commit", "-q", "-a", "-m", "second commit"]));
    run_ok(git(&repo, &home).args(["fsck", "--full", "--strict"]));

    // Clone inside the mount (a local clone tries hard links, which sealfs
    // refuses; git falls back to copying).
    run_ok(git(&fx.mnt, &home).args(["clone", "-q", "repo", "clone"]));
    let log = run_ok(git(&fx.p("clone"), &home).args(["log", "--format=%s"]));
    assert_eq!(log, "second commit\nfirst commit\n");
    run_ok(git(&fx.p("clone"), &home).args(["fsck", "--full", "--strict"]));
    run_ok(git(&fx.p("clone"), &home).args(["diff", "--exit-code", "HEAD"]));
    assert_eq!(
        fs::read_to_string(fx.p("clone/README")).unwrap(),
        "second version\n"
    );
    assert_same_tree(&fx.p("clone/tree"), &repo.join("tree"), Strict::ContentOnly);

    // gc repacks (renames, unlinks, big pack writes), then all still checks.
    run_ok(git(&repo, &home).args(["gc", "-q"]));
    fx.remount();
    run_ok(git(&repo, &home).args(["fsck", "--full", "--strict"]));
    let log = run_ok(git(&fx.p("clone"), &home).args(["log", "--format=%s"]));
    assert_eq!(log, "second commit\nfirst commit\n");
    let st = run_ok(git(&fx.p("clone"), &home).args(["status", "--porcelain"]));
    assert!(st.is_empty(), "clone is dirty after remount:\n{st}");
}

fn sqlite(db: &Path, sql: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sqlite3")
        .arg("-batch")
        .arg("-bail")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sqlite3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3 failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn thousand_rows_script(journal: &str) -> String {
    let mut sql = format!("PRAGMA journal_mode={journal};\nCREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, blob BLOB);\nBEGIN;\n");
    for i in 0..1000 {
        sql.push_str(&format!(
            "INSERT INTO t(id, name, blob) VALUES({i}, 'row {i} {}', randomblob({}));\n",
            "n".repeat(i % 50),
            (i * 37) % 3000
        ));
    }
    sql.push_str("COMMIT;\n");
    sql
}

#[test]
fn sqlite_transaction_and_integrity() {
    if !need("sqlite3") {
        return;
    }
    let mut fx = Fixture::mounted();
    for (journal, name) in [("delete", "rollback.db"), ("wal", "wal.db")] {
        let db = fx.p(name);
        let out = sqlite(&db, &thousand_rows_script(journal));
        assert_eq!(out.trim(), journal, "journal_mode for {name}");
        assert_eq!(
            sqlite(&db, "SELECT count(*) FROM t;").trim(),
            "1000",
            "{name}"
        );
        assert_eq!(
            sqlite(&db, "PRAGMA integrity_check;").trim(),
            "ok",
            "{name}"
        );
        // Updates and deletes in a second transaction, one rolled back.
        sqlite(
            &db,
            "BEGIN; UPDATE t SET name = name || '!' WHERE id % 3 = 0; DELETE FROM t WHERE id >= 900; COMMIT;\n\
             BEGIN; DELETE FROM t; ROLLBACK;\n",
        );
        assert_eq!(
            sqlite(&db, "SELECT count(*) FROM t;").trim(),
            "900",
            "{name}"
        );
    }
    fx.remount();
    for name in ["rollback.db", "wal.db"] {
        let db = fx.p(name);
        assert_eq!(
            sqlite(&db, "PRAGMA integrity_check;").trim(),
            "ok",
            "{name} after remount"
        );
        assert_eq!(
            sqlite(&db, "SELECT count(*) FROM t;").trim(),
            "900",
            "{name} after remount"
        );
        assert_eq!(
            sqlite(&db, "SELECT count(*) FROM t WHERE name LIKE '%!';").trim(),
            "300",
            "{name} after remount"
        );
    }
}
