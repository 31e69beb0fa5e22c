//! The sealed group states of one open file (volumes with the
//! `sealed-group-state` feature): finding the sealed size when the file is
//! opened, the states known so far, and the order in which a change writes
//! them (docs/FORMAT.md §4.3).
//!
//! Owns: reading, caching and writing the 96-byte state areas of a file.
//! Must never: write a state before the chunks whose bits it sets.

use std::collections::HashMap;
use std::fs::File;

use crate::format::group_state::{GroupState, StateCipher, STATE_AREA};
use crate::format::layout::{
    ciphertext_size, end_group, last_group, plaintext_size, state_offset, CHUNKS_PER_GROUP,
    META_BLOCK,
};
use crate::volume::error::VolumeError;

use super::run::{pread_some, pwrite};

/// States kept per open file before the cache starts over (a group's state
/// is re-read when needed again).
const KNOWN_MAX: usize = 1 << 16;

/// What opening a file found at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The size sealed in the state of group `at` (the last group of the
    /// size, or a later one while a truncation was being made).
    Sealed {
        /// Plaintext size.
        size: u64,
        /// The group whose state carries it.
        at: u64,
    },
    /// No group state carries a size: the file's end is lost (cut or zeroed).
    Lost,
}

/// The ciphertext's length and what its states say about the file's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovery {
    /// The backing file's length when it was opened.
    pub csize: u64,
    /// What the states say.
    pub end: End,
}

impl Discovery {
    /// The plaintext size: the sealed one, or for a lost end what the
    /// ciphertext's length maps to.
    pub fn size(&self) -> u64 {
        match self.end {
            End::Sealed { size, .. } => size,
            End::Lost => plaintext_size(self.csize).unwrap_or(0),
        }
    }

    /// Ciphertext bytes past the sealed size (a crash while the file grew
    /// or shrank, or bytes appended by someone else): never read.
    pub fn stray(&self) -> u64 {
        self.csize.saturating_sub(ciphertext_size(self.size()))
    }

    /// Ciphertext bytes the sealed size needs that are not there (the file
    /// was cut).
    pub fn missing(&self) -> u64 {
        ciphertext_size(self.size()).saturating_sub(self.csize)
    }
}

/// The state cipher of a file and the states known so far.
#[derive(Debug)]
pub(super) struct Groups {
    pub(super) cipher: StateCipher,
    /// Behind a lock so that reads (which share the open file) remember
    /// the states they open: a state is decrypted once per open, not once
    /// per read. Writes hold the file exclusively, so what is remembered
    /// is what is on disk.
    known: parking_lot::RwLock<HashMap<u64, GroupState>>,
}

impl Groups {
    pub(super) fn new(cipher: StateCipher) -> Self {
        Groups {
            cipher,
            known: parking_lot::RwLock::new(HashMap::new()),
        }
    }

    /// Reads and opens group `g`'s state from disk (a file cut inside it
    /// reads as zeros past its end).
    pub(super) fn read(&self, file: &File, g: u64) -> Result<GroupState, VolumeError> {
        let mut area = [0u8; STATE_AREA];
        pread_some(file, &mut area, state_offset(g))?;
        Ok(self.cipher.open(g, &area)?)
    }

