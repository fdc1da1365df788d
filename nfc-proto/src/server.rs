//! Server side: frames in, requests out (write fragments reassembled),
//! replies encoded.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::aio::{
    self, Compression, Decoded, ErrorMsg, FileInfo, Io, Kind, OpenFile, Opened, MAX_FRAGMENT,
};
use crate::client::MAX_REQUEST;
use crate::{Error, Result};

/// A request from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Open the AIO session.
    OpenSession {
        /// Op id.
        op: u32,
    },
    /// Close the session.
    CloseSession {
        /// Op id.
        op: u32,
    },
    /// Open a disk.
    OpenFile {
        /// Op id.
        op: u32,
        /// What to open.
        open: OpenFile,
    },
    /// Close a disk.
    CloseFile {
        /// Op id.
        op: u32,
        /// Handle.
        handle: u64,
    },
    /// Read.
    Read {
        /// Op id.
        op: u32,
        /// Handle.
        handle: u64,
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write (all fragments arrived).
    Write {
        /// Op id.
        op: u32,
        /// Handle.
        handle: u64,
        /// Byte offset.
        offset: u64,
        /// The data.
        data: Vec<u8>,
    },
    /// Flush.
    Flush {
        /// Op id.
        op: u32,
        /// Handle.
        handle: u64,
    },
    /// Disk information.
    FileInfo {
        /// Op id.
        op: u32,
        /// Handle.
        handle: u64,
    },
    /// One DDB key.
    DdbGet {
        /// Op id.
        op: u32,
        /// Handle.
        handle: u64,
        /// Key.
        key: String,
    },
    /// Keep-alive.
    Ping {
        /// Op id.
        op: u32,
    },
}

#[derive(Debug)]
struct PartialWrite {
    handle: u64,
    offset: u64,
    total: u32,
    buf: Vec<u8>,
    got: Vec<(u32, u32)>,
    received: u64,
}

/// One connection's server state.
#[derive(Debug)]
pub struct ServerSession {
    writes: BTreeMap<u32, PartialWrite>,
    buffered: u64,
    memory_limit: u64,
}

impl Default for ServerSession {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerSession {
    /// A session that buffers at most 64 MiB of partial writes.
    pub fn new() -> Self {
        Self::with_memory_limit(64 << 20)
    }

    /// A session that buffers at most `limit` bytes of partial writes
    /// (ESXi's NFC server memory limit).
    pub fn with_memory_limit(limit: u64) -> Self {
        Self {
            writes: BTreeMap::new(),
            buffered: 0,
            memory_limit: limit,
        }
    }

    /// Bytes held for partial writes.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// Handles at most one frame; returns bytes consumed (0: need more)
    /// and a request when one is complete.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<(usize, Option<Request>)> {
        let (header, payload, consumed) = match aio::decode(input)? {
            Decoded::NeedMore(_) => return Ok((0, None)),
            Decoded::Frame {
                header,
                payload,
                consumed,
            } => (header, payload, consumed),
        };
        let op = header.op;
        let kind = Kind::from_u32(header.kind).ok_or(Error::UnexpectedType(header.kind))?;
        let req = match kind {
            Kind::OpenSession => Some(Request::OpenSession { op }),
            Kind::CloseSession => Some(Request::CloseSession { op }),
            Kind::OpenFile => Some(Request::OpenFile {
                op,
                open: OpenFile::parse(payload)?,
            }),
            Kind::CloseFile => Some(Request::CloseFile {
                op,
                handle: aio::parse_handle(payload)?,
            }),
            Kind::Flush => Some(Request::Flush {
                op,
                handle: aio::parse_handle(payload)?,
            }),
            Kind::GetFileInfo => Some(Request::FileInfo {
                op,
                handle: aio::parse_handle(payload)?,
            }),
            Kind::Ping => Some(Request::Ping { op }),
            Kind::SetSockOpts => None,
            Kind::DdbGet => {
                let (handle, key) = aio::parse_ddb(payload)?;
                Some(Request::DdbGet { op, handle, key })
            }
            Kind::Io => {
                let (io, data) = Io::parse(payload)?;
                if io.total > MAX_REQUEST || io.total == 0 {
                    return Err(Error::TooLarge {
                        what: "IO request",
                        len: u64::from(io.total),
                        cap: u64::from(MAX_REQUEST),
                    });
                }
                if io.read {
                    Some(Request::Read {
                        op,
                        handle: io.handle,
                        offset: io.offset,
                        len: io.total,
                    })
                } else {
                    self.write_fragment(op, &io, data)?
                }
            }
            Kind::Error => return Err(Error::UnexpectedType(header.kind)),
        };
        Ok((consumed, req))
    }

