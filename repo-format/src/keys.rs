//! Master keys and how they are kept: wrapped under a passphrase
//! (Argon2id, then XChaCha20-Poly1305) in the repository configuration,
//! or written raw to a key file the operator keeps.
//!
//! Nothing here draws random bytes: salts, nonces and key material are
//! parameters, so the caller decides where they come from (the OS in
//! production, fixed bytes in tests).
//!
//! ```
//! use repo_format::keys::{unwrap, wrap, KdfParams};
//! use repo_format::{Error, MasterKeys};
//!
//! let keys = MasterKeys::generate([42; 64]); // use OS randomness
//! let cheap = KdfParams { m_kib: 8, t: 1, p: 1 }; // tests only; see KdfParams::default()
//! let blob = wrap(&keys, b"passphrase", cheap, [1; 16], [2; 24])?;
//! assert_eq!(unwrap(&blob, b"passphrase")?, keys);
//! assert_eq!(unwrap(&blob, b"guess"), Err(Error::WrongPassphrase));
//!
//! let file = keys.to_key_file();
//! assert_eq!(MasterKeys::from_key_file(&file)?, keys);
//! # Ok::<(), Error>(())
//! ```

use core::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::Error;

/// Associated data of the sealed master keys in a [`KeyBlob`].
const BLOB_AD: &[u8] = b"vddk-rs repository 2 key blob";
/// Magic of a raw key file.
pub const KEY_FILE_MAGIC: [u8; 8] = *b"VDRKEY2\n";
/// Length of a raw key file: magic, two keys, 16 bytes of checksum.
pub const KEY_FILE_LEN: usize = 8 + 32 + 32 + 16;
/// Length of a salt.
pub const SALT_LEN: usize = 16;
/// Length of an XChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 24;

/// The two secrets of an encrypted repository. Zeroized on drop; `Debug`
/// prints no key material.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKeys {
    /// Key of the keyed BLAKE3 hash that names chunks.
    pub id_key: [u8; 32],
    /// Key of the AEAD that seals objects.
    pub data_key: [u8; 32],
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKeys { .. }")
    }
}

impl Drop for MasterKeys {
    fn drop(&mut self) {
        self.id_key.zeroize();
        self.data_key.zeroize();
    }
}

impl MasterKeys {
    /// Master keys from 64 random bytes supplied by the caller (the first
    /// 32 become the id key, the last 32 the data key). The argument is
    /// wiped.
    pub fn generate(mut random: [u8; 64]) -> Self {
        let mut keys = MasterKeys {
            id_key: [0; 32],
            data_key: [0; 32],
        };
        keys.id_key.copy_from_slice(&random[..32]);
        keys.data_key.copy_from_slice(&random[32..]);
        random.zeroize();
        keys
    }

