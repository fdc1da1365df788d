//! A sparse in-memory export, a running server, and peer helpers.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nbd_server::{BlockExport, Extent, Listen, Server, ServerConfig, ShutdownHandle};

/// Allocation granule of [`MemExport`].
pub const CHUNK: u64 = 64 << 10;

/// A sparse export of 64 KiB chunks; absent chunks are holes reading as zeroes.
#[derive(Debug)]
pub struct MemExport {
    pub size: u64,
    pub writable: bool,
    pub chunks: Mutex<BTreeMap<u64, Vec<u8>>>,
    pub flushes: AtomicUsize,
    pub fua_writes: AtomicUsize,
}

impl MemExport {
    pub fn new(size: u64, writable: bool) -> Arc<Self> {
        Arc::new(Self {
            size,
            writable,
            chunks: Mutex::new(BTreeMap::new()),
            flushes: AtomicUsize::new(0),
            fua_writes: AtomicUsize::new(0),
        })
    }

    /// The whole content, holes as zeroes.
    pub fn contents(&self) -> Vec<u8> {
        let mut v = vec![0; self.size as usize];
        self.read_at(0, &mut v).unwrap();
        v
    }

    /// Allocated chunk indexes.
    pub fn allocated(&self) -> Vec<u64> {
        self.chunks.lock().unwrap().keys().copied().collect()
    }

    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize, usize)> {
        // (chunk index, offset in chunk, length, offset in the request)
        let mut pos = offset;
        let end = offset + len;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let idx = pos / CHUNK;
            let within = (pos % CHUNK) as usize;
            let n = ((CHUNK - pos % CHUNK).min(end - pos)) as usize;
            let item = (idx, within, n, (pos - offset) as usize);
            pos += n as u64;
            Some(item)
        })
    }
}

impl BlockExport for MemExport {
    fn size(&self) -> u64 {
        self.size
    }
    fn writable(&self) -> bool {
        self.writable
    }
    fn multi_conn(&self) -> bool {
        true
    }
    fn description(&self) -> Option<String> {
        Some("in-memory test disk".into())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let chunks = self.chunks.lock().unwrap();
        for (idx, within, n, at) in Self::pieces(offset, buf.len() as u64) {
            let dst = &mut buf[at..at + n];
            match chunks.get(&idx) {
                Some(c) => dst.copy_from_slice(&c[within..within + n]),
                None => dst.fill(0),
            }
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        if !self.writable {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        let mut chunks = self.chunks.lock().unwrap();
        for (idx, within, n, at) in Self::pieces(offset, buf.len() as u64) {
            let c = chunks.entry(idx).or_insert_with(|| vec![0; CHUNK as usize]);
            c[within..within + n].copy_from_slice(&buf[at..at + n]);
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, length: u64, may_trim: bool, _fua: bool) -> io::Result<()> {
        let mut chunks = self.chunks.lock().unwrap();
        for (idx, within, n, _) in Self::pieces(offset, length) {
            if may_trim && n as u64 == CHUNK {
                chunks.remove(&idx);
            } else if let Some(c) = chunks.get_mut(&idx) {
                c[within..within + n].fill(0);
            } else if !may_trim {
                chunks.insert(idx, vec![0; CHUNK as usize]);
            }
        }
        Ok(())
    }
    fn trim(&self, offset: u64, length: u64, _fua: bool) -> io::Result<()> {
        let mut chunks = self.chunks.lock().unwrap();
        for (idx, _, n, _) in Self::pieces(offset, length) {
            if n as u64 == CHUNK {
                chunks.remove(&idx);
            }
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let chunks = self.chunks.lock().unwrap();
        let mut out: Vec<Extent> = Vec::new();
        for (idx, _, n, _) in Self::pieces(offset, length) {
            let hole = !chunks.contains_key(&idx);
            match out.last_mut() {
                Some(e) if e.hole == hole => e.length += n as u64,
                _ => out.push(Extent {
                    length: n as u64,
                    hole,
                    zero: hole,
                }),
            }
        }
        Ok(out)
    }
}

/// A server running on a thread, shut down when dropped.
pub struct Running {
    /// Holds the socket's directory.
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub uri: String,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Running {
    /// The URI of another export of the same server.
    pub fn uri_of(&self, export: &str) -> String {
        let s = if self.uri.starts_with("nbds") {
            "s"
        } else {
            ""
        };
        format!("nbd{s}+unix:///{export}?socket={}", self.socket.display())
    }

    /// Stops the server and returns what `serve` returned.
    pub fn stop(mut self) -> io::Result<()> {
        self.handle.shutdown();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `config` on a Unix socket in a fresh directory; the URI names `export`.
pub fn start(config: ServerConfig, export: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nbd.sock");
    run_server(dir, socket.clone(), Listen::Unix(socket), config, export)
}

/// Serves `config` on `listen` (e.g. TCP loopback).
pub fn start_on(listen: Listen, config: ServerConfig, export: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    run_server(dir, PathBuf::new(), listen, config, export)
}

fn run_server(
    dir: tempfile::TempDir,
    socket: PathBuf,
    listen: Listen,
    config: ServerConfig,
    export: &str,
) -> Running {
    let server = Server::bind(listen, config).unwrap();
    let uri = server.uri(export);
    let handle = server.shutdown_handle();
    let thread = std::thread::spawn(move || server.serve());
    Running {
        _dir: dir,
        socket,
        uri,
        handle,
        thread: Some(thread),
    }
}

/// Serves one export named `disk`.
pub fn start_one(export: Arc<MemExport>) -> Running {
    start(ServerConfig::new().with_export("disk", export), "disk")
}

/// Fails the test when `tool` cannot be run: the suite needs every peer
/// (`cargo xtask deps` installs them: libnbd-bin, python3-libnbd,
/// qemu-utils).
pub fn need(tool: &str) {
    if let Err(e) = Command::new(tool)
        .arg("--version")
        .env("PATH", path())
        .output()
    {
        panic!("`{tool}` is required by the test suite (cargo xtask deps installs it): {e}");
    }
}

/// PATH with /usr/bin first: nbdsh runs `python3 -m nbd`, and the
/// distribution's python3 is the one with libnbd's bindings.
pub fn path() -> String {
    format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default())
}

/// Runs a peer and asserts it succeeded; returns stdout.
pub fn run(tool: &str, args: &[&str]) -> String {
    let out = output(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a peer; returns its output whatever the status.
pub fn output(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .env("PATH", path())
        .env("LIBNBD_DEBUG", "0")
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"))
}

/// A deterministic pattern with holes: chunks 1, 4 and 5 are zero.
pub fn pattern(size: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4099) as u8 | 1).collect();
    for c in [1usize, 4, 5] {
        let s = c * CHUNK as usize;
        if s < size {
            let e = (s + CHUNK as usize).min(size);
            v[s..e].fill(0);
        }
    }
    v
}
