//! AIO framing: a 16-byte header (magic `0xA100DA7A`, type, size, op id),
//! a fixed payload of exactly `size` bytes, then the message's extras,
//! which `size` does **not** count: the path of OPEN_FILE, the key of a
//! DDB_GET request and the value of its reply, the data of a write
//! fragment and of a read reply fragment, the bitmap of a
//! QueryAllocatedBlocks reply.
//!
//! Fixed payload lengths (requests and replies alike), from the public
//! traces: OPEN_SESSION 16, CLOSE_SESSION 4, OPEN_FILE 60, CLOSE_FILE 8,
//! IO 44, SET_SOCK_OPTS 12, DDB_GET 16, QueryAllocatedBlocks 48,
//! SET_RES_POOL 4. A frame of a known type with another `size` is
//! [`Error::BadSize`]. The ERROR body (type 1) is unpublished; its `size`
//! is taken as its whole length. GET_FILE_INFO (10) is a documented type
//! with an unpublished layout: it cannot be framed, so decoding it is
//! [`Error::UnexpectedType`].
//!
//! Decoding depends on the direction, because the extras do:
//! [`decode_request`] for bytes from a client, [`decode_reply`] for bytes
//! from a server (which must be told whether an op is a read: a read
//! reply carries data, a write acknowledgement none).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::{put_u32, put_u64, u32_at, u64_at, Error, Result};

/// Frame magic (`7a da 00 a1` on the wire).
pub const MAGIC: u32 = 0xA100_DA7A;
/// Header length.
pub const HEADER_LEN: usize = 16;
/// Length of an IO payload.
pub const IO_LEN: usize = 44;
/// Length of an OPEN_FILE payload (request and reply).
pub const OPEN_FILE_LEN: usize = 60;
/// Length of an OPEN_SESSION payload.
pub const OPEN_SESSION_LEN: usize = 16;
/// Length of a DDB_GET payload (request and reply).
pub const DDB_LEN: usize = 16;
/// Length of a QueryAllocatedBlocks payload.
pub const QUERY_ALLOCATED_LEN: usize = 48;
/// Length of a SET_SOCK_OPTS payload.
pub const SOCK_OPTS_LEN: usize = 12;
/// The session buffer size VDDK asks for by default (one 64 KiB unit).
pub const DEFAULT_BUFFER: u32 = 64 * 1024;
/// The largest session buffer size accepted: ESXi 8 took 2 MiB and
/// refused 16 MiB. It caps every IO extra.
pub const MAX_BUFFER: u32 = 2 << 20;
/// Longest path in an OPEN_FILE request.
pub const MAX_PATH: usize = 4096;
/// Longest DDB key.
pub const MAX_KEY: usize = 1024;
/// Longest DDB value or error text.
pub const MAX_TEXT: usize = 64 * 1024;
/// Largest allocation bitmap (chunks / 8).
pub const MAX_BITMAP: usize = 1 << 20;
/// Largest `size` accepted: an ERROR body of ours with the longest text.
pub const MAX_SIZE: u32 = (8 + 4096) as u32;
/// The VixDiskLib open flags VDDK sends in OPEN_FILE for read-only opens.
pub const FLAGS_READ_ONLY: u32 = 0x1e;
/// The flags for read-write opens (`VIXDISKLIB_FLAG_OPEN_READ_ONLY`, 0x04,
/// cleared).
pub const FLAGS_READ_WRITE: u32 = 0x1a;
/// File type of a virtual disk (`NFC_DISK`).
pub const FILE_TYPE_DISK: u32 = 2;

