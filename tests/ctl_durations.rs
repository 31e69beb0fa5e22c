//! Issue 21.3 and 21.7: durations need a unit and a rotation period has a
//! floor of a day (`--allow-short` overrides it); the README's
//! `schedule-deletion 1 --wait 7d` works as written when no header uses
//! the version (no `--yes` demanded for nothing to lose).

mod common;

use std::process::Output;

use common::*;

fn ctl(fx: &Fixture, args: &[&str]) -> Output {
    fx.ctl_output(args)
}

fn ok(fx: &Fixture, args: &[&str]) -> String {
    fx.ctl_ok(args)
}

fn status_json(fx: &Fixture) -> serde_json::Value {
    serde_json::from_str(&ok(fx, &["--json", "status"])).unwrap()
}

#[test]
fn rotation_period_needs_a_unit_and_a_day() {
    let mut fx = Fixture::new();
    fx.mount_ctl();

    // A bare number: refused, naming the units.
    let out = ctl(&fx, &["rotation-period", "90"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no unit") && err.contains("90d"), "{err}");
    assert!(status_json(&fx)["rotation_period"].is_null());

    // Shorter than a day: refused unless asked for explicitly.
    for short in ["1s", "23h"] {
        let out = ctl(&fx, &["rotation-period", short]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("shorter than a day") && err.contains("--allow-short"),
            "{err}"
        );
    }
    assert!(status_json(&fx)["rotation_period"].is_null());

    // humantime's units, stored in the protocol's form.
    ok(&fx, &["rotation-period", "2w"]);
    assert_eq!(status_json(&fx)["rotation_period"], "14d");
    ok(&fx, &["rotation-period", "90d"]);
    assert_eq!(status_json(&fx)["rotation_period"], "90d");
    ok(&fx, &["rotation-period", "36h"]);
    assert_eq!(status_json(&fx)["rotation_period"], "36h");
    ok(&fx, &["rotation-period", "1h", "--allow-short"]);
    assert_eq!(status_json(&fx)["rotation_period"], "1h");
    ok(&fx, &["rotation-period", "off"]);
    assert!(status_json(&fx)["rotation_period"].is_null());

    // Other durations too.
    let out = ctl(&fx, &["schedule-deletion", "1", "--wait", "7"]);
    assert_eq!(out.status.code(), Some(2));
    fx.unmount();
}

#[test]
fn readme_schedule_deletion_works_as_written() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    std::fs::write(fx.p("f"), b"data").unwrap();
    // The README's sequence: rotate, rewrap, trim, schedule-deletion.
    ok(&fx, &["rotate"]);
    ok(&fx, &["rewrap"]);
    ok(&fx, &["trim", "2"]);
    let out = ctl(&fx, &["schedule-deletion", "1", "--wait", "7d"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "as written in the README: {err}");
    let st = status_json(&fx);
    let v1 = st["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 1)
        .unwrap()
        .clone();
    assert!(v1["deletion_due"].as_u64().is_some(), "{st}");
    ok(&fx, &["cancel-deletion", "1"]);
    assert_eq!(std::fs::read(fx.p("f")).unwrap(), b"data");
    fx.unmount();
}
