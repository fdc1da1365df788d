//! The crate's one error type.

use std::io;

use crate::FsKind;

/// Everything that can go wrong while scanning a disk or reading a guest
/// filesystem. Corrupt or hostile input always ends up here, never in a
/// panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The [`ReadAt`](crate::ReadAt) implementation failed.
    #[error("I/O error reading {context} at byte offset {offset}")]
    Io {
        /// What was being read.
        context: &'static str,
        /// Where (relative to the reader that failed).
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An on-disk structure is inconsistent.
    #[error("corrupt {what} at byte offset {offset}")]
    Corrupt {
        /// Which structure.
        what: &'static str,
        /// Its byte offset on the reader where it was found.
        offset: u64,
    },
    /// A filesystem library reported corruption or an internal failure.
    #[error("{kind:?} filesystem error: {message}")]
    Filesystem {
        /// The filesystem.
        kind: FsKind,
        /// The library's message.
        message: String,
    },
    /// The path does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A path component that must be a directory is not one.
    #[error("not a directory: {0}")]
    NotADirectory(String),
    /// A file operation was attempted on a directory.
    #[error("is a directory: {0}")]
    IsADirectory(String),
    /// `read_link` on something that is not a symbolic link.
    #[error("not a symbolic link: {0}")]
    NotASymlink(String),
    /// `read_file_at` on something that is not a regular file.
    #[error("not a regular file: {0}")]
    NotAFile(String),
    /// The path is not absolute, too long, or has an unusable component.
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// A guest name cannot be used as a host path component.
    #[error("unsafe guest name: {0}")]
    UnsafeName(String),
    /// `open_fs` on a filesystem this crate identifies but cannot read.
    #[error("reading {0:?} filesystems is not supported")]
    Unsupported(FsKind),
    /// `open_fs` on a volume where no filesystem was recognised.
    #[error("no recognised filesystem")]
    NoFilesystem,
    /// A feature of an otherwise supported filesystem is not supported
    /// (compressed or encrypted files, for example).
    #[error("unsupported feature: {0}")]
    UnsupportedFeature(String),
    /// A size taken from the disk exceeds the crate's cap.
    #[error("{what} too large: {size} exceeds the cap of {max}")]
    TooLarge {
        /// Which value.
        what: &'static str,
        /// The value found.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// A byte range lies outside the reader.
    #[error("range {offset}+{len} lies outside a reader of {size} bytes")]
    OutOfBounds {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Size of the reader.
        size: u64,
    },
}

impl Error {
    pub(crate) fn corrupt(what: &'static str, offset: u64) -> Self {
        Error::Corrupt { what, offset }
    }
}
