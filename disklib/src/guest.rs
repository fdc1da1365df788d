//! Guest volumes and files of any disk the kit opens (vixMntapi's job,
//! in user space): a local chain, a vSphere disk over any transport, a
//! backup point read in place.
//!
//! [`DiskReader`] turns any of them into the [`guest_volumes::ReadAt`]
//! the partition and filesystem readers work through, counting the bytes
//! they read; [`open_volume`] picks a volume; [`extract`] copies a guest
//! file or directory tree out to local files, never outside the
//! destination it is given.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use disklib::backup::BackupPoint;
//! use disklib::guest::{extract, open_volume, DiskReader};
//!
//! let point = BackupPoint::open("/backups/vm1".as_ref(), 7, Some(2000))?;
//! let disk = Arc::new(DiskReader::point(Arc::new(point)));
//! let (_volume, reader) = open_volume(disk.clone(), Some(1))?;
//! let mut fs = guest_volumes::open_fs(reader)?;
//! for e in fs.read_dir("/etc")? {
//!     println!("{} {} bytes", e.name, e.metadata.size);
//! }
//! extract(&mut *fs, "/etc/hostname", "hostname".as_ref())?;
//! # Ok(()) }
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use guest_volumes;
use guest_volumes::{
    safe_relative_path, scan, symlink_target_is_contained, FileKind, GuestFs, Metadata, ReadAt,
    Volume, Window,
};
use vmdk_file::local::LocalDisk;

use crate::api::Disk;
use crate::backup::{BackupPoint, PointDelta};
use crate::error::{Error, Result};

/// What a [`DiskReader`] reads.
enum Source {
    Local(Arc<LocalDisk>),
    Remote(Arc<Disk>),
    Point(Arc<BackupPoint>),
    Delta(Arc<PointDelta>),
}

/// Any disk of the kit as a [`ReadAt`], counting the bytes read.
pub struct DiskReader {
    source: Source,
    size: u64,
    bytes_read: AtomicU64,
}

impl std::fmt::Debug for DiskReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskReader")
            .field("size", &self.size)
            .field("bytes_read", &self.bytes_read())
            .finish_non_exhaustive()
    }
}

impl DiskReader {
    /// A local VMDK (a chain reads through).
    pub fn local(disk: Arc<LocalDisk>) -> Self {
        let size = disk.capacity();
        Self::new(Source::Local(disk), size)
    }

    /// A disk opened through a connection (any transport).
    pub fn remote(disk: Arc<Disk>) -> Self {
        let size = disk.capacity();
        Self::new(Source::Remote(disk), size)
    }

    /// A backup point, read in place.
    pub fn point(point: Arc<BackupPoint>) -> Self {
        let size = point.capacity();
        Self::new(Source::Point(point), size)
    }

    /// A backup point through a writable delta.
    pub fn delta(delta: Arc<PointDelta>) -> Self {
        let size = delta.capacity();
        Self::new(Source::Delta(delta), size)
    }

    fn new(source: Source, size: u64) -> Self {
        Self {
            source,
            size,
            bytes_read: AtomicU64::new(0),
        }
    }

    /// Bytes read through this reader so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
}

impl ReadAt for DiskReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = match &self.source {
            Source::Local(d) => d.read_at(offset, buf).map_err(Error::from),
            Source::Remote(d) => d.read_at(offset, buf),
            Source::Point(p) => p.read_at(offset, buf),
            Source::Delta(d) => d.read_at(offset, buf),
        };
        self.bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        r.map_err(|e| match e {
            Error::OutOfRange { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, e.to_string()),
            e => io::Error::other(e.to_string()),
        })
    }
}

