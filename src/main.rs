//! The `sealfs` command line. Parses arguments, gathers the unlock secret,
//! and calls the library; holds no filesystem or crypto logic of its own.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

mod cmd_policy;

use clap::{Args, CommandFactory, Parser, Subcommand};
use zeroize::Zeroizing;

use sealfs::crypto::Argon2Params;
use sealfs::ctl;
use sealfs::format::keyring::KeyringFormatError;
use sealfs::fs::{fuser_config, MountOptions, SealFs};
use sealfs::keyring::{KeyringError, SecretError, UnlockSecret};
use sealfs::volume::{Volume, VolumeError};

/// Exit codes (stable; documented in the README).
mod exit {
    pub const ERROR: u8 = 1;
    pub const MOUNTPOINT: u8 = 10;
    pub const WRONG_SECRET: u8 = 12;
    pub const BAD_VOLUME: u8 = 23;
    /// import/export: done, but some entries were not transferred (each
    /// one is reported). Same number as [`AUDIT_BROKEN`]: "finished incomplete".
    pub const PARTIAL: u8 = 3;
    /// fsck, as fsck(8): problems found and all of them repaired.
    pub const FSCK_REPAIRED: u8 = 1;
    /// fsck: problems found and (some) left unrepaired.
    pub const FSCK_PROBLEMS: u8 = 4;
    /// fsck: could not run (wrong secret, not a volume, mounted, I/O).
    pub const FSCK_FAILED: u8 = 8;
    /// audit verify/export: the chain is broken (a record missing, edited or reordered).
    pub const AUDIT_BROKEN: u8 = 3;
}

#[derive(Parser)]
#[command(
    name = "sealfs",
    version,
    about = "An encrypted folder with built-in key management (FUSE)"
)]
#[command(
    after_help = "Examples:\n  sealfs init ~/vault.enc --passfile ~/.vault-pass\n  sealfs mount ~/vault.enc ~/vault --passfile ~/.vault-pass\n  sealfs unmount ~/vault\n\nExit codes: 0 success, 1 other error, 2 usage, 3 import/export finished but\nsome entries were not transferred, 10 mount point problem,\n12 wrong passphrase or key file, 23 CIPHERDIR is not a usable volume\n(sealfs fsck uses fsck(8)'s codes: see 'sealfs fsck --help').\n\n'sealfs COMMAND --help' shows each command's options and examples."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Args, Clone)]
