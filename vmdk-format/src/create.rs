//! Creating disks: the layout of new sparse extents, VMware-style
//! geometry, descriptor construction and the byte forms of stream
//! markers. Everything here computes bytes; writing them is the caller's.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::descriptor::{
    Access, CreateType, Descriptor, Encoding, ExtentLine, ExtentType, Geometry, CID_NO_PARENT,
};
use crate::error::{Error, Result, Structure};
use crate::hosted::{
    Compression, SparseExtentHeader, SparseFlags, GD_AT_END, MAX_EXTENT_FILE_SECTORS,
};
use crate::SECTOR_SIZE;

/// Default grain: 64 KiB.
pub const DEFAULT_GRAIN_SECTORS: u64 = 128;
/// Entries per grain table.
pub const GTES_PER_GT: u64 = 512;
/// Sectors reserved for an embedded descriptor (as VMware and qemu do).
pub const EMBEDDED_DESCRIPTOR_SECTORS: u64 = 20;
/// Largest disk of the flat and VMFS types: 62 TiB, the VMFS limit.
pub const MAX_FLAT_CAPACITY_SECTORS: u64 = 62 * (1 << 40) / SECTOR_SIZE;
/// Size of each extent of a `twoGbMaxExtent*` disk (as qemu): 2 GiB.
pub const SPLIT_EXTENT_SECTORS: u64 = 4_194_304;

/// SCSI/IDE adapter named in `ddb.adapterType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdapterType {
    /// `ide`
    Ide,
    /// `buslogic`
    BusLogic,
    /// `lsilogic`
    LsiLogic,
    /// `legacyESX`
    LegacyEsx,
    /// `pvscsi`
    PvScsi,
}

impl AdapterType {
    /// Spelling in the DDB.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ide => "ide",
            Self::BusLogic => "buslogic",
            Self::LsiLogic => "lsilogic",
            Self::LegacyEsx => "legacyESX",
            Self::PvScsi => "pvscsi",
        }
    }
    /// Parses a DDB value (ASCII case-insensitive).
    pub fn from_name(s: &str) -> Option<Self> {
        [
            Self::Ide,
            Self::BusLogic,
            Self::LsiLogic,
            Self::LegacyEsx,
            Self::PvScsi,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }
}

/// The geometry VMware writes for a new disk: IDE disks get 16 heads
/// and 63 sectors per track; SCSI disks 64/32 below 1 GiB, 128/32 below
/// 2 GiB, 255/63 above. Cylinders are capped at 65535 (16383 for IDE).
pub fn vmware_geometry(capacity_sectors: u64, adapter: AdapterType) -> Geometry {
    let (heads, sectors, max_cyl) = match adapter {
        AdapterType::Ide => (16u64, 63u64, 16383u64),
        _ if capacity_sectors < (1 << 30) / SECTOR_SIZE => (64, 32, 65535),
        _ if capacity_sectors < (2 << 30) / SECTOR_SIZE => (128, 32, 65535),
        _ => (255, 63, 65535),
    };
    let cylinders = (capacity_sectors / (heads * sectors)).clamp(1, max_cyl);
    Geometry {
        cylinders: cylinders as u32,
        heads: heads as u32,
        sectors: sectors as u32,
    }
}

