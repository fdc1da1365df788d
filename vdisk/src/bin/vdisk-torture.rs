//! `vdisk-torture DISK SEED COUNT FLUSH_EVERY`: random writes (crossing
//! grain boundaries, some zero writes) with periodic flushes, for
//! crash-consistency testing. Before each operation it prints
//! `w INDEX OFFSET LENGTH` or `z INDEX OFFSET LENGTH`; after each
//! completed flush `f INDEX`. The bytes of write INDEX at disk offset X
//! are [`byte_of`]`(INDEX, X)`.

use std::io::Write;
use std::process::ExitCode;

use disklib::local::{LocalDisk, OpenOptions};

/// The byte write `index` puts at disk offset `x`.
fn byte_of(index: u64, x: u64) -> u8 {
    ((x / 512).wrapping_mul(0x9E37) ^ index.wrapping_mul(131) ^ (x % 512)) as u8
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: vdisk-torture DISK SEED COUNT FLUSH_EVERY");
        return ExitCode::from(1);
    }
    let parse = |s: &str| s.parse::<u64>().unwrap_or(1);
    let (seed, count, every) = (parse(&args[2]), parse(&args[3]), parse(&args[4]).max(1));
    let disk = match LocalDisk::open(
        &args[1],
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vdisk-torture: {e}");
            return ExitCode::from(1);
        }
    };
    let cap = disk.capacity();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    for i in 1..=count {
        let len = 1 + next() % (200 << 10);
        let off = next() % (cap - len);
        let zero = next() % 8 == 0;
        let _ = writeln!(out, "{} {i} {off} {len}", if zero { 'z' } else { 'w' });
        let _ = out.flush();
        let r = if zero {
            disk.write_zeroes(off, len)
        } else {
            buf.clear();
            buf.extend((off..off + len).map(|x| byte_of(i, x)));
            disk.write_at(off, &buf)
        };
        if let Err(e) = r {
            eprintln!("vdisk-torture: write {i}: {e}");
            return ExitCode::from(1);
        }
        if i.is_multiple_of(every) {
            if let Err(e) = disk.flush() {
                eprintln!("vdisk-torture: flush: {e}");
                return ExitCode::from(1);
            }
            let _ = writeln!(out, "f {i}");
            let _ = out.flush();
        }
    }
    match disk.close() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vdisk-torture: close: {e}");
            ExitCode::from(1)
        }
    }
}
