//! The stored form of chunks, indexes and other metadata ("objects").
//!
//! ```text
//! offset  size  field
//!      0     4  magic "VDRO"
//!      4     1  format version (1)
//!      5     1  kind: 1 chunk, 2 index, 3 lease, 4 other metadata
//!      6     1  flags: bit 0 compressed (zstd), bit 1 encrypted; others 0
//!      7     1  reserved, 0
//!      8     8  plaintext length, little endian
//!     16        encrypted:   24-byte XChaCha20 nonce, ciphertext, 16-byte tag
//!               unencrypted: body, 16-byte keyed BLAKE3 checksum
//! ```
//!
//! The body is the plaintext compressed with zstd when that saves at
//! least 1/16 of it, else the plaintext itself. The AEAD's associated
//! data (or the checksum's input) is the 16-byte header followed, for a
//! chunk, by its id, so a stored object can be neither altered nor
//! swapped for another chunk's or another kind's. Decoding authenticates
//! before it decompresses, decompresses into a buffer of exactly the
//! declared length (itself capped by the caller's `max_plain`) and, for a
//! chunk, recomputes the id.

use core::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::Zeroize;

use crate::chunk::ChunkId;
use crate::config::RepoConfig;
use crate::keys::{MasterKeys, NONCE_LEN};
use crate::Error;

/// Magic of every object.
pub const MAGIC: [u8; 4] = *b"VDRO";
/// Object format version.
pub const OBJECT_VERSION: u8 = 1;
/// Length of the header.
pub const HEADER_LEN: usize = 16;
/// Length of the AEAD tag or of the checksum.
pub const TAG_LEN: usize = 16;
/// Largest plaintext an object may declare (1 GiB); callers pass a
/// tighter `max_plain`.
pub const MAX_OBJECT_PLAIN: u64 = 1 << 30;

bitflags::bitflags! {
    /// Header flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ObjectFlags: u8 {
        /// The body is zstd-compressed.
        const COMPRESSED = 1;
        /// The body is sealed with XChaCha20-Poly1305.
        const ENCRYPTED = 2;
        /// Every flag this version knows.
        const SUPPORTED = 3;
    }
}

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectKind {
    /// A chunk of disk data.
    Chunk = 1,
    /// A [`BackupIndex`](crate::BackupIndex).
    Index = 2,
    /// A backup lease.
    Lease = 3,
    /// Any other metadata.
    Other = 4,
}

/// A parsed object header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    /// Kind byte as found (validated only against the caller's request).
    pub kind: u8,
    /// Flags.
    pub flags: ObjectFlags,
    /// Declared plaintext length.
    pub plain_len: u64,
}

impl ObjectHeader {
    /// Parses and validates the fixed header (magic, version, flags,
    /// reserved byte, length cap [`MAX_OBJECT_PLAIN`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let h: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Error::Truncated {
                what: "object header",
                offset: bytes.len(),
            })?;
        if h[..4] != MAGIC {
            return Err(Error::BadMagic { what: "object" });
        }
        if h[4] != OBJECT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "object",
                version: u32::from(h[4]),
            });
        }
        let flags = ObjectFlags::from_bits(h[6])
            .filter(|f| ObjectFlags::SUPPORTED.contains(*f))
            .ok_or(Error::InvalidField {
                field: "object flags",
                reason: "unknown bits",
            })?;
        if h[7] != 0 {
            return Err(Error::InvalidField {
                field: "object reserved byte",
                reason: "must be 0",
            });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&h[8..16]);
        let plain_len = u64::from_le_bytes(len);
        if plain_len > MAX_OBJECT_PLAIN {
            return Err(Error::TooLarge {
                what: "object plaintext",
                size: plain_len,
                max: MAX_OBJECT_PLAIN,
            });
        }
        Ok(ObjectHeader {
            kind: h[5],
            flags,
            plain_len,
        })
    }

    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = OBJECT_VERSION;
        h[5] = self.kind;
        h[6] = self.flags.bits();
        h[8..].copy_from_slice(&self.plain_len.to_le_bytes());
        h
    }
}

