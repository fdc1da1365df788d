//! AIO framing: a 16-byte header (magic, type, payload size, op id) and
//! typed payloads.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::{Error, Result};

/// Frame magic.
pub const MAGIC: u32 = 0xA100_DA7A;
/// Header length.
pub const HEADER_LEN: usize = 16;
/// Largest data fragment.
pub const MAX_FRAGMENT: usize = 64 * 1024;
/// Length of an IO payload's fixed part.
pub const IO_LEN: usize = 44;
/// Largest payload accepted: a fragment, its IO header, and room for a
/// zlib stream that did not shrink.
pub const MAX_PAYLOAD: u32 = (MAX_FRAGMENT + MAX_FRAGMENT / 8 + IO_LEN + 1024) as u32;
/// Longest path in an open-file request.
pub const MAX_PATH: usize = 4096;
/// Length of an open-file payload's fixed part.
pub const OPEN_FILE_LEN: usize = 60;

/// Message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// An error (payload: [`ErrorMsg`]).
    Error = 1,
    /// Open the AIO session.
    OpenSession = 2,
    /// Close it.
    CloseSession = 3,
    /// Open a disk (payload: [`OpenFile`]).
    OpenFile = 4,
    /// Close a disk (payload: handle).
    CloseFile = 5,
    /// Read or write (payload: [`Io`] + data).
    Io = 7,
    /// Socket options (accepted and ignored).
    SetSockOpts = 9,
    /// Disk information (reply: [`FileInfo`]).
    GetFileInfo = 10,
    /// One DDB key.
    DdbGet = 11,
    /// Flush a disk (our extension: the public descriptions name none).
    Flush = 12,
    /// Keep-alive (our extension).
    Ping = 13,
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
            12 => Kind::Flush,
            13 => Kind::Ping,
            _ => return None,
        })
    }
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type (raw).
    pub kind: u32,
    /// Payload length.
    pub size: u32,
    /// Operation id.
    pub op: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Header {
    /// Parses 16 bytes, checking the magic and the payload cap.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Self> {
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let size = u32_at(b, 8);
        if size > MAX_PAYLOAD {
            return Err(Error::TooLarge {
                what: "frame payload",
                len: u64::from(size),
                cap: u64::from(MAX_PAYLOAD),
            });
        }
        Ok(Self {
            kind: u32_at(b, 4),
            size,
            op: u32_at(b, 12),
        })
    }

    /// Appends the 16 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.op.to_le_bytes());
    }
}

/// Result of [`decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// At least this many bytes are needed in total.
    NeedMore(usize),
    /// A whole frame.
    Frame {
        /// Its header.
        header: Header,
        /// Its payload.
        payload: &'a [u8],
        /// Bytes consumed.
        consumed: usize,
    },
}

/// Decodes one frame from the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Decoded::NeedMore(HEADER_LEN));
    };
    let header = Header::parse(head)?;
    let total = HEADER_LEN + header.size as usize;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total));
    }
    Ok(Decoded::Frame {
        header,
        payload: &buf[HEADER_LEN..total],
        consumed: total,
    })
}

/// Appends a whole frame.
pub fn encode(out: &mut Vec<u8>, kind: Kind, op: u32, parts: &[&[u8]]) {
    let size: usize = parts.iter().map(|p| p.len()).sum();
    Header {
        kind: kind as u32,
        size: size as u32,
        op,
    }
    .encode(out);
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Compression of IO data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain bytes.
    None,
    /// zlib (our encoding of VDDK's `COMPRESSION_ZLIB` open flag).
    Zlib,
}

/// The fixed part of an IO payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Io {
    /// File handle.
    pub handle: u64,
    /// Read (else write).
    pub read: bool,
    /// Data compression of this fragment.
    pub compression: Compression,
    /// Byte offset of the whole request on the disk.
    pub offset: u64,
    /// Length of the whole request.
    pub total: u32,
    /// Offset of this fragment inside the request.
    pub frag_offset: u32,
    /// Uncompressed length of this fragment's data.
    pub frag_len: u32,
    /// Bytes of data following (compressed length, or `frag_len`).
    pub extra: u32,
}

