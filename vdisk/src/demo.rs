//! `vdisk demo` (what `cargo xtask demo` runs): the main job end to end on
//! in-process simulators, into one encrypted, deduplicated format-2
//! repository. A VM with a thin sparse disk and a thick flat disk, CBT on;
//! a full backup over nbdssl; guest writes; an incremental over san and
//! hotadd (the thick disk lies on the simulator's LUN, the thin one is
//! HotAdded to the proxy VM); more writes; a differential over hotadd.
//! Beside it, as a second proxy would, a second vCenter's VM (same moref
//! `vm-100`, never mixed up) is backed up at the same time, full then
//! incremental. Every point in time is restored and compared byte for
//! byte with the VM's disks as they were; every chunk is verified; a GC
//! pass runs; restores go back onto the VM over nbdssl and over san.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use cbt::BackupKind;
use disklib::api::{Config, ConnectParams, Credentials, Library};
use disklib::backup::{self, v2, RestoreTarget};
use repo_store::{InitEncryption, InitOptions, Repository, WriterOptions};
use vmdk_file::local::LocalDisk;
use vsphere_sim::inventory::{DEMO_PASSWORD, DEMO_USER};
use vsphere_sim::{Inventory, Mode, NfcOptions, SimOptions, Simulator};

use crate::AnyError;

const DISKS: [(i32, &str); 2] = [
    (2000, "demo-vm/demo-vm.vmdk"),
    (2001, "demo-vm/demo-vm_1.vmdk"),
];

