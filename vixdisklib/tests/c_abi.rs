//! The C ABI from C: `tests/c/vixtest.c`, compiled with gcc against our
//! header and `libvixDiskLib.so.8`, follows nbdkit's call sequence on
//! local disks and on simulator disks over nbd and nbdssl; the data is
//! checked against qemu-img. The same program runs under valgrind, and a
//! Python ctypes plugin serves a disk through Debian's nbdkit to
//! nbdinfo, nbdcopy and qemu-img.
//!
//! One test binary on purpose: the C library and the C program are
//! built once per process and shared by every case.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use vsphere_sim::inventory::{DEMO_PASSWORD, DEMO_USER};
use vsphere_sim::{Inventory, Mode, NfcOptions, SimOptions, Simulator};

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

/// `lib64/libvixDiskLib.so.8` (the layout nbdkit's `libdir=` expects) and
/// the compiled C test program, built once per test process.
struct Built {
    _dir: tempfile::TempDir,
    lib: PathBuf,
    vixtest: PathBuf,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Integration tests link the rlib; the cdylib is built here, into
        // the same target directory.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "vixdisklib", "--lib", "--target-dir"]);
        build.arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        run(&mut build);
        let so = profile_dir.join("libvixDiskLib.so");
        let dir = tempfile::tempdir().unwrap();
        let lib64 = dir.path().join("lib64");
        std::fs::create_dir(&lib64).unwrap();
        let lib = lib64.join("libvixDiskLib.so.8");
        std::fs::copy(&so, &lib).unwrap();
        let vixtest = dir.path().join("vixtest");
        run(Command::new("gcc")
            .args([
                "-std=gnu11",
                "-O1",
                "-g",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-I",
            ])
            .arg(Path::new(CRATE).join("include"))
            .arg(Path::new(CRATE).join("tests/c/vixtest.c"))
            .arg("-o")
            .arg(&vixtest)
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", lib64.display()))
            .arg("-lpthread"));
        Built {
            _dir: dir,
            lib,
            vixtest,
        }
    })
}

fn run(c: &mut Command) -> Output {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e} (is it installed? .ci/run installs it)"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn vixtest(args: &[&str]) -> String {
    let out = run(Command::new(&built().vixtest).args(args));
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_img(args: &[&str]) -> Output {
    run(Command::new("qemu-img").args(args))
}

fn assert_same(img: &Path, fmt: &str, raw: &Path) {
    qemu_img(&["compare", "-f", fmt, "-F", "raw", s(img), s(raw)]);
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// An 8 MiB VMDK written by qemu-io: data at 1 MiB..2 MiB and 5 MiB+64 KiB.
fn qemu_disk(dir: &Path, name: &str, subformat: &str) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        &format!("subformat={subformat}"),
        s(&p),
        "8M",
    ]);
    if subformat == "streamOptimized" {
        // qemu writes stream-optimized images only by convert.
        let raw = dir.join(format!("{name}.src.raw"));
        let mut b = vec![0u8; 8 << 20];
        b[1 << 20..2 << 20].copy_from_slice(&pattern(1 << 20, 1));
        b[5 << 20..(5 << 20) + 65536].fill(0x11);
        std::fs::write(&raw, b).unwrap();
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            s(&raw),
            s(&p),
        ]);
    } else {
        run(Command::new("qemu-io").args([
            "-f",
            "vmdk",
            "-c",
            "write -P 0x5a 1M 1M",
            "-c",
            "write -P 0x11 5M 64k",
            s(&p),
        ]));
    }
    p
}

#[test]
fn library_exports_only_vixdisklib_symbols_with_soname_and_symbolic() {
    let b = built();
    let nm = run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&b.lib));
    let syms: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    assert!(syms.len() >= 40, "{syms:?}");
    let foreign: Vec<&String> = syms
        .iter()
        .filter(|s| !s.starts_with("VixDiskLib_"))
        .collect();
    assert!(foreign.is_empty(), "non-VixDiskLib exports: {foreign:?}");
    // nbdkit's 19 required symbols and its 3 optional ones.
    for f in [
        "InitEx",
        "Exit",
        "GetErrorText",
        "FreeErrorText",
        "FreeConnectParams",
        "ConnectEx",
        "Open",
        "GetTransportMode",
        "Close",
        "Disconnect",
        "GetInfo",
        "FreeInfo",
        "Read",
        "Write",
        "Create",
        "Flush",
        "ReadAsync",
        "WriteAsync",
        "Wait",
        "QueryAllocatedBlocks",
        "FreeBlockList",
        "AllocateConnectParams",
    ] {
        assert!(
            syms.contains(&format!("VixDiskLib_{f}")),
            "missing VixDiskLib_{f}"
        );
    }
    let re = run(Command::new("readelf").arg("-d").arg(&b.lib));
    let dynamic = String::from_utf8_lossy(&re.stdout);
    assert!(
        dynamic.contains("Library soname: [libvixDiskLib.so.8]"),
        "{dynamic}"
    );
    assert!(dynamic.contains("SYMBOLIC"), "{dynamic}");
}