impl Io {
    /// Appends the 44-byte fixed part.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.handle.to_le_bytes());
        let op = u64::from(u32::from(self.read))
            | (u64::from(match self.compression {
                Compression::None => 0u32,
                Compression::Zlib => 1,
            }) << 32);
        out.extend_from_slice(&op.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.total.to_le_bytes());
        out.extend_from_slice(&self.frag_offset.to_le_bytes());
        out.extend_from_slice(&self.frag_len.to_le_bytes());
        out.extend_from_slice(&self.extra.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
    }

    /// Parses just the 44-byte fixed part (for readers that then read the
    /// data straight into its destination); checks the fragment bounds.
    pub fn parse_fixed(p: &[u8; IO_LEN]) -> Result<Self> {
        let op = u64_at(p, 8);
        let compression = match op >> 32 {
            0 => Compression::None,
            1 => Compression::Zlib,
            _ => return Err(Error::UnexpectedType(Kind::Io as u32)),
        };
        let io = Io {
            handle: u64_at(p, 0),
            read: op & 0xffff_ffff == 1,
            compression,
            offset: u64_at(p, 16),
            total: u32_at(p, 24),
            frag_offset: u32_at(p, 28),
            frag_len: u32_at(p, 32),
            extra: u32_at(p, 36),
        };
        if io.extra > MAX_PAYLOAD {
            return Err(Error::TooLarge {
                what: "IO data",
                len: u64::from(io.extra),
                cap: u64::from(MAX_PAYLOAD),
            });
        }
        if io.frag_len as usize > MAX_FRAGMENT {
            return Err(Error::TooLarge {
                what: "fragment",
                len: u64::from(io.frag_len),
                cap: MAX_FRAGMENT as u64,
            });
        }
        if u64::from(io.frag_offset) + u64::from(io.frag_len) > u64::from(io.total) {
            return Err(Error::BadFragment {
                op: 0,
                offset: u64::from(io.frag_offset),
                len: u64::from(io.frag_len),
            });
        }
        Ok(io)
    }

    /// Parses the fixed part at the start of `p`; returns it and the data.
    pub fn parse(p: &[u8]) -> Result<(Self, &[u8])> {
        let fixed = p.first_chunk::<IO_LEN>().ok_or(Error::Short {
            what: "IO",
            len: p.len(),
        })?;
        let io = Self::parse_fixed(fixed)?;
        let data = &p[IO_LEN..];
        if data.len() != io.extra as usize {
            return Err(Error::Short {
                what: "IO data",
                len: data.len(),
            });
        }
        Ok((io, data))
    }
}

/// An open-file request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFile {
    /// Datastore path of the disk.
    pub path: String,
    /// Open read-only.
    pub read_only: bool,
    /// Ask the server to compress read data.
    pub compression: Compression,
}

