//! `vdisk check` finds what readers trip on: header capacities that
//! disagree with the descriptor, compressed grains that do not inflate
//! to a grain, and everything `qemu-img check` calls corrupt.

use std::path::Path;

use crate::support::build::{self, Grain, Stream, StreamLayout};
use crate::support::*;

fn check(img: &Path) -> (i32, String) {
    let out = vdisk(&["check", s(img)]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn data(len: usize) -> Vec<u8> {
    let mut d = pattern(len, 40);
    // A zero stretch and a compressible one.
    d[len / 4..len / 2].fill(0);
    for (i, b) in d[len / 2..len * 3 / 4].iter_mut().enumerate() {
        *b = b"vdisk check "[i % 12];
    }
    d
}

/// (a) A sparse header holding more than its descriptor line says.
#[test]
fn header_capacity_that_disagrees_with_the_descriptor_is_corruption() {
    let dir = tempdir();
    let d = data(2 << 20);
    // Embedded descriptor: the line says 2 MiB, the header 4 MiB.
    let mut sp = build::Sparse::new(8192, build::grains_of(&d, 65536));
    sp.descriptor = Some(build::embedded_descriptor(
        "monolithicSparse",
        8192,
        "m.vmdk",
        "# Disk DescriptorFile",
    ));
    let (good, _) = sp.build();
    let p = write(dir.path(), "m.vmdk", &good);
    assert_eq!(check(&p).0, 0, "{}", check(&p).1);
    sp.descriptor = Some(build::embedded_descriptor(
        "monolithicSparse",
        4096,
        "m.vmdk",
        "# Disk DescriptorFile",
    ));
    let (bytes, _) = sp.build();
    let p = write(dir.path(), "m.vmdk", &bytes);
    let (code, out) = check(&p);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("CapacityMismatch"), "{out}");
    assert!(out.contains("8192") && out.contains("4096"), "{out}");

    // A separate descriptor naming the extent with a smaller size.
    let mut sp = build::Sparse::new(8192, build::grains_of(&d, 65536));
    sp.descriptor = None;
    let (ext, _) = sp.build();
    write(dir.path(), "s-s001.vmdk", &ext);
    let desc = |sectors: u64| {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\nRW {sectors} SPARSE \"s-s001.vmdk\"\n\nddb.adapterType = \"lsilogic\"\n"
        )
    };
    let p = write(dir.path(), "s.vmdk", desc(8192).as_bytes());
    assert_eq!(check(&p).0, 0, "{}", check(&p).1);
    let p = write(dir.path(), "s.vmdk", desc(6144).as_bytes());
    let (code, out) = check(&p);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("CapacityMismatch"), "{out}");
    // A header smaller than its line cannot be read at all.
    let p = write(dir.path(), "s.vmdk", desc(16384).as_bytes());
    let (code, out) = check(&p);
    assert_eq!(code, 2, "{out}");
}

