//! End to end, in memory: what a storage layer on top of this crate does.
//! A `HashMap` stands in for the object store.

use std::collections::HashMap;

use repo_format::gc::{self, Lease, StoredChunk};
use repo_format::index::NextPoint;
use repo_format::prune::{self, PrunePoint};
use repo_format::{
    decode_chunk, encode_chunk, is_zero, keys, BackupId, BackupIndex, BackupKind, ChunkId,
    Encryption, Error, KdfParams, MasterKeys, ObjectContext, PrunePolicy, RepoConfig, VmIdentity,
};

const CS: u32 = 1 << 16;

#[derive(Default)]
struct Store {
    chunks: HashMap<ChunkId, (Vec<u8>, u64)>,
    indexes: HashMap<BackupId, Vec<u8>>,
    nonce: u64,
}

impl Store {
    fn nonce(&mut self) -> [u8; 24] {
        self.nonce += 1;
        let mut n = [0u8; 24];
        n[..8].copy_from_slice(&self.nonce.to_le_bytes());
        n
    }

    /// Backs up `disk`, reading only `changed` chunks when a base is given.
    fn backup(
        &mut self,
        ctx: &ObjectContext,
        disk: &[u8],
        time: u64,
        base: Option<&BackupIndex>,
        changed: &[u64],
    ) -> BackupIndex {
        let id = BackupId::new(time, [time as u8; 16]);
        let mut changes = Vec::new();
        let all: Vec<u64> = (0..disk.len().div_ceil(CS as usize) as u64).collect();
        for &i in if base.is_some() { changed } else { &all } {
            let start = i as usize * CS as usize;
            let data = &disk[start..(start + CS as usize).min(disk.len())];
            if is_zero(data) {
                changes.push((i, None));
                continue;
            }
            let nonce = self.nonce();
            let e = encode_chunk(data, ctx, nonce).unwrap();
            self.chunks.entry(e.id).or_insert((e.bytes, time));
            changes.push((i, Some(e.id)));
        }
        let point = NextPoint {
            backup_id: id,
            time,
            kind: if base.is_some() {
                BackupKind::Incremental
            } else {
                BackupKind::Full
            },
            change_id: Some(format!("52 x/{time}")),
            capacity: disk.len() as u64,
            vm_config: Some(b"<vmx/>".to_vec()),
        };
        let empty = BackupIndex {
            backup_id: id,
            vm: VmIdentity {
                server: "vc.example".into(),
                instance_uuid: "5001-aa".into(),
                moref: "vm-42".into(),
                name: "db".into(),
            },
            disk_key: 2000,
            capacity: 0,
            chunk_size: CS,
            chunks: vec![],
            change_id: None,
            kind: BackupKind::Full,
            time,
            base: None,
            vm_config: None,
        };
        let index = base.unwrap_or(&empty).next(point, &changes).unwrap();
        let nonce = self.nonce();
        let sealed = index.seal(ctx, nonce).unwrap();
        self.indexes.insert(id, sealed);
        index
    }

