//! Valid tables and filesystems mutated one field at a time, truncated
//! images and random bytes: typed errors or sane results, never a panic
//! or a hang.

use std::sync::Arc;

use guest_volumes::{open_fs, probe, scan, Error, ReadAt, TableKind, Window};

use crate::common::*;

fn gpt_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::read(crate::tables::gpt_disk(dir.path())).unwrap()
}

/// Recomputes the entry-array and header CRCs of the header at `at`.
fn fix_crcs(d: &mut [u8], at: usize) {
    let entries_lba = u64::from_le_bytes(d[at + 72..at + 80].try_into().unwrap()) as usize;
    let n = u32::from_le_bytes(d[at + 80..at + 84].try_into().unwrap()) as usize;
    let size = u32::from_le_bytes(d[at + 84..at + 88].try_into().unwrap()) as usize;
    if let Some(array) = d.get(entries_lba * 512..entries_lba * 512 + n.saturating_mul(size)) {
        let crc = crc32fast::hash(array);
        d[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
    }
    d[at + 16..at + 20].fill(0);
    let crc = crc32fast::hash(&d[at..at + 92]);
    d[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
}

fn backup_at(d: &[u8]) -> usize {
    d.len() - 512
}

fn used_backup(d: &[u8]) -> bool {
    matches!(
        scan(&d).unwrap().table,
        TableKind::Gpt {
            used_backup: true,
            ..
        }
    )
}

#[test]
fn gpt_primary_damage_falls_back_to_the_backup() {
    let good = gpt_bytes();
    let want = scan(&good).unwrap().volumes;
    assert_eq!(want.len(), 4);
    assert!(!used_backup(&good));

    // Header byte flipped (CRC no longer matches).
    let mut d = good.clone();
    d[512 + 60] ^= 1;
    assert!(used_backup(&d));
    assert_eq!(scan(&d).unwrap().volumes, want);

    // Entry array byte flipped (array CRC no longer matches).
    let mut d = good.clone();
    d[1024 + 33] ^= 1;
    assert!(used_backup(&d));

    // Huge entry count and entry size, with CRCs made consistent.
    // 1024 entries of 4096 bytes: each within its cap, the array (4 MiB) not.
    let mut d = good.clone();
    d[512 + 80..512 + 84].copy_from_slice(&1024u32.to_le_bytes());
    d[512 + 84..512 + 88].copy_from_slice(&4096u32.to_le_bytes());
    fix_crcs(&mut d, 512);
    assert!(used_backup(&d));
    for (field, value) in [
        (80usize, u32::MAX),
        (80, 1_000_000),
        (84, 1 << 20),
        (84, 100),
        (84, 0),
    ] {
        let mut d = good.clone();
        d[512 + field..512 + field + 4].copy_from_slice(&value.to_le_bytes());
        fix_crcs(&mut d, 512);
        assert!(used_backup(&d), "field {field} = {value}");
    }

    // Wrong signature, wrong my_lba.
    let mut d = good.clone();
    d[512] = b'X';
    assert!(used_backup(&d));
    let mut d = good.clone();
    d[512 + 24] = 7;
    fix_crcs(&mut d, 512);
    assert!(used_backup(&d));
}

#[test]
fn gpt_both_headers_bad_is_corrupt() {
    let good = gpt_bytes();
    let mut d = good.clone();
    d[512 + 60] ^= 1;
    let b = backup_at(&d);
    d[b + 60] ^= 1;
    assert!(matches!(scan(&d), Err(Error::Corrupt { .. })));
}

#[test]
fn gpt_entry_past_the_disk_end_is_corrupt() {
    let mut d = gpt_bytes();
    // Entry 2's last LBA far past the end, in both copies of the array.
    let b = backup_at(&d);
    let backup_entries = u64::from_le_bytes(d[b + 72..b + 80].try_into().unwrap()) as usize * 512;
    for array in [1024usize, backup_entries] {
        d[array + 128 + 40..array + 128 + 48].copy_from_slice(&(1u64 << 40).to_le_bytes());
    }
    fix_crcs(&mut d, 512);
    fix_crcs(&mut d, b);
    assert!(matches!(scan(&d), Err(Error::Corrupt { .. })));
    // Last before first.
    let mut d = gpt_bytes();
    d[1024 + 40..1024 + 48].copy_from_slice(&1u64.to_le_bytes());
    fix_crcs(&mut d, 512);
    assert!(matches!(scan(&d), Err(Error::Corrupt { .. })));
}

#[test]
fn truncated_gpt_images() {
    let good = gpt_bytes();
    for len in [
        0usize,
        511,
        512,
        1000,
        1024,
        17 * 1024,
        1 << 20,
        20 << 20,
        good.len() - 512,
    ] {
        let d = good[..len].to_vec();
        // Typed result either way; cut inside the table it is an error.
        match scan(&d) {
            Ok(l) => assert!(l.volumes.iter().all(|v| v.start + v.size <= len as u64)),
            Err(e) => assert!(
                matches!(
                    e,
                    Error::Corrupt { .. } | Error::Io { .. } | Error::OutOfBounds { .. }
                ),
                "{e}"
            ),
        }
    }
    // Without its last 512 bytes the primary header (which names the old
    // last LBA) is still consistent but the partitions all fit.
    assert!(scan(&good[..good.len() - 512].to_vec()).is_ok());
    assert!(matches!(
        scan(&good[..1 << 20].to_vec()),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn ebr_loops_and_bad_links_are_corrupt() {
    let (_dir, path) = crate::tables::mbr_disk();
    let good = std::fs::read(&path).unwrap();
    assert_eq!(scan(&good).unwrap().volumes.len(), 4);
    let first_ebr = 18432 * 512;
    // The first EBR's link points at the second EBR; find it.
    let link = |d: &[u8], at: usize| {
        u32::from_le_bytes(d[at + 462 + 8..at + 462 + 12].try_into().unwrap())
    };
    let second_ebr = first_ebr + link(&good, first_ebr) as usize * 512;
    assert_eq!(&good[second_ebr + 510..second_ebr + 512], &[0x55, 0xAA]);

    // Second EBR links back to the first (relative sector 0).
    let mut d = good.clone();
    d[second_ebr + 462 + 4] = 0x05;
    d[second_ebr + 462 + 8..second_ebr + 462 + 12].copy_from_slice(&0u32.to_le_bytes());
    d[second_ebr + 462 + 12..second_ebr + 462 + 16].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(
        scan(&d),
        Err(Error::Corrupt {
            what: "EBR chain loops",
            ..
        })
    ));

    // Second EBR links to itself.
    let mut d2 = d.clone();
    let rel = ((second_ebr - first_ebr) / 512) as u32;
    d2[second_ebr + 462 + 8..second_ebr + 462 + 12].copy_from_slice(&rel.to_le_bytes());
    assert!(matches!(
        scan(&d2),
        Err(Error::Corrupt {
            what: "EBR chain loops",
            ..
        })
    ));

    // Link outside the extended partition / the disk.
    let mut d3 = d.clone();
    d3[second_ebr + 462 + 8..second_ebr + 462 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(scan(&d3), Err(Error::Corrupt { .. })));

    // Missing EBR signature.
    let mut d4 = good.clone();
    d4[second_ebr + 510] = 0;
    assert!(matches!(
        scan(&d4),
        Err(Error::Corrupt {
            what: "EBR signature",
            ..
        })
    ));

    // A primary partition past the end of the disk.
    let mut d5 = good.clone();
    d5[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(scan(&d5), Err(Error::Corrupt { .. })));

    // Logical partition larger than the extended partition.
    let mut d6 = good.clone();
    d6[first_ebr + 446 + 12..first_ebr + 446 + 16].copy_from_slice(&100_000u32.to_le_bytes());
    assert!(matches!(scan(&d6), Err(Error::Corrupt { .. })));

    // An EBR chain of more than MAX_LOGICAL links: a long chain of
    // well-formed EBRs, each pointing at the next sector.
    let mut d7 = vec![0u8; 4 << 20];
    d7[446 + 4] = 0x05;
    d7[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    d7[446 + 12..446 + 16].copy_from_slice(&8000u32.to_le_bytes());
    d7[510..512].copy_from_slice(&[0x55, 0xAA]);
    for i in 0..1000usize {
        let at = 512 + i * 512;
        d7[at + 462 + 4] = 0x05;
        d7[at + 462 + 8..at + 462 + 12].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        d7[at + 462 + 12..at + 462 + 16].copy_from_slice(&1u32.to_le_bytes());
        d7[at + 510..at + 512].copy_from_slice(&[0x55, 0xAA]);
    }
    assert!(matches!(
        scan(&d7),
        Err(Error::TooLarge {
            what: "EBR chain",
            ..
        })
    ));
}

/// Minimal FAT32 geometry read back from the boot sector.
fn fat32_geometry(d: &[u8]) -> (usize, usize, usize) {
    let bps = u16::from_le_bytes([d[11], d[12]]) as usize;
    let spc = d[13] as usize;
    let reserved = u16::from_le_bytes([d[14], d[15]]) as usize;
    let fats = d[16] as usize;
    let fat_sectors = u32::from_le_bytes(d[36..40].try_into().unwrap()) as usize;
    let fat_at = reserved * bps;
    let data_at = fat_at + fats * fat_sectors * bps;
    (fat_at, data_at, spc * bps)
}

fn first_cluster(img: &std::path::Path, path: &str) -> usize {
    let out = run_env(
        "mshowfat",
        &["-i", img.to_str().unwrap(), &format!("::{path}")],
        &[("MTOOLS_SKIP_CHECK", "1")],
    );
    let start = out.find('<').unwrap() + 1;
    out[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn fat_cluster_loops_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let img = crate::fat::make_fat(
        dir.path(),
        "32",
        40 * 1024,
        "LOOPS",
        &["-S", "512", "-s", "1"],
    );
    let good = std::fs::read(&img).unwrap();
    let (fat_at, data_at, cluster) = fat32_geometry(&good);

    // /sub's directory cluster chains to itself and holds no end marker.
    let sub = first_cluster(&img, "/sub");
    let mut d = good.clone();
    d[fat_at + sub * 4..fat_at + sub * 4 + 4].copy_from_slice(&(sub as u32).to_le_bytes());
    let sub_at = data_at + (sub - 2) * cluster;
    let entry: Vec<u8> = d[sub_at + 64..sub_at + 96].to_vec(); // after . and ..
    for slot in (sub_at + 96..sub_at + cluster).step_by(32) {
        d[slot..slot + 32].copy_from_slice(&entry);
    }
    let mut fs = open_fs(Arc::new(d)).unwrap();
    assert!(matches!(fs.read_dir("/sub"), Err(Error::TooLarge { .. })));

    // big.bin's chain points at cluster 1 (reserved) and past the volume.
    let big = first_cluster(&img, "/big.bin");
    for bad in [1u32, 0x0FFF_FFF0, 0x0FFF_FFF7] {
        let mut d = good.clone();
        d[fat_at + big * 4..fat_at + big * 4 + 4].copy_from_slice(&bad.to_le_bytes());
        let mut fs = open_fs(Arc::new(d)).unwrap();
        let mut b = vec![0u8; 4096];
        assert!(
            matches!(
                fs.read_file_at("/big.bin", 0, &mut b),
                Err(Error::Corrupt { .. })
            ),
            "{bad:#x}"
        );
    }
    // A chain that ends before the file does.
    let mut d = good.clone();
    d[fat_at + big * 4..fat_at + big * 4 + 4].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
    let mut fs = open_fs(Arc::new(d)).unwrap();
    let mut b = vec![0u8; 4096];
    assert!(matches!(
        fs.read_file_at("/big.bin", 0, &mut b),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn fat_boot_sector_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let img = crate::fat::make_fat(dir.path(), "16", 16 * 1024, "MUT", &[]);
    let good = std::fs::read(&img).unwrap();
    assert!(open_fs(Arc::new(good.clone())).is_ok());
    // bytes/sector, sectors/cluster, reserved, FAT count, root entries,
    // total sectors, FAT size: each set to 0 and to 0xFF…
    for field in [11usize, 13, 14, 16, 17, 19, 22] {
        for value in [0u8, 0xFF, 3] {
            let mut d = good.clone();
            d[field] = value;
            if field != 13 && field != 16 {
                d[field + 1] = value;
            }
            // Either not FAT any more, or a FAT whose reads are checked.
            match open_fs(Arc::new(d)) {
                Err(e) => assert!(!matches!(e, Error::Io { .. }), "field {field}: {e}"),
                Ok(mut fs) => {
                    let _ = fs.read_dir("/");
                    let mut b = vec![0u8; 1000];
                    let _ = fs.read_file_at("/big.bin", 0, &mut b);
                }
            }
        }
    }
}

#[test]
fn ext4_superblock_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source_tree(&src, true);
    let img = dir.path().join("e.img");
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            src.to_str().unwrap(),
            img.to_str().unwrap(),
            "16M",
        ],
    );
    let good = std::fs::read(&img).unwrap();
    // Truncated: the superblock says 16 MiB, the volume is 1 MiB.
    let short = good[..1 << 20].to_vec();
    match open_fs(Arc::new(short)) {
        Err(_) => {}
        Ok(mut fs) => {
            let mut b = vec![0u8; 4096];
            assert!(fs.read_file_at("/big.bin", 1_400_000, &mut b).is_err());
        }
    }
    // Superblock fields: blocks count, log block size, inodes per group,
    // first data block, blocks per group.
    for (off, value) in [
        (4usize, u32::MAX),
        (24, 30),
        (40, 0),
        (20, 1000),
        (32, 0),
        (32, 7),
    ] {
        let mut d = good.clone();
        d[1024 + off..1024 + off + 4].copy_from_slice(&value.to_le_bytes());
        if let Ok(mut fs) = open_fs(Arc::new(d)) {
            let _ = fs.read_dir("/");
            let _ = fs.read_dir("/sub");
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut seed = 0x1234_5678_9abc_def0u64;
    for round in 0..300u64 {
        let len = [512usize, 4096, 70_000, 200_000][round as usize % 4];
        let mut d = noise(len, seed);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Plant signatures so the parsers get past their first checks.
        match round % 6 {
            0 => d[510..512].copy_from_slice(&[0x55, 0xAA]),
            1 if len > 1024 => {
                d[510..512].copy_from_slice(&[0x55, 0xAA]);
                d[446 + 4] = 0xEE;
                d[512..520].copy_from_slice(b"EFI PART");
            }
            2 => {
                d[0] = 0xEB;
                d[11..13].copy_from_slice(&512u16.to_le_bytes());
                d[13] = 1;
                d[16] = 2;
                d[21] = 0xF8;
            }
            3 if len > 2048 => d[1024 + 56..1024 + 58].copy_from_slice(&0xEF53u16.to_le_bytes()),
            4 => d[3..11].copy_from_slice(b"NTFS    "),
            _ => {}
        }
        let _ = scan(&d);
        let _ = probe(&d);
        let arc: Arc<dyn ReadAt> = Arc::new(d);
        if let Ok(w) = Window::new(arc.clone(), 0, arc.size()) {
            let _ = probe(&w);
        }
        if let Ok(mut fs) = open_fs(arc) {
            if let Ok(entries) = fs.read_dir("/") {
                for e in entries.iter().take(8) {
                    let p = format!("/{}", e.name);
                    let _ = fs.metadata(&p);
                    let mut b = vec![0u8; 4096];
                    let _ = fs.read_file_at(&p, 0, &mut b);
                }
            }
        }
    }
}

/// The fuzz seeds are what they claim to be, so the fuzzer starts past
/// the magic checks.
#[test]
fn fuzz_seeds_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/guest_volumes");
    let read = |name: &str| std::fs::read(format!("{dir}/{name}")).unwrap();

    let fat = read("seed-fat12");
    let mut fs = open_fs(Arc::new(fat)).unwrap();
    assert_eq!(fs.kind(), guest_volumes::FsKind::Fat12);
    let names: Vec<String> = fs
        .read_dir("/")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["a.txt", "d"]);
    assert_eq!(read_all(&mut *fs, "/d/Long Name.txt"), b"nested\n");

    let ext = read("seed-ext2");
    let mut fs = open_fs(Arc::new(ext)).unwrap();
    assert_eq!(fs.kind(), guest_volumes::FsKind::Ext2);
    assert_eq!(read_all(&mut *fs, "/a.txt"), b"hi\n");

    let gpt = scan(&read("seed-gpt")).unwrap();
    assert!(matches!(gpt.table, TableKind::Gpt { .. }));
    assert_eq!(gpt.volumes.len(), 2);
    let mbr = scan(&read("seed-mbr")).unwrap();
    assert_eq!(mbr.table, TableKind::Mbr);
    let numbers: Vec<u32> = mbr.volumes.iter().map(|v| v.number).collect();
    assert_eq!(numbers, [1, 5, 6]);
}

/// Regression (fuzzer): a block count with garbage in its high half made
/// ext4-view allocate a 53 GB descriptor table.
#[test]
fn ext_block_count_high_half_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("e.img");
    sparse_file(&img, 4 << 20);
    run(
        "mkfs.ext4",
        &["-q", "-F", "-O", "^64bit", img.to_str().unwrap()],
    );
    let mut d = std::fs::read(&img).unwrap();
    assert!(open_fs(Arc::new(d.clone())).is_ok());
    d[1024 + 0x150..1024 + 0x154].copy_from_slice(&0x0000_0fffu32.to_le_bytes());
    assert!(matches!(open_fs(Arc::new(d)), Err(Error::Corrupt { .. })));
}
