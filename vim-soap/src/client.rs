//! A small blocking HTTPS client for vSphere's `/sdk` endpoint.
//!
//! The server certificate is pinned by thumbprint (SHA-1 or SHA-256, the
//! colon-hex form vSphere shows): a mismatch fails the TLS handshake, so
//! no credential ever reaches an impostor. There is deliberately no way
//! to skip the check.
//!
//! ```no_run
//! use vim_soap::client::{Client, ClientConfig, Thumbprint};
//! let cfg = ClientConfig::new("vc.example.com:443", Thumbprint::parse("AB:CD:…")?);
//! let client = Client::connect(cfg)?;
//! let session = client.login("administrator@vsphere.local", &"secret".into())?;
//! # Ok::<(), vim_soap::Error>(())
//! ```

use std::io::{BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig as TlsConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
    StreamOwned,
};
use sha1::Digest as _;

use crate::codec::{self, MoRef, Request, ServiceContent, UserSession};
use crate::http;
use crate::xml::Element;

/// The session's cookie.
const SESSION_COOKIE: &str = "vmware_soap_session";
use crate::{Error, Result, Secret};

/// A certificate thumbprint.
#[derive(Clone, PartialEq, Eq)]
pub enum Thumbprint {
    /// SHA-1 (what VDDK's `thumbPrint` holds).
    Sha1([u8; 20]),
    /// SHA-256.
    Sha256([u8; 32]),
}

impl std::fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

fn colon_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl std::fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Thumbprint::Sha1(b) => f.write_str(&colon_hex(b)),
            Thumbprint::Sha256(b) => f.write_str(&colon_hex(b)),
        }
    }
}

impl Thumbprint {
    /// Parses `AA:BB:…` (20 or 32 bytes, any case; colons optional).
    pub fn parse(s: &str) -> Result<Self> {
        let hex: String = s
            .chars()
            .filter(|c| *c != ':' && !c.is_whitespace())
            .collect();
        let bad = || Error::BadThumbprint(s.to_string());
        if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
            .collect();
        match bytes.len() {
            20 => Ok(Thumbprint::Sha1(bytes.try_into().map_err(|_| bad())?)),
            32 => Ok(Thumbprint::Sha256(bytes.try_into().map_err(|_| bad())?)),
            _ => Err(bad()),
        }
    }

    /// The SHA-1 thumbprint of a DER certificate.
    pub fn sha1_of(der: &[u8]) -> Self {
        Thumbprint::Sha1(sha1::Sha1::digest(der).into())
    }

    /// The SHA-256 thumbprint of a DER certificate.
    pub fn sha256_of(der: &[u8]) -> Self {
        Thumbprint::Sha256(sha2::Sha256::digest(der).into())
    }

    /// Whether `der` has this thumbprint.
    pub fn matches(&self, der: &[u8]) -> bool {
        match self {
            Thumbprint::Sha1(_) => &Self::sha1_of(der) == self,
            Thumbprint::Sha256(_) => &Self::sha256_of(der) == self,
        }
    }
}

/// Verifies the server by thumbprint, and its handshake signature with
/// the pinned certificate's key.
#[derive(Debug)]
pub struct PinnedVerifier {
    pin: Thumbprint,
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Mutex<Option<String>>,
}

