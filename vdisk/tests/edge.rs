//! Section 4 of the format notes, case by case: each test asserts the
//! correct behaviour (not a peer's bug).

use std::path::Path;

use crate::support::build::{self, Grain};
use crate::support::*;

const MIB: usize = 1 << 20;

fn flat_disk(dir: &Path, data_name: &str, len: usize, seed: u64) -> Vec<u8> {
    let data = pattern(len, seed);
    write(dir, data_name, &data);
    data
}

fn expect_error(args: &[&str], needle: &str) {
    let out = vdisk(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected `{needle}` in: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"));
}

fn check_code(img: &Path) -> (i32, String) {
    let out = vdisk(&["check", s(img)]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// 1, 2 and 4: CRLF, BOM, NUL padding, spaces around `=`, the four
/// signatures, keyword case; a lone CR is refused.
#[test]
fn descriptor_text_variants() {
    let dir = tempdir();
    let data = flat_disk(dir.path(), "d-flat.vmdk", MIB, 1);
    let base = flat_descriptor("d-flat.vmdk", 2048);
    let mut variants: Vec<Vec<u8>> = vec![
        base.replace('\n', "\r\n").into_bytes(),
        [b"\xEF\xBB\xBF".as_slice(), base.as_bytes(), &[0u8; 300]].concat(),
        base.replace("createType=", "createType = ")
            .replace("CID=", "CID =  ")
            .into_bytes(),
        base.replace("RW 2048 FLAT", "rw 2048 flat").into_bytes(),
    ];
    for sig in [
        "# Disk Descriptor File",
        "#Disk Descriptor File",
        "#Disk DescriptorFile",
    ] {
        variants.push(base.replace("# Disk DescriptorFile", sig).into_bytes());
    }
    for (i, v) in variants.iter().enumerate() {
        let p = write(dir.path(), &format!("v{i}.vmdk"), v);
        assert_same(&vdisk_raw(&p), &data, &format!("variant {i}"));
    }
    let p = write(
        dir.path(),
        "cr.vmdk",
        base.replacen("\n", "\r", 3).as_bytes(),
    );
    expect_error(&["info", s(&p)], "lone carriage return");
}

/// 3: quoted names with spaces, UTF-8 and `@`; windows-1252; paths that
/// leave the directory are refused unless allowed.
#[test]
fn extent_names_and_confinement() {
    let dir = tempdir();
    let data = flat_disk(dir.path(), "sp ace ü@ds-flat.vmdk", MIB, 2);
    let p = write(
        dir.path(),
        "utf8.vmdk",
        flat_descriptor("sp ace ü@ds-flat.vmdk", 2048).as_bytes(),
    );
    assert_same(&vdisk_raw(&p), &data, "utf-8 name");

    let data2 = flat_disk(dir.path(), "é-flat.vmdk", MIB, 3);
    let mut text = flat_descriptor("X-flat.vmdk", 2048)
        .replace("version=1\n", "version=1\nencoding=\"windows-1252\"\n")
        .into_bytes();
    let at = text.iter().position(|&b| b == b'X').unwrap();
    text[at] = 0xE9;
    let p = write(dir.path(), "cp1252.vmdk", &text);
    assert_same(&vdisk_raw(&p), &data2, "windows-1252 name");

    let sub = dir.path().join("vm");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(dir.path().join("outside-flat.vmdk"), pattern(MIB, 4)).unwrap();
    for name in [
        "../outside-flat.vmdk",
        &format!("{}/outside-flat.vmdk", s(dir.path())),
    ] {
        let p = write(&sub, "esc.vmdk", flat_descriptor(name, 2048).as_bytes());
        expect_error(&["cat", s(&p)], "leaves the descriptor's directory");
        assert_eq!(
            vdisk_ok(&["cat", "--allow-outside-paths", s(&p)]),
            pattern(MIB, 4)
        );
    }
    // A symlink inside the directory that leads out.
    std::os::unix::fs::symlink("../outside-flat.vmdk", sub.join("link-flat.vmdk")).unwrap();
    let p = write(
        &sub,
        "link.vmdk",
        flat_descriptor("link-flat.vmdk", 2048).as_bytes(),
    );
    expect_error(&["cat", s(&p)], "leaves the descriptor's directory");
    // A symlinked directory leading out.
    std::os::unix::fs::symlink("..", sub.join("up")).unwrap();
    let p = write(
        &sub,
        "dirlink.vmdk",
        flat_descriptor("up/outside-flat.vmdk", 2048).as_bytes(),
    );
    expect_error(&["cat", s(&p)], "leaves the descriptor's directory");
}

/// 5 and 6: RDONLY, NOACCESS and ZERO extents count toward the capacity;
/// ZERO reads as zeros; NOACCESS cannot be read; 6/7-field lines parse.
#[test]
fn access_modes_zero_extents_and_device_fields() {
    let dir = tempdir();
    let data = flat_disk(dir.path(), "a-flat.vmdk", 4 * MIB, 5);
    let desc = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"custom\"\n\nRDONLY 8192 FLAT \"a-flat.vmdk\" 0\nRDONLY 8192 ZERO\n";
    let p = write(dir.path(), "z.vmdk", desc.as_bytes());
    let info: serde_json::Value =
        serde_json::from_slice(&vdisk_ok(&["info", "--json", s(&p)])).unwrap();
    assert_eq!(
        info["capacity"],
        8 * MIB as u64,
        "ZERO extents count toward the capacity"
    );
    let raw = vdisk_raw(&p);
    assert_same(&raw[..4 * MIB], &data, "flat part");
    assert!(raw[4 * MIB..].iter().all(|&b| b == 0));
    let map: serde_json::Value =
        serde_json::from_slice(&vdisk_ok(&["map", "--json", s(&p)])).unwrap();
    assert_eq!(map[1]["kind"], "zero");

    let desc = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"custom\"\n\nRW 4096 FLAT \"a-flat.vmdk\" 0\nNOACCESS 4096 FLAT \"a-flat.vmdk\" 4096\n";
    let p = write(dir.path(), "na.vmdk", desc.as_bytes());
    expect_error(&["cat", s(&p)], "NOACCESS");

    let desc = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"partitionedDevice\"\n\nRW 4096 FLAT \"a-flat.vmdk\" 0 partition-uuid \"device id 7\"\nRW 4096 FLAT \"a-flat.vmdk\" 4096\n";
    let p = write(dir.path(), "dev.vmdk", desc.as_bytes());
    assert_same(&vdisk_raw(&p), &data, "6/7-field extent lines");
}

/// 7: a renamed monolithic or stream file binds to itself.
#[test]
fn renamed_monolithic_files() {
    let dir = tempdir();
    let src = write(dir.path(), "src.raw", &pattern(3 * MIB, 6));
    for sub in ["monolithicSparse", "streamOptimized"] {
        let img = dir.path().join(format!("{sub}.vmdk"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            s(&src),
            s(&img),
        ]);
        let renamed = dir.path().join(format!("renamed {sub} ü.vmdk"));
        std::fs::rename(&img, &renamed).unwrap();
        assert_same(&vdisk_raw(&renamed), &pattern(3 * MIB, 6), sub);
    }
}

fn sparse_with_data() -> (build::Sparse, Vec<u8>) {
    let mut data = pattern(4 * MIB, 9);
    data[MIB..2 * MIB].fill(0);
    let sp = build::Sparse::new(8192, build::grains_of(&data, 65536));
    (sp, data)
}

/// 10: GTE = 1 is a zeroed grain only with the flag; otherwise it points
/// at the descriptor and is corruption.
#[test]
fn zeroed_grain_entries() {
    let dir = tempdir();
    let (mut sp, mut data) = sparse_with_data();
    sp.grains.insert(3, Grain::Zeroed);
    data[3 * 65536..4 * 65536].fill(0);
    sp.version = 2;
    sp.zeroed_flag = true;
    let (bytes, _) = sp.build();
    let p = write(dir.path(), "zg.vmdk", &bytes);
    assert_same(&vdisk_raw(&p), &data, "zeroed grain");
    assert_eq!(check_code(&p).0, 0);

    sp.zeroed_flag = false;
    let (bytes, _) = sp.build();
    let p = write(dir.path(), "noflag.vmdk", &bytes);
    expect_error(&["cat", s(&p)], "points into metadata");
    let (code, out) = check_code(&p);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("EntryInMetadata"), "{out}");
}

/// 11, 12, 13: entries past EOF, into metadata, shared grains, GD entry 0,
/// GD versus RGD and GT versus RGT.
#[test]
fn table_corruptions() {
    let dir = tempdir();
    let (sp, data) = sparse_with_data();
    let (good, m) = sp.build();
    let p = write(dir.path(), "good.vmdk", &good);
    assert_same(&vdisk_raw(&p), &data, "good");
    assert_eq!(check_code(&p).0, 0);
    let gte = |table: u64, i: u64| (table * 512 + i * 4) as usize;
    let set = |bytes: &mut Vec<u8>, at: usize, v: u32| {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes())
    };

    // GTE past EOF (in both copies so only that is wrong).
    let mut b = good.clone();
    set(&mut b, gte(m.gt[0], 2), 10_000_000);
    set(&mut b, gte(m.rgt[0], 2), 10_000_000);
    let p = write(dir.path(), "eof.vmdk", &b);
    expect_error(&["cat", s(&p)], "past end of file");
    let (code, out) = check_code(&p);
    assert!(code == 2 && out.contains("EntryBeyondEof"), "{out}");

    // Truncated file: the last grain is cut.
    let p = write(dir.path(), "trunc.vmdk", &good[..good.len() - 1000]);
    let out = vdisk(&["cat", s(&p)]);
    assert_eq!(out.status.code(), Some(1));
    let (code, out) = check_code(&p);
    assert!(code == 2 && out.contains("EntryBeyondEof"), "{out}");

    // GD entry past EOF.
    let mut b = good.clone();
    set(&mut b, (m.gd * 512) as usize, 0x7fff_ffff);
    let p = write(dir.path(), "gd-eof.vmdk", &b);
    expect_error(&["cat", s(&p)], "past end of file");
    let (code, out) = check_code(&p);
    assert!(code == 2 && out.contains("BadDirectoryEntry"), "{out}");

    // GTE into metadata.
    let mut b = good.clone();
    set(&mut b, gte(m.gt[0], 0), m.gd as u32);
    set(&mut b, gte(m.rgt[0], 0), m.gd as u32);
    let p = write(dir.path(), "meta.vmdk", &b);
    expect_error(&["cat", s(&p)], "points into metadata");
    let (code, out) = check_code(&p);
    assert!(code == 2 && out.contains("EntryInMetadata"), "{out}");

    // Two GTEs, one grain: reads succeed, check flags the sharing.
    let mut b = good.clone();
    let shared = m.grain_sector[&0] as u32;
    set(&mut b, gte(m.gt[0], 40), shared);
    set(&mut b, gte(m.rgt[0], 40), shared);
    let p = write(dir.path(), "shared.vmdk", &b);
    vdisk_ok(&["cat", s(&p)]);
    let (code, out) = check_code(&p);
    assert!(code == 2 && out.contains("SharedGrain"), "{out}");

    // GD entry 0: the whole table's range is unallocated.
    let mut sp0 = build::Sparse::new(8192, build::grains_of(&data, 65536));
    sp0.empty_gts = vec![0];
    let (b, _) = sp0.build();
    let p = write(dir.path(), "gd0.vmdk", &b);
    let raw = vdisk_raw(&p);
    assert!(
        raw[..MIB * 2].iter().all(|&x| x == 0),
        "GD entry 0 reads as unallocated"
    );
    let map: serde_json::Value =
        serde_json::from_slice(&vdisk_ok(&["map", "--json", s(&p)])).unwrap();
    assert_eq!(map[0]["kind"], "unallocated");

    // GD differs from RGD.
    let mut b = good.clone();
    set(&mut b, (m.rgd * 512) as usize, 0);
    let p = write(dir.path(), "rgd.vmdk", &b);
    let (code, out) = check_code(&p);
    assert!(code == 2 && out.contains("DirectoryMismatch"), "{out}");
    // GT differs from its redundant copy.
    let mut b = good.clone();
    set(&mut b, gte(m.rgt[0], 1), 0);
    let p = write(dir.path(), "rgt.vmdk", &b);
    let (code, out) = check_code(&p);
    assert!(code == 2 && out.contains("TableMismatch"), "{out}");
}

/// 15: header sanity. Corrupted newline bytes, version 4, a grain that is
/// not a power of two are refused; an unclean shutdown is reported.
#[test]
fn header_sanity() {
    let dir = tempdir();
    let (sp, data) = sparse_with_data();
    let (good, _) = sp.build();
    let cases: &[(&str, usize, &[u8], &str)] = &[
        ("newline", 73, b"\n \n\n", "newline bytes mangled"),
        (
            "version",
            4,
            &4u32.to_le_bytes(),
            "only versions 1 to 3 exist",
        ),
        ("grain", 20, &3u64.to_le_bytes(), "must be a power of two"),
    ];
    for (name, at, bytes, needle) in cases {
        let mut b = good.clone();
        b[*at..*at + bytes.len()].copy_from_slice(bytes);
        let p = write(dir.path(), &format!("{name}.vmdk"), &b);
        expect_error(&["cat", s(&p)], needle);
        let (code, out) = check_code(&p);
        assert!(code == 2 && out.contains("Unreadable"), "{name}: {out}");
    }
    let mut b = good.clone();
    b[72] = 1;
    let p = write(dir.path(), "unclean.vmdk", &b);
    assert_same(&vdisk_raw(&p), &data, "unclean file still reads");
    let (code, out) = check_code(&p);
    assert!(code == 2 && out.contains("UncleanShutdown"), "{out}");
}

/// 15 (continued): an uncompressed version-3 extent (persistent CBT) is
/// read, but never written.
#[test]
fn version_3_uncompressed_is_read_only() {
    let dir = tempdir();
    let (mut sp, data) = sparse_with_data();
    sp.version = 3;
    let (bytes, _) = sp.build();
    let p = write(dir.path(), "v3.vmdk", &bytes);
    assert_same(&vdisk_raw(&p), &data, "v3 reads");
    expect_error(
        &[
            "write",
            s(&p),
            "--offset",
            "0",
            "--pattern",
            "1",
            "--length",
            "1",
        ],
        "version 3 sparse extents",
    );
    assert_eq!(std::fs::read(&p).unwrap(), bytes, "nothing was changed");
}

/// Usage errors exit 1 with one line, never a panic.
#[test]
fn usage_and_missing_files() {
    let out = vdisk(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    expect_error(&["info", "/nonexistent/disk.vmdk"], "No such file");
    let dir = tempdir();
    let p = write(dir.path(), "junk.vmdk", b"hello world, not a disk");
    expect_error(&["cat", s(&p)], "not a VMDK file");
    assert_eq!(vdisk(&["check", s(&p)]).status.code(), Some(1));
}

/// Sizes and offsets near `u64::MAX` are refused with one line, never an
/// arithmetic overflow (a panic in debug builds) or a wrapped value.
#[test]
fn values_near_u64_max_are_errors() {
    let dir = tempdir();
    let max = u64::MAX.to_string();
    let near = (u64::MAX - 511).to_string();
    let p = dir.path().join("d.vmdk");
    vdisk_ok(&["create", s(&p), "1M"]);
    for size in [&max, &near] {
        expect_error(
            &["create", s(&dir.path().join("big.vmdk")), size],
            "more than",
        );
        for t in ["monolithicFlat", "twoGbMaxExtentSparse", "streamOptimized"] {
            expect_error(
                &["create", "-t", t, s(&dir.path().join("big.vmdk")), size],
                "more than",
            );
        }
        expect_error(&["grow", s(&p), size], "more than a disk can hold");
    }
    let f = dir.path().join("f.vmdk");
    vdisk_ok(&["create", "-t", "monolithicFlat", s(&f), "1M"]);
    expect_error(&["grow", s(&f), &max], "more than a disk can hold");
    for (offset, length) in [
        (max.as_str(), "2"),
        ("1", max.as_str()),
        (near.as_str(), "512"),
    ] {
        expect_error(
            &[
                "write",
                s(&p),
                "--offset",
                offset,
                "--pattern",
                "1",
                "--length",
                length,
            ],
            "outside the disk",
        );
        expect_error(
            &[
                "write",
                s(&p),
                "--offset",
                offset,
                "--zero",
                "--length",
                length,
            ],
            "outside the disk",
        );
    }
    assert_eq!(vdisk(&["check", s(&p)]).status.code(), Some(0));
}
