//! The HTTPS side: TLS, HTTP/1.1 keep-alive, `POST /sdk`, and datastore
//! files at `/folder` (see `files`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use vim_soap::codec;

use crate::model::Shared;

const MAX_BODY: usize = 16 << 20;

pub(crate) fn tls_config(cert_der: &[u8], key_der: &[u8]) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert_der.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec())),
        )
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(cfg))
}

pub(crate) fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    cert_der: &[u8],
    key_der: &[u8],
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let cfg = tls_config(cert_der, key_der)?;
    std::thread::Builder::new()
        .name("sim-soap-accept".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                let cfg = Arc::clone(&cfg);
                let shared = Arc::clone(&shared);
                let _ = std::thread::Builder::new()
                    .name("sim-soap".into())
                    .spawn(move || {
                        let _ = serve(tcp, cfg, shared);
                    });
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn serve(tcp: TcpStream, cfg: Arc<ServerConfig>, shared: Arc<Shared>) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(300)))?;
    let _ = tcp.set_nodelay(true);
    let conn = ServerConnection::new(cfg).map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    loop {
        let req = {
            let mut r = BufReader::new(&mut tls);
            match read_request(&mut r)? {
                Some(x) => x,
                None => return Ok(()),
            }
        };
        if req.target.starts_with("/folder/") {
            let (status, headers, out) = shared.datastore_file(
                req.cookie.as_deref(),
                &req.method,
                &req.target,
                req.range.as_deref(),
                &req.body,
            );
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{headers}Connection: keep-alive\r\n\r\n",
                reason(status),
                out.len()
            );
            tls.write_all(head.as_bytes())?;
            tls.write_all(&out)?;
            tls.flush()?;
            continue;
        }
        if req.method == "GET"
            && req.target.split('?').next() == Some("/sdk/vimServiceVersions.xml")
        {
            // What SDKs ask first to choose their API version (pyVmomi's
            // SmartConnect, govmomi): the versions this host speaks.
            write_plain(&mut tls, 200, "text/xml", service_versions().as_bytes())?;
            continue;
        }
        if req.method != "POST" || req.target.split('?').next() != Some("/sdk") {
            write_plain(&mut tls, 404, "text/plain", b"not found")?;
            continue;
        }
        let (cookie, body) = (req.cookie, req.body);
        let (status, set_cookie, out) = match codec::parse_request(&body) {
            Ok((method, el)) => match shared.handle(cookie.as_deref(), &method, &el) {
                Ok(o) => (200, o.cookie, codec::response_envelope(&method, &o.body)),
                Err((kind, msg)) => (500, None, codec::fault_envelope(&kind, &msg)),
            },
            Err(e) => (
                500,
                None,
                codec::fault_envelope(
                    &vim_soap::FaultKind::Other("InvalidRequest".into()),
                    &e.to_string(),
                ),
            ),
        };
        let cookie_line = set_cookie
            .map(|c| {
                format!("Set-Cookie: vmware_soap_session=\"{c}\"; Path=/; HttpOnly; Secure\r\n")
            })
            .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n{cookie_line}Connection: keep-alive\r\n\r\n",
            reason(status),
            out.len()
        );
        tls.write_all(head.as_bytes())?;
        tls.write_all(out.as_bytes())?;
        tls.flush()?;
    }
}

/// A response with a fixed body.
fn write_plain(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
        reason(status),
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// `/sdk/vimServiceVersions.xml`: the `urn:vim25` versions served, newest
/// first, in the layout vCenter and ESXi publish.
fn service_versions() -> String {
    let prior: String = PRIOR_VERSIONS
        .iter()
        .map(|v| format!("      <version>{v}</version>\n"))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<namespaces version=\"1.0\">\n  <namespace>\n    <name>urn:vim25</name>\n    <version>{}</version>\n    <priorVersions>\n{prior}    </priorVersions>\n  </namespace>\n</namespaces>\n",
        codec::API_VERSION
    )
}

/// Older `urn:vim25` versions a client may speak to this simulator.
const PRIOR_VERSIONS: &[&str] = &[
    "8.0.0.0", "7.0.3.0", "7.0.2.0", "7.0.1.0", "7.0.0.0", "6.7.3", "6.7", "6.5",
];

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        416 => "Range Not Satisfiable",
        _ => "Internal Server Error",
    }
}

/// One HTTP request as the simulator reads it.
struct HttpRequest {
    method: String,
    target: String,
    cookie: Option<String>,
    range: Option<String>,
    body: Vec<u8>,
}

/// Reads one request. `None` at a clean end.
fn read_request(r: &mut impl BufRead) -> std::io::Result<Option<HttpRequest>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("bad request line"));
    };
    if !version.starts_with("HTTP/1.") || !matches!(method, "POST" | "GET" | "PUT") {
        return Err(bad("only GET, PUT and POST over HTTP/1.x"));
    }
    let (method, target) = (method.to_string(), target.to_string());
    let mut len = 0usize;
    let mut cookie = None;
    let mut range = None;
    let mut chunked = false;
    let mut total = 0;
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        total += n;
        if n == 0 || total > 64 << 10 {
            return Err(bad("headers too long or truncated"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    len = v.trim().parse().map_err(|_| bad("bad Content-Length"))?
                }
                "cookie" => {
                    for part in v.split(';') {
                        if let Some(c) = part.trim().strip_prefix("vmware_soap_session=") {
                            cookie = Some(c.trim_matches('"').to_string());
                        }
                    }
                }
                "range" => range = Some(v.trim().to_string()),
                "transfer-encoding" => {
                    chunked = v
                        .rsplit(',')
                        .next()
                        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
                }
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        // Go's HTTP client (govmomi) sends SOAP bodies chunked.
        vim_soap::http::read_chunked_body(r, &mut body).map_err(|e| bad(&e.to_string()))?;
        if body.len() > MAX_BODY {
            return Err(bad("request too large"));
        }
    } else {
        if len > MAX_BODY {
            return Err(bad("request too large"));
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Some(HttpRequest {
        method,
        target,
        cookie,
        range,
        body,
    }))
}
