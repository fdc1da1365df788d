//! The simulator's NFC server: authd on a loopback port, tickets issued
//! by the SOAP side, disks served through the kit's own VMDK engine.
//!
//! As strict as the public VDDK 8 traces let us be: authd answers
//! `BANNER ` with its `220` line and `THUMBPRINT_SHA2 PlainText` with the
//! certificate's SHA-256 thumbprint (`501` to any other argument), and
//! accepts in `PROXY` only the ticket's service (`ssl` appended for
//! nbdssl). After `200 Connect` the connection runs
//! [`nfc_proto::server::ServerSession`]: the classic handshake before any
//! AIO frame, OPEN_SESSION first, documented sizes only, op ids from 0,
//! read requests as VDDK sends them, fragments of the session's buffer
//! size, CLOSE_SESSION then classic type 4; anything else closes the
//! connection. A `NfcGetVmFiles` ticket opens any disk file of its VM
//! (snapshot parents included) read-only; a `NfcRandomAccessOpenDisk`
//! ticket opens its disk's running file. DDB_GET keys come without the
//! descriptor's `ddb.` prefix. GET_FILE_INFO, whose layout is
//! unpublished, is refused.
//!
//! Limits like ESXi's: total buffer memory across sessions (48 MB by
//! default) and a connection cap, each answered with an error. Paths are
//! the ticket's disk or nothing: `..`, absolute paths and symlinks that
//! lead out of the datastore are refused. Faults can be injected for
//! tests: drop the connection after N bytes, delay replies, corrupt a
//! frame.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nfc_proto::aio::Opened;
use nfc_proto::authd::{self, Command};
use nfc_proto::server::{Request, ServerSession};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use vmdk_file::local::{LocalDisk, OpenOptions};

use crate::model::{NfcGrant, Shared};

/// Faults to inject.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Close the connection once this many NFC bytes were sent.
    pub drop_after_bytes: Option<u64>,
    /// Sleep this long before every reply.
    pub delay: Option<Duration>,
    /// Corrupt the magic of the n-th reply frame (1-based).
    pub corrupt_frame: Option<u64>,
    /// Send the fragments of every read reply last first (hosts may send
    /// them in any order).
    pub reverse_fragments: bool,
}

/// NFC server options.
#[derive(Clone, Debug)]
pub struct NfcOptions {
    /// Total bytes of NFC buffers across sessions.
    pub memory_limit: u64,
    /// Most concurrent connections.
    pub max_connections: usize,
    /// A session idle this long is closed (hostd's behaviour).
    pub idle_timeout: Duration,
    /// Faults to inject (shared, changeable while running).
    pub faults: Arc<Mutex<Faults>>,
    /// Keep up to this many bytes of disk data in memory for reads (the
    /// "disk cached in memory" of `cargo xtask bench nbd`); 0, the
    /// default, reads every request from the disk files. Blocks of
    /// [`CACHE_BLOCK`] bytes serve requests that fall inside one block;
    /// every change the simulator makes to any disk (guest and NFC
    /// writes, snapshots, reconfigurations, LUN switches) invalidates
    /// them all. Files changed behind the simulator's back are not seen.
    pub read_cache_bytes: u64,
}

/// The unit of the NFC read cache.
pub const CACHE_BLOCK: u64 = 1 << 20;

/// Disk blocks kept in memory, each tagged with the data generation it
/// was read at (see [`Shared::data_generation`]).
#[derive(Debug, Default)]
struct ReadCache {
    max: u64,
    blocks: Mutex<CachedBlocks>,
}

/// (bytes held, (disk file, block index) → (generation, data)).
type CachedBlocks = (u64, HashMap<(PathBuf, u64), (u64, Arc<Vec<u8>>)>);

