//! The command line: every command, argument and help text (clap). What
//! each command does is in the module named after it.
//!
//! Owns: the argument vocabulary, defaults, conflicts and help texts (the
//! man pages in contrib/man are generated from it).
//! Must never: act on arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use sealfs::crypto::Argon2Params;

#[derive(Parser)]
#[command(
    name = "sealfs",
    version,
    about = "An encrypted folder with built-in key management (FUSE)"
)]
#[command(
    after_help = "Examples:\n  sealfs init ~/vault.enc --passfile ~/.vault-pass\n  sealfs mount ~/vault.enc ~/vault --passfile ~/.vault-pass\n  sealfs unmount ~/vault\n\nExit codes: 0 success, 1 other error, 2 usage, 3 import/export finished but\nsome entries were not transferred, 10 mount point problem,\n12 wrong passphrase, key file or recovery key, 23 CIPHERDIR is not a usable volume,\n30 PKCS#11 module missing, 31 wrong PIN (or PIN locked), 32 key missing (on the\ntoken or in the KMS), 33 PKCS#11 token absent or removed, 34 KMS unreachable,\n35 KMS permission denied (token revoked), 36 KMS key disabled, 40 rollback detected\n(sealfs fsck uses fsck(8)'s codes: see 'sealfs fsck --help').\n\n'sealfs COMMAND --help' shows each command's options and examples."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Command,
}

/// How to unlock a volume: any of these that opens a keyslot. Without
/// one, the slots that open unattended are tried (a PKCS#11 slot whose URI
/// has a pin-source, a Transit slot with BAO_TOKEN/VAULT_TOKEN set), then a
/// passphrase is asked on the terminal.
#[derive(Args, Clone, Default)]
pub(crate) struct SecretArgs {
    /// Read the passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "extpass")]
    pub(crate) passfile: Option<PathBuf>,
    /// Run CMD (with sh -c) and read the passphrase from its first output line.
    #[arg(long, value_name = "CMD")]
    pub(crate) extpass: Option<String>,
    /// Unlock with a 32-byte key file.
    #[arg(long, value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Unlock with the recovery key printed at init: from FILE, or typed on
    /// stdin with '-'.
    #[arg(long, value_name = "FILE|-")]
    pub(crate) recovery_key: Option<String>,
    #[command(flatten)]
    pub(crate) pkcs11: Pkcs11Args,
    #[command(flatten)]
    pub(crate) transit: TransitArgs,
    /// Open the volume even though its keyring is older than what the audit
    /// log or the KMS recorded (a restored backup); the acceptance is recorded
    /// in the audit log.
    #[arg(long)]
    pub(crate) accept_rollback: bool,
    /// The directory holding the keyring of a volume made with
    /// `init --keyring-dir` (gocryptfs's -config).
    #[arg(long, value_name = "DIR")]
    pub(crate) keyring_dir: Option<PathBuf>,
}

impl SecretArgs {
    /// Whether any unlock option was given.
    pub(crate) fn any(&self) -> bool {
        self.passfile.is_some()
            || self.extpass.is_some()
            || self.key_file.is_some()
            || self.recovery_key.is_some()
            || self.pkcs11.pkcs11.is_some()
            || self.transit.given()
    }
}

/// A key on a PKCS#11 token.
#[derive(Args, Clone, Default)]
pub(crate) struct Pkcs11Args {
    /// Use a key on a PKCS#11 token, named by an RFC 7512 URI, e.g.
    /// 'pkcs11:token=vault;object=sealfs?module-path=/usr/lib/softhsm/libsofthsm2.so'.
    #[arg(long, value_name = "URI")]
    pub(crate) pkcs11: Option<String>,
    /// Read the token's PIN from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "pin_env")]
    pub(crate) pin_file: Option<PathBuf>,
    /// Read the token's PIN from the environment variable VAR.
    #[arg(long, value_name = "VAR")]
    pub(crate) pin_env: Option<String>,
}

