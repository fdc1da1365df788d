//! The classic 264-byte messages and both handshake state machines fed
//! arbitrary bytes: typed errors only, never more consumed than given.
#![no_main]

use nfc_proto::classic::{self, ClientHandshake, ServerHandshake};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = classic::take_frame(data);
    let mut s = ServerHandshake::default();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < data.len() {
        match s.handle_input(&data[pos..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                assert!(n <= data.len() - pos);
                pos += n;
                s.poll_output(&mut out);
            }
        }
    }
    let mut c = ClientHandshake::vddk();
    let mut pos = 0;
    for _ in 0..8 {
        c.poll_output(&mut out);
        match c.handle_input(&data[pos..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                assert!(n <= data.len() - pos);
                pos += n;
            }
        }
    }
});
