//! The command line fits habits: shell completions that complete, man pages
//! in contrib/man that match the binary, examples in every `--help`, and
//! errors that say what is wrong and what to do, with the documented exit
//! codes.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// The visible subcommands (those with a man page and examples in --help).
const COMMANDS: [&str; 9] = [
    "init",
    "mount",
    "unmount",
    "ctl",
    "passwd",
    "rotate",
    "rewrap",
    "info",
    "completions",
];

fn stdout_of(args: &[&str]) -> String {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = sealfs(&args);
    assert!(
        out.status.success(),
        "sealfs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bash_completion_completes_subcommands_and_options() {
    let script = stdout_of(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sealfs.bash");
    fs::write(&file, &script).unwrap();
    // Source it and ask the completion function, as bash does on <TAB>.
    let complete = |words: &str| -> String {
        let prog = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _sealfs sealfs \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        );
        run_ok(Command::new("bash").arg("-c").arg(prog))
    };
    let subs = complete("sealfs mo");
    assert_eq!(subs.trim(), "mount", "completing 'sealfs mo'");
    let opts = complete("sealfs mount --pa");
    assert_eq!(opts.trim(), "--passfile", "completing 'sealfs mount --pa'");
    let ctl = complete("sealfs ctl ro");
    let mut got: Vec<&str> = ctl.split_whitespace().collect();
    got.sort();
    assert_eq!(
        got,
        ["rotate", "rotation-period"],
        "completing 'sealfs ctl ro'"
    );
    // And it registers itself for the command.
    let reg = run_ok(
        Command::new("bash")
            .arg("-c")
            .arg(format!("source {}; complete -p sealfs", file.display())),
    );
    assert!(reg.contains("_sealfs") && reg.contains("sealfs"), "{reg}");
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef sealfs"), "zsh script header");
    let fish = stdout_of(&["completions", "fish"]);
    for c in COMMANDS {
        assert!(zsh.contains(&format!("'{c}:")), "zsh completion lacks {c}");
        assert!(
            fish.contains(&format!("-a \"{c}\"")),
            "fish completion lacks {c}"
        );
    }
    if have_tool("zsh") {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("_sealfs"), &zsh).unwrap();
        run_ok(
            Command::new("zsh")
                .arg("-n")
                .arg(dir.path().join("_sealfs")),
        );
    } else {
        println!("zsh not installed: zsh script checked by content only");
    }
    if have_tool("fish") {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sealfs.fish"), &fish).unwrap();
        run_ok(
            Command::new("fish")
                .arg("-n")
                .arg(dir.path().join("sealfs.fish")),
        );
    } else {
        println!("fish not installed: fish script checked by content only");
    }
    let out = sealfs(&["completions".as_ref(), "tcsh".as_ref()]);
    assert_eq!(out.status.code(), Some(2), "unknown shell is a usage error");
}

#[test]
fn committed_man_pages_match_the_binary() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/man");
    let fresh = tempfile::tempdir().unwrap();
    let out = sealfs(&["man".as_ref(), fresh.path().as_os_str()]);
    assert!(
        out.status.success(),
        "sealfs man: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".1"))
            .collect();
        v.sort();
        v
    };
    let names = list(fresh.path());
    for c in COMMANDS {
        assert!(
            names.contains(&format!("sealfs-{c}.1")),
            "no man page for {c}"
        );
    }
    let stale = "contrib/man is out of date: run `cargo run -- man contrib/man` and commit";
    assert_eq!(list(&committed), names, "{stale}");
    for n in &names {
        assert!(
            fs::read(committed.join(n)).unwrap() == fs::read(fresh.path().join(n)).unwrap(),
            "{n}: {stale}"
        );
    }
    // The pages render, and carry the examples and exit codes.
    if have_tool("man") {
        let text = run_ok(
            Command::new("man")
                .env("MANWIDTH", "100")
                .arg("-l")
                .arg(committed.join("sealfs.1")),
        );
        assert!(text.contains("Exit codes"), "{text}");
        let mount = run_ok(
            Command::new("man")
                .env("MANWIDTH", "100")
                .arg("-l")
                .arg(committed.join("sealfs-mount.1")),
        );
        // man justifies lines with extra spaces, alternating sides from
        // line to line: compare words.
        let words = mount.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("--passfile") && words.contains("mount -t fuse.sealfs"),
            "{mount}"
        );
    }
}

