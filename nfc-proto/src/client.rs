//! Client side of the AIO phase: encode requests, track what is in
//! flight, place read fragments where they belong.
//!
//! Call order (after the classic handshake, [`crate::classic`]): a
//! request method appends its frames to your output buffer and returns
//! the op id (counted from 0, one per request, as VDDK does); send them;
//! feed received bytes to [`Tracker::handle_input`] until it has consumed
//! them all (each call handles at most one frame and may return an
//! [`Event`]). VDDK's order for an open is
//! [`open_session`](Tracker::open_session),
//! [`set_sock_opts`](Tracker::set_sock_opts),
//! [`set_res_pool`](Tracker::set_res_pool),
//! [`open_file`](Tracker::open_file); for a close
//! [`close_file`](Tracker::close_file),
//! [`close_session`](Tracker::close_session), then classic type 4.
//!
//! Read data is handed to your sink as `(op, offset in the request,
//! bytes)`, so it can go straight into the caller's buffer; a reader that
//! takes frames apart itself uses [`Tracker::begin_fragment`] /
//! [`Tracker::end_fragment`].

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::aio::{
    self, Compression, DdbGet, DdbValue, Decoded, ErrorMsg, Io, Kind, OpenFile, OpenSession,
    Opened, QueryAllocated, SockOpts,
};
use crate::compress;
use crate::{Error, Result};

/// Largest single read or write request.
pub const MAX_REQUEST: u32 = 64 << 20;
/// Most operations in flight.
pub const MAX_OPS: usize = 1024;

#[derive(Debug)]
enum Pending {
    Session,
    SockOpts,
    ResPool,
    Open,
    Read {
        offset: u64,
        total: u32,
        got: Vec<(u32, u32)>,
        received: u64,
    },
    Write,
    Ddb,
    Allocated,
    CloseFile,
    CloseSession,
}

/// Something an op produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The AIO session is open.
    SessionOpened {
        /// Op id.
        op: u32,
    },
    /// SET_SOCK_OPTS answered.
    SockOpts {
        /// Op id.
        op: u32,
        /// The server's values.
        opts: SockOpts,
    },
    /// SET_RES_POOL answered.
    ResPoolSet {
        /// Op id.
        op: u32,
    },
    /// A file is open.
    Opened {
        /// Op id.
        op: u32,
        /// Handle, size, geometry.
        opened: Opened,
    },
    /// Every byte of a read arrived.
    ReadDone {
        /// Op id.
        op: u32,
    },
    /// A write is acknowledged.
    WriteDone {
        /// Op id.
        op: u32,
    },
    /// A DDB value (`None`: no such key).
    Ddb {
        /// Op id.
        op: u32,
        /// The value.
        value: Option<String>,
    },
    /// Allocated chunks: one bit per chunk, LSB first.
    Allocated {
        /// Op id.
        op: u32,
        /// The bitmap (padded to 4 bytes).
        bitmap: Vec<u8>,
    },
    /// A file was closed.
    FileClosed {
        /// Op id.
        op: u32,
    },
    /// The session was closed.
    SessionClosed {
        /// Op id.
        op: u32,
    },
    /// The op failed on the server.
    Failed {
        /// Op id.
        op: u32,
        /// Error code.
        code: u32,
        /// Text.
        text: String,
    },
}

impl Event {
    /// The op it concerns.
    pub fn op(&self) -> u32 {
        match *self {
            Event::SessionOpened { op }
            | Event::SockOpts { op, .. }
            | Event::ResPoolSet { op }
            | Event::Opened { op, .. }
            | Event::ReadDone { op }
            | Event::WriteDone { op }
            | Event::Ddb { op, .. }
            | Event::Allocated { op, .. }
            | Event::FileClosed { op }
            | Event::SessionClosed { op }
            | Event::Failed { op, .. } => op,
        }
    }
}