struct SecretArgs {
    /// Read the passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["extpass", "key_file"])]
    passfile: Option<PathBuf>,
    /// Run CMD (with sh -c) and read the passphrase from its first output line.
    #[arg(long, value_name = "CMD", conflicts_with = "key_file")]
    extpass: Option<String>,
    /// Unlock with a 32-byte key file instead of a passphrase.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new volume in an empty CIPHERDIR.
    #[command(
        after_help = "Examples:\n  sealfs init ~/vault.enc                      # asks for a passphrase twice\n  sealfs init ~/vault.enc --passfile ~/.vault-pass\n  head -c 32 /dev/urandom > vault.key && sealfs init ~/vault.enc --key-file vault.key"
    )]
    Init {
        /// Directory that will hold the encrypted files (created if absent).
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// Argon2id memory cost in KiB (default 262144 = 256 MiB).
        #[arg(long, default_value_t = Argon2Params::DEFAULT.memory_kib)]
        kdf_memory_kib: u32,
        /// Argon2id passes (default 3).
        #[arg(long, default_value_t = Argon2Params::DEFAULT.iterations)]
        kdf_iterations: u32,
        /// Print the new volume's id and paths as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unlock CIPHERDIR and mount its plaintext view on MOUNTPOINT.
    #[command(
        after_help = "Examples:\n  sealfs mount ~/vault.enc ~/vault --passfile ~/.vault-pass\n  sealfs mount ~/vault.enc ~/vault --extpass 'pass show vault' -o allow_other\n  sealfs mount ~/vault.enc ~/vault --key-file vault.key -f     # stay in front, Ctrl-C unmounts\n  mount -t fuse.sealfs ~/vault.enc ~/vault -o passfile=/root/.vault-pass   # via contrib/mount.sealfs"
    )]
    Mount(MountArgs),
    /// Unmount a sealfs mount.
    #[command(
        after_help = "Example:\n  sealfs unmount ~/vault          # same as: fusermount3 -u ~/vault"
    )]
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Talk to a mounted volume's control socket (key management).
    #[command(
        after_help = "Examples:\n  sealfs ctl --mount ~/vault status\n  sealfs ctl --mount ~/vault rotate && sealfs ctl --mount ~/vault rewrap\n  sealfs ctl --mount ~/vault rotation-period 90d\n  sealfs ctl --socket /run/sealfs/mnt-1234.sock --json status"
    )]
    Ctl(CtlArgs),
    /// Change the unlock secret of an unmounted volume (re-seals the keyring only).
    #[command(
        after_help = "Examples:\n  sealfs passwd ~/vault.enc                                   # asks on the terminal\n  sealfs passwd ~/vault.enc --passfile old.txt --new-passfile new.txt\n  sealfs passwd ~/vault.enc --passfile old.txt --new-key-file vault.key"
    )]
    Passwd {
        /// The volume's cipher directory.
        cipherdir: PathBuf,
        /// The current secret.
        #[command(flatten)]
        secret: SecretArgs,
        /// Read the new passphrase from the first line of FILE.
        #[arg(long, value_name = "FILE", conflicts_with = "new_key_file")]
        new_passfile: Option<PathBuf>,
        /// Switch to a 32-byte key file.
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
        /// Argon2id memory cost in KiB for a new passphrase.
        #[arg(long, default_value_t = Argon2Params::DEFAULT.memory_kib)]
        kdf_memory_kib: u32,
        /// Argon2id passes for a new passphrase.
        #[arg(long, default_value_t = Argon2Params::DEFAULT.iterations)]
        kdf_iterations: u32,
    },
    /// Rotate the master key of an unmounted volume.
    #[command(
        after_help = "Example (unmounted; on a mount use 'sealfs ctl --mount MNT rotate'):\n  sealfs rotate ~/vault.enc --passfile ~/.vault-pass"
    )]
    Rotate {
        /// The volume's cipher directory.
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// Print the new primary version as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-wrap every header of an unmounted volume under the primary key version.
    #[command(
        after_help = "Example (unmounted; on a mount use 'sealfs ctl --mount MNT rewrap'):\n  sealfs rotate ~/vault.enc --passfile P && sealfs rewrap ~/vault.enc --passfile P"
    )]
    Rewrap {
        /// The volume's cipher directory.
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// Print the result as JSON (done, rewrapped, failed, …).
        #[arg(long)]
        json: bool,
    },
    /// Show a volume's key versions and header counts (read-only; works beside a mount).
    #[command(
        after_help = "Examples:\n  sealfs info ~/vault.enc --passfile ~/.vault-pass\n  sealfs info ~/vault.enc --passfile ~/.vault-pass --json | jq .versions"
    )]
    Info {
        /// The volume's cipher directory.
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a volume offline: config, keyring, every directory record, name, header and chunk.
    #[command(
        after_help = "Examples:\n  sealfs fsck ~/vault.enc --passfile ~/.vault-pass\n  sealfs fsck ~/vault.enc --passfile ~/.vault-pass --salvage\n  sealfs fsck ~/vault.enc --passfile ~/.vault-pass --json | jq '.problems[].path'\n  sealfs fsck --mount ~/vault                  # a mounted volume, check only\n\nCIPHERDIR must not be mounted; --mount checks a mounted volume through its control\nsocket instead (check only).\n\n--salvage makes damaged files readable again where possible: bad chunks are\nreplaced by zeros (each reported with its byte range), a damaged directory record\nor keyring copy is restored from its second copy, and ciphertext no directory\naccounts for moves to /lost+found. Healthy files are never written.\n\nExit codes (as fsck(8)): 0 no problem, 1 problems found and all repaired,\n4 problems found and left (or not repaired: run with --salvage), 8 fsck could not\nrun (wrong passphrase or key file, not a volume, mounted, I/O error), 2 usage."
    )]
    Fsck {
        /// The volume's cipher directory (not mounted).
        #[arg(required_unless_present_any = ["mount", "socket"], conflicts_with_all = ["mount", "socket"])]
        cipherdir: Option<PathBuf>,
        #[command(flatten)]
        secret: SecretArgs,
        /// Check a mounted volume instead, through its control socket (check
        /// only; the daemon holds the key, no secret is asked).
        #[arg(long, value_name = "MOUNTPOINT", conflicts_with_all = ["salvage", "socket"])]
        mount: Option<PathBuf>,
        /// Like --mount, with the control socket's path.
        #[arg(long, value_name = "PATH", conflicts_with = "salvage")]
        socket: Option<PathBuf>,
        /// Repair what can be repaired (bad chunks become zeros, second copies restore
        /// first ones, orphans go to /lost+found).
        #[arg(long)]
        salvage: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Verify or export a volume's audit log offline.
    #[command(subcommand)]
    Audit(cmd_policy::AuditCommand),
    /// Encrypt an existing directory tree into a volume, without mounting.
    #[command(
        after_help = "Examples:\n  sealfs import ~/photos ~/photos.enc                      # creates the volume, asks for a passphrase twice\n  sealfs import ~/photos ~/photos.enc --passfile ~/.vault-pass\n  sealfs import ~/photos ~/photos.enc --passfile P --json | jq .problems\n\nPLAINDIR's content lands in the volume's root. CIPHERDIR is created (as by\n'sealfs init', with the same secret options) when it does not exist or is an\nempty directory; an existing volume must not be mounted. Files are copied by\nseveral threads; modes, access and modification times, symlinks and empty\ndirectories are kept (owners too, as root). Each file is written to a temp\nfile and renamed into place once complete, so an interrupted import can simply\nbe run again: files already there with the same size and mtime are skipped.\nFIFOs, sockets and devices are not copied (reported); a file with several\nhard links is copied once per name. A progress bar is drawn on a terminal.\n\nExit codes: 0 everything copied, 3 some entries not copied (listed), 1 error,\n12 wrong passphrase or key file, 23 CIPHERDIR is not a sealfs volume."
    )]
    Import {
        /// The plain directory tree to encrypt.
        plaindir: PathBuf,
        /// The volume's cipher directory (created when absent or empty).
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// Argon2id memory cost in KiB, when the volume is created.
        #[arg(long, default_value_t = Argon2Params::DEFAULT.memory_kib)]
        kdf_memory_kib: u32,
        /// Argon2id passes, when the volume is created.
        #[arg(long, default_value_t = Argon2Params::DEFAULT.iterations)]
        kdf_iterations: u32,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Decrypt a whole volume into a plain directory tree, without mounting.
    #[command(
        after_help = "Examples:\n  sealfs export ~/photos.enc ~/photos-restored --passfile ~/.vault-pass\n  sealfs export ~/photos.enc /mnt/usb/photos --passfile P --json\n\nPLAINDIR is created if absent; entries already in it that the volume does not\nhave are left alone. Modes, times and symlinks are kept (owners too, as root).\nEach file is written to a temp file and renamed into place; a re-run skips\nfiles already there with the same size and mtime. Works beside a mount (read\nonly), but a file written meanwhile may be copied half-old, half-new: unmount\nor stop writers for a consistent copy.\n\nExit codes: 0 everything copied, 3 some entries not copied (listed), 1 error,\n12 wrong passphrase or key file, 23 CIPHERDIR is not a sealfs volume."
    )]
    Export {
        /// The volume's cipher directory.
        cipherdir: PathBuf,
        /// Where the plaintext tree goes (created if absent).
        plaindir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  sealfs completions bash > /etc/bash_completion.d/sealfs\n  sealfs completions zsh > \"${fpath[1]}/_sealfs\"\n  sealfs completions fish > ~/.config/fish/completions/sealfs.fish"
    )]
    Completions(CompletionsArgs),
    /// Write the man pages (sealfs.1, sealfs-mount.1, …) into DIR (used for contrib/man).
    #[command(hide = true)]
    Man {
        /// Output directory (created if absent); its old sealfs*.1 pages are replaced.
        dir: PathBuf,
    },
}

