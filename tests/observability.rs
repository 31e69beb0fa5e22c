//! What scripts and operators read: `sealfs ctl metrics` on a live mount
//! (valid Prometheus text, counters that move with the I/O done), `--json`
//! on the informational commands (each output parses), and the daemon's
//! log going to syslog once it is daemonized (no secret in it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn ctl(fx: &Fixture, args: &[&str]) -> Output {
    let mut a: Vec<&OsStr> = vec![
        "ctl".as_ref(),
        "--socket".as_ref(),
        fx.ctl_socket.as_os_str(),
    ];
    a.extend(args.iter().map(OsStr::new));
    sealfs(&a)
}

#[track_caller]
fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("UTF-8 output")
}

#[track_caller]
fn json(o: &Output, what: &str) -> serde_json::Value {
    let s = ok(o, what);
    assert_eq!(s.lines().count(), 1, "{what}: one JSON line expected: {s}");
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {s}"))
}

// ---------------------------------------------------------------- Prometheus

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// Parses the text exposition format strictly enough to catch what a
/// Prometheus server would refuse; panics with the offending line.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut samples = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap();
            let name = parts
                .next()
                .unwrap_or_else(|| panic!("bad comment: {line}"));
            let arg = parts
                .next()
                .unwrap_or_else(|| panic!("bad comment: {line}"));
            assert!(is_metric_name(name), "bad metric name in {line}");
            match kw {
                "HELP" => assert!(helps.insert(name.to_string()), "second HELP: {line}"),
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg),
                        "bad type: {line}"
                    );
                    assert!(
                        types.insert(name.to_string(), arg.to_string()).is_none(),
                        "second TYPE: {line}"
                    );
                }
                _ => panic!("unknown comment keyword: {line}"),
            }
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "bad line: {line:?}"
        );
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels, BTreeMap::new()),
            Some((n, l)) => {
                let l = l
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}"));
                let mut m = BTreeMap::new();
                let mut rest = l;
                while !rest.is_empty() {
                    let (k, r) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(
                        is_metric_name(k) && !k.contains(':'),
                        "bad label name: {line}"
                    );
                    // Values here never hold quotes or backslashes.
                    let (v, r) = r
                        .split_once('"')
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(!v.contains('\\'), "escapes not expected: {line}");
                    assert!(
                        m.insert(k.to_string(), v.to_string()).is_none(),
                        "dup label: {line}"
                    );
                    rest = r.strip_prefix(',').unwrap_or(r);
                }
                (n, m)
            }
        };
        assert!(is_metric_name(name), "bad metric name: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        assert!(
            seen.insert(name_labels.to_string()),
            "duplicate series: {line}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histograms: cumulative buckets ending in +Inf == _count.
    for (family, t) in &types {
        if t != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut key = s.labels.clone();
            let le = key.remove("le").expect("bucket without le");
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            by_series
                .entry(format!("{key:?}"))
                .or_default()
                .push((le, s.value));
        }
        assert!(!by_series.is_empty(), "histogram {family} has no buckets");
        for (key, buckets) in by_series {
            let mut last = (f64::NEG_INFINITY, 0.0);
            for b in &buckets {
                assert!(b.0 > last.0, "{family}{key}: le not increasing");
                assert!(b.1 >= last.1, "{family}{key}: counts not cumulative");
                last = *b;
            }
            assert_eq!(last.0, f64::INFINITY, "{family}{key}: no +Inf bucket");
            let count = samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && format!("{:?}", s.labels) == key)
                .unwrap_or_else(|| panic!("{family}{key}: no _count"));
            assert_eq!(count.value, last.1, "{family}{key}: +Inf bucket != _count");
        }
    }
    (types, samples)
}

