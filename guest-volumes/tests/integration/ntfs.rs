//! NTFS images made by mkntfs and filled with ntfscp (root-level files
//! only: ntfs-3g has no tool that creates directories without mounting).

use std::path::Path;

use guest_volumes::{open_fs, scan, Error, FileKind, FsKind, TableKind};

use crate::common::*;

pub fn make_ntfs(
    dir: &Path,
    size: u64,
    label: &str,
) -> (std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    let img = dir.join("ntfs.img");
    sparse_file(&img, size);
    run(
        "mkntfs",
        &["-F", "-Q", "-q", "-L", label, img.to_str().unwrap()],
    );
    let files: Vec<(String, Vec<u8>)> = vec![
        ("hello.txt".into(), b"hello, ntfs\n".to_vec()),
        ("zero".into(), Vec::new()),
        ("Große Datei.bin".into(), noise(2_000_000, 3)),
        ("small-resident".into(), b"fits in the MFT record".to_vec()),
        ("名前.txt".into(), b"non-ASCII\n".to_vec()),
        ("Mixed Case Name.TXT".into(), noise(70_000, 5)),
    ];
    for (name, data) in &files {
        let host = dir.join("payload");
        std::fs::write(&host, data).unwrap();
        run(
            "ntfscp",
            &["-f", img.to_str().unwrap(), host.to_str().unwrap(), name],
        );
    }
    (img, files)
}

#[test]
fn ntfs_root_files_match_source() {
    let dir = tempfile::tempdir().unwrap();
    let (img, files) = make_ntfs(dir.path(), 32 << 20, "NtfsLabel");
    let disk = FileDisk::open(&img);
    let layout = scan(&*disk).unwrap();
    assert_eq!(layout.table, TableKind::None);
    let info = layout.volumes[0].filesystem.clone().unwrap();
    assert_eq!(info.kind, FsKind::Ntfs);
    assert_eq!(info.label.as_deref(), Some("NtfsLabel"));
    assert_eq!(
        info.size,
        Some((32 << 20) - 512),
        "mkntfs leaves the last sector for the backup boot sector"
    );

    let mut fs = open_fs(disk).unwrap();
    assert_eq!(fs.kind(), FsKind::Ntfs);
    let listing = fs.read_dir("/").unwrap();
    let mut want: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    want.sort();
    let got: Vec<&str> = listing.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(got, want, "no $ metafiles, no DOS duplicates");

    // ntfsls agrees on the names.
    let out = run("ntfsls", &[img.to_str().unwrap()]);
    let mut ls: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with('$') && *l != ".")
        .collect();
    ls.sort();
    assert_eq!(ls, want);

    for (name, data) in &files {
        let p = format!("/{name}");
        let m = fs.metadata(&p).unwrap();
        assert_eq!(m.kind, FileKind::File);
        assert_eq!(m.size, data.len() as u64, "{name}");
        assert!(m.mtime.unwrap() > 1_600_000_000);
        assert_eq!(&read_all(&mut *fs, &p), data, "{name}");
        // Case-insensitive lookup through the $UpCase table.
        assert_eq!(
            fs.metadata(&p.to_ascii_uppercase()).unwrap().size,
            data.len() as u64
        );
        let e = listing.iter().find(|e| e.name == *name).unwrap();
        assert_eq!(e.metadata, m);
    }
    assert!(matches!(fs.metadata("/$MFT"), Err(Error::NotFound(_))));
    assert!(matches!(fs.metadata("/nope"), Err(Error::NotFound(_))));
    assert!(matches!(
        fs.read_dir("/hello.txt"),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(
        fs.read_file_at("/", 0, &mut [0; 1]),
        Err(Error::IsADirectory(_))
    ));
    assert_eq!(fs.metadata("/").unwrap().kind, FileKind::Dir);

    // Random access into the non-resident file.
    let big = &files[2].1;
    let mut b = vec![0u8; 10_000];
    for off in [1_999_000u64, 5, 1_000_000] {
        let n = fs.read_file_at("/Große Datei.bin", off, &mut b).unwrap();
        assert_eq!(
            &b[..n],
            &big[off as usize..(off as usize + 10_000).min(big.len())]
        );
    }
}

#[test]
fn ntfs_reads_are_proportional_on_a_large_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = make_ntfs(dir.path(), 4 << 30, "Big");
    let disk = FileDisk::open(&img);
    let mut fs = open_fs(disk.clone()).unwrap();
    fs.read_dir("/").unwrap();
    let mut b = [0u8; 64];
    let n = fs.read_file_at("/hello.txt", 0, &mut b).unwrap();
    assert_eq!(&b[..n], b"hello, ntfs\n");
    assert!(disk.read() < 4 << 20, "read {} bytes", disk.read());
}
