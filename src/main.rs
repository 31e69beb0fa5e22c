//! The `sealfs` command line. Parses arguments, gathers the unlock secret,
//! and calls the library; holds no filesystem or crypto logic of its own.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

use sealfs::crypto::{Argon2Params, SecretKey};
use sealfs::format::keyring::KeyringFormatError;
use sealfs::fs::{fuser_config, MountOptions, SealFs};
use sealfs::keyring::{KeyringError, UnlockSecret};
use sealfs::volume::{Volume, VolumeError};

/// Exit codes (stable; documented in the README).
mod exit {
    pub const ERROR: u8 = 1;
    pub const MOUNTPOINT: u8 = 10;
    pub const WRONG_SECRET: u8 = 12;
    pub const BAD_VOLUME: u8 = 23;
}

#[derive(Parser)]
#[command(
    name = "sealfs",
    version,
    about = "An encrypted folder with built-in key management (FUSE)"
)]
#[command(
    after_help = "Examples:\n  sealfs init ~/vault.enc --passfile ~/.vault-pass\n  sealfs mount ~/vault.enc ~/vault --passfile ~/.vault-pass\n  sealfs unmount ~/vault"
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
    },
    /// Unlock CIPHERDIR and mount its plaintext view on MOUNTPOINT.
    Mount {
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
        /// Request-serving threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Write the daemon's log here (default: discarded once daemonized).
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
    },
    /// Unmount a sealfs mount.
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
    },
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

fn first_line(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let mut line = bytes[..end].to_vec();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Zeroizing::new(line)
}

fn read_secret(a: &SecretArgs, confirm: bool) -> Result<UnlockSecret, CliError> {
    if let Some(kf) = &a.key_file {
        let bytes = Zeroizing::new(std::fs::read(kf).map_err(|e| {
            CliError::new(
                exit::ERROR,
                format!("cannot read key file {}: {e}", kf.display()),
            )
        })?);
        if bytes.len() != 32 {
            return Err(CliError::new(
                exit::ERROR,
                format!(
                    "key file {} must hold exactly 32 bytes (has {})",
                    kf.display(),
                    bytes.len()
                ),
            ));
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        let key = SecretKey::from_bytes(k);
        zeroize::Zeroize::zeroize(&mut k);
        return Ok(UnlockSecret::KeyFile(key));
    }
    let pw = if let Some(pf) = &a.passfile {
        let bytes = Zeroizing::new(std::fs::read(pf).map_err(|e| {
            CliError::new(
                exit::ERROR,
                format!("cannot read passfile {}: {e}", pf.display()),
            )
        })?);
        first_line(&bytes)
    } else if let Some(cmd) = &a.extpass {
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
        first_line(&stdout)
    } else {
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
        Zeroizing::new(p1.as_bytes().to_vec())
    };
    if pw.is_empty() {
        return Err(CliError::new(exit::ERROR, "empty passphrase"));
    }
    Ok(UnlockSecret::Passphrase(pw))
}

fn init_logging(to_file: Option<&Path>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=error"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
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

/// Starts the thread that waits for SIGINT/SIGTERM/SIGHUP and unmounts.
fn unmount_on_signal(mut unmounter: fuser::SessionUnmounter) {
    std::thread::spawn(move || {
        let set = termination_signals();
        let mut sig = 0;
        // SAFETY: valid pointers; the signals are blocked in every thread.
        unsafe { libc::sigwait(&set, &mut sig) };
        tracing::info!("signal {sig}: unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::warn!("unmount failed: {e}");
        }
    });
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

#[allow(clippy::too_many_arguments)]
fn cmd_mount(
    cipherdir: &Path,
    mountpoint: &Path,
    secret: &SecretArgs,
    foreground: bool,
    options: Option<&str>,
    read_only: bool,
    threads: usize,
    log_file: Option<&Path>,
) -> Result<(), CliError> {
    let mut opts = MountOptions {
        allow_other: false,
        read_only,
        threads,
    };
    for o in options.unwrap_or("").split(',').filter(|s| !s.is_empty()) {
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
    let s = read_secret(secret, false)?;
    let vol = Arc::new(Volume::open(cipherdir, &s, opts.read_only)?);
    drop(s);
    raise_fd_limit();
    let cipherdir = cipherdir
        .canonicalize()
        .map_err(|e| CliError::new(exit::ERROR, e.to_string()))?;

    let mut ready_pipe: Option<std::fs::File> = None;
    if !foreground {
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
    init_logging(log_file);
    let fail = |pipe: &mut Option<std::fs::File>, msg: String| -> CliError {
        if let Some(p) = pipe.as_mut() {
            let _ = writeln!(p, "ERR {msg}");
        }
        CliError::new(exit::ERROR, msg)
    };
    let fs = match SealFs::new(vol) {
        Ok(f) => f,
        Err(e) => {
            return Err(fail(
                &mut ready_pipe,
                format!("cannot open the volume's root: {e}"),
            ))
        }
    };
    let config = fuser_config(&cipherdir, &opts);
    block_termination_signals();
    let mut session = match fuser::Session::new(fs, mountpoint, &config) {
        Ok(s) => s,
        Err(e) => return Err(fail(&mut ready_pipe, format!("mount failed: {e}"))),
    };
    unmount_on_signal(session.unmount_callable());
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
            "sealfs: mounted {} on {}",
            cipherdir.display(),
            mountpoint.display()
        );
    }
    session
        .run()
        .map_err(|e| CliError::new(exit::ERROR, format!("session ended with error: {e}")))
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
            eprintln!("sealfs: created volume in {}", cipherdir.display());
            Ok(())
        }
        Command::Mount {
            cipherdir,
            mountpoint,
            secret,
            foreground,
            options,
            read_only,
            threads,
            log_file,
        } => {
            if foreground {
                init_logging(log_file.as_deref());
            }
            cmd_mount(
                &cipherdir,
                &mountpoint,
                &secret,
                foreground,
                options.as_deref(),
                read_only,
                threads,
                log_file.as_deref(),
            )
        }
        Command::Unmount { mountpoint } => cmd_unmount(&mountpoint),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sealfs: {}", e.msg);
            ExitCode::from(e.code)
        }
    }
}
