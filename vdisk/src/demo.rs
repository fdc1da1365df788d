//! `vdisk demo` (what `cargo xtask demo` runs): the main job end to end on
//! an in-process simulator. A VM with a thin sparse disk and a thick flat
//! disk, CBT on; a full backup over nbdssl; guest writes; an incremental
//! over san and hotadd (the thick disk lies on the simulator's LUN, the
//! thin one is HotAdded to the proxy VM); more writes; a differential over
//! hotadd; every point in time restored and compared byte for byte with
//! the VM's disks as they were; every CRC verified; restores back onto the
//! VM over nbdssl and over san.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use cbt::BackupKind;
use disklib::api::{Config, ConnectParams, Credentials, Library};
use disklib::backup::{self, RestoreTarget};
use vmdk_file::local::LocalDisk;
use vsphere_sim::inventory::{DEMO_PASSWORD, DEMO_USER};
use vsphere_sim::{Inventory, Mode, NfcOptions, SimOptions, Simulator};

use crate::AnyError;

const DISKS: [(i32, &str); 2] = [
    (2000, "demo-vm/demo-vm.vmdk"),
    (2001, "demo-vm/demo-vm_1.vmdk"),
];

fn capture(root: &Path) -> Result<Vec<Vec<u8>>, AnyError> {
    DISKS
        .iter()
        .map(|(_, f)| {
            let d = LocalDisk::open(root.join("datastore1").join(f), &Default::default())?;
            let mut b = vec![0u8; d.capacity() as usize];
            d.read_at(0, &mut b)?;
            Ok(b)
        })
        .collect()
}

fn guest_writes(sim: &Simulator, seed: u64, count: usize) -> Result<u64, AnyError> {
    let mut x = seed | 1;
    let mut bytes = 0;
    for i in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (key, cap) = if i % 3 == 2 {
            (2001, 32u64 << 20)
        } else {
            (2000, 64u64 << 20)
        };
        let len = 4096 + (x >> 20) % (512 << 10);
        let off = (x >> 3) % (cap - len);
        let data: Vec<u8> = (0..len).map(|j| (j ^ x ^ (j >> 9)) as u8).collect();
        sim.guest_write("vm-100", key, off, &data)
            .map_err(|e| format!("guest write: {e}"))?;
        bytes += len;
    }
    Ok(bytes)
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

