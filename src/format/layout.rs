//! Chunk arithmetic: where each plaintext chunk and its nonce+tag entry live
//! in a ciphertext file, and how plaintext and ciphertext sizes map.
//!
//! Owns: pure integer arithmetic over the on-disk layout (docs/FORMAT.md §3).
//! Must never: touch files or keys.
//!
//! A ciphertext file is a run of *groups*. Group `g` is one 4 KiB metadata
//! block followed by up to [`CHUNKS_PER_GROUP`] data chunks of
//! [`CHUNK_SIZE`] bytes. The metadata block of group 0 begins with the file
//! header; on volumes with sealed group states every metadata block holds
//! its group's state at [`META_STATE_OFFSET`]; every metadata block holds
//! the 28-byte (nonce, tag) entries of its group's chunks from offset
//! [`META_ENTRIES_OFFSET`]. Data chunks therefore sit on 4 KiB boundaries of
//! the backing file, so an aligned 4 KiB write touches exactly one backing
//! data page (plus the group's metadata page).

use crate::crypto::{NONCE_LEN, TAG_LEN};

/// Plaintext bytes per chunk (fixed in format version 1).
pub const CHUNK_SIZE: u64 = 4096;
/// Size of a metadata block.
pub const META_BLOCK: u64 = 4096;
/// Chunks described by one metadata block.
pub const CHUNKS_PER_GROUP: u64 = 128;
/// Offset of the first (nonce, tag) entry inside a metadata block; the bytes
/// before it hold the file header in group 0 and, with sealed group states,
/// the group's state; the rest is zero.
pub const META_ENTRIES_OFFSET: u64 = 256;
/// Offset of a group's sealed state inside its metadata block (right after
/// the 160-byte file header in group 0; bytes 0..160 of later groups' blocks
/// are zero).
pub const META_STATE_OFFSET: u64 = 160;
/// Bytes of the sealed state area (up to the first entry).
pub const META_STATE_LEN: u64 = META_ENTRIES_OFFSET - META_STATE_OFFSET;
/// Offset of the free bytes after the last entry of a metadata block
/// (reserved: written as zero, never read).
pub const META_FREE_OFFSET: u64 = META_ENTRIES_OFFSET + CHUNKS_PER_GROUP * META_ENTRY_LEN;
/// End (exclusive) of a packed tail in block 0 (volumes with `packed-tails`,
/// docs/FORMAT.md §4.7): the tail's bytes end where the link table's area
/// (3840..4096) begins, so the two never overlap.
pub const PACKED_TAIL_END: u64 = META_FREE_OFFSET;
/// Bytes per metadata entry: nonce then tag.
pub const META_ENTRY_LEN: u64 = (NONCE_LEN + TAG_LEN) as u64;
/// Bytes one full group occupies in the ciphertext file.
pub const GROUP_BYTES: u64 = META_BLOCK + CHUNKS_PER_GROUP * CHUNK_SIZE;
/// Plaintext bytes one full group carries.
pub const GROUP_PLAIN: u64 = CHUNKS_PER_GROUP * CHUNK_SIZE;

const _: () = assert!(META_ENTRIES_OFFSET + CHUNKS_PER_GROUP * META_ENTRY_LEN <= META_BLOCK);

/// Index of a chunk within a file (plaintext offset / [`CHUNK_SIZE`]).
pub type ChunkIndex = u64;

/// Error for a ciphertext size no plaintext size maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ciphertext size {0} is shorter than the file header block")]
pub struct TruncatedHeader(pub u64);

/// Offset in the ciphertext file of chunk `k`'s data.
pub fn chunk_data_offset(k: ChunkIndex) -> u64 {
    let g = k / CHUNKS_PER_GROUP;
    let i = k % CHUNKS_PER_GROUP;
    g * GROUP_BYTES + META_BLOCK + i * CHUNK_SIZE
}

