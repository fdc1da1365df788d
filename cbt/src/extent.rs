//! Byte ranges and normalised lists of them.

use alloc::vec::Vec;
use core::fmt;

use crate::SECTOR;

/// A half-open byte range `[start, start + len)`. The end never exceeds
/// `u64::MAX`: constructors shorten a length that would overflow.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Extent {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl fmt::Debug for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.start, self.len)
    }
}

impl Extent {
    /// `[start, start + len)`, with `len` shortened so the end fits in u64.
    pub const fn new(start: u64, len: u64) -> Self {
        let max = u64::MAX - start;
        Self {
            start,
            len: if len > max { max } else { len },
        }
    }

    /// `[start, end)`; empty when `end <= start`.
    pub const fn from_bounds(start: u64, end: u64) -> Self {
        Self {
            start,
            len: end.saturating_sub(start),
        }
    }

    /// One past the last byte.
    pub const fn end(&self) -> u64 {
        self.start + self.len
    }

    /// True for a zero-length range.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A normalised list of extents: sorted by start, no empty extents, no two
/// extents overlapping or touching. Every operation keeps that invariant
/// and runs in time linear in its inputs (construction from unsorted
/// input sorts once).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct ExtentList {
    v: Vec<Extent>,
}

impl fmt::Debug for ExtentList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.v).finish()
    }
}

/// Appends `e` to a list whose last extent starts at or before `e`.
fn append(v: &mut Vec<Extent>, e: Extent) {
    if e.is_empty() {
        return;
    }
    if let Some(last) = v.last_mut() {
        if e.start <= last.end() {
            if e.end() > last.end() {
                last.len = e.end() - last.start;
            }
            return;
        }
    }
    v.push(e);
}

impl ExtentList {
    /// The empty list.
    pub const fn new() -> Self {
        Self { v: Vec::new() }
    }

    /// Normalises arbitrary extents: sorts, drops empty ones, merges
    /// overlapping and touching ones.
    pub fn from_unsorted(mut v: Vec<Extent>) -> Self {
        v.retain(|e| !e.is_empty());
        v.sort_unstable_by_key(|e| e.start);
        let mut out: Vec<Extent> = Vec::with_capacity(v.len());
        for e in v {
            append(&mut out, e);
        }
        out.shrink_to_fit();
        Self { v: out }
    }

    /// Builds from extents already sorted by start (overlaps allowed);
    /// falls back to sorting when they are not.
    pub fn from_sorted(v: impl IntoIterator<Item = Extent>) -> Self {
        let mut out: Vec<Extent> = Vec::new();
        let mut sorted = true;
        let mut all = Vec::new();
        for e in v {
            if let Some(last) = out.last() {
                if e.start < last.start {
                    sorted = false;
                }
            }
            if sorted {
                append(&mut out, e);
            } else {
                all.push(e);
            }
        }
        if sorted {
            Self { v: out }
        } else {
            out.extend(all);
            Self::from_unsorted(out)
        }
    }

    /// Adds one extent. O(1) when it starts at or after the last extent;
    /// otherwise a linear union.
    pub fn insert(&mut self, e: Extent) {
        if e.is_empty() {
            return;
        }
        match self.v.last() {
            Some(last) if e.start < last.start => {
                *self = self.union(&Self { v: alloc::vec![e] });
            }
            _ => append(&mut self.v, e),
        }
    }

    /// The extents.
    pub fn as_slice(&self) -> &[Extent] {
        &self.v
    }

