//! # transport-san
//!
//! VMware's `san` transport: a VM's disk read and written straight off the
//! shared LUN it lives on, never through the host's network stack.
//!
//! The host says where the disk lies: the LUN's identity (an NAA id) and
//! the `(virtual offset, LUN offset, length)` extents of the base disk — a
//! [`BlockMap`]. This crate finds that LUN among the proxy's block devices
//! (a device directory, `/dev/disk/by-id` by default, honouring the
//! allow / deny lists of the InitEx configuration) and does the I/O with
//! `O_DIRECT` through aligned bounce buffers, in requests of up to
//! [`MAX_REQUEST`] bytes.
//!
//! Errors, not silence: a LUN that is not visible fails the open; a LUN
//! that goes away or returns an I/O error fails the read or write that hit
//! it ([`Error::Offline`]); writing to a redo log (a snapshot child) is
//! refused; a thin disk (a map with holes) is declined for writing, so the
//! caller falls back to another transport; a range the map does not cover
//! is an error, never zeros.
//!
//! The map comes from a [`BlockMapSource`]. VMware's hosts hand it to
//! VDDK through internal interfaces whose bytes are unpublished, so no
//! source is built in for a real vCenter: `disklib` declines san (and
//! falls back to the next transport) unless one is configured. The kit's
//! simulator answers `vim_soap::codec::sim_query_disk_block_map`, a
//! documented stand-in that `disklib` asks only when told it is talking
//! to the simulator; other environments plug in their own source.
//!
//! A LUN that is a regular file (an image, as the simulator and many test
//! rigs use) cannot go offline under an open descriptor the way a block
//! device does; every request therefore checks the file still reaches
//! the bytes it touches, so a truncated image fails instead of reading
//! short or being silently extended by a write.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment of `O_DIRECT` offsets, lengths and buffers (the largest
/// logical block size in common use).
pub const ALIGN: u64 = 4096;
/// Largest single request to the LUN.
pub const MAX_REQUEST: u64 = 1 << 20;
/// Where Linux lists block devices by identity.
pub const DEFAULT_DEVICE_DIR: &str = "/dev/disk/by-id";

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host's block map is inconsistent.
    #[error("invalid block map: {0}")]
    InvalidMap(String),
    /// No device of the proxy has the LUN's identity.
    #[error("LUN {id} is not visible in {dir}")]
    NotVisible {
        /// The LUN's NAA id.
        id: String,
        /// The directory searched.
        dir: PathBuf,
    },
    /// The configuration's allow / deny lists exclude the LUN.
    #[error("LUN {0} is excluded by the san allow/deny lists")]
    Denied(String),
    /// The transport does not take this disk; the caller should fall back.
    #[error("san transport declined: {0}")]
    Declined(String),
    /// Writes to a redo log (snapshot child) are never made over SAN.
    #[error("san transport refuses to write a redo log (snapshot child)")]
    RedoLog,
    /// Opened read-only.
    #[error("the disk was opened read-only")]
    ReadOnly,
    /// Outside the disk.
    #[error("range {offset}+{len} is outside the disk's {capacity} bytes")]
    OutOfRange {
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// Disk size.
        capacity: u64,
    },
    /// The block map does not say where these bytes are.
    #[error("byte {0} of the disk is not mapped on the LUN")]
    Unmapped(u64),
    /// The LUN failed, vanished or came back short.
    #[error("LUN {path} is offline or failing: {source}")]
    Offline {
        /// The device.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Another I/O error (opening, listing the device directory).
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// One piece of the disk on the LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LunExtent {
    /// Byte offset in the virtual disk.
    pub virtual_offset: u64,
    /// Byte offset on the LUN.
    pub lun_offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Where a disk lives on a LUN, as the host reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMap {
    /// The LUN's identity, e.g. `naa.600508b1001c4d2a`.
    pub lun_id: String,
    /// Size of the virtual disk in bytes.
    pub capacity: u64,
    /// Extents, in any order (validated and sorted by [`BlockMap::new`]).
    pub extents: Vec<LunExtent>,
}

/// Which disk a [`BlockMapSource`] is asked about.
#[derive(Clone, Copy, Debug)]
pub struct DiskLocation<'a> {
    /// The VM's managed object id (`vm-42`).
    pub vm: &'a str,
    /// The snapshot's managed object id, when the disk is read at one.
    pub snapshot: Option<&'a str>,
    /// The disk's device key (`2000`).
    pub device_key: i32,
    /// The disk's datastore path (`[datastore1] vm/vm.vmdk`).
    pub path: &'a str,
}

