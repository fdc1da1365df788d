//! The repository configuration: format version, repository id, chunk
//! size, compression level and how the master keys are kept. Stored as
//! JSON (the one unsealed object of a repository, since it holds what is
//! needed to open the others).

use serde::{Deserialize, Serialize};

use crate::chunk::public_id_key;
use crate::keys::{self, KeyBlob, MasterKeys};
use crate::Error;

/// The format version this crate writes and reads.
pub const VERSION: u32 = 2;
/// Smallest chunk size: 64 KiB.
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
/// Largest chunk size: 64 MiB.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Default chunk size: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;
/// Lowest accepted zstd level.
pub const MIN_LEVEL: i32 = -7;
/// Highest accepted zstd level.
pub const MAX_LEVEL: i32 = 22;
/// Default zstd level.
pub const DEFAULT_LEVEL: i32 = 3;
/// Largest encoded configuration [`RepoConfig::decode`] reads.
pub const MAX_CONFIG_LEN: usize = 64 << 10;

/// How the master keys of a repository are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Encryption {
    /// No encryption: chunk ids use [`public_id_key`] and objects carry a
    /// keyed checksum instead of an AEAD tag.
    None,
    /// Keys sealed under a passphrase, stored here.
    RepoKey(KeyBlob),
    /// Keys kept outside the repository in a key file
    /// ([`MasterKeys::to_key_file`]); only a check value is stored.
    KeyFile {
        /// [`MasterKeys::check_value`] of the keys.
        #[serde(
            serialize_with = "crate::hex::ser",
            deserialize_with = "crate::hex::de_array"
        )]
        check: [u8; 32],
    },
}

/// A repository configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Always [`VERSION`].
    pub version: u32,
    /// Random id of the repository.
    #[serde(
        serialize_with = "crate::hex::ser",
        deserialize_with = "crate::hex::de_array"
    )]
    pub repo_id: [u8; 16],
    /// Bytes per chunk: a power of two in 64 KiB..=64 MiB.
    pub chunk_size: u32,
    /// zstd level, or `None` to store chunks uncompressed.
    pub compression: Option<i32>,
    /// Encryption and key storage.
    pub encryption: Encryption,
}

impl RepoConfig {
    /// A validated configuration.
    pub fn new(
        repo_id: [u8; 16],
        chunk_size: u32,
        compression: Option<i32>,
        encryption: Encryption,
    ) -> Result<Self, Error> {
        let c = RepoConfig {
            version: VERSION,
            repo_id,
            chunk_size,
            compression,
            encryption,
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.version != VERSION {
            return Err(Error::UnsupportedVersion {
                what: "repository",
                version: self.version,
            });
        }
        validate_chunk_size(self.chunk_size)?;
        if let Some(level) = self.compression {
            if !(MIN_LEVEL..=MAX_LEVEL).contains(&level) || level == 0 {
                return Err(Error::InvalidField {
                    field: "compression",
                    reason: "zstd level must be -7..=-1 or 1..=22",
                });
            }
        }
        if let Encryption::RepoKey(blob) = &self.encryption {
            blob.kdf.validate()?;
            if blob.sealed.len() != keys::SEALED_LEN {
                return Err(Error::InvalidField {
                    field: "sealed keys",
                    reason: "must be 80 bytes",
                });
            }
        }
        Ok(())
    }

    /// Whether objects are encrypted.
    pub fn is_encrypted(&self) -> bool {
        !matches!(self.encryption, Encryption::None)
    }

    /// The JSON form (pretty-printed, newline-terminated).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses and validates a configuration of at most
    /// [`MAX_CONFIG_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_CONFIG_LEN {
            return Err(Error::TooLarge {
                what: "configuration",
                size: bytes.len() as u64,
                max: MAX_CONFIG_LEN as u64,
            });
        }
        let c: RepoConfig = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: "configuration",
            message: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Opens the master keys of a [`Encryption::RepoKey`] repository.
    pub fn unlock(&self, passphrase: &[u8]) -> Result<MasterKeys, Error> {
        match &self.encryption {
            Encryption::RepoKey(blob) => keys::unwrap(blob, passphrase),
            _ => Err(Error::InvalidField {
                field: "encryption",
                reason: "the repository has no passphrase-sealed keys",
            }),
        }
    }

    /// Checks keys read from a key file against an
    /// [`Encryption::KeyFile`] repository.
    pub fn check_key_file(&self, keys: &MasterKeys) -> Result<(), Error> {
        match &self.encryption {
            Encryption::KeyFile { check } if *check == keys.check_value(&self.repo_id) => Ok(()),
            Encryption::KeyFile { .. } => Err(Error::WrongPassphrase),
            _ => Err(Error::InvalidField {
                field: "encryption",
                reason: "the repository uses no key file",
            }),
        }
    }

    /// The key chunk ids are computed with: the master id key when
    /// encrypted (required then), else [`public_id_key`].
    pub fn id_key(&self, keys: Option<&MasterKeys>) -> Result<[u8; 32], Error> {
        match (self.is_encrypted(), keys) {
            (false, _) => Ok(public_id_key(&self.repo_id)),
            (true, Some(k)) => Ok(k.id_key),
            (true, None) => Err(Error::KeysRequired),
        }
    }

