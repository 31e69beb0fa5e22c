//! The names of a file with several (hard links) as the inode table knows
//! them. The kernel gives such a file one node for all its names, and a
//! request on the node (open, getattr, setxattr) carries no name: the node
//! keeps the name it was last looked up by as its location (the encryption
//! context its header is opened with, which its link table vouches for)
//! and the other names it was seen under, so an unlink or rename of one
//! name leaves it reachable through another. When every name the mount
//! knows is gone but the file still has names, requests needing one answer
//! ESTALE and the kernel looks the path up again.
//!
//! Grants: a lookup is checked on the path it came through; a request on
//! the node is allowed when a grant covers any name the mount knows it by
//! (each of which was itself checked when it was looked up).
//!
//! Owns: the bookkeeping of several names per node.
//! Must never: change a backing name, or log names.

use std::sync::Arc;

use crate::fs::inodes::{Inode, Location, OtherName};
use crate::fs::SealFs;

/// Most other names one node remembers (a file linked into hundreds of
/// snapshots is reachable through any; the kernel re-looks-up as needed).
const MAX_OTHERS: usize = 64;

fn same(p: &Option<Arc<Inode>>, entry: &str, parent_ino: u64, other_entry: &str) -> bool {
    p.as_ref().map(|p| p.ino) == Some(parent_ino) && entry == other_entry
}

impl SealFs {
    /// Records that `n` was just found as `name` (backing `entry`) in
    /// `parent`, and that it has `nlink` names. A file with one name moves
    /// there (it was renamed behind the kernel's back); one with several
    /// keeps its other names.
    pub(super) fn seen_as(n: &Inode, parent: &Arc<Inode>, name: &[u8], entry: &str, nlink: u64) {
        let mut l = n.loc.lock();
        let here = same(&l.parent, &l.entry, parent.ino, entry);
        if here && !l.unlinked && !l.lost {
            return;
        }
        let mut next = Location::at(Some(parent.clone()), name, entry);
        if nlink > 1 {
            let mut others = std::mem::take(&mut l.others);
            if !l.unlinked && !l.lost && !here {
                if let Some(p) = l.parent.clone() {
                    others.push(OtherName {
                        parent: p,
                        name: l.name.clone(),
                        entry: l.entry.clone(),
                    });
                }
            }
            others.retain(|o| !(o.parent.ino == parent.ino && o.entry == entry));
            if others.len() > MAX_OTHERS {
                others.drain(..others.len() - MAX_OTHERS);
            }
            next.others = others;
        }
        *l = next;
    }

    /// Records a rename of one name of `m` from (`old_parent`, `old_entry`)
    /// to `name` (backing `entry`) in `new_parent`.
    pub(super) fn renamed(
        m: &Inode,
        (old_parent, old_entry): (u64, &str),
        new_parent: &Arc<Inode>,
        name: &[u8],
        entry: &str,
    ) {
        let mut l = m.loc.lock();
        if let Some(o) = l
            .others
            .iter_mut()
            .find(|o| o.parent.ino == old_parent && o.entry == old_entry)
        {
            o.parent = new_parent.clone();
            o.name = name.to_vec();
            o.entry = entry.to_string();
            return;
        }
        let others = std::mem::take(&mut l.others);
        *l = Location::at(Some(new_parent.clone()), name, entry);
        l.others = others;
    }

    /// Records that the name `entry` of `parent` was removed (unlink, or
    /// replaced by a rename) from the object with attributes `st` (taken
    /// before). The last name: the node is unlinked from its backing inode
    /// (which may be recycled); one of several: the node forgets that name.
    pub(super) fn name_removed(&self, st: &libc::stat, parent: u64, entry: &str) {
        if st.st_nlink <= 1 {
            self.drop_backing(st.st_ino);
            return;
        }
        let node = {
            let t = self.inodes.read();
            t.by_backing
                .get(&st.st_ino)
                .and_then(|id| t.nodes.get(id))
                .cloned()
        };
        let Some(n) = node else { return };
        let mut l = n.loc.lock();
        l.others
            .retain(|o| !(o.parent.ino == parent && o.entry == entry));
        if same(&l.parent, &l.entry, parent, entry) {
            match l.others.pop() {
                Some(o) => {
                    let others = std::mem::take(&mut l.others);
                    *l = Location::at(Some(o.parent), &o.name, &o.entry);
                    l.others = others;
                }
                None => l.lost = true,
            }
        }
    }

    /// The plaintext paths of every name the mount knows `inode` by (its
    /// location first).
    pub(super) fn paths_of(inode: &Inode) -> Vec<Vec<u8>> {
        let others: Vec<OtherName> = inode.loc.lock().others.clone();
        let mut out = vec![Self::path_of(inode)];
        for o in others {
            out.push(Self::child_path(&o.parent, &o.name));
        }
        out
    }
}
