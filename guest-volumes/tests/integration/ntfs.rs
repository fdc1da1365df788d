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

/// `tests/fixtures/ntfs-tree.img.zlib`, made by `make-ntfs-tree.sh`
/// (mkntfs + an ntfs-3g mount): directories, a 300-entry directory (a
/// B-tree index), ntfs-3g (Interix) symlinks, a sparse file.
fn fixture() -> Vec<u8> {
    let z = include_bytes!("../fixtures/ntfs-tree.img.zlib");
    miniz_oxide::inflate::decompress_to_vec_zlib(z).unwrap()
}

#[test]
fn ntfs_fixture_tree() {
    let img = fixture();
    let info = guest_volumes::probe(&img).unwrap().unwrap();
    assert_eq!(
        (info.kind, info.label.as_deref()),
        (FsKind::Ntfs, Some("Tree"))
    );
    let mut fs = open_fs(std::sync::Arc::new(img.clone())).unwrap();
    let root = fs.read_dir("/").unwrap();
    let names: Vec<&str> = root.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Program Files",
            "abs-link",
            "empty dir",
            "many",
            "pattern.bin",
            "sparse.bin",
            "zero",
            "Ünïcødé 名前.txt"
        ]
    );
    for e in &root {
        assert_eq!(e.metadata.mtime, Some(MTIME_UNIX), "{}", e.name);
    }
    let kind = |fs: &mut Box<dyn guest_volumes::GuestFs>, p: &str| fs.metadata(p).unwrap().kind;
    assert_eq!(kind(&mut fs, "/Program Files"), FileKind::Dir);
    assert_eq!(kind(&mut fs, "/abs-link"), FileKind::Symlink);
    assert_eq!(fs.read_link("/abs-link").unwrap(), b"/etc/passwd");
    assert_eq!(
        fs.read_link("/Program Files/rel-link").unwrap(),
        b"Sub Dir/readme.txt"
    );
    assert!(matches!(
        fs.read_file_at("/abs-link", 0, &mut [0; 8]),
        Err(Error::NotAFile(_))
    ));
    assert!(matches!(fs.read_link("/zero"), Err(Error::NotASymlink(_))));
    assert_eq!(
        read_all(&mut *fs, "/program files/sub dir/README.TXT"),
        b"hello from a subdirectory\n"
    );
    let sub = fs.read_dir("/Program Files").unwrap();
    let sub: Vec<(&str, FileKind)> = sub
        .iter()
        .map(|e| (e.name.as_str(), e.metadata.kind))
        .collect();
    assert_eq!(
        sub,
        [("Sub Dir", FileKind::Dir), ("rel-link", FileKind::Symlink)]
    );
    assert!(fs.read_dir("/empty dir").unwrap().is_empty());

    let pattern: Vec<u8> = (0..300_000usize)
        .map(|i| ((i * 7 + i / 251) % 256) as u8)
        .collect();
    assert_eq!(read_all(&mut *fs, "/pattern.bin"), pattern);
    let sparse = read_all(&mut *fs, "/sparse.bin");
    assert_eq!(sparse.len(), 1 << 20);
    let mut want = vec![0u8; 1 << 20];
    want[512 * 1024..512 * 1024 + 23].copy_from_slice(b"middle of a sparse file");
    assert!(sparse == want);
    assert_eq!(fs.metadata("/zero").unwrap().size, 0);
    assert_eq!(read_all(&mut *fs, "/Ünïcødé 名前.txt"), b"Unicode name\n");

    // A directory large enough for an $INDEX_ALLOCATION B-tree.
    let many = fs.read_dir("/many").unwrap();
    assert_eq!(many.len(), 300);
    for (i, e) in many.iter().enumerate() {
        assert_eq!(e.name, format!("file-{i:03}.txt"));
        assert_eq!(e.metadata.size, 9);
    }
    for i in [0usize, 137, 299] {
        let p = format!("/many/FILE-{i:03}.TXT");
        assert_eq!(read_all(&mut *fs, &p), format!("file {i:03}\n").as_bytes());
    }
    assert!(matches!(
        fs.metadata("/many/file-300.txt"),
        Err(Error::NotFound(_))
    ));

    // ntfsls agrees on the big directory.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.img");
    std::fs::write(&path, &img).unwrap();
    let out = run("ntfsls", &["-p", "/many", path.to_str().unwrap()]);
    let mut ls: Vec<&str> = out.lines().filter(|l| *l != ".").collect();
    ls.sort();
    let ours: Vec<&str> = many.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(ls, ours);
}

#[test]
fn ntfs_fixture_mutations_never_panic() {
    let good = fixture();
    // Flip one byte in each 1 KiB MFT record of the first 64, in turn,
    // and walk the tree: typed errors or results, no panic, no hang.
    let mft = {
        let bps = u64::from(u16::from_le_bytes([good[11], good[12]]));
        let spc = u64::from(good[13]);
        let lcn = u64::from_le_bytes(good[0x30..0x38].try_into().unwrap());
        (lcn * bps * spc) as usize
    };
    for record in 0..64usize {
        for at in [0x14usize, 0x18, 0x38, 0x40, 0x48, 0x60, 0x98, 0x100] {
            let mut d = good.clone();
            d[mft + record * 1024 + at] ^= 0x5A;
            let Ok(mut fs) = open_fs(std::sync::Arc::new(d)) else {
                continue;
            };
            if let Ok(entries) = fs.read_dir("/") {
                for e in entries {
                    let p = format!("/{}", e.name);
                    let _ = fs.read_dir(&p);
                    let _ = fs.read_link(&p);
                    let mut b = vec![0u8; 4096];
                    let _ = fs.read_file_at(&p, 0, &mut b);
                }
            }
        }
    }
}
