//! STARTTLS with libnbd clients, certificates made by rcgen.

use std::path::Path;

use nbd_server::{tls_config_from_pem, ServerConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::support::*;

/// Writes `ca-cert.pem` into `dir`; returns the server's chain and key PEM.
fn make_pki(dir: &Path) -> (String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "nbd-server test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut leaf = CertificateParams::new(names).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), ca_cert.pem()).unwrap();
    (leaf_cert.pem() + &ca_cert.pem(), key.serialize_pem())
}

fn tls_server(required: bool) -> (Running, tempfile::TempDir, std::sync::Arc<MemExport>) {
    tls_server_on(None, required)
}

fn tls_server_on(
    listen: Option<nbd_server::Listen>,
    required: bool,
) -> (Running, tempfile::TempDir, std::sync::Arc<MemExport>) {
    let pki = tempfile::tempdir().unwrap();
    let (chain, key) = make_pki(pki.path());
    let tls = tls_config_from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
    let disk = MemExport::new(1 << 20, true);
    disk.write_at_pattern();
    let cfg = ServerConfig::new()
        .with_export("disk", disk.clone())
        .with_tls(tls, required);
    let srv = match listen {
        None => start(cfg, "disk"),
        Some(l) => start_on(l, cfg, "disk"),
    };
    (srv, pki, disk)
}

#[test]
fn pem_errors_are_typed() {
    assert!(matches!(
        tls_config_from_pem(b"", b""),
        Err(nbd_server::Error::NoCertificate)
    ));
    let pki = tempfile::tempdir().unwrap();
    let (chain, _) = make_pki(pki.path());
    let other = KeyPair::generate().unwrap().serialize_pem();
    assert!(tls_config_from_pem(chain.as_bytes(), other.as_bytes()).is_err());
}

#[test]
fn tls_required_with_libnbd() {
    need("nbdinfo");
    let (srv, pki, disk) = tls_server(true);
    assert!(
        srv.uri.starts_with("nbds+unix:///disk?socket="),
        "{}",
        srv.uri
    );
    let uri = format!("{}&tls-certificates={}", srv.uri, pki.path().display());
    let json = run("nbdinfo", &["--json", &uri]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["TLS"], true, "{json}");
    assert_eq!(v["exports"][0]["export-size"], 1 << 20, "{json}");
    // Plain text is refused by a TLS-required server.
    let plain = format!("nbd+unix:///disk?socket={}", srv.socket.display());
    assert!(!output("nbdinfo", &["--size", &plain]).status.success());
    // An untrusted CA is refused by the client: the certificate is checked.
    let other = tempfile::tempdir().unwrap();
    make_pki(other.path());
    let wrong = format!("{}&tls-certificates={}", srv.uri, other.path().display());
    // libnbd checks the chain only when it has a host name, i.e. over TCP.
    assert!(output("nbdinfo", &["--size", &wrong]).status.success());
    need("nbdsh");
    {
        let script = "
h.set_uri_allow_local_file(True)
h.connect_uri(URI)
assert h.get_tls_negotiated()
h.pwrite(b'\\x77' * 8192, 4096)
assert h.pread(8192, 4096) == b'\\x77' * 8192
h.flush()
";
        let script = script.replace("URI", &format!("{uri:?}"));
        run("nbdsh", &["-c", &script]);
        assert!(disk.contents()[4096..12288].iter().all(|&b| b == 0x77));
    }
    srv.stop().unwrap();
}

#[test]
fn tls_optional_serves_both() {
    need("nbdinfo");
    let (srv, pki, _disk) = tls_server(false);
    assert!(srv.uri.starts_with("nbd+unix://"), "{}", srv.uri);
    assert_eq!(run("nbdinfo", &["--size", &srv.uri]).trim(), "1048576");
    let tls_uri = format!(
        "nbds+unix:///disk?socket={}&tls-certificates={}",
        srv.socket.display(),
        pki.path().display()
    );
    let json = run("nbdinfo", &["--json", &tls_uri]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["TLS"], true, "{json}");
    srv.stop().unwrap();
}

#[test]
fn tls_over_tcp_verifies_the_certificate() {
    need("nbdinfo");
    let (srv, pki, _disk) = tls_server_on(Some(nbd_server::Listen::tcp_loopback(0)), true);
    assert!(srv.uri.starts_with("nbds://127.0.0.1:"), "{}", srv.uri);
    let uri = format!("{}?tls-certificates={}", srv.uri, pki.path().display());
    assert_eq!(run("nbdinfo", &["--size", &uri]).trim(), "1048576");
    let other = tempfile::tempdir().unwrap();
    make_pki(other.path());
    let wrong = format!("{}?tls-certificates={}", srv.uri, other.path().display());
    let res = output("nbdinfo", &["--size", &wrong]);
    assert!(
        !res.status.success(),
        "a certificate from another CA was accepted"
    );
    srv.stop().unwrap();
}
