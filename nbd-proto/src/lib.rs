//! # nbd-proto
//!
//! The server side of the NBD (Network Block Device) protocol, the one
//! spoken by `qemu-nbd`, `nbdkit` and `libnbd`, as a sans-I/O state
//! machine: client bytes in (the call reports how many it consumed, or
//! that it needs more), replies appended to the caller's `Vec<u8>`, typed
//! requests out. No sockets, no threads, no TLS, no clocks, no `unsafe`;
//! `no_std` with `alloc`. It is **not** VMware's `nbd` transport (that is
//! NFC, see `nfc-proto`). `nbd-server` runs it over Unix and TCP sockets
//! and rustls.
//!
//! The wire follows the NBD protocol document (`doc/proto.md` of the
//! `NetworkBlockDevice/nbd` repository); option and reply numbers are
//! those of its current revision (the ones libnbd and qemu use).
//!
//! ## Features
//!
//! - Fixed newstyle handshake only ([`consts::FLAG_FIXED_NEWSTYLE`],
//!   [`consts::FLAG_NO_ZEROES`]); a client without `FIXED_NEWSTYLE` or
//!   with unknown flags is refused.
//! - Options: `EXPORT_NAME`, `ABORT`, `LIST`, `STARTTLS`, `INFO`, `GO`
//!   (`NBD_INFO_EXPORT`, `NAME`, `DESCRIPTION`, `BLOCK_SIZE`),
//!   `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and `SET_META_CONTEXT` with
//!   the single context `base:allocation`. Other options get
//!   `NBD_REP_ERR_UNSUP`; option payloads above [`MAX_OPTION_LEN`] are
//!   skipped without being buffered and answered `NBD_REP_ERR_TOO_BIG`.
//! - Transmission: `READ`, `WRITE`, `FLUSH`, `TRIM`, `WRITE_ZEROES`,
//!   `BLOCK_STATUS` and `DISC`, validated (flags, bounds, read-only,
//!   alignment, [`MAX_PAYLOAD`]) before they reach the caller; invalid
//!   requests are answered by the machine itself. Simple and structured
//!   replies.
//!
//! ## Example
//!
//! ```
//! use nbd_proto::{consts, Event, ExportInfo, ServerSession, SessionConfig};
//!
//! let config = SessionConfig::new(vec![ExportInfo::new("disk", 1 << 20)]);
//! let mut server = ServerSession::new(config).unwrap();
//! let mut out = Vec::new();
//! // The first call writes the greeting.
//! assert!(matches!(server.handle_input(&[], &mut out).unwrap().event, Event::Continue));
//! assert_eq!(&out[..8], b"NBDMAGIC");
//! // Client flags: FIXED_NEWSTYLE | NO_ZEROES.
//! let flags = 3u32.to_be_bytes();
//! let st = server.handle_input(&flags, &mut out).unwrap();
//! assert_eq!(st.consumed, 4);
//! // An unknown option is answered NBD_REP_ERR_UNSUP and negotiation goes on.
//! out.clear();
//! let mut opt = b"IHAVEOPT".to_vec();
//! opt.extend_from_slice(&99u32.to_be_bytes());
//! opt.extend_from_slice(&0u32.to_be_bytes());
//! let st = server.handle_input(&opt, &mut out).unwrap();
//! assert_eq!(st.consumed, 16);
//! assert_eq!(&out[12..16], &consts::REP_ERR_UNSUP.to_be_bytes());
//! // A bad option magic is a protocol error: the connection must close.
//! assert!(server.handle_input(&[0; 16], &mut out).is_err());
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

extern crate alloc;

pub mod consts;
mod session;
pub mod wire;

pub use session::{
    BlockSize, Command, Event, ExportInfo, ReplyTo, Request, ServerSession, SessionConfig, Status,
    TlsPolicy,
};

/// The largest option payload buffered (64 KiB); longer options are
/// skipped and refused with `NBD_REP_ERR_TOO_BIG` (or, for
/// `NBD_OPT_EXPORT_NAME`, the connection is closed).
pub const MAX_OPTION_LEN: u32 = 64 << 10;

/// The largest read or write payload this machine ever accepts (32 MiB).
/// An export's advertised maximum block size is clamped to it, so a
/// caller buffering one request needs at most `MAX_PAYLOAD + 28` bytes.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// The longest NBD string (export names, queries) the spec allows.
pub const MAX_STRING: usize = 4096;

/// A protocol violation after which the connection must be closed.
///
/// Bytes already appended to the output buffer (if any) may still be sent
/// before closing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client's flags lack `NBD_FLAG_C_FIXED_NEWSTYLE` or carry unknown bits.
    #[error("unsupported client flags {flags:#x}")]
    ClientFlags {
        /// The 32-bit flags the client sent.
        flags: u32,
    },
    /// An option header did not start with `IHAVEOPT`.
    #[error("bad option magic {magic:#x}")]
    OptionMagic {
        /// The magic received.
        magic: u64,
    },
    /// A request header did not start with `NBD_REQUEST_MAGIC`.
    #[error("bad request magic {magic:#x}")]
    RequestMagic {
        /// The magic received.
        magic: u32,
    },
    /// `NBD_OPT_EXPORT_NAME` named an unknown export, had an invalid name,
    /// or was longer than [`MAX_OPTION_LEN`]; the spec's only answer is to
    /// close.
    #[error("NBD_OPT_EXPORT_NAME refused")]
    ExportNameRefused,
    /// `NBD_OPT_EXPORT_NAME` was sent while TLS is required and not started.
    #[error("NBD_OPT_EXPORT_NAME before the required STARTTLS")]
    TlsRequired,
    /// Input arrived after the session ended.
    #[error("the session is closed")]
    Closed,
    /// The session was configured with an invalid export.
    #[error("export {index}: invalid {field}")]
    InvalidExport {
        /// Index of the export in [`SessionConfig::exports`].
        index: usize,
        /// The offending field.
        field: &'static str,
    },
}
