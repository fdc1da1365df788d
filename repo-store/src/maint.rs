//! Maintenance: verify, prune and garbage collection.

use std::collections::{BTreeMap, HashMap, HashSet};

use repo_format::gc::{self, Lease, StoredChunk};
use repo_format::prune::{self, PrunePoint};
use repo_format::{BackupId, ChunkId, PrunePolicy};

use crate::error::{Error, Result};
use crate::repo::{chunk_key, parse_chunk_key, random, Repository, CHUNKS, GC_MARKERS, LEASES};
use crate::writer::GcMarker;

/// Longest a GC marker counts when it cannot be read: a day.
pub const MAX_MARKER_LIFE: u64 = 24 * 3600;
/// Default GC grace: six hours (must exceed the clock skew between
/// proxies and the store, plus twice the lease renewal period).
pub const DEFAULT_GRACE: u64 = 6 * 3600;
/// Shortest grace `gc` accepts outside tests: ten minutes.
pub const MIN_GRACE: u64 = 600;

/// What a GC pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks stored when the pass listed them.
    pub chunks_listed: u64,
    /// Chunks deleted.
    pub chunks_deleted: u64,
    /// Bytes of the deleted objects.
    pub bytes_deleted: u64,
    /// Chunks kept because a live lease declares them or they are young.
    pub chunks_protected: u64,
    /// Chunks indexes name but the store lacks (damage: run verify).
    pub missing: Vec<ChunkId>,
    /// Stale leases removed.
    pub stale_leases: Vec<BackupId>,
    /// The pass ran out of time before deleting everything it could.
    pub stopped_early: bool,
    /// Stale temporary files of interrupted writes removed.
    pub temp_swept: u64,
}

/// One bad chunk found by verify and the points it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadChunk {
    /// The chunk.
    pub id: ChunkId,
    /// What is wrong.
    pub error: String,
    /// `(point, disk)` whose data it is part of.
    pub affected: Vec<(BackupId, i32)>,
}

/// What verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Point disks (indexes) read.
    pub indexes: u64,
    /// Distinct chunks referenced.
    pub chunks_referenced: u64,
    /// Chunks read and checked.
    pub chunks_checked: u64,
    /// Plaintext bytes checked.
    pub bytes_checked: u64,
    /// Indexes that could not be read: `(name, error)`.
    pub bad_indexes: Vec<(String, String)>,
    /// Chunks missing or damaged.
    pub bad_chunks: Vec<BadChunk>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.bad_indexes.is_empty() && self.bad_chunks.is_empty()
    }
}

/// A prune verdict with the point's VM, for reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneOutcome {
    /// The point.
    pub point: PrunePoint,
    /// Why kept (empty: removed).
    pub reasons: Vec<repo_format::KeepReason>,
}

impl Repository {
    /// Verifies the repository: reads every index (or only those of
    /// `only`), then every chunk they reference, or a random `fraction`
    /// of them (1.0 = all), checking each against its id.
    pub fn verify(&self, only: Option<&BackupId>, fraction: f64) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut users: BTreeMap<ChunkId, Vec<(BackupId, i32)>> = BTreeMap::new();
        for (id, key) in self.index_names()? {
            if only.is_some_and(|o| *o != id) {
                continue;
            }
            report.indexes += 1;
            match self.read_index(&id, key) {
                Ok(ix) => {
                    for c in ix.referenced() {
                        let v = users.entry(*c).or_default();
                        if v.last() != Some(&(id, key)) {
                            v.push((id, key));
                        }
                    }
                }
                Err(e) => report
                    .bad_indexes
                    .push((crate::repo::index_key(&id, key), e.to_string())),
            }
        }
        if only.is_some() && report.indexes == 0 {
            return Err(Error::NotFound("no such backup point".into()));
        }
        report.chunks_referenced = users.len() as u64;
        let salt: [u8; 8] = random();
        let threshold = (fraction.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        let chosen: Vec<(&ChunkId, &Vec<(BackupId, i32)>)> = users
            .iter()
            .filter(|(id, _)| {
                fraction >= 1.0 || {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&id.0[..8]);
                    (u64::from_le_bytes(b) ^ u64::from_le_bytes(salt)) <= threshold
                }
            })
            .collect();
        // Two threads: reading, authenticating and hashing are CPU-bound.
        let results: Vec<(ChunkId, Result<usize>)> = std::thread::scope(|s| {
            let halves: Vec<_> = chosen.chunks(chosen.len().div_ceil(2).max(1)).collect();
            let handles: Vec<_> = halves
                .into_iter()
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|(id, _)| (**id, self.read_chunk(id).map(|d| d.len())))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for (id, r) in results {
            match r {
                Ok(n) => {
                    report.chunks_checked += 1;
                    report.bytes_checked += n as u64;
                }
                Err(e) => {
                    report.chunks_checked += 1;
                    report.bad_chunks.push(BadChunk {
                        id,
                        error: e.to_string(),
                        affected: users.get(&id).cloned().unwrap_or_default(),
                    });
                }
            }
        }
        Ok(report)
    }

