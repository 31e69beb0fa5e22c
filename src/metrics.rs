//! Counters of a running daemon, rendered in the Prometheus text exposition
//! format (version 0.0.4) for `sealfs ctl metrics`.
//!
//! One process-wide [`METRICS`] (a mount daemon serves one volume). Every
//! counter is a relaxed atomic, and each group sits on its own cache line,
//! so recording costs a few uncontended `fetch_add`s on the request path:
//! no lock, no allocation. The latency histograms have fixed buckets.
//! Only key uses of versions above [`KEY_VERSION_SLOTS`] share one overflow
//! counter (a volume would need decades of daily rotation to get there).
//!
//! Owns: the metric names, their labels and the rendering.
//! Must never: record names, paths, contents or keys (labels are fixed
//! vocabularies and key version numbers).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// The operations counted, by the FUSE request that carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
#[allow(missing_docs)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Open,
    Read,
    Write,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Create,
    Statfs,
    Fallocate,
    Link,
    Getxattr,
    Setxattr,
}

impl Op {
    /// Every operation, in label order.
    pub const ALL: [Op; 23] = [
        Op::Lookup,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Create,
        Op::Statfs,
        Op::Fallocate,
        Op::Link,
        Op::Getxattr,
        Op::Setxattr,
    ];

    /// The `op` label value.
    pub fn label(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Create => "create",
            Op::Statfs => "statfs",
            Op::Fallocate => "fallocate",
            Op::Link => "link",
            Op::Getxattr => "getxattr",
            Op::Setxattr => "setxattr",
        }
    }
}

const OPS: usize = Op::ALL.len();

/// Why an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Denial {
    /// File I/O while the key is disabled (`sealfs ctl disable`).
    KeyDisabled,
    /// No live grant covers the request (grants).
    Grant,
    /// A control-socket peer that is neither the mount owner nor root.
    ControlPeer,
    /// A key's policy does not allow the use or administration asked for.
    KeyPolicy,
}

impl Denial {
    const ALL: [Denial; 4] = [
        Denial::KeyDisabled,
        Denial::Grant,
        Denial::ControlPeer,
        Denial::KeyPolicy,
    ];

    fn label(self) -> &'static str {
        match self {
            Denial::KeyDisabled => "key_disabled",
            Denial::Grant => "grant",
            Denial::ControlPeer => "control_peer",
            Denial::KeyPolicy => "key_policy",
        }
    }
}

/// What a master key version was used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum KeyUse {
    /// A data key (or directory key) wrapped: a new file or directory, a
    /// re-bind on rename, a rewrap.
    Wrap,
    /// A data key (or directory key) unwrapped: an open, a directory load.
    Unwrap,
}

/// Key versions with their own counters (1..=this); higher ones share one.
pub const KEY_VERSION_SLOTS: usize = 256;

/// Upper bounds of the latency buckets, in microseconds (`+Inf` follows).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000,
];

