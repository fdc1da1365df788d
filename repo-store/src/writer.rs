//! Writing one backup point: chunks in, indexes out, under a lease.
//!
//! The protocol of [`repo_format::gc`], with one change that spares
//! writers the `reuse_wait` pause: a GC pass announces itself with a
//! marker (`gc/…`) *before* it lists the leases, and a writer, after
//! its lease declares every chunk it will reference, waits until no
//! unexpired marker is left before it confirms that the chunks it did
//! not upload itself still exist. A pass that listed the leases before
//! the declaration had written its marker before it, so the writer sees
//! that marker and waits for the pass to end (or to lapse: a pass stops
//! deleting when its marker expires); whatever that pass deleted is then
//! found missing by the confirmation and uploaded again. A pass that
//! lists the leases after the declaration sees it. Fresh uploads are
//! declared by the heartbeat within [`WriterOptions::renew_every`] of
//! being stored, far within the GC grace, so rule 3 of the plan keeps
//! them meanwhile; and since a stalled process can outlive the grace,
//! `finish` confirms the writer's own uploads as well.
//!
//! Publication: each index is written once under its final name (create
//! if absent) after every chunk it names is stored and confirmed, and
//! only while the lease is live; then the lease is deleted. A writer that
//! dies leaves its lease (stale once expired) and chunks no index names,
//! which a later GC removes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use repo_format::gc::Lease;
use repo_format::{encode_chunk_with_id, is_zero, BackupId, BackupIndex, ChunkId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::{chunk_key, index_key, lease_key, random, Repository, CHUNKS, GC_MARKERS};
use crate::store::PutOutcome;

/// How a writer paces its lease.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Who is writing (host name), recorded in the lease.
    pub proxy: String,
    /// How long a lease lives unless renewed, seconds.
    pub lease_ttl: u64,
    /// How often the heartbeat renews it.
    pub renew_every: Duration,
    /// How often to look again while a GC pass runs.
    pub barrier_poll: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            proxy: hostname(),
            lease_ttl: 600,
            renew_every: Duration::from_secs(30),
            barrier_poll: Duration::from_millis(500),
        }
    }
}

/// This machine's name, for leases.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A GC pass's marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GcMarker {
    pub started: u64,
    pub expires: u64,
}

/// Counters of a writer.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Chunks stored by this writer.
    pub chunks_uploaded: AtomicU64,
    /// Bytes of the objects it stored (after compression and sealing).
    pub bytes_uploaded: AtomicU64,
    /// Plaintext bytes of the chunks it stored.
    pub plain_uploaded: AtomicU64,
    /// Chunks found already stored (deduplicated).
    pub chunks_reused: AtomicU64,
    /// All-zero chunks (stored as nothing).
    pub chunks_zero: AtomicU64,
}

struct State {
    lease: Lease,
    /// Chunks this writer stored.
    uploaded: HashSet<ChunkId>,
    /// Chunks it references without having stored them.
    reused: HashSet<ChunkId>,
    /// Chunks `finish` found gone, to be stored again.
    missing: HashSet<ChunkId>,
    /// Declared in the lease as last written.
    declared: usize,
    expired: bool,
}

struct Shared {
    repo: Repository,
    backup_id: BackupId,
    opts: WriterOptions,
    state: Mutex<State>,
    stop: Mutex<bool>,
    wake: Condvar,
    expired: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rewrites the lease with every chunk known so far and a new expiry.
    fn renew(&self) -> Result<()> {
        let mut st = self.lock();
        if st.expired {
            return Err(Error::LeaseExpired(self.backup_id.to_string()));
        }
        let now = self.repo.store.now()?;
        if now >= st.lease.expires {
            st.expired = true;
            self.expired.store(true, Ordering::SeqCst);
            return Err(Error::LeaseExpired(self.backup_id.to_string()));
        }
        let mut chunks: Vec<ChunkId> = st
            .uploaded
            .iter()
            .chain(st.reused.iter())
            .copied()
            .collect();
        chunks.sort();
        let mut lease = st.lease.clone();
        lease.expires = now + self.opts.lease_ttl;
        lease.chunks = chunks;
        let n = lease.chunks.len();
        let sealed = lease
            .seal(&self.repo.ctx, random())
            .map_err(|e| Error::format("lease", e))?;
        // The lease object is written while holding the state, so a
        // declaration never goes backwards.
        self.repo.store.put(&lease_key(&self.backup_id), &sealed)?;
        st.lease = lease;
        st.declared = n;
        Ok(())
    }
}

