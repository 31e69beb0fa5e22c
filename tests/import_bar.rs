//! Issue 21.11: the progress bar of `sealfs import`, as a user sees it on a
//! terminal (run under `script`, which gives the command a pty). Every
//! frame is read back from the terminal stream: no frame shows a zero
//! total (the old "scanning: 0 files" while bytes moved), file counts
//! never go back, the total after the scan is every file, and a frame at
//! 100 % of the bytes counts every file (the old "files 2866/3003" at
//! 100 %). Bytes of files still being written may run ahead of the count
//! of files done.

mod common;

use std::fs;
use std::process::Command;

use common::*;

const SMALL: usize = 3003;
const BIG: usize = 12;

/// One drawn frame: files done and total, bytes done and total (as shown).
#[derive(Debug)]
struct Frame {
    files: (u64, u64),
    scanning: bool,
    bytes: (String, String),
}

/// The frames in a terminal stream: split at carriage returns, line feeds
/// and escape sequences; keep what parses as the transfer bar.
fn frames(stream: &str) -> Vec<Frame> {
    let mut clean = String::new();
    let mut chars = stream.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            clean.push('\n');
        } else if c == '\r' {
            clean.push('\n');
        } else {
            clean.push(c);
        }
    }
    let mut out = Vec::new();
    for line in clean.lines() {
        let Some(rest) = line.trim().strip_prefix("files ") else {
            continue;
        };
        let (counts, after) = rest.split_once(' ').unwrap_or((rest, ""));
        let scanning = counts.ends_with('+');
        let Some((a, b)) = counts.trim_end_matches('+').split_once('/') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (a.parse(), b.parse()) else {
            continue;
        };
        // "[====>   ] 1.50 MiB/11.27 MiB (…)"
        let Some(bytes) = after
            .split_once("] ")
            .and_then(|(_, r)| r.split_once(" ("))
            .map(|(b, _)| b)
        else {
            continue;
        };
        let Some((done, total)) = bytes.split_once('/') else {
            continue;
        };
        out.push(Frame {
            files: (a, b),
            scanning,
            bytes: (done.trim().to_string(), total.trim().to_string()),
        });
    }
    out
}

#[test]
fn the_import_bar_counts_files_with_the_bytes() {
    if !have_tool("script") {
        panic!("`script` (util-linux) is needed for this test");
    }
    let fx = Fixture::new();
    let src = fx.scratch.join("src");
    for d in 0..30 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
    }
    for i in 0..SMALL {
        fs::write(
            src.join(format!("d{}/f{i}", i % 30)),
            vec![b'a' + (i % 26) as u8; 700 + i % 900],
        )
        .unwrap();
    }
    for i in 0..BIG {
        fs::write(src.join(format!("big{i}")), vec![i as u8; 1 << 20]).unwrap();
    }
    let cmd = format!(
        "{} import '{}' '{}' --passfile '{}'",
        bin(),
        src.display(),
        fx.cipher.display(),
        fx.passfile.display()
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("COLUMNS", "160")
        .env("LINES", "40")
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let stream = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "import failed: {stream}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = (SMALL + BIG) as u64;
    assert!(
        stream.contains(&format!("{total} file")),
        "the summary names every file: {stream}"
    );
    let frames = frames(&stream);
    assert!(
        frames.len() >= 2,
        "the bar was drawn fewer than twice on a terminal: {stream:?}"
    );
    let mut last_done = 0;
    for f in &frames {
        assert!(f.files.1 > 0, "a frame with a zero total: {f:?}");
        assert!(f.bytes.1 != "0 B", "a frame with zero total bytes: {f:?}");
        assert!(f.files.0 >= last_done, "file count went back: {f:?}");
        last_done = f.files.0;
        assert!(f.files.0 <= f.files.1, "more done than total: {f:?}");
        if !f.scanning {
            assert_eq!(f.files.1, total, "total after the scan: {f:?}");
        }
        if f.bytes.0 == f.bytes.1 && !f.scanning {
            assert_eq!(f.files.0, total, "all bytes moved, files behind: {f:?}");
        }
    }
}
