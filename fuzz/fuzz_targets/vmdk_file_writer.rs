//! The writer against a plain byte-array model: arbitrary writes, zero
//! writes, flushes and reopens on a small sparse disk (optionally a delta
//! over a parent with data), checked after every step.
#![no_main]

use std::path::PathBuf;

use arbitrary::Arbitrary;
use vmdk_file::create::{create, CreateOptions, DiskType};
use vmdk_file::local::{LocalDisk, OpenOptions};

const CAP: u64 = 1 << 20;

#[derive(Arbitrary, Debug)]
enum Op {
    Write { off: u32, len: u16, byte: u8 },
    Zero { off: u32, len: u32 },
    Flush,
    Reopen,
}

#[derive(Arbitrary, Debug)]
struct Input {
    delta: bool,
    ops: Vec<Op>,
}

fn dir() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let d = base.join(format!("vddk-fuzz-writer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rw() -> OpenOptions {
    OpenOptions { writable: true, ..OpenOptions::default() }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let d = dir();
    let mut model = vec![0u8; CAP as usize];
    let top = if input.delta {
        let base = d.join("base.vmdk");
        create(&base, &CreateOptions::new(DiskType::MonolithicSparse, CAP)).unwrap();
        let b = LocalDisk::open(&base, &rw()).unwrap();
        for (i, chunk) in model.chunks_mut(65536).enumerate().step_by(3) {
            chunk.fill(i as u8 + 1);
            b.write_at(i as u64 * 65536, chunk).unwrap();
        }
        b.close().unwrap();
        let child = d.join("child.vmdk");
        vmdk_file::maintain::create_child(&base, &child).unwrap();
        child
    } else {
        let p = d.join("disk.vmdk");
        create(&p, &CreateOptions::new(DiskType::MonolithicSparse, CAP)).unwrap();
        p
    };
    let mut disk = Some(LocalDisk::open(&top, &rw()).unwrap());
    for op in input.ops.iter().take(48) {
        let h = disk.as_ref().unwrap();
        match *op {
            Op::Write { off, len, byte } => {
                let off = u64::from(off) % CAP;
                let len = u64::from(len).min(CAP - off);
                let data = vec![byte; len as usize];
                h.write_at(off, &data).unwrap();
                model[off as usize..(off + len) as usize].fill(byte);
            }
            Op::Zero { off, len } => {
                let off = u64::from(off) % CAP;
                let len = u64::from(len).min(CAP - off);
                h.write_zeroes(off, len).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            Op::Flush => h.flush().unwrap(),
            Op::Reopen => {
                disk.take().unwrap().close().unwrap();
                disk = Some(LocalDisk::open(&top, &rw()).unwrap());
            }
        }
        let mut back = vec![0u8; CAP as usize];
        disk.as_ref().unwrap().read_at(0, &mut back).unwrap();
        assert!(back == model, "content differs from the model after {op:?}");
    }
    disk.take().unwrap().close().unwrap();
    let report = vmdk_file::check::check_disk(&top, &OpenOptions::default()).unwrap();
    assert!(report.is_consistent(), "{report:?}");
    let _ = std::fs::remove_dir_all(&d);
});
