//! MBR (with extended/logical partitions) and GPT parsing, and [`scan`].

use serde::Serialize;

use crate::bytes::{guid_mixed, slice, u32_le, u64_le, u8_at, utf16le};
use crate::read::{read_exact, read_vec};
use crate::{probe, Error, FsInfo, ReadAt};

/// Logical sector size assumed for MBR and tried first for GPT.
pub const SECTOR: u64 = 512;
/// The most logical partitions followed along an EBR chain.
pub const MAX_LOGICAL: usize = 128;
/// The most GPT entries accepted.
pub const MAX_GPT_ENTRIES: u32 = 1024;
/// The largest GPT entry size accepted.
pub const MAX_GPT_ENTRY_SIZE: u32 = 4096;
/// The largest GPT entry array read (bytes).
pub const MAX_GPT_ARRAY: u64 = 1 << 20;

/// Which partitioning scheme a disk uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TableKind {
    /// A DOS/MBR partition table.
    Mbr,
    /// A GUID partition table.
    Gpt {
        /// Sector 0 holds a valid MBR with a type 0xEE entry.
        protective_mbr: bool,
        /// That MBR also lists other partitions.
        hybrid_mbr: bool,
        /// The disk GUID.
        disk_guid: String,
        /// The logical sector size the header was found with.
        sector_size: u64,
        /// The primary header was bad and the backup one was used.
        used_backup: bool,
    },
    /// No partition table: a filesystem starts at byte 0.
    None,
    /// Neither a partition table nor a filesystem was recognised.
    Unknown,
}

/// The type of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scheme", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PartitionKind {
    /// An MBR type byte.
    Mbr {
        /// The type byte.
        type_byte: u8,
        /// Its common name, when known.
        name: Option<&'static str>,
    },
    /// A GPT type GUID.
    Gpt {
        /// The type GUID, lower case.
        type_guid: String,
        /// Its common name, when known.
        name: Option<&'static str>,
    },
    /// No partition (a whole-disk filesystem).
    None,
}

/// One partition, or the whole disk when there is no table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// 1-based: MBR primaries 1–4, logicals from 5; GPT entry index + 1;
    /// 1 for a whole-disk filesystem.
    pub number: u32,
    /// Start in bytes.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// The partition type.
    pub kind: PartitionKind,
    /// The GPT partition name.
    pub name: Option<String>,
    /// The GPT attribute bits.
    pub attributes: u64,
    /// The MBR active flag (0x80); for GPT, the legacy BIOS bootable
    /// attribute (bit 2).
    pub bootable: bool,
    /// GPT unique partition GUID.
    pub guid: Option<String>,
    /// What [`probe`] found in the volume.
    pub filesystem: Option<FsInfo>,
}

/// What [`scan`] found on a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskLayout {
    /// The partitioning scheme.
    pub table: TableKind,
    /// The volumes, in table order.
    pub volumes: Vec<Volume>,
}

/// Reads the partition table of `disk` and probes every volume.
///
/// A disk whose sector 0 is a FAT/NTFS/exFAT boot sector, or that has no
/// valid MBR but a filesystem at byte 0, is one whole-disk volume
/// ([`TableKind::None`]). Partitions that extend past the disk, EBR loops
/// and bad GPT checksums (on both headers) are [`Error::Corrupt`].
/// Per-volume probe failures leave `filesystem` at `None`.
pub fn scan(disk: &dyn ReadAt) -> Result<DiskLayout, Error> {
    let size = disk.size();
    let mut layout = parse_table(disk)?;
    if matches!(layout.table, TableKind::Unknown) {
        if let Ok(Some(fs)) = probe(disk) {
            layout = DiskLayout {
                table: TableKind::None,
                volumes: vec![Volume {
                    number: 1,
                    start: 0,
                    size,
                    kind: PartitionKind::None,
                    name: None,
                    attributes: 0,
                    bootable: false,
                    guid: None,
                    filesystem: Some(fs),
                }],
            };
        }
        return Ok(layout);
    }
    for v in &mut layout.volumes {
        if let Ok(w) = crate::Window::new(disk, v.start, v.size) {
            v.filesystem = probe(&w).ok().flatten();
        }
    }
    Ok(layout)
}

