//! Listening, accepting, one thread per connection, shutdown.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use nbd_proto::{BlockSize, ExportInfo, SessionConfig, TlsPolicy};

use crate::conn::{self, Setup, Sock};
use crate::BlockExport;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket at this path (created by `bind`, removed at shutdown).
    Unix(PathBuf),
    /// A TCP address; non-loopback addresses need
    /// [`ServerConfig::allow_non_loopback`].
    Tcp(SocketAddr),
}

impl Listen {
    /// TCP on `127.0.0.1:port` (0: any free port).
    pub fn tcp_loopback(port: u16) -> Self {
        Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

/// What the server serves, and how.
///
/// Public fields, or the `with_*` builder methods:
/// ```
/// # use std::sync::Arc;
/// # fn f(disk: Arc<dyn nbd_server::BlockExport>, tls: Arc<rustls::ServerConfig>) {
/// let config = nbd_server::ServerConfig::new()
///     .with_export("", disk) // the default export
///     .with_tls(tls, true); // STARTTLS required before anything else
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ServerConfig {
    /// The exports by name; `""` is the default export.
    pub exports: BTreeMap<String, Arc<dyn BlockExport>>,
    /// TLS offered through `NBD_OPT_STARTTLS` when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Refuse every option but `STARTTLS`/`ABORT` until TLS is started
    /// (needs `tls`; [`Server::bind`] fails otherwise).
    pub tls_required: bool,
    /// Allow binding TCP to a non-loopback address (default `false`).
    pub allow_non_loopback: bool,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("exports", &self.exports.keys().collect::<Vec<_>>())
            .field("tls", &self.tls.is_some())
            .field("tls_required", &self.tls_required)
            .field("allow_non_loopback", &self.allow_non_loopback)
            .finish()
    }
}

impl ServerConfig {
    /// No exports, no TLS, loopback only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the export `name`.
    pub fn with_export(mut self, name: &str, export: Arc<dyn BlockExport>) -> Self {
        self.exports.insert(name.to_owned(), export);
        self
    }

    /// Offers TLS; `required`: refuse plain-text negotiation.
    pub fn with_tls(mut self, tls: Arc<rustls::ServerConfig>, required: bool) -> Self {
        self.tls = Some(tls);
        self.tls_required = required;
        self
    }

    /// Allows a TCP address other than loopback.
    pub fn allow_non_loopback(mut self, allow: bool) -> Self {
        self.allow_non_loopback = allow;
        self
    }

    fn setup(&self) -> Setup {
        let mut infos = Vec::with_capacity(self.exports.len());
        let mut exports = Vec::with_capacity(self.exports.len());
        for (name, e) in &self.exports {
            let b = e.block_sizes();
            infos.push(ExportInfo {
                name: name.clone(),
                description: e.description(),
                size: e.size(),
                writable: e.writable(),
                multi_conn: e.multi_conn(),
                fast_zero: false,
                block_size: BlockSize {
                    minimum: b.minimum,
                    preferred: b.preferred,
                    maximum: b.maximum,
                },
            });
            exports.push(Arc::clone(e));
        }
        let tls = match (&self.tls, self.tls_required) {
            (None, _) => TlsPolicy::Disabled,
            (Some(_), false) => TlsPolicy::Optional,
            (Some(_), true) => TlsPolicy::Required,
        };
        Setup {
            session: SessionConfig {
                exports: infos,
                tls,
            },
            exports,
            tls: self.tls.clone(),
        }
    }
}

#[derive(Debug)]
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

#[derive(Clone, Debug)]
enum Local {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    local: Local,
    /// Live connections (a clone of each socket), to end them at shutdown.
    conns: Mutex<HashMap<u64, Sock>>,
}

/// Stops a running [`Server`]; cheap to clone and send to other threads.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Makes [`Server::serve`] return: no new connections; live ones end
    /// after their current request (their read side is shut down);
    /// writable exports are flushed. Idempotent.
    pub fn shutdown(&self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for sock in lock(&self.shared.conns).values() {
            let _ = sock.shutdown(Shutdown::Read);
        }
        // Wake the blocking accept.
        let _ = match &self.shared.local {
            Local::Unix(p) => UnixStream::connect(p).map(drop),
            Local::Tcp(a) => {
                let mut a = *a;
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        [127, 0, 0, 1].into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                TcpStream::connect(a).map(drop)
            }
        };
    }
}

/// A bound NBD server; [`serve`](Self::serve) runs it.
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    config: ServerConfig,
    shared: Arc<Shared>,
    /// Removes the Unix socket file when the server is dropped.
    _unlink: Option<Unlink>,
}

