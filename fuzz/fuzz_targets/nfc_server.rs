//! The server session and the authd line parser fed arbitrary client
//! bytes, raw and after a valid classic handshake and OPEN_SESSION:
//! typed errors only, bounded buffering.
#![no_main]

use nfc_proto::aio::OpenSession;
use nfc_proto::classic::ClientHandshake;
use nfc_proto::client::Tracker;
use nfc_proto::server::{Request, ServerSession};

fn run(s: &mut ServerSession, data: &[u8]) {
    let mut pos = 0;
    let mut steps = 0;
    let mut out = Vec::new();
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
                out.clear();
                s.poll_output(&mut out);
            }
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    run(&mut ServerSession::with_memory_limit(1 << 20), data);
    // A valid prefix, then the fuzz input as AIO.
    let mut prefix = Vec::new();
    let mut hs = ClientHandshake::vddk();
    hs.poll_output(&mut prefix);
    let mut s = ServerSession::with_memory_limit(1 << 20);
    run(&mut s, &prefix);
    let mut replies = Vec::new();
    s.poll_output(&mut replies);
    while !hs.is_done() {
        let n = hs.handle_input(&replies).expect("our server answers our client");
        replies.drain(..n);
        let mut more = Vec::new();
        hs.poll_output(&mut more);
        run(&mut s, &more);
        s.poll_output(&mut replies);
    }
    let mut open = Vec::new();
    Tracker::new().open_session(&mut open, OpenSession::default()).unwrap();
    run(&mut s, &open);
    run(&mut s, data);
    let mut p = 0;
    while let Ok(Some((line, n))) = nfc_proto::authd::take_line(&data[p..]) {
        let _ = nfc_proto::authd::parse_command(&line);
        let _ = nfc_proto::authd::parse_reply(&line);
        p += n;
    }
});
