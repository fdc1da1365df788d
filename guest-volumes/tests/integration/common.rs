//! Shared helpers: a file-backed reader that counts bytes, a tool runner,
//! a source tree and a comparison of a guest tree against it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use guest_volumes::{FileKind, GuestFs, ReadAt};

/// A file-backed disk that counts the bytes read through it.
pub struct FileDisk {
    file: fs::File,
    size: u64,
    pub bytes_read: AtomicU64,
}

impl FileDisk {
    pub fn open(path: &Path) -> Arc<FileDisk> {
        let file = fs::File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        Arc::new(FileDisk {
            file,
            size,
            bytes_read: AtomicU64::new(0),
        })
    }

    pub fn read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
}

impl ReadAt for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "past end",
            ));
        }
        self.bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.file.read_exact_at(buf, offset)
    }
}

/// Runs a tool, panicking with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    run_env(cmd, args, &[])
}

pub fn run_env(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sparse_file(path: &Path, size: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub const MTIME: &str = "2021-03-04 05:06:08 UTC";
pub const MTIME_UNIX: i64 = 1_614_834_368;

/// Builds the source tree. `symlinks`: include symlinks (not for FAT).
pub fn source_tree(root: &Path, symlinks: bool) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::create_dir_all(root.join("empty dir")).unwrap();
    fs::write(root.join("hello.txt"), b"hello, guest\n").unwrap();
    fs::write(root.join("zero"), b"").unwrap();
    fs::write(root.join("big.bin"), noise(1_500_000, 7)).unwrap();
    fs::write(root.join("sub/nested.txt"), b"nested file\n").unwrap();
    fs::write(root.join("sub/deeper/deep.dat"), noise(70_000, 9)).unwrap();
    fs::write(root.join("ünïcødé-名前.txt"), "non-ASCII name\n").unwrap();
    fs::write(
        root.join("A long file name with spaces.text"),
        b"long name\n",
    )
    .unwrap();
    let sparse = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(root.join("sparse.img"))
        .unwrap();
    sparse.set_len(3 << 20).unwrap();
    sparse.write_all_at(b"data in the middle", 2 << 20).unwrap();
    drop(sparse);
    fs::write(root.join("secret"), b"0600\n").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("script.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    if symlinks {
        std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../hello.txt", root.join("sub/up-link")).unwrap();
    }
    // Timestamps last (touch -h so symlinks keep their own).
    let out = Command::new("find")
        .arg(root)
        .arg("-mindepth")
        .arg("1")
        .output()
        .unwrap();
    for p in String::from_utf8(out.stdout).unwrap().lines() {
        run("touch", &["-h", "-d", MTIME, p]);
    }
}

/// Reads a whole guest file through `read_file_at` in odd-sized chunks.
pub fn read_all(fs: &mut dyn GuestFs, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 40_000];
    loop {
        let n = fs.read_file_at(path, out.len() as u64, &mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

pub struct Checks {
    pub mode: bool,
    pub mtime: bool,
    pub case_insensitive: bool,
    /// Guest names the source tree does not have (lost+found).
    pub extra: &'static [&'static str],
    /// Files whose content is not compared (a known library limitation).
    pub skip_content: &'static [&'static str],
}

/// Compares the guest tree under `guest` with the host tree under `host`,
/// byte for byte; returns the number of entries compared.
pub fn compare_tree(fs: &mut dyn GuestFs, guest: &str, host: &Path, checks: &Checks) -> usize {
    let mut host_entries: BTreeMap<String, PathBuf> = BTreeMap::new();
    for e in fs::read_dir(host).unwrap() {
        let e = e.unwrap();
        host_entries.insert(e.file_name().into_string().unwrap(), e.path());
    }
    let mut listing = fs.read_dir(guest).unwrap();
    listing.retain(|e| !checks.extra.contains(&e.name.as_str()));
    let names: Vec<&str> = listing.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "read_dir is sorted");
    assert_eq!(
        names,
        host_entries.keys().map(String::as_str).collect::<Vec<_>>(),
        "entries of {guest}"
    );
    let mut count = 0;
    for entry in &listing {
        count += 1;
        let hp = &host_entries[&entry.name];
        let hm = fs::symlink_metadata(hp).unwrap();
        let gp = if guest == "/" {
            format!("/{}", entry.name)
        } else {
            format!("{guest}/{}", entry.name)
        };
        let gm = fs.metadata(&gp).unwrap();
        assert_eq!(
            gm, entry.metadata,
            "metadata() agrees with read_dir for {gp}"
        );
        assert_eq!(entry.name_bytes, entry.name.as_bytes());
        if checks.mtime {
            assert_eq!(gm.mtime, Some(hm.mtime()), "mtime of {gp}");
        }
        if checks.mode {
            assert_eq!(gm.mode, Some(hm.mode() & 0o7777), "mode of {gp}");
            assert_eq!(gm.uid, Some(hm.uid()), "uid of {gp}");
        }
        if hm.file_type().is_symlink() {
            assert_eq!(gm.kind, FileKind::Symlink, "{gp}");
            let target = fs::read_link(hp).unwrap();
            assert_eq!(
                fs.read_link(&gp).unwrap(),
                target.as_os_str().as_encoded_bytes()
            );
        } else if hm.is_dir() {
            assert_eq!(gm.kind, FileKind::Dir, "{gp}");
            count += compare_tree(fs, &gp, hp, checks);
        } else {
            assert_eq!(gm.kind, FileKind::File, "{gp}");
            assert_eq!(gm.size, hm.len(), "size of {gp}");
            if checks.skip_content.contains(&gp.as_str()) {
                continue;
            }
            let data = read_all(fs, &gp);
            assert!(data == fs::read(hp).unwrap(), "content of {gp}");
            if checks.case_insensitive {
                let upper = gp.to_uppercase();
                assert_eq!(fs.metadata(&upper).unwrap().size, hm.len(), "{upper}");
            }
        }
    }
    count
}
