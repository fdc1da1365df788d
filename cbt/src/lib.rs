//! # cbt
//!
//! The no-I/O brain of incremental backup: byte-range arithmetic on
//! normalised extent lists, vSphere change ids, assembly of paged
//! `QueryChangedDiskAreas` answers, and backup / restore planning over a
//! catalog of full, incremental and differential backups.
//!
//! It does not talk to vSphere, read disks or keep a catalog on disk;
//! callers feed it what they got and act on what it plans. It depends on
//! no other crate of the kit.
//!
//! ## Modules
//! - [`extent`]: [`Extent`] and the normalised [`ExtentList`] (sorted,
//!   coalesced, non-overlapping), with linear-time set operations.
//! - [`bitmap`]: a granular allocation bitmap, to and from extent lists.
//! - [`change_id`]: parse, print and compare change ids.
//! - [`assemble`]: `QueryChangedDiskAreas` pages to one changed set.
//! - [`plan`]: what the next backup must read, and what a restore reads
//!   from which backup.
//!
//! Every refusal is one [`Error`].
//!
//! ## Example
//!
//! ```
//! use cbt::{Extent, ExtentList};
//!
//! let a = ExtentList::from_unsorted(vec![Extent::new(0, 10), Extent::new(5, 10), Extent::new(40, 8)]);
//! assert_eq!(a.as_slice(), &[Extent::new(0, 15), Extent::new(40, 8)]);
//! let b = ExtentList::from_unsorted(vec![Extent::new(10, 35)]);
//! assert_eq!(a.intersection(&b).as_slice(), &[Extent::new(10, 5), Extent::new(40, 5)]);
//! // Read requests of at most 8 bytes, aligned to 4-byte blocks, inside 46 bytes.
//! let reads: Vec<_> = a.align(4).clip(46).split(8).collect();
//! assert_eq!(reads, [Extent::new(0, 8), Extent::new(8, 8), Extent::new(40, 6)]);
//! ```

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

extern crate alloc;

pub mod assemble;
pub mod bitmap;
pub mod change_id;
mod error;
pub mod extent;
pub mod plan;

pub use assemble::{ChangeAssembler, DiskChangeInfo};
pub use bitmap::AllocationBitmap;
pub use change_id::ChangeId;
pub use error::Error;
pub use extent::{Extent, ExtentList};
pub use plan::{BackupKind, BackupPlan, BackupRecord, Catalog, RestorePlan, RestoreRead};

/// Bytes per sector in sector conversions.
pub const SECTOR: u64 = 512;
