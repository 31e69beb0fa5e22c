//! Criterion benchmarks of the chunk path of one open file
//! ([`sealfs::volume::content::SealedFile`]): what a FUSE READ or WRITE
//! request costs in the daemon after the request arrives. The backing file
//! lives in /dev/shm (memory) so that the numbers show the chunk path —
//! crypto, buffers, metadata entries and group states — and not a disk.
//! `file` is the sealed-group-state format of new volumes, `file-v1` the
//! first (last-chunk-flag) format.
//! Run: `cargo bench --bench chunk_file`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

use sealfs::crypto::SecretKey;
use sealfs::format::chunk::ContentFormat;
use sealfs::volume::content::SealedFile;

fn open_scratch(format: ContentFormat) -> (tempfile::TempDir, SealedFile) {
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
    let key = SecretKey::generate().expect("key");
    let f = SealedFile::create(file, &[0; 160], &key, [9; 16], format).expect("create");
    (base, f)
}

fn file_io(c: &mut Criterion) {
    for (name, format) in [
        ("file", ContentFormat::SealedGroupState),
        ("file-v1", ContentFormat::LastChunkFlag),
    ] {
        file_io_of(c, name, format);
    }
}

fn file_io_of(c: &mut Criterion, name: &str, format: ContentFormat) {
    const FILE: u64 = 16 << 20;
    let (_dir, mut f) = open_scratch(format);
    let block = vec![0x42u8; 1 << 20];
    for off in (0..FILE).step_by(block.len()) {
        f.write(off, &block).expect("fill");
    }
    let mut g = c.benchmark_group(name);
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
