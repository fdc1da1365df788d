//! Assembly of paged `QueryChangedDiskAreas` answers into one changed set.
//!
//! A host answers for a window `[startOffset, startOffset + length)` of
//! the disk; the caller asks again from the window's end until the
//! capacity is reached. Feed each answer to [`ChangeAssembler::feed`].
//!
//! ```
//! use cbt::{ChangeAssembler, DiskChangeInfo, Extent};
//! let mut a = ChangeAssembler::new(1 << 20);
//! let next = a.feed(&DiskChangeInfo { start_offset: 0, length: 1 << 19, changed_areas: vec![Extent::new(4096, 4096)] })?;
//! assert_eq!(next, Some(1 << 19));
//! let next = a.feed(&DiskChangeInfo { start_offset: 1 << 19, length: 1 << 19, changed_areas: vec![] })?;
//! assert_eq!(next, None);
//! assert_eq!(a.finish()?.as_slice(), &[Extent::new(4096, 4096)]);
//! # Ok::<(), cbt::Error>(())
//! ```

use alloc::vec::Vec;

use crate::extent::{Extent, ExtentList};
use crate::Error;

/// One `DiskChangeInfo` as a host returns it (bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskChangeInfo {
    /// Start of the window this answer covers.
    pub start_offset: u64,
    /// Length of the window.
    pub length: u64,
    /// Changed areas inside the window, in ascending order.
    pub changed_areas: Vec<Extent>,
}

/// Accumulates paged answers; see the module documentation.
#[derive(Clone, Debug)]
pub struct ChangeAssembler {
    capacity: u64,
    next: u64,
    areas: Vec<Extent>,
}

impl ChangeAssembler {
    /// For a disk of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            next: 0,
            areas: Vec::new(),
        }
    }

    /// Where the next query must start, `None` when done.
    pub fn next_offset(&self) -> Option<u64> {
        (self.next < self.capacity).then_some(self.next)
    }

    /// Takes one answer; returns where to ask next (`None`: complete).
    /// A rejected answer leaves the assembler unchanged.
    pub fn feed(&mut self, page: &DiskChangeInfo) -> Result<Option<u64>, Error> {
        if self.next >= self.capacity {
            return Err(Error::AfterEnd);
        }
        if page.start_offset > self.next {
            return Err(Error::Gap {
                expected: self.next,
                got: page.start_offset,
            });
        }
        if page.start_offset < self.next {
            return Err(Error::Overlap {
                expected: self.next,
                got: page.start_offset,
            });
        }
        if page.length == 0 {
            return Err(Error::EmptyWindow(page.start_offset));
        }
        let window_end = page
            .start_offset
            .checked_add(page.length)
            .ok_or(Error::PastCapacity {
                end: u64::MAX,
                capacity: self.capacity,
            })?;
        if window_end > self.capacity {
            return Err(Error::PastCapacity {
                end: window_end,
                capacity: self.capacity,
            });
        }
        let window = Extent::from_bounds(page.start_offset, window_end);
        let mut prev_end = page.start_offset;
        let mut first = true;
        for &area in &page.changed_areas {
            let end = area
                .start
                .checked_add(area.len)
                .ok_or(Error::PastCapacity {
                    end: u64::MAX,
                    capacity: self.capacity,
                })?;
            if area.start < page.start_offset || end > window_end {
                if end > self.capacity {
                    return Err(Error::PastCapacity {
                        end,
                        capacity: self.capacity,
                    });
                }
                return Err(Error::AreaOutsideWindow { area, window });
            }
            if !first && area.start < prev_end {
                return Err(Error::AreasOutOfOrder { area });
            }
            prev_end = end;
            first = false;
        }
        self.areas
            .extend(page.changed_areas.iter().copied().filter(|a| !a.is_empty()));
        self.next = window_end;
        Ok(self.next_offset())
    }

    /// The changed set, once the whole capacity was answered for.
    pub fn finish(self) -> Result<ExtentList, Error> {
        if self.next < self.capacity {
            return Err(Error::Incomplete {
                covered: self.next,
                capacity: self.capacity,
            });
        }
        // Areas arrive sorted and disjoint: this is a linear pass.
        Ok(ExtentList::from_sorted(self.areas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(start: u64, len: u64, areas: &[(u64, u64)]) -> DiskChangeInfo {
        DiskChangeInfo {
            start_offset: start,
            length: len,
            changed_areas: areas.iter().map(|&(s, n)| Extent::new(s, n)).collect(),
        }
    }

    #[test]
    fn every_error() {
        let mut a = ChangeAssembler::new(100);
        assert_eq!(
            a.feed(&page(10, 10, &[])),
            Err(Error::Gap {
                expected: 0,
                got: 10
            })
        );
        assert_eq!(a.feed(&page(0, 0, &[])), Err(Error::EmptyWindow(0)));
        assert_eq!(
            a.feed(&page(0, 101, &[])),
            Err(Error::PastCapacity {
                end: 101,
                capacity: 100
            })
        );
        assert_eq!(
            a.feed(&page(0, u64::MAX, &[])),
            Err(Error::PastCapacity {
                end: u64::MAX,
                capacity: 100
            })
        );
        assert_eq!(
            a.feed(&page(0, 50, &[(40, 20)])),
            Err(Error::AreaOutsideWindow {
                area: Extent::new(40, 20),
                window: Extent::new(0, 50)
            })
        );
        assert_eq!(
            a.feed(&page(0, 50, &[(90, 20)])),
            Err(Error::PastCapacity {
                end: 110,
                capacity: 100
            })
        );
        assert_eq!(
            a.feed(&page(0, 50, &[(10, 10), (15, 2)])),
            Err(Error::AreasOutOfOrder {
                area: Extent::new(15, 2)
            })
        );
        assert_eq!(
            a.feed(&page(0, 50, &[(10, 10), (5, 2)])),
            Err(Error::AreasOutOfOrder {
                area: Extent::new(5, 2)
            })
        );
        // Rejected pages left no trace.
        assert_eq!(a.next_offset(), Some(0));
        assert_eq!(a.feed(&page(0, 50, &[(10, 10), (20, 5)])), Ok(Some(50)));
        assert_eq!(
            a.feed(&page(40, 10, &[])),
            Err(Error::Overlap {
                expected: 50,
                got: 40
            })
        );
        assert_eq!(
            a.clone().finish(),
            Err(Error::Incomplete {
                covered: 50,
                capacity: 100
            })
        );
        assert_eq!(a.feed(&page(50, 50, &[(99, 1)])), Ok(None));
        assert_eq!(a.feed(&page(100, 1, &[])), Err(Error::AfterEnd));
        assert_eq!(
            a.finish().unwrap().as_slice(),
            &[Extent::new(10, 15), Extent::new(99, 1)]
        );
        // An empty disk needs no answer.
        assert!(ChangeAssembler::new(0).finish().unwrap().is_empty());
    }
}
