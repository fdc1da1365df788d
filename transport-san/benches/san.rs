//! `cargo xtask bench san`: 1 GiB read through the SAN transport from a
//! LUN image (the disk in two swapped runs, like the simulator's VMFS
//! layout), against `fio --direct=1 --rw=read --bs=1M --iodepth=16` and
//! `qemu-img convert -T none` into a null target on the same file, in one
//! run. Everything uses `O_DIRECT`, so the page cache plays no part.
//! Prints each throughput and our ratio to the better peer (target ≥ 0.9).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use transport_san::{BlockMap, LunExtent, SanDisk, SanOptions, ALIGN};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const RUNS: usize = 9;
const ID: &str = "naa.6000c29bec4ba5e0d1c2b3a495867f01";
fn streams() -> usize {
    std::env::var("SAN_BENCH_STREAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}
/// How much the caller asks for at once (a backup reads in batches).
const CALL: usize = 64 << 20;

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-san")
}

/// 1 GiB of incompressible data plus 1 MiB of volume header and a 1 MiB
/// gap between the two runs.
fn make_lun(path: &Path) -> std::io::Result<()> {
    let want = GIB + 2 * MIB;
    if std::fs::metadata(path).is_ok_and(|m| m.len() == want) {
        return Ok(());
    }
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut chunk = vec![0u8; MIB as usize];
    for _ in 0..want / MIB {
        for b in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk)?;
    }
    f.flush()?;
    f.get_ref().sync_all()
}

fn map() -> BlockMap {
    let half = GIB / 2;
    BlockMap::new(
        ID,
        GIB,
        vec![
            LunExtent {
                virtual_offset: 0,
                lun_offset: MIB + half + MIB,
                len: half,
            },
            LunExtent {
                virtual_offset: half,
                lun_offset: MIB,
                len: half,
            },
        ],
    )
    .expect("a valid map")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_cmd(make: impl Fn() -> Command) -> f64 {
    let mut c = make();
    let t = Instant::now();
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// A buffer whose start is `ALIGN`-aligned, as `O_DIRECT` callers (fio,
/// qemu, nbdkit) use: the transport then reads straight into it.
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + ALIGN as usize];
    let start = (ALIGN as usize - v.as_ptr() as usize % ALIGN as usize) % ALIGN as usize;
    (v, start)
}

fn main() {
    let dir = target_dir();
    std::fs::create_dir_all(dir.join("by-id")).expect("bench directory");
    let lun = dir.join("lun.img");
    make_lun(&lun).expect("LUN image");
    let entry = dir.join("by-id").join(ID);
    let _ = std::fs::remove_file(&entry);
    std::os::unix::fs::symlink(&lun, &entry).expect("device entry");
    let opts = SanOptions {
        device_dir: dir.join("by-id"),
        ..SanOptions::default()
    };
    let (mut store, start) = aligned(CALL);
    let mut check = 0u64;
    let mut ours_once = || {
        let t = Instant::now();
        let disk = SanDisk::open(map(), &opts).expect("open");
        let buf = &mut store[start..start + CALL];
        let mut at = 0;
        while at < GIB {
            disk.read_streams(at, buf, streams()).expect("read");
            at += CALL as u64;
        }
        check = check.wrapping_add(u64::from(buf[CALL - 1]));
        t.elapsed().as_secs_f64()
    };
    let fio_cmd = || {
        let mut c = Command::new("fio");
        c.args([
            "--name=san-peer",
            "--direct=1",
            "--rw=read",
            "--bs=1M",
            "--iodepth=16",
            "--ioengine=libaio",
            "--size=1G",
            "--offset=1M",
            "--output-format=terse",
        ])
        .arg(format!("--filename={}", lun.display()));
        c
    };
    let lun_len = std::fs::metadata(&lun).expect("LUN").len();
    let qemu_cmd = || {
        let mut c = Command::new("qemu-img");
        c.args(["convert", "-T", "none", "-n", "-f", "raw"])
            .arg(&lun)
            .args(["--target-image-opts"])
            .arg(format!("driver=null-co,size={lun_len}"));
        c
    };
    // Interleaved rounds, so drift in the storage below (a virtual disk
    // here) hits all three alike.
    let (mut o, mut f, mut q) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        o.push(ours_once());
        f.push(time_cmd(fio_cmd));
        q.push(time_cmd(qemu_cmd));
    }
    // Each round's ratio to the better peer of that round: paired, so
    // drift of the storage between rounds cancels out.
    let paired = median(
        o.iter()
            .zip(f.iter().zip(&q))
            .map(|(ours, (fio, qemu))| fio.min(*qemu) / ours)
            .collect(),
    );
    if std::env::var_os("SAN_BENCH_VERBOSE").is_some() {
        let mbs = |v: &[f64]| {
            v.iter()
                .map(|s| format!("{:.0}", GIB as f64 / s / 1e6))
                .collect::<Vec<_>>()
                .join(" ")
        };
        eprintln!(
            "rounds (MB/s of 1 GiB): ours {} | fio {} | qemu {}",
            mbs(&o),
            mbs(&f),
            mbs(&q)
        );
    }
    let (ours, fio, qemu) = (median(o), median(f), median(q));
    let mbs = |bytes: u64, s: f64| bytes as f64 / s / 1e6;
    let (ours_mbs, fio_mbs, qemu_mbs) = (mbs(GIB, ours), mbs(GIB, fio), mbs(lun_len, qemu));
    let better = fio_mbs.max(qemu_mbs);
    let ratio = ours_mbs / better;
    println!(
        "san read 1 GiB, O_DIRECT, median of {RUNS} (check {check}): san transport ({} streams) {ours_mbs:.0} MB/s   fio (1M, iodepth 16) {fio_mbs:.0} MB/s   qemu-img -T none {qemu_mbs:.0} MB/s",
        streams()
    );
    println!(
        "ratio vs the better peer ({}): {ratio:.2} (target >= 0.90){}; per-round (paired) median {paired:.2}",
        if fio_mbs >= qemu_mbs {
            "fio"
        } else {
            "qemu-img"
        },
        if ratio >= 0.9 { "" } else { "  MISSED" }
    );
}
