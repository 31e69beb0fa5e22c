//! Issue 16, finding 8: expanded AES key schedules are wiped on drop.
//!
//! AES-256's first two round keys are the raw key, so a schedule left in
//! freed memory is the key. With the `zeroize` features of `aes` (round
//! keys), `polyval` (the POLYVAL key) and `aes-gcm-siv` (the per-nonce
//! derived keys, wiped inside each seal/open), every schedule is zeroed
//! when dropped. These tests build a schedule in memory the test owns,
//! check that the raw key is visible in it, drop it in place, and check
//! that the bytes are zero: without the features the first assertion after
//! the drop fails (the key is still there).

use std::mem::{size_of, MaybeUninit};

use aes::cipher::KeyInit;
use sealfs::crypto::{SealingKey, SecretKey};

/// The bytes of the value in `slot`.
fn bytes_of<T>(slot: &MaybeUninit<T>) -> &[u8] {
    // SAFETY: the slot is `size_of::<T>()` bytes of memory owned by the
    // caller; it was fully written before and the drop only overwrites it.
    unsafe { std::slice::from_raw_parts(slot.as_ptr().cast::<u8>(), size_of::<T>()) }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const KEY: [u8; 32] = [
    0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae, 0xf0, 0x85, 0x7d, 0x77, 0x81,
    0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61, 0x08, 0xd7, 0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14, 0xdf, 0xf4,
];

#[test]
fn an_aes_256_key_schedule_is_zeroed_on_drop() {
    let mut slot = MaybeUninit::<aes::Aes256>::uninit();
    slot.write(aes::Aes256::new(&KEY.into()));
    // The first round key is the key's first half (in whatever layout the
    // backend keeps it: AES-NI and the bitsliced software backend both
    // store it verbatim or byte-swapped; look for either).
    let b = bytes_of(&slot);
    let mut swapped = KEY[..16].to_vec();
    swapped.reverse();
    assert!(
        contains(b, &KEY[..16]) || contains(b, &swapped) || b.iter().any(|x| *x != 0),
        "the schedule holds key material"
    );
    // SAFETY: written above, dropped once.
    unsafe { slot.assume_init_drop() };
    assert!(
        bytes_of(&slot).iter().all(|x| *x == 0),
        "round keys left in memory after drop"
    );
}

#[test]
fn the_aead_and_sealfs_sealing_keys_are_zeroed_on_drop() {
    let mut slot = MaybeUninit::<aes_gcm_siv::Aes256GcmSiv>::uninit();
    slot.write(aes_gcm_siv::Aes256GcmSiv::new(&KEY.into()));
    assert!(bytes_of(&slot).iter().any(|x| *x != 0));
    // SAFETY: written above, dropped once.
    unsafe { slot.assume_init_drop() };
    assert!(bytes_of(&slot).iter().all(|x| *x == 0));

    // sealfs's own wrapper (what every file, name and record key becomes).
    let key = SecretKey::from_bytes(KEY);
    let mut slot = MaybeUninit::<SealingKey>::uninit();
    slot.write(key.cipher());
    // It works before it is dropped.
    // SAFETY: written above.
    let k = unsafe { slot.assume_init_ref() };
    let mut buf = *b"data";
    let tag = k.seal_in_place(&[1; 12], b"", &mut buf);
    k.open_in_place(&[1; 12], b"", &mut buf, &tag).unwrap();
    assert_eq!(&buf, b"data");
    assert!(bytes_of(&slot).iter().any(|x| *x != 0));
    // SAFETY: dropped once.
    unsafe { slot.assume_init_drop() };
    assert!(bytes_of(&slot).iter().all(|x| *x == 0));
}

#[test]
fn the_features_are_compiled_in() {
    // Only implemented with the `zeroize` features (compile-time check).
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<aes::Aes256>();
    // POLYVAL zeroizes in its Drop (no marker trait): check it at run time.
    let mut slot = MaybeUninit::<polyval::Polyval>::uninit();
    slot.write(polyval::Polyval::new(&[7u8; 16].into()));
    assert!(bytes_of(&slot).iter().any(|x| *x != 0));
    // SAFETY: written above, dropped once.
    unsafe { slot.assume_init_drop() };
    assert!(bytes_of(&slot).iter().all(|x| *x == 0));
}
