//! The `sealfs` command line: parses arguments, gathers the unlock secret,
//! calls the library and prints. Holds no filesystem, crypto or key-policy
//! logic of its own: each command's module says which library call does
//! the work.
//!
//! Owns: the dispatch of commands, the logging setup, the man pages.
//! Must never: grow logic a library user would need too.

mod args;
mod audit;
mod ctl;
mod duration;
mod error;
mod fsck;
mod grants;
mod helper;
mod keys;
mod keyslot;
mod mount;
mod progress;
mod secret;
mod transfer;
mod volume;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use args::{Cli, Command, CompletionsArgs};
use error::{exit, CliError};
use fsck::FsckTarget;
use volume::argon2_params;

fn main() -> ExitCode {
    // Every command may hold unwrapped keys (init, passwd, rotate, rewrap,
    // info, the mount daemon): none of them dumps core. `mount` checks the
    // result and logs a failure.
    let _ = sealfs::hardening::disable_core_dumps();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Run as mount(8)'s helper (`mount -t fuse.sealfs`, fstab).
    if argv.first().is_some_and(|a| helper::invoked_as_helper(a)) {
        let r = helper::mount_args(&argv[1..]).and_then(|(args, fake)| {
            if fake {
                let shown: Vec<String> = args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                eprintln!("mount.fuse.sealfs: would run: {}", shown.join(" "));
                return Ok(());
            }
            let cli = Cli::try_parse_from(&args)
                .map_err(|e| CliError::new(2, e.to_string().trim().to_string()))?;
            let dir = volume_dir(&cli.cmd);
            run(cli).map_err(|e| match &dir {
                Some(d) => error::with_volume_hint(e, d),
                None => e,
            })
        });
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                if !e.msg.is_empty() {
                    let _ = writeln!(std::io::stderr(), "sealfs: {}", e.msg);
                }
                ExitCode::from(e.code)
            }
        };
    }
    if let Some(msg) = one_dash_long_option(std::env::args_os().skip(1)) {
        let _ = writeln!(std::io::stderr(), "sealfs: {msg}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let dir = volume_dir(&cli.cmd);
    let json = argv
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json");
    let r = run(cli).map_err(|e| match &dir {
        Some(d) => error::with_volume_hint(e, d),
        None => e,
    });
    // Every --json command prints one object, a failure too.
    if let (Err(e), true) = (&r, json) {
        if !e.msg.is_empty() && !PRINTED_JSON.load(std::sync::atomic::Ordering::Relaxed) {
            println!(
                "{}",
                serde_json::json!({"error": {"code": e.code, "message": e.msg}})
            );
        }
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // An empty message: already reported (the daemonized mount
            // hands its error to the waiting parent, which prints it).
            if !e.msg.is_empty() {
                let _ = writeln!(std::io::stderr(), "sealfs: {}", e.msg);
            }
            ExitCode::from(e.code)
        }
    }
}

/// gocryptfs spells long options with one dash (`-passfile`, `-config`);
/// clap would read `-passfile` as `-p assfile` and give a misleading tip.
/// Names the two-dash option instead.
fn one_dash_long_option(args: impl Iterator<Item = std::ffi::OsString>) -> Option<String> {
    fn longs(c: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        out.extend(
            c.get_arguments()
                .filter_map(|a| a.get_long().map(String::from)),
        );
        for s in c.get_subcommands() {
            longs(s, out);
        }
    }
    let mut known = std::collections::BTreeSet::new();
    longs(&Cli::command(), &mut known);
    for a in args {
        let a = a.to_string_lossy().into_owned();
        if a == "--" {
            break;
        }
        let Some(name) = a.strip_prefix('-').filter(|n| !n.starts_with('-')) else {
            continue;
        };
        let name = name.split('=').next().unwrap_or(name);
        if name.len() > 1 && known.contains(name) {
            return Some(format!(
                "'{a}' has one dash: sealfs spells long options with two, as in \
                 '--{name}' (gocryptfs's '-{name}')"
            ));
        }
    }
    None
}

