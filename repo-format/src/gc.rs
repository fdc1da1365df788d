//! Garbage-collection planning, and the protocol that makes deleting
//! chunks safe while other proxies are backing up into the repository.
//!
//! [`plan`] is pure: given what the storage layer listed, it says which
//! chunks may go. A chunk is deleted only if **all** hold:
//! 1. no index references it;
//! 2. no live lease declares it (a lease is live while `now < expires`;
//!    an expired lease is stale, and its chunks fall back to rule 3);
//! 3. it was uploaded at least `grace` ago (`uploaded + grace <= now`), so
//!    the fresh uploads of a backup in flight survive even if its lease
//!    is lost; an upload time in the future keeps the chunk.
//!
//! ```
//! use repo_format::gc::{plan, GcKeep, Lease, StoredChunk};
//! use repo_format::{BackupId, ChunkId, Error};
//!
//! let (a, b, c) = (ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32]));
//! let stored = [
//!     StoredChunk { id: a, uploaded: 0 },
//!     StoredChunk { id: b, uploaded: 0 },
//!     StoredChunk { id: c, uploaded: 9_000 },
//! ];
//! let p = plan(&[a], &stored, &[], 10_000, 3_600)?;
//! assert_eq!(p.delete, [b]); // c is within the grace period
//! assert_eq!(p.keep, [(a, GcKeep::Referenced), (c, GcKeep::Grace { uploaded: 9_000 })]);
//! assert!(plan(&[a], &stored, &[], 10_000, 0).is_err()); // no grace, no plan
//! # Ok::<(), Error>(())
//! ```
//!
//! # The protocol
//!
//! All times (`uploaded`, `started`, `expires`, `now`) are read from one
//! clock, the storage's (object `Last-Modified`, file mtime, the server's
//! `Date`), or `grace` must include the worst clock skew. `grace` is the
//! repository-wide GC grace period (hours, not seconds).
//!
//! **A backup (writer):**
//! 1. Writes its lease `{proxy, backup_id, started, expires}` before it
//!    looks at anything it may deduplicate against, and renews it
//!    (rewrites it with a later `expires`) well before it expires. If a
//!    renewal cannot be written before the current `expires`, the backup
//!    aborts: it never publishes an index after its lease has expired.
//! 2. Declares in its lease (a renewal listing the ids) every chunk it
//!    uploads, within `grace / 2` of the upload. Uploading an id that
//!    already exists is allowed and refreshes its upload time.
//! 3. References a chunk it did not upload itself (deduplication, or
//!    the unchanged chunks of its base point) only after declaring it in
//!    its lease, and then confirming that the chunk exists *after* the
//!    declaration was written, either with an upload time for which
//!    [`may_reuse`] holds, or at least [`reuse_wait`]`(grace)` after the
//!    declaration. Otherwise it uploads the chunk again.
//! 4. Publishes its index atomically (write once, under its final name),
//!    then deletes its lease.
//!
//! **A GC pass:**
//! 1. Takes `now`, then lists the leases, *then* the indexes, *then* the
//!    chunks with their upload times, and calls [`plan`]. If any index or
//!    lease cannot be read or decoded, the pass deletes nothing: a chunk
//!    referenced only by an unreadable index would otherwise be lost.
//! 2. Deletes only [`GcPlan::delete`], each delete conditional on the
//!    object still being the version it listed (S3: delete by version id
//!    or `If-Match` on the listed ETag; a file system: rename into a trash
//!    directory, re-check the upload time, move it back if it changed).
//! 3. Stops deleting once `now + `[`max_pass`]`(grace)` has passed; a new
//!    pass lists and plans again. It may delete the stale leases it was
//!    given, whose writers have aborted by rule 1.
//!
//! # Why it is safe
//!
//! Take a chunk X referenced by a published index or by a backup that will
//! publish. If the index was published before the pass listed the
//! indexes, rule 1 keeps X. Otherwise its writer's lease was live when the
//! pass listed the leases (the lease is deleted only after publishing,
//! and leases are listed before indexes), so X is kept if it had been
//! declared by then. It remains to look at an X declared after the pass
//! listed the leases, at `t_d > now`:
//! - X uploaded by the writer at `u`: declared within `grace / 2`, so
//!   `u > t_d - grace / 2 > now - grace`: rule 3 keeps it. A re-upload
//!   after the listing is a new version, which a conditional delete spares.
//! - X reused with `may_reuse` true at a check `t_h > t_d`: its upload
//!   time `u >= t_h - grace / 2 > now - grace / 2`, rule 3 keeps it.
//! - X reused after waiting `grace / 4` from `t_d`: every pass that listed
//!   leases before `t_d` has stopped deleting by `t_d + grace / 4`, so a
//!   chunk still there then stays, and later passes see the declaration.
//!
//! A crashed proxy's lease expires; its chunks are then garbage once
//! `grace` has passed since their upload, and the proxy, having missed
//! its renewal, never publishes an index naming them.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::index::BackupId;
use crate::object::{decode_blob, encode_blob, ObjectContext, ObjectKind};
use crate::Error;