/// A key in OpenBao/Vault Transit.
#[derive(Args, Clone, Default)]
pub(crate) struct TransitArgs {
    /// The OpenBao/Vault server (default: the slot's, or BAO_ADDR/VAULT_ADDR).
    #[arg(long, value_name = "URL")]
    pub(crate) transit_addr: Option<String>,
    /// The Transit key's name (a derived aes256-gcm96 key).
    #[arg(long, value_name = "NAME")]
    pub(crate) transit_key: Option<String>,
    /// The Transit mount (default transit).
    #[arg(long, value_name = "PATH")]
    pub(crate) transit_mount: Option<String>,
    /// Read the OpenBao token from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "transit_token_env")]
    pub(crate) transit_token_file: Option<PathBuf>,
    /// Read the OpenBao token from the environment variable VAR (default BAO_TOKEN or VAULT_TOKEN).
    #[arg(long, value_name = "VAR")]
    pub(crate) transit_token_env: Option<String>,
    /// Log in with AppRole: the role_id from the first line of FILE.
    #[arg(long, value_name = "FILE", requires = "transit_approle_secret_id_file")]
    pub(crate) transit_approle_role_id_file: Option<PathBuf>,
    /// Log in with AppRole: the secret_id from the first line of FILE.
    #[arg(long, value_name = "FILE", requires = "transit_approle_role_id_file")]
    pub(crate) transit_approle_secret_id_file: Option<PathBuf>,
    /// The AppRole auth mount (default approle).
    #[arg(long, value_name = "PATH")]
    pub(crate) transit_approle_mount: Option<String>,
    /// A PEM CA certificate for https (default BAO_CACERT/VAULT_CACERT).
    #[arg(long, value_name = "FILE")]
    pub(crate) transit_ca: Option<PathBuf>,
    /// KV v2 path of the generation anchor, for a new slot (default
    /// sealfs/VOLUME-ID/anchor in the 'secret' mount).
    #[arg(long, value_name = "PATH")]
    pub(crate) transit_kv_path: Option<String>,
}

impl TransitArgs {
    /// Whether a Transit option was given.
    pub(crate) fn given(&self) -> bool {
        self.transit_addr.is_some()
            || self.transit_key.is_some()
            || self.transit_token_file.is_some()
            || self.transit_token_env.is_some()
            || self.transit_approle_role_id_file.is_some()
    }
}

/// The roots of trust of a new volume: one keyslot each. Without any, a
/// passphrase is asked twice.
#[derive(Args, Clone, Default)]
pub(crate) struct InitSecretArgs {
    /// A passphrase slot: the passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "extpass")]
    pub(crate) passfile: Option<PathBuf>,
    /// A passphrase slot: the first output line of CMD (run with sh -c).
    #[arg(long, value_name = "CMD")]
    pub(crate) extpass: Option<String>,
    /// A key-file slot: a 32-byte key file.
    #[arg(long, value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// A recovery-key slot: a random key printed once, on stdout; store it
    /// offline (on paper, in a safe). It unlocks the volume when every other
    /// slot is lost.
    #[arg(long)]
    pub(crate) recovery_key: bool,
    #[command(flatten)]
    pub(crate) pkcs11: Pkcs11Args,
    #[command(flatten)]
    pub(crate) transit: TransitArgs,
    /// Keep the keyring (both copies) in DIR, an existing directory, not in
    /// CIPHERDIR: the cipher dir alone then cannot be unlocked, or guessed
    /// against (gocryptfs's -config). Every command that unlocks the volume
    /// needs --keyring-dir DIR.
    #[arg(long, value_name = "DIR")]
    pub(crate) keyring_dir: Option<PathBuf>,
}

