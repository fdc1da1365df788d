//! seSparse extents (ESXi space-efficient sparse).
//!
//! VMware never documented this format; the layout follows qemu's
//! reader, whose checks we keep: constant header magic `0xCAFEBABE`,
//! version `0x200000001`, grain 8 sectors, grain tables of 64 sectors
//! (4096 u64 entries), no flags. A set `replay_journal` in the volatile
//! header means the journal must be replayed: we refuse the file.

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, Result, Structure};
use crate::hosted::MAX_GD_ENTRIES;
use crate::SECTOR_SIZE;

/// Constant header magic.
pub const CONST_MAGIC: u64 = 0xCAFE_BABE;
/// Volatile header magic.
pub const VOLATILE_MAGIC: u64 = 0xCAFE_CAFE;
/// The only version seen.
pub const VERSION: u64 = 0x0000_0002_0000_0001;
/// Entries in a grain table.
pub const GTES_PER_GT: u64 = 4096;

/// The 512-byte constant header as stored.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct RawSeSparseConstHeader {
    pub magic: U64,
    pub version: U64,
    pub capacity: U64,
    pub grain_size: U64,
    pub grain_table_size: U64,
    pub flags: U64,
    pub reserved: [U64; 4],
    pub volatile_header_offset: U64,
    pub volatile_header_size: U64,
    pub journal_header_offset: U64,
    pub journal_header_size: U64,
    pub journal_offset: U64,
    pub journal_size: U64,
    pub grain_dir_offset: U64,
    pub grain_dir_size: U64,
    pub grain_tables_offset: U64,
    pub grain_tables_size: U64,
    pub free_bitmap_offset: U64,
    pub free_bitmap_size: U64,
    pub backmap_offset: U64,
    pub backmap_size: U64,
    pub grains_offset: U64,
    pub grains_size: U64,
    pub pad: [u8; 304],
}

const _: () = assert!(core::mem::size_of::<RawSeSparseConstHeader>() == 512);

/// The 512-byte volatile header as stored.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct RawSeSparseVolatileHeader {
    pub magic: U64,
    pub free_gt_number: U64,
    pub next_txn_seq_number: U64,
    pub replay_journal: U64,
    pub pad: [u8; 480],
}

/// A validated seSparse header (constant part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeSparseHeader {
    /// Capacity in sectors.
    pub capacity: u64,
    /// Volatile header offset in sectors.
    pub volatile_header_offset: u64,
    /// GD offset in sectors.
    pub gd_offset: u64,
    /// GD size in sectors.
    pub gd_sectors: u64,
    /// First grain table, in sectors.
    pub grain_tables_offset: u64,
    /// Grain table area size, in sectors.
    pub grain_tables_sectors: u64,
    /// First grain, in sectors.
    pub grains_offset: u64,
    /// Grain area size, in sectors.
    pub grains_sectors: u64,
}

impl SeSparseHeader {
    /// Grain size in sectors (fixed).
    pub const GRAIN_SECTORS: u64 = 8;
    /// Grain table size in sectors (fixed).
    pub const GT_SECTORS: u64 = 64;

