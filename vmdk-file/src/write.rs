//! Writing to local disks.
//!
//! Rules kept here:
//! - a write is never cut short: it covers every byte asked, across grain,
//!   table and extent boundaries, or fails with a typed error;
//! - a new grain is written completely (partial grains of a delta disk are
//!   filled from the parent first) before any table entry points at it,
//!   and tables before directories; a crash leaves a readable image;
//! - `uncleanShutdown` is set while the disk is open for writing and
//!   cleared by [`LocalDisk::close`]; the CID changes on the first write;
//! - a full file system is [`Error::DiskFull`] and leaves nothing pointing
//!   at the half-written grain.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use vmdk_format::descriptor::{Access, Descriptor};
use vmdk_format::extent::{GrainState, SparseExtent, SparseFormat};
use vmdk_format::hosted::{SparseExtentHeader, MAX_EXTENT_FILE_SECTORS};
use vmdk_format::layout::{Backing, SegmentKind, TableKey};

use crate::io::{parent_dir, std_storage, SharedStorage, Storage};
use crate::local::{ExtentFile, LocalDisk};
use crate::{Error, Result};

const SECTOR: u64 = 512;
static ZEROS: [u8; 1 << 16] = [0u8; 1 << 16];

/// Random bytes from the kernel (`/dev/urandom`), or from the clock and
/// the pid where there is none: good enough for content ids.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read as _;
    let mut buf = [0u8; N];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
    {
        return buf;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut x = (t as u64) ^ (u64::from(std::process::id()) << 32) | 1;
    for b in &mut buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    buf
}

/// A new CID: random, never "no parent".
pub(crate) fn new_cid(old: u32) -> u32 {
    loop {
        let c = u32::from_le_bytes(random_bytes::<4>());
        if c != old && c != vmdk_format::descriptor::CID_NO_PARENT {
            return c;
        }
    }
}

/// Per sparse extent of the top link.
#[derive(Debug)]
pub(crate) struct SparseWriter {
    header: SparseExtentHeader,
    rgd: Option<Vec<u64>>,
    next_free: u64,
}

/// The writer side of an open disk.
#[derive(Debug)]
pub(crate) struct WriteState {
    sparse: Vec<Option<SparseWriter>>,
    pub(crate) descriptor: Descriptor,
    cid_changed: bool,
    closed: bool,
}

fn write_all(fs: &dyn Storage, file: &ExtentFile, buf: &[u8], offset: u64) -> Result<()> {
    fs.write_at(&file.file, buf, offset)
        .map_err(|e| Error::disk_full_or_io(&file.path, e))
}

