//! # transport-nbd
//!
//! VMware's `nbd` and `nbdssl` transports: a disk of a VM read and written
//! over NFC, plain (after authd) or in a fresh TLS session.
//!
//! - A ticket comes from vim-soap (`NfcRandomAccessOpen*` on the internal
//!   `NfcService`); [`open_vm_disk`] does the whole dance.
//! - authd is reached with the InitEx accept timeout; the host's
//!   certificate is pinned by the ticket's thumbprint, before the ticket is
//!   sent.
//! - Reads and writes are pipelined: up to [`NbdOptions::in_flight`]
//!   requests (default 4) of at most [`NbdOptions::max_request`] bytes;
//!   read fragments land directly in the caller's buffer.
//! - The InitEx NFC timeouts are honoured; an idle session is kept alive by
//!   reading block 0, as VMware advises, so a server-side timeout does not
//!   close it under a slow backup.
//! - A lost connection is [`Error::ConnectionLost`] on the call that needed
//!   it, never a silent success. Reads may reconnect (with a fresh ticket)
//!   and retry once when allowed.
//!
//! The NFC byte layout follows public descriptions and has been checked
//! against this project's simulator only (see `nfc-proto`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nfc_proto::aio::{Compression, FileInfo, Header, Io, Kind, OpenFile, HEADER_LEN, IO_LEN};
use nfc_proto::authd::{self, Command};
use nfc_proto::client::{Event, Tracker};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use vim_soap::client::{pinned_tls_config, Client, Thumbprint};
use vim_soap::codec::{self, HostServiceTicket, MoRef};
use vim_soap::Secret;

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection broke (or was closed) while a call needed it.
    #[error("NFC connection to {host} lost: {detail}")]
    ConnectionLost {
        /// Host.
        host: String,
        /// What happened.
        detail: String,
    },
    /// A timeout configured with the InitEx keys expired.
    #[error("NFC {what} timed out after {after:?}")]
    Timeout {
        /// Which timeout.
        what: &'static str,
        /// Its value.
        after: Duration,
    },
    /// Could not connect.
    #[error("cannot connect to {host}: {detail}")]
    Connect {
        /// Host.
        host: String,
        /// Why.
        detail: String,
    },
    /// The host's certificate does not have the ticket's thumbprint.
    #[error("host certificate thumbprint {found} does not match the expected {expected}")]
    ThumbprintMismatch {
        /// Expected.
        expected: String,
        /// Presented.
        found: String,
    },
    /// authd refused the ticket (expired, used, foreign) or the service.
    #[error("authd refused: {0}")]
    Refused(String),
    /// The server reported an error for a request.
    #[error("NFC error {code}: {text}")]
    Server {
        /// Error code (a VixDiskLib code where one fits).
        code: u32,
        /// Text.
        text: String,
    },
    /// The peer broke the protocol.
    #[error("NFC protocol: {0}")]
    Protocol(#[from] nfc_proto::Error),
    /// A vSphere call failed.
    #[error(transparent)]
    Soap(#[from] vim_soap::Error),
    /// A request outside the disk, or another bad argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Shorthand result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The InitEx NFC timeouts (`vixDiskLib.nfc.*TimeoutMs`; `None` = none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// `AcceptTimeoutMs`: connecting and authd.
    pub accept: Option<Duration>,
    /// `RequestTimeoutMs`: open, info, flush, close.
    pub request: Option<Duration>,
    /// `ReadTimeoutMs`: each read reply.
    pub read: Option<Duration>,
    /// `WriteTimeoutMs`: each write acknowledgement.
    pub write: Option<Duration>,
}

/// Transport options.
#[derive(Clone, Debug)]
pub struct NbdOptions {
    /// NFC over TLS (`nbdssl`) rather than plain (`nbd`).
    pub ssl: bool,
    /// Ask the server to compress read data (zlib).
    pub compression: bool,
    /// Requests in flight per read or write.
    pub in_flight: usize,
    /// Largest single request.
    pub max_request: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Read block 0 when the session has been idle this long.
    pub keepalive: Option<Duration>,
    /// Reconnect and retry a read once after a lost connection.
    pub retry_reads: bool,
}

impl Default for NbdOptions {
    fn default() -> Self {
        Self {
            ssl: true,
            compression: false,
            in_flight: 4,
            max_request: 1 << 20,
            timeouts: Timeouts::default(),
            keepalive: None,
            retry_reads: true,
        }
    }
}

/// Where and how to open an NFC session.
#[derive(Clone, Debug)]
pub struct Ticket {
    /// `host:port` of authd.
    pub server: String,
    /// The host's certificate thumbprint.
    pub thumbprint: Thumbprint,
    /// The ticket itself.
    pub ticket: Secret,
}

impl Ticket {
    /// From vim-soap's `HostServiceTicket`.
    pub fn from_host_ticket(t: &HostServiceTicket) -> Result<Self> {
        Ok(Self {
            server: format!("{}:{}", t.host, t.port),
            thumbprint: Thumbprint::parse(&t.ssl_thumbprint)?,
            ticket: t.session_id.clone(),
        })
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b),
            Stream::Tls(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(b),
            Stream::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The caller's buffer and where each read op's request starts in it.
type ReadTarget<'a> = (&'a mut [u8], &'a [(u32, usize)]);

struct Conn {
    stream: Stream,
    tracker: Tracker,
    handle: u64,
    host: String,
    out: Vec<u8>,
    scratch: Vec<u8>,
    last_used: Instant,
    broken: bool,
}

fn tls_client(
    tcp: TcpStream,
    server: &str,
    pin: &Thumbprint,
) -> Result<StreamOwned<ClientConnection, TcpStream>> {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    let name = ServerName::try_from(host.to_string()).map_err(|_| Error::Connect {
        host: server.into(),
        detail: "bad host name".into(),
    })?;
    let (cfg, _) = pinned_tls_config(pin);
    let conn = ClientConnection::new(cfg, name).map_err(|e| Error::Connect {
        host: server.into(),
        detail: e.to_string(),
    })?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            if e.to_string().contains("thumbprint") {
                let der = tls
                    .conn
                    .peer_certificates()
                    .and_then(|c| c.first().map(|c| c.to_vec()));
                let found = der.map(|d| match pin {
                    Thumbprint::Sha1(_) => Thumbprint::sha1_of(&d).to_string(),
                    Thumbprint::Sha256(_) => Thumbprint::sha256_of(&d).to_string(),
                });
                return Err(Error::ThumbprintMismatch {
                    expected: pin.to_string(),
                    found: found.unwrap_or_else(|| "another certificate".into()),
                });
            }
            return Err(Error::Connect {
                host: server.into(),
                detail: format!("TLS: {e}"),
            });
        }
    }
    Ok(tls)
}

fn read_line(r: &mut impl Read, host: &str) -> Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = r.read(&mut b).map_err(|e| io_err(host, "authd", e, None))?;
        if n == 0 {
            return Err(Error::ConnectionLost {
                host: host.into(),
                detail: "closed during authd".into(),
            });
        }
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
        if line.len() > authd::MAX_LINE {
            return Err(Error::Protocol(nfc_proto::Error::Authd(
                "line too long".into(),
            )));
        }
    }
    let (s, _) = authd::take_line(&line)?.unwrap_or_default();
    Ok(s)
}

