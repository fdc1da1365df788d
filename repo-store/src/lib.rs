//! # repo-store
//!
//! Repository format 2 ([`repo_format`]) over real storage: a local
//! directory (or an S3-compatible bucket, in `repo-s3`) behind the small
//! [`Store`] trait,
//! and the repository engine on top of it: many writers at once, backup
//! points read in place, verify, prune and garbage collection.
//!
//! The format crate decides the bytes; this crate does the I/O (through
//! a [`Store`]), reads clocks and draws random bytes.

#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

mod error;
pub mod local;
pub mod maint;
pub mod reader;
pub mod repo;
pub mod store;
pub mod writer;

pub use error::{Error, Result};
pub use local::LocalDir;
pub use maint::{BadChunk, GcReport, PruneOutcome, VerifyReport, DEFAULT_GRACE};
pub use reader::{PointReader, Run};
pub use repo::{InitEncryption, InitOptions, PointDisk, Repository, Unlock};
pub use store::{check_key, MemStore, ObjectInfo, PutOutcome, Store};
pub use writer::{BackupWriter, Finish, WriterOptions};
