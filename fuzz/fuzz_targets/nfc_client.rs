//! The client side fed arbitrary server bytes, with reads, writes and
//! other ops in flight: typed errors only, fragments always inside their
//! request; the fragment decompressors fed arbitrary blocks.
#![no_main]

use nfc_proto::aio::{Compression, OpenFile, OpenSession, QueryAllocated};
use nfc_proto::client::Tracker;
use nfc_proto::compress;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut t = Tracker::new();
    let mut out = Vec::new();
    let _ = t.open_session(&mut out, OpenSession::default());
    let _ = t.set_sock_opts(&mut out);
    let _ = t.set_res_pool(&mut out, 1);
    let _ = t.open_file(&mut out, &OpenFile { path: "[ds] a.vmdk".into(), read_only: true });
    t.set_compression(Compression::FastLz);
    let r1 = t.read(&mut out, 1, 0, 200_000).unwrap();
    let r2 = t.read(&mut out, 1, 4096, 1000).unwrap();
    let _ = t.write(&mut out, 1, 0, &[1u8; 70_000]);
    let _ = t.ddb_get(&mut out, 1, "uuid");
    let _ = t.query_allocated(&mut out, &QueryAllocated { handle: 1, chunk_size: 1 << 20, start: 0, chunks: 64 });
    let _ = t.close_file(&mut out, 1);
    let _ = t.close_session(&mut out);
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
    // Fragment decoders: the first two bytes give the expected length.
    if let [a, b, rest @ ..] = data {
        let mut dest = vec![0u8; usize::from(*a) << 8 | usize::from(*b)];
        for kind in [Compression::None, Compression::Zlib, Compression::FastLz, Compression::SkipZ] {
            let _ = compress::decompress_fragment(kind, rest, &mut dest);
        }
        let mut z = Vec::new();
        let used = compress::compress_fragment(Compression::FastLz, rest, &mut z);
        let mut back = vec![0u8; rest.len()];
        compress::decompress_fragment(used, &z, &mut back).expect("our own block reads back");
        assert!(back == rest);
    }
});
