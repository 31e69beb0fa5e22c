//! Log lines to the local syslog socket (`/dev/log`: journald or a syslog
//! daemon), for the mount daemon once it has left the terminal.
//!
//! A [`tracing_subscriber::fmt::MakeWriter`]: every event becomes one
//! datagram in the RFC 3164 form `<PRI>Mmm dd hh:mm:ss sealfs[PID]: text`,
//! facility `daemon`, severity from the event's level. journald and rsyslog
//! both read that form. A send that fails (the log daemon restarted) is
//! retried once on a new connection; a line that still cannot be sent is
//! dropped: logging never blocks or fails the filesystem.
//!
//! Owns: the line format and the socket. Must never: be handed key
//! material (callers log inode numbers and errors, never names or keys).

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The standard syslog socket.
pub const DEV_LOG: &str = "/dev/log";

/// `LOG_DAEMON`.
const FACILITY: u8 = 3;
/// Longest datagram sent (longer lines are cut).
const MAX_LINE: usize = 8 * 1024;

/// A connection to the syslog socket. See the [module docs](self).
#[derive(Debug)]
pub struct Syslog {
    path: PathBuf,
    ident: String,
    sock: Mutex<Option<UnixDatagram>>,
}

impl Syslog {
    /// Connects to the datagram socket at `path` (normally [`DEV_LOG`]);
    /// fails when nothing listens there.
    pub fn connect(path: &Path, ident: &str) -> io::Result<Syslog> {
        let s = UnixDatagram::unbound()?;
        s.connect(path)?;
        // A full queue (a slow or stopped log daemon) drops the line
        // instead of stopping the thread that logs it.
        s.set_nonblocking(true)?;
        Ok(Syslog {
            path: path.to_path_buf(),
            ident: ident.to_string(),
            sock: Mutex::new(Some(s)),
        })
    }

    fn send(&self, severity: u8, text: &[u8]) {
        let line = format_line(FACILITY * 8 + severity, &self.ident, text);
        let mut g = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_ref() {
            match s.send(&line) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return, // dropped
                Err(_) => {}
            }
        }
        // Reconnect once (journald or rsyslog restarted).
        *g = UnixDatagram::unbound()
            .and_then(|s| s.connect(&self.path).map(|()| s))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .ok();
        if let Some(s) = g.as_ref() {
            let _ = s.send(&line);
        }
    }
}

/// RFC 3164 severity of a tracing level.
fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// `<PRI>Mmm dd hh:mm:ss IDENT[PID]: text`, local time, the text's
/// trailing newline dropped, cut at [`MAX_LINE`] bytes.
fn format_line(pri: u8, ident: &str, text: &[u8]) -> Vec<u8> {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let mut out = Vec::with_capacity(48 + text.len());
    let _ = write!(
        out,
        "<{pri}>{} {ident}[{}]: ",
        timestamp(),
        std::process::id()
    );
    out.extend_from_slice(text);
    out.truncate(MAX_LINE);
    out
}

fn timestamp() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: time(NULL) and localtime_r with valid pointers.
    let tm = unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm
    };
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// One event's text, sent as one datagram when dropped.
pub struct SyslogLine<'a> {
    to: &'a Syslog,
    severity: u8,
    buf: Vec<u8>,
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.to.send(self.severity, &self.buf);
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine {
            to: self,
            severity: 6,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogLine {
            to: self,
            severity: severity(meta.level()),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_priority_ident_and_no_trailing_newline() {
        let l = format_line(FACILITY * 8 + 4, "sealfs", b"disk full\n");
        let s = String::from_utf8(l).unwrap();
        assert!(s.starts_with("<28>"), "{s}");
        assert!(
            s.ends_with(&format!(" sealfs[{}]: disk full", std::process::id())),
            "{s}"
        );
        // "<28>Nov  2 10:03:04 sealfs[…"
        assert_eq!(&s[7..8], " ", "{s}");
        assert_eq!(&s[10..11], " ", "{s}");
        let long = format_line(30, "x", &vec![b'a'; MAX_LINE * 2]);
        assert_eq!(long.len(), MAX_LINE);
    }

    #[test]
    fn a_full_queue_drops_lines_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let _server = UnixDatagram::bind(&path).unwrap(); // never reads
        let log = Syslog::connect(&path, "sealfs-test").unwrap();
        let start = std::time::Instant::now();
        for _ in 0..10_000 {
            let mut w = log.make_writer();
            w.write_all(&[b'x'; 1000]).unwrap();
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn events_arrive_as_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let log = Syslog::connect(&path, "sealfs-test").unwrap();
        {
            let mut w = log.make_writer();
            w.write_all(b"hello ").unwrap();
            w.write_all(b"world\n").unwrap();
        }
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let s = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(s.starts_with("<30>"), "{s}");
        assert!(s.ends_with("]: hello world"), "{s}");
        assert_eq!(severity(&Level::ERROR), 3);
        assert_eq!(severity(&Level::DEBUG), 7);
        assert!(Syslog::connect(&dir.path().join("none"), "x").is_err());
    }
}