    fn to_plain(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.id_key);
        out[32..].copy_from_slice(&self.data_key);
        out
    }

    fn from_plain(plain: &[u8]) -> Option<Self> {
        let (id, data) = plain.split_at_checked(32)?;
        Some(MasterKeys {
            id_key: id.try_into().ok()?,
            data_key: data.try_into().ok()?,
        })
    }

    /// The raw key-file form: `VDRKEY2\n`, the id key, the data key, and
    /// the first 16 bytes of BLAKE3 over the preceding 72 bytes.
    pub fn to_key_file(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KEY_FILE_LEN);
        out.extend_from_slice(&KEY_FILE_MAGIC);
        out.extend_from_slice(&self.id_key);
        out.extend_from_slice(&self.data_key);
        let sum = blake3::hash(&out);
        out.extend_from_slice(&sum.as_bytes()[..16]);
        out
    }

    /// Reads a key file written by [`to_key_file`](Self::to_key_file).
    pub fn from_key_file(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < KEY_FILE_LEN {
            return Err(Error::Truncated {
                what: "key file",
                offset: bytes.len(),
            });
        }
        if bytes.len() > KEY_FILE_LEN {
            return Err(Error::TrailingData {
                what: "key file",
                count: bytes.len() - KEY_FILE_LEN,
            });
        }
        if bytes[..8] != KEY_FILE_MAGIC {
            return Err(Error::BadMagic { what: "key file" });
        }
        let sum = blake3::hash(&bytes[..72]);
        if sum.as_bytes()[..16] != bytes[72..] {
            return Err(Error::Corrupt {
                reason: "key file checksum",
            });
        }
        MasterKeys::from_plain(&bytes[8..72]).ok_or(Error::Corrupt {
            reason: "key file length",
        })
    }

    /// A value that identifies these keys without revealing them, stored
    /// in the configuration of a key-file repository so a wrong key file
    /// is refused up front.
    pub fn check_value(&self, repo_id: &[u8; 16]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.data_key);
        h.update(b"vddk-rs repository 2 key check");
        h.update(&self.id_key);
        h.update(repo_id);
        *h.finalize().as_bytes()
    }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// The most memory a blob may ask for: 1 GiB. A hostile configuration
    /// cannot make us allocate more.
    pub const MAX_M_KIB: u32 = 1 << 20;
    /// The most passes a blob may ask for.
    pub const MAX_T: u32 = 64;
    /// The most lanes a blob may ask for.
    pub const MAX_P: u32 = 16;

    /// Checks the parameters against the caps and Argon2's minimums
    /// (`m_kib >= 8 * p`, `t >= 1`, `p >= 1`).
    pub fn validate(&self) -> Result<(), Error> {
        if self.p == 0 || self.p > Self::MAX_P {
            return Err(Error::InvalidField {
                field: "argon2 p",
                reason: "must be 1..=16",
            });
        }
        if self.t == 0 || self.t > Self::MAX_T {
            return Err(Error::InvalidField {
                field: "argon2 t",
                reason: "must be 1..=64",
            });
        }
        if self.m_kib > Self::MAX_M_KIB {
            return Err(Error::TooLarge {
                what: "argon2 memory (KiB)",
                size: u64::from(self.m_kib),
                max: u64::from(Self::MAX_M_KIB),
            });
        }
        if u64::from(self.m_kib) < 8 * u64::from(self.p) {
            return Err(Error::InvalidField {
                field: "argon2 m",
                reason: "must be at least 8 KiB per lane",
            });
        }
        Ok(())
    }
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane.
    fn default() -> Self {
        KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

/// Master keys sealed under a passphrase: Argon2id derives a 32-byte key
/// from the passphrase and salt, which seals the 64 bytes of keys with
/// XChaCha20-Poly1305.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyBlob {
    /// Argon2id costs.
    pub kdf: KdfParams,
    /// Argon2id salt.
    #[serde(
        serialize_with = "crate::hex::ser",
        deserialize_with = "crate::hex::de_array"
    )]
    pub salt: [u8; SALT_LEN],
    /// AEAD nonce.
    #[serde(
        serialize_with = "crate::hex::ser",
        deserialize_with = "crate::hex::de_array"
    )]
    pub nonce: [u8; NONCE_LEN],
    /// The sealed keys: 64 bytes of ciphertext and a 16-byte tag.
    #[serde(
        serialize_with = "crate::hex::ser",
        deserialize_with = "crate::hex::de_vec"
    )]
    pub sealed: Vec<u8>,
}

/// Length of [`KeyBlob::sealed`].
pub const SEALED_LEN: usize = 64 + 16;

fn derive(passphrase: &[u8], params: &KdfParams, salt: &[u8; SALT_LEN]) -> Result<[u8; 32], Error> {
    params.validate()?;
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(32)).map_err(|_| {
        Error::Kdf {
            reason: "parameters refused",
        }
    })?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; 32];
    a.hash_password_into(passphrase, salt, &mut out)
        .map_err(|_| Error::Kdf {
            reason: "derivation refused",
        })?;
    Ok(out)
}