/// Where each compressed grain record of a stream starts, by walking
/// its markers from the overhead.
fn grain_records(file: &[u8]) -> Vec<(usize, u64, usize)> {
    let overhead = u64::from_le_bytes(file[64..72].try_into().unwrap()) as usize;
    let mut at = overhead * 512;
    let mut out = Vec::new();
    while at + 16 <= file.len() {
        let val = u64::from_le_bytes(file[at..at + 8].try_into().unwrap());
        let size = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
        let kind = u32::from_le_bytes(file[at + 12..at + 16].try_into().unwrap());
        if size != 0 {
            out.push((at, val, size));
            at += (12 + size).div_ceil(512) * 512;
        } else if kind == 0 {
            break;
        } else {
            at += (val as usize + 1) * 512;
        }
    }
    out
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// (b) Every compressed grain must inflate to a whole grain (the last one
/// may be short) under a marker naming its own sector.
#[test]
fn every_compressed_grain_must_inflate_to_its_grain() {
    let dir = tempdir();
    // 3 MiB + 4 KiB: the last grain holds 8 sectors.
    let d = data((3 << 20) + 4096);
    for layout in [StreamLayout::GdAtEnd, StreamLayout::VmwareGdAtFront] {
        let st = Stream {
            layout,
            capacity: (d.len() / 512) as u64,
            grain: 128,
            signature: "# Disk DescriptorFile",
            extent_name: "st.vmdk",
            type4_marker: false,
        };
        let good = st.build(&d);
        let p = write(dir.path(), "st.vmdk", &good);
        assert_same(&vdisk_raw(&p), &d, "stream");
        let (code, out) = check(&p);
        assert_eq!(code, 0, "{layout:?}, a short last grain is fine: {out}");
        let records = grain_records(&good);
        assert!(records.len() > 10);
        let (at, lba, size) = records[3];

        // Deflate data that does not inflate.
        let mut b = good.clone();
        for x in &mut b[at + 12 + size / 2..at + 12 + size / 2 + 8] {
            *x ^= 0x5a;
        }
        let p = write(dir.path(), "bad-deflate.vmdk", &b);
        assert_eq!(vdisk(&["cat", s(&p)]).status.code(), Some(1));
        let (code, out) = check(&p);
        assert_eq!(code, 2, "{layout:?}: {out}");
        assert!(
            out.contains("BadGrain") && out.contains(&format!("byte {at}")),
            "{out}"
        );

        // A grain (not the last) that inflates to half a grain.
        let mut b = good.clone();
        let grain = lba as usize * 512;
        let z = zlib(&d[grain..grain + 32768]);
        assert!(z.len() <= size);
        b[at + 8..at + 12].copy_from_slice(&(z.len() as u32).to_le_bytes());
        b[at + 12..at + 12 + z.len()].copy_from_slice(&z);
        let p = write(dir.path(), "short.vmdk", &b);
        assert_eq!(vdisk(&["cat", s(&p)]).status.code(), Some(1));
        let (code, out) = check(&p);
        assert_eq!(code, 2, "{layout:?}: {out}");
        assert!(out.contains("BadGrain") && out.contains("32768"), "{out}");

        // A grain that inflates to more than a grain.
        let mut b = good.clone();
        let mut big = d[grain..grain + 65536].to_vec();
        big.extend_from_slice(&[0u8; 512]);
        let z = zlib(&big);
        if z.len() <= size {
            b[at + 8..at + 12].copy_from_slice(&(z.len() as u32).to_le_bytes());
            b[at + 12..at + 12 + z.len()].copy_from_slice(&z);
            let p = write(dir.path(), "long.vmdk", &b);
            let (code, out) = check(&p);
            assert_eq!(code, 2, "{layout:?}: {out}");
            assert!(out.contains("BadGrain"), "{out}");
        }

        // A marker naming another grain's sector.
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&(lba + 128).to_le_bytes());
        let p = write(dir.path(), "lba.vmdk", &b);
        let (code, out) = check(&p);
        assert_eq!(code, 2, "{layout:?}: {out}");
        assert!(out.contains("BadGrain"), "{out}");
    }
}

