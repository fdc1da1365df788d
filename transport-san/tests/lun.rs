//! The SAN access layer against a LUN file laid out with a disk's
//! extents in scattered places, found through a device directory by NAA id.

use std::path::{Path, PathBuf};

use transport_san::{find_lun, BlockMap, Error, LunExtent, SanDisk, SanOptions};

const MIB: u64 = 1 << 20;
const ID: &str = "naa.600508b1001c4d2a9f1e3c5b7a0d8e6f";

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

/// A 6 MiB disk stored as three extents in reverse order on a 16 MiB LUN,
/// the device entry named like udev names it.
struct Lun {
    dir: tempfile::TempDir,
    map: BlockMap,
    disk: Vec<u8>,
}

fn extents() -> Vec<LunExtent> {
    vec![
        LunExtent {
            virtual_offset: 0,
            lun_offset: 9 * MIB,
            len: 2 * MIB + 512,
        },
        LunExtent {
            virtual_offset: 2 * MIB + 512,
            lun_offset: 4 * MIB + 1536,
            len: 3 * MIB - 512,
        },
        LunExtent {
            virtual_offset: 5 * MIB,
            lun_offset: 512,
            len: MIB,
        },
    ]
}

fn lun() -> Lun {
    let dir = tempfile::tempdir().unwrap();
    let disk = pattern(6 * MIB as usize, 1);
    let mut lun = pattern(16 * MIB as usize, 2);
    let map = BlockMap::new(ID, 6 * MIB, extents()).unwrap();
    for e in &map.extents {
        let (v, l, n) = (
            e.virtual_offset as usize,
            e.lun_offset as usize,
            e.len as usize,
        );
        lun[l..l + n].copy_from_slice(&disk[v..v + n]);
    }
    std::fs::create_dir(dir.path().join("by-id")).unwrap();
    let file = dir.path().join("lun0");
    std::fs::write(&file, &lun).unwrap();
    std::os::unix::fs::symlink(
        &file,
        dev(dir.path()).join("wwn-0x600508b1001c4d2a9f1e3c5b7a0d8e6f"),
    )
    .unwrap();
    Lun { dir, map, disk }
}

fn dev(root: &Path) -> PathBuf {
    root.join("by-id")
}

fn opts(l: &Lun, writable: bool) -> SanOptions {
    SanOptions {
        device_dir: dev(l.dir.path()),
        writable,
        ..SanOptions::default()
    }
}

