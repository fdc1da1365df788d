//! # disklib
//!
//! The kit's VixDiskLib-style library: an InitEx-style configuration,
//! connections (local, or a vCenter / ESXi host with a password or a
//! session cookie), transport selection by list with fallback at open
//! (`file`, `san`, `hotadd`, `nbdssl`, `nbd`), disks with sync and async
//! I/O, info, metadata and allocated-block queries, PrepareForAccess /
//! EndAccess, VixDiskLib error codes for every error ([`api`]); and the
//! backup job: full, incremental and differential backups with CBT into a
//! repository, restore of any point, verify, any point read in place
//! ([`backup`]); guest volumes and files of any of those disks
//! ([`guest`]).
//!
//! Local VMDK files are `vmdk-file`'s (open, read, write, create,
//! convert, snapshot, check, repair); the transports are
//! `transport-nbd`, `transport-san` and `transport-hotadd`; vSphere calls
//! are `vim-soap`'s. This crate composes them.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
pub mod backup;
mod error;
pub mod guest;

pub use error::{vix, Error, Result};
