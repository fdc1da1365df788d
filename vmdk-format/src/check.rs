//! Consistency checks over loaded metadata.
//!
//! [`SparseChecker`] builds an occupancy map of a grain-directory extent
//! (header, descriptor, directories, tables, grains) from the tables the
//! caller loads, and reports entries past the end of the file, entries
//! pointing into metadata, grains shared by two entries and directory /
//! redundant-directory disagreements, header capacities that disagree
//! with the descriptor, files shorter than their header's overhead, and
//! compressed grains that do not inflate to their grain
//! ([`SparseChecker::check_compressed`]). [`StreamWalk`] follows the
//! markers of a streamOptimized file.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::Error;
use crate::extent::{GrainState, GrainTable, SparseExtent, SparseFormat};
use crate::stream::{
    inflate_grain, max_compressed_len, parse_grain, GrainParse, Marker, MarkerKind,
    GRAIN_HEADER_LEN,
};
use crate::SECTOR_SIZE;

/// Findings beyond this count are summarised, not listed.
pub const MAX_FINDINGS: usize = 1000;

/// What kind of problem a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FindingKind {
    /// The header says the file was not closed cleanly.
    UncleanShutdown,
    /// The grain directory and its redundant copy disagree.
    DirectoryMismatch,
    /// A grain table and its redundant copy disagree.
    TableMismatch,
    /// A directory entry is unusable (past EOF, into the header, malformed).
    BadDirectoryEntry,
    /// A grain table entry points past the end of the file.
    EntryBeyondEof,
    /// A grain table entry points into metadata.
    EntryInMetadata,
    /// Two grain table entries point at the same grain.
    SharedGrain,
    /// Two metadata structures overlap.
    MetadataOverlap,
    /// A grain table entry is malformed.
    BadEntry,
    /// A stream marker is malformed or misplaced.
    StreamMarker,
    /// The stream ends without an end-of-stream marker.
    StreamTruncated,
    /// An extent file is smaller than the descriptor says.
    ExtentSize,
    /// The structure could not be opened at all.
    Unreadable,
    /// A compressed grain does not match its table entry, or does not
    /// inflate to its grain.
    BadGrain,
    /// An extent's header capacity differs from its descriptor line.
    CapacityMismatch,
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Category.
    pub kind: FindingKind,
    /// Human-readable detail with offsets.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Header,
    Descriptor,
    Directory,
    RedundantDirectory,
    Table(u64),
    RedundantTable(u64),
    Grains(u64),
}

