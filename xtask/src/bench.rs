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
        Some("repo") => repo(),
        _ => Err("usage: cargo xtask bench read|write|nbd|backup|san|serve|repo".into()),
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
    Ok((dir, target_dir().join("release/vdisk")))
}

/// Where cargo puts its builds: `CARGO_TARGET_DIR` (relative to the
/// workspace root when relative), else `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root().join(d),
        _ => root().join("target"),
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
fn time(make: impl FnMut() -> Command) -> Result<f64> {
    median(RUNS, &|| Ok(()), make)
}

/// Median wall time of `runs` runs of a command, in seconds, running
/// `prepare` before each run (outside the timing).
fn median(
    runs: usize,
    prepare: &dyn Fn() -> Result,
    mut make: impl FnMut() -> Command,
) -> Result<f64> {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        prepare()?;
        let mut c = make();
        let t = Instant::now();
        sh(&mut c)?;
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[runs / 2])
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

/// Up to `limit` bytes of this machine's executables, libraries and
/// text (sorted by path), for images whose data compresses like a system
/// disk's.
fn corpus(limit: usize) -> Result<Vec<u8>> {
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
    let mut corpus = Vec::with_capacity(limit);
    for p in sources {
        if corpus.len() >= limit {
            break;
        }
        if let Ok(b) = std::fs::read(&p) {
            corpus.extend_from_slice(&b[..b.len().min(limit - corpus.len())]);
        }
    }
    if corpus.len() < 1 << 20 {
        return Err("not enough files on this machine to build the mixed image".into());
    }
    Ok(corpus)
}

/// A 1 GiB raw image whose data half is compressible: executable code,
/// libraries and text from this machine (like a real system disk), in
/// alternating 1 MiB chunks with holes.
fn make_mixed_raw(path: &Path) -> Result {
    if path.exists() {
        return Ok(());
    }
    use std::io::{Seek, SeekFrom, Write};
    let corpus = corpus(512 << 20)?;
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

/// A contender of [`interleaved`]: a `prepare` run outside the timing,
/// then the timed command.
type Contender<'a> = (&'a dyn Fn() -> Result, &'a dyn Fn() -> Command);

/// The sorted wall times, in seconds, of `runs` interleaved rounds in
/// which every contender runs once: load from other processes on the
/// machine falls on all of them alike.
fn interleaved(runs: usize, contenders: &[Contender<'_>]) -> Result<Vec<Vec<f64>>> {
    let mut times = vec![Vec::with_capacity(runs); contenders.len()];
    for _ in 0..runs {
        for ((prepare, make), v) in contenders.iter().zip(&mut times) {
            prepare()?;
            let mut c = make();
            let t = Instant::now();
            sh(&mut c)?;
            v.push(t.elapsed().as_secs_f64());
        }
    }
    for v in &mut times {
        v.sort_by(f64::total_cmp);
    }
    Ok(times)
}

/// `1.23 s (1.20 / 1.23 / 1.31)`: a median and the runs it came from.
fn runs_text(v: &[f64]) -> String {
    let all: Vec<String> = v.iter().map(|t| format!("{t:.2}")).collect();
    format!("{:.2} s ({})", v[v.len() / 2], all.join(" / "))
}

/// Like [`time`], running `prepare` before each run (outside the timing).
fn time_with(prepare: &dyn Fn() -> Result, make: impl FnMut() -> Command) -> Result<f64> {
    median(RUNS, prepare, make)
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

const MIB: u64 = 1 << 20;
/// `bench repo`'s disk: 2 GiB virtual.
const REPO_DISK: u64 = 2 * GIB;
/// `bench repo` takes medians of 3 interleaved rounds (each backup into a
/// fresh repository takes seconds).
const REPO_RUNS: usize = 3;
/// The passphrase of both repositories (`VDISK_PASSPHRASE`,
/// `RESTIC_PASSWORD`).
const REPO_PASSPHRASE: &str = "bench repo passphrase";

/// xorshift64: incompressible bytes, the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.chunks_exact_mut(8) {
            b.copy_from_slice(&self.next().to_le_bytes());
        }
    }
}