/// The value of `name{labels}`; the `volume` label every series carries
/// (checked by [`volume_labels`]) is left out of the comparison.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels.len() == s.labels.keys().filter(|k| *k != "volume").count()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[test]
fn parser_rejects_what_prometheus_rejects() {
    let ok = "# TYPE a counter\na 1\n";
    parse_prometheus(ok);
    for bad in [
        "a 1\n",                                          // no TYPE
        "# TYPE a counter\na{x=\"1\"} 1\na{x=\"1\"} 2\n", // duplicate
        "# TYPE a counter\na one\n",                      // bad value
        "# TYPE a counter\na 1",                          // no final newline
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_prometheus(bad)).is_err(),
            "accepted: {bad:?}"
        );
    }
}

/// Every sample's `volume` label (issue 21.12: two mounts feeding one
/// collector must not give duplicate series).
fn volume_labels(samples: &[Sample]) -> std::collections::BTreeSet<String> {
    samples
        .iter()
        .map(|s| {
            s.labels
                .get("volume")
                .unwrap_or_else(|| panic!("{} has no volume label", s.name))
                .clone()
        })
        .collect()
}

#[test]
fn ctl_metrics_counts_the_io_of_a_live_mount() {
    let mut fx = Fixture::new();
    fx.mount_ctl();
    let mut rng = Rng::new(3);
    let big = rng.bytes(3 * 1024 * 1024 + 5);
    fs::write(fx.p("big"), &big).unwrap();
    let victim = fx.new_backing_files(|f| fs::write(f.p("victim"), vec![7u8; 3 * 4096]).unwrap());
    assert_eq!(victim.len(), 1);
    fx.unmount();
    // Damage the victim's last chunk behind the daemon's back.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&victim[0])
        .unwrap();
    let off = f.metadata().unwrap().len() - 50;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ 0x5A], off).unwrap();
    drop(f);

    // A fresh daemon (counters from zero) and a cold page cache.
    fx.mount_ctl();
    let text0 = ok(&ctl(&fx, &["metrics"]), "metrics");
    let (_, s0) = parse_prometheus(&text0);
    assert_eq!(value(&s0, "sealfs_bytes_total", &[("op", "read")]), 0.0);

    assert_eq!(fs::read(fx.p("big")).unwrap(), big);
    let mut v = Vec::new();
    let e = File::open(fx.p("victim"))
        .unwrap()
        .read_to_end(&mut v)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    {
        let f = File::create(fx.p("new")).unwrap();
        f.write_all_at(&[1u8; 100_000], 0).unwrap();
        f.sync_all().unwrap();
    }
    ok(&ctl(&fx, &["disable"]), "disable");
    let e = File::open(fx.p("big")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    ok(&ctl(&fx, &["enable"]), "enable");
    ok(&ctl(&fx, &["rotate"]), "rotate");
    fs::write(fx.p("under-v2"), b"x").unwrap();
    let held = File::open(fx.p("big")).unwrap();

    let text = ok(&ctl(&fx, &["metrics"]), "metrics");
    let (types, s) = parse_prometheus(&text);
    let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    // Every series carries the volume id; build info and uptime are there.
    let st = json(&ctl(&fx, &["status", "--json"]), "status");
    let id = st["volume_id"].as_str().unwrap().to_string();
    assert_eq!(
        volume_labels(&s),
        std::collections::BTreeSet::from([id.clone()])
    );
    let build = s
        .iter()
        .find(|x| x.name == "sealfs_build_info")
        .expect("sealfs_build_info");
    assert_eq!(build.value, 1.0);
    assert_eq!(
        build.labels.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(v("sealfs_uptime_seconds", &[]) >= 0.0);
    assert!(v("sealfs_start_time_seconds", &[]) > 1.7e9);
    assert_eq!(types["sealfs_operations_total"], "counter");
    assert_eq!(types["sealfs_request_duration_seconds"], "histogram");
    assert_eq!(types["sealfs_open_files"], "gauge");
    assert!(
        v("sealfs_bytes_total", &[("op", "read")]) >= big.len() as f64,
        "{text}"
    );
    assert!(
        v("sealfs_bytes_total", &[("op", "write")]) >= 100_000.0,
        "{text}"
    );
    for op in [
        "read", "write", "lookup", "open", "create", "release", "fsync",
    ] {
        assert!(
            v("sealfs_operations_total", &[("op", op)]) >= 1.0,
            "op {op}: {text}"
        );
    }
    let reads = v("sealfs_operations_total", &[("op", "read")]);
    assert_eq!(
        v("sealfs_request_duration_seconds_count", &[("op", "read")]),
        reads,
        "every read is timed"
    );
    assert!(v("sealfs_request_duration_seconds_sum", &[("op", "read")]) > 0.0);
    assert!(v("sealfs_request_duration_seconds_count", &[("op", "write")]) >= 1.0);
    assert!(v("sealfs_integrity_failures_total", &[]) >= 1.0, "{text}");
    assert!(
        v("sealfs_denied_total", &[("reason", "key_disabled")]) >= 1.0,
        "{text}"
    );
    assert_eq!(v("sealfs_denied_total", &[("reason", "control_peer")]), 0.0);
    assert!(
        v(
            "sealfs_key_uses_total",
            &[("use", "unwrap"), ("version", "1")]
        ) >= 2.0
    );
    assert!(
        v(
            "sealfs_key_uses_total",
            &[("use", "wrap"), ("version", "1")]
        ) >= 1.0
    );
    assert!(
        v(
            "sealfs_key_uses_total",
            &[("use", "wrap"), ("version", "2")]
        ) >= 1.0
    );
    assert!(v("sealfs_open_files", &[]) >= 1.0, "{text}");
    assert_eq!(v("sealfs_key_primary_version", &[]), 2.0);
    assert_eq!(v("sealfs_key_disabled", &[]), 0.0);
    assert_eq!(v("sealfs_key_versions", &[("state", "enabled")]), 2.0);
    // No name or path of the volume in it.
    for word in ["victim", "under-v2", fx.cipher.to_str().unwrap()] {
        assert!(!text.contains(word), "{word} leaked into the metrics");
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let (_, s2) = parse_prometheus(&ok(&ctl(&fx, &["metrics"]), "metrics"));
    assert!(value(&s2, "sealfs_open_files", &[]) < v("sealfs_open_files", &[]));

    // --json: one object, series (as in the text) → value.
    let j = json(&ctl(&fx, &["metrics", "--json"]), "metrics --json");
    let obj = j.as_object().expect("an object");
    assert_eq!(
        obj[&format!("sealfs_key_disabled{{volume=\"{id}\"}}")],
        serde_json::json!(0)
    );
    assert_eq!(
        obj[&format!("sealfs_key_versions{{volume=\"{id}\",state=\"enabled\"}}")],
        serde_json::json!(2)
    );
    let (_, s3) = parse_prometheus(&ok(&ctl(&fx, &["metrics"]), "metrics"));
    assert_eq!(obj.len(), s3.len(), "one entry per series");
    fx.unmount();
}

// ---------------------------------------------------------------- --json

#[test]
fn json_outputs_parse() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().canonicalize().unwrap();
    let pass = base.join("pass");
    fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    let cipher = base.join("v");
    let mut a: Vec<&OsStr> = vec![
        "init".as_ref(),
        cipher.as_os_str(),
        "--passfile".as_ref(),
        pass.as_os_str(),
        "--json".as_ref(),
    ];
    a.extend(FAST_KDF.iter().map(OsStr::new));
    let j = json(&sealfs(&a), "init --json");
    assert_eq!(j["primary"], 1);
    assert_eq!(j["volume_id"].as_str().unwrap().len(), 32, "{j}");

    let offline = |cmd: &str, extra: &[&str]| -> serde_json::Value {
        let mut a: Vec<&OsStr> = vec![
            cmd.as_ref(),
            cipher.as_os_str(),
            "--passfile".as_ref(),
            pass.as_os_str(),
            "--json".as_ref(),
        ];
        a.extend(extra.iter().map(OsStr::new));
        json(&sealfs(&a), &format!("{cmd} --json"))
    };
    assert_eq!(offline("rotate", &[])["primary"], 2);
    let r = offline("rewrap", &[]);
    assert!(r["done"].is_u64() && r["failed"] == 0, "{r}");
    let i = offline("info", &[]);
    assert_eq!(i["versions"].as_array().unwrap().len(), 2, "{i}");
    let f = offline("fsck", &[]);
    assert!(f["problems"].as_array().unwrap().is_empty(), "{f}");

    let src = base.join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"data").unwrap();
    let mut a: Vec<&OsStr> = vec![
        "import".as_ref(),
        src.as_os_str(),
        cipher.as_os_str(),
        "--passfile".as_ref(),
        pass.as_os_str(),
        "--json".as_ref(),
    ];
    let j = json(&sealfs(&a), "import --json");
    assert_eq!(j["files_copied"], 1);
    a[0] = "export".as_ref();
    a[1] = cipher.as_os_str();
    let out = base.join("out");
    a[2] = out.as_os_str();
    let j = json(&sealfs(&a), "export --json");
    assert_eq!(j["files_copied"], 1);

    // The ctl commands on a mount, --json before or after the subcommand.
    let mut fx = Fixture::new();
    fx.mount_ctl();
    for args in [
        &["--json", "status"][..],
        &["status", "--json"],
        &["census", "--json"],
        &["metrics", "--json"],
        &["rotation-period", "30d", "--json"],
        &["rotate", "--json"],
        &["disable", "--json"],
        &["enable", "--json"],
        &["rewrap", "--json"],
    ] {
        json(&ctl(&fx, args), &format!("ctl {args:?}"));
    }
    let mut a: Vec<&OsStr> = vec![
        "fsck".as_ref(),
        "--socket".as_ref(),
        fx.ctl_socket.as_os_str(),
    ];
    a.push("--json".as_ref());
    let j = json(&sealfs(&a), "fsck --socket --json");
    assert!(j["problems"].is_array());
    fx.unmount();
}

