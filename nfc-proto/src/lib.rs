//! # nfc-proto
//!
//! The NFC (Network File Copy) protocol behind VMware's `nbd` and `nbdssl`
//! transports, as sans-I/O pieces: bytes in, typed frames and events out,
//! output appended to the caller's buffer, time passed in. No sockets, no
//! clocks, no `unsafe`; `no_std` with `alloc`.
//!
//! **Unverified wire format.** VMware publishes no NFC specification. The
//! byte layout here follows public descriptions (VMware's own 2015
//! Apache-2.0 Java NFC client, and a 2026 reverse-engineering write-up of
//! VDDK 8 traffic); it is exercised against this project's simulator and
//! has **not** been verified against a real ESXi host. Where we had to
//! choose (the flush and ping messages, the file-info reply, zlib
//! fragments), the choice is marked as ours.
//!
//! ## Layers
//! - [`authd`]: the line protocol on TCP 902: banner, `SESSION <ticket>`,
//!   `PROXY <service>`, `BANNER`, `THUMBPRINT_SHA2`, `USER`/`PASS`, and the
//!   `200`/`331`/`230`/`530` replies; then the switch to raw NFC (nbd) or a
//!   fresh TLS session (nbdssl), which the I/O layer performs.
//! - [`aio`]: the AIO framing: 16-byte headers (magic `0xA100DA7A`), open
//!   session / file, IO in fragments of at most 64 KiB sharing an op id and
//!   arriving in any order, close, file info, DDB get, errors.
//! - [`client`]: bookkeeping of requests in flight: which op is what, where
//!   each read fragment belongs in the caller's buffer, when an op is done;
//!   duplicate, overlapping or stray fragments are errors.
//! - [`server`]: a server session that turns frames into requests
//!   (reassembling write fragments) and encodes the replies.
//!
//! Every length a peer sends is capped ([`aio::MAX_PAYLOAD`],
//! [`authd::MAX_LINE`], [`client::MAX_REQUEST`]); incomplete input is a
//! state ([`aio::Decoded::NeedMore`]), not an error.
//!
//! ## Example: a read, client and server in memory
//!
//! ```
//! use nfc_proto::{aio, client::Tracker, server::{ServerSession, Request}};
//! let mut wire = Vec::new();
//! let mut tracker = Tracker::new();
//! let op = tracker.read(&mut wire, 7, 0, 100_000)?;
//!
//! let mut server = ServerSession::new();
//! let (consumed, req) = server.handle_input(&wire)?;
//! assert_eq!(consumed, wire.len());
//! let Some(Request::Read { op: sop, handle: 7, offset: 0, len: 100_000, .. }) = req else { panic!() };
//! let mut back = Vec::new();
//! server.reply_read(&mut back, sop, 0, &vec![0xAB; 100_000], false)?;
//!
//! let mut buf = vec![0u8; 100_000];
//! let mut pos = 0;
//! while pos < back.len() {
//!     let (n, ev) = tracker.handle_input(&back[pos..], &mut |_op, at, data| buf[at..at + data.len()].copy_from_slice(data))?;
//!     pos += n;
//!     if let Some(nfc_proto::client::Event::ReadDone { op: done }) = ev { assert_eq!(done, op); }
//! }
//! assert!(buf.iter().all(|&b| b == 0xAB));
//! # Ok::<(), nfc_proto::Error>(())
//! ```

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

extern crate alloc;

use alloc::string::String;

pub mod aio;
pub mod authd;
pub mod client;
pub mod server;

/// Everything that can go wrong in the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame does not start with the AIO magic.
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    /// A length field exceeds its cap.
    #[error("{what} of {len} bytes exceeds the cap of {cap}")]
    TooLarge {
        /// Which length.
        what: &'static str,
        /// The length sent.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// A frame's payload is shorter than its type needs.
    #[error("{what}: payload of {len} bytes is too short")]
    Short {
        /// The message.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A message type this side does not expect.
    #[error("unexpected message type {0}")]
    UnexpectedType(u32),
    /// A reply for an operation that is not in flight.
    #[error("reply for unknown operation {0}")]
    UnknownOp(u32),
    /// A read fragment outside its request, or overlapping another.
    #[error("operation {op}: fragment {offset}+{len} is outside the request or duplicated")]
    BadFragment {
        /// Op id.
        op: u32,
        /// Fragment offset.
        offset: u64,
        /// Fragment length.
        len: u64,
    },
    /// A compressed fragment that does not inflate to its length.
    #[error("operation {0}: compressed fragment is corrupt")]
    BadCompression(u32),
    /// The peer reported an error.
    #[error("peer error {code} (op {op}): {text}")]
    Peer {
        /// Op id it concerns (0: the session).
        op: u32,
        /// Error code.
        code: u32,
        /// Its text.
        text: String,
    },
    /// An authd line or reply that is malformed.
    #[error("authd: {0}")]
    Authd(String),
    /// A text field that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// Too many operations in flight.
    #[error("too many operations in flight")]
    TooManyOps,
}

/// Shorthand result.
pub type Result<T, E = Error> = core::result::Result<T, E>;
