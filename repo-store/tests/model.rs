//! A model-based property test of the repository engine.
//!
//! Two VMs with one small disk each (a few 64 KiB chunks, sometimes with
//! a short last chunk) live in a plain model: their bytes, the chunk
//! slots written since their last point and since their last full point,
//! and every point the model believes the repository holds, with the
//! bytes it was taken from. Random sequences of guest writes, backups
//! (full, incremental, differential; some killed midway), clock steps,
//! prunes and GC passes (some killed midway, some running beside a
//! backup in flight) drive both the model and a repository on a
//! [`MemStore`]. After every step the repository must list exactly the
//! model's points, each reading back (in place and by `restore`) to its
//! bytes, and `verify` must be clean; after a GC pass every chunk left
//! must be justified (referenced, declared by a live lease or within the
//! grace).
//!
//! A killed writer is simulated with [`MemStore::fail_after`]: the
//! process is dead after that many more storage writes, and
//! [`MemStore::heal`] is the next process. A killed operation may leave
//! chunks no index names, stale leases and GC markers, nothing worse.
//!
//! `PROPTEST_CASES` sets the number of cases (64 by default). Against
//! the engine as it stands the test fails: the two engine bugs it finds
//! are reduced to fixed sequences in the comments at the end.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use repo_format::gc::Lease;
use repo_format::prune::{self, PrunePoint};
use repo_format::{
    BackupId, BackupIndex, BackupKind, ChunkId, KdfParams, NextPoint, PrunePolicy, VmIdentity,
};
use repo_store::{
    BackupWriter, Error, Finish, InitEncryption, InitOptions, MemStore, PointReader, Repository,
    Store, WriterOptions,
};

const CS: u64 = 64 << 10;
const GRACE: u64 = 3600;
const T0: u64 = 1_750_000_000;
const DISK: i32 = 2000;
const MAX_CHUNKS: u64 = 6;
/// The lease of an ordinary backup.
const TTL: u64 = 600;
/// The lease of a backup with a GC pass beside it: far beyond the grace.
const LONG_TTL: u64 = 30 * 86_400;
/// A heartbeat period no test case lives to see.
const NEVER: Duration = Duration::from_secs(86_400);
/// Longest a backup may take before the case fails as hung.
const WATCHDOG: Duration = Duration::from_secs(10);

/// What a backup asks for (the model falls back to a full point when
/// there is no base).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Full,
    Incremental,
    Differential,
}

/// What a guest write puts on the disk.
#[derive(Debug, Clone)]
enum Fill {
    /// Pseudo-random, half compressible, from this seed.
    Random(u64),
    /// Zeros.
    Zero,
    /// The bytes of a chunk slot of the other VM's disk (whole-chunk
    /// copies deduplicate).
    Copy { from_slot: u64 },
}

#[derive(Debug, Clone)]
enum Op {
    /// A guest write: `at` and `len` are reduced to the disk; `aligned`
    /// makes it one whole chunk slot.
    Write {
        vm: usize,
        at: u64,
        len: u64,
        aligned: bool,
        fill: Fill,
    },
    /// A backup, killed after `crash` more storage writes if given.
    Backup {
        vm: usize,
        kind: Kind,
        threads: usize,
        crash: Option<u64>,
    },
    /// The clock moves on.
    Advance(u64),
    /// A prune, killed after `crash` deletions if given.
    Prune {
        keep_last: u32,
        keep_hourly: u32,
        crash: Option<u64>,
    },
    /// A GC pass, killed after `crash` storage writes if given.
    Gc { crash: Option<u64> },
    /// A backup with a GC pass between its uploads and its `finish`:
    /// optionally its base point pruned first and the clock moved past
    /// the grace (never past the lease); with the lease renewed by the
    /// heartbeat before the pass or not at all.
    GcBeside {
        vm: usize,
        kind: Kind,
        prune_base: bool,
        renewed: bool,
        advance: Option<u64>,
    },
}

#[derive(Debug, Clone)]
struct Setup {
    capacities: [u64; 2],
    seeds: [u64; 2],
    encrypted: bool,
    compression: Option<i32>,
}

