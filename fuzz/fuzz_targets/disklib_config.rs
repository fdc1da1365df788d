//! The InitEx configuration parser and the transport-list parser: never
//! panic; every key that is not understood is reported, and nothing else.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let c = disklib::api::Config::parse(&text);
    for k in &c.unknown {
        assert!(text.contains(k.as_str()), "invented key {k:?}");
    }
    let _ = c.nbd_options(false);
    let _ = c.nbd_options(true);
    let _ = disklib::api::TransportMode::parse_list(&text);
});
