//! Oracle suite: images made by qemu-img / qemu-io, read by `vdisk` and by
//! qemu, compared byte for byte; maps compared on what is data.

use std::path::Path;

use crate::support::*;

/// A 24 MiB pattern: data, explicit zeros, holes, a partial grain.
fn source(dir: &Path) -> std::path::PathBuf {
    let mut data = pattern(24 << 20, 7);
    data[(2 << 20)..(5 << 20)].fill(0); // explicit zeros
    data[(9 << 20)..(20 << 20)].fill(0); // will be a hole too
    data[(20 << 20) + 512 * 7..(20 << 20) + 65536].fill(0); // partial grain
    write(dir, "src.raw", &data)
}

fn compare(img: &Path, dir: &Path) {
    let ours = vdisk_raw(img);
    let theirs = qemu_raw(img, dir);
    assert_same(&ours, &theirs, &img.display().to_string());
    assert_eq!(
        vdisk_data_ranges(img),
        qemu_data_ranges(img),
        "{}: map differs from qemu-img map",
        img.display()
    );
}

#[test]
fn every_qemu_subformat_and_option() {
    let dir = tempdir();
    let src = source(dir.path());
    let variants: &[(&str, &str)] = &[
        ("monolithicSparse", "subformat=monolithicSparse"),
        (
            "monolithicSparse-zg",
            "subformat=monolithicSparse,zeroed_grain=on",
        ),
        (
            "monolithicSparse-lsi",
            "subformat=monolithicSparse,adapter_type=lsilogic,hwversion=6",
        ),
        (
            "monolithicSparse-bus",
            "subformat=monolithicSparse,adapter_type=buslogic,toolsversion=1234",
        ),
        ("monolithicFlat", "subformat=monolithicFlat"),
        (
            "monolithicFlat-legacy",
            "subformat=monolithicFlat,adapter_type=legacyESX",
        ),
        ("twoGbMaxExtentSparse", "subformat=twoGbMaxExtentSparse"),
        (
            "twoGbMaxExtentSparse-zg",
            "subformat=twoGbMaxExtentSparse,zeroed_grain=on",
        ),
        ("twoGbMaxExtentFlat", "subformat=twoGbMaxExtentFlat"),
        ("streamOptimized", "subformat=streamOptimized"),
        (
            "streamOptimized-ide",
            "subformat=streamOptimized,adapter_type=ide",
        ),
    ];
    for (name, opts) in variants {
        let img = dir.path().join(format!("{name}.vmdk"));
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            opts,
            s(&src),
            s(&img),
        ]);
        compare(&img, dir.path());
        let check = vdisk(&["check", s(&img)]);
        assert!(
            check.status.success(),
            "{name}: check: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
}

#[test]
fn split_extents_across_boundaries() {
    // Larger than one 2 GiB split: qemu makes several extent files; only
    // the data near the boundary is written, so this stays small.
    let dir = tempdir();
    for sub in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let img = dir.path().join(format!("{sub}.vmdk"));
        qemu_img(&[
            "create",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            s(&img),
            "4200M",
        ]);
        let boundary = 4_194_304u64 * 512; // qemu's split size
        qemu_io(&[
            "-f",
            "vmdk",
            "-c",
            &format!("write -P 0x5a {} 1M", boundary - 512 * 1024),
            s(&img),
        ]);
        let info: serde_json::Value =
            serde_json::from_slice(&vdisk_ok(&["info", "--json", s(&img)])).unwrap();
        assert!(
            info["extents"].as_array().unwrap().len() >= 3,
            "{sub}: expected several extents"
        );
        let data: u64 = vdisk_data_ranges(&img).iter().map(|r| r.1 - r.0).sum();
        if sub.ends_with("Sparse") {
            assert!(data > 0 && data <= 2 << 20, "{sub}: {data} bytes of data");
        } else {
            assert_eq!(data, 4200 << 20, "{sub}: flat extents are data throughout");
        }
        // Read the boundary region through vdisk and compare with qemu-io's view.
        let raw = vdisk_raw(&img);
        let b = boundary as usize;
        assert!(raw[b - 512 * 1024..b + 512 * 1024]
            .iter()
            .all(|&x| x == 0x5a));
        assert!(raw[..b - 512 * 1024].iter().all(|&x| x == 0));
        assert!(raw[b + 512 * 1024..].iter().all(|&x| x == 0));
        qemu_io(&[
            "-f",
            "vmdk",
            "-c",
            &format!("read -P 0x5a {} 1M", boundary - 512 * 1024),
            s(&img),
        ]);
    }
}

#[test]
fn qemu_io_writes_zeroed_grains() {
    let dir = tempdir();
    let img = dir.path().join("zg.vmdk");
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        s(&img),
        "8M",
    ]);
    qemu_io(&["-f", "vmdk", "-c", "write -P 0x11 0 4M", s(&img)]);
    qemu_io(&["-f", "vmdk", "-c", "write -z 1M 1M", s(&img)]);
    compare(&img, dir.path());
    let map: serde_json::Value =
        serde_json::from_slice(&vdisk_ok(&["map", "--json", s(&img)])).unwrap();
    assert!(map
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "zero" && e["start"] == 1 << 20));
}

#[test]
fn capacity_not_a_multiple_of_the_grain() {
    let dir = tempdir();
    let img = dir.path().join("odd.vmdk");
    // 1000000 bytes: qemu rounds up to whole sectors, not whole grains.
    qemu_img(&["create", "-f", "vmdk", s(&img), "1000000"]);
    qemu_io(&["-f", "vmdk", "-c", "write -P 0x77 980000 19968", s(&img)]);
    compare(&img, dir.path());
    let src = write(dir.path(), "odd.raw", &pattern(1_000_448, 3));
    let stream = dir.path().join("odd-stream.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        s(&src),
        s(&stream),
    ]);
    compare(&stream, dir.path());
}
