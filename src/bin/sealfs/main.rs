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
mod error;
mod fsck;
mod grants;
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
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sealfs: {}", e.msg);
            ExitCode::from(e.code)
        }
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
        } => {
            init_logging(None);
            volume::cmd_rotate(&cipherdir, &secret, json)
        }
        Command::Rewrap {
            cipherdir,
            secret,
            json,
        } => {
            init_logging(None);
            volume::cmd_rewrap(&cipherdir, &secret, json)
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
            let _ = b.with_writer(std::io::stderr).try_init();
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
/// pages a previous run wrote there.
fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("sealfs") && name.ends_with(".1") {
            std::fs::remove_file(dir.join(&*name))?;
        }
    }
    clap_mangen::generate_to(Cli::command(), dir)
}

/// Prints `v` as one line of JSON, keys in alphabetical order (as the
/// daemon writes them).
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), CliError> {
    let v = serde_json::to_value(v).map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
    println!("{v}");
    Ok(())
}
