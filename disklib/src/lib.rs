//! # disklib
//!
//! The kit's VixDiskLib-style library. This release holds the local
//! engine: open a VMDK of any variant (descriptor or monolithic file)
//! with its snapshot chain, read it concurrently from many threads, and
//! map what each byte range holds. Remote transports (nbd, nbdssl, san,
//! hotadd) and the VixDiskLib-shaped connection API build on it.
//!
//! Safety rules the engine keeps:
//! - extent and parent paths stay inside the directory of the descriptor
//!   naming them unless [`local::OpenOptions::allow_outside_paths`] is set;
//! - a chain whose `parentCID` does not match is refused unless
//!   [`local::OpenOptions::ignore_cid_mismatch`] is set; depth is bounded
//!   and loops are detected;
//! - reads that cannot be satisfied fail with a typed [`Error`]; they never
//!   return zeros where data was expected;
//! - table and grain caches have fixed byte budgets.

#![deny(missing_docs)]

pub mod api;
pub mod backup;
mod cache;
pub mod check;
pub mod convert;
pub mod create;
mod error;
pub mod local;
pub mod maintain;
pub mod repair;
mod stream;
mod write;

pub use error::{vix, Error, Result};