/// The existing volume a command opens (for [`error::with_volume_hint`]).
fn volume_dir(cmd: &Command) -> Option<PathBuf> {
    match cmd {
        Command::Mount(a) => Some(a.cipherdir.clone()),
        Command::Passwd { cipherdir, .. }
        | Command::Rotate { cipherdir, .. }
        | Command::Rewrap { cipherdir, .. }
        | Command::Info { cipherdir, .. }
        | Command::Upgrade { cipherdir, .. }
        | Command::Export { cipherdir, .. } => Some(cipherdir.clone()),
        Command::Fsck { cipherdir, .. } => cipherdir.clone(),
        _ => None,
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
        Command::Init {
            cipherdir,
            secret,
            kdf_memory_kib,
            kdf_iterations,
            json,
        } => {
            init_logging(None);
            let params = argon2_params(kdf_memory_kib, kdf_iterations);
            volume::cmd_init(&cipherdir, &secret, params, json)
        }
        Command::Mount(a) => {
            if a.foreground {
                init_logging(a.log_file.as_deref());
            }
            mount::cmd_mount(&a)
        }
        Command::Unmount { mountpoint } => mount::cmd_unmount(&mountpoint),
        Command::Ctl(a) => {
            restore_sigpipe();
            ctl::cmd_ctl(&a)
        }
        Command::Passwd {
            cipherdir,
            secret,
            new_passfile,
            new_key_file,
            kdf_memory_kib,
            kdf_iterations,
        } => {
            init_logging(None);
            let params = argon2_params(kdf_memory_kib, kdf_iterations);
            volume::cmd_passwd(&cipherdir, &secret, new_passfile, new_key_file, params)
        }
        Command::Rotate {
            cipherdir,
            secret,
            json,
            key,
        } => {
            init_logging(None);
            volume::cmd_rotate(&cipherdir, &secret, key.as_deref(), json)
        }
        Command::Rewrap {
            cipherdir,
            secret,
            json,
            key,
        } => {
            init_logging(None);
            volume::cmd_rewrap(&cipherdir, &secret, key.as_deref(), json)
        }
        Command::Info {
            cipherdir,
            secret,
            json,
        } => {
            init_logging(None);
            volume::cmd_info(&cipherdir, &secret, json)
        }
        Command::Fsck {
            cipherdir,
            secret,
            mount,
            socket,
            salvage,
            json,
        } => {
            init_logging(None);
            restore_sigpipe();
            let target = match (cipherdir, mount, socket) {
                (Some(c), _, _) => FsckTarget::Offline(c),
                (None, _, Some(s)) => {
                    FsckTarget::Socket(ctl::Target::of_socket(s, exit::FSCK_FAILED)?)
                }
                (None, Some(m), None) => {
                    FsckTarget::Socket(ctl::Target::of_mount(&m, exit::FSCK_FAILED)?)
                }
                (None, None, None) => unreachable!("clap requires one of them"),
            };
            fsck::cmd_fsck(target, &secret, salvage, json)
        }
        Command::Audit(c) => audit::cmd_audit(&c),
        Command::Keyslot(c) => {
            init_logging(None);
            keyslot::cmd_keyslot(&c)
        }
        Command::Upgrade { cipherdir, secret } => {
            init_logging(None);
            keyslot::cmd_upgrade(&cipherdir, &secret)
        }
        Command::Import {
            plaindir,
            cipherdir,
            secret,
            kdf_memory_kib,
            kdf_iterations,
            transfer,
        } => {
            init_logging(None);
            restore_sigpipe();
            let params = argon2_params(kdf_memory_kib, kdf_iterations);
            transfer::cmd_import(&plaindir, &cipherdir, &secret, params, &transfer)
        }
        Command::Export {
            cipherdir,
            plaindir,
            secret,
            transfer,
        } => {
            init_logging(None);
            restore_sigpipe();
            transfer::cmd_export(&cipherdir, &plaindir, &secret, &transfer)
        }
        Command::Completions(CompletionsArgs { shell }) => {
            restore_sigpipe();
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sealfs",
                &mut std::io::stdout().lock(),
            );
            Ok(())
        }
        Command::Man { dir } => write_man_pages(&dir)
            .map_err(|e| CliError::new(exit::ERROR, format!("{}: {e}", dir.display()))),
    }
}

/// Where the log goes: stderr (commands, a foreground mount), a file
/// (`--log-file`), or syslog/journald (a daemonized mount without
/// `--log-file`).
pub(crate) fn init_logging(to_file: Option<&Path>) {
    init_logging_as(to_file, false)
}