/// A disk's block map with what the host says about the disk itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBlockMap {
    /// Where the disk's bytes are.
    pub map: BlockMap,
    /// The disk is a redo log (a snapshot child): never written over san.
    pub redo_log: bool,
    /// The disk is thin: declined for writing.
    pub thin: bool,
}

/// Where the san transport learns which LUN blocks hold a disk.
///
/// Implement it for an environment that can tell (a VMFS reader, a
/// storage array's API, the kit's simulator); `Err` makes the transport
/// decline with the message, so the caller falls back.
pub trait BlockMapSource: Send + Sync + std::fmt::Debug {
    /// The block map of `disk`.
    fn block_map(&self, disk: &DiskLocation<'_>) -> std::result::Result<HostBlockMap, String>;
}

impl BlockMap {
    /// Checks and normalises a map: extents sorted by virtual offset,
    /// sector-aligned, non-empty, not overlapping, inside the capacity, and
    /// not wrapping the LUN's address space.
    pub fn new(lun_id: &str, capacity: u64, mut extents: Vec<LunExtent>) -> Result<Self> {
        let bad = |m: String| Err(Error::InvalidMap(m));
        if lun_id.is_empty() {
            return bad("empty LUN id".into());
        }
        if !capacity.is_multiple_of(512) {
            return bad(format!("capacity {capacity} is not whole sectors"));
        }
        extents.sort_by_key(|e| e.virtual_offset);
        let mut end = 0u64;
        for e in &extents {
            if e.len == 0 || (e.virtual_offset | e.lun_offset | e.len) % 512 != 0 {
                return bad(format!("extent {e:?} is empty or not sector-aligned"));
            }
            if e.virtual_offset < end {
                return bad(format!("extent {e:?} overlaps the one before it"));
            }
            let (Some(v_end), Some(_)) = (
                e.virtual_offset.checked_add(e.len),
                e.lun_offset.checked_add(e.len),
            ) else {
                return bad(format!("extent {e:?} wraps around"));
            };
            if v_end > capacity {
                return bad(format!("extent {e:?} ends past the capacity {capacity}"));
            }
            end = v_end;
        }
        Ok(Self {
            lun_id: lun_id.to_string(),
            capacity,
            extents,
        })
    }

    /// True when every byte of the disk is mapped (a thick disk).
    pub fn is_complete(&self) -> bool {
        let mut pos = 0u64;
        for e in &self.extents {
            if e.virtual_offset != pos {
                return false;
            }
            pos += e.len;
        }
        pos == self.capacity
    }

    /// The last LUN byte the map uses, plus one.
    pub fn lun_end(&self) -> u64 {
        self.extents
            .iter()
            .map(|e| e.lun_offset + e.len)
            .max()
            .unwrap_or(0)
    }

