//! Property tests against a deliberately naive model: one `bool` per byte
//! of a small disk. Every operation is compared with the model and the
//! normalisation invariant is checked after each one.

use cbt::plan::read_requests;
use cbt::{
    AllocationBitmap, BackupRecord, Catalog, ChangeAssembler, ChangeId, DiskChangeInfo, Extent,
    ExtentList,
};
use proptest::prelude::*;

const SPACE: u64 = 1024;
const CASES: u32 = 10_000;

type Model = Vec<bool>;

fn model_of(list: &ExtentList) -> Model {
    let mut m = vec![false; SPACE as usize];
    for e in list.iter() {
        for i in e.start..e.end() {
            m[i as usize] = true;
        }
    }
    m
}

fn model_from_raw(v: &[Extent]) -> Model {
    let mut m = vec![false; SPACE as usize];
    for e in v {
        for i in e.start..e.end().min(SPACE) {
            m[i as usize] = true;
        }
    }
    m
}

fn check(list: &ExtentList, model: &Model) -> Result<(), TestCaseError> {
    prop_assert!(list.is_normalized(), "not normalised: {:?}", list);
    prop_assert_eq!(&model_of(list), model);
    Ok(())
}

fn raw_extents() -> impl Strategy<Value = Vec<Extent>> {
    proptest::collection::vec(
        (0u64..900, 0u64..120).prop_map(|(s, n)| Extent::new(s, n)),
        0..12,
    )
}

fn list() -> impl Strategy<Value = ExtentList> {
    raw_extents().prop_map(ExtentList::from_unsorted)
}

#[derive(Debug, Clone)]
enum Op {
    Union(Vec<Extent>),
    Intersect(Vec<Extent>),
    Subtract(Vec<Extent>),
    Complement(u64),
    Clip(u64),
    Align(u64),
    Insert(Extent),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        raw_extents().prop_map(Op::Union),
        raw_extents().prop_map(Op::Intersect),
        raw_extents().prop_map(Op::Subtract),
        (0u64..SPACE).prop_map(Op::Complement),
        (0u64..SPACE).prop_map(Op::Clip),
        (0u64..40).prop_map(Op::Align),
        (0u64..900, 0u64..100).prop_map(|(s, n)| Op::Insert(Extent::new(s, n))),
    ]
}

fn apply_model(m: &Model, op: &Op) -> Model {
    let n = SPACE as usize;
    match op {
        Op::Union(v) => {
            let o = model_from_raw(v);
            (0..n).map(|i| m[i] || o[i]).collect()
        }
        Op::Intersect(v) => {
            let o = model_from_raw(v);
            (0..n).map(|i| m[i] && o[i]).collect()
        }
        Op::Subtract(v) => {
            let o = model_from_raw(v);
            (0..n).map(|i| m[i] && !o[i]).collect()
        }
        Op::Complement(c) => (0..n).map(|i| (i as u64) < *c && !m[i]).collect(),
        Op::Clip(c) => (0..n).map(|i| (i as u64) < *c && m[i]).collect(),
        Op::Align(b) => {
            if *b <= 1 {
                return m.clone();
            }
            let b = *b as usize;
            (0..n)
                .map(|i| (i / b * b..(i / b * b + b).min(n)).any(|j| m[j]))
                .collect()
        }
        Op::Insert(e) => {
            let mut o = m.clone();
            for i in e.start..e.end() {
                o[i as usize] = true;
            }
            o
        }
    }
}

