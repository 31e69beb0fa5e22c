//! `sealfs::kmsclient::transit` against a real OpenBao dev server: seal and
//! open with a bound context, rotation and rewrap, `min_decryption_version`,
//! a revoked token, a dead server (bounded time), a silent server
//! (timeout), KV v2 check-and-set, AppRole login.
//!
//! Each test starts its own server ([`external::OpenBao`], killed on drop).

mod external;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use external::OpenBao;
use sealfs::kmsclient::transit::{
    ciphertext_version, TokenSource, TransitClient, TransitConfig, TransitError,
};
use sealfs::kmsclient::SecretSource;
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

const KEK: [u8; 32] = *b"0123456789abcdef0123456789ABCDEF";
const CTX: &[u8] = b"volume-id:1234;slot:1";

fn token(t: &str) -> TokenSource {
    TokenSource::Token(SecretSource::Value(Zeroizing::new(t.to_owned())))
}

fn client(bao: &OpenBao, key: &str, tok: &str) -> TransitClient {
    TransitClient::connect(TransitConfig::new(bao.addr(), key, token(tok))).expect("connect")
}

/// A server with a derived key `kek` and a root client for it.
fn server_with_key() -> Option<(OpenBao, TransitClient)> {
    let bao = OpenBao::start()?;
    let c = client(&bao, "kek", bao.root_token());
    let info = c.create_key().expect("create key");
    assert!(info.derived && info.key_type == "aes256-gcm96");
    Some((bao, c))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn encrypt_decrypt_round_trip_bound_to_context() {
    let Some((bao, c)) = server_with_key() else {
        return;
    };
    let ct = c.encrypt(&KEK, CTX).unwrap();
    assert!(ct.starts_with("vault:v1:"), "{ct}");
    assert_eq!(ciphertext_version(&ct), Some(1));
    assert_eq!(&c.decrypt(&ct, CTX).unwrap()[..], &KEK);

    // Another context does not decrypt; nor does none.
    let err = c.decrypt(&ct, b"volume-id:9999;slot:1").unwrap_err();
    assert!(
        matches!(err, TransitError::InvalidCiphertext { .. }),
        "{err:?}"
    );
    assert!(c.decrypt(&ct, b"").is_err());
    // A tampered ciphertext does not either.
    let mut bad = ct.clone().into_bytes();
    let last = bad.len() - 3;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    let err = c
        .decrypt(std::str::from_utf8(&bad).unwrap(), CTX)
        .unwrap_err();
    assert!(
        matches!(err, TransitError::InvalidCiphertext { .. }),
        "{err:?}"
    );
    let err = c.decrypt("not-a-ciphertext", CTX).unwrap_err();
    assert!(
        matches!(err, TransitError::InvalidCiphertext { .. }),
        "{err:?}"
    );

    // A key that does not exist is KeyNotFound on every operation.
    let other = client(&bao, "nokey", bao.root_token());
    assert!(matches!(
        other.decrypt(&ct, CTX),
        Err(TransitError::KeyNotFound { .. })
    ));
    assert!(matches!(
        other.key_info(),
        Err(TransitError::KeyNotFound { .. })
    ));

    // Timing: one decrypt round trip (new client + HTTP), median of 10.
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let c2 = client(&bao, "kek", bao.root_token());
        assert_eq!(&c2.decrypt(&ct, CTX).unwrap()[..], &KEK);
        cold.push(start.elapsed());
        let start = Instant::now();
        c.decrypt(&ct, CTX).unwrap();
        warm.push(start.elapsed());
    }
    println!(
        "transit timing: decrypt with a new client median {:?}, on a kept client median {:?}",
        median(cold),
        median(warm)
    );
}