    /// `(LUN offset, length)` pieces of a range of the disk, in order.
    pub fn resolve(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        if offset.checked_add(len).is_none_or(|e| e > self.capacity) {
            return Err(Error::OutOfRange {
                offset,
                len,
                capacity: self.capacity,
            });
        }
        let mut out = Vec::new();
        let (mut pos, end) = (offset, offset + len);
        // The first extent that ends after `pos`.
        let mut i = self
            .extents
            .partition_point(|e| e.virtual_offset + e.len <= pos);
        while pos < end {
            let Some(e) = self.extents.get(i).filter(|e| e.virtual_offset <= pos) else {
                return Err(Error::Unmapped(pos));
            };
            let n = (e.virtual_offset + e.len).min(end) - pos;
            out.push((e.lun_offset + (pos - e.virtual_offset), n));
            pos += n;
            i += 1;
        }
        Ok(out)
    }
}

/// How to reach the LUN.
#[derive(Clone, Debug)]
pub struct SanOptions {
    /// Directory of device entries named by identity.
    pub device_dir: PathBuf,
    /// `vixDiskLib.transport.san.allowList`: when not empty, only these.
    pub allow: Vec<String>,
    /// `vixDiskLib.transport.san.denyList`: never these.
    pub deny: Vec<String>,
    /// Open for writing (a restore).
    pub writable: bool,
    /// The disk is a redo log (snapshot child): never written over SAN.
    pub redo_log: bool,
    /// The host reports the disk thin-provisioned: never written over
    /// SAN (the host would have to allocate blocks under us).
    pub thin: bool,
}

impl Default for SanOptions {
    fn default() -> Self {
        Self {
            device_dir: PathBuf::from(DEFAULT_DEVICE_DIR),
            allow: Vec::new(),
            deny: Vec::new(),
            writable: false,
            redo_log: false,
            thin: false,
        }
    }
}

/// The hex digits of an NAA id (`naa.600…`, `0x600…` or bare), lower case.
fn naa_hex(id: &str) -> String {
    let id = id.trim();
    let id = id
        .strip_prefix("naa.")
        .or_else(|| id.strip_prefix("0x"))
        .unwrap_or(id);
    id.to_ascii_lowercase()
}

/// Finds the device with the LUN's identity in `dir`: entries named
/// `naa.<hex>`, `wwn-0x<hex>` or `scsi-3<hex>` (udev's names).
pub fn find_lun(dir: &Path, id: &str, allow: &[String], deny: &[String]) -> Result<PathBuf> {
    let hex = naa_hex(id);
    let listed = |l: &[String]| l.iter().any(|x| naa_hex(x) == hex);
    if listed(deny) || (!allow.is_empty() && !listed(allow)) {
        return Err(Error::Denied(id.to_string()));
    }
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let wanted = [
        format!("naa.{hex}"),
        format!("wwn-0x{hex}"),
        format!("scsi-3{hex}"),
    ];
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        if wanted.contains(&name) {
            return Ok(entry.path());
        }
    }
    Err(Error::NotVisible {
        id: id.to_string(),
        dir: dir.to_path_buf(),
    })
}

/// A disk on a LUN, opened with `O_DIRECT`. `Send + Sync`: reads and
/// writes use explicit offsets, so many threads may share one.
#[derive(Debug)]
pub struct SanDisk {
    file: File,
    path: PathBuf,
    map: BlockMap,
    writable: bool,
    /// An image file rather than a block device: sizes are checked.
    regular: bool,
}