// ---------------------------------------------------------------- syslog

#[test]
fn a_daemonized_mount_logs_to_syslog_without_secrets() {
    let mut fx = Fixture::new();
    let sock_path = fx.scratch.join("devlog");
    let server = UnixDatagram::bind(&sock_path).unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Drain the socket all along, as a log daemon does.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match server.recv(&mut buf) {
                    Ok(n) => lines.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(_) if stop.load(std::sync::atomic::Ordering::Relaxed) => return lines,
                    Err(_) => {}
                }
            }
        })
    };
    let out = Command::new(bin())
        .arg("mount")
        .arg(&fx.cipher)
        .arg(&fx.mnt)
        .arg("--passfile")
        .arg(&fx.passfile)
        .arg("--ctl-socket")
        .arg(&fx.ctl_socket)
        .env("SEALFS_LOG", "info")
        .env("SEALFS_SYSLOG_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // The guard unmounts even if an assertion below fails.
    fx.mounted = Some(Mounted::adopt_daemon(
        &fx.cipher,
        &fx.mnt,
        &fx.scratch.join("none.log"),
    ));
    assert!(
        out.status.success(),
        "daemonized mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(fx.p("f"), b"hello").unwrap();
    fx.unmount();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lines = reader.join().unwrap();
    let mounted = lines
        .iter()
        .find(|l| l.contains("mounted") && l.contains(fx.cipher.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no 'mounted' line in syslog: {lines:#?}"));
    // <daemon.info>Mmm dd hh:mm:ss sealfs[PID]: …
    assert!(mounted.starts_with("<30>"), "{mounted}");
    assert!(mounted.contains(" sealfs["), "{mounted}");
    for l in &lines {
        assert!(
            !l.contains(PASSPHRASE),
            "the passphrase reached the log: {l}"
        );
        assert!(!l.contains('\n'), "one line per datagram: {l:?}");
    }
    // The mount command itself still reports on its own stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mounted"), "{stderr}");
}
