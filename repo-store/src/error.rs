//! The one error type of the crate.

/// Everything the repository layer refuses or fails at. No variant
/// carries a passphrase, a key or a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage failed (I/O, HTTP, refused request).
    #[error("storage {op} {key}: {message}")]
    Store {
        /// The operation (`get`, `put`, `list`, …).
        op: &'static str,
        /// The object key or prefix.
        key: String,
        /// What the storage said.
        message: String,
    },
    /// A key that is not a valid object name (only `[A-Za-z0-9._-]`
    /// components separated by `/`).
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// The repository URL is not usable.
    #[error("repository URL {url}: {reason}")]
    Url {
        /// The URL (without credentials).
        url: String,
        /// Why.
        reason: String,
    },
    /// The format layer refused something (corrupt object, wrong
    /// passphrase, bad config…).
    #[error("{what}: {source}")]
    Format {
        /// The object or step.
        what: String,
        /// The format error.
        #[source]
        source: repo_format::Error,
    },
    /// No repository (no `config` object) at the location.
    #[error("no repository at {0}")]
    NoRepository(String),
    /// A repository already exists at the location.
    #[error("a repository already exists at {0}")]
    AlreadyExists(String),
    /// A passphrase or key file is needed to open the repository.
    #[error(
        "the repository is encrypted: give a passphrase (--passphrase-file or VDISK_PASSPHRASE)"
    )]
    PassphraseRequired,
    /// A referenced object is absent.
    #[error("missing {what} {name}")]
    Missing {
        /// What kind of object.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A backup point or disk was not found, or a prefix was ambiguous.
    #[error("{0}")]
    NotFound(String),
    /// The writer's lease could not be renewed in time; nothing was
    /// published.
    #[error("lease of backup {0} expired before it could be renewed: nothing published")]
    LeaseExpired(String),
    /// An argument was out of range.
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    pub(crate) fn format(what: impl Into<String>, source: repo_format::Error) -> Self {
        Error::Format {
            what: what.into(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
