//! Backup indexes: the complete map of one disk at one backup point.
//!
//! **One index per disk per point.** All disks of a point share its
//! [`BackupId`]; an index is stored as `(backup_id, disk_key)`. Each index
//! is complete (every chunk of the disk, not a delta), so any point
//! restores from its own index alone, and pruning a point never touches
//! another. Each carries the VM configuration of its point, so a single
//! index is enough to recreate the VM.
//!
//! Chunk `i` covers disk bytes `i * chunk_size .. min((i + 1) * chunk_size,
//! capacity)`; its plaintext is exactly those bytes (the last chunk of a
//! disk whose capacity is not a multiple of the chunk size is short).
//! `None` marks a chunk that is all zero or unallocated.
//!
//! Index objects are sealed without associated data, so after opening one
//! the storage layer checks that its `backup_id` and `disk_key` are those
//! of the name it was read under (an index cannot then be passed off as
//! another point's).
//!
//! ## Encoding (version 1, little endian)
//!
//! ```text
//! offset  size  field
//!      0     4  magic "VDRI"
//!      4     1  version (1)
//!      5     1  kind: 0 full, 1 incremental, 2 differential
//!      6     1  flags: bit 0 base, bit 1 change id, bit 2 VM config; others 0
//!      7     1  reserved, 0
//!      8    24  backup id
//!     32     8  time (unix seconds)
//!     40     4  disk key (i32)
//!     44     4  chunk size
//!     48     8  capacity
//!     56        [24-byte base id]
//!               server, instance UUID, moref, name: u16 length + UTF-8 each
//!               [change id: u16 length + UTF-8]
//!               [VM config: u32 length + bytes]
//!               presence bitmap: ceil(n / 8) bytes, bit i (LSB first) = chunk i
//!               32-byte id of every present chunk, in order
//! ```
//!
//! `n = ceil(capacity / chunk_size)` is derived, never read. Decoding
//! checks that the bitmap and ids are all there before allocating, so it
//! allocates at most about 264 bytes per input byte; callers cap the input
//! with [`BackupIndex::max_encoded_len`] (the `max_plain` of
//! [`decode_blob`]).

use core::fmt;
use core::str::FromStr;

use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

use crate::chunk::ChunkId;
use crate::config::validate_chunk_size;
use crate::object::{decode_blob, encode_blob, ObjectContext, ObjectKind};
use crate::Error;

/// Magic of an encoded index.
pub const INDEX_MAGIC: [u8; 4] = *b"VDRI";
/// Index encoding version.
pub const INDEX_VERSION: u8 = 1;
/// Largest disk an index describes: 64 TiB.
pub const MAX_CAPACITY: u64 = 64 << 40;
/// Longest identity string or change id, in bytes.
pub const MAX_STRING: usize = 1024;
/// Largest VM configuration kept in an index: 16 MiB.
pub const MAX_VM_CONFIG: usize = 16 << 20;
const FIXED_LEN: usize = 56;

const FLAG_BASE: u8 = 1;
const FLAG_CHANGE_ID: u8 = 2;
const FLAG_VM_CONFIG: u8 = 4;

/// The id of a backup point: 8 bytes of big-endian unix time followed by
/// 16 random bytes. Unique without a shared counter, and ordered by time
/// (bytes compare as the time first). Written as 48 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(pub [u8; 24]);

impl BackupId {
    /// An id for a point taken at `time` (unix seconds).
    pub fn new(time: u64, random: [u8; 16]) -> Self {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&time.to_be_bytes());
        b[8..].copy_from_slice(&random);
        BackupId(b)
    }

    /// The time part.
    pub fn time(&self) -> u64 {
        let mut t = [0u8; 8];
        t.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(t)
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupId({self})")
    }
}

impl FromStr for BackupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        crate::hex::decode_array(s)
            .map(BackupId)
            .ok_or(Error::InvalidField {
                field: "backup id",
                reason: "expected 48 hex digits",
            })
    }
}

