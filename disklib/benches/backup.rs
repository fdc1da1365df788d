//! `cargo xtask bench backup`: a full backup of a 1 GiB disk (half data)
//! over nbd and nbdssl (a sparse disk), and over san, hotadd and nbdssl
//! (a thick disk on the simulator's LUN), each next to reading the same
//! disk over the same transport (what `vdisk cat` does), in one run.

use std::time::Instant;

use cbt::BackupKind;
use disklib::api::{Config, ConnectParams, Connection, Credentials, Library, OpenFlags};
use vsphere_sim::inventory::{Datastore, Disk, Inventory, LunSpec, Mode, User, Vm};
use vsphere_sim::{NfcOptions, SimOptions, Simulator};

const GIB: u64 = 1 << 30;

fn vm(name: &str, file: &str, disk_type: &str, proxy: bool) -> Vm {
    Vm {
        name: name.into(),
        host: None,
        power: "poweredOn".into(),
        uuid: None,
        disks: vec![Disk {
            file: file.into(),
            capacity: if proxy { 16 << 20 } else { GIB },
            disk_type: disk_type.into(),
            mode: "persistent".into(),
            create: true,
        }],
        proxy,
        cbt: !proxy,
        scsi_controllers: 1,
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let inv = Inventory {
        mode: Mode::Vcenter,
        datacenter: "dc1".into(),
        users: vec![User {
            user: "u".into(),
            password: "p".into(),
        }],
        hosts: vec![],
        datastores: vec![Datastore {
            name: "ds".into(),
            path: dir.path().join("ds"),
            lun: Some(LunSpec {
                id: "naa.6000c29d00b4c8e1f2a3b4c5d6e7f809".into(),
                size: GIB + (8 << 20),
            }),
        }],
        vms: vec![
            vm("vm", "[ds] vm/vm.vmdk", "monolithicSparse", false),
            vm("thick", "[ds] thick/thick.vmdk", "vmfs", false),
            vm("proxy", "[ds] proxy/proxy.vmdk", "monolithicSparse", true),
        ],
        proxy_host: Some(dir.path().join("proxy-host")),
    };
    let sim = Simulator::start(inv, SimOptions::default(), 0).unwrap();
    let _nfc = sim
        .start_nfc(NfcOptions {
            memory_limit: 256 << 20,
            ..NfcOptions::default()
        })
        .unwrap();
    // Half data (alternate MiB), incompressible-ish.
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut chunk = vec![0u8; 1 << 20];
    for i in (0..GIB >> 20).step_by(2) {
        for b in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        for vm in ["vm-100", "vm-101"] {
            sim.guest_write(vm, 2000, i << 20, &chunk).unwrap();
        }
    }
    // Written-back before measuring: dirty pages of the guest writes
    // would otherwise be flushed during (and charged to) the first backup.
    let _ = std::process::Command::new("sync").status();
    let lib = Library::init(Config::parse(&vsphere_sim::proxy_config(
        &dir.path().join("proxy-host"),
        &dir.path().join("hotadd.state"),
    )));
    println!("full backup of a 1 GiB disk (512 MiB data) vs reading the whole disk over the same transport");
    for (vm, file, t) in [
        ("vm-100", "[ds] vm/vm.vmdk", "nbd"),
        ("vm-100", "[ds] vm/vm.vmdk", "nbdssl"),
        ("vm-101", "[ds] thick/thick.vmdk", "san"),
        ("vm-101", "[ds] thick/thick.vmdk", "hotadd"),
        ("vm-101", "[ds] thick/thick.vmdk", "nbdssl"),
    ] {
        let params = ConnectParams::remote(
            &sim.addr().to_string(),
            sim.thumbprint(),
            Credentials::password("u", "p"),
            vm,
        );
        let conn = Connection::connect(&lib, &params, true, None, Some(t)).unwrap();
        let d = conn.open(file, OpenFlags::read_only()).unwrap();
        assert_eq!(d.transport_mode(), t);
        let mut buf = vec![0u8; 8 << 20];
        let start = Instant::now();
        let mut off = 0;
        while off < GIB {
            d.read_at(off, &mut buf).unwrap();
            off += buf.len() as u64;
        }
        let cat = start.elapsed().as_secs_f64();
        d.close().unwrap();
        let repo = dir.path().join(format!("repo-{vm}-{t}"));
        let start = Instant::now();
        let s = disklib::backup::backup(
            &lib,
            &params,
            &repo,
            BackupKind::Full,
            Some(t),
            &mut |_, _| {},
        )
        .unwrap();
        let backup = start.elapsed().as_secs_f64();
        let kind = if vm == "vm-100" { "sparse" } else { "thick" };
        println!(
            "{kind} {t:<6}: cat {:.0} MB/s ({cat:.2} s)   full backup {:.0} MB/s of disk ({backup:.2} s, {} MB read, {} MB stored)   backup / cat time {:.2}",
            GIB as f64 / cat / 1e6,
            GIB as f64 / backup / 1e6,
            s.bytes_read >> 20,
            s.bytes_stored >> 20,
            backup / cat
        );
    }
}