/// Requests in flight, by op id.
#[derive(Debug)]
pub struct Tracker {
    next: u32,
    ops: BTreeMap<u32, Pending>,
    buffer_size: u32,
    compression: Compression,
    scratch: Vec<u8>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// No requests in flight; the next op id is 0.
    pub fn new() -> Self {
        Self {
            next: 0,
            ops: BTreeMap::new(),
            buffer_size: aio::DEFAULT_BUFFER,
            compression: Compression::None,
            scratch: Vec::new(),
        }
    }

    /// Ops in flight.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// The session buffer size: the largest write fragment.
    pub fn buffer_size(&self) -> u32 {
        self.buffer_size
    }

    /// Compresses write fragments and asks for compressed read replies
    /// with this type from now on (VDDK: the open's compression flag).
    pub fn set_compression(&mut self, c: Compression) {
        self.compression = c;
    }

    fn start(&mut self, p: Pending) -> Result<u32> {
        if self.ops.len() >= MAX_OPS {
            return Err(Error::TooManyOps);
        }
        let op = self.next;
        if self.ops.contains_key(&op) {
            return Err(Error::TooManyOps);
        }
        self.next = self.next.wrapping_add(1);
        self.ops.insert(op, p);
        Ok(op)
    }

    /// OPEN_SESSION with the session's buffer size and count; write
    /// fragments are at most that size from now on.
    pub fn open_session(&mut self, out: &mut Vec<u8>, s: OpenSession) -> Result<u32> {
        if s.buffer_size == 0 || s.buffer_size > aio::MAX_BUFFER {
            return Err(Error::TooLarge {
                what: "session buffer",
                len: u64::from(s.buffer_size),
                cap: u64::from(aio::MAX_BUFFER),
            });
        }
        let op = self.start(Pending::Session)?;
        self.buffer_size = s.buffer_size;
        aio::encode(out, Kind::OpenSession, op, &s.to_bytes(), &[]);
        Ok(op)
    }

    /// SET_SOCK_OPTS as VDDK sends it (12 zero bytes).
    pub fn set_sock_opts(&mut self, out: &mut Vec<u8>) -> Result<u32> {
        let op = self.start(Pending::SockOpts)?;
        aio::encode(
            out,
            Kind::SetSockOpts,
            op,
            &SockOpts::default().to_bytes(),
            &[],
        );
        Ok(op)
    }

    /// SET_RES_POOL (VDDK sends pool 1).
    pub fn set_res_pool(&mut self, out: &mut Vec<u8>, pool: u32) -> Result<u32> {
        let op = self.start(Pending::ResPool)?;
        aio::encode(out, Kind::SetResPool, op, &pool.to_le_bytes(), &[]);
        Ok(op)
    }

    /// OPEN_FILE.
    pub fn open_file(&mut self, out: &mut Vec<u8>, f: &OpenFile) -> Result<u32> {
        if f.path.len() > aio::MAX_PATH || f.path.is_empty() {
            return Err(Error::TooLarge {
                what: "path",
                len: f.path.len() as u64,
                cap: aio::MAX_PATH as u64,
            });
        }
        let op = self.start(Pending::Open)?;
        aio::encode(out, Kind::OpenFile, op, &f.fixed(), f.path.as_bytes());
        Ok(op)
    }

    /// Reads `len` bytes at `offset`: one request, the length at 24, 32
    /// and 36, the compression set with
    /// [`set_compression`](Self::set_compression) asked for.
    pub fn read(&mut self, out: &mut Vec<u8>, handle: u64, offset: u64, len: u32) -> Result<u32> {
        if len > MAX_REQUEST || len == 0 {
            return Err(Error::TooLarge {
                what: "read request",
                len: u64::from(len),
                cap: u64::from(MAX_REQUEST),
            });
        }
        let op = self.start(Pending::Read {
            offset,
            total: len,
            got: Vec::new(),
            received: 0,
        })?;
        let io = Io::read_request(handle, offset, len, self.compression);
        aio::encode(out, Kind::Io, op, &io.to_bytes(), &[]);
        Ok(op)
    }

