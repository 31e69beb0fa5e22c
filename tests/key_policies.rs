//! Issue 22 parts 3 and 4: key policies decide both control-socket and
//! FUSE requests, and separate the duties of a key administrator (another
//! uid: rotates, disables and re-enables `finance` over the socket, but
//! reading `/finance` through the mount gets EACCES) from those of a key
//! user (reads and writes `/finance`, cannot rotate or disable); the owner
//! gives and takes both roles. A policy that locks every administrator out
//! is refused. Other users run through `setpriv` (real uids, real
//! syscalls through the kernel's FUSE).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use common::*;

const ADMIN: u32 = 41001;
const USER: u32 = 41002;

/// Runs `args` as `uid` (group `uid`, no supplementary groups).
fn as_uid(uid: u32, args: &[&str]) -> Output {
    as_uid_in(uid, "", args)
}

/// Runs `args` as `uid` (primary group `uid`) with the supplementary
/// groups `groups` (comma-separated; empty: none).
fn as_uid_in(uid: u32, groups: &str, args: &[&str]) -> Output {
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!("--groups={groups}")
    };
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            &groups,
            "--",
        ])
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ctl_as(fx: &Fixture, uid: u32, args: &[&str]) -> Output {
    ctl_as_in(fx, uid, "", args)
}

fn ctl_as_in(fx: &Fixture, uid: u32, groups: &str, args: &[&str]) -> Output {
    let sock = fx.ctl_socket.to_str().unwrap().to_string();
    let mut all = vec![bin(), "ctl", "--socket", &sock];
    all.extend_from_slice(args);
    as_uid_in(uid, groups, &all)
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output, what: &str) -> String {
    assert!(!o.status.success(), "{what} was allowed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn set_policy(fx: &Fixture, policy: &str) -> Output {
    let f = fx.scratch.join("policy.json");
    fs::write(&f, policy).unwrap();
    fx.ctl_output(&[
        "--key",
        "finance",
        "key",
        "policy",
        "set",
        f.to_str().unwrap(),
    ])
}

fn policy(admin_actions: &str, user_actions: &str) -> String {
    format!(
        r#"{{"version": 1, "statements": [
            {{"principals": ["uid:0"], "actions": ["*"]}},
            {{"principals": ["uid:{ADMIN}"], "actions": [{admin_actions}]}},
            {{"principals": ["uid:{USER}"], "actions": [{user_actions}], "path_prefix": "/finance"}}]}}"#
    )
}

