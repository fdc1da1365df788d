//! A backup point read in place: any byte of one disk of one backup,
//! without restoring it first (what `vdisk serve --from`, `vdisk ls` and
//! `vdisk get` read), and a writable overlay on top of one that leaves the
//! point untouched (instant recovery).
//!
//! Reads resolve each byte to the newest backup of the point's chain that
//! stores it (the restore plan), read the stored block holding it whole,
//! check that block's CRC-32 against the catalog and keep a few verified
//! blocks in memory. A byte no backup stores reads as zero and is reported
//! as a hole. Only the blocks a read touches are read: a small file from a
//! large disk costs a few blocks, which [`BackupPoint::bytes_read`]
//! counts.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cbt::{Extent, ExtentList};
use vmdk_file::create::{create, CreateOptions, DiskType};
use vmdk_file::local::{AllocKind, LocalDisk, OpenOptions};
use vmdk_format::descriptor::CreateType;

use super::{repo_err, DiskEntry, RepoCatalog, MAX_BLOCK};
use crate::error::{Error, Result};

/// The stored blocks of one disk in one backup: first byte → (length,
/// CRC-32), from the catalog.
pub(super) type BlockIndex = BTreeMap<u64, (u64, u32)>;

/// The open stored disks of a chain, by backup id.
pub(super) type Sources = BTreeMap<u64, (LocalDisk, BlockIndex)>;

/// How many verified blocks a [`BackupPoint`] keeps (each at most
/// [`MAX_BLOCK`], 1 MiB as the writer stores them).
const CACHED_BLOCKS: usize = 8;

/// Opens the stored disk of `key` in every backup `backups` names, with
/// its block index (each block's length checked against [`MAX_BLOCK`]).
pub(super) fn open_sources(
    repo: &Path,
    catalog: &RepoCatalog,
    key: i32,
    backups: impl IntoIterator<Item = u64>,
) -> Result<Sources> {
    let mut sources = Sources::new();
    for id in backups {
        if sources.contains_key(&id) {
            continue;
        }
        let b = catalog
            .backups
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| repo_err(repo, format!("backup {id} vanished")))?;
        let de = b
            .disks
            .iter()
            .find(|x| x.key == key)
            .ok_or_else(|| repo_err(repo, "disk missing from a backup of the chain"))?;
        let mut index = BlockIndex::new();
        for &(off, len, crc) in &de.crcs {
            if len == 0 || len > MAX_BLOCK || off.checked_add(len).is_none() {
                return Err(repo_err(
                    repo,
                    format!(
                        "backup {id}, disk {key}: the catalog's block at byte {off} has length {len}"
                    ),
                ));
            }
            index.insert(off, (len, crc));
        }
        let disk = LocalDisk::open(super::contained(repo, &de.file)?, &OpenOptions::default())?;
        sources.insert(id, (disk, index));
    }
    Ok(sources)
}

/// The stored block of backup `id` holding byte `off`: (first byte,
/// length, CRC-32).
pub(super) fn block_at(
    repo: &Path,
    index: &BlockIndex,
    id: u64,
    key: i32,
    off: u64,
) -> Result<(u64, u64, u32)> {
    index
        .range(..=off)
        .next_back()
        .filter(|(&s, &(l, _))| off - s < l)
        .map(|(&s, &(l, c))| (s, l, c))
        .ok_or_else(|| {
            repo_err(
                repo,
                format!("backup {id}, disk {key}: no checksum covers byte {off}"),
            )
        })
}

/// Reads a stored block whole and checks it against the catalog's CRC.
pub(super) fn read_block(
    repo: &Path,
    src: &LocalDisk,
    id: u64,
    key: i32,
    (start, len, crc): (u64, u64, u32),
    block: &mut Vec<u8>,
) -> Result<()> {
    block.resize(len as usize, 0);
    src.read_at(start, block)?;
    let found = crc32fast::hash(block);
    if found != crc {
        return Err(Error::BadChecksum {
            path: repo.to_path_buf(),
            backup: id,
            key,
            offset: start,
            len,
            expected: crc,
            found,
        });
    }
    Ok(())
}

