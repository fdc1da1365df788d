//! The write engine: every type converts and round-trips through qemu,
//! writes interoperate with qemu-io, crashes leave readable images.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const MIB: usize = 1 << 20;

/// 24 MiB: data, explicit zeros, holes, odd tail inside a grain.
fn pattern_raw(dir: &Path) -> std::path::PathBuf {
    let mut data = pattern(24 * MIB + 4096, 77);
    data[2 * MIB..5 * MIB].fill(0);
    data[9 * MIB..20 * MIB].fill(0);
    data[20 * MIB + 4096..20 * MIB + 65536].fill(0);
    write(dir, "pattern.raw", &data)
}

#[test]
fn convert_every_type_qemu_compares_identical() {
    let dir = tempdir();
    let raw = pattern_raw(dir.path());
    for t in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
        "vmfs",
        "vmfsThin",
    ] {
        let out = dir.path().join(format!("{t}.vmdk"));
        vdisk_ok(&["convert", "-t", t, s(&raw), s(&out)]);
        assert_same(&vdisk_raw(&out), &std::fs::read(&raw).unwrap(), t);
        if t == "vmfsThin" {
            // qemu refuses the vmfsThin createType ("Unsupported image
            // type"); its extent is a raw file with holes: compare that.
            let flat = dir.path().join("vmfsThin-flat.vmdk");
            qemu_img(&["compare", "-f", "raw", "-F", "raw", s(&raw), s(&flat)]);
            let blocks = std::fs::metadata(&flat)
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
                .unwrap();
            assert!(
                blocks * 512 < 20 * MIB as u64,
                "vmfsThin keeps holes ({blocks} blocks)"
            );
        } else {
            let cmp = qemu_img(&["compare", "-f", "raw", "-F", "vmdk", s(&raw), s(&out)]);
            assert!(
                String::from_utf8_lossy(&cmp.stdout).contains("identical"),
                "{t}"
            );
            let chk = qemu_img(&["check", s(&out)]);
            assert!(
                String::from_utf8_lossy(&chk.stdout).contains("No errors"),
                "{t}: {}",
                String::from_utf8_lossy(&chk.stdout)
            );
        }
        assert_eq!(vdisk(&["check", s(&out)]).status.code(), Some(0), "{t}");
    }
    // vmdkinfo (libvmdk) opens the sparse and stream outputs.
    for t in ["monolithicSparse", "streamOptimized"] {
        let out = tool("vmdkinfo", &[s(&dir.path().join(format!("{t}.vmdk")))]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Media size:") && text.contains(&(24 * MIB + 4096).to_string()),
            "{t}: {text}"
        );
    }
    // VMDK → VMDK (a chain) and → raw.
    let sparse = dir.path().join("monolithicSparse.vmdk");
    let child = dir.path().join("child.vmdk");
    vdisk_ok(&["snapshot", s(&sparse), s(&child)]);
    vdisk_ok(&[
        "write",
        s(&child),
        "--offset",
        "1000",
        "--pattern",
        "0x5a",
        "--length",
        "200000",
    ]);
    let back = dir.path().join("back.raw");
    vdisk_ok(&["convert", "-t", "raw", s(&child), s(&back)]);
    let mut expect = std::fs::read(&raw).unwrap();
    expect[1000..201_000].fill(0x5a);
    assert_same(&std::fs::read(&back).unwrap(), &expect, "chain → raw");
    let flat = dir.path().join("fromchain.vmdk");
    vdisk_ok(&["convert", "-t", "monolithicFlat", s(&child), s(&flat)]);
    assert_same(&qemu_raw(&flat, dir.path()), &expect, "chain → flat");
}

