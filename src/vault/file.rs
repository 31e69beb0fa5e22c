//! Files of a [`super::Vault`] as byte streams: [`FileReader`] ([`Read`] and
//! [`Seek`]) and [`FileWriter`] ([`Write`], buffered in whole chunks, and
//! for a staged file the rename into place on [`FileWriter::finish`]).
//!
//! Owns: stream positions and the write buffer.
//! Must never: hand out bytes of a chunk that failed authentication, or
//! leave a staged temp file behind once the writer is gone.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::format::layout::CHUNK_SIZE;
use crate::format::names::BackingName;
use crate::volume::backing;
use crate::volume::content::SealedFile;
use crate::volume::namespace;
use crate::volume::VolumeError;

use super::{path_err, VaultError};

/// A file of a [`Vault`](super::Vault) open for reading: [`Read`] and [`Seek`]. A chunk
/// that fails authentication reads as an [`io::ErrorKind::InvalidData`] error.
#[derive(Debug)]
pub struct FileReader {
    file: SealedFile,
    pos: u64,
}

impl FileReader {
    pub(super) fn new(file: SealedFile) -> Self {
        FileReader { file, pos: 0 }
    }

    /// The whole content.
    pub(super) fn read_all(&self) -> Result<Vec<u8>, VolumeError> {
        self.file.read(0, self.len() as usize)
    }

    /// Plaintext size.
    pub fn len(&self) -> u64 {
        self.file.size()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn io_of(e: VolumeError) -> io::Error {
    VaultError::Volume(e).into()
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // At most a few chunks per call, so a huge buffer does not mean a huge copy.
        let want = buf.len().min(64 * CHUNK_SIZE as usize);
        let data = self.file.read(self.pos, want).map_err(io_of)?;
        buf[..data.len()].copy_from_slice(&data);
        self.pos += data.len() as u64;
        Ok(data.len())
    }
}

impl Seek for FileReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(n) => {
                self.pos = n;
                return Ok(n);
            }
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = base.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(self.pos)
    }
}

/// Bytes a [`FileWriter`] gathers before sealing them (whole chunks).
const WRITE_BUFFER: usize = 256 * CHUNK_SIZE as usize;

/// A file of a [`Vault`](super::Vault) open for writing from its start: [`Write`],
/// buffered in whole chunks. Call [`FileWriter::finish`] to flush and sync
/// and see the errors; dropping it flushes without syncing and ignores them.
#[derive(Debug)]
pub struct FileWriter {
    file: SealedFile,
    parent: OwnedFd,
    pos: u64,
    buf: Vec<u8>,
    failed: bool,
    mode: Option<u32>,
    owner: Option<(Option<u32>, Option<u32>)>,
    times: Option<(SystemTime, SystemTime)>,
    staged: Option<Staged>,
}

/// Where a staged writer's temp file goes on [`FileWriter::finish`].
#[derive(Debug)]
struct Staged {
    temp: String,
    target: BackingName,
    path: PathBuf,
}

impl FileWriter {
    /// A writer of the new or truncated file `file` in the directory `parent`.
    pub(super) fn new(file: SealedFile, parent: OwnedFd) -> Self {
        FileWriter {
            file,
            parent,
            pos: 0,
            buf: Vec::with_capacity(WRITE_BUFFER),
            failed: false,
            mode: None,
            owner: None,
            times: None,
            staged: None,
        }
    }

    /// A writer of the staged file `temp` (see [`super::Vault::create_staged`]),
    /// put in place as `target` (plaintext `path`) by [`FileWriter::finish`].
    pub(super) fn staged(
        file: SealedFile,
        parent: OwnedFd,
        temp: String,
        target: BackingName,
        path: &Path,
    ) -> Self {
        let mut w = FileWriter::new(file, parent);
        w.staged = Some(Staged {
            temp,
            target,
            path: path.to_path_buf(),
        });
        w
    }

    /// Permission bits (`0o7777`) the file gets in [`FileWriter::finish`].
    pub fn set_permissions(&mut self, mode: u32) {
        self.mode = Some(mode & 0o7777);
    }

    /// Owner and group the file gets in [`FileWriter::finish`] (needs the
    /// privileges chown(2) needs).
    pub fn set_owner(&mut self, uid: Option<u32>, gid: Option<u32>) {
        self.owner = Some((uid, gid));
    }

    /// Access and modification times the file gets in
    /// [`FileWriter::finish`], after its last write.
    pub fn set_times(&mut self, accessed: SystemTime, modified: SystemTime) {
        self.times = Some((accessed, modified));
    }

    fn apply_attributes(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let f = self.file.backing();
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(f, uid, gid)?;
        }
        if let Some(m) = self.mode {
            f.set_permissions(std::fs::Permissions::from_mode(m))?;
        }
        if let Some((a, m)) = self.times {
            f.set_times(std::fs::FileTimes::new().set_accessed(a).set_modified(m))?;
        }
        Ok(())
    }

    fn flush_buffer(&mut self) -> Result<(), VolumeError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write(self.pos, &self.buf) {
            self.failed = true;
            return Err(e);
        }
        self.pos += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Flushes, applies the attributes set on the writer, syncs the file
    /// and its directory entry; a staged writer's file replaces its target
    /// path (after the sync, so a crash leaves the old or the whole new
    /// file there).
    pub fn finish(mut self) -> Result<(), VaultError> {
        self.flush_buffer()?;
        self.apply_attributes().map_err(VolumeError::from)?;
        if let Some(st) = self.staged.take() {
            let pfd = self.parent.as_fd();
            let r = match self.file.backing().sync_all() {
                Ok(()) => namespace::commit_staged(pfd, &st.temp, &st.target, false)
                    .map_err(|e| path_err(e, &st.path)),
                Err(e) => {
                    namespace::discard_staged(pfd, &st.temp);
                    Err(VolumeError::from(e).into())
                }
            };
            if let Err(e) = r {
                self.failed = true;
                return Err(e);
            }
        } else {
            self.file.backing().sync_data().map_err(VolumeError::from)?;
        }
        backing::sync_dir(self.parent_fd()).map_err(VolumeError::from)?;
        Ok(())
    }

    fn parent_fd(&self) -> BorrowedFd<'_> {
        self.parent.as_fd()
    }
}

impl Write for FileWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this file failed"));
        }
        let room = WRITE_BUFFER - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == WRITE_BUFFER {
            self.flush_buffer().map_err(io_of)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buffer().map_err(io_of)
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if let Some(st) = self.staged.take() {
            // Unfinished: the target keeps its old state.
            namespace::discard_staged(self.parent.as_fd(), &st.temp);
        } else if !self.failed {
            let _ = self.flush_buffer();
        }
    }
}