/// A verified stored block: (backup, first byte, bytes).
type CachedBlock = (u64, u64, Arc<Vec<u8>>);

/// One disk of one backup point, read in place (read-only).
pub struct BackupPoint {
    repo: PathBuf,
    id: u64,
    key: i32,
    capacity: u64,
    /// The restore plan: first byte → (end, backup supplying it).
    reads: BTreeMap<u64, (u64, u64)>,
    sources: Sources,
    /// Verified blocks, most recent last.
    cache: Mutex<VecDeque<CachedBlock>>,
    bytes_read: AtomicU64,
    /// A format-2 point: its id and reader (the fields above are then
    /// unused but for `repo`, `key` and `capacity`).
    v2: Option<(String, repo_store::PointReader)>,
}

impl std::fmt::Debug for BackupPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupPoint")
            .field("repo", &self.repo)
            .field("id", &self.id)
            .field("key", &self.key)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// What a stretch of a backup point holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointExtent {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Stored by some backup of the chain (else a hole reading as zero).
    pub stored: bool,
}

impl BackupPoint {
    /// Opens disk `key` of backup `id` (`None`: the backup's only disk).
    pub fn open(repo: &Path, id: u64, key: Option<i32>) -> Result<Self> {
        let catalog = RepoCatalog::load(repo)?;
        let entry = catalog
            .backups
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| repo_err(repo, format!("no backup {id}")))?;
        let disk: &DiskEntry = match key {
            Some(k) => entry
                .disks
                .iter()
                .find(|d| d.key == k)
                .ok_or_else(|| repo_err(repo, format!("backup {id} has no disk {k}")))?,
            None => match entry.disks.as_slice() {
                [only] => only,
                [] => return Err(repo_err(repo, format!("backup {id} has no disk"))),
                several => {
                    let keys: Vec<String> = several.iter().map(|d| d.key.to_string()).collect();
                    return Err(Error::InvalidArgument(format!(
                        "backup {id} has several disks ({}): name one (--disk KEY)",
                        keys.join(", ")
                    )));
                }
            },
        };
        let plan = catalog
            .disk_catalog(disk.key, disk.capacity)?
            .restore_plan(id)?;
        let sources = open_sources(
            repo,
            &catalog,
            disk.key,
            plan.reads.iter().map(|r| r.backup),
        )?;
        let reads = plan
            .reads
            .iter()
            .filter(|r| r.extent.len > 0)
            .map(|r| (r.extent.start, (r.extent.end(), r.backup)))
            .collect();
        Ok(Self {
            repo: repo.to_path_buf(),
            id,
            key: disk.key,
            capacity: disk.capacity,
            reads,
            sources,
            cache: Mutex::new(VecDeque::new()),
            bytes_read: AtomicU64::new(0),
            v2: None,
        })
    }

    /// Opens disk `key` (`None`: the point's only disk) of point `point`
    /// (`latest` or an id prefix) of a format-2 repository found at
    /// `location`. Every chunk is checked against its id when read.
    pub fn open_v2(
        repo: &repo_store::Repository,
        location: &str,
        point: &str,
        key: Option<i32>,
    ) -> Result<Self> {
        let (id, keys) = super::v2::resolve(repo, point)?;
        let key = match (key, keys.as_slice()) {
            (Some(k), _) if keys.contains(&k) => k,
            (Some(k), _) => {
                return Err(Error::InvalidArgument(format!(
                    "point {id} has no disk {k}"
                )))
            }
            (None, [only]) => *only,
            (None, several) => {
                let keys: Vec<String> = several.iter().map(|k| k.to_string()).collect();
                return Err(Error::InvalidArgument(format!(
                    "point {id} has several disks ({}): name one (--disk KEY)",
                    keys.join(", ")
                )));
            }
        };
        let reader = repo_store::PointReader::open(repo, &id, key)?;
        Ok(Self {
            repo: PathBuf::from(location),
            id: 0,
            key,
            capacity: reader.capacity(),
            reads: BTreeMap::new(),
            sources: Sources::default(),
            cache: Mutex::new(VecDeque::new()),
            bytes_read: AtomicU64::new(0),
            v2: Some((id.to_string(), reader)),
        })
    }

    /// The backup id (format 1; 0 for a format-2 point, see
    /// [`label`](Self::label)).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The point's id as shown: the number of a format-1 backup, the hex
    /// id of a format-2 point.
    pub fn label(&self) -> String {
        match &self.v2 {
            Some((id, _)) => id.clone(),
            None => self.id.to_string(),
        }
    }

    /// The disk's device key.
    pub fn key(&self) -> i32 {
        self.key
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes read from the repository's stored disks so far (whole blocks,
    /// each read once while it stays cached).
    pub fn bytes_read(&self) -> u64 {
        match &self.v2 {
            Some((_, r)) => r.bytes_read(),
            None => self.bytes_read.load(Ordering::Relaxed),
        }
    }

    /// The plan entry covering `off`, or the start of the next one.
    fn locate(&self, off: u64) -> std::result::Result<(u64, u64), u64> {
        if let Some((_, &(end, backup))) = self.reads.range(..=off).next_back() {
            if off < end {
                return Ok((end, backup));
            }
        }
        Err(self
            .reads
            .range(off..)
            .next()
            .map_or(self.capacity, |(&s, _)| s))
    }

    /// The verified block of backup `id` holding `off`.
    fn block(&self, id: u64, off: u64) -> Result<(u64, Arc<Vec<u8>>)> {
        let (src, index) = self
            .sources
            .get(&id)
            .ok_or_else(|| repo_err(&self.repo, format!("backup {id} is not open")))?;
        let b = block_at(&self.repo, index, id, self.key, off)?;
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.iter().position(|c| c.0 == id && c.1 == b.0) {
                let hit = cache.remove(i).expect("position is in range");
                let bytes = Arc::clone(&hit.2);
                cache.push_back(hit);
                return Ok((b.0, bytes));
            }
        }
        let mut bytes = Vec::new();
        read_block(&self.repo, src, id, self.key, b, &mut bytes)?;
        self.bytes_read.fetch_add(b.1, Ordering::Relaxed);
        let bytes = Arc::new(bytes);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHED_BLOCKS {
            cache.pop_front();
        }
        cache.push_back((id, b.0, Arc::clone(&bytes)));
        Ok((b.0, bytes))
    }

    /// Reads `buf.len()` bytes at `offset`, each stored block checked
    /// against its CRC ([`Error::BadChecksum`] otherwise).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if let Some((_, r)) = &self.v2 {
            if offset
                .checked_add(buf.len() as u64)
                .is_none_or(|e| e > self.capacity)
            {
                return Err(Error::OutOfRange {
                    offset,
                    len: buf.len() as u64,
                    capacity: self.capacity,
                });
            }
            return Ok(r.read_at(offset, buf)?);
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.capacity)
            .ok_or(Error::OutOfRange {
                offset,
                len: buf.len() as u64,
                capacity: self.capacity,
            })?;
        let mut off = offset;
        while off < end {
            let at = (off - offset) as usize;
            match self.locate(off) {
                Err(next) => {
                    let n = (next.min(end) - off) as usize;
                    buf[at..at + n].fill(0);
                    off += n as u64;
                }
                Ok((read_end, backup)) => {
                    let (start, block) = self.block(backup, off)?;
                    // `off` lies inside the block (block_at checked it).
                    let n = (read_end.min(end).min(start + block.len() as u64) - off) as usize;
                    let from = (off - start) as usize;
                    buf[at..at + n].copy_from_slice(&block[from..from + n]);
                    off += n as u64;
                }
            }
        }
        Ok(())
    }

    /// What `[offset, offset + length)` holds, in order and coalesced.
    pub fn extents(&self, offset: u64, length: u64) -> Vec<PointExtent> {
        if let Some((_, r)) = &self.v2 {
            return r
                .runs(offset, length)
                .into_iter()
                .map(|run| PointExtent {
                    start: run.offset,
                    length: run.length,
                    stored: run.data,
                })
                .collect();
        }
        let end = offset.saturating_add(length).min(self.capacity);
        let mut out: Vec<PointExtent> = Vec::new();
        let mut off = offset;
        while off < end {
            let (next, stored) = match self.locate(off) {
                Ok((read_end, _)) => (read_end, true),
                Err(next) => (next, false),
            };
            let n = next.min(end) - off;
            match out.last_mut() {
                Some(last) if last.stored == stored => last.length += n,
                _ => out.push(PointExtent {
                    start: off,
                    length: n,
                    stored,
                }),
            }
            off += n;
        }
        out
    }
}