fn io_err(host: &str, what: &'static str, e: std::io::Error, timeout: Option<Duration>) -> Error {
    match (e.kind(), timeout) {
        (std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut, Some(after)) => {
            Error::Timeout { what, after }
        }
        _ => Error::ConnectionLost {
            host: host.into(),
            detail: format!("{what}: {e}"),
        },
    }
}

impl Conn {
    fn connect(t: &Ticket, opts: &NbdOptions, path: &str, read_only: bool) -> Result<(Self, u64)> {
        let host = t.server.clone();
        let addr = host
            .to_socket_addrs()
            .map_err(|e| Error::Connect {
                host: host.clone(),
                detail: e.to_string(),
            })?
            .next()
            .ok_or_else(|| Error::Connect {
                host: host.clone(),
                detail: "no address".into(),
            })?;
        let accept = opts.timeouts.accept.unwrap_or(Duration::from_secs(60));
        let tcp = TcpStream::connect_timeout(&addr, accept).map_err(|e| Error::Connect {
            host: host.clone(),
            detail: e.to_string(),
        })?;
        let _ = tcp.set_nodelay(true);
        tcp.set_read_timeout(Some(accept))
            .map_err(|e| io_err(&host, "connect", e, None))?;
        let mut tcp = tcp;
        let banner = read_line(&mut tcp, &host)?;
        if authd::parse_reply(&banner)?.code != 220 {
            return Err(Error::Refused(banner));
        }
        let mut tls = tls_client(tcp, &host, &t.thumbprint)?;
        let service = if opts.ssl {
            authd::SERVICE_NFCSSL
        } else {
            authd::SERVICE_NFC
        };
        let mut lines = Vec::new();
        authd::push_command(&mut lines, &Command::Session(t.ticket.expose().to_string()));
        authd::push_command(&mut lines, &Command::Proxy(service.into()));
        tls.write_all(&lines)
            .map_err(|e| io_err(&host, "authd", e, Some(accept)))?;
        tls.flush()
            .map_err(|e| io_err(&host, "authd", e, Some(accept)))?;
        let reply = read_line(&mut tls, &host)?;
        if authd::parse_reply(&reply)?.code != 200 {
            return Err(Error::Refused(reply));
        }
        let (_, tcp) = tls.into_parts();
        let stream = if opts.ssl {
            Stream::Tls(Box::new(tls_client(tcp, &host, &t.thumbprint)?))
        } else {
            Stream::Plain(tcp)
        };
        let mut c = Conn {
            stream,
            tracker: Tracker::new(),
            handle: 0,
            host,
            out: Vec::new(),
            scratch: Vec::new(),
            last_used: Instant::now(),
            broken: false,
        };
        let op = c.tracker.open_session(&mut c.out)?;
        c.send(opts.timeouts.request)?;
        c.expect(op, opts.timeouts.request)?;
        let op = c.tracker.open_file(
            &mut c.out,
            &OpenFile {
                path: path.to_string(),
                read_only,
                compression: if opts.compression {
                    Compression::Zlib
                } else {
                    Compression::None
                },
            },
        )?;
        c.send(opts.timeouts.request)?;
        let capacity = match c.expect(op, opts.timeouts.request)? {
            Event::Opened { opened, .. } => {
                c.handle = opened.handle;
                opened.capacity
            }
            other => {
                return Err(Error::Protocol(nfc_proto::Error::Authd(format!(
                    "unexpected {other:?}"
                ))))
            }
        };
        Ok((c, capacity))
    }

