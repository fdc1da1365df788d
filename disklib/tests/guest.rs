//! Guest files from a backup point of a large disk, read in place: a
//! small file costs a small, bounded number of bytes, however large the
//! disk and its filesystem are.

use std::process::Command;
use std::sync::Arc;

use cbt::BackupKind;
use disklib::api::{Config, ConnectParams, Credentials, Library};
use disklib::backup::{self, BackupPoint};
use disklib::guest::{extract, guest_volumes, open_volume, DiskReader};
use vmdk_file::convert::{convert, Source, Target};
use vmdk_file::create::{CreateOptions, DiskType};
use vsphere_sim::inventory::{Datastore, Disk, Inventory, Mode, User, Vm};
use vsphere_sim::{NfcOptions, SimOptions, Simulator};

const G: u64 = 1 << 30;

fn tool(name: &str, args: &[&str]) {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name} is required by the test suite: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_small_file_from_a_backup_point_of_a_large_disk_reads_little() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A 6 GiB disk, a 5 GiB ext4 volume at 1 MiB, with a few files and
    // 40 MB of data spread over it.
    let src = root.join("src");
    std::fs::create_dir_all(src.join("etc/app")).unwrap();
    std::fs::write(src.join("etc/app/config.ini"), b"[app]\nkey = value\n").unwrap();
    for i in 0..20 {
        let bulk: Vec<u8> = (0..2_000_000u32)
            .map(|x| (x.wrapping_mul(2_654_435_761).wrapping_add(i) >> 13) as u8)
            .collect();
        std::fs::write(src.join(format!("bulk{i}.bin")), bulk).unwrap();
    }
    let raw = root.join("disk.raw");
    std::fs::File::create(&raw).unwrap().set_len(6 * G).unwrap();
    let raw_s = raw.to_str().unwrap();
    tool("sgdisk", &["-n", "1:2048:+5G", "-t", "1:8300", raw_s]);
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "offset=1048576,lazy_itable_init=1,lazy_journal_init=1",
            "-d",
            src.to_str().unwrap(),
            raw_s,
            "5G",
        ],
    );
    let ds = root.join("ds");
    std::fs::create_dir_all(ds.join("vm")).unwrap();
    convert(
        &Source::Raw(&raw),
        &ds.join("vm/disk.vmdk"),
        &Target::Disk(CreateOptions::new(DiskType::MonolithicSparse, 6 * G)),
        &mut |_, _| {},
    )
    .unwrap();
    std::fs::remove_file(&raw).unwrap();

    let inventory = Inventory {
        mode: Mode::Vcenter,
        datacenter: "dc1".into(),
        users: vec![User {
            user: "backup@local".into(),
            password: "pw".into(),
        }],
        hosts: vec![],
        datastores: vec![Datastore {
            name: "ds".into(),
            path: ds.clone(),
            lun: None,
        }],
        vms: vec![Vm {
            name: "vm".into(),
            host: None,
            power: "poweredOn".into(),
            uuid: None,
            disks: vec![Disk {
                file: "[ds] vm/disk.vmdk".into(),
                capacity: 6 * G,
                disk_type: "monolithicSparse".into(),
                mode: "persistent".into(),
                create: false,
            }],
            proxy: false,
            cbt: true,
            scsi_controllers: 1,
        }],
        proxy_host: None,
    };
    let sim = Simulator::start(inventory, SimOptions::default(), 0).unwrap();
    let _nfc = sim.start_nfc(NfcOptions::default()).unwrap();
    let params = ConnectParams::remote(
        &sim.addr().to_string(),
        sim.thumbprint(),
        Credentials::password("backup@local", "pw"),
        "moref=vm-100",
    );
    let repo = root.join("repo");
    let lib = Library::init(Config::default());
    backup::backup(
        &lib,
        &params,
        &repo,
        BackupKind::Full,
        Some("nbd"),
        &mut |_, _| {},
    )
    .unwrap();

    let point = Arc::new(BackupPoint::open(&repo, 1, None).unwrap());
    assert_eq!(point.capacity(), 6 * G);
    let disk = Arc::new(DiskReader::point(Arc::clone(&point)));
    let (volume, reader) = open_volume(disk.clone(), None).unwrap();
    assert_eq!(volume.number, 1);
    assert_eq!(volume.size, 5 * G);
    let mut fs = guest_volumes::open_fs(reader).unwrap();
    let out = root.join("config.ini");
    let summary = extract(&mut *fs, "/etc/app/config.ini", &out).unwrap();
    assert_eq!(summary.files, 1);
    assert_eq!(std::fs::read(&out).unwrap(), b"[app]\nkey = value\n");

    // What the guest readers asked for, and what that cost in stored
    // blocks of the repository (read whole, 1 MiB each, to check CRCs).
    let asked = disk.bytes_read();
    let stored = point.bytes_read();
    eprintln!("asked {asked} bytes, read {stored} bytes of the repository");
    assert!(asked <= 2 << 20, "{asked} bytes asked for one small file");
    assert!(
        stored <= 16 << 20,
        "{stored} bytes of the repository read for one small file"
    );
    // The repository holds over 40 MB for this disk: far more than read.
    let held: u64 = backup::RepoCatalog::load(&repo).unwrap().backups[0].disks[0]
        .extents
        .iter()
        .map(|e| e.1)
        .sum();
    assert!(held > 40_000_000, "{held}");
}