const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// A fixed-bucket latency histogram (non-cumulative counts; cumulated when
/// rendered).
#[repr(align(64))]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation of `ns` nanoseconds.
    pub fn observe_ns(&self, ns: u64) {
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| ns <= b * 1000)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, op: &str) {
        let mut cum = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cum += b.load(Relaxed);
            let le = match LATENCY_BUCKETS_US.get(i) {
                Some(us) => format_seconds(*us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{op=\"{op}\",le=\"{le}\"}} {cum}");
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{op=\"{op}\"}} {}", format_seconds(sum));
        let _ = writeln!(out, "{name}_count{{op=\"{op}\"}} {cum}");
    }
}

fn format_seconds(s: f64) -> String {
    // Shortest form that round-trips ("1e-05" is valid too, but keep it plain).
    let t = format!("{s:.9}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t.is_empty() {
        "0".into()
    } else {
        t.to_string()
    }
}

#[repr(align(64))]
struct Padded<T>(T);

/// Every counter of the process. See the [module docs](self).
pub struct Metrics {
    ops: Padded<[AtomicU64; OPS]>,
    read_bytes: Padded<AtomicU64>,
    write_bytes: Padded<AtomicU64>,
    read_latency: Histogram,
    write_latency: Histogram,
    integrity_failures: AtomicU64,
    denied: [AtomicU64; 4],
    open_files: AtomicI64,
    open_dirs: AtomicI64,
    key_uses: [[AtomicU64; KEY_VERSION_SLOTS + 1]; 2],
    /// Free bytes in CIPHERDIR at the last check, the ENOSPC margin (0:
    /// not checked yet), and whether new opens are write-through.
    space_free: AtomicU64,
    space_margin: AtomicU64,
    write_through: AtomicBool,
}

/// The process-wide counters.
pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    const fn new() -> Self {
        Metrics {
            ops: Padded([const { AtomicU64::new(0) }; OPS]),
            read_bytes: Padded(AtomicU64::new(0)),
            write_bytes: Padded(AtomicU64::new(0)),
            read_latency: Histogram::new(),
            write_latency: Histogram::new(),
            integrity_failures: AtomicU64::new(0),
            denied: [const { AtomicU64::new(0) }; 4],
            open_files: AtomicI64::new(0),
            open_dirs: AtomicI64::new(0),
            key_uses: [const { [const { AtomicU64::new(0) }; KEY_VERSION_SLOTS + 1] }; 2],
            space_free: AtomicU64::new(0),
            space_margin: AtomicU64::new(0),
            write_through: AtomicBool::new(false),
        }
    }

    fn key_use(&self, what: KeyUse, version: u32) {
        let i = (version as usize)
            .checked_sub(1)
            .map_or(KEY_VERSION_SLOTS, |i| i.min(KEY_VERSION_SLOTS));
        self.key_uses[what as usize][i].fetch_add(1, Relaxed);
    }

    /// The last free-space check: (free bytes in CIPHERDIR, the ENOSPC
    /// margin, whether new opens are write-through); None before the first.
    pub fn space(&self) -> Option<(u64, u64, bool)> {
        let margin = self.space_margin.load(Relaxed);
        (margin != 0 || self.space_free.load(Relaxed) != 0).then(|| {
            (
                self.space_free.load(Relaxed),
                margin,
                self.write_through.load(Relaxed),
            )
        })
    }

    /// How many `op` requests were counted so far.
    pub fn ops(&self, op: Op) -> u64 {
        self.ops.0[op as usize].load(Relaxed)
    }

    /// Renders everything in the Prometheus text format. `extra` is
    /// appended as is (the daemon's gauges that live elsewhere).
    pub fn render(&self, extra: &str) -> String {
        let mut o = String::with_capacity(8192);
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "sealfs_operations_total",
            "counter",
            "Filesystem requests served, by operation.",
        );
        for op in Op::ALL {
            let _ = writeln!(
                o,
                "sealfs_operations_total{{op=\"{}\"}} {}",
                op.label(),
                self.ops(op)
            );
        }
        head(
            &mut o,
            "sealfs_bytes_total",
            "counter",
            "Plaintext bytes read and written through the mount.",
        );
        let _ = writeln!(
            o,
            "sealfs_bytes_total{{op=\"read\"}} {}",
            self.read_bytes.0.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "sealfs_bytes_total{{op=\"write\"}} {}",
            self.write_bytes.0.load(Relaxed)
        );
        head(
            &mut o,
            "sealfs_request_duration_seconds",
            "histogram",
            "Time to serve a read or write request (decryption or encryption included).",
        );
        self.read_latency
            .render(&mut o, "sealfs_request_duration_seconds", "read");
        self.write_latency
            .render(&mut o, "sealfs_request_duration_seconds", "write");
        head(
            &mut o,
            "sealfs_integrity_failures_total",
            "counter",
            "Requests that failed because ciphertext did not authenticate (tampered, moved or truncated data).",
        );
        let _ = writeln!(
            o,
            "sealfs_integrity_failures_total {}",
            self.integrity_failures.load(Relaxed)
        );
        head(
            &mut o,
            "sealfs_denied_total",
            "counter",
            "Refused attempts, by reason.",
        );
        for d in Denial::ALL {
            let _ = writeln!(
                o,
                "sealfs_denied_total{{reason=\"{}\"}} {}",
                d.label(),
                self.denied[d as usize].load(Relaxed)
            );
        }
        head(
            &mut o,
            "sealfs_key_uses_total",
            "counter",
            "Data and directory keys wrapped or unwrapped, by master key version (version=\"overflow\" sums versions above 256).",
        );
        for (u, name) in [(KeyUse::Wrap, "wrap"), (KeyUse::Unwrap, "unwrap")] {
            for (i, c) in self.key_uses[u as usize].iter().enumerate() {
                let n = c.load(Relaxed);
                if n == 0 {
                    continue;
                }
                let v = if i == KEY_VERSION_SLOTS {
                    "overflow".to_string()
                } else {
                    (i + 1).to_string()
                };
                let _ = writeln!(
                    o,
                    "sealfs_key_uses_total{{use=\"{name}\",version=\"{v}\"}} {n}"
                );
            }
        }
        head(
            &mut o,
            "sealfs_open_files",
            "gauge",
            "File handles open through the mount.",
        );
        let _ = writeln!(
            o,
            "sealfs_open_files {}",
            self.open_files.load(Relaxed).max(0)
        );
        head(
            &mut o,
            "sealfs_open_directories",
            "gauge",
            "Directory handles open through the mount.",
        );
        let _ = writeln!(
            o,
            "sealfs_open_directories {}",
            self.open_dirs.load(Relaxed).max(0)
        );
        if let Some((free, margin, through)) = self.space() {
            head(
                &mut o,
                "sealfs_cipherdir_free_bytes",
                "gauge",
                "Free bytes in CIPHERDIR at the last check.",
            );
            let _ = writeln!(o, "sealfs_cipherdir_free_bytes {free}");
            head(
                &mut o,
                "sealfs_enospc_margin_bytes",
                "gauge",
                "Below this much free space new opens are write-through.",
            );
            let _ = writeln!(o, "sealfs_enospc_margin_bytes {margin}");
            head(
                &mut o,
                "sealfs_write_through",
                "gauge",
                "1 while new opens are write-through (free space below the margin).",
            );
            let _ = writeln!(o, "sealfs_write_through {}", through as u8);
        }
        o.push_str(extra);
        o
    }
}