    fn set_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.stream
            .tcp()
            .set_read_timeout(t)
            .map_err(|e| io_err(&self.host, "socket", e, None))?;
        self.stream
            .tcp()
            .set_write_timeout(t)
            .map_err(|e| io_err(&self.host, "socket", e, None))
    }

    fn send(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.set_timeout(timeout)?;
        let r = self
            .stream
            .write_all(&self.out)
            .and_then(|()| self.stream.flush());
        self.out.clear();
        self.last_used = Instant::now();
        r.map_err(|e| {
            self.broken = true;
            io_err(&self.host, "send", e, timeout)
        })
    }

    fn read_exact(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
        what: &'static str,
    ) -> Result<()> {
        let r = self.stream.read_exact(buf);
        r.map_err(|e| {
            self.broken = true;
            io_err(&self.host, what, e, timeout)
        })
    }

    /// Waits for the event of `op`.
    fn expect(&mut self, op: u32, timeout: Option<Duration>) -> Result<Event> {
        loop {
            if let Some(ev) = self.frame(timeout, None)? {
                if event_op(&ev) == op {
                    return match ev {
                        Event::Failed { code, text, .. } => Err(Error::Server { code, text }),
                        ev => Ok(ev),
                    };
                }
            }
        }
    }

    /// Reads one frame. Read-fragment data goes into `dest`: the caller's
    /// buffer and where each read op's request starts in it.
    fn frame(
        &mut self,
        timeout: Option<Duration>,
        dest: Option<ReadTarget<'_>>,
    ) -> Result<Option<Event>> {
        self.set_timeout(timeout)?;
        let mut head = [0u8; HEADER_LEN];
        self.read_exact(&mut head, timeout, "reply")?;
        self.last_used = Instant::now();
        let h = Header::parse(&head).inspect_err(|_| self.broken = true)?;
        if h.kind == Kind::Io as u32 && self.tracker.is_read(h.op) && h.size as usize >= IO_LEN {
            let mut fixed = [0u8; IO_LEN];
            self.read_exact(&mut fixed, timeout, "read data")?;
            let io = Io::parse_fixed(&fixed).inspect_err(|_| self.broken = true)?;
            if h.size as usize != IO_LEN + io.extra as usize {
                self.broken = true;
                return Err(Error::Protocol(nfc_proto::Error::Short {
                    what: "IO frame",
                    len: h.size as usize,
                }));
            }
            let at = self
                .tracker
                .begin_fragment(h.op, &io)
                .inspect_err(|_| self.broken = true)?;
            let len = io.frag_len as usize;
            let target = dest.and_then(|(buf, ops)| {
                let start = ops.iter().find(|(o, _)| *o == h.op)?.1;
                buf.get_mut(start + at..)
            });
            match (io.compression, target) {
                (Compression::None, Some(d)) if d.len() >= len => {
                    self.read_exact(&mut d[..len], timeout, "read data")?
                }
                (Compression::Zlib, Some(d)) if d.len() >= len => {
                    let mut z = std::mem::take(&mut self.scratch);
                    z.resize(io.extra as usize, 0);
                    let r = self.read_exact(&mut z, timeout, "read data");
                    let n = r.and_then(|()| {
                        miniz_oxide::inflate::decompress_slice_iter_to_slice(
                            &mut d[..len],
                            std::iter::once(&z[..]),
                            true,
                            false,
                        )
                        .map_err(|_| Error::Protocol(nfc_proto::Error::BadCompression(h.op)))
                    });
                    self.scratch = z;
                    if n? != len {
                        self.broken = true;
                        return Err(Error::Protocol(nfc_proto::Error::BadCompression(h.op)));
                    }
                }
                _ => {
                    self.broken = true;
                    return Err(Error::Protocol(nfc_proto::Error::BadFragment {
                        op: h.op,
                        offset: at as u64,
                        len: len as u64,
                    }));
                }
            }
            return Ok(self.tracker.end_fragment(h.op, io.frag_len));
        }
        let mut frame = head.to_vec();
        frame.resize(HEADER_LEN + h.size as usize, 0);
        self.read_exact(&mut frame[HEADER_LEN..], timeout, "reply")?;
        let (_, ev) = self
            .tracker
            .handle_input(&frame, &mut |_, _, _| {})
            .inspect_err(|_| self.broken = true)?;
        Ok(ev)
    }
}