/// Runs `op` on every item on up to `streams` threads, each taking the
/// next item in turn. After a failure no new item is started; the first
/// error is returned once every thread has stopped.
fn on_streams<T: Send>(
    items: Vec<T>,
    streams: usize,
    op: impl Fn(T) -> Result<()> + Sync,
) -> Result<()> {
    let streams = streams.clamp(1, items.len().max(1));
    if streams == 1 {
        return items.into_iter().try_for_each(op);
    }
    let queue = std::sync::Mutex::new(items.into_iter());
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..streams)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while !failed.load(std::sync::atomic::Ordering::Relaxed) {
                        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                        let Some(item) = next else {
                            return Ok(());
                        };
                        if let Err(e) = op(item) {
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        // Every worker is joined (by the scope) before this returns.
        let mut first = Ok(());
        for w in workers {
            let r = w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// Whether a buffer may be handed to an `O_DIRECT` request as it is.
fn is_aligned(b: &[u8]) -> bool {
    (b.as_ptr() as usize).is_multiple_of(ALIGN as usize)
}

/// A zeroed buffer of `len` bytes whose start is `ALIGN`-aligned, carved
/// out of a slightly larger vector (no unsafe allocation needed).
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + ALIGN as usize];
        let addr = storage.as_ptr() as usize;
        let start = (ALIGN as usize - addr % ALIGN as usize) % ALIGN as usize;
        Self {
            storage,
            start,
            len,
        }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl SanDisk {
    /// Finds the LUN and opens it. Fails early when the LUN is not
    /// visible or is smaller than the map says; declines thin disks for
    /// writing and refuses redo logs.
    pub fn open(map: BlockMap, opts: &SanOptions) -> Result<Self> {
        let map = BlockMap::new(&map.lun_id, map.capacity, map.extents)?;
        if opts.redo_log {
            if opts.writable {
                return Err(Error::RedoLog);
            }
            return Err(Error::Declined(
                "a redo log (snapshot delta) is not on the LUN as flat extents; read it through another transport".into(),
            ));
        }
        if opts.writable && (opts.thin || !map.is_complete()) {
            return Err(Error::Declined(
                "a thin disk is not restored over SAN (blocks would need allocating on the host)"
                    .into(),
            ));
        }
        let path = find_lun(&opts.device_dir, &map.lun_id, &opts.allow, &opts.deny)?;
        Self::open_device(&path, map, opts.writable)
    }

    /// Opens a known device with `O_DIRECT` and serves `map` from it (no
    /// lookup, no allow / deny lists): what HotAdd uses for the disk the
    /// proxy was given, with a one-extent map.
    pub fn open_device(path: &Path, map: BlockMap, writable: bool) -> Result<Self> {
        let map = BlockMap::new(&map.lun_id, map.capacity, map.extents)?;
        let path = path.to_path_buf();
        let opts = SanOptions {
            writable,
            ..SanOptions::default()
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(opts.writable)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        // Works for block devices, whose metadata length is 0.
        let size = file.seek(SeekFrom::End(0)).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        if size < map.lun_end() {
            return Err(Error::Offline {
                path,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the LUN has {size} bytes, the map needs {}", map.lun_end()),
                ),
            });
        }
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        Ok(Self {
            file,
            path,
            map,
            writable: opts.writable,
            regular,
        })
    }

    /// The device used.
    pub fn device(&self) -> &Path {
        &self.path
    }

    /// Size of the virtual disk in bytes.
    pub fn capacity(&self) -> u64 {
        self.map.capacity
    }

    fn offline(&self, source: io::Error) -> Error {
        Error::Offline {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads `buf.len()` bytes of the disk at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut pos = 0usize;
        for (lun, len) in self.map.resolve(offset, buf.len() as u64)? {
            self.read_lun(lun, &mut buf[pos..pos + len as usize])?;
            pos += len as usize;
        }
        Ok(())
    }

    /// Reads like [`SanDisk::read_at`] on up to `streams` threads at once,
    /// each taking whole `MAX_REQUEST` pieces of the range in turn (VMware
    /// advises about six streams per host for SAN).
    pub fn read_streams(&self, offset: u64, buf: &mut [u8], streams: usize) -> Result<()> {
        self.read_many(vec![(offset, buf)], streams)
    }

    /// Reads several `(disk offset, buffer)` ranges on up to `streams`
    /// threads, all ranges cut into `MAX_REQUEST` pieces that any thread
    /// may take, so small and large ranges alike keep every stream busy.
    pub fn read_many(&self, ranges: Vec<(u64, &mut [u8])>, streams: usize) -> Result<()> {
        let mut pieces: Vec<(u64, &mut [u8])> = Vec::new();
        for (offset, buf) in ranges {
            self.map.resolve(offset, buf.len() as u64)?;
            let mut at = offset;
            for c in buf.chunks_mut(MAX_REQUEST as usize) {
                let n = c.len() as u64;
                pieces.push((at, c));
                at += n;
            }
        }
        on_streams(pieces, streams, |(at, chunk)| self.read_at(at, chunk))
    }

    /// Writes like [`SanDisk::write_at`] on up to `streams` threads, each
    /// taking pieces of at most `MAX_REQUEST` that end on `MAX_REQUEST`
    /// boundaries of the LUN. Two threads never read-modify-write the
    /// same LUN block: with a map whose extents are not all `ALIGN`ed on
    /// the LUN (adjacent extents could share a block), one stream is used.
    pub fn write_streams(&self, offset: u64, data: &[u8], streams: usize) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let mut pieces = Vec::new();
        let mut at = 0usize;
        for (lun, len) in self.map.resolve(offset, data.len() as u64)? {
            let (mut pos, end) = (lun, lun + len);
            while pos < end {
                let next = ((pos / MAX_REQUEST + 1) * MAX_REQUEST).min(end);
                let n = (next - pos) as usize;
                pieces.push((pos, &data[at..at + n]));
                at += n;
                pos = next;
            }
        }
        let aligned = self
            .map
            .extents
            .iter()
            .all(|e| (e.lun_offset | e.len).is_multiple_of(ALIGN));
        on_streams(pieces, if aligned { streams } else { 1 }, |(lun, piece)| {
            self.write_lun(lun, piece)
        })
    }

    /// Fails when an image-file LUN no longer reaches `end` (truncated,
    /// emptied): a block device would fail the request itself.
    fn check_reaches(&self, end: u64) -> Result<()> {
        if !self.regular {
            return Ok(());
        }
        let len = self.file.metadata().map_err(|e| self.offline(e))?.len();
        if len < end {
            return Err(self.offline(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the LUN ends at byte {len}; the request needs {end}"),
            )));
        }
        Ok(())
    }

    /// Reads LUN bytes through aligned requests of at most `MAX_REQUEST`.
    fn read_lun(&self, lun: u64, out: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        let mut bounce = Aligned::new(MAX_REQUEST as usize);
        while done < out.len() {
            let at = lun + done as u64;
            let whole = ((out.len() - done) as u64 / ALIGN * ALIGN).min(MAX_REQUEST) as usize;
            if at.is_multiple_of(ALIGN) && whole > 0 && is_aligned(&out[done..]) {
                // The caller's buffer is fit for O_DIRECT: no bounce copy.
                self.check_reaches(at + whole as u64)?;
                self.file
                    .read_exact_at(&mut out[done..done + whole], at)
                    .map_err(|e| self.offline(e))?;
                done += whole;
                continue;
            }
            let start = at / ALIGN * ALIGN;
            let skip = (at - start) as usize;
            let want = (out.len() - done).min(MAX_REQUEST as usize - skip);
            let span = (skip + want).div_ceil(ALIGN as usize) * ALIGN as usize;
            let b = &mut bounce.get()[..span];
            self.check_reaches(at + want as u64)?;
            self.file
                .read_exact_at(b, start)
                .map_err(|e| self.offline(e))?;
            out[done..done + want].copy_from_slice(&b[skip..skip + want]);
            done += want;
        }
        Ok(())
    }

    /// Writes `data` to the disk at `offset`; partial blocks at either end
    /// are read, patched and written back.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let mut pos = 0usize;
        for (lun, len) in self.map.resolve(offset, data.len() as u64)? {
            self.write_lun(lun, &data[pos..pos + len as usize])?;
            pos += len as usize;
        }
        Ok(())
    }

    fn write_lun(&self, lun: u64, data: &[u8]) -> Result<()> {
        let mut done = 0usize;
        let mut bounce = Aligned::new(MAX_REQUEST as usize);
        while done < data.len() {
            let at = lun + done as u64;
            let whole = ((data.len() - done) as u64 / ALIGN * ALIGN).min(MAX_REQUEST) as usize;
            if at.is_multiple_of(ALIGN) && whole > 0 && is_aligned(&data[done..]) {
                self.check_reaches(at + whole as u64)?;
                self.file
                    .write_all_at(&data[done..done + whole], at)
                    .map_err(|e| self.offline(e))?;
                done += whole;
                continue;
            }
            let start = at / ALIGN * ALIGN;
            let skip = (at - start) as usize;
            let put = (data.len() - done).min(MAX_REQUEST as usize - skip);
            let span = (skip + put).div_ceil(ALIGN as usize) * ALIGN as usize;
            let b = &mut bounce.get()[..span];
            self.check_reaches(at + put as u64)?;
            if skip != 0 || !put.is_multiple_of(ALIGN as usize) {
                // Keep the bytes around the write that share its blocks.
                self.file
                    .read_exact_at(b, start)
                    .map_err(|e| self.offline(e))?;
            }
            b[skip..skip + put].copy_from_slice(&data[done..done + put]);
            self.file
                .write_all_at(b, start)
                .map_err(|e| self.offline(e))?;
            done += put;
        }
        Ok(())
    }

    /// Makes written data durable on the LUN.
    pub fn flush(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| self.offline(e))
    }
}
