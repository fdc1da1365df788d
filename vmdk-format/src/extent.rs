//! Grain-directory based extents of every flavour (hosted KDMV, COWD,
//! seSparse) behind one interface, and the grain tables they load.
//!
//! The caller performs all reads: [`SparseExtent::table_location`] says
//! which bytes hold a grain table, [`SparseExtent::parse_table`] turns
//! them into a [`GrainTable`], and [`SparseExtent::grain_state`] says what
//! one grain is.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::cowd::{CowdHeader, COWD_GTES_PER_GT};
use crate::error::{Error, Result, Structure};
use crate::hosted::SparseExtentHeader;
use crate::sesparse::{SeSparseHeader, GTES_PER_GT as SE_GTES};
use crate::SECTOR_SIZE;

/// Which on-disk flavour an extent is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SparseFormat {
    /// Hosted sparse (KDMV), including streamOptimized.
    Hosted(SparseExtentHeader),
    /// COWD (vmfsSparse).
    Cowd(CowdHeader),
    /// seSparse.
    SeSparse(SeSparseHeader),
}

/// What one grain of an extent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrainState {
    /// Not allocated here: read through to the parent (zeros without one).
    Unallocated,
    /// Explicitly zero; does not read through.
    Zero,
    /// Plain data at this byte offset of the extent file.
    Data(u64),
    /// A compressed grain whose marker starts at this byte offset.
    Compressed(u64),
}

/// One loaded grain table: raw entries widened to u64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrainTable {
    gt_index: u64,
    entries: Vec<u64>,
}

impl GrainTable {
    /// Index of this table in its directory.
    pub fn index(&self) -> u64 {
        self.gt_index
    }
    /// Raw entries.
    pub fn entries(&self) -> &[u64] {
        &self.entries
    }
    /// Replaces one raw entry (writers update their cached copy so).
    /// Out-of-range indexes are ignored.
    pub fn set_entry(&mut self, index: usize, raw: u64) {
        if let Some(e) = self.entries.get_mut(index) {
            *e = raw;
        }
    }
}

/// A grain-directory based extent with its directory loaded.
///
/// The file length only ever grows (a writer appending grains tells the
/// extent with [`grow_file_len`](Self::grow_file_len)); it is atomic so
/// that readers sharing the extent see appended grains as valid.
#[derive(Debug)]
pub struct SparseExtent {
    format: SparseFormat,
    capacity: u64,
    grain_sectors: u64,
    gtes_per_gt: u64,
    gd: Vec<u64>,
    file_len: AtomicU64,
    first_data_sector: u64,
}

impl Clone for SparseExtent {
    fn clone(&self) -> Self {
        Self {
            format: self.format.clone(),
            capacity: self.capacity,
            grain_sectors: self.grain_sectors,
            gtes_per_gt: self.gtes_per_gt,
            gd: self.gd.clone(),
            file_len: AtomicU64::new(self.file_len()),
            first_data_sector: self.first_data_sector,
        }
    }
}

impl PartialEq for SparseExtent {
    fn eq(&self, o: &Self) -> bool {
        self.format == o.format
            && self.capacity == o.capacity
            && self.grain_sectors == o.grain_sectors
            && self.gtes_per_gt == o.gtes_per_gt
            && self.gd == o.gd
            && self.file_len() == o.file_len()
            && self.first_data_sector == o.first_data_sector
    }
}

impl Eq for SparseExtent {}

fn le_entries(bytes: &[u8], width: usize) -> Vec<u64> {
    bytes
        .chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect()
}

fn need(bytes: &[u8], len: u64, what: Structure) -> Result<()> {
    if (bytes.len() as u64) < len {
        return Err(Error::Truncated {
            what,
            needed: len,
            available: bytes.len() as u64,
        });
    }
    Ok(())
}

fn check_in_file(what: Structure, index: u64, offset: u64, len: u64, file_len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Error::BeyondEof {
            what,
            index,
            offset,
            file_len,
        }),
    }
}