    /// Applies a retention policy to every VM and disk: the indexes of
    /// points it does not keep are deleted (unless `dry_run`). Chunks go
    /// at the next GC.
    pub fn prune(&self, policy: &PrunePolicy, dry_run: bool) -> Result<Vec<PruneOutcome>> {
        if policy.is_empty() {
            return Err(Error::InvalidArgument(
                "an empty policy would keep everything: give at least one --keep-* rule".into(),
            ));
        }
        let points: Vec<PrunePoint> = self
            .points()?
            .into_iter()
            .map(|p| PrunePoint {
                id: p.backup_id,
                time: p.time,
                vm: p.vm,
                disk_key: p.disk_key,
            })
            .collect();
        let decisions = prune::plan(&points, policy);
        let by_key: HashMap<(BackupId, i32), &PrunePoint> =
            points.iter().map(|p| ((p.id, p.disk_key), p)).collect();
        let mut out = Vec::new();
        for d in decisions {
            let Some(p) = by_key.get(&(d.id, d.disk_key)) else {
                continue;
            };
            if !d.keep() && !dry_run {
                self.forget(&d.id, d.disk_key)?;
            }
            out.push(PruneOutcome {
                point: (*p).clone(),
                reasons: d.reasons,
            });
        }
        Ok(out)
    }

    /// One garbage-collection pass (see [`repo_format::gc`] and
    /// [`crate::writer`]): announce, list leases, then indexes, then
    /// chunks; delete what no index or live lease needs and the grace
    /// does not protect; stop when the marker lapses.
    pub fn gc(&self, grace: u64, dry_run: bool) -> Result<GcReport> {
        let store = &self.store;
        let now = store.now()?;
        let max_pass = gc::max_pass(grace).max(1);
        let marker = GcMarker {
            started: now,
            expires: now + max_pass,
        };
        let hex: [u8; 16] = random();
        let marker_key = format!(
            "{GC_MARKERS}{}",
            hex.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let marker_bytes =
            serde_json::to_vec(&marker).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if !dry_run {
            store.put(&marker_key, &marker_bytes)?;
        }
        let result = self.gc_pass(now, grace, marker.expires, dry_run);
        if !dry_run {
            let _ = store.delete(&marker_key, None);
        }
        result
    }

    fn gc_pass(&self, now: u64, grace: u64, deadline: u64, dry_run: bool) -> Result<GcReport> {
        let store = &self.store;
        let mut report = GcReport::default();
        // Leases first, then indexes, then chunks: the order the proof needs.
        let mut leases = Vec::new();
        let mut lease_versions = HashMap::new();
        for o in store.list(LEASES)? {
            let Some(bytes) = store.get(&o.key, repo_format::gc::MAX_LEASE_LEN as u64 + 4096)?
            else {
                continue; // finished meanwhile
            };
            let lease = Lease::open(&bytes, &self.ctx)
                .map_err(|e| Error::format(format!("lease {} (GC deletes nothing)", o.key), e))?;
            if crate::repo::lease_key(&lease.backup_id) != o.key {
                return Err(Error::InvalidArgument(format!(
                    "lease {} names another backup (GC deletes nothing)",
                    o.key
                )));
            }
            lease_versions.insert(lease.backup_id, (o.key.clone(), o.version.clone()));
            leases.push(lease);
        }
        let mut referenced: HashSet<ChunkId> = HashSet::new();
        for (id, key) in self.index_names()? {
            let ix = match self.read_index(&id, key) {
                Ok(ix) => ix,
                // Deleted by a prune meanwhile: it references nothing now.
                Err(Error::Missing { .. }) => continue,
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "{e} (GC deletes nothing while an index is unreadable)"
                    )))
                }
            };
            referenced.extend(ix.referenced().copied());
        }
        let mut stored = Vec::new();
        let mut versions: HashMap<ChunkId, (String, u64)> = HashMap::new();
        for o in store.list(CHUNKS)? {
            let Some(id) = parse_chunk_key(&o.key) else {
                continue;
            };
            stored.push(StoredChunk {
                id,
                uploaded: o.modified,
            });
            versions.insert(id, (o.version.clone(), o.size));
        }
        report.chunks_listed = stored.len() as u64;
        let plan = gc::plan(&referenced, &stored, &leases, now, grace)
            .map_err(|e| Error::format("gc plan", e))?;
        report.missing = plan.missing.clone();
        report.chunks_protected = plan
            .keep
            .iter()
            .filter(|(_, k)| !matches!(k, gc::GcKeep::Referenced))
            .count() as u64;
        for id in &plan.delete {
            if store.now()? >= deadline {
                report.stopped_early = true;
                break;
            }
            let (version, size) = versions.get(id).cloned().unwrap_or_default();
            if dry_run || store.delete(&chunk_key(id), Some(&version))? {
                report.chunks_deleted += 1;
                report.bytes_deleted += size;
            }
        }
        if !dry_run {
            report.temp_swept = store.sweep()?;
        }
        for id in &plan.stale_leases {
            if let Some((key, version)) = lease_versions.get(id) {
                if dry_run || store.delete(key, Some(version))? {
                    report.stale_leases.push(*id);
                }
            }
        }
        Ok(report)
    }
}
