//! Hosted sparse extents (`KDMV`, versions 1 to 3), including the
//! streamOptimized flavour: header, footer, grain directory math.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, Result, Structure};
use crate::SECTOR_SIZE;

/// `KDMV` read as a little-endian u32.
pub const SPARSE_MAGIC: u32 = 0x564D_444B;
/// `gdOffset` value meaning "the real header is in the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// The four newline-detection bytes.
pub const NEWLINE_CHECK: [u8; 4] = *b"\n \r\n";
/// Largest grain accepted: 16 MiB (qemu accepts up to 1 GiB, which no
/// writer uses and which would make a single inflate buffer huge).
pub const MAX_GRAIN_SECTORS: u64 = 32768;
/// Largest grain directory accepted, in entries (qemu's cap).
pub const MAX_GD_ENTRIES: u64 = 32 * 1024 * 1024;
/// Largest embedded descriptor accepted, in sectors (VirtualBox's cap).
pub const MAX_DESCRIPTOR_SECTORS: u64 = 20480;
/// Extent files address grains with u32 sectors: 2 TiB.
pub const MAX_EXTENT_FILE_SECTORS: u64 = 1 << 32;

bitflags::bitflags! {
    /// The `flags` word of a hosted sparse header.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SparseFlags: u32 {
        /// The newline-detection bytes are valid.
        const VALID_NEWLINE_CHECK = 1 << 0;
        /// A redundant grain directory is kept.
        const REDUNDANT_GD = 1 << 1;
        /// GTE value 1 means "zeroed grain".
        const ZEROED_GRAIN_GTE = 1 << 2;
        /// Grains are compressed.
        const COMPRESSED = 1 << 16;
        /// Metadata markers are present (streamOptimized).
        const MARKERS = 1 << 17;
        /// Every bit this crate understands.
        const SUPPORTED = Self::VALID_NEWLINE_CHECK.bits()
            | Self::REDUNDANT_GD.bits()
            | Self::ZEROED_GRAIN_GTE.bits()
            | Self::COMPRESSED.bits()
            | Self::MARKERS.bits();
    }
}

/// The 512-byte header as stored, little-endian, unvalidated.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
pub struct RawSparseExtentHeader {
    /// `KDMV`.
    pub magic: U32,
    /// 1, 2 or 3.
    pub version: U32,
    /// [`SparseFlags`].
    pub flags: U32,
    /// Capacity in sectors.
    pub capacity: U64,
    /// Grain size in sectors.
    pub grain_size: U64,
    /// Embedded descriptor offset in sectors (0 = none).
    pub descriptor_offset: U64,
    /// Embedded descriptor size in sectors.
    pub descriptor_size: U64,
    /// Entries per grain table (512).
    pub num_gtes_per_gt: U32,
    /// Redundant grain directory, in sectors.
    pub rgd_offset: U64,
    /// Grain directory, in sectors, or [`GD_AT_END`].
    pub gd_offset: U64,
    /// Sectors of metadata before the first grain.
    pub overhead: U64,
    /// Nonzero while a writer has the file open.
    pub unclean_shutdown: u8,
    /// `"\n \r\n"`.
    pub newline_check: [u8; 4],
    /// 0 none, 1 deflate.
    pub compress_algorithm: U16,
    /// Zero padding to 512 bytes.
    pub pad: [u8; 433],
}

const _: () = assert!(core::mem::size_of::<RawSparseExtentHeader>() == 512);

/// Grain compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain grains.
    None,
    /// zlib-framed deflate grains.
    Deflate,
}

/// A validated hosted sparse header: every field is in range, and the
/// derived quantities cannot overflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseExtentHeader {
    /// 1, 2 or 3.
    pub version: u32,
    /// Flags (only supported bits).
    pub flags: SparseFlags,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors (a power of two, 8..=32768).
    pub grain_sectors: u64,
    /// Embedded descriptor offset in sectors (0 = none).
    pub descriptor_offset: u64,
    /// Embedded descriptor size in sectors.
    pub descriptor_size: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u64,
    /// Redundant GD offset in sectors (meaningful with `REDUNDANT_GD`).
    pub rgd_offset: u64,
    /// GD offset in sectors, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Metadata sectors before the first grain.
    pub overhead: u64,
    /// Whether the file was not closed cleanly.
    pub unclean_shutdown: bool,
    /// Grain compression.
    pub compression: Compression,
}

