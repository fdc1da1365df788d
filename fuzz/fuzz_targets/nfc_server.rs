//! The server session and the authd line parser fed arbitrary client
//! bytes, raw and after a valid classic handshake and OPEN_SESSION:
//! typed errors only, bounded buffering.
#![no_main]

use nfc_proto::aio::OpenSession;
use nfc_proto::classic::ClientHandshake;
use nfc_proto::client::Tracker;
use nfc_proto::server::{Request, ServerSession};

/// Feeds `data`; the session's replies are appended to `out`.
fn run(s: &mut ServerSession, data: &[u8], out: &mut Vec<u8>) {
    let mut pos = 0;
    let mut steps = 0;
    while pos < data.len() && steps < 10_000 {
        steps += 1;
        match s.handle_input(&data[pos..]) {
            Ok((0, _)) | Err(_) => break,
            Ok((n, req)) => {
                pos += n;
                if let Some(Request::Write { data, .. }) = req {
                    assert!(data.len() <= nfc_proto::client::MAX_REQUEST as usize);
                }
                assert!(s.buffered() <= 1 << 20);
                s.poll_output(out);
            }
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut sink = Vec::new();
    run(&mut ServerSession::with_memory_limit(1 << 20), data, &mut sink);
    // A valid prefix, then the fuzz input as AIO.
    let mut hs = ClientHandshake::vddk();
    let mut s = ServerSession::with_memory_limit(1 << 20);
    let mut replies = Vec::new();
    for _ in 0..8 {
        let mut more = Vec::new();
        hs.poll_output(&mut more);
        run(&mut s, &more, &mut replies);
        while let n @ 1.. = hs.handle_input(&replies).expect("our server answers our client") {
            replies.drain(..n);
        }
        if hs.is_done() {
            break;
        }
    }
    assert!(hs.is_done() && s.in_aio());
    let mut open = Vec::new();
    Tracker::new().open_session(&mut open, OpenSession::default()).unwrap();
    run(&mut s, &open, &mut sink);
    run(&mut s, data, &mut sink);
    let mut p = 0;
    while let Ok(Some((line, n))) = nfc_proto::authd::take_line(&data[p..]) {
        let _ = nfc_proto::authd::parse_command(&line);
        let _ = nfc_proto::authd::parse_reply(&line);
        p += n;
    }
});