// Parsed once per run: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create a new volume in an empty CIPHERDIR.
    #[command(
        after_help = "Examples:\n  sealfs init ~/vault.enc                      # asks for a passphrase twice\n  sealfs init ~/vault.enc --passfile ~/.vault-pass --recovery-key\n  head -c 32 /dev/urandom > vault.key && sealfs init ~/vault.enc --key-file vault.key\n  sealfs init ~/vault.enc --pkcs11 'pkcs11:token=vault;object=sealfs?module-path=/usr/lib/softhsm/libsofthsm2.so' --pin-file pin --recovery-key\n  sealfs init ~/vault.enc --transit-addr http://127.0.0.1:8200 --transit-key vault --transit-token-file token --recovery-key\n\nEach option given makes one keyslot; any of them unlocks the volume."
    )]
    Init {
        /// Directory that will hold the encrypted files (created if absent).
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: InitSecretArgs,
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
        after_help = "Examples (unmounted; on a mount use 'sealfs ctl --mount MNT rotate'):\n  sealfs rotate ~/vault.enc --passfile ~/.vault-pass\n  sealfs rotate ~/vault.enc --passfile ~/.vault-pass --key finance"
    )]
    Rotate {
        /// The volume's cipher directory.
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// Print the new primary version as JSON.
        #[arg(long)]
        json: bool,
        /// The key to rotate: an alias or an id (default: the default key),
        /// as `sealfs ctl rotate --key`.
        #[arg(long, value_name = "ALIAS|ID")]
        key: Option<String>,
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
        /// Re-wrap only the entries of this key (an alias or an id), under
        /// its primary version, as `sealfs ctl rewrap --key` (default: every
        /// entry under its own key's primary version).
        #[arg(long, value_name = "ALIAS|ID")]
        key: Option<String>,
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
    Audit(AuditCommand),
    /// Encrypt an existing directory tree into a volume, without mounting.
    #[command(
        after_help = "Examples:\n  sealfs import ~/photos ~/photos.enc                      # creates the volume, asks for a passphrase twice\n  sealfs import ~/photos ~/photos.enc --passfile ~/.vault-pass\n  sealfs import ~/photos ~/photos.enc --passfile P --json | jq .problems\n\nPLAINDIR's content lands in the volume's root. CIPHERDIR is created (as by\n'sealfs init', with the same secret options) when it does not exist or is an\nempty directory; an existing volume must not be mounted. Files are copied by\nseveral threads; modes, access and modification times, symlinks and empty\ndirectories are kept (owners too, as root). Each file is written to a temp\nfile and renamed into place once complete, so an interrupted import can simply\nbe run again: files already there with the same size and mtime are skipped.\nFIFOs, sockets and devices are not copied (reported); hard links are kept\n(copied once, the other names linked) and so are xattrs (user.*, ACLs;\nsecurity.* and trusted.* as root). A progress bar is drawn on a terminal.\n\nExit codes: 0 everything copied, 3 some entries not copied (listed), 1 error,\n12 wrong passphrase or key file, 23 CIPHERDIR is not a sealfs volume."
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
    /// Keyslots: the roots of trust that unlock a volume (list, add, remove, rewrap).
    #[command(subcommand)]
    Keyslot(KeyslotCommand),
    /// Upgrade an older volume in place: keyslots (keyring layout 1), and the hard-links and xattrs features.
    #[command(
        after_help = "Example:\n  sealfs upgrade ~/vault.enc --passfile ~/.vault-pass\n\nA volume made before keyslots: the keyring is re-sealed under a new random\nkey-encryption key held by one keyslot for the same passphrase or key file\n('sealfs keyslot add' upgrades that too). A volume made before hard links and\nextended attributes gains the features 'hard-links' and 'xattrs' in\nsealfs.toml. No file's content is touched. Older sealfs versions refuse the\nvolume afterwards."
    )]
    Upgrade {
        /// The volume's cipher directory (not mounted).
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
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
pub(crate) struct TransferArgs {
    /// Files copied in parallel (default: the number of cores, 2 to 8).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) threads: Option<u16>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Args)]
pub(crate) struct MountArgs {
    /// The volume's cipher directory.
    pub(crate) cipherdir: PathBuf,
    /// An empty directory to mount on.
    pub(crate) mountpoint: PathBuf,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
    /// Stay in the foreground (SIGINT/SIGTERM unmount).
    #[arg(short = 'f', long)]
    pub(crate) foreground: bool,
    /// Mount options, comma separated: allow_other and the kernel's generic
    /// ones (ro, noexec, noatime, nodiratime, relatime, sync, dirsync, …;
    /// always nosuid,nodev).
    #[arg(short = 'o', value_name = "OPTS")]
    pub(crate) options: Option<String>,
    /// Mount read-only.
    #[arg(long)]
    pub(crate) read_only: bool,
    /// Request-serving threads (default: twice the cores, 4 to 16, so that
    /// a thread waiting on the disk or in fsync holds up no other request).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) threads: Option<u16>,
    /// Write the daemon's log here (default: stderr with -f, else syslog
    /// or journald through /dev/log).
    #[arg(long, value_name = "FILE")]
    pub(crate) log_file: Option<PathBuf>,
    /// Control socket path (default: /run/sealfs/mnt-HASH.sock for root,
    /// $XDG_RUNTIME_DIR/sealfs/… otherwise).
    #[arg(long, value_name = "PATH")]
    pub(crate) ctl_socket: Option<PathBuf>,
    /// Do not keep an audit log of key uses (the default keeps one in
    /// CIPHERDIR/sealfs.audit; without it grants still work, unrecorded).
    #[arg(long)]
    pub(crate) no_audit: bool,
    /// Append the audit log to this host's own stream
    /// (CIPHERDIR/sealfs.audit/hosts/NAME/: 1 to 32 of A-Z a-z 0-9 . _ -),
    /// as every daemon sharing the cipher dir must; `audit verify` and
    /// `audit export` read all streams. With --shared-storage also the
    /// schedule lease's holder name (default there: the hostname).
    #[arg(long, value_name = "NAME", value_parser = parse_host_id)]
    pub(crate) host_id: Option<sealfs::format::host_id::HostId>,
    /// Unmount once no file or directory is open and no request came for
    /// DURATION (30s, 15m, 2h, 1d). A busy mount point (a shell's working
    /// directory in it) is retried until it can be unmounted.
    #[arg(long, value_name = "DURATION", value_parser = parse_idle)]
    pub(crate) idle: Option<std::time::Duration>,
    /// Open files write-through (so a full disk shows at write(), not only
    /// at close) while CIPHERDIR has less than SIZE free (bytes, or with
    /// K/M/G; default: twice the kernel's dirty limit for the mount).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) enospc_margin: Option<u64>,
    /// Shared-storage mode: other hosts (or daemons) mount the same
    /// CIPHERDIR in this mode at once (NFS, CephFS, …). Changes are made
    /// under byte-range locks on the fresh state, others' changes show
    /// within --shared-refresh, consistency is close-to-open (README
    /// "Shared storage").
    #[arg(long)]
    pub(crate) shared_storage: bool,
    /// How often other hosts' changes are looked for (100ms to 2s, default
    /// 1s): key versions, disable/enable, deletions, grants show within it.
    #[arg(long, value_name = "DURATION", requires = "shared_storage", value_parser = parse_refresh)]
    pub(crate) shared_refresh: Option<std::time::Duration>,
}

/// A refresh period: "500ms", "1s", "2s" (checked against the bounds by
/// the library).
fn parse_refresh(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 500ms or 1s ({e})"))
}

fn parse_host_id(s: &str) -> Result<sealfs::format::host_id::HostId, String> {
    sealfs::format::host_id::HostId::parse(s).map_err(|e| e.to_string())
}

/// A size in bytes, with an optional K, M or G (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size unit in {s:?} (K, M or G)")),
            };
            (&t[..i], mul)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("not a size: {s:?}"))
}