const PASSPHRASE: &str = "demo passphrase (never hard-code yours)";

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
    let root_b = dir.join("vsphere-b");
    let location = dir.join("repository").display().to_string();
    let sim = Simulator::start(
        Inventory::demo(&root, Mode::Vcenter),
        SimOptions::default(),
        0,
    )?;
    let _nfc = sim.start_nfc(NfcOptions::default())?;
    let sim_b = Simulator::start(
        Inventory::demo(&root_b, Mode::Vcenter),
        SimOptions::default(),
        0,
    )?;
    let _nfc_b = sim_b.start_nfc(NfcOptions::default())?;
    println!(
        "simulators: vCenter A at {}, vCenter B at {}",
        sim.addr(),
        sim_b.addr()
    );
    println!("VM demo-vm (vm-100) on each: thin sparse disk 2000 (64 MiB), thick disk 2001 (32 MiB) on the SAN LUN, CBT on; proxy VM backup-proxy (vm-101) on A");
    let store = repo_s3::open_store(&location, true)?;
    let (repo, _) = Repository::init(
        store,
        &InitOptions {
            chunk_size: 1 << 20,
            encryption: InitEncryption::RepoKey(PASSPHRASE.as_bytes().to_vec()),
            ..InitOptions::default()
        },
    )?;
    println!(
        "repository {location}: format 2, 1 MiB chunks, zstd, encrypted (passphrase {PASSPHRASE:?})"
    );
    // The proxy host's view of simulator A's LUN and HotAdd devices.
    let lib = Library::init(Config::parse(&vsphere_sim::proxy_config(
        &root.join("proxy-host"),
        &dir.join("hotadd.state"),
    )));
    let lib_b = Library::init(Config::default());
    let params = ConnectParams::remote(
        &sim.addr().to_string(),
        sim.thumbprint(),
        Credentials::password(DEMO_USER, DEMO_PASSWORD),
        "vm-100",
    );
    let params_b = ConnectParams::remote(
        &sim_b.addr().to_string(),
        sim_b.thumbprint(),
        Credentials::password(DEMO_USER, DEMO_PASSWORD),
        "vm-100",
    );

    // The guests' data: a few regions, holes elsewhere.
    for (s, key, off, len, fill) in [
        (&sim, 2000, 0u64, 3u64 << 20, 0x11u8),
        (&sim, 2000, 40 << 20, 1 << 20, 0x22),
        (&sim, 2001, 0, 8 << 20, 0x33),
        (&sim_b, 2000, 0, 3 << 20, 0x11),
        (&sim_b, 2000, 20 << 20, 2 << 20, 0x44),
    ] {
        let data: Vec<u8> = (0..len).map(|i| fill ^ (i >> 12) as u8).collect();
        s.guest_write("vm-100", key, off, &data)
            .map_err(|e| format!("guest write: {e}"))?;
    }
    // (point, expected disks, which vCenter)
    let mut points: Vec<(String, Vec<Vec<u8>>, char)> = Vec::new();
    let steps: [(BackupKind, u64, usize, &str); 3] = [
        (BackupKind::Full, 0, 0, "nbdssl"),
        (BackupKind::Incremental, 7, 40, "san:hotadd:nbdssl"),
        (BackupKind::Differential, 11, 25, "hotadd:nbdssl"),
    ];
    for (step, (kind, seed, writes, transports)) in steps.into_iter().enumerate() {
        if writes > 0 {
            let n = guest_writes(&sim, seed, writes)?;
            println!("guest A: {writes} writes, {:.1} MB", mb(n));
        }
        // The second proxy backs up vCenter B's VM at the same time (a
        // full, then an incremental).
        let b_kind = (step < 2).then_some(if step == 0 {
            BackupKind::Full
        } else {
            BackupKind::Incremental
        });
        if b_kind == Some(BackupKind::Incremental) {
            let n = guest_writes(&sim_b, seed + 100, 30)?;
            println!("guest B: 30 writes, {:.1} MB", mb(n));
        }
        let expected_a = capture(&root)?;
        let expected_b = capture(&root_b)?;
        let opts_a = v2::BackupOptions {
            writer: WriterOptions {
                proxy: "proxy-a".into(),
                ..WriterOptions::default()
            },
        };
        let opts_b = v2::BackupOptions {
            writer: WriterOptions {
                proxy: "proxy-b".into(),
                ..WriterOptions::default()
            },
        };
        let (a, b) = std::thread::scope(|scope| {
            let b = b_kind.map(|k| {
                let (lib_b, params_b, repo, opts_b) = (&lib_b, &params_b, &repo, &opts_b);
                scope.spawn(move || {
                    v2::backup(
                        lib_b,
                        params_b,
                        repo,
                        k,
                        Some("nbdssl"),
                        opts_b,
                        &mut |_, _| {},
                    )
                })
            });
            let a = v2::backup(
                &lib,
                &params,
                &repo,
                kind,
                Some(transports),
                &opts_a,
                &mut |_, _| {},
            );
            let b = b.map(|h| h.join().map_err(|_| "backup B panicked"));
            (a, b)
        });
        let mut report = |s: &backup::Summary,
                          kind: BackupKind,
                          who: char,
                          expected: Vec<Vec<u8>>| {
            let id = s.point.clone().unwrap_or_default();
            println!(
                "backup {who} {} ({kind:?}): read {:.1} MB, stored {:.1} MB (compressed, encrypted), skipped {:.1} MB unread, {:.2} s [{}]",
                id,
                mb(s.bytes_read),
                mb(s.bytes_stored),
                mb(s.bytes_skipped),
                s.elapsed.as_secs_f64(),
                s.transports.join(", ")
            );
            for w in &s.warnings {
                println!("  warning: {w}");
            }
            points.push((id, expected, who));
        };
        report(&a?, kind, 'A', expected_a);
        if let (Some(b), Some(k)) = (b, b_kind) {
            report(&b??, k, 'B', expected_b);
        }
    }
    // Every point in time, restored and compared.
    let mut all_ok = true;
    for (id, expected, who) in &points {
        let out = dir.join(format!("restore-{id}"));
        std::fs::create_dir_all(&out)?;
        let t = Instant::now();
        let (_, n) = v2::restore(
            if *who == 'A' { &lib } else { &lib_b },
            &repo,
            id,
            &RestoreTarget::Local(out.clone()),
            None,
            &mut |_, _| {},
        )?;
        for (j, (key, _)) in DISKS.iter().enumerate() {
            let d = LocalDisk::open(out.join(format!("{key}.vmdk")), &Default::default())?;
            let mut got = vec![0u8; d.capacity() as usize];
            d.read_at(0, &mut got)?;
            let same = got == expected[j];
            all_ok &= same;
            println!(
                "restore of point {} ({who}), disk {key}: {}",
                id,
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
    let v = repo.verify(None, 1.0)?;
    println!(
        "verify: {} point disks, {} chunks checked against their ids, {} bad",
        v.indexes,
        v.chunks_checked,
        v.bad_chunks.len() + v.bad_indexes.len()
    );
    all_ok &= v.is_clean();
    let g = repo.gc(repo_store::DEFAULT_GRACE, false)?;
    println!(
        "gc: {} chunks stored, {} deleted, {} missing",
        g.chunks_listed,
        g.chunks_deleted,
        g.missing.len()
    );
    all_ok &= g.missing.is_empty();
    // Back onto the VM itself, over the network: the full backup's state.
    let remote = RestoreTarget::Remote {
        params: params.clone(),
        key: 2000,
        transports: Some("nbdssl".into()),
    };
    v2::restore(
        &lib,
        &repo,
        &points[0].0,
        &remote,
        Some(2000),
        &mut |_, _| {},
    )?;
    let now = capture(&root)?;
    let same = now[0] == points[0].1[0];
    all_ok &= same;
    println!(
        "restore of point {} onto the VM's disk 2000 over nbdssl: {}",
        points[0].0,
        if same { "identical" } else { "MISMATCH" }
    );
    // And the thick disk straight onto its LUN (A's incremental).
    let inc = points
        .iter()
        .filter(|p| p.2 == 'A')
        .nth(1)
        .ok_or("no incremental")?;
    let remote = RestoreTarget::Remote {
        params: params.clone(),
        key: 2001,
        transports: Some("san".into()),
    };
    v2::restore(&lib, &repo, &inc.0, &remote, Some(2001), &mut |_, _| {})?;
    let now = capture(&root)?;
    let same = now[1] == inc.1[1];
    all_ok &= same;
    println!(
        "restore of point {} onto the VM's disk 2001 over san: {}",
        inc.0,
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
