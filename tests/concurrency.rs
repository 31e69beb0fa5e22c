//! Concurrency, for bounded time, each test under a watchdog (a deadlock
//! fails the test, and the fixture still unmounts and kills the daemon):
//!
//! * readers and writers on one shared file (O_DIRECT, so every request
//!   reaches the daemon: a torn chunk or a lost update would be seen) and on
//!   one file per writer (buffered, through the writeback cache), with
//!   self-describing records, chunk-aligned and unaligned;
//! * rename storms of files and directories with concurrent readdir, stat
//!   and open+read (content checked whenever an open succeeds);
//! * fio with several jobs and verify=crc32c, plus jobs on a shared file
//!   checked by our own means.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const CHUNK: u64 = 4096;
/// How long each workload runs.
const RUN: Duration = Duration::from_secs(4);
/// A workload not done by then is deadlocked.
const WATCHDOG: Duration = Duration::from_secs(60);

/// Runs `work` on another thread; fails the test if it does not finish
/// within `limit` (the caller's fixture then unmounts on drop, and killing
/// the daemon releases any thread stuck in a FUSE request).
fn with_watchdog<T: Send + 'static>(
    fx: &Fixture,
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("workload".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = tx.send(r);
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!(
            "workload did not finish within {limit:?}: deadlock? daemon log:\n{}",
            fx.log()
        ),
    }
}

/// Joins worker threads, re-raising the first panic.
fn join_all(handles: Vec<thread::JoinHandle<()>>) {
    let mut first = None;
    for h in handles {
        if let Err(p) = h.join() {
            first.get_or_insert(p);
        }
    }
    if let Some(p) = first {
        std::panic::resume_unwind(p);
    }
}

// ------------------------------------------------------------ records

/// A record at a fixed place of a file: header (magic, index, generation,
/// length) then bytes derived from (index, generation), so a reader can
/// tell a whole record from a torn or misplaced one.
#[derive(Clone, Copy, Debug)]
struct Slot {
    off: u64,
    len: usize,
}

const MAGIC: &[u8; 4] = b"SREC";
const HDR: usize = 16;

fn record(index: u32, generation: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&index.to_le_bytes());
    v.extend_from_slice(&generation.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    let mut x = (u64::from(index) << 32 | u64::from(generation)) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes()[..(len - v.len()).min(8)]);
    }
    v
}

/// Checks what a reader saw at slot `index`: all zeros (never written) or
/// a whole record of that index. Returns the generation (0 = never written).
fn check_record(index: u32, slot: Slot, got: &[u8]) -> Result<u32, String> {
    if got.iter().all(|&b| b == 0) {
        return Ok(0);
    }
    if got.len() < HDR || &got[..4] != MAGIC {
        return Err(format!("record {index} at {}: bad magic", slot.off));
    }
    let idx = u32::from_le_bytes(got[4..8].try_into().unwrap());
    let generation = u32::from_le_bytes(got[8..12].try_into().unwrap());
    if idx != index {
        return Err(format!(
            "record {index} at {}: holds record {idx}",
            slot.off
        ));
    }
    let want = record(index, generation, slot.len);
    if got != want.as_slice() {
        let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
        return Err(format!(
            "record {index} (generation {generation}) at {}+{}: torn at byte {at} (chunk {})",
            slot.off,
            slot.len,
            (slot.off + at as u64) / CHUNK
        ));
    }
    Ok(generation)
}

/// Slots covering a file: chunk-aligned 4 KiB records, records straddling
/// chunk boundaries, and several small records sharing one chunk.
fn layout(rng: &mut Rng, bytes: u64) -> Vec<Slot> {
    let mut slots = Vec::new();
    let mut off = 0u64;
    while off + 9000 < bytes {
        match rng.below(3) {
            0 => {
                let a = off.div_ceil(CHUNK) * CHUNK;
                slots.push(Slot { off: a, len: 4096 });
                off = a + 4096;
            }
            1 => {
                let len = 1000 + rng.below(5000) as usize;
                slots.push(Slot { off, len });
                off += len as u64;
            }
            _ => {
                for _ in 0..4 {
                    let len = HDR + 50 + rng.below(400) as usize;
                    slots.push(Slot { off, len });
                    off += len as u64;
                }
            }
        }
    }
    slots
}

