//! The client side fed arbitrary server bytes, with reads, writes and
//! other ops in flight: typed errors only, fragments always inside their
//! request.
#![no_main]

use nfc_proto::aio::{Compression, OpenFile};
use nfc_proto::client::Tracker;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut t = Tracker::new();
    let mut out = Vec::new();
    let _ = t.open_session(&mut out);
    let _ = t.open_file(&mut out, &OpenFile { path: "[ds] a.vmdk".into(), read_only: true, compression: Compression::Zlib });
    let r1 = t.read(&mut out, 1, 0, 200_000).unwrap();
    let r2 = t.read(&mut out, 1, 4096, 1000).unwrap();
    let _ = t.write(&mut out, 1, 0, &[1u8; 70_000]);
    let _ = t.flush(&mut out, 1);
    let _ = t.ddb_get(&mut out, 1, "ddb.uuid");
    let _ = t.file_info(&mut out, 1);
    let _ = t.ping(&mut out);
    let mut pos = 0;
    let mut steps = 0;
    while pos < data.len() && steps < 10_000 {
        steps += 1;
        match t.handle_input(&data[pos..], &mut |op, at, bytes| {
            let limit = if op == r1 { 200_000 } else if op == r2 { 1000 } else { panic!("data for a non-read op") };
            assert!(at + bytes.len() <= limit, "fragment outside its request");
        }) {
            Ok((0, _)) | Err(_) => break,
            Ok((n, _)) => pos += n,
        }
    }
});