    fn write_fragment(&mut self, op: u32, io: &Io, data: &[u8]) -> Result<Option<Request>> {
        if io.compression != Compression::None
            || data.len() != io.frag_len as usize
            || io.frag_len == 0
        {
            return Err(Error::BadFragment {
                op,
                offset: u64::from(io.frag_offset),
                len: u64::from(io.frag_len),
            });
        }
        if !self.writes.contains_key(&op) {
            if self.buffered + u64::from(io.total) > self.memory_limit {
                return Err(Error::TooLarge {
                    what: "buffered writes (NFC memory limit)",
                    len: self.buffered + u64::from(io.total),
                    cap: self.memory_limit,
                });
            }
            self.buffered += u64::from(io.total);
            self.writes.insert(
                op,
                PartialWrite {
                    handle: io.handle,
                    offset: io.offset,
                    total: io.total,
                    buf: vec![0u8; io.total as usize],
                    got: Vec::new(),
                    received: 0,
                },
            );
        }
        let w = self.writes.get_mut(&op).ok_or(Error::UnknownOp(op))?;
        let (start, len) = (io.frag_offset, io.frag_len);
        let bad = || Error::BadFragment {
            op,
            offset: u64::from(start),
            len: u64::from(len),
        };
        if w.handle != io.handle || w.offset != io.offset || w.total != io.total {
            return Err(bad());
        }
        if w.got.iter().any(|&(s, e)| start < e && s < start + len) {
            return Err(bad());
        }
        w.buf[start as usize..(start + len) as usize].copy_from_slice(data);
        w.got.push((start, start + len));
        w.received += u64::from(len);
        if w.received < u64::from(w.total) {
            return Ok(None);
        }
        let w = self.writes.remove(&op).ok_or(Error::UnknownOp(op))?;
        self.buffered -= u64::from(w.total);
        Ok(Some(Request::Write {
            op,
            handle: w.handle,
            offset: w.offset,
            data: w.buf,
        }))
    }

    /// Replies to a read: fragments of at most 64 KiB, compressed when
    /// asked (a fragment that does not shrink is sent plain).
    pub fn reply_read(
        &self,
        out: &mut Vec<u8>,
        op: u32,
        handle: u64,
        data: &[u8],
        compress: bool,
    ) -> Result<()> {
        let total = u32::try_from(data.len()).map_err(|_| Error::TooLarge {
            what: "read reply",
            len: data.len() as u64,
            cap: u64::from(MAX_REQUEST),
        })?;
        let mut head = Vec::with_capacity(aio::IO_LEN);
        for (i, chunk) in data.chunks(MAX_FRAGMENT).enumerate() {
            let z = if compress {
                Some(miniz_oxide::deflate::compress_to_vec_zlib(chunk, 1))
            } else {
                None
            };
            let (payload, compression): (&[u8], _) = match &z {
                Some(z) if z.len() < chunk.len() => (z, Compression::Zlib),
                _ => (chunk, Compression::None),
            };
            head.clear();
            Io {
                handle,
                read: true,
                compression,
                offset: 0,
                total,
                frag_offset: (i * MAX_FRAGMENT) as u32,
                frag_len: chunk.len() as u32,
                extra: payload.len() as u32,
            }
            .encode(&mut head);
            aio::encode(out, Kind::Io, op, &[&head, payload]);
        }
        Ok(())
    }

    /// The frame heads (16-byte header + 44-byte IO part, 60 bytes each)
    /// of an uncompressed read reply of `total` bytes, one per 64 KiB
    /// fragment: a server can then write head, data, head, data... with
    /// vectored writes straight from its read buffer.
    pub fn read_reply_heads(&self, op: u32, handle: u64, total: u32) -> Vec<u8> {
        let n = (total as usize).div_ceil(MAX_FRAGMENT);
        let mut out = Vec::with_capacity(n * (aio::HEADER_LEN + aio::IO_LEN));
        for i in 0..n {
            let frag = (total as usize - i * MAX_FRAGMENT).min(MAX_FRAGMENT) as u32;
            aio::Header {
                kind: Kind::Io as u32,
                size: aio::IO_LEN as u32 + frag,
                op,
            }
            .encode(&mut out);
            Io {
                handle,
                read: true,
                compression: Compression::None,
                offset: 0,
                total,
                frag_offset: (i * MAX_FRAGMENT) as u32,
                frag_len: frag,
                extra: frag,
            }
            .encode(&mut out);
        }
        out
    }

