//! Partitioned disks holding real filesystems, made by their own tools
//! without root: `mkfs.ext4 -d` (e2fsprogs), `mkfs.vfat` + `mcopy`
//! (dosfstools, mtools), `mkntfs` + `ntfscp` (ntfs-3g), partitioned with
//! `sfdisk` (MBR, with an extended partition) or `sgdisk` (GPT).
//!
//! Each disk has three volumes: FAT32, ext4 and NTFS, in that order, so
//! their partition numbers are 1, 5, 6 on MBR and 1, 2, 3 on GPT.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{pattern, s, tool};

/// MiB.
const M: u64 = 1 << 20;

/// The filesystem images and the trees they were made from.
pub struct Images {
    pub dir: PathBuf,
    /// Source of the ext4 volume: subdirectories, symlinks (one relative,
    /// one absolute), an empty file, a 3 MB file, modes 0600 and 0750,
    /// a non-ASCII name.
    pub ext_src: PathBuf,
    /// Source of the FAT32 volume (long names, a subdirectory).
    pub fat_src: PathBuf,
    /// Source of the NTFS volume (files in the root: ntfs-3g's tools make
    /// no directories without mounting).
    pub ntfs_src: PathBuf,
    pub ext_img: PathBuf,
    pub fat_img: PathBuf,
    pub ntfs_img: PathBuf,
    /// Raw disks.
    pub mbr: Disk,
    pub gpt: Disk,
}

/// One raw partitioned disk and where its volumes start.
pub struct Disk {
    pub raw: PathBuf,
    /// The same disk as a monolithicSparse VMDK.
    pub vmdk: PathBuf,
    /// (partition number, start byte) of FAT32, ext4, NTFS.
    pub fat: (u32, u64),
    pub ext: (u32, u64),
    pub ntfs: (u32, u64),
}

fn write_file(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn ext_tree(root: &Path) {
    write_file(&root.join("hello.txt"), b"hello from ext4\n");
    write_file(&root.join("empty"), b"");
    write_file(&root.join("etc/hostname"), b"guest-vm\n");
    write_file(
        &root.join("etc/deep/er/still/file.bin"),
        &pattern(70_000, 3),
    );
    write_file(&root.join("big.bin"), &pattern(3_000_000, 4));
    write_file(&root.join("Ünïcødé näme.txt"), "ünï\n".as_bytes());
    write_file(&root.join("secret"), b"0600\n");
    set_mode(&root.join("secret"), 0o600);
    set_mode(&root.join("etc/deep"), 0o750);
    std::os::unix::fs::symlink("etc/hostname", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    tool(
        "touch",
        &[
            "-h",
            "-d",
            "2022-05-06 07:08:09 UTC",
            s(&root.join("hello.txt")),
        ],
    );
}

fn fat_tree(root: &Path) {
    write_file(&root.join("README.TXT"), b"fat32 volume\r\n");
    write_file(&root.join("A long file name.txt"), b"long names work\n");
    write_file(&root.join("Docs/Report 2024.bin"), &pattern(1_500_000, 5));
    write_file(&root.join("Docs/Sub/tiny"), b"x");
}

fn ntfs_tree(root: &Path) {
    write_file(&root.join("readme.txt"), b"ntfs volume\r\n");
    write_file(&root.join("data.bin"), &pattern(2_100_000, 6));
    write_file(&root.join("small.bin"), &pattern(700, 7));
}

fn make(dir: &Path) -> Images {
    let ext_src = dir.join("ext-src");
    let fat_src = dir.join("fat-src");
    let ntfs_src = dir.join("ntfs-src");
    ext_tree(&ext_src);
    fat_tree(&fat_src);
    ntfs_tree(&ntfs_src);

    let ext_img = dir.join("ext.img");
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "EXTVOL",
            "-d",
            s(&ext_src),
            s(&ext_img),
            "24M",
        ],
    );
    let fat_img = dir.join("fat.img");
    tool(
        "mkfs.vfat",
        &[
            "-F",
            "32",
            "-s",
            "1",
            "-n",
            "FATVOL",
            "-C",
            s(&fat_img),
            "40960",
        ],
    );
    for e in std::fs::read_dir(&fat_src).unwrap() {
        let p = e.unwrap().path();
        tool("mcopy", &["-s", "-i", s(&fat_img), s(&p), "::/"]);
    }
    let ntfs_img = dir.join("ntfs.img");
    std::fs::File::create(&ntfs_img)
        .unwrap()
        .set_len(24 * M)
        .unwrap();
    tool("mkntfs", &["-F", "-Q", "-q", "-L", "NTFSVOL", s(&ntfs_img)]);
    for e in std::fs::read_dir(&ntfs_src).unwrap() {
        let p = e.unwrap().path();
        let name = format!("/{}", p.file_name().unwrap().to_str().unwrap());
        tool("ntfscp", &["-q", s(&ntfs_img), s(&p), &name]);
    }

    // MBR: FAT32 primary 1, an extended partition holding ext4 (5) and
    // NTFS (6).
    let mbr_raw = dir.join("mbr.raw");
    std::fs::File::create(&mbr_raw)
        .unwrap()
        .set_len(128 * M)
        .unwrap();
    sfdisk(
        &mbr_raw,
        "label: dos\n\
         start=2048, size=81920, type=c\n\
         start=86016, size=110592, type=5\n\
         start=88064, size=49152, type=83\n\
         start=139264, size=49152, type=7\n",
    );
    let mbr = Disk {
        vmdk: dir.join("mbr.vmdk"),
        raw: mbr_raw,
        fat: (1, 2048 * 512),
        ext: (5, 88064 * 512),
        ntfs: (6, 139264 * 512),
    };
    // GPT: the same three volumes, named.
    let gpt_raw = dir.join("gpt.raw");
    std::fs::File::create(&gpt_raw)
        .unwrap()
        .set_len(128 * M)
        .unwrap();
    tool(
        "sgdisk",
        &[
            "-n",
            "1:2048:+40M",
            "-t",
            "1:0700",
            "-c",
            "1:fat part",
            "-n",
            "2:86016:+24M",
            "-t",
            "2:8300",
            "-c",
            "2:ext part",
            "-n",
            "3:137216:+24M",
            "-t",
            "3:0700",
            "-c",
            "3:ntfs part",
            s(&gpt_raw),
        ],
    );
    let gpt = Disk {
        vmdk: dir.join("gpt.vmdk"),
        raw: gpt_raw,
        fat: (1, 2048 * 512),
        ext: (2, 86016 * 512),
        ntfs: (3, 137216 * 512),
    };
    for d in [&mbr, &gpt] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&d.raw)
            .unwrap();
        for (img, (_, at)) in [(&fat_img, d.fat), (&ext_img, d.ext), (&ntfs_img, d.ntfs)] {
            f.write_all_at(&std::fs::read(img).unwrap(), at).unwrap();
        }
        super::vdisk_ok(&["convert", "-t", "monolithicSparse", s(&d.raw), s(&d.vmdk)]);
    }
    Images {
        dir: dir.to_path_buf(),
        ext_src,
        fat_src,
        ntfs_src,
        ext_img,
        fat_img,
        ntfs_img,
        mbr,
        gpt,
    }
}