/// What encoding and decoding objects needs: the id key, the data key
/// when encrypted, and the compression level. Keys are zeroized on drop.
#[derive(Clone)]
pub struct ObjectContext {
    id_key: [u8; 32],
    data_key: Option<[u8; 32]>,
    compression: Option<i32>,
}

impl fmt::Debug for ObjectContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectContext")
            .field("encrypted", &self.data_key.is_some())
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl Drop for ObjectContext {
    fn drop(&mut self) {
        self.id_key.zeroize();
        if let Some(k) = self.data_key.as_mut() {
            k.zeroize();
        }
    }
}

impl ObjectContext {
    /// The context of a repository; `keys` is required when it is
    /// encrypted ([`Error::KeysRequired`]) and ignored otherwise.
    pub fn new(config: &RepoConfig, keys: Option<&MasterKeys>) -> Result<Self, Error> {
        config.validate()?;
        let id_key = config.id_key(keys)?;
        let data_key = if config.is_encrypted() {
            keys.map(|k| k.data_key)
        } else {
            None
        };
        Ok(ObjectContext {
            id_key,
            data_key,
            compression: config.compression,
        })
    }

    /// Whether objects are sealed.
    pub fn is_encrypted(&self) -> bool {
        self.data_key.is_some()
    }

    /// The id of a chunk's plaintext.
    pub fn chunk_id(&self, plain: &[u8]) -> ChunkId {
        ChunkId::compute(&self.id_key, plain)
    }

    fn checksum(&self, header: &[u8], ad: &[u8], body: &[u8]) -> [u8; TAG_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(b"vddk-rs repository 2 object checksum");
        h.update(header);
        h.update(ad);
        h.update(body);
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
        out
    }

    fn encode(
        &self,
        kind: ObjectKind,
        plain: &[u8],
        ad: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, Error> {
        let plain_len = plain.len() as u64;
        if plain_len > MAX_OBJECT_PLAIN {
            return Err(Error::TooLarge {
                what: "object plaintext",
                size: plain_len,
                max: MAX_OBJECT_PLAIN,
            });
        }
        let mut flags = ObjectFlags::empty();
        let compressed = match self.compression {
            Some(level) if !plain.is_empty() => {
                let c = zstd::bulk::compress(plain, level).map_err(|_| Error::Compression)?;
                (c.len() <= plain.len() - plain.len() / 16).then_some(c)
            }
            _ => None,
        };
        if compressed.is_some() {
            flags |= ObjectFlags::COMPRESSED;
        }
        let body = compressed.as_deref().unwrap_or(plain);
        if self.data_key.is_some() {
            flags |= ObjectFlags::ENCRYPTED;
        }
        let header = ObjectHeader {
            kind: kind as u8,
            flags,
            plain_len,
        }
        .to_bytes();
        let mut aad = Vec::with_capacity(HEADER_LEN + ad.len());
        aad.extend_from_slice(&header);
        aad.extend_from_slice(ad);
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + body.len() + TAG_LEN);
        out.extend_from_slice(&header);
        match &self.data_key {
            Some(key) => {
                let sealed = XChaCha20Poly1305::new(Key::from_slice(key))
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: body,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| Error::Corrupt {
                        reason: "sealing failed",
                    })?;
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&sealed);
            }
            None => {
                out.extend_from_slice(body);
                out.extend_from_slice(&self.checksum(&header, ad, body));
            }
        }
        Ok(out)
    }

    fn decode(
        &self,
        kind: ObjectKind,
        bytes: &[u8],
        ad: &[u8],
        max_plain: usize,
    ) -> Result<Vec<u8>, Error> {
        let header = ObjectHeader::parse(bytes)?;
        if header.kind != kind as u8 {
            return Err(Error::WrongKind {
                expected: kind as u8,
                found: header.kind,
            });
        }
        if header.flags.contains(ObjectFlags::ENCRYPTED) != self.is_encrypted() {
            return Err(Error::EncryptionMismatch);
        }
        let max = max_plain as u64;
        if header.plain_len > max {
            return Err(Error::TooLarge {
                what: "object plaintext",
                size: header.plain_len,
                max,
            });
        }
        let (head, rest) = bytes.split_at(HEADER_LEN);
        let mut aad = Vec::with_capacity(HEADER_LEN + ad.len());
        aad.extend_from_slice(head);
        aad.extend_from_slice(ad);
        let opened;
        let body: &[u8] = match &self.data_key {
            Some(key) => {
                let (nonce, sealed) = rest
                    .split_at_checked(NONCE_LEN)
                    .filter(|(_, s)| s.len() >= TAG_LEN)
                    .ok_or(Error::Truncated {
                        what: "sealed object",
                        offset: bytes.len(),
                    })?;
                opened = XChaCha20Poly1305::new(Key::from_slice(key))
                    .decrypt(
                        XNonce::from_slice(nonce),
                        Payload {
                            msg: sealed,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| Error::Corrupt {
                        reason: "authentication tag",
                    })?;
                &opened
            }
            None => {
                let split = rest.len().checked_sub(TAG_LEN).ok_or(Error::Truncated {
                    what: "object checksum",
                    offset: bytes.len(),
                })?;
                let (body, sum) = rest.split_at(split);
                if sum != self.checksum(head, ad, body) {
                    return Err(Error::Corrupt { reason: "checksum" });
                }
                body
            }
        };
        // plain_len <= max_plain: usize, so the conversion cannot fail.
        let plain_len =
            usize::try_from(header.plain_len).map_err(|_| Error::Corrupt { reason: "length" })?;
        if header.flags.contains(ObjectFlags::COMPRESSED) {
            let out = zstd::bulk::decompress(body, plain_len).map_err(|_| Error::Corrupt {
                reason: "zstd stream",
            })?;
            if out.len() != plain_len {
                return Err(Error::Corrupt {
                    reason: "decompressed length",
                });
            }
            Ok(out)
        } else if body.len() != plain_len {
            Err(Error::Corrupt {
                reason: "body length",
            })
        } else {
            Ok(body.to_vec())
        }
    }
}

