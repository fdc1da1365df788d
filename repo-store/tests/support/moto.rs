//! Starts moto's S3-compatible server on loopback for a test and stops it
//! on drop. Other crates' tests include this file with
//! `#[path = "../../repo-store/tests/support/moto.rs"] mod moto;`.
//!
//! The server comes from `cargo xtask deps` (the `moto` peer, a virtualenv
//! in `<workspace root>/target/peers/venv-moto`). When it is missing the
//! test fails, saying so: it is never skipped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use repo_s3::{S3Config, S3Store};

/// The access key tests use (moto accepts any).
pub const ACCESS_KEY_ID: &str = "testing-access-key";
/// The default secret tests use (moto accepts any).
pub const SECRET_ACCESS_KEY: &str = "testing-secret-key";

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    addr: SocketAddr,
    child: Child,
}

/// `<workspace root>/target/peers/venv-moto/bin/moto_server`: every crate
/// of the workspace sits one level below the root.
pub fn moto_server_path() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().unwrap_or(&manifest);
    root.join("target/peers/venv-moto/bin/moto_server")
}

/// Sends one plain HTTP/1.1 request and returns the status code.
fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))
}

impl Moto {
    /// Starts a server on a free loopback port and waits until it answers.
    pub fn start() -> Moto {
        let bin = moto_server_path();
        assert!(
            bin.exists(),
            "{} is missing: run `cargo xtask deps` (it installs the moto peer, \
             an S3-compatible server these tests need)",
            bin.display()
        );
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
            l.local_addr().expect("local address").port()
        };
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut moto = Moto {
            endpoint: format!("http://{addr}"),
            addr,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited early ({status}); is port {port} taken?");
            }
            if http(addr, "GET", "/").is_ok() {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on {addr} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates a bucket with a plain unsigned `PUT /bucket` (moto does not
    /// check signatures).
    pub fn create_bucket(&self, bucket: &str) {
        let status = http(self.addr, "PUT", &format!("/{bucket}")).expect("PUT bucket");
        assert_eq!(status, 200, "moto refused to create bucket {bucket}");
    }

    /// The configuration of a client of this server, with `secret`.
    pub fn config(&self, secret: &str) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY_ID.into()),
            secret_access_key: Some(secret.into()),
            session_token: None,
        }
    }

    /// Creates the bucket of `bucket_prefix` (`bucket` or
    /// `bucket/some/prefix`) and returns a store on it.
    pub fn s3_store(&self, bucket_prefix: &str) -> S3Store {
        self.s3_store_with_secret(bucket_prefix, SECRET_ACCESS_KEY)
    }

    /// As [`Moto::s3_store`], with a chosen secret access key.
    pub fn s3_store_with_secret(&self, bucket_prefix: &str, secret: &str) -> S3Store {
        let bucket = bucket_prefix.split('/').next().unwrap_or(bucket_prefix);
        self.create_bucket(bucket);
        S3Store::with_config(&format!("s3://{bucket_prefix}"), self.config(secret))
            .expect("S3 store on moto")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
