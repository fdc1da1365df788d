//! Filesystem identification by superblock magic.

use serde::Serialize;

use crate::bytes::{
    label, slice, u16_be, u16_le, u32_be, u32_le, u64_be, u64_le, u8_at, utf16le, uuid_be,
};
use crate::read::read_exact;
use crate::{Error, ReadAt};

/// A recognised filesystem or volume format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FsKind {
    /// ext2.
    Ext2,
    /// ext3 (ext2 with a journal).
    Ext3,
    /// ext4.
    Ext4,
    /// XFS.
    Xfs,
    /// Btrfs.
    Btrfs,
    /// NTFS.
    Ntfs,
    /// FAT12.
    Fat12,
    /// FAT16.
    Fat16,
    /// FAT32.
    Fat32,
    /// exFAT.
    ExFat,
    /// Linux swap.
    Swap,
    /// LVM2 physical volume.
    #[serde(rename = "lvm_pv")]
    LvmPv,
    /// LUKS encrypted volume.
    Luks,
}

/// What [`probe`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsInfo {
    /// The format.
    pub kind: FsKind,
    /// The volume label.
    pub label: Option<String>,
    /// The UUID or serial number, in the format's usual text form.
    pub uuid: Option<String>,
    /// The size the filesystem says it has, in bytes.
    pub size: Option<u64>,
}

const HEAD: usize = 4096;