impl Owner {
    fn is_grain(self) -> bool {
        matches!(self, Owner::Grains(_))
    }
    fn describe(self) -> String {
        match self {
            Owner::Header => "the header".into(),
            Owner::Descriptor => "the embedded descriptor".into(),
            Owner::Directory => "the grain directory".into(),
            Owner::RedundantDirectory => "the redundant grain directory".into(),
            Owner::Table(i) => format!("grain table {i}"),
            Owner::RedundantTable(i) => format!("redundant grain table {i}"),
            Owner::Grains(g) => format!("grain {g}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Region {
    start: u64,
    len: u64,
    owner: Owner,
}

/// Accumulates findings; keeps at most [`MAX_FINDINGS`].
#[derive(Clone, Debug, Default)]
pub struct Findings {
    list: Vec<Finding>,
    dropped: usize,
}

impl Findings {
    /// Records a finding.
    pub fn push(&mut self, kind: FindingKind, detail: String) {
        if self.list.len() < MAX_FINDINGS {
            self.list.push(Finding { kind, detail });
        } else {
            self.dropped += 1;
        }
    }
    /// Findings recorded, plus a summary line when some were dropped.
    pub fn into_vec(mut self) -> Vec<Finding> {
        if self.dropped > 0 {
            self.list.push(Finding {
                kind: FindingKind::Unreadable,
                detail: format!("{} further findings not listed", self.dropped),
            });
        }
        self.list
    }
    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Checks one grain-directory extent. Feed it every table with
/// [`add_table`](Self::add_table) (and redundant ones with
/// [`add_redundant`](Self::add_redundant)), then call
/// [`finish`](Self::finish).
#[derive(Debug)]
pub struct SparseChecker<'a> {
    ext: &'a SparseExtent,
    findings: Findings,
    regions: Vec<Region>,
    /// One grain, for inflating compressed grains (allocated on first use;
    /// at most `MAX_GRAIN_SECTORS` sectors).
    scratch: Vec<u8>,
}

/// What [`SparseChecker::check_compressed`] needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrainCheck {
    /// The grain was checked (any finding is recorded).
    Done,
    /// Call again with at least this many bytes from the marker (they
    /// lie inside the file).
    NeedBytes(u64),
}

impl<'a> SparseChecker<'a> {
    /// Starts a check; records the header-level findings and regions.
    pub fn new(ext: &'a SparseExtent) -> Self {
        let mut c = Self {
            ext,
            findings: Findings::default(),
            regions: Vec::new(),
            scratch: Vec::new(),
        };
        let dir_len = ext.gt_count()
            * if matches!(ext.format(), SparseFormat::SeSparse(_)) {
                8
            } else {
                4
            };
        match ext.format() {
            SparseFormat::Hosted(h) => {
                c.region(0, SECTOR_SIZE, Owner::Header);
                if h.unclean_shutdown {
                    c.findings.push(
                        FindingKind::UncleanShutdown,
                        "uncleanShutdown is set: the file was not closed cleanly".into(),
                    );
                }
                if let Some((o, l)) = h.descriptor_range() {
                    c.region(o, l, Owner::Descriptor);
                }
                // Validated: overhead * 512 does not overflow.
                let overhead = h.overhead * SECTOR_SIZE;
                if ext.file_len() < overhead {
                    c.findings.push(
                        FindingKind::ExtentSize,
                        format!(
                            "the file ends at byte {}, before the {} sectors of metadata (overHead) the header announces",
                            ext.file_len(),
                            h.overhead
                        ),
                    );
                }
                if let Ok((o, _)) = h.gd_range() {
                    c.region(o, dir_len, Owner::Directory);
                }
                if let Ok(Some((o, _))) = h.rgd_range() {
                    c.region(o, dir_len, Owner::RedundantDirectory);
                }
            }
            SparseFormat::Cowd(h) => {
                c.region(0, 2048, Owner::Header);
                if h.unclean_shutdown {
                    c.findings.push(
                        FindingKind::UncleanShutdown,
                        "uncleanShutdown is set: the file was not closed cleanly".into(),
                    );
                }
                let (o, _) = h.gd_range();
                c.region(o, dir_len, Owner::Directory);
            }
            SparseFormat::SeSparse(h) => {
                c.region(0, SECTOR_SIZE, Owner::Header);
                let (o, _) = h.gd_range();
                c.region(o, dir_len, Owner::Directory);
            }
        }
        c
    }

    fn region(&mut self, start: u64, len: u64, owner: Owner) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.regions.last_mut() {
            if let (Owner::Grains(_), Owner::Grains(_)) = (last.owner, owner) {
                if last.start + last.len == start {
                    last.len += len;
                    return;
                }
            }
        }
        self.regions.push(Region { start, len, owner });
    }

    /// Compares the header's capacity with the sectors the descriptor
    /// line gives the extent: they must be equal.
    pub fn expect_capacity(&mut self, line_sectors: u64) {
        let cap = self.ext.capacity_sectors();
        if cap != line_sectors {
            self.findings.push(
                FindingKind::CapacityMismatch,
                format!(
                    "the extent's header holds {cap} sectors but its descriptor line says {line_sectors}"
                ),
            );
        }
    }

    /// Checks the compressed grain `grain` (extent-relative) whose marker
    /// starts at `file_offset`, from `bytes` read there: the marker names
    /// the grain's own sector, its size is plausible, the record lies
    /// inside the file and does not overlap metadata or other grains, and
    /// the data inflates to a whole grain (the last grain of the extent
    /// to at least the bytes the capacity leaves it). Returns
    /// [`GrainCheck::NeedBytes`] when `bytes` is too short.
    pub fn check_compressed(&mut self, grain: u64, file_offset: u64, bytes: &[u8]) -> GrainCheck {
        let grain_bytes = self.ext.grain_bytes();
        let file_len = self.ext.file_len();
        let Some(grain_start) = grain.checked_mul(grain_bytes) else {
            self.findings.push(
                FindingKind::BadEntry,
                format!("grain {grain} lies past any capacity"),
            );
            return GrainCheck::Done;
        };
        let capacity = self.ext.capacity_sectors() * SECTOR_SIZE;
        let needed = grain_bytes.min(capacity.saturating_sub(grain_start));
        let lba = grain_start / SECTOR_SIZE;
        let compressed = match parse_grain(bytes, file_offset, lba, grain_bytes) {
            Ok(GrainParse::Complete { compressed }) => compressed,
            Ok(GrainParse::NeedMore(total)) => {
                if total > bytes.len() as u64
                    && file_offset
                        .checked_add(total)
                        .is_some_and(|e| e <= file_len)
                {
                    return GrainCheck::NeedBytes(total);
                }
                self.findings.push(
                    FindingKind::BadGrain,
                    format!(
                        "grain {grain} (marker at byte {file_offset}) needs {total} bytes, past the end of the file ({file_len} bytes)"
                    ),
                );
                return GrainCheck::Done;
            }
            Err(e) => {
                let marker_lba = bytes
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes);
                let named = match marker_lba {
                    Some(l) if l != lba => format!(" (the marker names sector {l}, not {lba})"),
                    _ => String::new(),
                };
                self.findings.push(
                    FindingKind::BadGrain,
                    format!("grain {grain} (marker at byte {file_offset}): {e}{named}"),
                );
                return GrainCheck::Done;
            }
        };
        // The whole record (marker, data, padding) belongs to the grain;
        // its first sector was recorded with the table.
        let span =
            (GRAIN_HEADER_LEN as u64 + compressed.len() as u64).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
        if span > SECTOR_SIZE {
            self.region(
                file_offset + SECTOR_SIZE,
                (span - SECTOR_SIZE).min(file_len.saturating_sub(file_offset + SECTOR_SIZE)),
                Owner::Grains(grain),
            );
        }
        if self.scratch.len() as u64 != grain_bytes {
            self.scratch = alloc::vec![0u8; grain_bytes as usize];
        }
        match inflate_grain(compressed, &mut self.scratch, file_offset) {
            Ok(n) if n as u64 >= needed => {}
            Ok(n) => self.findings.push(
                FindingKind::BadGrain,
                format!(
                    "grain {grain} (marker at byte {file_offset}) inflates to {n} bytes; the disk needs {needed}"
                ),
            ),
            Err(_) => self.findings.push(
                FindingKind::BadGrain,
                format!(
                    "grain {grain} (marker at byte {file_offset}) does not inflate to at most one grain ({grain_bytes} bytes): corrupt or oversized deflate data"
                ),
            ),
        }
        GrainCheck::Done
    }