/// Formats 16 bytes the way `ddb.uuid` holds them:
/// `"60 00 c2 9a … 05 6e-02 29 … cd 42"`.
pub fn format_ddb_uuid(bytes: [u8; 16]) -> String {
    let mut s = String::with_capacity(48);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(if i == 8 { '-' } else { ' ' });
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `ddb.longContentID`: 32 hex digits whose last 8 are the CID.
pub fn long_content_id(random: [u8; 12], cid: u32) -> String {
    let mut s: String = random.iter().map(|b| format!("{b:02x}")).collect();
    s.push_str(&format!("{cid:08x}"));
    s
}

/// Options common to every new disk's descriptor.
#[derive(Clone, Debug)]
pub struct DescriptorOptions {
    /// Adapter type.
    pub adapter: AdapterType,
    /// Virtual hardware version (`ddb.virtualHWVersion`).
    pub hw_version: u32,
    /// Content id of the new disk.
    pub cid: u32,
    /// 16 random bytes for `ddb.uuid`.
    pub uuid: [u8; 16],
    /// 12 random bytes for `ddb.longContentID`.
    pub long_content_random: [u8; 12],
    /// Parent CID (`None` for a base disk).
    pub parent_cid: Option<u32>,
    /// Parent file name hint.
    pub parent_hint: Option<String>,
}

/// Builds the descriptor of a new disk.
pub fn new_descriptor(
    create_type: CreateType,
    capacity_sectors: u64,
    extents: Vec<ExtentLine>,
    o: &DescriptorOptions,
) -> Descriptor {
    let g = vmware_geometry(capacity_sectors, o.adapter);
    let mut ddb: Vec<(String, String)> = vec![
        ("ddb.virtualHWVersion".into(), o.hw_version.to_string()),
        ("ddb.adapterType".into(), o.adapter.as_str().into()),
        ("ddb.geometry.cylinders".into(), g.cylinders.to_string()),
        ("ddb.geometry.heads".into(), g.heads.to_string()),
        ("ddb.geometry.sectors".into(), g.sectors.to_string()),
        ("ddb.uuid".into(), format_ddb_uuid(o.uuid)),
        (
            "ddb.longContentID".into(),
            long_content_id(o.long_content_random, o.cid),
        ),
    ];
    if matches!(create_type, CreateType::VmfsThin) {
        ddb.push(("ddb.thinProvisioned".into(), "1".into()));
    }
    Descriptor {
        version: 1,
        encoding: Some(Encoding::Utf8),
        cid: o.cid,
        parent_cid: o.parent_cid.unwrap_or(CID_NO_PARENT),
        create_type,
        is_native_snapshot: None,
        parent_file_name_hint: o.parent_hint.clone(),
        change_track_path: None,
        extra_header: Vec::new(),
        extents,
        ddb,
    }
}

/// One extent line.
pub fn extent_line(
    sectors: u64,
    kind: ExtentType,
    file: Option<&str>,
    offset: Option<u64>,
) -> ExtentLine {
    ExtentLine {
        access: Access::ReadWrite,
        sectors,
        kind,
        file: file.map(ToString::to_string),
        offset,
        extra: Vec::new(),
    }
}

/// The layout of a new hosted sparse extent, laid out as qemu and VMware
/// do: header, embedded descriptor, RGD, redundant tables, GD, tables,
/// then grains from `overhead`. Every table is preallocated, so writes
/// only ever update table entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseLayout {
    /// The header to write at sector 0.
    pub header: SparseExtentHeader,
    /// First sector of each grain table.
    pub gt_sectors: Vec<u64>,
    /// First sector of each redundant grain table.
    pub rgt_sectors: Vec<u64>,
}

/// Parameters of a new sparse extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseParams {
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_sectors: u64,
    /// Sectors reserved for an embedded descriptor (0: none).
    pub descriptor_sectors: u64,
    /// Keep a redundant directory.
    pub redundant: bool,
    /// Allow zeroed-grain entries (header version 2... or 3 for streams).
    pub zeroed_grain: bool,
}