#[test]
fn reads_across_extents_and_unaligned_ranges() {
    let l = lun();
    let d = SanDisk::open(l.map.clone(), &opts(&l, false)).unwrap();
    let mut all = vec![0u8; 6 * MIB as usize];
    d.read_at(0, &mut all).unwrap();
    assert!(all == l.disk, "whole disk");
    for (off, len) in [
        (0u64, 1usize),
        (511, 2),
        (2 * MIB - 100, 1000),
        (2 * MIB + 512 - 7, 4096 * 3 + 11),
        (5 * MIB - 1, 2),
        (6 * MIB - 512, 512),
        (12345, 3 * MIB as usize),
    ] {
        let mut b = vec![0u8; len];
        d.read_at(off, &mut b).unwrap();
        assert!(
            b[..] == l.disk[off as usize..off as usize + len],
            "{off}+{len}"
        );
    }
    assert!(matches!(
        d.read_at(6 * MIB - 1, &mut [0u8; 2]),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(d.write_at(0, &[0u8; 512]), Err(Error::ReadOnly)));
    // Several streams read the same bytes.
    for streams in [1, 3, 6, 64] {
        let mut b = vec![0u8; 5 * MIB as usize + 777];
        d.read_streams(333, &mut b, streams).unwrap();
        assert!(b[..] == l.disk[333..333 + b.len()], "{streams} streams");
    }
    assert!(matches!(
        d.read_streams(MIB, &mut vec![0u8; 6 * MIB as usize], 6),
        Err(Error::OutOfRange { .. })
    ));
}

#[test]
fn writes_land_in_the_right_lun_bytes_only() {
    let l = lun();
    let before = std::fs::read(l.dir.path().join("lun0")).unwrap();
    let d = SanDisk::open(l.map.clone(), &opts(&l, true)).unwrap();
    let mut want = l.disk.clone();
    for (off, len, seed) in [
        (100u64, 50usize, 3u32),
        (2 * MIB - 1000, 5000, 4),
        (4 * MIB, 2 * MIB as usize, 5),
    ] {
        let data = pattern(len, seed);
        d.write_at(off, &data).unwrap();
        want[off as usize..off as usize + len].copy_from_slice(&data);
    }
    d.flush().unwrap();
    let mut got = vec![0u8; 6 * MIB as usize];
    d.read_at(0, &mut got).unwrap();
    assert!(got == want);
    // Outside the extents, the LUN is untouched.
    let after = std::fs::read(l.dir.path().join("lun0")).unwrap();
    let mut expect = before;
    for e in &l.map.extents {
        let (v, o, n) = (
            e.virtual_offset as usize,
            e.lun_offset as usize,
            e.len as usize,
        );
        expect[o..o + n].copy_from_slice(&want[v..v + n]);
    }
    assert!(after == expect, "bytes outside the disk's extents changed");
}

#[test]
fn maps_are_checked_and_holes_are_errors() {
    let e = |v, l, n| LunExtent {
        virtual_offset: v,
        lun_offset: l,
        len: n,
    };
    assert!(BlockMap::new("", MIB, vec![]).is_err());
    assert!(BlockMap::new(ID, 1000, vec![]).is_err());
    assert!(
        BlockMap::new(ID, MIB, vec![e(0, 0, 100)]).is_err(),
        "unaligned"
    );
    assert!(BlockMap::new(ID, MIB, vec![e(0, 0, 0)]).is_err(), "empty");
    assert!(
        BlockMap::new(ID, MIB, vec![e(0, 0, 2 * MIB)]).is_err(),
        "past capacity"
    );
    assert!(
        BlockMap::new(ID, MIB, vec![e(0, 0, 4096), e(512, 8192, 512)]).is_err(),
        "overlap"
    );
    assert!(
        BlockMap::new(ID, MIB, vec![e(0, u64::MAX - 511, 512)]).is_err(),
        "wraps"
    );
    // A thin disk: mapped pieces with a hole.
    let thin = BlockMap::new(ID, MIB, vec![e(512 * 1024, 0, 4096), e(0, 8192, 4096)]).unwrap();
    assert!(!thin.is_complete());
    assert_eq!(thin.extents[0].virtual_offset, 0, "sorted");
    assert_eq!(thin.resolve(0, 4096).unwrap(), vec![(8192, 4096)]);
    assert!(matches!(thin.resolve(0, 8192), Err(Error::Unmapped(4096))));
    assert!(matches!(
        thin.resolve(MIB - 512, 512),
        Err(Error::Unmapped(_))
    ));
    assert!(matches!(
        thin.resolve(u64::MAX, 2),
        Err(Error::OutOfRange { .. })
    ));
}

#[test]
fn open_declines_refuses_and_finds() {
    let l = lun();
    // A thin disk is readable but not restored over SAN.
    let mut holes = l.map.extents.clone();
    holes.remove(1);
    let thin = BlockMap::new(ID, 6 * MIB, holes).unwrap();
    assert!(matches!(
        SanDisk::open(thin.clone(), &opts(&l, true)),
        Err(Error::Declined(_))
    ));
    let d = SanDisk::open(thin, &opts(&l, false)).unwrap();
    assert!(matches!(
        d.read_at(3 * MIB, &mut [0u8; 512]),
        Err(Error::Unmapped(_))
    ));
    // A redo log is never written.
    let mut o = opts(&l, true);
    o.redo_log = true;
    assert!(matches!(
        SanDisk::open(l.map.clone(), &o),
        Err(Error::RedoLog)
    ));
    // Allow and deny lists, in either spelling of the id.
    let mut o = opts(&l, false);
    o.deny = vec!["naa.600508B1001C4D2A9F1E3C5B7A0D8E6F".into()];
    assert!(matches!(
        SanDisk::open(l.map.clone(), &o),
        Err(Error::Denied(_))
    ));
    let mut o = opts(&l, false);
    o.allow = vec!["naa.6000".into()];
    assert!(matches!(
        SanDisk::open(l.map.clone(), &o),
        Err(Error::Denied(_))
    ));
    o.allow = vec!["0x600508b1001c4d2a9f1e3c5b7a0d8e6f".into()];
    assert!(SanDisk::open(l.map.clone(), &o).is_ok());
    // A LUN the proxy cannot see fails the open.
    let other = BlockMap::new("naa.6000deadbeef", 6 * MIB, extents()).unwrap();
    assert!(matches!(
        SanDisk::open(other, &opts(&l, false)),
        Err(Error::NotVisible { .. })
    ));
    assert!(matches!(
        find_lun(&l.dir.path().join("nope"), ID, &[], &[]),
        Err(Error::Io { .. })
    ));
    // A LUN smaller than the map needs.
    let big = BlockMap::new(
        ID,
        6 * MIB,
        vec![LunExtent {
            virtual_offset: 0,
            lun_offset: 15 * MIB,
            len: 6 * MIB,
        }],
    )
    .unwrap();
    assert!(matches!(
        SanDisk::open(big, &opts(&l, false)),
        Err(Error::Offline { .. })
    ));
}

#[test]
fn a_lun_that_shrinks_under_us_fails_the_read() {
    let l = lun();
    let d = SanDisk::open(l.map.clone(), &opts(&l, false)).unwrap();
    // The LUN "goes away": its storage is cut short after the open.
    std::fs::OpenOptions::new()
        .write(true)
        .open(l.dir.path().join("lun0"))
        .unwrap()
        .set_len(MIB)
        .unwrap();
    let mut b = vec![0u8; 4096];
    assert!(matches!(d.read_at(0, &mut b), Err(Error::Offline { .. })));
    // The part still there reads.
    d.read_at(5 * MIB, &mut b).unwrap();
}

#[test]
fn writes_on_several_streams_equal_one_stream() {
    for aligned in [false, true] {
        let l = lun();
        let map = if aligned {
            // Whole 4 KiB LUN blocks: several streams may run.
            BlockMap::new(
                ID,
                6 * MIB,
                vec![
                    LunExtent {
                        virtual_offset: 0,
                        lun_offset: 9 * MIB,
                        len: 2 * MIB + 4096,
                    },
                    LunExtent {
                        virtual_offset: 2 * MIB + 4096,
                        lun_offset: 4 * MIB + 8192,
                        len: 4 * MIB - 4096,
                    },
                ],
            )
            .unwrap()
        } else {
            l.map.clone()
        };
        let d = SanDisk::open(map, &opts(&l, true)).unwrap();
        let mut want = vec![0u8; 6 * MIB as usize];
        d.read_at(0, &mut want).unwrap();
        for (off, len, seed, streams) in [
            (0u64, 6 * MIB as usize, 7u32, 6usize),
            (777, 3 * MIB as usize + 99, 8, 3),
            (2 * MIB + 1, 1, 9, 6),
        ] {
            let data = pattern(len, seed);
            d.write_streams(off, &data, streams).unwrap();
            want[off as usize..off as usize + len].copy_from_slice(&data);
            let mut got = vec![0u8; 6 * MIB as usize];
            d.read_at(0, &mut got).unwrap();
            assert!(got == want, "aligned {aligned}: {off}+{len} on {streams}");
        }
        assert!(matches!(
            d.write_streams(6 * MIB - 1, &[1, 2], 4),
            Err(Error::OutOfRange { .. })
        ));
    }
}

#[test]
fn a_thin_disk_is_declined_for_writing_and_a_shrunk_lun_fails_writes() {
    let l = lun();
    let mut o = opts(&l, true);
    o.thin = true;
    assert!(matches!(
        SanDisk::open(l.map.clone(), &o),
        Err(Error::Declined(_))
    ));
    o.writable = false;
    assert!(SanDisk::open(l.map.clone(), &o).is_ok(), "thin is readable");
    // An image LUN cut short after open: the write must fail, not extend it.
    let d = SanDisk::open(l.map.clone(), &opts(&l, true)).unwrap();
    let file = l.dir.path().join("lun0");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(MIB)
        .unwrap();
    // Virtual 0 lies at LUN 9 MiB, past the cut.
    assert!(matches!(
        d.write_at(0, &[7u8; 4096]),
        Err(Error::Offline { .. })
    ));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), MIB, "not extended");
    // Virtual 5 MiB lies at LUN 512, before the cut: still served.
    let mut b = [0u8; 512];
    d.read_at(5 * MIB, &mut b).unwrap();
}