/// InitEx passes every configuration warning (unknown key, bad value,
/// malformed line, each with its line) to the log callback.
#[test]
fn init_ex_logs_every_configuration_warning_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_disk(dir.path(), "w.vmdk", "monolithicSparse");
    let conf = dir.path().join("vddk.conf");
    std::fs::write(
        &conf,
        concat!(
            "# VDDK configuration\n",
            "vixDiskLib.nfc.ReadTimeoutMs = soon # a comment\n",
            "vixDiskLib.nfc.LogLevel = \"3\" # fine\n",
            "no.such.key = 1\n",
            "a line without equals\n",
        ),
    )
    .unwrap();
    let out = Command::new(&built().vixtest)
        .args([
            "read",
            &format!("local:{}", s(&img)),
            s(&dir.path().join("out.raw")),
        ])
        .env("VIXTEST_CONFIG", &conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let logged: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("configuration"))
        .collect();
    assert_eq!(
        logged,
        [
            "vixlog: VixDiskLib: configuration line 2: `vixDiskLib.nfc.ReadTimeoutMs`: `soon` is not a number (the default is kept)",
            "vixlog: VixDiskLib: unknown configuration key `no.such.key` ignored (line 4)",
            "vixlog: VixDiskLib: configuration line 5: `a line without equals`: not a `key = value` line",
        ],
        "{err}"
    );
}

/// The C library follows absolute parent and extent paths as VDDK does;
/// `vixDiskLib.disklib.confinePaths = "1"` keeps them in the descriptor's
/// directory.
#[test]
fn absolute_parent_and_extent_paths_are_followed_unless_confined() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    // A delta whose parent (named by its absolute path) is elsewhere.
    let base = qemu_disk(elsewhere.path(), "base.vmdk", "monolithicSparse");
    let child = dir.path().join("child.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        s(&base),
        "-F",
        "vmdk",
        s(&child),
    ]);
    // A flat descriptor whose extent is named by its absolute path.
    let data = elsewhere.path().join("data-flat.vmdk");
    std::fs::write(&data, pattern(1 << 20, 5)).unwrap();
    let flat = dir.path().join("flat.vmdk");
    std::fs::write(
        &flat,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 2048 FLAT \"{}\" 0\n\nddb.adapterType = \"lsilogic\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.geometry.cylinders = \"2\"\n",
            s(&data)
        ),
    )
    .unwrap();
    let confined = dir.path().join("confined.conf");
    std::fs::write(&confined, "vixDiskLib.disklib.confinePaths = \"1\"\n").unwrap();
    for (disk, raw) in [(&child, &base), (&flat, &data)] {
        let out = dir.path().join("out.raw");
        vixtest(&["read", &format!("local:{}", s(disk)), s(&out)]);
        if raw == &data {
            assert!(std::fs::read(&out).unwrap() == std::fs::read(&data).unwrap());
        } else {
            assert_same(raw, "vmdk", &out);
        }
        let refused = Command::new(&built().vixtest)
            .args(["read", &format!("local:{}", s(disk)), s(&out)])
            .env("VIXTEST_CONFIG", &confined)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{err}");
        assert!(
            err.contains("FATAL Open") && err.contains("leaves the descriptor's directory"),
            "{err}"
        );
    }
}