fn entries_le(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

impl WriteState {
    /// Prepares the top link for writing and marks it unclean.
    pub(crate) fn begin(disk: &LocalDisk) -> Result<Self> {
        let link = &disk.links[0];
        let mut sparse = Vec::new();
        for (i, placed) in link.layout.extents().iter().enumerate() {
            let Backing::Sparse(s) = &placed.backing else {
                sparse.push(None);
                continue;
            };
            let file = link.file(i)?;
            let h = match s.format() {
                SparseFormat::Hosted(h) => h.clone(),
                SparseFormat::Cowd(_) => {
                    return Err(Error::ReadOnly {
                        path: file.path.clone(),
                        reason: "COWD (vmfsSparse) extents are read-only",
                    })
                }
                SparseFormat::SeSparse(_) => {
                    return Err(Error::ReadOnly {
                        path: file.path.clone(),
                        reason: "seSparse extents are read-only",
                    })
                }
            };
            if h.is_compressed() {
                return Err(Error::ReadOnly {
                    path: file.path.clone(),
                    reason: "streamOptimized disks cannot be modified in place; convert them",
                });
            }
            if h.version >= 3 {
                return Err(Error::ReadOnly {
                    path: file.path.clone(),
                    reason: "version 3 sparse extents (persistent CBT) are opened read-only",
                });
            }
            let rgd = match h.rgd_range().map_err(|e| Error::format(&file.path, e))? {
                Some((off, len)) => {
                    let mut b = vec![0u8; len as usize];
                    file.read_exact_at(&mut b, off)?;
                    Some(entries_le(&b))
                }
                None => None,
            };
            let mut file_sectors = file.len.div_ceil(SECTOR);
            if h.unclean_shutdown {
                // Not closed cleanly: after a power cut a table entry may
                // point past the end of the file, at a grain that never
                // reached the disk. New grains go after every such place,
                // or the stale entry would read another grain's data.
                file_sectors = file_sectors.max(referenced_end(s, rgd.as_deref(), file)?);
            }
            let next_free = file_sectors
                .max(h.overhead)
                .next_multiple_of(h.grain_sectors);
            let mut marked = h.clone();
            marked.unclean_shutdown = true;
            let fs = &*disk.storage;
            write_all(fs, file, &marked.to_bytes(), 0)?;
            fs.sync_data(&file.file)
                .map_err(|e| Error::io(&file.path, e))?;
            sparse.push(Some(SparseWriter {
                header: h,
                rgd,
                next_free,
            }));
        }
        Ok(Self {
            sparse,
            descriptor: link.descriptor.clone(),
            cid_changed: false,
            closed: false,
        })
    }
}

/// The sector after the last grain any grain table (or redundant table)
/// of `s` points at, tables beyond the end of the file skipped.
fn referenced_end(s: &SparseExtent, rgd: Option<&[u64]>, file: &ExtentFile) -> Result<u64> {
    let grain_sectors = s.grain_bytes() / SECTOR;
    let table_len = s.gtes_per_gt() * 4;
    let mut end = 0u64;
    let mut buf = vec![0u8; table_len as usize];
    for &gt in s.directory().iter().chain(rgd.unwrap_or_default()) {
        let Some(off) = gt.checked_mul(SECTOR) else {
            continue;
        };
        if gt == 0 || off.checked_add(table_len).is_none_or(|e| e > file.len) {
            continue;
        }
        file.read_exact_at(&mut buf, off)?;
        for e in entries_le(&buf) {
            if e > 1 {
                end = end.max(e.saturating_add(grain_sectors));
            }
        }
    }
    Ok(end)
}

impl LocalDisk {
    /// True when opened with [`OpenOptions::writable`](crate::local::OpenOptions::writable).
    pub fn is_writable(&self) -> bool {
        self.writer.is_some()
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, WriteState>> {
        let w = self.writer.as_ref().ok_or(Error::ReadOnly {
            path: self.links[0].path.clone(),
            reason: "opened read-only",
        })?;
        let g = w.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed {
            return Err(Error::ReadOnly {
                path: self.links[0].path.clone(),
                reason: "closed",
            });
        }
        Ok(g)
    }

    /// The top link's descriptor as it is now (CID and DDB included).
    pub fn descriptor(&self) -> Descriptor {
        match &self.writer {
            Some(w) => w
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .descriptor
                .clone(),
            None => self.links[0].descriptor.clone(),
        }
    }

    /// Writes `data` at virtual byte `offset`. Returns only when every
    /// byte is in the file (call [`flush`](Self::flush) for durability).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut st = self.state()?;
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.first_write(&mut st)?;
        self.write_range(&mut st, offset, data.len() as u64, Some(data))
    }

    /// Writes zeros over `[offset, offset + len)`. Whole grains become
    /// zeroed-grain entries where the header allows, or stay unallocated
    /// on a disk without parent; nothing is allocated needlessly.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let mut st = self.state()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.first_write(&mut st)?;
        self.write_range(&mut st, offset, len, None)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let cap = self.capacity();
        if offset.checked_add(len).is_none_or(|e| e > cap) {
            return Err(Error::OutOfRange {
                offset,
                len,
                capacity: cap,
            });
        }
        Ok(())
    }

    fn first_write(&self, st: &mut WriteState) -> Result<()> {
        if st.cid_changed {
            return Ok(());
        }
        let mut d = st.descriptor.clone();
        d.cid = new_cid(d.cid);
        if let Some(lcid) = d.ddb_get("ddb.longContentID").map(str::to_string) {
            if lcid.len() == 32 && lcid.is_ascii() {
                d.ddb_set(
                    "ddb.longContentID",
                    &format!("{}{:08x}", &lcid[..24], d.cid),
                );
            }
        }
        self.store_descriptor(st, &d)?;
        st.descriptor = d;
        st.cid_changed = true;
        Ok(())
    }

    /// Writes from now on keep the CID until [`Self::change_cid`].
    pub(crate) fn keep_cid(&self) -> Result<()> {
        self.state()?.cid_changed = true;
        Ok(())
    }

    /// Gives the disk a new CID now, as its first write would have.
    pub(crate) fn change_cid(&self) -> Result<()> {
        let mut st = self.state()?;
        st.cid_changed = false;
        self.first_write(&mut st)
    }

    /// Writes the descriptor: into the embedded area (refusing to grow
    /// into grain data) or atomically replacing the descriptor file.
    fn store_descriptor(&self, st: &WriteState, d: &Descriptor) -> Result<()> {
        let link = &self.links[0];
        let bytes = d.to_bytes().map_err(|e| Error::format(&link.path, e))?;
        if link.embedded {
            let file = link.file(0)?;
            let h = &st
                .sparse
                .first()
                .and_then(|s| s.as_ref())
                .ok_or_else(|| Error::Unsupported {
                    path: link.path.clone(),
                    what: "a data file without a descriptor area".into(),
                })?
                .header;
            let Some((off, area)) = h.descriptor_range() else {
                return Err(Error::DescriptorFull {
                    path: link.path.clone(),
                    needed: bytes.len(),
                    capacity: 0,
                });
            };
            if bytes.len() > area as usize {
                return Err(Error::DescriptorFull {
                    path: link.path.clone(),
                    needed: bytes.len(),
                    capacity: area as usize,
                });
            }
            let mut padded = bytes;
            padded.resize(area as usize, 0);
            write_all(&*self.storage, file, &padded, off)?;
            return Ok(());
        }
        replace_file_in(&self.storage, &link.path, &bytes)
    }

    /// Sets (or adds) a DDB key of the top link.
    pub fn set_metadata(&self, key: &str, value: &str) -> Result<()> {
        let st = self.state()?;
        if !key.starts_with("ddb.") {
            return Err(Error::InvalidArgument(format!(
                "metadata keys start with `ddb.`: `{key}`"
            )));
        }
        let mut d = st.descriptor.clone();
        d.ddb_set(key, value);
        self.store_descriptor(&st, &d)?;
        drop(st);
        self.state()?.descriptor = d;
        Ok(())
    }

    /// Rewrites the top link's parent hint and parent CID (used when a
    /// snapshot chain is consolidated underneath it). Does not count as a
    /// data write: the CID stays.
    pub fn set_parent_link(&self, hint: &str, parent_cid: u32) -> Result<()> {
        let mut st = self.state()?;
        let mut d = st.descriptor.clone();
        d.parent_file_name_hint = Some(hint.to_string());
        d.parent_cid = parent_cid;
        self.store_descriptor(&st, &d)?;
        st.descriptor = d;
        Ok(())
    }

    /// Sets extent `extent`'s size in the top link's descriptor (repair
    /// makes it agree with the extent's header). Not a data write: the
    /// CID stays.
    pub(crate) fn set_extent_sectors(&self, extent: usize, sectors: u64) -> Result<()> {
        let mut st = self.state()?;
        let mut d = st.descriptor.clone();
        let line = d.extents.get_mut(extent).ok_or_else(|| {
            Error::InvalidArgument(format!("the descriptor has no extent {extent}"))
        })?;
        line.sectors = sectors;
        self.store_descriptor(&st, &d)?;
        st.descriptor = d;
        Ok(())
    }

    /// Removes a DDB key of the top link; returns whether it existed.
    pub fn remove_metadata(&self, key: &str) -> Result<bool> {
        let mut st = self.state()?;
        let mut d = st.descriptor.clone();
        if !d.ddb_remove(key) {
            return Ok(false);
        }
        self.store_descriptor(&st, &d)?;
        st.descriptor = d;
        Ok(true)
    }

    fn write_range(
        &self,
        st: &mut WriteState,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
    ) -> Result<()> {
        let link = &self.links[0];
        let mut pos = 0u64;
        while pos < len {
            let cur = offset + pos;
            let seg = self.next_step(0, cur, len - pos)?;
            let placed = &link.layout.extents()[seg.extent];
            if placed.access != Access::ReadWrite {
                return Err(Error::ReadOnly {
                    path: link.path.clone(),
                    reason: "extent is not RW",
                });
            }
            let piece = data.map(|d| &d[pos as usize..(pos + seg.len) as usize]);
            match (&placed.backing, seg.kind) {
                (Backing::Flat { .. }, SegmentKind::Data { file_offset }) => {
                    let file = link.file(seg.extent)?;
                    match piece {
                        Some(p) => write_all(&*self.storage, file, p, file_offset)?,
                        None => write_zero_bytes(&*self.storage, file, file_offset, seg.len)?,
                    }
                }
                (Backing::Sparse(s), kind) => {
                    let rel = cur - placed.start;
                    self.write_sparse(
                        st,
                        seg.extent,
                        s,
                        placed.start,
                        placed.len,
                        rel,
                        seg.len,
                        kind,
                        piece,
                    )?
                }
                _ => {
                    return Err(Error::ReadOnly {
                        path: link.path.clone(),
                        reason: "ZERO extents cannot be written",
                    })
                }
            }
            pos += seg.len;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn write_sparse(
        &self,
        st: &mut WriteState,
        extent: usize,
        s: &SparseExtent,
        ext_start: u64,
        ext_len: u64,
        rel: u64,
        len: u64,
        kind: SegmentKind,
        data: Option<&[u8]>,
    ) -> Result<()> {
        let link = &self.links[0];
        let file = link.file(extent)?;
        let gb = s.grain_bytes();
        let has_parent = self.links.len() > 1;
        let zeroed_ok = match &st.sparse[extent] {
            Some(w) => w.header.has_zeroed_grain_gte(),
            None => false,
        };
        if let SegmentKind::Data { file_offset } = kind {
            // Allocated grains, contiguous in the file.
            match data {
                Some(d) => return write_all(&*self.storage, file, d, file_offset),
                None => {
                    let mut done = 0;
                    while done < len {
                        let r = rel + done;
                        let g = r / gb;
                        let in_g = r % gb;
                        let n = (gb - in_g).min(len - done);
                        let whole =
                            in_g == 0 && (n == gb || ext_start + r + n == ext_start + ext_len);
                        if whole && zeroed_ok {
                            self.set_entries(st, extent, s, g, &[1])?;
                        } else {
                            write_zero_bytes(&*self.storage, file, file_offset + done, n)?;
                        }
                        done += n;
                    }
                    return Ok(());
                }
            }
        }
        let mut done = 0u64;
        while done < len {
            let r = rel + done;
            let g = r / gb;
            let g_start = g * gb;
            let g_len = gb.min(ext_len - g_start);
            let in_g = r - g_start;
            let n = (g_len - in_g).min(len - done);
            let whole = in_g == 0 && n == g_len;
            match data {
                None => {
                    let already_zero = matches!(kind, SegmentKind::Zero) || !has_parent;
                    if already_zero {
                        // Nothing to do: the bytes read as zeros already.
                    } else if whole && zeroed_ok {
                        self.set_entries(st, extent, s, g, &[1])?;
                    } else {
                        let mut buf = vec![0u8; gb as usize];
                        self.fill_base(kind, ext_start + g_start, &mut buf[..g_len as usize])?;
                        buf[in_g as usize..(in_g + n) as usize].fill(0);
                        self.allocate(st, extent, s, g, &buf)?;
                    }
                    done += n;
                }
                Some(d) => {
                    if whole && g_len == gb {
                        // A run of whole grains inside one table goes out
                        // in one write.
                        let gtes = s.gtes_per_gt();
                        let mut count = 1u64;
                        while done + (count + 1) * gb <= len
                            && !(g + count).is_multiple_of(gtes)
                            && g_start + (count + 1) * gb <= ext_len
                        {
                            count += 1;
                        }
                        self.allocate(
                            st,
                            extent,
                            s,
                            g,
                            &d[done as usize..(done + count * gb) as usize],
                        )?;
                        done += count * gb;
                    } else if whole {
                        // The last grain of a capacity that is not a grain
                        // multiple: pad it.
                        let mut buf = vec![0u8; gb as usize];
                        buf[..g_len as usize]
                            .copy_from_slice(&d[done as usize..(done + g_len) as usize]);
                        self.allocate(st, extent, s, g, &buf)?;
                        done += g_len;
                    } else {
                        let mut buf = vec![0u8; gb as usize];
                        self.fill_base(kind, ext_start + g_start, &mut buf[..g_len as usize])?;
                        buf[in_g as usize..(in_g + n) as usize]
                            .copy_from_slice(&d[done as usize..(done + n) as usize]);
                        self.allocate(st, extent, s, g, &buf)?;
                        done += n;
                    }
                }
            }
        }
        Ok(())
    }

    /// The content a grain has before a partial write: the parent's
    /// (copy-on-write) when unallocated, zeros when zeroed.
    fn fill_base(&self, kind: SegmentKind, virt: u64, buf: &mut [u8]) -> Result<()> {
        match kind {
            SegmentKind::Unallocated => self.read_parent(0, virt, buf),
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Writes `bytes` (whole grains) as new grains starting at grain `g`
    /// at the end of the file, then points the tables at them.
    fn allocate(
        &self,
        st: &mut WriteState,
        extent: usize,
        s: &SparseExtent,
        g: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let link = &self.links[0];
        let file = link.file(extent)?;
        let w = st.sparse[extent].as_mut().ok_or(Error::ReadOnly {
            path: file.path.clone(),
            reason: "extent not writable",
        })?;
        let grain_sectors = w.header.grain_sectors;
        let count = bytes.len() as u64 / (grain_sectors * SECTOR);
        let sector = w.next_free;
        if sector + count * grain_sectors > MAX_EXTENT_FILE_SECTORS {
            return Err(Error::DiskFull {
                path: file.path.clone(),
            });
        }
        // Data first: a crash before the table update leaves an
        // unreferenced grain, never a table entry pointing at garbage.
        write_all(&*self.storage, file, bytes, sector * SECTOR)?;
        if self.links.len() > 1 || self.ordered_allocation {
            // After a power cut the page cache may have written the
            // table before the grain: the entry would show zeros where
            // the parent's data was (the old value of every byte of the
            // grain). Without a parent, zeros are the old value and the
            // order may stay loose until the next flush (unless the disk
            // overlays data kept elsewhere: `ordered_allocation`).
            self.storage
                .sync_data(&file.file)
                .map_err(|e| Error::io(&file.path, e))?;
        }
        w.next_free = sector + count * grain_sectors;
        s.grow_file_len(w.next_free * SECTOR);
        let entries: Vec<u64> = (0..count).map(|i| sector + i * grain_sectors).collect();
        self.set_entries(st, extent, s, g, &entries)
    }

    /// Sets consecutive table entries from grain `g` (all in one table),
    /// in the table and then its redundant copy.
    fn set_entries(
        &self,
        st: &mut WriteState,
        extent: usize,
        s: &SparseExtent,
        g: u64,
        values: &[u64],
    ) -> Result<()> {
        let link = &self.links[0];
        let file = link.file(extent)?;
        let gt = g / s.gtes_per_gt();
        let idx = (g % s.gtes_per_gt()) as usize;
        let (gt_off, _) = s
            .table_location(gt)
            .map_err(|e| Error::format(&file.path, e))?
            .ok_or_else(|| Error::Unsupported {
                path: file.path.clone(),
                what: "writing where no grain table is allocated".into(),
            })?;
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|&v| (v as u32).to_le_bytes())
            .collect();
        let fs = &*self.storage;
        write_all(fs, file, &bytes, gt_off + idx as u64 * 4)?;
        if let Some(rgd) = st.sparse[extent].as_ref().and_then(|w| w.rgd.as_ref()) {
            if let Some(&rgt) = rgd.get(gt as usize).filter(|&&r| r != 0) {
                write_all(fs, file, &bytes, rgt * SECTOR + idx as u64 * 4)?;
            }
        }
        let key = (0usize, TableKey { extent, gt });
        let mut table = match self.tables.get(&key) {
            Some(t) => (*t).clone(),
            None => {
                let (off, len) = s
                    .table_location(gt)
                    .map_err(|e| Error::format(&file.path, e))?
                    .unwrap_or((gt_off, 0));
                let mut b = vec![0u8; len as usize];
                file.read_exact_at(&mut b, off)?;
                s.parse_table(gt, &b)
                    .map_err(|e| Error::format(&file.path, e))?
            }
        };
        for (i, &v) in values.iter().enumerate() {
            table.set_entry(idx + i, v);
        }
        let size = table.entries().len() * 4 + 64;
        self.tables.replace(key, Arc::new(table), size);
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<()> {
        let _st = self.state()?;
        self.sync_files()
    }

    fn sync_files(&self) -> Result<()> {
        for f in self.links[0].files.iter().flatten() {
            self.storage
                .sync_data(&f.file)
                .map_err(|e| Error::io(&f.path, e))?;
        }
        Ok(())
    }

    /// Flushes, clears `uncleanShutdown`, and closes. Dropping a writable
    /// disk does the same, ignoring errors; call this to see them.
    pub fn close(self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&self) -> Result<()> {
        let Some(w) = &self.writer else { return Ok(()) };
        let mut st = w.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            return Ok(());
        }
        st.closed = true;
        self.sync_files()?;
        for (i, sw) in st.sparse.iter().enumerate() {
            let Some(sw) = sw else { continue };
            let file = self.links[0].file(i)?;
            let mut h = sw.header.clone();
            h.unclean_shutdown = false;
            write_all(&*self.storage, file, &h.to_bytes(), 0)?;
            self.storage
                .sync_data(&file.file)
                .map_err(|e| Error::io(&file.path, e))?;
        }
        Ok(())
    }

    /// Which grains of the top link's sparse extent `extent` hold data
    /// (for compaction and commit).
    pub(crate) fn grain_state(&self, extent: usize, grain: u64) -> Result<GrainState> {
        let link = &self.links[0];
        let Backing::Sparse(s) = &link.layout.extents()[extent].backing else {
            return Ok(GrainState::Unallocated);
        };
        let gt = grain / s.gtes_per_gt();
        let key = (0usize, TableKey { extent, gt });
        let table = match self.tables.get(&key) {
            Some(t) => Some(t),
            None => match s
                .table_location(gt)
                .map_err(|e| Error::format(&link.path, e))?
            {
                None => None,
                Some((off, len)) => {
                    let mut b = vec![0u8; len as usize];
                    link.file(extent)?.read_exact_at(&mut b, off)?;
                    Some(Arc::new(
                        s.parse_table(gt, &b)
                            .map_err(|e| Error::format(&link.path, e))?,
                    ))
                }
            },
        };
        s.grain_state(grain, table.as_deref())
            .map_err(|e| Error::format(&link.path, e))
    }
}

impl Drop for LocalDisk {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}

fn write_zero_bytes(
    fs: &dyn Storage,
    file: &ExtentFile,
    mut offset: u64,
    mut len: u64,
) -> Result<()> {
    while len > 0 {
        let n = len.min(ZEROS.len() as u64);
        write_all(fs, file, &ZEROS[..n as usize], offset)?;
        offset += n;
        len -= n;
    }
    Ok(())
}

/// Syncs directory `dir` so that the names created, renamed or removed
/// in it survive a power cut. A file system that cannot sync a directory
/// (`EINVAL`) is not an error.
pub(crate) fn sync_dir(fs: &dyn Storage, dir: &Path) -> Result<()> {
    match fs.sync_dir(dir) {
        Err(e) if e.raw_os_error() != Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            Err(Error::io(dir, e))
        }
        _ => Ok(()),
    }
}

/// Replaces a small file atomically: write a temporary beside it, sync,
/// rename over, sync the directory.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file_in(&std_storage(), path, bytes)
}

/// [`replace_file`] through `storage`.
pub fn replace_file_in(storage: &SharedStorage, path: &Path, bytes: &[u8]) -> Result<()> {
    let fs = &**storage;
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let f = fs
            .create(&tmp, false)
            .map_err(|e| Error::disk_full_or_io(&tmp, e))?;
        fs.write_at(&f, bytes, 0)
            .map_err(|e| Error::disk_full_or_io(&tmp, e))?;
        fs.sync_all(&f).map_err(|e| Error::io(&tmp, e))?;
        if let Ok(meta) = std::fs::metadata(path) {
            let _ = std::fs::set_permissions(&tmp, meta.permissions());
        }
        fs.rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(fs, dir)
    })();
    if result.is_err() {
        let _ = fs.remove_file(&tmp);
    }
    result
}
