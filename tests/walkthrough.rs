//! The README's walkthroughs, run as shown: each ```sh block after a
//! `<!-- walkthrough: NAME -->` marker runs under `bash -euo pipefail` in a
//! scratch `$HOME`, with this build's `sealfs` first on PATH. Skipped (with
//! the reason printed) where SoftHSM2 or OpenBao is not installed, except
//! under CI.

mod common;
mod external;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const README: &str = include_str!("../README.md");

/// The shell block after `<!-- walkthrough: NAME -->`.
fn block(name: &str) -> String {
    let marker = format!("<!-- walkthrough: {name} -->\n```sh\n");
    let start = README
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no walkthrough {name}"))
        + marker.len();
    let end = start + README[start..].find("\n```").expect("end of the block");
    README[start..end].to_string()
}

/// Runs the block in a scratch HOME; returns stdout. Panics (with the
/// output) if it fails or takes longer than `limit`.
fn run_block(name: &str, limit: Duration) -> (String, tempfile::TempDir) {
    let home = tempfile::Builder::new()
        .prefix("sealfs-walkthrough.")
        .tempdir()
        .unwrap();
    let bin_dir = Path::new(bin()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &block(name)])
        .env("HOME", home.path())
        .env("PATH", path)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("BAO_ADDR")
        .env_remove("BAO_TOKEN")
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .current_dir(home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let done = wait_until(limit, || matches!(child.try_wait(), Ok(Some(_))));
    if !done {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!("walkthrough {name}: {:?}\n{out}\n{err}", start.elapsed());
    assert!(done, "walkthrough {name} did not finish within {limit:?}");
    assert!(
        status.success(),
        "walkthrough {name} failed ({status}):\n{out}\n{err}"
    );
    let mnt = home.path().join("vault");
    assert!(!is_mounted(&mnt), "walkthrough {name} left a mount");
    (out, home)
}

/// Whether `name` is installed; prints why not (a failure under CI).
fn have(name: &str) -> bool {
    if external::which(name).is_some() || Path::new("/usr/local/bin").join(name).exists() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    assert!(
        !ci,
        "{name} is not installed; CI must have it (bash contrib/setup.sh)"
    );
    println!("SKIP: {name} is not installed (bash contrib/setup.sh installs it)");
    false
}

#[test]
fn softhsm2_walkthrough_runs_as_shown() {
    if !have("softhsm2-util") || sealfs::kmsclient::pkcs11::find_softhsm2_module().is_none() {
        return;
    }
    let (out, _home) = run_block("softhsm2", Duration::from_secs(120));
    assert!(
        out.contains("pkcs11:token=vault;object=sealfs-kek"),
        "{out}"
    );
    assert!(out.contains("\"provider\":\"pkcs11\""), "{out}");
    assert!(out.contains("kept on the token"), "{out}");
    assert!(!out.contains("4711"), "the PIN was printed: {out}");
}

#[test]
fn openbao_walkthrough_runs_as_shown() {
    if !have("bao") {
        return;
    }
    let result = std::panic::catch_unwind(|| run_block("openbao", Duration::from_secs(180)));
    // The block stops its server; if it failed half-way, stop it here (only
    // the one on the walkthrough's own port).
    for pid in pids_whose_cmdline(|args| {
        args.iter()
            .any(|a| *a == b"-dev-listen-address=127.0.0.1:18200")
    }) {
        // SAFETY: kill(2) of the server this test's script started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let (out, _home) = result.unwrap_or_else(|p| std::panic::resume_unwind(p));
    assert_eq!(out.matches("unlocked by the KMS").count(), 1, "{out}");
    assert!(out.contains("refused: exit 36"), "{out}");
}
