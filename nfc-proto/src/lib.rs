//! # nfc-proto
//!
//! The NFC (Network File Copy) protocol behind VMware's `nbd` and `nbdssl`
//! transports, as sans-I/O pieces: bytes in, typed frames and events out,
//! output appended to the caller's buffer. No sockets, no clocks, no
//! `unsafe`; `no_std` with `alloc`. It does not open connections, run TLS
//! or ask vSphere for tickets: `transport-nbd` (client) and the
//! simulator's NFC server (`vsphere-sim`) do that around it.
//!
//! ## What follows public traces, what is ours
//!
//! VMware publishes no NFC specification. The wire here follows the
//! public write-ups of VDDK 8 traffic against ESXi 8 (the four documents
//! `nfc_auth`, `nfc_open`, `nfc_read`, `nfc_write` of the OpenVixDiskLib
//! project, read for facts only) and VMware's 2015 Apache-2.0 Java NFC
//! client. Those documents give field values, not hex dumps; the golden
//! tests (`tests/golden.rs`) hold our byte encoding of every message they
//! describe. **Byte compatibility with a real ESXi host is unverified.**
//!
//! Following the traces, field by field:
//! - authd ([`authd`]): the banner, `SESSION <ticket>` (no reply),
//!   `BANNER ` (reply `220 …`), `THUMBPRINT_SHA2 PlainText` (reply
//!   `200 <SHA-256>`), `PROXY <ticket service>[ssl]` (reply `200 Connect
//!   ha-nfc[ssl]`).
//! - The classic 264-byte handshake ([`classic`]): 43 `PlainText`, 33 →
//!   36, 51 ↔ 51 (version 11), 54 followed by the raw strings `vddk` and
//!   `nbdmode`, 55 (features 3), 52 ↔ 52; at the end classic type 4.
//! - AIO ([`aio`]): the 16-byte header whose `size` counts only the fixed
//!   payload (paths, DDB keys and values, IO data and allocation bitmaps
//!   follow it as extras); OPEN_SESSION (buffer size and count),
//!   SET_SOCK_OPTS, SET_RES_POOL, OPEN_FILE and its reply (handle,
//!   type, flags, capacity, sector size, geometry), IO requests, read
//!   replies (any order, fragments of the session's buffer size) and the
//!   single write acknowledgement, DDB_GET, QueryAllocatedBlocks (13),
//!   CLOSE_FILE, CLOSE_SESSION; op ids counted from 0.
//! - Compression ([`compress`]): the type in the high half of the IO
//!   opcode, per fragment, the server free to answer type 0: FastLZ (2,
//!   level 2 for 64 KiB fragments, level 1 below), zlib (1, a bare zlib
//!   stream) and SkipZ (3, non-zero runs), as the newest read/write trace
//!   describes them.
//!
//! Our fallbacks, where the traces show a message but not its bytes:
//! - the AIO ERROR body (type 1): we send `code u32, length u32, text`
//!   and read any body, taking a code from its first four bytes;
//! - the SET_SOCK_OPTS reply's field order (send, receive, flag) and the
//!   SET_RES_POOL / CLOSE_FILE / CLOSE_SESSION reply payloads (echoes);
//! - the write acknowledgement's handle, opcode, offset and @36 (zero);
//! - the position of type 36's `1` (frame offset 16; clients ignore it);
//! - the zlib level (1, which gives the `78 01` captures show).
//!
//! VDDK features whose bytes are unpublished, which we never send:
//! GET_FILE_INFO (10, asked for `longContentID` before writes; the
//! simulator refuses it), a flush (none exists on the wire: the write
//! acknowledgement is the only durability signal) and a keep-alive (none
//! exists: `transport-nbd` reads one sector, a documented message). No
//! other message, flag or opcode is ever encoded.
//!
//! ## Layers
//! - [`authd`]: the line protocol on TCP 902.
//! - [`classic`]: the fixed-size classic messages and the handshake state
//!   machines of both sides.
//! - [`aio`]: AIO frames and typed payloads.
//! - [`compress`]: FastLZ, zlib and SkipZ fragments.
//! - [`client`]: bookkeeping of requests in flight: op ids, where each
//!   read fragment belongs, when an op is done.
//! - [`server`]: a server session: handshake, session messages answered
//!   internally, requests out (write fragments reassembled), replies
//!   encoded.
//!
//! Every length a peer sends is capped ([`aio::MAX_SIZE`],
//! [`aio::MAX_BUFFER`], [`aio::MAX_PATH`], [`authd::MAX_LINE`],
//! [`client::MAX_REQUEST`] …); incomplete input is a state
//! ([`aio::Decoded::NeedMore`], a consumed count of 0), not an error.
//!
//! ## Example: a read, client and server in memory
//!
//! ```
//! use nfc_proto::{aio, classic, client::{Event, Tracker}, server::{ServerSession, Request}};
//! let mut server = ServerSession::new();
//! let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
//! // The classic handshake, then AIO.
//! let mut hs = classic::ClientHandshake::vddk();
//! while !hs.is_done() {
//!     hs.poll_output(&mut c2s);
//!     while let (n @ 1.., _) = server.handle_input(&c2s)? { c2s.drain(..n); }
//!     server.poll_output(&mut s2c);
//!     let n = hs.handle_input(&s2c)?;
//!     s2c.drain(..n);
//! }
//! let mut tracker = Tracker::new();
//! tracker.open_session(&mut c2s, aio::OpenSession::default())?;
//! let op = tracker.read(&mut c2s, 7, 0, 100_000)?;
//! let mut req = None;
//! while let (n @ 1.., r) = server.handle_input(&c2s)? { c2s.drain(..n); req = req.or(r); }
//! server.poll_output(&mut s2c);
//! let Some(Request::Read(r)) = req else { panic!() };
//! server.reply_read(&mut s2c, &r, &vec![0xAB; 100_000])?;
//!
//! let mut buf = vec![0u8; 100_000];
//! let mut pos = 0;
//! let mut done = false;
//! while pos < s2c.len() {
//!     let (n, ev) = tracker.handle_input(&s2c[pos..], &mut |_op, at, data| buf[at..at + data.len()].copy_from_slice(data))?;
//!     pos += n;
//!     done |= ev == Some(Event::ReadDone { op });
//! }
//! assert!(done && buf.iter().all(|&b| b == 0xAB));
//! # Ok::<(), nfc_proto::Error>(())
//! ```
//!
//! An error outcome: a frame that does not start with the AIO magic.
//!
//! ```
//! let bad = [0u8; 16];
//! assert_eq!(nfc_proto::aio::decode_request(&bad), Err(nfc_proto::Error::BadMagic(0)));
//! ```

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