/// A mount other users reach (`allow_other`), with key `finance`
/// assigned to `/finance` (0777), which holds `ledger` (0666) and the
/// directory `books` (0777, made after the assignment: its record is
/// wrapped by finance), and `public` (0644) under the default key. Each
/// of `uids` has grants of every operation on `/`, on both keys (a grant
/// opens the entries of the key it names): what separates them is the
/// key policy.
fn finance_mount(uids: &[u32]) -> Fixture {
    let mut fx = Fixture::new();
    // Other users must reach the mount point and the socket.
    fs::set_permissions(fx.root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fx.mount_ctl_with(&["-o", "allow_other"]);
    fx.ctl_ok(&["key", "create", "--alias", "finance"]);
    fs::create_dir(fx.p("finance")).unwrap();
    fs::set_permissions(fx.p("finance"), fs::Permissions::from_mode(0o777)).unwrap();
    fx.ctl_ok(&["key", "assign", "/finance", "finance"]);
    fx.ctl_ok(&["rewrap", "--path", "/finance"]);
    fs::write(fx.p("finance/ledger"), b"ledger").unwrap();
    fs::create_dir(fx.p("finance/books")).unwrap();
    fs::set_permissions(fx.p("finance/books"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(fx.p("finance/ledger"), fs::Permissions::from_mode(0o666)).unwrap();
    fs::write(fx.p("public"), b"public").unwrap();
    fs::set_permissions(fx.p("public"), fs::Permissions::from_mode(0o644)).unwrap();
    for uid in uids {
        grant_on(&fx, *uid, None);
        grant_on(&fx, *uid, Some("finance"));
    }
    fx
}

#[test]
fn an_administrator_who_cannot_read_and_a_user_who_cannot_administer() {
    let mut fx = finance_mount(&[ADMIN, USER]);
    let ledger = fx.p("finance/ledger").to_str().unwrap().to_string();
    let public = fx.p("public").to_str().unwrap().to_string();
    let newfile = fx.p("finance/by-user").to_str().unwrap().to_string();

    // Without a policy: the owner administers; others may not.
    let e = refused(
        &ctl_as(&fx, ADMIN, &["--key", "finance", "rotate"]),
        "rotate without policy",
    );
    assert!(e.contains("forbidden"), "{e}");
    // And grants alone decide use: both read.
    ok(
        &as_uid(ADMIN, &["cat", &ledger]),
        "admin reads before the policy",
    );

    // Lockout safety: nobody would keep admin:policy.
    let o = set_policy(
        &fx,
        &format!(
            r#"{{"version":1,"statements":[{{"principals":["uid:{ADMIN}"],"actions":["admin:rotate"]}}]}}"#
        ),
    );
    let e = refused(&o, "a lockout policy");
    assert!(e.contains("lockout"), "{e}");
    let o = set_policy(
        &fx,
        r#"{"version":1,"statements":[{"principals":["nosuchuser"],"actions":["*"]}]}"#,
    );
    assert!(refused(&o, "unknown user").contains("nosuchuser"));

    // The owner gives the two roles.
    let out = ok(
        &set_policy(
            &fx,
            &policy(
                r#""admin:rotate", "admin:disable", "admin:enable""#,
                r#""use:read", "use:write""#,
            ),
        ),
        "set policy",
    );
    assert!(out.contains("sha256"), "{out}");
    let stored = fx.ctl_ok(&["--key", "finance", "key", "policy", "get"]);
    assert!(stored.contains(&format!("uid:{ADMIN}")), "{stored}");

    // The administrator rotates, disables and re-enables over the socket...
    let r = ok(
        &ctl_as(&fx, ADMIN, &["--json", "--key", "finance", "rotate"]),
        "admin rotates",
    );
    assert!(r.contains("primary"), "{r}");
    ok(
        &ctl_as(&fx, ADMIN, &["--key", "finance", "disable"]),
        "admin disables",
    );
    assert_eq!(
        ok(&as_uid(USER, &["cat", &public]), "others' keys work on"),
        "public"
    );
    let e = refused(&as_uid(USER, &["cat", &ledger]), "read while disabled");
    assert!(e.contains("Permission denied"), "{e}");
    ok(
        &ctl_as(&fx, ADMIN, &["--key", "finance", "enable"]),
        "admin enables",
    );
    // ... but may not read finance data, nor change the policy, nor touch
    // the default key or the volume.
    let e = refused(&as_uid(ADMIN, &["cat", &ledger]), "admin reads finance");
    assert!(e.contains("Permission denied"), "{e}");
    let e = refused(
        &as_uid(ADMIN, &["ls", fx.p("finance/books").to_str().unwrap()]),
        "admin lists a finance directory",
    );
    assert!(e.contains("Permission denied"), "{e}");
    assert_eq!(
        ok(&as_uid(ADMIN, &["cat", &public]), "admin reads public"),
        "public"
    );
    refused(
        &ctl_as(
            &fx,
            ADMIN,
            &["--key", "finance", "key", "policy", "set", "none"],
        ),
        "admin sets policy",
    );
    refused(
        &ctl_as(&fx, ADMIN, &["rotate"]),
        "admin rotates the default key",
    );
    refused(
        &ctl_as(&fx, ADMIN, &["disable"]),
        "admin disables the volume",
    );
    refused(&ctl_as(&fx, ADMIN, &["status"]), "admin reads status");

    // The user reads and writes finance, but administers nothing.
    assert_eq!(ok(&as_uid(USER, &["cat", &ledger]), "user reads"), "ledger");
    ok(
        &as_uid(USER, &["sh", "-c", &format!("echo written > {newfile}")]),
        "user writes",
    );
    assert_eq!(fs::read(&newfile).unwrap(), b"written\n");
    for args in [
        vec!["--key", "finance", "rotate"],
        vec!["--key", "finance", "disable"],
        vec!["--key", "finance", "key", "policy", "get"],
    ] {
        let e = refused(&ctl_as(&fx, USER, &args), "user administers");
        assert!(e.contains("forbidden"), "{args:?}: {e}");
    }

    // The owner takes both roles away (and gives the admin read).
    ok(
        &set_policy(&fx, &policy(r#""use:read""#, r#""admin:enable""#)),
        "swap roles",
    );
    refused(
        &ctl_as(&fx, ADMIN, &["--key", "finance", "rotate"]),
        "admin after removal",
    );
    assert_eq!(
        ok(&as_uid(ADMIN, &["cat", &ledger]), "admin reads now"),
        "ledger"
    );
    refused(&as_uid(USER, &["cat", &ledger]), "user after removal");
    ok(
        &ctl_as(&fx, USER, &["--key", "finance", "enable"]),
        "user may enable now",
    );

    // Every policy change is audited with both hashes; denials too.
    let audit = fx.ctl_ok(&["audit", "export"]);
    assert!(audit.contains("set_key_policy"), "{audit}");
    assert!(audit.contains("policy sha256 none ->"), "{audit}");
    assert!(audit.contains("does not allow"), "{audit}");

    // Policies survive a remount (they are in the keyring).
    fx.unmount();
    fx.mount_ctl_with(&["-o", "allow_other"]);
    let e = refused(&as_uid(USER, &["cat", &ledger]), "user after remount");
    assert!(e.contains("Permission denied"), "{e}");
    assert_eq!(
        ok(&as_uid(ADMIN, &["cat", &ledger]), "admin after remount"),
        "ledger"
    );
    // Cleared: back to owner-administers, grants-decide-use.
    fx.ctl_ok(&["--key", "finance", "key", "policy", "set", "none"]);
    assert_eq!(
        ok(&as_uid(USER, &["cat", &ledger]), "user after clear"),
        "ledger"
    );
    fx.unmount();
}

#[test]
fn a_gid_principal_matches_a_supplementary_group_of_fuse_and_socket_requesters() {
    const GROUP: u32 = 41077;
    let mut fx = finance_mount(&[USER]);
    let ledger = fx.p("finance/ledger").to_str().unwrap().to_string();
    ok(
        &set_policy(
            &fx,
            &format!(
                r#"{{"version": 1, "statements": [
                    {{"principals": ["uid:0"], "actions": ["*"]}},
                    {{"principals": ["gid:{GROUP}"], "actions": ["use:read", "admin:rotate"]}}]}}"#
            ),
        ),
        "set policy",
    );
    // Primary group only (setpriv --clear-groups): neither a FUSE request
    // nor a socket request matches gid:GROUP.
    refused(&as_uid(USER, &["cat", &ledger]), "read without the group");
    let e = refused(
        &ctl_as(&fx, USER, &["--key", "finance", "rotate"]),
        "rotate without the group",
    );
    assert!(e.contains("forbidden"), "{e}");
    // GROUP as a supplementary group, alone or among others: both match
    // (the FUSE request's groups come from /proc/PID/status, the socket
    // peer's too: SO_PEERCRED names the primary group only).
    for groups in [format!("{GROUP}"), format!("41078,{GROUP},41079")] {
        assert_eq!(
            ok(
                &as_uid_in(USER, &groups, &["cat", &ledger]),
                "read in the group"
            ),
            "ledger"
        );
        let r = ok(
            &ctl_as_in(
                &fx,
                USER,
                &groups,
                &["--json", "--key", "finance", "rotate"],
            ),
            "rotate in the group",
        );
        assert!(r.contains("primary"), "{r}");
    }
    // Groups are read per request, never kept for the uid: the same user
    // without the group is refused again at once.
    refused(
        &as_uid(USER, &["cat", &ledger]),
        "read without the group again",
    );
    // What the statement does not allow stays refused to the group.
    let e = refused(
        &as_uid_in(
            USER,
            &format!("{GROUP}"),
            &["sh", "-c", &format!("echo more >> {ledger}")],
        ),
        "write in the group (use:read only)",
    );
    assert!(e.contains("Permission denied"), "{e}");
    refused(
        &ctl_as_in(
            &fx,
            USER,
            &format!("{GROUP}"),
            &["--key", "finance", "disable"],
        ),
        "disable in the group (admin:rotate only)",
    );
    fx.unmount();
}

#[test]
fn an_entry_without_attributes_is_refused_as_one_with_them() {
    // A caller refused the use of an entry's key must not learn which
    // entries have attributes: "Permission denied" for both, never "No
    // such attribute" for the bare one.
    let mut fx = finance_mount(&[ADMIN, USER]);
    let tagged = fx.p("finance/ledger").to_str().unwrap().to_string();
    let bare = fx.p("finance/bare").to_str().unwrap().to_string();
    let bare_dir = fx.p("finance/books").to_str().unwrap().to_string();
    fs::write(&bare, b"no attributes").unwrap();
    fs::set_permissions(&bare, fs::Permissions::from_mode(0o666)).unwrap();
    let o = Command::new("setfattr")
        .args(["-n", "user.tag", "-v", "tagged", &tagged])
        .output()
        .unwrap();
    assert!(o.status.success(), "owner sets: {o:?}");
    ok(
        &set_policy(&fx, &policy(r#""admin:*""#, r#""use:read""#)),
        "set policy",
    );
    for p in [&tagged, &bare, &bare_dir] {
        for (args, what) in [
            (vec!["getfattr", "-n", "user.tag", p.as_str()], "get"),
            (vec!["getfattr", "-d", p.as_str()], "list"),
            (vec!["setfattr", "-x", "user.tag", p.as_str()], "remove"),
        ] {
            let e = refused(&as_uid(ADMIN, &args), what);
            assert!(e.contains("Permission denied"), "admin {what} {p}: {e}");
        }
    }
    // The user may read: the bare entries answer "no such attribute".
    for p in [&bare, &bare_dir] {
        let e = refused(
            &as_uid(USER, &["getfattr", "-n", "user.tag", p]),
            "user get bare",
        );
        assert!(e.contains("No such attribute"), "user get {p}: {e}");
        let l = ok(&as_uid(USER, &["getfattr", "-d", p]), "user list bare");
        assert!(l.trim().is_empty(), "user list {p}: {l}");
    }
    // A caller who may write but not read still writes (the kernel reads
    // security.capability before a write).
    ok(
        &set_policy(&fx, &policy(r#""admin:*""#, r#""use:write""#)),
        "set write-only policy",
    );
    let o = as_uid(USER, &["sh", "-c", &format!("printf more >> {bare}")]);
    ok(&o, "write-only user appends");
    assert_eq!(fs::read(&bare).unwrap(), b"no attributesmore");
    fx.unmount();
}

#[test]
fn extended_attributes_are_decided_as_reads_and_writes_of_their_entry() {
    let mut fx = finance_mount(&[ADMIN, USER]);
    let ledger = fx.p("finance/ledger").to_str().unwrap().to_string();
    let books = fx.p("finance/books").to_str().unwrap().to_string();
    let public = fx.p("public").to_str().unwrap().to_string();
    let get =
        |uid: u32, path: &str| as_uid(uid, &["getfattr", "--only-values", "-n", "user.tag", path]);
    for p in [&ledger, &books, &public] {
        let o = Command::new("setfattr")
            .args(["-n", "user.tag", "-v", "tagged", p])
            .output()
            .unwrap();
        assert!(o.status.success(), "owner sets {p}: {o:?}");
    }
    // Before a policy, grants decide: both read the attribute (which also
    // caches the file's attribute keys in the daemon).
    for uid in [ADMIN, USER] {
        assert_eq!(ok(&get(uid, &ledger), "read before the policy"), "tagged");
    }
    ok(
        &set_policy(&fx, &policy(r#""admin:*""#, r#""use:read""#)),
        "set policy",
    );
    // The administrator: no use of finance, so no attribute of a finance
    // file or directory (get, list, set, remove), though they are cached.
    for p in [&ledger, &books] {
        let e = refused(&get(ADMIN, p), "admin getxattr");
        assert!(e.contains("Permission denied"), "{p}: {e}");
        let e = refused(&as_uid(ADMIN, &["getfattr", "-d", p]), "admin listxattr");
        assert!(e.contains("Permission denied"), "{p}: {e}");
        for args in [
            vec!["setfattr", "-n", "user.other", "-v", "x", p],
            vec!["setfattr", "-x", "user.tag", p],
        ] {
            let e = refused(&as_uid(ADMIN, &args), "admin set/remove");
            assert!(e.contains("Permission denied"), "{args:?}: {e}");
        }
    }
    // The default key has no policy: its entries' attributes work on.
    assert_eq!(ok(&get(ADMIN, &public), "admin reads public"), "tagged");
    // The user may read (get and list), not write (set, remove).
    for p in [&ledger, &books] {
        assert_eq!(ok(&get(USER, p), "user getxattr"), "tagged");
        let l = ok(&as_uid(USER, &["getfattr", "-d", p]), "user listxattr");
        assert!(l.contains("user.tag"), "{l}");
        for args in [
            vec!["setfattr", "-n", "user.other", "-v", "x", p],
            vec!["setfattr", "-x", "user.tag", p],
        ] {
            let e = refused(&as_uid(USER, &args), "user set/remove");
            assert!(e.contains("Permission denied"), "{args:?}: {e}");
        }
    }
    // A disabled key stops the attributes of its entries too, the cached
    // ones included (the owner's read above cached them).
    fx.ctl_ok(&["--key", "finance", "disable"]);
    for p in [&ledger, &books] {
        let o = Command::new("getfattr")
            .args(["--only-values", "-n", "user.tag", p])
            .output()
            .unwrap();
        let e = refused(&o, "owner getxattr while disabled");
        assert!(e.contains("Permission denied"), "{p}: {e}");
    }
    fx.ctl_ok(&["--key", "finance", "enable"]);
    let o = Command::new("getfattr")
        .args(["--only-values", "-n", "user.tag", &ledger])
        .output()
        .unwrap();
    assert_eq!(ok(&o, "owner after enable"), "tagged");
    // Nothing was changed by the refused requests.
    let o = Command::new("getfattr")
        .args(["-d", &ledger])
        .output()
        .unwrap();
    let all = ok(&o, "owner lists");
    assert!(!all.contains("user.other"), "{all}");
    fx.unmount();
}

#[test]
fn audit_records_of_fuse_requests_name_the_key_of_their_entry() {
    let mut fx = finance_mount(&[]);
    let primary_of = |alias: &str| -> u64 {
        let l: serde_json::Value =
            serde_json::from_str(&fx.ctl_ok(&["--json", "key", "list"])).unwrap();
        l["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["aliases"].as_array().unwrap().iter().any(|a| a == alias))
            .unwrap()["primary"]
            .as_u64()
            .unwrap()
    };
    // Entries of finance under a version made after the mount cached
    // them (versions are unique across keys: the default key's is 1).
    fx.ctl_ok(&["--key", "finance", "rotate"]);
    fx.ctl_ok(&["--key", "finance", "rewrap"]);
    let (finance, default) = (primary_of("finance"), primary_of("default"));
    assert_ne!(finance, default);
    fs::rename(fx.p("finance/ledger"), fx.p("finance/moved")).unwrap();
    fs::rename(fx.p("finance/books"), fx.p("finance/shelf")).unwrap();
    fs::hard_link(fx.p("finance/moved"), fx.p("finance/linked")).unwrap();
    fs::read_dir(fx.p("finance/shelf")).unwrap().for_each(drop);
    fs::rename(fx.p("public"), fx.p("public2")).unwrap();
    let audit = fx.ctl_ok(&["audit", "export"]);
    let records: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let version_of = |op: &str, path: &str| -> u64 {
        let r = records
            .iter()
            .rev()
            .find(|r| r["op"] == op && r["path"].as_str().is_some_and(|p| p.ends_with(path)))
            .unwrap_or_else(|| panic!("no {op} record of {path} in {audit}"));
        r["key_version"]
            .as_u64()
            .unwrap_or_else(|| panic!("{op} {path} names no key: {r}"))
    };
    assert_eq!(
        version_of("re_encrypt", "/finance/moved"),
        finance,
        "rename of a file"
    );
    assert_eq!(
        version_of("re_encrypt", "/finance/shelf"),
        finance,
        "rename of a directory"
    );
    assert_eq!(version_of("re_encrypt", "/finance/linked"), finance, "link");
    assert_eq!(version_of("list", "/finance/shelf"), finance, "list");
    assert_eq!(
        version_of("re_encrypt", "/public2"),
        default,
        "rename under the default key"
    );
    fx.unmount();
}

/// `grant create` as the owner (`key`: `--key`), returning the grant id.
fn grant_on(fx: &Fixture, uid: u32, key: Option<&str>) -> String {
    let mut args = Vec::new();
    if let Some(k) = key {
        args.extend(["--key", k]);
    }
    let grantee = format!("uid:{uid}");
    args.extend([
        "grant",
        "create",
        "--grantee",
        &grantee,
        "--ops",
        "all",
        "--path-prefix",
        "/",
    ]);
    let out = fx.ctl_ok(&args);
    out.lines()
        .find_map(|l| l.strip_prefix("grant "))
        .unwrap_or_else(|| panic!("no grant id in {out}"))
        .to_string()
}

#[test]
fn a_grant_opens_only_the_entries_of_the_key_it_names() {
    let mut fx = finance_mount(&[]);
    fx.ctl_ok(&["key", "create", "--alias", "hr"]);
    fs::create_dir(fx.p("hr")).unwrap();
    fs::set_permissions(fx.p("hr"), fs::Permissions::from_mode(0o777)).unwrap();
    fx.ctl_ok(&["key", "assign", "/hr", "hr"]);
    fx.ctl_ok(&["rewrap", "--path", "/hr"]);
    fs::write(fx.p("hr/memo"), b"memo").unwrap();
    fs::set_permissions(fx.p("hr/memo"), fs::Permissions::from_mode(0o666)).unwrap();
    let o = Command::new("setfattr")
        .args(["-n", "user.tag", "-v", "t"])
        .arg(fx.p("hr/memo"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let ledger = fx.p("finance/ledger").to_str().unwrap().to_string();
    let memo = fx.p("hr/memo").to_str().unwrap().to_string();
    let public = fx.p("public").to_str().unwrap().to_string();
    let books = fx.p("finance/books").to_str().unwrap().to_string();
    let hr = fx.p("hr").to_str().unwrap().to_string();

    // A grant on finance (prefix /): finance entries open, others do not,
    // whatever the path says.
    let fin = grant_on(&fx, USER, Some("finance"));
    assert_eq!(
        ok(&as_uid(USER, &["cat", &ledger]), "read finance"),
        "ledger"
    );
    ok(&as_uid(USER, &["ls", &books]), "list a finance directory");
    ok(
        &as_uid(USER, &["sh", "-c", &format!("echo new > {books}/n")]),
        "create under finance",
    );
    for (what, args) in [
        ("read hr", vec!["cat", memo.as_str()]),
        ("read the default key's", vec!["cat", public.as_str()]),
        ("list hr", vec!["ls", hr.as_str()]),
        ("getxattr hr", vec!["getfattr", "-d", memo.as_str()]),
    ] {
        let e = refused(&as_uid(USER, &args), what);
        assert!(e.contains("Permission denied"), "{what}: {e}");
    }
    let e = refused(
        &as_uid(USER, &["sh", "-c", &format!("echo x > {hr}/new")]),
        "create under hr",
    );
    assert!(e.contains("Permission denied"), "{e}");
    let list = fx.ctl_ok(&["grant", "list"]);
    assert!(list.contains(&fin) && list.contains("key 2"), "{list}");
    let cfg = fs::read_to_string(fx.cipher.join("sealfs.toml")).unwrap();
    assert!(cfg.contains("\"key-grants\""), "{cfg}");

    // With a grant on hr made first (found first by path), both open: each
    // entry through the grant on its own key.
    let on_hr = grant_on(&fx, USER, Some("hr"));
    assert_eq!(ok(&as_uid(USER, &["cat", &memo]), "read hr"), "memo");
    assert_eq!(
        ok(&as_uid(USER, &["cat", &ledger]), "read finance"),
        "ledger"
    );
    // Revoking the finance grant stops finance only.
    fx.ctl_ok(&["grant", "revoke", &fin]);
    refused(&as_uid(USER, &["cat", &ledger]), "finance after revoke");
    assert_eq!(
        ok(&as_uid(USER, &["cat", &memo]), "hr after revoke"),
        "memo"
    );
    // A grant without --key means the default key, as every grant did.
    grant_on(&fx, USER, None);
    assert_eq!(
        ok(&as_uid(USER, &["cat", &public]), "default key"),
        "public"
    );
    refused(
        &as_uid(USER, &["cat", &ledger]),
        "finance through a default grant",
    );

    // admin:grant on finance: ADMIN grants and revokes finance, not hr
    // (no policy: the owner only) nor the default key.
    ok(
        &set_policy(&fx, &policy(r#""admin:grant""#, r#""use:*""#)),
        "set policy",
    );
    let sock_args = |key: &str| {
        vec![
            "--key".to_string(),
            key.to_string(),
            "grant".into(),
            "create".into(),
            "--grantee".into(),
            format!("uid:{USER}"),
            "--ops".into(),
            "read".into(),
            "--path-prefix".into(),
            "/finance".into(),
        ]
    };
    let args = sock_args("finance");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&ctl_as(&fx, ADMIN, &args), "admin grants finance");
    let by_admin = out
        .lines()
        .find_map(|l| l.strip_prefix("grant "))
        .unwrap()
        .to_string();
    assert_eq!(
        ok(&as_uid(USER, &["cat", &ledger]), "through admin's grant"),
        "ledger"
    );
    for key in ["hr", "default"] {
        let args = sock_args(key);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = refused(&ctl_as(&fx, ADMIN, &args), "admin grants another key");
        assert!(e.contains("forbidden"), "{key}: {e}");
    }
    let e = refused(
        &ctl_as(&fx, ADMIN, &["grant", "revoke", &on_hr]),
        "admin revokes an hr grant",
    );
    assert!(e.contains("forbidden"), "{e}");
    ok(
        &ctl_as(&fx, ADMIN, &["grant", "revoke", &by_admin]),
        "admin revokes a finance grant",
    );
    refused(&as_uid(USER, &["cat", &ledger]), "after admin's revoke");
    // Grants (and their keys) survive a remount.
    fx.unmount();
    fx.mount_ctl_with(&["-o", "allow_other"]);
    assert_eq!(ok(&as_uid(USER, &["cat", &memo]), "hr remounted"), "memo");
    refused(&as_uid(USER, &["cat", &ledger]), "finance remounted");
    fx.unmount();
}
