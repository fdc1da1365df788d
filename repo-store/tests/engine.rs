//! The repository engine over the in-memory store: points, dedup,
//! incrementals, verify, prune, GC beside writers, encryption.

use std::sync::Arc;
use std::time::Duration;

use repo_format::{
    BackupIndex, BackupKind, ChunkId, KdfParams, NextPoint, PrunePolicy, VmIdentity,
};
use repo_store::{
    BackupWriter, Error, Finish, InitEncryption, InitOptions, MemStore, PointReader, Repository,
    Store, Unlock, WriterOptions,
};

const CS: u32 = 64 << 10;

fn vm(uuid: &str) -> VmIdentity {
    VmIdentity {
        server: "vc1".into(),
        instance_uuid: uuid.into(),
        moref: "vm-1".into(),
        name: "web".into(),
    }
}

fn opts() -> WriterOptions {
    WriterOptions {
        proxy: "test".into(),
        lease_ttl: 600,
        renew_every: Duration::from_millis(50),
        barrier_poll: Duration::from_millis(10),
    }
}

fn cheap_kdf() -> KdfParams {
    KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    }
}

fn init(store: &Arc<MemStore>, encryption: InitEncryption) -> Repository {
    Repository::init(
        Arc::clone(store) as Arc<dyn Store>,
        &InitOptions {
            chunk_size: CS,
            compression: Some(3),
            encryption,
            kdf: cheap_kdf(),
        },
    )
    .unwrap()
    .0
}

/// Backs up `disk` whole (full) or only `changed` chunk slots over `base`.
fn backup(
    repo: &Repository,
    vm: &VmIdentity,
    disk: &[u8],
    base: Option<&BackupIndex>,
    changed: Option<&[u64]>,
    time: u64,
) -> BackupIndex {
    let id = Repository::new_backup_id(time);
    let mut w = BackupWriter::begin(repo, id, opts()).unwrap();
    let n = (disk.len() as u64).div_ceil(u64::from(CS));
    let slots: Vec<u64> = match changed {
        Some(c) => c.to_vec(),
        None => (0..n).collect(),
    };
    let stored = w
        .store_chunks::<Error>(2, |put| {
            for &i in &slots {
                let s = (i * u64::from(CS)) as usize;
                let e = (s + CS as usize).min(disk.len());
                put(i, disk[s..e].to_vec())?;
            }
            Ok(())
        })
        .unwrap();
    let index = match base {
        Some(b) => {
            w.reuse(b.referenced());
            b.next(
                NextPoint {
                    backup_id: id,
                    time,
                    kind: BackupKind::Incremental,
                    change_id: Some(format!("c{time}")),
                    capacity: disk.len() as u64,
                    vm_config: None,
                },
                &stored,
            )
            .unwrap()
        }
        None => {
            let mut chunks = vec![None; n as usize];
            for (i, c) in stored {
                chunks[i as usize] = c;
            }
            BackupIndex {
                backup_id: id,
                vm: vm.clone(),
                disk_key: 2000,
                capacity: disk.len() as u64,
                chunk_size: CS,
                chunks,
                change_id: Some(format!("c{time}")),
                kind: BackupKind::Full,
                time,
                base: None,
                vm_config: Some(b"<vmx/>".to_vec()),
            }
        }
    };
    assert_eq!(
        w.finish(std::slice::from_ref(&index)).unwrap(),
        Finish::Published
    );
    index
}