fn capacity() -> impl Strategy<Value = u64> {
    (2..=MAX_CHUNKS, prop_oneof![2 => Just(0u64), 1 => 1..CS]).prop_map(|(n, shave)| n * CS - shave)
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        [capacity(), capacity()],
        any::<[u64; 2]>(),
        prop::bool::weighted(0.25),
        prop_oneof![2 => Just(None), 1 => Just(Some(1)), 1 => Just(Some(3))],
    )
        .prop_map(|(capacities, seeds, encrypted, compression)| Setup {
            capacities,
            seeds,
            encrypted,
            compression,
        })
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => Just(Kind::Full),
        2 => Just(Kind::Incremental),
        1 => Just(Kind::Differential),
    ]
}

fn crash(max: u64) -> impl Strategy<Value = Option<u64>> {
    prop_oneof![2 => Just(None), 1 => (0..max).prop_map(Some)]
}

fn fill() -> impl Strategy<Value = Fill> {
    prop_oneof![
        3 => any::<u64>().prop_map(Fill::Random),
        1 => Just(Fill::Zero),
        2 => (0..MAX_CHUNKS).prop_map(|from_slot| Fill::Copy { from_slot }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0..MAX_CHUNKS * CS, 1..CS * 3 / 2, any::<bool>(), fill()).prop_map(
            |(vm, at, len, aligned, fill)| Op::Write {
                vm,
                at,
                len,
                aligned,
                fill
            }
        ),
        4 => (0..2usize, kind(), 1..=2usize, crash(14)).prop_map(|(vm, kind, threads, crash)| {
            Op::Backup {
                vm,
                kind,
                threads,
                crash,
            }
        }),
        2 => prop_oneof![1u64..120, 120u64..4 * GRACE].prop_map(Op::Advance),
        1 => (1..=3u32, 0..=2u32, crash(3)).prop_map(|(keep_last, keep_hourly, crash)| {
            Op::Prune {
                keep_last,
                keep_hourly,
                crash,
            }
        }),
        2 => crash(8).prop_map(|crash| Op::Gc { crash }),
        2 => (
            0..2usize,
            kind(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(1..GRACE)
        )
            .prop_map(|(vm, kind, prune_base, renewed, advance)| Op::GcBeside {
                vm,
                kind,
                prune_base,
                renewed,
                advance,
            }),
    ]
}

/// Fills `out` from `seed`: random 512-byte runs alternating with runs
/// of one byte, so compression has something to do.
fn noise(seed: u64, out: &mut [u8]) {
    let mut x = seed | 1;
    for (i, c) in out.chunks_mut(8).enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (i / 64) % 2 == 0 {
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        } else {
            c.fill((seed >> 8) as u8);
        }
    }
}

fn chunk_count(disk: &[u8]) -> u64 {
    (disk.len() as u64).div_ceil(CS)
}

fn slot(disk: &[u8], i: u64) -> &[u8] {
    let s = (i * CS) as usize;
    let e = (s + CS as usize).min(disk.len());
    &disk[s..e]
}

fn chunk_key(id: &ChunkId) -> String {
    let hex = id.to_string();
    format!("chunks/{}/{hex}", &hex[..2])
}

fn engine<T>(what: &str, r: Result<T, Error>) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

struct VmModel {
    identity: VmIdentity,
    disk: Vec<u8>,
    since_last: BTreeSet<u64>,
    since_full: BTreeSet<u64>,
    last: Option<BackupIndex>,
    last_full: Option<BackupIndex>,
}

/// A point the model believes in.
struct Point {
    index: BackupIndex,
    bytes: Vec<u8>,
}

/// What a GC pass beside a backup does.
#[derive(Debug, Clone, Copy)]
struct Beside {
    prune_base: bool,
    renewed: bool,
    advance: Option<u64>,
}

struct World {
    store: Arc<MemStore>,
    repo: Repository,
    vms: Vec<VmModel>,
    points: BTreeMap<BackupId, Point>,
    /// A killed GC pass leaves its marker; writers wait until then.
    markers_until: u64,
}