#[derive(Args)]
struct TransferArgs {
    /// Files copied in parallel (default: the number of cores, 2 to 8).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: Option<u16>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

#[derive(Args)]
struct MountArgs {
    /// The volume's cipher directory.
    cipherdir: PathBuf,
    /// An empty directory to mount on.
    mountpoint: PathBuf,
    #[command(flatten)]
    secret: SecretArgs,
    /// Stay in the foreground (SIGINT/SIGTERM unmount).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Mount options: allow_other, ro (comma separated).
    #[arg(short = 'o', value_name = "OPTS")]
    options: Option<String>,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
    /// Request-serving threads (default: twice the cores, 4 to 16, so that
    /// a thread waiting on the disk or in fsync holds up no other request).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
    /// Write the daemon's log here (default: stderr with -f, else syslog
    /// or journald through /dev/log).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Control socket path (default: /run/sealfs/mnt-HASH.sock for root,
    /// $XDG_RUNTIME_DIR/sealfs/… otherwise).
    #[arg(long, value_name = "PATH")]
    ctl_socket: Option<PathBuf>,
    /// Do not keep an audit log of key uses (the default keeps one in
    /// CIPHERDIR/sealfs.audit; without it grants still work, unrecorded).
    #[arg(long)]
    no_audit: bool,
    /// Unmount once no file or directory is open and no request came for
    /// DURATION (30s, 15m, 2h, 1d). A busy mount point (a shell's working
    /// directory in it) is retried until it can be unmounted.
    #[arg(long, value_name = "DURATION", value_parser = parse_idle)]
    idle: Option<std::time::Duration>,
}

fn parse_idle(s: &str) -> Result<std::time::Duration, String> {
    sealfs::format::config::parse_duration(s).map(std::time::Duration::from_secs)
}

#[derive(Args)]
struct CtlArgs {
    /// The mount point (its default socket is used).
    #[arg(long, value_name = "MOUNTPOINT", required_unless_present = "socket")]
    mount: Option<PathBuf>,
    /// The control socket.
    #[arg(long, value_name = "PATH", conflicts_with = "mount")]
    socket: Option<PathBuf>,
    /// Print the daemon's JSON result instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Volume, key versions, schedule, rewrap progress.
    Status,
    /// Make a new master key version primary.
    Rotate,
    /// Re-wrap every header under the primary version (waits with a progress bar).
    Rewrap {
        /// Start it and return.
        #[arg(long)]
        background: bool,
    },
    /// Count headers per key version (full scan).
    Census,
    /// Counters in the Prometheus text format (operations, bytes, latency,
    /// integrity failures, denied attempts, key uses, open files).
    #[command(
        after_help = "Examples:\n  sealfs ctl --mount ~/vault metrics\n  sealfs ctl --mount ~/vault metrics | grep sealfs_integrity_failures_total\n  sealfs ctl --mount ~/vault metrics > /var/lib/node_exporter/textfile/sealfs.prom   # node_exporter textfile collector"
    )]
    Metrics,
    /// Refuse all file I/O with EACCES until enabled.
    Disable,
    /// Allow file I/O again.
    Enable,
    /// Set automatic rotation ("90d", "12h", …) or "off".
    RotationPeriod {
        /// The period.
        period: String,
    },
    /// Retire every version below MIN (they stop decrypting).
    Trim {
        /// Minimum decryption version.
        min_version: u32,
        /// Retire even if headers still use those versions (they stop opening).
        #[arg(long)]
        force: bool,
    },
    /// Re-enable a retired version.
    Untrim {
        /// The version.
        version: u32,
    },
    /// Schedule a retired version's destruction (crypto-shredding).
    ScheduleDeletion {
        /// The version.
        version: u32,
        /// Waiting period.
        #[arg(long, default_value = "7d")]
        wait: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Cancel a scheduled destruction.
    CancelDeletion {
        /// The version.
        version: u32,
    },
    /// Grants: delegated, revocable access for other local users.
    #[command(subcommand)]
    Grant(cmd_policy::GrantCommand),
    /// The audit log of key uses.
    #[command(subcommand)]
    Audit(cmd_policy::AuditCtlCommand),
}

struct CliError {
    code: u8,
    msg: String,
}

impl CliError {
    fn new(code: u8, msg: impl Into<String>) -> Self {
        CliError {
            code,
            msg: msg.into(),
        }
    }
}

impl From<VolumeError> for CliError {
    fn from(e: VolumeError) -> Self {
        let code = match &e {
            VolumeError::Keyring(KeyringError::Format(KeyringFormatError::Unlock)) => {
                exit::WRONG_SECRET
            }
            VolumeError::Keyring(KeyringError::WrongSecretKind(_)) => exit::WRONG_SECRET,
            VolumeError::Config(_) | VolumeError::Keyring(_) | VolumeError::NotAVolume(_) => {
                exit::BAD_VOLUME
            }
            _ => exit::ERROR,
        };
        let msg = match &e {
            VolumeError::Keyring(KeyringError::Format(KeyringFormatError::Unlock)) => {
                "wrong passphrase or key file (nothing was changed)".to_string()
            }
            other => other.to_string(),
        };
        CliError::new(code, msg)
    }
}

fn read_secret(a: &SecretArgs, confirm: bool) -> Result<UnlockSecret, CliError> {
    let secret_err = |e: SecretError| CliError::new(exit::ERROR, e.to_string());
    if let Some(kf) = &a.key_file {
        return UnlockSecret::from_key_file(kf).map_err(secret_err);
    }
    if let Some(pf) = &a.passfile {
        return UnlockSecret::from_passfile(pf).map_err(secret_err);
    }
    if let Some(cmd) = &a.extpass {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| {
                CliError::new(exit::ERROR, format!("cannot run --extpass command: {e}"))
            })?;
        if !out.status.success() {
            return Err(CliError::new(
                exit::ERROR,
                format!("--extpass command failed ({})", out.status),
            ));
        }
        let stdout = Zeroizing::new(out.stdout);
        return UnlockSecret::from_passphrase_line(&stdout).map_err(secret_err);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(CliError::new(
            exit::ERROR,
            "no passphrase: stdin is not a terminal; use --passfile, --extpass or --key-file",
        ));
    }
    let p1 = Zeroizing::new(
        rpassword::prompt_password("Passphrase: ")
            .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?,
    );
    if confirm {
        let p2 = Zeroizing::new(
            rpassword::prompt_password("Repeat passphrase: ")
                .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?,
        );
        if *p1 != *p2 {
            return Err(CliError::new(exit::ERROR, "passphrases do not match"));
        }
    }
    UnlockSecret::from_passphrase_line(p1.as_bytes()).map_err(secret_err)
}

/// Where the log goes: stderr (commands, a foreground mount), a file
/// (`--log-file`), or syslog/journald (a daemonized mount without
/// `--log-file`).
fn init_logging(to_file: Option<&Path>) {
    init_logging_as(to_file, false)
}

fn init_logging_as(to_file: Option<&Path>, daemon: bool) {
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

fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 && rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: valid pointer.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    }
}

fn termination_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the termination signals in this thread, so every thread started
/// later (fuser's loops, the record flusher) inherits the mask and only the
/// thread of [`unmount_on_signal`] receives them. Call before `Session::new`.
fn block_termination_signals() {
    let set = termination_signals();
    // SAFETY: valid signal set; only changes this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Set when the daemon itself unmounts (signal, `--idle`): the kernel may
/// then end the session with ECONNABORTED instead of ENODEV (seen after a
/// lazy unmount), which is the normal end, not an error.
static UNMOUNT_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts the thread that waits for SIGINT/SIGTERM/SIGHUP and unmounts.
/// A termination signal always ends the mount: when it is busy (a file or
/// a working directory open in it, if only for the moment a forked child
/// holds a copy of an fd), the unmount is retried for a second and then
/// done lazily, as `umount -l` does; the session ends when the last user
/// is gone. Before, a busy mount made the daemon ignore the signal.
fn unmount_on_signal(mut unmounter: fuser::SessionUnmounter, mp: PathBuf) {
    std::thread::spawn(move || {
        let set = termination_signals();
        let mut sig = 0;
        // SAFETY: valid pointers; the signals are blocked in every thread.
        unsafe { libc::sigwait(&set, &mut sig) };
        tracing::info!("signal {sig}: unmounting");
        UNMOUNT_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
        let Err(e) = unmounter.unmount() else { return };
        tracing::info!("unmount failed ({e}); retrying");
        for _ in 0..10 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            match unmount_not_lazily(&mp) {
                Ok(()) => return,
                // Gone already (someone else unmounted it).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(_) => {}
            }
        }
        tracing::warn!("mount point still busy: detaching it lazily");
        if let Err(e) = unmount_lazily(&mp) {
            tracing::warn!("lazy unmount failed: {e}");
        }
    });
}

