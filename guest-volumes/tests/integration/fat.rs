//! FAT12/16/32 images made by mkfs.fat and filled by mcopy.

use std::path::Path;

use guest_volumes::{open_fs, probe, scan, Error, FileKind, FsKind, TableKind};

use crate::common::*;

const ENV: &[(&str, &str)] = &[
    ("TZ", "UTC"),
    ("LANG", "C.UTF-8"),
    ("LC_ALL", "C.UTF-8"),
    ("MTOOLS_SKIP_CHECK", "1"),
];

/// Makes a FAT filesystem of `kib` KiB with `fat` bits and copies the
/// source tree (no symlinks) into it.
pub fn make_fat(
    dir: &Path,
    fat: &str,
    kib: u64,
    label: &str,
    extra: &[&str],
) -> std::path::PathBuf {
    let src = dir.join("src");
    if !src.exists() {
        source_tree(&src, false);
    }
    let img = dir.join(format!("fat{fat}.img"));
    let _ = std::fs::remove_file(&img);
    let kib_s = kib.to_string();
    let mut args = vec!["-F", fat, "-n", label, "-C"];
    args.extend_from_slice(extra);
    args.push(img.to_str().unwrap());
    args.push(&kib_s);
    run_env("mkfs.fat", &args, ENV);
    copy_into(&img, "", &src);
    img
}

/// Copies every entry of `src` into the FAT at `img` + `at` (mtools
/// `@@offset` syntax when `at` is not empty).
pub fn copy_into(img: &Path, at: &str, src: &Path) {
    let target = format!("{}{at}", img.display());
    let mut args: Vec<String> = vec!["-s".into(), "-m".into(), "-i".into(), target];
    for e in std::fs::read_dir(src).unwrap() {
        args.push(e.unwrap().path().to_str().unwrap().to_string());
    }
    args.push("::/".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_env("mcopy", &args, ENV);
}

fn check(img: &Path, src: &Path, kind: FsKind, label: &str) {
    let disk = FileDisk::open(img);
    let layout = scan(&*disk).unwrap();
    assert_eq!(layout.table, TableKind::None, "{kind:?}");
    let info = layout.volumes[0].filesystem.clone().unwrap();
    assert_eq!(info.kind, kind);
    assert_eq!(info.label.as_deref(), Some(label));
    let mut fs = open_fs(disk).unwrap();
    assert_eq!(fs.kind(), kind);
    let checks = Checks {
        mode: false,
        mtime: true,
        case_insensitive: true,
        extra: &[],
        skip_content: &[],
    };
    let n = compare_tree(&mut *fs, "/", src, &checks);
    assert!(n >= 13, "{n}");
    assert!(matches!(fs.metadata("/missing"), Err(Error::NotFound(_))));
    assert!(matches!(
        fs.read_dir("/hello.txt"),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(
        fs.read_file_at("/sub", 0, &mut [0; 1]),
        Err(Error::IsADirectory(_))
    ));
    assert!(matches!(
        fs.read_link("/hello.txt"),
        Err(Error::NotASymlink(_))
    ));
    assert_eq!(fs.metadata("/SUB/DEEPER").unwrap().kind, FileKind::Dir);
    // Byte paths: UTF-8 ones work, others are invalid paths.
    assert_eq!(fs.metadata_bytes(b"/sub/nested.txt").unwrap().size, 12);
    assert!(matches!(
        fs.metadata_bytes(b"/\xff"),
        Err(Error::InvalidPath(_))
    ));
    // Reads in the middle of a multi-cluster file, backwards then forwards.
    let want = noise(1_500_000, 7);
    let mut b = vec![0u8; 5000];
    for off in [1_000_000u64, 10, 700_123, 1_499_000] {
        let n = fs.read_file_at("/big.bin", off, &mut b).unwrap();
        let o = off as usize;
        assert_eq!(&b[..n], &want[o..(o + 5000).min(want.len())]);
    }
}

#[test]
fn fat32_tree_matches_source() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_fat(
        dir.path(),
        "32",
        40 * 1024,
        "FAT32VOL",
        &["-S", "512", "-s", "1"],
    );
    check(&img, &dir.path().join("src"), FsKind::Fat32, "FAT32VOL");
}

#[test]
fn fat16_tree_matches_source() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_fat(dir.path(), "16", 16 * 1024, "FAT16VOL", &[]);
    check(&img, &dir.path().join("src"), FsKind::Fat16, "FAT16VOL");
}

#[test]
fn fat12_tree_matches_source() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_fat(dir.path(), "12", 8 * 1024, "FAT12VOL", &[]);
    check(&img, &dir.path().join("src"), FsKind::Fat12, "FAT12VOL");
}

#[test]
fn fat_probe_uuid_matches_volume_id() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_fat(dir.path(), "16", 16 * 1024, "IDVOL", &["-i", "1234ABCD"]);
    let disk = FileDisk::open(&img);
    let info = probe(&*disk).unwrap().unwrap();
    assert_eq!(info.uuid.as_deref(), Some("1234-ABCD"));
    assert_eq!(info.size, Some(16 * 1024 * 1024));
}

#[test]
fn fat32_reads_are_proportional_on_a_large_volume() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_fat(dir.path(), "32", 2 * 1024 * 1024, "BIG", &[]);
    let disk = FileDisk::open(&img);
    let mut fs = open_fs(disk.clone()).unwrap();
    fs.read_dir("/sub/deeper").unwrap();
    let mut b = [0u8; 64];
    let n = fs.read_file_at("/sub/nested.txt", 0, &mut b).unwrap();
    assert_eq!(&b[..n], b"nested file\n");
    assert!(disk.read() < 1 << 20, "read {} bytes", disk.read());
}