fn open_direct(p: &Path, write: bool) -> File {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .unwrap_or_else(|e| panic!("open O_DIRECT {}: {e}", p.display()))
}

/// Writers and readers on one shared file (O_DIRECT) and on one file per
/// writer (buffered). Readers of the shared file must never see a torn or
/// misplaced record; at the end (and after a remount) every record holds
/// its last written generation.
#[test]
fn readers_and_writers_see_whole_records() {
    let mut fx = Fixture::mounted();
    let shared = fx.p("shared");
    let size = 2 << 20;
    File::create(&shared).unwrap().set_len(size).unwrap();
    let mut rng = Rng::new(0x5eed);
    let slots = Arc::new(layout(&mut rng, size));
    const WRITERS: u32 = 3;
    let own: Vec<PathBuf> = (0..WRITERS).map(|w| fx.p(&format!("own{w}"))).collect();
    let own_slots: Arc<Vec<Vec<Slot>>> =
        Arc::new((0..WRITERS).map(|_| layout(&mut rng, 1 << 20)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));

    let (final_shared, final_own) = {
        let (slots, own_slots, own, stop, reads, writes, shared) = (
            slots.clone(),
            own_slots.clone(),
            own.clone(),
            stop.clone(),
            reads.clone(),
            writes.clone(),
            shared.clone(),
        );
        with_watchdog(&fx, WATCHDOG, move || {
            let mut handles = Vec::new();
            // Writers: each owns the shared slots i ≡ w (mod WRITERS), so
            // neighbours in one chunk belong to different writers, and all
            // the slots of its own file.
            let results = Arc::new(gathered::Results::default());
            for w in 0..WRITERS {
                let (slots, own_slots, stop, writes, shared, results) = (
                    slots.clone(),
                    own_slots.clone(),
                    stop.clone(),
                    writes.clone(),
                    shared.clone(),
                    results.clone(),
                );
                let mine = own[w as usize].clone();
                handles.push(thread::spawn(move || {
                    let mut rng = Rng::new(100 + u64::from(w));
                    let sf = open_direct(&shared, true);
                    let of = File::options()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&mine)
                        .unwrap();
                    let mut gens = vec![0u32; slots.len()];
                    let mut own_gens = vec![0u32; own_slots[w as usize].len()];
                    let my: Vec<usize> = (0..slots.len())
                        .filter(|i| *i as u32 % WRITERS == w)
                        .collect();
                    while !stop.load(Ordering::Relaxed) {
                        let i = my[rng.below(my.len() as u64) as usize];
                        gens[i] += 1;
                        let s = slots[i];
                        sf.write_all_at(&record(i as u32, gens[i], s.len), s.off)
                            .unwrap_or_else(|e| panic!("shared write {i}: {e}"));
                        let os = &own_slots[w as usize];
                        let j = rng.below(os.len() as u64) as usize;
                        own_gens[j] += 1;
                        of.write_all_at(&record(j as u32, own_gens[j], os[j].len), os[j].off)
                            .unwrap_or_else(|e| panic!("own write {j}: {e}"));
                        writes.fetch_add(2, Ordering::Relaxed);
                    }
                    of.sync_all().unwrap();
                    results.put(w, gens, own_gens);
                }));
            }
            // Readers of the shared file (O_DIRECT: what the daemon serves).
            for r in 0..2u64 {
                let (slots, stop, reads, shared) =
                    (slots.clone(), stop.clone(), reads.clone(), shared.clone());
                handles.push(thread::spawn(move || {
                    let mut rng = Rng::new(200 + r);
                    let f = open_direct(&shared, false);
                    while !stop.load(Ordering::Relaxed) {
                        // A single record, or a run of records in one request.
                        let i = rng.below(slots.len() as u64) as usize;
                        let n = (1 + rng.below(8) as usize).min(slots.len() - i);
                        let (a, z) = (
                            slots[i].off,
                            slots[i + n - 1].off + slots[i + n - 1].len as u64,
                        );
                        let mut buf = vec![0u8; (z - a) as usize];
                        f.read_exact_at(&mut buf, a)
                            .unwrap_or_else(|e| panic!("shared read at {a}: {e}"));
                        for (k, s) in slots[i..i + n].iter().enumerate() {
                            let b = &buf[(s.off - a) as usize..(s.off - a) as usize + s.len];
                            if let Err(e) = check_record((i + k) as u32, *s, b) {
                                panic!("reader {r}: {e}");
                            }
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            // A buffered reader of the writers' own files: a record being
            // rewritten may be caught mid-copy by the page cache (Linux does
            // not make buffered read/write atomic), so it re-reads before
            // judging; a record that stays bad is corruption.
            {
                let (own_slots, stop, reads, own) =
                    (own_slots.clone(), stop.clone(), reads.clone(), own.clone());
                handles.push(thread::spawn(move || {
                    let mut rng = Rng::new(300);
                    while !stop.load(Ordering::Relaxed) {
                        let w = rng.below(u64::from(WRITERS)) as usize;
                        let Ok(f) = File::open(&own[w]) else { continue };
                        let os = &own_slots[w];
                        let j = rng.below(os.len() as u64) as usize;
                        let mut tries = 0;
                        loop {
                            let mut buf = vec![0u8; os[j].len];
                            let got = match f.read_at(&mut buf, os[j].off) {
                                Ok(n) => n,
                                Err(e) => panic!("own{w} read: {e}"),
                            };
                            // Past the end of a growing file: not written yet.
                            if got < buf.len() && buf[..got].iter().all(|&b| b == 0) {
                                break;
                            }
                            match check_record(j as u32, os[j], &buf) {
                                Ok(_) => break,
                                Err(e) if tries >= 20 => panic!("own{w}: {e} (persistently)"),
                                Err(_) => {
                                    tries += 1;
                                    thread::sleep(Duration::from_millis(5));
                                }
                            }
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            thread::sleep(RUN);
            stop.store(true, Ordering::Relaxed);
            join_all(handles);
            results.take()
        })
    };
    eprintln!(
        "{} writes, {} reads in {RUN:?}",
        writes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed)
    );

    let verify = |fx: &Fixture, what: &str| {
        let data = fs::read(&shared).unwrap();
        for (i, s) in slots.iter().enumerate() {
            let b = &data[s.off as usize..s.off as usize + s.len];
            let g = check_record(i as u32, *s, b).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                g, final_shared[i],
                "{what}: shared record {i} lost an update"
            );
        }
        for w in 0..WRITERS as usize {
            let data = fs::read(fx.p(&format!("own{w}"))).unwrap();
            for (j, s) in own_slots[w].iter().enumerate() {
                let end = (s.off as usize + s.len).min(data.len());
                let mut b = data[(s.off as usize).min(end)..end].to_vec();
                b.resize(s.len, 0);
                let g = check_record(j as u32, *s, &b)
                    .unwrap_or_else(|e| panic!("{what}: own{w}: {e}"));
                assert_eq!(
                    g, final_own[w][j],
                    "{what}: own{w} record {j} lost an update"
                );
            }
        }
    };
    verify(&fx, "at the end");
    fx.remount();
    verify(&fx, "after a remount");
}

/// Final generations per writer, gathered from the writer threads.
mod gathered {
    use std::sync::Mutex;

    type PerWriter = Vec<(u32, Vec<u32>, Vec<u32>)>;

    #[derive(Default)]
    pub struct Results(Mutex<PerWriter>);

    impl Results {
        pub fn put(&self, w: u32, shared: Vec<u32>, own: Vec<u32>) {
            self.0.lock().unwrap().push((w, shared, own));
        }

        /// (shared generations merged over writers, own generations per writer).
        pub fn take(&self) -> (Vec<u32>, Vec<Vec<u32>>) {
            let mut v = std::mem::take(&mut *self.0.lock().unwrap());
            v.sort_by_key(|(w, _, _)| *w);
            let n = v.first().map(|(_, s, _)| s.len()).unwrap_or(0);
            let mut shared = vec![0u32; n];
            for (_, s, _) in &v {
                for (i, g) in s.iter().enumerate() {
                    shared[i] = shared[i].max(*g);
                }
            }
            (shared, v.into_iter().map(|(_, _, o)| o).collect())
        }
    }
}

// ------------------------------------------------------------ renames

fn content_of(id: u32) -> Vec<u8> {
    let len = 100 + (id as usize * 977) % 9000;
    record(id, 1, len.max(HDR))
}

/// Renames of files between directories and of whole directories back and
/// forth, while other threads list, stat, and open and read, and one
/// writes to files it holds open while they move. An open that
/// succeeds must read the file's exact content; the only error allowed is
/// ENOENT (the name moved away). At the end every file exists exactly once
/// with its content, also after a remount.
#[test]
fn rename_storm_with_concurrent_readers() {
    let mut fx = Fixture::mounted();
    const DIRS: u32 = 4;
    const FILES: u32 = 40;
    let root = fx.mnt.clone();
    for d in 0..DIRS {
        fs::create_dir_all(root.join(format!("d{d}/sub"))).unwrap();
    }
    // Where each file is: (dir index, in sub?).
    let mut place: BTreeMap<u32, (u32, bool)> = BTreeMap::new();
    for id in 0..FILES {
        let (d, sub) = (id % DIRS, id % 3 == 0);
        let p = file_path(&root, d, sub, id);
        fs::write(&p, content_of(id)).unwrap();
        place.insert(id, (d, sub));
    }
    // Files written through fds held open while they are renamed (ids from
    // WRITTEN_BASE, never opened by the readers above).
    for id in WRITTEN_BASE..WRITTEN_BASE + WRITTEN {
        File::create(file_path(&root, 0, false, id)).unwrap();
        place.insert(id, (0, false));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);

    let (place, written) = {
        let (root, stop, counts) = (root.clone(), stop.clone(), counts.clone());
        with_watchdog(&fx, WATCHDOG, move || {
            let mut handles = Vec::new();
            // Readers: readdir, stat, open+read over every possible path.
            for r in 0..3u64 {
                let (root, stop, counts) = (root.clone(), stop.clone(), counts.clone());
                handles.push(thread::spawn(move || {
                    let mut rng = Rng::new(400 + r);
                    while !stop.load(Ordering::Relaxed) {
                        let d = rng.below(u64::from(DIRS)) as u32;
                        let sub = rng.below(2) == 0;
                        match r {
                            0 => {
                                let dir = dir_path(&root, d, sub);
                                match fs::read_dir(&dir) {
                                    Ok(rd) => {
                                        for e in rd {
                                            match e {
                                                Ok(e) => {
                                                    let _ = e.file_type();
                                                }
                                                Err(e) => allowed(&e, "readdir entry"),
                                            }
                                        }
                                    }
                                    Err(e) => allowed(&e, "opendir"),
                                }
                            }
                            _ => {
                                let id = rng.below(u64::from(FILES)) as u32;
                                let p = file_path(&root, d, sub, id);
                                if r == 1 {
                                    if let Err(e) = fs::symlink_metadata(&p) {
                                        allowed(&e, "stat");
                                    }
                                } else {
                                    match File::open(&p) {
                                        Ok(mut f) => {
                                            let mut v = Vec::new();
                                            f.read_to_end(&mut v).unwrap_or_else(|e| {
                                                panic!("read of open file {id}: {e}")
                                            });
                                            assert!(
                                                v == content_of(id),
                                                "file {id} read {} bytes of wrong content",
                                                v.len()
                                            );
                                        }
                                        Err(e) => allowed(&e, "open"),
                                    }
                                }
                            }
                        }
                        counts[r as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            // The writer: keeps its files open across their renames and
            // rewrites records in them (chunk-aligned and not); its model of
            // their content is checked at the end.
            let writer = {
                let stop = stop.clone();
                let fds: Vec<File> = (WRITTEN_BASE..WRITTEN_BASE + WRITTEN)
                    .map(|id| {
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(file_path(&root, 0, false, id))
                            .unwrap()
                    })
                    .collect();
                thread::spawn(move || {
                    let mut rng = Rng::new(600);
                    let mut models = vec![Vec::<u8>::new(); fds.len()];
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let k = rng.below(fds.len() as u64) as usize;
                        let off = if rng.below(2) == 0 {
                            rng.below(64) * CHUNK
                        } else {
                            rng.below(64 * CHUNK)
                        } as usize;
                        n += 1;
                        let rec = record(n, 1, 16 + rng.below(6000) as usize);
                        fds[k]
                            .write_all_at(&rec, off as u64)
                            .unwrap_or_else(|e| panic!("write to a renamed open file: {e}"));
                        let m = &mut models[k];
                        if m.len() < off + rec.len() {
                            m.resize(off + rec.len(), 0);
                        }
                        m[off..off + rec.len()].copy_from_slice(&rec);
                        if n % 50 == 0 {
                            fds[k].sync_data().unwrap();
                        }
                    }
                    models
                })
            };
            // The renamer: files between directories and into/out of the
            // subdirectories, and subdirectories between parents.
            let mut rng = Rng::new(500);
            let start = Instant::now();
            let mut renames = 0u64;
            // Which parent each "sub" currently sits in: sub of d lives in d
            // unless moved; moving swaps subs between two parents via a
            // temporary name.
            while start.elapsed() < RUN {
                if rng.below(5) == 0 {
                    // Swap the subdirectories of two parents (three renames).
                    let a = rng.below(u64::from(DIRS)) as u32;
                    let b = (a + 1 + rng.below(u64::from(DIRS) - 1) as u32) % DIRS;
                    let (sa, sb) = (dir_path(&root, a, true), dir_path(&root, b, true));
                    let tmp = root.join(format!("d{a}/swap"));
                    fs::rename(&sa, &tmp).unwrap();
                    fs::rename(&sb, &sa).unwrap();
                    fs::rename(&tmp, &sb).unwrap();
                    for (_, (d, sub)) in place.iter_mut() {
                        if *sub && *d == a {
                            *d = b;
                        } else if *sub && *d == b {
                            *d = a;
                        }
                    }
                    renames += 3;
                } else {
                    let id = if rng.below(4) == 0 {
                        WRITTEN_BASE + rng.below(u64::from(WRITTEN)) as u32
                    } else {
                        rng.below(u64::from(FILES)) as u32
                    };
                    let (d, sub) = place[&id];
                    let (nd, nsub) = (rng.below(u64::from(DIRS)) as u32, rng.below(2) == 0);
                    fs::rename(file_path(&root, d, sub, id), file_path(&root, nd, nsub, id))
                        .unwrap_or_else(|e| panic!("rename file {id}: {e}"));
                    place.insert(id, (nd, nsub));
                    renames += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
            join_all(handles);
            let written = match writer.join() {
                Ok(m) => m,
                Err(p) => std::panic::resume_unwind(p),
            };
            eprintln!("{renames} renames");
            (place, written)
        })
    };
    eprintln!(
        "readdirs {}, stats {}, opens {}",
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
        counts[2].load(Ordering::Relaxed)
    );
    let check = |fx: &Fixture, what: &str| {
        let mut seen = 0;
        for (id, (d, sub)) in &place {
            let p = file_path(&fx.mnt, *d, *sub, *id);
            let v = fs::read(&p).unwrap_or_else(|e| panic!("{what}: file {id}: {e}"));
            let want = if *id >= WRITTEN_BASE {
                written[(*id - WRITTEN_BASE) as usize].clone()
            } else {
                content_of(*id)
            };
            assert!(
                v == want,
                "{what}: file {id}: {} bytes, want {} (first difference at {:?})",
                v.len(),
                want.len(),
                v.iter().zip(&want).position(|(a, b)| a != b)
            );
            seen += 1;
        }
        let mut listed = 0;
        walk(&fx.mnt, &mut |_, md| {
            if md.is_file() {
                listed += 1;
            }
        });
        assert_eq!(listed, seen, "{what}: files listed");
    };
    check(&fx, "at the end");
    fx.remount();
    check(&fx, "after a remount");
}

/// Ids of the files the writer keeps open while they are renamed.
const WRITTEN_BASE: u32 = 1000;
const WRITTEN: u32 = 4;

fn dir_path(root: &Path, d: u32, sub: bool) -> PathBuf {
    let p = root.join(format!("d{d}"));
    if sub {
        p.join("sub")
    } else {
        p
    }
}

fn file_path(root: &Path, d: u32, sub: bool, id: u32) -> PathBuf {
    dir_path(root, d, sub).join(format!("f{id}"))
}

#[track_caller]
fn allowed(e: &std::io::Error, what: &str) {
    assert!(
        e.kind() == ErrorKind::NotFound,
        "{what} during renames failed with {e}; only ENOENT is expected"
    );
}

// ------------------------------------------------------------ fio

fn fio_available() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// fio: four jobs of random read/write, each on its own file, verified with
/// crc32c; and two jobs writing one shared file at once (fio cannot verify
/// that), checked by our own means: the file reads end to end without an
/// error and is byte-identical after a remount.
#[test]
fn fio_parallel_jobs_verify() {
    if !fio_available() {
        if std::env::var_os("CI").is_some() {
            panic!("fio is not installed (contrib/setup.sh installs it)");
        }
        eprintln!("SKIP: fio not installed (contrib/setup.sh installs it)");
        return;
    }
    let mut fx = Fixture::mounted();
    let dir = fx.mnt.clone();
    let out = with_watchdog(&fx, WATCHDOG, move || {
        Command::new("fio")
            .arg(format!("--directory={}", dir.display()))
            .args([
                "--output-format=json",
                "--verify_state_save=0",
                "--name=own",
                "--numjobs=4",
                "--size=4m",
                "--rw=randrw",
                "--bsrange=1k-64k",
                "--ioengine=psync",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--name=shared",
                "--filename=shared.dat",
                "--numjobs=2",
                "--size=8m",
                "--rw=randrw",
                "--bs=4k",
                "--bsrange=512-32k",
                "--ioengine=psync",
                "--direct=1",
                "--verify=0",
                "--time_based",
                "--runtime=3",
            ])
            .output()
            .expect("run fio")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').unwrap_or(0)..]).expect("fio json");
    let jobs = v["jobs"].as_array().expect("fio jobs");
    assert_eq!(jobs.len(), 6, "fio ran {} jobs", jobs.len());
    for job in jobs {
        assert_eq!(job["error"], 0, "fio job reported an error: {job}");
        assert!(
            job["write"]["io_bytes"].as_u64().unwrap_or(0) > 0,
            "a job wrote nothing"
        );
    }
    let shared = fx.p("shared.dat");
    let before = fs::read(&shared).expect("the shared file reads end to end");
    assert_eq!(before.len(), 8 << 20);
    fx.remount();
    let after = fs::read(&shared).unwrap();
    assert!(before == after, "shared file changed over a remount");
}

/// The watchdog itself: a workload stuck in a request to a daemon that no
/// longer answers (SIGSTOP) fails within the limit, and the fixture still
/// detaches the mount and reaps the daemon.
#[test]
fn watchdog_fails_a_hung_workload_and_still_cleans_up() {
    let fx = Fixture::mounted();
    let mnt = fx.mnt.clone();
    let cipher = fx.cipher.clone();
    let pid = fx.mounted.as_ref().unwrap().pid().unwrap() as i32;
    // SAFETY: kill(2) of the daemon this fixture started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // Wait until every thread of the daemon is stopped.
    let stopped = || {
        fs::read_dir(format!("/proc/{pid}/task"))
            .map(|rd| {
                rd.flatten().all(|t| {
                    fs::read_to_string(t.path().join("stat"))
                        .map(|st| {
                            st.rsplit_once(')')
                                .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
                        })
                        .unwrap_or(true)
                })
            })
            .unwrap_or(false)
    };
    let t0 = Instant::now();
    while !stopped() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the daemon did not stop"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let target = fx.p("never");
    let start = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_watchdog(&fx, Duration::from_secs(2), move || {
            let _ = fs::write(target, b"x");
        })
    }));
    let err = r.expect_err("a hung workload passed the watchdog");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("did not finish within"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(10));
    // A stopped daemon never exits by itself: the fixture's drop would kill
    // it after its own timeout (10 s). Kill it now, as that would, and the
    // drop still has the dead mount to detach.
    // SAFETY: kill(2) of the daemon this fixture started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(fx)));
    assert!(!is_mounted(&mnt), "the hung mount is still there");
    assert!(
        sealfs_pids_mentioning(&cipher).is_empty(),
        "the stopped daemon is still alive"
    );
}