fn read_all(repo: &Repository, ix: &BackupIndex) -> Vec<u8> {
    let r = PointReader::open(repo, &ix.backup_id, ix.disk_key).unwrap();
    let mut out = vec![0u8; r.capacity() as usize];
    r.read_at(0, &mut out).unwrap();
    let restored = std::sync::Mutex::new(vec![0u8; r.capacity() as usize]);
    r.restore(
        2,
        &|off, d| {
            restored.lock().unwrap()[off as usize..][..d.len()].copy_from_slice(d);
            Ok(())
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(out, restored.into_inner().unwrap());
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u64::from(seed) * 0x9e37_79b9 + 1;
    (0..len)
        .map(|i| {
            if (i / CS as usize) % 3 == 2 {
                return 0; // every third chunk is a hole
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / 4096) % 2 == 0 {
                (x & 0xff) as u8
            } else {
                b"compressible text "[i % 18]
            }
        })
        .collect()
}

#[test]
fn full_incremental_and_dedup_restore_exactly() {
    let store = Arc::new(MemStore::new(1_000_000));
    let repo = init(&store, InitEncryption::None);
    let mut disk = pattern(10 * CS as usize + 1234, 1);
    let full = backup(&repo, &vm("u1"), &disk, None, None, 1_000_000);
    assert_eq!(read_all(&repo, &full), disk);
    let chunks_after_full = store.list("chunks/").unwrap().len();

    // A guest write in chunk 4, then an incremental of that chunk only.
    disk[4 * CS as usize + 10..][..100].fill(0xee);
    let inc = backup(&repo, &vm("u1"), &disk, Some(&full), Some(&[4]), 1_000_100);
    assert_eq!(inc.base, Some(full.backup_id));
    assert_eq!(read_all(&repo, &inc), disk);
    assert_eq!(store.list("chunks/").unwrap().len(), chunks_after_full + 1);

    // The same disk from another VM stores nothing new.
    let other = backup(&repo, &vm("u2"), &disk, None, None, 1_000_200);
    assert_eq!(store.list("chunks/").unwrap().len(), chunks_after_full + 1);
    assert_eq!(read_all(&repo, &other), disk);

    // Deleting the full point breaks neither later point.
    repo.forget(&full.backup_id, 2000).unwrap();
    assert_eq!(read_all(&repo, &inc), disk);
    let report = repo.verify(None, 1.0).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.indexes, 2);
}

#[test]
fn gc_deletes_only_garbage_past_the_grace() {
    let store = Arc::new(MemStore::new(1_000_000));
    let repo = init(&store, InitEncryption::None);
    let disk = pattern(6 * CS as usize, 2);
    let a = backup(&repo, &vm("u1"), &disk, None, None, 1_000_000);
    let b = backup(
        &repo,
        &vm("u1"),
        &pattern(6 * CS as usize, 3),
        None,
        None,
        1_000_001,
    );
    repo.forget(&b.backup_id, 2000).unwrap();
    // Within the grace nothing goes.
    let r = repo.gc(3600, false).unwrap();
    assert_eq!(r.chunks_deleted, 0);
    store.advance(7200);
    let before = store.list("chunks/").unwrap().len() as u64;
    let r = repo.gc(3600, false).unwrap();
    assert!(r.chunks_deleted > 0, "{r:?}");
    assert_eq!(
        store.list("chunks/").unwrap().len() as u64,
        before - r.chunks_deleted
    );
    assert!(repo.verify(None, 1.0).unwrap().is_clean());
    assert_eq!(read_all(&repo, &a), disk);
    assert!(
        store.list("gc/").unwrap().is_empty(),
        "the marker is removed"
    );
}

#[test]
fn a_writer_reusing_a_chunk_gc_deleted_stores_it_again() {
    let store = Arc::new(MemStore::new(1_000_000));
    let repo = init(&store, InitEncryption::None);
    let disk = pattern(4 * CS as usize, 4);
    let full = backup(&repo, &vm("u1"), &disk, None, None, 1_000_000);
    // An incremental starts from `full` and declares its chunks …
    let id = Repository::new_backup_id(1_000_010);
    // A long lease whose heartbeat does not come before the GC.
    let slow = WriterOptions {
        lease_ttl: 1_000_000,
        renew_every: Duration::from_secs(3600),
        ..opts()
    };
    let mut w = BackupWriter::begin(&repo, id, slow).unwrap();
    w.reuse(full.referenced());
    // … while the full point is pruned and a GC (the writer's lease not
    // yet naming the chunks: the heartbeat has not run) removes them.
    repo.forget(&full.backup_id, 2000).unwrap();
    store.advance(100_000);
    let gc = repo.gc(3600, false).unwrap();
    assert!(gc.chunks_deleted > 0, "{gc:?}");
    let next = full
        .next(
            NextPoint {
                backup_id: id,
                time: 1_000_010,
                kind: BackupKind::Incremental,
                change_id: None,
                capacity: disk.len() as u64,
                vm_config: None,
            },
            &[],
        )
        .unwrap();
    let Finish::Missing(ids) = w.finish(std::slice::from_ref(&next)).unwrap() else {
        panic!("the vanished chunks were not noticed");
    };
    assert_eq!(ids.len() as u64, gc.chunks_deleted);
    assert!(
        repo.index_names().unwrap().is_empty(),
        "nothing published yet"
    );
    for i in 0..4u64 {
        let s = (i * u64::from(CS)) as usize;
        w.put_chunk(&disk[s..s + CS as usize]).unwrap();
    }
    assert_eq!(
        w.finish(std::slice::from_ref(&next)).unwrap(),
        Finish::Published
    );
    assert!(repo.verify(None, 1.0).unwrap().is_clean());
    assert_eq!(read_all(&repo, &next), disk);
}

#[test]
fn a_writer_waits_for_a_running_gc_pass() {
    let store = Arc::new(MemStore::new(1_000_000));
    let repo = init(&store, InitEncryption::None);
    let marker = serde_json::json!({"started": 1_000_000, "expires": 1_000_050});
    store
        .put(
            "gc/0123456789abcdef0123456789abcdef",
            marker.to_string().as_bytes(),
        )
        .unwrap();
    let disk = pattern(2 * CS as usize, 5);
    let store2 = Arc::clone(&store);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        store2.advance(60); // the marker lapses
    });
    let started = std::time::Instant::now();
    let ix = backup(&repo, &vm("u1"), &disk, None, None, 1_000_000);
    assert!(started.elapsed() >= Duration::from_millis(250));
    t.join().unwrap();
    assert_eq!(read_all(&repo, &ix), disk);
}