/// Parses the partition table only (no probing of volumes), except that a
/// boot sector of a whole-disk FAT/NTFS/exFAT is told apart from an MBR.
pub fn parse_table(disk: &dyn ReadAt) -> Result<DiskLayout, Error> {
    let size = disk.size();
    let unknown = DiskLayout {
        table: TableKind::Unknown,
        volumes: Vec::new(),
    };
    if size < SECTOR {
        return Ok(unknown);
    }
    let mut mbr = [0u8; 512];
    read_exact(disk, 0, &mut mbr, "MBR")?;
    let signed = mbr[510] == 0x55 && mbr[511] == 0xAA;
    let entries = if signed { mbr_entries(&mbr) } else { None };

    // A volume boot record looks like an MBR (it ends in 0x55AA); its
    // "partition entries" are boot code.
    if crate::probe::is_boot_sector_fs(&mbr) {
        return Ok(unknown);
    }

    let has_ee = entries
        .as_ref()
        .is_some_and(|e| e.iter().any(|p| p.type_byte == 0xEE));
    if has_ee || entries.is_none() {
        let protective = has_ee;
        let hybrid = has_ee
            && entries
                .as_ref()
                .is_some_and(|e| e.iter().any(|p| p.type_byte != 0xEE && p.type_byte != 0));
        match parse_gpt(disk, protective, hybrid)? {
            Some(layout) => return Ok(layout),
            None if has_ee => {
                return Err(Error::corrupt(
                    "GPT header (protective MBR present)",
                    SECTOR,
                ))
            }
            None => return Ok(unknown),
        }
    }
    let Some(entries) = entries else {
        return Ok(unknown);
    };
    let mut volumes = Vec::new();
    let mut extended = None;
    for (i, e) in entries.iter().enumerate() {
        if e.type_byte == 0 || e.sectors == 0 {
            continue;
        }
        let (start, len) = e.byte_range(0, size, i)?;
        if is_extended(e.type_byte) {
            if extended.is_some() {
                return Err(Error::corrupt(
                    "second extended partition",
                    446 + 16 * i as u64,
                ));
            }
            extended = Some((start, len));
            continue;
        }
        volumes.push(mbr_volume(i as u32 + 1, start, len, e));
    }
    if let Some((ext_start, ext_len)) = extended {
        logical_partitions(disk, ext_start, ext_len, &mut volumes)?;
    }
    Ok(DiskLayout {
        table: TableKind::Mbr,
        volumes,
    })
}

#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    status: u8,
    type_byte: u8,
    lba: u32,
    sectors: u32,
}

impl MbrEntry {
    /// The entry's byte range, relative to `base` (bytes), checked
    /// against the disk size.
    fn byte_range(&self, base: u64, disk_size: u64, index: usize) -> Result<(u64, u64), Error> {
        if self.lba == 0 {
            // Sector 0 of the disk or of an EBR holds the table itself.
            return Err(Error::corrupt(
                "MBR partition entry starts at its own table",
                base + 446 + 16 * index as u64,
            ));
        }
        self.link_range(base, disk_size, index)
    }

    /// Like `byte_range`, but an EBR link may point back at the first EBR
    /// (relative sector 0): that is a loop, reported as such by the walk.
    fn link_range(&self, base: u64, disk_size: u64, index: usize) -> Result<(u64, u64), Error> {
        let start = u64::from(self.lba)
            .checked_mul(SECTOR)
            .and_then(|s| s.checked_add(base));
        let len = u64::from(self.sectors) * SECTOR;
        match start.and_then(|s| Some((s, s.checked_add(len)?))) {
            Some((s, end)) if end <= disk_size => Ok((s, len)),
            _ => Err(Error::corrupt(
                "MBR partition entry outside the disk",
                base + 446 + 16 * index as u64,
            )),
        }
    }
}

fn is_extended(t: u8) -> bool {
    matches!(t, 0x05 | 0x0F | 0x85)
}

