//! The fuzz targets on stable Rust, bounded: every committed corpus file in
//! `fuzz/corpus/<target>/` and a few thousand seeded mutations of them go
//! through the same `sealfs::fuzz` functions the cargo-fuzz targets call
//! (`contrib/fuzz.sh` runs the real fuzzer on nightly). A panic is a bug.

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use sealfs::fuzz::TARGETS;

/// Mutations per target.
const MUTATIONS: usize = 3000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "fuzz target {target} has no corpus at {}: {e}",
                dir.display()
            )
        })
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "fuzz/corpus/{target} is empty");
    out
}

/// One libFuzzer-like mutation: flip bits, overwrite, insert, delete,
/// truncate, duplicate a range, or splice in another seed.
fn mutate(rng: &mut Rng, input: &[u8], seeds: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0, 0xff, 0x7f, 0x80, b'"', b'{', b'=', b'.'][rng.below(8)];
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                for _ in 0..n {
                    v.insert(i, rng.next() as u8);
                }
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = (1 + rng.below(16)).min(len - i);
                v.drain(i..i + n);
            }
            4 => v.truncate(rng.below(len + 1)),
            5 if len > 0 => {
                let i = rng.below(len);
                let n = (1 + rng.below(64)).min(len - i);
                let chunk = v[i..i + n].to_vec();
                let j = rng.below(len + 1);
                v.splice(j..j, chunk);
            }
            6 => {
                let other = &seeds[rng.below(seeds.len())].1;
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ if len >= 4 => {
                // An interesting little-endian integer somewhere.
                let i = rng.below(len - 3);
                let x: u32 = [0, 1, u32::MAX, 0x8000_0000, 4096, 100_000][rng.below(6)];
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v.truncate(1 << 16);
    v
}

fn run(target: &str, f: fn(&[u8]), input: &[u8], what: &str) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        panic!(
            "fuzz target {target} panicked on {what} ({} bytes): {:02x?}",
            input.len(),
            &input[..input.len().min(256)]
        );
    }
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (t, _) in TARGETS {
        assert!(
            root.join(format!("fuzz_targets/{t}.rs")).is_file()
                && manifest.contains(&format!("name = \"{t}\"")),
            "fuzz target {t} has no fuzz/fuzz_targets/{t}.rs or [[bin]] entry"
        );
    }
}

#[test]
fn corpora_and_mutations_do_not_panic() {
    for (i, (target, f)) in TARGETS.iter().enumerate() {
        let seeds = corpus(target);
        for (name, data) in &seeds {
            run(target, *f, data, name);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ i as u64);
        for n in 0..MUTATIONS {
            let base = &seeds[rng.below(seeds.len())].1;
            let m = mutate(&mut rng, base, &seeds);
            run(target, *f, &m, &format!("mutation {n}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_do_not_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for (_, f) in TARGETS {
            f(&data);
        }
    }
}