/// Largest lease [`Lease::decode`] reads: 64 MiB (about a million ids).
pub const MAX_LEASE_LEN: usize = 64 << 20;

/// A stored chunk as listed: id and upload (last-modified) time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoredChunk {
    /// Its id.
    pub id: ChunkId,
    /// When it was (last) uploaded, unix seconds.
    pub uploaded: u64,
}

/// A backup lease: a writer's promise that it is alive, and the chunks it
/// is about to reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The proxy (host) running the backup.
    pub proxy: String,
    /// The point being written.
    pub backup_id: BackupId,
    /// When the lease was first written, unix seconds.
    pub started: u64,
    /// When it lapses unless renewed, unix seconds.
    pub expires: u64,
    /// Chunks the backup uploaded or is about to reuse.
    pub chunks: Vec<ChunkId>,
}

impl Lease {
    /// Whether the lease is live at `now`.
    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires
    }

    /// JSON form (to be sealed with [`encode_blob`]
    /// as [`ObjectKind::Lease`]).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Encodes and seals the lease as an [`ObjectKind::Lease`] object.
    pub fn seal(&self, ctx: &ObjectContext, nonce: [u8; 24]) -> Result<Vec<u8>, Error> {
        encode_blob(ObjectKind::Lease, &self.encode(), ctx, nonce)
    }

    /// Opens a lease object.
    pub fn open(bytes: &[u8], ctx: &ObjectContext) -> Result<Lease, Error> {
        Lease::decode(&decode_blob(bytes, ObjectKind::Lease, ctx, MAX_LEASE_LEN)?)
    }

    /// Parses a lease of at most [`MAX_LEASE_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Lease, Error> {
        if bytes.len() > MAX_LEASE_LEN {
            return Err(Error::TooLarge {
                what: "lease",
                size: bytes.len() as u64,
                max: MAX_LEASE_LEN as u64,
            });
        }
        let lease: Lease = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: "lease",
            message: e.to_string(),
        })?;
        if lease.expires < lease.started {
            return Err(Error::InvalidField {
                field: "lease expires",
                reason: "before started",
            });
        }
        Ok(lease)
    }
}

/// Why a stored chunk is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GcKeep {
    /// An index references it.
    Referenced,
    /// A live lease declares it.
    Leased {
        /// The backup holding the lease.
        backup_id: BackupId,
    },
    /// Uploaded less than `grace` ago (or in the future).
    Grace {
        /// When.
        uploaded: u64,
    },
}

/// What a GC pass may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// Chunks to delete (conditionally, see the module doc), sorted.
    pub delete: Vec<ChunkId>,
    /// Every other stored chunk, with the first reason that keeps it, sorted.
    pub keep: Vec<(ChunkId, GcKeep)>,
    /// Referenced by an index but not stored: the repository is damaged.
    pub missing: Vec<ChunkId>,
    /// Expired leases (their writers have aborted), which may be deleted.
    pub stale_leases: Vec<BackupId>,
}

/// Whether a writer may reference an existing chunk uploaded at
/// `uploaded`, confirmed at `now`, without waiting: the upload is younger
/// than `grace / 2` (or in the future).
pub fn may_reuse(uploaded: u64, now: u64, grace: u64) -> bool {
    now.saturating_sub(uploaded) < grace / 2
}

/// How long a writer waits between declaring an older chunk in its lease
/// and confirming it exists: `grace / 4`.
pub fn reuse_wait(grace: u64) -> u64 {
    grace / 4
}

/// How long after its `now` a GC pass may go on deleting: `grace / 4`.
pub fn max_pass(grace: u64) -> u64 {
    grace / 4
}

