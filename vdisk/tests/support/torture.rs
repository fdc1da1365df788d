//! The crash test's workload: random writes (crossing grain boundaries,
//! some zero writes) with periodic flushes. Before each operation it logs
//! `w INDEX OFFSET LENGTH` or `z INDEX OFFSET LENGTH`; after each
//! completed flush `f INDEX`. The bytes of write INDEX at disk offset X
//! are [`byte_of`]`(INDEX, X)`.
//!
//! The crash test runs it in a child process it can SIGKILL: the test
//! binary itself, re-run on the single test `write::torture_workload`
//! with `VDISK_TORTURE="DISK SEED COUNT FLUSH_EVERY"` set, logging to
//! stderr (libtest prints its own lines on stdout). Test support, not a
//! tool: it ships in no binary.

use std::io::Write;
use std::path::Path;

use vmdk_file::local::{LocalDisk, OpenOptions};

/// The environment variable that makes `write::torture_workload` the child.
pub const ENV: &str = "VDISK_TORTURE";

/// The byte write `index` puts at disk offset `x`.
pub fn byte_of(index: u64, x: u64) -> u8 {
    ((x / 512).wrapping_mul(0x9E37) ^ index.wrapping_mul(131) ^ (x % 512)) as u8
}

/// Runs the workload on `disk`, logging to `out`; `Err` says what failed.
pub fn run(
    disk: &Path,
    seed: u64,
    count: u64,
    every: u64,
    out: &mut dyn Write,
) -> Result<(), String> {
    let every = every.max(1);
    let disk = LocalDisk::open(
        disk,
        &OpenOptions {
            writable: true,
            ..OpenOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let cap = disk.capacity();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut buf = Vec::new();
    for i in 1..=count {
        let len = 1 + next() % (200 << 10);
        let off = next() % (cap - len);
        let zero = next() % 8 == 0;
        log(
            out,
            &format!("{} {i} {off} {len}\n", if zero { 'z' } else { 'w' }),
        );
        let r = if zero {
            disk.write_zeroes(off, len)
        } else {
            buf.clear();
            buf.extend((off..off + len).map(|x| byte_of(i, x)));
            disk.write_at(off, &buf)
        };
        r.map_err(|e| format!("write {i}: {e}"))?;
        if i.is_multiple_of(every) {
            disk.flush().map_err(|e| format!("flush: {e}"))?;
            log(out, &format!("f {i}\n"));
        }
    }
    disk.close().map_err(|e| format!("close: {e}"))
}

/// One log line in one `write`: stderr is unbuffered, and a line written
/// in pieces could be cut by the kill.
fn log(out: &mut dyn Write, line: &str) {
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// In the child (`VDISK_TORTURE` set): runs the workload it names and
/// exits the process, never returning. Otherwise returns.
pub fn run_child_if_asked() {
    let Ok(args) = std::env::var(ENV) else {
        return;
    };
    let a: Vec<&str> = args.split(' ').collect();
    let parse = |s: &str| s.parse::<u64>().unwrap_or(1);
    let code = match a.as_slice() {
        [disk, seed, count, every] => {
            let mut err = std::io::stderr().lock();
            match run(
                Path::new(disk),
                parse(seed),
                parse(count),
                parse(every),
                &mut err,
            ) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(err, "torture: {e}");
                    1
                }
            }
        }
        _ => 2,
    };
    std::process::exit(code);
}