/// Message types shown in the traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// An error reply (body unpublished; ours is [`ErrorMsg`]).
    Error = 1,
    /// Open the AIO session ([`OpenSession`]).
    OpenSession = 2,
    /// Close it.
    CloseSession = 3,
    /// Open a disk ([`OpenFile`], reply [`Opened`]).
    OpenFile = 4,
    /// Close a disk (payload: handle).
    CloseFile = 5,
    /// Read or write ([`Io`]).
    Io = 7,
    /// Socket options ([`SockOpts`]).
    SetSockOpts = 9,
    /// File information: VDDK asks for `longContentID` before writing;
    /// the layout is unpublished, so it is never sent or answered.
    GetFileInfo = 10,
    /// One DDB key ([`DdbGet`], reply [`DdbValue`]).
    DdbGet = 11,
    /// Allocated chunks ([`QueryAllocated`]).
    QueryAllocatedBlocks = 13,
    /// Resource pool (u32 1).
    SetResPool = 22,
}

impl Kind {
    /// From the wire value.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Kind::Error,
            2 => Kind::OpenSession,
            3 => Kind::CloseSession,
            4 => Kind::OpenFile,
            5 => Kind::CloseFile,
            7 => Kind::Io,
            9 => Kind::SetSockOpts,
            10 => Kind::GetFileInfo,
            11 => Kind::DdbGet,
            13 => Kind::QueryAllocatedBlocks,
            22 => Kind::SetResPool,
            _ => return None,
        })
    }

    /// The documented fixed payload length (`None`: ERROR, whose body is
    /// unpublished, and GET_FILE_INFO).
    pub fn fixed_len(self) -> Option<usize> {
        Some(match self {
            Kind::OpenSession => OPEN_SESSION_LEN,
            Kind::CloseSession | Kind::SetResPool => 4,
            Kind::OpenFile => OPEN_FILE_LEN,
            Kind::CloseFile => 8,
            Kind::Io => IO_LEN,
            Kind::SetSockOpts => SOCK_OPTS_LEN,
            Kind::DdbGet => DDB_LEN,
            Kind::QueryAllocatedBlocks => QUERY_ALLOCATED_LEN,
            Kind::Error | Kind::GetFileInfo => return None,
        })
    }
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type (raw).
    pub kind: u32,
    /// Fixed payload length (extras not counted).
    pub size: u32,
    /// Operation id.
    pub op: u32,
}

impl Header {
    /// Parses 16 bytes: checks the magic, that the type is one the traces
    /// show, and that `size` is its documented length.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Self> {
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let h = Self {
            kind: u32_at(b, 4),
            size: u32_at(b, 8),
            op: u32_at(b, 12),
        };
        let kind = h.known_kind()?;
        match kind.fixed_len() {
            Some(n) if h.size as usize != n => Err(Error::BadSize {
                kind: h.kind,
                size: h.size,
                expected: n as u32,
            }),
            None if h.size > MAX_SIZE => Err(Error::TooLarge {
                what: "error body",
                len: u64::from(h.size),
                cap: u64::from(MAX_SIZE),
            }),
            _ => Ok(h),
        }
    }

    /// The type, when the traces show it with a layout.
    pub fn known_kind(&self) -> Result<Kind> {
        match Kind::from_u32(self.kind) {
            Some(Kind::GetFileInfo) | None => Err(Error::UnexpectedType(self.kind)),
            Some(k) => Ok(k),
        }
    }

    /// Appends the 16 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.op.to_le_bytes());
    }
}

/// One decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Its header.
    pub header: Header,
    /// The fixed payload (`size` bytes).
    pub fixed: &'a [u8],
    /// The extras after it.
    pub extra: &'a [u8],
}

/// Result of [`decode_request`] / [`decode_reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// At least this many bytes are needed in total.
    NeedMore(usize),
    /// A whole frame.
    Frame {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes consumed.
        consumed: usize,
    },
}

fn capped(what: &'static str, len: u64, cap: usize) -> Result<usize> {
    if len > cap as u64 {
        return Err(Error::TooLarge {
            what,
            len,
            cap: cap as u64,
        });
    }
    Ok(len as usize)
}