impl ReadCache {
    /// The block at `index` of `path`, read with `fill` when missing or
    /// older than `generation`.
    fn get(
        &self,
        path: &Path,
        index: u64,
        generation: u64,
        fill: impl FnOnce() -> vmdk_file::Result<Vec<u8>>,
    ) -> vmdk_file::Result<Arc<Vec<u8>>> {
        let key = (path.to_path_buf(), index);
        {
            let g = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((gen, b)) = g.1.get(&key) {
                if *gen == generation {
                    return Ok(Arc::clone(b));
                }
            }
        }
        let block = Arc::new(fill()?);
        let mut g = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 + block.len() as u64 > self.max {
            // Full: start over (a benchmark's working set fits or it does not).
            g.1.clear();
            g.0 = 0;
        }
        g.0 += block.len() as u64;
        if let Some((_, old)) = g.1.insert(key, (generation, Arc::clone(&block))) {
            g.0 -= old.len() as u64;
        }
        Ok(block)
    }
}

impl Default for NfcOptions {
    fn default() -> Self {
        Self {
            memory_limit: 48 << 20,
            max_connections: 52,
            idle_timeout: Duration::from_secs(300),
            faults: Arc::default(),
            read_cache_bytes: 0,
        }
    }
}

/// A running NFC server. Stops accepting when dropped.
#[derive(Debug)]
pub struct NfcServer {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far (for tests).
    pub accepted: Arc<AtomicUsize>,
    /// The authd lines each connection sent, in order (the ticket of a
    /// `SESSION` line replaced by `<ticket>`), for tests.
    pub authd_lines: Arc<Mutex<Vec<Vec<String>>>>,
    /// Sessions that ended as VDDK ends them: CLOSE_SESSION, then classic
    /// type 4 (for tests).
    pub completed: Arc<AtomicUsize>,
}

impl NfcServer {
    /// Starts on 127.0.0.1 (any free port) and tells the SOAP side.
    pub fn start(
        shared: Arc<Shared>,
        cert_der: &[u8],
        key_der: &[u8],
        opts: NfcOptions,
    ) -> Result<Self, String> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        shared.set_nfc_endpoint("127.0.0.1", port);
        let cfg = crate::server::tls_config(cert_der, key_der)?;
        let sha256 = Arc::new(vim_soap::client::Thumbprint::sha256_of(cert_der).to_string());
        let authd_lines: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let lines2 = Arc::clone(&authd_lines);
        let completed = Arc::new(AtomicUsize::new(0));
        let completed2 = Arc::clone(&completed);
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let memory = Arc::new(AtomicU64::new(0));
        let cache = Arc::new(ReadCache {
            max: opts.read_cache_bytes,
            ..ReadCache::default()
        });
        let (stop2, acc2) = (Arc::clone(&stop), Arc::clone(&accepted));
        std::thread::Builder::new()
            .name("sim-nfc-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(tcp) = conn else { continue };
                    acc2.fetch_add(1, Ordering::AcqRel);
                    let ctx = Ctx {
                        shared: Arc::clone(&shared),
                        cfg: Arc::clone(&cfg),
                        opts: opts.clone(),
                        active: Arc::clone(&active),
                        memory: Arc::clone(&memory),
                        cache: Arc::clone(&cache),
                        sha256: Arc::clone(&sha256),
                        lines: Arc::clone(&lines2),
                        completed: Arc::clone(&completed2),
                    };
                    let _ = std::thread::Builder::new()
                        .name("sim-nfc".into())
                        .spawn(move || {
                            let over = ctx.active.fetch_add(1, Ordering::AcqRel)
                                >= ctx.opts.max_connections;
                            let _ = ctx.serve(tcp, over);
                            ctx.active.fetch_sub(1, Ordering::AcqRel);
                        });
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            port,
            stop,
            accepted,
            authd_lines,
            completed,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for NfcServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

struct Ctx {
    shared: Arc<Shared>,
    cfg: Arc<ServerConfig>,
    opts: NfcOptions,
    active: Arc<AtomicUsize>,
    memory: Arc<AtomicU64>,
    cache: Arc<ReadCache>,
    /// The certificate's SHA-256 thumbprint, the `THUMBPRINT_SHA2` reply.
    sha256: Arc<String>,
    lines: Arc<Mutex<Vec<Vec<String>>>>,
    completed: Arc<AtomicUsize>,
}

/// The handle OPEN_FILE gives (opaque on the wire).
const HANDLE: u64 = 0x0000_0001_0000_0007;

/// Where a read reply's data is.
enum ReplyData {
    /// The first bytes of the session's read buffer.
    Buffer(usize),
    /// A slice `[start, start + len)` of a cached block.
    Cached(Arc<Vec<u8>>, usize, usize),
}

/// The NFC byte stream after authd: plain TCP or a fresh TLS session.
enum Nfc {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Read for Nfc {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Nfc::Plain(s) => s.read(b),
            Nfc::Tls(s) => s.read(b),
        }
    }
}

impl Write for Nfc {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Nfc::Plain(s) => s.write(b),
            Nfc::Tls(s) => s.write(b),
        }
    }
    fn write_vectored(&mut self, b: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Nfc::Plain(s) => s.write_vectored(b),
            Nfc::Tls(s) => s.write_vectored(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Nfc::Plain(s) => s.flush(),
            Nfc::Tls(s) => s.flush(),
        }
    }
}

