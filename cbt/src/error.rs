//! The one error type of the crate.

use crate::extent::Extent;

/// Everything `cbt` can refuse: a change id that does not parse, paged
/// `QueryChangedDiskAreas` answers that do not assemble, a backup or
/// restore plan that cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // Change ids (`ChangeId::from_str`).
    /// No `/` separates the UUID from the sequence number.
    #[error("change id has no `/sequence` part")]
    ChangeIdNoSequence,
    /// The sequence number is not a decimal u64.
    #[error("change id sequence is not a number")]
    ChangeIdBadSequence,
    /// The UUID part is not 16 hex pairs separated by spaces or one dash.
    #[error("change id UUID is not 16 hex pairs")]
    ChangeIdBadUuid,
    /// Longer than any real change id.
    #[error("change id too long")]
    ChangeIdTooLong,

    // Paged answers (`ChangeAssembler`).
    /// A window starts after the previous one ended: bytes unaccounted for.
    #[error("gap: expected a window at {expected}, got one at {got}")]
    Gap {
        /// Where the next window had to start.
        expected: u64,
        /// Where it started.
        got: u64,
    },
    /// A window starts before the previous one ended.
    #[error("overlap: expected a window at {expected}, got one at {got}")]
    Overlap {
        /// Where the next window had to start.
        expected: u64,
        /// Where it started.
        got: u64,
    },
    /// A window of length 0 before the capacity is reached would loop forever.
    #[error("empty window at {0} before the end of the disk")]
    EmptyWindow(u64),
    /// A changed area lies (partly) outside its window.
    #[error("changed area {area:?} outside its window {window:?}")]
    AreaOutsideWindow {
        /// The area.
        area: Extent,
        /// The window.
        window: Extent,
    },
    /// Changed areas of one window overlap or are out of order.
    #[error("changed area {area:?} overlaps or precedes the previous one")]
    AreasOutOfOrder {
        /// The offending area.
        area: Extent,
    },
    /// A window or area ends past the capacity.
    #[error("window or area ends at {end}, past the capacity of {capacity}")]
    PastCapacity {
        /// Where it ends.
        end: u64,
        /// The capacity.
        capacity: u64,
    },
    /// An answer arrived after the capacity was already reached.
    #[error("answer after the end of the disk")]
    AfterEnd,
    /// `finish` was called before the whole disk was answered for.
    #[error("incomplete: answers cover {covered} of {capacity} bytes")]
    Incomplete {
        /// Bytes answered for.
        covered: u64,
        /// The capacity.
        capacity: u64,
    },

    // Plans (`Catalog`).
    /// No full backup to build on: take a full backup.
    #[error("no full backup in the catalog: take a full backup")]
    NoFullBackup,
    /// The requested backup is not in the catalog.
    #[error("backup {0} is not in the catalog")]
    UnknownBackup(u64),
    /// Two backups share an id.
    #[error("backup id {0} appears twice")]
    DuplicateId(u64),
    /// A backup's base is missing (a lost incremental breaks the chain).
    #[error("backup {backup} is based on backup {base}, which is missing")]
    MissingBase {
        /// The backup.
        backup: u64,
        /// Its missing base.
        base: u64,
    },
    /// A backup and its base belong to different CBT epochs (CBT was reset
    /// in between, so the changes since the base are unknown).
    #[error(
        "backup {backup} and its base {base} belong to different CBT epochs: take a full backup"
    )]
    EpochChanged {
        /// The later backup (or 0 when planning the next one).
        backup: u64,
        /// The base.
        base: u64,
    },
    /// The current change id is older than the base's.
    #[error("current change id is older than backup {base}'s")]
    ChangeIdWentBack {
        /// The base.
        base: u64,
    },
    /// A differential whose base is not a full backup.
    #[error("differential backup {backup} is based on {base}, which is not a full backup")]
    BaseNotFull {
        /// The differential.
        backup: u64,
        /// Its base.
        base: u64,
    },
    /// A full backup with a base, or an incremental/differential without.
    #[error("backup {0} has a base that contradicts its kind")]
    BadBase(u64),
    /// A base taken after the backup built on it.
    #[error("backup {backup} is older than its base {base}")]
    BaseInFuture {
        /// The backup.
        backup: u64,
        /// Its base.
        base: u64,
    },
    /// Following bases never reaches a full backup.
    #[error("the chain of backup {0} loops")]
    ChainLoop(u64),
    /// A backup stores bytes past the disk's capacity.
    #[error("backup {0} stores bytes past the disk's capacity")]
    OutsideCapacity(u64),
}