/// The four entries of a signed MBR sector, or `None` when a status byte
/// is neither 0x00 nor 0x80 (then it is not a partition table).
fn mbr_entries(sector: &[u8; 512]) -> Option<[MbrEntry; 4]> {
    let mut out = [MbrEntry {
        status: 0,
        type_byte: 0,
        lba: 0,
        sectors: 0,
    }; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let e = slice(sector, 446 + 16 * i, 16)?;
        let status = u8_at(e, 0)?;
        if status != 0 && status != 0x80 {
            return None;
        }
        *slot = MbrEntry {
            status,
            type_byte: u8_at(e, 4)?,
            lba: u32_le(e, 8)?,
            sectors: u32_le(e, 12)?,
        };
    }
    Some(out)
}

fn mbr_volume(number: u32, start: u64, size: u64, e: &MbrEntry) -> Volume {
    Volume {
        number,
        start,
        size,
        kind: PartitionKind::Mbr {
            type_byte: e.type_byte,
            name: mbr_type_name(e.type_byte),
        },
        name: None,
        attributes: 0,
        bootable: e.status == 0x80,
        guid: None,
        filesystem: None,
    }
}

/// Follows the EBR chain of the extended partition at `ext_start`.
fn logical_partitions(
    disk: &dyn ReadAt,
    ext_start: u64,
    ext_len: u64,
    volumes: &mut Vec<Volume>,
) -> Result<(), Error> {
    let size = disk.size();
    let ext_end = ext_start + ext_len;
    let mut ebr_at = ext_start;
    let mut seen = std::collections::HashSet::new();
    let mut number = 5u32;
    loop {
        if !seen.insert(ebr_at) {
            return Err(Error::corrupt("EBR chain loops", ebr_at));
        }
        if seen.len() > MAX_LOGICAL {
            return Err(Error::TooLarge {
                what: "EBR chain",
                size: seen.len() as u64,
                max: MAX_LOGICAL as u64,
            });
        }
        let mut sector = [0u8; 512];
        read_exact(disk, ebr_at, &mut sector, "EBR")?;
        if sector[510] != 0x55 || sector[511] != 0xAA {
            return Err(Error::corrupt("EBR signature", ebr_at));
        }
        let entries = mbr_entries(&sector).ok_or(Error::corrupt("EBR entry status", ebr_at))?;
        let data = entries[0];
        if data.type_byte != 0 && data.sectors != 0 {
            let (start, len) = data.byte_range(ebr_at, size, 0)?;
            if start + len > ext_end {
                return Err(Error::corrupt(
                    "logical partition outside the extended partition",
                    ebr_at + 446,
                ));
            }
            volumes.push(mbr_volume(number, start, len, &data));
            number += 1;
        }
        let next = entries[1];
        if next.type_byte == 0 || next.sectors == 0 {
            return Ok(());
        }
        if !is_extended(next.type_byte) {
            return Err(Error::corrupt("EBR link type", ebr_at + 462));
        }
        let (next_at, _) = next.link_range(ext_start, size, 1)?;
        if next_at >= ext_end {
            return Err(Error::corrupt(
                "EBR link outside the extended partition",
                ebr_at + 462,
            ));
        }
        ebr_at = next_at;
    }
}

