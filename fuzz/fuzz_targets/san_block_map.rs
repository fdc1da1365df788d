//! The SAN block map a host reports: validation never panics, and a valid
//! map resolves any range into pieces that add up, or a typed error.
#![no_main]

use arbitrary::Arbitrary;
use transport_san::{BlockMap, LunExtent};

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u64,
    extents: Vec<(u64, u64, u64)>,
    ranges: Vec<(u64, u64)>,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let extents = input
        .extents
        .iter()
        .take(64)
        .map(|&(v, l, n)| LunExtent {
            virtual_offset: v,
            lun_offset: l,
            len: n,
        })
        .collect();
    let Ok(map) = BlockMap::new("naa.6000", input.capacity, extents) else {
        return;
    };
    let _ = map.is_complete();
    for &(offset, len) in input.ranges.iter().take(16) {
        if let Ok(pieces) = map.resolve(offset, len) {
            assert_eq!(pieces.iter().map(|p| p.1).sum::<u64>(), len);
        }
    }
});