    /// Iterator over the extents.
    pub fn iter(&self) -> core::slice::Iter<'_, Extent> {
        self.v.iter()
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.v.len()
    }

    /// True when no byte is covered.
    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    /// Bytes covered (saturating).
    pub fn total_len(&self) -> u64 {
        self.v.iter().fold(0u64, |a, e| a.saturating_add(e.len))
    }

    /// Whether byte `offset` is covered (binary search).
    pub fn contains(&self, offset: u64) -> bool {
        let i = self.v.partition_point(|e| e.end() <= offset);
        self.v.get(i).is_some_and(|e| e.start <= offset)
    }

    /// Checks the invariant (for tests and debug assertions).
    pub fn is_normalized(&self) -> bool {
        self.v.iter().all(|e| !e.is_empty()) && self.v.windows(2).all(|w| w[0].end() < w[1].start)
    }

    /// Bytes in either list.
    pub fn union(&self, other: &Self) -> Self {
        let (a, b) = (&self.v, &other.v);
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let take_a = j >= b.len() || (i < a.len() && a[i].start <= b[j].start);
            let e = if take_a {
                i += 1;
                a[i - 1]
            } else {
                j += 1;
                b[j - 1]
            };
            append(&mut out, e);
        }
        Self { v: out }
    }

    /// Bytes in both lists.
    pub fn intersection(&self, other: &Self) -> Self {
        let (a, b) = (&self.v, &other.v);
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            let lo = a[i].start.max(b[j].start);
            let hi = a[i].end().min(b[j].end());
            if lo < hi {
                out.push(Extent::from_bounds(lo, hi));
            }
            if a[i].end() < b[j].end() {
                i += 1;
            } else {
                j += 1;
            }
        }
        Self { v: out }
    }

    /// Bytes in `self` but not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        let b = &other.v;
        let mut out = Vec::with_capacity(self.v.len());
        let mut j = 0;
        for &e in &self.v {
            let mut cur = e.start;
            let end = e.end();
            while j < b.len() && b[j].end() <= cur {
                j += 1;
            }
            let mut k = j;
            while k < b.len() && b[k].start < end {
                if b[k].start > cur {
                    out.push(Extent::from_bounds(cur, b[k].start));
                }
                cur = cur.max(b[k].end());
                if cur >= end {
                    break;
                }
                k += 1;
            }
            if cur < end {
                out.push(Extent::from_bounds(cur, end));
            }
        }
        Self { v: out }
    }

    /// Bytes of `[0, capacity)` not in the list.
    pub fn complement(&self, capacity: u64) -> Self {
        let mut out = Vec::with_capacity(self.v.len() + 1);
        let mut cur = 0u64;
        for e in &self.v {
            if e.start >= capacity {
                break;
            }
            if e.start > cur {
                out.push(Extent::from_bounds(cur, e.start));
            }
            cur = e.end();
        }
        if cur < capacity {
            out.push(Extent::from_bounds(cur, capacity));
        }
        Self { v: out }
    }

    /// The part inside `[0, capacity)`.
    pub fn clip(&self, capacity: u64) -> Self {
        let mut out = Vec::with_capacity(self.v.len());
        for e in &self.v {
            if e.start >= capacity {
                break;
            }
            out.push(Extent::from_bounds(e.start, e.end().min(capacity)));
        }
        Self { v: out }
    }

    /// Expands every extent to whole blocks of `block` bytes (a block of 0
    /// or 1 leaves the list unchanged). The result may pass a capacity
    /// that is not a block multiple: [`clip`](Self::clip) it.
    pub fn align(&self, block: u64) -> Self {
        if block <= 1 {
            return self.clone();
        }
        let mut out = Vec::with_capacity(self.v.len());
        for e in &self.v {
            let start = e.start / block * block;
            let end = match e.end().checked_next_multiple_of(block) {
                Some(end) => end,
                None => u64::MAX / block * block,
            };
            append(&mut out, Extent::from_bounds(start, end.max(e.end())));
        }
        Self { v: out }
    }

    /// Cuts the extents into requests of at most `max` bytes (0 means no
    /// limit), in order.
    pub fn split(&self, max: u64) -> Split<'_> {
        Split {
            list: &self.v,
            index: 0,
            offset: 0,
            max,
        }
    }

    /// Converts to 512-byte sectors, expanding to whole sectors.
    pub fn to_sectors(&self) -> Self {
        let aligned = self.align(SECTOR);
        Self {
            v: aligned
                .v
                .iter()
                .map(|e| Extent::new(e.start / SECTOR, e.len.div_ceil(SECTOR)))
                .collect(),
        }
    }

    /// Converts a sector-based list to bytes (saturating at u64::MAX).
    pub fn from_sectors(&self) -> Self {
        let v = self
            .v
            .iter()
            .map(|e| Extent::new(e.start.saturating_mul(SECTOR), e.len.saturating_mul(SECTOR)))
            .collect::<Vec<_>>();
        Self::from_sorted(v)
    }

    /// The extents, by value.
    pub fn into_vec(self) -> Vec<Extent> {
        self.v
    }
}