/// umount2(MNT_DETACH) as root; `fusermount3 -u -z` otherwise.
fn unmount_lazily(mp: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mp.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string; umount2 has no memory effects.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let st = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "-q"])
        .arg(mp)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("fusermount3 -u -z: {st}")))
    }
}

/// Starts the thread of `--idle`: once the mount has been unused for `idle`,
/// unmount it the way `umount` would (not lazily: a busy mount stays, and
/// is tried again), which ends the session.
fn unmount_when_idle(activity: Arc<sealfs::fs::Activity>, idle: std::time::Duration, mp: PathBuf) {
    use std::time::Duration;
    std::thread::spawn(move || {
        let tick = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
        loop {
            std::thread::sleep(tick);
            if !activity.idle_for(idle) {
                continue;
            }
            UNMOUNT_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
            match unmount_not_lazily(&mp) {
                Ok(()) => {
                    tracing::info!("unused for {idle:?}: unmounted");
                    return;
                }
                Err(e) => tracing::info!("unused for {idle:?}, but unmount failed: {e}"),
            }
        }
    });
}

/// umount(2) as root; `fusermount3 -u` (which is not lazy either) otherwise.
fn unmount_not_lazily(mp: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mp.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string; umount2 has no memory effects.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(e);
    }
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-q")
        .arg(mp)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("fusermount3 -u: {st}")))
    }
}

fn check_mountpoint(mp: &Path) -> Result<(), CliError> {
    let md = std::fs::metadata(mp).map_err(|e| {
        CliError::new(
            exit::MOUNTPOINT,
            format!("MOUNTPOINT {}: {e}", mp.display()),
        )
    })?;
    if !md.is_dir() {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!("MOUNTPOINT {} is not a directory", mp.display()),
        ));
    }
    let mut rd = std::fs::read_dir(mp).map_err(|e| {
        CliError::new(
            exit::MOUNTPOINT,
            format!("MOUNTPOINT {}: {e}", mp.display()),
        )
    })?;
    if rd.next().is_some() {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!("MOUNTPOINT {} is not empty", mp.display()),
        ));
    }
    Ok(())
}

/// Request-serving threads when `--threads` is not given.
fn default_request_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).clamp(4, 16)
}

#[allow(clippy::too_many_arguments)]
fn cmd_mount(a: &MountArgs) -> Result<(), CliError> {
    let (cipherdir, mountpoint) = (a.cipherdir.as_path(), a.mountpoint.as_path());
    let mut opts = MountOptions {
        allow_other: false,
        read_only: a.read_only,
        threads: a
            .threads
            .map(usize::from)
            .unwrap_or_else(default_request_threads),
    };
    for o in a
        .options
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        match o {
            "allow_other" => opts.allow_other = true,
            "ro" => opts.read_only = true,
            "rw" => opts.read_only = false,
            other => {
                return Err(CliError::new(
                    exit::ERROR,
                    format!("unknown mount option '{other}' (known: allow_other, ro, rw)"),
                ))
            }
        }
    }
    if !cipherdir.is_dir() || !Volume::looks_like_volume(cipherdir) {
        return Err(CliError::new(
            exit::BAD_VOLUME,
            format!(
                "{} is not a sealfs volume (no sealfs.toml); create one with 'sealfs init'",
                cipherdir.display()
            ),
        ));
    }
    check_mountpoint(mountpoint)?;
    let canonical_mp = mountpoint
        .canonicalize()
        .map_err(|e| CliError::new(exit::MOUNTPOINT, e.to_string()))?;
    let socket = a
        .ctl_socket
        .clone()
        .unwrap_or_else(|| ctl::default_socket_path(&canonical_mp));
    // Before any key is in memory; inherited by the daemonized child.
    let core_dumps = sealfs::hardening::disable_core_dumps();
    let s = read_secret(&a.secret, false)?;
    let vol = Arc::new(Volume::open(cipherdir, &s, opts.read_only)?);
    drop(s);
    raise_fd_limit();
    let cipherdir = cipherdir
        .canonicalize()
        .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;

    let mut ready_pipe: Option<std::fs::File> = None;
    if !a.foreground {
        let mut fds = [0; 2];
        // SAFETY: valid array for pipe().
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(CliError::new(exit::ERROR, "pipe failed"));
        }
        // SAFETY: single-threaded here; fork is safe before any thread starts.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(CliError::new(exit::ERROR, "fork failed"));
        }
        // SAFETY: fds come from pipe2 and are owned from here on.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if pid > 0 {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            if msg.starts_with("OK") {
                eprintln!(
                    "sealfs: mounted {} on {}; control socket {}",
                    cipherdir.display(),
                    mountpoint.display(),
                    socket.display()
                );
                return Ok(());
            }
            let msg = msg.strip_prefix("ERR ").unwrap_or(&msg).trim().to_string();
            let msg = if msg.is_empty() {
                "the mount daemon exited before the mount was ready".into()
            } else {
                msg
            };
            return Err(CliError::new(exit::ERROR, msg));
        }
        drop(r);
        // SAFETY: detaching from the controlling terminal.
        unsafe { libc::setsid() };
        ready_pipe = Some(std::fs::File::from(w));
    }
    init_logging_as(a.log_file.as_deref(), !a.foreground);
    if let Err(e) = core_dumps {
        tracing::warn!("cannot disable core dumps: {e}");
    }
    // Memory locks do not survive fork: taken here, in the serving process.
    match sealfs::hardening::lock_memory() {
        sealfs::hardening::MemoryLock::Locked => tracing::debug!("memory locked"),
        other => tracing::debug!("memory not locked: {other:?}"),
    }
    let fail = |pipe: &mut Option<std::fs::File>, msg: String| -> CliError {
        if let Some(p) = pipe.as_mut() {
            let _ = writeln!(p, "ERR {msg}");
        }
        CliError::new(exit::ERROR, msg)
    };
    // Before SealFs::new: it starts a thread (the release queue), and a
    // thread started with SIGTERM unblocked would take the signal's default
    // action (kill the daemon, leaving a dead mount) instead of unmounting.
    block_termination_signals();
    // SAFETY: geteuid has no failure mode.
    let owner = unsafe { libc::geteuid() };
    let grants = match sealfs::policy::grants::GrantStore::open(vol.clone()) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            return Err(fail(
                &mut ready_pipe,
                format!("cannot open the grant store: {e}"),
            ))
        }
    };
    let audit = if a.no_audit {
        None
    } else {
        match sealfs::policy::audit::AuditLog::open(
            vol.clone(),
            sealfs::policy::audit::DEFAULT_SEGMENT_BYTES,
        ) {
            Ok(l) => Some(l),
            Err(e) => {
                return Err(fail(
                    &mut ready_pipe,
                    format!(
                        "cannot open the audit log: {e} (mount with --no-audit to go without one)"
                    ),
                ))
            }
        }
    };
    let policy = Arc::new(sealfs::policy::AccessControl::new(
        owner,
        Some(grants),
        audit,
    ));
    let fs = match SealFs::new(vol.clone(), policy.clone()) {
        Ok(f) => f,
        Err(e) => {
            return Err(fail(
                &mut ready_pipe,
                format!("cannot open the volume's root: {e}"),
            ))
        }
    };
    let cache = fs.cache_control();
    let activity = fs.activity();
    let config = fuser_config(&cipherdir, &opts);
    let mut session = match fuser::Session::new(fs, mountpoint, &config) {
        Ok(s) => s,
        Err(e) => return Err(fail(&mut ready_pipe, format!("mount failed: {e}"))),
    };
    unmount_on_signal(session.unmount_callable(), canonical_mp.clone());
    sealfs::fs::raise_readahead(&canonical_mp, 1024);
    cache.set_notifier(session.notifier());
    let ctl_ctx = ctl::ControlContext::new(
        vol,
        cache,
        canonical_mp.clone(),
        owner,
        policy,
        opts.allow_other,
    );
    let _server = match ctl::serve(&socket, ctl_ctx.clone()) {
        Ok(s) => s,
        Err(e) => {
            let mut u = session.unmount_callable();
            let _ = u.unmount();
            return Err(fail(
                &mut ready_pipe,
                format!("control socket {}: {e}", socket.display()),
            ));
        }
    };
    ctl::spawn_scheduler(&ctl_ctx);
    ctl::spawn_grant_expiry(&ctl_ctx);
    tracing::info!(
        "mounted {} on {}; control socket {}",
        cipherdir.display(),
        canonical_mp.display(),
        socket.display()
    );
    if let Some(idle) = a.idle {
        unmount_when_idle(activity, idle, canonical_mp.clone());
    }
    if let Some(mut p) = ready_pipe.take() {
        let _ = writeln!(p, "OK");
        drop(p);
        // Detach stdio now that errors can no longer reach the caller.
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            use std::os::fd::AsRawFd;
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
    } else {
        eprintln!(
            "sealfs: mounted {} on {}; control socket {}",
            cipherdir.display(),
            mountpoint.display(),
            socket.display()
        );
    }
    match session.run() {
        Err(e)
            if e.raw_os_error() == Some(libc::ECONNABORTED)
                && UNMOUNT_REQUESTED.load(std::sync::atomic::Ordering::SeqCst) =>
        {
            tracing::info!("session ended after unmount ({e})");
            Ok(())
        }
        r => r.map_err(|e| CliError::new(exit::ERROR, format!("session ended with error: {e}"))),
    }
}