impl World {
    fn new(setup: &Setup) -> Result<Self, TestCaseError> {
        let store = Arc::new(MemStore::new(T0));
        let encryption = if setup.encrypted {
            InitEncryption::RepoKey(b"model passphrase".to_vec())
        } else {
            InitEncryption::None
        };
        let (repo, _) = engine(
            "init",
            Repository::init(
                Arc::clone(&store) as Arc<dyn Store>,
                &InitOptions {
                    chunk_size: CS as u32,
                    compression: setup.compression,
                    encryption,
                    kdf: KdfParams {
                        m_kib: 64,
                        t: 1,
                        p: 1,
                    },
                },
            ),
        )?;
        let vms = (0..2)
            .map(|v| {
                let mut disk = vec![0u8; setup.capacities[v] as usize];
                // Every third slot starts as a hole.
                for i in 0..chunk_count(&disk) {
                    if i % 3 != 2 {
                        let s = (i * CS) as usize;
                        let e = (s + CS as usize).min(disk.len());
                        noise(setup.seeds[v] ^ i, &mut disk[s..e]);
                    }
                }
                VmModel {
                    identity: VmIdentity {
                        server: "vc1".into(),
                        instance_uuid: format!("uuid-{v}"),
                        moref: format!("vm-{v}"),
                        name: format!("vm{v}"),
                    },
                    disk,
                    since_last: BTreeSet::new(),
                    since_full: BTreeSet::new(),
                    last: None,
                    last_full: None,
                }
            })
            .collect();
        Ok(World {
            store,
            repo,
            vms,
            points: BTreeMap::new(),
            markers_until: 0,
        })
    }