impl SparseParams {
    /// 64 KiB grains, embedded descriptor, redundant directory.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            grain_sectors: DEFAULT_GRAIN_SECTORS,
            descriptor_sectors: EMBEDDED_DESCRIPTOR_SECTORS,
            redundant: true,
            zeroed_grain: true,
        }
    }

    fn overhead_for(&self) -> (u64, u64) {
        let n_gt = self.capacity.div_ceil(GTES_PER_GT * self.grain_sectors);
        let gd_sectors = (n_gt * 4).div_ceil(SECTOR_SIZE).max(1);
        let gt_sectors = GTES_PER_GT * 4 / SECTOR_SIZE;
        let copies = if self.redundant { 2 } else { 1 };
        let meta = 1 + self.descriptor_sectors + copies * (gd_sectors + n_gt * gt_sectors);
        (n_gt, meta.div_ceil(self.grain_sectors) * self.grain_sectors)
    }

    /// Largest capacity a sparse extent can hold: every grain must be
    /// addressable by a u32 sector offset.
    pub fn max_capacity(grain_sectors: u64) -> u64 {
        // Metadata of a 2 TiB disk is about 128 MiB; leave room for it.
        let budget = MAX_EXTENT_FILE_SECTORS - 1;
        let probe = SparseParams {
            capacity: budget,
            grain_sectors,
            descriptor_sectors: EMBEDDED_DESCRIPTOR_SECTORS,
            redundant: true,
            zeroed_grain: true,
        };
        let (_, overhead) = probe.overhead_for();
        (budget - overhead - grain_sectors) / grain_sectors * grain_sectors
    }

    /// Computes the layout, refusing capacities the format cannot hold.
    pub fn layout(&self) -> Result<SparseLayout> {
        if !(8..=crate::hosted::MAX_GRAIN_SECTORS).contains(&self.grain_sectors)
            || !self.grain_sectors.is_power_of_two()
        {
            return Err(Error::InvalidField {
                what: Structure::SparseHeader,
                field: "grainSize",
                value: self.grain_sectors,
                reason: "must be a power of two from 8 to 32768",
            });
        }
        let max = Self::max_capacity(self.grain_sectors);
        if self.capacity > max {
            return Err(Error::InvalidField {
                what: Structure::SparseHeader,
                field: "capacity",
                value: self.capacity,
                reason:
                    "larger than a sparse extent can address (u32 sector offsets: just under 2 TiB)",
            });
        }
        let (n_gt, overhead) = self.overhead_for();
        let gd_sectors = (n_gt * 4).div_ceil(SECTOR_SIZE).max(1);
        let gt_len = GTES_PER_GT * 4 / SECTOR_SIZE;
        let mut next = 1 + self.descriptor_sectors;
        let mut rgd = 0;
        let mut rgt_sectors = Vec::new();
        if self.redundant {
            rgd = next;
            next += gd_sectors;
            for _ in 0..n_gt {
                rgt_sectors.push(next);
                next += gt_len;
            }
        }
        let gd = next;
        next += gd_sectors;
        let mut gt_sectors = Vec::with_capacity(n_gt as usize);
        for _ in 0..n_gt {
            gt_sectors.push(next);
            next += gt_len;
        }
        let mut flags = SparseFlags::VALID_NEWLINE_CHECK;
        if self.redundant {
            flags |= SparseFlags::REDUNDANT_GD;
        }
        if self.zeroed_grain {
            flags |= SparseFlags::ZEROED_GRAIN_GTE;
        }
        let header = SparseExtentHeader {
            // Version 2 carries zeroed grains; version 3 would make other
            // tools open the disk read-only (persistent CBT).
            version: if self.zeroed_grain { 2 } else { 1 },
            flags,
            capacity: self.capacity,
            grain_sectors: self.grain_sectors,
            descriptor_offset: if self.descriptor_sectors > 0 { 1 } else { 0 },
            descriptor_size: self.descriptor_sectors,
            gtes_per_gt: GTES_PER_GT,
            rgd_offset: rgd,
            gd_offset: gd,
            overhead,
            unclean_shutdown: false,
            compression: Compression::None,
        };
        Ok(SparseLayout {
            header,
            gt_sectors,
            rgt_sectors,
        })
    }
}

impl SparseLayout {
    /// The directory bytes (GD or RGD) pointing at `tables`.
    pub fn directory_bytes(tables: &[u64]) -> Vec<u8> {
        let mut v: Vec<u8> = tables
            .iter()
            .flat_map(|&s| (s as u32).to_le_bytes())
            .collect();
        v.resize(
            v.len().div_ceil(SECTOR_SIZE as usize).max(1) * SECTOR_SIZE as usize,
            0,
        );
        v
    }

    /// Everything before the first grain: header, descriptor area,
    /// directories, zeroed tables. `descriptor` must fit its area.
    pub fn metadata(&self, descriptor: &[u8]) -> Result<Vec<u8>> {
        let h = &self.header;
        let area = (h.descriptor_size * SECTOR_SIZE) as usize;
        if descriptor.len() > area {
            return Err(Error::Unserializable {
                key: "descriptor".into(),
                reason: "does not fit the embedded descriptor area",
            });
        }
        let mut out = vec![0u8; (h.overhead * SECTOR_SIZE) as usize];
        out[..512].copy_from_slice(zerocopy::IntoBytes::as_bytes(&h.to_raw()));
        out[512..512 + descriptor.len()].copy_from_slice(descriptor);
        let gd = Self::directory_bytes(&self.gt_sectors);
        let at = (h.gd_offset * SECTOR_SIZE) as usize;
        out[at..at + gd.len()].copy_from_slice(&gd);
        if h.has_redundant_gd() {
            let rgd = Self::directory_bytes(&self.rgt_sectors);
            let at = (h.rgd_offset * SECTOR_SIZE) as usize;
            out[at..at + rgd.len()].copy_from_slice(&rgd);
        }
        Ok(out)
    }
}