fn tls_handshake(
    cfg: &Arc<ServerConfig>,
    tcp: TcpStream,
) -> std::io::Result<StreamOwned<ServerConnection, TcpStream>> {
    let conn = ServerConnection::new(Arc::clone(cfg)).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// VixDiskLib error codes the server answers with.
mod codes {
    pub const FAIL: u32 = 1;
    pub const OUT_OF_MEMORY: u32 = 2;
    pub const INVALID_ARG: u32 = 3;
    pub const FILE_READ_ONLY: u32 = 11;
    pub const INVALID_HANDLE: u32 = 1000;
    pub const OUT_OF_RANGE: u32 = 16007;
}

impl Ctx {
    fn serve(&self, tcp: TcpStream, over_limit: bool) -> std::io::Result<()> {
        tcp.set_read_timeout(Some(self.opts.idle_timeout))?;
        let _ = tcp.set_nodelay(true);
        let mut tcp = tcp;
        tcp.write_all(format!("{}\r\n", authd::BANNER).as_bytes())?;
        let mut tls = tls_handshake(&self.cfg, tcp)?;
        // authd over TLS.
        let mut ticket: Option<String> = None;
        let mut line_buf = Vec::new();
        let conn_index = {
            let mut l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            l.push(Vec::new());
            l.len() - 1
        };
        let service = loop {
            let line = read_line(&mut tls, &mut line_buf)?;
            let cmd = authd::parse_command(&line);
            if let Some(l) = self
                .lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(conn_index)
            {
                l.push(match cmd {
                    Command::Session(_) => "SESSION <ticket>".into(),
                    _ => line.clone(),
                });
            }
            let mut out = Vec::new();
            match cmd {
                Command::Session(t) => ticket = Some(t),
                Command::Banner => {
                    out.extend_from_slice(format!("{}\r\n", authd::BANNER).as_bytes())
                }
                Command::ThumbprintSha2(arg) if arg == authd::THUMBPRINT_PLAINTEXT => {
                    authd::push_reply(&mut out, 200, &self.sha256)
                }
                Command::ThumbprintSha2(_) => authd::push_reply(&mut out, 501, "Invalid arguments"),
                Command::User(_) => authd::push_reply(&mut out, 331, "Password required"),
                Command::Pass(_) => authd::push_reply(&mut out, 530, "Login incorrect"),
                Command::Proxy(s) => break s,
                Command::Other(l)
                    if l.starts_with("SESSIONID") || l.starts_with("CONNECT_VPXA") =>
                {
                    authd::push_reply(&mut out, 530, "Please login with USER and PASS")
                }
                Command::Other(_) => authd::push_reply(&mut out, 500, "Unknown command"),
            }
            tls.write_all(&out)?;
        };
        if over_limit {
            tls.write_all(b"530 NFC connection limit reached\r\n")?;
            return Ok(());
        }
        let grant = match ticket
            .as_deref()
            .and_then(|t| self.shared.take_nfc_ticket(t))
        {
            Some(g) => g,
            None => {
                tls.write_all(b"530 Invalid, expired or used ticket\r\n")?;
                return Ok(());
            }
        };
        let ssl = if service == authd::proxy_service(&grant.service, false) {
            false
        } else if service == authd::proxy_service(&grant.service, true) {
            true
        } else {
            tls.write_all(b"530 Unknown service\r\n")?;
            return Ok(());
        };
        let mut out = Vec::new();
        authd::push_reply(&mut out, 200, authd::proxy_reply(ssl));
        tls.write_all(&out)?;
        tls.flush()?;
        let (_, tcp) = tls.into_parts();
        let nfc = if ssl {
            Nfc::Tls(Box::new(tls_handshake(&self.cfg, tcp)?))
        } else {
            Nfc::Plain(tcp)
        };
        self.session(nfc, grant)
    }

    fn session(&self, mut nfc: Nfc, grant: NfcGrant) -> std::io::Result<()> {
        let mut s = ServerSession::with_memory_limit(self.opts.memory_limit);
        let mut inbuf: Vec<u8> = Vec::with_capacity(1 << 17);
        let mut chunk = vec![0u8; 1 << 16];
        let mut disk: Option<LocalDisk> = None;
        let mut sent = 0u64;
        let mut frames = 0u64;
        let mut reserved = 0u64;
        let mut rbuf: Vec<u8> = Vec::new();
        let result = (|| -> std::io::Result<()> {
            loop {
                let (n, req) = match s.handle_input(&inbuf) {
                    Ok(x) => x,
                    Err(e) => {
                        // Refused: an error frame once AIO runs, then close.
                        if s.in_aio() {
                            let mut out = Vec::new();
                            s.reply_error(&mut out, 0, codes::INVALID_ARG, &e.to_string());
                            let _ = nfc.write_all(&out);
                        }
                        return Ok(());
                    }
                };
                // Memory accounting across sessions: what this session holds now.
                let now = s.buffered();
                self.memory.fetch_add(now, Ordering::AcqRel);
                self.memory.fetch_sub(reserved, Ordering::AcqRel);
                reserved = now;
                // Session-level replies (handshake, OPEN_SESSION, ...).
                let mut session_out = Vec::new();
                s.poll_output(&mut session_out);
                if !session_out.is_empty() {
                    sent += session_out.len() as u64;
                    nfc.write_all(&session_out)?;
                    nfc.flush()?;
                }
                if s.is_finished() {
                    self.completed.fetch_add(1, Ordering::AcqRel);
                    return Ok(());
                }
                if n == 0 {
                    let r = nfc.read(&mut chunk)?;
                    if r == 0 {
                        return Ok(());
                    }
                    inbuf.extend_from_slice(&chunk[..r]);
                    continue;
                }
                inbuf.drain(..n);
                let Some(req) = req else { continue };
                let faults = self
                    .opts
                    .faults
                    .lock()
                    .map(|f| f.clone())
                    .unwrap_or_default();
                if let Some(d) = faults.delay {
                    std::thread::sleep(d);
                }
                let mut out = Vec::new();
                let fast = faults.drop_after_bytes.is_none()
                    && faults.corrupt_frame.is_none()
                    && !faults.reverse_fragments;
                let is_read = matches!(req, Request::Read(_));
                let mut vectored: Option<(Vec<u8>, ReplyData)> = None;
                self.answer(
                    &mut s,
                    &mut out,
                    req,
                    &grant,
                    &mut disk,
                    &mut rbuf,
                    fast.then_some(&mut vectored),
                );
                if let Some((heads, data)) = vectored {
                    // Head, data, head, data...: straight from the read
                    // buffer or the cached block.
                    let data = match &data {
                        ReplyData::Buffer(len) => &rbuf[..*len],
                        ReplyData::Cached(block, start, len) => &block[*start..*start + *len],
                    };
                    write_vectored_all(&mut nfc, &heads, data, s.fragment_len())?;
                    sent += (heads.len() + data.len()) as u64;
                    continue;
                }
                if faults.reverse_fragments && is_read {
                    out = reversed_frames(&out);
                }
                if let Some(k) = faults.corrupt_frame {
                    frames += 1;
                    if frames == k && out.len() >= 4 {
                        out[0] ^= 0xff;
                    }
                }
                if let Some(limit) = faults.drop_after_bytes {
                    if sent + out.len() as u64 >= limit {
                        let cut = limit.saturating_sub(sent) as usize;
                        nfc.write_all(&out[..cut.min(out.len())])?;
                        return Ok(());
                    }
                }
                sent += out.len() as u64;
                nfc.write_all(&out)?;
                nfc.flush()?;
            }
        })();
        self.memory.fetch_sub(reserved, Ordering::AcqRel);
        if let Some(d) = disk.take() {
            let _ = d.close();
        }
        result
    }

    /// Answers one request.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        s: &mut ServerSession,
        out: &mut Vec<u8>,
        req: Request,
        grant: &NfcGrant,
        disk: &mut Option<LocalDisk>,
        rbuf: &mut Vec<u8>,
        vectored: Option<&mut Option<(Vec<u8>, ReplyData)>>,
    ) {
        let err = |s: &mut ServerSession, out: &mut Vec<u8>, op, code, text: String| {
            s.reply_error(out, op, code, &text)
        };
        let no_handle = |s: &mut ServerSession, out: &mut Vec<u8>, op| {
            s.reply_error(out, op, codes::INVALID_HANDLE, "no such handle")
        };
        match req {
            Request::OpenFile { op, open } => {
                if disk.is_some() {
                    err(
                        s,
                        out,
                        op,
                        codes::INVALID_ARG,
                        "one disk per session".into(),
                    );
                    return;
                }
                let path = match self.check_path(&open.path, grant) {
                    Ok(p) => p,
                    Err(e) => return err(s, out, op, codes::INVALID_ARG, e),
                };
                if !open.read_only && grant.read_only {
                    return err(
                        s,
                        out,
                        op,
                        codes::FILE_READ_ONLY,
                        "the ticket allows reading only".into(),
                    );
                }
                match LocalDisk::open(
                    &path,
                    &OpenOptions {
                        writable: !open.read_only,
                        ..OpenOptions::default()
                    },
                ) {
                    Ok(d) => {
                        let g = d
                            .descriptor()
                            .geometry()
                            .map(|g| (g.cylinders, g.heads, g.sectors))
                            .unwrap_or_default();
                        s.reply_opened(
                            out,
                            op,
                            Opened {
                                handle: HANDLE,
                                file_type: nfc_proto::aio::FILE_TYPE_DISK,
                                flags: if open.read_only {
                                    nfc_proto::aio::FLAGS_READ_ONLY
                                } else {
                                    nfc_proto::aio::FLAGS_READ_WRITE
                                },
                                capacity: d.capacity(),
                                sector_size: 512,
                                geometry: g,
                            },
                        );
                        *disk = Some(d);
                    }
                    Err(e) => err(s, out, op, codes::FAIL, e.to_string()),
                }
            }
            Request::CloseFile { op, handle } => match disk.take().filter(|_| handle == HANDLE) {
                Some(d) => match d.close() {
                    Ok(()) => s.reply_file_closed(out, op, handle),
                    Err(e) => err(s, out, op, codes::FAIL, e.to_string()),
                },
                None => no_handle(s, out, op),
            },
            Request::Read(r) => {
                let (op, offset, len) = (r.op, r.offset, r.len);
                let Some(d) = disk.as_ref().filter(|_| r.handle == HANDLE) else {
                    return no_handle(s, out, op);
                };
                let used = self.memory.load(Ordering::Acquire);
                if used + u64::from(len) > self.opts.memory_limit {
                    return err(
                        s,
                        out,
                        op,
                        codes::OUT_OF_MEMORY,
                        format!(
                            "NFC memory limit of {} bytes reached",
                            self.opts.memory_limit
                        ),
                    );
                }
                self.memory.fetch_add(u64::from(len), Ordering::AcqRel);
                let index = offset / CACHE_BLOCK;
                let in_one_block = len > 0
                    && offset
                        .checked_add(u64::from(len) - 1)
                        .is_some_and(|last| last / CACHE_BLOCK == index)
                    && offset + u64::from(len) <= d.capacity();
                let plain = r.compression == nfc_proto::aio::Compression::None;
                let cacheable = vectored.is_some() && self.cache.max > 0 && plain && in_one_block;
                if cacheable {
                    // Read the generation before the data: a change made
                    // while the block is read leaves it stale, not wrong.
                    let generation = self.shared.data_generation();
                    let start = index * CACHE_BLOCK;
                    let block = self.cache.get(d.links()[0].path(), index, generation, || {
                        let mut b = vec![0u8; (d.capacity() - start).min(CACHE_BLOCK) as usize];
                        d.read_at(start, &mut b).map(|()| b)
                    });
                    match block {
                        Ok(b) => {
                            if let Some(v) = vectored {
                                *v = Some((
                                    s.read_reply_heads(&r),
                                    ReplyData::Cached(b, (offset - start) as usize, len as usize),
                                ));
                            }
                        }
                        Err(e) => err(s, out, op, codes::FAIL, e.to_string()),
                    }
                    self.memory.fetch_sub(u64::from(len), Ordering::AcqRel);
                    return;
                }
                if rbuf.len() < len as usize {
                    rbuf.resize(len as usize, 0);
                }
                let buf = &mut rbuf[..len as usize];
                match d.read_at(offset, buf) {
                    Ok(()) => match vectored {
                        Some(v) if plain => {
                            *v = Some((s.read_reply_heads(&r), ReplyData::Buffer(len as usize)))
                        }
                        _ => {
                            if let Err(e) = s.reply_read(out, &r, buf) {
                                err(s, out, op, codes::FAIL, e.to_string());
                            }
                        }
                    },
                    Err(vmdk_file::Error::OutOfRange { .. }) => err(
                        s,
                        out,
                        op,
                        codes::OUT_OF_RANGE,
                        "read past the end of the disk".into(),
                    ),
                    Err(e) => err(s, out, op, codes::FAIL, e.to_string()),
                }
                self.memory.fetch_sub(u64::from(len), Ordering::AcqRel);
            }
            Request::Write {
                op,
                handle,
                offset,
                data,
            } => {
                let Some(d) = disk.as_ref().filter(|_| handle == HANDLE) else {
                    return no_handle(s, out, op);
                };
                if self.memory.load(Ordering::Acquire) > self.opts.memory_limit {
                    return err(
                        s,
                        out,
                        op,
                        codes::OUT_OF_MEMORY,
                        format!(
                            "NFC memory limit of {} bytes reached",
                            self.opts.memory_limit
                        ),
                    );
                }
                let written = d.write_at(offset, &data);
                // Whatever happened, cached blocks may be out of date.
                self.shared.disks_changed();
                // ESXi tracks every write to a disk, whoever makes it.
                if let (Ok(()), Some(top), Some(key)) =
                    (&written, d.links().first(), grant.disk_key)
                {
                    self.shared
                        .record_change(&grant.vm, key, top.path(), offset, data.len());
                }
                match written {
                    Ok(()) => s.reply_written(out, op, data.len() as u32),
                    Err(vmdk_file::Error::OutOfRange { .. }) => err(
                        s,
                        out,
                        op,
                        codes::OUT_OF_RANGE,
                        "write past the end of the disk".into(),
                    ),
                    Err(vmdk_file::Error::ReadOnly { .. }) => err(
                        s,
                        out,
                        op,
                        codes::FILE_READ_ONLY,
                        "the disk is open read-only".into(),
                    ),
                    Err(e) => err(s, out, op, codes::FAIL, e.to_string()),
                }
            }
            Request::DdbGet { op, handle, key } => match disk.as_ref().filter(|_| handle == HANDLE)
            {
                // The wire names keys without the descriptor's prefix.
                Some(d) => s.reply_ddb(out, op, d.descriptor().ddb_get(&format!("ddb.{key}"))),
                None => no_handle(s, out, op),
            },
            Request::QueryAllocated { op, query } => {
                let Some(d) = disk.as_ref().filter(|_| query.handle == HANDLE) else {
                    return no_handle(s, out, op);
                };
                match allocation_bitmap(d, &query) {
                    Ok(bitmap) => s.reply_allocated(out, op, &query, &bitmap),
                    Err(text) => err(s, out, op, codes::INVALID_ARG, text),
                }
            }
        }
    }

    /// The requested path must name a file the ticket covers, inside its
    /// datastore.
    fn check_path(&self, requested: &str, grant: &NfcGrant) -> Result<PathBuf, String> {
        let p = self.shared.resolve(requested).map_err(|(_, m)| m)?;
        let real = p.canonicalize().map_err(|e| format!("{requested}: {e}"))?;
        let granted = grant
            .paths
            .iter()
            .find(|g| g.canonicalize().is_ok_and(|g| g == real))
            .ok_or_else(|| format!("{requested} is not a file the ticket was issued for"))?;
        let inside = self.shared.inv.datastores.iter().any(|ds| {
            ds.path
                .canonicalize()
                .is_ok_and(|root| real.starts_with(root))
        });
        if !inside {
            return Err(format!("{requested} leads out of its datastore"));
        }
        Ok(granted.clone())
    }
}