/// The extras following a client's fixed payload.
pub fn request_extra_len(kind: Kind, fixed: &[u8]) -> Result<usize> {
    match kind {
        Kind::OpenFile => capped("path", u64::from(u32_at(fixed, 0)), MAX_PATH),
        Kind::DdbGet => capped("DDB key", u64::from(u32_at(fixed, 8)), MAX_KEY),
        // A write fragment carries its data; a read request none (its @36
        // repeats the length asked).
        Kind::Io if u64_at(fixed, 8) & 0xffff_ffff == 0 => {
            capped("IO data", u64::from(u32_at(fixed, 36)), MAX_BUFFER as usize)
        }
        _ => Ok(0),
    }
}

/// The extras following a server's fixed payload; `read` tells whether
/// the op is a read (its IO replies carry data).
pub fn reply_extra_len(kind: Kind, fixed: &[u8], read: bool) -> Result<usize> {
    match kind {
        Kind::Io if read => capped("IO data", u64::from(u32_at(fixed, 36)), MAX_BUFFER as usize),
        Kind::DdbGet => capped("DDB value", u64::from(u32_at(fixed, 12)), MAX_TEXT),
        Kind::QueryAllocatedBlocks => {
            let chunks = u64_at(fixed, 32);
            capped("allocation bitmap", bitmap_len(chunks), MAX_BITMAP)
        }
        _ => Ok(0),
    }
}

/// Bytes of a QueryAllocatedBlocks bitmap: one bit per chunk, padded to 4
/// bytes.
pub fn bitmap_len(chunks: u64) -> u64 {
    chunks.div_ceil(32).saturating_mul(4)
}

fn decode_with<'a>(
    buf: &'a [u8],
    extra_len: impl FnOnce(Kind, &Header, &[u8]) -> Result<usize>,
) -> Result<Decoded<'a>> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Decoded::NeedMore(HEADER_LEN));
    };
    let header = Header::parse(head)?;
    let kind = header.known_kind()?;
    let fixed_end = HEADER_LEN + header.size as usize;
    let Some(fixed) = buf.get(HEADER_LEN..fixed_end) else {
        return Ok(Decoded::NeedMore(fixed_end));
    };
    let total = fixed_end + extra_len(kind, &header, fixed)?;
    let Some(extra) = buf.get(fixed_end..total) else {
        return Ok(Decoded::NeedMore(total));
    };
    Ok(Decoded::Frame {
        frame: Frame {
            header,
            fixed,
            extra,
        },
        consumed: total,
    })
}

/// Decodes one frame a client sent.
pub fn decode_request(buf: &[u8]) -> Result<Decoded<'_>> {
    decode_with(buf, |k, _, f| request_extra_len(k, f))
}

/// Decodes one frame a server sent; `is_read(op)` tells whether op `op`
/// is a read.
pub fn decode_reply(buf: &[u8], is_read: impl FnOnce(u32) -> bool) -> Result<Decoded<'_>> {
    decode_with(buf, |k, h, f| reply_extra_len(k, f, is_read(h.op)))
}

/// Appends a whole frame: header (`size` = the fixed payload's length),
/// fixed payload, extras.
pub fn encode(out: &mut Vec<u8>, kind: Kind, op: u32, fixed: &[u8], extra: &[u8]) {
    Header {
        kind: kind as u32,
        size: fixed.len() as u32,
        op,
    }
    .encode(out);
    out.extend_from_slice(fixed);
    out.extend_from_slice(extra);
}

/// The OPEN_SESSION payload: `0, buffer size, buffer count, 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenSession {
    /// Session buffer size in bytes: the largest IO fragment either way.
    pub buffer_size: u32,
    /// Buffer count (VDDK's default is 4).
    pub buffer_count: u32,
}

impl Default for OpenSession {
    fn default() -> Self {
        Self {
            buffer_size: DEFAULT_BUFFER,
            buffer_count: 4,
        }
    }
}