/// Volume `number` of `disk` (`None`: the disk's only volume) and a reader
/// limited to it.
pub fn open_volume(
    disk: Arc<dyn ReadAt>,
    number: Option<u32>,
) -> Result<(Volume, Arc<dyn ReadAt>)> {
    let layout = scan(&*disk)?;
    let volume = match number {
        Some(n) => layout
            .volumes
            .into_iter()
            .find(|v| v.number == n)
            .ok_or_else(|| Error::InvalidArgument(format!("the disk has no partition {n}")))?,
        None => {
            let mut v = layout.volumes;
            match v.len() {
                1 => v.remove(0),
                0 => {
                    return Err(Error::InvalidArgument(
                        "no partition or filesystem found on the disk".into(),
                    ))
                }
                _ => {
                    let n: Vec<String> = v.iter().map(|v| v.number.to_string()).collect();
                    return Err(Error::InvalidArgument(format!(
                        "the disk has several partitions ({}): name one (--partition N)",
                        n.join(", ")
                    )));
                }
            }
        }
    };
    let window: Arc<dyn ReadAt> = Arc::new(Window::new(disk, volume.start, volume.size)?);
    Ok((volume, window))
}

/// What [`extract`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// What was left out and why: guest path, reason (unsafe names,
    /// symlinks pointing outside the destination, devices and other
    /// special files).
    pub skipped: Vec<(String, String)>,
}

/// How deep a directory tree [`extract`] descends (a hostile filesystem
/// could nest a directory inside itself).
pub const MAX_EXTRACT_DEPTH: usize = 256;
/// How many entries one [`extract`] writes at most.
pub const MAX_EXTRACT_ENTRIES: u64 = 10_000_000;

/// Copies the guest file, symlink or directory tree `path` to `out`, which
/// must not exist: a file becomes the file `out`, a directory the
/// directory `out` with everything under it. Modes (permission bits
/// only, no set-id bits) and modification times are kept; symlinks stay
/// symlinks when their target resolves inside `out`, and are skipped
/// (listed in [`ExtractSummary::skipped`]) otherwise. Guest names that are
/// not one safe path component (`..`, `/`, NUL) are skipped too. Nothing
/// is ever written through an existing path: every file, directory and
/// link is created new.
pub fn extract(fs: &mut dyn GuestFs, path: &str, out: &Path) -> Result<ExtractSummary> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::InvalidArgument(format!(
            "{} exists: extraction only creates new files",
            out.display()
        )));
    }
    let meta = fs.metadata(path)?;
    let mut summary = ExtractSummary::default();
    let mut dir_times = Vec::new();
    extract_one(fs, path, &meta, out, 0, &mut summary, &mut dir_times)?;
    // Directory times last: creating entries inside changes them.
    for (dir, meta) in dir_times.iter().rev() {
        set_times(dir, meta)?;
    }
    Ok(summary)
}