#[test]
fn non_derived_key_is_refused_by_check_key() {
    let Some(bao) = OpenBao::start() else { return };
    bao.create_transit_key("plain", false);
    let c = client(&bao, "plain", bao.root_token());
    let err = c.check_key().unwrap_err();
    assert!(matches!(err, TransitError::KeyUnsuitable { .. }), "{err:?}");
    // Why it matters: a non-derived key ignores the context.
    let ct = c.encrypt(&KEK, CTX).unwrap();
    assert_eq!(&c.decrypt(&ct, b"another context").unwrap()[..], &KEK);
}

#[test]
fn rotate_rewrap_and_min_decryption_version() {
    let Some((_bao, c)) = server_with_key() else {
        return;
    };
    let v1 = c.encrypt(&KEK, CTX).unwrap();
    assert_eq!(c.rotate_key().unwrap(), 2);
    let info = c.key_info().unwrap();
    assert_eq!((info.latest_version, info.min_decryption_version), (2, 1));
    assert!(!info.deletion_allowed && info.derived && !info.convergent);

    let v2 = c.rewrap(&v1, CTX).unwrap();
    assert_eq!(ciphertext_version(&v2), Some(2), "{v2}");
    assert_eq!(&c.decrypt(&v2, CTX).unwrap()[..], &KEK);
    assert_eq!(&c.decrypt(&v1, CTX).unwrap()[..], &KEK);
    // Rewrap keeps the context binding.
    assert!(c.decrypt(&v2, b"other").is_err());
    assert!(c.rewrap(&v1, b"other").is_err());

    c.set_min_decryption_version(2).unwrap();
    assert_eq!(c.key_info().unwrap().min_decryption_version, 2);
    let err = c.decrypt(&v1, CTX).unwrap_err();
    assert!(
        matches!(err, TransitError::DecryptionNotAllowed { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("min_decryption_version"), "{err}");
    let err = c.rewrap(&v1, CTX).unwrap_err();
    assert!(
        matches!(err, TransitError::DecryptionNotAllowed { .. }),
        "{err:?}"
    );
    assert_eq!(&c.decrypt(&v2, CTX).unwrap()[..], &KEK);
}

#[test]
fn soft_deleted_key_is_disabled() {
    let Some((bao, c)) = server_with_key() else {
        return;
    };
    let ct = c.encrypt(&KEK, CTX).unwrap();
    bao.bao(&["delete", "transit/keys/kek/soft-delete"]);
    let err = c.decrypt(&ct, CTX).unwrap_err();
    assert!(matches!(err, TransitError::KeyDisabled { .. }), "{err:?}");
    assert!(matches!(
        c.check_key(),
        Err(TransitError::KeyDisabled { .. })
    ));
    bao.bao(&["write", "-f", "transit/keys/kek/soft-delete-restore"]);
    assert_eq!(&c.decrypt(&ct, CTX).unwrap()[..], &KEK);
    // A deleted key is gone: KeyNotFound.
    bao.bao(&["write", "transit/keys/kek/config", "deletion_allowed=true"]);
    bao.bao(&["delete", "transit/keys/kek"]);
    let err = c.decrypt(&ct, CTX).unwrap_err();
    assert!(matches!(err, TransitError::KeyNotFound { .. }), "{err:?}");
}

#[test]
fn sealed_server_is_retried_then_a_server_error() {
    let Some((bao, c)) = server_with_key() else {
        return;
    };
    let ct = c.encrypt(&KEK, CTX).unwrap();
    bao.bao(&["operator", "seal"]);
    let start = Instant::now();
    let err = c.decrypt(&ct, CTX).unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err, TransitError::Server { status: 503, .. }),
        "{err:?}"
    );
    // Retried: 3 backoffs of 100, 200, 400 ms, within the 5 s budget.
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    println!("transit: sealed server answered 503 for {took:?}: {err}");
}