impl Serialize for BackupId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Which VM a disk belongs to. A VM is the pair (server, instance UUID);
/// the moref and name are kept for display, since a moref is only unique
/// within one vCenter and changes when a VM is re-registered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmIdentity {
    /// vCenter or ESXi host the VM was backed up from.
    pub server: String,
    /// The VM's instance UUID (`config.instanceUuid`).
    pub instance_uuid: String,
    /// Managed object reference, e.g. `vm-42`.
    pub moref: String,
    /// Display name at backup time.
    pub name: String,
}

impl VmIdentity {
    /// Whether two identities name the same VM (server and instance UUID).
    pub fn same_vm(&self, other: &VmIdentity) -> bool {
        self.server == other.server && self.instance_uuid == other.instance_uuid
    }
}

/// How a point was read from the VM. Every index is complete whatever
/// its kind; the kind records what was transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum BackupKind {
    /// Every allocated block was read.
    Full = 0,
    /// Blocks changed since the previous point were read.
    Incremental = 1,
    /// Blocks changed since the last full point were read.
    Differential = 2,
}

/// The complete map of one disk at one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupIndex {
    /// The point (shared by its disks).
    pub backup_id: BackupId,
    /// The VM.
    pub vm: VmIdentity,
    /// The disk's device key in the VM.
    pub disk_key: i32,
    /// Disk size in bytes (at most [`MAX_CAPACITY`]).
    pub capacity: u64,
    /// Repository chunk size.
    pub chunk_size: u32,
    /// One entry per chunk: `ceil(capacity / chunk_size)` entries.
    pub chunks: Vec<Option<ChunkId>>,
    /// The CBT change id the next incremental starts from.
    pub change_id: Option<String>,
    /// How the point was read.
    pub kind: BackupKind,
    /// Time of the point, unix seconds.
    pub time: u64,
    /// The point this one was derived from (incremental, differential).
    pub base: Option<BackupId>,
    /// The VM configuration (e.g. the `.vmx` or a `ConfigInfo` document).
    pub vm_config: Option<Vec<u8>>,
}

/// Number of chunks of a disk: `ceil(capacity / chunk_size)`, after
/// checking both.
pub fn chunk_count(capacity: u64, chunk_size: u32) -> Result<u64, Error> {
    validate_chunk_size(chunk_size)?;
    if capacity > MAX_CAPACITY {
        return Err(Error::TooLarge {
            what: "disk capacity",
            size: capacity,
            max: MAX_CAPACITY,
        });
    }
    Ok(capacity.div_ceil(u64::from(chunk_size)))
}

/// What changes from one point to the next, for [`BackupIndex::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextPoint {
    /// The new point's id.
    pub backup_id: BackupId,
    /// Its time.
    pub time: u64,
    /// How it was read.
    pub kind: BackupKind,
    /// Its change id.
    pub change_id: Option<String>,
    /// The disk's capacity now (may have grown or shrunk).
    pub capacity: u64,
    /// The VM configuration now.
    pub vm_config: Option<Vec<u8>>,
}

impl BackupIndex {
    /// Checks the invariants: chunk size, capacity cap, chunk count,
    /// string and VM-config caps, and that a full point has no base while
    /// other kinds have one.
    pub fn validate(&self) -> Result<(), Error> {
        let n = chunk_count(self.capacity, self.chunk_size)?;
        if self.chunks.len() as u64 != n {
            return Err(Error::InvalidField {
                field: "chunks",
                reason: "length must be ceil(capacity / chunk size)",
            });
        }
        for s in [
            &self.vm.server,
            &self.vm.instance_uuid,
            &self.vm.moref,
            &self.vm.name,
        ]
        .into_iter()
        .chain(self.change_id.as_ref())
        {
            if s.len() > MAX_STRING {
                return Err(Error::TooLarge {
                    what: "index string",
                    size: s.len() as u64,
                    max: MAX_STRING as u64,
                });
            }
        }
        if let Some(c) = &self.vm_config {
            if c.len() > MAX_VM_CONFIG {
                return Err(Error::TooLarge {
                    what: "VM configuration",
                    size: c.len() as u64,
                    max: MAX_VM_CONFIG as u64,
                });
            }
        }
        match (self.kind, self.base) {
            (BackupKind::Full, Some(_)) => Err(Error::InvalidField {
                field: "base",
                reason: "a full point has no base",
            }),
            (BackupKind::Incremental | BackupKind::Differential, None) => {
                Err(Error::InvalidField {
                    field: "base",
                    reason: "an incremental or differential point needs a base",
                })
            }
            _ => Ok(()),
        }
    }