    /// Most chunks of one disk: [`crate::index::MAX_CAPACITY`] / chunk size.
    pub fn max_chunks(&self) -> u64 {
        crate::index::MAX_CAPACITY / u64::from(self.chunk_size.max(1))
    }
}

/// Checks a chunk size: a power of two in 64 KiB..=64 MiB.
pub fn validate_chunk_size(chunk_size: u32) -> Result<(), Error> {
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(Error::InvalidField {
            field: "chunk size",
            reason: "must be a power of two in 64 KiB..=64 MiB",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::{keys, SMALL};

    fn plain() -> RepoConfig {
        RepoConfig::new([0x11; 16], DEFAULT_CHUNK_SIZE, Some(3), Encryption::None).unwrap()
    }

    #[test]
    fn golden_json() {
        let text = String::from_utf8(plain().encode()).unwrap();
        assert_eq!(
            text,
            "{\n  \"version\": 2,\n  \"repo_id\": \"11111111111111111111111111111111\",\n  \"chunk_size\": 4194304,\n  \"compression\": 3,\n  \"encryption\": {\n    \"type\": \"none\"\n  }\n}\n"
        );
        assert_eq!(RepoConfig::decode(text.as_bytes()).unwrap(), plain());
    }

    #[test]
    fn round_trips_with_keys() {
        let k = keys();
        let blob = keys::wrap(&k, b"pw", SMALL, [3; 16], [4; 24]).unwrap();
        let c = RepoConfig::new([2; 16], 1 << 16, None, Encryption::RepoKey(blob)).unwrap();
        let d = RepoConfig::decode(&c.encode()).unwrap();
        assert_eq!(d, c);
        assert_eq!(d.unlock(b"pw").unwrap(), k);
        assert_eq!(d.unlock(b"px"), Err(Error::WrongPassphrase));
        assert_eq!(d.id_key(Some(&k)).unwrap(), k.id_key);
        assert_eq!(d.id_key(None), Err(Error::KeysRequired));

        let kf = RepoConfig::new(
            [2; 16],
            1 << 26,
            None,
            Encryption::KeyFile {
                check: k.check_value(&[2; 16]),
            },
        )
        .unwrap();
        let d = RepoConfig::decode(&kf.encode()).unwrap();
        assert!(d.check_key_file(&k).is_ok());
        assert_eq!(
            d.check_key_file(&MasterKeys::generate([9; 64])),
            Err(Error::WrongPassphrase)
        );
        assert!(plain().check_key_file(&k).is_err());
        assert!(plain().unlock(b"pw").is_err());
        assert_eq!(plain().id_key(None).unwrap(), public_id_key(&[0x11; 16]));
        assert_eq!(plain().max_chunks(), 16 << 20);
    }

    #[test]
    fn validation() {
        for cs in [0, 1, 32 << 10, (64 << 10) + 1, 3 << 20, 128 << 20] {
            assert!(matches!(
                RepoConfig::new([0; 16], cs, None, Encryption::None),
                Err(Error::InvalidField {
                    field: "chunk size",
                    ..
                })
            ));
        }
        for level in [-8, 0, 23] {
            assert!(matches!(
                RepoConfig::new([0; 16], 1 << 20, Some(level), Encryption::None),
                Err(Error::InvalidField {
                    field: "compression",
                    ..
                })
            ));
        }
        let mut c = plain();
        c.version = 1;
        assert_eq!(
            RepoConfig::decode(&c.encode()),
            Err(Error::UnsupportedVersion {
                what: "repository",
                version: 1
            })
        );
        let text = String::from_utf8(plain().encode()).unwrap();
        let bad = text.replace("\"version\": 2,", "\"version\": 2, \"extra\": 1,");
        assert!(matches!(
            RepoConfig::decode(bad.as_bytes()),
            Err(Error::Json { .. })
        ));
        assert!(matches!(RepoConfig::decode(b"{"), Err(Error::Json { .. })));
        let bad = text.replace("11111111111111111111111111111111", "1111");
        assert!(matches!(
            RepoConfig::decode(bad.as_bytes()),
            Err(Error::Json { .. })
        ));
        assert!(matches!(
            RepoConfig::decode(&vec![b' '; MAX_CONFIG_LEN + 1]),
            Err(Error::TooLarge { .. })
        ));
        // A hostile blob asking for 100 GiB of Argon2 memory is refused at decode.
        let blob = keys::wrap(&keys(), b"pw", SMALL, [3; 16], [4; 24]).unwrap();
        let c = RepoConfig::new([2; 16], 1 << 16, None, Encryption::RepoKey(blob)).unwrap();
        let hostile = String::from_utf8(c.encode())
            .unwrap()
            .replace("\"m_kib\": 8", "\"m_kib\": 104857600");
        assert!(matches!(
            RepoConfig::decode(hostile.as_bytes()),
            Err(Error::TooLarge { .. })
        ));
    }
}