fn extract_one(
    fs: &mut dyn GuestFs,
    guest: &str,
    meta: &Metadata,
    out: &Path,
    depth: usize,
    summary: &mut ExtractSummary,
    dir_times: &mut Vec<(PathBuf, Metadata)>,
) -> Result<()> {
    let entries = summary.files + summary.dirs + summary.symlinks;
    if entries >= MAX_EXTRACT_ENTRIES {
        return Err(Error::InvalidArgument(format!(
            "more than {MAX_EXTRACT_ENTRIES} entries under the extracted path"
        )));
    }
    match meta.kind {
        FileKind::File => {
            let n = copy_file(fs, guest, meta, out)?;
            summary.files += 1;
            summary.bytes += n;
        }
        FileKind::Dir => {
            if depth > MAX_EXTRACT_DEPTH {
                return Err(Error::InvalidArgument(format!(
                    "{guest}: directories nest deeper than {MAX_EXTRACT_DEPTH}"
                )));
            }
            std::fs::create_dir(out).map_err(|e| Error::io(out, e))?;
            summary.dirs += 1;
            for entry in fs.read_dir(guest)? {
                let child_guest = if guest.ends_with('/') {
                    format!("{guest}{}", entry.name)
                } else {
                    format!("{guest}/{}", entry.name)
                };
                let name = match safe_relative_path(&entry.name_bytes) {
                    Ok(n) => n,
                    Err(e) => {
                        summary.skipped.push((child_guest, e.to_string()));
                        continue;
                    }
                };
                let child_out = out.join(name.as_os_str());
                extract_one(
                    fs,
                    &child_guest,
                    &entry.metadata,
                    &child_out,
                    depth + 1,
                    summary,
                    dir_times,
                )?;
            }
            set_mode(out, meta)?;
            dir_times.push((out.to_path_buf(), meta.clone()));
        }
        FileKind::Symlink => {
            let target = fs.read_link(guest)?;
            // The link sits `depth` directories below `out`'s root when
            // the extraction started at a directory (0 for a lone link).
            let base = depth.saturating_sub(1);
            if depth == 0 || !symlink_target_is_contained(base, &target) {
                summary.skipped.push((
                    guest.to_string(),
                    format!(
                        "symlink to {:?} points outside the destination",
                        String::from_utf8_lossy(&target)
                    ),
                ));
                return Ok(());
            }
            std::os::unix::fs::symlink(bytes_path(&target), out).map_err(|e| Error::io(out, e))?;
            summary.symlinks += 1;
        }
        FileKind::Other => summary
            .skipped
            .push((guest.to_string(), "not a file, directory or symlink".into())),
    }
    Ok(())
}

fn bytes_path(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

/// Copies one regular file (creating `out` new), reading 1 MiB at a time
/// up to the size the metadata gives.
fn copy_file(fs: &mut dyn GuestFs, guest: &str, meta: &Metadata, out: &Path) -> Result<u64> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(out)
        .map_err(|e| Error::io(out, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < meta.size {
        let want = (meta.size - off).min(buf.len() as u64) as usize;
        let n = fs.read_file_at(guest, off, &mut buf[..want])?;
        if n == 0 {
            return Err(Error::InvalidArgument(format!(
                "{guest}: the file ends at byte {off}, before its size {}",
                meta.size
            )));
        }
        if buf[..n].iter().all(|&b| b == 0) {
            // Keep the file sparse where the guest's was zero.
            f.set_len(off + n as u64).map_err(|e| Error::io(out, e))?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(off + n as u64))
                .map_err(|e| Error::io(out, e))?;
        } else {
            f.write_all(&buf[..n]).map_err(|e| Error::io(out, e))?;
        }
        off += n as u64;
    }
    f.sync_all().map_err(|e| Error::io(out, e))?;
    drop(f);
    set_mode(out, meta)?;
    set_times(out, meta)?;
    Ok(off)
}

fn set_mode(out: &Path, meta: &Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mode) = meta.mode {
        // Permission bits only: a restored file never gains set-id bits.
        let mode = mode & 0o777;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(out, e))?;
    }
    Ok(())
}

fn set_times(out: &Path, meta: &Metadata) -> Result<()> {
    let Some(secs) = meta.mtime else {
        return Ok(());
    };
    let at = |s: i64, ns: u32| {
        let d = std::time::Duration::new(s.unsigned_abs(), ns.min(999_999_999));
        if s >= 0 {
            std::time::UNIX_EPOCH.checked_add(d)
        } else {
            std::time::UNIX_EPOCH.checked_sub(d)
        }
    };
    let Some(mtime) = at(secs, meta.mtime_nsec.unwrap_or(0)) else {
        return Ok(());
    };
    let mut times = std::fs::FileTimes::new().set_modified(mtime);
    if let Some(a) = meta.atime.and_then(|a| at(a, 0)) {
        times = times.set_accessed(a);
    }
    // A directory made read-only by its mode can still be opened to set
    // its times.
    let f = std::fs::File::open(out).map_err(|e| Error::io(out, e))?;
    f.set_times(times).map_err(|e| Error::io(out, e))
}