/// When the mount started serving (for `sealfs_uptime_seconds`).
static STARTED: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();

/// Marks the mount's start (the daemon calls it once it is mounted).
pub fn mark_start() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let _ = STARTED.set((std::time::Instant::now(), now));
}

impl Metrics {
    /// [`Metrics::render`] for one volume: build information, the start
    /// time and uptime first, and a `volume` label (the volume id) on
    /// every series, so two mounts feeding one collector (node_exporter's
    /// textfile directory) never give duplicate series.
    pub fn render_for(&self, extra: &str, volume_id: &str) -> String {
        use std::fmt::Write as _;
        let mut head = String::new();
        let _ = writeln!(
            head,
            "# HELP sealfs_build_info The sealfs build serving this mount (always 1)."
        );
        let _ = writeln!(head, "# TYPE sealfs_build_info gauge");
        let _ = writeln!(
            head,
            "sealfs_build_info{{version=\"{}\",rustc_target_os=\"{}\",rustc_target_arch=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        if let Some((at, epoch)) = STARTED.get() {
            let _ = writeln!(
                head,
                "# HELP sealfs_start_time_seconds When the mount started, in seconds since the epoch."
            );
            let _ = writeln!(head, "# TYPE sealfs_start_time_seconds gauge");
            let _ = writeln!(head, "sealfs_start_time_seconds {epoch}");
            let _ = writeln!(
                head,
                "# HELP sealfs_uptime_seconds How long the mount has served."
            );
            let _ = writeln!(head, "# TYPE sealfs_uptime_seconds gauge");
            let _ = writeln!(head, "sealfs_uptime_seconds {}", at.elapsed().as_secs());
        }
        head.push_str(&self.render(extra));
        label_every_series(&head, "volume", volume_id)
    }
}

