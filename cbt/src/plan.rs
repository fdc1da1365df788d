//! Backup and restore planning over a catalog of backups of one disk.
//!
//! Each backup records what it stored (byte extents), the change id of
//! the snapshot it captured, and its base: none for a full backup, the
//! previous backup for an incremental, the last full for a differential.
//! Restoring a backup replays its chain, newest data winning.
//!
//! ```
//! use cbt::*;
//! let epoch = [7u8; 16];
//! let mut cat = Catalog::new(1 << 20);
//! cat.backups.push(BackupRecord::full(1, ChangeId::new(epoch, 1), 100, ExtentList::from_unsorted(vec![Extent::new(0, 8192)])));
//! cat.backups.push(BackupRecord::incremental(2, 1, ChangeId::new(epoch, 2), 200, ExtentList::from_unsorted(vec![Extent::new(4096, 8192)])));
//!
//! // The next incremental asks for changes since backup 2's change id.
//! let plan = cat.plan_next(BackupKind::Incremental, &ChangeId::new(epoch, 3))?;
//! assert_eq!(plan.since, ChangeId::new(epoch, 2));
//! // CBT reset (new epoch): a full backup is required.
//! assert!(matches!(cat.plan_next(BackupKind::Incremental, &ChangeId::new([9; 16], 1)), Err(Error::EpochChanged { .. })));
//!
//! let r = cat.restore_plan(2)?;
//! assert_eq!(r.reads, vec![
//!     RestoreRead { backup: 1, extent: Extent::new(0, 4096) },
//!     RestoreRead { backup: 2, extent: Extent::new(4096, 8192) },
//! ]);
//! assert_eq!(r.holes.as_slice(), &[Extent::from_bounds(12288, 1 << 20)]);
//! # Ok::<(), cbt::Error>(())
//! ```

use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Reverse;

use crate::change_id::ChangeId;
use crate::extent::{Extent, ExtentList};
use crate::Error;

/// The three kinds of backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackupKind {
    /// Everything allocated.
    Full,
    /// What changed since the previous backup of any kind.
    Incremental,
    /// What changed since the last full backup.
    Differential,
}

/// One backup in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupRecord {
    /// Unique id.
    pub id: u64,
    /// Kind.
    pub kind: BackupKind,
    /// The backup this one is relative to (none for a full backup).
    pub base: Option<u64>,
    /// Change id of the snapshot this backup captured.
    pub change_id: ChangeId,
    /// When it was taken (seconds; supplied by the caller).
    pub time: u64,
    /// Byte ranges stored in this backup.
    pub extents: ExtentList,
}

impl BackupRecord {
    /// A full backup.
    pub fn full(id: u64, change_id: ChangeId, time: u64, extents: ExtentList) -> Self {
        Self {
            id,
            kind: BackupKind::Full,
            base: None,
            change_id,
            time,
            extents,
        }
    }
    /// An incremental backup relative to `base`.
    pub fn incremental(
        id: u64,
        base: u64,
        change_id: ChangeId,
        time: u64,
        extents: ExtentList,
    ) -> Self {
        Self {
            id,
            kind: BackupKind::Incremental,
            base: Some(base),
            change_id,
            time,
            extents,
        }
    }
    /// A differential backup relative to the full backup `base`.
    pub fn differential(
        id: u64,
        base: u64,
        change_id: ChangeId,
        time: u64,
        extents: ExtentList,
    ) -> Self {
        Self {
            id,
            kind: BackupKind::Differential,
            base: Some(base),
            change_id,
            time,
            extents,
        }
    }
}

/// What the next backup must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupPlan {
    /// Kind of the next backup.
    pub kind: BackupKind,
    /// Its base (none for full).
    pub base: Option<u64>,
    /// The change id to pass to `QueryChangedDiskAreas` (`*` for full).
    pub since: ChangeId,
}

/// One read of a restore: bytes `extent` come from backup `backup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreRead {
    /// Backup id.
    pub backup: u64,
    /// Byte range of the disk.
    pub extent: Extent,
}