fn event_op(e: &Event) -> u32 {
    match *e {
        Event::SessionOpened { op }
        | Event::Opened { op, .. }
        | Event::ReadDone { op }
        | Event::WriteDone { op }
        | Event::Flushed { op }
        | Event::Closed { op }
        | Event::Info { op, .. }
        | Event::Ddb { op, .. }
        | Event::Pong { op }
        | Event::Failed { op, .. } => op,
    }
}

/// Fetches a fresh ticket (for reconnects).
pub type Reticket = dyn Fn() -> Result<Ticket> + Send + Sync;

/// An open disk over nbd or nbdssl. Safe to share between threads
/// (requests are serialised on the connection).
pub struct NbdDisk {
    conn: Arc<Mutex<Option<Conn>>>,
    capacity: u64,
    path: String,
    read_only: bool,
    opts: NbdOptions,
    reticket: Option<Box<Reticket>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for NbdDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDisk")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .field("ssl", &self.opts.ssl)
            .finish_non_exhaustive()
    }
}

impl NbdDisk {
    /// Opens `path` (the datastore path the ticket was issued for).
    /// `reticket` fetches a new ticket when a read reconnects.
    pub fn open(
        ticket: &Ticket,
        path: &str,
        read_only: bool,
        opts: NbdOptions,
        reticket: Option<Box<Reticket>>,
    ) -> Result<Self> {
        let (conn, capacity) = Conn::connect(ticket, &opts, path, read_only)?;
        let conn = Arc::new(Mutex::new(Some(conn)));
        let stop = Arc::new(AtomicBool::new(false));
        if let Some(every) = opts.keepalive {
            let (c, s, rt) = (Arc::downgrade(&conn), Arc::clone(&stop), opts.timeouts.read);
            std::thread::Builder::new()
                .name("nbd-keepalive".into())
                .spawn(move || keepalive(c, s, every, rt))
                .map_err(|e| Error::Connect {
                    host: ticket.server.clone(),
                    detail: e.to_string(),
                })?;
        }
        Ok(Self {
            conn,
            capacity,
            path: path.to_string(),
            read_only,
            opts,
            reticket,
            stop,
        })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The options in force.
    pub fn options(&self) -> &NbdOptions {
        &self.opts
    }

    fn check(&self, offset: u64, len: usize) -> Result<()> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|e| e > self.capacity)
        {
            return Err(Error::InvalidArgument(format!(
                "range {offset}+{len} is outside the disk's {} bytes",
                self.capacity
            )));
        }
        Ok(())
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        let mut g = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let c = g.as_mut().ok_or_else(|| Error::ConnectionLost {
            host: String::new(),
            detail: "closed".into(),
        })?;
        if c.broken {
            return Err(Error::ConnectionLost {
                host: c.host.clone(),
                detail: "an earlier request broke the connection".into(),
            });
        }
        f(c)
    }

    /// Reads `buf.len()` bytes at `offset` into `buf`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        match self.with_conn(|c| pipelined_read(c, &self.opts, offset, buf)) {
            Err(e @ (Error::ConnectionLost { .. } | Error::Timeout { .. }))
                if self.opts.retry_reads && self.reticket.is_some() =>
            {
                let t = (self.reticket.as_ref().expect("checked"))().map_err(|_| e)?;
                let (fresh, _) = Conn::connect(&t, &self.opts, &self.path, self.read_only)?;
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
                self.with_conn(|c| pipelined_read(c, &self.opts, offset, buf))
            }
            r => r,
        }
    }

    /// Reads several ranges `(disk offset, buffer offset, length)` into
    /// `buf` with requests in flight across them (many small extents read
    /// as fast as one large one).
    pub fn read_scattered(&self, buf: &mut [u8], parts: &[(u64, usize, usize)]) -> Result<()> {
        for &(off, _, len) in parts {
            self.check(off, len)?;
        }
        self.with_conn(|c| pipelined_read_scattered(c, &self.opts, buf, parts))
    }

    /// Writes `data` at `offset`; returns once the server acknowledged
    /// every byte.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check(offset, data.len())?;
        if self.read_only {
            return Err(Error::InvalidArgument(
                "the disk was opened read-only".into(),
            ));
        }
        self.with_conn(|c| pipelined_write(c, &self.opts, offset, data))
    }

    /// Asks the server to make written data durable.
    pub fn flush(&self) -> Result<()> {
        let t = self.opts.timeouts.request;
        self.with_conn(|c| {
            let op = c.tracker.flush(&mut c.out, c.handle)?;
            c.send(t)?;
            c.expect(op, t).map(|_| ())
        })
    }

    /// Capacity, geometry, adapter.
    pub fn info(&self) -> Result<FileInfo> {
        let t = self.opts.timeouts.request;
        self.with_conn(|c| {
            let op = c.tracker.file_info(&mut c.out, c.handle)?;
            c.send(t)?;
            match c.expect(op, t)? {
                Event::Info { info, .. } => Ok(info),
                _ => Err(Error::Protocol(nfc_proto::Error::UnknownOp(op))),
            }
        })
    }

    /// One DDB key (`None`: not set).
    pub fn ddb(&self, key: &str) -> Result<Option<String>> {
        let t = self.opts.timeouts.request;
        self.with_conn(|c| {
            let op = c.tracker.ddb_get(&mut c.out, c.handle, key)?;
            c.send(t)?;
            match c.expect(op, t)? {
                Event::Ddb { value, .. } => Ok(value),
                _ => Err(Error::Protocol(nfc_proto::Error::UnknownOp(op))),
            }
        })
    }

    /// Closes the disk and the session.
    pub fn close(self) -> Result<()> {
        self.stop.store(true, Ordering::Release);
        let t = self.opts.timeouts.request;
        let r = self.with_conn(|c| {
            let op = c.tracker.close_file(&mut c.out, c.handle)?;
            c.send(t)?;
            c.expect(op, t).map(|_| ())
        });
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        r
    }
}

