//! `LocalDisk::map`: what every byte of a disk holds, through its chain.

use vmdk_format::layout::SegmentKind;

use crate::local::LocalDisk;
use crate::Result;

/// What a stretch of the disk holds, for `map`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocKind {
    /// Stored data (plain or compressed) somewhere in the chain.
    Data,
    /// Explicit zeros (zeroed grains, ZERO extents).
    Zero,
    /// Nothing stored anywhere in the chain.
    Unallocated,
}

impl AllocKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Zero => "zero",
            Self::Unallocated => "unallocated",
        }
    }
}

/// One entry of a disk map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// What is there.
    pub kind: AllocKind,
}

impl LocalDisk {
    /// What every byte of the disk holds, ordered and coalesced.
    pub fn map(&self) -> Result<Vec<MapEntry>> {
        let mut out = Vec::new();
        let cap = self.capacity();
        if cap > 0 {
            self.map_link(0, 0, cap, false, &mut out)?;
        }
        Ok(out)
    }

    /// What `[offset, offset + length)` holds (clipped to the capacity),
    /// ordered and coalesced: the map of that range only, for block-status
    /// queries that must not walk the whole disk.
    pub fn map_range(&self, offset: u64, length: u64) -> Result<Vec<MapEntry>> {
        let mut out = Vec::new();
        let end = offset.saturating_add(length).min(self.capacity());
        if offset < end {
            self.map_link(0, offset, end - offset, false, &mut out)?;
        }
        Ok(out)
    }

    /// [`map_range`](Self::map_range), with the holes of the files under
    /// the data as well: stored bytes whose file region is a filesystem
    /// hole (a sparse flat extent, say) are reported as
    /// [`AllocKind::Unallocated`], since they take no space and read as
    /// zero. For block-status answers (NBD's `base:allocation`), where a
    /// client skips what it is told holds nothing.
    pub fn allocation_range(&self, offset: u64, length: u64) -> Result<Vec<MapEntry>> {
        let mut out = Vec::new();
        let end = offset.saturating_add(length).min(self.capacity());
        if offset < end {
            self.map_link(0, offset, end - offset, true, &mut out)?;
        }
        Ok(out)
    }

    /// Splits a data segment at the holes of its extent file.
    fn push_data_with_holes(
        &self,
        li: usize,
        extent: usize,
        file_offset: u64,
        cur: u64,
        len: u64,
        out: &mut Vec<MapEntry>,
    ) {
        use rustix::fs::{seek, SeekFrom};
        let Some(Some(file)) = self.links[li].extent_files().get(extent) else {
            push_entry(out, cur, len, AllocKind::Data);
            return;
        };
        let end = file_offset + len;
        let mut pos = file_offset;
        while pos < end {
            let data = match seek(&file.file, SeekFrom::Data(pos)) {
                Ok(d) => d.min(end),
                Err(rustix::io::Errno::NXIO) => end,
                // No hole support: all data.
                Err(_) => pos,
            };
            if data > pos {
                push_entry(
                    out,
                    cur + (pos - file_offset),
                    data - pos,
                    AllocKind::Unallocated,
                );
                pos = data;
                continue;
            }
            let hole = seek(&file.file, SeekFrom::Hole(pos)).map_or(end, |h| h.min(end));
            let hole = hole.max(pos + 1).min(end);
            push_entry(out, cur + (pos - file_offset), hole - pos, AllocKind::Data);
            pos = hole;
        }
    }

    fn map_link(
        &self,
        li: usize,
        offset: u64,
        len: u64,
        holes: bool,
        out: &mut Vec<MapEntry>,
    ) -> Result<()> {
        let mut pos = 0u64;
        while pos < len {
            let cur = offset + pos;
            let seg = self.next_step(li, cur, len - pos)?;
            if let (true, SegmentKind::Data { file_offset }) = (holes, seg.kind) {
                self.push_data_with_holes(li, seg.extent, file_offset, cur, seg.len, out);
                pos += seg.len;
                continue;
            }
            let kind = match seg.kind {
                SegmentKind::Data { .. } | SegmentKind::Compressed { .. } => Some(AllocKind::Data),
                SegmentKind::Zero => Some(AllocKind::Zero),
                SegmentKind::Unallocated => None,
            };
            match kind {
                Some(k) => push_entry(out, cur, seg.len, k),
                None => match self.links.get(li + 1) {
                    Some(parent) => {
                        let inside = parent.capacity().saturating_sub(cur).min(seg.len);
                        if inside > 0 {
                            self.map_link(li + 1, cur, inside, holes, out)?;
                        }
                        if inside < seg.len {
                            push_entry(out, cur + inside, seg.len - inside, AllocKind::Unallocated);
                        }
                    }
                    None => push_entry(out, cur, seg.len, AllocKind::Unallocated),
                },
            }
            pos += seg.len;
        }
        Ok(())
    }
}

fn push_entry(out: &mut Vec<MapEntry>, start: u64, length: u64, kind: AllocKind) {
    if let Some(last) = out.last_mut() {
        if last.kind == kind && last.start + last.length == start {
            last.length += length;
            return;
        }
    }
    out.push(MapEntry {
        start,
        length,
        kind,
    });
}