    /// Where each table lives; directory entries that cannot be used are
    /// recorded as findings and skipped.
    pub fn table_locations(&mut self) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        for gt in 0..self.ext.gt_count() {
            match self.ext.table_location(gt) {
                Ok(Some((o, l))) => out.push((gt, o, l)),
                Ok(None) => {}
                Err(e) => self.findings.push(
                    FindingKind::BadDirectoryEntry,
                    format!("directory entry {gt}: {e}"),
                ),
            }
        }
        out
    }

    /// Records a loaded table and checks each of its entries.
    pub fn add_table(&mut self, gt: u64, file_offset: u64, table: &GrainTable) {
        self.region(
            file_offset,
            table.entries().len() as u64 * self.entry_width(),
            Owner::Table(gt),
        );
        let grain_bytes = self.ext.grain_bytes();
        let first = gt * self.ext.gtes_per_gt();
        let grains_in_capacity = (self.ext.capacity_sectors() * SECTOR_SIZE).div_ceil(grain_bytes);
        for i in 0..table.entries().len() as u64 {
            let grain = first + i;
            if grain >= grains_in_capacity {
                if table.entries()[i as usize] != 0 {
                    self.findings.push(
                        FindingKind::BadEntry,
                        format!(
                            "grain table {gt} entry {i} is set but lies past the disk's capacity"
                        ),
                    );
                }
                continue;
            }
            match self.ext.grain_state(grain, Some(table)) {
                Ok(GrainState::Data(off)) => {
                    let len = grain_bytes.min(self.ext.file_len().saturating_sub(off));
                    self.region(off, len, Owner::Grains(grain));
                }
                Ok(GrainState::Compressed(off)) => self.region(off, SECTOR_SIZE, Owner::Grains(grain)),
                Ok(GrainState::Zero | GrainState::Unallocated) => {}
                Err(Error::BeyondEof { offset, .. }) => self.findings.push(
                    FindingKind::EntryBeyondEof,
                    format!("grain {grain} (table {gt} entry {i}) points at byte {offset}, past the end of the file ({} bytes)", self.ext.file_len()),
                ),
                Err(Error::GrainInMetadata { sector, .. }) => self.findings.push(
                    FindingKind::EntryInMetadata,
                    format!("grain {grain} (table {gt} entry {i}) points at sector {sector}, inside the metadata area"),
                ),
                Err(e) => self.findings.push(FindingKind::BadEntry, format!("grain {grain} (table {gt} entry {i}): {e}")),
            }
        }
    }

    fn entry_width(&self) -> u64 {
        if matches!(self.ext.format(), SparseFormat::SeSparse(_)) {
            8
        } else {
            4
        }
    }

    /// Compares the redundant directory with the primary one; returns the
    /// redundant tables to load as `(gt, offset, len)`.
    pub fn compare_directories(&mut self, rgd: &[u64]) -> Vec<(u64, u64, u64)> {
        let gd = self.ext.directory();
        let mut out = Vec::new();
        let table_len = self.ext.gtes_per_gt() * 4;
        for (i, (&a, &b)) in gd.iter().zip(rgd).enumerate() {
            if (a == 0) != (b == 0) {
                self.findings.push(
                    FindingKind::DirectoryMismatch,
                    format!(
                        "directory entry {i}: grain directory has {a}, redundant directory has {b}"
                    ),
                );
            }
            if b != 0 {
                match b.checked_mul(SECTOR_SIZE).filter(|o| {
                    o.checked_add(table_len)
                        .is_some_and(|e| e <= self.ext.file_len())
                }) {
                    Some(o) => out.push((i as u64, o, table_len)),
                    None => self.findings.push(
                        FindingKind::BadDirectoryEntry,
                        format!("redundant directory entry {i} points past the end of the file"),
                    ),
                }
            }
        }
        if rgd.len() != gd.len() {
            self.findings.push(
                FindingKind::DirectoryMismatch,
                "redundant directory has a different size".into(),
            );
        }
        out
    }

    /// Records a redundant table and compares it with its primary.
    pub fn add_redundant(
        &mut self,
        gt: u64,
        file_offset: u64,
        redundant: &GrainTable,
        primary: Option<&GrainTable>,
    ) {
        self.region(
            file_offset,
            redundant.entries().len() as u64 * 4,
            Owner::RedundantTable(gt),
        );
        let Some(primary) = primary else {
            return;
        };
        let differing: Vec<usize> = primary
            .entries()
            .iter()
            .zip(redundant.entries())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i)
            .collect();
        if let Some(&first) = differing.first() {
            self.findings.push(
                FindingKind::TableMismatch,
                format!(
                    "grain table {gt} and its redundant copy differ in {} entries (first: entry {first}, {} vs {})",
                    differing.len(),
                    primary.entries()[first],
                    redundant.entries()[first]
                ),
            );
        }
    }

    /// Records a finding found by the caller (a table that could not be read).
    pub fn push(&mut self, kind: FindingKind, detail: String) {
        self.findings.push(kind, detail);
    }

    /// Sweeps the occupancy map and returns every finding.
    pub fn finish(mut self) -> Vec<Finding> {
        self.regions.sort_by_key(|r| (r.start, r.owner));
        let mut reach: Option<Region> = None;
        for r in core::mem::take(&mut self.regions) {
            if let Some(prev) = reach {
                if r.start < prev.start + prev.len {
                    let (kind, what) = match (prev.owner.is_grain(), r.owner.is_grain()) {
                        (true, true) => (FindingKind::SharedGrain, "is shared by"),
                        (false, false) => (FindingKind::MetadataOverlap, "overlaps"),
                        _ => (FindingKind::EntryInMetadata, "overlaps"),
                    };
                    self.findings.push(
                        kind,
                        format!(
                            "{} {what} {} at byte {}",
                            r.owner.describe(),
                            prev.owner.describe(),
                            r.start
                        ),
                    );
                }
                if r.start + r.len > prev.start + prev.len {
                    reach = Some(r);
                }
            } else {
                reach = Some(r);
            }
        }
        self.findings.into_vec()
    }
}