    fn restore(&self, ctx: &ObjectContext, id: BackupId) -> Vec<u8> {
        let index = BackupIndex::open(&self.indexes[&id], ctx, CS).unwrap();
        assert_eq!((index.backup_id, index.disk_key), (id, 2000));
        let mut disk = vec![0u8; index.capacity as usize];
        for (i, c) in index.chunks.iter().enumerate() {
            if let Some(c) = c {
                let (off, len) = index.chunk_extent(i as u64).unwrap();
                let data = decode_chunk(&self.chunks[c].0, ctx, c, CS as usize).unwrap();
                assert_eq!(data.len() as u64, len);
                disk[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
        }
        disk
    }
}

fn disk_v1() -> Vec<u8> {
    let mut d = vec![0u8; 5 * CS as usize + 1000];
    for (i, b) in d[..CS as usize].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    d[3 * CS as usize..4 * CS as usize].fill(7);
    d[5 * CS as usize..].fill(9);
    d
}

#[test]
fn encrypted_repository_life_cycle() {
    // init: keys from caller-supplied random bytes, sealed under a passphrase.
    let keys = MasterKeys::generate([0x3c; 64]);
    let small = KdfParams {
        m_kib: 8,
        t: 1,
        p: 1,
    };
    let blob = keys::wrap(&keys, b"hunter2", small, [1; 16], [2; 24]).unwrap();
    let config = RepoConfig::new([9; 16], CS, Some(3), Encryption::RepoKey(blob)).unwrap();
    let stored_config = config.encode();

    // open.
    let config = RepoConfig::decode(&stored_config).unwrap();
    assert_eq!(config.unlock(b"wrong").unwrap_err(), Error::WrongPassphrase);
    let keys = config.unlock(b"hunter2").unwrap();
    let ctx = ObjectContext::new(&config, Some(&keys)).unwrap();

    let mut store = Store::default();
    let v1 = disk_v1();
    let full = store.backup(&ctx, &v1, 1_000_000, None, &[]);
    assert_eq!(full.chunks.iter().filter(|c| c.is_none()).count(), 3); // chunks 1, 2 and 4 are zero
    assert_eq!(store.chunks.len(), 3);

    // incremental: chunk 1 written, chunk 3 zeroed.
    let mut v2 = v1.clone();
    v2[CS as usize + 5] = 1;
    v2[3 * CS as usize..4 * CS as usize].fill(0);
    let inc = store.backup(&ctx, &v2, 1_090_000, Some(&full), &[1, 3]);
    assert_eq!(inc.base, Some(full.backup_id));
    assert_eq!(store.chunks.len(), 4);

    // Any point restores from its own index.
    assert_eq!(store.restore(&ctx, full.backup_id), v1);
    assert_eq!(store.restore(&ctx, inc.backup_id), v2);

    // A chunk swapped for another is caught on read.
    let ids: Vec<ChunkId> = inc.chunks.iter().flatten().copied().collect();
    let other = store.chunks[&ids[1]].0.clone();
    store.chunks.get_mut(&ids[0]).unwrap().0 = other;
    assert!(matches!(
        decode_chunk(&store.chunks[&ids[0]].0, &ctx, &ids[0], CS as usize),
        Err(Error::Corrupt { .. })
    ));

    // prune keeps only the newest, then GC removes what only the full referenced.
    let points: Vec<PrunePoint> = [&full, &inc]
        .iter()
        .map(|i| PrunePoint {
            id: i.backup_id,
            time: i.time,
            vm: i.vm.clone(),
            disk_key: i.disk_key,
        })
        .collect();
    let policy = PrunePolicy {
        keep_last: 1,
        ..Default::default()
    };
    let decisions = prune::plan(&points, &policy);
    assert!(!decisions[0].keep() && decisions[1].keep());
    store.indexes.remove(&full.backup_id);

    let referenced: Vec<ChunkId> = inc.referenced().copied().collect();
    let stored: Vec<StoredChunk> = store
        .chunks
        .iter()
        .map(|(id, (_, t))| StoredChunk {
            id: *id,
            uploaded: *t,
        })
        .collect();
    // A running backup has declared the old chunk 3 ("7"s) for reuse.
    let chunk3 = full.chunks[3].unwrap();
    let lease = Lease {
        proxy: "proxy-b".into(),
        backup_id: BackupId::new(1_100_000, [5; 16]),
        started: 1_099_000,
        expires: 1_100_300,
        chunks: vec![chunk3],
    };
    let plan = gc::plan(
        &referenced,
        &stored,
        std::slice::from_ref(&lease),
        1_100_000,
        3600,
    )
    .unwrap();
    // Chunks 0 and 5 are shared with the incremental, and chunk 3, which
    // only the pruned full referenced, is declared by the live lease.
    assert!(plan.missing.is_empty());
    assert!(plan.delete.is_empty(), "{:?}", plan.delete);
    // Once the lease has expired (crashed proxy), chunk 3 goes too.
    let plan = gc::plan(&referenced, &stored, &[lease], 1_100_300, 3600).unwrap();
    assert_eq!(plan.delete, vec![chunk3]);
}
