//! Partition tables written by sfdisk (MBR with extended + logical
//! partitions) and sgdisk (GPT, names, type codes, hybrid MBR), checked
//! against `sfdisk --json` and against the filesystems spliced into them.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use guest_volumes::{open_fs, scan, FsKind, PartitionKind, ReadAt, TableKind, Window};

use crate::common::*;

/// Copies the file `fs_img` into `disk` at byte `at`.
fn splice(disk: &Path, at: u64, fs_img: &Path) {
    let data = std::fs::read(fs_img).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&data, at).unwrap();
}

fn sfdisk_json(disk: &Path) -> serde_json::Value {
    let out = run("sfdisk", &["--json", disk.to_str().unwrap()]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["partitiontable"].clone()
}

fn ext4_image(dir: &Path, name: &str, mib: u64, label: &str) -> std::path::PathBuf {
    let src = dir.join(format!("{name}-src"));
    source_tree(&src, true);
    let img = dir.join(name);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            src.to_str().unwrap(),
            "-L",
            label,
            img.to_str().unwrap(),
            &format!("{mib}M"),
        ],
    );
    img
}

/// The MBR disk of these tests; returned with its directory.
pub fn mbr_disk() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("mbr.img");
    sparse_file(&disk, 64 << 20);
    let script = "label: dos\n\
        start=2048, size=16384, type=83, bootable\n\
        start=18432, size=53248, type=5\n\
        start=71680, size=8192, type=82\n\
        start=20480, size=32768, type=6\n\
        start=55296, size=16384, type=83\n";
    let mut child = std::process::Command::new("sfdisk")
        .args(["-q", disk.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    (dir, disk)
}

#[test]
fn mbr_with_logical_partitions() {
    let (dir, disk) = mbr_disk();
    let d = dir.path();
    splice(&disk, 2048 * 512, &ext4_image(d, "p1", 8, "first"));
    splice(&disk, 55296 * 512, &ext4_image(d, "p6", 8, "sixth"));
    let fat = crate::fat::make_fat(d, "16", 16 * 1024, "LOGICAL", &[]);
    splice(&disk, 20480 * 512, &fat);
    let swap = d.join("swap.img");
    sparse_file(&swap, 4 << 20);
    let out = run("mkswap", &["-L", "swappy", swap.to_str().unwrap()]);
    splice(&disk, 71680 * 512, &swap);

    let file = FileDisk::open(&disk);
    let layout = scan(&*file).unwrap();
    assert_eq!(layout.table, TableKind::Mbr);
    let numbers: Vec<u32> = layout.volumes.iter().map(|v| v.number).collect();
    assert_eq!(numbers, [1, 3, 5, 6]);

    // Same starts, sizes and types as sfdisk reports.
    let json = sfdisk_json(&disk);
    for p in json["partitions"].as_array().unwrap() {
        let node = p["node"].as_str().unwrap();
        let number: u32 = node.rsplit("img").next().unwrap().parse().unwrap();
        let ty = u8::from_str_radix(p["type"].as_str().unwrap(), 16).unwrap();
        if ty == 5 {
            continue;
        }
        let v = layout.volumes.iter().find(|v| v.number == number).unwrap();
        assert_eq!(v.start, p["start"].as_u64().unwrap() * 512, "{node}");
        assert_eq!(v.size, p["size"].as_u64().unwrap() * 512, "{node}");
        assert_eq!(
            v.bootable,
            p["bootable"].as_bool().unwrap_or(false),
            "{node}"
        );
        assert!(matches!(v.kind, PartitionKind::Mbr { type_byte, .. } if type_byte == ty));
    }

    let fs_of = |n: u32| {
        layout
            .volumes
            .iter()
            .find(|v| v.number == n)
            .unwrap()
            .filesystem
            .clone()
            .unwrap()
    };
    assert_eq!(
        (fs_of(1).kind, fs_of(1).label.as_deref()),
        (FsKind::Ext4, Some("first"))
    );
    assert_eq!(
        (fs_of(6).kind, fs_of(6).label.as_deref()),
        (FsKind::Ext4, Some("sixth"))
    );
    assert_eq!(
        (fs_of(5).kind, fs_of(5).label.as_deref()),
        (FsKind::Fat16, Some("LOGICAL"))
    );
    let swap_info = fs_of(3);
    assert_eq!(
        (swap_info.kind, swap_info.label.as_deref()),
        (FsKind::Swap, Some("swappy"))
    );
    let uuid = out
        .lines()
        .find_map(|l| l.split("UUID=").nth(1))
        .unwrap()
        .trim();
    assert_eq!(swap_info.uuid.as_deref(), Some(uuid));

    // Files of the logical FAT partition, through a window.
    let v5 = layout.volumes.iter().find(|v| v.number == 5).unwrap();
    let base: Arc<dyn ReadAt> = file.clone();
    let window: Arc<dyn ReadAt> = Arc::new(Window::new(base, v5.start, v5.size).unwrap());
    let mut fs = open_fs(window).unwrap();
    let checks = Checks {
        mode: false,
        mtime: true,
        case_insensitive: true,
        extra: &[],
        skip_content: &[],
    };
    compare_tree(&mut *fs, "/", &d.join("src"), &checks);
    let mut fs6 = open_fs(Arc::new(
        Window::new(file.clone(), 55296 * 512, 16384 * 512).unwrap(),
    ))
    .unwrap();
    let mut b = [0u8; 32];
    let n = fs6.read_file_at("/sub/nested.txt", 0, &mut b).unwrap();
    assert_eq!(&b[..n], b"nested file\n");
}

/// The GPT disk of these tests.
pub fn gpt_disk(dir: &Path) -> std::path::PathBuf {
    let disk = dir.join("gpt.img");
    sparse_file(&disk, 64 << 20);
    run(
        "sgdisk",
        &[
            "-n",
            "1:2048:+8M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI system",
            "-n",
            "2:0:+16M",
            "-t",
            "2:8300",
            "-c",
            "2:Linux root ü",
            "-A",
            "2:set:2",
            "-A",
            "2:set:60",
            "-n",
            "3:0:+4M",
            "-t",
            "3:8200",
            "-n",
            "5:0:+8M",
            "-t",
            "5:0700",
            "-c",
            "5:data",
            disk.to_str().unwrap(),
        ],
    );
    disk
}

#[test]
fn gpt_matches_sfdisk_and_holds_filesystems() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = gpt_disk(d);
    let json = sfdisk_json(&disk);
    let parts = json["partitions"].as_array().unwrap().clone();
    let start_of = |i: usize| parts[i]["start"].as_u64().unwrap() * 512;
    let fat = crate::fat::make_fat(d, "12", 8 * 1024, "ESP", &[]);
    splice(&disk, start_of(0), &fat);
    splice(&disk, start_of(1), &ext4_image(d, "root", 16, "root"));
    let (ntfs, _) = crate::ntfs::make_ntfs(d, 8 << 20, "Data");
    splice(&disk, start_of(3), &ntfs);

    let file = FileDisk::open(&disk);
    let layout = scan(&*file).unwrap();
    // Table + four probes: a few sectors each, nowhere near the 64 MiB.
    assert!(file.read() < 300 * 1024, "scan read {} bytes", file.read());
    match &layout.table {
        TableKind::Gpt {
            protective_mbr,
            hybrid_mbr,
            disk_guid,
            sector_size,
            used_backup,
        } => {
            assert!(*protective_mbr && !*hybrid_mbr && !*used_backup);
            assert_eq!(*sector_size, 512);
            assert_eq!(disk_guid.to_uppercase(), json["id"].as_str().unwrap());
        }
        other => panic!("{other:?}"),
    }
    let numbers: Vec<u32> = layout.volumes.iter().map(|v| v.number).collect();
    assert_eq!(numbers, [1, 2, 3, 5], "GPT entry index + 1, gaps kept");
    for (v, p) in layout.volumes.iter().zip(&parts) {
        assert_eq!(v.start, p["start"].as_u64().unwrap() * 512);
        assert_eq!(v.size, p["size"].as_u64().unwrap() * 512);
        assert_eq!(
            v.guid.as_deref().unwrap().to_uppercase(),
            p["uuid"].as_str().unwrap()
        );
        assert_eq!(v.name.as_deref(), p["name"].as_str());
        let PartitionKind::Gpt { type_guid, .. } = &v.kind else {
            panic!()
        };
        assert_eq!(type_guid.to_uppercase(), p["type"].as_str().unwrap());
    }
    let names: Vec<Option<&str>> = layout
        .volumes
        .iter()
        .map(|v| match &v.kind {
            PartitionKind::Gpt { name, .. } => *name,
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        [
            Some("EFI System"),
            Some("Linux filesystem"),
            Some("Linux swap"),
            Some("Microsoft basic data")
        ]
    );
    assert_eq!(layout.volumes[1].attributes, (1 << 2) | (1 << 60));
    assert!(layout.volumes[1].bootable);
    let kinds: Vec<Option<FsKind>> = layout
        .volumes
        .iter()
        .map(|v| v.filesystem.as_ref().map(|f| f.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            Some(FsKind::Fat12),
            Some(FsKind::Ext4),
            None,
            Some(FsKind::Ntfs)
        ]
    );

    // A hybrid MBR: sgdisk -h keeps the GPT authoritative.
    run("sgdisk", &["-h", "2", disk.to_str().unwrap()]);
    let hybrid = scan(&*FileDisk::open(&disk)).unwrap();
    assert!(matches!(
        hybrid.table,
        TableKind::Gpt {
            protective_mbr: true,
            hybrid_mbr: true,
            ..
        }
    ));
    assert_eq!(hybrid.volumes.len(), 4);
}

#[test]
fn gpt_with_4k_sectors() {
    // sgdisk/sfdisk here cannot write for 4096-byte sectors on a file, so
    // re-lay sgdisk's GPT for them: header at byte 4096, entries at LBA 2,
    // every LBA divided by 8, CRCs recomputed.
    let dir = tempfile::tempdir().unwrap();
    let path = gpt_disk(dir.path());
    let mut d = std::fs::read(&path).unwrap();
    let total = d.len() as u64 / 4096;
    let mut entries = d[1024..1024 + 128 * 128].to_vec();
    for e in entries.chunks_exact_mut(128).filter(|e| e[..16] != [0; 16]) {
        for field in [32usize, 40] {
            let v = u64::from_le_bytes(e[field..field + 8].try_into().unwrap());
            let v = if field == 32 { v / 8 } else { (v + 1) / 8 - 1 };
            e[field..field + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    let mut h = d[512..512 + 92].to_vec();
    h[24..32].copy_from_slice(&1u64.to_le_bytes());
    h[32..40].copy_from_slice(&(total - 1).to_le_bytes());
    h[40..48].copy_from_slice(&6u64.to_le_bytes());
    h[48..56].copy_from_slice(&(total - 6).to_le_bytes());
    h[72..80].copy_from_slice(&2u64.to_le_bytes());
    h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    d[512..1024 + 128 * 128].fill(0);
    let len = d.len();
    d[len - 512..].fill(0); // the 512-byte backup header
    d[4096..4096 + 92].copy_from_slice(&h);
    d[8192..8192 + entries.len()].copy_from_slice(&entries);
    let layout = scan(&d).unwrap();
    assert!(
        matches!(
            layout.table,
            TableKind::Gpt {
                sector_size: 4096,
                ..
            }
        ),
        "{:?}",
        layout.table
    );
    assert_eq!(
        (layout.volumes[0].start, layout.volumes[0].size),
        (2048 * 512, 8 << 20)
    );
    assert_eq!(layout.volumes[1].name.as_deref(), Some("Linux root ü"));
}
