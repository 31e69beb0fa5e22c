//! The mount(8) helper: the same binary run as `mount.fuse.sealfs` (or
//! `mount.sealfs`), so `mount -t fuse.sealfs CIPHERDIR MNT -o …` and
//! /etc/fstab lines mount a volume. mount(8) runs it as
//!
//! ```text
//! mount.fuse.sealfs SOURCE TARGET [-sfnv] [-N NS] -o OPTIONS [-t TYPE]
//! ```
//!
//! Owns: splitting the fstab options into sealfs's own (`passfile=`,
//! `keyfile=`, `extpass=`, `threads=`, `log_file=`, `ctl_socket=`,
//! `idle=`), the kernel's (passed through with `-o`) and mount(8)'s
//! userspace ones (ignored).
//! Must never: accept an option it does not know (it says which ones it
//! knows), or mount with fewer restrictions than the line asks for.

use std::ffi::OsString;

use crate::error::{exit, CliError};

/// Whether this process was started as the mount helper (by its name).
pub(crate) fn invoked_as_helper(argv0: &std::ffi::OsStr) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name == "mount.fuse.sealfs" || name == "mount.sealfs" || name == "mount.fuse3.sealfs"
}

/// mount(8)'s own options (and systemd's), not for the filesystem.
fn userspace_only(o: &str) -> bool {
    matches!(
        o,
        "" | "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "nofail"
            | "_netdev"
    ) || o.starts_with("x-")
        || o.starts_with("comment=")
}

/// The `sealfs mount …` arguments for a helper command line, or `None`
/// for `-f` (fake: print and do nothing).
pub(crate) fn mount_args(args: &[OsString]) -> Result<(Vec<OsString>, bool), CliError> {
    let usage = |m: String| CliError::new(exit::ERROR, format!("mount.fuse.sealfs: {m}"));
    let mut pos = Vec::new();
    let mut opts = String::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => {
                let v = it
                    .next()
                    .ok_or_else(|| usage("-o needs an argument".into()))?;
                opts.push(',');
                opts.push_str(&v.to_string_lossy());
            }
            "-t" => {
                it.next();
            }
            "-f" => fake = true,
            "-s" | "-n" | "-v" => {}
            "-N" => return Err(usage("-N (mount namespace) is not supported".into())),
            s if s.starts_with("-o") => {
                opts.push(',');
                opts.push_str(&s[2..]);
            }
            s if s.starts_with("-t") => {}
            s if s.starts_with('-') => return Err(usage(format!("unexpected argument '{s}'"))),
            _ => pos.push(a.clone()),
        }
    }
    let [source, target] = <[OsString; 2]>::try_from(pos)
        .map_err(|_| usage("usage: mount.fuse.sealfs CIPHERDIR MOUNTPOINT [-o OPTIONS]".into()))?;
    let mut out: Vec<OsString> = vec!["sealfs".into(), "mount".into(), source, target];
    let mut kernel = Vec::new();
    for o in opts.split(',') {
        let (k, v) = o.split_once('=').unwrap_or((o, ""));
        let flag = match k {
            "passfile" => Some("--passfile"),
            "keyfile" | "key_file" => Some("--key-file"),
            "extpass" => Some("--extpass"),
            "threads" => Some("--threads"),
            "log_file" => Some("--log-file"),
            "ctl_socket" => Some("--ctl-socket"),
            "idle" => Some("--idle"),
            _ => None,
        };
        if let Some(f) = flag {
            if v.is_empty() {
                return Err(usage(format!("option '{k}=' needs a value")));
            }
            out.push(f.into());
            out.push(v.into());
        } else if userspace_only(o) {
        } else if o == "allow_other"
            || o == "default_permissions"
            || o == "suid"
            || o == "dev"
            || sealfs::fs::GENERIC_OPTIONS.iter().any(|(n, _)| *n == o)
        {
            // `sealfs mount -o` refuses suid and dev with its reason.
            kernel.push(o.to_string());
        } else {
            return Err(usage(format!(
                "unknown option '{o}' (sealfs takes passfile=, keyfile=, extpass=, threads=, \
                 log_file=, ctl_socket=, idle=; mount options: {})",
                crate::mount::known_options()
            )));
        }
    }
    if !kernel.is_empty() {
        out.push("-o".into());
        out.push(kernel.join(",").into());
    }
    Ok((out, fake))
}
