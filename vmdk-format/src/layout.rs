//! The read mapping of one VMDK (one link of a chain): a virtual byte
//! range becomes ordered segments.
//!
//! ```
//! use std::sync::Arc;
//! use vmdk_format::descriptor::Access;
//! use vmdk_format::layout::{Backing, Layout, MapStep, SegmentKind};
//!
//! // 1 MiB flat extent at file offset 0, then 1 MiB of ZERO extent.
//! let layout = Layout::new(vec![
//!     (Access::ReadWrite, 2048, Backing::Flat { file_offset: 0 }),
//!     (Access::ReadWrite, 2048, Backing::Zero),
//! ])?;
//! assert_eq!(layout.capacity(), 2 << 20);
//! let mut no_tables = |_| None;
//! let MapStep::Segment(s) = layout.map_next(1 << 20, 4096, &mut no_tables)? else { unreachable!() };
//! assert_eq!((s.len, s.kind), (4096, SegmentKind::Zero));
//! // Outside the capacity: a typed error.
//! assert!(layout.map_next(2 << 20, 1, &mut no_tables).is_err());
//! # Ok::<(), vmdk_format::Error>(())
//! ```

extern crate alloc;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::descriptor::Access;
use crate::error::{Error, Result, Structure};
use crate::extent::{GrainState, GrainTable, SparseExtent};
use crate::SECTOR_SIZE;

/// What stands behind one extent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Plain bytes starting at `file_offset` of the extent file.
    Flat {
        /// Byte offset of the extent's first sector inside its file.
        file_offset: u64,
    },
    /// Reads as zeros (ZERO extent).
    Zero,
    /// A grain-directory based file.
    Sparse(SparseExtent),
}

/// One extent placed in the virtual disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedExtent {
    /// First virtual byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Access mode.
    pub access: Access,
    /// What holds the data.
    pub backing: Backing,
}

/// Identifies a grain table across a layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableKey {
    /// Extent index.
    pub extent: usize,
    /// Table index in the extent's directory.
    pub gt: u64,
}

/// The bytes a caller must read to supply a grain table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRequest {
    /// Which table.
    pub key: TableKey,
    /// Byte offset in the extent file.
    pub file_offset: u64,
    /// Bytes to read.
    pub len: u64,
}

/// What a stretch of virtual bytes maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Bytes at `file_offset` of extent `extent`'s file.
    Data {
        /// Byte offset in the extent file.
        file_offset: u64,
    },
    /// Part of a compressed grain.
    Compressed {
        /// File offset of the grain marker.
        grain_offset: u64,
        /// Extent-relative sector the grain marker must name.
        grain_lba: u64,
        /// Offset of the segment inside the inflated grain.
        skip: u64,
        /// Bytes of the grain inside the extent (the last grain may be short).
        grain_len: u64,
    },
    /// Zeros (zeroed grain, ZERO extent); never read through.
    Zero,
    /// Not allocated in this link: read through to the parent, or zeros.
    Unallocated,
}

/// A stretch of the virtual disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Length in bytes.
    pub len: u64,
    /// Index of the extent it lies in.
    pub extent: usize,
    /// Where the bytes come from.
    pub kind: SegmentKind,
}

/// Result of one mapping step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapStep {
    /// The next segment, starting at the requested offset.
    Segment(Segment),
    /// Supply this table (read it, [`Layout::parse_table`], cache it) and
    /// ask again.
    NeedTable(TableRequest),
}

/// The extents of one VMDK, placed end to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    extents: Vec<PlacedExtent>,
    capacity: u64,
}

impl Layout {
    /// Places extents `(access, sectors, backing)` end to end.
    ///
    /// A sparse extent must be able to hold what its descriptor line says
    /// (header capacity ≥ line size).
    pub fn new(extents: Vec<(Access, u64, Backing)>) -> Result<Self> {
        let mut placed = Vec::with_capacity(extents.len());
        let mut start = 0u64;
        let overflow = Error::Overflow {
            what: Structure::SparseHeader,
            field: "disk capacity",
        };
        for (index, (access, sectors, backing)) in extents.into_iter().enumerate() {
            let len = sectors.checked_mul(SECTOR_SIZE).ok_or(overflow.clone())?;
            if let Backing::Sparse(s) = &backing {
                if s.capacity_sectors() < sectors {
                    return Err(Error::BadExtent {
                        index,
                        reason: "descriptor line is larger than the extent's header capacity",
                    });
                }
            }
            if let Backing::Flat { file_offset } = backing {
                file_offset.checked_add(len).ok_or(overflow.clone())?;
            }
            placed.push(PlacedExtent {
                start,
                len,
                access,
                backing,
            });
            start = start.checked_add(len).ok_or(overflow.clone())?;
        }
        Ok(Self {
            extents: placed,
            capacity: start,
        })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The placed extents.
    pub fn extents(&self) -> &[PlacedExtent] {
        &self.extents
    }

    /// Index of the extent holding virtual byte `offset`.
    pub fn extent_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.capacity {
            return None;
        }
        // Zero-length extents never hold a byte: skip them.
        let i = self.extents.partition_point(|e| e.start + e.len <= offset);
        (i < self.extents.len()).then_some(i)
    }

