//! One connection: socket or TLS stream, input buffering, request execution.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use nbd_proto::consts::{CMD_FLAG_DF, STATE_HOLE, STATE_ZERO};
use nbd_proto::{wire, Command, Event, ReplyTo, ServerSession};

use crate::{errno_of, BlockExport};

/// A connected socket of either family.
#[derive(Debug)]
pub(crate) enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    pub(crate) fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Sock::Unix(s) => s.shutdown(how),
            Sock::Tcp(s) => s.shutdown(how),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(buf),
            Sock::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(buf),
            Sock::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sock::Unix(s) => s.flush(),
            Sock::Tcp(s) => s.flush(),
        }
    }
}

/// The byte stream of a connection: plain, or after `NBD_OPT_STARTTLS`.
enum Stream {
    Plain(Sock),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, Sock>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Replies are sent once this many bytes are queued (or before blocking).
const SEND_THRESHOLD: usize = 1 << 20;
/// Smallest read from the socket.
const READ_CHUNK: usize = 64 << 10;

/// What a connection needs from the server.
pub(crate) struct Setup {
    pub(crate) session: nbd_proto::SessionConfig,
    pub(crate) exports: Vec<Arc<dyn BlockExport>>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves one client until it disconnects, errs or the socket is shut down.
pub(crate) fn serve(sock: Sock, setup: Setup) -> io::Result<()> {
    let mut session = ServerSession::new(setup.session)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut stream = Stream::Plain(sock);
    let mut input: Vec<u8> = Vec::new();
    let mut start = 0usize;
    let mut out: Vec<u8> = Vec::new();
    // Read payloads land here (grown once, never zeroed again) and go to
    // the socket from here, without passing through `out`.
    let mut scratch: Vec<u8> = Vec::new();
    let mut export: Option<Arc<dyn BlockExport>> = None;
    let result = loop {
        let st = match session.handle_input(&input[start..], &mut out) {
            Ok(st) => st,
            Err(e) => {
                tracing::debug!("nbd: closing on protocol error: {e}");
                let _ = send(&mut stream, &mut out);
                break Ok(());
            }
        };
        start += st.consumed;
        match st.event {
            Event::NeedMore { at_least } => {
                send(&mut stream, &mut out)?;
                input.drain(..start);
                start = 0;
                match fill(&mut stream, &mut input, at_least) {
                    Ok(true) => {}
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
            Event::Continue => {}
            Event::StartTls => {
                send(&mut stream, &mut out)?;
                let Some(cfg) = setup.tls.clone() else {
                    break Err(io::Error::other("STARTTLS without a TLS configuration"));
                };
                let Stream::Plain(sock) = stream else {
                    break Err(io::Error::other("STARTTLS twice"));
                };
                let mut conn = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
                // Bytes the client sent right after the request (its ClientHello).
                let mut early = &input[start..];
                while !early.is_empty() {
                    conn.read_tls(&mut early)?;
                    conn.process_new_packets().map_err(io::Error::other)?;
                }
                input.clear();
                start = 0;
                stream = Stream::Tls(Box::new(rustls::StreamOwned::new(conn, sock)));
            }
            Event::Ready { export: i } => {
                export = setup.exports.get(i).cloned();
            }
            Event::Request(req) => {
                let Some(ex) = export.as_deref() else {
                    break Err(io::Error::other("request before an export was selected"));
                };
                let mut sink = Sink {
                    stream: &mut stream,
                    out: &mut out,
                    scratch: &mut scratch,
                };
                if let Err(e) = execute(&session, ex, &req.reply, req.command, &mut sink) {
                    break Err(e);
                }
                if out.len() >= SEND_THRESHOLD {
                    send(&mut stream, &mut out)?;
                }
            }
            Event::Disconnect => {
                let _ = send(&mut stream, &mut out);
                if let Stream::Tls(s) = &mut stream {
                    s.conn.send_close_notify();
                    let _ = s.flush();
                }
                break Ok(());
            }
            _ => break Err(io::Error::other("unhandled NBD session event")),
        }
    };
    if let Some(ex) = export.filter(|e| e.writable()) {
        if let Err(e) = ex.flush() {
            tracing::warn!("nbd: flush at disconnect failed: {e}");
        }
    }
    result
}

/// Sends and clears `out`.
fn send(stream: &mut Stream, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out)?;
        stream.flush()?;
        out.clear();
    }
    Ok(())
}

/// Reads until `input` holds `at_least` bytes; `false` on end of stream.
fn fill(stream: &mut Stream, input: &mut Vec<u8>, at_least: usize) -> io::Result<bool> {
    while input.len() < at_least {
        let old = input.len();
        let want = (at_least - old).max(READ_CHUNK);
        input.resize(old + want, 0);
        let got = stream.read(&mut input[old..]);
        match got {
            Ok(0) => {
                input.truncate(old);
                return Ok(false);
            }
            Ok(n) => input.truncate(old + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => input.truncate(old),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
            {
                input.truncate(old);
                return Ok(false);
            }
            Err(e) => {
                input.truncate(old);
                return Err(e);
            }
        }
    }
    Ok(true)
}

/// Where replies go: small ones are queued in `out`; large read payloads
/// are read into `scratch` and written from there.
struct Sink<'a> {
    stream: &'a mut Stream,
    out: &'a mut Vec<u8>,
    scratch: &'a mut Vec<u8>,
}

/// Payloads at least this long skip the copy into `out`.
const DIRECT: usize = 64 << 10;

impl Sink<'_> {
    /// Reads `n` bytes at `pos` into the scratch buffer.
    fn read(&mut self, export: &dyn BlockExport, pos: u64, n: usize) -> io::Result<()> {
        if self.scratch.len() < n {
            self.scratch.resize(n, 0);
        }
        export.read_at(pos, &mut self.scratch[..n])
    }