#[test]
fn revoked_token_is_permission_denied() {
    let Some((bao, root)) = server_with_key() else {
        return;
    };
    let ct = root.encrypt(&KEK, CTX).unwrap();
    let tok = bao.token_with_policy("unlock", &OpenBao::unlock_policy("kek", "sealfs"));
    let c = client(&bao, "kek", &tok);
    assert_eq!(&c.decrypt(&ct, CTX).unwrap()[..], &KEK);
    // The policy does not allow rotation.
    let err = c.rotate_key().unwrap_err();
    assert!(
        matches!(err, TransitError::PermissionDenied { .. }),
        "{err:?}"
    );

    bao.revoke_token(&tok);
    let err = c.decrypt(&ct, CTX).unwrap_err();
    assert!(
        matches!(err, TransitError::PermissionDenied { .. }),
        "{err:?}"
    );
    let shown = format!("{err} {err:?} {c:?}");
    assert!(!shown.contains(&tok), "the token leaked: {shown}");
}

#[test]
fn killed_server_is_unreachable_within_the_time_bound() {
    let Some((mut bao, _)) = server_with_key() else {
        return;
    };
    let mut cfg = TransitConfig::new(bao.addr(), "kek", token(bao.root_token()));
    cfg.timeout = Duration::from_secs(2);
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.retries = 3;
    cfg.backoff = Duration::from_millis(100);
    let c = TransitClient::connect(cfg).unwrap();
    let ct = c.encrypt(&KEK, CTX).unwrap();
    bao.kill();
    let start = Instant::now();
    let err = c.decrypt(&ct, CTX).unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err, TransitError::Unreachable { attempts: 4, .. }),
        "{err:?}"
    );
    // 3 retries: 100 + 200 + 400 ms of backoff, refused connections are instant.
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(500),
        "{took:?}"
    );
    println!("transit: unreachable after {took:?}: {err}");
}

#[test]
fn silent_server_times_out_within_the_budget() {
    // A loopback listener that accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(1) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let mut cfg = TransitConfig::new(&addr, "kek", token("t"));
    cfg.timeout = Duration::from_millis(1500);
    let c = TransitClient::connect(cfg).unwrap();
    let start = Instant::now();
    let err = c.decrypt("vault:v1:AAAA", CTX).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, TransitError::Timeout { .. }), "{err:?}");
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    println!("transit: silent server timed out after {took:?}");
    drop(holder);
}

#[test]
fn kv_check_and_set_detects_a_conflict() {
    let Some((bao, _)) = server_with_key() else {
        return;
    };
    let tok = bao.token_with_policy("unlock", &OpenBao::unlock_policy("kek", "sealfs"));
    let c = client(&bao, "kek", &tok);
    let path = "sealfs/vol-1234/anchor";
    assert_eq!(c.kv_get(path).unwrap(), None);
    let gen =
        |n: u64| -> Map<String, Value> { json!({"generation": n}).as_object().unwrap().clone() };
    assert_eq!(c.kv_put_cas(path, &gen(1), 0).unwrap(), 1);
    // A second "create" loses.
    let err = c.kv_put_cas(path, &gen(1), 0).unwrap_err();
    assert!(matches!(err, TransitError::CasConflict { .. }), "{err:?}");
    let e = c.kv_get(path).unwrap().unwrap();
    assert_eq!(e.version, 1);
    assert_eq!(e.data.unwrap()["generation"], json!(1));
    assert_eq!(c.kv_put_cas(path, &gen(2), 1).unwrap(), 2);
    // A writer that read version 1 loses against the one that wrote 2.
    let err = c.kv_put_cas(path, &gen(3), 1).unwrap_err();
    assert!(matches!(err, TransitError::CasConflict { .. }), "{err:?}");
    assert_eq!(
        c.kv_get(path).unwrap().unwrap().data.unwrap()["generation"],
        json!(2)
    );
    // Outside the policy's tree: denied.
    let err = c.kv_get("elsewhere/anchor").unwrap_err();
    assert!(
        matches!(err, TransitError::PermissionDenied { .. }),
        "{err:?}"
    );
    // A deleted latest version reads as an entry without data.
    bao.bao(&["kv", "delete", "secret/sealfs/vol-1234/anchor"]);
    let e = c.kv_get(path).unwrap().unwrap();
    assert_eq!((e.version, e.data), (2, None));
}

