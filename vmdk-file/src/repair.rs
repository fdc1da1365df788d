//! `check --repair`: mend what a crash or a bad copy can leave in hosted
//! sparse extents, reporting each change.
//!
//! - A grain directory entry that is unusable while its redundant twin is
//!   sound gets a fresh copy of the redundant table (and the reverse).
//! - Table entries pointing past the end of the file or into metadata are
//!   dropped (the grain reads as unallocated again).
//! - Where a table and its redundant copy disagree, the usable entry wins;
//!   when both are usable the primary wins (it is written first).
//! - `uncleanShutdown` is cleared.
//!
//! New tables are written and synced before any directory points at them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmdk_format::extent::SparseFormat;
use vmdk_format::hosted::SparseExtentHeader;
use vmdk_format::layout::Backing;

use crate::io::Storage;
use crate::local::{LocalDisk, OpenOptions};
use crate::{Error, Result};

const SECTOR: u64 = 512;

/// One change made by a repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The file changed.
    pub file: PathBuf,
    /// What was done.
    pub what: String,
}

/// Repairs the top link of the disk at `path`; returns the changes made.
pub fn repair(path: &Path, opts: &OpenOptions) -> Result<Vec<Change>> {
    let d = LocalDisk::open(
        path,
        &OpenOptions {
            writable: false,
            ..opts.clone()
        },
    )?;
    let link = &d.links()[0];
    // Extent lines whose size disagrees with their sparse header (a grow
    // cut by a crash between the header and the descriptor): the header,
    // whose grain directory addresses its capacity, is taken as right.
    let mut sizes = Vec::new();
    for (i, placed) in link.layout().extents().iter().enumerate() {
        if let (Backing::Sparse(s), Some(line)) =
            (&placed.backing, link.descriptor().extents.get(i))
        {
            if matches!(s.format(), SparseFormat::Hosted(_)) && s.capacity_sectors() != line.sectors
            {
                sizes.push((i, line.sectors, s.capacity_sectors()));
            }
        }
    }
    let mut jobs = Vec::new();
    for (i, placed) in link.layout().extents().iter().enumerate() {
        let Backing::Sparse(s) = &placed.backing else {
            continue;
        };
        let Some(file) = link.extent_files()[i].as_deref() else {
            continue;
        };
        match s.format() {
            SparseFormat::Hosted(h) => jobs.push((
                file.path().to_path_buf(),
                Some(h.clone()),
                s.directory().to_vec(),
            )),
            SparseFormat::Cowd(h) if h.unclean_shutdown => {
                jobs.push((file.path().to_path_buf(), None, Vec::new()))
            }
            _ => {}
        }
    }
    drop(d);
    let fs = &*opts.storage;
    let mut changes = Vec::new();
    for (file, header, gd) in jobs {
        match header {
            Some(h) => repair_hosted(fs, &file, &h, &gd, &mut changes)?,
            None => {
                let f = File::options()
                    .write(true)
                    .open(&file)
                    .map_err(|e| Error::io(&file, e))?;
                fs.write_at(&f, &0u32.to_le_bytes(), 1648)
                    .map_err(|e| Error::disk_full_or_io(&file, e))?;
                fs.sync_all(&f).map_err(|e| Error::io(&file, e))?;
                changes.push(Change {
                    file,
                    what: "cleared uncleanShutdown".into(),
                });
            }
        }
    }
    if !sizes.is_empty() {
        let d = LocalDisk::open(
            path,
            &OpenOptions {
                writable: true,
                ..opts.clone()
            },
        )?;
        for &(i, was, now) in &sizes {
            d.set_extent_sectors(i, now)?;
            changes.push(Change {
                file: path.to_path_buf(),
                what: format!(
                    "extent {i}: descriptor size {was} sectors set to its header's {now}"
                ),
            });
        }
        d.close()?;
    }
    Ok(changes)
}

fn read_u32s(f: &File, path: &Path, off: u64, n: usize) -> Result<Vec<u64>> {
    let mut b = vec![0u8; n * 4];
    f.read_exact_at(&mut b, off)
        .map_err(|e| Error::io(path, e))?;
    Ok(b.chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect())
}

fn u32_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|&e| (e as u32).to_le_bytes()).collect()
}