/// `VIXDISKLIB_FLAG_OPEN_SINGLE_LINK` on a delta: backup software reads a
/// snapshot's own grains without its parent.
#[test]
fn single_link_reads_a_deltas_own_grains() {
    use vmdk_file::local::{LocalDisk, OpenOptions};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vmdk");
    let write = |p: &Path, at: u64, data: &[u8]| {
        let d = LocalDisk::open(
            p,
            &OpenOptions {
                writable: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        d.write_at(at, data).unwrap();
        d.close().unwrap();
    };
    vmdk_file::create::create(
        &base,
        &vmdk_file::create::CreateOptions::new(
            vmdk_file::create::DiskType::MonolithicSparse,
            8 << 20,
        ),
    )
    .unwrap();
    write(&base, 0, &pattern(4 << 20, 7));
    let delta = dir.path().join("base-000001.vmdk");
    vmdk_file::maintain::create_child(&base, &delta).unwrap();
    let own = pattern(65536, 8);
    write(&delta, 1 << 20, &own);
    write(&delta, 6 << 20, &own[..100 * 512]);

    let out = dir.path().join("single.raw");
    let text = vixtest(&["single", s(&delta), s(&out)]);
    assert!(text.contains("links 1\n"), "{text}");
    assert!(text.contains("hint base.vmdk\n"), "{text}");
    let blocks: Vec<&str> = text.lines().filter(|l| l.starts_with("block")).collect();
    assert_eq!(blocks, ["block 2048 128", "block 12288 128"], "{text}");
    let mut want = vec![0u8; 8 << 20];
    want[1 << 20..(1 << 20) + 65536].copy_from_slice(&own);
    want[6 << 20..(6 << 20) + 100 * 512].copy_from_slice(&own[..100 * 512]);
    assert!(
        std::fs::read(&out).unwrap() == want,
        "only the delta's bytes"
    );
    // A writable single-link open of a delta: VIX_E_FILE_READ_ONLY.
    assert!(text.contains("writable 11\n"), "{text}");
}

#[test]
fn nbdkit_sequence_reads_local_disks_like_qemu() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "streamOptimized",
        "twoGbMaxExtentSparse",
    ] {
        let img = qemu_disk(dir.path(), &format!("{sub}.vmdk"), sub);
        let out = dir.path().join(format!("{sub}.out"));
        let text = vixtest(&["read", &format!("local:{}", s(&img)), s(&out)]);
        assert!(text.contains("transport file\n"), "{text}");
        assert!(text.contains("capacity 16384\n"), "{text}");
        assert_same(&img, "vmdk", &out);
        // Allocated blocks cover what was written and nothing far away.
        let blocks: Vec<(u64, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("block "))
            .map(|l| {
                let mut it = l.split(' ').map(|v| v.parse::<u64>().unwrap());
                (it.next().unwrap(), it.next().unwrap())
            })
            .collect();
        let covered = |sector: u64| blocks.iter().any(|&(o, n)| sector >= o && sector < o + n);
        assert!(
            covered(2048) && covered(4095) && covered(10240),
            "{sub}: {blocks:?}"
        );
        if sub != "monolithicFlat" {
            assert!(
                !covered(14000),
                "{sub}: hole reported allocated: {blocks:?}"
            );
        }
    }
}

#[test]
fn write_async_across_grains_then_qemu_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["monolithicSparse", "monolithicFlat"] {
        let img = qemu_disk(dir.path(), &format!("w-{sub}.vmdk"), sub);
        let data = pattern(300 * 512, 7);
        let input = dir.path().join("in.raw");
        std::fs::write(&input, &data).unwrap();
        // Sector 100: crosses the grain boundary at 128 and at 256 and
        // overlaps nothing qemu wrote.
        vixtest(&["write", &format!("local:{}", s(&img)), s(&input), "100"]);
        qemu_img(&["check", "-q", s(&img)]);
        let raw = dir.path().join("w.raw");
        qemu_img(&["convert", "-O", "raw", s(&img), s(&raw)]);
        let got = std::fs::read(&raw).unwrap();
        assert_eq!(&got[100 * 512..400 * 512], &data[..], "{sub}");
        assert!(got[1 << 20..2 << 20].iter().all(|&b| b == 0x5a), "{sub}");
        assert!(got[..100 * 512].iter().all(|&b| b == 0), "{sub}");
    }
}