extern crate alloc;

use alloc::string::String;

pub mod aio;
pub mod authd;
pub mod classic;
pub mod client;
pub mod compress;
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
    /// An AIO frame whose `size` is not its type's fixed payload length.
    #[error("AIO message type {kind}: size {size}, documented {expected}")]
    BadSize {
        /// Message type.
        kind: u32,
        /// The size sent.
        size: u32,
        /// The documented fixed payload length.
        expected: u32,
    },
    /// A field with a value the traces do not show.
    #[error("{what}: unexpected value {value:#x}")]
    BadField {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A message type this side does not expect.
    #[error("unexpected message type {0}")]
    UnexpectedType(u32),
    /// A classic message out of the handshake's order.
    #[error("classic handshake: expected type {expected}, got {got}")]
    Handshake {
        /// The type the handshake is at.
        expected: u32,
        /// The type received.
        got: u32,
    },
    /// A message the session's state does not allow.
    #[error("{0}")]
    State(&'static str),
    /// A request whose op id is not the next one (VDDK counts from 0, one
    /// per request; the fragments of one write share it).
    #[error("op id {got}, expected {expected}")]
    OpOutOfSequence {
        /// The next op id.
        expected: u32,
        /// The op id sent.
        got: u32,
    },
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
    /// A compression type outside 0–3.
    #[error("unknown compression type {0}")]
    UnknownCompression(u32),
    /// A compressed fragment that does not inflate to its length.
    #[error("operation {0}: compressed fragment is corrupt")]
    BadCompression(u32),
    /// The peer reported an error.
    #[error("peer error {code} (op {op}): {text}")]
    Peer {
        /// Op id it concerns.
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

/// Little-endian readers over fixed payloads whose length was checked.
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(fuzzing)]
pub mod fuzzing {
    //! Internals for the fuzz targets.
    pub use crate::compress::{fastlz_compress, fastlz_decompress, skipz_decode, skipz_encode};
}
