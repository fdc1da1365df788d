//! The error type of disklib.

use std::io;
use std::path::PathBuf;

/// Everything disklib can report.
///
/// Paths are included so that a user knows which file of a chain is at
/// fault; credentials never are.
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
    /// The operation is not supported for this disk.
    #[error("{path}: not supported: {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What.
        what: String,
    },
    /// A local VMDK file problem.
    #[error(transparent)]
    File(#[from] vmdk_file::Error),
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The VM (at the snapshot, if one is given) has no disk with this
    /// datastore path.
    #[error("{path} is not a disk of {owner}")]
    NotADisk {
        /// The datastore path asked for.
        path: String,
        /// The VM or snapshot.
        owner: String,
    },
    /// A vSphere call failed.
    #[error(transparent)]
    Soap(#[from] vim_soap::Error),
    /// An nbd/nbdssl transport error.
    #[error(transparent)]
    Nbd(#[from] transport_nbd::Error),
    /// A san transport error.
    #[error(transparent)]
    San(#[from] transport_san::Error),
    /// A hotadd transport error.
    #[error(transparent)]
    HotAdd(#[from] transport_hotadd::Error),
    /// No transport of the connection's list can reach the disk.
    #[error("no transport can reach {disk}: {tried}")]
    NoTransport {
        /// The disk.
        disk: String,
        /// What each transport said.
        tried: String,
        /// The reason all of them failed for, when it was one reason
        /// (its VixDiskLib code is this error's).
        cause: Option<Box<Error>>,
    },
    /// The library is not initialised (or was exited).
    #[error("the library is not initialised")]
    NotInitialized,
    /// A format-2 repository problem (storage, integrity, keys).
    #[error("repository: {0}")]
    Store(#[source] repo_store::Error),
    /// A backup repository problem.
    #[error("repository {path}: {what}")]
    Repository {
        /// The repository.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A block read back from a repository does not match the CRC-32 the
    /// catalog recorded for it (`verify` lists every such block).
    #[error("repository {path}: backup {backup}, disk {key}: the stored block at byte {offset} ({len} bytes) does not match its CRC-32 (read {found:08x}, catalog {expected:08x})")]
    BadChecksum {
        /// The repository.
        path: PathBuf,
        /// The backup (point in time) holding the block.
        backup: u64,
        /// The disk's device key.
        key: i32,
        /// The block's first byte in the disk.
        offset: u64,
        /// The block's length.
        len: u64,
        /// The catalog's CRC-32.
        expected: u32,
        /// The CRC-32 of what was read.
        found: u32,
    },
    /// Changed-block tracking: a backup or restore plan cannot be made, or
    /// the host's changed areas do not assemble.
    #[error(transparent)]
    Cbt(#[from] cbt::Error),
    /// A guest partition table or filesystem (read through
    /// [`crate::guest`]) is damaged, unsupported, or names no such file.
    #[error("guest: {0}")]
    Guest(#[from] guest_volumes::Error),
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
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// VixDiskLib error codes (the low 16 bits of a `VixError`).
pub mod vix {
    #![allow(missing_docs)]
    pub const OK: u64 = 0;
    pub const E_FAIL: u64 = 1;
    pub const E_OUT_OF_MEMORY: u64 = 2;
    pub const E_INVALID_ARG: u64 = 3;
    pub const E_FILE_NOT_FOUND: u64 = 4;
    pub const E_OBJECT_IS_BUSY: u64 = 5;
    pub const E_NOT_SUPPORTED: u64 = 6;
    pub const E_FILE_ERROR: u64 = 7;
    pub const E_DISK_FULL: u64 = 8;
    pub const E_INCORRECT_FILE_TYPE: u64 = 9;
    pub const E_CANCELLED: u64 = 10;
    pub const E_FILE_READ_ONLY: u64 = 11;
    pub const E_FILE_ALREADY_EXISTS: u64 = 12;
    pub const E_FILE_ACCESS_ERROR: u64 = 13;
    pub const E_FILE_ALREADY_LOCKED: u64 = 15;
    pub const E_BUFFER_TOOSMALL: u64 = 24;
    pub const E_OBJECT_NOT_FOUND: u64 = 25;
    pub const E_HOST_NOT_CONNECTED: u64 = 26;
    pub const E_AUTHENTICATION_FAIL: u64 = 35;
    pub const E_HOST_CONNECTION_LOST: u64 = 36;
    pub const E_INVALID_HANDLE: u64 = 1000;
    pub const E_NOT_FOUND: u64 = 2000;
    pub const E_HOST_NETBLKDEV_HANDSHAKE: u64 = 14006;
    pub const E_HOST_SERVER_NOT_FOUND: u64 = 14008;
    pub const E_HOST_NETWORK_CONN_REFUSED: u64 = 14009;
    pub const E_HOST_TCP_CONN_LOST: u64 = 14011;
    pub const E_DISK_INVAL: u64 = 16000;
    pub const E_DISK_OUTOFRANGE: u64 = 16007;
    pub const E_DISK_CID_MISMATCH: u64 = 16008;
    pub const E_DISK_OPENPARENT: u64 = 16012;
    pub const E_DISK_NEEDKEY: u64 = 16014;
    pub const E_DISK_INVALIDCHAIN: u64 = 16030;
    pub const E_DISK_KEY_NOTFOUND: u64 = 16052;
    pub const E_DISK_CAPACITY_MISMATCH: u64 = 16067;
    pub const E_CANNOT_CONNECT_TO_HOST: u64 = 18000;
    pub const ASYNC: u64 = 25000;
}

impl Error {
    /// The VixDiskLib error code this error maps to.
    pub fn vix_code(&self) -> u64 {
        match self {
            Error::Io { source, .. } => io_vix_code(source),
            Error::File(e) => file_vix_code(e),
            Error::Unsupported { .. } => vix::E_NOT_SUPPORTED,
            Error::InvalidArgument(_) => vix::E_INVALID_ARG,
            Error::NotADisk { .. } => vix::E_FILE_NOT_FOUND,
            Error::OutOfRange { .. } => vix::E_DISK_OUTOFRANGE,
            Error::NotInitialized => vix::E_FAIL,
            Error::Repository { .. } | Error::BadChecksum { .. } | Error::Cbt(_) => vix::E_FAIL,
            Error::Guest(_) | Error::Store(_) => vix::E_FAIL,
            Error::NoTransport { cause, .. } => cause
                .as_ref()
                .map_or(vix::E_NOT_SUPPORTED, |c| c.vix_code()),
            Error::San(transport_san::Error::OutOfRange { .. })
            | Error::HotAdd(transport_hotadd::Error::Device(transport_san::Error::OutOfRange {
                ..
            })) => vix::E_INVALID_ARG,
            Error::San(transport_san::Error::ReadOnly) => vix::E_FILE_READ_ONLY,
            Error::HotAdd(transport_hotadd::Error::Soap(e)) => soap_vix_code(e),
            Error::San(_) | Error::HotAdd(_) => vix::E_FAIL,
            Error::Soap(e) => soap_vix_code(e),
            Error::Nbd(e) => match e {
                transport_nbd::Error::ConnectionLost { .. } => vix::E_HOST_CONNECTION_LOST,
                transport_nbd::Error::Timeout { .. } => vix::E_HOST_TCP_CONN_LOST,
                transport_nbd::Error::Connect { .. } => vix::E_HOST_NETWORK_CONN_REFUSED,
                transport_nbd::Error::ThumbprintMismatch { .. }
                | transport_nbd::Error::Refused(_) => vix::E_HOST_NETBLKDEV_HANDSHAKE,
                transport_nbd::Error::Server { code, .. } => u64::from(*code),
                transport_nbd::Error::InvalidArgument(_) => vix::E_INVALID_ARG,
                transport_nbd::Error::NotADisk { .. } => vix::E_FILE_NOT_FOUND,
                transport_nbd::Error::Soap(e) => soap_vix_code(e),
                _ => vix::E_FAIL,
            },
        }
    }
}

/// The VixDiskLib code of a vSphere call's failure.
fn soap_vix_code(e: &vim_soap::Error) -> u64 {
    use vim_soap::FaultKind as F;
    match e.fault_kind() {
        Some(F::InvalidLogin) | Some(F::NotAuthenticated) => vix::E_AUTHENTICATION_FAIL,
        Some(F::ManagedObjectNotFound(_)) => vix::E_OBJECT_NOT_FOUND,
        Some(F::NotSupported) => vix::E_NOT_SUPPORTED,
        Some(F::FileNotFound(_)) => vix::E_FILE_NOT_FOUND,
        Some(F::InvalidArgument(_)) => vix::E_INVALID_ARG,
        Some(F::MethodAlreadyDisabled(_)) | Some(F::TaskInProgress) | Some(F::InvalidState) => {
            vix::E_OBJECT_IS_BUSY
        }
        Some(_) => vix::E_FAIL,
        None => match e {
            vim_soap::Error::Io { .. } => vix::E_CANNOT_CONNECT_TO_HOST,
            vim_soap::Error::ThumbprintMismatch { .. } => vix::E_AUTHENTICATION_FAIL,
            _ => vix::E_FAIL,
        },
    }
}

/// The VixDiskLib error code of a local file error.
fn file_vix_code(e: &vmdk_file::Error) -> u64 {
    use vmdk_file::Error as F;
    match e {
        F::Io { source, .. } => io_vix_code(source),
        F::Format { .. } | F::Truncated { .. } => vix::E_DISK_INVAL,
        F::NotVmdk(_) => vix::E_INCORRECT_FILE_TYPE,
        F::PathEscape { .. } => vix::E_FILE_ACCESS_ERROR,
        F::ParentMissing { .. } => vix::E_DISK_OPENPARENT,
        F::CidMismatch { .. } => vix::E_DISK_CID_MISMATCH,
        F::ChainTooDeep(..) | F::ChainLoop(_) => vix::E_DISK_INVALIDCHAIN,
        F::NoAccess { .. } => vix::E_FILE_ACCESS_ERROR,
        F::DiskFull { .. } => vix::E_DISK_FULL,
        F::ReadOnly { .. } => vix::E_FILE_READ_ONLY,
        F::DescriptorFull { .. } => vix::E_BUFFER_TOOSMALL,
        F::Unsupported { .. } => vix::E_NOT_SUPPORTED,
        F::AlreadyExists(_) => vix::E_FILE_ALREADY_EXISTS,
        F::InvalidArgument(_) => vix::E_INVALID_ARG,
        F::OutOfRange { .. } => vix::E_DISK_OUTOFRANGE,
        _ => vix::E_FAIL,
    }
}

fn io_vix_code(source: &io::Error) -> u64 {
    match source.kind() {
        io::ErrorKind::NotFound => vix::E_FILE_NOT_FOUND,
        io::ErrorKind::PermissionDenied => vix::E_FILE_ACCESS_ERROR,
        io::ErrorKind::AlreadyExists => vix::E_FILE_ALREADY_EXISTS,
        _ => vix::E_FILE_ERROR,
    }
}