impl PinnedVerifier {
    /// Pins `pin`.
    pub fn new(pin: Thumbprint) -> Self {
        Self {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            seen: Mutex::new(None),
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if self.pin.matches(end_entity) {
            Ok(ServerCertVerified::assertion())
        } else {
            let found = match self.pin {
                Thumbprint::Sha1(_) => Thumbprint::sha1_of(end_entity),
                Thumbprint::Sha256(_) => Thumbprint::sha256_of(end_entity),
            };
            if let Ok(mut s) = self.seen.lock() {
                *s = Some(found.to_string());
            }
            Err(rustls::Error::General(
                "certificate thumbprint mismatch".into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client configuration that trusts exactly the pinned certificate.
pub fn pinned_tls_config(pin: &Thumbprint) -> (Arc<TlsConfig>, Arc<PinnedVerifier>) {
    let verifier = Arc::new(PinnedVerifier::new(pin.clone()));
    let cfg = TlsConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    (Arc::new(cfg), verifier)
}

/// Connects TCP with a timeout, then TLS, verifying the pin; the
/// handshake completes (or fails) before this returns.
pub fn connect_tls(
    server: &str,
    pin: &Thumbprint,
    connect_timeout: Duration,
    io_timeout: Option<Duration>,
) -> Result<StreamOwned<ClientConnection, TcpStream>> {
    let io = |context: String| move |source| Error::Io { context, source };
    let addr = server
        .to_socket_addrs()
        .map_err(io(format!("resolving {server}")))?
        .next()
        .ok_or_else(|| Error::Io {
            context: format!("resolving {server}"),
            source: std::io::Error::other("no address"),
        })?;
    let tcp = TcpStream::connect_timeout(&addr, connect_timeout)
        .map_err(io(format!("connecting to {server}")))?;
    tcp.set_read_timeout(io_timeout)
        .map_err(io("setting timeouts".into()))?;
    tcp.set_write_timeout(io_timeout)
        .map_err(io("setting timeouts".into()))?;
    let _ = tcp.set_nodelay(true);
    let host = server
        .rsplit_once(':')
        .map_or(server, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| Error::Malformed(format!("bad server name {host}")))?;
    let (cfg, verifier) = pinned_tls_config(pin);
    let conn = ClientConnection::new(cfg, name).map_err(|e| Error::Io {
        context: "TLS setup".into(),
        source: std::io::Error::other(e),
    })?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            if let Some(found) = verifier.seen.lock().ok().and_then(|s| s.clone()) {
                return Err(Error::ThumbprintMismatch {
                    expected: pin.to_string(),
                    found,
                });
            }
            return Err(Error::Io {
                context: format!("TLS handshake with {server}"),
                source: e,
            });
        }
    }
    Ok(tls)
}

/// `host:port` for connecting: an IPv6 literal is bracketed
/// (`fd00::5` → `[fd00::5]:443`), a host that already carries a port
/// (`esx1:8443`, `[::1]:8443`) is kept, port 0 means 443.
pub fn server_address(host: &str, port: u16) -> String {
    let port = if port == 0 { 443 } else { port };
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((_, "")) => format!("{host}:{port}"),
            _ => host.to_string(),
        };
    }
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{host}]:{port}");
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => host.to_string(),
        _ => format!("{host}:{port}"),
    }
}