fn cmd_unmount(mp: &Path) -> Result<(), CliError> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mp)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err(CliError::new(
            exit::ERROR,
            format!("could not unmount {}", mp.display()),
        )),
        Err(_) => {
            let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())
                .map_err(|_| CliError::new(exit::ERROR, "bad path"))?;
            // SAFETY: valid C string.
            if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
                Ok(())
            } else {
                Err(CliError::new(
                    exit::ERROR,
                    format!(
                        "could not unmount {}: {}",
                        mp.display(),
                        std::io::Error::last_os_error()
                    ),
                ))
            }
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
            if Volume::looks_like_volume(&cipherdir) {
                return Err(CliError::new(
                    exit::ERROR,
                    format!("{} already holds a sealfs volume", cipherdir.display()),
                ));
            }
            let s = read_secret(&secret, true)?;
            let params = Argon2Params {
                memory_kib: kdf_memory_kib,
                iterations: kdf_iterations,
                parallelism: Argon2Params::DEFAULT.parallelism,
            };
            Volume::create(&cipherdir, &s, params)?;
            if json {
                let cfg = Volume::read_config(&cipherdir)?;
                let dir = cipherdir.canonicalize().unwrap_or(cipherdir);
                println!(
                    "{}",
                    serde_json::json!({"cipherdir": dir, "volume_id": cfg.volume_id, "format_version": cfg.format_version, "primary": 1})
                );
            } else {
                eprintln!("sealfs: created volume in {}", cipherdir.display());
            }
            Ok(())
        }
        Command::Mount(a) => {
            if a.foreground {
                init_logging(a.log_file.as_deref());
            }
            cmd_mount(&a)
        }
        Command::Unmount { mountpoint } => cmd_unmount(&mountpoint),
        Command::Ctl(a) => {
            restore_sigpipe();
            cmd_ctl(&a)
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
            let vol = open_offline(&cipherdir, &secret)?;
            let new_args = SecretArgs {
                passfile: new_passfile,
                extpass: None,
                key_file: new_key_file,
            };
            let new = read_secret(&new_args, true)?;
            let params = Argon2Params {
                memory_kib: kdf_memory_kib,
                iterations: kdf_iterations,
                parallelism: Argon2Params::DEFAULT.parallelism,
            };
            vol.change_secret(&new, params)?;
            eprintln!("sealfs: unlock secret changed (keyring re-sealed; no file data touched)");
            Ok(())
        }
        Command::Rotate {
            cipherdir,
            secret,
            json,
        } => {
            init_logging(None);
            let vol = open_offline(&cipherdir, &secret)?;
            let v = vol.update_keyring(|k| k.rotate())?;
            if json {
                println!("{}", serde_json::json!({"primary": v}));
            } else {
                eprintln!("sealfs: key version {v} is now primary");
            }
            Ok(())
        }
        Command::Rewrap {
            cipherdir,
            secret,
            json,
        } => {
            init_logging(None);
            let vol = open_offline(&cipherdir, &secret)?;
            let progress = sealfs::volume::walk::RewrapProgress::default();
            with_progress(
                progress_bar_for(BarKind::Headers),
                || vol.rewrap_all(&progress),
                |bar| {
                    let r = progress.report();
                    bar.set_length(r.total.max(1));
                    bar.set_position(r.done);
                },
            )??;
            let r = progress.report();
            if json {
                println!(
                    "{}",
                    serde_json::to_value(&r)
                        .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?
                );
            } else {
                eprintln!(
                    "sealfs: rewrap done: {} visited, {} re-wrapped, {} failed",
                    r.done, r.rewrapped, r.failed
                );
            }
            if r.failed > 0 {
                return Err(CliError::new(
                    exit::ERROR,
                    format!(
                        "{} headers could not be re-wrapped (see warnings)",
                        r.failed
                    ),
                ));
            }
            Ok(())
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
                (None, _, Some(s)) => FsckTarget::Socket(s),
                (None, Some(m), None) => {
                    FsckTarget::Socket(ctl::default_socket_path(&m.canonicalize().map_err(
                        |e| CliError::new(exit::FSCK_FAILED, format!("{}: {e}", m.display())),
                    )?))
                }
                (None, None, None) => unreachable!("clap requires one of them"),
            };
            cmd_fsck(target, &secret, salvage, json)
        }
        Command::Audit(c) => cmd_policy::cmd_audit(&c),
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
            let params = Argon2Params {
                memory_kib: kdf_memory_kib,
                iterations: kdf_iterations,
                parallelism: Argon2Params::DEFAULT.parallelism,
            };
            cmd_import(&plaindir, &cipherdir, &secret, params, &transfer)
        }
        Command::Export {
            cipherdir,
            plaindir,
            secret,
            transfer,
        } => {
            init_logging(None);
            restore_sigpipe();
            cmd_export(&cipherdir, &plaindir, &secret, &transfer)
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
        Command::Info {
            cipherdir,
            secret,
            json,
        } => {
            init_logging(None);
            check_is_volume(&cipherdir)?;
            let vol = Volume::open(&cipherdir, &read_secret(&secret, false)?, true)?;
            let census = vol.census()?;
            let kr = vol.keyring().read();
            let versions: Vec<serde_json::Value> = kr
                .versions()
                .iter()
                .map(|v| serde_json::json!({"version": v.version, "state": format!("{:?}", v.state).to_lowercase(), "created": v.created, "primary": v.version == kr.primary(), "files": census.files.get(&v.version).copied().unwrap_or(0), "dirs": census.dirs.get(&v.version).copied().unwrap_or(0)}))
                .collect();
            let cfg = vol.config();
            let out = serde_json::json!({"volume_id": cfg.volume_id, "format_version": cfg.format_version, "features": cfg.features, "rotation_period": cfg.rotation_period, "disabled": kr.disabled(), "primary": kr.primary(), "versions": versions, "unreadable": census.unreadable});
            if json {
                println!("{out}");
            } else {
                println!(
                    "volume {} (format {}), primary key version {}{}",
                    cfg.volume_id,
                    cfg.format_version,
                    kr.primary(),
                    if kr.disabled() { ", DISABLED" } else { "" }
                );
                for v in versions {
                    println!(
                        "  v{:<4} {:<17} files {:<8} dirs {}",
                        v["version"],
                        v["state"].as_str().unwrap_or(""),
                        v["files"],
                        v["dirs"]
                    );
                }
                if census.unreadable > 0 {
                    println!("  {} headers unreadable", census.unreadable);
                }
            }
            Ok(())
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

fn check_is_volume(cipherdir: &Path) -> Result<(), CliError> {
    if !Volume::looks_like_volume(cipherdir) {
        return Err(CliError::new(
            exit::BAD_VOLUME,
            format!(
                "{} is not a sealfs volume (no sealfs.toml); create one with 'sealfs init'",
                cipherdir.display()
            ),
        ));
    }
    Ok(())
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

fn open_offline(cipherdir: &Path, secret: &SecretArgs) -> Result<Volume, CliError> {
    check_is_volume(cipherdir)?;
    let s = read_secret(secret, false)?;
    Ok(Volume::open(cipherdir, &s, false)?)
}

/// What `sealfs fsck` checks: a cipher directory, or a mounted volume
/// through its control socket.
enum FsckTarget {
    Offline(PathBuf),
    Socket(PathBuf),
}

fn cmd_fsck(
    target: FsckTarget,
    secret: &SecretArgs,
    salvage: bool,
    json: bool,
) -> Result<(), CliError> {
    use sealfs::volume::fsck::{fsck, FsckOptions, FsckProgress};
    let could_not_run = |e: CliError| {
        if json {
            println!(
                "{}",
                serde_json::json!({"error": e.msg, "exit_code": exit::FSCK_FAILED})
            );
        }
        CliError::new(exit::FSCK_FAILED, e.msg)
    };
    let report: serde_json::Value = match target {
        FsckTarget::Socket(socket) => {
            ctl_call(&socket, serde_json::json!({"op": "fsck"})).map_err(could_not_run)?
        }
        FsckTarget::Offline(cipherdir) => {
            check_is_volume(&cipherdir).map_err(could_not_run)?;
            let s = read_secret(secret, false).map_err(could_not_run)?;
            raise_fd_limit(); // one descriptor per directory level of the walk
            let progress = FsckProgress::default();
            let report = with_progress(
                progress_bar_for(BarKind::Checked),
                || fsck(&cipherdir, &s, &FsckOptions { salvage }, &progress),
                |bar| {
                    use std::sync::atomic::Ordering::Relaxed;
                    bar.set_length(progress.total_bytes.load(Relaxed).max(1));
                    bar.set_position(progress.done_bytes.load(Relaxed));
                },
            )
            .map_err(|e| CliError::new(exit::FSCK_FAILED, e.msg))?
            .map_err(|e| could_not_run(CliError::from(e)))?;
            serde_json::to_value(&report)
                .map_err(|e| CliError::new(exit::FSCK_FAILED, e.to_string()))?
        }
    };
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{report}");
    } else {
        for p in &problems {
            let backing = p["backing"].as_str().unwrap_or("?");
            let place = match p["path"].as_str() {
                Some(path) => format!("{path} [{backing}]"),
                None => format!("[{backing}]"),
            };
            println!(
                "{}: {place}: {}",
                p["kind"].as_str().unwrap_or("?"),
                p["message"].as_str().unwrap_or("")
            );
            let action = p["action"].as_str();
            match (p["repair"].as_str(), action) {
                (Some("repaired"), Some(a)) => println!("  repaired: {a}"),
                (Some("unrepairable"), Some(a)) => println!("  not repairable: {a}"),
                (Some("failed"), Some(a)) => println!("  {a}"),
                _ => {}
            }
        }
        let st = &report["stats"];
        let repaired = problems
            .iter()
            .filter(|p| p["repair"] == "repaired")
            .count();
        println!(
            "checked {} directories, {} files ({} chunks, {} bytes), {} symlinks, {} other: {} problem(s){}",
            st["directories"],
            st["files"],
            st["chunks"],
            st["bytes"],
            st["symlinks"],
            st["other"],
            problems.len(),
            if salvage {
                format!(", {repaired} repaired")
            } else if problems.is_empty() {
                String::new()
            } else {
                " (run with --salvage to repair)".into()
            }
        );
    }
    if problems.is_empty() {
        Ok(())
    } else if problems.iter().all(|p| p["repair"] == "repaired") {
        Err(CliError::new(
            exit::FSCK_REPAIRED,
            "problems found; all repaired",
        ))
    } else {
        Err(CliError::new(
            exit::FSCK_PROBLEMS,
            "problems found and left unrepaired",
        ))
    }
}

impl From<sealfs::VaultError> for CliError {
    fn from(e: sealfs::VaultError) -> Self {
        match e {
            sealfs::VaultError::Volume(v) => v.into(),
            other => CliError::new(exit::ERROR, other.to_string()),
        }
    }
}

impl From<sealfs::transfer::TransferError> for CliError {
    fn from(e: sealfs::transfer::TransferError) -> Self {
        match e {
            sealfs::transfer::TransferError::Vault(v) => v.into(),
            other => CliError::new(exit::ERROR, other.to_string()),
        }
    }
}

/// What a progress bar counts.
enum BarKind {
    /// Files and bytes of an import or export.
    Transfer,
    /// Headers visited by a rewrap.
    Headers,
    /// Ciphertext bytes checked by fsck.
    Checked,
}

/// The progress bar of long commands: drawn on stderr when it is a
/// terminal, hidden otherwise (scripts, logs, pipes).
fn progress_bar_for(kind: BarKind) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let template = match kind {
        // wide_bar takes what the terminal's width leaves, so a line never
        // wraps (a wrapped line leaves a trail of old frames behind).
        BarKind::Transfer => {
            "{msg} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})"
        }
        BarKind::Headers => "[{wide_bar}] {pos}/{len} headers ({per_sec}, eta {eta})",
        BarKind::Checked => {
            "[{wide_bar}] {bytes}/{total_bytes} checked ({bytes_per_sec}, eta {eta})"
        }
    };
    let b = indicatif::ProgressBar::new(1);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        b.set_style(style.progress_chars("=> "));
    }
    b
}