impl SparseExtent {
    /// Builds a hosted extent from its validated header (the footer copy
    /// for `GD_AT_END` streams), the grain directory bytes at
    /// [`SparseExtentHeader::gd_range`], and the file length.
    pub fn hosted(header: SparseExtentHeader, gd_bytes: &[u8], file_len: u64) -> Result<Self> {
        let (off, len) = header.gd_range()?;
        check_in_file(Structure::GrainDirectory, 0, off, len, file_len)?;
        need(gd_bytes, len, Structure::GrainDirectory)?;
        let gd = le_entries(&gd_bytes[..len as usize], 4);
        Ok(Self {
            capacity: header.capacity,
            grain_sectors: header.grain_sectors,
            gtes_per_gt: header.gtes_per_gt,
            gd,
            file_len: AtomicU64::new(file_len),
            first_data_sector: header.overhead.max(1),
            format: SparseFormat::Hosted(header),
        })
    }

    /// Builds a COWD extent.
    pub fn cowd(header: CowdHeader, gd_bytes: &[u8], file_len: u64) -> Result<Self> {
        let (off, len) = header.gd_range();
        check_in_file(Structure::GrainDirectory, 0, off, len, file_len)?;
        need(gd_bytes, len, Structure::GrainDirectory)?;
        let gd = le_entries(&gd_bytes[..len as usize], 4);
        Ok(Self {
            capacity: header.capacity,
            grain_sectors: header.grain_sectors,
            gtes_per_gt: COWD_GTES_PER_GT,
            gd,
            file_len: AtomicU64::new(file_len),
            first_data_sector: 4,
            format: SparseFormat::Cowd(header),
        })
    }

    /// Builds a seSparse extent (after [`SeSparseHeader::check_volatile`]).
    pub fn sesparse(header: SeSparseHeader, gd_bytes: &[u8], file_len: u64) -> Result<Self> {
        let (off, len) = header.gd_range();
        check_in_file(Structure::GrainDirectory, 0, off, len, file_len)?;
        need(gd_bytes, len, Structure::GrainDirectory)?;
        let gd = le_entries(&gd_bytes[..len as usize], 8);
        Ok(Self {
            capacity: header.capacity,
            grain_sectors: SeSparseHeader::GRAIN_SECTORS,
            gtes_per_gt: SE_GTES,
            gd,
            file_len: AtomicU64::new(file_len),
            first_data_sector: header.grains_offset,
            format: SparseFormat::SeSparse(header),
        })
    }