/// A chunk as stored: its id and the object bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChunk {
    /// The id of the plaintext, under which the object is stored.
    pub id: ChunkId,
    /// The object.
    pub bytes: Vec<u8>,
}

/// Encodes a chunk. `nonce` must be fresh random bytes when the
/// repository is encrypted (it is not stored otherwise).
pub fn encode_chunk(
    plain: &[u8],
    ctx: &ObjectContext,
    nonce: [u8; NONCE_LEN],
) -> Result<EncodedChunk, Error> {
    let id = ctx.chunk_id(plain);
    let bytes = ctx.encode(ObjectKind::Chunk, plain, &id.0, nonce)?;
    Ok(EncodedChunk { id, bytes })
}

/// Decodes a chunk stored under `expected`: authenticates, decompresses
/// into at most `max_plain` bytes (pass the chunk size) and checks that
/// the plaintext hashes to `expected` ([`Error::Corrupt`] otherwise).
pub fn decode_chunk(
    bytes: &[u8],
    ctx: &ObjectContext,
    expected: &ChunkId,
    max_plain: usize,
) -> Result<Vec<u8>, Error> {
    let plain = ctx.decode(ObjectKind::Chunk, bytes, &expected.0, max_plain)?;
    if ctx.chunk_id(&plain) != *expected {
        return Err(Error::Corrupt {
            reason: "chunk id mismatch",
        });
    }
    Ok(plain)
}

/// Encodes metadata (an index, a lease, …) of `kind`. Passing
/// [`ObjectKind::Chunk`] is refused: chunks go through [`encode_chunk`].
pub fn encode_blob(
    kind: ObjectKind,
    plain: &[u8],
    ctx: &ObjectContext,
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, Error> {
    if kind == ObjectKind::Chunk {
        return Err(Error::InvalidField {
            field: "object kind",
            reason: "chunks are encoded with encode_chunk",
        });
    }
    ctx.encode(kind, plain, &[], nonce)
}

/// Decodes metadata of `kind` of at most `max_plain` bytes.
pub fn decode_blob(
    bytes: &[u8],
    kind: ObjectKind,
    ctx: &ObjectContext,
    max_plain: usize,
) -> Result<Vec<u8>, Error> {
    if kind == ObjectKind::Chunk {
        return Err(Error::InvalidField {
            field: "object kind",
            reason: "chunks are decoded with decode_chunk",
        });
    }
    ctx.decode(kind, bytes, &[], max_plain)
}
