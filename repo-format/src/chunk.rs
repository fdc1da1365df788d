//! Chunk identity: a chunk is named by the keyed BLAKE3 hash of its
//! plaintext. In an encrypted repository the key is the secret
//! [`MasterKeys::id_key`](crate::MasterKeys::id_key), so ids reveal
//! nothing about content; in an unencrypted one it is derived publicly
//! from the repository id by [`public_id_key`].

use core::fmt;
use core::str::FromStr;

use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Context string of [`public_id_key`].
pub const PUBLIC_ID_CONTEXT: &str = "vddk-rs repository 2 chunk id";

/// The id of a chunk: 32 bytes, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `plain` under `id_key`.
    pub fn compute(id_key: &[u8; 32], plain: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(id_key, plain).as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The id key of an unencrypted repository:
/// `blake3::derive_key("vddk-rs repository 2 chunk id", repo_id)`.
pub fn public_id_key(repo_id: &[u8; 16]) -> [u8; 32] {
    blake3::derive_key(PUBLIC_ID_CONTEXT, repo_id)
}

/// Whether `data` is all zero bytes (such chunks are stored as nothing).
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    for w in words.by_ref() {
        let mut a = [0u8; 16];
        a.copy_from_slice(w);
        if u128::from_ne_bytes(a) != 0 {
            return false;
        }
    }
    words.remainder().iter().all(|&b| b == 0)
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl FromStr for ChunkId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        crate::hex::decode_array(s)
            .map(ChunkId)
            .ok_or(Error::InvalidField {
                field: "chunk id",
                reason: "expected 64 hex digits",
            })
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_and_public_ids() {
        let k1 = public_id_key(&[0; 16]);
        let k2 = public_id_key(&[1; 16]);
        assert_ne!(k1, k2);
        assert_eq!(k1, blake3::derive_key(PUBLIC_ID_CONTEXT, &[0; 16]));
        let a = ChunkId::compute(&k1, b"hello");
        assert_eq!(a, ChunkId::compute(&k1, b"hello"));
        assert_ne!(a, ChunkId::compute(&k2, b"hello"));
        assert_ne!(a, ChunkId::compute(&k1, b"hellp"));
        assert_eq!(a.0, *blake3::keyed_hash(&k1, b"hello").as_bytes());
    }

    #[test]
    fn hex_and_serde() {
        let id = ChunkId([0xab; 32]);
        let s = id.to_string();
        assert_eq!(s, "ab".repeat(32));
        assert_eq!(s.parse::<ChunkId>().unwrap(), id);
        assert!("ab".parse::<ChunkId>().is_err());
        assert!("zz".repeat(32).parse::<ChunkId>().is_err());
        let j = serde_json::to_string(&id).unwrap();
        assert_eq!(j, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<ChunkId>(&j).unwrap(), id);
        assert!(serde_json::from_str::<ChunkId>("\"00\"").is_err());
    }

    #[test]
    fn zero_check() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4096]));
        for len in [1usize, 15, 16, 17, 33, 4096] {
            for pos in [0, len / 2, len - 1] {
                let mut v = vec![0u8; len];
                v[pos] = 1;
                assert!(!is_zero(&v), "len {len} pos {pos}");
            }
        }
    }
}
