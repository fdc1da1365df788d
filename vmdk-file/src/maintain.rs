//! Snapshots and maintenance of local disks: child (delta) creation,
//! commit of a child into its parent, grow, compact.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmdk_format::create::{
    AdapterType, DescriptorOptions, SparseLayout, SparseParams, SPLIT_EXTENT_SECTORS,
};
use vmdk_format::descriptor::{CreateType, ExtentType};
use vmdk_format::extent::{GrainState, SparseFormat};
use vmdk_format::hosted::SparseExtentHeader;
use vmdk_format::layout::{Backing, SegmentKind};

use crate::create::{create_with, sibling, CreateOptions, DiskType};
use crate::io::{parent_dir, std_storage, SharedStorage, Storage};
use crate::local::{LocalDisk, OpenOptions};
use crate::write::{new_cid, random_bytes, replace_file_in, sync_dir};
use crate::{Error, Result};

const SECTOR: u64 = 512;

/// How `parentFileNameHint` names `parent` from `child`'s directory: the
/// bare name when they share a directory, else the absolute path.
fn parent_hint(parent: &Path, child: &Path) -> Result<String> {
    let canon = |p: &Path| -> Result<PathBuf> {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        dir.canonicalize().map_err(|e| Error::io(dir, e))
    };
    let (pd, cd) = (canon(parent)?, canon(child)?);
    let name = parent
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if pd == cd {
        Ok(name)
    } else {
        Ok(pd.join(name).to_string_lossy().into_owned())
    }
}

/// Creates `child`, a monolithicSparse delta of `parent`: it reads
/// through to the parent until written, and records the parent's CID.
pub fn create_child(parent: &Path, child: &Path) -> Result<()> {
    create_child_in(&std_storage(), parent, child)
}

/// [`create_child`] through `storage`.
pub fn create_child_in(storage: &SharedStorage, parent: &Path, child: &Path) -> Result<()> {
    let p = LocalDisk::open(parent, &OpenOptions::default())?;
    let pd = p.descriptor();
    let adapter = pd
        .adapter_type()
        .and_then(AdapterType::from_name)
        .unwrap_or(AdapterType::LsiLogic);
    let o = CreateOptions {
        disk_type: DiskType::MonolithicSparse,
        capacity: p.capacity(),
        adapter,
        hw_version: pd.hw_version().unwrap_or(4),
        zeroed_grain: true,
    };
    let d = DescriptorOptions {
        adapter,
        hw_version: o.hw_version,
        cid: new_cid(pd.cid),
        uuid: random_bytes(),
        long_content_random: random_bytes(),
        parent_cid: Some(pd.cid),
        parent_hint: Some(parent_hint(parent, child)?),
    };
    create_with(storage, child, &o, &d)
}

/// Ranges of the top link alone: `(start, len, is_zero)` for every
/// allocated (data or zeroed) stretch; unallocated stretches are skipped.
fn top_link_ranges(d: &LocalDisk) -> Result<Vec<(u64, u64, bool)>> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let cap = d.capacity();
    let mut pos = 0;
    while pos < cap {
        let seg = d.next_step(0, pos, cap - pos)?;
        let zero = match seg.kind {
            SegmentKind::Unallocated => None,
            SegmentKind::Zero => Some(true),
            _ => Some(false),
        };
        if let Some(z) = zero {
            match out.last_mut() {
                Some(last) if last.2 == z && last.0 + last.1 == pos => last.1 += seg.len,
                _ => out.push((pos, seg.len, z)),
            }
        }
        pos += seg.len;
    }
    Ok(out)
}

