//! Several threads on one handle: readers see each grain either before or
//! after a concurrent write, never torn, and never an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmdk_file::create::{create, CreateOptions, DiskType};
use vmdk_file::local::{LocalDisk, OpenOptions};

const GRAIN: usize = 65536;
const GRAINS: usize = 256;

fn fill(g: usize) -> u8 {
    (g % 250) as u8 + 1
}

#[test]
fn readers_while_one_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.vmdk");
    create(
        &path,
        &CreateOptions::new(DiskType::MonolithicSparse, (GRAINS * GRAIN) as u64),
    )
    .unwrap();
    let disk = Arc::new(
        LocalDisk::open(
            &path,
            &OpenOptions {
                writable: true,
                ..OpenOptions::default()
            },
        )
        .unwrap(),
    );
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let disk = Arc::clone(&disk);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; GRAIN * 2];
                let mut x = 0x1234_5678u64 + r;
                let mut reads = 0u64;
                while !done.load(Ordering::Acquire) || reads < 100 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let g = (x as usize) % (GRAINS - 1);
                    disk.read_at((g * GRAIN) as u64, &mut buf)
                        .expect("concurrent read");
                    for (k, chunk) in buf.chunks(GRAIN).enumerate() {
                        let want = fill(g + k);
                        let first = chunk[0];
                        assert!(first == 0 || first == want, "grain {}: {first}", g + k);
                        assert!(chunk.iter().all(|&b| b == first), "grain {} torn", g + k);
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for g in 0..GRAINS {
        disk.write_at((g * GRAIN) as u64, &vec![fill(g); GRAIN])
            .unwrap();
        if g % 64 == 0 {
            disk.flush().unwrap();
        }
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() >= 100);
    }
    let mut buf = vec![0u8; GRAIN];
    for g in 0..GRAINS {
        disk.read_at((g * GRAIN) as u64, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == fill(g)));
    }
    Arc::try_unwrap(disk).unwrap().close().unwrap();
    let report = vmdk_file::check::check_disk(&path, &OpenOptions::default()).unwrap();
    assert!(report.is_consistent(), "{report:?}");
}
