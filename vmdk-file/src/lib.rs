//! # vmdk-file
//!
//! Local VMDK files, every variant: open a descriptor or monolithic file
//! with its snapshot chain, read it concurrently from many threads, write
//! it, map what each byte range holds, and create, convert, snapshot,
//! commit, grow, compact, rename, delete, check and repair disks. The
//! format itself (headers, descriptors, grain tables, markers, mapping)
//! is [`vmdk_format`]'s, which does no I/O; this crate does the file I/O
//! around it and nothing else: no network, no vSphere, no VixDiskLib
//! vocabulary (that is `disklib`, above it).
//!
//! Safety rules the engine keeps:
//! - extent and parent paths stay inside the directory of the descriptor
//!   naming them unless [`local::OpenOptions::allow_outside_paths`] is set
//!   (an absolute path that lies inside the directory is inside, and is
//!   opened beneath it like a relative one);
//! - a chain whose `parentCID` does not match is refused unless
//!   [`local::OpenOptions::ignore_cid_mismatch`] is set; depth is bounded
//!   and loops are detected;
//! - reads that cannot be satisfied fail with a typed [`Error`]; they never
//!   return zeros where data was expected;
//! - table and grain caches have fixed byte budgets;
//! - writes order grains before tables before directories and headers,
//!   and `flush` syncs them, so a crash leaves a readable image; a new
//!   grain of a snapshot is synced before its table entry;
//! - a disk is created, renamed, compacted or committed so that a power
//!   cut leaves it whole under one name, and what returned is durable
//!   (files synced, then their directory);
//! - every change to the file system goes through an [`io::Storage`]
//!   (the operating system's by default), so tests can record the
//!   changes and replay the states a power cut could leave.
//!
//! Features: `__crash-test` (testing only, no stability promise) adds
//! `io::crash`, the recorder and replayer of those states.
//!
//! ```no_run
//! use vmdk_file::create::{create, CreateOptions, DiskType};
//! use vmdk_file::local::{LocalDisk, OpenOptions};
//!
//! let path = std::path::Path::new("new.vmdk");
//! create(path, &CreateOptions::new(DiskType::MonolithicSparse, 1 << 30))?;
//! let disk = LocalDisk::open(path, &OpenOptions::default())?;
//! let mut buf = vec![0u8; 4096];
//! disk.read_at(0, &mut buf)?;
//! assert!(buf.iter().all(|&b| b == 0));
//! # Ok::<(), vmdk_file::Error>(())
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cache;
pub mod check;
pub mod convert;
pub mod create;
mod error;
pub mod io;
pub mod local;
pub mod maintain;
mod map;
mod paths;
pub mod repair;
mod stream;
mod write;

pub use error::{Error, Result};
pub use write::{replace_file, replace_file_in};