/// Runs `job` on a thread of its own while `tick` updates `bar` every
/// 100 ms; clears the bar when the job is done.
fn with_progress<T: Send>(
    bar: indicatif::ProgressBar,
    job: impl FnOnce() -> T + Send,
    tick: impl Fn(&indicatif::ProgressBar),
) -> Result<T, CliError> {
    std::thread::scope(|s| {
        let h = s.spawn(job);
        while !h.is_finished() {
            tick(&bar);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        tick(&bar);
        bar.finish_and_clear();
        h.join()
            .map_err(|_| CliError::new(exit::ERROR, "worker thread panicked"))
    })
}

fn transfer_tick(p: &sealfs::transfer::Progress) -> impl Fn(&indicatif::ProgressBar) + '_ {
    use std::sync::atomic::Ordering::Relaxed;
    move |bar| {
        // Every setter may redraw. The byte counts go first: a frame drawn
        // between setters then pairs new bytes with the message of the
        // last tick (100 ms old), not a new file count with stale bytes.
        let (fd, ft) = (p.files_done.load(Relaxed), p.files_total.load(Relaxed));
        bar.set_length(p.bytes_total.load(Relaxed).max(1));
        bar.set_position(p.bytes_done.load(Relaxed));
        if p.scanned.load(Relaxed) {
            bar.set_message(format!("files {fd}/{ft}"));
        } else {
            bar.set_message(format!("scanning: {ft} files"));
        }
    }
}