impl Drop for NbdDisk {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn keepalive(
    conn: std::sync::Weak<Mutex<Option<Conn>>>,
    stop: Arc<AtomicBool>,
    every: Duration,
    read_timeout: Option<Duration>,
) {
    let tick = (every / 4).max(Duration::from_millis(20));
    loop {
        std::thread::sleep(tick);
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Some(conn) = conn.upgrade() else { return };
        let mut g = conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = g.as_mut() else { return };
        if c.broken || c.last_used.elapsed() < every {
            continue;
        }
        // Reading block 0 is what VMware recommends as a keep-alive.
        let mut block = [0u8; 512];
        let _ = pipelined_read(
            c,
            &NbdOptions {
                in_flight: 1,
                max_request: 512,
                timeouts: Timeouts {
                    read: read_timeout,
                    ..Timeouts::default()
                },
                ..NbdOptions::default()
            },
            0,
            &mut block,
        );
    }
}

fn pipelined_read(c: &mut Conn, opts: &NbdOptions, offset: u64, buf: &mut [u8]) -> Result<()> {
    let len = buf.len();
    pipelined_read_scattered(c, opts, buf, &[(offset, 0, len)])
}

/// Reads several disk ranges `(disk offset, buffer offset, length)` into
/// one buffer, with requests in flight across range boundaries.
fn pipelined_read_scattered(
    c: &mut Conn,
    opts: &NbdOptions,
    buf: &mut [u8],
    parts: &[(u64, usize, usize)],
) -> Result<()> {
    let chunk = opts
        .max_request
        .clamp(512, nfc_proto::client::MAX_REQUEST as usize);
    let depth = opts.in_flight.max(1);
    // Requests: (disk offset, buffer offset, length), each at most `chunk`.
    let mut reqs = Vec::new();
    for &(off, at, len) in parts {
        if at.checked_add(len).is_none_or(|e| e > buf.len()) {
            return Err(Error::InvalidArgument(
                "a range does not fit the buffer".into(),
            ));
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk);
            reqs.push((off + done as u64, at + done, n));
            done += n;
        }
    }
    let mut next = 0usize;
    let mut ops: Vec<(u32, usize)> = Vec::with_capacity(depth);
    let t = opts.timeouts.read;
    while next < reqs.len() || !ops.is_empty() {
        while next < reqs.len() && ops.len() < depth {
            let (off, at, n) = reqs[next];
            let op = c.tracker.read(&mut c.out, c.handle, off, n as u32)?;
            ops.push((op, at));
            next += 1;
        }
        if !c.out.is_empty() {
            c.send(t)?;
        }
        // The tracker checked each fragment lies inside its op's request,
        // so the op's start plus the fragment offset stays in `buf`.
        let ev = c.frame(t, Some((&mut *buf, &ops)))?;
        match ev {
            Some(Event::ReadDone { op }) => ops.retain(|(o, _)| *o != op),
            Some(Event::Failed { code, text, .. }) => return Err(Error::Server { code, text }),
            _ => {}
        }
    }
    Ok(())
}

