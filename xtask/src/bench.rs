//! `cargo xtask bench`: throughput against peers measured in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{cargo, deps, root, run, Result};

const GIB: u64 = 1 << 30;
const RUNS: usize = 5;

pub(crate) fn run_bench(args: &[String]) -> Result {
    match args.first().map(String::as_str) {
        Some("read") => read(),
        Some("write") => write(),
        Some("nbd") => {
            let mut c = cargo();
            c.args(["bench", "-p", "transport-nbd", "--bench", "nbd"]);
            run(c)
        }
        Some("backup") => {
            let mut c = cargo();
            c.args(["bench", "-p", "disklib", "--bench", "backup"]);
            run(c)
        }
        Some("san") => {
            deps::ensure(&[deps::Group::Bench])?;
            let mut c = cargo();
            c.args(["bench", "-p", "transport-san", "--bench", "san"]);
            run(c)
        }
        Some("serve") => serve(),
        _ => Err("usage: cargo xtask bench read|write|nbd|backup|san|serve".into()),
    }
}

/// Installs the peers of `groups`, makes `target/NAME` and builds the
/// release `vdisk`: the work directory and the binary.
fn prepare(groups: &[deps::Group], name: &str) -> Result<(PathBuf, PathBuf)> {
    deps::ensure(groups)?;
    let dir = root().join("target").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut c = cargo();
    c.args(["build", "--release", "-p", "vdisk"]);
    run(c)?;
    Ok((dir, root().join("target/release/vdisk")))
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
    let (dir, vdisk) = prepare(&[deps::Group::Bench], "bench-read")?;
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

/// A 1 GiB raw image whose data half is compressible: executable code,
/// libraries and text from this machine (like a real system disk), in
/// alternating 1 MiB chunks with holes.
fn make_mixed_raw(path: &Path) -> Result {
    if path.exists() {
        return Ok(());
    }
    use std::io::{Seek, SeekFrom, Write};
    let mut sources: Vec<PathBuf> = Vec::new();
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/bin",
        "/usr/share/doc",
        "/usr/share/common-licenses",
    ] {
        let mut stack = vec![PathBuf::from(dir)];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() && stack.len() < 64 => stack.push(p),
                    Ok(t) if t.is_file() => sources.push(p),
                    _ => {}
                }
            }
        }
    }
    sources.sort();
    let mut corpus = Vec::with_capacity(512 << 20);
    for p in sources {
        if corpus.len() >= 512 << 20 {
            break;
        }
        if let Ok(b) = std::fs::read(&p) {
            corpus.extend_from_slice(&b[..b.len().min((512 << 20) - corpus.len())]);
        }
    }
    if corpus.len() < 1 << 20 {
        return Err("not enough files on this machine to build the mixed image".into());
    }
    let mut f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut at = 0usize;
    for i in 0..(GIB >> 20) {
        if i % 2 == 0 {
            let mut chunk = Vec::with_capacity(1 << 20);
            while chunk.len() < 1 << 20 {
                let take = ((1 << 20) - chunk.len()).min(corpus.len() - at);
                chunk.extend_from_slice(&corpus[at..at + take]);
                at = (at + take) % corpus.len();
            }
            f.write_all(&chunk).map_err(|e| e.to_string())?;
        } else {
            f.seek(SeekFrom::Current(1 << 20))
                .map_err(|e| e.to_string())?;
        }
    }
    f.set_len(GIB).map_err(|e| e.to_string())
}

