//! ext2/3/4 images made by mke2fs -d, compared with the source tree and
//! with debugfs.

use std::sync::Arc;

use guest_volumes::{open_fs, probe, scan, Error, FileKind, FsKind, ReadAt, TableKind};

use crate::common::*;

fn make(kind: &str, label: &str, size: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source_tree(&src, true);
    let img = dir.path().join("fs.img");
    run(
        &format!("mkfs.{kind}"),
        &[
            "-q",
            "-F",
            "-d",
            src.to_str().unwrap(),
            "-L",
            label,
            img.to_str().unwrap(),
            size,
        ],
    );
    (dir, img)
}

fn uuid_of(img: &std::path::Path) -> String {
    let out = run("dumpe2fs", &["-h", img.to_str().unwrap()]);
    out.lines()
        .find_map(|l| l.strip_prefix("Filesystem UUID:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn ext4_tree_matches_source() {
    let (dir, img) = make("ext4", "guestlabel", "64M");
    let disk = FileDisk::open(&img);
    let layout = scan(&*disk).unwrap();
    assert_eq!(layout.table, TableKind::None);
    assert_eq!(layout.volumes.len(), 1);
    let info = layout.volumes[0].filesystem.clone().unwrap();
    assert_eq!(info.kind, FsKind::Ext4);
    assert_eq!(info.label.as_deref(), Some("guestlabel"));
    assert_eq!(info.uuid.as_deref(), Some(uuid_of(&img).as_str()));
    assert_eq!(info.size, Some(64 << 20));

    let mut fs = open_fs(disk.clone()).unwrap();
    assert_eq!(fs.kind(), FsKind::Ext4);
    let checks = Checks {
        mode: true,
        mtime: true,
        case_insensitive: false,
        extra: &["lost+found"],
        skip_content: &[],
    };
    let n = compare_tree(&mut *fs, "/", &dir.path().join("src"), &checks);
    assert!(n >= 15, "compared {n} entries");

    // The root listing has no lost+found? mke2fs -d keeps it; it is a directory.
    assert_eq!(fs.metadata("/").unwrap().kind, FileKind::Dir);
    assert!(matches!(fs.metadata("/nope"), Err(Error::NotFound(_))));
    assert!(matches!(
        fs.read_dir("/hello.txt"),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(
        fs.read_file_at("/sub", 0, &mut [0; 4]),
        Err(Error::IsADirectory(_))
    ));
    assert!(matches!(
        fs.read_link("/hello.txt"),
        Err(Error::NotASymlink(_))
    ));
    assert!(matches!(
        fs.metadata("relative"),
        Err(Error::InvalidPath(_))
    ));
    assert!(matches!(
        fs.metadata("/sub/../hello.txt"),
        Err(Error::InvalidPath(_))
    ));
    // The final symlink is not followed; read_file_at follows it.
    assert_eq!(fs.metadata("/link").unwrap().kind, FileKind::Symlink);
    let mut b = [0u8; 64];
    let n = fs
        .read_file_at("/sparse.img", (2 << 20) - 3, &mut b)
        .unwrap();
    assert_eq!(&b[..n.min(21)], b"\0\0\0data in the middle");
    // Reads past the end return 0.
    assert_eq!(fs.read_file_at("/hello.txt", 1000, &mut b).unwrap(), 0);
}

/// debugfs `ls -l` columns: inode, mode, (type), uid, gid, size, date, time, name.
fn debugfs_ls(img: &std::path::Path, dir: &str) -> Vec<(String, u32, u32, u64)> {
    let out = run(
        "debugfs",
        &["-R", &format!("ls -l {dir}"), img.to_str().unwrap()],
    );
    let mut rows = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        let name = unescape(&f[8..].join(" "));
        if name == "." || name == ".." {
            continue;
        }
        let mode = u32::from_str_radix(f[1], 8).unwrap() & 0o7777;
        let uid: u32 = f[3].parse().unwrap();
        let size: u64 = f[5].parse().unwrap();
        rows.push((name, mode, uid, size));
    }
    rows.sort();
    rows
}

#[test]
fn ext4_listing_matches_debugfs() {
    let (_dir, img) = make("ext4", "dbg", "32M");
    let disk = FileDisk::open(&img);
    let mut fs = open_fs(disk).unwrap();
    for dir in ["/", "/sub", "/sub/deeper"] {
        let want = debugfs_ls(&img, dir);
        let mut got: Vec<(String, u32, u32, u64)> = fs
            .read_dir(dir)
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.name,
                    e.metadata.mode.unwrap(),
                    e.metadata.uid.unwrap(),
                    e.metadata.size,
                )
            })
            .collect();
        got.sort();
        assert_eq!(got, want, "{dir}");
    }
}