    /// Parses and validates the constant header.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let what = Structure::SeSparseConstHeader;
        let (raw, _) =
            RawSeSparseConstHeader::read_from_prefix(bytes).map_err(|_| Error::Truncated {
                what,
                needed: 512,
                available: bytes.len() as u64,
            })?;
        let invalid = |field, value: u64, reason| Error::InvalidField {
            what,
            field,
            value,
            reason,
        };
        if raw.magic.get() != CONST_MAGIC {
            return Err(Error::BadMagic {
                what,
                found: raw.magic.get(),
            });
        }
        if raw.version.get() != VERSION {
            return Err(Error::Unsupported {
                what,
                feature: "version other than 2.1",
            });
        }
        if raw.grain_size.get() != Self::GRAIN_SECTORS {
            return Err(invalid(
                "grain_size",
                raw.grain_size.get(),
                "only 8-sector grains exist",
            ));
        }
        if raw.grain_table_size.get() != Self::GT_SECTORS {
            return Err(invalid(
                "grain_table_size",
                raw.grain_table_size.get(),
                "only 64-sector tables exist",
            ));
        }
        if raw.flags.get() != 0 {
            return Err(invalid("flags", raw.flags.get(), "no flags are defined"));
        }
        if raw.reserved.iter().any(|r| r.get() != 0) || raw.pad.iter().any(|&b| b != 0) {
            return Err(Error::Unsupported {
                what,
                feature: "nonzero reserved fields",
            });
        }
        let capacity = raw.capacity.get();
        if capacity.checked_mul(SECTOR_SIZE).is_none() {
            return Err(invalid("capacity", capacity, "too large"));
        }
        let h = Self {
            capacity,
            volatile_header_offset: raw.volatile_header_offset.get(),
            gd_offset: raw.grain_dir_offset.get(),
            gd_sectors: raw.grain_dir_size.get(),
            grain_tables_offset: raw.grain_tables_offset.get(),
            grain_tables_sectors: raw.grain_tables_size.get(),
            grains_offset: raw.grains_offset.get(),
            grains_sectors: raw.grains_size.get(),
        };
        let bytes_of = |field, sectors: u64| {
            sectors
                .checked_mul(SECTOR_SIZE)
                .ok_or_else(|| invalid(field, sectors, "too large"))
        };
        for (field, off, len) in [
            ("volatile_header_offset", h.volatile_header_offset, 1),
            ("grain_dir_offset", h.gd_offset, h.gd_sectors),
            (
                "grain_tables_offset",
                h.grain_tables_offset,
                h.grain_tables_sectors,
            ),
            ("grains_offset", h.grains_offset, h.grains_sectors),
        ] {
            if off == 0 {
                return Err(invalid(field, 0, "overlaps the constant header"));
            }
            bytes_of(
                field,
                off.checked_add(len)
                    .ok_or_else(|| invalid(field, off, "too large"))?,
            )?;
        }
        let entries = h.gd_entries();
        let needed = capacity.div_ceil(GTES_PER_GT * Self::GRAIN_SECTORS);
        if entries < needed {
            return Err(invalid(
                "grain_dir_size",
                h.gd_sectors,
                "too small to cover the capacity",
            ));
        }
        if entries > MAX_GD_ENTRIES {
            return Err(invalid(
                "grain_dir_size",
                h.gd_sectors,
                "exceeds 32M entries",
            ));
        }
        Ok(h)
    }

    /// GD entries (u64 each).
    pub fn gd_entries(&self) -> u64 {
        self.gd_sectors.saturating_mul(SECTOR_SIZE / 8)
    }

    /// Byte range of the volatile header.
    pub fn volatile_range(&self) -> (u64, u64) {
        (self.volatile_header_offset * SECTOR_SIZE, 512)
    }

    /// Byte range of the grain directory.
    pub fn gd_range(&self) -> (u64, u64) {
        (self.gd_offset * SECTOR_SIZE, self.gd_sectors * SECTOR_SIZE)
    }

    /// Checks the volatile header; a journal awaiting replay is refused.
    pub fn check_volatile(bytes: &[u8]) -> Result<()> {
        let what = Structure::SeSparseVolatileHeader;
        let (raw, _) =
            RawSeSparseVolatileHeader::read_from_prefix(bytes).map_err(|_| Error::Truncated {
                what,
                needed: 512,
                available: bytes.len() as u64,
            })?;
        if raw.magic.get() != VOLATILE_MAGIC {
            return Err(Error::BadMagic {
                what,
                found: raw.magic.get(),
            });
        }
        if raw.replay_journal.get() != 0 {
            return Err(Error::DirtyJournal);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zerocopy::FromZeros;

    pub(crate) fn valid_header() -> RawSeSparseConstHeader {
        let mut r = RawSeSparseConstHeader::new_zeroed();
        r.magic = U64::new(CONST_MAGIC);
        r.version = U64::new(VERSION);
        r.capacity = U64::new(65536);
        r.grain_size = U64::new(8);
        r.grain_table_size = U64::new(64);
        r.volatile_header_offset = U64::new(1);
        r.volatile_header_size = U64::new(1);
        r.grain_dir_offset = U64::new(2);
        r.grain_dir_size = U64::new(1);
        r.grain_tables_offset = U64::new(3);
        r.grain_tables_size = U64::new(128);
        r.grains_offset = U64::new(131);
        r.grains_size = U64::new(65536);
        r
    }

    #[test]
    fn valid_and_mutated() {
        let h = SeSparseHeader::parse(valid_header().as_bytes()).unwrap();
        assert_eq!(h.gd_entries(), 64);
        type M = fn(&mut RawSeSparseConstHeader);
        let cases: &[M] = &[
            |h| h.magic = U64::new(1),
            |h| h.version = U64::new(1),
            |h| h.grain_size = U64::new(16),
            |h| h.grain_table_size = U64::new(32),
            |h| h.flags = U64::new(1),
            |h| h.reserved[2] = U64::new(1),
            |h| h.pad[5] = 1,
            |h| h.capacity = U64::new(u64::MAX),
            |h| h.capacity = U64::new(1 << 40),
            |h| h.grain_dir_offset = U64::new(0),
            |h| h.grains_offset = U64::new(u64::MAX),
        ];
        for m in cases {
            let mut raw = valid_header();
            m(&mut raw);
            assert!(SeSparseHeader::parse(raw.as_bytes()).is_err());
        }
        let mut v = RawSeSparseVolatileHeader::new_zeroed();
        assert!(SeSparseHeader::check_volatile(v.as_bytes()).is_err());
        v.magic = U64::new(VOLATILE_MAGIC);
        SeSparseHeader::check_volatile(v.as_bytes()).unwrap();
        v.replay_journal = U64::new(1);
        assert_eq!(
            SeSparseHeader::check_volatile(v.as_bytes()),
            Err(Error::DirtyJournal)
        );
    }
}
