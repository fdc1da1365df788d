//! The malformed-input suite: valid fixtures mutated one field at a time.
//! Every mutation must give a typed error or a read consistent with the
//! file's bytes; never a panic, a hang or a runaway allocation.
//!
//! Each case runs twice. In-process through the library, asserting the
//! outcome: an error is a typed one (never an OS error on a file that is
//! there); a read that succeeds returns only zeros and bytes the files
//! hold (for compressed streams: the original data), the same whether
//! read whole or in pieces, zeros wherever `map` says there is no data;
//! and a disk `check` calls consistent reads without error. Then the
//! `vdisk` binary, under an address-space limit (`ulimit -v`), checks and
//! reads it: exit codes 0/1/2 only, one line of error, and an allocation
//! sized from a corrupt field fails the test instead of succeeding on a
//! large machine.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;

use vmdk_file::check::check_disk;
use vmdk_file::local::{AllocKind, LocalDisk, OpenOptions};
use vmdk_file::Error;

use crate::support::build::{self, SeGrain, Stream, StreamLayout};
use crate::support::*;

/// Address space the `vdisk` binary may use, KiB: room for its threads'
/// stacks and malloc arenas and the bounded caches, far below what an
/// allocation sized from a corrupt 32- or 64-bit field asks for.
const ADDRESS_SPACE_KIB: u64 = 1 << 20;

/// Disks larger than this are read only this far.
const READ_CAP: u64 = 64 << 20;

/// What a successful read may return.
enum Oracle {
    /// Uncompressed formats: every sector read is zero or a sector of one
    /// of the files in the directory.
    FileSectors,
    /// Compressed streams: every sector is zero or the original data's.
    Original(Vec<u8>),
}

/// How cases came out, so that a test can insist on both kinds.
#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    refused: usize,
    read: usize,
}

fn sectors_of_dir(dir: &Path) -> HashSet<Vec<u8>> {
    let mut set = HashSet::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if let Ok(b) = std::fs::read(e.path()) {
            for c in b.chunks_exact(512) {
                set.insert(c.to_vec());
            }
        }
    }
    set
}

/// A typed error: anything but an OS error on a file that exists, with a
/// one-line message.
fn assert_typed(e: &Error, what: &str) {
    let msg = e.to_string();
    assert!(
        !msg.is_empty() && !msg.contains('\n'),
        "{what}: error message {msg:?}"
    );
    if let Error::Io { source, .. } = e {
        assert_eq!(
            source.kind(),
            std::io::ErrorKind::NotFound,
            "{what}: an OS error on a malformed file: {e}"
        );
    }
}

fn check_sectors(buf: &[u8], at: u64, oracle: &Oracle, files: &HashSet<Vec<u8>>, what: &str) {
    for (i, sector) in buf.chunks(512).enumerate() {
        let off = at + i as u64 * 512;
        if sector.iter().all(|&b| b == 0) {
            continue;
        }
        let ok = match oracle {
            Oracle::FileSectors => files.contains(sector),
            Oracle::Original(data) => data
                .get(off as usize..off as usize + sector.len())
                .is_some_and(|d| d == sector),
        };
        assert!(
            ok,
            "{what}: the sector at byte {off} holds bytes the files do not"
        );
    }
}