/// Offset in the ciphertext file of chunk `k`'s (nonce, tag) entry.
pub fn chunk_meta_offset(k: ChunkIndex) -> u64 {
    let g = k / CHUNKS_PER_GROUP;
    let i = k % CHUNKS_PER_GROUP;
    g * GROUP_BYTES + META_ENTRIES_OFFSET + i * META_ENTRY_LEN
}

/// The group chunk `k` belongs to.
pub fn group_of(k: ChunkIndex) -> u64 {
    k / CHUNKS_PER_GROUP
}

/// Offset in the ciphertext file where group `g` (its metadata block) starts.
pub fn group_offset(g: u64) -> u64 {
    g * GROUP_BYTES
}

/// Offset in the ciphertext file of group `g`'s sealed state.
pub fn state_offset(g: u64) -> u64 {
    group_offset(g) + META_STATE_OFFSET
}

/// The group that holds the final chunk of a plaintext of `size` bytes
/// (group 0 for an empty file): the group whose state carries the size.
pub fn last_group(size: u64) -> u64 {
    size.saturating_sub(1) / CHUNK_SIZE / CHUNKS_PER_GROUP
}

/// The group a ciphertext of `csize` bytes ends in (the one holding its
/// last byte; group 0 for a header block alone).
pub fn end_group(csize: u64) -> u64 {
    csize.saturating_sub(1) / GROUP_BYTES
}

/// Number of chunks a plaintext of `size` bytes has.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE)
}

/// Plaintext length of chunk `k` in a file of `size` bytes (0 if beyond EOF).
pub fn chunk_len(k: ChunkIndex, size: u64) -> usize {
    let start = k * CHUNK_SIZE;
    if start >= size {
        0
    } else {
        (size - start).min(CHUNK_SIZE) as usize
    }
}

/// Ciphertext file size for a plaintext of `size` bytes.
pub fn ciphertext_size(size: u64) -> u64 {
    if size == 0 {
        return META_BLOCK;
    }
    let last = (size - 1) / CHUNK_SIZE;
    chunk_data_offset(last) + chunk_len(last, size) as u64
}

/// Plaintext size for a ciphertext file of `csize` bytes. A file that ends
/// inside a metadata block (only possible after a crash while a group was being
/// added) counts as ending at the previous full group.
pub fn plaintext_size(csize: u64) -> Result<u64, TruncatedHeader> {
    if csize < META_BLOCK {
        return Err(TruncatedHeader(csize));
    }
    let g = csize / GROUP_BYTES;
    let r = csize % GROUP_BYTES;
    if r <= META_BLOCK {
        Ok(g * GROUP_PLAIN)
    } else {
        Ok(g * GROUP_PLAIN + (r - META_BLOCK))
    }
}

/// Chunks touched by the plaintext byte range `[offset, offset+len)`, as an
/// inclusive range; `None` for an empty range.
pub fn chunks_touched(offset: u64, len: u64) -> Option<(ChunkIndex, ChunkIndex)> {
    if len == 0 {
        return None;
    }
    Some((offset / CHUNK_SIZE, (offset + len - 1) / CHUNK_SIZE))
}

/// Splits an inclusive chunk range into runs that stay inside one group, so
/// each run's data and metadata entries are contiguous on disk.
pub fn group_runs(
    first: ChunkIndex,
    last: ChunkIndex,
) -> impl Iterator<Item = (ChunkIndex, ChunkIndex)> {
    let mut next = first;
    std::iter::from_fn(move || {
        if next > last {
            return None;
        }
        let group_end = (next / CHUNKS_PER_GROUP + 1) * CHUNKS_PER_GROUP - 1;
        let end = group_end.min(last);
        let run = (next, end);
        next = end + 1;
        Some(run)
    })
}