fn invalid(field: &'static str, value: u64, reason: &'static str) -> Error {
    Error::InvalidField {
        what: Structure::SparseHeader,
        field,
        value,
        reason,
    }
}

impl SparseExtentHeader {
    /// Size of the header on disk.
    pub const LEN: usize = 512;

    /// Parses and validates the first 512 bytes of a hosted sparse file.
    ///
    /// ```
    /// use vmdk_format::hosted::SparseExtentHeader;
    /// let err = SparseExtentHeader::parse(b"KDMV").unwrap_err();
    /// assert!(matches!(err, vmdk_format::Error::Truncated { .. }));
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        Self::parse_as(bytes, Structure::SparseHeader)
    }

    fn parse_as(bytes: &[u8], what: Structure) -> Result<Self> {
        let (raw, _) =
            RawSparseExtentHeader::read_from_prefix(bytes).map_err(|_| Error::Truncated {
                what,
                needed: 512,
                available: bytes.len() as u64,
            })?;
        Self::validate(&raw).map_err(|e| match e {
            Error::InvalidField {
                field,
                value,
                reason,
                ..
            } => Error::InvalidField {
                what,
                field,
                value,
                reason,
            },
            other => other,
        })
    }

    /// Validates a raw header.
    pub fn validate(raw: &RawSparseExtentHeader) -> Result<Self> {
        let magic = raw.magic.get();
        if magic != SPARSE_MAGIC {
            return Err(Error::BadMagic {
                what: Structure::SparseHeader,
                found: u64::from(magic),
            });
        }
        let version = raw.version.get();
        if !(1..=3).contains(&version) {
            return Err(invalid(
                "version",
                u64::from(version),
                "only versions 1 to 3 exist",
            ));
        }
        let flag_bits = raw.flags.get();
        let flags = SparseFlags::from_bits(flag_bits)
            .ok_or_else(|| invalid("flags", u64::from(flag_bits), "unknown flag bits"))?;
        if flags.contains(SparseFlags::VALID_NEWLINE_CHECK) && raw.newline_check != NEWLINE_CHECK {
            return Err(invalid(
                "newline_check",
                u64::from(u32::from_le_bytes(raw.newline_check)),
                "newline bytes mangled (file transferred in ASCII mode?)",
            ));
        }
        if flags.contains(SparseFlags::ZEROED_GRAIN_GTE) && version < 2 {
            return Err(invalid(
                "flags",
                u64::from(flag_bits),
                "zeroed-grain GTEs need version 2 or later",
            ));
        }
        let grain = raw.grain_size.get();
        if !(8..=MAX_GRAIN_SECTORS).contains(&grain) || !grain.is_power_of_two() {
            return Err(invalid(
                "grainSize",
                grain,
                "must be a power of two from 8 to 32768 sectors",
            ));
        }
        let gtes = u64::from(raw.num_gtes_per_gt.get());
        if !(128..=1024).contains(&gtes) || !gtes.is_power_of_two() {
            return Err(invalid(
                "numGTEsPerGT",
                gtes,
                "must be a power of two from 128 to 1024",
            ));
        }
        let capacity = raw.capacity.get();
        if capacity.checked_mul(SECTOR_SIZE).is_none() {
            return Err(invalid("capacity", capacity, "too large"));
        }
        let compression = match raw.compress_algorithm.get() {
            0 => Compression::None,
            1 => Compression::Deflate,
            v => {
                return Err(invalid(
                    "compressAlgorithm",
                    u64::from(v),
                    "unknown algorithm",
                ))
            }
        };
        let compression = match (flags.contains(SparseFlags::COMPRESSED), compression) {
            (true, Compression::Deflate) => Compression::Deflate,
            (true, Compression::None) => {
                return Err(invalid(
                    "compressAlgorithm",
                    0,
                    "compressed flag without an algorithm",
                ))
            }
            // An algorithm without the flag: grains are plain.
            (false, _) => Compression::None,
        };
        let descriptor_offset = raw.descriptor_offset.get();
        let descriptor_size = raw.descriptor_size.get();
        if descriptor_offset != 0
            && (descriptor_size == 0 || descriptor_size > MAX_DESCRIPTOR_SECTORS)
        {
            return Err(invalid(
                "descriptorSize",
                descriptor_size,
                "must be 1 to 20480 sectors",
            ));
        }
        if descriptor_offset
            .checked_add(descriptor_size)
            .is_none_or(|e| e.checked_mul(SECTOR_SIZE).is_none())
        {
            return Err(invalid("descriptorOffset", descriptor_offset, "too large"));
        }
        let header = Self {
            version,
            flags,
            capacity,
            grain_sectors: grain,
            descriptor_offset,
            descriptor_size,
            gtes_per_gt: gtes,
            rgd_offset: raw.rgd_offset.get(),
            gd_offset: raw.gd_offset.get(),
            overhead: raw.overhead.get(),
            unclean_shutdown: raw.unclean_shutdown != 0,
            compression,
        };
        let entries = header.gd_entries();
        if entries > MAX_GD_ENTRIES {
            return Err(invalid(
                "capacity",
                capacity,
                "grain directory would exceed 32M entries",
            ));
        }
        if header.overhead.checked_mul(SECTOR_SIZE).is_none() {
            return Err(invalid("overHead", header.overhead, "too large"));
        }
        if !header.gd_at_end() {
            header.table_range(header.gd_offset, entries * 4, "gdOffset")?;
            if header.has_redundant_gd() {
                header.table_range(header.rgd_offset, entries * 4, "rgdOffset")?;
            }
        }
        Ok(header)
    }

    fn table_range(&self, sector: u64, len: u64, field: &'static str) -> Result<(u64, u64)> {
        if sector == 0 && len > 0 {
            return Err(invalid(
                field,
                0,
                "directory at sector 0 overlaps the header",
            ));
        }
        let off = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| invalid(field, sector, "too large"))?;
        off.checked_add(len)
            .ok_or_else(|| invalid(field, sector, "too large"))?;
        Ok((off, len))
    }

    /// True when the real header is the footer at the end of the file.
    pub fn gd_at_end(&self) -> bool {
        self.gd_offset == GD_AT_END
    }

    /// True when a redundant grain directory is kept.
    pub fn has_redundant_gd(&self) -> bool {
        self.flags.contains(SparseFlags::REDUNDANT_GD)
    }

    /// True for compressed (streamOptimized) grains.
    pub fn is_compressed(&self) -> bool {
        self.compression == Compression::Deflate
    }

    /// True when GTE 1 means a zeroed grain.
    pub fn has_zeroed_grain_gte(&self) -> bool {
        self.flags.contains(SparseFlags::ZEROED_GRAIN_GTE)
    }

    /// Sectors covered by one grain table.
    pub fn gt_coverage_sectors(&self) -> u64 {
        // Both are bounded powers of two: at most 2^15 * 2^10.
        self.grain_sectors * self.gtes_per_gt
    }

    /// Number of grain directory entries.
    pub fn gd_entries(&self) -> u64 {
        self.capacity.div_ceil(self.gt_coverage_sectors())
    }

    /// Byte range (offset, length) of the grain directory.
    pub fn gd_range(&self) -> Result<(u64, u64)> {
        if self.gd_at_end() {
            return Err(invalid(
                "gdOffset",
                self.gd_offset,
                "GD_AT_END: read the footer first",
            ));
        }
        self.table_range(self.gd_offset, self.gd_entries() * 4, "gdOffset")
    }

    /// Byte range of the redundant grain directory, if any.
    pub fn rgd_range(&self) -> Result<Option<(u64, u64)>> {
        if !self.has_redundant_gd() {
            return Ok(None);
        }
        self.table_range(self.rgd_offset, self.gd_entries() * 4, "rgdOffset")
            .map(Some)
    }

    /// Byte range of the embedded descriptor, if any.
    pub fn descriptor_range(&self) -> Option<(u64, u64)> {
        if self.descriptor_offset == 0 {
            return None;
        }
        // Checked in `validate`.
        Some((
            self.descriptor_offset * SECTOR_SIZE,
            self.descriptor_size * SECTOR_SIZE,
        ))
    }

    /// Where the footer (footer marker, footer header, EOS marker) sits
    /// in a file of `file_len` bytes.
    pub fn footer_range(file_len: u64) -> Result<(u64, u64)> {
        let off = file_len.checked_sub(1536).ok_or(Error::Truncated {
            what: Structure::Footer,
            needed: 1536,
            available: file_len,
        })?;
        Ok((off, 1536))
    }

    /// Replaces this header (whose `gdOffset` is `GD_AT_END`) with the
    /// footer copy, after checking the footer marker, the footer header
    /// and the end-of-stream marker. `footer` is the 1536 bytes at
    /// [`footer_range`](Self::footer_range).
    pub fn with_footer(&self, footer: &[u8]) -> Result<Self> {
        if footer.len() < 1536 {
            return Err(Error::Truncated {
                what: Structure::Footer,
                needed: 1536,
                available: footer.len() as u64,
            });
        }
        let bad = |reason| Error::InvalidField {
            what: Structure::Footer,
            field: "footer",
            value: 0,
            reason,
        };
        match crate::stream::Marker::parse(&footer[..512])? {
            crate::stream::Marker::Meta {
                kind: crate::stream::MarkerKind::Footer,
                ..
            } => {}
            _ => {
                return Err(bad(
                    "no footer marker 1536 bytes before the end (truncated stream?)",
                ))
            }
        }
        match crate::stream::Marker::parse(&footer[1024..])? {
            crate::stream::Marker::Meta {
                kind: crate::stream::MarkerKind::EndOfStream,
                sectors: 0,
            } => {}
            _ => return Err(bad("no end-of-stream marker at the end")),
        }
        let real = Self::parse_as(&footer[512..1024], Structure::Footer)?;
        if real.gd_at_end() {
            return Err(bad("footer's gdOffset is GD_AT_END too"));
        }
        if real.capacity != self.capacity
            || real.grain_sectors != self.grain_sectors
            || real.gtes_per_gt != self.gtes_per_gt
        {
            return Err(bad(
                "footer disagrees with the header on capacity or grain geometry",
            ));
        }
        Ok(real)
    }

    /// The 512-byte on-disk form.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut out = [0u8; 512];
        out.copy_from_slice(self.to_raw().as_bytes());
        out
    }

    /// Serialises to the 512-byte on-disk form (used by writers and tests).
    pub fn to_raw(&self) -> RawSparseExtentHeader {
        RawSparseExtentHeader {
            magic: U32::new(SPARSE_MAGIC),
            version: U32::new(self.version),
            flags: U32::new(self.flags.bits()),
            capacity: U64::new(self.capacity),
            grain_size: U64::new(self.grain_sectors),
            descriptor_offset: U64::new(self.descriptor_offset),
            descriptor_size: U64::new(self.descriptor_size),
            num_gtes_per_gt: U32::new(self.gtes_per_gt as u32),
            rgd_offset: U64::new(self.rgd_offset),
            gd_offset: U64::new(self.gd_offset),
            overhead: U64::new(self.overhead),
            unclean_shutdown: u8::from(self.unclean_shutdown),
            newline_check: NEWLINE_CHECK,
            compress_algorithm: U16::new(match self.compression {
                Compression::None => 0,
                Compression::Deflate => 1,
            }),
            pad: [0; 433],
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A valid header as qemu writes one for a 1 GiB monolithicSparse.
    pub(crate) fn valid_header() -> RawSparseExtentHeader {
        SparseExtentHeader {
            version: 1,
            flags: SparseFlags::VALID_NEWLINE_CHECK | SparseFlags::REDUNDANT_GD,
            capacity: 2 * 1024 * 1024,
            grain_sectors: 128,
            descriptor_offset: 1,
            descriptor_size: 20,
            gtes_per_gt: 512,
            rgd_offset: 21,
            gd_offset: 21 + 1 + 32 * 4,
            overhead: 512,
            unclean_shutdown: false,
            compression: Compression::None,
        }
        .to_raw()
    }

    fn bytes(raw: &RawSparseExtentHeader) -> Vec<u8> {
        raw.as_bytes().to_vec()
    }

    #[test]
    fn valid_round_trip() {
        let raw = valid_header();
        let h = SparseExtentHeader::parse(&bytes(&raw)).unwrap();
        assert_eq!(h.gd_entries(), 32);
        assert_eq!(h.gd_range().unwrap(), (150 * 512, 128));
        assert_eq!(h.to_raw().as_bytes(), raw.as_bytes());
    }

    #[test]
    fn each_field_mutated() {
        type Mutation = (&'static str, fn(&mut RawSparseExtentHeader));
        let cases: &[Mutation] = &[
            ("magic", |h| h.magic = U32::new(0x1234)),
            ("version 0", |h| h.version = U32::new(0)),
            ("version 4", |h| h.version = U32::new(4)),
            ("unknown flag", |h| {
                h.flags = U32::new(h.flags.get() | 1 << 5)
            }),
            ("newline", |h| h.newline_check = *b"\n \n\n"),
            ("zero grain v1", |h| h.flags = U32::new(h.flags.get() | 4)),
            ("grain 0", |h| h.grain_size = U64::new(0)),
            ("grain 3", |h| h.grain_size = U64::new(3)),
            ("grain 4", |h| h.grain_size = U64::new(4)),
            ("grain huge", |h| h.grain_size = U64::new(1 << 40)),
            ("gtes 0", |h| h.num_gtes_per_gt = U32::new(0)),
            ("gtes 511", |h| h.num_gtes_per_gt = U32::new(511)),
            ("gtes 1<<20", |h| h.num_gtes_per_gt = U32::new(1 << 20)),
            ("capacity overflow", |h| h.capacity = U64::new(u64::MAX / 2)),
            ("capacity gd too big", |h| h.capacity = U64::new(1 << 50)),
            ("compress 2", |h| h.compress_algorithm = U16::new(2)),
            ("compressed flag no algo", |h| {
                h.flags = U32::new(h.flags.get() | 1 << 16)
            }),
            ("descriptor size 0", |h| h.descriptor_size = U64::new(0)),
            ("descriptor size huge", |h| {
                h.descriptor_size = U64::new(1 << 30)
            }),
            ("descriptor offset overflow", |h| {
                h.descriptor_offset = U64::new(u64::MAX - 5)
            }),
            ("gd offset overflow", |h| {
                h.gd_offset = U64::new(u64::MAX - 1)
            }),
            ("gd at 0", |h| h.gd_offset = U64::new(0)),
            ("rgd overflow", |h| h.rgd_offset = U64::new(1 << 60)),
            ("overhead overflow", |h| h.overhead = U64::new(1 << 60)),
        ];
        for (name, mutate) in cases {
            let mut raw = valid_header();
            mutate(&mut raw);
            assert!(
                SparseExtentHeader::parse(&bytes(&raw)).is_err(),
                "{name} accepted"
            );
        }
        // Truncated input at every length.
        let full = bytes(&valid_header());
        for n in 0..512 {
            assert!(matches!(
                SparseExtentHeader::parse(&full[..n]),
                Err(Error::Truncated { .. })
            ));
        }
    }

    #[test]
    fn capacity_not_grain_multiple_is_fine() {
        let mut raw = valid_header();
        raw.capacity = U64::new(1000);
        let h = SparseExtentHeader::parse(&bytes(&raw)).unwrap();
        assert_eq!(h.gd_entries(), 1);
    }
}