/// Buffers fit for O_DIRECT are read into and written from directly;
/// the result must not differ from the bounce-buffer path.
#[test]
fn aligned_caller_buffers_take_the_direct_path_with_the_same_bytes() {
    let l = lun();
    let d = SanDisk::open(l.map.clone(), &opts(&l, true)).unwrap();
    let align = transport_san::ALIGN as usize;
    let mut store = vec![0u8; 6 * MIB as usize + align];
    let start = (align - store.as_ptr() as usize % align) % align;
    let buf = &mut store[start..start + 6 * MIB as usize];
    d.read_streams(0, buf, 4).unwrap();
    assert!(buf[..] == l.disk[..], "aligned read");
    let data = pattern(2 * MIB as usize, 11);
    buf[..data.len()].copy_from_slice(&data);
    // Disk offset 0 lies at LUN 9 MiB (aligned): a direct write.
    d.write_at(0, &buf[..data.len()]).unwrap();
    let mut got = vec![0u8; data.len()];
    d.read_at(0, &mut got).unwrap();
    assert!(got == data);
    let mut rest = vec![0u8; 4 * MIB as usize];
    d.read_at(2 * MIB, &mut rest).unwrap();
    assert!(
        rest[..] == l.disk[2 * MIB as usize..],
        "nothing else changed"
    );
}