#[test]
fn create_write_across_a_grain_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    for (ty, name) in [(1, "sparse"), (2, "flat")] {
        let img = dir.path().join(format!("c-{name}.vmdk"));
        vixtest(&["create", s(&img), "20480", &ty.to_string()]);
        qemu_img(&["check", "-q", s(&img)]);
        let raw = dir.path().join("c.raw");
        qemu_img(&["convert", "-O", "raw", s(&img), s(&raw)]);
        let got = std::fs::read(&raw).unwrap();
        assert_eq!(got.len(), 20480 * 512);
        let want: Vec<u8> = (0..16 * 512).map(|i: usize| (i * 7 + 3) as u8).collect();
        assert_eq!(&got[120 * 512..136 * 512], &want[..], "{name}");
        assert_eq!(&got[20479 * 512..], &want[..512], "{name}");
        assert!(got[..120 * 512].iter().all(|&b| b == 0));
        let info = String::from_utf8(qemu_img(&["info", s(&img)]).stdout).unwrap();
        assert!(info.contains("virtual size: 10 MiB"), "{info}");
        // The key went into the descriptor's DDB, as `ddb.vixtest.key`.
        let head = std::fs::read(&img).unwrap();
        let head = String::from_utf8_lossy(&head[..head.len().min(1 << 20)]);
        assert!(head.contains("ddb.vixtest.key = \"hello world\""), "{name}");
    }
}

#[test]
fn errors_texts_double_close_and_reinit() {
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_disk(dir.path(), "e.vmdk", "monolithicSparse");
    let out = run(Command::new(&built().vixtest).args(["errors", s(&img)]));
    // The InitEx warning callback got the unknown configuration key,
    // formatted through the va_list shim.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vixlog: VixDiskLib: unknown configuration key `vixDiskLib.no.such.key`"),
        "{err}"
    );
}

#[test]
fn clone_to_every_local_type_and_create_child() {
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_disk(dir.path(), "src.vmdk", "monolithicSparse");
    for (ty, name) in [(1, "sparse"), (2, "flat"), (3, "split"), (6, "stream")] {
        let dst = dir.path().join(format!("clone-{name}.vmdk"));
        vixtest(&[
            "clone",
            &format!("local:{}", s(&img)),
            s(&dst),
            &ty.to_string(),
        ]);
        qemu_img(&["compare", "-f", "vmdk", "-F", "vmdk", s(&img), s(&dst)]);
    }
    // A child: qemu reads the chain with the write on top of the parent.
    let base_raw = dir.path().join("base.raw");
    qemu_img(&["convert", "-O", "raw", s(&img), s(&base_raw)]);
    let child = dir.path().join("child.vmdk");
    vixtest(&["child", s(&img), s(&child)]);
    qemu_img(&["check", "-q", s(&child)]);
    let chain_raw = dir.path().join("chain.raw");
    qemu_img(&["convert", "-O", "raw", s(&child), s(&chain_raw)]);
    let mut want = std::fs::read(&base_raw).unwrap();
    for (i, b) in want[2040 * 512..2056 * 512].iter_mut().enumerate() {
        *b = (i * 13 + 1) as u8;
    }
    assert!(std::fs::read(&chain_raw).unwrap() == want, "chain differs");
    // The parent is untouched.
    assert_same(&img, "vmdk", &base_raw);
}

#[test]
fn shrink_and_defragment_an_open_handle() {
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_disk(dir.path(), "s.vmdk", "monolithicSparse");
    let raw = dir.path().join("before.raw");
    qemu_img(&["convert", "-O", "raw", s(&img), s(&raw)]);
    // What the C program writes at sector 256 before shrinking.
    let mut want = std::fs::read(&raw).unwrap();
    want[256 * 512..384 * 512].fill(0x77);
    std::fs::write(&raw, &want).unwrap();
    vixtest(&["shrink", s(&img)]);
    qemu_img(&["check", "-q", s(&img)]);
    assert_same(&img, "vmdk", &raw);
}

#[test]
fn several_threads_with_several_handles() {
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_disk(dir.path(), "t.vmdk", "monolithicSparse");
    let text = vixtest(&["threads", s(&img), "6"]);
    assert!(text.contains("checksum "), "{text}");
}

/// `definitely`, `indirectly` and `possibly` lost bytes from valgrind.
fn valgrind(args: &[&str]) -> [u64; 3] {
    let out = run(Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--track-origins=no",
        ])
        .arg(&built().vixtest)
        .args(args));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ERROR SUMMARY: 0 errors"), "{err}");
    let lost = |kind: &str| {
        err.lines()
            .find_map(|l| l.split_once(&format!("{kind} lost: ")))
            .map_or(0, |(_, rest)| {
                rest.split_whitespace()
                    .next()
                    .unwrap()
                    .replace(',', "")
                    .parse()
                    .unwrap()
            })
    };
    [lost("definitely"), lost("indirectly"), lost("possibly")]
}