/// The grain a [`PointDelta`] copies up on a partial write.
const DELTA_GRAIN: u64 = 64 << 10;

/// The DDB key naming the point a delta belongs to.
const DELTA_OF: &str = "ddb.vddkrs.deltaOf";

/// A writable view of a backup point: writes go to a delta disk (a local
/// monolithicSparse VMDK of the point's capacity), reads come from the
/// delta where it was written and from the point elsewhere. The point
/// itself is never written.
///
/// The delta records whole 64 KiB grains: a write covering part of a
/// grain first copies the rest of that grain from the point. Reopening an
/// existing delta (kept from an earlier session) picks up what it holds.
pub struct PointDelta {
    point: BackupPoint,
    delta: LocalDisk,
    path: PathBuf,
    /// Grains the delta holds.
    written: Mutex<ExtentList>,
    /// Serialises writes so two never copy up the same grain at once.
    writing: Mutex<()>,
}

impl std::fmt::Debug for PointDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointDelta")
            .field("point", &self.point)
            .field("delta", &self.path)
            .finish_non_exhaustive()
    }
}

impl PointDelta {
    /// Opens `point` writable through the delta at `path`: created when
    /// missing, reopened when it exists (it must be a delta of this very
    /// point: its `ddb.vddkrs.deltaOf` names the repository, backup and
    /// disk, and its capacity matches).
    pub fn open(point: BackupPoint, path: &Path) -> Result<Self> {
        Self::open_with(point, path, std::fs::symlink_metadata(path).is_err())
    }