/// Copies what `child` itself holds (its data and zeroed grains) into its
/// parent; the child is left in place (its parentCID no longer matches).
/// Returns the parent's path.
pub fn merge_into_parent(child: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<PathBuf> {
    merge_into_parent_in(&std_storage(), child, progress)
}

/// [`merge_into_parent`] through `storage`.
pub fn merge_into_parent_in(
    storage: &SharedStorage,
    child: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PathBuf> {
    let c = LocalDisk::open(child, &OpenOptions::default())?;
    let Some(parent_link) = c.links().get(1) else {
        return Err(Error::InvalidArgument(format!(
            "{} has no parent to commit into",
            child.display()
        )));
    };
    let parent_path = parent_link.path().to_path_buf();
    let p = LocalDisk::open(
        &parent_path,
        &OpenOptions {
            writable: true,
            storage: storage.clone(),
            ..OpenOptions::default()
        },
    )?;
    if p.capacity() < c.capacity() {
        return Err(Error::Unsupported {
            path: parent_path,
            what: "committing a child larger than its parent (grow the parent first)".into(),
        });
    }
    // The parent's CID changes only once the merged data is durable: a
    // crash before then leaves the child reading through its parent as
    // before (the merged grains are the child's own), so the commit can
    // be run again. Other children of the parent see a partly merged
    // parent until then; after, they no longer match it.
    p.keep_cid()?;
    let ranges = top_link_ranges(&c)?;
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let mut done = 0;
    let mut buf = vec![0u8; 1 << 20];
    for (start, len, zero) in ranges {
        if zero {
            p.write_zeroes(start, len)?;
            done += len;
            progress(done, total);
            continue;
        }
        let mut off = 0;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            c.read_at(start + off, &mut buf[..n])?;
            p.write_at(start + off, &buf[..n])?;
            off += n as u64;
            done += n as u64;
            progress(done, total);
        }
    }
    if total > 0 {
        // As a first write would have (nothing written: the CID stays).
        p.flush()?;
        p.change_cid()?;
    }
    p.close()?;
    Ok(parent_path)
}

/// Merges `child` into its parent and deletes the child's files. The
/// parent's CID changes: other children of the same parent no longer
/// match it (as with VMware's consolidate).
pub fn commit(child: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<PathBuf> {
    commit_in(&std_storage(), child, progress)
}

/// [`commit`] through `storage`.
pub fn commit_in(
    storage: &SharedStorage,
    child: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PathBuf> {
    let files = crate::create::files_of(child)?;
    let parent_path = merge_into_parent_in(storage, child, progress)?;
    for f in &files {
        storage.remove_file(f).map_err(|e| Error::io(f, e))?;
    }
    let mut dirs: Vec<&Path> = files.iter().map(|f| parent_dir(f)).collect();
    dirs.dedup();
    for d in dirs {
        sync_dir(&**storage, d)?;
    }
    Ok(parent_path)
}

/// Points `child` at a new parent: rewrites its `parentFileNameHint`
/// (relative when in the same directory) and `parentCID` (the parent's
/// current CID).
pub fn set_parent(child: &Path, parent: &Path) -> Result<()> {
    set_parent_in(&std_storage(), child, parent)
}

/// [`set_parent`] through `storage`.
pub fn set_parent_in(storage: &SharedStorage, child: &Path, parent: &Path) -> Result<()> {
    let p = LocalDisk::open(parent, &OpenOptions::default())?;
    let cid = p.descriptor().cid;
    drop(p);
    let hint = parent_hint(parent, child)?;
    let c = LocalDisk::open(
        child,
        &OpenOptions {
            writable: true,
            ignore_cid_mismatch: true,
            max_chain_depth: DEFAULT_DEPTH_FOR_REPARENT,
            storage: storage.clone(),
            ..OpenOptions::default()
        },
    )?;
    c.set_parent_link(&hint, cid)?;
    c.close()
}

const DEFAULT_DEPTH_FOR_REPARENT: usize = crate::local::DEFAULT_MAX_CHAIN_DEPTH;

/// Grows a disk to `new_capacity` bytes (never shrinks). Sparse extents
/// get new directories at the end of the file, written before the header
/// points at them; flat extents grow their file; split disks gain
/// extents.
pub fn grow(path: &Path, new_capacity: u64) -> Result<()> {
    grow_in(&std_storage(), path, new_capacity)
}

/// [`grow`] through `storage`.
pub fn grow_in(storage: &SharedStorage, path: &Path, new_capacity: u64) -> Result<()> {
    let fs = &**storage;
    let d = LocalDisk::open(path, &OpenOptions::default())?;
    let old = d.capacity();
    let new_sectors = new_capacity.div_ceil(SECTOR);
    // No type holds more than a flat disk; refusing larger sizes here keeps
    // every product below in range.
    let new_bytes = new_sectors
        .checked_mul(SECTOR)
        .filter(|&b| b <= vmdk_format::create::MAX_FLAT_CAPACITY_SECTORS * SECTOR)
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{new_capacity} bytes is more than a disk can hold"))
        })?;
    if new_bytes < old {
        return Err(Error::InvalidArgument(format!(
            "{new_capacity} bytes is smaller than the current {old}: disks do not shrink"
        )));
    }
    if new_bytes == old {
        return Ok(());
    }
    let link = &d.links()[0];
    let mut desc = d.descriptor();
    let ct = desc.create_type;
    match ct {
        CreateType::MonolithicSparse => {
            let Backing::Sparse(s) = &link.layout().extents()[0].backing else {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: "a monolithicSparse disk without a sparse extent".into(),
                });
            };
            let SparseFormat::Hosted(h) = s.format() else {
                unreachable!("monolithic files are hosted sparse")
            };
            if h.is_compressed() {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: "growing a streamOptimized disk".into(),
                });
            }
            desc.extents[0].sectors = new_sectors;
            let new_desc = desc.to_bytes().map_err(|e| Error::format(path, e))?;
            let area = h.descriptor_size * SECTOR;
            if new_desc.len() as u64 > area {
                return Err(Error::DescriptorFull {
                    path: path.into(),
                    needed: new_desc.len(),
                    capacity: area as usize,
                });
            }
            let dir = s.directory().to_vec();
            let h = h.clone();
            drop(d);
            grow_sparse_extent(fs, path, &h, &dir, new_sectors, Some(&new_desc))?;
        }
        CreateType::MonolithicFlat
        | CreateType::Vmfs
        | CreateType::VmfsThin
        | CreateType::VmfsEagerZeroedThick
        | CreateType::VmfsPreallocated => {
            if desc.extents.len() != 1 {
                return Err(Error::Unsupported {
                    path: path.into(),
                    what: "growing a flat disk with several extents".into(),
                });
            }
            let file = link.extent_files()[0]
                .as_deref()
                .ok_or_else(|| Error::format(path, vmdk_format::Error::TableMismatch))?;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(file.path())
                .map_err(|e| Error::io(file.path(), e))?;
            let need = desc.extents[0]
                .offset
                .unwrap_or(0)
                .checked_mul(SECTOR)
                .and_then(|o| o.checked_add(new_bytes))
                .ok_or_else(|| {
                    Error::InvalidArgument("the extent's offset is too large to grow".into())
                })?;
            fs.set_len(&f, need.max(file.len()))
                .map_err(|e| Error::disk_full_or_io(file.path(), e))?;
            fs.sync_all(&f).map_err(|e| Error::io(file.path(), e))?;
            desc.extents[0].sectors = new_sectors;
            drop(d);
            replace_file_in(
                storage,
                path,
                &desc.to_bytes().map_err(|e| Error::format(path, e))?,
            )?;
        }
        CreateType::TwoGbMaxExtentSparse | CreateType::TwoGbMaxExtentFlat => {
            let sparse = ct == CreateType::TwoGbMaxExtentSparse;
            let mut added = Vec::new();
            let mut remaining = new_sectors - old / SECTOR;
            let mut index = desc.extents.len() + 1;
            let result = (|| {
                while remaining > 0 {
                    let n = remaining.min(SPLIT_EXTENT_SECTORS);
                    let (epath, ename) = sibling(
                        path,
                        &format!("-{}{:03}.vmdk", if sparse { 's' } else { 'f' }, index),
                    );
                    let f = fs
                        .create(&epath, true)
                        .map_err(|e| Error::disk_full_or_io(&epath, e))?;
                    added.push(epath.clone());
                    if sparse {
                        let mut p = SparseParams::new(n);
                        p.descriptor_sectors = 0;
                        let layout = p.layout().map_err(|e| Error::format(&epath, e))?;
                        fs.write_at(
                            &f,
                            &layout.metadata(&[]).map_err(|e| Error::format(&epath, e))?,
                            0,
                        )
                        .map_err(|e| Error::disk_full_or_io(&epath, e))?;
                    } else {
                        fs.set_len(&f, n * SECTOR)
                            .map_err(|e| Error::disk_full_or_io(&epath, e))?;
                    }
                    fs.sync_all(&f).map_err(|e| Error::io(&epath, e))?;
                    desc.extents.push(vmdk_format::create::extent_line(
                        n,
                        if sparse {
                            ExtentType::Sparse
                        } else {
                            ExtentType::Flat
                        },
                        Some(&ename),
                        if sparse { None } else { Some(0) },
                    ));
                    remaining -= n;
                    index += 1;
                }
                // The new extents' names are durable before a descriptor
                // names them.
                sync_dir(fs, parent_dir(path))?;
                replace_file_in(
                    storage,
                    path,
                    &desc.to_bytes().map_err(|e| Error::format(path, e))?,
                )
            })();
            if result.is_err() {
                for f in added {
                    let _ = fs.remove_file(&f);
                }
            }
            drop(d);
            result?;
        }
        other => {
            return Err(Error::Unsupported {
                path: path.into(),
                what: format!("growing a {} disk", other.as_str()),
            })
        }
    }
    Ok(())
}