/// What a restore reads, from where; `holes` are never stored anywhere in
/// the chain and stay holes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePlan {
    /// Reads in ascending offset order, coalesced per backup.
    pub reads: Vec<RestoreRead>,
    /// Byte ranges no backup of the chain stores.
    pub holes: ExtentList,
}

/// The catalog of one disk's backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    /// Disk capacity in bytes.
    pub capacity: u64,
    /// Backups, oldest first.
    pub backups: Vec<BackupRecord>,
}

impl Catalog {
    /// An empty catalog for a disk of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            backups: Vec::new(),
        }
    }

    fn get(&self, id: u64) -> Option<&BackupRecord> {
        self.backups.iter().find(|b| b.id == id)
    }

    /// Checks every record: unique ids, bases present and consistent,
    /// epochs unbroken, extents inside the capacity.
    pub fn validate(&self) -> Result<(), Error> {
        let mut ids: Vec<u64> = self.backups.iter().map(|b| b.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::DuplicateId(w[0]));
        }
        for b in &self.backups {
            self.chain(b.id)?;
        }
        Ok(())
    }

    /// The chain that restores backup `id`: its full backup first, `id`
    /// last.
    pub fn chain(&self, id: u64) -> Result<Vec<&BackupRecord>, Error> {
        let mut out = Vec::new();
        let mut cur = self.get(id).ok_or(Error::UnknownBackup(id))?;
        loop {
            if out.len() > self.backups.len() {
                return Err(Error::ChainLoop(id));
            }
            if cur
                .extents
                .as_slice()
                .last()
                .is_some_and(|e| e.end() > self.capacity)
            {
                return Err(Error::OutsideCapacity(cur.id));
            }
            out.push(cur);
            let base_id = match (cur.kind, cur.base) {
                (BackupKind::Full, None) => break,
                (BackupKind::Full, Some(_)) | (_, None) => return Err(Error::BadBase(cur.id)),
                (_, Some(b)) => b,
            };
            let base = self.get(base_id).ok_or(Error::MissingBase {
                backup: cur.id,
                base: base_id,
            })?;
            if cur.kind == BackupKind::Differential && base.kind != BackupKind::Full {
                return Err(Error::BaseNotFull {
                    backup: cur.id,
                    base: base_id,
                });
            }
            if !cur.change_id.same_epoch(&base.change_id) {
                return Err(Error::EpochChanged {
                    backup: cur.id,
                    base: base_id,
                });
            }
            if base.time > cur.time {
                return Err(Error::BaseInFuture {
                    backup: cur.id,
                    base: base_id,
                });
            }
            cur = base;
        }
        out.reverse();
        Ok(out)
    }

    /// What the next backup of `kind` must ask for, given the change id
    /// of the snapshot about to be read.
    pub fn plan_next(&self, kind: BackupKind, current: &ChangeId) -> Result<BackupPlan, Error> {
        let base = match kind {
            BackupKind::Full => {
                return Ok(BackupPlan {
                    kind,
                    base: None,
                    since: ChangeId::All,
                })
            }
            BackupKind::Incremental => self.backups.last().ok_or(Error::NoFullBackup)?,
            BackupKind::Differential => self
                .backups
                .iter()
                .rev()
                .find(|b| b.kind == BackupKind::Full)
                .ok_or(Error::NoFullBackup)?,
        };
        self.chain(base.id)?;
        if !current.same_epoch(&base.change_id) {
            return Err(Error::EpochChanged {
                backup: 0,
                base: base.id,
            });
        }
        if current < &base.change_id {
            return Err(Error::ChangeIdWentBack { base: base.id });
        }
        Ok(BackupPlan {
            kind,
            base: Some(base.id),
            since: base.change_id.clone(),
        })
    }

    /// Which backup supplies each byte of backup `id`'s point in time:
    /// the newest backup of its chain that stores it.
    pub fn restore_plan(&self, id: u64) -> Result<RestorePlan, Error> {
        let chain = self.chain(id)?;
        let lists: Vec<&[Extent]> = chain.iter().map(|b| b.extents.as_slice()).collect();
        let mut reads: Vec<RestoreRead> = Vec::new();
        // Merge the per-backup lists (each sorted) by start: a heap of
        // list heads, so the work is O(n log k) for n extents in k lists.
        let mut heads: BinaryHeap<Reverse<(u64, usize, usize)>> = lists
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(k, l)| Reverse((l[0].start, k, 0)))
            .collect();
        // Active extents by priority (newer chain position wins), with their end.
        let mut active: BinaryHeap<(usize, u64)> = BinaryHeap::new();
        let mut pos = 0u64;
        loop {
            if active.is_empty() {
                match heads.peek() {
                    Some(Reverse((start, _, _))) => pos = pos.max(*start),
                    None => break,
                }
            }
            while let Some(&Reverse((start, k, i))) = heads.peek() {
                if start > pos {
                    break;
                }
                heads.pop();
                active.push((k, lists[k][i].end()));
                if let Some(next) = lists[k].get(i + 1) {
                    heads.push(Reverse((next.start, k, i + 1)));
                }
            }
            while active.peek().is_some_and(|&(_, end)| end <= pos) {
                active.pop();
            }
            let Some(&(k, end)) = active.peek() else {
                continue;
            };
            let next_start = heads.peek().map_or(u64::MAX, |Reverse((s, _, _))| *s);
            let seg_end = end.min(next_start);
            let backup = chain[k].id;
            match reads.last_mut() {
                Some(last) if last.backup == backup && last.extent.end() == pos => {
                    last.extent = Extent::from_bounds(last.extent.start, seg_end)
                }
                _ => reads.push(RestoreRead {
                    backup,
                    extent: Extent::from_bounds(pos, seg_end),
                }),
            }
            pos = seg_end;
        }
        let covered = ExtentList::from_sorted(reads.iter().map(|r| r.extent));
        Ok(RestorePlan {
            holes: covered.complement(self.capacity),
            reads,
        })
    }
}