fn write() -> Result {
    let (dir, vdisk) = prepare(&[deps::Group::Bench], "bench-read")?;
    let raw = dir.join("half.raw");
    make_raw(&raw)?;
    let mixed = dir.join("mixed.raw");
    make_mixed_raw(&mixed)?;
    let out_dir = dir.join("write-out");
    println!("convert a 1 GiB raw image (half data, half holes), median of {RUNS} runs");
    println!("  random: the data is incompressible; mixed: libraries, binaries and text");
    let mut failures = Vec::new();
    for (sub, want, raw, label) in [
        ("streamOptimized", 3.0, &raw, "random"),
        ("streamOptimized", 3.0, &mixed, "mixed"),
        ("monolithicSparse", 1.0, &raw, "random"),
    ] {
        sh(Command::new("cat")
            .arg(raw)
            .stdout(std::process::Stdio::null()))?;
        let clean = || {
            let _ = std::fs::remove_dir_all(&out_dir);
            std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())
        };
        let target = out_dir.join("out.vmdk");
        let ours = time_with(&clean, || {
            let mut c = Command::new(&vdisk);
            c.args(["convert", "-t", sub]).arg(raw).arg(&target);
            c
        })?;
        let qemu = time_with(&clean, || {
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-f", "raw", "-O", "vmdk", "-o"])
                .arg(format!("subformat={sub}"))
                .arg(raw)
                .arg(&target);
            c
        })?;
        let mbs = |t: f64| GIB as f64 / t / 1e6;
        let ratio = qemu / ours;
        println!(
            "{label:<6} raw -> {sub:<17} vdisk {:>6.0} MB/s   qemu-img {:>6.0} MB/s   ratio {ratio:.2}   (target >= {want:.1} x qemu-img)",
            mbs(ours),
            mbs(qemu)
        );
        if ratio < want {
            failures.push(format!("{label} {sub}: {ratio:.2} < {want}"));
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

/// A child process killed when dropped (the servers `bench serve` starts).
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until a Unix socket exists (the server is listening).
fn wait_for(sock: &Path) -> Result {
    for _ in 0..500 {
        if sock.exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!("{} never appeared", sock.display()))
}

/// `vdisk serve DISK` on a Unix socket, and its URI.
fn vdisk_serve(vdisk: &Path, disk: &Path, sock: &Path) -> Result<(Daemon, String)> {
    use std::io::BufRead;
    let _ = std::fs::remove_file(sock);
    let mut child = Command::new(vdisk)
        .arg("serve")
        .arg(disk)
        .arg("--socket")
        .arg(sock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let uri = line
        .trim_end()
        .strip_prefix("NBD_URI=")
        .ok_or_else(|| format!("vdisk serve printed {line:?}"))?
        .to_string();
    Ok((Daemon(child), uri))
}

/// A peer server started with `args`, listening on `sock`.
fn peer_serve(program: &str, args: &[&str], sock: &Path) -> Result<Daemon> {
    let _ = std::fs::remove_file(sock);
    let child = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let d = Daemon(child);
    wait_for(sock)?;
    Ok(d)
}

/// Median seconds of `nbdcopy URI null:`.
fn nbdcopy_time(uri: &str) -> Result<f64> {
    time(|| {
        let mut c = Command::new("nbdcopy");
        c.args([uri, "null:"]);
        c
    })
}

/// A directory tree of about 1 GiB: 16 directories of 32 files of 2 MiB
/// (half incompressible, half text-like), with a few small files.
fn make_tree(root: &Path) -> Result {
    if root.join(".complete").exists() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(root);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut buf = vec![0u8; 2 << 20];
    for d in 0..16 {
        let dir = root.join(format!("dir{d:02}/sub"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("README"), format!("directory {d}\n"))
            .map_err(|e| e.to_string())?;
        for f in 0..32 {
            for b in buf.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let word = if f % 2 == 0 {
                    state.to_le_bytes()
                } else {
                    *b"text row"
                };
                b.copy_from_slice(&word);
            }
            std::fs::write(dir.join(format!("file{f:02}.bin")), &buf).map_err(|e| e.to_string())?;
        }
    }
    std::fs::write(root.join(".complete"), b"").map_err(|e| e.to_string())
}

fn serve() -> Result {
    let (dir, vdisk) = prepare(&[deps::Group::Test, deps::Group::Bench], "bench-serve")?;
    let raw = dir.join("half.raw");
    make_raw(&raw)?;
    let mut failures = Vec::new();
    let mbs = |s: f64| GIB as f64 / s / 1e6;

    println!("nbdcopy of a 1 GiB disk (half data, half holes) to null:, median of {RUNS} runs");
    for (sub, peer) in [
        ("monolithicSparse", "qemu-nbd"),
        ("monolithicFlat", "nbdkit file"),
    ] {
        let img = dir.join(format!("{sub}.vmdk"));
        if !img.exists() {
            sh(Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "vmdk", "-o"])
                .arg(format!("subformat={sub}"))
                .arg(&raw)
                .arg(&img))?;
        }
        sh(Command::new("cat")
            .arg(&img)
            .stdout(std::process::Stdio::null()))?;
        let sock = dir.join("ours.sock");
        let (ours_d, uri) = vdisk_serve(&vdisk, &img, &sock)?;
        let ours = nbdcopy_time(&uri)?;
        drop(ours_d);
        let psock = dir.join("peer.sock");
        let ps = psock.to_string_lossy().to_string();
        let (peer_d, target) = if sub == "monolithicFlat" {
            let flat = img.to_string_lossy().replace(".vmdk", "-flat.vmdk");
            let d = peer_serve(
                "nbdkit",
                &["-f", "-r", "-U", &ps, "file", &format!("file={flat}")],
                &psock,
            )?;
            (d, 0.9)
        } else {
            let img_s = img.to_string_lossy().to_string();
            let d = peer_serve(
                "qemu-nbd",
                &["-r", "-t", "-e", "4", "-f", "vmdk", "-k", &ps, &img_s],
                &psock,
            )?;
            (d, 1.5)
        };
        let peer_uri = format!("nbd+unix:///?socket={ps}");
        let theirs = nbdcopy_time(&peer_uri)?;
        drop(peer_d);
        let ratio = theirs / ours;
        println!(
            "{sub:<18} vdisk serve {:>7.0} MB/s   {peer} {:>7.0} MB/s   ratio {ratio:.2} (target >= {target:.2})",
            mbs(ours),
            mbs(theirs)
        );
        if ratio < target {
            failures.push(format!("{sub}: {ratio:.2} x {peer} < {target:.2}"));
        }
    }

    // A 1 GiB tree out of an ext4 volume: vdisk get vs debugfs rdump.
    let tree = dir.join("tree");
    make_tree(&tree)?;
    let ext = dir.join("ext4.raw");
    let ext_vmdk = dir.join("ext4.vmdk");
    if !ext_vmdk.exists() {
        let _ = std::fs::remove_file(&ext);
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "bench", "-d"])
            .arg(&tree)
            .arg(&ext)
            .arg("1400M"))?;
        sh(Command::new(&vdisk)
            .args(["convert", "-t", "monolithicSparse"])
            .arg(&ext)
            .arg(&ext_vmdk))?;
    }
    sh(Command::new("cat")
        .arg(&ext)
        .stdout(std::process::Stdio::null()))?;
    sh(Command::new("cat")
        .arg(&ext_vmdk)
        .stdout(std::process::Stdio::null()))?;
    // Both write to the disk the repository would be on, each run after
    // a sync, so one run's write-back does not land in the next.
    let out = dir.join("get-out");
    let clean = || {
        let _ = std::fs::remove_dir_all(&out);
        let _ = Command::new("sync").status();
    };
    let ours = time(|| {
        clean();
        let mut c = Command::new(&vdisk);
        c.arg("get").arg(&ext_vmdk).args(["/", "-o"]).arg(&out);
        c
    })?;
    let theirs = time(|| {
        clean();
        let _ = std::fs::create_dir_all(&out);
        let mut c = Command::new("debugfs");
        c.args(["-R", &format!("rdump / {}", out.display())])
            .arg(&ext);
        c
    })?;
    clean();
    let ratio = theirs / ours;
    println!(
        "get a 1 GiB tree from ext4: vdisk get {:>7.0} MB/s   debugfs rdump {:>7.0} MB/s   ratio {ratio:.2} (target >= 2.00)",
        mbs(ours),
        mbs(theirs)
    );
    if ratio < 2.0 {
        failures.push(format!("get: {ratio:.2} x debugfs < 2.00"));
    }
    if failures.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", failures.join("; "));
    }
    Ok(())
}
