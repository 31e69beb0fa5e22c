//! The README's command blocks, run as written (a standing rule: a README
//! change cannot add a command nobody ran).
//!
//! Every ` ```sh ` block runs unless the line before its fence carries a
//! marker, an HTML comment README readers do not see:
//!
//! * `<!-- readme-test: skip REASON -->`: not run here, and why (a
//!   synopsis with placeholders and `a | b` alternatives, a TTY, a command
//!   that changes the host: packages, /etc, /sbin, systemd; minutes of
//!   benchmarks or fuzzing);
//! * `<!-- readme-test: elsewhere tests/FILE.rs -->`: run as written by
//!   that test (which must read README.md); `<!-- walkthrough: NAME -->`
//!   means `elsewhere tests/walkthrough.rs`;
//! * `<!-- readme-test: fixture NAME -->`: run as written after a fixture
//!   made the names the block uses (below).
//!
//! A block runs with `bash -euo pipefail` in a scratch directory that is
//! also `$HOME`, with `sealfs` on `PATH` (the binary under test) and the
//! test passphrase on stdin. Fixtures: `volumes` makes `CIPHERDIR` (a
//! volume, not mounted), `F` (its passfile) and `MNT` (the mount of a
//! second volume, with its audit log); `photos` makes `~/photos` (a few
//! files) and `~/.pw` (the passphrase). Blocks of any other language
//! (output, config, Rust) are text; an untagged block that starts with a
//! `sealfs` command is refused (tag it `sh`).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const README: &str = include_str!("../README.md");

#[derive(Debug)]
struct Block {
    line: usize,
    lang: String,
    marker: Option<String>,
    body: String,
}

fn blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(lang) = lines[i].strip_prefix("```") {
            let start = i;
            let mut body = String::new();
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            let marker = start.checked_sub(1).map(|p| lines[p].trim()).and_then(|l| {
                // tests/walkthrough.rs's own marker.
                if l.starts_with("<!-- walkthrough:") {
                    return Some("elsewhere tests/walkthrough.rs".to_string());
                }
                let m = l.strip_prefix("<!-- readme-test:")?.strip_suffix("-->")?;
                Some(m.trim().to_string())
            });
            out.push(Block {
                line: start + 1,
                lang: lang.trim().to_string(),
                marker,
                body,
            });
        }
        i += 1;
    }
    out
}

/// The sandbox of one block: `home` (cwd and `$HOME`), `bin/sealfs`.
struct Sandbox {
    _dir: tempfile::TempDir,
    home: std::path::PathBuf,
    bin: std::path::PathBuf,
    mounts: Vec<Mounted>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("sealfs-readme.")
            .tempdir()
            .unwrap();
        let base = dir.path().canonicalize().unwrap();
        let home = base.join("home");
        let bin_dir = base.join("bin");
        fs::create_dir(&home).unwrap();
        fs::create_dir(&bin_dir).unwrap();
        std::os::unix::fs::symlink(bin(), bin_dir.join("sealfs")).unwrap();
        Sandbox {
            _dir: dir,
            home,
            bin: bin_dir,
            mounts: Vec::new(),
        }
    }

    fn fixture(&mut self, name: &str) {
        let h = self.home.clone();
        match name {
            "volumes" => {
                let f = h.join("F");
                fs::write(&f, format!("{PASSPHRASE}\n")).unwrap();
                init_volume(&h.join("CIPHERDIR"), &f);
                init_volume(&h.join("OTHER"), &f);
                fs::create_dir(h.join("MNT")).unwrap();
                let m = Mounted::start(
                    &h.join("OTHER"),
                    &h.join("MNT"),
                    &f,
                    &[],
                    &h.join("mnt.log"),
                );
                fs::write(h.join("MNT/note"), b"x").unwrap();
                self.mounts.push(m);
            }
            "photos" => {
                fs::create_dir_all(h.join("photos/2026")).unwrap();
                fs::write(h.join("photos/a.jpg"), vec![7u8; 70_000]).unwrap();
                fs::write(h.join("photos/2026/b.jpg"), b"bee").unwrap();
                fs::write(h.join(".pw"), format!("{PASSPHRASE}\n")).unwrap();
            }
            other => panic!("unknown README fixture '{other}'"),
        }
    }

    fn run(&self, b: &Block) -> std::process::Output {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &b.body])
            .current_dir(&self.home)
            .env("HOME", &self.home)
            .env("PATH", path)
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        // The passphrase a block may ask for (stdin is not a terminal).
        let _ = c
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSPHRASE}\n").as_bytes());
        c.wait_with_output().unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Whatever a block mounted under the sandbox, and the fixtures.
        for m in mount_points() {
            if m.starts_with(&self.home) && !self.mounts.iter().any(|x| x.mountpoint() == m) {
                force_unmount(&m);
            }
        }
        self.mounts.clear();
    }
}

