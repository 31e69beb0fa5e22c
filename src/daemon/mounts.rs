//! The kernel's mount table as the daemon and `sealfs mount`/`unmount`
//! read it: which mount is on top at a path, its source and type, and
//! what is open under it.
//!
//! Owns: parsing /proc/self/mounts and the /proc/PID/fd scan.
//! Must never: change a mount (callers decide).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// One line of /proc/self/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The source (`sealfs:/cipher/dir` for ours).
    pub source: OsString,
    /// The mount point.
    pub target: PathBuf,
    /// The type (`fuse.sealfs` for ours).
    pub fstype: String,
    /// The options, as the kernel lists them.
    pub options: String,
}

impl MountEntry {
    /// Whether this is a sealfs mount (by its type, or by the source name
    /// older mounts without a subtype carry).
    pub fn is_sealfs(&self) -> bool {
        self.fstype == "fuse.sealfs"
            || (self.fstype.starts_with("fuse") && self.source.as_bytes().starts_with(b"sealfs:"))
    }

    /// The cipher dir of a sealfs mount.
    pub fn cipherdir(&self) -> Option<PathBuf> {
        let dir = self.source.as_bytes().strip_prefix(b"sealfs:")?;
        Some(OsString::from_vec(dir.to_vec()).into())
    }
}

/// `\ooo` escapes of a /proc/mounts field, undone.
fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        let oct = f
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (f[i], oct) {
            (b'\\', Some(d)) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Every mount, in the kernel's order (later entries are on top).
pub fn all() -> Vec<MountEntry> {
    let Ok(text) = std::fs::read("/proc/self/mounts") else {
        return Vec::new();
    };
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            if f.len() < 4 {
                return None;
            }
            Some(MountEntry {
                source: OsString::from_vec(unescape(f[0])),
                target: OsString::from_vec(unescape(f[1])).into(),
                fstype: String::from_utf8_lossy(&unescape(f[2])).into_owned(),
                options: String::from_utf8_lossy(&unescape(f[3])).into_owned(),
            })
        })
        .collect()
}

/// The mount on top at `mp` (compared as given: pass a canonical path).
pub fn top_at(mp: &Path) -> Option<MountEntry> {
    all().into_iter().rev().find(|m| m.target == mp)
}

/// A process with files open (or its working directory) under a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub command: String,
    /// How many of its descriptors (and cwd/root) lie under the mount.
    pub open: usize,
}

/// The processes (other than this one) whose descriptors, working
/// directory or root lie under `mp` (canonical), from /proc. Paths of
/// a lazily detached mount are no longer under `mp`: call it before
/// detaching.
pub fn holders(mp: &Path) -> Vec<Holder> {
    let me = std::process::id();
    let under = |p: &Path| p.starts_with(mp);
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for ent in rd.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = ent.path();
        let mut open = 0;
        for link in ["cwd", "root"] {
            if std::fs::read_link(dir.join(link)).is_ok_and(|p| under(&p) && p != Path::new("/")) {
                open += 1;
            }
        }
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            open += fds
                .flatten()
                .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| under(&p)))
                .count();
        }
        if open > 0 {
            let command = std::fs::read_to_string(dir.join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            out.push(Holder { pid, command, open });
        }
    }
    out
}

/// Ends a mount: fuser's own handle for a mount fuser made, or an
/// unmount of the path for one the daemon made itself
/// ([`crate::fs::mount_directly`]), only while that path still shows this
/// volume's mount on top (never a newer mount in its place).
pub(crate) enum Unmounter {
    Fuser(fuser::SessionUnmounter),
    Direct {
        mp: PathBuf,
        source: OsString,
        done: bool,
    },
}

impl Unmounter {
    /// Unmounts (not lazily: a busy mount is an error, EBUSY).
    pub(crate) fn unmount(&mut self) -> std::io::Result<()> {
        match self {
            Unmounter::Fuser(u) => u.unmount(),
            Unmounter::Direct { mp, source, done } => {
                if *done || top_at(mp).is_none_or(|m| m.source != *source) {
                    *done = true;
                    return Ok(());
                }
                let c = std::ffi::CString::new(mp.as_os_str().as_bytes())
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
                // SAFETY: valid C string.
                if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
                    *done = true;
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_fields() {
        assert_eq!(unescape(br"a\040b\134c"), b"a b\\c");
        assert_eq!(unescape(br"x\09"), br"x\09");
    }

    #[test]
    fn sealfs_by_type_or_source() {
        let e = |src: &str, t: &str| MountEntry {
            source: src.into(),
            target: "/m".into(),
            fstype: t.into(),
            options: String::new(),
        };
        assert!(e("sealfs:/c", "fuse.sealfs").is_sealfs());
        assert!(e("sealfs:/c", "fuse").is_sealfs());
        assert!(!e("/c", "fuse.gocryptfs").is_sealfs());
        assert_eq!(e("sealfs:/c", "fuse").cipherdir(), Some("/c".into()));
    }
}