    /// Finds the sealed size of a file of `csize` bytes: the state of the
    /// group at the ciphertext's end, stepping back over groups whose state
    /// does not carry the last flag (a stray tail: a crash while the file
    /// grew or shrank). Usually one read.
    pub(super) fn discover(&mut self, file: &File, csize: u64) -> Result<Discovery, VolumeError> {
        if csize < META_BLOCK {
            return Err(VolumeError::Truncated);
        }
        for g in (0..=end_group(csize)).rev() {
            match self.read(file, g) {
                Ok(s) if s.last => {
                    self.remember(g, s);
                    let at = g;
                    return Ok(Discovery {
                        csize,
                        end: End::Sealed { size: s.size, at },
                    });
                }
                Ok(_) | Err(VolumeError::GroupState(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(Discovery {
            csize,
            end: End::Lost,
        })
    }

    /// Group `g`'s state if this open knows it.
    pub(super) fn get(&self, g: u64) -> Option<GroupState> {
        self.known.read().get(&g).copied()
    }

    /// Group `g`'s state, read from disk the first time.
    pub(super) fn load(&mut self, file: &File, g: u64) -> Result<GroupState, VolumeError> {
        if let Some(s) = self.get(g) {
            return Ok(s);
        }
        let s = self.read(file, g)?;
        self.remember(g, s);
        Ok(s)
    }

    /// Notes `s` as group `g`'s state (as on disk).
    pub(super) fn remember(&self, g: u64, s: GroupState) {
        let mut known = self.known.write();
        if known.len() >= KNOWN_MAX && !known.contains_key(&g) {
            known.clear();
        }
        known.insert(g, s);
    }

    /// Forgets the states of groups `g..` (cut off by a truncation).
    pub(super) fn forget_from(&mut self, g: u64) {
        self.known.write().retain(|&k, _| k < g);
    }

    /// The sealed area of `s` as group `g`'s state.
    pub(super) fn seal(&self, g: u64, s: &GroupState) -> Result<[u8; STATE_AREA], VolumeError> {
        Ok(self.cipher.seal(g, s)?)
    }

    /// Seals and writes group `g`'s state, and remembers it.
    pub(super) fn store(&mut self, file: &File, g: u64, s: GroupState) -> Result<(), VolumeError> {
        let area = self.seal(g, &s)?;
        pwrite(file, &area, state_offset(g))?;
        self.remember(g, s);
        Ok(())
    }
}

/// The states one change writes, in the order it writes them.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Before the commit, ascending: groups that gain chunks or lose stale
    /// bits, new groups in the middle, and the old last group while it
    /// still carries the old size.
    pub(super) pre: Vec<(u64, GroupState)>,
    /// The state that carries the new size: once written, the change is made.
    pub(super) commit: Option<(u64, GroupState)>,
    /// After the commit: the old last group drops its last flag.
    pub(super) post: Option<(u64, GroupState)>,
}

impl Plan {
    /// The state written with group `g`'s run (the run's own pre-commit
    /// state, or the commit).
    pub(super) fn for_group(&self, g: u64) -> Option<GroupState> {
        self.pre
            .iter()
            .chain(self.commit.iter())
            .find(|(x, _)| *x == g)
            .map(|(_, s)| *s)
    }
}

/// Local index (within its group) of the first chunk past a file of `size`
/// bytes, clamped to group `g`.
pub(super) fn local_count(size: u64, g: u64) -> u64 {
    let n = crate::format::layout::chunk_count(size);
    n.saturating_sub(g * CHUNKS_PER_GROUP).min(CHUNKS_PER_GROUP)
}

/// Plans the states of a change from `old` to `new` bytes that stores the
/// chunks `written` (an inclusive range, or none), given each existing
/// group's state (`state_of`, for groups up to the old last group).
///
/// Growth (docs/FORMAT.md §4.3): groups that gain chunks and new groups
/// first (the old last group keeping its flag and the old size), then the
/// new last group's state with the new size (the commit), then the old last
/// group without its flag. Shrinking: [`plan_shrink`].
pub(super) fn plan_write(
    old: u64,
    new: u64,
    written: Option<(u64, u64)>,
    mut state_of: impl FnMut(u64) -> Result<GroupState, VolumeError>,
) -> Result<Plan, VolumeError> {
    debug_assert!(new >= old);
    let go = last_group(old);
    let gn = last_group(new);
    let mut plan = Plan::default();
    let (g_first, g_last) = match written {
        Some((a, b)) => (a / CHUNKS_PER_GROUP, b / CHUNKS_PER_GROUP),
        None => (u64::MAX, 0),
    };
    let lo = g_first.min(go);
    for g in lo..=gn {
        let touched = g >= g_first && g <= g_last;
        if !(touched || (new > old && g >= go)) {
            continue;
        }
        let before = if g <= go { Some(state_of(g)?) } else { None };
        let mut s = before.unwrap_or(GroupState::EMPTY);
        // This plan never packs (a packed tail was unpacked before, and
        // changes that end packed are made in block 0, `small`).
        s.packed = false;
        if g == go && new > old {
            // Bits past the old size mean nothing: clear them, so the
            // chunks between the old end and this write read as holes.
            s.written = s.written_below(local_count(old, go));
        }
        if let (true, Some((a, b))) = (touched, written) {
            let from = a.max(g * CHUNKS_PER_GROUP) - g * CHUNKS_PER_GROUP;
            let to = b.min((g + 1) * CHUNKS_PER_GROUP - 1) - g * CHUNKS_PER_GROUP;
            for i in from..=to {
                s.written |= 1u128 << i;
            }
        }
        if g == gn {
            s.last = true;
            s.size = new;
            if before != Some(s) {
                plan.commit = Some((g, s));
            }
        } else if g == go {
            // Keeps the old size until the commit.
            s.last = true;
            s.size = old;
            if before != Some(s) {
                plan.pre.push((g, s));
            }
            plan.post = Some((
                g,
                GroupState {
                    last: false,
                    size: 0,
                    ..s
                },
            ));
        } else {
            s.last = false;
            s.size = 0;
            if before != Some(s) {
                plan.pre.push((g, s));
            }
        }
    }
    Ok(plan)
}

/// Plans the states of a truncation from `old` to `new` bytes (`new <
/// old`): when the new last group is an earlier one, the old last group's
/// state first carries the new size (the commit: the ciphertext past it is
/// then a stray tail), then the new last group gets it with the bits past
/// the end cleared; otherwise one state does both.
pub(super) fn plan_shrink(
    old: u64,
    new: u64,
    mut state_of: impl FnMut(u64) -> Result<GroupState, VolumeError>,
) -> Result<Plan, VolumeError> {
    debug_assert!(new < old);
    let go = last_group(old);
    let gn = last_group(new);
    let mut plan = Plan::default();
    let mut s = state_of(gn)?;
    s.packed = false;
    s.written = s.written_below(local_count(new, gn));
    s.last = true;
    s.size = new;
    if gn == go {
        plan.commit = Some((gn, s));
    } else {
        let forward = GroupState {
            last: true,
            size: new,
            packed: false,
            ..state_of(go)?
        };
        plan.commit = Some((go, forward));
        plan.post = Some((gn, s));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::layout::GROUP_PLAIN;

    fn full(n: u64) -> u128 {
        if n >= 128 {
            u128::MAX
        } else {
            (1u128 << n) - 1
        }
    }

    #[test]
    fn append_inside_the_last_group_is_one_commit() {
        let s0 = GroupState {
            written: full(2),
            last: true,
            size: 8192,
            packed: false,
        };
        let p = plan_write(8192, 12288, Some((2, 2)), |_| Ok(s0)).unwrap();
        assert!(p.pre.is_empty() && p.post.is_none());
        assert_eq!(
            p.commit,
            Some((
                0,
                GroupState {
                    written: full(3),
                    last: true,
                    size: 12288,
                    packed: false,
                }
            ))
        );
    }

    #[test]
    fn overwriting_data_writes_no_state() {
        let s0 = GroupState {
            written: full(3),
            last: true,
            size: 12288,
            packed: false,
        };
        let p = plan_write(12288, 12288, Some((0, 1)), |_| Ok(s0)).unwrap();
        assert!(p.pre.is_empty() && p.commit.is_none() && p.post.is_none());
    }

    #[test]
    fn growth_across_groups_and_a_gap() {
        // 1 chunk in group 0; a write of chunk 3*128+1 (group 3).
        let s0 = GroupState {
            written: 0b1 | 1 << 5, // a stale bit past the size
            last: true,
            size: 100,
            packed: false,
        };
        let p = plan_write(100, 3 * GROUP_PLAIN + 4097 + 10, Some((385, 385)), |g| {
            assert_eq!(g, 0);
            Ok(s0)
        })
        .unwrap();
        let groups: Vec<u64> = p.pre.iter().map(|(g, _)| *g).collect();
        assert_eq!(groups, vec![0, 1, 2]);
        assert_eq!(
            p.pre[0].1,
            GroupState {
                written: 1,
                last: true,
                size: 100,
                packed: false,
            }
        );
        assert_eq!(p.pre[1].1, GroupState::EMPTY);
        let (g, c) = p.commit.unwrap();
        assert_eq!((g, c.written, c.last), (3, 1 << 1, true));
        assert_eq!(p.post.unwrap().1, GroupState::EMPTY.with_written(1));
    }

    #[test]
    fn shrinking_forwards_then_settles() {
        let s = GroupState {
            written: full(128),
            last: false,
            size: 0,
            packed: false,
        };
        let p = plan_shrink(3 * GROUP_PLAIN, 5000, |_| Ok(s)).unwrap();
        let (g, c) = p.commit.unwrap();
        assert_eq!((g, c.last, c.size), (2, true, 5000));
        let (g, post) = p.post.unwrap();
        assert_eq!(
            (g, post.written, post.last, post.size),
            (0, full(2), true, 5000)
        );
        let p = plan_shrink(5000, 10, |_| Ok(s)).unwrap();
        assert_eq!(p.commit.unwrap().1.written, 1);
        assert!(p.post.is_none());
    }

    impl GroupState {
        fn with_written(self, w: u128) -> Self {
            GroupState { written: w, ..self }
        }
    }
}