#[test]
fn prune_keeps_what_the_policy_says_per_vm() {
    let store = Arc::new(MemStore::new(1_000_000));
    let repo = init(&store, InitEncryption::None);
    let disk = pattern(2 * CS as usize, 6);
    let mut ids = Vec::new();
    for day in 0..5u64 {
        ids.push(backup(
            &repo,
            &vm("u1"),
            &disk,
            None,
            None,
            1_000_000 + day * 86_400,
        ));
    }
    let other = backup(&repo, &vm("u2"), &disk, None, None, 1_000_000);
    let policy = PrunePolicy {
        keep_last: 2,
        ..PrunePolicy::default()
    };
    let out = repo.prune(&policy, true).unwrap();
    assert_eq!(out.iter().filter(|o| o.reasons.is_empty()).count(), 3);
    assert_eq!(repo.points().unwrap().len(), 6, "dry run");
    repo.prune(&policy, false).unwrap();
    let left: Vec<_> = repo
        .points()
        .unwrap()
        .into_iter()
        .map(|p| p.backup_id)
        .collect();
    assert_eq!(left.len(), 3);
    assert!(left.contains(&other.backup_id));
    assert!(left.contains(&ids[4].backup_id) && left.contains(&ids[3].backup_id));
    assert!(repo.prune(&PrunePolicy::default(), false).is_err());
}

