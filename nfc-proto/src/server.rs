//! Server side: the whole connection after authd, strict.
//!
//! [`ServerSession`] runs the classic handshake, then the AIO session:
//! OPEN_SESSION, SET_SOCK_OPTS, SET_RES_POOL and CLOSE_SESSION are
//! answered internally (take the replies with
//! [`poll_output`](ServerSession::poll_output)); the requests that need
//! the disk (open, read, write, DDB, allocation, close) come out as
//! [`Request`]s for the caller to answer with the `reply_*` methods.
//! Write fragments are reassembled (and decompressed) into one request.
//!
//! Refused, as an error from [`handle_input`](ServerSession::handle_input)
//! after which the connection should be closed: any AIO frame before the
//! type-52 exchange, a classic message out of order, an AIO frame before
//! OPEN_SESSION, a `size` other than the documented one, an op id other
//! than the next (counted from 0), GET_FILE_INFO and undocumented types,
//! read requests without the length at 32 and 36, fragments larger than
//! the session buffer, anything after CLOSE_SESSION but classic type 4.
//!
//! Call order: `handle_input` with received bytes until it consumes
//! nothing, `poll_output` and the replies to send, until
//! [`is_finished`](ServerSession::is_finished).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::aio::{
    self, Compression, DdbGet, DdbValue, Decoded, ErrorMsg, Io, Kind, OpenFile, OpenSession,
    Opened, QueryAllocated, SockOpts,
};
use crate::classic::{self, ServerHandshake};
use crate::client::MAX_REQUEST;
use crate::compress;
use crate::{Error, Result};

/// A read request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// Op id.
    pub op: u32,
    /// Handle.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length.
    pub len: u32,
    /// Compression asked for (the reply may use it or type 0 per
    /// fragment).
    pub compression: Compression,
}

/// A request from the client that needs the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
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
    Read(ReadRequest),
    /// Write (all fragments arrived, decompressed).
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
    /// One DDB key.
    DdbGet {
        /// Op id.
        op: u32,
        /// Handle.
        handle: u64,
        /// Key (no `ddb.` prefix when the client is VDDK).
        key: String,
    },
    /// Allocated chunks.
    QueryAllocated {
        /// Op id.
        op: u32,
        /// The query.
        query: QueryAllocated,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshake,
    AwaitOpenSession,
    Aio,
    Closing,
    Finished,
}

