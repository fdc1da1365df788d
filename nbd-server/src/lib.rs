//! # nbd-server
//!
//! An NBD (Network Block Device) server, the protocol of `qemu-nbd`,
//! `nbdkit` and `libnbd`, serving any [`BlockExport`] over a Unix or TCP
//! socket, optionally with TLS (`NBD_OPT_STARTTLS`, rustls). The protocol
//! itself lives in the sans-I/O crate `nbd-proto`; this crate owns the
//! sockets, one thread per connection, and the mapping of `io::Error`s to
//! NBD errnos. It is **not** VMware's `nbd` transport (that is NFC).
//!
//! ## Features
//!
//! - Several named exports (`""` is the default export), `NBD_OPT_LIST`,
//!   `INFO`/`GO` with name, description and block sizes.
//! - Structured replies, `base:allocation` block status from
//!   [`BlockExport::block_status`], sparse reads (`OFFSET_HOLE` chunks for
//!   ranges reported hole+zero), FUA, flush, trim, write zeroes.
//! - TLS optional or required ([`ServerConfig::tls`]); [`tls_config_from_pem`].
//! - [`ShutdownHandle::shutdown`] stops accepting, ends the connections
//!   after their current request, flushes writable exports and removes the
//!   Unix socket file.
//!
//! Errors of an export reach the client only as an errno: `PermissionDenied`
//! → `EPERM`, `InvalidInput` → `EINVAL`, `StorageFull`, `QuotaExceeded`,
//! `FileTooLarge` → `ENOSPC`, anything else → `EIO`; the message is logged
//! with `tracing` at debug level.
//!
//! ## Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use nbd_server::{BlockExport, Listen, Server, ServerConfig};
//! # fn run(disk: Arc<dyn BlockExport>) -> std::io::Result<()> {
//! let config = ServerConfig::new().with_export("disk", disk);
//! let server = Server::bind(Listen::Unix("/tmp/disk.sock".into()), config)?;
//! println!("{}", server.uri("disk")); // nbd+unix:///disk?socket=/tmp/disk.sock
//! let stop = server.shutdown_handle();
//! std::thread::spawn(move || { /* later */ stop.shutdown() });
//! server.serve()
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

mod conn;
mod server;

pub use server::{Listen, Server, ServerConfig, ShutdownHandle};

use std::io;
use std::sync::Arc;

/// Allocation state of a byte range, for `base:allocation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub length: u64,
    /// Not allocated (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// Reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

/// Block size constraints of an export (`NBD_INFO_BLOCK_SIZE`).
///
/// `minimum` and `preferred` are powers of two (`minimum` ≤ 64 KiB,
/// `preferred` ≥ 512 and ≥ `minimum`), `maximum` a multiple of `minimum`
/// and ≥ `preferred`; it is clamped to 32 MiB. An export with invalid
/// sizes is refused when a connection starts (the client is disconnected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    /// Offsets and lengths must be multiples of this.
    pub minimum: u32,
    /// Preferred I/O size.
    pub preferred: u32,
    /// Largest read or write payload.
    pub maximum: u32,
}

/// A block device served over NBD. Called from one thread per connection.
pub trait BlockExport: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes, trims and zeroing are allowed.
    fn writable(&self) -> bool;
    /// True only when every connection sees the same data and a flush on one covers writes on all.
    fn multi_conn(&self) -> bool {
        false
    }
    /// Block size constraints.
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: 32 << 20,
        }
    }
    /// Human-readable description.
    fn description(&self) -> Option<String> {
        None
    }
    /// Reads `buf.len()` bytes at `offset` (always in bounds).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `buf` at `offset` (always in bounds); `fua`: durable before returning.
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()>;
    /// Zeroes a range.
    /// `may_trim`: the client allows a hole (NO_HOLE not set).
    fn write_zeroes(&self, offset: u64, length: u64, may_trim: bool, fua: bool) -> io::Result<()>;
    /// Discards a range (a hint; contents afterwards are unspecified).
    fn trim(&self, offset: u64, length: u64, fua: bool) -> io::Result<()> {
        let _ = (offset, length, fua);
        Ok(())
    }
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Extents covering the start of [offset, offset+length), in order, non-empty, lengths > 0, may stop before the end.
    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>>;
}

/// Errors of this crate's non-I/O helpers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The PEM text could not be parsed.
    #[error("PEM: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    /// The PEM text holds no certificate.
    #[error("no certificate in the PEM chain")]
    NoCertificate,
    /// rustls refused the configuration (e.g. key and certificate do not match).
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3, no client
/// authentication) from a PEM certificate chain (leaf first) and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1).
pub fn tls_config_from_pem(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Pem)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(Error::Pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(Error::Tls)?;
    Ok(Arc::new(config))
}

/// The NBD errno for an export's error.
pub fn errno_of(e: &io::Error) -> u32 {
    use io::ErrorKind as K;
    match e.kind() {
        K::PermissionDenied | K::ReadOnlyFilesystem => nbd_proto::consts::EPERM,
        K::InvalidInput => nbd_proto::consts::EINVAL,
        K::StorageFull | K::QuotaExceeded | K::FileTooLarge => nbd_proto::consts::ENOSPC,
        _ => nbd_proto::consts::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbd_proto::consts::{EINVAL, EIO, ENOSPC, EPERM};

    #[test]
    fn io_error_kinds_map_to_nbd_errnos() {
        let e = |k: io::ErrorKind| errno_of(&io::Error::new(k, "detail stays local"));
        assert_eq!(e(io::ErrorKind::PermissionDenied), EPERM);
        assert_eq!(e(io::ErrorKind::InvalidInput), EINVAL);
        assert_eq!(e(io::ErrorKind::StorageFull), ENOSPC);
        assert_eq!(e(io::ErrorKind::QuotaExceeded), ENOSPC);
        assert_eq!(e(io::ErrorKind::NotFound), EIO);
        assert_eq!(e(io::ErrorKind::Other), EIO);
    }
}