fn apply(l: &ExtentList, op: &Op) -> ExtentList {
    match op {
        Op::Union(v) => l.union(&ExtentList::from_unsorted(v.clone())),
        Op::Intersect(v) => l.intersection(&ExtentList::from_unsorted(v.clone())),
        Op::Subtract(v) => l.difference(&ExtentList::from_unsorted(v.clone())),
        Op::Complement(c) => l.complement(*c),
        Op::Clip(c) => l.clip(*c),
        Op::Align(b) => l.align(*b).clip(SPACE),
        Op::Insert(e) => {
            let mut l = l.clone();
            l.insert(*e);
            l
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn normalise(v in raw_extents()) {
        check(&ExtentList::from_unsorted(v.clone()), &model_from_raw(&v))?;
        check(&ExtentList::from_sorted(v.clone()), &model_from_raw(&v))?;
    }

    #[test]
    fn set_operations(a in list(), b in list()) {
        let (ma, mb) = (model_of(&a), model_of(&b));
        let n = SPACE as usize;
        check(&a.union(&b), &(0..n).map(|i| ma[i] || mb[i]).collect())?;
        check(&a.intersection(&b), &(0..n).map(|i| ma[i] && mb[i]).collect())?;
        check(&a.difference(&b), &(0..n).map(|i| ma[i] && !mb[i]).collect())?;
        prop_assert_eq!(a.union(&b), b.union(&a));
        prop_assert_eq!(a.intersection(&b), b.intersection(&a));
    }

    #[test]
    fn sequences_of_operations(start in list(), ops in proptest::collection::vec(op(), 1..12)) {
        let mut l = start;
        let mut m = model_of(&l);
        for op in &ops {
            l = apply(&l, op);
            m = apply_model(&m, op);
            check(&l, &m)?;
        }
    }

    #[test]
    fn complement_and_clip(a in list(), cap in 0u64..SPACE) {
        let ma = model_of(&a);
        check(&a.complement(cap), &(0..SPACE as usize).map(|i| (i as u64) < cap && !ma[i]).collect())?;
        check(&a.clip(cap), &(0..SPACE as usize).map(|i| (i as u64) < cap && ma[i]).collect())?;
        for e in a.clip(cap).iter() {
            prop_assert!(e.end() <= cap);
        }
        prop_assert_eq!(a.clip(cap).total_len() + a.complement(cap).total_len(), cap);
    }

    #[test]
    fn split_covers_exactly(a in list(), max in 0u64..50) {
        let parts: Vec<Extent> = a.split(max).collect();
        for w in parts.windows(2) {
            prop_assert!(w[0].end() <= w[1].start);
        }
        for p in &parts {
            prop_assert!(!p.is_empty());
            if max > 0 {
                prop_assert!(p.len <= max);
            }
        }
        prop_assert_eq!(ExtentList::from_sorted(parts), a);
    }

    #[test]
    fn sectors_round_trip(v in proptest::collection::vec((0u64..1 << 30, 0u64..1 << 20), 0..10)) {
        let a = ExtentList::from_unsorted(v.iter().map(|&(s, n)| Extent::new(s, n)).collect());
        let sectors = a.to_sectors();
        prop_assert!(sectors.is_normalized());
        prop_assert_eq!(sectors.from_sectors(), a.align(512));
    }

    #[test]
    fn bitmap_round_trip(a in list(), cap in 1u64..SPACE, g in 1u64..80) {
        let b = AllocationBitmap::from_extents(&a, cap, g).unwrap();
        let back = b.to_extents();
        prop_assert!(back.is_normalized());
        prop_assert_eq!(&back, &a.clip(cap).align(g).clip(cap));
        let ma = model_of(&a.clip(cap));
        let blocks = (0..cap.div_ceil(g)).filter(|k| (k * g..((k + 1) * g).min(cap)).any(|i| ma[i as usize])).count() as u64;
        prop_assert_eq!(b.count_ones(), blocks);
    }

    #[test]
    fn read_requests_cover_the_changes(a in list(), cap in 1u64..SPACE, block in 1u64..64, max in 1u64..100) {
        let reqs = read_requests(&a, cap, block, max);
        let covered = ExtentList::from_sorted(reqs.iter().copied());
        prop_assert!(covered.intersection(&a.clip(cap)) == a.clip(cap));
        for r in &reqs {
            prop_assert!(r.len <= max && r.end() <= cap);
        }
    }

    #[test]
    fn assembly_of_random_pages(a in list(), cuts in proptest::collection::vec(1u64..SPACE, 0..6)) {
        let cap = SPACE;
        let a = a.clip(cap);
        let mut bounds: Vec<u64> = cuts;
        bounds.push(0);
        bounds.push(cap);
        bounds.sort_unstable();
        bounds.dedup();
        let mut asm = ChangeAssembler::new(cap);
        for w in bounds.windows(2) {
            let window = ExtentList::from_unsorted(vec![Extent::from_bounds(w[0], w[1])]);
            let areas = a.intersection(&window).into_vec();
            let next = asm.feed(&DiskChangeInfo { start_offset: w[0], length: w[1] - w[0], changed_areas: areas }).unwrap();
            prop_assert_eq!(next, (w[1] < cap).then_some(w[1]));
        }
        prop_assert_eq!(asm.finish().unwrap(), a);
    }

    #[test]
    fn restore_plan_matches_newest_wins(lists in proptest::collection::vec(list(), 1..8), cap in 1u64..SPACE) {
        let epoch = [3u8; 16];
        let mut cat = Catalog::new(cap);
        for (i, l) in lists.iter().enumerate() {
            let id = i as u64 + 1;
            let l = l.clip(cap);
            cat.backups.push(if i == 0 {
                BackupRecord::full(id, ChangeId::new(epoch, id), id, l)
            } else {
                BackupRecord::incremental(id, id - 1, ChangeId::new(epoch, id), id, l)
            });
        }
        let last = lists.len() as u64;
        let plan = cat.restore_plan(last).unwrap();
        // Model: for each byte, the newest backup storing it.
        let mut owner = vec![0u64; cap as usize];
        for b in &cat.backups {
            for e in b.extents.iter() {
                for i in e.start..e.end() {
                    owner[i as usize] = b.id;
                }
            }
        }
        let mut got = vec![0u64; cap as usize];
        let mut prev_end = 0;
        for r in &plan.reads {
            prop_assert!(r.extent.start >= prev_end && !r.extent.is_empty());
            prev_end = r.extent.end();
            for i in r.extent.start..r.extent.end() {
                got[i as usize] = r.backup;
            }
        }
        prop_assert_eq!(&got, &owner);
        for w in plan.reads.windows(2) {
            prop_assert!(!(w[0].backup == w[1].backup && w[0].extent.end() == w[1].extent.start), "not minimal");
        }
        let holes = model_of(&plan.holes);
        for i in 0..cap as usize {
            prop_assert_eq!(holes[i], owner[i] == 0);
        }
    }
}