/// One connection's server state.
#[derive(Debug)]
pub struct ServerSession {
    phase: Phase,
    hs: ServerHandshake,
    out: Vec<u8>,
    next_op: u32,
    buffer_size: u32,
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
            phase: Phase::Handshake,
            hs: ServerHandshake::default(),
            out: Vec::new(),
            next_op: 0,
            buffer_size: aio::DEFAULT_BUFFER,
            writes: BTreeMap::new(),
            buffered: 0,
            memory_limit: limit,
        }
    }

    /// Bytes held for partial writes.
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// The session buffer size the client asked for: the largest fragment
    /// either way.
    pub fn buffer_size(&self) -> u32 {
        self.buffer_size
    }

    /// The AIO phase has begun (errors can be answered with a frame).
    pub fn in_aio(&self) -> bool {
        matches!(self.phase, Phase::AwaitOpenSession | Phase::Aio)
    }

    /// Classic type 4 arrived: the connection is over.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Appends the session-level replies due; returns the bytes appended.
    pub fn poll_output(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        out.append(&mut self.out);
        n
    }

    /// Handles at most one message; returns bytes consumed (0: need more)
    /// and a request when one is complete.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<(usize, Option<Request>)> {
        match self.phase {
            Phase::Handshake => {
                let n = self.hs.handle_input(input)?;
                self.hs.poll_output(&mut self.out);
                if self.hs.is_done() {
                    self.phase = Phase::AwaitOpenSession;
                }
                Ok((n, None))
            }
            Phase::Closing => match classic::take_frame(input)? {
                None => Ok((0, None)),
                Some(classic::Message::SessionComplete) => {
                    self.phase = Phase::Finished;
                    Ok((classic::FRAME_LEN, None))
                }
                Some(m) => Err(Error::Handshake {
                    expected: classic::SESSION_COMPLETE,
                    got: m.kind(),
                }),
            },
            Phase::Finished => Err(Error::State("the session is complete")),
            Phase::AwaitOpenSession | Phase::Aio => self.aio(input),
        }
    }

    fn aio(&mut self, input: &[u8]) -> Result<(usize, Option<Request>)> {
        let (frame, consumed) = match aio::decode_request(input)? {
            Decoded::NeedMore(_) => return Ok((0, None)),
            Decoded::Frame { frame, consumed } => (frame, consumed),
        };
        let h = frame.header;
        let kind = h.known_kind()?;
        let continuing = kind == Kind::Io && self.writes.contains_key(&h.op);
        if !continuing {
            if h.op != self.next_op {
                return Err(Error::OpOutOfSequence {
                    expected: self.next_op,
                    got: h.op,
                });
            }
            self.next_op = self.next_op.wrapping_add(1);
        }
        if self.phase == Phase::AwaitOpenSession && kind != Kind::OpenSession {
            return Err(Error::State("an AIO request before OPEN_SESSION"));
        }
        let op = h.op;
        let req = match kind {
            Kind::OpenSession => {
                if self.phase == Phase::Aio {
                    return Err(Error::State("a second OPEN_SESSION"));
                }
                let s = OpenSession::parse(frame.fixed);
                if s.buffer_size == 0 || s.buffer_size > aio::MAX_BUFFER || s.buffer_count == 0 {
                    self.push_error(op, 3, "session buffer size or count not accepted");
                } else {
                    self.buffer_size = s.buffer_size;
                    self.phase = Phase::Aio;
                    aio::encode(&mut self.out, Kind::OpenSession, op, &[0u8; 16], &[]);
                }
                None
            }
            Kind::SetSockOpts => {
                aio::encode(
                    &mut self.out,
                    Kind::SetSockOpts,
                    op,
                    &SockOpts::ESXI8.to_bytes(),
                    &[],
                );
                None
            }
            Kind::SetResPool => {
                aio::encode(&mut self.out, Kind::SetResPool, op, frame.fixed, &[]);
                None
            }
            Kind::CloseSession => {
                aio::encode(&mut self.out, Kind::CloseSession, op, frame.fixed, &[]);
                self.writes.clear();
                self.buffered = 0;
                self.phase = Phase::Closing;
                None
            }
            Kind::OpenFile => Some(Request::OpenFile {
                op,
                open: OpenFile::parse(frame.fixed, frame.extra)?,
            }),
            Kind::CloseFile => Some(Request::CloseFile {
                op,
                handle: crate::u64_at(frame.fixed, 0),
            }),
            Kind::DdbGet => {
                let d = DdbGet::parse(frame.fixed, frame.extra)?;
                Some(Request::DdbGet {
                    op,
                    handle: d.handle,
                    key: d.key,
                })
            }
            Kind::QueryAllocatedBlocks => Some(Request::QueryAllocated {
                op,
                query: QueryAllocated::parse(frame.fixed),
            }),
            Kind::Io => {
                let io = Io::parse(frame.fixed)?;
                if io.total > MAX_REQUEST || io.total == 0 {
                    return Err(Error::TooLarge {
                        what: "IO request",
                        len: u64::from(io.total),
                        cap: u64::from(MAX_REQUEST),
                    });
                }
                if io.read {
                    if !io.is_vddk_read_request() {
                        return Err(Error::BadField {
                            what: "read request lengths at 32 and 36",
                            value: u64::from(io.frag_len) | (u64::from(io.extra) << 32),
                        });
                    }
                    Some(Request::Read(ReadRequest {
                        op,
                        handle: io.handle,
                        offset: io.offset,
                        len: io.total,
                        compression: io.compression,
                    }))
                } else {
                    self.write_fragment(op, &io, frame.extra)?
                }
            }
            Kind::Error | Kind::GetFileInfo => return Err(Error::UnexpectedType(h.kind)),
        };
        Ok((consumed, req))
    }

    fn write_fragment(&mut self, op: u32, io: &Io, data: &[u8]) -> Result<Option<Request>> {
        let (start, len) = (io.frag_offset, io.frag_len);
        let bad = || Error::BadFragment {
            op,
            offset: u64::from(start),
            len: u64::from(len),
        };
        if len == 0 || len > self.buffer_size || io.extra > self.buffer_size {
            return Err(bad());
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
        if w.handle != io.handle || w.offset != io.offset || w.total != io.total {
            return Err(bad());
        }
        if w.got.iter().any(|&(s, e)| start < e && s < start + len) {
            return Err(bad());
        }
        let dest = &mut w.buf[start as usize..(start + len) as usize];
        compress::decompress_fragment(io.compression, data, dest)
            .map_err(|_| Error::BadCompression(op))?;
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

    fn fragment(&self) -> usize {
        self.buffer_size.max(512) as usize
    }

    fn reply_io(
        req: &ReadRequest,
        frag_offset: usize,
        frag_len: usize,
        used: Compression,
        extra: usize,
    ) -> Io {
        Io {
            handle: 0,
            read: true,
            compression: used,
            offset: req.offset,
            total: req.len,
            frag_offset: frag_offset as u32,
            frag_len: frag_len as u32,
            extra: extra as u32,
        }
    }

    /// Replies to a read: fragments of the session buffer size, handle 0,
    /// the request's offset at 16, each compressed with the type asked
    /// (or sent plain when that does not shrink it).
    pub fn reply_read(&self, out: &mut Vec<u8>, req: &ReadRequest, data: &[u8]) -> Result<()> {
        if data.len() != req.len as usize {
            return Err(Error::Short {
                what: "read reply data",
                len: data.len(),
            });
        }
        let frag = self.fragment();
        let mut z = Vec::new();
        for (i, chunk) in data.chunks(frag).enumerate() {
            z.clear();
            let used = compress::compress_fragment(req.compression, chunk, &mut z);
            let io = Self::reply_io(req, i * frag, chunk.len(), used, z.len());
            aio::encode(out, Kind::Io, req.op, &io.to_bytes(), &z);
        }
        Ok(())
    }

    /// The frame heads (16-byte header + 44-byte IO part, 60 bytes each)
    /// of an uncompressed read reply, one per fragment of
    /// [`fragment_len`](Self::fragment_len) bytes: a server can then write
    /// head, data, head, data... with vectored writes straight from its
    /// read buffer.
    pub fn read_reply_heads(&self, req: &ReadRequest) -> Vec<u8> {
        let frag = self.fragment();
        let total = req.len as usize;
        let n = total.div_ceil(frag);
        let mut out = Vec::with_capacity(n * (aio::HEADER_LEN + aio::IO_LEN));
        for i in 0..n {
            let len = (total - i * frag).min(frag);
            let io = Self::reply_io(req, i * frag, len, Compression::None, len);
            aio::Header {
                kind: Kind::Io as u32,
                size: aio::IO_LEN as u32,
                op: req.op,
            }
            .encode(&mut out);
            io.encode(&mut out);
        }
        out
    }

    /// The fragment size of read replies.
    pub fn fragment_len(&self) -> usize {
        self.fragment()
    }

    /// Acknowledges a write of `total` bytes: total at 24, 0 at 28, total
    /// at 32 (the other fields are undocumented: zero).
    pub fn reply_written(&self, out: &mut Vec<u8>, op: u32, total: u32) {
        let mut b = [0u8; aio::IO_LEN];
        crate::put_u32(&mut b, 24, total);
        crate::put_u32(&mut b, 32, total);
        aio::encode(out, Kind::Io, op, &b, &[]);
    }

    /// Replies to an open.
    pub fn reply_opened(&self, out: &mut Vec<u8>, op: u32, opened: Opened) {
        aio::encode(out, Kind::OpenFile, op, &opened.to_bytes(), &[]);
    }

    /// Replies to a close: the handle echoed.
    pub fn reply_file_closed(&self, out: &mut Vec<u8>, op: u32, handle: u64) {
        aio::encode(out, Kind::CloseFile, op, &handle.to_le_bytes(), &[]);
    }

    /// Replies with a DDB value (`None`: no such key, 16 zero bytes).
    pub fn reply_ddb(&self, out: &mut Vec<u8>, op: u32, value: Option<&str>) {
        let v = DdbValue(value.map(String::from));
        aio::encode(out, Kind::DdbGet, op, &v.fixed(), v.extra());
    }

    /// Replies to QueryAllocatedBlocks: the query echoed, then `bitmap`
    /// (one bit per chunk, LSB first), padded or cut to its documented
    /// length.
    pub fn reply_allocated(&self, out: &mut Vec<u8>, op: u32, q: &QueryAllocated, bitmap: &[u8]) {
        let len = aio::bitmap_len(q.chunks).min(aio::MAX_BITMAP as u64) as usize;
        let mut b = bitmap[..bitmap.len().min(len)].to_vec();
        b.resize(len, 0);
        aio::encode(out, Kind::QueryAllocatedBlocks, op, &q.to_bytes(), &b);
    }

    fn push_error(&mut self, op: u32, code: u32, text: &str) {
        let body = ErrorMsg {
            code,
            text: text.into(),
        }
        .to_bytes();
        aio::encode(&mut self.out, Kind::Error, op, &body, &[]);
    }

    /// Replies with an error for `op` (our body layout: code, length,
    /// text).
    pub fn reply_error(&mut self, out: &mut Vec<u8>, op: u32, code: u32, text: &str) {
        if let Some(w) = self.writes.remove(&op) {
            self.buffered -= u64::from(w.total);
        }
        let body = ErrorMsg {
            code,
            text: text.into(),
        }
        .to_bytes();
        aio::encode(out, Kind::Error, op, &body, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classic::ClientHandshake;
    use crate::client::{Event, Tracker};

    /// Drives the handshake to its end.
    pub(crate) fn handshake(s: &mut ServerSession) {
        let mut c = ClientHandshake::vddk();
        let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
        while !c.is_done() {
            c.poll_output(&mut c2s);
            while let (n @ 1.., _) = s.handle_input(&c2s).unwrap() {
                c2s.drain(..n);
            }
            s.poll_output(&mut s2c);
            while let n @ 1.. = c.handle_input(&s2c).unwrap() {
                s2c.drain(..n);
            }
        }
        assert!(s.in_aio());
    }

    fn split_frames(buf: &[u8]) -> Vec<Vec<u8>> {
        let mut list = Vec::new();
        let mut p = 0;
        while p < buf.len() {
            let Decoded::Frame { consumed, .. } = aio::decode_reply(&buf[p..], |_| true).unwrap()
            else {
                panic!()
            };
            list.push(buf[p..p + consumed].to_vec());
            p += consumed;
        }
        list
    }

    /// Client and server in memory, no sockets: every request type, reads
    /// out of order, compressed reads and writes, errors, caps.
    #[test]
    fn pair() {
        for compression in [
            Compression::None,
            Compression::FastLz,
            Compression::Zlib,
            Compression::SkipZ,
        ] {
            let mut c = Tracker::new();
            c.set_compression(compression);
            let mut s = ServerSession::with_memory_limit(1 << 20);
            handshake(&mut s);
            let mut wire = Vec::new();
            let mut back = Vec::new();
            let disk: Vec<u8> = (0..300_000u32).map(|i| (i / 700 % 7) as u8).collect();
            let mut stored = disk.clone();

            let o0 = c.open_session(&mut wire, OpenSession::default()).unwrap();
            assert_eq!(o0, 0, "op ids start at 0");
            let o1 = c.set_sock_opts(&mut wire).unwrap();
            let o2 = c.set_res_pool(&mut wire, 1).unwrap();
            let o3 = c
                .open_file(
                    &mut wire,
                    &OpenFile {
                        path: "[ds] vm/x.vmdk".into(),
                        read_only: false,
                    },
                )
                .unwrap();
            let o4 = c.read(&mut wire, 1, 1000, 200_000).unwrap();
            let o5 = c.write(&mut wire, 1, 5, &[9u8; 70_000]).unwrap();
            let o6 = c.ddb_get(&mut wire, 1, "adapterType").unwrap();
            let o7 = c.read(&mut wire, 1, 0, 100).unwrap();
            let q = QueryAllocated {
                handle: 1,
                chunk_size: 1 << 20,
                start: 0,
                chunks: 16,
            };
            let o8 = c.query_allocated(&mut wire, &q).unwrap();
            let o9 = c.close_file(&mut wire, 1).unwrap();
            let o10 = c.close_session(&mut wire).unwrap();
            classic::Message::SessionComplete.encode(&mut wire);
            assert_eq!(c.in_flight(), 11);

            let mut pos = 0;
            while pos < wire.len() {
                let (n, req) = s.handle_input(&wire[pos..]).unwrap();
                assert!(n > 0);
                pos += n;
                s.poll_output(&mut back);
                match req {
                    Some(Request::OpenFile { op, open }) => {
                        assert_eq!(open.path, "[ds] vm/x.vmdk");
                        s.reply_opened(
                            &mut back,
                            op,
                            Opened {
                                handle: 1,
                                file_type: 2,
                                flags: 0x1a,
                                capacity: disk.len() as u64,
                                sector_size: 512,
                                geometry: (1, 2, 3),
                            },
                        )
                    }
                    Some(Request::Read(r)) if r.op == o4 => {
                        assert_eq!(r.compression, compression);
                        // Reply fragments in reverse order.
                        let mut frames = Vec::new();
                        let range = r.offset as usize..(r.offset + u64::from(r.len)) as usize;
                        s.reply_read(&mut frames, &r, &stored[range]).unwrap();
                        let list = split_frames(&frames);
                        assert_eq!(list.len(), 4, "64 KiB fragments");
                        for f in list.into_iter().rev() {
                            back.extend(f);
                        }
                    }
                    Some(Request::Read(r)) => s.reply_error(&mut back, r.op, 16007, "out of range"),
                    Some(Request::Write {
                        op, offset, data, ..
                    }) => {
                        stored[offset as usize..offset as usize + data.len()]
                            .copy_from_slice(&data);
                        s.reply_written(&mut back, op, data.len() as u32);
                    }
                    Some(Request::DdbGet { op, key, .. }) => {
                        s.reply_ddb(&mut back, op, (key == "adapterType").then_some("lsilogic"))
                    }
                    Some(Request::QueryAllocated { op, query }) => {
                        s.reply_allocated(&mut back, op, &query, &[0b101])
                    }
                    Some(Request::CloseFile { op, handle }) => {
                        s.reply_file_closed(&mut back, op, handle)
                    }
                    None => {}
                }
            }
            assert!(s.is_finished());
            assert_eq!(s.buffered(), 0);
            let mut buf = vec![0u8; 200_000];
            let mut events = Vec::new();
            let mut pos = 0;
            while pos < back.len() {
                let (n, ev) = c
                    .handle_input(&back[pos..], &mut |op, at, data| {
                        assert_eq!(op, o4);
                        buf[at..at + data.len()].copy_from_slice(data);
                    })
                    .unwrap();
                assert!(n > 0);
                pos += n;
                events.extend(ev);
            }
            assert_eq!(buf, disk[1000..201_000]);
            assert_eq!(
                events,
                vec![
                    Event::SessionOpened { op: o0 },
                    Event::SockOpts {
                        op: o1,
                        opts: SockOpts::ESXI8
                    },
                    Event::ResPoolSet { op: o2 },
                    Event::Opened {
                        op: o3,
                        opened: Opened {
                            handle: 1,
                            file_type: 2,
                            flags: 0x1a,
                            capacity: 300_000,
                            sector_size: 512,
                            geometry: (1, 2, 3),
                        }
                    },
                    Event::ReadDone { op: o4 },
                    Event::WriteDone { op: o5 },
                    Event::Ddb {
                        op: o6,
                        value: Some("lsilogic".into())
                    },
                    Event::Failed {
                        op: o7,
                        code: 16007,
                        text: "out of range".into()
                    },
                    Event::Allocated {
                        op: o8,
                        bitmap: vec![0b101, 0, 0, 0]
                    },
                    Event::FileClosed { op: o9 },
                    Event::SessionClosed { op: o10 },
                ]
            );
            assert_eq!(&stored[5..70_005], &[9u8; 70_000][..]);
            assert_eq!(c.in_flight(), 0);
        }
    }

    /// Larger session buffers give larger fragments, both ways.
    #[test]
    fn fragments_follow_the_session_buffer() {
        let mut c = Tracker::new();
        let mut s = ServerSession::new();
        handshake(&mut s);
        let mut wire = Vec::new();
        c.open_session(
            &mut wire,
            OpenSession {
                buffer_size: 2 << 20,
                buffer_count: 1,
            },
        )
        .unwrap();
        let r = c.read(&mut wire, 1, 0, (2 << 20) + 512).unwrap();
        let w = c
            .write(&mut wire, 1, 0, &vec![1u8; (2 << 20) + 512])
            .unwrap();
        assert_eq!((r, w), (1, 2));
        let mut pos = 0;
        let mut reqs = Vec::new();
        while pos < wire.len() {
            let (n, req) = s.handle_input(&wire[pos..]).unwrap();
            pos += n;
            reqs.extend(req);
        }
        assert_eq!(s.buffer_size(), 2 << 20);
        let Request::Read(rr) = reqs[0] else { panic!() };
        let mut back = Vec::new();
        s.reply_read(&mut back, &rr, &vec![0u8; (2 << 20) + 512])
            .unwrap();
        let lens: Vec<usize> = split_frames(&back).iter().map(|f| f.len() - 60).collect();
        assert_eq!(lens, [2 << 20, 512]);
        assert!(matches!(&reqs[1], Request::Write { data, .. } if data.len() == (2 << 20) + 512));
    }

    #[test]
    fn strict_about_drift() {
        let opened = |s: &mut ServerSession| {
            handshake(s);
            let mut w = Vec::new();
            Tracker::new()
                .open_session(&mut w, OpenSession::default())
                .unwrap();
            assert_eq!(s.handle_input(&w).unwrap().0, w.len());
        };
        // AIO before the handshake.
        let mut s = ServerSession::new();
        let mut w = Vec::new();
        Tracker::new()
            .open_session(&mut w, OpenSession::default())
            .unwrap();
        w.resize(264, 0);
        assert!(s.handle_input(&w).is_err());
        // A request before OPEN_SESSION.
        let mut s = ServerSession::new();
        handshake(&mut s);
        let mut w = Vec::new();
        Tracker::new().read(&mut w, 1, 0, 512).unwrap();
        assert!(s.handle_input(&w).is_err());
        // Op ids from 1.
        let mut s = ServerSession::new();
        handshake(&mut s);
        let mut w = Vec::new();
        let mut t = Tracker::new();
        t.close_session(&mut Vec::new()).unwrap();
        t.open_session(&mut w, OpenSession::default()).unwrap();
        assert!(matches!(
            s.handle_input(&w),
            Err(Error::OpOutOfSequence {
                expected: 0,
                got: 1
            })
        ));
        // A read request without the lengths at 32 and 36.
        let mut s = ServerSession::new();
        opened(&mut s);
        let mut io = Io::read_request(1, 0, 512, Compression::None);
        io.frag_len = 0;
        io.extra = 0;
        let mut w = Vec::new();
        aio::encode(&mut w, Kind::Io, 1, &io.to_bytes(), &[]);
        assert!(matches!(s.handle_input(&w), Err(Error::BadField { .. })));
        // A size counting the extras.
        let mut s = ServerSession::new();
        opened(&mut s);
        let mut w = Vec::new();
        let mut t = Tracker::new();
        t.open_session(&mut Vec::new(), OpenSession::default())
            .unwrap();
        t.ddb_get(&mut w, 1, "uuid").unwrap();
        w[8] = 20;
        assert!(matches!(s.handle_input(&w), Err(Error::BadSize { .. })));
        // GET_FILE_INFO, an invented type 12.
        for ty in [10u8, 12] {
            let mut s = ServerSession::new();
            opened(&mut s);
            let mut w = Vec::new();
            aio::encode(&mut w, Kind::CloseFile, 1, &[0u8; 8], &[]);
            w[4] = ty;
            assert!(s.handle_input(&w).is_err());
        }
        // A write fragment larger than the session buffer.
        let mut s = ServerSession::new();
        opened(&mut s);
        let io = Io {
            handle: 1,
            read: false,
            compression: Compression::None,
            offset: 0,
            total: 70_000,
            frag_offset: 0,
            frag_len: 70_000,
            extra: 70_000,
        };
        let mut w = Vec::new();
        aio::encode(&mut w, Kind::Io, 1, &io.to_bytes(), &vec![0u8; 70_000]);
        assert!(matches!(s.handle_input(&w), Err(Error::BadFragment { .. })));
        // An OPEN_SESSION asking for 16 MiB buffers is answered with an error.
        let mut s = ServerSession::new();
        handshake(&mut s);
        let mut w = Vec::new();
        aio::encode(
            &mut w,
            Kind::OpenSession,
            0,
            &OpenSession {
                buffer_size: 16 << 20,
                buffer_count: 1,
            }
            .to_bytes(),
            &[],
        );
        assert_eq!(s.handle_input(&w).unwrap().0, w.len());
        let mut out = Vec::new();
        s.poll_output(&mut out);
        assert_eq!(crate::u32_at(&out, 4), Kind::Error as u32);
        // After CLOSE_SESSION only classic type 4.
        let mut s = ServerSession::new();
        opened(&mut s);
        let mut t = Tracker::new();
        t.open_session(&mut Vec::new(), OpenSession::default())
            .unwrap();
        let mut w = Vec::new();
        t.close_session(&mut w).unwrap();
        assert_eq!(s.handle_input(&w).unwrap().0, w.len());
        let mut w = Vec::new();
        t.read(&mut w, 1, 0, 512).unwrap();
        w.resize(264, 0);
        assert!(s.handle_input(&w).is_err());
    }

    #[test]
    fn malformed_replies_and_limits() {
        let mut c = Tracker::new();
        let mut wire = Vec::new();
        let op = c.read(&mut wire, 1, 0, 1000).unwrap();
        let s = ServerSession::new();
        let req = ReadRequest {
            op,
            handle: 1,
            offset: 0,
            len: 1000,
            compression: Compression::None,
        };
        // A fragment repeated.
        let mut r = Vec::new();
        s.reply_read(&mut r, &req, &[1u8; 1000]).unwrap();
        let mut twice = r.clone();
        twice.extend_from_slice(&r);
        let (n, ev) = c.handle_input(&twice, &mut |_, _, _| {}).unwrap();
        assert_eq!(ev, Some(Event::ReadDone { op }));
        assert!(matches!(
            c.handle_input(&twice[n..], &mut |_, _, _| {}),
            Err(Error::UnknownOp(_))
        ));
        // Compressed data larger than any buffer (a reader taking frames
        // apart itself would allocate it).
        let op = c.read(&mut wire, 1, 0, 1000).unwrap();
        let mut io = Io::read_request(0, 0, 1000, Compression::FastLz);
        io.extra = u32::MAX;
        assert!(matches!(
            c.begin_fragment(op, &io),
            Err(Error::BadFragment { .. })
        ));
        c.abandon(op);
        // A fragment outside its request, a reply at another offset.
        let op = c.read(&mut wire, 1, 0, 10).unwrap();
        let mut r = Vec::new();
        let big = ReadRequest { op, len: 20, ..req };
        s.reply_read(&mut r, &big, &[1u8; 20]).unwrap();
        assert!(matches!(
            c.handle_input(&r, &mut |_, _, _| {}),
            Err(Error::BadFragment { .. })
        ));
        let op = c.read(&mut wire, 1, 0, 10).unwrap();
        let mut r = Vec::new();
        let moved = ReadRequest {
            op,
            len: 10,
            offset: 512,
            ..req
        };
        s.reply_read(&mut r, &moved, &[1u8; 10]).unwrap();
        assert!(c.handle_input(&r, &mut |_, _, _| {}).is_err());
        // Caps.
        assert!(c.read(&mut wire, 1, 0, MAX_REQUEST + 1).is_err());
        assert!(c.read(&mut wire, 1, 0, 0).is_err());
        let mut s = ServerSession::with_memory_limit(100_000);
        handshake(&mut s);
        let mut c = Tracker::new();
        let mut w = Vec::new();
        c.open_session(&mut w, OpenSession::default()).unwrap();
        c.write(&mut w, 1, 0, &[0u8; 200_000]).unwrap();
        let (n, _) = s.handle_input(&w).unwrap();
        assert!(matches!(
            s.handle_input(&w[n..]),
            Err(Error::TooLarge { .. })
        ));
        // Truncated input.
        assert_eq!(s.handle_input(&w[n..n + 7]).unwrap(), (0, None));
    }
}