impl OpenSession {
    /// The 16 bytes.
    pub fn to_bytes(&self) -> [u8; OPEN_SESSION_LEN] {
        let mut b = [0u8; OPEN_SESSION_LEN];
        put_u32(&mut b, 4, self.buffer_size);
        put_u32(&mut b, 8, self.buffer_count);
        b
    }
    /// Parses them.
    pub fn parse(p: &[u8]) -> Self {
        Self {
            buffer_size: u32_at(p, 4),
            buffer_count: u32_at(p, 8),
        }
    }
}

/// SET_SOCK_OPTS: VDDK's request is 12 zero bytes; the reply carries the
/// server's buffer sizes and a flag (field order ours: the traces give
/// the values 1675000, 1675000, 1, not their offsets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOpts {
    /// Send buffer.
    pub send: u32,
    /// Receive buffer.
    pub recv: u32,
    /// Flag.
    pub flag: u32,
}

impl SockOpts {
    /// What ESXi 8 answered.
    pub const ESXI8: SockOpts = SockOpts {
        send: 1_675_000,
        recv: 1_675_000,
        flag: 1,
    };
    /// The 12 bytes.
    pub fn to_bytes(&self) -> [u8; SOCK_OPTS_LEN] {
        let mut b = [0u8; SOCK_OPTS_LEN];
        put_u32(&mut b, 0, self.send);
        put_u32(&mut b, 4, self.recv);
        put_u32(&mut b, 8, self.flag);
        b
    }
    /// Parses them.
    pub fn parse(p: &[u8]) -> Self {
        Self {
            send: u32_at(p, 0),
            recv: u32_at(p, 4),
            flag: u32_at(p, 8),
        }
    }
}

/// Compression of one IO fragment: the high half of the opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain bytes (0).
    #[default]
    None,
    /// zlib (1): a bare zlib stream of the fragment.
    Zlib,
    /// FastLZ (2): a raw FastLZ block (no length prefix).
    FastLz,
    /// SkipZ (3): the fragment's non-zero runs.
    SkipZ,
}

impl Compression {
    /// The wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            Compression::None => 0,
            Compression::Zlib => 1,
            Compression::FastLz => 2,
            Compression::SkipZ => 3,
        }
    }
    /// From the wire value.
    pub fn from_u32(v: u32) -> Result<Self> {
        Ok(match v {
            0 => Compression::None,
            1 => Compression::Zlib,
            2 => Compression::FastLz,
            3 => Compression::SkipZ,
            other => return Err(Error::UnknownCompression(other)),
        })
    }
}

/// The 44-byte IO payload.
///
/// | off | field |
/// |---|---|
/// | 0 | handle (0 in read replies) |
/// | 8 | opcode: low half 1 read / 0 write, high half [`Compression`] |
/// | 16 | byte offset of the whole request |
/// | 24 | total length of the request |
/// | 28 | offset of this fragment in the request |
/// | 32 | uncompressed length of this fragment (a read request: the whole length) |
/// | 36 | bytes of data following (a read request: the length again) |
/// | 40 | 0 |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Io {
    /// File handle.
    pub handle: u64,
    /// Read (else write).
    pub read: bool,
    /// Compression (asked for, in a read request; used, in a fragment).
    pub compression: Compression,
    /// Byte offset of the whole request on the disk.
    pub offset: u64,
    /// Length of the whole request.
    pub total: u32,
    /// Offset of this fragment inside the request.
    pub frag_offset: u32,
    /// Uncompressed length of this fragment.
    pub frag_len: u32,
    /// Bytes of data following.
    pub extra: u32,
}

impl Io {
    /// A read request as VDDK sends it: the length at 24, 32 and 36.
    pub fn read_request(handle: u64, offset: u64, len: u32, compression: Compression) -> Self {
        Self {
            handle,
            read: true,
            compression,
            offset,
            total: len,
            frag_offset: 0,
            frag_len: len,
            extra: len,
        }
    }