/// QueryAllocatedBlocks: one bit per chunk, set when any stored data of
/// the chain falls in it. The start and the chunk size must be whole
/// multiples (of the chunk size, and of 512), as on a host.
fn allocation_bitmap(d: &LocalDisk, q: &nfc_proto::aio::QueryAllocated) -> Result<Vec<u8>, String> {
    let chunk = q.chunk_size;
    if nfc_proto::aio::bitmap_len(q.chunks) > nfc_proto::aio::MAX_BITMAP as u64 {
        return Err("too many chunks in one query".into());
    }
    if chunk == 0 || !chunk.is_multiple_of(512) || !q.start.is_multiple_of(chunk) {
        return Err("start and chunk size must be multiples of the chunk size".into());
    }
    let end = q
        .chunks
        .checked_mul(chunk)
        .and_then(|l| l.checked_add(q.start))
        .filter(|&e| e <= d.capacity().next_multiple_of(chunk))
        .ok_or_else(|| "the range is past the end of the disk".to_string())?;
    let mut bitmap = vec![0u8; nfc_proto::aio::bitmap_len(q.chunks) as usize];
    let map = d.map().map_err(|e| e.to_string())?;
    for e in map
        .iter()
        .filter(|e| e.kind == vmdk_file::local::AllocKind::Data)
    {
        let (s, t) = (e.start.max(q.start), (e.start + e.length).min(end));
        if s >= t {
            continue;
        }
        for i in (s - q.start) / chunk..=(t - 1 - q.start) / chunk {
            bitmap[(i / 8) as usize] |= 1 << (i % 8);
        }
    }
    Ok(bitmap)
}

