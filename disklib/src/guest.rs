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
///
/// Like `cp` and `tar`, this leaves writing back to the kernel; use
/// [`extract_with`] and [`ExtractOptions::sync`] to have everything on
/// disk before it returns.
pub fn extract(fs: &mut dyn GuestFs, path: &str, out: &Path) -> Result<ExtractSummary> {
    extract_with(fs, path, out, &ExtractOptions::default())
}

/// How [`extract_with`] writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExtractOptions {
    /// Make every file and directory durable (fsync) before returning.
    pub sync: bool,
}

impl ExtractOptions {
    /// Options with `sync` set as given.
    pub fn sync(sync: bool) -> Self {
        Self { sync }
    }
}

/// [`extract`] with options.
pub fn extract_with(
    fs: &mut dyn GuestFs,
    path: &str,
    out: &Path,
    options: &ExtractOptions,
) -> Result<ExtractSummary> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(Error::InvalidArgument(format!(
            "{} exists: extraction only creates new files",
            out.display()
        )));
    }
    let meta = fs.metadata(path)?;
    let mut summary = ExtractSummary::default();
    let mut dir_times = Vec::new();
    let mut writer = Writer::start(options.sync)?;
    let walked = extract_one(
        fs,
        path.as_bytes(),
        &meta,
        out,
        0,
        &mut summary,
        &mut dir_times,
        &mut writer,
    );
    // Every write done (or failed) before directory times and syncs.
    let written = writer.finish();
    walked?;
    written?;
    // Directories last, deepest first (the walk lists a directory after
    // everything under it): creating entries inside changes the times, and
    // a mode without `x` on a parent would refuse reaching its children.
    // Times, sync and mode all go through one handle, opened while the
    // directory still has the mode it was created with.
    for (dir, meta) in &dir_times {
        let h = std::fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
        finish_node(&h, dir, meta, options.sync)?;
    }
    // Files were synced by the writer (with `sync`) before their close.
    if options.sync {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let h = std::fs::File::open(parent).map_err(|e| Error::io(parent, e))?;
        h.sync_all().map_err(|e| Error::io(parent, e))?;
    }
    Ok(summary)
}

/// A guest path for messages.
fn shown(guest: &[u8]) -> String {
    String::from_utf8_lossy(guest).into_owned()
}