#[derive(Debug)]
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Server {
    /// Binds the socket. Fails with `InvalidInput` for a non-loopback TCP
    /// address without [`ServerConfig::allow_non_loopback`], or
    /// `tls_required` without `tls`.
    pub fn bind(listen: Listen, config: ServerConfig) -> io::Result<Server> {
        if config.tls_required && config.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "tls_required without a TLS configuration",
            ));
        }
        let (listener, local, unlink) = match listen {
            Listen::Unix(path) => {
                let l = UnixListener::bind(&path)?;
                (
                    Listener::Unix(l),
                    Local::Unix(path.clone()),
                    Some(Unlink(path)),
                )
            }
            Listen::Tcp(addr) => {
                if !addr.ip().is_loopback() && !config.allow_non_loopback {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "non-loopback address: set ServerConfig::allow_non_loopback",
                    ));
                }
                let l = TcpListener::bind(addr)?;
                let local = l.local_addr()?;
                (Listener::Tcp(l), Local::Tcp(local), None)
            }
        };
        Ok(Server {
            listener,
            config,
            shared: Arc::new(Shared {
                stop: AtomicBool::new(false),
                local,
                conns: Mutex::new(HashMap::new()),
            }),
            _unlink: unlink,
        })
    }

    /// The bound TCP address (with the real port), if TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.shared.local {
            Local::Tcp(a) => Some(*a),
            Local::Unix(_) => None,
        }
    }

    /// The Unix socket path, if Unix.
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.shared.local {
            Local::Unix(p) => Some(p),
            Local::Tcp(_) => None,
        }
    }

    /// The NBD URI of `export`: `nbd+unix:///NAME?socket=PATH` or
    /// `nbd://HOST:PORT/NAME` (IPv6 in brackets), `nbds…` when TLS is
    /// required. The name and path are percent-encoded.
    pub fn uri(&self, export: &str) -> String {
        let s = if self.config.tls_required { "s" } else { "" };
        match &self.shared.local {
            Local::Unix(p) => format!(
                "nbd{s}+unix:///{}?socket={}",
                encode(export, false),
                encode(&p.to_string_lossy(), true)
            ),
            Local::Tcp(a) => format!("nbd{s}://{a}/{}", encode(export, false)),
        }
    }

    /// A handle that stops [`serve`](Self::serve).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Accepts clients until shut down, each on its own thread; then waits
    /// for them, flushes writable exports and removes the Unix socket.
    pub fn serve(self) -> io::Result<()> {
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut next_id = 0u64;
        let result = loop {
            let accepted = match &self.listener {
                Listener::Unix(l) => l.accept().map(|(s, _)| Sock::Unix(s)),
                Listener::Tcp(l) => l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Sock::Tcp(s)
                }),
            };
            if self.shared.stop.load(Ordering::SeqCst) {
                break Ok(());
            }
            let sock = match accepted {
                Ok(s) => s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                // Out of descriptors (EMFILE, ENFILE): back off, keep serving.
                Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => {
                    tracing::warn!("nbd: accept: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
                Err(e) => break Err(e),
            };
            threads.retain(|t| !t.is_finished());
            let id = next_id;
            next_id += 1;
            {
                let mut conns = lock(&self.shared.conns);
                if self.shared.stop.load(Ordering::SeqCst) {
                    break Ok(());
                }
                if let Ok(c) = sock.try_clone() {
                    conns.insert(id, c);
                }
            }
            let setup = self.config.setup();
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name(format!("nbd-conn-{id}"))
                .spawn(move || {
                    if let Err(e) = conn::serve(sock, setup) {
                        tracing::debug!("nbd: connection {id} ended: {e}");
                    }
                    lock(&shared.conns).remove(&id);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    lock(&self.shared.conns).remove(&id);
                    tracing::warn!("nbd: cannot spawn a connection thread: {e}");
                }
            }
        };
        // Whether we stopped by request or error, end every connection.
        self.shutdown_handle().shutdown();
        for t in threads {
            let _ = t.join();
        }
        for e in self.config.exports.values() {
            if e.writable() {
                if let Err(err) = e.flush() {
                    tracing::warn!("nbd: flush at shutdown failed: {err}");
                }
            }
        }
        drop(self);
        result
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Percent-encodes all but RFC 3986 unreserved characters (and `/` when
/// `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_encoding() {
        assert_eq!(encode("a b/c", false), "a%20b%2Fc");
        assert_eq!(encode("/tmp/x y.sock", true), "/tmp/x%20y.sock");
    }

    #[test]
    fn non_loopback_needs_consent() {
        let err = Server::bind(
            Listen::Tcp("0.0.0.0:0".parse().unwrap()),
            ServerConfig::new(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let s = Server::bind(Listen::Tcp("[::1]:0".parse().unwrap()), ServerConfig::new());
        // IPv6 loopback may be unavailable in a container; when it binds,
        // the URI brackets the address.
        if let Ok(s) = s {
            assert!(s.uri("x").starts_with("nbd://[::1]:"), "{}", s.uri("x"));
        }
    }
}