    /// Opens `point` writable through a new delta at `path`, which must
    /// not exist (it is created exclusively).
    pub fn create(point: BackupPoint, path: &Path) -> Result<Self> {
        Self::open_with(point, path, true)
    }

    fn open_with(point: BackupPoint, path: &Path, fresh: bool) -> Result<Self> {
        let owner = format!(
            "{} backup {} disk {}",
            point.repo.display(),
            point.label(),
            point.key
        );
        if fresh {
            // `create` refuses an existing file: a leftover or planted
            // file is never taken for a new delta.
            create(
                path,
                &CreateOptions::new(DiskType::MonolithicSparse, point.capacity()),
            )?;
        }
        let delta = LocalDisk::open(
            path,
            &OpenOptions {
                writable: true,
                // The delta stands over the point's data: a grain's
                // table entry must never reach the disk before the grain.
                ordered_allocation: true,
                ..OpenOptions::default()
            },
        )?;
        if delta.capacity() != point.capacity() {
            return Err(Error::InvalidArgument(format!(
                "{}: a delta of {} bytes does not fit a point of {} bytes",
                path.display(),
                delta.capacity(),
                point.capacity()
            )));
        }
        if fresh {
            delta.set_metadata(DELTA_OF, &owner)?;
        } else {
            let desc = delta.descriptor();
            let of = desc.ddb_get(DELTA_OF);
            if of != Some(owner.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "{} is not a delta of {owner} ({DELTA_OF} = {of:?})",
                    path.display()
                )));
            }
            if desc.extents.len() != 1 || desc.create_type != CreateType::MonolithicSparse {
                return Err(Error::InvalidArgument(format!(
                    "{}: a delta is one monolithicSparse file",
                    path.display()
                )));
            }
        }
        let written: ExtentList = delta
            .map()?
            .iter()
            .filter(|e| e.kind != AllocKind::Unallocated)
            .map(|e| Extent::new(e.start, e.length))
            .collect();
        let written = written.align(DELTA_GRAIN).clip(point.capacity());
        Ok(Self {
            point,
            delta,
            path: path.to_path_buf(),
            written: Mutex::new(written),
            writing: Mutex::new(()),
        })
    }

    /// The point underneath.
    pub fn point(&self) -> &BackupPoint {
        &self.point
    }

    /// The delta file.
    pub fn delta_path(&self) -> &Path {
        &self.path
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.point.capacity()
    }

    fn written(&self) -> ExtentList {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads from the delta where written, from the point elsewhere.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        let written = self.written();
        let window = ExtentList::from_sorted([Extent::new(offset, len)]);
        // The point first, then the delta's pieces over it.
        self.point.read_at(offset, buf)?;
        for e in written.intersection(&window).iter() {
            let at = (e.start - offset) as usize;
            self.delta
                .read_at(e.start, &mut buf[at..at + e.len as usize])?;
        }
        Ok(())
    }

    /// Writes into the delta (whole grains; partial ones copied up first).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_with(offset, data.len() as u64, |off, grain_at, grain| {
            let at = (off - offset) as usize;
            let n = grain.len() - grain_at;
            grain[grain_at..].copy_from_slice(&data[at..at + n]);
        })
    }

    /// Writes zeros into the delta.
    pub fn write_zeroes(&self, offset: u64, length: u64) -> Result<()> {
        self.write_with(offset, length, |_, grain_at, grain| {
            grain[grain_at..].fill(0)
        })
    }

    /// The write loop: for each grain the range touches, builds the new
    /// grain contents (`fill(range offset, first byte inside the grain
    /// slice, grain slice cut at the range's end)`) and stores it whole.
    fn write_with(
        &self,
        offset: u64,
        length: u64,
        mut fill: impl FnMut(u64, usize, &mut [u8]),
    ) -> Result<()> {
        let cap = self.capacity();
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= cap)
            .ok_or(Error::OutOfRange {
                offset,
                len: length,
                capacity: cap,
            })?;
        let _w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut grain = Vec::new();
        let mut off = offset;
        while off < end {
            let g = off - off % DELTA_GRAIN;
            let g_end = (g + DELTA_GRAIN).min(cap);
            let stop = end.min(g_end);
            grain.resize((g_end - g) as usize, 0);
            let whole = off == g && stop == g_end;
            if !whole {
                // Keep what the rest of the grain reads as now.
                self.read_at(g, &mut grain)?;
            }
            fill(off, (off - g) as usize, &mut grain[..(stop - g) as usize]);
            self.delta.write_at(g, &grain)?;
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(Extent::new(g, g_end - g));
            off = stop;
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        Ok(self.delta.flush()?)
    }

    /// What `[offset, offset + length)` holds: written grains are data,
    /// the rest is what the point holds.
    pub fn extents(&self, offset: u64, length: u64) -> Vec<PointExtent> {
        let written = self.written();
        let mut out: Vec<PointExtent> = Vec::new();
        for p in self.point.extents(offset, length) {
            let piece = ExtentList::from_sorted([Extent::new(p.start, p.length)]);
            let mut cuts: Vec<(u64, u64, bool)> = written
                .intersection(&piece)
                .iter()
                .map(|e| (e.start, e.len, true))
                .collect();
            cuts.extend(
                piece
                    .difference(&written)
                    .iter()
                    .map(|e| (e.start, e.len, p.stored)),
            );
            cuts.sort_unstable();
            for (start, length, stored) in cuts {
                match out.last_mut() {
                    Some(last) if last.stored == stored => last.length += length,
                    _ => out.push(PointExtent {
                        start,
                        length,
                        stored,
                    }),
                }
            }
        }
        out
    }

    /// Closes the delta (flushing it) and returns its path.
    pub fn close(self) -> Result<PathBuf> {
        self.delta.close()?;
        Ok(self.path)
    }
}