/// How to reach a server.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port`.
    pub server: String,
    /// The pinned certificate thumbprint.
    pub thumbprint: Thumbprint,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Read/write timeout of each request.
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// Defaults: 10 s to connect, 120 s per request.
    pub fn new(server: impl Into<String>, thumbprint: Thumbprint) -> Self {
        Self {
            server: server.into(),
            thumbprint,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
        }
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A connection to `/sdk`, with its session cookie. Safe to share
/// between threads (requests are serialised on one connection).
pub struct Client {
    cfg: ClientConfig,
    conn: Mutex<Option<Tls>>,
    /// Every cookie the server set, by name (the session's is
    /// `vmware_soap_session`); all are sent back.
    cookies: Mutex<Vec<(String, Secret)>>,
    /// The `urn:vim25` version negotiated at connect.
    version: &'static str,
    content: ServiceContent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.cfg.server)
            .field("thumbprint", &self.cfg.thumbprint)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects (verifying the pinned thumbprint) and fetches the service
    /// content. No credential has been sent when this returns.
    pub fn connect(cfg: ClientConfig) -> Result<Self> {
        let conn = connect_tls(
            &cfg.server,
            &cfg.thumbprint,
            cfg.connect_timeout,
            Some(cfg.request_timeout),
        )?;
        let mut c = Self {
            cfg,
            conn: Mutex::new(Some(conn)),
            cookies: Mutex::new(Vec::new()),
            version: codec::API_VERSION,
            content: ServiceContent {
                root_folder: MoRef::new("Folder", ""),
                property_collector: MoRef::new("PropertyCollector", ""),
                session_manager: MoRef::new("SessionManager", ""),
                search_index: MoRef::new("SearchIndex", ""),
                authorization_manager: MoRef::new("AuthorizationManager", ""),
                about: codec::About {
                    api_type: String::new(),
                    api_version: String::new(),
                    full_name: String::new(),
                },
            },
        };
        // The API version: the newest the server lists that we speak,
        // else our default (as pyVmomi does when the list is missing).
        if let Ok(doc) = c.get_file("/sdk/vimServiceVersions.xml", None) {
            if let Some(v) = codec::negotiate_version(&doc) {
                c.version = v;
            }
        }
        let resp = c.call(&codec::retrieve_service_content())?;
        c.content = codec::parse_service_content(&resp)?;
        Ok(c)
    }

    /// The service content.
    pub fn content(&self) -> &ServiceContent {
        &self.content
    }

    /// True when talking to vCenter (not a lone ESXi host).
    pub fn is_vcenter(&self) -> bool {
        self.content.about.api_type == "VirtualCenter"
    }

    /// The session cookie, once logged in.
    pub fn cookie(&self) -> Option<Secret> {
        let jar = self.cookies.lock().unwrap_or_else(|p| p.into_inner());
        jar.iter()
            .find(|(n, _)| n == SESSION_COOKIE)
            .map(|(_, v)| v.clone())
    }

    /// Uses an existing session cookie (VDDK's `SESSIONID` credentials).
    pub fn set_cookie(&self, cookie: Secret) {
        self.keep_cookie(SESSION_COOKIE, cookie);
    }

    fn keep_cookie(&self, name: &str, value: Secret) {
        let mut jar = self.cookies.lock().unwrap_or_else(|p| p.into_inner());
        jar.retain(|(n, _)| n != name);
        jar.push((name.to_string(), value));
    }

    /// The server address.
    pub fn server(&self) -> &str {
        &self.cfg.server
    }

    /// The `urn:vim25` API version spoken with this server (negotiated
    /// from its `/sdk/vimServiceVersions.xml`).
    pub fn api_version(&self) -> &'static str {
        self.version
    }

    /// The pinned thumbprint.
    pub fn thumbprint(&self) -> &Thumbprint {
        &self.cfg.thumbprint
    }

    /// Sends a request; returns the `…Response` element or the fault.
    pub fn call(&self, req: &Request) -> Result<Element> {
        let head = format!(
            "POST /sdk HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=utf-8\r\nSOAPAction: \"{}\"\r\nContent-Length: {}\r\n",
            self.cfg.server,
            req.soap_action
                .strip_suffix(codec::API_VERSION)
                .map_or_else(|| req.soap_action.clone(), |ns| format!("{ns}{}", self.version)),
            req.body.len()
        );
        let (status, body) = self.roundtrip(
            &head,
            req.body.as_bytes(),
            &format!("sending {}", req.method),
            codec::is_idempotent(req.method),
        )?;
        match status {
            200 | 500 => codec::parse_response(&body),
            s => Err(Error::Http {
                status: s,
                reason: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            }),
        }
    }

    /// `GET` of a datastore file through vSphere's HTTP file access
    /// (`/folder/PATH?dcPath=DC&dsName=DS`, see [`codec::datastore_file_url`]),
    /// optionally only the bytes `range` (`start..end`).
    pub fn get_file(&self, url: &str, range: Option<std::ops::Range<u64>>) -> Result<Vec<u8>> {
        let range = match range {
            Some(r) if r.end > r.start => format!("Range: bytes={}-{}\r\n", r.start, r.end - 1),
            _ => String::new(),
        };
        let head = format!(
            "GET {url} HTTP/1.1\r\nHost: {}\r\n{range}Content-Length: 0\r\n",
            self.cfg.server
        );
        match self.roundtrip(&head, &[], "reading a datastore file", true)? {
            (200 | 206, body) => Ok(body),
            (status, body) => Err(Error::Http {
                status,
                reason: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            }),
        }
    }

    /// `PUT` of a whole datastore file through vSphere's HTTP file
    /// access (replaces it).
    pub fn put_file(&self, url: &str, bytes: &[u8]) -> Result<()> {
        let head = format!(
            "PUT {url} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n",
            self.cfg.server,
            bytes.len()
        );
        match self.roundtrip(&head, bytes, "writing a datastore file", true)? {
            (200 | 201 | 204, _) => Ok(()),
            (status, body) => Err(Error::Http {
                status,
                reason: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            }),
        }
    }

    /// One request on the kept-alive connection (`head` without the
    /// cookies and the blank line). When the kept-alive connection turns
    /// out dead, an `idempotent` request is sent again on a fresh one;
    /// any other may have reached the server, so its error is returned
    /// rather than risk doing it twice (a second `CreateSnapshot_Task`, a
    /// second `Login`, a ticket spent).
    fn roundtrip(
        &self,
        head: &str,
        body: &[u8],
        context: &str,
        idempotent: bool,
    ) -> Result<(u16, Vec<u8>)> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(connect_tls(
                    &self.cfg.server,
                    &self.cfg.thumbprint,
                    self.cfg.connect_timeout,
                    Some(self.cfg.request_timeout),
                )?);
            }
            let tls = guard.as_mut().expect("connected above");
            match self.exchange(tls, head, body, context) {
                Ok(resp) => {
                    for (name, value) in resp.cookies {
                        self.keep_cookie(&name, Secret::new(value));
                    }
                    if resp.close {
                        *guard = None;
                    }
                    return Ok((resp.status, resp.body));
                }
                Err(Error::Io { .. }) if attempt == 0 && idempotent => {
                    *guard = None;
                    continue;
                }
                Err(e) => {
                    *guard = None;
                    return Err(e);
                }
            }
        }
        Err(Error::Malformed("unreachable retry loop".into()))
    }

    fn exchange(
        &self,
        tls: &mut Tls,
        head: &str,
        body: &[u8],
        context: &str,
    ) -> Result<http::Response> {
        let cookie = {
            let jar = self.cookies.lock().unwrap_or_else(|p| p.into_inner());
            let pairs: Vec<String> = jar
                .iter()
                .map(|(n, v)| {
                    if n == SESSION_COOKIE {
                        format!("{n}=\"{}\"", v.expose())
                    } else {
                        format!("{n}={}", v.expose())
                    }
                })
                .collect();
            if pairs.is_empty() {
                String::new()
            } else {
                format!("Cookie: {}\r\n", pairs.join("; "))
            }
        };
        let head = format!("{head}{cookie}Connection: keep-alive\r\n\r\n");
        let io = |source| Error::Io {
            context: context.to_string(),
            source,
        };
        tls.write_all(head.as_bytes()).map_err(io)?;
        tls.write_all(body).map_err(io)?;
        tls.flush().map_err(io)?;
        let mut r = BufReader::new(tls);
        http::read_response(&mut r)
    }

    /// `Login`; the session cookie is kept for later calls.
    pub fn login(&self, user: &str, password: &Secret) -> Result<UserSession> {
        let resp = self.call(&codec::login(&self.content.session_manager, user, password))?;
        codec::parse_user_session(&resp)
    }

    /// `Logout`.
    pub fn logout(&self) -> Result<()> {
        self.call(&codec::logout(&self.content.session_manager))
            .map(|_| ())
    }

    /// Polls a task until it ends; returns its info (error state as
    /// [`Error::TaskFailed`]).
    pub fn wait_task(&self, task: &MoRef, timeout: Duration) -> Result<codec::TaskInfo> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(5);
        loop {
            let resp = self.call(&codec::retrieve_properties_ex(
                &self.content.property_collector,
                &[codec::PropertyRequest {
                    obj: task.clone(),
                    paths: vec!["info".into()],
                }],
                None,
            ))?;
            let r = codec::parse_retrieve_result(&resp)?;
            let val = r
                .objects
                .first()
                .and_then(|o| o.prop("info"))
                .ok_or_else(|| Error::Malformed("task without info".into()))?;
            let info = codec::task_info(val)?;
            match info.state {
                codec::TaskState::Success => return Ok(info),
                codec::TaskState::Error => {
                    return Err(Error::TaskFailed {
                        task: task.value.clone(),
                        fault: info.error.unwrap_or(codec::Fault {
                            kind: codec::FaultKind::Other("Unknown".into()),
                            message: String::new(),
                        }),
                    })
                }
                _ => {}
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout(format!("task {}", task.value)));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    /// Retrieves properties of objects, following continuation tokens.
    pub fn properties(
        &self,
        objects: &[codec::PropertyRequest],
    ) -> Result<Vec<codec::ObjectContent>> {
        let resp = self.call(&codec::retrieve_properties_ex(
            &self.content.property_collector,
            objects,
            None,
        ))?;
        let mut r = codec::parse_retrieve_result(&resp)?;
        let mut out = std::mem::take(&mut r.objects);
        let mut token = r.token;
        let mut rounds = 0;
        while let Some(t) = token {
            rounds += 1;
            if rounds > 100_000 {
                return Err(Error::Malformed("endless continuation tokens".into()));
            }
            let resp = self.call(&codec::continue_retrieve_properties_ex(
                &self.content.property_collector,
                &t,
            ))?;
            let mut r = codec::parse_retrieve_result(&resp)?;
            out.append(&mut r.objects);
            token = r.token;
        }
        Ok(out)
    }

    /// One property of one object (`None` when unset).
    pub fn property(&self, obj: &MoRef, path: &str) -> Result<Option<Element>> {
        let objs = self.properties(&[codec::PropertyRequest {
            obj: obj.clone(),
            paths: vec![path.into()],
        }])?;
        Ok(objs
            .into_iter()
            .next()
            .and_then(|o| o.props.into_iter().find(|(p, _)| p == path).map(|(_, v)| v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints() {
        let t = Thumbprint::parse("ab:CD:ef:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01")
            .unwrap();
        assert_eq!(
            t.to_string(),
            "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01"
        );
        assert!(matches!(
            Thumbprint::parse("00:".repeat(31).trim_end_matches(':')),
            Err(Error::BadThumbprint(_))
        ));
        assert!(matches!(
            Thumbprint::parse(&"11:".repeat(32)),
            Ok(Thumbprint::Sha256(_))
        ));
        assert!(Thumbprint::parse("zz:00").is_err());
        let der = b"not really a certificate";
        assert!(Thumbprint::sha1_of(der).matches(der));
        assert!(!Thumbprint::sha1_of(der).matches(b"other"));
        assert!(Thumbprint::sha256_of(der).matches(der));
    }

    #[test]
    fn server_addresses() {
        for (host, port, want) in [
            ("esx1.example.com", 443, "esx1.example.com:443"),
            ("esx1.example.com", 0, "esx1.example.com:443"),
            ("esx1:8443", 443, "esx1:8443"),
            ("10.0.0.5", 902, "10.0.0.5:902"),
            ("::1", 443, "[::1]:443"),
            ("fd00::5", 0, "[fd00::5]:443"),
            ("[::1]", 8443, "[::1]:8443"),
            ("[::1]:8443", 443, "[::1]:8443"),
        ] {
            assert_eq!(server_address(host, port), want, "{host} {port}");
        }
    }

    #[test]
    fn responses() {
        use crate::http::read_response;
        let raw = b"HTTP/1.1 200 OK\r\nSet-Cookie: vmware_soap_session=\"abc\"; Path=/; HttpOnly\r\nContent-Length: 5\r\n\r\nhello";
        let r = read_response(&mut &raw[..]).unwrap();
        let c = r
            .cookies
            .iter()
            .find(|(n, _)| n == SESSION_COOKIE)
            .map(|(_, v)| v.as_str());
        assert_eq!(
            (r.status, c, r.body.as_slice()),
            (200, Some("abc"), &b"hello"[..])
        );
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(read_response(&mut &raw[..]).unwrap().body, b"abcde");
        assert!(read_response(
            &mut &b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n"[..]
        )
        .is_err());
        assert!(read_response(&mut &b"garbage"[..]).is_err());
        assert!(read_response(&mut &b""[..]).is_err());
    }
}