#[test]
fn qemu_io_and_vdisk_write_into_each_others_images() {
    let dir = tempdir();
    // Ours, written by qemu-io.
    let ours = dir.path().join("ours.vmdk");
    vdisk_ok(&["create", "-t", "monolithicSparse", s(&ours), "16M"]);
    qemu_io(&[
        "-f",
        "vmdk",
        "-c",
        "write -P 0x21 60k 200k",
        "-c",
        "write -z 1M 128k",
        s(&ours),
    ]);
    vdisk_ok(&[
        "write",
        s(&ours),
        "--offset",
        "300000",
        "--pattern",
        "0x42",
        "--length",
        "70000",
    ]);
    let raw = vdisk_raw(&ours);
    assert!(raw[60 << 10..260 << 10].iter().enumerate().all(|(i, &b)| b
        == if (60 << 10) + i >= 300_000 && (60 << 10) + i < 370_000 {
            0x42
        } else {
            0x21
        }));
    assert_same(&raw, &qemu_raw(&ours, dir.path()), "ours");
    qemu_io(&["-f", "vmdk", "-c", "read -P 0x42 300000 70000", s(&ours)]);
    assert_eq!(vdisk(&["check", s(&ours)]).status.code(), Some(0));
    assert!(String::from_utf8_lossy(&qemu_img(&["check", s(&ours)]).stdout).contains("No errors"));

    // qemu's, written by vdisk (sparse, flat, split).
    for sub in ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse"] {
        let q = dir.path().join(format!("q-{sub}.vmdk"));
        qemu_img(&[
            "create",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            s(&q),
            "16M",
        ]);
        qemu_io(&["-f", "vmdk", "-c", "write -P 0x11 0 1M", s(&q)]);
        // Straddles grain boundaries on both ends.
        vdisk_ok(&[
            "write",
            s(&q),
            "--offset",
            "65000",
            "--pattern",
            "0x77",
            "--length",
            "140000",
        ]);
        vdisk_ok(&[
            "write",
            s(&q),
            "--offset",
            "5000000",
            "--pattern",
            "0x78",
            "--length",
            "1",
        ]);
        qemu_io(&[
            "-f",
            "vmdk",
            "-c",
            "read -P 0x11 0 65000",
            "-c",
            "read -P 0x77 65000 140000",
            "-c",
            "read -P 0x11 205000 843576",
            "-c",
            "read -P 0x78 5000000 1",
            "-c",
            "read -P 0 5000001 1000",
            s(&q),
        ]);
        assert_same(&vdisk_raw(&q), &qemu_raw(&q, dir.path()), sub);
    }
}

#[test]
fn writes_straddle_grains_cow_and_zeroed_grains() {
    let dir = tempdir();
    let base = dir.path().join("base.vmdk");
    vdisk_ok(&["create", s(&base), "4M"]);
    vdisk_ok(&[
        "write",
        s(&base),
        "--offset",
        "0",
        "--pattern",
        "0xbb",
        "--length",
        "4M",
    ]);
    let child = dir.path().join("child.vmdk");
    vdisk_ok(&["snapshot", s(&base), s(&child)]);
    // A partial grain of the child: the rest of the grain must come from
    // the parent (copy-on-write), not zeros.
    vdisk_ok(&[
        "write",
        s(&child),
        "--offset",
        "70000",
        "--pattern",
        "0xcc",
        "--length",
        "100",
    ]);
    // Zeros over whole grains of a delta: zeroed-grain entries.
    vdisk_ok(&[
        "write",
        s(&child),
        "--offset",
        "1M",
        "--zero",
        "--length",
        "256K",
    ]);
    // A zero write inside a grain.
    vdisk_ok(&[
        "write",
        s(&child),
        "--offset",
        "3000000",
        "--zero",
        "--length",
        "10",
    ]);
    let raw = vdisk_raw(&child);
    let mut expect = vec![0xbbu8; 4 * MIB];
    expect[70000..70100].fill(0xcc);
    expect[MIB..MIB + (256 << 10)].fill(0);
    expect[3_000_000..3_000_010].fill(0);
    assert_same(&raw, &expect, "delta");
    assert_same(&raw, &qemu_raw(&child, dir.path()), "qemu agrees");
    let map: serde_json::Value =
        serde_json::from_slice(&vdisk_ok(&["map", "--json", s(&child)])).unwrap();
    assert!(
        map.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "zero" && e["start"] == MIB),
        "{map}"
    );
    // The base did not change; the child's file holds only what it wrote.
    assert_same(&vdisk_raw(&base), &vec![0xbb; 4 * MIB], "base untouched");
    let child_len = std::fs::metadata(&child).unwrap().len();
    assert!(child_len < 1 << 20, "child grew to {child_len}");
    // Commit folds the child into the base.
    vdisk_ok(&["commit", s(&child)]);
    assert!(!child.exists());
    assert_same(&vdisk_raw(&base), &expect, "committed");
}