/// The header of a streamOptimized file as written at sector 0 (real
/// values are in the footer): version 3, markers, deflate, `GD_AT_END`.
pub fn stream_header(
    capacity: u64,
    grain_sectors: u64,
    descriptor_sectors: u64,
    overhead: u64,
) -> SparseExtentHeader {
    SparseExtentHeader {
        version: 3,
        flags: SparseFlags::VALID_NEWLINE_CHECK | SparseFlags::COMPRESSED | SparseFlags::MARKERS,
        capacity,
        grain_sectors,
        descriptor_offset: if descriptor_sectors > 0 { 1 } else { 0 },
        descriptor_size: descriptor_sectors,
        gtes_per_gt: GTES_PER_GT,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead,
        unclean_shutdown: false,
        compression: Compression::Deflate,
    }
}

/// A metadata marker sector (EOS 0, GT 1, GD 2, footer 3).
pub fn marker_sector(sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

/// Appends a grain record (`lba`, compressed length, zlib bytes) padded
/// to a sector boundary.
pub fn push_grain_record(out: &mut Vec<u8>, lba: u64, zlib: &[u8]) {
    out.extend_from_slice(&lba.to_le_bytes());
    out.extend_from_slice(&(zlib.len() as u32).to_le_bytes());
    out.extend_from_slice(zlib);
    let n = out.len().div_ceil(SECTOR_SIZE as usize) * SECTOR_SIZE as usize;
    out.resize(n, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rules() {
        assert_eq!(
            vmware_geometry(2 * 1024 * 1024, AdapterType::Ide),
            Geometry {
                cylinders: 2080,
                heads: 16,
                sectors: 63
            }
        );
        assert_eq!(
            vmware_geometry(1024 * 1024, AdapterType::LsiLogic),
            Geometry {
                cylinders: 512,
                heads: 64,
                sectors: 32
            }
        );
        assert_eq!(
            vmware_geometry(6 * 1024 * 1024, AdapterType::LsiLogic),
            Geometry {
                cylinders: 6 * 1024 * 1024 / (255 * 63),
                heads: 255,
                sectors: 63
            }
        );
        assert_eq!(
            vmware_geometry(3 * 1024 * 1024, AdapterType::LsiLogic).heads,
            128
        );
        assert_eq!(
            vmware_geometry(u64::MAX / 1024, AdapterType::Ide).cylinders,
            16383
        );
        assert_eq!(vmware_geometry(1, AdapterType::PvScsi).cylinders, 1);
    }

    #[test]
    fn layouts_parse_back() {
        for cap in [1u64, 2048, 1_000_001, 8 << 21] {
            let l = SparseParams::new(cap).layout().unwrap();
            let meta = l.metadata(b"# Disk DescriptorFile\n").unwrap();
            let h = SparseExtentHeader::parse(&meta).unwrap();
            assert_eq!(h, l.header);
            let (o, n) = h.gd_range().unwrap();
            let ext = crate::extent::SparseExtent::hosted(
                h,
                &meta[o as usize..(o + n) as usize],
                meta.len() as u64,
            )
            .unwrap();
            assert_eq!(
                ext.table_location(0).unwrap().unwrap().0,
                l.gt_sectors[0] * 512
            );
        }
        let max = SparseParams::max_capacity(128);
        assert!(SparseParams::new(max).layout().is_ok());
        assert!(SparseParams::new(max + 128).layout().is_err());
        assert!(max > (2u64 << 40) / 512 - (1 << 20));
    }

    #[test]
    fn ids() {
        assert_eq!(
            format_ddb_uuid([0xab; 16]),
            "ab ab ab ab ab ab ab ab-ab ab ab ab ab ab ab ab"
        );
        let l = long_content_id([1; 12], 0xdeadbeef);
        assert_eq!(l.len(), 32);
        assert!(l.ends_with("deadbeef"));
    }
}