#[test]
fn valgrind_memcheck_clean_and_no_leak_growing_with_calls() {
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_disk(dir.path(), "v.vmdk", "monolithicSparse");
    let once = valgrind(&["loop", s(&img), "1"]);
    let many = valgrind(&["loop", s(&img), "5"]);
    assert_eq!(once[..2], [0, 0], "definite/indirect leaks after one round");
    assert_eq!(many, once, "leaks grow with the number of calls");
    valgrind(&["errors", s(&img)]);
    valgrind(&["threads", s(&img), "3"]);
    valgrind(&["shrink", s(&img)]);
}

fn sim_spec(sim: &Simulator, transports: &str) -> String {
    sim_disk_spec(sim, transports, "demo-vm/demo-vm.vmdk")
}

fn sim_disk_spec(sim: &Simulator, transports: &str, file: &str) -> String {
    format!(
        "remote:127.0.0.1:{}:{}:{}:{}:moref=vm-100:{}:[datastore1] {file}",
        sim.addr().port(),
        sim.thumbprint().replace(':', ","),
        DEMO_USER,
        DEMO_PASSWORD,
        transports
    )
}

/// The simulator's LUN and proxy VM through the C library: the thick
/// disk over san, the thin one over hotadd (both compared with qemu-img),
/// a process killed while holding a HotAdded disk, then `Cleanup`.
#[test]
fn simulator_san_hotadd_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(
        Inventory::demo(dir.path(), Mode::Vcenter),
        SimOptions::default(),
        0,
    )
    .unwrap();
    let _nfc = sim.start_nfc(NfcOptions::default()).unwrap();
    sim.guest_write("vm-100", 2000, 1 << 20, &pattern(3 << 20, 4))
        .unwrap();
    sim.guest_write("vm-100", 2001, 5 << 20, &pattern(17 << 20, 5))
        .unwrap();
    let config = dir.path().join("vix.conf");
    std::fs::write(
        &config,
        vsphere_sim::proxy_config(
            &dir.path().join("proxy-host"),
            &dir.path().join("hotadd.state"),
        ),
    )
    .unwrap();
    let vix = || {
        let mut c = Command::new(&built().vixtest);
        c.env("VIXTEST_CONFIG", &config);
        c
    };
    let text = |o: Output| String::from_utf8(o.stdout).unwrap();
    for (mode, file) in [
        ("san", "demo-vm/demo-vm_1.vmdk"),
        ("hotadd", "demo-vm/demo-vm.vmdk"),
    ] {
        let out = dir.path().join(format!("{mode}.raw"));
        let t = text(run(vix().args([
            "read",
            &sim_disk_spec(&sim, mode, file),
            s(&out),
        ])));
        assert!(t.contains(&format!("transport {mode}\n")), "{t}");
        assert_same(&dir.path().join("datastore1").join(file), "vmdk", &out);
    }
    // Killed while holding a HotAdded disk: Cleanup detaches it.
    let mut child = vix()
        .args(["hold", &sim_spec(&sim, "hotadd")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(line, "held hotadd\n");
    let spec = sim_spec(&sim, "nbdssl");
    assert_eq!(text(run(vix().args(["cleanup", &spec]))), "cleanup 1 0\n");
    assert_eq!(text(run(vix().args(["cleanup", &spec]))), "cleanup 0 0\n");
}

#[test]
fn simulator_disks_over_nbd_and_nbdssl() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(
        Inventory::demo(dir.path(), Mode::Vcenter),
        SimOptions::default(),
        0,
    )
    .unwrap();
    let _nfc = sim.start_nfc(NfcOptions::default()).unwrap();
    sim.guest_write("vm-100", 2000, 3 << 20, &pattern(2 << 20, 3))
        .unwrap();
    let file = dir.path().join("datastore1/demo-vm/demo-vm.vmdk");
    for mode in ["nbd", "nbdssl"] {
        let out = dir.path().join(format!("{mode}.raw"));
        let text = vixtest(&["read", &sim_spec(&sim, mode), s(&out)]);
        assert!(text.contains(&format!("transport {mode}\n")), "{text}");
        assert_same(&file, "vmdk", &out);
        // A write over the wire lands in the datastore's file.
        let data = pattern(200 * 512, 9);
        let input = dir.path().join("in.raw");
        std::fs::write(&input, &data).unwrap();
        vixtest(&["write", &sim_spec(&sim, mode), s(&input), "1000"]);
        let raw = dir.path().join("after.raw");
        qemu_img(&["convert", "-O", "raw", s(&file), s(&raw)]);
        assert_eq!(
            &std::fs::read(&raw).unwrap()[1000 * 512..1200 * 512],
            &data[..],
            "{mode}"
        );
    }
    // Clone from the remote disk to local sparse and stream-optimized.
    for (ty, name) in [(1, "sparse"), (6, "stream")] {
        let dst = dir.path().join(format!("remote-clone-{name}.vmdk"));
        vixtest(&["clone", &sim_spec(&sim, "nbdssl"), s(&dst), &ty.to_string()]);
        qemu_img(&["compare", "-f", "vmdk", "-F", "vmdk", s(&file), s(&dst)]);
    }
    // A fallback list: the first mode unavailable, the next one used.
    let out = dir.path().join("fallback.raw");
    let text = vixtest(&["read", &sim_spec(&sim, "san+hotadd+nbdssl"), s(&out)]);
    assert!(text.contains("transport nbdssl\n"), "{text}");
    assert_same(&file, "vmdk", &out);
}