#[test]
fn cid_changes_on_first_write_and_unclean_is_cleared() {
    let dir = tempdir();
    let d = dir.path().join("d.vmdk");
    vdisk_ok(&["create", s(&d), "1M"]);
    let cid = |p: &Path| -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&vdisk_ok(&["info", "--json", s(p)])).unwrap();
        v["cid"].as_str().unwrap().to_string()
    };
    let before = cid(&d);
    vdisk_ok(&[
        "write",
        s(&d),
        "--offset",
        "0",
        "--pattern",
        "1",
        "--length",
        "512",
    ]);
    let after = cid(&d);
    assert_ne!(before, after);
    let lcid = String::from_utf8(vdisk_ok(&["meta", "get", s(&d), "ddb.longContentID"])).unwrap();
    assert!(lcid.trim().ends_with(&after), "{lcid} vs {after}");
    // Closed cleanly: the flag is clear.
    assert_eq!(std::fs::read(&d).unwrap()[72], 0);
    assert_eq!(vdisk(&["check", s(&d)]).status.code(), Some(0));
    // A child of it now refuses to open once the parent changes again.
    let c = dir.path().join("c.vmdk");
    vdisk_ok(&["snapshot", s(&d), s(&c)]);
    vdisk_ok(&[
        "write",
        s(&d),
        "--offset",
        "0",
        "--pattern",
        "2",
        "--length",
        "512",
    ]);
    assert_eq!(vdisk(&["cat", s(&c)]).status.code(), Some(1));
}

#[test]
fn metadata_and_a_full_descriptor_area() {
    let dir = tempdir();
    let d = dir.path().join("m.vmdk");
    vdisk_ok(&["create", s(&d), "1M"]);
    vdisk_ok(&["meta", "set", s(&d), "ddb.toolsVersion", "12345"]);
    assert_eq!(
        String::from_utf8(vdisk_ok(&["meta", "get", s(&d), "ddb.toolsVersion"]))
            .unwrap()
            .trim(),
        "12345"
    );
    let big = "x".repeat(12_000);
    let out = vdisk(&["meta", "set", s(&d), "ddb.huge", &big]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("descriptor area"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing spilled into grain data; the disk is intact.
    assert_eq!(vdisk(&["check", s(&d)]).status.code(), Some(0));
    assert!(String::from_utf8_lossy(&qemu_img(&["check", s(&d)]).stdout).contains("No errors"));
    vdisk_ok(&["meta", "rm", s(&d), "ddb.toolsVersion"]);
    assert_eq!(
        vdisk(&["meta", "get", s(&d), "ddb.toolsVersion"])
            .status
            .code(),
        Some(1)
    );
    // A separate descriptor file grows freely.
    let f = dir.path().join("f.vmdk");
    vdisk_ok(&["create", "-t", "monolithicFlat", s(&f), "1M"]);
    vdisk_ok(&["meta", "set", s(&f), "ddb.huge", &big]);
    assert_eq!(
        String::from_utf8(vdisk_ok(&["meta", "get", s(&f), "ddb.huge"]))
            .unwrap()
            .trim(),
        big
    );
}

#[test]
fn disk_full_is_typed_and_harmless() {
    let dir = tempdir();
    let d = dir.path().join("full.vmdk");
    vdisk_ok(&["create", s(&d), "64M"]);
    vdisk_ok(&[
        "write",
        s(&d),
        "--offset",
        "0",
        "--pattern",
        "0x31",
        "--length",
        "1M",
    ]);
    let limit = std::fs::metadata(&d).unwrap().len() + (512 << 10);
    // The file size limit (in KiB for bash's ulimit) and SIGXFSZ ignored,
    // so that the write gets EFBIG, as a full file system gives ENOSPC;
    // both survive the exec.
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
                limit / 1024
            ),
            env!("CARGO_BIN_EXE_vdisk"),
            "write",
            s(&d),
            "--offset",
            "8M",
            "--pattern",
            "0x32",
            "--length",
            "4M",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disk full"), "{err}");
    // Consistent, and what was written before is intact.
    let chk = vdisk(&["check", s(&d)]);
    assert_eq!(
        chk.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&chk.stdout)
    );
    let raw = vdisk_raw(&d);
    assert!(raw[..MIB].iter().all(|&b| b == 0x31));
    // Grains that fit before the limit were written whole, the rest not at all.
    for g in raw[8 * MIB..12 * MIB].chunks(65536) {
        assert!(
            g.iter().all(|&b| b == 0x32) || g.iter().all(|&b| b == 0),
            "a torn grain"
        );
    }
    assert!(String::from_utf8_lossy(&qemu_img(&["check", s(&d)]).stdout).contains("No errors"));
}