    /// Disk bytes covered by chunk `i`: `(offset, length)`, or `None`
    /// past the end.
    pub fn chunk_extent(&self, i: u64) -> Option<(u64, u64)> {
        let off = i.checked_mul(u64::from(self.chunk_size))?;
        let left = self.capacity.checked_sub(off).filter(|&l| l > 0)?;
        Some((off, left.min(u64::from(self.chunk_size))))
    }

    /// Every chunk id the index references (with repeats).
    pub fn referenced(&self) -> impl Iterator<Item = &ChunkId> + '_ {
        self.chunks.iter().flatten()
    }

    /// The index of the next point of the same disk, from this one and
    /// the chunks that changed: `(chunk index, new id or None for zero)`,
    /// later entries winning. The chunk table is resized to the new
    /// capacity (new chunks start as `None`); a change beyond it is
    /// refused. The base is this point unless `kind` is full.
    pub fn next(
        &self,
        point: NextPoint,
        changes: &[(u64, Option<ChunkId>)],
    ) -> Result<BackupIndex, Error> {
        let n = chunk_count(point.capacity, self.chunk_size)?;
        let n = usize::try_from(n).map_err(|_| Error::TooLarge {
            what: "chunk count",
            size: n,
            max: usize::MAX as u64,
        })?;
        let mut chunks = self.chunks.clone();
        chunks.resize(n, None);
        for &(i, id) in changes {
            let slot = usize::try_from(i)
                .ok()
                .and_then(|i| chunks.get_mut(i))
                .ok_or(Error::InvalidField {
                    field: "changed chunk index",
                    reason: "beyond the disk's capacity",
                })?;
            *slot = id;
        }
        let next = BackupIndex {
            backup_id: point.backup_id,
            vm: self.vm.clone(),
            disk_key: self.disk_key,
            capacity: point.capacity,
            chunk_size: self.chunk_size,
            chunks,
            change_id: point.change_id,
            kind: point.kind,
            time: point.time,
            base: (point.kind != BackupKind::Full).then_some(self.backup_id),
            vm_config: point.vm_config,
        };
        next.validate()?;
        Ok(next)
    }

    /// The largest encoding of an index of a 64 TiB disk with this chunk
    /// size, every chunk present, strings and VM configuration at their
    /// caps: the `max_plain` to decode indexes with.
    pub fn max_encoded_len(chunk_size: u32) -> usize {
        let n = usize::try_from(MAX_CAPACITY / u64::from(chunk_size.max(1))).unwrap_or(usize::MAX);
        (FIXED_LEN + 24 + 5 * (2 + MAX_STRING) + 4 + MAX_VM_CONFIG)
            .saturating_add(n.div_ceil(8))
            .saturating_add(n.saturating_mul(32))
    }

    /// Encodes and seals the index as an [`ObjectKind::Index`] object.
    pub fn seal(&self, ctx: &ObjectContext, nonce: [u8; 24]) -> Result<Vec<u8>, Error> {
        encode_blob(ObjectKind::Index, &self.encode()?, ctx, nonce)
    }

    /// Opens an index object of a repository whose chunk size is
    /// `chunk_size`: authenticates it, caps its size with
    /// [`max_encoded_len`](Self::max_encoded_len), decodes it and checks
    /// that it uses the repository's chunk size.
    pub fn open(bytes: &[u8], ctx: &ObjectContext, chunk_size: u32) -> Result<BackupIndex, Error> {
        validate_chunk_size(chunk_size)?;
        let raw = decode_blob(
            bytes,
            ObjectKind::Index,
            ctx,
            Self::max_encoded_len(chunk_size),
        )?;
        let index = BackupIndex::decode(&raw)?;
        if index.chunk_size != chunk_size {
            return Err(Error::InvalidField {
                field: "index chunk size",
                reason: "differs from the repository's",
            });
        }
        Ok(index)
    }

    /// The binary form (see the module doc). Validates first.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        let present = self.chunks.iter().filter(|c| c.is_some()).count();
        let mut out = Vec::with_capacity(FIXED_LEN + 64 + self.chunks.len() / 8 + present * 32);
        out.extend_from_slice(&INDEX_MAGIC);
        out.push(INDEX_VERSION);
        out.push(self.kind as u8);
        let mut flags = 0;
        if self.base.is_some() {
            flags |= FLAG_BASE;
        }
        if self.change_id.is_some() {
            flags |= FLAG_CHANGE_ID;
        }
        if self.vm_config.is_some() {
            flags |= FLAG_VM_CONFIG;
        }
        out.push(flags);
        out.push(0);
        out.extend_from_slice(&self.backup_id.0);
        out.extend_from_slice(&self.time.to_le_bytes());
        out.extend_from_slice(&self.disk_key.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.capacity.to_le_bytes());
        if let Some(b) = &self.base {
            out.extend_from_slice(&b.0);
        }
        for s in [
            &self.vm.server,
            &self.vm.instance_uuid,
            &self.vm.moref,
            &self.vm.name,
        ]
        .into_iter()
        .chain(self.change_id.as_ref())
        {
            // validate() capped the length at MAX_STRING.
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        if let Some(c) = &self.vm_config {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
        }
        let mut bitmap = vec![0u8; self.chunks.len().div_ceil(8)];
        for (i, c) in self.chunks.iter().enumerate() {
            if c.is_some() {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        out.extend_from_slice(&bitmap);
        for id in self.referenced() {
            out.extend_from_slice(&id.0);
        }
        Ok(out)
    }

    /// Parses an index; every length is checked against the input before
    /// it is used, and nothing may follow the last id.
    pub fn decode(bytes: &[u8]) -> Result<BackupIndex, Error> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4)? != INDEX_MAGIC {
            return Err(Error::BadMagic { what: "index" });
        }
        let version = r.u8()?;
        if version != INDEX_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "index",
                version: u32::from(version),
            });
        }
        let kind = match r.u8()? {
            0 => BackupKind::Full,
            1 => BackupKind::Incremental,
            2 => BackupKind::Differential,
            _ => {
                return Err(Error::InvalidField {
                    field: "index kind",
                    reason: "unknown",
                })
            }
        };
        let flags = r.u8()?;
        if flags & !(FLAG_BASE | FLAG_CHANGE_ID | FLAG_VM_CONFIG) != 0 {
            return Err(Error::InvalidField {
                field: "index flags",
                reason: "unknown bits",
            });
        }
        if r.u8()? != 0 {
            return Err(Error::InvalidField {
                field: "index reserved byte",
                reason: "must be 0",
            });
        }
        let backup_id = BackupId(r.array()?);
        let time = u64::from_le_bytes(r.array()?);
        let disk_key = i32::from_le_bytes(r.array()?);
        let chunk_size = u32::from_le_bytes(r.array()?);
        let capacity = u64::from_le_bytes(r.array()?);
        let n = chunk_count(capacity, chunk_size)?;
        let base = if flags & FLAG_BASE != 0 {
            Some(BackupId(r.array()?))
        } else {
            None
        };
        let vm = VmIdentity {
            server: r.string()?,
            instance_uuid: r.string()?,
            moref: r.string()?,
            name: r.string()?,
        };
        let change_id = if flags & FLAG_CHANGE_ID != 0 {
            Some(r.string()?)
        } else {
            None
        };
        let vm_config = if flags & FLAG_VM_CONFIG != 0 {
            let len = u32::from_le_bytes(r.array()?) as usize;
            if len > MAX_VM_CONFIG {
                return Err(Error::TooLarge {
                    what: "VM configuration",
                    size: len as u64,
                    max: MAX_VM_CONFIG as u64,
                });
            }
            Some(r.take(len)?.to_vec())
        } else {
            None
        };
        // n <= 2^30, so these fit in usize on any supported target.
        let n = usize::try_from(n).map_err(|_| Error::TooLarge {
            what: "chunk count",
            size: n,
            max: usize::MAX as u64,
        })?;
        let bitmap = r.take(n.div_ceil(8))?;
        if !n.is_multiple_of(8) && bitmap.last().is_some_and(|&b| b >> (n % 8) != 0) {
            return Err(Error::InvalidField {
                field: "index bitmap",
                reason: "bits set past the last chunk",
            });
        }
        let present: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
        let ids_len = present.checked_mul(32).ok_or(Error::Truncated {
            what: "index chunk ids",
            offset: r.pos,
        })?;
        let ids = r.take(ids_len)?;
        if r.pos != bytes.len() {
            return Err(Error::TrailingData {
                what: "index",
                count: bytes.len() - r.pos,
            });
        }
        let mut ids = ids.chunks_exact(32);
        let mut chunks = Vec::with_capacity(n);
        for i in 0..n {
            if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                let id = ids
                    .next()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(Error::Truncated {
                        what: "index chunk ids",
                        offset: r.pos,
                    })?;
                chunks.push(Some(ChunkId(id)));
            } else {
                chunks.push(None);
            }
        }
        let index = BackupIndex {
            backup_id,
            vm,
            disk_key,
            capacity,
            chunk_size,
            chunks,
            change_id,
            kind,
            time,
            base,
            vm_config,
        };
        index.validate()?;
        Ok(index)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], Error> {
        let rest = &self.bytes[self.pos..];
        let (head, _) = rest.split_at_checked(len).ok_or(Error::Truncated {
            what: "index",
            offset: self.bytes.len(),
        })?;
        self.pos += len;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn string(&mut self) -> Result<String, Error> {
        let len = usize::from(u16::from_le_bytes(self.array()?));
        if len > MAX_STRING {
            return Err(Error::TooLarge {
                what: "index string",
                size: len as u64,
                max: MAX_STRING as u64,
            });
        }
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::InvalidField {
            field: "index string",
            reason: "not UTF-8",
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn vm() -> VmIdentity {
        VmIdentity {
            server: "vc1".into(),
            instance_uuid: "5001".into(),
            moref: "vm-42".into(),
            name: "db".into(),
        }
    }

    fn sample() -> BackupIndex {
        BackupIndex {
            backup_id: BackupId::new(0x6000_0000, [0xaa; 16]),
            vm: vm(),
            disk_key: 2000,
            capacity: 3 * 65536 + 512,
            chunk_size: 65536,
            chunks: vec![Some(ChunkId([1; 32])), None, None, Some(ChunkId([2; 32]))],
            change_id: Some("52 1/7".into()),
            kind: BackupKind::Incremental,
            time: 0x6000_0010,
            base: Some(BackupId::new(0x5fff_0000, [0xbb; 16])),
            vm_config: Some(b"cfg".to_vec()),
        }
    }

    const GOLDEN: &str = concat!(
        "56445249",
        "01",
        "01",
        "07",
        "00", // magic, version, incremental, flags
        "0000000060000000",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", // backup id (BE time, random)
        "1000006000000000",                 // time
        "d0070000",                         // disk key 2000
        "00000100",                         // chunk size 64 KiB
        "0002030000000000",                 // capacity
        "000000005fff0000",
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", // base
        "0300",
        "766331", // "vc1"
        "0400",
        "35303031", // "5001"
        "0500",
        "766d2d3432", // "vm-42"
        "0200",
        "6462", // "db"
        "0600",
        "353220312f37", // change id "52 1/7"
        "03000000",
        "636667", // VM config "cfg"
        "09",     // bitmap: chunks 0 and 3
        "0101010101010101010101010101010101010101010101010101010101010101",
        "0202020202020202020202020202020202020202020202020202020202020202",
    );

    #[test]
    fn golden_encoding() {
        let bytes = sample().encode().unwrap();
        assert_eq!(crate::hex::encode(&bytes), GOLDEN);
        assert_eq!(
            BackupIndex::decode(&crate::hex::decode(GOLDEN).unwrap()).unwrap(),
            sample()
        );
    }

    #[test]
    fn minimal_full_index() {
        let i = BackupIndex {
            base: None,
            kind: BackupKind::Full,
            change_id: None,
            vm_config: None,
            capacity: 0,
            chunks: vec![],
            ..sample()
        };
        let b = i.encode().unwrap();
        assert_eq!(b.len(), FIXED_LEN + 4 * 2 + 3 + 4 + 5 + 2);
        assert_eq!(b[6], 0);
        assert_eq!(BackupIndex::decode(&b).unwrap(), i);
    }

    #[test]
    fn every_field_mutated() {
        let good = sample().encode().unwrap();
        let m = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            BackupIndex::decode(&b)
        };
        assert_eq!(m(0, 0), Err(Error::BadMagic { what: "index" }));
        assert_eq!(
            m(4, 2),
            Err(Error::UnsupportedVersion {
                what: "index",
                version: 2
            })
        );
        assert!(matches!(
            m(5, 3),
            Err(Error::InvalidField {
                field: "index kind",
                ..
            })
        ));
        // Full with a base is refused after parsing.
        assert!(matches!(
            m(5, 0),
            Err(Error::InvalidField { field: "base", .. })
        ));
        assert!(matches!(
            m(6, 0x0f),
            Err(Error::InvalidField {
                field: "index flags",
                ..
            })
        ));
        assert!(matches!(
            m(7, 1),
            Err(Error::InvalidField {
                field: "index reserved byte",
                ..
            })
        ));
        // chunk size 64 KiB + 1, 0, and 128 MiB.
        assert!(matches!(
            m(44, 1),
            Err(Error::InvalidField {
                field: "chunk size",
                ..
            })
        ));
        assert!(matches!(
            m(46, 0),
            Err(Error::InvalidField {
                field: "chunk size",
                ..
            })
        ));
        assert!(matches!(
            m(47, 8),
            Err(Error::InvalidField {
                field: "chunk size",
                ..
            })
        ));
        // capacity beyond 64 TiB.
        assert!(matches!(
            m(54, 0x40),
            Err(Error::TooLarge {
                what: "disk capacity",
                ..
            })
        ));
        // capacity of 13 chunks: the bitmap then swallows an id byte and
        // claims a third id.
        assert!(matches!(m(50, 0x0c), Err(Error::Truncated { .. })));
        // capacity of 5 chunks: still one bitmap byte, and valid.
        assert_eq!(m(50, 4).unwrap().chunks.len(), 5);
        // string length beyond the cap, and a non-UTF-8 string.
        let s = FIXED_LEN + 24;
        assert!(matches!(
            m(s + 1, 0x10),
            Err(Error::TooLarge {
                what: "index string",
                ..
            })
        ));
        assert!(matches!(
            m(s + 2, 0xff),
            Err(Error::InvalidField {
                field: "index string",
                ..
            })
        ));
        // VM config length beyond the cap.
        let cfg = good.len() - 64 - 1 - 7;
        assert_eq!(&good[cfg..cfg + 4], &[3, 0, 0, 0]);
        assert!(matches!(
            m(cfg + 3, 0x10),
            Err(Error::TooLarge {
                what: "VM configuration",
                ..
            })
        ));
        // bitmap bits past the last chunk; a bitmap bit cleared leaves an id over.
        let bm = good.len() - 65;
        assert!(matches!(
            m(bm, 0x19),
            Err(Error::InvalidField {
                field: "index bitmap",
                ..
            })
        ));
        assert_eq!(
            m(bm, 0x01),
            Err(Error::TrailingData {
                what: "index",
                count: 32
            })
        );
        assert!(matches!(m(bm, 0x0b), Err(Error::Truncated { .. })));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            BackupIndex::decode(&long),
            Err(Error::TrailingData {
                what: "index",
                count: 1
            })
        );
        for len in 0..good.len() {
            assert!(
                matches!(
                    BackupIndex::decode(&good[..len]),
                    Err(Error::Truncated { .. })
                ),
                "len {len}"
            );
        }
    }

    #[test]
    fn hostile_sizes_do_not_allocate() {
        // 64 TiB of 64 KiB chunks (2^30 entries) declared, no bitmap given.
        let mut i = sample();
        i.capacity = 0;
        i.chunks.clear();
        let mut b = i.encode().unwrap();
        b[48..56].copy_from_slice(&MAX_CAPACITY.to_le_bytes());
        assert!(matches!(
            BackupIndex::decode(&b),
            Err(Error::Truncated { .. })
        ));
        // A full bitmap claiming ids that are not there.
        b.extend(std::iter::repeat_n(0xff, 1 << 20));
        assert!(matches!(
            BackupIndex::decode(&b),
            Err(Error::Truncated { .. })
        ));
        assert!(BackupIndex::max_encoded_len(1 << 16) > (1usize << 30) * 32);
        assert!(BackupIndex::max_encoded_len(4 << 20) < 600 << 20);
    }

    #[test]
    fn validate_refusals() {
        let mut i = sample();
        i.chunks.pop();
        assert!(matches!(
            i.encode(),
            Err(Error::InvalidField {
                field: "chunks",
                ..
            })
        ));
        let mut i = sample();
        i.base = None;
        assert!(matches!(
            i.encode(),
            Err(Error::InvalidField { field: "base", .. })
        ));
        let mut i = sample();
        i.vm.name = "x".repeat(MAX_STRING + 1);
        assert!(matches!(i.encode(), Err(Error::TooLarge { .. })));
        let mut i = sample();
        i.vm_config = Some(vec![0; MAX_VM_CONFIG + 1]);
        assert!(matches!(i.encode(), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn extents_and_ids() {
        let i = sample();
        assert_eq!(i.chunk_extent(0), Some((0, 65536)));
        assert_eq!(i.chunk_extent(3), Some((3 * 65536, 512)));
        assert_eq!(i.chunk_extent(4), None);
        assert_eq!(i.chunk_extent(u64::MAX), None);
        assert_eq!(i.referenced().count(), 2);
        let a = BackupId::new(1, [0xff; 16]);
        let b = BackupId::new(2, [0; 16]);
        assert!(a < b);
        assert_eq!(b.time(), 2);
        assert_eq!(a.to_string().parse::<BackupId>().unwrap(), a);
        assert!("00".parse::<BackupId>().is_err());
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<BackupId>(&j).unwrap(), a);
        assert!(vm().same_vm(&VmIdentity {
            moref: "vm-7".into(),
            name: "renamed".into(),
            ..vm()
        }));
        assert!(!vm().same_vm(&VmIdentity {
            server: "vc2".into(),
            ..vm()
        }));
        assert_eq!(chunk_count(65537, 65536), Ok(2));
    }

    #[test]
    fn next_point() {
        let prev = sample();
        let id = BackupId::new(0x6000_1000, [1; 16]);
        let point = |capacity, kind| NextPoint {
            backup_id: id,
            time: 0x6000_1000,
            kind,
            change_id: Some("52 1/9".into()),
            capacity,
            vm_config: None,
        };
        let c = ChunkId([9; 32]);
        let n = prev
            .next(
                point(prev.capacity, BackupKind::Incremental),
                &[(1, Some(c)), (0, None), (1, Some(c))],
            )
            .unwrap();
        assert_eq!(n.chunks, vec![None, Some(c), None, Some(ChunkId([2; 32]))]);
        assert_eq!(n.base, Some(prev.backup_id));
        assert_eq!(n.change_id.as_deref(), Some("52 1/9"));
        assert_eq!(n.vm, prev.vm);
        // Growth: new chunks start empty, and may be changed.
        let g = prev
            .next(point(6 * 65536, BackupKind::Differential), &[(5, Some(c))])
            .unwrap();
        assert_eq!(g.chunks.len(), 6);
        assert_eq!(g.chunks[4], None);
        assert_eq!(g.chunks[5], Some(c));
        // Shrink, and a change beyond the end.
        let s = prev.next(point(65536, BackupKind::Full), &[]).unwrap();
        assert_eq!(s.chunks, vec![Some(ChunkId([1; 32]))]);
        assert_eq!(s.base, None);
        assert!(matches!(
            prev.next(point(65536, BackupKind::Incremental), &[(1, None)]),
            Err(Error::InvalidField {
                field: "changed chunk index",
                ..
            })
        ));
        assert!(matches!(
            prev.next(point(MAX_CAPACITY + 1, BackupKind::Incremental), &[]),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn seal_and_open() {
        let c = crate::RepoConfig::new([3; 16], 65536, Some(3), crate::Encryption::None).unwrap();
        let ctx = ObjectContext::new(&c, None).unwrap();
        let sealed = sample().seal(&ctx, [0; 24]).unwrap();
        assert_eq!(BackupIndex::open(&sealed, &ctx, 65536).unwrap(), sample());
        assert!(matches!(
            BackupIndex::open(&sealed, &ctx, 1 << 20),
            Err(Error::InvalidField {
                field: "index chunk size",
                ..
            })
        ));
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(matches!(
            BackupIndex::open(&bad, &ctx, 65536),
            Err(Error::Corrupt { .. })
        ));
        let mut i = sample();
        i.chunks.pop();
        assert!(i.seal(&ctx, [0; 24]).is_err());
    }

    pub(crate) fn arb_index() -> impl Strategy<Value = BackupIndex> {
        (
            prop_oneof![Just(1u32 << 16), Just(1 << 20), Just(4 << 20)],
            0u64..40,
            0u64..(1 << 16),
            any::<[u8; 24]>(),
            any::<(String, String, String, String)>(),
            any::<i32>(),
            prop::option::of(".{0,40}"),
            0u8..3,
            any::<u64>(),
            any::<[u8; 24]>(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            any::<u64>(),
        )
            .prop_flat_map(
                |(cs, full, tail, id, s, dk, change_id, kind, time, base, cfg, seed)| {
                    let capacity = (full * u64::from(cs) + tail).min(40 * u64::from(cs));
                    let n = capacity.div_ceil(u64::from(cs)) as usize;
                    prop::collection::vec(prop::option::of(any::<[u8; 32]>()), n).prop_map(
                        move |chunks| {
                            let kind = [
                                BackupKind::Full,
                                BackupKind::Incremental,
                                BackupKind::Differential,
                            ][kind as usize];
                            let _ = seed;
                            BackupIndex {
                                backup_id: BackupId(id),
                                vm: VmIdentity {
                                    server: s.0.clone(),
                                    instance_uuid: s.1.clone(),
                                    moref: s.2.clone(),
                                    name: s.3.clone(),
                                },
                                disk_key: dk,
                                capacity,
                                chunk_size: cs,
                                chunks: chunks.into_iter().map(|c| c.map(ChunkId)).collect(),
                                change_id: change_id.clone(),
                                kind,
                                time,
                                base: (kind != BackupKind::Full).then_some(BackupId(base)),
                                vm_config: cfg.clone(),
                            }
                        },
                    )
                },
            )
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(i in arb_index()) {
            let b = i.encode().unwrap();
            prop_assert_eq!(BackupIndex::decode(&b).unwrap(), i);
        }

        #[test]
        fn decode_never_panics(i in arb_index(), pos in any::<prop::sample::Index>(), v in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let mut b = i.encode().unwrap();
            let p = pos.index(b.len());
            b[p] = v;
            let _ = BackupIndex::decode(&b);
            let c = cut.index(b.len());
            prop_assert!(BackupIndex::decode(&b[..c]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = BackupIndex::decode(&b);
        }
    }
}