/// The in-process half of a case; returns whether the whole (capped)
/// disk read without error, and its capacity.
fn in_process(path: &Path, oracle: &Oracle, what: &str) -> (bool, u64) {
    let opts = OpenOptions::default();
    let report = match check_disk(path, &opts) {
        Ok(r) => Some(r),
        Err(e) => {
            assert_typed(&e, what);
            None
        }
    };
    let d = match LocalDisk::open(path, &opts) {
        Ok(d) => d,
        Err(e) => {
            assert_typed(&e, what);
            assert!(
                !report.as_ref().is_some_and(|r| r.is_consistent()),
                "{what}: check finds nothing wrong, but the disk does not open: {e}"
            );
            return (false, 0);
        }
    };
    let cap = d.capacity().min(READ_CAP);
    let mut whole = vec![0u8; cap as usize];
    let mut read_ok = true;
    for (i, chunk) in whole.chunks_mut(1 << 20).enumerate() {
        if let Err(e) = d.read_at(i as u64 * (1 << 20), chunk) {
            assert_typed(&e, what);
            read_ok = false;
            break;
        }
    }
    if read_ok {
        let files = match oracle {
            Oracle::FileSectors => sectors_of_dir(path.parent().unwrap()),
            Oracle::Original(_) => HashSet::new(),
        };
        check_sectors(&whole, 0, oracle, &files, what);
        // The same bytes when read in odd pieces (within grains, across
        // grains and tables).
        let mut piece = vec![0u8; 4096 + 1536];
        let mut off = 0u64;
        while off < cap.min(4 << 20) {
            let n = (cap - off).min(piece.len() as u64) as usize;
            d.read_at(off, &mut piece[..n]).unwrap_or_else(|e| {
                panic!("{what}: a piece at {off} fails after the whole read: {e}")
            });
            assert!(
                piece[..n] == whole[off as usize..off as usize + n],
                "{what}: bytes at {off} differ between reads"
            );
            off += n as u64;
        }
        match d.map() {
            Ok(map) => {
                for e in map {
                    if e.kind == AllocKind::Data || e.start >= cap {
                        continue;
                    }
                    let end = (e.start + e.length).min(cap) as usize;
                    assert!(
                        whole[e.start as usize..end].iter().all(|&b| b == 0),
                        "{what}: map says {} at {}+{} but the bytes are not zero",
                        e.kind.as_str(),
                        e.start,
                        e.length
                    );
                }
            }
            Err(e) => assert_typed(&e, what),
        }
    }
    if report.as_ref().is_some_and(|r| r.is_consistent()) {
        assert!(
            read_ok,
            "{what}: check finds nothing wrong, but the disk does not read"
        );
    }
    (read_ok, d.capacity())
}

/// Runs `vdisk ARGS` with its address space limited and a time limit.
fn vdisk_limited(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .args([
            "-c",
            &format!("ulimit -v {ADDRESS_SPACE_KIB}; exec timeout 120 \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_vdisk"),
        ])
        .args(args)
        .output()
        .expect("bash")
}

fn assert_exit(out: &std::process::Output, allowed: &[i32], what: &str) -> i32 {
    let err = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        allowed.contains(&code),
        "{what}: exit {:?} (allowed {allowed:?}): {err}",
        out.status
    );
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{what}: {err}"
    );
    if code == 1 {
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        assert!(err.starts_with("vdisk: error: "), "{what}: {err}");
    }
    code
}

/// The binary half of a case: `check` and (for disks that read) `cat`.
fn binary(path: &Path, read_ok: bool, capacity: u64, what: &str) {
    let check = vdisk_limited(&["check", s(path)]);
    let code = assert_exit(&check, &[0, 1, 2], &format!("{what}: vdisk check"));
    if code == 0 {
        assert!(
            read_ok,
            "{what}: vdisk check exits 0, the disk does not read"
        );
    }
    if capacity > 0 && capacity <= READ_CAP {
        let cat = vdisk_limited(&["cat", s(path), "-o", "/dev/null"]);
        let code = assert_exit(&cat, &[0, 1], &format!("{what}: vdisk cat"));
        assert_eq!(
            code == 0,
            read_ok,
            "{what}: vdisk cat and the library disagree"
        );
    }
}