/// A rotation period or none.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Period {
    Off,
    Every(std::time::Duration),
}

fn parse_period(s: &str) -> Result<Period, String> {
    match s {
        "off" => Ok(Period::Off),
        s => crate::duration::parse(s).map(Period::Every),
    }
}

pub(crate) fn parse_idle(s: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse(s)
}

#[derive(Args)]
pub(crate) struct CtlArgs {
    /// The mount point (its default socket is used).
    #[arg(long, value_name = "MOUNTPOINT", required_unless_present = "socket")]
    pub(crate) mount: Option<PathBuf>,
    /// The control socket.
    #[arg(long, value_name = "PATH", conflicts_with = "mount")]
    pub(crate) socket: Option<PathBuf>,
    /// Print the daemon's JSON result instead of a summary.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// The key a key command addresses: an alias or an id (default: the
    /// default key; for disable/enable: the whole volume).
    #[arg(long, global = true, value_name = "ALIAS|ID")]
    pub(crate) key: Option<String>,
    #[command(subcommand)]
    pub(crate) cmd: CtlCommand,
}

#[derive(Subcommand)]
pub(crate) enum CtlCommand {
    /// Volume, key versions, schedule, rewrap progress.
    Status,
    /// Make a new master key version primary.
    Rotate,
    /// Re-wrap every header under the primary version (waits with a progress bar).
    Rewrap {
        /// Start it and return.
        #[arg(long)]
        background: bool,
        /// Move every entry at or below PATH to the key assigned there
        /// (`key assign`) instead.
        #[arg(long, value_name = "PATH")]
        path: Option<String>,
    },
    /// Count headers per key version (full scan).
    Census {
        /// Group the counts by key.
        #[arg(long)]
        by_key: bool,
    },
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
    /// Set automatic rotation ("90d", "2w", …) or "off".
    #[command(
        after_help = "Examples:\n  sealfs ctl --mount ~/vault rotation-period 90d\n  sealfs ctl --mount ~/vault rotation-period off\n\nThe period needs a unit (d, h, min, s, w; '90' alone is refused) and is at least\na day unless --allow-short is given."
    )]
    RotationPeriod {
        /// The period (with a unit: 90d, 2w, 36h) or "off".
        #[arg(value_parser = parse_period)]
        period: Period,
        /// Accept a period shorter than a day (tests, demos).
        #[arg(long)]
        allow_short: bool,
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
    /// Schedule a retired version's destruction (crypto-shredding); with
    /// --key and no VERSION, the whole key's.
    ScheduleDeletion {
        /// The version.
        version: Option<u32>,
        /// Waiting period (with a unit: 7d, 36h).
        #[arg(long, default_value = "7d", value_parser = crate::duration::parse)]
        wait: std::time::Duration,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Cancel a scheduled destruction (with --key and no VERSION: of the
    /// whole key, which stays disabled).
    CancelDeletion {
        /// The version.
        version: Option<u32>,
    },
    /// Named keys: create (or import), list, aliases, subtree assignment.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Grants: delegated, revocable access for other local users.
    #[command(subcommand)]
    Grant(GrantCommand),
    /// The audit log of key uses.
    #[command(subcommand)]
    Audit(AuditCtlCommand),
}

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key; prints its id.
    #[command(
        after_help = "Examples:\n  sealfs ctl --mount ~/vault key create --alias finance --rotation-period 90d\n  sealfs ctl --mount ~/vault key create --alias hr --import hr.key --expires 2027-06-30\n\nAn imported key (--import: exactly 32 bytes of external key material) is recorded\nas origin 'external'; it cannot rotate, and nothing ever prints key material."
    )]
    Create {
        /// Its alias (1-64 characters of A-Z a-z 0-9 _ - /, not all digits).
        #[arg(long)]
        alias: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Automatic rotation period (with a unit: 90d, 2w).
        #[arg(long, value_parser = crate::duration::parse)]
        rotation_period: Option<std::time::Duration>,
        /// Accept a rotation period shorter than a day (tests, demos).
        #[arg(long)]
        allow_short: bool,
        /// Import 32 bytes of key material from FILE (BYOK).
        #[arg(long, value_name = "FILE")]
        import: Option<PathBuf>,
        /// Imported keys: disable the key automatically at this UTC time,
        /// date, or after this duration (12h, 30d).
        #[arg(long, requires = "import", value_name = "DATE|DURATION")]
        expires: Option<String>,
    },
    /// Every key: id, aliases, state, versions, primary, schedule.
    List,
    /// Aliases of a key (--key; default: the default key).
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Make KEY the key of new files and directories at and below PATH.
    #[command(
        after_help = "Example:\n  sealfs ctl --mount ~/vault key assign /finance finance\n  sealfs ctl --mount ~/vault rewrap --path /finance     # move what is there already\n\nThe nearest assigned ancestor wins. Existing entries (and entries moved in\nlater) keep their key until 'rewrap --path'."
    )]
    Assign {
        /// A directory inside the mount (`/finance`).
        path: String,
        /// The key: an alias or an id.
        key: String,
    },
    /// Remove the assignment of PATH.
    Unassign {
        /// A directory inside the mount.
        path: String,
    },
    /// The key policy of --key (who administers and who uses the key).
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Print the policy (normal form: names as ids, times as epoch seconds).
    Get,
    /// Set the policy from FILE or '-' (stdin); 'none' clears it.
    #[command(
        after_help = "Example:\n  sealfs ctl --mount ~/vault --key finance key policy set - <<'EOF'\n  {\"version\": 1, \"statements\": [\n    {\"principals\": [\"uid:1000\"], \"actions\": [\"*\"]},\n    {\"principals\": [\"user:keyadmin\"], \"actions\": [\"admin:rotate\", \"admin:disable\", \"admin:enable\"]},\n    {\"principals\": [\"group:accounting\"], \"actions\": [\"use:read\", \"use:write\"], \"path_prefix\": \"/finance\"}]}\n  EOF\n\nA policy that leaves nobody with admin:policy (without a time condition) is\nrefused. Every change is audited with the SHA-256 of the old and new policy."
    )]
    Set {
        /// The policy document, '-' for stdin, or 'none'.
        file: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum AliasCommand {
    /// Add an alias.
    Add {
        /// The alias.
        alias: String,
    },
    /// Remove an alias (not the last one).
    Remove {
        /// The alias.
        alias: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum GrantCommand {
    /// Give a local user or group access to a path prefix; prints the grant id and token.
    #[command(
        after_help = "Examples:\n  sealfs ctl --mount ~/vault grant create --grantee alice --ops read,list --path-prefix /projects/x\n  sealfs ctl --mount ~/vault grant create --grantee group:staff --ops read --path-prefix /shared\n  sealfs ctl --mount ~/vault grant create --grantee gid:100 --ops all --path-prefix /shared --expires 2026-12-31T00:00Z --name team\n  sealfs ctl --mount ~/vault grant create --grantee uid:1001 --ops read --path-prefix /tmp-share --expires 2h\n\nOperations: read (open for reading, readlink), write (open for writing, truncate,\nchmod, utimes), list (readdir), create (files, dirs, symlinks), delete, rename (both\nends inside the prefix), all. Any grant lets its grantee look up names inside its\nprefix and the directories leading to it. The mount needs -o allow_other for other\nusers to reach it at all."
    )]
    Create {
        /// A user name (alice), group:NAME, uid:N or gid:N.
        #[arg(long)]
        grantee: String,
        /// Comma-separated operations.
        #[arg(long, value_delimiter = ',', required = true)]
        ops: Vec<String>,
        /// Canonical path inside the mount (`/` for everything).
        #[arg(long)]
        path_prefix: String,
        /// Expiry: UTC time (2026-12-31T00:00Z), date, or duration from now (12h, 7d).
        #[arg(long)]
        expires: Option<String>,
        /// A label shown in listings.
        #[arg(long)]
        name: Option<String>,
    },
    /// List live grants.
    List {
        /// Only this grantee (a user name, group:NAME, uid:N, gid:N).
        #[arg(long)]
        grantee: Option<String>,
        /// Only grants whose prefix contains or lies under this path.
        #[arg(long)]
        path_prefix: Option<String>,
    },
    /// End a grant with its token (the grantee may run this on their own).
    #[command(
        after_help = "Examples:\n  sealfs ctl --socket /run/sealfs/mnt-HASH.sock grant retire - < token.txt   # token not in ps or shell history\n  sealfs ctl --mount ~/vault grant retire sgt_9ef1…"
    )]
    Retire {
        /// The grant token printed at creation, or `-` to read it from stdin.
        token: String,
    },
    /// End a grant by id (mount owner).
    Revoke {
        /// The grant id (g-…).
        grant_id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCtlCommand {
    /// Stream audit records as JSON lines (filters combine).
    #[command(
        after_help = "Examples:\n  sealfs ctl --mount ~/vault audit export --since 1h\n  sealfs ctl --mount ~/vault audit export --principal uid:1001 --op decrypt\n  sealfs ctl --mount ~/vault audit export --path-prefix /projects/x --since 2026-11-01 --until 2026-12-01"
    )]
    Export(ExportFilter),
    /// Verify the audit chain of the mounted volume.
    Verify,
    /// Prune whole audit segments: those whose records are all older than
    /// --before, and/or the oldest while the log is larger than --max-size.
    /// A sealed checkpoint keeps what is left verifiable; the prune itself
    /// is recorded.
    #[command(
        after_help = "Examples:\n  sealfs ctl --mount ~/vault audit prune --before 400d\n  sealfs ctl --mount ~/vault audit prune --before 2026-01-01\n  sealfs ctl --mount ~/vault audit prune --max-size 1G\n\nThe segment being written (8 MiB, or since the last rotation) is never pruned,\nnor anything from a break in the chain on: `audit verify` first."
    )]
    Prune {
        /// Prune segments whose records are all older than this (a UTC time,
        /// a date, or a duration ago like 400d).
        #[arg(long, value_name = "WHEN")]
        before: Option<String>,
        /// Prune the oldest segments while the log is larger than SIZE
        /// (bytes, or with K/M/G).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
    },
    /// Set how long the mount keeps audit records (stored in the keyring;
    /// the mount prunes hourly and at every new segment).
    #[command(
        after_help = "Examples:\n  sealfs ctl --mount ~/vault audit retention --max-age 400d\n  sealfs ctl --mount ~/vault audit retention --max-age 90d --max-size 2G\n  sealfs ctl --mount ~/vault audit retention --off"
    )]
    Retention {
        /// Prune records older than this (a duration with a unit: 400d, 52w).
        #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
        max_age: Option<std::time::Duration>,
        /// Keep the log below SIZE (bytes, or with K/M/G; at least 16M).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
        /// Keep every record (no automatic pruning).
        #[arg(long)]
        off: bool,
        /// Accept an age below a day or a size below 16M.
        #[arg(long)]
        allow_short: bool,
    },
}