impl OpenFile {
    /// Appends the payload: pathLen @0, fileType 2 @16, flags @20
    /// (`0x1e` read-only, `0x1a` read-write; bit 8 our zlib flag), path.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut fixed = [0u8; OPEN_FILE_LEN];
        fixed[0..4].copy_from_slice(&(self.path.len() as u32).to_le_bytes());
        fixed[16..20].copy_from_slice(&2u32.to_le_bytes());
        let mut flags: u32 = if self.read_only { 0x1e } else { 0x1a };
        if self.compression == Compression::Zlib {
            flags |= 0x100;
        }
        fixed[20..24].copy_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&fixed);
        out.extend_from_slice(self.path.as_bytes());
    }

    /// Parses the payload.
    pub fn parse(p: &[u8]) -> Result<Self> {
        if p.len() < OPEN_FILE_LEN {
            return Err(Error::Short {
                what: "OPEN_FILE",
                len: p.len(),
            });
        }
        let len = u32_at(p, 0) as usize;
        if len > MAX_PATH {
            return Err(Error::TooLarge {
                what: "path",
                len: len as u64,
                cap: MAX_PATH as u64,
            });
        }
        let path = p
            .get(OPEN_FILE_LEN..OPEN_FILE_LEN + len)
            .ok_or(Error::Short {
                what: "OPEN_FILE path",
                len: p.len(),
            })?;
        let flags = u32_at(p, 20);
        Ok(Self {
            path: core::str::from_utf8(path)
                .map_err(|_| Error::NotUtf8("path"))?
                .to_string(),
            read_only: flags & 0xff == 0x1e,
            compression: if flags & 0x100 != 0 {
                Compression::Zlib
            } else {
                Compression::None
            },
        })
    }
}

/// The open-file reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Handle for later requests.
    pub handle: u64,
    /// Capacity in bytes (our addition to the described reply).
    pub capacity: u64,
    /// Sector size.
    pub sector_size: u32,
}

impl Opened {
    /// Appends the 60-byte payload: handle @8, capacity @16, sector size @36.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; 60];
        b[8..16].copy_from_slice(&self.handle.to_le_bytes());
        b[16..24].copy_from_slice(&self.capacity.to_le_bytes());
        b[36..40].copy_from_slice(&self.sector_size.to_le_bytes());
        out.extend_from_slice(&b);
    }
    /// Parses it.
    pub fn parse(p: &[u8]) -> Result<Self> {
        if p.len() < 60 {
            return Err(Error::Short {
                what: "OPEN_FILE reply",
                len: p.len(),
            });
        }
        Ok(Self {
            handle: u64_at(p, 8),
            capacity: u64_at(p, 16),
            sector_size: u32_at(p, 36),
        })
    }
}

/// Disk information (our layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FileInfo {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Cylinders / heads / sectors.
    pub geometry: (u32, u32, u32),
    /// VixDiskLib adapter type code.
    pub adapter: u32,
    /// Hardware version.
    pub hw_version: u32,
    /// Links in the chain.
    pub links: u32,
}

impl FileInfo {
    /// Appends 36 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.capacity.to_le_bytes());
        for v in [
            self.geometry.0,
            self.geometry.1,
            self.geometry.2,
            self.adapter,
            self.hw_version,
            self.links,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[0u8; 4]);
    }
    /// Parses it.
    pub fn parse(p: &[u8]) -> Result<Self> {
        if p.len() < 36 {
            return Err(Error::Short {
                what: "FILE_INFO",
                len: p.len(),
            });
        }
        Ok(Self {
            capacity: u64_at(p, 0),
            geometry: (u32_at(p, 8), u32_at(p, 12), u32_at(p, 16)),
            adapter: u32_at(p, 20),
            hw_version: u32_at(p, 24),
            links: u32_at(p, 28),
        })
    }
}

/// An error message: code and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    /// Code (VixDiskLib error codes where one fits).
    pub code: u32,
    /// Text.
    pub text: String,
}

/// Longest error text.
pub const MAX_TEXT: usize = 4096;

impl ErrorMsg {
    /// Appends code, length, text.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let t = &self.text.as_bytes()[..self.text.len().min(MAX_TEXT)];
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(t);
    }
    /// Parses it.
    pub fn parse(p: &[u8]) -> Result<Self> {
        if p.len() < 8 {
            return Err(Error::Short {
                what: "ERROR",
                len: p.len(),
            });
        }
        let len = (u32_at(p, 4) as usize).min(MAX_TEXT);
        let t = p.get(8..8 + len).ok_or(Error::Short {
            what: "ERROR text",
            len: p.len(),
        })?;
        Ok(Self {
            code: u32_at(p, 0),
            text: String::from_utf8_lossy(t).into_owned(),
        })
    }
}

