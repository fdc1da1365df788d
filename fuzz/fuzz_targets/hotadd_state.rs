//! The HotAdd state file: arbitrary bytes give records or nothing, never
//! a panic; every record parsed survives a write and re-read.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let records = transport_hotadd::parse_state(data);
    let mut text = Vec::new();
    for r in &records {
        text.extend_from_slice(serde_json::to_string(r).unwrap().as_bytes());
        text.push(b'\n');
    }
    assert_eq!(transport_hotadd::parse_state(&text), records);
});
