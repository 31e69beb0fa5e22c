//! Criterion benchmarks of the chunk path of one open file
//! ([`sealfs::volume::content::SealedFile`]): what a FUSE READ or WRITE
//! request costs in the daemon after the request arrives. The backing file
//! lives in /dev/shm (memory) so that the numbers show the chunk path —
//! crypto, buffers, metadata entries and group states — and not a disk.
//! `file` is the sealed-group-state format of new volumes, `file-v1` the
//! first (last-chunk-flag) format. `small` compares the small-file path
//! with packed tails (`packed`, docs/FORMAT.md §4.7: the final chunk
//! committed in block 0) against sealed group states without them
//! (`unpacked`): a create and first write, an open and whole-file read, an
//! append inside the tail. `long-write` is what a 1 MiB WRITE holds the
//! file's lock for: sealing inside it (`sealed-under-lock`) against with
//! its whole chunks sealed before it (`presealed-under-lock`, see
//! `volume::content::preseal`), and that sealing alone (`preseal`).
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

fn scratch_dir() -> tempfile::TempDir {
    if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("scratch dir")
}

fn small_files(c: &mut Criterion) {
    let key = SecretKey::generate().expect("key");
    let mut g = c.benchmark_group("small");
    for (name, format) in [
        ("packed", ContentFormat::PackedTails),
        ("unpacked", ContentFormat::SealedGroupState),
    ] {
        let dir = scratch_dir();
        let path = dir.path().join("f");
        let fresh = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .expect("scratch file")
        };
        for size in [100usize, 3000, 10 << 10] {
            let data = vec![0x5au8; size];
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/create-write"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        let mut f = SealedFile::create(fresh(), &[0; 160], &key, [9; 16], format)
                            .expect("create");
                        f.write(0, &data).expect("write");
                    })
                },
            );
            let file = fresh();
            let mut f = SealedFile::create(
                file.try_clone().expect("clone"),
                &[0; 160],
                &key,
                [9; 16],
                format,
            )
            .expect("create");
            f.write(0, &data).expect("write");
            let mut out = Vec::new();
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/open-read"), size),
                &size,
                |b, _| {
                    b.iter(|| {
                        let f = SealedFile::open(
                            file.try_clone().expect("clone"),
                            &key,
                            [9; 16],
                            format,
                        )
                        .expect("open");
                        black_box(f.read_into(0, size, &mut out).expect("read"));
                    })
                },
            );
        }
        let tail = [0x33u8; 10];
        g.bench_function(
            BenchmarkId::new(format!("{name}/append-in-tail"), 10),
            |b| {
                let mut f =
                    SealedFile::create(fresh(), &[0; 160], &key, [9; 16], format).expect("create");
                b.iter(|| {
                    if f.size() >= 3000 {
                        f.set_len(0).expect("truncate");
                    }
                    f.write(f.size(), &tail).expect("append");
                })
            },
        );
    }
    g.finish();
}

fn long_writes(c: &mut Criterion) {
    const FILE: u64 = 16 << 20;
    const SIZE: usize = 1 << 20;
    let (_dir, mut f) = open_scratch(ContentFormat::SealedGroupState);
    let data = vec![0x61u8; SIZE];
    for off in (0..FILE).step_by(SIZE) {
        f.write(off, &data).expect("fill");
    }
    let sealer = f.write_sealer().expect("sealed group states");
    let mut g = c.benchmark_group("long-write");
    g.throughput(Throughput::Bytes(SIZE as u64));
    let mut pos = 0u64;
    g.bench_function("sealed-under-lock", |b| {
        b.iter(|| {
            f.write(pos, &data).expect("write");
            pos = (pos + SIZE as u64) % FILE;
        })
    });
    g.bench_function("presealed-under-lock", |b| {
        b.iter_batched(
            || {
                pos = (pos + SIZE as u64) % FILE;
                (pos, sealer.preseal(pos, &data).expect("preseal"))
            },
            |(at, mut pre)| {
                f.write_presealed(at, &data, pre.as_mut()).expect("write");
                pre
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.bench_function("preseal", |b| {
        b.iter(|| black_box(sealer.preseal(0, &data).expect("preseal")))
    });
    g.finish();
}

criterion_group!(benches, file_io, small_files, long_writes);
criterion_main!(benches);
