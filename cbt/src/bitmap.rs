//! A granular allocation bitmap: one bit per block of `granularity`
//! bytes, the form changed-block maps often take on disk.

use alloc::vec;
use alloc::vec::Vec;

use crate::extent::{Extent, ExtentList};

/// One bit per `granularity`-byte block of a `capacity`-byte disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationBitmap {
    capacity: u64,
    granularity: u64,
    blocks: u64,
    words: Vec<u64>,
}

/// A bitmap that would exceed this many blocks is refused (2^36 blocks:
/// a 4 TiB disk at 64-byte granularity, 8 GiB of bits).
pub const MAX_BLOCKS: u64 = 1 << 36;

impl AllocationBitmap {
    /// An empty bitmap. `None` when `granularity` is 0 or the bitmap
    /// would need more than [`MAX_BLOCKS`] bits.
    pub fn new(capacity: u64, granularity: u64) -> Option<Self> {
        if granularity == 0 {
            return None;
        }
        let blocks = capacity.div_ceil(granularity);
        if blocks > MAX_BLOCKS {
            return None;
        }
        Some(Self {
            capacity,
            granularity,
            blocks,
            words: vec![0; blocks.div_ceil(64) as usize],
        })
    }

    /// Sets every block an extent touches (extents are clipped to the
    /// capacity).
    pub fn from_extents(list: &ExtentList, capacity: u64, granularity: u64) -> Option<Self> {
        let mut b = Self::new(capacity, granularity)?;
        for e in list.clip(capacity).iter() {
            let first = e.start / granularity;
            let last = (e.end() - 1) / granularity;
            b.set_range(first, last + 1);
        }
        Some(b)
    }

    /// Sets blocks `[from, to)` a word at a time.
    pub fn set_range(&mut self, from: u64, to: u64) {
        let to = to.min(self.blocks);
        if from >= to {
            return;
        }
        let (fw, fb) = ((from / 64) as usize, from % 64);
        let (tw, tb) = ((to / 64) as usize, to % 64);
        if fw == tw {
            self.words[fw] |= (!0u64 << fb) & ((1u64 << tb) - 1);
            return;
        }
        self.words[fw] |= !0u64 << fb;
        for w in &mut self.words[fw + 1..tw] {
            *w = !0;
        }
        if tb > 0 {
            self.words[tw] |= (1u64 << tb) - 1;
        }
    }

    /// Whether block `block` is set.
    pub fn get(&self, block: u64) -> bool {
        block < self.blocks && self.words[(block / 64) as usize] >> (block % 64) & 1 == 1
    }

    /// Number of set blocks.
    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Blocks in the bitmap.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Bytes per block.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// The set blocks as byte extents, clipped to the capacity.
    pub fn to_extents(&self) -> ExtentList {
        let mut out = Vec::new();
        let mut run: Option<u64> = None;
        let g = self.granularity;
        let flush = |start: u64, end: u64, out: &mut Vec<Extent>| {
            let s = start.saturating_mul(g);
            let e = end.saturating_mul(g).min(self.capacity);
            out.push(Extent::from_bounds(s, e));
        };
        for (wi, &w) in self.words.iter().enumerate() {
            let base = wi as u64 * 64;
            if w == 0 || w == !0 {
                match (w == !0, run) {
                    (true, None) => run = Some(base),
                    (false, Some(s)) => {
                        flush(s, base, &mut out);
                        run = None;
                    }
                    _ => {}
                }
                continue;
            }
            for bit in 0..64 {
                let set = w >> bit & 1 == 1;
                match (set, run) {
                    (true, None) => run = Some(base + bit),
                    (false, Some(s)) => {
                        flush(s, base + bit, &mut out);
                        run = None;
                    }
                    _ => {}
                }
            }
        }
        if let Some(s) = run {
            flush(s, self.blocks, &mut out);
        }
        ExtentList::from_sorted(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let list = ExtentList::from_unsorted(vec![
            Extent::new(0, 1),
            Extent::new(100, 300),
            Extent::new(8000, 10_000),
        ]);
        let b = AllocationBitmap::from_extents(&list, 10_000, 64).unwrap();
        assert_eq!(b.blocks(), 157);
        assert!(
            b.get(0)
                && b.get(1)
                && b.get(6)
                && !b.get(7)
                && !b.get(124)
                && b.get(125)
                && b.get(156)
                && !b.get(157)
        );
        assert_eq!(b.count_ones(), 7 + 32);
        assert_eq!(
            b.to_extents().as_slice(),
            &[Extent::new(0, 448), Extent::new(8000, 2000)]
        );
        assert!(AllocationBitmap::new(10, 0).is_none());
        assert!(AllocationBitmap::new(u64::MAX, 1).is_none());
    }
}