fn pipelined_write(c: &mut Conn, opts: &NbdOptions, offset: u64, data: &[u8]) -> Result<()> {
    let chunk = opts
        .max_request
        .clamp(512, nfc_proto::client::MAX_REQUEST as usize);
    let depth = opts.in_flight.max(1);
    let mut next = 0usize;
    let mut ops: Vec<u32> = Vec::with_capacity(depth);
    let t = opts.timeouts.write;
    while next < data.len() || !ops.is_empty() {
        while next < data.len() && ops.len() < depth {
            let n = (data.len() - next).min(chunk);
            ops.push(c.tracker.write(
                &mut c.out,
                c.handle,
                offset + next as u64,
                &data[next..next + n],
            )?);
            next += n;
        }
        if !c.out.is_empty() {
            c.send(t)?;
        }
        match c.frame(t, None)? {
            Some(Event::WriteDone { op }) => ops.retain(|o| *o != op),
            Some(Event::Failed { code, text, .. }) => return Err(Error::Server { code, text }),
            _ => {}
        }
    }
    Ok(())
}

/// Opens a disk of a VM through vim-soap and NFC: finds the disk by its
/// datastore path (in the snapshot's configuration when one is given),
/// asks for a ticket, connects. Reads reconnect with a fresh ticket.
pub fn open_vm_disk(
    client: Arc<Client>,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    path: &str,
    read_only: bool,
    opts: NbdOptions,
) -> Result<NbdDisk> {
    let owner = snapshot.cloned().unwrap_or_else(|| vm.clone());
    let val = client
        .property(&owner, "config.hardware.device")?
        .ok_or_else(|| Error::InvalidArgument("the VM has no devices".into()))?;
    let disks = codec::virtual_disks(&val)?;
    let disk = disks.iter().find(|d| d.file_name == path).ok_or_else(|| {
        Error::InvalidArgument(format!("{path} is not a disk of {}", owner.value))
    })?;
    let key = disk.key;
    let nfc = codec::parse_internal_content(&client.call(&codec::retrieve_internal_content())?)?
        .nfc_service;
    let (vm, snap) = (vm.clone(), snapshot.cloned());
    let get =
        move || -> Result<Ticket> {
            let t = codec::parse_host_service_ticket(&client.call(
                &codec::nfc_random_access_open(&nfc, &vm, key, snap.as_ref(), read_only),
            )?)?;
            Ticket::from_host_ticket(&t)
        };
    let first = get()?;
    NbdDisk::open(&first, path, read_only, opts, Some(Box::new(get)))
}