/// One backup point being written. See the module doc.
pub struct BackupWriter {
    shared: Arc<Shared>,
    heartbeat: Option<JoinHandle<()>>,
    stats: Arc<WriterStats>,
    finished: bool,
}

impl std::fmt::Debug for BackupWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupWriter")
            .field("backup_id", &self.shared.backup_id)
            .finish()
    }
}

/// What [`BackupWriter::finish`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Every index is published.
    Published,
    /// These reused chunks vanished (a GC pass ran beside the backup):
    /// store them again with [`BackupWriter::put_chunk`] and call
    /// [`BackupWriter::finish`] again. Nothing was published.
    Missing(Vec<ChunkId>),
}

impl BackupWriter {
    /// Starts a point: writes its lease before anything is looked at.
    pub fn begin(repo: &Repository, backup_id: BackupId, opts: WriterOptions) -> Result<Self> {
        let now = repo.store.now()?;
        let lease = Lease {
            proxy: opts.proxy.clone(),
            backup_id,
            started: now,
            expires: now + opts.lease_ttl,
            chunks: Vec::new(),
        };
        let sealed = lease
            .seal(&repo.ctx, random())
            .map_err(|e| Error::format("lease", e))?;
        repo.store.put(&lease_key(&backup_id), &sealed)?;
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            backup_id,
            opts,
            state: Mutex::new(State {
                lease,
                uploaded: HashSet::new(),
                reused: HashSet::new(),
                missing: HashSet::new(),
                declared: 0,
                expired: false,
            }),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            expired: AtomicBool::new(false),
        });
        let hb = Arc::clone(&shared);
        let heartbeat = std::thread::Builder::new()
            .name("lease-heartbeat".into())
            .spawn(move || heartbeat(&hb))
            .map_err(|e| Error::InvalidArgument(format!("starting the lease heartbeat: {e}")))?;
        Ok(BackupWriter {
            shared,
            heartbeat: Some(heartbeat),
            stats: Arc::new(WriterStats::default()),
            finished: false,
        })
    }

    /// The point's id.
    pub fn backup_id(&self) -> BackupId {
        self.shared.backup_id
    }

    /// The repository.
    pub fn repository(&self) -> &Repository {
        &self.shared.repo
    }

    /// Counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Declares chunks this point will reference without reading them
    /// (the unchanged chunks of its base point).
    pub fn reuse<'a>(&self, ids: impl IntoIterator<Item = &'a ChunkId>) {
        let mut st = self.shared.lock();
        for id in ids {
            if !st.uploaded.contains(id) {
                st.reused.insert(*id);
            }
        }
    }

    /// Stores one chunk's plaintext (the disk bytes of one chunk slot):
    /// `None` for all zeros (stored as nothing), else its id, stored or
    /// found stored. Safe to call from several threads.
    pub fn put_chunk(&self, plain: &[u8]) -> Result<Option<ChunkId>> {
        if self.shared.expired.load(Ordering::SeqCst) {
            return Err(Error::LeaseExpired(self.shared.backup_id.to_string()));
        }
        if plain.len() > self.shared.repo.config.chunk_size as usize {
            return Err(Error::InvalidArgument(format!(
                "a chunk of {} bytes exceeds the chunk size",
                plain.len()
            )));
        }
        if is_zero(plain) {
            self.stats.chunks_zero.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let repo = &self.shared.repo;
        let id = repo.ctx.chunk_id(plain);
        let missing_before = {
            let st = self.shared.lock();
            // A chunk found missing at finish comes back here to be
            // stored again; any other known chunk is settled (stored by
            // us, or declared and confirmed at finish).
            let missing = st.missing.contains(&id);
            if !missing && (st.uploaded.contains(&id) || st.reused.contains(&id)) {
                return Ok(Some(id));
            }
            missing
        };
        let key = chunk_key(&id);
        if !missing_before && repo.store.head(&key)?.is_some() {
            self.shared.lock().reused.insert(id);
            self.stats.chunks_reused.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(id));
        }
        let sealed = encode_chunk_with_id(plain, id, &repo.ctx, random())
            .map_err(|e| Error::format("chunk", e))?;
        let created = if missing_before {
            repo.store.put(&key, &sealed.bytes)?;
            true
        } else {
            repo.store.put_if_absent_lazy(&key, &sealed.bytes)? == PutOutcome::Created
        };
        let mut st = self.shared.lock();
        if created {
            st.missing.remove(&id);
            st.reused.remove(&id);
            st.uploaded.insert(id);
            drop(st);
            self.stats.chunks_uploaded.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_uploaded
                .fetch_add(sealed.bytes.len() as u64, Ordering::Relaxed);
            self.stats
                .plain_uploaded
                .fetch_add(plain.len() as u64, Ordering::Relaxed);
        } else {
            st.reused.insert(id);
            drop(st);
            self.stats.chunks_reused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(id))
    }

    /// Publishes the point's indexes (one per disk), after declaring and
    /// confirming every chunk they name. See [`Finish`].
    pub fn finish(&mut self, indexes: &[BackupIndex]) -> Result<Finish> {
        let shared = Arc::clone(&self.shared);
        let repo = &shared.repo;
        let mut named: HashSet<ChunkId> = HashSet::new();
        for ix in indexes {
            if ix.backup_id != shared.backup_id || ix.chunk_size != repo.config.chunk_size {
                return Err(Error::InvalidArgument(
                    "an index of another point or chunk size".into(),
                ));
            }
            named.extend(ix.referenced().copied());
        }
        {
            let st = shared.lock();
            if let Some(id) = named
                .iter()
                .find(|id| !st.uploaded.contains(id) && !st.reused.contains(id))
            {
                return Err(Error::InvalidArgument(format!(
                    "chunk {id} is neither stored nor declared by this writer"
                )));
            }
        }
        // 1. Declare everything.
        shared.renew()?;
        // 2. Wait out any GC pass that may have missed the declaration.
        self.wait_for_gc()?;
        // 3. Confirm every chunk named: those reused, and also those this
        // writer stored, which only the grace protected until the
        // heartbeat declared them (a stalled process can outlive it).
        let to_confirm: Vec<ChunkId> = named.iter().copied().collect();
        let missing = self.missing(&to_confirm)?;
        if !missing.is_empty() {
            // put_chunk stores these again (unconditionally).
            let mut st = shared.lock();
            for id in &missing {
                st.uploaded.remove(id);
                st.reused.insert(*id);
                st.missing.insert(*id);
            }
            return Ok(Finish::Missing(missing));
        }
        // 4. Every chunk's name durable (ours, and those reused from
        // writers that may not have synced theirs yet), then publish,
        // each index only while the lease is live.
        let keys: Vec<String> = named.iter().map(chunk_key).collect();
        repo.store.make_durable(&keys)?;
        for ix in indexes {
            let now = repo.store.now()?;
            let live = {
                let st = shared.lock();
                !st.expired && now + 5 < st.lease.expires
            };
            if !live {
                return Err(Error::LeaseExpired(shared.backup_id.to_string()));
            }
            let sealed = ix
                .seal(&repo.ctx, random())
                .map_err(|e| Error::format("index", e))?;
            let key = index_key(&ix.backup_id, ix.disk_key);
            if repo.store.put_if_absent(&key, &sealed)? == PutOutcome::Existed {
                // Point ids are random: only our own write, retried after
                // a lost answer, can be there already.
                let there = repo.store.get(&key, sealed.len() as u64)?;
                if there.as_deref() != Some(&sealed[..]) {
                    return Err(Error::InvalidArgument(format!("{key} already exists")));
                }
            }
        }
        self.stop_heartbeat();
        repo.store.delete(&lease_key(&shared.backup_id), None)?;
        self.finished = true;
        Ok(Finish::Published)
    }

    fn wait_for_gc(&self) -> Result<()> {
        let store = &self.shared.repo.store;
        loop {
            let now = store.now()?;
            let mut active = false;
            for m in store.list(GC_MARKERS)? {
                let expires = store
                    .get(&m.key, 64 << 10)?
                    .and_then(|b| serde_json::from_slice::<GcMarker>(&b).ok())
                    .map(|g| g.expires)
                    // An unreadable marker counts for the longest pass.
                    .unwrap_or(m.modified.saturating_add(crate::maint::MAX_MARKER_LIFE));
                if now < expires {
                    active = true;
                }
            }
            if !active {
                return Ok(());
            }
            if self.shared.expired.load(Ordering::SeqCst) {
                return Err(Error::LeaseExpired(self.shared.backup_id.to_string()));
            }
            std::thread::sleep(self.shared.opts.barrier_poll);
        }
    }

    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let store = &self.shared.repo.store;
        // Many: one listing; few: one look each.
        if ids.len() > 256 {
            let present: HashSet<ChunkId> = store
                .list(CHUNKS)?
                .iter()
                .filter_map(|o| crate::repo::parse_chunk_key(&o.key))
                .collect();
            return Ok(ids
                .iter()
                .filter(|id| !present.contains(id))
                .copied()
                .collect());
        }
        let mut missing = Vec::new();
        for id in ids {
            if store.head(&chunk_key(id))?.is_none() {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    fn stop_heartbeat(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
    }
}

impl Drop for BackupWriter {
    /// An unfinished writer gives its lease up (its chunks become garbage
    /// once the grace has passed). If the store is gone, the lease stays
    /// and lapses.
    fn drop(&mut self) {
        self.stop_heartbeat();
        if !self.finished {
            let _ = self
                .shared
                .repo
                .store
                .delete(&lease_key(&self.shared.backup_id), None);
        }
    }
}

fn heartbeat(shared: &Shared) {
    let started = Instant::now();
    let mut next = shared.opts.renew_every;
    loop {
        let stop = shared.stop.lock().unwrap_or_else(|e| e.into_inner());
        let wait = next.saturating_sub(started.elapsed());
        let (stop, _) = shared
            .wake
            .wait_timeout_while(stop, wait, |s| !*s)
            .unwrap_or_else(|e| e.into_inner());
        if *stop {
            return;
        }
        drop(stop);
        // A failed renewal is retried at the next beat; `renew` marks the
        // lease expired once its time has passed.
        if shared.renew().is_err() && shared.expired.load(Ordering::SeqCst) {
            return;
        }
        next = started.elapsed() + shared.opts.renew_every;
    }
}

impl BackupWriter {
    /// Stores many chunks with `threads` hashing, compressing, sealing and
    /// uploading threads, while `produce` (on the calling thread) reads
    /// the disk and hands over `(chunk index, plaintext)` pairs through
    /// the callback it is given. Returns `(chunk index, id)` for every
    /// chunk handed over, in no particular order.
    pub fn store_chunks<E>(
        &self,
        threads: usize,
        produce: impl FnOnce(&mut dyn FnMut(u64, Vec<u8>) -> Result<(), E>) -> Result<(), E>,
    ) -> Result<Vec<(u64, Option<ChunkId>)>, E>
    where
        E: From<Error> + Send,
    {
        let threads = threads.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(threads * 2);
        let rx = Mutex::new(rx);
        let failed = AtomicBool::new(false);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let rx = &rx;
                    let failed = &failed;
                    s.spawn(move || -> Result<Vec<(u64, Option<ChunkId>)>, Error> {
                        let mut out = Vec::new();
                        let mut error = None;
                        loop {
                            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok((i, data)) = next else {
                                return error.map_or(Ok(out), Err);
                            };
                            // After a failure keep draining, so that a
                            // producer blocked in `send` is never left
                            // waiting on a channel nobody reads.
                            if error.is_some() || failed.load(Ordering::SeqCst) {
                                continue;
                            }
                            match self.put_chunk(&data) {
                                Ok(id) => out.push((i, id)),
                                Err(e) => {
                                    failed.store(true, Ordering::SeqCst);
                                    error = Some(e);
                                }
                            }
                        }
                    })
                })
                .collect();
            let produced = produce(&mut |i, data| {
                if failed.load(Ordering::SeqCst) {
                    return Err(E::from(Error::InvalidArgument(
                        "storing a chunk failed".into(),
                    )));
                }
                tx.send((i, data)).map_err(|_| {
                    E::from(Error::InvalidArgument("the chunk workers stopped".into()))
                })
            });
            drop(tx);
            let mut all = Vec::new();
            let mut first_err = None;
            for w in workers {
                match w.join() {
                    Ok(Ok(v)) => all.extend(v),
                    Ok(Err(e)) => first_err = first_err.or(Some(e)),
                    Err(_) => {
                        first_err = first_err.or(Some(Error::InvalidArgument(
                            "a chunk worker panicked".into(),
                        )))
                    }
                }
            }
            // A worker's own error says more than the producer's
            // "workers stopped".
            if let Some(e) = first_err {
                return Err(E::from(e));
            }
            produced?;
            Ok(all)
        })
    }
}