#[test]
fn approle_login_works_and_bad_secret_id_is_denied() {
    let Some((bao, root)) = server_with_key() else {
        return;
    };
    let ct = root.encrypt(&KEK, CTX).unwrap();
    bao.bao_with_stdin(
        &["policy", "write", "unlock", "-"],
        Some(&OpenBao::unlock_policy("kek", "sealfs")),
    );
    let (role_id, secret_id) = bao.approle("sealfs", "unlock");
    let dir = tempfile::tempdir().unwrap();
    let sid_file = dir.path().join("secret-id");
    std::fs::write(&sid_file, format!("{secret_id}\n")).unwrap();
    let approle = |sid: SecretSource| TokenSource::AppRole {
        mount: "approle".into(),
        role_id: SecretSource::Value(Zeroizing::new(role_id.clone())),
        secret_id: sid,
    };
    let c = TransitClient::connect(TransitConfig::new(
        bao.addr(),
        "kek",
        approle(SecretSource::File(sid_file)),
    ))
    .unwrap();
    assert_eq!(&c.decrypt(&ct, CTX).unwrap()[..], &KEK);
    assert!(!format!("{c:?}").contains(&secret_id));

    let err = TransitClient::connect(TransitConfig::new(
        bao.addr(),
        "kek",
        approle(SecretSource::Value(Zeroizing::new("wrong".into()))),
    ))
    .unwrap_err();
    assert!(
        matches!(err, TransitError::PermissionDenied { .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains(&role_id));
}

#[test]
fn token_from_file_and_env() {
    let Some((bao, root)) = server_with_key() else {
        return;
    };
    let ct = root.encrypt(&KEK, CTX).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("token");
    std::fs::write(&f, format!("{}\n", bao.root_token())).unwrap();
    let c = TransitClient::connect(TransitConfig::new(
        bao.addr(),
        "kek",
        TokenSource::Token(SecretSource::File(f)),
    ))
    .unwrap();
    assert_eq!(&c.decrypt(&ct, CTX).unwrap()[..], &KEK);
    let var = "SEALFS_TEST_TRANSIT_TOKEN";
    std::env::set_var(var, bao.root_token());
    let c = TransitClient::connect(TransitConfig::new(
        bao.addr(),
        "kek",
        TokenSource::Token(SecretSource::Env(var.into())),
    ))
    .unwrap();
    std::env::remove_var(var);
    assert_eq!(&c.decrypt(&ct, CTX).unwrap()[..], &KEK);
    let err = TransitClient::connect(TransitConfig::new(
        bao.addr(),
        "kek",
        TokenSource::Token(SecretSource::Env(var.into())),
    ))
    .unwrap_err();
    assert!(matches!(err, TransitError::Credentials(_)), "{err:?}");
}

#[test]
fn https_with_a_ca_file() {
    let Some(bao) = OpenBao::start_tls() else {
        return;
    };
    assert!(bao.addr().starts_with("https://"));
    let mut cfg = TransitConfig::new(bao.addr(), "kek", token(bao.root_token()));
    cfg.ca_file = bao.ca_file().map(Into::into);
    let c = TransitClient::connect(cfg).unwrap();
    c.create_key().unwrap();
    let ct = c.encrypt(&KEK, CTX).unwrap();
    assert_eq!(&c.decrypt(&ct, CTX).unwrap()[..], &KEK);

    // Without the CA the server is not trusted: a TLS error, at once.
    let c = client(&bao, "kek", bao.root_token());
    let start = Instant::now();
    let err = c.decrypt(&ct, CTX).unwrap_err();
    assert!(matches!(err, TransitError::Tls { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains("ca_file"), "{err}");

    // A CA file that holds no certificate is a configuration error.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("ca.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let mut cfg = TransitConfig::new(bao.addr(), "kek", token(bao.root_token()));
    cfg.ca_file = Some(junk);
    assert!(matches!(
        TransitClient::connect(cfg),
        Err(TransitError::Config(_))
    ));
}