/// Plans a GC pass. `referenced` are the ids of every index listed,
/// `stored` the chunks listed, `leases` the leases listed; `now` is the
/// time taken before listing the leases. A `grace` of zero is refused:
/// without it a backup's fresh uploads are unprotected.
pub fn plan<'a>(
    referenced: impl IntoIterator<Item = &'a ChunkId>,
    stored: &[StoredChunk],
    leases: &[Lease],
    now: u64,
    grace: u64,
) -> Result<GcPlan, Error> {
    if grace == 0 {
        return Err(Error::InvalidField {
            field: "gc grace",
            reason: "must be positive",
        });
    }
    let referenced: HashSet<ChunkId> = referenced.into_iter().copied().collect();
    let mut leased: HashMap<ChunkId, BackupId> = HashMap::new();
    let mut stale_leases = Vec::new();
    for lease in leases {
        if lease.is_live(now) {
            for id in &lease.chunks {
                leased.entry(*id).or_insert(lease.backup_id);
            }
        } else {
            stale_leases.push(lease.backup_id);
        }
    }
    let mut plan = GcPlan {
        stale_leases,
        ..GcPlan::default()
    };
    let mut seen: HashSet<ChunkId> = HashSet::with_capacity(stored.len());
    // A chunk listed twice (two versions) is judged by its newest upload.
    let mut newest: HashMap<ChunkId, u64> = HashMap::with_capacity(stored.len());
    for s in stored {
        let e = newest.entry(s.id).or_insert(s.uploaded);
        *e = (*e).max(s.uploaded);
    }
    for s in stored {
        if !seen.insert(s.id) {
            continue;
        }
        let uploaded = newest[&s.id];
        let reason = if referenced.contains(&s.id) {
            Some(GcKeep::Referenced)
        } else if let Some(&backup_id) = leased.get(&s.id) {
            Some(GcKeep::Leased { backup_id })
        } else if uploaded.saturating_add(grace) > now {
            Some(GcKeep::Grace { uploaded })
        } else {
            None
        };
        match reason {
            Some(r) => plan.keep.push((s.id, r)),
            None => plan.delete.push(s.id),
        }
    }
    plan.missing = referenced
        .iter()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    plan.delete.sort_unstable();
    plan.keep.sort_unstable_by_key(|k| k.0);
    plan.missing.sort_unstable();
    plan.stale_leases.sort_unstable();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn stored(n: u8, uploaded: u64) -> StoredChunk {
        StoredChunk {
            id: id(n),
            uploaded,
        }
    }

    fn lease(b: u8, expires: u64, chunks: &[u8]) -> Lease {
        Lease {
            proxy: format!("proxy{b}"),
            backup_id: BackupId::new(1, [b; 16]),
            started: 0,
            expires,
            chunks: chunks.iter().map(|&n| id(n)).collect(),
        }
    }

    const NOW: u64 = 100_000;
    const GRACE: u64 = 7200;

    #[test]
    fn the_four_cases() {
        let old = NOW - GRACE;
        let s = [
            stored(1, 0),        // referenced
            stored(2, 0),        // declared by a live lease
            stored(3, NOW - 10), // fresh upload
            stored(4, old),      // exactly grace old, unreferenced: deleted
            stored(5, 0),        // declared by an expired lease: deleted
            stored(6, old + 1),  // just inside the grace period
            stored(7, NOW + 50), // uploaded "in the future": kept
            stored(8, old - 1),  // plain garbage
        ];
        let leases = [lease(1, NOW + 60, &[2]), lease(2, NOW, &[5])];
        let p = plan(&[id(1), id(9)], &s, &leases, NOW, GRACE).unwrap();
        assert_eq!(p.delete, vec![id(4), id(5), id(8)]);
        assert_eq!(
            p.keep,
            vec![
                (id(1), GcKeep::Referenced),
                (
                    id(2),
                    GcKeep::Leased {
                        backup_id: BackupId::new(1, [1; 16])
                    }
                ),
                (id(3), GcKeep::Grace { uploaded: NOW - 10 }),
                (id(6), GcKeep::Grace { uploaded: old + 1 }),
                (id(7), GcKeep::Grace { uploaded: NOW + 50 }),
            ]
        );
        assert_eq!(p.missing, vec![id(9)]);
        assert_eq!(p.stale_leases, vec![BackupId::new(1, [2; 16])]);
    }

    #[test]
    fn duplicates_judged_by_newest_version() {
        let p = plan(&[], &[stored(1, 0), stored(1, NOW - 1)], &[], NOW, GRACE).unwrap();
        assert!(p.delete.is_empty());
        assert_eq!(p.keep, vec![(id(1), GcKeep::Grace { uploaded: NOW - 1 })]);
    }

    #[test]
    fn zero_grace_refused_and_helpers() {
        assert!(matches!(
            plan(&[], &[], &[], NOW, 0),
            Err(Error::InvalidField {
                field: "gc grace",
                ..
            })
        ));
        assert!(may_reuse(NOW - GRACE / 2 + 1, NOW, GRACE));
        assert!(!may_reuse(NOW - GRACE / 2, NOW, GRACE));
        assert!(may_reuse(NOW + 5, NOW, GRACE));
        assert_eq!(reuse_wait(GRACE), 1800);
        assert_eq!(max_pass(GRACE), 1800);
    }

    #[test]
    fn lease_round_trip_and_refusals() {
        let l = lease(3, 500, &[1, 2]);
        let b = l.encode();
        assert_eq!(Lease::decode(&b).unwrap(), l);
        let text = String::from_utf8(b).unwrap();
        assert!(text.contains(&id(1).to_string()));
        let bad = text.replace("\"expires\":500", "\"expires\":0");
        let bad = bad.replace("\"started\":0", "\"started\":10");
        assert!(matches!(
            Lease::decode(bad.as_bytes()),
            Err(Error::InvalidField { .. })
        ));
        assert!(matches!(Lease::decode(b"{}"), Err(Error::Json { .. })));
        assert!(matches!(
            Lease::decode(&vec![b' '; MAX_LEASE_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
        let c = crate::RepoConfig::new([3; 16], 65536, Some(3), crate::Encryption::None).unwrap();
        let ctx = ObjectContext::new(&c, None).unwrap();
        let sealed = l.seal(&ctx, [0; 24]).unwrap();
        assert_eq!(Lease::open(&sealed, &ctx).unwrap(), l);
        assert!(matches!(
            crate::BackupIndex::open(&sealed, &ctx, 65536),
            Err(Error::WrongKind {
                expected: 2,
                found: 3
            })
        ));
        assert!(l.is_live(499));
        assert!(!l.is_live(500));
    }

    /// Replays the writer/GC protocol of the module doc in virtual time:
    /// a writer declares and confirms a reused chunk while a GC pass lists
    /// before the declaration. The pass must not delete it.
    #[test]
    fn reuse_after_wait_is_safe_against_a_concurrent_pass() {
        // An old, unreferenced chunk X.
        let x = stored(1, 0);
        // The pass takes now and lists leases before the writer declares X.
        let pass_now = NOW;
        let p = plan(&[], &[x], &[], pass_now, GRACE).unwrap();
        assert_eq!(p.delete, vec![id(1)]); // this pass may delete it …
                                           // … but only until pass_now + max_pass. The writer declared X at
                                           // t_d > pass_now and confirms at t_d + reuse_wait, by which time
                                           // this pass has stopped; X is either gone (re-upload) or stays.
        let t_d = pass_now + 1;
        assert!(t_d + reuse_wait(GRACE) >= pass_now + max_pass(GRACE));
        // A later pass sees the declaration and keeps X.
        let later = plan(&[], &[x], &[lease(1, t_d + 600, &[1])], t_d + 10, GRACE).unwrap();
        assert!(later.delete.is_empty());
    }

    proptest! {
        #[test]
        fn plan_obeys_the_rules(
            refs in prop::collection::vec(0u8..20, 0..10),
            chunks in prop::collection::vec((0u8..20, 0u64..20_000), 0..30),
            leases in prop::collection::vec((0u8..4, 0u64..20_000, prop::collection::vec(0u8..20, 0..5)), 0..4),
            now in 0u64..20_000,
            grace in 1u64..10_000,
        ) {
            let referenced: Vec<ChunkId> = refs.iter().map(|&n| id(n)).collect();
            let stored: Vec<StoredChunk> = chunks.iter().map(|&(n, t)| stored(n, t)).collect();
            let leases: Vec<Lease> = leases.iter().map(|(b, e, c)| lease(*b, *e, c)).collect();
            let p = plan(&referenced, &stored, &leases, now, grace).unwrap();
            for d in &p.delete {
                prop_assert!(!referenced.contains(d));
                prop_assert!(!leases.iter().any(|l| l.is_live(now) && l.chunks.contains(d)));
                prop_assert!(stored.iter().filter(|s| s.id == *d).all(|s| s.uploaded + grace <= now));
            }
            // Every stored id is decided exactly once.
            let mut all: Vec<ChunkId> = p.delete.iter().copied().chain(p.keep.iter().map(|k| k.0)).collect();
            all.sort();
            let mut ids: Vec<ChunkId> = stored.iter().map(|s| s.id).collect();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(all, ids);
            // Whatever is kept has a true reason.
            for (c, why) in &p.keep {
                match why {
                    GcKeep::Referenced => prop_assert!(referenced.contains(c)),
                    GcKeep::Leased { backup_id } => prop_assert!(leases.iter().any(|l| l.backup_id == *backup_id && l.is_live(now) && l.chunks.contains(c))),
                    GcKeep::Grace { uploaded } => prop_assert!(uploaded + grace > now),
                }
            }
        }
    }
}