#[test]
fn nbdkit_python_plugin_serves_a_disk_to_nbdinfo_nbdcopy_and_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_disk(dir.path(), "n.vmdk", "monolithicSparse");
    let plugin = Path::new(CRATE).join("tests/nbdkit/vixdisk_plugin.py");
    let copy = dir.path().join("copy.raw");
    let map = dir.path().join("map.txt");
    let upload = dir.path().join("upload.raw");
    let data = pattern(3 << 20, 11);
    std::fs::write(&upload, &data).unwrap();
    // Read through NBD: map, copy, compare; then write through NBD.
    let script = format!(
        "set -e; nbdinfo --map \"$uri\" > {map}; nbdcopy \"$uri\" {copy}; \
         qemu-img compare -f vmdk -F raw {img} \"$uri\" && \
         qemu-img compare -f raw -F raw {copy} \"$uri\"",
        map = s(&map),
        copy = s(&copy),
        img = s(&img),
    );
    run(Command::new("nbdkit")
        .args(["-U", "-", "--exit-with-parent", "-r", "python"])
        .arg(&plugin)
        .arg(format!("lib={}", s(&built().lib)))
        .arg(format!("file={}", s(&img)))
        .args(["--run", &script]));
    assert_same(&img, "vmdk", &copy);
    let map = std::fs::read_to_string(&map).unwrap();
    // nbdinfo --map: "offset length type description"; the data written
    // at 1 MiB is data, the area at 7 MiB a hole.
    let is_data_at = |off: u64| {
        map.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (o, n, t): (u64, u64, u32) = (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            );
            off >= o && off < o + n && t == 0
        })
    };
    assert!(is_data_at(1 << 20) && is_data_at((5 << 20) + 100), "{map}");
    assert!(!is_data_at(7 << 20), "{map}");

    // Writing: nbdcopy uploads 3 MiB at offset 0 via the plugin.
    let script = format!("set -e; nbdcopy {} \"$uri\"", s(&upload));
    run(Command::new("nbdkit")
        .args(["-U", "-", "--exit-with-parent", "python"])
        .arg(&plugin)
        .arg(format!("lib={}", s(&built().lib)))
        .arg(format!("file={}", s(&img)))
        .args(["--run", &script]));
    qemu_img(&["check", "-q", s(&img)]);
    let raw = dir.path().join("after.raw");
    qemu_img(&["convert", "-O", "raw", s(&img), s(&raw)]);
    let got = std::fs::read(&raw).unwrap();
    assert_eq!(&got[..3 << 20], &data[..]);
    assert!(got[5 << 20..(5 << 20) + 65536].iter().all(|&b| b == 0x11));
}

