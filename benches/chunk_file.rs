//! Criterion benchmarks of the chunk path of one open file
//! ([`sealfs::volume::content::SealedFile`]): what a FUSE READ or WRITE
//! request costs in the daemon after the request arrives. The backing file
//! lives in /dev/shm (memory) so that the numbers show the chunk path —
//! crypto, buffers, metadata entries — and not a disk.
//! Run: `cargo bench --bench chunk_file`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

use sealfs::crypto::SecretKey;
use sealfs::format::chunk::ChunkCipher;
use sealfs::format::layout::META_BLOCK;
use sealfs::volume::content::SealedFile;

fn open_scratch() -> (tempfile::TempDir, SealedFile) {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("scratch dir");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(base.path().join("f"))
        .expect("scratch file");
    file.set_len(META_BLOCK).expect("header block");
    let cipher = ChunkCipher::new(&SecretKey::generate().expect("key"), [9; 16]);
    (base, SealedFile::new(file, cipher, 0))
}

fn file_io(c: &mut Criterion) {
    const FILE: u64 = 16 << 20;
    let (_dir, mut f) = open_scratch();
    let block = vec![0x42u8; 1 << 20];
    for off in (0..FILE).step_by(block.len()) {
        f.write(off, &block).expect("fill");
    }
    let mut g = c.benchmark_group("file");
    for size in [4096usize, 128 << 10, 1 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        let data = vec![0x17u8; size];
        let mut pos = 0u64;
        g.bench_with_input(BenchmarkId::new("write", size), &size, |b, _| {
            b.iter(|| {
                f.write(pos, &data).expect("write");
                pos = (pos + size as u64) % FILE;
            })
        });
        let mut pos = 0u64;
        let mut out = Vec::new();
        g.bench_with_input(BenchmarkId::new("read", size), &size, |b, _| {
            b.iter(|| {
                // As the FUSE frontend reads: into a reused per-thread buffer.
                black_box(f.read_into(pos, size, &mut out).expect("read"));
                pos = (pos + size as u64) % FILE;
            })
        });
    }
    g.finish();
}

criterion_group!(benches, file_io);
criterion_main!(benches);