    /// The 44 bytes.
    pub fn to_bytes(&self) -> [u8; IO_LEN] {
        let mut b = [0u8; IO_LEN];
        put_u64(&mut b, 0, self.handle);
        let op = u64::from(u32::from(self.read)) | (u64::from(self.compression.to_u32()) << 32);
        put_u64(&mut b, 8, op);
        put_u64(&mut b, 16, self.offset);
        put_u32(&mut b, 24, self.total);
        put_u32(&mut b, 28, self.frag_offset);
        put_u32(&mut b, 32, self.frag_len);
        put_u32(&mut b, 36, self.extra);
        b
    }

    /// Appends the 44 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// Parses the 44 bytes: the opcode must be a read or a write with a
    /// known compression type, and a fragment must lie inside its request.
    pub fn parse(p: &[u8]) -> Result<Self> {
        if p.len() < IO_LEN {
            return Err(Error::Short {
                what: "IO",
                len: p.len(),
            });
        }
        let op = u64_at(p, 8);
        let read = match op & 0xffff_ffff {
            0 => false,
            1 => true,
            other => {
                return Err(Error::BadField {
                    what: "IO direction",
                    value: other,
                })
            }
        };
        let io = Io {
            handle: u64_at(p, 0),
            read,
            compression: Compression::from_u32((op >> 32) as u32)?,
            offset: u64_at(p, 16),
            total: u32_at(p, 24),
            frag_offset: u32_at(p, 28),
            frag_len: u32_at(p, 32),
            extra: u32_at(p, 36),
        };
        if u64::from(io.frag_offset) + u64::from(io.frag_len) > u64::from(io.total) {
            return Err(Error::BadFragment {
                op: 0,
                offset: u64::from(io.frag_offset),
                len: u64::from(io.frag_len),
            });
        }
        Ok(io)
    }

    /// Whether this is a read request as VDDK sends it (fragment offset 0,
    /// the whole length at 32 and 36).
    pub fn is_vddk_read_request(&self) -> bool {
        self.read
            && self.frag_offset == 0
            && self.frag_len == self.total
            && self.extra == self.total
            && self.total > 0
    }
}

/// An OPEN_FILE request: the 60-byte payload (path length @0, file type
/// 2 @16, flags @20) and the path as the extra, without a NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFile {
    /// Datastore path of the disk.
    pub path: String,
    /// Open read-only (flags `0x1e`, else `0x1a`).
    pub read_only: bool,
}

impl OpenFile {
    /// The fixed payload.
    pub fn fixed(&self) -> [u8; OPEN_FILE_LEN] {
        let mut b = [0u8; OPEN_FILE_LEN];
        put_u32(&mut b, 0, self.path.len() as u32);
        put_u32(&mut b, 16, FILE_TYPE_DISK);
        put_u32(
            &mut b,
            20,
            if self.read_only {
                FLAGS_READ_ONLY
            } else {
                FLAGS_READ_WRITE
            },
        );
        b
    }

    /// Parses the fixed payload and the path: the file type must be a
    /// disk and the flags one of VDDK's two values.
    pub fn parse(fixed: &[u8], path: &[u8]) -> Result<Self> {
        let ty = u32_at(fixed, 16);
        if ty != FILE_TYPE_DISK {
            return Err(Error::BadField {
                what: "OPEN_FILE file type",
                value: u64::from(ty),
            });
        }
        let read_only = match u32_at(fixed, 20) {
            FLAGS_READ_ONLY => true,
            FLAGS_READ_WRITE => false,
            other => {
                return Err(Error::BadField {
                    what: "OPEN_FILE flags",
                    value: u64::from(other),
                })
            }
        };
        if u32_at(fixed, 0) as usize != path.len() || path.is_empty() {
            return Err(Error::Short {
                what: "OPEN_FILE path",
                len: path.len(),
            });
        }
        Ok(Self {
            path: core::str::from_utf8(path)
                .map_err(|_| Error::NotUtf8("path"))?
                .to_string(),
            read_only,
        })
    }
}

