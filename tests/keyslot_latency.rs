//! What an unlock costs, per provider: the time `sealfs mount` takes until
//! the mount is ready (unlock, rollback checks, the anchor stored, the
//! session up), median of 10, for one volume with a passphrase slot
//! (default Argon2id: 256 MiB, 3 passes, 2 lanes), a key-file slot, a
//! recovery-key slot, a PKCS#11 slot (SoftHSM2) and a Transit slot
//! (OpenBao dev server on loopback). A measurement, not a check: run it
//! with
//!
//! ```sh
//! cargo test --release --test keyslot_latency -- --ignored --nocapture
//! ```

mod common;
mod external;

use std::fs;
use std::time::{Duration, Instant};

use common::vol::Vol;
use common::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "a measurement: cargo test --test keyslot_latency -- --ignored --nocapture"]
fn mount_latency_per_provider() {
    let (Some(hsm), Some(bao)) = (external::SoftHsm::start(), external::OpenBao::start()) else {
        return;
    };
    hsm.init_token("vault");
    bao.create_transit_key("vault", true);
    let v = Vol::new();
    fs::write(v.p("key"), [5u8; 32]).unwrap();
    fs::write(v.p("pin"), external::SoftHsm::USER_PIN).unwrap();
    fs::write(v.p("token"), bao.root_token()).unwrap();
    let (pass, key, pin, tok) = (
        v.pass.to_str().unwrap(),
        v.p("key"),
        v.p("pin"),
        v.p("token"),
    );
    let uri = hsm.uri("vault", Some("kek"));
    let out = v.ok(&[
        "init",
        v.c(),
        "--passfile",
        pass,
        "--key-file",
        key.to_str().unwrap(),
        "--pkcs11",
        &uri,
        "--pin-file",
        pin.to_str().unwrap(),
        "--transit-addr",
        bao.addr(),
        "--transit-key",
        "vault",
        "--transit-token-file",
        tok.to_str().unwrap(),
        "--recovery-key",
    ]);
    fs::write(v.p("rk"), out.trim()).unwrap();
    let rk = v.p("rk");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "passphrase (Argon2id 256 MiB, 3 passes)",
            vec!["--passfile", pass],
        ),
        ("key file", vec!["--key-file", key.to_str().unwrap()]),
        ("recovery key", vec!["--recovery-key", rk.to_str().unwrap()]),
        (
            "PKCS#11 (SoftHSM2)",
            vec!["--pkcs11", &uri, "--pin-file", pin.to_str().unwrap()],
        ),
        (
            "Transit (OpenBao, loopback)",
            vec!["--transit-token-file", tok.to_str().unwrap()],
        ),
    ];
    let mut rows = Vec::new();
    for (name, secret) in &cases {
        let mut times = Vec::new();
        for _ in 0..10 {
            let mut args = vec!["mount", v.c(), v.mnt.to_str().unwrap()];
            args.extend(secret);
            let t = Instant::now();
            v.ok(&args);
            times.push(t.elapsed());
            let out = v.run(&["unmount", v.mnt.to_str().unwrap()], None);
            assert!(out.status.success());
            assert!(wait_until(TIMEOUT, || sealfs_pids_mentioning(&v.cipher).is_empty()));
        }
        rows.push((name.to_string(), median(times.clone()), times));
    }
    println!("\n| provider | mount latency, median of 10 | min | max |\n|---|---:|---:|---:|");
    for (name, med, times) in rows {
        let (min, max) = (times.iter().min().unwrap(), times.iter().max().unwrap());
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms |",
            med.as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
}
