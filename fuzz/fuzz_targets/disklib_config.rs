//! The InitEx configuration parser and the transport-list parser: never
//! panic; every key that is not understood is reported (with a line of
//! the text), and nothing else.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let c = disklib::api::Config::parse(&text);
    for k in &c.unknown {
        assert!(text.contains(k.as_str()), "invented key {k:?}");
    }
    let lines = text.lines().count();
    for w in &c.warnings {
        assert!(text.contains(w.key.as_str()), "invented key {w:?}");
        assert!((1..=lines).contains(&w.line), "line out of range: {w:?}");
    }
    let _ = c.nbd_options(false);
    let _ = c.nbd_options(true);
    let _ = disklib::api::TransportMode::parse_list(&text);
});
