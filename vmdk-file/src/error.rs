//! The error type of vmdk-file.

use std::io;
use std::path::PathBuf;

/// Everything the local VMDK engine can report.
///
/// Paths are included so that a user knows which file of a chain is at
/// fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file's structure is invalid.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the format engine found.
        #[source]
        source: vmdk_format::Error,
    },
    /// The file is neither a descriptor nor a VMDK data file.
    #[error("{0}: not a VMDK file (no descriptor signature, no KDMV/COWD/seSparse magic)")]
    NotVmdk(PathBuf),
    /// A read hit the end of a file before the structures said it would.
    #[error(
        "{path}: file ends at byte {file_len}, but {needed} bytes are needed at byte {offset}"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
        /// How many bytes were needed.
        needed: u64,
        /// The file length.
        file_len: u64,
    },
    /// An extent or parent path leaves the directory of the file naming it.
    #[error("{descriptor}: path `{name}` leaves the descriptor's directory (allow it explicitly to follow it)")]
    PathEscape {
        /// The descriptor naming the path.
        descriptor: PathBuf,
        /// The path as written.
        name: String,
    },
    /// The parent named by `parentFileNameHint` cannot be opened.
    #[error("{child}: parent `{hint}` not found")]
    ParentMissing {
        /// The child descriptor.
        child: PathBuf,
        /// The hint as written (empty when only `parentCID` is set).
        hint: String,
    },
    /// The child's `parentCID` is not the parent's `CID`.
    #[error("{child}: parentCID {expected:08x} does not match CID {found:08x} of parent {parent} (the parent changed after the child was made; override only if you know the data is consistent)")]
    CidMismatch {
        /// Child file.
        child: PathBuf,
        /// Parent file.
        parent: PathBuf,
        /// The child's parentCID.
        expected: u32,
        /// The parent's CID.
        found: u32,
    },
    /// The chain is longer than the configured limit.
    #[error("{0}: snapshot chain deeper than {1} links")]
    ChainTooDeep(PathBuf, usize),
    /// A file appears twice in its own chain.
    #[error("{0}: snapshot chain loops back to this file")]
    ChainLoop(PathBuf),
    /// A read or write touches a NOACCESS extent.
    #[error("{path}: extent {extent} is NOACCESS")]
    NoAccess {
        /// Descriptor of the link.
        path: PathBuf,
        /// Extent index.
        extent: usize,
    },
    /// The file system is full (or the file size limit was reached);
    /// nothing that was already written is lost.
    #[error("{path}: disk full")]
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// The disk (or this part of it) cannot be written.
    #[error("{path}: read-only: {reason}")]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The embedded descriptor area cannot hold the new descriptor.
    #[error(
        "{path}: the embedded descriptor area ({capacity} bytes) is too small for {needed} bytes"
    )]
    DescriptorFull {
        /// The file.
        path: PathBuf,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
    /// The operation is not supported for this disk.
    #[error("{path}: not supported: {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What.
        what: String,
    },
    /// A file that would be created exists already.
    #[error("{0}: already exists")]
    AlreadyExists(PathBuf),
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A request lies outside the disk.
    #[error("range {offset}+{len} is outside the disk's {capacity} bytes")]
    OutOfRange {
        /// Start byte.
        offset: u64,
        /// Length.
        len: u64,
        /// Capacity in bytes.
        capacity: u64,
    },
}

impl Error {
    /// An OS error on a write: a full file system (or file size or quota
    /// limit) becomes [`Error::DiskFull`], anything else [`Error::Io`].
    pub(crate) fn disk_full_or_io(path: &std::path::Path, e: io::Error) -> Self {
        use rustix::io::Errno;
        let full = [Errno::NOSPC, Errno::FBIG, Errno::DQUOT].map(|e| e.raw_os_error());
        match e.raw_os_error() {
            Some(code) if full.contains(&code) => Error::DiskFull {
                path: path.to_path_buf(),
            },
            _ => Error::io(path, e),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, source: vmdk_format::Error) -> Self {
        Error::Format {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