    fn now(&self) -> u64 {
        self.store.now().expect("the memory store's clock")
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Write {
                vm,
                at,
                len,
                aligned,
                fill,
            } => {
                self.write(*vm, *at, *len, *aligned, fill);
                Ok(())
            }
            Op::Backup {
                vm,
                kind,
                threads,
                crash,
            } => self.backup(*vm, *kind, *threads, *crash, None),
            Op::Advance(s) => {
                self.store.advance(*s);
                Ok(())
            }
            Op::Prune {
                keep_last,
                keep_hourly,
                crash,
            } => self.prune(
                &PrunePolicy {
                    keep_last: *keep_last,
                    keep_hourly: *keep_hourly,
                    ..PrunePolicy::default()
                },
                *crash,
            ),
            Op::Gc { crash } => self.gc(*crash),
            Op::GcBeside {
                vm,
                kind,
                prune_base,
                renewed,
                advance,
            } => self.backup(
                *vm,
                *kind,
                1,
                None,
                Some(Beside {
                    prune_base: *prune_base,
                    renewed: *renewed,
                    advance: *advance,
                }),
            ),
        }
    }

    fn write(&mut self, vm: usize, at: u64, len: u64, aligned: bool, fill: &Fill) {
        let cap = self.vms[vm].disk.len() as u64;
        let (at, len) = if aligned {
            let s = (at / CS) % chunk_count(&self.vms[vm].disk);
            (s * CS, CS.min(cap - s * CS))
        } else {
            let at = at % cap;
            (at, len.min(cap - at))
        };
        let src = match fill {
            Fill::Copy { from_slot } => {
                let other = &self.vms[1 - vm].disk;
                Some(slot(other, from_slot % chunk_count(other)).to_vec())
            }
            _ => None,
        };
        let m = &mut self.vms[vm];
        let range = &mut m.disk[at as usize..(at + len) as usize];
        match (fill, src) {
            (Fill::Random(seed), _) => noise(*seed, range),
            (Fill::Copy { .. }, Some(src)) => {
                let n = range.len().min(src.len());
                range[..n].copy_from_slice(&src[..n]);
            }
            _ => range.fill(0),
        }
        for i in at / CS..=(at + len - 1) / CS {
            m.since_last.insert(i);
            m.since_full.insert(i);
        }
    }

    /// A writer waits for unexpired GC markers; the virtual clock is moved
    /// on instead of sleeping until they lapse.
    fn wait_out_markers(&self) {
        if self.now() < self.markers_until {
            self.store.set_now(self.markers_until);
        }
    }

    fn backup(
        &mut self,
        vm: usize,
        kind: Kind,
        threads: usize,
        crash: Option<u64>,
        beside: Option<Beside>,
    ) -> Result<(), TestCaseError> {
        self.wait_out_markers();
        let time = self.now();
        let m = &self.vms[vm];
        let n = chunk_count(&m.disk);
        let (kind, base, slots): (BackupKind, Option<BackupIndex>, Vec<u64>) =
            match (kind, &m.last, &m.last_full) {
                (Kind::Incremental, Some(b), _) => (
                    BackupKind::Incremental,
                    Some(b.clone()),
                    m.since_last.iter().copied().collect(),
                ),
                (Kind::Differential, _, Some(f)) => (
                    BackupKind::Differential,
                    Some(f.clone()),
                    m.since_full.iter().copied().collect(),
                ),
                _ => (BackupKind::Full, None, (0..n).collect()),
            };
        let id = Repository::new_backup_id(time);
        // A GC pass beside the backup may prune its base first.
        let pruned = match (beside, &base) {
            (Some(b), Some(base)) if b.prune_base => Some(base.backup_id),
            _ => None,
        };
        let job = Job {
            repo: self.repo.clone(),
            store: Arc::clone(&self.store),
            id,
            time,
            kind,
            base,
            slots,
            bytes: m.disk.clone(),
            identity: m.identity.clone(),
            threads,
            opts: WriterOptions {
                proxy: "model".into(),
                lease_ttl: if beside.is_some() { LONG_TTL } else { TTL },
                renew_every: match beside {
                    Some(b) if b.renewed => Duration::from_millis(1),
                    _ => NEVER,
                },
                barrier_poll: Duration::from_millis(1),
            },
            beside,
            pruned,
            referenced: self
                .points
                .values()
                .filter(|p| Some(p.index.backup_id) != pruned)
                .flat_map(|p| p.index.referenced())
                .map(chunk_key)
                .collect(),
        };
        if let Some(k) = crash {
            self.store.fail_after(k);
        }
        // On a thread of its own, so that a backup that never returns
        // fails the case instead of hanging the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut done = Done::default();
            let r = job.write_point(&mut done);
            let _ = tx.send((r, done, job));
        });
        let Ok((r, done, job)) = rx.recv_timeout(WATCHDOG) else {
            return Err(TestCaseError::fail(format!(
                "backup {kind:?} (killed after {crash:?} writes, GC beside: {beside:?}) \
                 did not return within {WATCHDOG:?}"
            )));
        };
        self.store.heal();
        if let Some(gone) = pruned {
            self.points.remove(&gone);
        }
        if let Some(f) = done.failures.into_iter().next() {
            return Err(TestCaseError::fail(f));
        }
        match r {
            Ok(()) => {
                let index = done.built.expect("a published point was built");
                let m = &mut self.vms[vm];
                m.since_last.clear();
                if kind == BackupKind::Full {
                    m.since_full.clear();
                    m.last_full = Some(index.clone());
                }
                m.last = Some(index.clone());
                let bytes = job.bytes;
                self.points.insert(id, Point { index, bytes });
            }
            Err(e) => {
                prop_assert!(
                    crash.is_some(),
                    "backup {kind:?} failed with no fault injected: {e}"
                );
                prop_assert!(
                    matches!(e, Error::Store { .. }),
                    "a killed backup failed with something else than the fault: {e}"
                );
                // Killed after its index was written (deleting the lease,
                // the last step, failed): the point is there, and must be
                // whole. The backup reported a failure, so the next
                // incremental still starts from the previous point.
                let names = engine("index names", self.repo.index_names())?;
                if names.contains(&(id, DISK)) {
                    let index = done.built.expect("a published point was built");
                    let bytes = job.bytes;
                    self.points.insert(id, Point { index, bytes });
                }
            }
        }
        Ok(())
    }

    fn prune(&mut self, policy: &PrunePolicy, crash: Option<u64>) -> Result<(), TestCaseError> {
        let pts: Vec<PrunePoint> = self
            .points
            .values()
            .map(|p| PrunePoint {
                id: p.index.backup_id,
                time: p.index.time,
                vm: p.index.vm.clone(),
                disk_key: DISK,
            })
            .collect();
        let doomed: BTreeSet<BackupId> = prune::plan(&pts, policy)
            .into_iter()
            .filter(|d| !d.keep())
            .map(|d| d.id)
            .collect();
        if let Some(k) = crash {
            self.store.fail_after(k);
        }
        let r = self.repo.prune(policy, false);
        self.store.heal();
        match r {
            Ok(out) => {
                let removed: BTreeSet<BackupId> = out
                    .iter()
                    .filter(|o| o.reasons.is_empty())
                    .map(|o| o.point.id)
                    .collect();
                prop_assert_eq!(&removed, &doomed, "prune {:?}", policy);
                self.points.retain(|id, _| !doomed.contains(id));
            }
            Err(e) => {
                prop_assert!(crash.is_some(), "prune failed with no fault: {}", e);
                // Some of the doomed are gone, nothing else.
                let left: BTreeSet<BackupId> = engine("index names", self.repo.index_names())?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                for id in self.points.keys() {
                    prop_assert!(
                        left.contains(id) || doomed.contains(id),
                        "a killed prune removed {id}, which {policy:?} keeps"
                    );
                }
                self.points.retain(|id, _| left.contains(id));
            }
        }
        Ok(())
    }

    fn gc(&mut self, crash: Option<u64>) -> Result<(), TestCaseError> {
        let now = self.now();
        let markers = |store: &MemStore| -> Result<BTreeMap<String, u64>, TestCaseError> {
            let mut out = BTreeMap::new();
            for o in engine("list gc/", store.list("gc/"))? {
                let bytes = engine("marker", store.get(&o.key, 1 << 16))?;
                let expires = bytes
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["expires"].as_u64())
                    .unwrap_or(o.modified + 24 * 3600);
                out.insert(o.key, expires);
            }
            Ok(out)
        };
        let before = markers(&self.store)?;
        if let Some(k) = crash {
            self.store.fail_after(k);
        }
        let r = self.repo.gc(GRACE, false);
        self.store.heal();
        // A killed pass leaves its marker (even one killed when only the
        // marker's deletion was left, which still returns its report).
        let after = markers(&self.store)?;
        if crash.is_none() {
            prop_assert_eq!(&after, &before, "a GC pass left its marker");
        }
        self.markers_until = after.values().fold(self.markers_until, |a, &b| a.max(b));
        match r {
            Ok(report) => {
                prop_assert!(report.missing.is_empty(), "GC found damage: {report:?}");
                let referenced = self
                    .points
                    .values()
                    .flat_map(|p| p.index.referenced())
                    .map(chunk_key)
                    .collect();
                left_only_justified(&self.store, &self.repo, &referenced, now)
                    .map_err(TestCaseError::fail)?;
            }
            Err(e) => prop_assert!(crash.is_some(), "GC failed with no fault: {}", e),
        }
        Ok(())
    }

    /// The invariants that hold after every step.
    fn check(&self, step: usize) -> Result<(), TestCaseError> {
        let listed = engine("points", self.repo.points())?;
        let got: BTreeSet<(BackupId, i32)> =
            listed.iter().map(|p| (p.backup_id, p.disk_key)).collect();
        let want: BTreeSet<(BackupId, i32)> = self.points.keys().map(|id| (*id, DISK)).collect();
        prop_assert_eq!(got, want, "points listed after step {}", step);
        for p in &listed {
            let m = &self.points[&p.backup_id].index;
            prop_assert_eq!(
                (p.time, p.kind, p.capacity, &p.vm),
                (m.time, m.kind, m.capacity, &m.vm)
            );
        }
        for (id, p) in &self.points {
            let r = engine(
                &format!("opening {id} after step {step}"),
                PointReader::open(&self.repo, id, DISK),
            )?;
            prop_assert_eq!(r.capacity(), p.bytes.len() as u64);
            let mut read = vec![0u8; p.bytes.len()];
            engine(
                &format!("reading {id} ({:?}) after step {step}", p.index.kind),
                r.read_at(0, &mut read),
            )?;
            prop_assert!(
                read == p.bytes,
                "{id} reads back other bytes after step {step}"
            );
            let restored = std::sync::Mutex::new(vec![0u8; p.bytes.len()]);
            engine(
                &format!("restoring {id} after step {step}"),
                r.restore(
                    2,
                    &|off, d| {
                        restored.lock().unwrap()[off as usize..][..d.len()].copy_from_slice(d);
                        Ok(())
                    },
                    &mut |_| {},
                ),
            )?;
            let restored = restored.into_inner().unwrap();
            prop_assert!(
                restored == p.bytes,
                "{id} restores to other bytes after step {step}"
            );
        }
        let v = engine("verify", self.repo.verify(None, 1.0))?;
        prop_assert!(v.is_clean(), "verify after step {step}: {v:?}");
        prop_assert_eq!(v.indexes, self.points.len() as u64);
        Ok(())
    }
}

