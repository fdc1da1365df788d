//! QueryChangedDiskAreas assembly and change-id parsing on arbitrary
//! input: never a panic; an accepted sequence yields a normalised set
//! inside the capacity.
#![no_main]

use arbitrary::Arbitrary;
use cbt::{ChangeAssembler, ChangeId, DiskChangeInfo, Extent};

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u32,
    pages: Vec<(u32, u32, Vec<(u32, u32)>)>,
    change_id: String,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    if let Ok(id) = input.change_id.parse::<ChangeId>() {
        let again: ChangeId = id.to_string().parse().expect("printed ids parse");
        assert_eq!(again, id);
    }
    let capacity = u64::from(input.capacity);
    let mut asm = ChangeAssembler::new(capacity);
    for (start, len, areas) in input.pages.iter().take(64) {
        let page = DiskChangeInfo {
            start_offset: u64::from(*start),
            length: u64::from(*len),
            changed_areas: areas.iter().map(|&(s, n)| Extent::new(u64::from(s), u64::from(n))).collect(),
        };
        if asm.feed(&page).is_err() {
            continue;
        }
    }
    if let Ok(set) = asm.finish() {
        assert!(set.is_normalized());
        assert!(set.iter().all(|e| e.end() <= capacity));
    }
});
