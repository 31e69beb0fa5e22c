//! POSIX ACLs in the kernel's xattr form (`system.posix_acl_access` and
//! `system.posix_acl_default`), and the mode arithmetic a filesystem owes
//! the kernel when it stores them itself (FUSE_POSIX_ACL): what an access
//! ACL makes of the mode, what a chmod makes of the ACL, and what a new
//! entry inherits from its directory's default ACL. Mirrors the kernel's
//! `posix_acl_equiv_mode`, `posix_acl_chmod` and `posix_acl_create`.
//!
//! The value is stored as an encrypted attribute like any other
//! ([`crate::format::xattrs`]); this module only reads and rewrites it.
//!
//! Owns: parsing and encoding the xattr form, and the mode arithmetic.
//! Must never: do I/O.

/// The xattr form's version.
const VERSION: u32 = 2;
/// Tags of ACL entries.
pub const USER_OBJ: u16 = 0x01;
/// A named user.
pub const USER: u16 = 0x02;
/// The owning group.
pub const GROUP_OBJ: u16 = 0x04;
/// A named group.
pub const GROUP: u16 = 0x08;
/// The mask of the group class.
pub const MASK: u16 = 0x10;
/// Everyone else.
pub const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// Errors parsing an ACL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// Not the kernel's xattr form, or an invalid ACL.
    #[error("invalid POSIX ACL")]
    Invalid,
}

/// One entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// [`USER_OBJ`], [`USER`], …
    pub tag: u16,
    /// rwx bits (0..=7).
    pub perm: u16,
    /// uid or gid for [`USER`] and [`GROUP`], else unused.
    pub id: u32,
}

/// An ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// Its entries, in the kernel's order (by tag, then id).
    pub entries: Vec<Entry>,
}

