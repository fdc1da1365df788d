//! Fixtures qemu cannot write, built byte by byte: streamOptimized in
//! the VMDKstream (GD_AT_END) and VMware layouts, COWD and seSparse
//! children. Expected content comes from the builder's input.

use std::collections::BTreeMap;

use crate::support::build::{self, SeGrain, Stream, StreamLayout};
use crate::support::*;

const MIB: usize = 1 << 20;

fn stream_data() -> Vec<u8> {
    // Compressible text, incompressible noise, zeros, and an odd tail.
    let mut d = Vec::new();
    while d.len() < MIB {
        d.extend_from_slice(b"The quick brown fox jumps over the lazy dog. ");
    }
    d.truncate(MIB);
    d.extend(pattern(MIB, 11));
    d.extend(vec![0u8; MIB]);
    d.extend(pattern(MIB - 3 * 512, 12));
    d
}

#[test]
fn stream_gd_at_end_with_type4_marker() {
    let dir = tempdir();
    let data = stream_data();
    let sectors = (data.len() / 512) as u64;
    let st = Stream {
        layout: StreamLayout::GdAtEnd,
        capacity: sectors,
        grain: 128,
        signature: "# Disk Descriptor File",
        extent_name: "generated-stream.vmdk",
        type4_marker: true,
    };
    let p = write(dir.path(), "vmdkstream.vmdk", &st.build(&data));
    assert_same(&vdisk_raw(&p), &data, "GD_AT_END stream");
    let out = vdisk(&["check", s(&p)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Without the type-4 marker qemu reads it too, identically.
    let st = Stream {
        type4_marker: false,
        ..st
    };
    let p = write(dir.path(), "plain.vmdk", &st.build(&data));
    assert_same(&vdisk_raw(&p), &qemu_raw(&p, dir.path()), "qemu agrees");

    // Truncation: the footer is gone.
    let full = st.build(&data);
    let p = write(dir.path(), "cut.vmdk", &full[..full.len() - 1024]);
    let out = vdisk(&["cat", s(&p)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("footer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(vdisk(&["check", s(&p)]).status.code(), Some(2));
}

#[test]
fn stream_vmware_layout_named_disk() {
    let dir = tempdir();
    let data = stream_data();
    let st = Stream {
        layout: StreamLayout::VmwareGdAtFront,
        capacity: (data.len() / 512) as u64,
        grain: 128,
        signature: "# Disk DescriptorFile",
        extent_name: "disk",
        type4_marker: false,
    };
    let bytes = st.build(&data);
    let p = write(dir.path(), "exported-disk1.vmdk", &bytes);
    assert_same(&vdisk_raw(&p), &data, "VMware stream");
    assert_eq!(vdisk(&["check", s(&p)]).status.code(), Some(0));

    // A corrupted deflate stream is an error, never zeros.
    let mut bad = bytes.clone();
    let first_grain = 21 * 512 + 512; // header+descriptor (21 sectors) + GD (1 sector)
    bad[first_grain + 40] ^= 0xff;
    bad[first_grain + 41] ^= 0xff;
    let p = write(dir.path(), "bad.vmdk", &bad);
    let out = vdisk(&["cat", s(&p)]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cowd_child_of_a_flat_base() {
    let dir = tempdir();
    let base = pattern(4 * MIB, 21);
    write(dir.path(), "base-flat.vmdk", &base);
    write(
        dir.path(),
        "base.vmdk",
        flat_descriptor("base-flat.vmdk", 8192).as_bytes(),
    );
    let mut grains = BTreeMap::new();
    let mut expect = base.clone();
    for (g, fill) in [(0u64, 0x10u8), (5, 0x20), (1000, 0x30), (8191, 0x40)] {
        grains.insert(g, vec![fill; 512]);
        expect[g as usize * 512..(g as usize + 1) * 512].fill(fill);
    }
    write(
        dir.path(),
        "child-delta.vmdk",
        &build::cowd(8192, 1, &grains),
    );
    let desc = "# Disk DescriptorFile\nversion=1\nCID=33333333\nparentCID=11111111\ncreateType=\"vmfsSparse\"\nparentFileNameHint=\"base.vmdk\"\n\n# Extent description\nRW 8192 VMFSSPARSE \"child-delta.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n";
    let child = write(dir.path(), "child.vmdk", desc.as_bytes());
    assert_same(&vdisk_raw(&child), &expect, "COWD child");
    assert_same(
        &vdisk_raw(&child),
        &qemu_raw(&child, dir.path()),
        "qemu agrees",
    );
    assert_eq!(vdisk(&["check", s(&child)]).status.code(), Some(0));
}

#[test]
fn sesparse_child_of_a_flat_base() {
    let dir = tempdir();
    let base = pattern(32 * MIB, 31);
    write(dir.path(), "base-flat.vmdk", &base);
    write(
        dir.path(),
        "base.vmdk",
        flat_descriptor("base-flat.vmdk", 65536).as_bytes(),
    );
    let mut grains = BTreeMap::new();
    let mut expect = base.clone();
    for g in [0u64, 1, 7, 4095, 4096, 5000, 8191] {
        let d = pattern(4096, 100 + g);
        expect[g as usize * 4096..(g as usize + 1) * 4096].copy_from_slice(&d);
        grains.insert(g, SeGrain::Data(d));
    }
    grains.insert(10, SeGrain::Zero);
    grains.insert(11, SeGrain::Unmapped);
    expect[10 * 4096..12 * 4096].fill(0);
    write(
        dir.path(),
        "child-sesparse.vmdk",
        &build::sesparse(65536, &grains, false),
    );
    let desc = "# Disk DescriptorFile\nversion=1\nCID=44444444\nparentCID=11111111\ncreateType=\"seSparse\"\nparentFileNameHint=\"base.vmdk\"\n\n# Extent description\nRW 65536 SESPARSE \"child-sesparse.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n";
    let child = write(dir.path(), "child.vmdk", desc.as_bytes());
    assert_same(&vdisk_raw(&child), &expect, "seSparse child");
    assert_same(
        &vdisk_raw(&child),
        &qemu_raw(&child, dir.path()),
        "qemu agrees",
    );
    assert_eq!(vdisk(&["check", s(&child)]).status.code(), Some(0));

    write(
        dir.path(),
        "child-sesparse.vmdk",
        &build::sesparse(65536, &grains, true),
    );
    let out = vdisk(&["cat", s(&child)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("journal is dirty"));
}
