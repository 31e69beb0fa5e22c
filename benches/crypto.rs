//! Criterion benchmarks of the pure paths: chunk seal/open, key wrapping,
//! name encryption and chunk arithmetic. Run: `cargo bench --bench crypto`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

use sealfs::crypto::SecretKey;
use sealfs::format::chunk::{ChunkCipher, ContentFormat};
use sealfs::format::header::{EncryptionContext, RecordKind, SealedRecord};
use sealfs::format::layout::{ciphertext_size, group_runs, plaintext_size};
use sealfs::format::names::NameCipher;

fn chunks(c: &mut Criterion) {
    let cipher = ChunkCipher::new(
        &SecretKey::generate().unwrap(),
        [7; 16],
        ContentFormat::SealedGroupState,
    );
    let mut g = c.benchmark_group("chunk");
    for size in [4096usize, 65536] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0x5au8; size];
        g.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            b.iter(|| {
                for (i, c) in buf.chunks_mut(4096).enumerate() {
                    black_box(cipher.seal(i as u64, false, c).unwrap());
                }
            })
        });
        let mut sealed = vec![0x5au8; size];
        let entries: Vec<_> = sealed
            .chunks_mut(4096)
            .enumerate()
            .map(|(i, c)| cipher.seal(i as u64, false, c).unwrap())
            .collect();
        g.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter(|| {
                let mut work = sealed.clone();
                for (i, c) in work.chunks_mut(4096).enumerate() {
                    black_box(cipher.open(i as u64, false, c, &entries[i]).unwrap());
                }
            })
        });
    }
    g.finish();
}

fn headers(c: &mut Criterion) {
    let vol = [1u8; 16];
    let master = SecretKey::generate().unwrap();
    let w = master.derive(&vol, RecordKind::File.wrap_label()).cipher();
    let dk = SecretKey::generate().unwrap();
    let ctx = EncryptionContext {
        parent_dir_id: [2; 16],
        name: b"some-file-name.txt",
    };
    c.bench_function("header/wrap_data_key", |b| {
        b.iter(|| {
            black_box(
                SealedRecord::create(RecordKind::File, &vol, [3; 16], &dk, 1, &w, &ctx).unwrap(),
            )
        })
    });
    let rec = SealedRecord::create(RecordKind::File, &vol, [3; 16], &dk, 1, &w, &ctx).unwrap();
    let bytes = rec.encode();
    c.bench_function("header/decode_unwrap_data_key", |b| {
        b.iter(|| {
            let r = SealedRecord::decode(RecordKind::File, &bytes).unwrap();
            black_box(r.open(&vol, &ctx, &|_| Some(w.clone())).unwrap())
        })
    });
    c.bench_function("kdf/hkdf_derive", |b| {
        b.iter(|| black_box(master.derive(&vol, b"label")))
    });
}

fn names(c: &mut Criterion) {
    let nc = NameCipher::new(&SecretKey::generate().unwrap(), [4; 16]);
    let enc = nc.encrypt_name(b"a-typical-file-name.rs").unwrap();
    c.bench_function("names/encrypt", |b| {
        b.iter(|| black_box(nc.encrypt_name(b"a-typical-file-name.rs").unwrap()))
    });
    c.bench_function("names/decrypt", |b| {
        b.iter(|| black_box(nc.decrypt_name(&enc.entry).unwrap()))
    });
}

fn layout(c: &mut Criterion) {
    c.bench_function("layout/size_round_trip", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for p in (0..1_000_000u64).step_by(4099) {
                acc = acc.wrapping_add(plaintext_size(ciphertext_size(black_box(p))).unwrap());
            }
            acc
        })
    });
    c.bench_function("layout/group_runs_1MiB", |b| {
        b.iter(|| group_runs(black_box(100), black_box(355)).count())
    });
}

criterion_group!(benches, chunks, headers, names, layout);
criterion_main!(benches);
