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
            self.map_link(0, 0, cap, &mut out)?;
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
            self.map_link(0, offset, end - offset, &mut out)?;
        }
        Ok(out)
    }

    fn map_link(&self, li: usize, offset: u64, len: u64, out: &mut Vec<MapEntry>) -> Result<()> {
        let mut pos = 0u64;
        while pos < len {
            let cur = offset + pos;
            let seg = self.next_step(li, cur, len - pos)?;
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
                            self.map_link(li + 1, cur, inside, out)?;
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
