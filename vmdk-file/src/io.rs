//! Where the engine's changes to the file system go: the [`Storage`]
//! trait.
//!
//! Every change the engine makes (creating a file, writing it, setting
//! its length, syncing it, renaming, removing, creating and syncing a
//! directory) goes through a [`Storage`]. [`StdStorage`], the default,
//! calls the operating system; a test can pass its own to watch or alter
//! each change, in [`OpenOptions::storage`](crate::local::OpenOptions::storage)
//! and the `*_in` functions ([`create_in`](crate::create::create_in),
//! [`grow_in`](crate::maintain::grow_in), ...). Reads do not go through
//! it: they use the [`File`] it returned (or one the engine opened), so
//! the read path has no indirection, and the write path one virtual call
//! per system call.
//!
//! With the testing-only `__crash-test` feature, `io::crash` records every
//! change and replays the recording into the states a power cut could
//! leave.
//!
//! ```
//! use std::sync::Arc;
//! use vmdk_file::io::{std_storage, SharedStorage, StdStorage};
//!
//! let s: SharedStorage = std_storage();
//! let dir = tempfile::tempdir()?;
//! let f = s.create(&dir.path().join("a"), true)?;
//! s.write_at(&f, b"hello", 0)?;
//! s.sync_data(&f)?;
//! s.sync_dir(dir.path())?;
//! // Exclusive creation of an existing file fails.
//! assert!(s.create(&dir.path().join("a"), true).is_err());
//! # Ok::<(), std::io::Error>(())
//! ```

#[cfg(feature = "__crash-test")]
pub mod crash;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// The file-system changes the engine makes, one method per system call.
///
/// Implementations must behave like the operating system's calls of the
/// same names (and may do more, such as recording them).
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates `path` for reading and writing: a new file when
    /// `exclusive` (failing with `AlreadyExists` if the name is taken),
    /// else a new or truncated one.
    fn create(&self, path: &Path, exclusive: bool) -> io::Result<File>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, file: &File, len: u64) -> io::Result<()>;
    /// Reserves blocks for the first `len` bytes (extending the file to
    /// at least `len`); a file system that cannot is not an error.
    fn allocate(&self, file: &File, len: u64) -> io::Result<()>;
    /// `fdatasync`: the file's data, and the metadata needed to read it,
    /// reach stable storage.
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// `fsync`: the file's data and metadata reach stable storage.
    fn sync_all(&self, file: &File) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, failing with `AlreadyExists` if `to`
    /// exists (atomically where the file system can).
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Gives the file `from` a second name `to` (a hard link), failing
    /// with `AlreadyExists` if `to` exists.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file name.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// `fsync` of a directory: the names created, renamed or removed in
    /// it reach stable storage.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A shared [`Storage`], as [`OpenOptions`](crate::local::OpenOptions)
/// and the `*_in` functions take it.
pub type SharedStorage = Arc<dyn Storage>;

/// The operating system's file system, through `std` and `rustix`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdStorage;

/// A [`SharedStorage`] of [`StdStorage`]: what the engine uses unless told
/// otherwise.
pub fn std_storage() -> SharedStorage {
    static STD: std::sync::LazyLock<SharedStorage> =
        std::sync::LazyLock::new(|| Arc::new(StdStorage));
    Arc::clone(&STD)
}

impl Storage for StdStorage {
    fn create(&self, path: &Path, exclusive: bool) -> io::Result<File> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true);
        if exclusive {
            o.create_new(true);
        } else {
            o.create(true).truncate(true);
        }
        o.open(path)
    }

    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        use rustix::io::Errno;
        if i64::try_from(len).is_err() {
            return Ok(());
        }
        match fallocate(file, FallocateFlags::empty(), 0, len) {
            // A file system without fallocate: the file stays sparse.
            Ok(()) | Err(Errno::OPNOTSUPP | Errno::INVAL) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_all(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        use rustix::io::Errno;
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            // A kernel or file system without RENAME_NOREPLACE: check,
            // then rename (a race with another creator is possible there).
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                if std::fs::symlink_metadata(to).is_ok() {
                    return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                }
                std::fs::rename(from, to)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates directory `path` and its missing parents through `storage`;
/// with `durable`, syncs the directory holding each one created, so that
/// they survive a power cut.
pub fn create_dir_all(storage: &dyn Storage, path: &Path, durable: bool) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(storage, parent, durable)?;
    }
    match storage.create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        r => r?,
    }
    if durable {
        match storage.sync_dir(parent_dir(path)) {
            // A file system that cannot sync a directory.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
            r => r?,
        }
    }
    Ok(())
}

/// Removes a directory tree through `storage`, file by file (the walk
/// itself reads the directories directly).
pub fn remove_dir_all(storage: &dyn Storage, path: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            remove_dir_all(storage, &p)?;
        } else {
            storage.remove_file(&p)?;
        }
    }
    storage.remove_dir(path)
}

/// Writes a new file (`exclusive`) or replaces the content of `path` in
/// place, then syncs it. Not atomic: see [`replace_file_in`](crate::replace_file_in).
pub fn write_file(
    storage: &dyn Storage,
    path: &Path,
    bytes: &[u8],
    exclusive: bool,
) -> io::Result<()> {
    let f = storage.create(path, exclusive)?;
    storage.write_at(&f, bytes, 0)?;
    storage.sync_all(&f)
}
