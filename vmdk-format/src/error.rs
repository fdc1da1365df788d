//! The one error type of this crate.

use alloc::string::String;

/// Which on-disk structure an error refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// The hosted sparse (KDMV) header.
    SparseHeader,
    /// The footer copy of the sparse header in a streamOptimized file.
    Footer,
    /// The COWD (vmfsSparse) header.
    CowdHeader,
    /// The seSparse constant header.
    SeSparseConstHeader,
    /// The seSparse volatile header.
    SeSparseVolatileHeader,
    /// A stream marker or compressed grain header.
    StreamMarker,
    /// A grain directory.
    GrainDirectory,
    /// A grain table.
    GrainTable,
}

/// Everything that can go wrong while parsing or mapping a VMDK.
///
/// Every variant carries enough context (line, field, byte offset) to
/// point a user at the faulty spot. No variant ever carries user
/// credentials or file contents beyond a short token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before a structure was complete.
    #[error("{what:?} truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// The structure being read.
        what: Structure,
        /// Bytes required.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// A magic number did not match.
    #[error("{what:?}: bad magic {found:#x}")]
    BadMagic {
        /// The structure being read.
        what: Structure,
        /// The value found.
        found: u64,
    },
    /// A header field holds a value this crate refuses.
    #[error("{what:?}: field `{field}` has invalid value {value:#x}: {reason}")]
    InvalidField {
        /// The structure being read.
        what: Structure,
        /// The field name as in the format documentation.
        field: &'static str,
        /// The raw value.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A feature the format allows but this crate does not implement.
    #[error("{what:?}: unsupported: {feature}")]
    Unsupported {
        /// The structure being read.
        what: Structure,
        /// What is unsupported.
        feature: &'static str,
    },
    /// The descriptor text could not be parsed.
    #[error("descriptor line {line}: {kind}")]
    Descriptor {
        /// 1-based line number (0 when the fault is not tied to a line).
        line: usize,
        /// What went wrong.
        kind: DescriptorError,
    },
    /// A table entry points outside the file.
    #[error(
        "{what:?} entry {index} points past end of file (byte {offset}, file is {file_len} bytes)"
    )]
    BeyondEof {
        /// The table holding the entry.
        what: Structure,
        /// Index of the entry inside its table.
        index: u64,
        /// The byte offset the entry designates.
        offset: u64,
        /// The file length.
        file_len: u64,
    },
    /// A grain table entry points into the metadata area (header,
    /// descriptor, directories or tables).
    #[error("grain table entry for grain {grain} points into metadata (sector {sector})")]
    GrainInMetadata {
        /// Virtual grain number.
        grain: u64,
        /// Sector the entry designates.
        sector: u64,
    },
    /// A compressed grain does not hold what its table entry promises.
    #[error("compressed grain at byte {offset}: {reason}")]
    BadCompressedGrain {
        /// File offset of the grain marker.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A zlib stream failed to inflate.
    #[error("compressed grain at byte {offset} does not inflate")]
    Inflate {
        /// File offset of the grain marker.
        offset: u64,
    },
    /// A byte range lies outside the disk's capacity.
    #[error("range {offset}+{len} is outside the capacity of {capacity} bytes")]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Capacity in bytes.
        capacity: u64,
    },
    /// A table supplied by the caller does not belong to the request.
    #[error("grain table supplied for the wrong request")]
    TableMismatch,
    /// An arithmetic result derived from the file overflowed.
    #[error("{what:?}: arithmetic overflow computing {field}")]
    Overflow {
        /// The structure being read.
        what: Structure,
        /// Which value overflowed.
        field: &'static str,
    },
    /// A dirty seSparse journal would have to be replayed first.
    #[error("seSparse journal is dirty (replay_journal set); refusing to read")]
    DirtyJournal,
    /// An extent configuration that cannot form a disk.
    #[error("extent {index}: {reason}")]
    BadExtent {
        /// Index of the extent in the descriptor.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A value cannot be written into a descriptor.
    #[error("value of `{key}` cannot be stored in a descriptor: {reason}")]
    Unserializable {
        /// The key or field.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

/// What went wrong inside a descriptor.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DescriptorError {
    /// The first meaningful line is not one of the four signature spellings.
    #[error("missing `# Disk DescriptorFile` signature")]
    MissingSignature,
    /// A carriage return not followed by a line feed.
    #[error("lone carriage return")]
    LoneCarriageReturn,
    /// A line that is neither a key, an extent nor a comment.
    #[error("unrecognised line")]
    Unrecognised,
    /// A required header key is absent.
    #[error("missing key `{0}`")]
    MissingKey(&'static str),
    /// A key appears twice.
    #[error("duplicate key `{0}`")]
    DuplicateKey(String),
    /// A value could not be parsed.
    #[error("invalid value for `{key}`")]
    InvalidValue {
        /// The key.
        key: String,
    },
    /// A quoted string is not closed.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// `version` is not 1, 2 or 3.
    #[error("unsupported descriptor version")]
    UnsupportedVersion,
    /// `createType` names no known disk type.
    #[error("unknown createType `{0}`")]
    UnknownCreateType(String),
    /// `encoding` names an encoding this crate cannot decode.
    #[error("unsupported encoding `{0}`")]
    UnsupportedEncoding(String),
    /// An extent line is malformed.
    #[error("bad extent line: {0}")]
    BadExtent(&'static str),
    /// The descriptor exceeds a size or line-count cap.
    #[error("descriptor too large")]
    TooLarge,
    /// The descriptor has no extent line.
    #[error("no extent lines")]
    NoExtents,
    /// The bytes are not valid text in the declared encoding.
    #[error("text is not valid {0}")]
    InvalidText(&'static str),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

pub(crate) fn desc_err(line: usize, kind: DescriptorError) -> Error {
    Error::Descriptor { line, kind }
}