#[test]
fn every_command_help_has_examples() {
    for c in COMMANDS {
        let help = stdout_of(&[c, "--help"]);
        assert!(
            help.contains("Example"),
            "sealfs {c} --help has no examples:\n{help}"
        );
        assert!(help.contains("sealfs "), "{c}: examples do not show sealfs");
    }
    let top = stdout_of(&["--help"]);
    assert!(top.contains("Exit codes: 0 success"), "{top}");
    assert!(!top.contains("\n  man "), "the man generator is hidden");
}

/// An error line: one `sealfs: …` sentence, no Rust debug dump.
#[track_caller]
fn assert_clean_error(out: &std::process::Output, code: i32, needle: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    assert!(
        err.contains(needle),
        "{what}: expected '{needle}' in: {err}"
    );
    assert!(err.starts_with("sealfs: "), "{what}: {err}");
    for dump in ["Os {", "kind:", "Error {", "panicked", "RUST_BACKTRACE"] {
        assert!(!err.contains(dump), "{what}: debug dump in error: {err}");
    }
}

#[test]
fn errors_say_what_is_wrong_and_what_to_do() {
    let fx = Fixture::new();
    let empty = fx.scratch.join("empty");
    fs::create_dir(&empty).unwrap();
    let missing = fx.scratch.join("missing");
    let wrong = fx.scratch.join("wrong-pass");
    fs::write(&wrong, "not it\n").unwrap();
    let pass = fx.passfile.as_os_str();

    for cmd in ["info", "rotate", "rewrap", "passwd"] {
        for dir in [&empty, &missing] {
            let out = sealfs(&[cmd.as_ref(), dir.as_os_str(), "--passfile".as_ref(), pass]);
            assert_clean_error(
                &out,
                23,
                "is not a sealfs volume (no sealfs.toml); create one with 'sealfs init'",
                &format!("{cmd} on {}", dir.display()),
            );
        }
    }
    for cmd in ["info", "rotate", "rewrap"] {
        let out = sealfs(&[
            cmd.as_ref(),
            fx.cipher.as_os_str(),
            "--passfile".as_ref(),
            wrong.as_os_str(),
        ]);
        assert_clean_error(
            &out,
            12,
            "wrong passphrase",
            &format!("{cmd} with a wrong passphrase"),
        );
    }
    let out = mount_expect_failure(
        &fx.cipher,
        &fx.mnt,
        &["--passfile".as_ref(), wrong.as_os_str()],
    );
    assert_clean_error(
        &out,
        12,
        "wrong passphrase",
        "mount with a wrong passphrase",
    );

    fs::write(fx.mnt.join("stray"), b"x").unwrap();
    let out = mount_expect_failure(&fx.cipher, &fx.mnt, &["--passfile".as_ref(), pass]);
    assert_clean_error(&out, 10, "is not empty", "mount on a non-empty MOUNTPOINT");
    fs::remove_file(fx.mnt.join("stray")).unwrap();

    let missing_pass = fx.scratch.join("no-such-passfile");
    let out = sealfs(&[
        "info".as_ref(),
        fx.cipher.as_os_str(),
        "--passfile".as_ref(),
        missing_pass.as_os_str(),
    ]);
    assert_clean_error(&out, 1, "cannot read passfile", "a missing passfile");

    let out = sealfs(&[
        "ctl".as_ref(),
        "--socket".as_ref(),
        fx.scratch.join("nope.sock").as_os_str(),
        "status".as_ref(),
    ]);
    assert_clean_error(&out, 1, "is the volume mounted?", "ctl without a mount");
}