impl FromIterator<Extent> for ExtentList {
    fn from_iter<I: IntoIterator<Item = Extent>>(iter: I) -> Self {
        ExtentList::from_unsorted(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a ExtentList {
    type Item = &'a Extent;
    type IntoIter = core::slice::Iter<'a, Extent>;
    fn into_iter(self) -> Self::IntoIter {
        self.v.iter()
    }
}

/// Iterator of [`ExtentList::split`].
#[derive(Debug, Clone)]
pub struct Split<'a> {
    list: &'a [Extent],
    index: usize,
    offset: u64,
    max: u64,
}

impl Iterator for Split<'_> {
    type Item = Extent;
    fn next(&mut self) -> Option<Extent> {
        let e = self.list.get(self.index)?;
        let remaining = e.len - self.offset;
        let n = if self.max == 0 {
            remaining
        } else {
            remaining.min(self.max)
        };
        let out = Extent::new(e.start + self.offset, n);
        self.offset += n;
        if self.offset == e.len {
            self.index += 1;
            self.offset = 0;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn l(v: &[(u64, u64)]) -> ExtentList {
        ExtentList::from_unsorted(v.iter().map(|&(s, n)| Extent::new(s, n)).collect())
    }

    #[test]
    fn basics() {
        let a = l(&[(10, 5), (0, 3), (3, 2), (20, 0), (14, 4)]);
        assert_eq!(a, l(&[(0, 5), (10, 8)]));
        assert!(a.is_normalized());
        assert_eq!(a.total_len(), 13);
        assert!(a.contains(4) && !a.contains(5) && a.contains(17) && !a.contains(18));
        assert_eq!(a.complement(30), l(&[(5, 5), (18, 12)]));
        assert_eq!(a.complement(12), l(&[(5, 5)]));
        assert_eq!(a.clip(12), l(&[(0, 5), (10, 2)]));
        assert_eq!(
            a.difference(&l(&[(1, 1), (11, 100)])),
            l(&[(0, 1), (2, 3), (10, 1)])
        );
        assert_eq!(
            a.split(3).collect::<Vec<_>>(),
            vec![
                Extent::new(0, 3),
                Extent::new(3, 2),
                Extent::new(10, 3),
                Extent::new(13, 3),
                Extent::new(16, 2)
            ]
        );
        assert_eq!(l(&[(513, 2)]).to_sectors(), l(&[(1, 1)]));
        assert_eq!(l(&[(1, 1)]).from_sectors(), l(&[(512, 512)]));
        let mut b = ExtentList::new();
        b.insert(Extent::new(10, 2));
        b.insert(Extent::new(12, 2));
        b.insert(Extent::new(0, 1));
        assert_eq!(b, l(&[(0, 1), (10, 4)]));
    }

    #[test]
    fn overflow_edges() {
        let e = Extent::new(u64::MAX - 1, 10);
        assert_eq!(e.end(), u64::MAX);
        let a = ExtentList::from_unsorted(vec![e]);
        assert_eq!(
            a.align(4096).as_slice(),
            &[Extent::from_bounds(u64::MAX - 4095, u64::MAX)]
        );
    }
}