/// One backup, as the model plans it, with all it needs to run on a
/// thread of its own.
struct Job {
    repo: Repository,
    store: Arc<MemStore>,
    id: BackupId,
    time: u64,
    kind: BackupKind,
    base: Option<BackupIndex>,
    slots: Vec<u64>,
    bytes: Vec<u8>,
    identity: VmIdentity,
    threads: usize,
    opts: WriterOptions,
    beside: Option<Beside>,
    /// The base point, pruned before the GC pass beside.
    pruned: Option<BackupId>,
    /// Chunk keys the model's points name (without the pruned base).
    referenced: HashSet<String>,
}

/// What a backup job built and found wrong.
#[derive(Default)]
struct Done {
    built: Option<BackupIndex>,
    failures: Vec<String>,
}

impl Job {
    /// Writes the point (storing again what `finish` finds missing); a
    /// GC pass beside it if asked.
    fn write_point(&self, done: &mut Done) -> Result<(), Error> {
        let p = self;
        let mut w = BackupWriter::begin(&self.repo, p.id, p.opts.clone())?;
        if let Some(b) = &p.base {
            w.reuse(b.referenced());
        }
        let stored = w.store_chunks::<Error>(p.threads, |put| {
            for &i in &p.slots {
                put(i, slot(&p.bytes, i).to_vec())?;
            }
            Ok(())
        })?;
        let point = NextPoint {
            backup_id: p.id,
            time: p.time,
            kind: p.kind,
            change_id: Some(format!("c{}", p.time)),
            capacity: p.bytes.len() as u64,
            vm_config: None,
        };
        let index = match &p.base {
            Some(b) => b.next(point, &stored).map_err(|e| Error::Format {
                what: "next index".into(),
                source: e,
            })?,
            None => {
                let mut chunks = vec![None; chunk_count(&p.bytes) as usize];
                for &(i, c) in &stored {
                    chunks[i as usize] = c;
                }
                BackupIndex {
                    backup_id: p.id,
                    vm: p.identity.clone(),
                    disk_key: DISK,
                    capacity: p.bytes.len() as u64,
                    chunk_size: CS as u32,
                    chunks,
                    change_id: point.change_id,
                    kind: BackupKind::Full,
                    time: p.time,
                    base: None,
                    vm_config: Some(b"<vmx/>".to_vec()),
                }
            }
        };
        done.built = Some(index.clone());
        if let Some(b) = self.beside {
            self.gc_beside(&w, &stored, b, &mut done.failures)?;
        }
        for round in 0..2 {
            match w.finish(std::slice::from_ref(&index))? {
                Finish::Published => return Ok(()),
                Finish::Missing(ids) => {
                    if round == 1 {
                        done.failures
                            .push(format!("still missing after storing again: {ids:?}"));
                        return Ok(());
                    }
                    for id in &ids {
                        let Some(i) = index.chunks.iter().position(|c| c.as_ref() == Some(id))
                        else {
                            done.failures
                                .push(format!("finish names {id}, which the index lacks"));
                            return Ok(());
                        };
                        let again = w.put_chunk(slot(&p.bytes, i as u64))?;
                        if again != Some(*id) {
                            done.failures
                                .push(format!("slot {i} stored again as {again:?}, not {id}"));
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Between a writer's uploads and its `finish`: maybe prune its base,
    /// maybe move the clock past the grace, then a whole GC pass.
    fn gc_beside(
        &self,
        w: &BackupWriter,
        stored: &[(u64, Option<ChunkId>)],
        b: Beside,
        failures: &mut Vec<String>,
    ) -> Result<(), Error> {
        if let Some(gone) = &self.pruned {
            self.repo.forget(gone, DISK)?;
        }
        if let Some(a) = b.advance {
            // Past the grace, far from the lease's end.
            self.store.advance(GRACE + a);
        }
        if b.renewed {
            // Let the heartbeat declare everything the writer holds.
            let want: HashSet<ChunkId> = self
                .base
                .iter()
                .flat_map(|b| b.referenced())
                .chain(stored.iter().filter_map(|(_, c)| c.as_ref()))
                .copied()
                .collect();
            let key = format!("leases/{}", w.backup_id());
            let started = Instant::now();
            loop {
                let declared: HashSet<ChunkId> = self
                    .store
                    .get(&key, 64 << 20)?
                    .and_then(|bytes| Lease::open(&bytes, self.repo.context()).ok())
                    .map(|l| l.chunks.into_iter().collect())
                    .unwrap_or_default();
                if want.is_subset(&declared) {
                    break;
                }
                if started.elapsed() > Duration::from_secs(5) {
                    failures.push("the heartbeat never declared the writer's chunks".into());
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let now = self.store.now()?;
        let report = self.repo.gc(GRACE, false)?;
        if !report.missing.is_empty() {
            failures.push(format!(
                "GC beside a backup found chunks missing: {report:?}"
            ));
        }
        if let Err(e) = left_only_justified(&self.store, &self.repo, &self.referenced, now) {
            failures.push(format!("GC beside a backup: {e}"));
        }
        Ok(())
    }
}

/// After a GC pass that took `now`: every chunk left is referenced by
/// a point, declared by a lease live at `now`, or uploaded within the
/// grace; and no lease stale at `now` is left.
fn left_only_justified(
    store: &MemStore,
    repo: &Repository,
    referenced: &HashSet<String>,
    now: u64,
) -> Result<(), String> {
    let mut leased: HashSet<String> = HashSet::new();
    for o in store.list("leases/").map_err(|e| e.to_string())? {
        let bytes = store
            .get(&o.key, 64 << 20)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let lease =
            Lease::open(&bytes, repo.context()).map_err(|e| format!("lease {}: {e}", o.key))?;
        if !lease.is_live(now) {
            return Err(format!("GC left the stale lease {}", o.key));
        }
        leased.extend(lease.chunks.iter().map(chunk_key));
    }
    for o in store.list("chunks/").map_err(|e| e.to_string())? {
        let justified =
            referenced.contains(&o.key) || leased.contains(&o.key) || o.modified + GRACE > now;
        if !justified {
            return Err(format!(
                "GC at {now} left {} (uploaded {}), which nothing needs",
                o.key, o.modified
            ));
        }
    }
    Ok(())
}

fn run(setup: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new(setup)?;
    for (step, op) in ops.iter().enumerate() {
        w.apply(op)?;
        // Guest writes and the clock leave the repository as it was.
        if !matches!(op, Op::Write { .. } | Op::Advance(_)) {
            w.check(step)?;
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_engine_keeps_what_the_model_believes(
        setup in setup(),
        ops in prop::collection::vec(op(), 1..20),
    ) {
        run(&setup, &ops)?;
    }
}

// Engine bugs this test found, each reduced to a fixed sequence and
// kept as a regression test.

// 1. (Fixed.) A writer's own uploads were never confirmed. `finish` confirms only
//    the chunks it reused; the chunks it stored itself are protected by
//    the grace alone until the heartbeat declares them. With a lease
//    longer than the GC grace (nothing forbids it; `engine.rs` uses one),
//    a writer whose heartbeat is late while the clock passes the grace
//    loses its uploads to a GC pass, and `finish` then publishes an index
//    naming the deleted chunks: verify reports them missing and the point
//    no longer reads (`Missing { what: "chunk", .. }`). `put_chunk` would
//    not store them again either (it returns early for an uploaded id).
//    Shrunk from the property test: one `GcBeside { kind: Full,
//    renewed: false, advance: Some(1), .. }`.

#[test]
fn a_writers_own_uploads_survive_a_gc_pass_while_its_heartbeat_is_late() {
    let store = Arc::new(MemStore::new(T0));
    let (repo, _) = Repository::init(
        Arc::clone(&store) as Arc<dyn Store>,
        &InitOptions {
            chunk_size: CS as u32,
            compression: None,
            ..InitOptions::default()
        },
    )
    .unwrap();
    let mut disk = vec![0u8; 2 * CS as usize];
    noise(1, &mut disk);
    let id = Repository::new_backup_id(T0);
    let opts = WriterOptions {
        lease_ttl: LONG_TTL,
        renew_every: NEVER,
        ..WriterOptions::default()
    };
    let mut w = BackupWriter::begin(&repo, id, opts).unwrap();
    let chunks = vec![
        w.put_chunk(slot(&disk, 0)).unwrap(),
        w.put_chunk(slot(&disk, 1)).unwrap(),
    ];
    let index = BackupIndex {
        backup_id: id,
        vm: VmIdentity {
            server: "vc1".into(),
            instance_uuid: "u1".into(),
            moref: "vm-1".into(),
            name: "web".into(),
        },
        disk_key: DISK,
        capacity: disk.len() as u64,
        chunk_size: CS as u32,
        chunks,
        change_id: None,
        kind: BackupKind::Full,
        time: T0,
        base: None,
        vm_config: None,
    };
    // The writer stalls past the grace (far from its lease's end): a GC
    // pass takes its undeclared uploads, and `finish` notices, stores
    // them again, then publishes a point that reads back.
    store.advance(GRACE + 1);
    let gc = repo.gc(GRACE, false).unwrap();
    assert_eq!(gc.chunks_deleted, 2, "{gc:?}");
    let Finish::Missing(missing) = w.finish(std::slice::from_ref(&index)).unwrap() else {
        panic!("published a point whose chunks are gone");
    };
    assert_eq!(missing.len(), 2);
    assert!(repo.index_names().unwrap().is_empty());
    for i in 0..2 {
        w.put_chunk(slot(&disk, i)).unwrap();
    }
    assert_eq!(
        w.finish(std::slice::from_ref(&index)).unwrap(),
        Finish::Published
    );
    assert!(repo.verify(None, 1.0).unwrap().is_clean());
    let r = PointReader::open(&repo, &id, DISK).unwrap();
    let mut back = vec![0u8; disk.len()];
    r.read_at(0, &mut back).unwrap();
    assert!(back == disk);
}

// 2. (Fixed.) `store_chunks` could hang for ever after a storage error. The chunk
//    channel holds `2 * threads` items and the receiver outlives the
//    workers: once every worker has returned its error, a producer
//    already blocked in `send` (it checked `failed` before the worker
//    failed) is never woken. The property test sees it as a backup
//    killed by `fail_after` that does not return (the watchdog fails the
//    case); a stack shows the producer in `SyncSender::send` from
//    `store_chunks` and no worker left. Racy: it hung in 5 runs of 10.

#[test]
fn store_chunks_fails_instead_of_hanging_when_the_store_dies() {
    let store = Arc::new(MemStore::new(T0));
    let (repo, _) = Repository::init(
        Arc::clone(&store) as Arc<dyn Store>,
        &InitOptions {
            chunk_size: CS as u32,
            compression: None,
            ..InitOptions::default()
        },
    )
    .unwrap();
    store.fail_after(3); // the lease and two chunks, then the process is dead
    let w = BackupWriter::begin(
        &repo,
        Repository::new_backup_id(T0),
        WriterOptions::default(),
    )
    .unwrap();
    let mut disk = vec![0u8; 8 * CS as usize];
    noise(1, &mut disk);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = w.store_chunks::<Error>(1, |put| {
            for i in 0..8 {
                put(i, slot(&disk, i).to_vec())?;
            }
            Ok(())
        });
        let _ = tx.send(r.is_err());
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "store_chunks never returned"
    );
}
