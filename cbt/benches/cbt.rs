//! Criterion benches for the extent math, each named with its target
//! (from `shared/notes/performance.md`).

use cbt::{BackupRecord, Catalog, ChangeId, Extent, ExtentList};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::hint::black_box;

const TIB: u64 = 1 << 40;

/// `n` random extents over 2 TiB, 64 KiB to 1 MiB long.
fn random_extents(n: usize, seed: u64) -> Vec<Extent> {
    let mut s = seed | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|_| {
            let start = next() % (2 * TIB) / 4096 * 4096;
            let len = 65536 + next() % (1 << 20) / 4096 * 4096;
            Extent::new(start, len)
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let raw = random_extents(1_000_000, 1);
    let a = ExtentList::from_unsorted(raw.clone());
    let b = ExtentList::from_unsorted(random_extents(1_000_000, 2));
    println!(
        "lists after coalescing: {} and {} extents",
        a.len(),
        b.len()
    );

    let mut g = c.benchmark_group("cbt");
    g.sample_size(20);
    g.bench_function(
        "sort+coalesce 1M extents over 2 TiB (target <= 50 ms)",
        |bn| {
            bn.iter_batched(
                || raw.clone(),
                |v| black_box(ExtentList::from_unsorted(v)),
                BatchSize::LargeInput,
            )
        },
    );
    g.bench_function("union of two ~770k lists (target <= 30 ms)", |bn| {
        bn.iter(|| black_box(a.union(&b)))
    });
    g.bench_function("intersection of two ~770k lists (target <= 20 ms)", |bn| {
        bn.iter(|| black_box(a.intersection(&b)))
    });
    g.bench_function("bitmap of 2 TiB at 64 KiB (target <= 40 ms)", |bn| {
        bn.iter(|| {
            let bm = cbt::AllocationBitmap::from_extents(&a, 2 * TIB, 65536).unwrap();
            black_box(bm.count_ones())
        })
    });

    let epoch = [5u8; 16];
    let mut cat = Catalog::new(2 * TIB);
    for i in 0..101u64 {
        let list = ExtentList::from_unsorted(random_extents(10_000, 100 + i));
        cat.backups.push(if i == 0 {
            BackupRecord::full(1, ChangeId::new(epoch, 1), 1, list)
        } else {
            BackupRecord::incremental(i + 1, i, ChangeId::new(epoch, i + 1), i + 1, list)
        });
    }
    g.bench_function(
        "restore plan, full + 100 incrementals of 10k extents (target <= 100 ms)",
        |bn| bn.iter(|| black_box(cat.restore_plan(101).unwrap())),
    );
    g.finish();
}

criterion_group!(cbt_benches, benches);
criterion_main!(cbt_benches);