/// A validated GPT header.
#[derive(Debug, Clone)]
struct GptHeader {
    disk_guid: [u8; 16],
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// Parses and checks the header sector at `lba`; `None` when it is not a
/// valid GPT header.
fn gpt_header(sector: &[u8], lba: u64, total_lbas: u64) -> Option<GptHeader> {
    if slice(sector, 0, 8)? != b"EFI PART" {
        return None;
    }
    let header_size = u32_le(sector, 12)? as usize;
    if header_size < 92 || header_size > sector.len() {
        return None;
    }
    let stored_crc = u32_le(sector, 16)?;
    let mut copy = slice(sector, 0, header_size)?.to_vec();
    copy.get_mut(16..20)?.fill(0);
    if crc32fast::hash(&copy) != stored_crc {
        return None;
    }
    if u64_le(sector, 24)? != lba {
        return None;
    }
    let h = GptHeader {
        first_usable: u64_le(sector, 40)?,
        last_usable: u64_le(sector, 48)?,
        disk_guid: slice(sector, 56, 16)?.try_into().ok()?,
        entries_lba: u64_le(sector, 72)?,
        num_entries: u32_le(sector, 80)?,
        entry_size: u32_le(sector, 84)?,
        entries_crc: u32_le(sector, 88)?,
    };
    if h.entry_size < 128
        || h.entry_size > MAX_GPT_ENTRY_SIZE
        || !h.entry_size.is_power_of_two()
        || h.num_entries > MAX_GPT_ENTRIES
        || h.first_usable > h.last_usable
        || h.last_usable >= total_lbas
        || h.entries_lba >= total_lbas
    {
        return None;
    }
    Some(h)
}

/// Tries the primary then the backup GPT header, with 512- then
/// 4096-byte sectors. `Ok(None)`: no valid GPT.
fn parse_gpt(
    disk: &dyn ReadAt,
    protective: bool,
    hybrid: bool,
) -> Result<Option<DiskLayout>, Error> {
    let size = disk.size();
    for sector_size in [512u64, 4096] {
        let total = size / sector_size;
        if total < 3 {
            continue;
        }
        for (lba, backup) in [(1u64, false), (total - 1, true)] {
            let mut sector = vec![0u8; sector_size as usize];
            read_exact(disk, lba * sector_size, &mut sector, "GPT header")?;
            let Some(h) = gpt_header(&sector, lba, total) else {
                continue;
            };
            let array_len = u64::from(h.num_entries) * u64::from(h.entry_size);
            let Some(array_at) = h.entries_lba.checked_mul(sector_size) else {
                continue;
            };
            if array_len > MAX_GPT_ARRAY || array_at.checked_add(array_len).is_none_or(|e| e > size)
            {
                continue;
            }
            let array = read_vec(disk, array_at, array_len, MAX_GPT_ARRAY, "GPT entry array")?;
            if crc32fast::hash(&array) != h.entries_crc {
                continue;
            }
            let volumes = gpt_volumes(&h, &array, sector_size, size, array_at)?;
            return Ok(Some(DiskLayout {
                table: TableKind::Gpt {
                    protective_mbr: protective,
                    hybrid_mbr: hybrid,
                    disk_guid: guid_mixed(&h.disk_guid),
                    sector_size,
                    used_backup: backup,
                },
                volumes,
            }));
        }
    }
    Ok(None)
}

fn gpt_volumes(
    h: &GptHeader,
    array: &[u8],
    sector_size: u64,
    disk_size: u64,
    array_at: u64,
) -> Result<Vec<Volume>, Error> {
    let mut out = Vec::new();
    for (i, e) in array.chunks_exact(h.entry_size as usize).enumerate() {
        let at = array_at + i as u64 * u64::from(h.entry_size);
        let bad = || Error::corrupt("GPT entry", at);
        let type_guid: [u8; 16] = slice(e, 0, 16)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        if type_guid == [0; 16] {
            continue;
        }
        let unique: [u8; 16] = slice(e, 16, 16)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        let first = u64_le(e, 32).ok_or_else(bad)?;
        let last = u64_le(e, 40).ok_or_else(bad)?;
        let attributes = u64_le(e, 48).ok_or_else(bad)?;
        let name = utf16le(slice(e, 56, 72).ok_or_else(bad)?);
        if last < first {
            return Err(Error::corrupt("GPT entry ends before it starts", at));
        }
        let start = first.checked_mul(sector_size);
        let end = last.checked_add(1).and_then(|l| l.checked_mul(sector_size));
        let (start, end) = match (start, end) {
            (Some(s), Some(e)) if e <= disk_size => (s, e),
            _ => return Err(Error::corrupt("GPT entry outside the disk", at)),
        };
        let type_str = guid_mixed(&type_guid);
        out.push(Volume {
            number: i as u32 + 1,
            start,
            size: end - start,
            kind: PartitionKind::Gpt {
                name: gpt_type_name(&type_str),
                type_guid: type_str,
            },
            name: (!name.is_empty()).then_some(name),
            attributes,
            bootable: attributes & 4 != 0,
            guid: Some(guid_mixed(&unique)),
            filesystem: None,
        });
    }
    Ok(out)
}

/// Common names of MBR partition type bytes.
pub fn mbr_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 => "Extended",
        0x06 => "FAT16",
        0x07 => "HPFS/NTFS/exFAT",
        0x0B => "W95 FAT32",
        0x0C => "W95 FAT32 (LBA)",
        0x0E => "W95 FAT16 (LBA)",
        0x0F => "W95 Extended (LBA)",
        0x11 => "Hidden FAT12",
        0x12 => "Compaq diagnostics",
        0x14 => "Hidden FAT16 <32M",
        0x16 => "Hidden FAT16",
        0x17 => "Hidden HPFS/NTFS",
        0x1B => "Hidden W95 FAT32",
        0x1C => "Hidden W95 FAT32 (LBA)",
        0x1E => "Hidden W95 FAT16 (LBA)",
        0x27 => "Hidden NTFS WinRE",
        0x42 => "SFS / Windows dynamic",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8E => "Linux LVM",
        0xA5 => "FreeBSD",
        0xA6 => "OpenBSD",
        0xA8 => "Darwin UFS",
        0xA9 => "NetBSD",
        0xAF => "HFS / HFS+",
        0xEE => "GPT protective",
        0xEF => "EFI (FAT-12/16/32)",
        0xFB => "VMware VMFS",
        0xFC => "VMware VMKCORE",
        0xFD => "Linux raid autodetect",
        _ => return None,
    })
}

