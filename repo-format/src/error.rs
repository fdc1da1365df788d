//! The one error type of the crate.

/// Everything this crate refuses. Each variant names the field or
/// structure at fault; none carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before `what` was complete.
    #[error("truncated {what} at byte {offset}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Offset at which more bytes were needed.
        offset: usize,
    },
    /// Bytes were left after a complete structure.
    #[error("{count} trailing bytes after {what}")]
    TrailingData {
        /// The structure that was complete.
        what: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// A magic number did not match.
    #[error("bad magic in {what}")]
    BadMagic {
        /// The structure whose magic was wrong.
        what: &'static str,
    },
    /// A format version this crate does not read.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// The structure carrying the version.
        what: &'static str,
        /// The version found.
        version: u32,
    },
    /// A field holds a value outside its allowed range or set.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field at fault.
        field: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A size exceeds a cap (allocation guard).
    #[error("{what} of {size} exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The size asked for.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// A JSON document (configuration, lease) is malformed or of the
    /// wrong shape.
    #[error("malformed {what}: {message}")]
    Json {
        /// The document.
        what: &'static str,
        /// The JSON parser's message.
        message: String,
    },
    /// The passphrase (or key file) does not open the key blob.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The repository is encrypted and no master keys were given.
    #[error("the repository is encrypted: master keys are required")]
    KeysRequired,
    /// An object's encryption flag does not match the repository's.
    #[error("object encryption flag does not match the repository")]
    EncryptionMismatch,
    /// An object was of a different kind than asked for.
    #[error("object kind {found} where {expected} was expected")]
    WrongKind {
        /// The kind expected by the caller.
        expected: u8,
        /// The kind found in the header.
        found: u8,
    },
    /// Integrity check failed: AEAD tag or checksum, decompression, or a
    /// chunk whose content does not hash to its id.
    #[error("corrupt object: {reason}")]
    Corrupt {
        /// What did not check out.
        reason: &'static str,
    },
    /// Compression failed (should not happen for valid levels).
    #[error("compression failed")]
    Compression,
    /// Argon2 refused the parameters.
    #[error("key derivation failed: {reason}")]
    Kdf {
        /// Why.
        reason: &'static str,
    },
}