fn transfer_options(a: &TransferArgs) -> sealfs::transfer::Options {
    let mut o = sealfs::transfer::Options::default();
    if let Some(n) = a.threads {
        o.threads = n as usize;
    }
    o
}

/// Prints a transfer's report (problems on stderr, the summary on stdout,
/// or the JSON object) and picks the exit code.
fn finish_transfer(
    verb: &str,
    report: &sealfs::transfer::Report,
    json: bool,
    extra: serde_json::Value,
) -> Result<(), CliError> {
    if json {
        let mut v =
            serde_json::to_value(report).map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
        if let (Some(o), serde_json::Value::Object(x)) = (v.as_object_mut(), extra) {
            o.extend(x);
        }
        println!("{v}");
    } else {
        for p in &report.problems {
            eprintln!("sealfs: not {verb}: {}: {}", p.path.display(), p.message);
        }
        if report.hard_linked > 0 {
            eprintln!(
                "sealfs: note: {} file(s) had more than one hard link; sealfs has no hard links, so each name got its own copy",
                report.hard_linked
            );
        }
        println!(
            "{verb} {} files ({} bytes), {} symlinks, {} new directories; {} files and {} symlinks already up to date; {} not {verb}{} in {}",
            report.files_copied,
            report.bytes_copied,
            report.symlinks,
            report.directories_created,
            report.files_unchanged,
            report.symlinks_unchanged,
            report.problems.len(),
            if report.leftovers_removed > 0 {
                format!("; {} temp files of an interrupted run removed", report.leftovers_removed)
            } else {
                String::new()
            },
            sealfs::transfer::human_duration(std::time::Duration::from_secs_f64(report.seconds)),
        );
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(
            exit::PARTIAL,
            format!(
                "{} entries were not {verb} (listed above)",
                report.problems.len()
            ),
        ))
    }
}

fn cmd_import(
    plaindir: &Path,
    cipherdir: &Path,
    secret: &SecretArgs,
    params: Argon2Params,
    a: &TransferArgs,
) -> Result<(), CliError> {
    if !plaindir.is_dir() {
        return Err(CliError::new(
            exit::ERROR,
            format!("PLAINDIR {} is not a directory", plaindir.display()),
        ));
    }
    let exists = cipherdir.exists();
    let empty = exists
        && std::fs::read_dir(cipherdir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    let created = if Volume::looks_like_volume(cipherdir) {
        false
    } else if !exists || empty {
        true
    } else {
        return Err(CliError::new(
            exit::BAD_VOLUME,
            format!(
                "{} is not a sealfs volume (no sealfs.toml) and not empty; give a new or empty directory to create one",
                cipherdir.display()
            ),
        ));
    };
    let s = read_secret(secret, created)?;
    if created {
        Volume::create(cipherdir, &s, params)?;
        if !a.json {
            eprintln!("sealfs: created volume in {}", cipherdir.display());
        }
    }
    let vault = sealfs::Vault::open(cipherdir, &s)?;
    drop(s);
    let progress = sealfs::transfer::Progress::default();
    let opts = transfer_options(a);
    let report = with_progress(
        progress_bar_for(BarKind::Transfer),
        || sealfs::transfer::import(plaindir, &vault, &opts, &progress),
        transfer_tick(&progress),
    )??;
    finish_transfer(
        "imported",
        &report,
        a.json,
        serde_json::json!({"created_volume": created}),
    )
}

fn cmd_export(
    cipherdir: &Path,
    plaindir: &Path,
    secret: &SecretArgs,
    a: &TransferArgs,
) -> Result<(), CliError> {
    check_is_volume(cipherdir)?;
    let s = read_secret(secret, false)?;
    let vault = sealfs::Vault::open_read_only(cipherdir, &s)?;
    drop(s);
    let progress = sealfs::transfer::Progress::default();
    let opts = transfer_options(a);
    let report = with_progress(
        progress_bar_for(BarKind::Transfer),
        || sealfs::transfer::export(&vault, plaindir, &opts, &progress),
        transfer_tick(&progress),
    )??;
    finish_transfer("exported", &report, a.json, serde_json::json!({}))
}

fn ctl_call(socket: &Path, op: serde_json::Value) -> Result<serde_json::Value, CliError> {
    match ctl::client::call(socket, op) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CliError::new(
            exit::ERROR,
            format!("{} ({})", e.message, e.code),
        )),
        Err(e) => Err(CliError::new(
            exit::ERROR,
            format!(
                "cannot reach the control socket {}: {e} (is the volume mounted?)",
                socket.display()
            ),
        )),
    }
}

fn fmt_time(secs: u64) -> String {
    format!("{secs} (unix time)")
}