/// Common names of GPT partition type GUIDs (lower-case string form).
pub fn gpt_type_name(guid: &str) -> Option<&'static str> {
    Some(match guid {
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI System",
        "21686148-6449-6e6f-744e-656564454649" => "BIOS boot",
        "024dee41-33e7-11d3-9d69-0008c781f39f" => "MBR partition scheme",
        "e3c9e316-0b5c-4db8-817d-f92df00215ae" => "Microsoft reserved",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "Microsoft basic data",
        "5808c8aa-7e8f-42e0-85d2-e1e90434cfb3" => "Windows LDM metadata",
        "af9b60a0-1431-4f62-bc68-3311714a69ad" => "Windows LDM data",
        "de94bba4-06d1-4d40-a16a-bfd50179d6ac" => "Windows recovery environment",
        "e75caf8f-f680-4cee-afa3-b001e56efc2d" => "Windows Storage Spaces",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "933ac7e1-2eb4-4f13-b844-0e14e2aef915" => "Linux home",
        "3b8f8425-20e0-4f3b-907f-1a25a76f98e8" => "Linux server data",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => "Linux root (x86-64)",
        "44479540-f297-41b2-9af7-d131d5f0458a" => "Linux root (x86)",
        "b921b045-1df0-41c3-af44-4c6f280d3fae" => "Linux root (ARM64)",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172" => "Linux extended boot",
        "ca7d7ccb-63ed-4c53-861c-1742536059cc" => "Linux LUKS",
        "6a898cc3-1dd2-11b2-99a6-080020736631" => "ZFS / Solaris /usr",
        "516e7cb6-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD disklabel",
        "516e7cba-6ecf-11d6-8ff8-00022d09712b" => "FreeBSD ZFS",
        "48465300-0000-11aa-aa11-00306543ecac" => "Apple HFS+",
        "7c3457ef-0000-11aa-aa11-00306543ecac" => "Apple APFS",
        "aa31e02a-400f-11db-9590-000c2911d1b8" => "VMware VMFS",
        "9d275380-40ad-11db-bf97-000c2911d1b8" => "VMware reserved",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_matches_sgdisk() {
        // EFI System type GUID as stored on disk.
        let raw = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(guid_mixed(&raw), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(gpt_type_name(&guid_mixed(&raw)), Some("EFI System"));
    }

    #[test]
    fn tiny_and_blank_disks_are_unknown() {
        for len in [0usize, 100, 511, 512, 4096] {
            let d = vec![0u8; len];
            let l = scan(&d).unwrap();
            assert_eq!(l.table, TableKind::Unknown, "len {len}");
            assert!(l.volumes.is_empty());
        }
    }

    #[test]
    fn primary_entry_past_end_is_corrupt() {
        let mut d = vec![0u8; 64 * 512];
        d[510] = 0x55;
        d[511] = 0xAA;
        d[446 + 4] = 0x83;
        d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&64u32.to_le_bytes());
        assert!(matches!(scan(&d), Err(Error::Corrupt { .. })));
        d[446 + 12..446 + 16].copy_from_slice(&63u32.to_le_bytes());
        let l = scan(&d).unwrap();
        assert_eq!(l.table, TableKind::Mbr);
        assert_eq!((l.volumes[0].start, l.volumes[0].size), (512, 63 * 512));
    }
}