/// A handle-only payload (close, info, flush).
pub fn handle_payload(h: u64) -> [u8; 8] {
    h.to_le_bytes()
}

/// Parses a handle-only payload.
pub fn parse_handle(p: &[u8]) -> Result<u64> {
    p.first_chunk::<8>()
        .map(|b| u64::from_le_bytes(*b))
        .ok_or(Error::Short {
            what: "handle",
            len: p.len(),
        })
}

/// A DDB-get request: handle, key.
pub fn ddb_payload(h: u64, key: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&h.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
}

/// Parses a DDB-get request.
pub fn parse_ddb(p: &[u8]) -> Result<(u64, String)> {
    let h = parse_handle(p)?;
    if p.len() < 12 {
        return Err(Error::Short {
            what: "DDB_GET",
            len: p.len(),
        });
    }
    let len = (u32_at(p, 8) as usize).min(MAX_TEXT);
    let k = p.get(12..12 + len).ok_or(Error::Short {
        what: "DDB key",
        len: p.len(),
    })?;
    Ok((
        h,
        core::str::from_utf8(k)
            .map_err(|_| Error::NotUtf8("DDB key"))?
            .to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let mut out = Vec::new();
        encode(&mut out, Kind::Ping, 9, &[b"ab", b"c"]);
        assert_eq!(decode(&out[..10]).unwrap(), Decoded::NeedMore(16));
        assert_eq!(decode(&out[..17]).unwrap(), Decoded::NeedMore(19));
        let Decoded::Frame {
            header,
            payload,
            consumed,
        } = decode(&out).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (header.kind, header.op, payload, consumed),
            (13, 9, &b"abc"[..], 19)
        );
        let mut bad = out.clone();
        bad[0] = 0;
        assert!(matches!(decode(&bad), Err(Error::BadMagic(_))));
        let mut big = out.clone();
        big[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&big), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn payloads_round_trip() {
        let io = Io {
            handle: 3,
            read: true,
            compression: Compression::Zlib,
            offset: 1 << 40,
            total: 1 << 20,
            frag_offset: 65536,
            frag_len: 65536,
            extra: 5,
        };
        let mut b = Vec::new();
        io.encode(&mut b);
        b.extend_from_slice(b"hello");
        assert_eq!(Io::parse(&b).unwrap(), (io, &b"hello"[..]));
        assert!(Io::parse(&b[..40]).is_err());
        let mut bad = b.clone();
        bad[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
        assert!(Io::parse(&bad).is_err(), "fragment past the request");

        let of = OpenFile {
            path: "[ds @ 1] vm/ü.vmdk".into(),
            read_only: true,
            compression: Compression::None,
        };
        let mut b = Vec::new();
        of.encode(&mut b);
        assert_eq!(OpenFile::parse(&b).unwrap(), of);
        b[0..4].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(OpenFile::parse(&b).is_err());

        let o = Opened {
            handle: 1,
            capacity: 1 << 30,
            sector_size: 512,
        };
        let mut b = Vec::new();
        o.encode(&mut b);
        assert_eq!(Opened::parse(&b).unwrap(), o);
        let fi = FileInfo {
            capacity: 9,
            geometry: (1, 2, 3),
            adapter: 3,
            hw_version: 7,
            links: 2,
        };
        let mut b = Vec::new();
        fi.encode(&mut b);
        assert_eq!(FileInfo::parse(&b).unwrap(), fi);
        let e = ErrorMsg {
            code: 16000,
            text: "bad".into(),
        };
        let mut b = Vec::new();
        e.encode(&mut b);
        assert_eq!(ErrorMsg::parse(&b).unwrap(), e);
        let mut b = Vec::new();
        ddb_payload(4, "ddb.uuid", &mut b);
        assert_eq!(parse_ddb(&b).unwrap(), (4, "ddb.uuid".into()));
    }
}