pub(crate) fn run() -> Result<ExitCode, AnyError> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("vdisk-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = demo(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let ok = result?;
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn demo(dir: &Path) -> Result<bool, AnyError> {
    let root = dir.join("vsphere");
    let repo = dir.join("repository");
    let sim = Simulator::start(
        Inventory::demo(&root, Mode::Vcenter),
        SimOptions::default(),
        0,
    )?;
    let _nfc = sim.start_nfc(NfcOptions::default())?;
    println!(
        "simulator: vCenter at {}, thumbprint {}",
        sim.addr(),
        sim.thumbprint()
    );
    println!("VM demo-vm (vm-100): thin sparse disk 2000 (64 MiB), thick disk 2001 (32 MiB) on the SAN LUN, CBT on; proxy VM backup-proxy (vm-101)");
    // The proxy host's view of the simulator's LUN and HotAdd devices.
    let lib = Library::init(Config::parse(&vsphere_sim::proxy_config(
        &root.join("proxy-host"),
        &dir.join("hotadd.state"),
    )));
    let params = ConnectParams::remote(
        &sim.addr().to_string(),
        sim.thumbprint(),
        Credentials::password(DEMO_USER, DEMO_PASSWORD),
        "vm-100",
    );

    // The guest's data: a few regions, holes elsewhere.
    for (key, off, len, fill) in [
        (2000, 0u64, 3u64 << 20, 0x11u8),
        (2000, 40 << 20, 1 << 20, 0x22),
        (2001, 0, 8 << 20, 0x33),
    ] {
        let data: Vec<u8> = (0..len).map(|i| fill ^ (i >> 12) as u8).collect();
        sim.guest_write("vm-100", key, off, &data)
            .map_err(|e| format!("guest write: {e}"))?;
    }
    let mut expected = Vec::new();
    let mut ids = Vec::new();
    let steps: [(BackupKind, u64, usize, &str); 3] = [
        (BackupKind::Full, 0, 0, "nbdssl"),
        (BackupKind::Incremental, 7, 40, "san:hotadd:nbdssl"),
        (BackupKind::Differential, 11, 25, "hotadd:nbdssl"),
    ];
    for (kind, seed, writes, transports) in steps {
        if writes > 0 {
            let n = guest_writes(&sim, seed, writes)?;
            println!("guest: {writes} writes, {:.1} MB", mb(n));
        }
        expected.push(capture(&root)?);
        let s = backup::backup(&lib, &params, &repo, kind, Some(transports), &mut |_, _| {})?;
        ids.push(s.id);
        let read_rate = mb(s.bytes_read) / s.elapsed.as_secs_f64().max(1e-6);
        println!(
            "backup {} ({kind:?}): read {:.1} MB, stored {:.1} MB, skipped {:.1} MB unread, {:.0} MB/s, {:.2} s [{}]",
            s.id,
            mb(s.bytes_read),
            mb(s.bytes_stored),
            mb(s.bytes_skipped),
            read_rate,
            s.elapsed.as_secs_f64(),
            s.transports.join(", ")
        );
        for w in &s.warnings {
            println!("  warning: {w}");
        }
    }
    // Every point in time, restored and compared.
    let mut all_ok = true;
    for (i, id) in ids.iter().enumerate() {
        let out = dir.join(format!("restore-{id}"));
        std::fs::create_dir_all(&out)?;
        let t = Instant::now();
        let n = backup::restore(
            &lib,
            &repo,
            *id,
            &RestoreTarget::Local(out.clone()),
            None,
            &mut |_, _| {},
        )?;
        for (j, (key, _)) in DISKS.iter().enumerate() {
            let d = LocalDisk::open(out.join(format!("{key}.vmdk")), &Default::default())?;
            let mut got = vec![0u8; d.capacity() as usize];
            d.read_at(0, &mut got)?;
            let same = got == expected[i][j];
            all_ok &= same;
            println!(
                "restore of backup {id}, disk {key}: {}",
                if same {
                    "identical to the VM's disk at that time"
                } else {
                    "MISMATCH"
                }
            );
        }
        println!(
            "  ({:.1} MB written in {:.2} s)",
            mb(n),
            t.elapsed().as_secs_f64()
        );
    }
    let (checked, bad) = backup::verify(&repo, None)?;
    println!("verify: {checked} blocks checked, {} bad", bad.len());
    all_ok &= bad.is_empty();
    // Back onto the VM itself, over the network: the full backup's state.
    let remote = RestoreTarget::Remote {
        params: params.clone(),
        key: 2000,
        transports: Some("nbdssl".into()),
    };
    backup::restore(&lib, &repo, ids[0], &remote, Some(2000), &mut |_, _| {})?;
    let now = capture(&root)?;
    let same = now[0] == expected[0][0];
    all_ok &= same;
    println!(
        "restore of backup {} onto the VM's disk 2000 over nbdssl: {}",
        ids[0],
        if same { "identical" } else { "MISMATCH" }
    );
    // And the thick disk straight onto its LUN.
    let remote = RestoreTarget::Remote {
        params: params.clone(),
        key: 2001,
        transports: Some("san".into()),
    };
    backup::restore(&lib, &repo, ids[1], &remote, Some(2001), &mut |_, _| {})?;
    let now = capture(&root)?;
    let same = now[1] == expected[1][1];
    all_ok &= same;
    println!(
        "restore of backup {} onto the VM's disk 2001 over san: {}",
        ids[1],
        if same { "identical" } else { "MISMATCH" }
    );
    println!(
        "{}",
        if all_ok {
            "demo: all restores verified"
        } else {
            "demo: FAILED"
        }
    );
    Ok(all_ok)
}