    /// Acknowledges a write.
    pub fn reply_written(&self, out: &mut Vec<u8>, op: u32, handle: u64) {
        let mut head = Vec::with_capacity(aio::IO_LEN);
        Io {
            handle,
            read: false,
            compression: Compression::None,
            offset: 0,
            total: 0,
            frag_offset: 0,
            frag_len: 0,
            extra: 0,
        }
        .encode(&mut head);
        aio::encode(out, Kind::Io, op, &[&head]);
    }

    /// Replies to an open.
    pub fn reply_opened(&self, out: &mut Vec<u8>, op: u32, opened: Opened) {
        let mut p = Vec::new();
        opened.encode(&mut p);
        aio::encode(out, Kind::OpenFile, op, &[&p]);
    }

    /// Replies with just the op's type (session open, close, flush, ping).
    pub fn reply_ok(&self, out: &mut Vec<u8>, kind: Kind, op: u32) {
        aio::encode(out, kind, op, &[]);
    }

    /// Replies with disk information.
    pub fn reply_info(&self, out: &mut Vec<u8>, op: u32, info: FileInfo) {
        let mut p = Vec::new();
        info.encode(&mut p);
        aio::encode(out, Kind::GetFileInfo, op, &[&p]);
    }

    /// Replies with a DDB value (`None`: no such key).
    pub fn reply_ddb(&self, out: &mut Vec<u8>, op: u32, value: Option<&str>) {
        match value {
            None => aio::encode(out, Kind::DdbGet, op, &[]),
            Some(v) => {
                let mut p = Vec::new();
                ErrorMsg {
                    code: 0,
                    text: v.to_string(),
                }
                .encode(&mut p);
                aio::encode(out, Kind::DdbGet, op, &[&p]);
            }
        }
    }