/// Read requests for a changed (or allocated) set: clipped to the
/// capacity, expanded to whole `block`s, clipped again, cut into requests
/// of at most `max_request` bytes.
pub fn read_requests(
    changed: &ExtentList,
    capacity: u64,
    block: u64,
    max_request: u64,
) -> Vec<Extent> {
    changed
        .clip(capacity)
        .align(block)
        .clip(capacity)
        .split(max_request)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn l(v: &[(u64, u64)]) -> ExtentList {
        ExtentList::from_unsorted(v.iter().map(|&(s, n)| Extent::new(s, n)).collect())
    }
    const E: [u8; 16] = [0x52; 16];
    fn id(seq: u64) -> ChangeId {
        ChangeId::new(E, seq)
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::new(1000);
        c.backups
            .push(BackupRecord::full(1, id(1), 10, l(&[(0, 100), (500, 100)])));
        c.backups
            .push(BackupRecord::incremental(2, 1, id(2), 20, l(&[(50, 100)])));
        c.backups.push(BackupRecord::differential(
            3,
            1,
            id(3),
            30,
            l(&[(50, 100), (550, 10)]),
        ));
        c.backups.push(BackupRecord::incremental(
            4,
            3,
            id(4),
            40,
            l(&[(0, 10), (590, 50)]),
        ));
        c
    }

    #[test]
    fn plans() {
        let c = catalog();
        c.validate().unwrap();
        assert_eq!(
            c.plan_next(BackupKind::Full, &id(5)).unwrap().since,
            ChangeId::All
        );
        let p = c.plan_next(BackupKind::Incremental, &id(5)).unwrap();
        assert_eq!((p.base, p.since), (Some(4), id(4)));
        let p = c.plan_next(BackupKind::Differential, &id(5)).unwrap();
        assert_eq!((p.base, p.since), (Some(1), id(1)));
        assert_eq!(
            c.plan_next(BackupKind::Incremental, &id(3)),
            Err(Error::ChangeIdWentBack { base: 4 })
        );
        assert_eq!(
            c.plan_next(BackupKind::Incremental, &ChangeId::new([1; 16], 1)),
            Err(Error::EpochChanged { backup: 0, base: 4 })
        );
        assert_eq!(
            Catalog::new(10).plan_next(BackupKind::Incremental, &id(1)),
            Err(Error::NoFullBackup)
        );
        assert_eq!(
            Catalog::new(10).plan_next(BackupKind::Differential, &id(1)),
            Err(Error::NoFullBackup)
        );
    }

    #[test]
    fn restore_newest_wins() {
        let c = catalog();
        let r = c.restore_plan(4).unwrap();
        let got: Vec<(u64, u64, u64)> = r
            .reads
            .iter()
            .map(|x| (x.backup, x.extent.start, x.extent.len))
            .collect();
        assert_eq!(
            got,
            vec![
                (4, 0, 10),
                (1, 10, 40),
                (3, 50, 100),
                (1, 500, 50),
                (3, 550, 10),
                (1, 560, 30),
                (4, 590, 50)
            ]
        );
        assert_eq!(r.holes, l(&[(150, 350), (640, 360)]));
        // The incremental 2 is not in backup 3's chain (differential).
        let r = c.restore_plan(3).unwrap();
        assert!(r.reads.iter().all(|x| x.backup != 2));
        let r = c.restore_plan(2).unwrap();
        assert_eq!(
            r.reads[1],
            RestoreRead {
                backup: 2,
                extent: Extent::new(50, 100)
            }
        );
        assert_eq!(c.restore_plan(9), Err(Error::UnknownBackup(9)));
    }

    #[test]
    fn broken_chains() {
        // A missing incremental.
        let mut c = catalog();
        c.backups.remove(2);
        assert_eq!(
            c.restore_plan(4),
            Err(Error::MissingBase { backup: 4, base: 3 })
        );
        assert_eq!(c.validate(), Err(Error::MissingBase { backup: 4, base: 3 }));
        assert_eq!(
            c.plan_next(BackupKind::Incremental, &id(9)),
            Err(Error::MissingBase { backup: 4, base: 3 })
        );
        // An epoch change inside the chain.
        let mut c = catalog();
        c.backups[3].change_id = ChangeId::new([1; 16], 4);
        assert_eq!(
            c.restore_plan(4),
            Err(Error::EpochChanged { backup: 4, base: 3 })
        );
        // A differential on an incremental.
        let mut c = catalog();
        c.backups[2].base = Some(2);
        assert_eq!(c.validate(), Err(Error::BaseNotFull { backup: 3, base: 2 }));
        // Kind and base disagree.
        let mut c = catalog();
        c.backups[0].base = Some(4);
        assert_eq!(c.validate(), Err(Error::BadBase(1)));
        let mut c = catalog();
        c.backups[1].base = None;
        assert_eq!(c.validate(), Err(Error::BadBase(2)));
        // Loops, duplicates, time travel, capacity.
        let mut c = catalog();
        c.backups[0] = BackupRecord::incremental(1, 4, id(1), 10, l(&[]));
        assert_eq!(
            c.restore_plan(4),
            Err(Error::BaseNotFull { backup: 3, base: 1 })
        );
        let mut c = catalog();
        c.backups[1].id = 1;
        assert_eq!(c.validate(), Err(Error::DuplicateId(1)));
        let mut c = catalog();
        c.backups[0].time = 999;
        assert_eq!(
            c.restore_plan(2),
            Err(Error::BaseInFuture { backup: 2, base: 1 })
        );
        let mut c = catalog();
        c.backups[1].extents = l(&[(990, 20)]);
        assert_eq!(c.restore_plan(2), Err(Error::OutsideCapacity(2)));
    }

    #[test]
    fn loop_without_time_travel() {
        let mut c = Catalog::new(100);
        c.backups
            .push(BackupRecord::incremental(1, 2, id(1), 10, l(&[])));
        c.backups
            .push(BackupRecord::incremental(2, 1, id(1), 10, l(&[])));
        assert_eq!(c.restore_plan(1), Err(Error::ChainLoop(1)));
    }

    #[test]
    fn requests() {
        let r = read_requests(&l(&[(10, 5), (4000, 10), (9000, 5000)]), 10_000, 4096, 4096);
        assert_eq!(r, vec![Extent::new(0, 4096), Extent::new(8192, 1808)]);
    }
}
