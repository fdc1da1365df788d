//! # repo-format
//!
//! The no-I/O core of repository format 2: a deduplicated, compressed,
//! optionally encrypted backup repository that many proxies share, on a
//! file system or an object store.
//!
//! This crate defines the bytes and the decisions; it opens no file,
//! socket or clock and draws no random bytes: times, nonces, salts and
//! key material are parameters. Storage, the command line and the wiring
//! into backups live elsewhere.
//!
//! ## Modules
//! - [`config`]: [`RepoConfig`] (chunk size, zstd level, encryption), JSON.
//! - [`keys`]: [`MasterKeys`], wrapped under a passphrase (Argon2id +
//!   XChaCha20-Poly1305, [`KeyBlob`]) or kept in a key file.
//! - [`chunk`]: [`ChunkId`], the keyed BLAKE3 hash of a chunk's plaintext.
//! - [`object`]: the sealed stored form of chunks and metadata.
//! - [`index`]: [`BackupIndex`], the complete map of one disk at one point.
//! - [`prune`]: which points a keep-last/hourly/daily/… policy keeps.
//! - [`gc`]: which chunks garbage collection may delete, and the protocol
//!   that makes it safe beside running backups.
//!
//! Every refusal is one [`Error`].
//!
//! ## Choices
//! - One [`BackupIndex`] per disk per point; the disks of a point share
//!   its [`BackupId`] (time + 16 random bytes: unique without a shared
//!   counter, sortable). Every index is complete, so any point restores
//!   alone; all-zero and unallocated chunks are `None` and stored as
//!   nothing.
//! - A [`ChunkId`] is the keyed BLAKE3 hash of the plaintext (the secret
//!   id key when encrypted, a key derived from the repository id
//!   otherwise), checked on every read.
//! - Objects are zstd-compressed when that saves at least 1/16, then
//!   sealed with XChaCha20-Poly1305 (random 24-byte nonces are safe)
//!   with the header and chunk id as associated data; unencrypted objects
//!   carry a keyed BLAKE3 checksum instead.
//! - Master keys are sealed under Argon2id (capped at 1 GiB) or kept in
//!   a key file.
//!
//! The storage layer typically does: [`RepoConfig::decode`] →
//! [`RepoConfig::unlock`] → [`ObjectContext::new`]; per chunk
//! [`is_zero`] / [`encode_chunk`]; per disk [`BackupIndex::next`] →
//! [`BackupIndex::seal`]; on restore [`BackupIndex::open`] →
//! [`decode_chunk`]; for maintenance [`prune::plan`] and [`gc::plan`],
//! following the protocol in [`gc`].
//!
//! The crate uses `std` (the zstd bindings need it) but no I/O part of it.
//!
//! ## Example
//!
//! ```
//! use repo_format::{decode_chunk, encode_chunk, Encryption, Error, ObjectContext, RepoConfig};
//!
//! let config = RepoConfig::new([7; 16], 1 << 16, Some(3), Encryption::None)?;
//! let ctx = ObjectContext::new(&config, None)?;
//! let data = vec![0x5a; 1 << 16];
//! let stored = encode_chunk(&data, &ctx, [0; 24])?;
//! assert!(stored.bytes.len() < data.len()); // compressed
//! assert_eq!(decode_chunk(&stored.bytes, &ctx, &stored.id, 1 << 16)?, data);
//!
//! // A damaged object is refused, never returned.
//! let mut bad = stored.bytes.clone();
//! bad[20] ^= 1;
//! assert_eq!(
//!     decode_chunk(&bad, &ctx, &stored.id, 1 << 16),
//!     Err(Error::Corrupt { reason: "checksum" })
//! );
//! # Ok::<(), Error>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

pub mod chunk;
pub mod config;
mod error;
pub mod gc;
mod hex;
pub mod index;
pub mod keys;
pub mod object;
pub mod prune;

pub use chunk::{is_zero, public_id_key, ChunkId};
pub use config::{Encryption, RepoConfig};
pub use error::Error;
pub use gc::{GcPlan, Lease, StoredChunk};
pub use index::{BackupId, BackupIndex, BackupKind, NextPoint, VmIdentity};
pub use keys::{KdfParams, KeyBlob, MasterKeys};
pub use object::{
    decode_blob, decode_chunk, encode_blob, encode_chunk, encode_chunk_with_id, EncodedChunk,
    ObjectContext, ObjectKind,
};
pub use prune::{KeepReason, PrunePolicy};