#[test]
fn grow_rename_delete_compact() {
    let dir = tempdir();
    for t in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "vmfs",
        "vmfsThin",
    ] {
        let d = dir.path().join(format!("g-{t}.vmdk"));
        vdisk_ok(&["create", "-t", t, s(&d), "3M"]);
        vdisk_ok(&[
            "write",
            s(&d),
            "--offset",
            "1M",
            "--pattern",
            "0x66",
            "--length",
            "100000",
        ]);
        vdisk_ok(&["grow", s(&d), "5G"]);
        let info: serde_json::Value =
            serde_json::from_slice(&vdisk_ok(&["info", "--json", s(&d)])).unwrap();
        assert_eq!(info["capacity"], 5u64 << 30, "{t}");
        vdisk_ok(&[
            "write",
            s(&d),
            "--offset",
            "4G",
            "--pattern",
            "0x67",
            "--length",
            "70000",
        ]);
        let out = vdisk(&["check", s(&d)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{t}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        if t != "vmfsThin" {
            qemu_io(&[
                "-f",
                "vmdk",
                "-c",
                "read -P 0x66 1M 100000",
                "-c",
                "read -P 0x67 4G 70000",
                "-c",
                "read -P 0 4294037296 100",
                s(&d),
            ]);
        }
        let renamed = dir.path().join(format!("r {t} ü.vmdk"));
        vdisk_ok(&["rename", s(&d), s(&renamed)]);
        assert!(!d.exists());
        let disk = vmdk_file::local::LocalDisk::open(&renamed, &Default::default()).unwrap();
        let mut buf = vec![0u8; 100_000];
        disk.read_at(MIB as u64, &mut buf).unwrap();
        assert!(
            buf.iter().all(|&b| b == 0x66),
            "{t}: renamed disk reads back"
        );
        drop(disk);
        vdisk_ok(&["delete", s(&renamed)]);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(t))
            .collect();
        assert!(left.is_empty(), "{t}: files left: {left:?}");
    }
    // Compact drops zero grains and unreferenced space.
    let d = dir.path().join("c.vmdk");
    vdisk_ok(&["create", s(&d), "8M"]);
    vdisk_ok(&[
        "write",
        s(&d),
        "--offset",
        "0",
        "--pattern",
        "0",
        "--length",
        "4M",
    ]);
    vdisk_ok(&[
        "write",
        s(&d),
        "--offset",
        "4M",
        "--pattern",
        "9",
        "--length",
        "64K",
    ]);
    let before = std::fs::metadata(&d).unwrap().len();
    vdisk_ok(&["compact", s(&d)]);
    let after = std::fs::metadata(&d).unwrap().len();
    assert!(
        after + (4 << 20) <= before + (64 << 10),
        "{before} -> {after}"
    );
    let raw = vdisk_raw(&d);
    assert!(
        raw[4 * MIB..4 * MIB + 65536].iter().all(|&b| b == 9)
            && raw[..4 * MIB].iter().all(|&b| b == 0)
    );
    assert_eq!(vdisk(&["check", s(&d)]).status.code(), Some(0));
}