/// Whether MiB `i` of `bench repo`'s disk holds data: the first 12 MiB
/// of every 20 (60 %), so the 8 MiB between are two whole 4 MiB chunks
/// of hole, like free space on a real disk.
fn repo_data_mib(i: u64) -> bool {
    i % 20 < 12
}

/// `bench repo`'s 2 GiB raw image, written sparse (holes are file holes):
/// data in the MiBs [`repo_data_mib`] picks, alternately 1 MiB of this
/// machine's binaries and libraries (compressible) and 1 MiB of
/// incompressible bytes. Past the end of the corpus the corpus comes
/// round again with its bytes xored with a pass number, so no 4 MiB chunk
/// (or content-defined one) repeats and neither tool gains from
/// deduplication within the full backup. Returns the bytes of data.
fn make_repo_raw(path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    let corpus = corpus(512 << 20)?;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut chunk = vec![0u8; MIB as usize];
    let (mut at, mut pass, mut data, mut k) = (0usize, 0u8, 0u64, 0u64);
    for i in 0..REPO_DISK / MIB {
        if !repo_data_mib(i) {
            f.seek(SeekFrom::Current(MIB as i64))
                .map_err(|e| e.to_string())?;
            continue;
        }
        if k % 2 == 0 {
            let key = pass.wrapping_mul(0x9D);
            for b in chunk.iter_mut() {
                *b = corpus[at] ^ key;
                at += 1;
                if at == corpus.len() {
                    at = 0;
                    pass = pass.wrapping_add(1);
                }
            }
        } else {
            rng.fill(&mut chunk);
        }
        k += 1;
        f.write_all(&chunk).map_err(|e| e.to_string())?;
        data += MIB;
    }
    f.set_len(REPO_DISK).map_err(|e| e.to_string())?;
    Ok(data)
}

/// Rewrites `count` distinct `len`-aligned runs of `len` bytes of `path`
/// with new incompressible bytes, at offsets drawn from `seed`. Returns
/// the bytes changed.
fn rewrite_runs(path: &Path, count: u64, len: u64, seed: u64) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    let slots = REPO_DISK / len;
    let mut rng = XorShift(seed);
    let mut picked = std::collections::BTreeSet::new();
    while (picked.len() as u64) < count {
        picked.insert(rng.next() % slots);
    }
    let mut buf = vec![0u8; len as usize];
    for slot in &picked {
        rng.fill(&mut buf);
        f.write_all_at(&buf, slot * len)
            .map_err(|e| e.to_string())?;
    }
    f.sync_all().map_err(|e| e.to_string())?;
    Ok(count * len)
}