/// VMware's basic types (`uint64`, `uint32`, `uint8` …) come with the
/// header alone, as VMware's header brings them, and are the same types
/// as `<stdint.h>`'s.
#[test]
fn header_alone_gives_vmware_basic_types() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("basic_types");
    for std in ["-std=c99", "-std=gnu11"] {
        run(Command::new("gcc")
            .args([std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
            .arg(Path::new(CRATE).join("include"))
            .arg(Path::new(CRATE).join("tests/c/basic_types.c"))
            .arg("-o")
            .arg(&exe));
        run(&mut Command::new(&exe));
    }
}

/// Bareos's dumper calls `EndAccess` from an `atexit` handler; against a
/// lone ESXi host it fails ("HostAgent is not a VirtualCenter"). The
/// call returns its error code and the process exits normally, instead
/// of aborting on the destroyed thread-local error text.
#[test]
fn end_access_failing_in_an_exit_handler_returns_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(
        Inventory::demo(dir.path(), Mode::Esxi),
        SimOptions::default(),
        0,
    )
    .unwrap();
    let out = run(Command::new(&built().vixtest).args(["atexit", &sim_spec(&sim, "nbdssl")]));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("registered\n"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("endaccess "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!line.starts_with("endaccess 0 "), "{line}");
    assert!(line.contains("VirtualCenter"), "{line}");
}

/// An async read that fails on a worker thread: the caller's
/// `GetErrorText` on its own thread still has the detail.
#[test]
fn async_error_text_reaches_the_calling_thread() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_disk(dir.path(), "cut.vmdk", "monolithicFlat");
    let flat = dir.path().join("cut-flat.vmdk");
    assert!(flat.exists());
    let mut child = Command::new(&built().vixtest)
        .args(["asyncerr", s(&img)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "opened");
    // The extent loses its second half: reads there fail in the worker.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&flat)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success(), "{rest:?}");
    let line = rest.iter().find(|l| l.starts_with("asyncerr ")).unwrap();
    assert!(!line.starts_with("asyncerr 0 "), "{line}");
    assert!(
        line.contains("cut-flat.vmdk"),
        "the detail names the file: {line}"
    );
}

/// When every transport fails for the same reason, `Open` returns that
/// reason's code: an unknown VM or a deleted snapshot is
/// `VIX_E_OBJECT_NOT_FOUND`, a path that is not one of the VM's disks
/// `VIX_E_FILE_NOT_FOUND` (not "no transport", `VIX_E_NOT_SUPPORTED`).
#[test]
fn open_errors_name_the_cause() {
    let (dir, sim, _nfc) = demo_simulator();
    let config = proxy_config_file(dir.path());
    let code = |spec: &str, snapshot: Option<&str>| {
        let mut c = Command::new(&built().vixtest);
        c.args(["opencode", spec]).env("VIXTEST_CONFIG", &config);
        if let Some(s) = snapshot {
            c.env("VIXTEST_SNAPSHOT", s);
        }
        String::from_utf8(run(&mut c).stdout).unwrap()
    };
    let all = "san+hotadd+nbdssl+nbd";
    assert_eq!(code(&sim_spec(&sim, all), None), "open 0\n");
    let unknown_vm = sim_spec(&sim, all).replace("moref=vm-100", "moref=vm-999");
    assert_eq!(code(&unknown_vm, None), "open 25\n", "unknown VM");
    assert_eq!(
        code(&sim_spec(&sim, all), Some("snapshot-999")),
        "open 25\n",
        "deleted snapshot"
    );
    let not_a_disk = sim_disk_spec(&sim, all, "demo-vm/nope.vmdk");
    assert_eq!(
        code(&not_a_disk, None),
        "open 4\n",
        "path not a disk of the VM"
    );
    assert_eq!(
        code(&sim_disk_spec(&sim, "nbdssl", "demo-vm/nope.vmdk"), None),
        "open 4\n"
    );
}

/// The InitEx log function gets the library's informational messages
/// (initialisation, connections, opens and closes); a length-only query
/// (NULL buffer) is not a warning.
#[test]
fn log_gets_information_and_length_queries_do_not_warn() {
    let dir = tempfile::tempdir().unwrap();
    let img = qemu_disk(dir.path(), "l.vmdk", "monolithicSparse");
    let out = run(Command::new(&built().vixtest).args(["lengths", s(&img)]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "lengths ok\n");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("vixinfo: VixDiskLib: vddk-rs "), "{err}");
    assert!(
        err.contains("vixinfo: VixDiskLib: connected to local disks"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "vixinfo: VixDiskLib: opened {} using transport file (read-only)",
            s(&img)
        )),
        "{err}"
    );
    assert!(err.contains("vixinfo: VixDiskLib: closing "), "{err}");
    assert!(!err.contains("vixlog:"), "a length query warned: {err}");
}