/// The OPEN_FILE reply's 60 bytes: handle @8, file type @16, flags echoed
/// @20, capacity in bytes @28, sector size @36, physical geometry
/// (cylinders, heads, sectors) @40/@44/@48.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Handle for later requests.
    pub handle: u64,
    /// File type (2).
    pub file_type: u32,
    /// The open flags, echoed.
    pub flags: u32,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Sector size.
    pub sector_size: u32,
    /// Physical geometry: cylinders, heads, sectors.
    pub geometry: (u32, u32, u32),
}

impl Opened {
    /// The 60 bytes.
    pub fn to_bytes(&self) -> [u8; OPEN_FILE_LEN] {
        let mut b = [0u8; OPEN_FILE_LEN];
        put_u64(&mut b, 8, self.handle);
        put_u32(&mut b, 16, self.file_type);
        put_u32(&mut b, 20, self.flags);
        put_u64(&mut b, 28, self.capacity);
        put_u32(&mut b, 36, self.sector_size);
        put_u32(&mut b, 40, self.geometry.0);
        put_u32(&mut b, 44, self.geometry.1);
        put_u32(&mut b, 48, self.geometry.2);
        b
    }
    /// Parses them.
    pub fn parse(p: &[u8]) -> Self {
        Self {
            handle: u64_at(p, 8),
            file_type: u32_at(p, 16),
            flags: u32_at(p, 20),
            capacity: u64_at(p, 28),
            sector_size: u32_at(p, 36),
            geometry: (u32_at(p, 40), u32_at(p, 44), u32_at(p, 48)),
        }
    }
}

/// A DDB_GET request: handle @0, key length @8, 0 @12; the key (no `ddb.`
/// prefix, no NUL) as the extra.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DdbGet {
    /// File handle.
    pub handle: u64,
    /// The key (`adapterType`, `geometry.cylinders`, …).
    pub key: String,
}

impl DdbGet {
    /// The fixed payload.
    pub fn fixed(&self) -> [u8; DDB_LEN] {
        let mut b = [0u8; DDB_LEN];
        put_u64(&mut b, 0, self.handle);
        put_u32(&mut b, 8, self.key.len() as u32);
        b
    }
    /// Parses a request.
    pub fn parse(fixed: &[u8], key: &[u8]) -> Result<Self> {
        if key.is_empty() {
            return Err(Error::Short {
                what: "DDB key",
                len: 0,
            });
        }
        Ok(Self {
            handle: u64_at(fixed, 0),
            key: core::str::from_utf8(key)
                .map_err(|_| Error::NotUtf8("DDB key"))?
                .to_string(),
        })
    }
}

/// A DDB_GET reply: 16 bytes with the value length @12, the value as the
/// extra; "not found" is 16 zero bytes and no extra.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DdbValue(pub Option<String>);

impl DdbValue {
    /// The fixed payload.
    pub fn fixed(&self) -> [u8; DDB_LEN] {
        let mut b = [0u8; DDB_LEN];
        put_u32(
            &mut b,
            12,
            self.0.as_ref().map_or(0, |v| v.len().min(MAX_TEXT)) as u32,
        );
        b
    }
    /// The extra.
    pub fn extra(&self) -> &[u8] {
        self.0
            .as_ref()
            .map_or(&[][..], |v| &v.as_bytes()[..v.len().min(MAX_TEXT)])
    }
    /// Parses a reply.
    pub fn parse(value: &[u8]) -> Result<Self> {
        if value.is_empty() {
            return Ok(Self(None));
        }
        Ok(Self(Some(
            core::str::from_utf8(value)
                .map_err(|_| Error::NotUtf8("DDB value"))?
                .to_string(),
        )))
    }
}

