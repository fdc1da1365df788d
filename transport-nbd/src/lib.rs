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

mod conn;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nfc_proto::aio::FileInfo;
use nfc_proto::client::Event;
use vim_soap::client::{Client, Thumbprint};
use vim_soap::codec::{self, HostServiceTicket, MoRef};
use vim_soap::Secret;

use conn::Conn;

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
    /// The VM (at the snapshot, if one is given) has no disk with this
    /// datastore path.
    #[error("{path} is not a disk of {owner}")]
    NotADisk {
        /// The datastore path asked for.
        path: String,
        /// The VM or snapshot.
        owner: String,
    },
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
            server: vim_soap::client::server_address(&t.host, t.port),
            thumbprint: Thumbprint::parse(&t.ssl_thumbprint)?,
            ticket: t.session_id.clone(),
        })
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
    let disk = disks
        .iter()
        .find(|d| d.file_name == path)
        .ok_or_else(|| Error::NotADisk {
            path: path.to_string(),
            owner: owner.value.clone(),
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