    /// Replies with an error for `op` (0: the session).
    pub fn reply_error(&mut self, out: &mut Vec<u8>, op: u32, code: u32, text: &str) {
        if let Some(w) = self.writes.remove(&op) {
            self.buffered -= u64::from(w.total);
        }
        let mut p = Vec::new();
        ErrorMsg {
            code,
            text: text.to_string(),
        }
        .encode(&mut p);
        aio::encode(out, Kind::Error, op, &[&p]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Event, Tracker};

    /// Client and server in memory, no sockets: every request type, reads
    /// out of order, compressed reads, errors, caps.
    #[test]
    fn pair() {
        let mut c = Tracker::new();
        let mut s = ServerSession::with_memory_limit(1 << 20);
        let mut wire = Vec::new();
        let mut back = Vec::new();
        let disk: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut stored = disk.clone();

        let o1 = c.open_session(&mut wire).unwrap();
        let o2 = c
            .open_file(
                &mut wire,
                &OpenFile {
                    path: "[ds] vm/x.vmdk".into(),
                    read_only: false,
                    compression: Compression::None,
                },
            )
            .unwrap();
        let o3 = c.read(&mut wire, 1, 1000, 200_000).unwrap();
        let o4 = c.write(&mut wire, 1, 5, &[9u8; 70_000]).unwrap();
        let o5 = c.ddb_get(&mut wire, 1, "ddb.adapterType").unwrap();
        let o6 = c.file_info(&mut wire, 1).unwrap();
        let o7 = c.flush(&mut wire, 1).unwrap();
        let o8 = c.read(&mut wire, 1, 0, 100).unwrap();
        let o9 = c.ping(&mut wire).unwrap();
        assert_eq!(c.in_flight(), 9);

        let mut pos = 0;
        while pos < wire.len() {
            let (n, req) = s.handle_input(&wire[pos..]).unwrap();
            assert!(n > 0);
            pos += n;
            match req {
                Some(Request::OpenSession { op }) => s.reply_ok(&mut back, Kind::OpenSession, op),
                Some(Request::OpenFile { op, open }) => {
                    assert_eq!(open.path, "[ds] vm/x.vmdk");
                    s.reply_opened(
                        &mut back,
                        op,
                        Opened {
                            handle: 1,
                            capacity: disk.len() as u64,
                            sector_size: 512,
                        },
                    )
                }
                Some(Request::Read {
                    op, offset, len, ..
                }) if op == o3 => {
                    // Reply fragments in reverse order, compressed.
                    let mut frames = Vec::new();
                    s.reply_read(
                        &mut frames,
                        op,
                        1,
                        &stored[offset as usize..(offset + u64::from(len)) as usize],
                        true,
                    )
                    .unwrap();
                    let mut list = Vec::new();
                    let mut p = 0;
                    while p < frames.len() {
                        let Decoded::Frame { consumed, .. } = aio::decode(&frames[p..]).unwrap()
                        else {
                            panic!()
                        };
                        list.push(frames[p..p + consumed].to_vec());
                        p += consumed;
                    }
                    for f in list.into_iter().rev() {
                        back.extend(f);
                    }
                }
                Some(Request::Read { op, .. }) => {
                    s.reply_error(&mut back, op, 16007, "out of range")
                }
                Some(Request::Write {
                    op, offset, data, ..
                }) => {
                    stored[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                    s.reply_written(&mut back, op, 1);
                }
                Some(Request::DdbGet { op, key, .. }) => s.reply_ddb(
                    &mut back,
                    op,
                    (key == "ddb.adapterType").then_some("lsilogic"),
                ),
                Some(Request::FileInfo { op, .. }) => s.reply_info(
                    &mut back,
                    op,
                    FileInfo {
                        capacity: 300_000,
                        ..FileInfo::default()
                    },
                ),
                Some(Request::Flush { op, .. }) => s.reply_ok(&mut back, Kind::Flush, op),
                Some(Request::Ping { op }) => s.reply_ok(&mut back, Kind::Ping, op),
                None => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(s.buffered(), 0);
        let mut buf = vec![0u8; 200_000];
        let mut events = Vec::new();
        let mut pos = 0;
        while pos < back.len() {
            let (n, ev) = c
                .handle_input(&back[pos..], &mut |op, at, data| {
                    assert_eq!(op, o3);
                    buf[at..at + data.len()].copy_from_slice(data);
                })
                .unwrap();
            pos += n;
            events.extend(ev);
        }
        assert_eq!(buf, disk[1000..201_000]);
        assert_eq!(
            events,
            vec![
                Event::SessionOpened { op: o1 },
                Event::Opened {
                    op: o2,
                    opened: Opened {
                        handle: 1,
                        capacity: 300_000,
                        sector_size: 512
                    }
                },
                Event::ReadDone { op: o3 },
                Event::WriteDone { op: o4 },
                Event::Ddb {
                    op: o5,
                    value: Some("lsilogic".into())
                },
                Event::Info {
                    op: o6,
                    info: FileInfo {
                        capacity: 300_000,
                        ..FileInfo::default()
                    }
                },
                Event::Flushed { op: o7 },
                Event::Failed {
                    op: o8,
                    code: 16007,
                    text: "out of range".into()
                },
                Event::Pong { op: o9 },
            ]
        );
        assert_eq!(&stored[5..70_005], &[9u8; 70_000][..]);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn malformed_replies_and_limits() {
        let mut c = Tracker::new();
        let mut wire = Vec::new();
        let op = c.read(&mut wire, 1, 0, 1000).unwrap();
        let s = ServerSession::new();
        // A fragment repeated.
        let mut r = Vec::new();
        s.reply_read(&mut r, op, 1, &[1u8; 1000], false).unwrap();
        let mut twice = r.clone();
        twice.extend_from_slice(&r);
        let (n, ev) = c.handle_input(&twice, &mut |_, _, _| {}).unwrap();
        assert_eq!(ev, Some(Event::ReadDone { op }));
        assert!(matches!(
            c.handle_input(&twice[n..], &mut |_, _, _| {}),
            Err(Error::UnknownOp(_))
        ));
        // A fragment outside its request.
        let op = c.read(&mut wire, 1, 0, 10).unwrap();
        let mut r = Vec::new();
        s.reply_read(&mut r, op, 1, &[1u8; 20], false).unwrap();
        assert!(matches!(
            c.handle_input(&r, &mut |_, _, _| {}),
            Err(Error::BadFragment { .. })
        ));
        // Caps.
        assert!(c.read(&mut wire, 1, 0, MAX_REQUEST + 1).is_err());
        assert!(c.read(&mut wire, 1, 0, 0).is_err());
        let mut s = ServerSession::with_memory_limit(100_000);
        let mut w = Vec::new();
        c.write(&mut w, 1, 0, &[0u8; 200_000]).unwrap();
        assert!(matches!(s.handle_input(&w), Err(Error::TooLarge { .. })));
        // Unknown message types, truncated input.
        let mut f = Vec::new();
        aio::encode(&mut f, Kind::Ping, 1, &[]);
        f[4] = 99;
        assert!(s.handle_input(&f).is_err());
        assert_eq!(s.handle_input(&f[..7]).unwrap(), (0, None));
    }
}