/// Adds `name="value"` as the first label of every sample line of a
/// Prometheus text exposition (comments untouched).
pub fn label_every_series(text: &str, name: &str, value: &str) -> String {
    let value = value.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            out.push_str(line);
        } else if let Some(i) = line.find('{') {
            let rest = &line[i + 1..];
            let sep = if rest.starts_with('}') { "" } else { "," };
            out.push_str(&line[..=i]);
            out.push_str(&format!("{name}=\"{value}\"{sep}"));
            out.push_str(rest);
        } else if let Some((series, v)) = line.split_once(' ') {
            out.push_str(&format!("{series}{{{name}=\"{value}\"}} {v}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Counts one `op` request (for a request without a timed body).
#[inline]
pub fn op(op: Op) {
    METRICS.ops.0[op as usize].fetch_add(1, Relaxed);
}

/// Counts a read or write request and times it until dropped.
#[must_use = "the request is timed until the guard is dropped"]
pub struct Timed {
    write: bool,
    start: Instant,
}

impl Drop for Timed {
    fn drop(&mut self) {
        let ns = self.start.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let h = if self.write {
            &METRICS.write_latency
        } else {
            &METRICS.read_latency
        };
        h.observe_ns(ns);
    }
}

/// Counts a read request and times it until the guard is dropped.
#[inline]
pub fn timed_read() -> Timed {
    op(Op::Read);
    Timed {
        write: false,
        start: Instant::now(),
    }
}

/// Counts a write request and times it until the guard is dropped.
#[inline]
pub fn timed_write() -> Timed {
    op(Op::Write);
    Timed {
        write: true,
        start: Instant::now(),
    }
}

/// Adds plaintext bytes returned by a read.
#[inline]
pub fn read_bytes(n: usize) {
    METRICS.read_bytes.0.fetch_add(n as u64, Relaxed);
}

/// Publishes a free-space check (see [`crate::fs::SpaceGuard`]).
pub fn space(free: u64, margin: u64, write_through: bool) {
    METRICS.space_free.store(free, Relaxed);
    METRICS.space_margin.store(margin, Relaxed);
    METRICS.write_through.store(write_through, Relaxed);
}

/// Adds plaintext bytes accepted by a write.
#[inline]
pub fn write_bytes(n: usize) {
    METRICS.write_bytes.0.fetch_add(n as u64, Relaxed);
}

/// Counts a request that failed authentication.
#[inline]
pub fn integrity_failure() {
    METRICS.integrity_failures.fetch_add(1, Relaxed);
}

/// Counts a refused attempt.
#[inline]
pub fn denied(why: Denial) {
    METRICS.denied[why as usize].fetch_add(1, Relaxed);
}

/// Counts one use of master key `version`.
#[inline]
pub fn key_use(what: KeyUse, version: u32) {
    METRICS.key_use(what, version);
}

/// A handle was opened (`file`: a file, else a directory).
#[inline]
pub fn handle_opened(file: bool) {
    let g = if file {
        &METRICS.open_files
    } else {
        &METRICS.open_dirs
    };
    g.fetch_add(1, Relaxed);
}

/// A handle was released.
#[inline]
pub fn handle_closed(file: bool) {
    let g = if file {
        &METRICS.open_files
    } else {
        &METRICS.open_dirs
    };
    g.fetch_sub(1, Relaxed);
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn every_series_gets_the_label() {
        let t = "# TYPE a counter\na 1\nb{op=\"read\"} 2\nc{} 3\n";
        assert_eq!(
            label_every_series(t, "volume", "ab"),
            "# TYPE a counter\na{volume=\"ab\"} 1\nb{volume=\"ab\",op=\"read\"} 2\nc{volume=\"ab\"} 3\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_bounds_inclusive() {
        let h = Histogram::new();
        h.observe_ns(5_000); // exactly 5 µs: le="0.000005"
        h.observe_ns(5_001); // just above: next bucket
        h.observe_ns(0);
        h.observe_ns(2_000_000_000); // 2 s: +Inf only
        let mut s = String::new();
        h.render(&mut s, "x", "read");
        assert!(
            s.contains("x_bucket{op=\"read\",le=\"0.000005\"} 2\n"),
            "{s}"
        );
        assert!(
            s.contains("x_bucket{op=\"read\",le=\"0.00001\"} 3\n"),
            "{s}"
        );
        assert!(s.contains("x_bucket{op=\"read\",le=\"1\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{op=\"read\",le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_count{op=\"read\"} 4\n"), "{s}");
        assert!(s.contains("x_sum{op=\"read\"} 2.000010001\n"), "{s}");
    }

    #[test]
    fn key_versions_beyond_the_slots_share_one_counter() {
        let m = Metrics::new();
        m.key_use(KeyUse::Wrap, 1);
        m.key_use(KeyUse::Wrap, 300);
        m.key_use(KeyUse::Wrap, 0);
        m.key_use(KeyUse::Unwrap, 256);
        let s = m.render("");
        assert!(s.contains("sealfs_key_uses_total{use=\"wrap\",version=\"1\"} 1\n"));
        assert!(s.contains("sealfs_key_uses_total{use=\"wrap\",version=\"overflow\"} 2\n"));
        assert!(s.contains("sealfs_key_uses_total{use=\"unwrap\",version=\"256\"} 1\n"));
        assert!(!s.contains("version=\"2\""));
    }

    #[test]
    fn seconds_are_plain_decimals() {
        assert_eq!(format_seconds(0.000005), "0.000005");
        assert_eq!(format_seconds(1.0), "1");
        assert_eq!(format_seconds(0.0), "0");
        assert_eq!(format_seconds(0.25), "0.25");
    }
}