/// QueryAllocatedBlocks (type 13): handle @0, chunk size @16, start @24,
/// chunk count @32 (all bytes / u64). The reply echoes the 48 bytes and
/// adds a bitmap, one bit per chunk, LSB first, 1 = allocated, padded to
/// 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryAllocated {
    /// File handle.
    pub handle: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Start in bytes.
    pub start: u64,
    /// Number of chunks.
    pub chunks: u64,
}

impl QueryAllocated {
    /// The 48 bytes.
    pub fn to_bytes(&self) -> [u8; QUERY_ALLOCATED_LEN] {
        let mut b = [0u8; QUERY_ALLOCATED_LEN];
        put_u64(&mut b, 0, self.handle);
        put_u64(&mut b, 16, self.chunk_size);
        put_u64(&mut b, 24, self.start);
        put_u64(&mut b, 32, self.chunks);
        b
    }
    /// Parses them.
    pub fn parse(p: &[u8]) -> Self {
        Self {
            handle: u64_at(p, 0),
            chunk_size: u64_at(p, 16),
            start: u64_at(p, 24),
            chunks: u64_at(p, 32),
        }
    }
}

/// An error body. The traces show type 1 replies but not their bytes:
/// this layout (code, text length, text) is ours. [`ErrorMsg::parse`]
/// takes any body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    /// Code (VixDiskLib codes: 0x0b for a read-only ticket opened for
    /// writing, as the traces show).
    pub code: u32,
    /// Text.
    pub text: String,
}

/// Longest error text sent.
pub const MAX_ERROR_TEXT: usize = 4096;

