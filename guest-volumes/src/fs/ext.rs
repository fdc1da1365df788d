//! ext2/3/4 through `ext4-view`.
//!
//! `ext4_view::Ext4` is `Rc`-based and so not `Send`; it lives on a
//! worker thread owned by [`ExtFs`], which sends it jobs over a channel.
//! The thread ends when the `ExtFs` is dropped. A panic inside the
//! library (none is known) would end the thread and surface as an error
//! instead of unwinding into the caller.

use std::sync::{mpsc, Arc};

use ext4_view::{Ext4, Ext4Error, Ext4Read, File, Metadata as ExtMeta};

use super::{components_bytes, DirEntry, FileKind, GuestFs, Metadata, MAX_DIR_ENTRIES};
use crate::{Error, FsKind, ReadAt};

struct Reader(Arc<dyn ReadAt>);

impl Ext4Read for Reader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let size = self.0.size();
        if start_byte
            .checked_add(dst.len() as u64)
            .is_none_or(|e| e > size)
        {
            return Err("read past the end of the volume".into());
        }
        self.0
            .read_at(start_byte, dst)
            .map_err(|e| Box::new(e) as _)
    }
}

struct State {
    fs: Ext4,
    /// The last file read, for sequential `read_file_at` calls.
    open: Option<(Vec<u8>, File)>,
}

type Job = Box<dyn FnOnce(&mut State) + Send>;

/// An ext2/3/4 filesystem.
pub(crate) struct ExtFs {
    kind: FsKind,
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    /// Joined on drop, so no worker outlives its filesystem.
    worker: Option<std::thread::JoinHandle<()>>,
    /// The buffer `read_file_at` lends the worker (kept between calls).
    spare: Vec<u8>,
}

impl std::fmt::Debug for ExtFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtFs")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn map_err(kind: FsKind, path: &[u8], e: Ext4Error) -> Error {
    let path = String::from_utf8_lossy(path);
    let path = path.as_ref();
    match e {
        Ext4Error::NotFound => Error::NotFound(path.to_string()),
        Ext4Error::NotADirectory => Error::NotADirectory(path.to_string()),
        Ext4Error::IsADirectory => Error::IsADirectory(path.to_string()),
        Ext4Error::NotASymlink => Error::NotASymlink(path.to_string()),
        Ext4Error::IsASpecialFile => Error::NotAFile(path.to_string()),
        Ext4Error::NotAbsolute | Ext4Error::MalformedPath | Ext4Error::PathTooLong => {
            Error::InvalidPath(path.to_string())
        }
        Ext4Error::Encrypted => Error::UnsupportedFeature(format!("{path}: encrypted file")),
        Ext4Error::Incompatible(i) => Error::UnsupportedFeature(i.to_string()),
        Ext4Error::Io(e) => Error::Io {
            context: "ext filesystem",
            offset: 0,
            source: std::io::Error::other(e.to_string()),
        },
        other => Error::Filesystem {
            kind,
            message: other.to_string(),
        },
    }
}

