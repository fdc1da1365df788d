//! Client side: encode requests, track what is in flight, place read
//! fragments where they belong.
//!
//! Call order: a request method (`open_file`, `read`, `write`, ...) appends
//! its frames to your output buffer and returns the op id; send them;
//! feed received bytes to [`Tracker::handle_input`] until it has consumed
//! them all (each call handles at most one frame and may return an
//! [`Event`]). Read data is handed to your sink as `(op, offset in the
//! request, bytes)`, so it can go straight into the caller's buffer.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::aio::{
    self, Compression, Decoded, ErrorMsg, FileInfo, Io, Kind, OpenFile, Opened, MAX_FRAGMENT,
};
use crate::{Error, Result};

/// Largest single read or write request.
pub const MAX_REQUEST: u32 = 64 << 20;
/// Most operations in flight.
pub const MAX_OPS: usize = 1024;

#[derive(Debug)]
enum Pending {
    Session,
    Open,
    Read {
        total: u32,
        got: Vec<(u32, u32)>,
        received: u64,
    },
    Write,
    Flush,
    Close,
    Info,
    Ddb,
    Ping,
}

/// Something an op produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The AIO session is open.
    SessionOpened {
        /// Op id.
        op: u32,
    },
    /// A file is open.
    Opened {
        /// Op id.
        op: u32,
        /// Handle and size.
        opened: Opened,
    },
    /// Every byte of a read arrived.
    ReadDone {
        /// Op id.
        op: u32,
    },
    /// A write is on the server.
    WriteDone {
        /// Op id.
        op: u32,
    },
    /// A flush completed.
    Flushed {
        /// Op id.
        op: u32,
    },
    /// A file was closed.
    Closed {
        /// Op id.
        op: u32,
    },
    /// Disk information.
    Info {
        /// Op id.
        op: u32,
        /// The information.
        info: FileInfo,
    },
    /// A DDB value (`None`: no such key).
    Ddb {
        /// Op id.
        op: u32,
        /// The value.
        value: Option<String>,
    },
    /// A ping answered.
    Pong {
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

/// Requests in flight, by op id.
#[derive(Debug, Default)]
pub struct Tracker {
    next: u32,
    ops: BTreeMap<u32, Pending>,
    scratch: Vec<u8>,
}

impl Tracker {
    /// No requests in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ops in flight.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    fn start(&mut self, p: Pending) -> Result<u32> {
        if self.ops.len() >= MAX_OPS {
            return Err(Error::TooManyOps);
        }
        self.next = self.next.wrapping_add(1).max(1);
        while self.ops.contains_key(&self.next) {
            self.next = self.next.wrapping_add(1).max(1);
        }
        self.ops.insert(self.next, p);
        Ok(self.next)
    }

    /// Opens the AIO session.
    pub fn open_session(&mut self, out: &mut Vec<u8>) -> Result<u32> {
        let op = self.start(Pending::Session)?;
        aio::encode(out, Kind::OpenSession, op, &[]);
        Ok(op)
    }

    /// Opens a disk.
    pub fn open_file(&mut self, out: &mut Vec<u8>, f: &OpenFile) -> Result<u32> {
        if f.path.len() > aio::MAX_PATH {
            return Err(Error::TooLarge {
                what: "path",
                len: f.path.len() as u64,
                cap: aio::MAX_PATH as u64,
            });
        }
        let op = self.start(Pending::Open)?;
        let mut p = Vec::with_capacity(aio::OPEN_FILE_LEN + f.path.len());
        f.encode(&mut p);
        aio::encode(out, Kind::OpenFile, op, &[&p]);
        Ok(op)
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&mut self, out: &mut Vec<u8>, handle: u64, offset: u64, len: u32) -> Result<u32> {
        if len > MAX_REQUEST || len == 0 {
            return Err(Error::TooLarge {
                what: "read request",
                len: u64::from(len),
                cap: u64::from(MAX_REQUEST),
            });
        }
        let op = self.start(Pending::Read {
            total: len,
            got: Vec::new(),
            received: 0,
        })?;
        let mut p = Vec::with_capacity(aio::IO_LEN);
        Io {
            handle,
            read: true,
            compression: Compression::None,
            offset,
            total: len,
            frag_offset: 0,
            frag_len: 0,
            extra: 0,
        }
        .encode(&mut p);
        aio::encode(out, Kind::Io, op, &[&p]);
        Ok(op)
    }

    /// Writes `data` at `offset`, in fragments of at most 64 KiB.
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
        let mut head = Vec::with_capacity(aio::IO_LEN);
        for (i, chunk) in data.chunks(MAX_FRAGMENT).enumerate() {
            head.clear();
            Io {
                handle,
                read: false,
                compression: Compression::None,
                offset,
                total,
                frag_offset: (i * MAX_FRAGMENT) as u32,
                frag_len: chunk.len() as u32,
                extra: chunk.len() as u32,
            }
            .encode(&mut head);
            aio::encode(out, Kind::Io, op, &[&head, chunk]);
        }
        Ok(op)
    }

    fn simple(&mut self, out: &mut Vec<u8>, kind: Kind, p: Pending, handle: u64) -> Result<u32> {
        let op = self.start(p)?;
        aio::encode(out, kind, op, &[&aio::handle_payload(handle)]);
        Ok(op)
    }

    /// Flushes a disk.
    pub fn flush(&mut self, out: &mut Vec<u8>, handle: u64) -> Result<u32> {
        self.simple(out, Kind::Flush, Pending::Flush, handle)
    }
    /// Closes a disk.
    pub fn close_file(&mut self, out: &mut Vec<u8>, handle: u64) -> Result<u32> {
        self.simple(out, Kind::CloseFile, Pending::Close, handle)
    }
    /// Asks for disk information.
    pub fn file_info(&mut self, out: &mut Vec<u8>, handle: u64) -> Result<u32> {
        self.simple(out, Kind::GetFileInfo, Pending::Info, handle)
    }
    /// Keeps an idle session alive.
    pub fn ping(&mut self, out: &mut Vec<u8>) -> Result<u32> {
        self.simple(out, Kind::Ping, Pending::Ping, 0)
    }
    /// Asks for one DDB key.
    pub fn ddb_get(&mut self, out: &mut Vec<u8>, handle: u64, key: &str) -> Result<u32> {
        if key.len() > aio::MAX_TEXT {
            return Err(Error::TooLarge {
                what: "DDB key",
                len: key.len() as u64,
                cap: aio::MAX_TEXT as u64,
            });
        }
        let op = self.start(Pending::Ddb)?;
        let mut p = Vec::new();
        aio::ddb_payload(handle, key, &mut p);
        aio::encode(out, Kind::DdbGet, op, &[&p]);
        Ok(op)
    }

    /// Whether `op` is a read in flight.
    pub fn is_read(&self, op: u32) -> bool {
        matches!(self.ops.get(&op), Some(Pending::Read { .. }))
    }

    /// For a reader that takes IO frames apart itself: checks that a read
    /// fragment belongs to `op` (inside the request, not
    /// seen before) and records it. Returns where its data goes in the
    /// request; read the data there, then call [`end_fragment`](Self::end_fragment).
    pub fn begin_fragment(&mut self, op: u32, io: &Io) -> Result<usize> {
        let Some(Pending::Read { total, got, .. }) = self.ops.get_mut(&op) else {
            return Err(Error::UnknownOp(op));
        };
        let (start, len) = (io.frag_offset, io.frag_len);
        let ok = io.read
            && io.total == *total
            && len > 0
            && ((io.compression == Compression::None && io.extra == len)
                || io.compression == Compression::Zlib)
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

    /// Completes a fragment started with [`begin_fragment`](Self::begin_fragment).
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
        if kind == Kind::Error {
            let e = ErrorMsg::parse(payload)?;
            if op == 0 || self.ops.remove(&op).is_none() {
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
        let pending = self.ops.get_mut(&op).ok_or(Error::UnknownOp(op))?;
        let ev = match (kind, pending) {
            (Kind::OpenSession, Pending::Session) => Some(Event::SessionOpened { op }),
            (Kind::OpenFile, Pending::Open) => Some(Event::Opened {
                op,
                opened: Opened::parse(payload)?,
            }),
            (Kind::Io, Pending::Write) => Some(Event::WriteDone { op }),
            (
                Kind::Io,
                Pending::Read {
                    total,
                    got,
                    received,
                },
            ) => {
                let (io, data) = Io::parse(payload)?;
                let (start, len) = (io.frag_offset, io.frag_len);
                let end = start
                    .checked_add(len)
                    .filter(|&e| e <= *total && io.total == *total && io.read);
                let overlaps = got.iter().any(|&(s, e)| start < e && s < start + len);
                let Some(end) = end.filter(|_| !overlaps && len > 0) else {
                    return Err(Error::BadFragment {
                        op,
                        offset: u64::from(start),
                        len: u64::from(len),
                    });
                };
                match io.compression {
                    Compression::None => {
                        if data.len() != len as usize {
                            return Err(Error::BadFragment {
                                op,
                                offset: u64::from(start),
                                len: u64::from(len),
                            });
                        }
                        sink(op, start as usize, data);
                    }
                    Compression::Zlib => {
                        self.scratch.resize(MAX_FRAGMENT, 0);
                        let n = miniz_oxide::inflate::decompress_slice_iter_to_slice(
                            &mut self.scratch,
                            core::iter::once(data),
                            true,
                            false,
                        )
                        .map_err(|_| Error::BadCompression(op))?;
                        if n != len as usize {
                            return Err(Error::BadCompression(op));
                        }
                        sink(op, start as usize, &self.scratch[..n]);
                    }
                }
                got.push((start, end));
                *received += u64::from(len);
                (*received == u64::from(*total)).then_some(Event::ReadDone { op })
            }
            (Kind::Flush, Pending::Flush) => Some(Event::Flushed { op }),
            (Kind::CloseFile, Pending::Close) => Some(Event::Closed { op }),
            (Kind::GetFileInfo, Pending::Info) => Some(Event::Info {
                op,
                info: FileInfo::parse(payload)?,
            }),
            (Kind::DdbGet, Pending::Ddb) => {
                let value = if payload.is_empty() {
                    None
                } else {
                    Some(ErrorMsg::parse(payload)?.text)
                };
                Some(Event::Ddb { op, value })
            }
            (Kind::Ping, Pending::Ping) => Some(Event::Pong { op }),
            (k, _) => return Err(Error::UnexpectedType(k as u32)),
        };
        if ev.is_some() {
            self.ops.remove(&op);
        }
        Ok((consumed, ev))
    }
}
