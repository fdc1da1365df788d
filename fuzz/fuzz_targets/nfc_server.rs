//! The server side and the authd line parser fed arbitrary client bytes:
//! typed errors only, bounded buffering.
#![no_main]

use nfc_proto::server::{Request, ServerSession};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut s = ServerSession::with_memory_limit(1 << 20);
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
            }
        }
    }
    let mut p = 0;
    while let Ok(Some((line, n))) = nfc_proto::authd::take_line(&data[p..]) {
        let _ = nfc_proto::authd::parse_command(&line);
        let _ = nfc_proto::authd::parse_reply(&line);
        p += n;
    }
});