fn exercise(path: &Path, oracle: &Oracle, with_binary: bool, what: &str, tally: &mut Tally) {
    let (read_ok, capacity) = in_process(path, oracle, what);
    if with_binary {
        binary(path, read_ok, capacity, what);
    }
    tally.cases += 1;
    if read_ok {
        tally.read += 1;
    } else {
        tally.refused += 1;
    }
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

fn mutate_fields(
    dir: &Path,
    name: &str,
    good: &[u8],
    fields: &[(usize, usize)],
    oracle: &Oracle,
    tally: &mut Tally,
) {
    let path = dir.join(name);
    for &(at, width) in fields {
        let mut cases: Vec<(String, Vec<u8>)> = mutations(width)
            .into_iter()
            .map(|m| {
                let mut b = good.to_vec();
                b[at..at + width].copy_from_slice(&m);
                (format!("{name}: bytes {at}..+{width} = {m:02x?}"), b)
            })
            .collect();
        // A single flipped bit in each byte of the field.
        for i in 0..width {
            let mut b = good.to_vec();
            b[at + i] ^= 0x80;
            cases.push((format!("{name}: byte {} ^ 0x80", at + i), b));
        }
        for (what, b) in cases {
            std::fs::write(&path, &b).unwrap();
            exercise(&path, oracle, true, &what, tally);
        }
    }
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
    let oracle = Oracle::FileSectors;
    let mut t = Tally::default();
    mutate_fields(dir.path(), "h.vmdk", &good, &fields, &oracle, &mut t);
    // Directory and table entries.
    let table_fields: Vec<(usize, usize)> = (0..4)
        .map(|i| ((m.gd * 512) as usize + i * 4, 4))
        .chain((0..24).map(|i| ((m.gt[0] * 512) as usize + i * 4, 4)))
        .collect();
    mutate_fields(dir.path(), "t.vmdk", &good, &table_fields, &oracle, &mut t);
    std::fs::remove_file(dir.path().join("h.vmdk")).unwrap();
    std::fs::remove_file(dir.path().join("t.vmdk")).unwrap();
    // Every truncation point at sector granularity (the binary at every
    // 16th, and the last 16).
    let p = dir.path().join("cut.vmdk");
    let sectors = good.len() / 512;
    for (i, cut) in (0..good.len()).step_by(512).enumerate() {
        std::fs::write(&p, &good[..cut]).unwrap();
        let binary = i % 16 == 0 || i + 16 >= sectors;
        exercise(&p, &oracle, binary, &format!("cut at {cut}"), &mut t);
    }
    assert!(t.cases > 500 && t.refused > 100 && t.read > 50, "{t:?}");
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
    let mut padded = data.clone();
    padded.resize(2048 * 512, 0);
    let mut t = Tally::default();
    mutate_fields(
        dir.path(),
        "s.vmdk",
        &good,
        &fields,
        &Oracle::Original(padded),
        &mut t,
    );
    assert!(t.cases > 50 && t.refused > 10 && t.read > 10, "{t:?}");
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
    let mut t = Tally::default();
    let cowd_dir = dir.path().join("cowd");
    std::fs::create_dir(&cowd_dir).unwrap();
    mutate_fields(
        &cowd_dir,
        "c.vmdk",
        &good,
        &fields,
        &Oracle::FileSectors,
        &mut t,
    );
    assert!(t.refused > 10 && t.read > 10, "{t:?}");

    let mut se = BTreeMap::new();
    se.insert(1u64, SeGrain::Data(vec![9u8; 4096]));
    se.insert(2u64, SeGrain::Zero);
    let good = build::sesparse(65536, &se, false);
    let fields: Vec<(usize, usize)> = (0..26)
        .map(|i| (i * 8, 8))
        .chain([(512, 8), (512 + 24, 8), (1024, 8), (1536, 8), (1536 + 8, 8)])
        .collect();
    let mut t = Tally::default();
    mutate_fields(
        dir.path(),
        "se.vmdk",
        &good,
        &fields,
        &Oracle::FileSectors,
        &mut t,
    );
    assert!(t.refused > 10 && t.read > 10, "{t:?}");
}

#[test]
fn descriptor_lines() {
    let dir = tempdir();
    write(dir.path(), "f-flat.vmdk", &pattern(1 << 20, 2));
    let good = flat_descriptor("f-flat.vmdk", 2048);
    let p = dir.path().join("d.vmdk");
    let lines: Vec<&str> = good.lines().collect();
    let mut t = Tally::default();
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
            let what = format!("descriptor line {i} = {replacement:?}");
            exercise(&p, &Oracle::FileSectors, true, &what, &mut t);
        }
    }
    assert!(t.refused > 5 && t.read > 5, "{t:?}");
}