fn sfdisk(disk: &Path, script: &str) {
    use std::io::Write;
    let mut c = std::process::Command::new("sfdisk")
        .args(["-q", s(disk)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk) is required by the test suite");
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The images, made once per test binary.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("vdisk-guest-images")
            .tempdir()
            .unwrap()
            .keep();
        make(&dir)
    })
}

/// Every regular file, directory and symlink under `root`, relative.
pub fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `out` holds what `src` holds: the same entries (but `skip`, and
/// absolute symlinks, which extraction leaves out), the same bytes, the
/// same symlink targets and, with `modes`, the same permission bits and
/// file modification times.
pub fn assert_tree_eq(src: &Path, out: &Path, extra: &[&str], modes: bool) {
    use std::os::unix::fs::MetadataExt;
    let want: Vec<PathBuf> = tree(src)
        .into_iter()
        .filter(|p| {
            let l = std::fs::read_link(src.join(p));
            !matches!(l, Ok(t) if t.is_absolute())
        })
        .collect();
    let got: Vec<PathBuf> = tree(out)
        .into_iter()
        .filter(|p| !extra.iter().any(|x| p.starts_with(x)))
        .collect();
    assert_eq!(got, want, "{} against {}", out.display(), src.display());
    for p in &want {
        let (a, b) = (src.join(p), out.join(p));
        let (ma, mb) = (
            std::fs::symlink_metadata(&a).unwrap(),
            std::fs::symlink_metadata(&b).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", p.display());
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&a).unwrap(),
                std::fs::read_link(&b).unwrap()
            );
        } else if ma.is_file() {
            assert!(
                std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
                "{} differs",
                p.display()
            );
            if modes {
                assert_eq!(ma.mtime(), mb.mtime(), "mtime of {}", p.display());
            }
        }
        if modes && !ma.file_type().is_symlink() {
            assert_eq!(
                ma.mode() & 0o777,
                mb.mode() & 0o777,
                "mode of {}",
                p.display()
            );
        }
    }
}