/// Identifies the filesystem (or swap, LVM PV, LUKS) in `vol` from its
/// superblock. Reads at most the first 8 KiB, the Btrfs superblock at
/// 64 KiB and, for exFAT, one cluster of the root directory.
pub fn probe(vol: &dyn ReadAt) -> Result<Option<FsInfo>, Error> {
    let size = vol.size();
    let head_len = (size.min(HEAD as u64 * 2)) as usize;
    if head_len < 512 {
        return Ok(None);
    }
    let mut head = vec![0u8; head_len];
    read_exact(vol, 0, &mut head, "filesystem superblock")?;

    if let Some(i) = luks(&head) {
        return Ok(Some(i));
    }
    if let Some(i) = lvm(&head) {
        return Ok(Some(i));
    }
    if let Some(i) = ntfs(&head, vol) {
        return Ok(Some(i));
    }
    if let Some(i) = exfat(&head, vol) {
        return Ok(Some(i));
    }
    if let Some(i) = fat(&head) {
        return Ok(Some(i));
    }
    if let Some(i) = ext(&head) {
        return Ok(Some(i));
    }
    if let Some(i) = xfs(&head) {
        return Ok(Some(i));
    }
    if let Some(i) = swap(&head) {
        return Ok(Some(i));
    }
    if size >= 0x10000 + 4096 {
        let mut sb = vec![0u8; 4096];
        read_exact(vol, 0x10000, &mut sb, "Btrfs superblock")?;
        if let Some(i) = btrfs(&sb) {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// True when sector 0 is the boot sector of a FAT, NTFS or exFAT
/// filesystem rather than a partition table.
pub(crate) fn is_boot_sector_fs(sector: &[u8]) -> bool {
    slice(sector, 3, 8) == Some(b"NTFS    ")
        || slice(sector, 3, 8) == Some(b"EXFAT   ")
        || Bpb::parse(sector).is_some()
}

fn luks(h: &[u8]) -> Option<FsInfo> {
    if slice(h, 0, 6)? != b"LUKS\xba\xbe" {
        return None;
    }
    let version = u16_be(h, 6)?;
    let uuid = label(slice(h, 168, 40)?);
    let lbl = if version == 2 {
        label(slice(h, 24, 48)?)
    } else {
        None
    };
    Some(FsInfo {
        kind: FsKind::Luks,
        label: lbl,
        uuid,
        size: None,
    })
}

fn lvm(h: &[u8]) -> Option<FsInfo> {
    for sector in 0..4usize {
        let s = slice(h, sector * 512, 512)?;
        if slice(s, 0, 8)? != b"LABELONE" || slice(s, 24, 8)? != b"LVM2 001" {
            continue;
        }
        let pvh = u32_le(s, 20)? as usize;
        let id = slice(s, pvh, 32)?;
        let dev_size = u64_le(s, pvh.checked_add(32)?)?;
        let id = String::from_utf8_lossy(id);
        let mut uuid = String::new();
        let mut pos = 0;
        for (i, n) in [6usize, 4, 4, 4, 4, 4, 6].iter().enumerate() {
            if i > 0 {
                uuid.push('-');
            }
            uuid.push_str(id.get(pos..pos + n)?);
            pos += n;
        }
        return Some(FsInfo {
            kind: FsKind::LvmPv,
            label: None,
            uuid: Some(uuid),
            size: Some(dev_size),
        });
    }
    None
}

fn ntfs(h: &[u8], vol: &dyn ReadAt) -> Option<FsInfo> {
    if slice(h, 3, 8)? != b"NTFS    " {
        return None;
    }
    let bps = u64::from(u16_le(h, 11)?);
    let sectors = u64_le(h, 0x28)?;
    let serial = u64_le(h, 0x48)?;
    let label = crate::fs::ntfs::volume_label(vol);
    Some(FsInfo {
        kind: FsKind::Ntfs,
        label,
        uuid: Some(format!("{serial:016X}")),
        size: sectors.checked_mul(bps),
    })
}

fn exfat(h: &[u8], vol: &dyn ReadAt) -> Option<FsInfo> {
    if slice(h, 3, 8)? != b"EXFAT   " {
        return None;
    }
    let sectors = u64_le(h, 72)?;
    let heap = u64::from(u32_le(h, 88)?);
    let root = u32_le(h, 96)?;
    let serial = u32_le(h, 100)?;
    let bps_shift = u32::from(u8_at(h, 108)?);
    let spc_shift = u32::from(u8_at(h, 109)?);
    if !(9..=12).contains(&bps_shift) || spc_shift > 25 - bps_shift {
        return None;
    }
    let bps = 1u64 << bps_shift;
    let cluster = bps << spc_shift;
    // The volume label is a 0x83 entry in the root directory's first cluster.
    let mut lbl = None;
    let root_at = root
        .checked_sub(2)
        .and_then(|c| u64::from(c).checked_mul(cluster))
        .and_then(|o| o.checked_add(heap.checked_mul(bps)?));
    if let Some(at) = root_at {
        let len = cluster.min(64 * 1024);
        let mut buf = vec![0u8; len as usize];
        if read_exact(vol, at, &mut buf, "exFAT root directory").is_ok() {
            for e in buf.chunks_exact(32) {
                match e[0] {
                    0x00 => break,
                    0x83 => {
                        let n = usize::from(e[1].min(11));
                        lbl = Some(utf16le(&e[2..2 + 2 * n])).filter(|s| !s.is_empty());
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    Some(FsInfo {
        kind: FsKind::ExFat,
        label: lbl,
        uuid: Some(format!("{:04X}-{:04X}", serial >> 16, serial & 0xFFFF)),
        size: sectors.checked_mul(bps),
    })
}

/// A validated FAT BIOS parameter block.
#[derive(Debug, Clone)]
pub(crate) struct Bpb {
    pub(crate) bytes_per_sector: u32,
    pub(crate) sectors_per_cluster: u32,
    pub(crate) reserved: u32,
    pub(crate) fats: u32,
    pub(crate) root_entries: u32,
    pub(crate) total_sectors: u64,
    pub(crate) fat_sectors: u64,
    pub(crate) root_cluster: u32,
    pub(crate) kind: FsKind,
    pub(crate) clusters: u32,
    pub(crate) volume_id: u32,
    pub(crate) label: Option<String>,
}

impl Bpb {
    /// Parses and validates a FAT boot sector.
    pub(crate) fn parse(b: &[u8]) -> Option<Bpb> {
        let jump = u8_at(b, 0)?;
        if jump != 0xEB && jump != 0xE9 {
            return None;
        }
        let bytes_per_sector = u32::from(u16_le(b, 11)?);
        let sectors_per_cluster = u32::from(u8_at(b, 13)?);
        let reserved = u32::from(u16_le(b, 14)?);
        let fats = u32::from(u8_at(b, 16)?);
        let root_entries = u32::from(u16_le(b, 17)?);
        let total16 = u32::from(u16_le(b, 19)?);
        let media = u8_at(b, 21)?;
        let fat16 = u32::from(u16_le(b, 22)?);
        let total32 = u32_le(b, 32)?;
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
            || !sectors_per_cluster.is_power_of_two()
            || sectors_per_cluster > 128
            || reserved == 0
            || fats == 0
            || fats > 4
            || (media != 0xF0 && media < 0xF8)
        {
            return None;
        }
        let total_sectors = u64::from(if total16 != 0 { total16 } else { total32 });
        let fat_sectors = u64::from(if fat16 != 0 { fat16 } else { u32_le(b, 36)? });
        if total_sectors == 0 || fat_sectors == 0 {
            return None;
        }
        let root_sectors = (u64::from(root_entries) * 32).div_ceil(u64::from(bytes_per_sector));
        let meta = u64::from(reserved) + u64::from(fats) * fat_sectors + root_sectors;
        let data_sectors = total_sectors.checked_sub(meta)?;
        let clusters = data_sectors / u64::from(sectors_per_cluster);
        let kind = if clusters < 4085 {
            FsKind::Fat12
        } else if clusters < 65525 {
            FsKind::Fat16
        } else {
            FsKind::Fat32
        };
        let clusters = u32::try_from(clusters).ok()?.min(0x0FFF_FFF5);
        // The FAT must be large enough to describe every cluster.
        let needed_fat_bytes = match kind {
            FsKind::Fat12 => (u64::from(clusters) + 2) * 3 / 2,
            FsKind::Fat16 => (u64::from(clusters) + 2) * 2,
            _ => (u64::from(clusters) + 2) * 4,
        };
        if fat_sectors * u64::from(bytes_per_sector) < needed_fat_bytes {
            return None;
        }
        let (root_cluster, ext) = if kind == FsKind::Fat32 {
            if root_entries != 0 || fat16 != 0 {
                return None;
            }
            (u32_le(b, 44)?, 64)
        } else {
            if root_entries == 0 {
                return None;
            }
            (0, 36)
        };
        let (volume_id, label_bytes) = if u8_at(b, ext + 2)? == 0x29 {
            (u32_le(b, ext + 3)?, Some(slice(b, ext + 7, 11)?))
        } else {
            (0, None)
        };
        let lbl = label_bytes.and_then(label).filter(|l| l != "NO NAME");
        Some(Bpb {
            bytes_per_sector,
            sectors_per_cluster,
            reserved,
            fats,
            root_entries,
            total_sectors,
            fat_sectors,
            root_cluster,
            kind,
            clusters,
            volume_id,
            label: lbl,
        })
    }
}

fn fat(h: &[u8]) -> Option<FsInfo> {
    let bpb = Bpb::parse(h)?;
    Some(FsInfo {
        kind: bpb.kind,
        label: bpb.label.clone(),
        uuid: Some(format!(
            "{:04X}-{:04X}",
            bpb.volume_id >> 16,
            bpb.volume_id & 0xFFFF
        )),
        size: bpb
            .total_sectors
            .checked_mul(u64::from(bpb.bytes_per_sector)),
    })
}

fn ext(h: &[u8]) -> Option<FsInfo> {
    let sb = slice(h, 1024, 1024)?;
    if u16_le(sb, 56)? != 0xEF53 {
        return None;
    }
    let log = u32_le(sb, 24)?;
    if log > 6 {
        return None;
    }
    let block = 1024u64 << log;
    let compat = u32_le(sb, 92)?;
    let incompat = u32_le(sb, 96)?;
    let ro_compat = u32_le(sb, 100)?;
    let mut blocks = u64::from(u32_le(sb, 4)?);
    if incompat & 0x80 != 0 {
        blocks |= u64::from(u32_le(sb, 0x150)?) << 32;
    }
    // extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed,
    // largedir, inline_data, encrypt, casefold.
    const EXT4_INCOMPAT: u32 =
        0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000;
    // huge_file, gdt_csum, dir_nlink, extra_isize, quota, bigalloc,
    // metadata_csum.
    const EXT4_RO: u32 = 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400;
    let kind = if incompat & EXT4_INCOMPAT != 0 || ro_compat & EXT4_RO != 0 {
        FsKind::Ext4
    } else if compat & 0x4 != 0 {
        FsKind::Ext3
    } else {
        FsKind::Ext2
    };
    Some(FsInfo {
        kind,
        label: label(slice(sb, 120, 16)?),
        uuid: uuid_be(slice(sb, 104, 16)?),
        size: blocks.checked_mul(block),
    })
}

fn xfs(h: &[u8]) -> Option<FsInfo> {
    if slice(h, 0, 4)? != b"XFSB" {
        return None;
    }
    let block = u64::from(u32_be(h, 4)?);
    let blocks = u64_be(h, 8)?;
    Some(FsInfo {
        kind: FsKind::Xfs,
        label: label(slice(h, 108, 12)?),
        uuid: uuid_be(slice(h, 32, 16)?),
        size: blocks.checked_mul(block),
    })
}

fn btrfs(sb: &[u8]) -> Option<FsInfo> {
    if slice(sb, 0x40, 8)? != b"_BHRfS_M" {
        return None;
    }
    Some(FsInfo {
        kind: FsKind::Btrfs,
        label: label(slice(sb, 0x12B, 256)?),
        uuid: uuid_be(slice(sb, 0x20, 16)?),
        size: u64_le(sb, 0x70),
    })
}

fn swap(h: &[u8]) -> Option<FsInfo> {
    let magic = slice(h, 4096 - 10, 10)?;
    if magic != b"SWAPSPACE2" && magic != b"SWAP-SPACE" {
        return None;
    }
    let last_page = u64::from(u32_le(h, 1024 + 4)?);
    Some(FsInfo {
        kind: FsKind::Swap,
        label: label(slice(h, 1024 + 28, 16)?),
        uuid: uuid_be(slice(h, 1024 + 12, 16)?)
            .filter(|u| u != "00000000-0000-0000-0000-000000000000"),
        size: last_page.checked_add(1).map(|p| p * 4096),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext_image(incompat: u32, compat: u32, ro: u32) -> Vec<u8> {
        let mut d = vec![0u8; 8192];
        let sb = 1024;
        d[sb + 4..sb + 8].copy_from_slice(&8u32.to_le_bytes());
        d[sb + 24..sb + 28].copy_from_slice(&0u32.to_le_bytes());
        d[sb + 56..sb + 58].copy_from_slice(&0xEF53u16.to_le_bytes());
        d[sb + 92..sb + 96].copy_from_slice(&compat.to_le_bytes());
        d[sb + 96..sb + 100].copy_from_slice(&incompat.to_le_bytes());
        d[sb + 100..sb + 104].copy_from_slice(&ro.to_le_bytes());
        d[sb + 120..sb + 125].copy_from_slice(b"hello");
        d
    }

    #[test]
    fn ext_generations() {
        let p = |d: Vec<u8>| probe(&d).unwrap().unwrap();
        assert_eq!(p(ext_image(0, 0, 3)).kind, FsKind::Ext2);
        assert_eq!(p(ext_image(0, 4, 3)).kind, FsKind::Ext3);
        assert_eq!(p(ext_image(0x40, 4, 3)).kind, FsKind::Ext4);
        let i = p(ext_image(0, 0, 0));
        assert_eq!(i.label.as_deref(), Some("hello"));
        assert_eq!(i.size, Some(8192));
        let mut bad = ext_image(0, 0, 0);
        bad[1024 + 24] = 40; // block size shift out of range
        assert_eq!(probe(&bad).unwrap(), None);
    }

    #[test]
    fn magics() {
        let mut d = vec![0u8; 8192];
        d[..6].copy_from_slice(b"LUKS\xba\xbe");
        d[7] = 2;
        d[168..172].copy_from_slice(b"abcd");
        let i = probe(&d).unwrap().unwrap();
        assert_eq!((i.kind, i.uuid.as_deref()), (FsKind::Luks, Some("abcd")));

        let mut d = vec![0u8; 8192];
        d[4086..4096].copy_from_slice(b"SWAPSPACE2");
        d[1028..1032].copy_from_slice(&9u32.to_le_bytes());
        let i = probe(&d).unwrap().unwrap();
        assert_eq!((i.kind, i.size), (FsKind::Swap, Some(40960)));

        let mut d = vec![0u8; 8192];
        d[..4].copy_from_slice(b"XFSB");
        assert_eq!(probe(&d).unwrap().unwrap().kind, FsKind::Xfs);

        assert_eq!(probe(&vec![0u8; 100_000]).unwrap(), None);
        assert_eq!(probe(&vec![0u8; 10]).unwrap(), None);
    }
}