/// `M` of the `stored M` in `vdisk backup`'s summary line.
fn stored_bytes(out: &str) -> Option<u64> {
    let rest = out.split(", stored ").nth(1)?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// One `vdisk backup --file DISK --to REPO`: the bytes it stored.
fn vdisk_backup(vdisk: &Path, disk: &Path, repo: &Path) -> Result<u64> {
    let out = Command::new(vdisk)
        .env("VDISK_PASSPHRASE", REPO_PASSPHRASE)
        .arg("backup")
        .arg("--file")
        .arg(disk)
        .arg("--to")
        .arg(repo)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "vdisk backup failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    stored_bytes(&text).ok_or_else(|| format!("no `stored N` in vdisk backup's {text:?}"))
}

/// The bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The 1-minute load average (`uptime`'s first figure): how busy the two
/// cores were.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// `bench repo`: backups into repository format 2 against restic, the
/// incremental's stored bytes against the bytes changed, and restore
/// against `vdisk cat`.
fn repo() -> Result {
    let (dir, vdisk) = prepare(&[deps::Group::Bench], "bench-repo")?;
    let result = repo_in(&dir, &vdisk);
    // The image, the repositories and the outputs are gigabytes.
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn repo_in(dir: &Path, vdisk: &Path) -> Result {
    let raw = dir.join("disk.raw");
    let disk = dir.join("disk.vmdk");
    println!("load average at the start: {}", load());
    let data = make_repo_raw(&raw)?;
    std::fs::write(
        &disk,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=11111111\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n\n# Extent description\n\
             RW {} FLAT \"disk.raw\" 0\n\n# The Disk Data Base\n#DDB\n\n\
             ddb.adapterType = \"lsilogic\"\n",
            REPO_DISK / 512
        ),
    )
    .map_err(|e| e.to_string())?;
    let repo = dir.join("repo");
    let restic_repo = dir.join("restic");
    let mbs = |s: f64| REPO_DISK as f64 / s / 1e6;
    let mut failures = Vec::new();
    let mut check = |what: &str, ratio: f64, ok: bool, target: &str| {
        println!("  {what}: {ratio:.2} (target {target})");
        if !ok {
            failures.push(format!("{what}: {ratio:.2}, target {target}"));
        }
    };

    // 1. Full backup into a fresh repository, against restic --stdin.
    println!(
        "1. full backup of a 2 GiB disk ({} MiB data: half binaries, half random; the rest holes), \
         median of {REPO_RUNS} runs, each into a fresh repository",
        data / MIB
    );
    sh(Command::new("cat")
        .arg(&raw)
        .stdout(std::process::Stdio::null()))?;
    let fresh_vdisk = || {
        let _ = std::fs::remove_dir_all(&repo);
        sh(Command::new(vdisk)
            .env("VDISK_PASSPHRASE", REPO_PASSPHRASE)
            .args(["repo", "init"])
            .arg(&repo)
            .args([
                "--encryption",
                "repokey",
                "--chunk-size",
                "4M",
                "--compression",
                "3",
            ]))
    };
    let restic_env = |c: &mut Command| {
        c.env("RESTIC_REPOSITORY", &restic_repo)
            .env("RESTIC_PASSWORD", REPO_PASSPHRASE)
            .env("RESTIC_CACHE_DIR", dir.join("restic-cache"));
    };
    let fresh_restic = || {
        let _ = std::fs::remove_dir_all(&restic_repo);
        let mut c = Command::new("restic");
        restic_env(&mut c);
        sh(c.args(["init", "--no-cache", "-q"]))
    };
    let backup_vdisk = || {
        let mut c = Command::new(vdisk);
        c.env("VDISK_PASSPHRASE", REPO_PASSPHRASE)
            .arg("backup")
            .arg("--file")
            .arg(&disk)
            .arg("--to")
            .arg(&repo);
        c
    };
    let backup_restic = || {
        let mut c = Command::new("sh");
        restic_env(&mut c);
        c.arg("-c")
            .arg("cat \"$1\" | restic backup --no-cache -q --stdin --stdin-filename disk.raw")
            .arg("sh")
            .arg(&raw);
        c
    };
    let t = interleaved(
        REPO_RUNS,
        &[
            (&fresh_vdisk, &backup_vdisk),
            (&fresh_restic, &backup_restic),
        ],
    )?;
    let (ours, theirs) = (t[0][REPO_RUNS / 2], t[1][REPO_RUNS / 2]);
    println!(
        "  vdisk {}, restic {} (interleaved rounds)",
        runs_text(&t[0]),
        runs_text(&t[1])
    );
    // The last vdisk run's repository holds the full backup the
    // incrementals below build on.
    let full_repo = du(&repo);
    println!(
        "  vdisk backup {:>6.0} MB/s   restic backup --stdin {:>6.0} MB/s (of the 2 GiB image)",
        mbs(ours),
        mbs(theirs)
    );
    println!(
        "  repository size: vdisk {:.0} MB, restic (compression auto) {:.0} MB, of {:.0} MB data",
        full_repo as f64 / 1e6,
        du(&restic_repo) as f64 / 1e6,
        data as f64 / 1e6
    );
    let ratio = theirs / ours;
    check("throughput vs restic", ratio, ratio >= 1.5, ">= 1.5");
    let _ = std::fs::remove_dir_all(&restic_repo);

    // 2. An incremental after 5 % of the disk changed: 26 runs of 4 MiB
    // at 4 MiB-aligned offsets (a guest rewriting files: the chunks are
    // 4 MiB aligned).
    let changed = rewrite_runs(&raw, 26, 4 * MIB, 0x5EED_0001)?;
    let stored = vdisk_backup(vdisk, &disk, &repo)?;
    println!(
        "2. incremental after rewriting 26 x 4 MiB at random 4 MiB-aligned offsets ({} MiB, {:.1} % of the disk)",
        changed / MIB,
        changed as f64 * 100.0 / REPO_DISK as f64
    );
    println!("  stored {stored} bytes for {changed} bytes changed");
    let ratio = stored as f64 / changed as f64;
    check("stored / changed", ratio, ratio <= 1.1, "<= 1.1");

    // 3. Restore of that point against `vdisk cat` of the disk, both
    // written to a file beside the image, each run after a sync.
    println!(
        "3. restore of that point vs vdisk cat of the 2 GiB flat disk, median of {REPO_RUNS} runs"
    );
    let out_vmdk = dir.join("restored.vmdk");
    let out_raw = dir.join("cat.raw");
    let clean = || {
        let _ = std::fs::remove_file(&out_vmdk);
        let _ = std::fs::remove_file(&out_raw);
        sh(&mut Command::new("sync"))
    };
    let restore = || {
        let mut c = Command::new(vdisk);
        c.env("VDISK_PASSPHRASE", REPO_PASSPHRASE)
            .arg("restore")
            .arg("--from")
            .arg(&repo)
            .args(["--backup", "latest", "--to"])
            .arg(&out_vmdk);
        c
    };
    let cat = || {
        let mut c = Command::new(vdisk);
        c.args(["cat", "-o"]).arg(&out_raw).arg(&disk);
        c
    };
    let t = interleaved(REPO_RUNS, &[(&clean, &restore), (&clean, &cat)])?;
    let (ours, theirs) = (t[0][REPO_RUNS / 2], t[1][REPO_RUNS / 2]);
    println!(
        "  restore {}, cat {} (interleaved rounds)",
        runs_text(&t[0]),
        runs_text(&t[1])
    );
    clean()?;
    println!(
        "  vdisk restore {:>6.0} MB/s   vdisk cat {:>6.0} MB/s (of the 2 GiB disk)",
        mbs(ours),
        mbs(theirs)
    );
    let ratio = theirs / ours;
    check("restore / cat", ratio, ratio >= 0.8, ">= 0.8");

    // Information only: the same kind of change as 1,300 scattered
    // 64 KiB writes, each dirtying a whole 4 MiB chunk.
    let changed = rewrite_runs(&raw, 1300, 64 << 10, 0x5EED_0002)?;
    let stored = vdisk_backup(vdisk, &disk, &repo)?;
    println!(
        "(information) incremental after 1,300 scattered 64 KiB writes ({:.1} MiB): stored {stored} bytes, \
         {:.2} x the bytes changed",
        changed as f64 / MIB as f64,
        stored as f64 / changed as f64
    );
    println!("load average at the end: {}", load());
    if failures.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_bytes_come_from_the_summary_line() {
        let line = "backup 20261201T211500Z-1a2b: read 1291845632 bytes, stored 112233, skipped 855638016, 410 MB/s in 3.15 s (disk 2000: file)\n";
        assert_eq!(super::stored_bytes(line), Some(112_233));
        assert_eq!(
            super::stored_bytes("restored backup x: 5 bytes written"),
            None
        );
    }

    #[test]
    fn the_repo_image_is_sixty_percent_data_with_whole_chunk_holes() {
        let mibs = super::REPO_DISK / super::MIB;
        let data = (0..mibs).filter(|&i| super::repo_data_mib(i)).count() as u64;
        assert_eq!(data * 1000 / mibs, 601);
        // MiBs 12..20 of every 20 (20 MiB being 5 chunks): two whole 4 MiB chunks.
        assert!((12..20).all(|i| !super::repo_data_mib(i)));
    }
}