    /// Writes `data` at `offset`: fragments of at most the session buffer
    /// size sharing one op id, each compressed on its own when asked.
    pub fn write(
        &mut self,
        out: &mut Vec<u8>,
        handle: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u32> {
        let total = u32::try_from(data.len())
            .ok()
            .filter(|&t| t <= MAX_REQUEST && t > 0)
            .ok_or(Error::TooLarge {
                what: "write request",
                len: data.len() as u64,
                cap: u64::from(MAX_REQUEST),
            })?;
        let op = self.start(Pending::Write)?;
        let frag = self.buffer_size as usize;
        for (i, chunk) in data.chunks(frag).enumerate() {
            self.scratch.clear();
            let used = compress::compress_fragment(self.compression, chunk, &mut self.scratch);
            let io = Io {
                handle,
                read: false,
                compression: used,
                offset,
                total,
                frag_offset: (i * frag) as u32,
                frag_len: chunk.len() as u32,
                extra: self.scratch.len() as u32,
            };
            aio::encode(out, Kind::Io, op, &io.to_bytes(), &self.scratch);
        }
        Ok(op)
    }

    /// DDB_GET of one key, without the `ddb.` prefix.
    pub fn ddb_get(&mut self, out: &mut Vec<u8>, handle: u64, key: &str) -> Result<u32> {
        if key.len() > aio::MAX_KEY || key.is_empty() {
            return Err(Error::TooLarge {
                what: "DDB key",
                len: key.len() as u64,
                cap: aio::MAX_KEY as u64,
            });
        }
        let op = self.start(Pending::Ddb)?;
        let d = DdbGet {
            handle,
            key: key.into(),
        };
        aio::encode(out, Kind::DdbGet, op, &d.fixed(), key.as_bytes());
        Ok(op)
    }

    /// QueryAllocatedBlocks (start and chunk count in chunk units of
    /// `q.chunk_size` bytes).
    pub fn query_allocated(&mut self, out: &mut Vec<u8>, q: &QueryAllocated) -> Result<u32> {
        let len = aio::bitmap_len(q.chunks);
        if len > aio::MAX_BITMAP as u64 || q.chunks == 0 {
            return Err(Error::TooLarge {
                what: "allocation bitmap",
                len,
                cap: aio::MAX_BITMAP as u64,
            });
        }
        let op = self.start(Pending::Allocated)?;
        aio::encode(out, Kind::QueryAllocatedBlocks, op, &q.to_bytes(), &[]);
        Ok(op)
    }

    /// CLOSE_FILE.
    pub fn close_file(&mut self, out: &mut Vec<u8>, handle: u64) -> Result<u32> {
        let op = self.start(Pending::CloseFile)?;
        aio::encode(out, Kind::CloseFile, op, &handle.to_le_bytes(), &[]);
        Ok(op)
    }

    /// CLOSE_SESSION (then send classic type 4).
    pub fn close_session(&mut self, out: &mut Vec<u8>) -> Result<u32> {
        let op = self.start(Pending::CloseSession)?;
        aio::encode(out, Kind::CloseSession, op, &[0u8; 4], &[]);
        Ok(op)
    }

    /// Whether `op` is a read in flight.
    pub fn is_read(&self, op: u32) -> bool {
        matches!(self.ops.get(&op), Some(Pending::Read { .. }))
    }

    /// For a reader that takes IO frames apart itself: checks that a read
    /// fragment belongs to `op` (its request's offset and length, inside
    /// it, not seen before) and records it. Returns where its data goes
    /// in the request; read the data (decompressing it when
    /// `io.compression` says so), then call
    /// [`end_fragment`](Self::end_fragment).
    pub fn begin_fragment(&mut self, op: u32, io: &Io) -> Result<usize> {
        let Some(Pending::Read {
            offset, total, got, ..
        }) = self.ops.get_mut(&op)
        else {
            return Err(Error::UnknownOp(op));
        };
        let (start, len) = (io.frag_offset, io.frag_len);
        let ok = io.read
            && io.total == *total
            && io.offset == *offset
            && len > 0
            && len <= aio::MAX_BUFFER
            && io.extra <= aio::MAX_BUFFER
            && (io.compression != Compression::None || io.extra == len)
            && start.checked_add(len).is_some_and(|e| e <= *total)
            && !got.iter().any(|&(s, e)| start < e && s < start + len);
        if !ok {
            return Err(Error::BadFragment {
                op,
                offset: u64::from(start),
                len: u64::from(len),
            });
        }
        got.push((start, start + len));
        Ok(start as usize)
    }

    /// Completes a fragment started with
    /// [`begin_fragment`](Self::begin_fragment).
    pub fn end_fragment(&mut self, op: u32, len: u32) -> Option<Event> {
        let Some(Pending::Read {
            total, received, ..
        }) = self.ops.get_mut(&op)
        else {
            return None;
        };
        *received += u64::from(len);
        if *received == u64::from(*total) {
            self.ops.remove(&op);
            return Some(Event::ReadDone { op });
        }
        None
    }

    /// Forgets an op (a caller giving up on it after a timeout).
    pub fn abandon(&mut self, op: u32) {
        self.ops.remove(&op);
    }

    /// Handles at most one frame from `input`. Returns bytes consumed (0:
    /// more input needed) and the event the frame completed, if any.
    /// Read data goes to `sink(op, offset_in_request, bytes)`.
    pub fn handle_input(
        &mut self,
        input: &[u8],
        sink: &mut dyn FnMut(u32, usize, &[u8]),
    ) -> Result<(usize, Option<Event>)> {
        let ops = &self.ops;
        let (frame, consumed) = match aio::decode_reply(input, |op| {
            matches!(ops.get(&op), Some(Pending::Read { .. }))
        })? {
            Decoded::NeedMore(_) => return Ok((0, None)),
            Decoded::Frame { frame, consumed } => (frame, consumed),
        };
        let op = frame.header.op;
        let kind = frame.header.known_kind()?;
        if kind == Kind::Error {
            let e = ErrorMsg::parse(frame.fixed);
            if self.ops.remove(&op).is_none() {
                return Err(Error::Peer {
                    op,
                    code: e.code,
                    text: e.text,
                });
            }
            return Ok((
                consumed,
                Some(Event::Failed {
                    op,
                    code: e.code,
                    text: e.text,
                }),
            ));
        }
        let pending = self.ops.get(&op).ok_or(Error::UnknownOp(op))?;
        let ev = match (kind, pending) {
            (Kind::OpenSession, Pending::Session) => Event::SessionOpened { op },
            (Kind::SetSockOpts, Pending::SockOpts) => Event::SockOpts {
                op,
                opts: SockOpts::parse(frame.fixed),
            },
            (Kind::SetResPool, Pending::ResPool) => Event::ResPoolSet { op },
            (Kind::OpenFile, Pending::Open) => Event::Opened {
                op,
                opened: Opened::parse(frame.fixed),
            },
            (Kind::Io, Pending::Write) => Event::WriteDone { op },
            (Kind::Io, Pending::Read { .. }) => {
                let io = Io::parse(frame.fixed)?;
                let at = self.begin_fragment(op, &io)?;
                let len = io.frag_len as usize;
                if io.compression == Compression::None {
                    sink(op, at, frame.extra);
                } else {
                    self.scratch.resize(len, 0);
                    compress::decompress_fragment(
                        io.compression,
                        frame.extra,
                        &mut self.scratch[..len],
                    )
                    .map_err(|_| Error::BadCompression(op))?;
                    sink(op, at, &self.scratch[..len]);
                }
                return Ok((consumed, self.end_fragment(op, io.frag_len)));
            }
            (Kind::DdbGet, Pending::Ddb) => Event::Ddb {
                op,
                value: DdbValue::parse(frame.extra)?.0,
            },
            (Kind::QueryAllocatedBlocks, Pending::Allocated) => Event::Allocated {
                op,
                bitmap: frame.extra.to_vec(),
            },
            (Kind::CloseFile, Pending::CloseFile) => Event::FileClosed { op },
            (Kind::CloseSession, Pending::CloseSession) => Event::SessionClosed { op },
            (k, _) => return Err(Error::UnexpectedType(k as u32)),
        };
        self.ops.remove(&op);
        Ok((consumed, Some(ev)))
    }
}
