//! The SOAP client's HTTP response reader on arbitrary bytes: a typed
//! error or a response, never a panic, never more than the caps.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = vim_soap::http::read_response(&mut &data[..]) {
        assert!(r.body.len() <= vim_soap::xml::MAX_MESSAGE);
    }
});
