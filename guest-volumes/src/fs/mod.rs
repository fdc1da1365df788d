//! Read-only access to files inside a guest filesystem.

use std::sync::Arc;

use serde::Serialize;

use crate::{probe, Error, FsKind, ReadAt};

pub(crate) mod ext;
pub(crate) mod fat;
pub(crate) mod ntfs;

/// The most components a path may have.
pub const MAX_PATH_COMPONENTS: usize = 256;
/// The longest path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// The most entries `read_dir` returns before failing with
/// [`Error::TooLarge`].
pub const MAX_DIR_ENTRIES: usize = 1 << 20;

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, FIFO, socket, NTFS reparse point…).
    Other,
}

/// File metadata, as far as the filesystem records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    /// The file type.
    pub kind: FileKind,
    /// Size in bytes (the link target's length for ext symlinks).
    pub size: u64,
    /// Permission bits (`0o7777` mask); `None` where the filesystem has none.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Last modification, Unix seconds.
    pub mtime: Option<i64>,
    /// Nanoseconds part of `mtime`.
    pub mtime_nsec: Option<u32>,
    /// Last access, Unix seconds.
    pub atime: Option<i64>,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirEntry {
    /// The name, lossily converted to UTF-8.
    pub name: String,
    /// The name exactly as stored (UTF-8 for FAT/NTFS, raw bytes for ext).
    pub name_bytes: Vec<u8>,
    /// The entry's metadata (not following symlinks).
    pub metadata: Metadata,
}

/// A read-only guest filesystem.
///
/// Paths are absolute and `/`-separated for every filesystem; FAT and
/// NTFS match names case-insensitively.
pub trait GuestFs: Send {
    /// The filesystem kind.
    fn kind(&self) -> FsKind;
    /// Metadata of `path`; a final symlink is not followed.
    fn metadata(&mut self, path: &str) -> Result<Metadata, Error>;
    /// The entries of the directory `path`, sorted by name, without `.`
    /// and `..`.
    fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, Error>;
    /// The target of the symlink `path`.
    fn read_link(&mut self, path: &str) -> Result<Vec<u8>, Error>;
    /// Reads up to `buf.len()` bytes of the regular file `path` at
    /// `offset`; returns the bytes read (0 at the end).
    fn read_file_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Error>;

    /// [`metadata`](GuestFs::metadata) for a path given as raw bytes, so
    /// names that are not UTF-8 (see [`DirEntry::name_bytes`]) can be
    /// reached. Filesystems whose names are always Unicode accept only
    /// UTF-8 here.
    fn metadata_bytes(&mut self, path: &[u8]) -> Result<Metadata, Error> {
        self.metadata(utf8_path(path)?)
    }
    /// [`read_dir`](GuestFs::read_dir) for a raw-byte path.
    fn read_dir_bytes(&mut self, path: &[u8]) -> Result<Vec<DirEntry>, Error> {
        self.read_dir(utf8_path(path)?)
    }
    /// [`read_link`](GuestFs::read_link) for a raw-byte path.
    fn read_link_bytes(&mut self, path: &[u8]) -> Result<Vec<u8>, Error> {
        self.read_link(utf8_path(path)?)
    }
    /// [`read_file_at`](GuestFs::read_file_at) for a raw-byte path.
    fn read_file_at_bytes(
        &mut self,
        path: &[u8],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        self.read_file_at(utf8_path(path)?, offset, buf)
    }
}

fn utf8_path(path: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(path)
        .map_err(|_| Error::InvalidPath(format!("{} is not UTF-8", String::from_utf8_lossy(path))))
}

/// Opens the filesystem in `vol` for reading (ext2/3/4, FAT12/16/32,
/// NTFS). Other recognised formats give [`Error::Unsupported`]; an
/// unrecognised volume gives [`Error::NoFilesystem`].
pub fn open_fs(vol: Arc<dyn ReadAt>) -> Result<Box<dyn GuestFs>, Error> {
    let info = probe(&*vol)?.ok_or(Error::NoFilesystem)?;
    let cached: Arc<dyn ReadAt> = Arc::new(crate::read::CachedReader::new(vol));
    match info.kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => {
            Ok(Box::new(ext::ExtFs::open(cached, info.kind)?))
        }
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => Ok(Box::new(fat::FatFs::open(cached)?)),
        FsKind::Ntfs => Ok(Box::new(ntfs::NtfsFs::open(cached)?)),
        other => Err(Error::Unsupported(other)),
    }
}

/// [`components`] for a raw-byte path.
pub(crate) fn components_bytes(path: &[u8]) -> Result<Vec<&[u8]>, Error> {
    let shown = || String::from_utf8_lossy(path).into_owned();
    if path.first() != Some(&b'/') {
        return Err(Error::InvalidPath(format!("{:?} is not absolute", shown())));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(Error::InvalidPath("path too long".into()));
    }
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    if parts.len() > MAX_PATH_COMPONENTS {
        return Err(Error::InvalidPath("too many path components".into()));
    }
    if parts
        .iter()
        .any(|&c| c == b"." || c == b".." || c.contains(&0))
    {
        return Err(Error::InvalidPath(format!(
            "{:?} has a . or .. component",
            shown()
        )));
    }
    Ok(parts)
}

/// Splits an absolute path into its non-empty components, rejecting `.`
/// and `..` components and over-long paths.
pub(crate) fn components(path: &str) -> Result<Vec<&str>, Error> {
    if !path.starts_with('/') {
        return Err(Error::InvalidPath(format!("{path:?} is not absolute")));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(Error::InvalidPath("path too long".into()));
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.len() > MAX_PATH_COMPONENTS {
        return Err(Error::InvalidPath("too many path components".into()));
    }
    if parts
        .iter()
        .any(|&c| c == "." || c == ".." || c.contains('\0'))
    {
        return Err(Error::InvalidPath(format!(
            "{path:?} has a . or .. component"
        )));
    }
    Ok(parts)
}

/// Unix seconds and nanoseconds from a Windows FILETIME (100 ns since 1601).
pub(crate) fn filetime_to_unix(ft: u64) -> (i64, u32) {
    const EPOCH_DIFF: i64 = 11_644_473_600;
    let secs = (ft / 10_000_000) as i64 - EPOCH_DIFF;
    let nsec = ((ft % 10_000_000) * 100) as u32;
    (secs, nsec)
}
