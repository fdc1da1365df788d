//! Arbitrary sequences of extent-list operations, checked after every
//! step against a dense bitmap model: the list stays sorted, coalesced,
//! inside its capacity, and equal to the model.
#![no_main]

use arbitrary::Arbitrary;
use cbt::{AllocationBitmap, Extent, ExtentList};

const SPACE: u64 = 4096;

#[derive(Arbitrary, Debug)]
enum Op {
    Union(Vec<(u16, u16)>),
    Intersect(Vec<(u16, u16)>),
    Subtract(Vec<(u16, u16)>),
    Complement(u16),
    Clip(u16),
    Align(u8),
    Insert(u16, u16),
    BitmapRoundTrip(u8),
}

fn ext(v: &[(u16, u16)]) -> Vec<Extent> {
    v.iter()
        .map(|&(s, n)| {
            let s = u64::from(s) % SPACE;
            Extent::new(s, (u64::from(n) % 512).min(SPACE - s))
        })
        .collect()
}

fn model(v: &[Extent]) -> Vec<bool> {
    let mut m = vec![false; SPACE as usize];
    for e in v {
        for i in e.start..e.end().min(SPACE) {
            m[i as usize] = true;
        }
    }
    m
}

libfuzzer_sys::fuzz_target!(|ops: Vec<Op>| {
    let mut list = ExtentList::new();
    let mut m = vec![false; SPACE as usize];
    for op in ops.iter().take(64) {
        let n = SPACE as usize;
        match op {
            Op::Union(v) => {
                let o = model(&ext(v));
                list = list.union(&ExtentList::from_unsorted(ext(v)));
                m = (0..n).map(|i| m[i] || o[i]).collect();
            }
            Op::Intersect(v) => {
                let o = model(&ext(v));
                list = list.intersection(&ExtentList::from_unsorted(ext(v)));
                m = (0..n).map(|i| m[i] && o[i]).collect();
            }
            Op::Subtract(v) => {
                let o = model(&ext(v));
                list = list.difference(&ExtentList::from_unsorted(ext(v)));
                m = (0..n).map(|i| m[i] && !o[i]).collect();
            }
            Op::Complement(c) => {
                let c = u64::from(*c) % SPACE;
                list = list.complement(c);
                m = (0..n).map(|i| (i as u64) < c && !m[i]).collect();
            }
            Op::Clip(c) => {
                let c = u64::from(*c) % SPACE;
                list = list.clip(c);
                m = (0..n).map(|i| (i as u64) < c && m[i]).collect();
            }
            Op::Align(b) => {
                let b = usize::from(*b % 64).max(1);
                list = list.align(b as u64).clip(SPACE);
                m = (0..n).map(|i| (i / b * b..(i / b * b + b).min(n)).any(|j| m[j])).collect();
            }
            Op::Insert(s, len) => {
                let e = Extent::new(u64::from(*s) % SPACE, u64::from(*len) % (SPACE - u64::from(*s) % SPACE));
                list.insert(e);
                for i in e.start..e.end() {
                    m[i as usize] = true;
                }
            }
            Op::BitmapRoundTrip(g) => {
                let g = u64::from(*g).max(1);
                let bm = AllocationBitmap::from_extents(&list, SPACE, g).expect("small bitmap");
                assert_eq!(bm.to_extents(), list.clip(SPACE).align(g).clip(SPACE));
            }
        }
        assert!(list.is_normalized(), "{list:?}");
        assert!(list.iter().all(|e| e.end() <= SPACE));
        assert_eq!(model(list.as_slice()), m);
    }
});