pub(crate) fn init_logging_as(to_file: Option<&Path>, daemon: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=error"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if daemon && to_file.is_none() {
        // SEALFS_SYSLOG_SOCKET points elsewhere (tests, unusual systems).
        let path = std::env::var_os("SEALFS_SYSLOG_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(sealfs::logging::DEV_LOG));
        // Without a syslog socket, stderr (/dev/null once detached).
        if let Ok(sys) = sealfs::logging::Syslog::connect(&path, "sealfs") {
            let _ = b
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_writer(sys)
                .try_init();
            return;
        }
    }
    match to_file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    }) {
        Some(f) => {
            let _ = b
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init();
        }
        None => {
            // Colour only for a terminal (a log captured to a file or the
            // journal carries no escape codes).
            use std::io::IsTerminal;
            let _ = b
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}

/// Printing commands die quietly on a closed pipe (`sealfs ctl status | head`)
/// instead of panicking; never used by the daemon, whose sockets must not
/// kill it.
fn restore_sigpipe() {
    // SAFETY: resetting a signal disposition to its default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Writes one man page per (visible) command into `dir`, replacing the
/// pages a previous run wrote there: the sections clap_mangen renders, the
/// examples of `--help` in a real EXAMPLES section (what follows them in
/// NOTES), and `sealfs VERSION` in the footer of every page.
fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("sealfs") && name.ends_with(".1") {
            std::fs::remove_file(dir.join(&*name))?;
        }
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    man_page(&cmd, dir)
}

fn man_page(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_page(s, dir)?;
    }
    let after = cmd.get_after_help().map(|s| s.to_string());
    let man = clap_mangen::Man::new(cmd.clone().after_help(None::<&str>))
        .source(format!("sealfs {}", env!("CARGO_PKG_VERSION")))
        .manual("sealfs manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    if let Some(text) = after {
        let (examples, notes) = split_examples(&text);
        if !examples.is_empty() {
            out.extend(roff_section("EXAMPLES", &examples).as_bytes());
        }
        if !notes.trim().is_empty() {
            out.extend(roff_section("NOTES", notes.trim()).as_bytes());
        }
    }
    let name = cmd.get_display_name().unwrap_or(cmd.get_name());
    std::fs::write(dir.join(format!("{name}.1")), out)
}

/// The indented lines after `Examples:` in a `--help` epilogue, and the rest.
fn split_examples(text: &str) -> (String, String) {
    let mut lines = text.lines().peekable();
    let mut notes = String::new();
    let mut examples = String::new();
    while let Some(l) = lines.next() {
        if l.trim() == "Examples:" {
            while let Some(e) = lines.next_if(|e| e.starts_with("  ")) {
                examples.push_str(e.trim_start());
                examples.push('\n');
            }
        } else {
            notes.push_str(l);
            notes.push('\n');
        }
    }
    (examples, notes)
}

/// A roff section of preformatted text (no filling, roff escapes undone).
fn roff_section(title: &str, body: &str) -> String {
    let mut s = format!(".SH {title}\n.nf\n");
    for l in body.lines() {
        let l = l.replace('\\', "\\e");
        if l.starts_with('.') || l.starts_with('\'') {
            s.push_str("\\&");
        }
        s.push_str(&l);
        s.push('\n');
    }
    s.push_str(".fi\n");
    s
}

/// The fields that hold seconds since the epoch.
const EPOCH_FIELDS: &[&str] = &[
    "created",
    "deletion_due",
    "next_rotation",
    "expires",
    "last_rotation",
    "destroyed",
];

/// Beside each epoch field (seconds), its RFC 3339 UTC form as
/// `FIELD_utc`, at any depth: scripts keep the number, people read the date.
fn add_utc_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let add: Vec<(String, String)> = m
                .iter()
                .filter(|(k, _)| EPOCH_FIELDS.contains(&k.as_str()))
                .filter_map(|(k, x)| {
                    x.as_u64()
                        .map(|s| (format!("{k}_utc"), sealfs::format::grants::format_utc(s)))
                })
                .collect();
            for x in m.values_mut() {
                add_utc_times(x);
            }
            for (k, t) in add {
                m.entry(k).or_insert(serde_json::Value::String(t));
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(add_utc_times),
        _ => {}
    }
}

/// Whether a JSON object went to stdout already (a failure with a report,
/// such as import's partial result or fsck's problems, adds none).
static PRINTED_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints `v` as one line of JSON, keys in alphabetical order (as the
/// daemon writes them).
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let mut v = serde_json::to_value(v).map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
    add_utc_times(&mut v);
    PRINTED_JSON.store(true, std::sync::atomic::Ordering::Relaxed);
    println!("{v}");
    Ok(())
}
