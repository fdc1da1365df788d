//! `cargo xtask bench`: throughput against peers measured in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{cargo, root, run, Result};

const GIB: u64 = 1 << 30;
const RUNS: usize = 3;

pub(crate) fn run_bench(args: &[String]) -> Result {
    match args.first().map(String::as_str) {
        Some("read") => read(),
        Some("write") => write(),
        _ => Err("usage: cargo xtask bench read|write".into()),
    }
}

fn sh(cmd: &mut Command) -> Result {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Median wall time of `RUNS` runs of a command, in seconds.
fn time(mut make: impl FnMut() -> Command) -> Result<f64> {
    let mut v = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut c = make();
        let t = Instant::now();
        sh(&mut c)?;
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[RUNS / 2])
}

/// A 1 GiB raw image: alternating 1 MiB of incompressible data and 1 MiB
/// holes (half data, half holes).
fn make_raw(path: &Path) -> Result {
    if path.exists() {
        return Ok(());
    }
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..(GIB >> 20) {
        if i % 2 == 0 {
            for b in chunk.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b.copy_from_slice(&state.to_le_bytes());
            }
            f.write_all(&chunk).map_err(|e| e.to_string())?;
        } else {
            use std::io::{Seek, SeekFrom};
            f.seek(SeekFrom::Current(1 << 20))
                .map_err(|e| e.to_string())?;
        }
    }
    f.set_len(GIB).map_err(|e| e.to_string())
}

fn read() -> Result {
    let dir = root().join("target/bench-read");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut c = cargo();
    c.args(["build", "--release", "-p", "vdisk"]);
    run(c)?;
    let vdisk = root().join("target/release/vdisk");
    let raw = dir.join("half.raw");
    make_raw(&raw)?;
    let mut images: Vec<(&str, PathBuf)> = Vec::new();
    for sub in ["monolithicSparse", "streamOptimized", "monolithicFlat"] {
        let out = dir.join(format!("{sub}.vmdk"));
        if !out.exists() {
            eprintln!("xtask: creating {}", out.display());
            sh(Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "vmdk", "-o"])
                .arg(format!("subformat={sub}"))
                .arg(&raw)
                .arg(&out))?;
        }
        images.push((sub, out));
    }
    let null_opts = format!("driver=null-co,size={GIB}");
    println!("sequential read of 1 GiB virtual (half data, half holes), median of {RUNS} runs");
    let mut failures = Vec::new();
    for (sub, img) in &images {
        // Warm the page cache so every reader sees the same cache state.
        sh(Command::new("cat")
            .arg(img)
            .stdout(std::process::Stdio::null()))?;
        let ours = time(|| {
            let mut c = Command::new(&vdisk);
            c.args(["cat", "-o", "/dev/null"]).arg(img);
            c
        })?;
        let qemu = time(|| {
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-n", "-f", "vmdk"]).arg(img);
            c.args(["--target-image-opts", &null_opts]);
            c
        })?;
        let mbs = |s: f64| GIB as f64 / s / 1e6;
        let vs_qemu = qemu / ours;
        print!(
            "{sub:<18} vdisk {:>7.0} MB/s   qemu-img {:>7.0} MB/s   ratio vs qemu-img {vs_qemu:.2}",
            mbs(ours),
            mbs(qemu)
        );
        let target = match *sub {
            "monolithicSparse" => Some(("qemu-img", vs_qemu, 1.0)),
            "streamOptimized" => Some(("qemu-img", vs_qemu, 1.8)),
            _ => None,
        };
        if *sub == "monolithicFlat" {
            let flat = PathBuf::from(img.to_string_lossy().replace(".vmdk", "-flat.vmdk"));
            let dd = time(|| {
                let mut c = Command::new("dd");
                c.arg(format!("if={}", flat.display()))
                    .args(["of=/dev/null", "bs=1M"]);
                c
            })?;
            let vs_dd = dd / ours;
            print!("   dd {:>7.0} MB/s   ratio vs dd {vs_dd:.2}", mbs(dd));
            println!("   (target >= 0.90 x dd)");
            if vs_dd < 0.9 {
                failures.push(format!("{sub}: {vs_dd:.2} x dd < 0.90"));
            }
        } else if let Some((peer, ratio, want)) = target {
            println!("   (target >= {want:.2} x {peer})");
            if ratio < want {
                failures.push(format!("{sub}: {ratio:.2} x {peer} < {want:.2}"));
            }
        }
    }
    if failures.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", failures.join("; "));
    }
    Ok(())
}

fn write() -> Result {
    let dir = root().join("target/bench-read");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut c = cargo();
    c.args(["build", "--release", "-p", "vdisk"]);
    run(c)?;
    let vdisk = root().join("target/release/vdisk");
    let raw = dir.join("half.raw");
    make_raw(&raw)?;
    sh(Command::new("cat")
        .arg(&raw)
        .stdout(std::process::Stdio::null()))?;
    let out_dir = dir.join("write-out");
    println!(
        "convert a 1 GiB raw image (half incompressible data, half holes), median of {RUNS} runs"
    );
    let mut failures = Vec::new();
    for (sub, want) in [("streamOptimized", 3.0), ("monolithicSparse", 1.0)] {
        let clean = || {
            let _ = std::fs::remove_dir_all(&out_dir);
            std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())
        };
        let target = out_dir.join("out.vmdk");
        let ours = time_with(&clean, || {
            let mut c = Command::new(&vdisk);
            c.args(["convert", "-t", sub]).arg(&raw).arg(&target);
            c
        })?;
        let qemu = time_with(&clean, || {
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-f", "raw", "-O", "vmdk", "-o"])
                .arg(format!("subformat={sub}"))
                .arg(&raw)
                .arg(&target);
            c
        })?;
        let mbs = |t: f64| GIB as f64 / t / 1e6;
        let ratio = qemu / ours;
        println!(
            "raw -> {sub:<17} vdisk {:>6.0} MB/s   qemu-img {:>6.0} MB/s   ratio {ratio:.2}   (target >= {want:.1} x qemu-img)",
            mbs(ours),
            mbs(qemu)
        );
        if ratio < want {
            failures.push(format!("{sub}: {ratio:.2} < {want}"));
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    if failures.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", failures.join("; "));
    }
    Ok(())
}

/// Like [`time`], running `prepare` before each run (outside the timing).
fn time_with(prepare: &dyn Fn() -> Result, mut make: impl FnMut() -> Command) -> Result<f64> {
    let mut v = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        prepare()?;
        let mut c = make();
        let t = Instant::now();
        sh(&mut c)?;
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[RUNS / 2])
}