#[test]
fn encrypted_objects_leak_no_plaintext_and_damage_is_detected() {
    let store = Arc::new(MemStore::new(1_000_000));
    let repo = init(&store, InitEncryption::RepoKey(b"correct horse".to_vec()));
    // Recognisable, compressible and incompressible content.
    let mut disk = pattern(4 * CS as usize, 7);
    let marker = b"SECRET-GUEST-DATA-MARKER-0123456789";
    for k in 0..50 {
        disk[k * 997..][..marker.len()].copy_from_slice(marker);
    }
    let ix = backup(&repo, &vm("u-secret-uuid"), &disk, None, None, 1_000_000);
    let needles: Vec<&[u8]> = vec![
        marker,
        &disk[0..32],
        b"u-secret-uuid",
        b"compressible text",
        b"<vmx/>",
    ];
    for (key, bytes) in store.dump() {
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == *n),
                "{key} holds plaintext {:?}",
                String::from_utf8_lossy(n)
            );
        }
        if let Some(id) = key
            .strip_prefix("chunks/")
            .and_then(|k| k.split('/').nth(1))
        {
            // Chunk ids are keyed: not the public hash of any chunk.
            let public = ChunkId::compute(
                &repo_format::public_id_key(&repo.config().repo_id),
                &disk[..CS as usize],
            );
            assert_ne!(id, public.to_string());
        }
    }
    // Wrong passphrase, no passphrase.
    let s: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
    let wrong = Repository::open(Arc::clone(&s), &Unlock::Passphrase(b"wrong".to_vec()));
    assert!(
        matches!(
            &wrong,
            Err(Error::Format {
                source: repo_format::Error::WrongPassphrase,
                ..
            })
        ),
        "{wrong:?}"
    );
    assert!(matches!(
        Repository::open(Arc::clone(&s), &Unlock::None),
        Err(Error::PassphraseRequired)
    ));
    let repo = Repository::open(s, &Unlock::Passphrase(b"correct horse".to_vec())).unwrap();
    assert_eq!(read_all(&repo, &ix), disk);
    // A flipped byte anywhere in any chunk or index is detected.
    for (key, bytes) in store.dump() {
        if key == "config" {
            continue;
        }
        for at in [0, bytes.len() / 2, bytes.len() - 1] {
            store.tamper(&key, |b| b[at] ^= 0x20);
            let r = PointReader::open(&repo, &ix.backup_id, 2000).and_then(|r| {
                let mut buf = vec![0u8; r.capacity() as usize];
                r.read_at(0, &mut buf).map(|()| buf)
            });
            assert!(r.is_err(), "{key} byte {at} flipped went unnoticed");
            let v = repo.verify(None, 1.0);
            assert!(
                v.map_or(true, |v| !v.is_clean()),
                "verify missed {key}@{at}"
            );
            store.tamper(&key, |b| b[at] ^= 0x20);
        }
    }
    assert!(repo.verify(None, 1.0).unwrap().is_clean());
}

#[test]
fn verify_names_the_points_a_bad_chunk_breaks() {
    let store = Arc::new(MemStore::new(1_000_000));
    let repo = init(&store, InitEncryption::None);
    let disk = pattern(3 * CS as usize, 8);
    let a = backup(&repo, &vm("u1"), &disk, None, None, 1_000_000);
    let b = backup(&repo, &vm("u2"), &disk, None, None, 1_000_001);
    let victim = a.chunks[0].unwrap();
    let key = format!("chunks/{}/{}", &victim.to_string()[..2], victim);
    store.tamper(&key, |b| {
        let n = b.len();
        b[n - 3] ^= 1
    });
    let r = repo.verify(None, 1.0).unwrap();
    assert_eq!(r.bad_chunks.len(), 1);
    let mut affected = r.bad_chunks[0].affected.clone();
    affected.sort();
    let mut want = vec![(a.backup_id, 2000), (b.backup_id, 2000)];
    want.sort();
    assert_eq!(affected, want);
    // Sampling checks fewer chunks.
    let s = repo.verify(None, 0.0).unwrap();
    assert!(s.chunks_checked < r.chunks_checked);
}

#[test]
fn a_key_file_repository_opens_only_with_its_key_file() {
    let store = Arc::new(MemStore::new(1_000_000));
    let (_, key_file) = Repository::init(
        Arc::clone(&store) as Arc<dyn Store>,
        &InitOptions {
            chunk_size: CS,
            encryption: InitEncryption::KeyFile,
            kdf: cheap_kdf(),
            ..InitOptions::default()
        },
    )
    .unwrap();
    let key_file = key_file.unwrap();
    let s = Arc::clone(&store) as Arc<dyn Store>;
    assert!(Repository::open(Arc::clone(&s), &Unlock::None).is_err());
    let mut other = key_file.clone();
    other[20] ^= 1;
    assert!(Repository::open(Arc::clone(&s), &Unlock::KeyFile(other)).is_err());
    Repository::open(s, &Unlock::KeyFile(key_file)).unwrap();
    assert!(matches!(
        Repository::init(
            Arc::clone(&store) as Arc<dyn Store>,
            &InitOptions::default()
        ),
        Err(Error::AlreadyExists(_))
    ));
}