#[test]
fn create_limits_and_errors() {
    let dir = tempdir();
    let d = dir.path().join("big.vmdk");
    let out = vdisk(&["create", "-t", "monolithicSparse", s(&d), "3T"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("more than a monolithicSparse disk can hold")
    );
    assert!(!d.exists());
    vdisk_ok(&["create", "-t", "monolithicSparse", s(&d), "2047G"]);
    let out = vdisk(&["create", s(&d), "1M"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = vdisk(&["create", "-t", "bogus", s(&dir.path().join("x.vmdk")), "1M"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown disk type"));
    for adapter in ["ide", "buslogic", "lsilogic", "legacyESX", "pvscsi"] {
        let p = dir.path().join(format!("a-{adapter}.vmdk"));
        vdisk_ok(&[
            "create",
            "--adapter",
            adapter,
            "--hw-version",
            "7",
            s(&p),
            "2G",
        ]);
        let info: serde_json::Value =
            serde_json::from_slice(&vdisk_ok(&["info", "--json", s(&p)])).unwrap();
        assert_eq!(info["adapter_type"], adapter);
        assert_eq!(info["hw_version"], 7);
        let heads = info["geometry"]["heads"].as_u64().unwrap();
        assert_eq!(heads, if adapter == "ide" { 16 } else { 255 });
        assert!(info["ddb"]["ddb.uuid"].as_str().unwrap().len() == 47);
    }
    // A stream cannot be written in place.
    let st = dir.path().join("s.vmdk");
    vdisk_ok(&["create", "-t", "streamOptimized", s(&st), "1M"]);
    let out = vdisk(&[
        "write",
        s(&st),
        "--offset",
        "0",
        "--pattern",
        "1",
        "--length",
        "1",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
}

#[test]
fn repair_mends_what_check_finds() {
    let dir = tempdir();
    let d = dir.path().join("r.vmdk");
    vdisk_ok(&["create", s(&d), "8M"]);
    vdisk_ok(&[
        "write",
        s(&d),
        "--offset",
        "0",
        "--pattern",
        "0x42",
        "--length",
        "2M",
    ]);
    let good = std::fs::read(&d).unwrap();
    let h = |at: usize| u64::from_le_bytes(good[at..at + 8].try_into().unwrap());
    let (rgd, gd) = (h(48) as usize, h(56) as usize);
    let rd = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let gt0 = rd(&good, gd * 512);
    let rgt0 = rd(&good, rgd * 512);

    // GD entry destroyed: rebuilt from the redundant copy.
    let mut b = good.clone();
    b[gd * 512..gd * 512 + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    b[72] = 1;
    std::fs::write(&d, &b).unwrap();
    assert_eq!(vdisk(&["check", s(&d)]).status.code(), Some(2));
    let out = vdisk(&["check", "--repair", s(&d)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("rebuilt from its redundant copy")
            && text.contains("cleared uncleanShutdown"),
        "{text}"
    );
    assert!(vdisk_raw(&d)[..2 * MIB].iter().all(|&x| x == 0x42));

    // Entries past EOF dropped; GT/RGT disagreement settled.
    let mut b = good.clone();
    b[gt0 * 512 + 8..gt0 * 512 + 12].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    b[rgt0 * 512 + 8..rgt0 * 512 + 12].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    b[rgt0 * 512 + 4..rgt0 * 512 + 8].copy_from_slice(&0u32.to_le_bytes());
    std::fs::write(&d, &b).unwrap();
    let out = vdisk(&["check", "--repair", s(&d)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("dropped sector 16777215"), "{text}");
    let raw = vdisk_raw(&d);
    assert!(raw[..2 * 65536].iter().all(|&x| x == 0x42));
    assert!(
        raw[2 * 65536..3 * 65536].iter().all(|&x| x == 0),
        "the dropped grain reads as unallocated"
    );
    assert!(String::from_utf8_lossy(&qemu_img(&["check", s(&d)]).stdout).contains("No errors"));
}

use crate::support::torture::{self, byte_of};

/// The crash test's workload, run to completion in this process: every
/// write reads back, and the image checks clean. In the crash test's
/// child process (`VDISK_TORTURE` set) this is the workload it kills.
#[test]
fn torture_workload() {
    torture::run_child_if_asked();
    let dir = tempdir();
    let img = dir.path().join("t.vmdk");
    vdisk_ok(&["create", s(&img), "4M"]);
    let mut log = Vec::new();
    torture::run(&img, 7, 60, 5, &mut log).unwrap();
    let mut model = vec![0u8; 4 * MIB];
    for l in String::from_utf8(log).unwrap().lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if let ["w" | "z", i, off, len] = f.as_slice() {
            let (i, off, len): (u64, u64, u64) = (
                i.parse().unwrap(),
                off.parse().unwrap(),
                len.parse().unwrap(),
            );
            for x in off..off + len {
                model[x as usize] = if f[0] == "z" { 0 } else { byte_of(i, x) };
            }
        }
    }
    assert_eq!(vdisk(&["check", s(&img)]).status.code(), Some(0));
    assert!(vdisk_raw(&img) == model, "the disk differs from its writes");
}

/// 200+ SIGKILLs during random writes: every time the image opens, check
/// is clean after repair, and every write covered by a completed flush
/// reads back intact.
#[test]
fn crash_consistency_under_sigkill() {
    let dir = tempdir();
    let cap = 4 * MIB as u64;
    let mut kills = 0;
    let mut seed = 1u64;
    let start = Instant::now();
    while kills < 210 {
        seed += 1;
        let img = dir.path().join(format!("crash{}.vmdk", seed % 4));
        let _ = std::fs::remove_file(&img);
        vdisk_ok(&["create", s(&img), "4M"]);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "write::torture_workload",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(torture::ENV, format!("{} {seed} 400 5", s(&img)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Let it run a random number of operations, then kill it.
        let target = 3 + (seed * 7919) % 60;
        let mut log = Vec::new();
        while (log.len() as u64) < target {
            match lines.next() {
                Some(Ok(l)) => log.push(l),
                _ => break,
            }
        }
        if seed.is_multiple_of(3) {
            std::thread::sleep(Duration::from_micros(seed % 2000));
        }
        let _ = child.kill();
        let _ = child.wait();
        log.extend(lines.map_while(|l| l.ok()));
        kills += 1;

        // Replay: state at the last completed flush, and what came after.
        let mut ops: Vec<(char, u64, u64, u64)> = Vec::new();
        let mut last_flush = 0usize;
        for l in &log {
            let f: Vec<&str> = l.split(' ').collect();
            match f[0] {
                "w" | "z" => ops.push((
                    f[0].chars().next().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                )),
                "f" => last_flush = ops.len(),
                _ => panic!("bad line {l}"),
            }
        }
        let mut model = vec![0u8; cap as usize];
        for &(k, i, off, len) in &ops[..last_flush] {
            for x in off..off + len {
                model[x as usize] = if k == 'z' { 0 } else { byte_of(i, x) };
            }
        }
        let mut unstable = vec![false; cap as usize];
        for &(_, _, off, len) in &ops[last_flush..] {
            unstable[off as usize..(off + len) as usize].fill(true);
        }

        let out = vdisk(&["check", "--repair", s(&img)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "seed {seed}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            vdisk(&["check", s(&img)]).status.code(),
            Some(0),
            "seed {seed}: not clean after repair"
        );
        let raw = vdisk_raw(&img);
        for x in 0..cap as usize {
            if !unstable[x] && raw[x] != model[x] {
                panic!("seed {seed}: byte {x} is {:#x}, flushed value {:#x} (flush after {last_flush} of {} ops)", raw[x], model[x], ops.len());
            }
        }
    }
    assert!(kills >= 200);
    eprintln!("{kills} kills in {:?}", start.elapsed());
}