/// Walks with byte paths so names that are not UTF-8 (ext) are reached.
#[allow(clippy::too_many_arguments)]
fn extract_one(
    fs: &mut dyn GuestFs,
    guest: &[u8],
    meta: &Metadata,
    out: &Path,
    depth: usize,
    summary: &mut ExtractSummary,
    dir_times: &mut Vec<(PathBuf, Metadata)>,
    writer: &mut Writer,
) -> Result<()> {
    let entries = summary.files + summary.dirs + summary.symlinks;
    if entries >= MAX_EXTRACT_ENTRIES {
        return Err(Error::InvalidArgument(format!(
            "more than {MAX_EXTRACT_ENTRIES} entries under the extracted path"
        )));
    }
    match meta.kind {
        FileKind::File => {
            let n = copy_file(fs, guest, meta, out, writer)?;
            summary.files += 1;
            summary.bytes += n;
        }
        FileKind::Dir => {
            if depth > MAX_EXTRACT_DEPTH {
                return Err(Error::InvalidArgument(format!(
                    "{}: directories nest deeper than {MAX_EXTRACT_DEPTH}",
                    shown(guest)
                )));
            }
            std::fs::create_dir(out).map_err(|e| Error::io(out, e))?;
            summary.dirs += 1;
            for entry in fs.read_dir_bytes(guest)? {
                let mut child_guest = guest.to_vec();
                if !child_guest.ends_with(b"/") {
                    child_guest.push(b'/');
                }
                child_guest.extend_from_slice(&entry.name_bytes);
                let name = match safe_relative_path(&entry.name_bytes) {
                    Ok(n) => n,
                    Err(e) => {
                        summary.skipped.push((shown(&child_guest), e.to_string()));
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
                    writer,
                )?;
            }
            dir_times.push((out.to_path_buf(), meta.clone()));
        }
        FileKind::Symlink => {
            let target = fs.read_link_bytes(guest)?;
            // The link sits `depth` directories below `out`'s root when
            // the extraction started at a directory (0 for a lone link).
            let base = depth.saturating_sub(1);
            if depth == 0 || !symlink_target_is_contained(base, &target) {
                summary.skipped.push((
                    shown(guest),
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
            .push((shown(guest), "not a file, directory or symlink".into())),
    }
    Ok(())
}

fn bytes_path(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

/// What the writer thread is asked to do, in order.
enum Job {
    /// Create this file (new, not through a symlink).
    Open(PathBuf),
    /// Append these bytes (the first `usize` of the buffer).
    Data(Vec<u8>, usize),
    /// Leave a hole: the file grows to this length, writing resumes there.
    Hole(u64),
    /// Close the file and give it this mode and these times.
    Close(Metadata),
}

/// Writes extracted files on a thread of its own, so reading the next
/// piece of the guest file overlaps writing the last one.
struct Writer {
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    /// Buffers handed back once written.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

/// Read (and write) size.
const PIECE: usize = 1 << 20;

impl Writer {
    /// `sync`: each file is made durable before it is closed.
    fn start(sync: bool) -> Result<Self> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(4);
        let (give_back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
        let thread = std::thread::Builder::new()
            .name("vdisk-extract-writer".into())
            .spawn(move || -> Result<()> {
                let mut first_err: Option<Error> = None;
                let mut cur: Option<(std::fs::File, PathBuf)> = None;
                for job in rx {
                    if first_err.is_some() {
                        // Keep draining so the reader never blocks.
                        if let Job::Data(buf, _) = job {
                            let _ = give_back.send(buf);
                        }
                        continue;
                    }
                    let r = Self::run(job, &mut cur, &give_back, sync);
                    if let Err(e) = r {
                        first_err = Some(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            })
            .map_err(|e| Error::io("extract writer thread", e))?;
        Ok(Self {
            jobs: Some(jobs),
            spare,
            thread: Some(thread),
        })
    }

    fn run(
        job: Job,
        cur: &mut Option<(std::fs::File, PathBuf)>,
        give_back: &std::sync::mpsc::Sender<Vec<u8>>,
        sync: bool,
    ) -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let not_open = || Error::InvalidArgument("extract: no file open".into());
        match job {
            Job::Open(path) => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?;
                *cur = Some((f, path));
            }
            Job::Data(buf, n) => {
                let (f, path) = cur.as_mut().ok_or_else(not_open)?;
                let r = f.write_all(&buf[..n]).map_err(|e| Error::io(&*path, e));
                let _ = give_back.send(buf);
                r?;
            }
            Job::Hole(len) => {
                // Keep the file sparse where the guest's was zero.
                let (f, path) = cur.as_mut().ok_or_else(not_open)?;
                f.set_len(len).map_err(|e| Error::io(&*path, e))?;
                f.seek(SeekFrom::Start(len))
                    .map_err(|e| Error::io(&*path, e))?;
            }
            Job::Close(meta) => {
                let (f, path) = cur.take().ok_or_else(not_open)?;
                // Through the handle still open for writing: a mode such
                // as 0o000 cannot then keep the times from being set.
                finish_node(&f, &path, &meta, sync)?;
            }
        }
        Ok(())
    }

    fn send(&mut self, job: Job) -> Result<()> {
        let sent = self.jobs.as_ref().map(|j| j.send(job));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread is gone: its error is what matters.
            _ => Err(self
                .finish()
                .err()
                .unwrap_or_else(|| Error::InvalidArgument("extract writer stopped".into()))),
        }
    }

    fn buffer(&self) -> Vec<u8> {
        self.spare.try_recv().unwrap_or_else(|_| vec![0u8; PIECE])
    }

    /// Waits for every write; the first error any of them met.
    fn finish(&mut self) -> Result<()> {
        self.jobs.take();
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::InvalidArgument("extract writer panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Copies one regular file (creating `out` new), reading 1 MiB at a time
/// up to the size the metadata gives; the writer thread writes it.
fn copy_file(
    fs: &mut dyn GuestFs,
    guest: &[u8],
    meta: &Metadata,
    out: &Path,
    writer: &mut Writer,
) -> Result<u64> {
    writer.send(Job::Open(out.to_path_buf()))?;
    let mut off = 0u64;
    while off < meta.size {
        let mut buf = writer.buffer();
        let want = (meta.size - off).min(buf.len() as u64) as usize;
        let n = fs.read_file_at_bytes(guest, off, &mut buf[..want])?;
        if n == 0 {
            return Err(Error::InvalidArgument(format!(
                "{}: the file ends at byte {off}, before its size {}",
                shown(guest),
                meta.size
            )));
        }
        off += n as u64;
        if buf[..n].iter().all(|&b| b == 0) {
            writer.send(Job::Hole(off))?;
        } else {
            writer.send(Job::Data(buf, n))?;
        }
    }
    writer.send(Job::Close(meta.clone()))?;
    Ok(off)
}

/// Gives a created file or directory its times, then (with `sync`) makes
/// it durable, then gives it its mode: permission bits only, so a
/// restored file never gains set-id bits. All through `handle`, so a mode
/// without read or write permission applies last and blocks nothing.
fn finish_node(handle: &std::fs::File, out: &Path, meta: &Metadata, sync: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(times) = file_times(meta) {
        handle.set_times(times).map_err(|e| Error::io(out, e))?;
    }
    if sync {
        handle.sync_all().map_err(|e| Error::io(out, e))?;
    }
    if let Some(mode) = meta.mode {
        handle
            .set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| Error::io(out, e))?;
        if sync {
            handle.sync_all().map_err(|e| Error::io(out, e))?;
        }
    }
    Ok(())
}

/// The modification (and access) times the guest recorded.
fn file_times(meta: &Metadata) -> Option<std::fs::FileTimes> {
    let at = |s: i64, ns: u32| {
        let d = std::time::Duration::new(s.unsigned_abs(), ns.min(999_999_999));
        if s >= 0 {
            std::time::UNIX_EPOCH.checked_add(d)
        } else {
            std::time::UNIX_EPOCH.checked_sub(d)
        }
    };
    let mtime = at(meta.mtime?, meta.mtime_nsec.unwrap_or(0))?;
    let mut times = std::fs::FileTimes::new().set_modified(mtime);
    if let Some(a) = meta.atime.and_then(|a| at(a, 0)) {
        times = times.set_accessed(a);
    }
    Some(times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_volumes::{DirEntry, FsKind};

    /// A filesystem whose names and links try to leave the destination.
    struct Hostile;

    fn meta(kind: FileKind, size: u64) -> Metadata {
        Metadata {
            kind,
            size,
            mode: Some(0o6755),
            uid: None,
            gid: None,
            mtime: Some(1_600_000_000),
            mtime_nsec: Some(5),
            atime: None,
        }
    }

    fn entry(name: &[u8], kind: FileKind) -> DirEntry {
        DirEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            name_bytes: name.to_vec(),
            metadata: meta(kind, 3),
        }
    }

    fn with_mode(mut e: DirEntry, mode: u32) -> DirEntry {
        e.metadata.mode = Some(mode);
        e
    }

    impl GuestFs for Hostile {
        fn kind(&self) -> FsKind {
            FsKind::Ext4
        }
        fn metadata(&mut self, path: &str) -> std::result::Result<Metadata, guest_volumes::Error> {
            Ok(meta(
                if path == "/" || path == "/d" {
                    FileKind::Dir
                } else {
                    FileKind::File
                },
                3,
            ))
        }
        fn read_dir(
            &mut self,
            path: &str,
        ) -> std::result::Result<Vec<DirEntry>, guest_volumes::Error> {
            Ok(match path {
                "/" => vec![
                    entry(b"..", FileKind::File),
                    entry(b".", FileKind::Dir),
                    entry(b"", FileKind::File),
                    entry(b"a/../../b", FileKind::File),
                    entry(b"nul\0x", FileKind::File),
                    entry(b"up", FileKind::Symlink),
                    entry(b"abs", FileKind::Symlink),
                    entry(b"ok", FileKind::File),
                    entry(b"d", FileKind::Dir),
                    entry(b"dev", FileKind::Other),
                    with_mode(entry(b"locked", FileKind::File), 0),
                    with_mode(entry(b"ro", FileKind::Dir), 0o500),
                ],
                "/ro" => vec![entry(b"inner", FileKind::File)],
                "/d" => vec![
                    entry(b"in", FileKind::Symlink),
                    entry(b"out", FileKind::Symlink),
                ],
                _ => vec![],
            })
        }
        fn read_link(&mut self, path: &str) -> std::result::Result<Vec<u8>, guest_volumes::Error> {
            Ok(match path {
                "/up" => b"../../etc/passwd".to_vec(),
                "/abs" => b"/etc/shadow".to_vec(),
                "/d/in" => b"../ok".to_vec(),
                _ => b"../../ok".to_vec(),
            })
        }
        fn read_file_at(
            &mut self,
            _: &str,
            offset: u64,
            buf: &mut [u8],
        ) -> std::result::Result<usize, guest_volumes::Error> {
            let data = b"abc";
            let at = (offset as usize).min(3);
            let n = buf.len().min(3 - at);
            buf[..n].copy_from_slice(&data[at..at + n]);
            Ok(n)
        }
    }

    #[test]
    fn hostile_names_and_links_stay_inside() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let s = extract(&mut Hostile, "/", &out).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["d", "locked", "ok", "ro"]);
        // Modes that forbid reading or entering apply last, after the
        // times and the contents.
        let locked = std::fs::metadata(out.join("locked")).unwrap();
        assert_eq!(locked.permissions().mode() & 0o7777, 0);
        assert_eq!(
            locked.modified().unwrap(),
            std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 5)
        );
        let ro = std::fs::metadata(out.join("ro")).unwrap();
        assert_eq!(ro.permissions().mode() & 0o7777, 0o500);
        assert_eq!(std::fs::metadata(out.join("ro/inner")).unwrap().len(), 3);
        assert_eq!(
            std::fs::read_link(out.join("d/in")).unwrap(),
            Path::new("../ok")
        );
        assert!(std::fs::symlink_metadata(out.join("d/out")).is_err());
        // Five unsafe names, three links leaving the destination, a device.
        assert_eq!(s.skipped.len(), 9, "{:?}", s.skipped);
        assert_eq!((s.files, s.dirs, s.symlinks), (3, 3, 1));
        // Set-id bits are dropped; the time is kept.
        let m = std::fs::metadata(out.join("ok")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        assert_eq!(
            m.modified().unwrap(),
            std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 5)
        );
        // Nothing is written through an existing path.
        assert!(extract(&mut Hostile, "/", &out).is_err());
        assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1);
    }
}