/// Seals `keys` under `passphrase`. `salt` and `nonce` must be fresh
/// random bytes.
pub fn wrap(
    keys: &MasterKeys,
    passphrase: &[u8],
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
) -> Result<KeyBlob, Error> {
    let mut kek = derive(passphrase, &params, &salt)?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(&kek));
    kek.zeroize();
    let mut plain = keys.to_plain();
    let sealed = cipher.encrypt(
        XNonce::from_slice(&nonce),
        Payload {
            msg: &plain,
            aad: BLOB_AD,
        },
    );
    plain.zeroize();
    let sealed = sealed.map_err(|_| Error::Corrupt {
        reason: "sealing failed",
    })?;
    Ok(KeyBlob {
        kdf: params,
        salt,
        nonce,
        sealed,
    })
}

/// Opens a blob. Caps on the Argon2 parameters are checked before any
/// memory is spent; a wrong passphrase (or a tampered blob) is
/// [`Error::WrongPassphrase`].
pub fn unwrap(blob: &KeyBlob, passphrase: &[u8]) -> Result<MasterKeys, Error> {
    if blob.sealed.len() != SEALED_LEN {
        return Err(Error::InvalidField {
            field: "sealed keys",
            reason: "must be 80 bytes",
        });
    }
    let mut kek = derive(passphrase, &blob.kdf, &blob.salt)?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(&kek));
    kek.zeroize();
    let mut plain = cipher
        .decrypt(
            XNonce::from_slice(&blob.nonce),
            Payload {
                msg: &blob.sealed,
                aad: BLOB_AD,
            },
        )
        .map_err(|_| Error::WrongPassphrase)?;
    let keys = MasterKeys::from_plain(&plain);
    plain.zeroize();
    keys.ok_or(Error::Corrupt {
        reason: "sealed keys length",
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SMALL: KdfParams = KdfParams {
        m_kib: 8,
        t: 1,
        p: 1,
    };

    pub(crate) fn keys() -> MasterKeys {
        let mut r = [0u8; 64];
        for (i, b) in r.iter_mut().enumerate() {
            *b = i as u8;
        }
        MasterKeys::generate(r)
    }

    #[test]
    fn generate_splits_random() {
        let k = keys();
        assert_eq!(k.id_key[0], 0);
        assert_eq!(k.id_key[31], 31);
        assert_eq!(k.data_key[0], 32);
        assert_eq!(k.data_key[31], 63);
        assert_eq!(format!("{k:?}"), "MasterKeys { .. }");
    }

    #[test]
    fn wrap_unwrap() {
        let k = keys();
        let blob = wrap(&k, b"correct horse", SMALL, [7; 16], [9; 24]).unwrap();
        assert_eq!(blob.sealed.len(), SEALED_LEN);
        assert!(!blob
            .sealed
            .windows(32)
            .any(|w| w == k.id_key || w == k.data_key));
        assert_eq!(unwrap(&blob, b"correct horse").unwrap(), k);
        assert_eq!(unwrap(&blob, b"correct horsf"), Err(Error::WrongPassphrase));
        // Tampering with anything the key depends on fails the same way.
        let mut b = blob.clone();
        b.salt[0] ^= 1;
        assert_eq!(unwrap(&b, b"correct horse"), Err(Error::WrongPassphrase));
        let mut b = blob.clone();
        b.kdf.t = 2;
        assert_eq!(unwrap(&b, b"correct horse"), Err(Error::WrongPassphrase));
        let mut b = blob.clone();
        b.sealed[79] ^= 0x80;
        assert_eq!(unwrap(&b, b"correct horse"), Err(Error::WrongPassphrase));
        let mut b = blob;
        b.sealed.pop();
        assert!(matches!(
            unwrap(&b, b"correct horse"),
            Err(Error::InvalidField { .. })
        ));
    }

    /// Made outside this crate: Python `cryptography` (OpenSSL) Argon2id
    /// (m = 8 KiB, t = 1, p = 1, salt 16 × 07, passphrase "correct horse")
    /// gives the key-encryption key; ChaCha20-Poly1305 under its HChaCha20
    /// subkey for nonce 24 × 09 seals bytes 0..64 with associated data
    /// "vddk-rs repository 2 key blob".
    const GOLDEN_SEALED: &str = concat!(
        "53206cc9cdcad619d61096d9242c767ced839fa940f47bfb7917b082f61b2b4f",
        "912527520e311a37a8274ddca710b9afff3bc7988f8c8f6220fdeb0afd881921",
        "38187ce1a93b62e5ccf95b652741750f"
    );

    #[test]
    fn golden_key_blob() {
        let blob = wrap(&keys(), b"correct horse", SMALL, [7; 16], [9; 24]).unwrap();
        assert_eq!(crate::hex::encode(&blob.sealed), GOLDEN_SEALED);
        let foreign = KeyBlob {
            kdf: SMALL,
            salt: [7; 16],
            nonce: [9; 24],
            sealed: crate::hex::decode(GOLDEN_SEALED).unwrap(),
        };
        assert_eq!(unwrap(&foreign, b"correct horse").unwrap(), keys());
        assert_eq!(
            serde_json::to_string(&foreign).unwrap(),
            format!(
                "{{\"kdf\":{{\"m_kib\":8,\"t\":1,\"p\":1}},\"salt\":\"{}\",\"nonce\":\"{}\",\"sealed\":\"{}\"}}",
                "07".repeat(16),
                "09".repeat(24),
                GOLDEN_SEALED
            )
        );
    }

    #[test]
    fn hostile_params_refused_before_allocation() {
        let mut blob = wrap(&keys(), b"pw", SMALL, [1; 16], [2; 24]).unwrap();
        blob.kdf.m_kib = 100 << 20; // 100 GiB
        assert_eq!(
            unwrap(&blob, b"pw"),
            Err(Error::TooLarge {
                what: "argon2 memory (KiB)",
                size: 100 << 20,
                max: 1 << 20
            })
        );
        blob.kdf = KdfParams {
            m_kib: 8,
            t: 0,
            p: 1,
        };
        assert!(matches!(
            unwrap(&blob, b"pw"),
            Err(Error::InvalidField {
                field: "argon2 t",
                ..
            })
        ));
        blob.kdf = KdfParams {
            m_kib: 8,
            t: 1,
            p: 17,
        };
        assert!(matches!(
            unwrap(&blob, b"pw"),
            Err(Error::InvalidField {
                field: "argon2 p",
                ..
            })
        ));
        blob.kdf = KdfParams {
            m_kib: 15,
            t: 1,
            p: 2,
        };
        assert!(matches!(
            unwrap(&blob, b"pw"),
            Err(Error::InvalidField {
                field: "argon2 m",
                ..
            })
        ));
        assert!(KdfParams::default().validate().is_ok());
    }

    #[test]
    fn key_file_round_trip_and_refusals() {
        let k = keys();
        let f = k.to_key_file();
        assert_eq!(f.len(), KEY_FILE_LEN);
        assert_eq!(&f[..8], b"VDRKEY2\n");
        assert_eq!(MasterKeys::from_key_file(&f).unwrap(), k);
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x01;
            let e = MasterKeys::from_key_file(&g).unwrap_err();
            if i < 8 {
                assert_eq!(e, Error::BadMagic { what: "key file" });
            } else {
                assert_eq!(
                    e,
                    Error::Corrupt {
                        reason: "key file checksum"
                    }
                );
            }
        }
        assert!(matches!(
            MasterKeys::from_key_file(&f[..87]),
            Err(Error::Truncated { .. })
        ));
        let mut long = f.clone();
        long.push(0);
        assert!(matches!(
            MasterKeys::from_key_file(&long),
            Err(Error::TrailingData { count: 1, .. })
        ));
        let other = MasterKeys::generate([5; 64]);
        assert_ne!(k.check_value(&[0; 16]), other.check_value(&[0; 16]));
        assert_ne!(k.check_value(&[0; 16]), k.check_value(&[1; 16]));
    }
}
