//! Issue 21.6: times as people read them. RFC 3339 UTC wherever a human
//! reads a time (`ctl status`, `schedule-deletion`), the epoch kept in
//! `--json` with the date beside it, pending deletion dates in `ctl
//! status`, and expiry dates checked (`2027-02-31` refused, offsets
//! accepted).

mod common;

use std::process::Output;

use common::*;

fn ctl(fx: &Fixture, args: &[&str]) -> Output {
    fx.ctl_output(args)
}

fn ok(fx: &Fixture, args: &[&str]) -> String {
    fx.ctl_ok(args)
}

/// Whether `s` holds an RFC 3339 UTC time (`YYYY-MM-DDTHH:MM:SSZ`).
fn has_rfc3339(s: &str) -> bool {
    s.split_whitespace().any(|w| {
        let w = w.trim_matches(|c: char| c == ',' || c == '(' || c == ')');
        w.len() == 20
            && w.as_bytes()[4] == b'-'
            && w.as_bytes()[10] == b'T'
            && w.ends_with('Z')
            && w.parse::<jiff::Timestamp>().is_ok()
    })
}

#[test]
fn status_and_deletion_dates_read_as_rfc3339() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    std::fs::write(fx.p("f"), b"data").unwrap();
    let st = ok(&fx, &["status"]);
    assert!(!st.contains("unix time"), "{st}");
    assert!(has_rfc3339(&st), "{st}");

    ok(&fx, &["rotate"]);
    ok(&fx, &["rewrap"]);
    ok(&fx, &["trim", "2"]);
    let out = ok(&fx, &["schedule-deletion", "1", "--wait", "7d"]);
    assert!(
        out.contains("will be destroyed at") && has_rfc3339(&out),
        "{out}"
    );
    assert!(!out.contains("unix time"), "{out}");
    let st = ok(&fx, &["status"]);
    let v1 = st
        .lines()
        .find(|l| l.trim_start().starts_with("v1 "))
        .unwrap();
    assert!(v1.contains("destroyed at") && has_rfc3339(v1), "{st}");

    // --json: the epoch stays, the date beside it.
    let j: serde_json::Value = serde_json::from_str(&ok(&fx, &["--json", "status"])).unwrap();
    let v = &j["versions"][0];
    let created = v["created"].as_u64().expect("epoch kept");
    let utc = v["created_utc"].as_str().expect("date beside it");
    let t: jiff::Timestamp = utc.parse().unwrap();
    assert_eq!(t.as_second() as u64, created);
    let v1 = j["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 1)
        .unwrap();
    assert!(
        v1["deletion_due"].is_u64() && v1["deletion_due_utc"].is_string(),
        "{v1}"
    );
    ok(&fx, &["cancel-deletion", "1"]);
    fx.unmount();
}

#[test]
fn expiry_dates_are_checked_and_offsets_accepted() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let create = |expires: &str| {
        ctl(
            &fx,
            &[
                "--json",
                "grant",
                "create",
                "--grantee",
                "uid:4242",
                "--ops",
                "read",
                "--path-prefix",
                "/",
                "--expires",
                expires,
            ],
        )
    };
    let out = create("2027-02-31");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "2027-02-31 was accepted");
    assert!(err.contains("2027-02-31"), "{err}");

    let out = create("2027-02-28T10:00+02:00");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(g["expires"], "2027-02-28T08:00:00Z", "{g}");
    fx.unmount();
}
