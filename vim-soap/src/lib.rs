//! # vim-soap
//!
//! The vSphere SOAP calls a virtual-disk kit needs, in vSphere's own
//! dialect: `ManagedObjectReference`s with their `type` attribute,
//! `xsi:type` on polymorphic values, arrays as repeated elements, the
//! `vmware_soap_session` cookie, and SOAP faults parsed into typed
//! [`Fault`]s.
//!
//! - [`codec`] builds requests and parses responses (and, for servers and
//!   simulators, with feature `server`, parses requests and builds
//!   responses). It does no I/O.
//! - [`client`] (feature `client`, on by default) is a small blocking HTTPS
//!   client: rustls with the server certificate pinned by its SHA-1 or
//!   SHA-256 thumbprint (the colon-hex form vSphere shows), checked before
//!   any credential is sent; connect and read timeouts; the session
//!   cookie. Passwords are [`Secret`]s: redacted in `Debug`, logs and errors.
//!
//! Internal calls (`RetrieveInternalContent`, the `NfcService` methods,
//! `DisableMethods` / `EnableMethods`) use the `urn:internalvim25`
//! namespace. Their shapes follow public descriptions; they have been
//! exercised against this project's simulator, not a real vCenter.
//!
//! ## Features
//!
//! - `client` (default): the blocking HTTPS [`client`].
//! - `server` (off by default): the server half of [`codec`], which only
//!   a simulator needs: `parse_request`, `response_envelope`,
//!   `fault_envelope`, and the writers of response values
//!   (`task_info_xml`, `virtual_disks_xml`, `virtual_devices_xml`,
//!   `snapshot_tree_xml`, `disk_change_info_xml`, `disk_block_map_xml`,
//!   `object_content_xml`, `simple_val`, `moref_val`).
//!
//! ```
//! use vim_soap::codec::{self, MoRef};
//! let req = codec::login(&MoRef::new("SessionManager", "SessionManager"), "root", &"p<ss".into());
//! assert!(req.body.contains(r#"<_this type="SessionManager">SessionManager</_this>"#));
//! assert!(req.body.contains("<password>p&lt;ss</password>"));
//! // A fault from the server is a typed error.
//! # #[cfg(feature = "server")] {
//! let fault = codec::fault_envelope(&vim_soap::FaultKind::InvalidLogin, "Cannot complete login");
//! match codec::parse_response(fault.as_bytes()) {
//!     Err(vim_soap::Error::Fault(f)) => assert_eq!(f.kind, vim_soap::FaultKind::InvalidLogin),
//!     other => panic!("{other:?}"),
//! }
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

#[cfg(feature = "client")]
pub mod client;
pub mod codec;
#[cfg(feature = "client")]
pub mod http;
pub mod xml;

pub use codec::{Fault, FaultKind, MoRef};

/// A password or session secret: never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a SOAP fault.
    #[error("{0}")]
    Fault(Fault),
    /// The message is not what the protocol allows.
    #[error("malformed SOAP message: {0}")]
    Malformed(String),
    /// A network or TLS error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The server's certificate does not have the pinned thumbprint.
    #[error("server certificate thumbprint {found} does not match the expected {expected}")]
    ThumbprintMismatch {
        /// The pinned thumbprint.
        expected: String,
        /// What the server presented.
        found: String,
    },
    /// A thumbprint string is not colon-separated hex of SHA-1 or SHA-256 length.
    #[error(
        "invalid thumbprint `{0}`: expected 20 (SHA-1) or 32 (SHA-256) colon-separated hex bytes"
    )]
    BadThumbprint(String),
    /// An HTTP-level failure.
    #[error("HTTP {status}: {reason}")]
    Http {
        /// Status code.
        status: u16,
        /// Reason or body excerpt.
        reason: String,
    },
    /// A task ended in the error state.
    #[error("task {task} failed: {fault}")]
    TaskFailed {
        /// The task moref value.
        task: String,
        /// The fault it carries.
        fault: Fault,
    },
    /// A wait timed out.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// The fault kind, when this is a fault (directly or from a task).
    pub fn fault_kind(&self) -> Option<&FaultKind> {
        match self {
            Error::Fault(f) | Error::TaskFailed { fault: f, .. } => Some(&f.kind),
            _ => None,
        }
    }
}

/// Shorthand result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