impl Acl {
    /// Parses the xattr form (a version header and 8-byte entries) and
    /// checks it as the kernel does (one of each *_OBJ and OTHER, a MASK
    /// when named entries exist, ids unique and sorted).
    pub fn parse(bytes: &[u8]) -> Result<Acl, AclError> {
        if bytes.len() < 4 || (bytes.len() - 4) % 8 != 0 {
            return Err(AclError::Invalid);
        }
        if u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) != VERSION {
            return Err(AclError::Invalid);
        }
        let entries: Vec<Entry> = bytes[4..]
            .chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let acl = Acl { entries };
        acl.validate()?;
        Ok(acl)
    }

    fn validate(&self) -> Result<(), AclError> {
        let (mut user_obj, mut group_obj, mut other, mut mask, mut named) = (0, 0, 0, 0, 0);
        let mut last: Option<(u16, u32)> = None;
        for e in &self.entries {
            if e.perm & !7 != 0 {
                return Err(AclError::Invalid);
            }
            match e.tag {
                USER_OBJ => user_obj += 1,
                GROUP_OBJ => group_obj += 1,
                OTHER => other += 1,
                MASK => mask += 1,
                USER | GROUP => named += 1,
                _ => return Err(AclError::Invalid),
            }
            let key = (
                e.tag,
                if matches!(e.tag, USER | GROUP) {
                    e.id
                } else {
                    0
                },
            );
            if let Some(l) = last {
                if key <= l {
                    return Err(AclError::Invalid);
                }
            }
            last = Some(key);
        }
        if user_obj != 1 || group_obj != 1 || other != 1 || mask > 1 || (named > 0 && mask == 0) {
            return Err(AclError::Invalid);
        }
        Ok(())
    }

    /// The xattr form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * self.entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            let id = if matches!(e.tag, USER | GROUP) {
                e.id
            } else {
                UNDEFINED_ID
            };
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    fn perm_of(&self, tag: u16) -> Option<u16> {
        self.entries.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    fn set_perm(&mut self, tag: u16, f: impl Fn(u16) -> u16) {
        for e in self.entries.iter_mut().filter(|e| e.tag == tag) {
            e.perm = f(e.perm);
        }
    }

    /// Whether the ACL says no more than the permission bits (only the
    /// three base entries): then it is not stored at all.
    pub fn is_minimal(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// The permission bits this (access) ACL stands for: owner from
    /// USER_OBJ, group from MASK (or GROUP_OBJ without one), other from
    /// OTHER; the rest of `mode` (file type, set-ID, sticky) is kept.
    pub fn mode(&self, mode: u32) -> u32 {
        let u = self.perm_of(USER_OBJ).unwrap_or(0) as u32;
        let g = self
            .perm_of(MASK)
            .or_else(|| self.perm_of(GROUP_OBJ))
            .unwrap_or(0) as u32;
        let o = self.perm_of(OTHER).unwrap_or(0) as u32;
        (mode & !0o777) | (u << 6) | (g << 3) | o
    }

    /// A chmod to `mode`: USER_OBJ, MASK (or GROUP_OBJ) and OTHER take the
    /// new permission bits.
    pub fn chmod(&mut self, mode: u32) {
        let (u, g, o) = (
            ((mode >> 6) & 7) as u16,
            ((mode >> 3) & 7) as u16,
            (mode & 7) as u16,
        );
        self.set_perm(USER_OBJ, |_| u);
        if self.perm_of(MASK).is_some() {
            self.set_perm(MASK, |_| g);
        } else {
            self.set_perm(GROUP_OBJ, |_| g);
        }
        self.set_perm(OTHER, |_| o);
    }

    /// What a new entry created with `mode` in a directory with this
    /// default ACL gets: its access ACL (None when it would be minimal)
    /// and its mode (the umask does not apply).
    pub fn inherit(&self, mode: u32) -> (Option<Acl>, u32) {
        let mut acl = self.clone();
        let mut m = mode & 0o777;
        // posix_acl_create_masq
        for e in acl.entries.iter_mut() {
            match e.tag {
                USER_OBJ => {
                    e.perm &= ((m >> 6) & 7) as u16;
                    m &= ((e.perm as u32) << 6) | !0o700;
                }
                OTHER => {
                    e.perm &= (m & 7) as u16;
                    m &= (e.perm as u32) | !0o007;
                }
                _ => {}
            }
        }
        let group_tag = if acl.perm_of(MASK).is_some() {
            MASK
        } else {
            GROUP_OBJ
        };
        for e in acl.entries.iter_mut().filter(|e| e.tag == group_tag) {
            e.perm &= ((m >> 3) & 7) as u16;
            m &= ((e.perm as u32) << 3) | !0o070;
        }
        let mode = (mode & !0o777) | (m & 0o777);
        ((!acl.is_minimal()).then_some(acl), mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry {
                    tag,
                    perm,
                    // The xattr form has no id on the unnamed entries.
                    id: if matches!(tag, USER | GROUP) {
                        id
                    } else {
                        UNDEFINED_ID
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn parse_encode_validate() {
        let a = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 0, 0),
        ]);
        let bytes = a.encode();
        assert_eq!(bytes.len(), 4 + 5 * 8);
        assert_eq!(Acl::parse(&bytes).unwrap(), a);
        // No mask with a named entry, a duplicate, bad perms, bad version.
        let no_mask = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, 0),
            (OTHER, 0, 0),
        ]);
        assert!(Acl::parse(&no_mask.encode()).is_err());
        let dup = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1000),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 0, 0),
        ]);
        assert!(Acl::parse(&dup.encode()).is_err());
        let mut bad = a.encode();
        bad[0] = 1;
        assert!(Acl::parse(&bad).is_err());
        assert!(Acl::parse(&bytes[..7]).is_err());
        let minimal = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        assert!(minimal.is_minimal());
        assert!(!a.is_minimal());
    }

    #[test]
    fn mode_and_chmod() {
        let mut a = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 6, 0),
            (OTHER, 1, 0),
        ]);
        // The mask, not the owning group, is the group class.
        assert_eq!(a.mode(0o104000), 0o104761);
        a.chmod(0o640);
        assert_eq!(a.perm_of(USER_OBJ), Some(6));
        assert_eq!(a.perm_of(MASK), Some(4));
        assert_eq!(a.perm_of(GROUP_OBJ), Some(5));
        assert_eq!(a.perm_of(OTHER), Some(0));
        let mut m = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 5, 0)]);
        m.chmod(0o700);
        assert_eq!(m.perm_of(GROUP_OBJ), Some(0));
    }

    #[test]
    fn inherit_like_the_kernel() {
        // setfacl -d -m u:1000:rwx,m::rwx on a 755 directory, then
        // open(O_CREAT, 0666): the access ACL keeps the named entry, the
        // mask is cut to the mode's group bits, and the umask is ignored.
        let def = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let (a, mode) = def.inherit(0o100666);
        let a = a.unwrap();
        assert_eq!(mode, 0o100664);
        assert_eq!(a.perm_of(USER_OBJ), Some(6));
        assert_eq!(a.perm_of(MASK), Some(6));
        assert_eq!(a.perm_of(USER), Some(7));
        assert_eq!(a.perm_of(OTHER), Some(4));
        // A minimal default ACL gives no access ACL, just the masked mode.
        let min = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 0, 0), (OTHER, 0, 0)]);
        assert_eq!(min.inherit(0o40777), (None, 0o40700));
    }
}
