//! Repository format 2 decoders on arbitrary bytes: the configuration,
//! key files, sealed chunk and metadata objects (encrypted and not, and
//! unencrypted ones carrying a valid checksum so the header checks and the
//! capped decompression are reached) and backup indexes. None may panic;
//! what decodes re-encodes to an equal value (indexes: to the same bytes).
#![no_main]
use repo_format::object::{fuzzing, ObjectHeader};
use repo_format::{
    decode_blob, decode_chunk, gc::Lease, BackupIndex, ChunkId, Encryption, MasterKeys, ObjectContext, ObjectKind,
    RepoConfig,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let plain_cfg = RepoConfig::new([1; 16], 1 << 16, Some(3), Encryption::None).unwrap();
    let plain = ObjectContext::new(&plain_cfg, None).unwrap();
    let keys = MasterKeys::generate([7; 64]);
    let sealed_cfg = RepoConfig::new(
        [1; 16],
        1 << 16,
        Some(3),
        Encryption::KeyFile {
            check: keys.check_value(&[1; 16]),
        },
    )
    .unwrap();
    let sealed = ObjectContext::new(&sealed_cfg, Some(&keys)).unwrap();
    let id = ChunkId([0x5a; 32]);
    match mode % 6 {
        0 => {
            if let Ok(c) = RepoConfig::decode(rest) {
                assert_eq!(RepoConfig::decode(&c.encode()).unwrap(), c);
            }
        }
        1 => {
            if let Ok(k) = MasterKeys::from_key_file(rest) {
                assert_eq!(k.to_key_file(), rest);
            }
            if let Ok(l) = Lease::decode(rest) {
                assert_eq!(Lease::decode(&l.encode()).unwrap(), l);
            }
        }
        2 => {
            let _ = ObjectHeader::parse(rest);
            for ctx in [&plain, &sealed] {
                let _ = decode_chunk(rest, ctx, &id, 1 << 16);
                let _ = decode_blob(rest, ObjectKind::Index, ctx, 1 << 16);
                let _ = BackupIndex::open(rest, ctx, 1 << 16);
                let _ = Lease::open(rest, ctx);
            }
        }
        3 => {
            if let Ok(i) = BackupIndex::decode(rest) {
                assert_eq!(i.encode().unwrap(), rest);
            }
        }
        _ => {
            let obj = fuzzing::with_checksum(&plain, rest);
            if let Ok(p) = decode_blob(&obj, ObjectKind::Other, &plain, 1 << 20) {
                let h = ObjectHeader::parse(&obj).unwrap();
                assert_eq!(p.len() as u64, h.plain_len);
            }
        }
    }
});
