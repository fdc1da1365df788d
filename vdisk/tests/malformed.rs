//! The malformed-input suite: valid fixtures mutated one field at a time.
//! Every mutation must give a typed error or a consistent read; never a
//! panic, a hang or a runaway allocation. Runs in-process through the
//! library (the CLI is the same code) to cover thousands of cases fast.

use std::collections::BTreeMap;
use std::path::Path;

use vmdk_file::check::check_disk;
use vmdk_file::local::{LocalDisk, OpenOptions};

use crate::support::build::{self, SeGrain, Stream, StreamLayout};
use crate::support::*;

fn exercise(path: &Path) {
    let opts = OpenOptions::default();
    if let Ok(d) = LocalDisk::open(path, &opts) {
        let cap = d.capacity().min(64 << 20);
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < cap {
            let n = (cap - off).min(buf.len() as u64) as usize;
            if d.read_at(off, &mut buf[..n]).is_err() {
                break;
            }
            off += n as u64;
        }
        let _ = d.map();
    }
    let _ = check_disk(path, &opts);
}

fn mutations(value_width: usize) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![vec![0; value_width], vec![0xff; value_width]];
    let mut one = vec![0u8; value_width];
    one[0] = 1;
    v.push(one);
    let mut big = vec![0u8; value_width];
    big[value_width - 1] = 0x40;
    v.push(big);
    v
}

fn mutate_fields(dir: &Path, name: &str, good: &[u8], fields: &[(usize, usize)]) -> usize {
    let path = dir.join(name);
    let mut n = 0;
    for &(at, width) in fields {
        for m in mutations(width) {
            let mut b = good.to_vec();
            b[at..at + width].copy_from_slice(&m);
            std::fs::write(&path, &b).unwrap();
            exercise(&path);
            n += 1;
        }
        // A single flipped bit in each byte of the field.
        for i in 0..width {
            let mut b = good.to_vec();
            b[at + i] ^= 0x80;
            std::fs::write(&path, &b).unwrap();
            exercise(&path);
            n += 1;
        }
    }
    n
}

#[test]
fn hosted_sparse_header_fields() {
    let dir = tempdir();
    let mut data = pattern(2 << 20, 5);
    data[1 << 20..].fill(0);
    let mut sp = build::Sparse::new(4096, build::grains_of(&data, 65536));
    sp.descriptor = Some(build::embedded_descriptor(
        "monolithicSparse",
        4096,
        "x.vmdk",
        "# Disk DescriptorFile",
    ));
    let (good, m) = sp.build();
    let fields = [
        (0, 4),
        (4, 4),
        (8, 4),
        (12, 8),
        (20, 8),
        (28, 8),
        (36, 8),
        (44, 4),
        (48, 8),
        (56, 8),
        (64, 8),
        (72, 1),
        (73, 4),
        (77, 2),
    ];
    let mut n = mutate_fields(dir.path(), "h.vmdk", &good, &fields);
    // Directory and table entries.
    let table_fields: Vec<(usize, usize)> = (0..4)
        .map(|i| ((m.gd * 512) as usize + i * 4, 4))
        .chain((0..24).map(|i| ((m.gt[0] * 512) as usize + i * 4, 4)))
        .collect();
    n += mutate_fields(dir.path(), "t.vmdk", &good, &table_fields);
    // Every truncation point at sector granularity.
    let p = dir.path().join("cut.vmdk");
    for cut in (0..good.len()).step_by(512) {
        std::fs::write(&p, &good[..cut]).unwrap();
        exercise(&p);
        n += 1;
    }
    assert!(n > 500, "{n} cases");
}

#[test]
fn stream_fields_and_markers() {
    let dir = tempdir();
    let data = pattern(1 << 20, 8);
    let st = Stream {
        layout: StreamLayout::GdAtEnd,
        capacity: 2048,
        grain: 128,
        signature: "# Disk DescriptorFile",
        extent_name: "s.vmdk",
        type4_marker: true,
    };
    let good = st.build(&data);
    let len = good.len();
    let first_grain = 21 * 512;
    let mut fields = vec![
        (first_grain, 8),
        (first_grain + 8, 4),
        (first_grain + 12, 4),
        (first_grain + 20, 4),
    ];
    // Footer marker, footer header, EOS.
    for off in [
        len - 1536,
        len - 1536 + 8,
        len - 1536 + 12,
        len - 1024 + 56,
        len - 1024 + 12,
        len - 1024 + 20,
        len - 512,
        len - 512 + 12,
    ] {
        fields.push((off, 4));
    }
    // GD marker and GD entries.
    fields.push((len - 2048 - 512 + 12, 4));
    fields.push((len - 2048, 4));
    let n = mutate_fields(dir.path(), "s.vmdk", &good, &fields);
    assert!(n > 50);
}

#[test]
fn cowd_and_sesparse_fields() {
    let dir = tempdir();
    let mut grains = BTreeMap::new();
    grains.insert(3u64, vec![7u8; 512]);
    let good = build::cowd(8192, 1, &grains);
    let fields: Vec<(usize, usize)> = (0..8)
        .map(|i| (i * 4, 4))
        .chain([(1648, 4), (2048, 4), (2048 + 512, 4)])
        .collect();
    mutate_fields(dir.path(), "c.vmdk", &good, &fields);

    let mut se = BTreeMap::new();
    se.insert(1u64, SeGrain::Data(vec![9u8; 4096]));
    se.insert(2u64, SeGrain::Zero);
    let good = build::sesparse(65536, &se, false);
    let fields: Vec<(usize, usize)> = (0..26)
        .map(|i| (i * 8, 8))
        .chain([(512, 8), (512 + 24, 8), (1024, 8), (1536, 8), (1536 + 8, 8)])
        .collect();
    mutate_fields(dir.path(), "se.vmdk", &good, &fields);
}

#[test]
fn descriptor_lines() {
    let dir = tempdir();
    write(dir.path(), "f-flat.vmdk", &pattern(1 << 20, 2));
    let good = flat_descriptor("f-flat.vmdk", 2048);
    let p = dir.path().join("d.vmdk");
    let lines: Vec<&str> = good.lines().collect();
    for i in 0..lines.len() {
        for replacement in [
            "",
            "RW",
            "RW 99999999999999 FLAT \"f-flat.vmdk\" 0",
            "RW 2048 FLAT \"f-flat.vmdk\" 18446744073709551615",
            "x=\"",
            "\u{0}",
            "RW 2048 SPARSE \"f-flat.vmdk\"",
        ] {
            let mut l = lines.clone();
            l[i] = replacement;
            std::fs::write(&p, l.join("\n")).unwrap();
            exercise(&p);
        }
    }
}