/// Without a configuration file, nothing is written for HotAdd until a
/// HotAdd attach happens: a `Cleanup` with nothing to clean leaves
/// `$TMPDIR` empty.
#[test]
fn no_hotadd_state_file_until_an_attach() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(
        Inventory::demo(dir.path(), Mode::Vcenter),
        SimOptions::default(),
        0,
    )
    .unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = run(Command::new(&built().vixtest)
        .args(["cleanup", &sim_spec(&sim, "nbdssl")])
        .env("TMPDIR", &tmp)
        .env_remove("VIXTEST_CONFIG"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cleanup 0 0\n");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `VIXDISKLIB_DISK_VMFS_SPARSE` is a known type that cannot be created
/// (`VIX_E_NOT_SUPPORTED`, not "unknown disk type"); a stream-optimized
/// disk is created empty and opens read-only only (`VIX_E_FILE_READ_ONLY`
/// for writing: its grains are compressed in sequence, so it is filled
/// by Clone, as VDDK's are).
#[test]
fn create_types_vmfs_sparse_and_stream_optimized() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(vixtest(&["createtypes", s(dir.path())]), "createtypes ok\n");
}

/// What Bareos's plugin does with every backup and restore, over every
/// remote transport: list the DDB keys (the `NULL, 0, &len` size query,
/// then the keys), read `GetInfo` (the disk's own geometry and adapter,
/// the same whatever the transport), write a key, and read it back
/// through a new handle. A monolithic sparse disk lists its keys but its
/// descriptor cannot be replaced over the network.
#[test]
fn metadata_and_info_over_every_remote_transport() {
    let (dir, sim, _nfc) = demo_simulator();
    let config = proxy_config_file(dir.path());
    let meta = |spec: &str, key: &str, value: &str| {
        let out = run(Command::new(&built().vixtest)
            .args(["meta", spec, key, value])
            .env("VIXTEST_CONFIG", &config));
        String::from_utf8(out.stdout).unwrap()
    };
    let line = |text: &str, prefix: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {text}"))
            .to_string()
    };
    let mut infos = Vec::new();
    for t in ["nbdssl", "san", "hotadd", "nbd"] {
        let spec = sim_disk_spec(&sim, t, "demo-vm/demo-vm_1.vmdk");
        let value = format!("set over {t}");
        let text = meta(&spec, "bareos.test", &value);
        let keys = line(&text, "keys ");
        for k in [
            "adapterType",
            "geometry.cylinders",
            "geometry.heads",
            "geometry.sectors",
        ] {
            assert!(keys.split(' ').any(|x| x == k), "{t}: {keys}");
        }
        assert!(!keys.contains("ddb."), "keys without the prefix: {keys}");
        assert_eq!(line(&text, "write "), "write 0", "{t}: {text}");
        assert_eq!(
            line(&text, "readback "),
            format!("readback 0 {value}"),
            "{t}"
        );
        infos.push((t, line(&text, "info ")));
    }
    for (t, info) in &infos {
        assert_eq!(info, &infos[0].1, "GetInfo over {t} differs from nbdssl");
    }
    assert!(infos[0].1.contains("adapter 3"), "{:?}", infos[0]);
    // The thin sparse disk: its keys list, but its embedded descriptor
    // is not replaced over the network.
    let text = meta(&sim_spec(&sim, "nbdssl"), "bareos.test", "x");
    assert!(line(&text, "keys ").contains(" adapterType"), "{text}");
    assert_eq!(line(&text, "write "), "write 6", "{text}");
}

/// The demo simulator (vCenter mode) with its NFC server.
fn demo_simulator() -> (tempfile::TempDir, Simulator, vsphere_sim::NfcServer) {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(
        Inventory::demo(dir.path(), Mode::Vcenter),
        SimOptions::default(),
        0,
    )
    .unwrap();
    let nfc = sim.start_nfc(NfcOptions::default()).unwrap();
    (dir, sim, nfc)
}

/// `DIR/vix.conf`: the configuration pointing the library at the
/// simulator's proxy host (the VIXTEST_CONFIG of the san/hotadd cases).
fn proxy_config_file(dir: &Path) -> PathBuf {
    let config = dir.join("vix.conf");
    std::fs::write(
        &config,
        vsphere_sim::proxy_config(&dir.join("proxy-host"), &dir.join("hotadd.state")),
    )
    .unwrap();
    config
}
