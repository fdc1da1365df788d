//! The repository engine over hostile storage: a valid repository whose
//! index, lease, GC marker and chunk objects are arbitrary bytes, then
//! listing, verify, a dry-run GC and reads of the point. Nothing may
//! panic; whatever is wrong is an error or a bad-chunk report. Also the
//! object-name parsers on arbitrary strings.
#![no_main]
use std::sync::Arc;

use repo_format::{BackupId, ChunkId};
use repo_store::repo::{chunk_key, index_key, lease_key, parse_chunk_key, parse_index_key};
use repo_store::{check_key, InitOptions, MemStore, PointReader, Repository, Store};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_index_key(s);
        let _ = parse_chunk_key(s);
        let _ = check_key(s);
    }
    let mut parts = data.splitn(4, |&b| b == 0xff);
    let (index, lease, marker, chunk) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let store = Arc::new(MemStore::new(1_000_000));
    let (repo, _) = Repository::init(
        Arc::clone(&store) as Arc<dyn Store>,
        &InitOptions {
            chunk_size: 1 << 16,
            ..InitOptions::default()
        },
    )
    .unwrap();
    let id = BackupId::new(1_000_000, [3; 16]);
    store.put(&index_key(&id, 2000), index).unwrap();
    store.put(&lease_key(&id), lease).unwrap();
    store.put("gc/00000000000000000000000000000000", marker).unwrap();
    store.put(&chunk_key(&ChunkId([0x11; 32])), chunk).unwrap();
    let _ = repo.points();
    let _ = repo.verify(None, 1.0);
    let _ = repo.gc(3600, true);
    if let Ok(r) = PointReader::open(&repo, &id, 2000) {
        let mut buf = vec![0u8; 4096];
        for off in [0u64, 65_000, r.capacity().saturating_sub(4096)] {
            let n = (r.capacity().saturating_sub(off)).min(4096) as usize;
            let _ = r.read_at(off, &mut buf[..n]);
        }
        let _ = r.runs(0, r.capacity());
    }
});