    /// Queues the header already in `out` and the `n` bytes read.
    fn payload(&mut self, n: usize) -> io::Result<()> {
        if n < DIRECT {
            self.out.extend_from_slice(&self.scratch[..n]);
            return Ok(());
        }
        if !self.out.is_empty() {
            self.stream.write_all(self.out)?;
            self.out.clear();
        }
        self.stream.write_all(&self.scratch[..n])
    }
}

/// Runs one validated command and queues (or sends) its reply.
fn execute(
    session: &ServerSession,
    export: &dyn BlockExport,
    to: &ReplyTo,
    command: Command<'_>,
    sink: &mut Sink<'_>,
) -> io::Result<()> {
    let out = &mut *sink.out;
    let result = match command {
        Command::Read { offset, length, df } => {
            return read(session, export, to, offset, length, df, sink);
        }
        Command::Write { offset, data, fua } => export.write_at(offset, data, fua),
        Command::Flush => export.flush(),
        Command::Trim {
            offset,
            length,
            fua,
        } => export.trim(offset, u64::from(length), fua),
        Command::WriteZeroes {
            offset,
            length,
            may_trim,
            fua,
            fast: _,
        } => export.write_zeroes(offset, u64::from(length), may_trim, fua),
        Command::BlockStatus { offset, length, .. } => {
            match export.block_status(offset, u64::from(length)) {
                Ok(extents) => {
                    let descs: Vec<(u64, u32)> = extents
                        .iter()
                        .map(|e| (e.length, status_flags(e.hole, e.zero)))
                        .collect();
                    session.reply_block_status(to, &descs, out);
                    return Ok(());
                }
                Err(e) => Err(e),
            }
        }
        // A command this server does not know yet is refused.
        _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    match result {
        Ok(()) => session.reply_ok(to, out),
        Err(e) => {
            tracing::debug!("nbd: command {} failed: {e}", to.command);
            session.reply_error(to, errno_of(&e), out);
        }
    }
    Ok(())
}

fn status_flags(hole: bool, zero: bool) -> u32 {
    (if hole { STATE_HOLE } else { 0 }) | (if zero { STATE_ZERO } else { 0 })
}

/// Answers a read: simple reply, one data chunk (`DF`), or data and hole
/// chunks following the export's block status.
fn read(
    session: &ServerSession,
    export: &dyn BlockExport,
    to: &ReplyTo,
    offset: u64,
    length: u32,
    df: bool,
    sink: &mut Sink<'_>,
) -> io::Result<()> {
    let len = length as usize;
    if !session.structured() {
        // The data is read before the header is queued, so a failed read
        // is answered with an error reply alone.
        match sink.read(export, offset, len) {
            Ok(()) => {
                wire::simple_reply(sink.out, 0, to.cookie);
                sink.payload(len)?;
            }
            Err(e) => {
                tracing::debug!("nbd: read failed: {e}");
                session.reply_error(to, errno_of(&e), sink.out);
            }
        }
        return Ok(());
    }
    let extents = if df || to.flags & CMD_FLAG_DF != 0 {
        Vec::new()
    } else {
        export
            .block_status(offset, u64::from(length))
            .unwrap_or_default()
    };
    let mut pos = offset;
    let end = offset + u64::from(length);
    for e in extents {
        if pos >= end {
            break;
        }
        let n = e.length.min(end - pos);
        if n == 0 {
            continue;
        }
        let ok = if e.hole && e.zero {
            wire::chunk_offset_hole(sink.out, to.cookie, false, pos, n as u32);
            true
        } else {
            data_chunk(export, to, pos, n as usize, sink)?
        };
        if !ok {
            return Ok(());
        }
        pos += n;
    }
    if pos < end && !data_chunk(export, to, pos, (end - pos) as usize, sink)? {
        return Ok(());
    }
    wire::chunk_none(sink.out, to.cookie);
    Ok(())
}

/// Sends one `OFFSET_DATA` chunk; on a read error an `ERROR_OFFSET`
/// chunk ending the reply instead, and `false`.
fn data_chunk(
    export: &dyn BlockExport,
    to: &ReplyTo,
    pos: u64,
    n: usize,
    sink: &mut Sink<'_>,
) -> io::Result<bool> {
    if let Err(e) = sink.read(export, pos, n) {
        tracing::debug!("nbd: read failed: {e}");
        wire::chunk_error(sink.out, to.cookie, true, errno_of(&e), "", Some(pos));
        return Ok(false);
    }
    wire::chunk_header(
        sink.out,
        0,
        nbd_proto::consts::REPLY_TYPE_OFFSET_DATA,
        to.cookie,
        8 + n as u32,
    );
    sink.out.extend_from_slice(&pos.to_be_bytes());
    sink.payload(n)?;
    Ok(true)
}
