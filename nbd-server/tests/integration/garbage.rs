//! Hostile bytes do not bring the server down.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::support::*;

fn greeting(s: &mut UnixStream) {
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
}

#[test]
fn garbage_and_oversized_requests_leave_the_server_serving() {
    let disk = MemExport::new(1 << 20, true);
    let srv = start_one(disk.clone());
    // Pure garbage instead of client flags: the connection is closed.
    let mut s = UnixStream::connect(&srv.socket).unwrap();
    greeting(&mut s);
    s.write_all(&[0xff; 64]).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    // A huge option length: skipped, NBD_REP_ERR_TOO_BIG, then negotiation goes on.
    let mut s = UnixStream::connect(&srv.socket).unwrap();
    greeting(&mut s);
    let mut msg = 3u32.to_be_bytes().to_vec();
    msg.extend_from_slice(b"IHAVEOPT");
    msg.extend_from_slice(&6u32.to_be_bytes());
    msg.extend_from_slice(&(1u32 << 20).to_be_bytes());
    s.write_all(&msg).unwrap();
    s.write_all(&vec![0x41; 1 << 20]).unwrap();
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[12..16], 0x8000_0009u32.to_be_bytes());
    drop(s);
    // A client that dies mid-option.
    let mut s = UnixStream::connect(&srv.socket).unwrap();
    greeting(&mut s);
    s.write_all(&[0, 0, 0, 3, b'I', b'H']).unwrap();
    drop(s);
    // Still serving.
    need("nbdinfo");
    {
        assert_eq!(run("nbdinfo", &["--size", &srv.uri]).trim(), "1048576");
    }
    srv.stop().unwrap();
}

#[test]
fn shutdown_removes_socket_and_ends_idle_clients() {
    let disk = MemExport::new(1 << 20, true);
    let srv = start_one(disk.clone());
    let path = srv.socket.clone();
    // An idle client in the middle of negotiation.
    let mut s = UnixStream::connect(&path).unwrap();
    greeting(&mut s);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    srv.stop().unwrap();
    assert!(!path.exists(), "socket file left behind");
    // Writable exports are flushed at shutdown.
    assert!(disk.flushes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
}