#[derive(clap::Args)]
pub(crate) struct ExportFilter {
    /// Records at or after this time (UTC time, date, or a duration ago like 1h).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Records before this time.
    #[arg(long)]
    pub(crate) until: Option<String>,
    /// Only this principal: uid:N, gid:N or pid:N.
    #[arg(long)]
    pub(crate) principal: Option<String>,
    /// Only records whose path lies under this prefix.
    #[arg(long)]
    pub(crate) path_prefix: Option<String>,
    /// Only this operation (decrypt, encrypt, generate_data_key, re_encrypt, list,
    /// lookup, rotate, grant_created, …).
    #[arg(long)]
    pub(crate) op: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify the audit log's chain offline (needs the volume's secret).
    #[command(
        after_help = "Examples:\n  sealfs audit verify ~/vault.enc --passfile ~/.vault-pass\n  sealfs audit verify ~/vault.enc --passfile ~/.vault-pass --json\n\nExit codes: 0 the chain verifies, 3 a record is missing, edited or out of order\n(the first bad record is reported), 12 wrong secret, 23 not a volume, 1 other errors.\nAn incomplete last record (a crash while appending) is reported but is not a break."
    )]
    Verify {
        /// The volume's cipher directory (may be mounted).
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export verified audit records as JSON lines, offline.
    #[command(
        after_help = "Example:\n  sealfs audit export ~/vault.enc --passfile ~/.vault-pass --since 2026-11-01 > audit.jsonl\n\nOnly records up to the first break in the chain are exported (exit 3 then)."
    )]
    Export {
        /// The volume's cipher directory (may be mounted).
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        filter: ExportFilter,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum KeyslotCommand {
    /// List the keyslots (reads the keyring's public header: no secret needed).
    #[command(after_help = "Example:\n  sealfs keyslot list ~/vault.enc")]
    List {
        /// The volume's cipher directory (may be mounted).
        cipherdir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The keyring's directory (a volume made with `init --keyring-dir`).
        #[arg(long, value_name = "DIR")]
        keyring_dir: Option<PathBuf>,
    },
    /// Add a keyslot; unlock with an existing one.
    #[command(
        after_help = "Examples:\n  sealfs keyslot add ~/vault.enc --passfile old.txt --new-recovery-key\n  sealfs keyslot add ~/vault.enc --passfile old.txt --new-passfile second.txt --label desk\n  sealfs keyslot add ~/vault.enc --passfile old.txt --new-pkcs11 'pkcs11:token=vault;object=sealfs?module-path=/usr/lib/softhsm/libsofthsm2.so' --new-pin-file pin\n  sealfs keyslot add ~/vault.enc --passfile old.txt --new-transit-addr http://127.0.0.1:8200 --new-transit-key vault --new-transit-token-file token\n\nA volume made before keyslots is upgraded first (see 'sealfs upgrade')."
    )]
    Add {
        /// The volume's cipher directory (not mounted).
        cipherdir: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        new: NewSlotArgs,
        /// A label for the new slot ("laptop", "recovery", …).
        #[arg(long, default_value = "")]
        label: String,
        /// Print the new slot as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a keyslot (never the last one).
    #[command(
        after_help = "Example:\n  sealfs keyslot remove ~/vault.enc 2 --recovery-key key.txt\n\nThe secret of a removed slot no longer opens the keyring. Whoever kept a copy of\nthe old keyring file and knows that secret still gets its key-encryption key\nfrom that copy (see the README, 'Choosing a root of trust')."
    )]
    Remove {
        /// The volume's cipher directory (not mounted).
        cipherdir: PathBuf,
        /// The slot id (see 'sealfs keyslot list').
        slot: u32,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Move a Transit slot to the newest version of its Transit key (Transit rewrap).
    #[command(
        after_help = "Example:\n  bao write -f transit/keys/vault/rotate\n  sealfs keyslot rewrap ~/vault.enc 2 --transit-token-file token\n  bao write transit/keys/vault/config min_decryption_version=2\n\nThe key-encryption key never leaves the server; older Transit key versions can\nthen be retired server-side (min_decryption_version)."
    )]
    Rewrap {
        /// The volume's cipher directory (not mounted).
        cipherdir: PathBuf,
        /// The slot id.
        slot: u32,
        #[command(flatten)]
        secret: SecretArgs,
    },
}