/// Grows one hosted sparse extent file in place.
fn grow_sparse_extent(
    fs: &dyn Storage,
    path: &Path,
    h: &SparseExtentHeader,
    gd: &[u64],
    new_sectors: u64,
    descriptor: Option<&[u8]>,
) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let gtes = h.gtes_per_gt;
    let coverage = gtes * h.grain_sectors;
    let new_n = new_sectors.div_ceil(coverage);
    let max = SparseParams::max_capacity(h.grain_sectors);
    if new_sectors > max {
        return Err(Error::InvalidArgument(format!(
            "{} bytes is more than a sparse extent can hold",
            new_sectors * SECTOR
        )));
    }
    let old_n = gd.len() as u64;
    let gt_sectors = gtes * 4 / SECTOR;
    let gd_sectors = (new_n * 4).div_ceil(SECTOR).max(1);
    // Everything new goes at the end of the file, grain-aligned.
    let mut next = len.div_ceil(SECTOR).next_multiple_of(h.grain_sectors);
    let rgd_entries: Vec<u64> = match h.rgd_range().map_err(|e| Error::format(path, e))? {
        Some((off, l)) => {
            let mut b = vec![0u8; l as usize];
            f.read_exact_at(&mut b, off)
                .map_err(|e| Error::io(path, e))?;
            b.chunks_exact(4)
                .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        None => Vec::new(),
    };
    let mut new_gd: Vec<u64> = gd.to_vec();
    let mut new_rgd: Vec<u64> = rgd_entries.clone();
    for _ in old_n..new_n {
        new_gd.push(next);
        next += gt_sectors;
        if h.has_redundant_gd() {
            new_rgd.push(next);
            next += gt_sectors;
        }
    }
    let gd_at = next;
    next += gd_sectors;
    let rgd_at = if h.has_redundant_gd() {
        let at = next;
        next += gd_sectors;
        at
    } else {
        0
    };
    let end = next.next_multiple_of(h.grain_sectors);
    fs.set_len(&f, end * SECTOR)
        .map_err(|e| Error::disk_full_or_io(path, e))?;
    fs.write_at(&f, &SparseLayout::directory_bytes(&new_gd), gd_at * SECTOR)
        .map_err(|e| Error::disk_full_or_io(path, e))?;
    if h.has_redundant_gd() {
        fs.write_at(
            &f,
            &SparseLayout::directory_bytes(&new_rgd),
            rgd_at * SECTOR,
        )
        .map_err(|e| Error::disk_full_or_io(path, e))?;
    }
    fs.sync_all(&f).map_err(|e| Error::io(path, e))?;
    // Only now does the header point at the new directories.
    let mut nh = h.clone();
    nh.capacity = new_sectors;
    nh.gd_offset = gd_at;
    if h.has_redundant_gd() {
        nh.rgd_offset = rgd_at;
    }
    nh.unclean_shutdown = false;
    fs.write_at(&f, &nh.to_bytes(), 0)
        .map_err(|e| Error::disk_full_or_io(path, e))?;
    fs.sync_all(&f).map_err(|e| Error::io(path, e))?;
    if let (Some(bytes), Some((off, area))) = (descriptor, nh.descriptor_range()) {
        let mut padded = bytes.to_vec();
        padded.resize(area as usize, 0);
        fs.write_at(&f, &padded, off)
            .map_err(|e| Error::disk_full_or_io(path, e))?;
        fs.sync_all(&f).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Rewrites the sparse extents of a disk without zero grains (when the
/// disk has no parent) and without unreferenced grains; returns the bytes
/// saved.
pub fn compact(path: &Path) -> Result<u64> {
    compact_in(&std_storage(), path)
}

/// [`compact`] through `storage`.
pub fn compact_in(storage: &SharedStorage, path: &Path) -> Result<u64> {
    let fs = &**storage;
    let d = LocalDisk::open(path, &OpenOptions::default())?;
    let has_parent = d.links().len() > 1;
    let link = &d.links()[0];
    let mut saved = 0u64;
    let mut jobs = Vec::new();
    for (i, placed) in link.layout().extents().iter().enumerate() {
        let Backing::Sparse(s) = &placed.backing else {
            continue;
        };
        let SparseFormat::Hosted(h) = s.format() else {
            return Err(Error::Unsupported {
                path: path.into(),
                what: "compacting COWD or seSparse extents".into(),
            });
        };
        if h.is_compressed() {
            return Err(Error::Unsupported {
                path: path.into(),
                what: "compacting a streamOptimized disk (it is already compact)".into(),
            });
        }
        let file = link.extent_files()[i]
            .as_deref()
            .ok_or_else(|| Error::format(path, vmdk_format::Error::TableMismatch))?;
        jobs.push((i, h.clone(), file.path().to_path_buf(), file.len()));
    }
    for (i, h, epath, old_len) in jobs {
        let tmp = epath.with_file_name(format!(
            ".{}.compact-{}",
            epath
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let result = compact_extent(fs, &d, i, &h, &epath, &tmp, has_parent);
        match result {
            Ok(new_len) => {
                fs.rename(&tmp, &epath).map_err(|e| Error::io(&epath, e))?;
                // Until the directory is synced, a power cut could bring
                // the old file back, and writes made to the new one after
                // compact returned would be lost with it.
                sync_dir(fs, parent_dir(&epath))?;
                saved += old_len.saturating_sub(new_len);
            }
            Err(e) => {
                let _ = fs.remove_file(&tmp);
                return Err(e);
            }
        }
    }
    Ok(saved)
}

fn compact_extent(
    fs: &dyn Storage,
    d: &LocalDisk,
    extent: usize,
    h: &SparseExtentHeader,
    src: &Path,
    tmp: &Path,
    has_parent: bool,
) -> Result<u64> {
    let link = &d.links()[0];
    let placed = &link.layout().extents()[extent];
    let Backing::Sparse(s) = &placed.backing else {
        return Ok(0);
    };
    let src_file = link.extent_files()[extent]
        .as_deref()
        .ok_or_else(|| Error::format(src, vmdk_format::Error::TableMismatch))?;
    let params = SparseParams {
        capacity: h.capacity,
        grain_sectors: h.grain_sectors,
        descriptor_sectors: h.descriptor_size,
        redundant: h.has_redundant_gd(),
        zeroed_grain: h.has_zeroed_grain_gte(),
    };
    let layout = params.layout().map_err(|e| Error::format(src, e))?;
    let mut descriptor = Vec::new();
    if let Some((off, len)) = h.descriptor_range() {
        descriptor = vec![0u8; len as usize];
        src_file.read_exact_at(&mut descriptor, off)?;
    }
    let out = fs
        .create(tmp, true)
        .map_err(|e| Error::disk_full_or_io(tmp, e))?;
    let meta = layout
        .metadata(&descriptor)
        .map_err(|e| Error::format(tmp, e))?;
    fs.write_at(&out, &meta, 0)
        .map_err(|e| Error::disk_full_or_io(tmp, e))?;
    let gb = s.grain_bytes();
    let gtes = s.gtes_per_gt();
    let mut tables = vec![vec![0u32; gtes as usize]; layout.gt_sectors.len()];
    let mut next = layout.header.overhead;
    let mut buf = vec![0u8; gb as usize];
    let grains = (placed.len).div_ceil(gb);
    for g in 0..grains {
        let entry = match d.grain_state(extent, g)? {
            GrainState::Unallocated => continue,
            GrainState::Zero => 1,
            GrainState::Data(off) => {
                let n = gb.min(src_file.len().saturating_sub(off)) as usize;
                buf.fill(0);
                src_file.read_exact_at(&mut buf[..n], off)?;
                if buf.iter().all(|&b| b == 0) {
                    match (has_parent, h.has_zeroed_grain_gte()) {
                        (false, _) => continue,
                        (true, true) => 1,
                        (true, false) => {
                            fs.write_at(&out, &buf, next * SECTOR)
                                .map_err(|e| Error::disk_full_or_io(tmp, e))?;
                            next += h.grain_sectors;
                            (next - h.grain_sectors) as u32
                        }
                    }
                } else {
                    fs.write_at(&out, &buf, next * SECTOR)
                        .map_err(|e| Error::disk_full_or_io(tmp, e))?;
                    next += h.grain_sectors;
                    (next - h.grain_sectors) as u32
                }
            }
            GrainState::Compressed(_) => {
                return Err(Error::Unsupported {
                    path: src.into(),
                    what: "compressed grains".into(),
                })
            }
        };
        tables[(g / gtes) as usize][(g % gtes) as usize] = entry;
    }
    for (t, table) in tables.iter().enumerate() {
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        fs.write_at(&out, &bytes, layout.gt_sectors[t] * SECTOR)
            .map_err(|e| Error::disk_full_or_io(tmp, e))?;
        if let Some(&r) = layout.rgt_sectors.get(t) {
            fs.write_at(&out, &bytes, r * SECTOR)
                .map_err(|e| Error::disk_full_or_io(tmp, e))?;
        }
    }
    fs.set_len(&out, next * SECTOR)
        .map_err(|e| Error::disk_full_or_io(tmp, e))?;
    fs.sync_all(&out).map_err(|e| Error::io(tmp, e))?;
    Ok(next * SECTOR)
}
