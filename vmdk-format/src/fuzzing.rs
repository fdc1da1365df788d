//! Fuzzing hooks: drive the whole engine over an in-memory "file".
//!
//! Compiled only with `--cfg fuzzing` (cargo-fuzz sets it) and in tests.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use crate::cowd::{CowdHeader, COWD_MAGIC};
use crate::descriptor::{Access, Descriptor};
use crate::extent::SparseExtent;
use crate::hosted::{SparseExtentHeader, SPARSE_MAGIC};
use crate::layout::{Backing, Layout, MapStep, SegmentKind};
use crate::sesparse::{SeSparseHeader, CONST_MAGIC};
use crate::stream::{self, GrainParse, Marker, MarkerKind};
use crate::Result;

/// Upper bound on mapping steps per input, so a legitimately huge disk
/// does not turn one input into a minutes-long run.
const MAX_STEPS: usize = 20_000;

fn slice(file: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    file.get(start..end)
}

fn truncated(off: u64, len: u64, file: &[u8]) -> crate::Error {
    crate::Error::BeyondEof {
        what: crate::Structure::GrainTable,
        index: 0,
        offset: off.saturating_add(len),
        file_len: file.len() as u64,
    }
}

/// Opens `file` as a sparse extent of any flavour, the way `disklib`
/// does, but from memory.
pub fn open_sparse(file: &[u8]) -> Result<SparseExtent> {
    let len = file.len() as u64;
    let m32 = file
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let m64 = file
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if m32 == Some(SPARSE_MAGIC) {
        let mut h = SparseExtentHeader::parse(file)?;
        if h.gd_at_end() {
            let (o, l) = SparseExtentHeader::footer_range(len)?;
            h = h.with_footer(slice(file, o, l).ok_or_else(|| truncated(o, l, file))?)?;
        }
        let (o, l) = h.gd_range()?;
        let gd = slice(file, o, l).ok_or_else(|| truncated(o, l, file))?;
        SparseExtent::hosted(h, gd, len)
    } else if m32 == Some(COWD_MAGIC) {
        let h = CowdHeader::parse(file)?;
        let (o, l) = h.gd_range();
        let gd = slice(file, o, l).ok_or_else(|| truncated(o, l, file))?;
        SparseExtent::cowd(h, gd, len)
    } else if m64 == Some(CONST_MAGIC) {
        let h = SeSparseHeader::parse(file)?;
        let (o, l) = h.volatile_range();
        SeSparseHeader::check_volatile(slice(file, o, l).ok_or_else(|| truncated(o, l, file))?)?;
        let (o, l) = h.gd_range();
        let gd = slice(file, o, l).ok_or_else(|| truncated(o, l, file))?;
        SparseExtent::sesparse(h, gd, len)
    } else {
        Err(crate::Error::BadMagic {
            what: crate::Structure::SparseHeader,
            found: m64.unwrap_or(0),
        })
    }
}

/// Maps and reads the whole virtual disk of an in-memory sparse file,
/// returning the bytes read (bounded by [`MAX_STEPS`] segments).
pub fn read_image(file: &[u8]) -> Result<Vec<u8>> {
    let ext = open_sparse(file)?;
    let sectors = ext.capacity_sectors();
    let grain_bytes = ext.grain_bytes();
    let layout = Layout::new(vec![(Access::ReadWrite, sectors, Backing::Sparse(ext))])?;
    let mut tables = BTreeMap::new();
    let mut out = Vec::new();
    let mut pos = 0u64;
    let cap = layout.capacity();
    let mut steps = 0;
    while pos < cap && steps < MAX_STEPS {
        steps += 1;
        let step = layout.map_next(pos, cap - pos, &mut |k| tables.get(&k).cloned())?;
        let seg = match step {
            MapStep::NeedTable(req) => {
                let bytes = slice(file, req.file_offset, req.len)
                    .ok_or_else(|| truncated(req.file_offset, req.len, file))?;
                tables.insert(req.key, Arc::new(layout.parse_table(req.key, bytes)?));
                continue;
            }
            MapStep::Segment(s) => s,
        };
        match seg.kind {
            SegmentKind::Data { file_offset } => {
                let b = slice(file, file_offset, seg.len.min(4096))
                    .ok_or_else(|| truncated(file_offset, seg.len, file))?;
                out.extend_from_slice(b);
            }
            SegmentKind::Compressed {
                grain_offset,
                grain_lba,
                skip,
                ..
            } => {
                let rest = file.get(grain_offset as usize..).unwrap_or(&[]);
                if let GrainParse::Complete { compressed } =
                    stream::parse_grain(rest, grain_offset, grain_lba, grain_bytes)?
                {
                    let mut g = vec![0u8; grain_bytes as usize];
                    let n = stream::inflate_grain(compressed, &mut g, grain_offset)?;
                    let from = (skip as usize).min(n);
                    out.extend_from_slice(&g[from..n.min(from + 4096)]);
                }
            }
            SegmentKind::Zero | SegmentKind::Unallocated => {}
        }
        pos += seg.len;
    }
    Ok(out)
}

/// Walks stream markers from `start` to the end-of-stream marker.
pub fn walk_markers(file: &[u8], start: u64) -> Result<usize> {
    let mut off = start;
    let mut count = 0;
    while let Some(b) = slice(file, off, 16) {
        let m = Marker::parse(b)?;
        count += 1;
        if matches!(
            m,
            Marker::Meta {
                kind: MarkerKind::EndOfStream,
                ..
            }
        ) || count > MAX_STEPS
        {
            break;
        }
        off = off.checked_add(m.span()?).ok_or(crate::Error::Overflow {
            what: crate::Structure::StreamMarker,
            field: "offset",
        })?;
    }
    Ok(count)
}

/// Parses a descriptor and checks the round trip of what it accepts.
pub fn descriptor_round_trip(bytes: &[u8]) {
    if let Ok(d) = Descriptor::parse(bytes) {
        if let Ok(out) = d.to_bytes() {
            let again = Descriptor::parse(&out).expect("serialized descriptor must parse");
            assert_eq!(again, d, "descriptor round trip");
        }
    }
}