fn repair_hosted(
    fs: &dyn Storage,
    path: &Path,
    h: &SparseExtentHeader,
    gd: &[u64],
    changes: &mut Vec<Change>,
) -> Result<()> {
    if h.is_compressed() {
        return Ok(()); // streams are rewritten by convert, not patched
    }
    let mut note = |what: String| {
        changes.push(Change {
            file: path.to_path_buf(),
            what,
        })
    };
    let f = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let gtes = h.gtes_per_gt as usize;
    let table_len = h.gtes_per_gt * 4;
    let meta_floor = 1 + h.descriptor_size;
    let table_ok = |e: u64| {
        e >= meta_floor
            && e.checked_mul(SECTOR)
                .and_then(|o| o.checked_add(table_len))
                .is_some_and(|end| end <= file_len)
    };
    let grain_bytes = h.grain_sectors * SECTOR;
    let entry_ok = |e: u64| {
        e == 0
            || (e == 1 && h.has_zeroed_grain_gte())
            || (e >= h.overhead.max(1)
                && e.checked_mul(SECTOR)
                    .and_then(|o| o.checked_add(grain_bytes))
                    .is_some_and(|end| end <= file_len))
    };
    let mut new_gd = gd.to_vec();
    let mut rgd = match h.rgd_range().map_err(|e| Error::format(path, e))? {
        Some((off, len)) if off + len <= file_len => {
            Some(read_u32s(&f, path, off, (len / 4) as usize)?)
        }
        Some(_) => {
            note(
                "redundant grain directory lies past the end of the file; it will be rebuilt"
                    .into(),
            );
            Some(vec![0; gd.len()])
        }
        None => None,
    };
    let mut append_at = file_len.div_ceil(SECTOR).next_multiple_of(h.grain_sectors);
    let mut new_tables: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut table_writes: Vec<(u64, Vec<u64>)> = Vec::new();
    for gt in 0..gd.len() {
        let g = gd[gt];
        let r = rgd.as_ref().map(|v| v[gt]);
        let primary = if table_ok(g) {
            Some(read_u32s(&f, path, g * SECTOR, gtes)?)
        } else {
            None
        };
        let redundant = match r {
            Some(r) if table_ok(r) => Some(read_u32s(&f, path, r * SECTOR, gtes)?),
            _ => None,
        };
        // Choose entry by entry.
        let merged: Option<Vec<u64>> = match (&primary, &redundant) {
            (None, None) => None,
            (Some(p), None) => Some(p.clone()),
            (None, Some(q)) => Some(q.clone()),
            (Some(p), Some(q)) => Some(
                p.iter()
                    .zip(q)
                    .map(|(&a, &b)| if a == b || entry_ok(a) { a } else { b })
                    .collect(),
            ),
        };
        let Some(mut table) = merged else {
            if g != 0 || r.is_some_and(|r| r != 0) {
                new_gd[gt] = 0;
                if let Some(v) = rgd.as_mut() {
                    v[gt] = 0;
                }
                note(format!(
                    "grain table {gt}: neither copy is usable; its range now reads as unallocated"
                ));
            }
            continue;
        };
        for (i, e) in table.iter_mut().enumerate() {
            if !entry_ok(*e) {
                note(format!("grain table {gt} entry {i}: dropped sector {e} (past the end of the file or inside metadata)"));
                *e = 0;
            }
        }
        match primary {
            Some(p) if table_ok(g) => {
                if p != table {
                    note(format!(
                        "grain table {gt}: corrected from its redundant copy"
                    ));
                    table_writes.push((g, table.clone()));
                }
            }
            _ => {
                let at = append_at;
                append_at += table_len.div_ceil(SECTOR);
                new_tables.push((at, table.clone()));
                new_gd[gt] = at;
                note(format!(
                    "grain table {gt}: rebuilt from its redundant copy at sector {at}"
                ));
            }
        }
        if let (Some(v), Some(r)) = (rgd.as_mut(), r) {
            match &redundant {
                Some(q) if table_ok(r) => {
                    if *q != table {
                        table_writes.push((r, table.clone()));
                        note(format!(
                            "redundant grain table {gt}: corrected from the primary"
                        ));
                    }
                }
                _ => {
                    let at = append_at;
                    append_at += table_len.div_ceil(SECTOR);
                    new_tables.push((at, table.clone()));
                    v[gt] = at;
                    note(format!(
                        "redundant grain table {gt}: rebuilt from the primary at sector {at}"
                    ));
                }
            }
        }
    }
    // Tables first (new ones at the end of the file), synced, then the
    // directories that point at them.
    for (at, t) in new_tables.iter().chain(&table_writes) {
        fs.write_at(&f, &u32_bytes(t), at * SECTOR)
            .map_err(|e| Error::disk_full_or_io(path, e))?;
    }
    if !new_tables.is_empty() {
        let end = append_at.next_multiple_of(h.grain_sectors) * SECTOR;
        if end > file_len {
            fs.set_len(&f, end)
                .map_err(|e| Error::disk_full_or_io(path, e))?;
        }
    }
    fs.sync_all(&f).map_err(|e| Error::io(path, e))?;
    if new_gd != gd {
        let (off, _) = h.gd_range().map_err(|e| Error::format(path, e))?;
        fs.write_at(&f, &u32_bytes(&new_gd), off)
            .map_err(|e| Error::disk_full_or_io(path, e))?;
        note("grain directory rewritten".into());
    }
    if let (Some(v), Ok(Some((off, _)))) = (&rgd, h.rgd_range()) {
        let old = if off + v.len() as u64 * 4 <= file_len {
            read_u32s(&f, path, off, v.len())?
        } else {
            Vec::new()
        };
        if &old != v {
            fs.write_at(&f, &u32_bytes(v), off)
                .map_err(|e| Error::disk_full_or_io(path, e))?;
            note("redundant grain directory rewritten".into());
        }
    }
    if h.unclean_shutdown {
        let mut clean = h.clone();
        clean.unclean_shutdown = false;
        fs.write_at(&f, &clean.to_bytes(), 0)
            .map_err(|e| Error::disk_full_or_io(path, e))?;
        note("cleared uncleanShutdown".into());
    }
    fs.sync_all(&f).map_err(|e| Error::io(path, e))?;
    Ok(())
}