fn cmd_ctl(a: &CtlArgs) -> Result<(), CliError> {
    use serde_json::json;
    let socket = match (&a.socket, &a.mount) {
        (Some(s), _) => s.clone(),
        (None, Some(m)) => ctl::default_socket_path(
            &m.canonicalize()
                .map_err(|e| CliError::new(exit::MOUNTPOINT, format!("{}: {e}", m.display())))?,
        ),
        (None, None) => {
            return Err(CliError::new(
                exit::ERROR,
                "give --mount MOUNTPOINT or --socket PATH",
            ))
        }
    };
    let print = |v: &serde_json::Value, human: &dyn Fn(&serde_json::Value)| {
        if a.json {
            println!("{v}");
        } else {
            human(v);
        }
    };
    match &a.cmd {
        CtlCommand::Status => {
            let v = ctl_call(&socket, json!({"op": "status"}))?;
            print(&v, &|v| {
                println!(
                    "volume {} at {}{}",
                    v["volume_id"].as_str().unwrap_or("?"),
                    v["mountpoint"].as_str().unwrap_or("?"),
                    if v["disabled"] == true {
                        " — KEY DISABLED"
                    } else {
                        ""
                    }
                );
                println!("primary key version {}", v["primary"]);
                for k in v["versions"].as_array().into_iter().flatten() {
                    let counts = if k.get("files").is_some() {
                        format!(" files {} dirs {}", k["files"], k["dirs"])
                    } else {
                        String::new()
                    };
                    println!(
                        "  v{:<4} {:<17} created {}{}",
                        k["version"],
                        k["state"].as_str().unwrap_or(""),
                        fmt_time(k["created"].as_u64().unwrap_or(0)),
                        counts
                    );
                }
                match v["rotation_period"].as_str() {
                    Some(p) => println!(
                        "rotation every {p}, next due {}",
                        fmt_time(v["next_rotation"].as_u64().unwrap_or(0))
                    ),
                    None => println!("automatic rotation off"),
                }
                let r = &v["rewrap"];
                if r["running"] == true {
                    println!("rewrap running: {}/{}", r["done"], r["total"]);
                }
            });
        }
        CtlCommand::Rotate => {
            let v = ctl_call(&socket, json!({"op": "rotate"}))?;
            print(&v, &|v| {
                println!("key version {} is now primary", v["primary"])
            });
        }
        CtlCommand::Rewrap { background } => {
            let v = ctl_call(&socket, json!({"op": "rewrap"}))?;
            if *background {
                print(&v, &|_| println!("rewrap started"));
                return Ok(());
            }
            let bar = progress_bar_for(BarKind::Headers);
            let last = loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let s = ctl_call(&socket, json!({"op": "status"}))?;
                let r = s["rewrap"].clone();
                bar.set_length(r["total"].as_u64().unwrap_or(0).max(1));
                bar.set_position(r["done"].as_u64().unwrap_or(0));
                if r["running"] != true {
                    break r;
                }
            };
            bar.finish_and_clear();
            print(&last, &|r| {
                println!(
                    "rewrap done: {} visited, {} re-wrapped, {} failed",
                    r["done"], r["rewrapped"], r["failed"]
                )
            });
            if last["failed"].as_u64().unwrap_or(0) > 0 {
                return Err(CliError::new(
                    exit::ERROR,
                    "some headers could not be re-wrapped (see the daemon log)",
                ));
            }
        }
        CtlCommand::Metrics => {
            let v = ctl_call(&socket, json!({"op": "metrics"}))?;
            print(&v, &|v| print!("{}", v["text"].as_str().unwrap_or("")));
        }
        CtlCommand::Census => {
            let v = ctl_call(&socket, json!({"op": "census"}))?;
            print(&v, &|v| {
                println!(
                    "files per version {}, dirs per version {}, unreadable {}",
                    v["files"], v["dirs"], v["unreadable"]
                )
            });
        }
        CtlCommand::Disable => {
            let v = ctl_call(&socket, json!({"op": "disable"}))?;
            print(&v, &|_| {
                println!("key disabled: file I/O now fails with EACCES")
            });
        }
        CtlCommand::Enable => {
            let v = ctl_call(&socket, json!({"op": "enable"}))?;
            print(&v, &|_| println!("key enabled"));
        }
        CtlCommand::RotationPeriod { period } => {
            let p = if period == "off" {
                serde_json::Value::Null
            } else {
                json!(period)
            };
            let v = ctl_call(&socket, json!({"op": "set_rotation_period", "period": p}))?;
            print(&v, &|v| match v["rotation_period"].as_str() {
                Some(p) => println!(
                    "rotation every {p}, next due {}",
                    fmt_time(v["next_rotation"].as_u64().unwrap_or(0))
                ),
                None => println!("automatic rotation off"),
            });
        }
        CtlCommand::Trim { min_version, force } => {
            let v = ctl_call(
                &socket,
                json!({"op": "trim", "min_version": min_version, "force": force}),
            )?;
            print(&v, &|v| {
                println!("retired versions {}", v["retired"]);
                let left = v["headers_left_unreadable"].as_u64().unwrap_or(0);
                if left > 0 {
                    println!("{left} headers stay unreadable until `untrim`");
                }
            });
        }
        CtlCommand::Untrim { version } => {
            let v = ctl_call(&socket, json!({"op": "untrim", "version": version}))?;
            print(&v, &|_| println!("version {version} enabled again"));
        }
        CtlCommand::ScheduleDeletion { version, wait, yes } => {
            let dry = ctl_call(
                &socket,
                json!({"op": "schedule_deletion", "version": version, "wait": wait, "confirm": false}),
            )?;
            let orphans = dry["would_orphan"].as_u64().unwrap_or(0);
            if !yes {
                if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    return Err(CliError::new(exit::ERROR, format!("destroying version {version} would make {orphans} headers unreadable; pass --yes to confirm")));
                }
                eprint!("Destroying key version {version} after {wait} makes {orphans} files/dirs unreadable for good. Type 'destroy' to confirm: ");
                let mut answer = String::new();
                std::io::stdin()
                    .read_line(&mut answer)
                    .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;
                if answer.trim() != "destroy" {
                    return Err(CliError::new(exit::ERROR, "not confirmed; nothing changed"));
                }
            }
            let v = ctl_call(
                &socket,
                json!({"op": "schedule_deletion", "version": version, "wait": wait, "confirm": true}),
            )?;
            print(&v, &|v| {
                println!(
                    "version {version} will be destroyed at {} ({} headers still use it)",
                    fmt_time(v["deletion_due"].as_u64().unwrap_or(0)),
                    v["would_orphan"]
                )
            });
        }
        CtlCommand::Grant(g) => return cmd_policy::cmd_grant(&socket, a.json, g),
        CtlCommand::Audit(c) => return cmd_policy::cmd_audit_ctl(&socket, a.json, c),
        CtlCommand::CancelDeletion { version } => {
            let v = ctl_call(
                &socket,
                json!({"op": "cancel_deletion", "version": version}),
            )?;
            print(&v, &|_| {
                println!("deletion of version {version} cancelled; it stays retired")
            });
        }
    }
    Ok(())
}

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