#[test]
fn ext2_and_ext3_are_told_apart() {
    for (tool, kind) in [("ext2", FsKind::Ext2), ("ext3", FsKind::Ext3)] {
        let (dir, img) = make(tool, tool, "16M");
        let disk = FileDisk::open(&img);
        assert_eq!(probe(&*disk).unwrap().unwrap().kind, kind);
        let mut fs = open_fs(disk).unwrap();
        assert_eq!(fs.kind(), kind);
        let checks = Checks {
            mode: true,
            mtime: true,
            case_insensitive: false,
            extra: &["lost+found"],
            skip_content: &["/sparse.img"],
        };
        compare_tree(&mut *fs, "/", &dir.path().join("src"), &checks);
        // ext4-view 1.0.0 reads block 0 for a hole that covers a whole
        // indirect block of a block-mapped (ext2/3) file; that is a typed
        // error, not a panic. Reads before the hole work.
        let mut b = vec![0u8; 4096];
        assert_eq!(fs.read_file_at("/sparse.img", 0, &mut b).unwrap(), 4096);
        assert!(b.iter().all(|&x| x == 0));
        assert!(matches!(
            fs.read_file_at("/sparse.img", 2 << 20, &mut b),
            Err(Error::Filesystem { .. })
        ));
    }
}

#[test]
fn reads_are_proportional_on_a_large_volume() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    source_tree(&src, true);
    let img = dir.path().join("big.img");
    sparse_file(&img, 4 << 30);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            src.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    let disk = FileDisk::open(&img);
    let as_dyn: Arc<dyn ReadAt> = disk.clone();
    let mut fs = open_fs(as_dyn).unwrap();
    let after_open = disk.read();
    fs.read_dir("/sub").unwrap();
    let mut b = [0u8; 100];
    let n = fs.read_file_at("/hello.txt", 0, &mut b).unwrap();
    assert_eq!(&b[..n], b"hello, guest\n");
    let total = disk.read();
    assert!(after_open < 8 << 20, "open read {after_open} bytes");
    assert!(
        total - after_open < 2 << 20,
        "list + small read took {} bytes",
        total - after_open
    );
    // A big file read sequentially reads about its own size.
    let before = disk.read();
    assert_eq!(read_all(&mut *fs, "/big.bin").len(), 1_500_000);
    let cost = disk.read() - before;
    assert!(cost < 3_000_000, "reading 1.5 MB took {cost} bytes");
}

/// Undoes debugfs's `\xNN` escaping of non-ASCII bytes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 3 < b.len() {
            out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn ext4_non_utf8_names_keep_their_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let raw: &[u8] = b"latin1-\xe9t\xe9.txt";
    std::fs::write(src.join(std::ffi::OsStr::from_bytes(raw)), b"bytes\n").unwrap();
    let img = dir.path().join("fs.img");
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            src.to_str().unwrap(),
            img.to_str().unwrap(),
            "8M",
        ],
    );
    let mut fs = open_fs(FileDisk::open(&img)).unwrap();
    let entries = fs.read_dir("/").unwrap();
    let e = entries
        .iter()
        .find(|e| e.name_bytes.starts_with(b"latin1-"))
        .unwrap();
    assert_eq!(e.name_bytes, raw);
    assert_eq!(e.name, "latin1-\u{fffd}t\u{fffd}.txt");
    assert_eq!(e.metadata.size, 6);
    let safe = guest_volumes::safe_relative_path(&e.name_bytes).unwrap();
    assert_eq!(safe.as_bytes(), raw);
    // Reachable by its bytes.
    let path = [b"/".as_slice(), raw].concat();
    assert_eq!(fs.metadata_bytes(&path).unwrap(), e.metadata);
    let mut b = [0u8; 16];
    assert_eq!(fs.read_file_at_bytes(&path, 0, &mut b).unwrap(), 6);
    assert_eq!(&b[..6], b"bytes\n");
    assert_eq!(fs.read_dir_bytes(b"/").unwrap(), entries);
    assert!(matches!(
        fs.read_link_bytes(&path),
        Err(guest_volumes::Error::NotASymlink(_))
    ));
    assert!(matches!(
        fs.metadata_bytes(b"/../x"),
        Err(guest_volumes::Error::InvalidPath(_))
    ));
}
