//! # repo-s3
//!
//! S3-compatible object storage for [`repo_store`] repositories, and the
//! repository URLs the command line takes (`/path`, `file:///path`,
//! `s3://bucket/prefix`).
//!
//! A crate of its own so that `repo-store`, and everything above it that
//! does not need object storage (the drop-in `libvixDiskLib.so` among
//! them), does not carry the HTTP and AWS stack.

#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

pub mod s3;
mod url;

pub use crate::url::open_store;
pub use s3::{S3Config, S3Store};
