//! One NFC connection: authd, TLS, the classic handshake, the AIO session
//! and the frames in flight (the requests `NbdDisk` pipelines go through
//! here).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use nfc_proto::aio::{
    reply_extra_len, Compression, Header, Io, Kind, OpenFile, OpenSession, Opened, HEADER_LEN,
    IO_LEN,
};
use nfc_proto::authd::{self, Command};
use nfc_proto::classic::{self, ClientHandshake};
use nfc_proto::client::{Event, Tracker};
use nfc_proto::compress;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use vim_soap::client::{pinned_tls_config, Thumbprint};

use crate::{Error, NbdOptions, Result, Ticket};

pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    pub(crate) fn tcp(&self) -> &TcpStream {
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

pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) tracker: Tracker,
    pub(crate) handle: u64,
    pub(crate) host: String,
    pub(crate) out: Vec<u8>,
    pub(crate) scratch: Vec<u8>,
    pub(crate) last_used: Instant,
    pub(crate) broken: bool,
}

pub(crate) fn tls_client(
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

pub(crate) fn read_line(r: &mut impl Read, host: &str) -> Result<String> {
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

pub(crate) fn io_err(
    host: &str,
    what: &'static str,
    e: std::io::Error,
    timeout: Option<Duration>,
) -> Error {
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
    /// authd, the switch to plain TCP or a fresh TLS session, the classic
    /// handshake, then VDDK's open: OPEN_SESSION, SET_SOCK_OPTS,
    /// SET_RES_POOL, OPEN_FILE.
    pub(crate) fn connect(
        t: &Ticket,
        opts: &NbdOptions,
        path: &str,
        read_only: bool,
    ) -> Result<(Self, Opened)> {
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
        let send = |tls: &mut StreamOwned<ClientConnection, TcpStream>, cmds: &[Command]| {
            let mut lines = Vec::new();
            for c in cmds {
                authd::push_command(&mut lines, c);
            }
            tls.write_all(&lines)
                .and_then(|()| tls.flush())
                .map_err(|e| io_err(&host, "authd", e, Some(accept)))
        };
        let expect = |tls: &mut StreamOwned<ClientConnection, TcpStream>, code: u16| {
            let reply = read_line(tls, &host)?;
            if authd::parse_reply(&reply)?.code != code {
                return Err(Error::Refused(reply));
            }
            Ok(reply)
        };
        // VDDK 8: SESSION and BANNER back to back, then the SHA-256
        // thumbprint, then PROXY with the ticket's service.
        send(
            &mut tls,
            &[
                Command::Session(t.ticket.expose().to_string()),
                Command::Banner,
            ],
        )?;
        expect(&mut tls, 220)?;
        send(
            &mut tls,
            &[Command::ThumbprintSha2(
                authd::THUMBPRINT_PLAINTEXT.to_string(),
            )],
        )?;
        let reply = expect(&mut tls, 200)?;
        let der = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first().map(|c| c.to_vec()))
            .unwrap_or_default();
        let told = Thumbprint::parse(reply.get(4..).unwrap_or_default().trim());
        let seen = Thumbprint::sha256_of(&der).to_string();
        if told.map(|t| t.to_string()).ok().as_deref() != Some(seen.as_str()) {
            return Err(Error::ThumbprintMismatch {
                expected: seen,
                found: reply.get(4..).unwrap_or_default().to_string(),
            });
        }
        send(
            &mut tls,
            &[Command::Proxy(authd::proxy_service(&t.service, opts.ssl))],
        )?;
        expect(&mut tls, 200)?;
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
        let rt = opts.timeouts.request;
        c.handshake(rt)?;
        let session = OpenSession {
            buffer_size: opts.buffer_size,
            buffer_count: opts.buffer_count,
        };
        let op = c.tracker.open_session(&mut c.out, session)?;
        c.send(rt)?;
        c.expect(op, rt)?;
        let op = c.tracker.set_sock_opts(&mut c.out)?;
        c.send(rt)?;
        c.expect(op, rt)?;
        let op = c.tracker.set_res_pool(&mut c.out, 1)?;
        c.send(rt)?;
        c.expect(op, rt)?;
        let op = c.tracker.open_file(
            &mut c.out,
            &OpenFile {
                path: path.to_string(),
                read_only,
            },
        )?;
        c.send(rt)?;
        let opened = match c.expect(op, rt)? {
            Event::Opened { opened, .. } => opened,
            other => {
                return Err(Error::Protocol(nfc_proto::Error::UnexpectedType(
                    other.op(),
                )))
            }
        };
        c.handle = opened.handle;
        c.tracker.set_compression(opts.compression);
        Ok((c, opened))
    }

    /// The classic handshake (43, 33/36, 51/51, 54 + strings, 55, 52/52).
    fn handshake(&mut self, timeout: Option<Duration>) -> Result<()> {
        let mut hs = ClientHandshake::vddk();
        let mut frame = [0u8; classic::FRAME_LEN];
        loop {
            hs.poll_output(&mut self.out);
            if !self.out.is_empty() {
                self.send(timeout)?;
            }
            if hs.is_done() {
                return Ok(());
            }
            self.set_timeout(timeout)?;
            self.read_exact(&mut frame, timeout, "handshake")?;
            hs.handle_input(&frame)
                .inspect_err(|_| self.broken = true)?;
        }
    }

    /// CLOSE_FILE, CLOSE_SESSION, then classic type 4.
    pub(crate) fn close(&mut self, timeout: Option<Duration>) -> Result<()> {
        let op = self.tracker.close_file(&mut self.out, self.handle)?;
        self.send(timeout)?;
        self.expect(op, timeout)?;
        let op = self.tracker.close_session(&mut self.out)?;
        self.send(timeout)?;
        self.expect(op, timeout)?;
        classic::Message::SessionComplete.encode(&mut self.out);
        self.send(timeout)
    }

    pub(crate) fn set_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.stream
            .tcp()
            .set_read_timeout(t)
            .map_err(|e| io_err(&self.host, "socket", e, None))?;
        self.stream
            .tcp()
            .set_write_timeout(t)
            .map_err(|e| io_err(&self.host, "socket", e, None))
    }

    pub(crate) fn send(&mut self, timeout: Option<Duration>) -> Result<()> {
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

    pub(crate) fn read_exact(
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
    pub(crate) fn expect(&mut self, op: u32, timeout: Option<Duration>) -> Result<Event> {
        loop {
            if let Some(ev) = self.frame(timeout, None)? {
                if ev.op() == op {
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
    pub(crate) fn frame(
        &mut self,
        timeout: Option<Duration>,
        dest: Option<ReadTarget<'_>>,
    ) -> Result<Option<Event>> {
        self.set_timeout(timeout)?;
        let mut head = [0u8; HEADER_LEN];
        self.read_exact(&mut head, timeout, "reply")?;
        self.last_used = Instant::now();
        let h = Header::parse(&head).inspect_err(|_| self.broken = true)?;
        if h.kind == Kind::Io as u32 && self.tracker.is_read(h.op) {
            let mut fixed = [0u8; IO_LEN];
            self.read_exact(&mut fixed, timeout, "read data")?;
            let io = Io::parse(&fixed).inspect_err(|_| self.broken = true)?;
            let at = self
                .tracker
                .begin_fragment(h.op, &io)
                .inspect_err(|_| self.broken = true)?;
            let len = io.frag_len as usize;
            let target = dest.and_then(|(buf, ops)| {
                let start = ops.iter().find(|(o, _)| *o == h.op)?.1;
                buf.get_mut(start + at..)
            });
            let Some(d) = target.filter(|d| d.len() >= len) else {
                self.broken = true;
                return Err(Error::Protocol(nfc_proto::Error::BadFragment {
                    op: h.op,
                    offset: at as u64,
                    len: len as u64,
                }));
            };
            if io.compression == Compression::None {
                self.read_exact(&mut d[..len], timeout, "read data")?;
            } else {
                let mut z = std::mem::take(&mut self.scratch);
                z.resize(io.extra as usize, 0);
                let r = self.read_exact(&mut z, timeout, "read data");
                let ok = r.and_then(|()| {
                    compress::decompress_fragment(io.compression, &z, &mut d[..len])
                        .map_err(|_| Error::Protocol(nfc_proto::Error::BadCompression(h.op)))
                });
                self.scratch = z;
                ok.inspect_err(|_| self.broken = true)?;
            }
            return Ok(self.tracker.end_fragment(h.op, io.frag_len));
        }
        let kind = h.known_kind().inspect_err(|_| self.broken = true)?;
        let mut frame = head.to_vec();
        frame.resize(HEADER_LEN + h.size as usize, 0);
        self.read_exact(&mut frame[HEADER_LEN..], timeout, "reply")?;
        let extra = reply_extra_len(kind, &frame[HEADER_LEN..], false)
            .inspect_err(|_| self.broken = true)?;
        let fixed_end = frame.len();
        frame.resize(fixed_end + extra, 0);
        self.read_exact(&mut frame[fixed_end..], timeout, "reply")?;
        let (_, ev) = self
            .tracker
            .handle_input(&frame, &mut |_, _, _| {})
            .inspect_err(|_| self.broken = true)?;
        Ok(ev)
    }
}