/// (c) Whatever `qemu-img check` calls corrupt (or cannot open), `vdisk
/// check` does not pass: a table of corruptions of each disk type.
#[test]
fn check_is_at_least_as_strict_as_qemu_img_check() {
    let dir = tempdir();
    let d = data(4 << 20);
    let mut sp = build::Sparse::new(8192, build::grains_of(&d, 65536));
    sp.grains.insert(60, Grain::Zeroed);
    sp.version = 2;
    sp.zeroed_flag = true;
    sp.descriptor = Some(build::embedded_descriptor(
        "monolithicSparse",
        8192,
        "x.vmdk",
        "# Disk DescriptorFile",
    ));
    let (sparse, m) = sp.build();
    let put = |b: &mut Vec<u8>, at: u64, v: u32| {
        b[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes())
    };
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    cases.push(("good".into(), sparse.clone()));
    let gte = |t: u64, i: u64| t * 512 + i * 4;
    for (name, value) in [
        ("gte past eof", 0x00ff_ffffu32),
        ("gte just at eof", (sparse.len() / 512) as u32),
        ("gte into metadata", 1),
        ("gte into the gd", m.gd as u32),
    ] {
        for table in [&m.gt, &m.rgt] {
            let mut b = sparse.clone();
            put(&mut b, gte(table[0], 5), value);
            put(&mut b, gte(table[0], 6), value);
            cases.push((format!("{name} ({})", table[0]), b));
        }
    }
    for (name, value) in [("gd past eof", 0x00ff_fff0u32), ("gd into header", 0)] {
        let mut b = sparse.clone();
        put(&mut b, m.gd * 512, value);
        cases.push((name.into(), b.clone()));
        put(&mut b, m.rgd * 512, value);
        cases.push((format!("{name}, rgd too"), b));
    }
    // Truncated: inside the last grain, before the first grain, before
    // the overhead ends.
    cases.push((
        "cut last grain".into(),
        sparse[..sparse.len() - 512].to_vec(),
    ));
    let overhead = m.overhead as usize * 512;
    cases.push(("cut at overhead".into(), sparse[..overhead].to_vec()));
    let gt_end = ((m.gt[0] + 4) * 512) as usize;
    cases.push(("cut before overhead".into(), sparse[..gt_end].to_vec()));
    // Capacity larger than the descriptor's line.
    let mut b = sparse.clone();
    b[12..20].copy_from_slice(&16384u64.to_le_bytes());
    cases.push(("header capacity".into(), b));

    // A stream with a bad grain.
    let st = Stream {
        layout: StreamLayout::VmwareGdAtFront,
        capacity: (d.len() / 512) as u64,
        grain: 128,
        signature: "# Disk DescriptorFile",
        extent_name: "x.vmdk",
        type4_marker: false,
    };
    let stream = st.build(&d);
    cases.push(("stream".into(), stream.clone()));
    let (at, _, size) = grain_records(&stream)[2];
    let mut b = stream.clone();
    b[at + 12 + size / 2] ^= 0xff;
    b[at + 13 + size / 2] ^= 0xff;
    cases.push(("stream bad deflate".into(), b));
    let mut b = stream.clone();
    b[at + 8..at + 12].copy_from_slice(&0u32.to_le_bytes());
    cases.push(("stream zero size".into(), b));

    let mut failures = Vec::new();
    for (name, bytes) in &cases {
        let p = write(dir.path(), "x.vmdk", bytes);
        let q = std::process::Command::new("qemu-img")
            .args(["check", "-f", "vmdk", s(&p)])
            .output()
            .expect("qemu-img");
        let qcat = std::process::Command::new("qemu-img")
            .args([
                "convert",
                "-f",
                "vmdk",
                "-O",
                "raw",
                s(&p),
                s(&dir.path().join("x.raw")),
            ])
            .output()
            .expect("qemu-img");
        let (code, out) = check(&p);
        let qemu_bad = !q.status.success() || !qcat.status.success();
        let ours_read = vdisk(&["cat", s(&p), "-o", s(&dir.path().join("y.raw"))]);
        eprintln!(
            "{name}: qemu check {:?} convert {:?}; vdisk check {code}, cat {:?}",
            q.status.code(),
            qcat.status.code(),
            ours_read.status.code()
        );
        if qemu_bad && code != 2 {
            failures.push(format!(
                "{name}: qemu finds a problem, vdisk check says {code}: {out}"
            ));
        }
        if !ours_read.status.success() && code != 2 {
            failures.push(format!(
                "{name}: vdisk cat fails, vdisk check says {code}: {out}"
            ));
        }
        if name == "good" || name == "stream" {
            assert_eq!(code, 0, "{name}: {out}");
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `vdisk check --help` says what is checked.
#[test]
fn help_lists_what_check_checks() {
    let help = String::from_utf8(vdisk_ok(&["check", "--help"])).unwrap();
    for needle in [
        "capacity",
        "overHead",
        "inflates",
        "redundant",
        "qemu-img check",
        "parentCID",
    ] {
        assert!(help.contains(needle), "`{needle}` in:\n{help}");
    }
}
