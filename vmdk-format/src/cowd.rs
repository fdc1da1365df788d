//! COWD extents (ESX `vmfsSparse` redo logs and ESX 2 sparse disks).
//!
//! Layout per libvmdk's documentation and qemu's `VMDK3Header`: a
//! 2048-byte header, a grain directory of u32 sector offsets, grain
//! tables of 4096 u32 sector offsets.

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, Result, Structure};
use crate::hosted::{MAX_GD_ENTRIES, MAX_GRAIN_SECTORS};
use crate::SECTOR_SIZE;

/// `COWD` read as a little-endian u32.
pub const COWD_MAGIC: u32 = 0x4457_4F43;
/// Entries in every COWD grain table.
pub const COWD_GTES_PER_GT: u64 = 4096;

/// The 2048-byte COWD header as stored.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
pub struct RawCowdHeader {
    /// `COWD`.
    pub magic: U32,
    /// 1.
    pub version: U32,
    /// 3 in every file seen.
    pub flags: U32,
    /// Capacity in sectors.
    pub capacity: U32,
    /// Grain size in sectors.
    pub grain_size: U32,
    /// Grain directory offset in sectors.
    pub gd_offset: U32,
    /// Grain directory entries.
    pub num_gd_entries: U32,
    /// Next free sector.
    pub next_free_sector: U32,
    /// Root: cylinders/heads/sectors; child: parent file name and
    /// generation. Kept raw: the descriptor names the parent.
    pub root_or_child: [u8; 1028],
    /// Generation.
    pub generation: U32,
    /// Disk name.
    pub name: [u8; 60],
    /// Description.
    pub description: [u8; 512],
    /// Saved generation.
    pub saved_generation: U32,
    /// Reserved.
    pub reserved: [u8; 8],
    /// Nonzero while open for writing.
    pub unclean_shutdown: U32,
    /// Padding to 2048 bytes.
    pub pad: [u8; 396],
}

const _: () = assert!(core::mem::size_of::<RawCowdHeader>() == 2048);

/// A validated COWD header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CowdHeader {
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_sectors: u64,
    /// GD offset in sectors.
    pub gd_offset: u64,
    /// GD entries.
    pub gd_entries: u64,
    /// Next free sector as recorded.
    pub next_free_sector: u64,
    /// Unclean shutdown flag.
    pub unclean_shutdown: bool,
}

impl CowdHeader {
    /// Header size on disk.
    pub const LEN: usize = 2048;

    /// Parses and validates a COWD header.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let (raw, _) = RawCowdHeader::read_from_prefix(bytes).map_err(|_| Error::Truncated {
            what: Structure::CowdHeader,
            needed: 2048,
            available: bytes.len() as u64,
        })?;
        let invalid = |field, value: u32, reason| Error::InvalidField {
            what: Structure::CowdHeader,
            field,
            value: u64::from(value),
            reason,
        };
        if raw.magic.get() != COWD_MAGIC {
            return Err(Error::BadMagic {
                what: Structure::CowdHeader,
                found: u64::from(raw.magic.get()),
            });
        }
        if raw.version.get() != 1 {
            return Err(invalid(
                "version",
                raw.version.get(),
                "only version 1 exists",
            ));
        }
        let grain = raw.grain_size.get();
        if grain == 0 || !grain.is_power_of_two() || u64::from(grain) > MAX_GRAIN_SECTORS {
            return Err(invalid(
                "grainSize",
                grain,
                "must be a power of two up to 32768 sectors",
            ));
        }
        let gd_offset = raw.gd_offset.get();
        if gd_offset < 4 {
            return Err(invalid(
                "gdOffset",
                gd_offset,
                "overlaps the 2048-byte header",
            ));
        }
        let capacity = u64::from(raw.capacity.get());
        let needed = capacity.div_ceil(COWD_GTES_PER_GT * u64::from(grain));
        let entries = u64::from(raw.num_gd_entries.get());
        if entries < needed {
            return Err(invalid(
                "numGDEntries",
                raw.num_gd_entries.get(),
                "too few to cover the capacity",
            ));
        }
        if entries > MAX_GD_ENTRIES {
            return Err(invalid(
                "numGDEntries",
                raw.num_gd_entries.get(),
                "exceeds 32M entries",
            ));
        }
        Ok(Self {
            capacity,
            grain_sectors: u64::from(grain),
            gd_offset: u64::from(gd_offset),
            gd_entries: entries,
            next_free_sector: u64::from(raw.next_free_sector.get()),
            unclean_shutdown: raw.unclean_shutdown.get() != 0,
        })
    }

    /// Byte range of the grain directory.
    pub fn gd_range(&self) -> (u64, u64) {
        // gd_offset < 2^32, entries < 2^25: no overflow.
        (self.gd_offset * SECTOR_SIZE, self.gd_entries * 4)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec::Vec;
    use zerocopy::FromZeros;

    pub(crate) fn valid_header() -> RawCowdHeader {
        let mut raw = RawCowdHeader::new_zeroed();
        raw.magic = U32::new(COWD_MAGIC);
        raw.version = U32::new(1);
        raw.flags = U32::new(3);
        raw.capacity = U32::new(16384);
        raw.grain_size = U32::new(1);
        raw.gd_offset = U32::new(4);
        raw.num_gd_entries = U32::new(4);
        raw.next_free_sector = U32::new(5);
        raw
    }

    #[test]
    fn valid_and_mutated() {
        let h = CowdHeader::parse(valid_header().as_bytes()).unwrap();
        assert_eq!(h.gd_range(), (2048, 16));
        type M = fn(&mut RawCowdHeader);
        let cases: &[M] = &[
            |h| h.magic = U32::new(1),
            |h| h.version = U32::new(2),
            |h| h.grain_size = U32::new(0),
            |h| h.grain_size = U32::new(3),
            |h| h.grain_size = U32::new(1 << 20),
            |h| h.gd_offset = U32::new(1),
            |h| h.num_gd_entries = U32::new(3),
            |h| h.num_gd_entries = U32::new(u32::MAX),
        ];
        for m in cases {
            let mut raw = valid_header();
            m(&mut raw);
            assert!(CowdHeader::parse(raw.as_bytes()).is_err());
        }
        let b: Vec<u8> = valid_header().as_bytes().to_vec();
        assert!(CowdHeader::parse(&b[..2047]).is_err());
    }
}