/// Bytes of block 0 free for a packed tail when the file's final chunk is
/// `k` (group 0 only): from the end of chunk `k`'s entry to
/// [`PACKED_TAIL_END`]. 0 for a chunk past group 0.
pub fn packed_tail_room(k: ChunkIndex) -> u64 {
    if k >= CHUNKS_PER_GROUP {
        return 0;
    }
    PACKED_TAIL_END - (META_ENTRIES_OFFSET + (k + 1) * META_ENTRY_LEN)
}

/// Whether the final chunk of a plaintext of `size` bytes fits in block 0
/// (a packed tail, docs/FORMAT.md §4.7): the file ends in group 0 and its
/// final chunk's length is at most [`packed_tail_room`].
pub fn tail_fits(size: u64) -> bool {
    if size == 0 {
        return false;
    }
    let k = (size - 1) / CHUNK_SIZE;
    chunk_len(k, size) as u64 <= packed_tail_room(k)
}

/// Offset in block 0 of a packed tail of `len` bytes (right-aligned so it
/// ends at [`PACKED_TAIL_END`]).
pub fn packed_tail_offset(len: usize) -> u64 {
    PACKED_TAIL_END - len as u64
}

/// Disk blocks (512 B) to report for a plaintext size: what `du` should show.
pub fn reported_blocks(size: u64) -> u64 {
    size.div_ceil(512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_points() {
        assert_eq!(ciphertext_size(0), 4096);
        assert_eq!(ciphertext_size(1), 4097);
        assert_eq!(ciphertext_size(4096), 8192);
        assert_eq!(ciphertext_size(GROUP_PLAIN), GROUP_BYTES);
        assert_eq!(
            ciphertext_size(GROUP_PLAIN + 1),
            GROUP_BYTES + META_BLOCK + 1
        );
        assert_eq!(plaintext_size(4095), Err(TruncatedHeader(4095)));
        assert_eq!(chunk_data_offset(0), 4096);
        assert_eq!(chunk_data_offset(128), GROUP_BYTES + 4096);
        assert_eq!(chunk_meta_offset(0), 256);
        assert_eq!(chunk_meta_offset(129), GROUP_BYTES + 256 + 28);
        assert_eq!(META_FREE_OFFSET, 3840);
        assert_eq!((META_STATE_OFFSET, META_STATE_LEN), (160, 96));
        assert_eq!(state_offset(2), 2 * GROUP_BYTES + 160);
        assert_eq!(last_group(0), 0);
        assert_eq!(last_group(GROUP_PLAIN), 0);
        assert_eq!(last_group(GROUP_PLAIN + 1), 1);
        assert_eq!(end_group(4096), 0);
        assert_eq!(end_group(GROUP_BYTES), 0);
        assert_eq!(end_group(GROUP_BYTES + 1), 1);
        assert_eq!(packed_tail_room(0), 3556);
        assert_eq!(packed_tail_room(1), 3528);
        assert_eq!(packed_tail_room(126), 28);
        assert_eq!(packed_tail_room(127), 0);
        assert_eq!(packed_tail_room(128), 0);
        assert!(!tail_fits(0));
        assert!(tail_fits(1) && tail_fits(3556) && !tail_fits(3557));
        assert!(tail_fits(4096 + 3528) && !tail_fits(4096 + 3529));
        assert!(!tail_fits(8192));
        assert!(tail_fits(126 * 4096 + 28) && !tail_fits(127 * 4096 + 1));
        assert_eq!(packed_tail_offset(3556), 256 + 28);
    }

    proptest! {
        #[test]
        fn a_packed_tail_stays_between_its_entries_and_the_link_table(p in 1u64..GROUP_PLAIN) {
            if tail_fits(p) {
                let k = (p - 1) / CHUNK_SIZE;
                let at = packed_tail_offset(chunk_len(k, p));
                prop_assert!(at >= chunk_meta_offset(k) + META_ENTRY_LEN);
                prop_assert!(at + chunk_len(k, p) as u64 == META_FREE_OFFSET);
            }
        }
    }

    proptest! {
        #[test]
        fn size_round_trip(p in 0u64..(1u64 << 44)) {
            prop_assert_eq!(plaintext_size(ciphertext_size(p)).unwrap(), p);
        }

        #[test]
        fn the_last_group_holds_the_end(p in 0u64..(1u64 << 44)) {
            prop_assert_eq!(end_group(ciphertext_size(p)), last_group(p));
            if p > 0 {
                prop_assert_eq!(group_of(chunk_count(p) - 1), last_group(p));
            }
        }

        #[test]
        fn size_monotonic(p in 0u64..(1u64 << 40)) {
            prop_assert!(ciphertext_size(p + 1) > ciphertext_size(p));
        }

        #[test]
        fn any_csize_maps_to_a_size_not_past_it(c in 4096u64..(1u64 << 40)) {
            let p = plaintext_size(c).unwrap();
            prop_assert!(ciphertext_size(p) <= c);
        }

        #[test]
        fn chunks_are_page_aligned_and_disjoint(k in 0u64..(1u64 << 30)) {
            prop_assert_eq!(chunk_data_offset(k) % 4096, 0);
            prop_assert!(chunk_data_offset(k + 1) >= chunk_data_offset(k) + CHUNK_SIZE);
            // metadata entry lies in the group's metadata block, before its data
            let g0 = (k / CHUNKS_PER_GROUP) * GROUP_BYTES;
            prop_assert!(chunk_meta_offset(k) >= g0 + META_ENTRIES_OFFSET);
            prop_assert!(chunk_meta_offset(k) + META_ENTRY_LEN <= g0 + META_BLOCK);
        }

        #[test]
        fn chunk_lengths_sum_to_the_size(p in 0u64..(1u64 << 32)) {
            let n = chunk_count(p);
            let mut sum = 0u64;
            for k in n.saturating_sub(3)..n {
                let l = chunk_len(k, p) as u64;
                prop_assert!(l > 0 && l <= CHUNK_SIZE);
                if k + 1 < n { prop_assert_eq!(l, CHUNK_SIZE); }
                sum += l;
            }
            prop_assert_eq!(sum + n.saturating_sub(3) * CHUNK_SIZE, p);
            prop_assert_eq!(chunk_len(n, p), 0);
        }

        #[test]
        fn last_chunk_ends_the_ciphertext(p in 1u64..(1u64 << 44)) {
            let l = chunk_count(p) - 1;
            prop_assert_eq!(chunk_data_offset(l) + chunk_len(l, p) as u64, ciphertext_size(p));
        }

        #[test]
        fn huge_sizes_round_trip(p in (1u64 << 44)..(1u64 << 62)) {
            prop_assert_eq!(plaintext_size(ciphertext_size(p)).unwrap(), p);
            prop_assert!(ciphertext_size(p) > p);
        }

        #[test]
        fn reported_blocks_cover_the_size(p in 0u64..(1u64 << 50)) {
            let b = reported_blocks(p);
            prop_assert!(b * 512 >= p && b * 512 < p + 512);
        }

        #[test]
        fn touched_covers_range(off in 0u64..(1u64 << 32), len in 1u64..(1u64 << 22)) {
            let (a, b) = chunks_touched(off, len).unwrap();
            prop_assert!(a * CHUNK_SIZE <= off);
            prop_assert!((b + 1) * CHUNK_SIZE >= off + len);
            prop_assert!(b * CHUNK_SIZE < off + len);
            let runs: Vec<_> = group_runs(a, b).collect();
            prop_assert_eq!(runs.first().unwrap().0, a);
            prop_assert_eq!(runs.last().unwrap().1, b);
            for w in runs.windows(2) { prop_assert_eq!(w[0].1 + 1, w[1].0); }
            for (s, e) in runs { prop_assert_eq!(s / CHUNKS_PER_GROUP, e / CHUNKS_PER_GROUP); }
        }
    }
}