    /// The flavour and its header.
    pub fn format(&self) -> &SparseFormat {
        &self.format
    }
    /// Capacity in sectors as the header states it.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }
    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR_SIZE
    }
    /// Grains per table.
    pub fn gtes_per_gt(&self) -> u64 {
        self.gtes_per_gt
    }
    /// Number of grain tables in the directory.
    pub fn gt_count(&self) -> u64 {
        self.gd.len() as u64
    }
    /// Raw grain directory entries.
    pub fn directory(&self) -> &[u64] {
        &self.gd
    }
    /// The extent file's length, as given at construction or grown since.
    pub fn file_len(&self) -> u64 {
        self.file_len.load(Ordering::Acquire)
    }

    /// Records that the file now extends to at least `len` bytes (a
    /// writer calls this after appending grains, before pointing tables
    /// at them).
    pub fn grow_file_len(&self, len: u64) {
        self.file_len.fetch_max(len, Ordering::AcqRel);
    }
    /// First sector where grains may live; below it is metadata.
    pub fn first_data_sector(&self) -> u64 {
        self.first_data_sector
    }
    fn entry_width(&self) -> u64 {
        match self.format {
            SparseFormat::SeSparse(_) => 8,
            _ => 4,
        }
    }
    /// True for compressed grains.
    pub fn is_compressed(&self) -> bool {
        matches!(&self.format, SparseFormat::Hosted(h) if h.is_compressed())
    }

    /// Where grain table `gt` lives: `None` when its directory entry is 0
    /// (the whole table is unallocated).
    pub fn table_location(&self, gt: u64) -> Result<Option<(u64, u64)>> {
        let entry = *self.gd.get(gt as usize).ok_or(Error::TableMismatch)?;
        if entry == 0 {
            return Ok(None);
        }
        let len = self.gtes_per_gt * self.entry_width();
        let sector = match &self.format {
            SparseFormat::SeSparse(h) => {
                if entry & 0xffff_ffff_0000_0000 != 0x1000_0000_0000_0000 {
                    return Err(Error::InvalidField {
                        what: Structure::GrainDirectory,
                        field: "grain directory entry",
                        value: entry,
                        reason: "seSparse directory entries are 0x10000000_<index>",
                    });
                }
                let index = entry & 0xffff_ffff;
                let rel = index * SeSparseHeader::GT_SECTORS;
                if rel >= h.grain_tables_sectors {
                    return Err(Error::InvalidField {
                        what: Structure::GrainDirectory,
                        field: "grain directory entry",
                        value: entry,
                        reason: "table index outside the grain table area",
                    });
                }
                h.grain_tables_offset + rel
            }
            _ => entry,
        };
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Error::Overflow {
            what: Structure::GrainDirectory,
            field: "grain table offset",
        })?;
        if sector < self.metadata_floor() {
            return Err(Error::InvalidField {
                what: Structure::GrainDirectory,
                field: "grain directory entry",
                value: entry,
                reason: "grain table overlaps the header",
            });
        }
        check_in_file(Structure::GrainDirectory, gt, offset, len, self.file_len())?;
        Ok(Some((offset, len)))
    }

    fn metadata_floor(&self) -> u64 {
        match self.format {
            SparseFormat::Hosted(_) => 1,
            SparseFormat::Cowd(_) => 4,
            SparseFormat::SeSparse(_) => 1,
        }
    }

    /// Parses the bytes read from [`table_location`](Self::table_location).
    pub fn parse_table(&self, gt: u64, bytes: &[u8]) -> Result<GrainTable> {
        let len = self.gtes_per_gt * self.entry_width();
        need(bytes, len, Structure::GrainTable)?;
        Ok(GrainTable {
            gt_index: gt,
            entries: le_entries(&bytes[..len as usize], self.entry_width() as usize),
        })
    }

    /// What grain `grain` (extent-relative grain number) holds, given its
    /// table (`None` when the directory entry is 0).
    pub fn grain_state(&self, grain: u64, table: Option<&GrainTable>) -> Result<GrainState> {
        let gt = grain / self.gtes_per_gt;
        let Some(table) = table else {
            return Ok(GrainState::Unallocated);
        };
        if table.gt_index != gt {
            return Err(Error::TableMismatch);
        }
        let raw = table.entries[(grain % self.gtes_per_gt) as usize];
        let sector = match &self.format {
            SparseFormat::SeSparse(h) => match raw >> 60 {
                0 if raw == 0 => return Ok(GrainState::Unallocated),
                // SCSI-unmapped and zero grains both read as zeros.
                1 | 2 => return Ok(GrainState::Zero),
                3 => {
                    let cluster = ((raw & 0x0fff_0000_0000_0000) >> 48)
                        | ((raw & 0x0000_ffff_ffff_ffff) << 12);
                    let s = cluster
                        .checked_mul(SeSparseHeader::GRAIN_SECTORS)
                        .and_then(|c| c.checked_add(h.grains_offset))
                        .ok_or(Error::Overflow {
                            what: Structure::GrainTable,
                            field: "seSparse grain",
                        })?;
                    return self.data_at(grain, s);
                }
                _ => {
                    return Err(Error::InvalidField {
                        what: Structure::GrainTable,
                        field: "grain table entry",
                        value: raw,
                        reason: "unknown seSparse entry type",
                    })
                }
            },
            SparseFormat::Hosted(h) => {
                if raw == 0 {
                    return Ok(GrainState::Unallocated);
                }
                if raw == 1 && h.has_zeroed_grain_gte() {
                    return Ok(GrainState::Zero);
                }
                raw
            }
            SparseFormat::Cowd(_) => {
                if raw == 0 {
                    return Ok(GrainState::Unallocated);
                }
                raw
            }
        };
        if sector < self.first_data_sector {
            return Err(Error::GrainInMetadata { grain, sector });
        }
        if self.is_compressed() {
            let offset = sector * SECTOR_SIZE;
            check_in_file(
                Structure::GrainTable,
                grain,
                offset,
                crate::stream::GRAIN_HEADER_LEN as u64,
                self.file_len(),
            )?;
            return Ok(GrainState::Compressed(offset));
        }
        self.data_at(grain, sector)
    }

    fn data_at(&self, grain: u64, sector: u64) -> Result<GrainState> {
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Error::Overflow {
            what: Structure::GrainTable,
            field: "grain offset",
        })?;
        // The grain may legitimately be cut by the end of the file only
        // where the capacity ends inside it.
        let grain_start = grain * self.grain_bytes();
        let in_use = self
            .grain_bytes()
            .min((self.capacity * SECTOR_SIZE).saturating_sub(grain_start));
        check_in_file(
            Structure::GrainTable,
            grain,
            offset,
            in_use,
            self.file_len(),
        )?;
        Ok(GrainState::Data(offset))
    }
}