impl ErrorMsg {
    /// The body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let t = &self.text.as_bytes()[..self.text.len().min(MAX_ERROR_TEXT)];
        let mut b = Vec::with_capacity(8 + t.len());
        b.extend_from_slice(&self.code.to_le_bytes());
        b.extend_from_slice(&(t.len() as u32).to_le_bytes());
        b.extend_from_slice(t);
        b
    }
    /// Parses any body: a code from its first four bytes (0 when
    /// shorter), the text when it has our layout.
    pub fn parse(p: &[u8]) -> Self {
        let code = u32_at(p, 0);
        let len = u32_at(p, 4) as usize;
        let text = match p.get(8..8 + len) {
            Some(t) if p.len() == 8 + len => String::from_utf8_lossy(t).into_owned(),
            _ => String::from("(no text)"),
        };
        Self { code, text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn frames_count_only_the_fixed_payload() {
        let of = OpenFile {
            path: "[ds] vm/x.vmdk".into(),
            read_only: true,
        };
        let mut out = Vec::new();
        encode(&mut out, Kind::OpenFile, 3, &of.fixed(), of.path.as_bytes());
        assert_eq!(u32_at(&out, 8), 60);
        assert_eq!(decode_request(&out[..10]).unwrap(), Decoded::NeedMore(16));
        assert_eq!(decode_request(&out[..20]).unwrap(), Decoded::NeedMore(76));
        assert_eq!(
            decode_request(&out[..80]).unwrap(),
            Decoded::NeedMore(out.len())
        );
        let Decoded::Frame { frame, consumed } = decode_request(&out).unwrap() else {
            panic!()
        };
        assert_eq!(consumed, out.len());
        assert_eq!(OpenFile::parse(frame.fixed, frame.extra).unwrap(), of);
    }

    /// One field at a time off a valid frame.
    #[test]
    fn malformed_frames() {
        let valid = {
            let mut out = Vec::new();
            let io = Io::read_request(7, 512, 512, Compression::None);
            encode(&mut out, Kind::Io, 5, &io.to_bytes(), &[]);
            out
        };
        assert!(decode_request(&valid).is_ok());
        let mut bad = valid.clone();
        bad[0] = 0;
        assert!(matches!(decode_request(&bad), Err(Error::BadMagic(_))));
        let mut bad = valid.clone();
        bad[8] = 45;
        assert!(matches!(
            decode_request(&bad),
            Err(Error::BadSize { expected: 44, .. })
        ));
        for ty in [10u8, 12, 99] {
            let mut bad = valid.clone();
            bad[4] = ty;
            assert!(matches!(
                decode_request(&bad),
                Err(Error::UnexpectedType(_) | Error::BadSize { .. })
            ));
        }
        // A write fragment's data is capped at the largest buffer.
        let mut bad = valid.clone();
        bad[16 + 8] = 0;
        bad[16 + 36..16 + 40].copy_from_slice(&(MAX_BUFFER + 1).to_le_bytes());
        assert!(matches!(decode_request(&bad), Err(Error::TooLarge { .. })));
        // Compression type 4, direction 2.
        let mut bad = valid.clone();
        bad[16 + 12] = 4;
        assert_eq!(Io::parse(&bad[16..]), Err(Error::UnknownCompression(4)));
        let mut bad = valid.clone();
        bad[16 + 8] = 2;
        assert!(Io::parse(&bad[16..]).is_err());
        // A fragment past its request.
        let mut bad = valid.clone();
        bad[16 + 28] = 1;
        assert!(Io::parse(&bad[16..]).is_err());
        // OPEN_FILE flags and file type.
        let of = OpenFile {
            path: "p".into(),
            read_only: false,
        };
        let mut f = of.fixed();
        assert!(OpenFile::parse(&f, b"p").is_ok());
        f[20] |= 1;
        assert!(OpenFile::parse(&f, b"p").is_err());
        let mut f = of.fixed();
        f[16] = 3;
        assert!(OpenFile::parse(&f, b"p").is_err());
        // Error bodies are read whatever they hold.
        assert_eq!(ErrorMsg::parse(&[11, 0]).code, 0);
        assert_eq!(ErrorMsg::parse(&[11, 0, 0, 0]).code, 11);
        let e = ErrorMsg {
            code: 11,
            text: "read-only".into(),
        };
        assert_eq!(ErrorMsg::parse(&e.to_bytes()), e);
        let mut big = vec![0u8; 16];
        big[..4].copy_from_slice(&MAGIC.to_le_bytes());
        big[4] = 1;
        big[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_reply(&big, |_| false),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn payloads_round_trip() {
        let io = Io {
            handle: 3,
            read: false,
            compression: Compression::FastLz,
            offset: 1 << 40,
            total: 1 << 20,
            frag_offset: 65536,
            frag_len: 65536,
            extra: 5,
        };
        assert_eq!(Io::parse(&io.to_bytes()).unwrap(), io);
        let o = Opened {
            handle: 0x1_0000_0007,
            file_type: 2,
            flags: 0x1e,
            capacity: 10 << 30,
            sector_size: 512,
            geometry: (1305, 255, 63),
        };
        assert_eq!(Opened::parse(&o.to_bytes()), o);
        let q = QueryAllocated {
            handle: 1,
            chunk_size: 1 << 20,
            start: 0,
            chunks: 16,
        };
        assert_eq!(QueryAllocated::parse(&q.to_bytes()), q);
        assert_eq!(bitmap_len(16), 4);
        assert_eq!(bitmap_len(33), 8);
        let s = OpenSession {
            buffer_size: 2 << 20,
            buffer_count: 1,
        };
        assert_eq!(OpenSession::parse(&s.to_bytes()), s);
        assert_eq!(
            SockOpts::parse(&SockOpts::ESXI8.to_bytes()),
            SockOpts::ESXI8
        );
        let d = DdbGet {
            handle: 4,
            key: "uuid".into(),
        };
        assert_eq!(DdbGet::parse(&d.fixed(), b"uuid").unwrap(), d);
        let v = DdbValue(Some("lsilogic".into()));
        assert_eq!(DdbValue::parse(v.extra()).unwrap(), v);
        assert_eq!(DdbValue::parse(&[]).unwrap(), DdbValue(None));
    }
}