#[test]
fn every_command_block_in_the_readme_runs_as_written() {
    let all = blocks(README);
    assert!(all.len() > 10, "README parsed into {} blocks", all.len());
    let (mut ran, mut skipped, mut elsewhere) = (Vec::new(), Vec::new(), Vec::new());
    for b in &all {
        if b.lang.is_empty() {
            assert!(
                !b.body.trim_start().starts_with("sealfs "),
                "README line {}: an untagged block of commands: tag it ```sh",
                b.line
            );
        }
        if b.lang != "sh" && b.lang != "bash" {
            continue;
        }
        let marker = b.marker.as_deref().unwrap_or("");
        if let Some(reason) = marker.strip_prefix("skip") {
            assert!(
                reason.trim().len() > 3,
                "README line {}: a skipped block needs a reason",
                b.line
            );
            skipped.push((b.line, reason.trim().to_string()));
            continue;
        }
        if let Some(file) = marker.strip_prefix("elsewhere") {
            let file = file.trim();
            let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
                .unwrap_or_else(|e| panic!("README line {}: {file}: {e}", b.line));
            assert!(
                text.contains("README.md"),
                "README line {}: {file} does not read the README",
                b.line
            );
            elsewhere.push((b.line, file.to_string()));
            continue;
        }
        let mut sb = Sandbox::new();
        if let Some(name) = marker.strip_prefix("fixture") {
            sb.fixture(name.trim());
        } else {
            assert!(
                marker.is_empty(),
                "README line {}: unknown marker '{marker}'",
                b.line
            );
        }
        let out = sb.run(b);
        assert!(
            out.status.success(),
            "README line {} failed as written ({}):\n{}\n--- stdout\n{}--- stderr\n{}",
            b.line,
            out.status,
            b.body,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran.push(b.line);
    }
    println!("README blocks run as written: {ran:?}");
    println!("run by other tests: {elsewhere:?}");
    for (line, why) in &skipped {
        println!("not run (line {line}): {why}");
    }
    assert!(!ran.is_empty());
}

/// `contrib/install.sh`, as the Installation section runs it, into a
/// staging root (DESTDIR) instead of the host; the man pages it installs
/// have an EXAMPLES section and the version in the footer, and the unit's
/// `man:` reference resolves (issue 21.14).
#[test]
fn install_script_stages_everything_it_promises() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg("contrib/install.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DESTDIR", d.path())
        .env("BIN", bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = d.path();
    assert!(r.join("usr/local/bin/sealfs").is_file());
    assert_eq!(
        fs::read_link(r.join("sbin/mount.fuse.sealfs")).unwrap(),
        Path::new("/usr/local/bin/sealfs")
    );
    assert!(r.join("usr/local/share/man/man1/sealfs-mount.1").is_file());
    assert!(r
        .join("usr/local/share/bash-completion/completions/sealfs")
        .is_file());
    assert!(r.join("etc/systemd/system/sealfs@.service").is_file());
    // The unit's man: reference resolves among the installed pages.
    let unit = fs::read_to_string(r.join("etc/systemd/system/sealfs@.service")).unwrap();
    let doc = unit
        .lines()
        .find_map(|l| l.strip_prefix("Documentation=man:"))
        .expect("the unit names its man page");
    let page = doc.replace("(1)", ".1");
    assert!(
        r.join("usr/local/share/man/man1").join(&page).is_file(),
        "{page}"
    );
    // Pages with a real EXAMPLES section and the version in the footer.
    let man = fs::read_to_string(r.join("usr/local/share/man/man1/sealfs-mount.1")).unwrap();
    assert!(man.contains("\n.SH EXAMPLES\n"), "{man}");
    assert!(!man.contains(".SH EXTRA"), "{man}");
    let th = man.lines().find(|l| l.starts_with(".TH ")).unwrap();
    assert!(
        th.contains(&format!("sealfs {}", env!("CARGO_PKG_VERSION"))),
        "{th}"
    );
    assert!(
        man.contains("sealfs mount ~/vault.enc ~/vault"),
        "examples kept: {man}"
    );
}