    /// Parses a table read for `req`.
    pub fn parse_table(&self, key: TableKey, bytes: &[u8]) -> Result<GrainTable> {
        match self.extents.get(key.extent).map(|e| &e.backing) {
            Some(Backing::Sparse(s)) => s.parse_table(key.gt, bytes),
            _ => Err(Error::TableMismatch),
        }
    }

    /// Maps the longest run starting at `offset` (at most `len` bytes)
    /// that has one kind and, for data, contiguous file offsets. Tables
    /// come from `tables`; a table it does not have is requested.
    pub fn map_next(
        &self,
        offset: u64,
        len: u64,
        tables: &mut dyn FnMut(TableKey) -> Option<Arc<GrainTable>>,
    ) -> Result<MapStep> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.capacity && len > 0);
        let Some(end) = end else {
            return Err(Error::OutOfRange {
                offset,
                len,
                capacity: self.capacity,
            });
        };
        let index = self.extent_at(offset).ok_or(Error::OutOfRange {
            offset,
            len,
            capacity: self.capacity,
        })?;
        let ext = &self.extents[index];
        let rel = offset - ext.start;
        let avail = (ext.start + ext.len).min(end) - offset;
        let seg = |len, kind| {
            Ok(MapStep::Segment(Segment {
                len,
                extent: index,
                kind,
            }))
        };
        match &ext.backing {
            Backing::Zero => seg(avail, SegmentKind::Zero),
            Backing::Flat { file_offset } => seg(
                avail,
                SegmentKind::Data {
                    file_offset: file_offset + rel,
                },
            ),
            Backing::Sparse(s) => self.map_sparse(index, s, rel, avail, tables),
        }
    }

    fn map_sparse(
        &self,
        index: usize,
        s: &SparseExtent,
        rel: u64,
        avail: u64,
        tables: &mut dyn FnMut(TableKey) -> Option<Arc<GrainTable>>,
    ) -> Result<MapStep> {
        let grain_bytes = s.grain_bytes();
        let ext_len = self.extents[index].len;
        let mut table: Option<Arc<GrainTable>> = None;
        let mut cur = rel;
        let stop = rel + avail;
        let mut acc: Option<(u64, SegmentKind)> = None;
        while cur < stop {
            let grain = cur / grain_bytes;
            let gt = grain / s.gtes_per_gt();
            if table.as_ref().map(|t| t.index()) != Some(gt) {
                table = None;
                if s.table_location(gt)?.is_some() {
                    let key = TableKey { extent: index, gt };
                    match tables(key) {
                        Some(t) if t.index() == gt => table = Some(t),
                        Some(_) => return Err(Error::TableMismatch),
                        None => {
                            if acc.is_some() {
                                break;
                            }
                            let (file_offset, len) = s.table_location(gt)?.unwrap_or((0, 0));
                            return Ok(MapStep::NeedTable(TableRequest {
                                key,
                                file_offset,
                                len,
                            }));
                        }
                    }
                }
            }
            let in_grain = cur % grain_bytes;
            let grain_start = grain * grain_bytes;
            let piece = (grain_bytes - in_grain).min(stop - cur);
            let kind = match s.grain_state(grain, table.as_deref())? {
                GrainState::Unallocated => SegmentKind::Unallocated,
                GrainState::Zero => SegmentKind::Zero,
                GrainState::Data(off) => SegmentKind::Data {
                    file_offset: off + in_grain,
                },
                GrainState::Compressed(off) => SegmentKind::Compressed {
                    grain_offset: off,
                    grain_lba: grain_start / SECTOR_SIZE,
                    skip: in_grain,
                    grain_len: grain_bytes.min(ext_len - grain_start),
                },
            };
            match (&mut acc, kind) {
                (None, k) => acc = Some((piece, k)),
                (Some((l, SegmentKind::Zero)), SegmentKind::Zero)
                | (Some((l, SegmentKind::Unallocated)), SegmentKind::Unallocated) => *l += piece,
                (
                    Some((l, SegmentKind::Data { file_offset })),
                    SegmentKind::Data { file_offset: next },
                ) if *file_offset + *l == next => *l += piece,
                _ => break,
            }
            cur += piece;
            if matches!(kind, SegmentKind::Compressed { .. }) {
                break;
            }
        }
        let (len, kind) = acc.ok_or(Error::TableMismatch)?;
        Ok(MapStep::Segment(Segment {
            len,
            extent: index,
            kind,
        }))
    }
}