fn convert(m: &ExtMeta) -> Metadata {
    let ft = m.file_type();
    let kind = if ft.is_regular_file() {
        FileKind::File
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    let mtime = m.modified();
    Metadata {
        kind,
        size: m.len(),
        mode: Some(u32::from(m.mode())),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        mtime: Some(mtime.seconds()),
        mtime_nsec: Some(mtime.nanoseconds()),
        atime: Some(m.accessed().seconds()),
    }
}

impl ExtFs {
    /// Loads the filesystem on a new worker thread.
    pub(crate) fn open(vol: Arc<dyn ReadAt>, kind: FsKind) -> Result<Self, Error> {
        check_superblock(&*vol)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), Error>>(1);
        let worker = std::thread::Builder::new()
            .name("guest-volumes-ext".into())
            .spawn(move || {
                let fs = match Ext4::load(Box::new(Reader(vol))) {
                    Ok(fs) => fs,
                    Err(e) => {
                        let _ = ready_tx.send(Err(map_err(kind, b"/", e)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let mut state = State { fs, open: None };
                while let Ok(job) = rx.recv() {
                    job(&mut state);
                }
            })
            .map_err(|source| Error::Io {
                context: "spawning the ext worker thread",
                offset: 0,
                source,
            })?;
        let ready = ready_rx.recv().map_err(|_| lost(kind)).and_then(|r| r);
        if let Err(e) = ready {
            drop(jobs);
            let _ = worker.join();
            return Err(e);
        }
        Ok(ExtFs {
            kind,
            jobs: Some(jobs),
            worker: Some(worker),
            spare: Vec::new(),
        })
    }

    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or_else(|| lost(self.kind))?
            .send(Box::new(move |st: &mut State| {
                let _ = tx.send(f(st));
            }))
            .map_err(|_| lost(self.kind))?;
        rx.recv().map_err(|_| lost(self.kind))
    }
}

impl Drop for ExtFs {
    fn drop(&mut self) {
        // Closing the queue ends the worker's loop.
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Checks what `ext4_view::Ext4::load` sizes its allocations by: the block
/// count (which it always reads as `hi << 32 | lo`, whatever the 64bit
/// feature says) times the block size must fit in the volume, so the
/// block group descriptor table it loads is bounded by the input.
fn check_superblock(vol: &dyn ReadAt) -> Result<(), Error> {
    use crate::bytes::u32_le;
    let mut sb = [0u8; 1024];
    crate::read::read_exact(vol, 1024, &mut sb, "ext superblock")?;
    let bad = |what, at: usize| Error::corrupt(what, 1024 + at as u64);
    let lo = u32_le(&sb, 4).ok_or_else(|| bad("ext superblock", 4))?;
    let hi = u32_le(&sb, 0x150).ok_or_else(|| bad("ext superblock", 0x150))?;
    let log = u32_le(&sb, 24).ok_or_else(|| bad("ext superblock", 24))?;
    if log > 6 {
        return Err(bad("ext block size", 24));
    }
    let blocks = (u64::from(hi) << 32) | u64::from(lo);
    match blocks.checked_mul(1024u64 << log) {
        Some(bytes) if bytes <= vol.size() => Ok(()),
        _ => Err(bad(
            "ext block count (filesystem larger than its volume)",
            4,
        )),
    }
}

fn lost(kind: FsKind) -> Error {
    Error::Filesystem {
        kind,
        message: "the ext worker thread stopped".into(),
    }
}

fn ext_path(path: &[u8]) -> Result<Vec<u8>, Error> {
    let parts = components_bytes(path)?;
    let mut out = Vec::with_capacity(path.len() + 1);
    for part in parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

impl GuestFs for ExtFs {
    fn kind(&self) -> FsKind {
        self.kind
    }

    fn metadata(&mut self, path: &str) -> Result<Metadata, Error> {
        self.metadata_bytes(path.as_bytes())
    }

    fn metadata_bytes(&mut self, path: &[u8]) -> Result<Metadata, Error> {
        let p = ext_path(path)?;
        let kind = self.kind;
        self.call(move |st| {
            st.fs
                .symlink_metadata(p.as_slice())
                .map(|m| convert(&m))
                .map_err(|e| map_err(kind, &p, e))
        })?
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, Error> {
        self.read_dir_bytes(path.as_bytes())
    }

    fn read_dir_bytes(&mut self, path: &[u8]) -> Result<Vec<DirEntry>, Error> {
        let p = ext_path(path)?;
        let kind = self.kind;
        self.call(move |st| {
            let mut out = Vec::new();
            let iter = st
                .fs
                .read_dir(p.as_slice())
                .map_err(|e| map_err(kind, &p, e))?;
            for entry in iter {
                let entry = entry.map_err(|e| map_err(kind, &p, e))?;
                let name = entry.file_name();
                let bytes = name.as_ref().to_vec();
                if bytes == b"." || bytes == b".." {
                    continue;
                }
                if out.len() >= MAX_DIR_ENTRIES {
                    return Err(Error::TooLarge {
                        what: "directory",
                        size: out.len() as u64,
                        max: MAX_DIR_ENTRIES as u64,
                    });
                }
                let meta = entry.metadata().map_err(|e| map_err(kind, &p, e))?;
                out.push(DirEntry {
                    name: String::from_utf8_lossy(&bytes).into_owned(),
                    name_bytes: bytes,
                    metadata: convert(&meta),
                });
            }
            out.sort_by(|a, b| a.name_bytes.cmp(&b.name_bytes));
            Ok(out)
        })?
    }

    fn read_link(&mut self, path: &str) -> Result<Vec<u8>, Error> {
        self.read_link_bytes(path.as_bytes())
    }

    fn read_link_bytes(&mut self, path: &[u8]) -> Result<Vec<u8>, Error> {
        let p = ext_path(path)?;
        let kind = self.kind;
        self.call(move |st| {
            st.fs
                .read_link(p.as_slice())
                .map(|t| t.as_ref().to_vec())
                .map_err(|e| map_err(kind, &p, e))
        })?
    }

    fn read_file_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        self.read_file_at_bytes(path.as_bytes(), offset, buf)
    }

    fn read_file_at_bytes(
        &mut self,
        path: &[u8],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        let p = ext_path(path)?;
        let kind = self.kind;
        let want = buf.len();
        // The worker reads into a buffer that travels with the job and
        // comes back, so each call neither allocates nor zero-fills one.
        let out = std::mem::take(&mut self.spare);
        let (out, n) = self.call(move |st| -> Result<(Vec<u8>, usize), Error> {
            let mut out = out;
            let cached = matches!(&st.open, Some((cp, _)) if *cp == p);
            if !cached {
                let meta = st
                    .fs
                    .symlink_metadata(p.as_slice())
                    .map_err(|e| map_err(kind, &p, e))?;
                if meta.is_dir() {
                    return Err(Error::IsADirectory(
                        String::from_utf8_lossy(&p).into_owned(),
                    ));
                }
                if !meta.file_type().is_regular_file() {
                    return Err(Error::NotAFile(String::from_utf8_lossy(&p).into_owned()));
                }
                let f = st.fs.open(p.as_slice()).map_err(|e| map_err(kind, &p, e))?;
                st.open = Some((p.clone(), f));
            }
            let Some((_, file)) = st.open.as_mut() else {
                return Err(lost(kind));
            };
            let size = file.metadata().len();
            if offset >= size || want == 0 {
                return Ok((out, 0));
            }
            let n = (size - offset).min(want as u64) as usize;
            if file.position() != offset {
                file.seek_to(offset).map_err(|e| map_err(kind, &p, e))?;
            }
            if out.len() < n {
                out.resize(n, 0);
            }
            let mut done = 0;
            while done < n {
                let got = file
                    .read_bytes(&mut out[done..n])
                    .map_err(|e| map_err(kind, &p, e))?;
                if got == 0 {
                    break;
                }
                done += got;
            }
            Ok((out, done))
        })??;
        buf[..n].copy_from_slice(&out[..n]);
        self.spare = out;
        Ok(n)
    }
}