/// The frames of `out` in reverse order.
fn reversed_frames(out: &[u8]) -> Vec<u8> {
    let mut list = Vec::new();
    let mut p = 0;
    while let Ok(nfc_proto::aio::Decoded::Frame { consumed, .. }) =
        nfc_proto::aio::decode_reply(&out[p..], |_| true)
    {
        list.push(&out[p..p + consumed]);
        p += consumed;
    }
    if p != out.len() {
        return out.to_vec();
    }
    list.into_iter().rev().flatten().copied().collect()
}

/// Writes 60-byte heads interleaved with data fragments of `frag` bytes.
fn write_vectored_all(
    w: &mut impl Write,
    heads: &[u8],
    data: &[u8],
    frag: usize,
) -> std::io::Result<()> {
    use std::io::IoSlice;
    let head_len = nfc_proto::aio::HEADER_LEN + nfc_proto::aio::IO_LEN;
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * heads.len() / head_len);
    for (i, h) in heads.chunks(head_len).enumerate() {
        slices.push(IoSlice::new(h));
        let start = i * frag;
        slices.push(IoSlice::new(&data[start..(start + frag).min(data.len())]));
    }
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    w.flush()
}

fn read_line(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<String> {
    loop {
        match authd::take_line(buf) {
            Ok(Some((line, n))) => {
                buf.drain(..n);
                return Ok(line);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            }
        }
        let mut b = [0u8; 512];
        let n = r.read(&mut b)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&b[..n]);
    }
}