/// Follows the markers of a streamOptimized file, from its first grain to
/// the end-of-stream marker. The caller reads 512 bytes at
/// [`offset`](Self::offset) and hands them to [`feed`](Self::feed) until
/// it returns `false`.
#[derive(Debug)]
pub struct StreamWalk {
    offset: u64,
    file_len: u64,
    capacity: u64,
    grain_sectors: u64,
    findings: Findings,
    grains: u64,
    done: bool,
}

impl StreamWalk {
    /// Starts at `start` (the header's overhead, in bytes).
    pub fn new(start: u64, file_len: u64, capacity_sectors: u64, grain_sectors: u64) -> Self {
        Self {
            offset: start,
            file_len,
            capacity: capacity_sectors,
            grain_sectors,
            findings: Findings::default(),
            grains: 0,
            done: false,
        }
    }

    /// Next byte offset to read, or `None` when the walk is over.
    pub fn offset(&self) -> Option<u64> {
        (!self.done).then_some(self.offset)
    }

    /// Grain markers seen so far.
    pub fn grains(&self) -> u64 {
        self.grains
    }

    /// Consumes the sector at [`offset`](Self::offset); `false` when done.
    pub fn feed(&mut self, sector: &[u8]) -> bool {
        if self.done {
            return false;
        }
        if self.offset == self.file_len {
            // qemu's writer ends the file right after the last grain, with
            // no end-of-stream marker; its directory is at the front, so
            // nothing is missing.
            self.done = true;
            return false;
        }
        if self.offset.saturating_add(16) > self.file_len || sector.len() < 16 {
            self.findings.push(
                FindingKind::StreamTruncated,
                format!(
                    "stream ends at byte {} without an end-of-stream marker",
                    self.file_len
                ),
            );
            self.done = true;
            return false;
        }
        let m = match Marker::parse(sector) {
            Ok(m) => m,
            Err(e) => {
                self.findings.push(
                    FindingKind::StreamMarker,
                    format!("byte {}: {e}", self.offset),
                );
                self.done = true;
                return false;
            }
        };
        match m {
            Marker::Grain {
                lba,
                compressed_len,
            } => {
                self.grains += 1;
                let grain_bytes = self.grain_sectors * SECTOR_SIZE;
                if lba % self.grain_sectors != 0 || lba >= self.capacity {
                    self.findings.push(
                        FindingKind::StreamMarker,
                        format!("grain marker at byte {} names sector {lba}, not a grain start inside the disk", self.offset),
                    );
                }
                if u64::from(compressed_len) > max_compressed_len(grain_bytes) {
                    self.findings.push(
                        FindingKind::StreamMarker,
                        format!(
                            "grain marker at byte {} claims {compressed_len} compressed bytes",
                            self.offset
                        ),
                    );
                    self.done = true;
                    return false;
                }
            }
            Marker::Meta {
                kind: MarkerKind::EndOfStream,
                ..
            } => {
                self.done = true;
                return false;
            }
            Marker::Meta { .. } => {}
        }
        match m.span().ok().and_then(|s| self.offset.checked_add(s)) {
            Some(next) if next <= self.file_len => {
                self.offset = next;
                true
            }
            _ => {
                self.findings.push(
                    FindingKind::StreamTruncated,
                    format!(
                        "marker at byte {} announces data past the end of the file",
                        self.offset
                    ),
                );
                self.done = true;
                false
            }
        }
    }

    /// The findings of the walk.
    pub fn finish(self) -> Vec<Finding> {
        self.findings.into_vec()
    }
}