/// The new slot of `keyslot add`: exactly one kind.
#[derive(Args, Clone, Default)]
#[group(required = true, multiple = false, id = "new_slot")]
pub(crate) struct NewSlotKind {
    /// A passphrase slot: the passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) new_passfile: Option<PathBuf>,
    /// A key-file slot: a 32-byte key file.
    #[arg(long, value_name = "FILE")]
    pub(crate) new_key_file: Option<PathBuf>,
    /// A recovery-key slot (the key is printed once, on stdout).
    #[arg(long)]
    pub(crate) new_recovery_key: bool,
    /// A PKCS#11 slot: the token's URI (the key is created if the URI's object= is missing).
    #[arg(long, value_name = "URI")]
    pub(crate) new_pkcs11: Option<String>,
    /// A Transit slot: the Transit key's name.
    #[arg(long, value_name = "NAME")]
    pub(crate) new_transit_key: Option<String>,
}

/// The new slot's options.
#[derive(Args, Clone, Default)]
pub(crate) struct NewSlotArgs {
    #[command(flatten)]
    pub(crate) kind: NewSlotKind,
    /// The new PKCS#11 slot's PIN, from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) new_pin_file: Option<PathBuf>,
    /// The new PKCS#11 slot's PIN, from the environment variable VAR.
    #[arg(long, value_name = "VAR")]
    pub(crate) new_pin_env: Option<String>,
    /// The new Transit slot's server (default BAO_ADDR/VAULT_ADDR).
    #[arg(long, value_name = "URL")]
    pub(crate) new_transit_addr: Option<String>,
    /// The new Transit slot's mount (default transit).
    #[arg(long, value_name = "PATH")]
    pub(crate) new_transit_mount: Option<String>,
    /// The new Transit slot's token, from the first line of FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) new_transit_token_file: Option<PathBuf>,
    /// The new Transit slot's token, from the environment variable VAR.
    #[arg(long, value_name = "VAR")]
    pub(crate) new_transit_token_env: Option<String>,
    /// The new Transit slot's CA certificate for https.
    #[arg(long, value_name = "FILE")]
    pub(crate) new_transit_ca: Option<PathBuf>,
    /// The new Transit slot's KV anchor path.
    #[arg(long, value_name = "PATH")]
    pub(crate) new_transit_kv_path: Option<String>,
    /// Argon2id memory cost in KiB of a new passphrase slot.
    #[arg(long, default_value_t = Argon2Params::DEFAULT.memory_kib)]
    pub(crate) new_kdf_memory_kib: u32,
    /// Argon2id passes of a new passphrase slot.
    #[arg(long, default_value_t = Argon2Params::DEFAULT.iterations)]
    pub(crate) new_kdf_iterations: u32,
}
