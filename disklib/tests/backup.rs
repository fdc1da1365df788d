//! The main job against the simulator: every transport × disk type ×
//! backup kind, and the failures (a connection dropped mid-backup, CBT
//! reset, a deleted snapshot, PrepareForAccess twice, deep snapshot
//! trees, awkward datastore names, ESXi mode, independent disks).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cbt::BackupKind;
use disklib::api::{Config, ConnectParams, Connection, Credentials, Library, OpenFlags};
use disklib::backup::{self, RepoCatalog, RestoreTarget};
use disklib::Error;
use vim_soap::client::{Client, ClientConfig, Thumbprint};
use vim_soap::codec::{self, ConfigSpec, MoRef};
use vim_soap::FaultKind;
use vmdk_file::local::LocalDisk;
use vsphere_sim::inventory::{Datastore, Disk, Inventory, Mode, User, Vm};
use vsphere_sim::{Faults, NfcOptions, NfcServer, SimOptions, Simulator};

struct Env {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    sim: Simulator,
    _nfc: NfcServer,
    faults: Arc<std::sync::Mutex<Faults>>,
    params: ConnectParams,
    lib: Library,
    ds: String,
}

fn inventory(
    root: &Path,
    mode: Mode,
    ds: &str,
    types: &[&str],
    independent_extra: bool,
) -> Inventory {
    let mut disks: Vec<Disk> = types
        .iter()
        .enumerate()
        .map(|(i, t)| Disk {
            file: format!("[{ds}] vm dir/disk{i}.vmdk"),
            capacity: (16 + 8 * i as u64) << 20,
            disk_type: t.to_string(),
            mode: "persistent".into(),
            create: true,
        })
        .collect();
    if independent_extra {
        disks.push(Disk {
            file: format!("[{ds}] vm dir/scratch.vmdk"),
            capacity: 4 << 20,
            disk_type: "monolithicSparse".into(),
            mode: "independent_persistent".into(),
            create: true,
        });
    }
    Inventory {
        mode,
        datacenter: "dc1".into(),
        users: vec![User {
            user: "backup@local".into(),
            password: "pw".into(),
        }],
        hosts: vec![],
        datastores: vec![Datastore {
            name: ds.into(),
            path: root.join("ds"),
            lun: None,
        }],
        vms: vec![Vm {
            name: "vm".into(),
            host: None,
            power: "poweredOn".into(),
            uuid: None,
            disks,
            proxy: false,
            cbt: true,
            scsi_controllers: 1,
        }],
        proxy_host: None,
    }
}

fn env(mode: Mode, ds: &str, types: &[&str], independent_extra: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let sim = Simulator::start(
        inventory(&root, mode, ds, types, independent_extra),
        SimOptions {
            qcda_page: 8 << 20,
            ..SimOptions::default()
        },
        0,
    )
    .unwrap();
    let o = NfcOptions::default();
    let faults = Arc::clone(&o.faults);
    let nfc = sim.start_nfc(o).unwrap();
    let params = ConnectParams::remote(
        &sim.addr().to_string(),
        sim.thumbprint(),
        Credentials::password("backup@local", "pw"),
        "moref=vm-100",
    );
    Env {
        _dir: dir,
        root,
        sim,
        _nfc: nfc,
        faults,
        params,
        lib: Library::init(Config::default()),
        ds: ds.to_string(),
    }
}

fn client(e: &Env) -> Client {
    let c = Client::connect(ClientConfig::new(
        e.sim.addr().to_string(),
        Thumbprint::parse(e.sim.thumbprint()).unwrap(),
    ))
    .unwrap();
    c.login("backup@local", &"pw".into()).unwrap();
    c
}

fn write(e: &Env, key: i32, seed: u64, n: usize) {
    let mut x = seed | 1;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x >> 30) % 300_000;
        let cap = (16 + 8 * (key - 2000) as u64) << 20;
        let off = (x >> 5) % (cap - len);
        let fill = (x >> 50) as u8;
        e.sim
            .guest_write("vm-100", key, off, &vec![fill; len as usize])
            .unwrap();
    }
}

fn state(e: &Env, keys: &[i32]) -> Vec<Vec<u8>> {
    keys.iter()
        .map(|k| {
            let d = LocalDisk::open(
                e.root.join(format!("ds/vm dir/disk{}.vmdk", k - 2000)),
                &Default::default(),
            )
            .unwrap();
            let mut b = vec![0u8; d.capacity() as usize];
            d.read_at(0, &mut b).unwrap();
            b
        })
        .collect()
}

fn restored(dir: &Path, key: i32) -> Vec<u8> {
    let d = LocalDisk::open(dir.join(format!("{key}.vmdk")), &Default::default()).unwrap();
    let mut b = vec![0u8; d.capacity() as usize];
    d.read_at(0, &mut b).unwrap();
    b
}

/// Every transport × disk type × kind, each point in time restored.
#[test]
fn transports_types_and_kinds() {
    let types = [
        "monolithicSparse",
        "vmfs",
        "vmfsThin",
        "twoGbMaxExtentSparse",
        "monolithicFlat",
    ];
    let keys: Vec<i32> = (0..types.len() as i32).map(|i| 2000 + i).collect();
    for transport in ["nbd", "nbdssl"] {
        let e = env(Mode::Vcenter, "datastore 1@site ü", &types, false);
        let repo = e.root.join("repo");
        let mut expected = Vec::new();
        for (i, kind) in [
            BackupKind::Full,
            BackupKind::Incremental,
            BackupKind::Incremental,
            BackupKind::Differential,
            BackupKind::Full,
            BackupKind::Incremental,
        ]
        .into_iter()
        .enumerate()
        {
            for &k in &keys {
                write(&e, k, 100 * i as u64 + k as u64, 6);
            }
            if i == 2 {
                // A snapshot the user took themselves: the backup reads through the chain.
                let c = client(&e);
                let t = codec::parse_moref(
                    &c.call(&codec::create_snapshot_task(
                        &MoRef::new("VirtualMachine", "vm-100"),
                        "user",
                        "",
                        false,
                        false,
                    ))
                    .unwrap(),
                )
                .unwrap()
                .unwrap();
                c.wait_task(&t, Duration::from_secs(30)).unwrap();
                for &k in &keys {
                    write(&e, k, 999 + k as u64, 3);
                }
            }
            expected.push(if i >= 2 {
                running_state(&e, &keys)
            } else {
                state(&e, &keys)
            });
            let s = backup::backup(
                &e.lib,
                &e.params,
                &repo,
                kind,
                Some(transport),
                &mut |_, _| {},
            )
            .unwrap();
            assert!(
                s.transports.iter().all(|t| t.ends_with(transport)),
                "{:?}",
                s.transports
            );
        }
        for (i, want) in expected.iter().enumerate() {
            let out = e.root.join(format!("r{i}"));
            std::fs::create_dir_all(&out).unwrap();
            backup::restore(
                &e.lib,
                &repo,
                i as u64 + 1,
                &RestoreTarget::Local(out.clone()),
                None,
                &mut |_, _| {},
            )
            .unwrap();
            for (j, k) in keys.iter().enumerate() {
                assert!(
                    restored(&out, *k) == want[j],
                    "{transport}: backup {} disk {k}",
                    i + 1
                );
            }
        }
        let (checked, bad) = backup::verify(&repo, None).unwrap();
        assert!(checked > 0 && bad.is_empty());
        // Incrementals store only what changed.
        let cat = RepoCatalog::load(&repo).unwrap();
        let stored = |id: usize| -> u64 {
            cat.backups[id]
                .disks
                .iter()
                .flat_map(|d| d.extents.iter().map(|e| e.1))
                .sum()
        };
        assert!(
            stored(1) < stored(0) / 2,
            "incremental {} vs full {}",
            stored(1),
            stored(0)
        );
    }
}

/// The running state of each disk through the VM's current chain.
fn running_state(e: &Env, keys: &[i32]) -> Vec<Vec<u8>> {
    let c = client(e);
    let disks = codec::virtual_disks(
        &c.property(
            &MoRef::new("VirtualMachine", "vm-100"),
            "config.hardware.device",
        )
        .unwrap()
        .unwrap(),
    )
    .unwrap();
    keys.iter()
        .map(|k| {
            let d = disks.iter().find(|d| d.key == *k).unwrap();
            let rel = d.file_name.split_once("] ").unwrap().1;
            let disk = LocalDisk::open(e.root.join("ds").join(rel), &Default::default()).unwrap();
            let mut b = vec![0u8; disk.capacity() as usize];
            disk.read_at(0, &mut b).unwrap();
            b
        })
        .collect()
}

fn snapshots(e: &Env) -> usize {
    let c = client(e);
    match c
        .property(
            &MoRef::new("VirtualMachine", "vm-100"),
            "snapshot.rootSnapshotList",
        )
        .unwrap()
    {
        None => 0,
        Some(v) => {
            let mut n = 0;
            let mut nodes = codec::snapshot_tree(&v).unwrap();
            while let Some(x) = nodes.pop() {
                n += 1;
                nodes.extend(x.children);
            }
            n
        }
    }
}

fn relocate_allowed(e: &Env) -> bool {
    let c = client(e);
    match c.call(&codec::relocate_vm_task(
        &MoRef::new("VirtualMachine", "vm-100"),
        &MoRef::new("Datastore", "d"),
    )) {
        Ok(_) => true,
        Err(err) => !matches!(err.fault_kind(), Some(FaultKind::MethodDisabled(_))),
    }
}

#[test]
fn a_dropped_connection_fails_cleanly_and_a_retry_succeeds() {
    let e = env(Mode::Vcenter, "ds", &["monolithicSparse"], false);
    let repo = e.root.join("repo");
    write(&e, 2000, 1, 20);
    e.faults.lock().unwrap().drop_after_bytes = Some(300_000);
    let r = backup::backup(
        &e.lib,
        &e.params,
        &repo,
        BackupKind::Full,
        Some("nbd"),
        &mut |_, _| {},
    );
    assert!(r.is_err(), "a dropped connection must fail the backup");
    assert!(
        RepoCatalog::load(&repo).unwrap().backups.is_empty(),
        "no catalog entry"
    );
    assert_eq!(
        std::fs::read_dir(&repo).unwrap().count(),
        0,
        "no half-written backup left"
    );
    assert_eq!(snapshots(&e), 0, "the snapshot was removed");
    assert!(relocate_allowed(&e), "EndAccess was called");
    e.faults.lock().unwrap().drop_after_bytes = None;
    let want = state(&e, &[2000]);
    backup::backup(
        &e.lib,
        &e.params,
        &repo,
        BackupKind::Full,
        Some("nbd"),
        &mut |_, _| {},
    )
    .unwrap();
    let out = e.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    backup::restore(
        &e.lib,
        &repo,
        1,
        &RestoreTarget::Local(out.clone()),
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(restored(&out, 2000) == want[0]);
}

#[test]
fn cbt_resets_plans_and_prepare_for_access() {
    let e = env(Mode::Vcenter, "ds", &["monolithicSparse"], false);
    let repo = e.root.join("repo");
    // No full backup yet.
    assert!(matches!(
        backup::backup(
            &e.lib,
            &e.params,
            &repo,
            BackupKind::Incremental,
            None,
            &mut |_, _| {}
        ),
        Err(Error::Cbt(cbt::Error::NoFullBackup))
    ));
    backup::backup(
        &e.lib,
        &e.params,
        &repo,
        BackupKind::Full,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    // CBT off and on: a new epoch; an incremental must be refused.
    let c = client(&e);
    for on in [false, true] {
        let t = codec::parse_moref(
            &c.call(&codec::reconfig_vm_task(
                &MoRef::new("VirtualMachine", "vm-100"),
                &ConfigSpec {
                    change_tracking: Some(on),
                    device_changes: vec![],
                },
            ))
            .unwrap(),
        )
        .unwrap()
        .unwrap();
        c.wait_task(&t, Duration::from_secs(30)).unwrap();
    }
    match backup::backup(
        &e.lib,
        &e.params,
        &repo,
        BackupKind::Incremental,
        None,
        &mut |_, _| {},
    ) {
        Err(Error::Cbt(cbt::Error::EpochChanged { .. })) => {}
        other => panic!("{other:?}"),
    }
    assert!(relocate_allowed(&e) && snapshots(&e) == 0);
    backup::backup(
        &e.lib,
        &e.params,
        &repo,
        BackupKind::Full,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    backup::backup(
        &e.lib,
        &e.params,
        &repo,
        BackupKind::Incremental,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    // PrepareForAccess twice: the already-disabled fault is reported.
    let conn = Connection::connect(&e.lib, &e.params, true, None, None).unwrap();
    conn.prepare_for_access("tool A").unwrap();
    match conn.prepare_for_access("tool B") {
        Err(Error::Soap(s)) => assert!(matches!(
            s.fault_kind(),
            Some(FaultKind::MethodAlreadyDisabled(_))
        )),
        other => panic!("{other:?}"),
    }
    assert!(
        conn.prepare_for_access(&"x".repeat(51)).is_err(),
        "identity longer than 50 characters"
    );
    conn.end_access("tool A").unwrap();
    // A deleted snapshot's moref is an error, not a crash.
    let snapped = Connection::connect(
        &e.lib,
        &e.params,
        true,
        Some("snapshot-424242"),
        Some("nbd"),
    )
    .unwrap();
    assert!(snapped
        .open(
            &format!("[{}] vm dir/disk0.vmdk", e.ds),
            OpenFlags::read_only()
        )
        .is_err());
    // Transport fallback: san and hotadd are unavailable here; nbd serves.
    let fb = Connection::connect(&e.lib, &e.params, true, None, Some("san:hotadd:nbd")).unwrap();
    let d = fb
        .open(
            &format!("[{}] vm dir/disk0.vmdk", e.ds),
            OpenFlags::read_only(),
        )
        .unwrap();
    assert_eq!(d.transport_mode(), "nbd");
    let blocks = d
        .query_allocated_blocks(0, d.capacity() / 512, 128)
        .unwrap();
    assert!(blocks.iter().all(|&(s, n)| s % 128 == 0 && n % 128 == 0));
}

#[test]
fn esxi_mode_independent_disks_and_deep_snapshot_trees() {
    let e = env(Mode::Esxi, "ds @ 2", &["monolithicSparse"], true);
    let repo = e.root.join("repo");
    // 33 snapshots taken by someone else; the backup reads through all.
    let c = client(&e);
    for i in 0..33 {
        write(&e, 2000, 50 + i, 2);
        let t = codec::parse_moref(
            &c.call(&codec::create_snapshot_task(
                &MoRef::new("VirtualMachine", "vm-100"),
                &format!("s{i}"),
                "",
                false,
                false,
            ))
            .unwrap(),
        )
        .unwrap()
        .unwrap();
        c.wait_task(&t, Duration::from_secs(30)).unwrap();
    }
    let want = running_state(&e, &[2000]);
    let s = backup::backup(
        &e.lib,
        &e.params,
        &repo,
        BackupKind::Full,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(
        s.warnings.iter().any(|w| w.contains("PrepareForAccess")),
        "{:?}",
        s.warnings
    );
    assert!(
        s.warnings.iter().any(|w| w.contains("independent")),
        "{:?}",
        s.warnings
    );
    let cat = RepoCatalog::load(&repo).unwrap();
    assert_eq!(
        cat.backups[0].disks.len(),
        1,
        "the independent disk is not backed up"
    );
    let out = e.root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    backup::restore(
        &e.lib,
        &repo,
        1,
        &RestoreTarget::Local(out.clone()),
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(restored(&out, 2000) == want[0]);
    assert_eq!(snapshots(&e), 33, "only our own snapshot was removed");
    // Back onto the VM over nbdssl.
    write(&e, 2000, 7777, 10);
    backup::restore(
        &e.lib,
        &repo,
        1,
        &RestoreTarget::Remote {
            params: e.params.clone(),
            key: 2000,
            transports: Some("nbdssl".into()),
        },
        Some(2000),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(running_state(&e, &[2000])[0] == want[0]);
}

/// `check`, then `repair` and `check` again if needed.
fn check_or_repair(path: &Path) -> Result<(), String> {
    use vmdk_file::check::check_disk;
    // Crash states are scratch: their repairs need not sync.
    let o = vmdk_file::local::OpenOptions {
        storage: Arc::new(vmdk_file::io::crash::NoSync),
        ..Default::default()
    };
    let report = check_disk(path, &o).map_err(|e| format!("check: {e}"))?;
    if report.is_consistent() {
        return Ok(());
    }
    vmdk_file::repair::repair(path, &o).map_err(|e| format!("repair: {e} ({report:?})"))?;
    let again = check_disk(path, &o).map_err(|e| format!("check after repair: {e}"))?;
    if !again.is_consistent() {
        return Err(format!("not clean after repair: {again:?}"));
    }
    Ok(())
}

/// A crash state of a repository after `done` backups returned (and
/// perhaps during the next): its catalog lists exactly those (or one
/// more), and each listed backup is whole: its configuration as written,
/// every disk opens, checks clean (after repair at most) and matches the
/// catalog's checksums.
fn check_repo(repo: &Path, done: usize, running: bool, configs: &[Vec<u8>]) -> Result<(), String> {
    let catalog = RepoCatalog::load(repo).map_err(|e| format!("catalog: {e}"))?;
    let n = catalog.backups.len();
    if !(n == done || (running && n == done + 1)) {
        return Err(format!(
            "the catalog lists {n} backups; {done} had returned{}",
            if running { " and one was running" } else { "" }
        ));
    }
    for (i, b) in catalog.backups.iter().enumerate() {
        if b.id != i as u64 + 1 {
            return Err(format!("backup {} listed as number {}", b.id, i + 1));
        }
        let config = std::fs::read(repo.join(&b.dir).join("config.xml"))
            .map_err(|e| format!("backup {}: config.xml: {e}", b.id))?;
        if config != configs[i] {
            return Err(format!("backup {}: config.xml differs", b.id));
        }
        for d in &b.disks {
            check_or_repair(&repo.join(&d.file)).map_err(|e| format!("{}: {e}", d.file))?;
        }
        let (checked, bad) = backup::verify(repo, Some(b.id)).map_err(|e| e.to_string())?;
        if checked == 0 || !bad.is_empty() {
            return Err(format!(
                "backup {}: {} of {checked} blocks differ from their checksums",
                b.id,
                bad.len()
            ));
        }
    }
    Ok(())
}

/// Power loss during backups into a new repository: every crash state of
/// the repository's writes (a bounded, seeded sample at each sync point;
/// `VMDK_CRASH_STATES` states per workload, `cargo xtask crash`) holds
/// the backups whose call returned, each whole, and perhaps the one that
/// was running, whole too.
#[test]
fn backups_survive_power_loss() {
    use std::io::Write as _;
    use vmdk_file::io::crash::Recorder;
    use vmdk_file::io::SharedStorage;

    let started = std::time::Instant::now();
    let e = env(Mode::Vcenter, "ds", &["monolithicSparse"], false);
    let root = e.root.join("r");
    std::fs::create_dir(&root).unwrap();
    let repo = root.join("repo");
    let rec = Recorder::new(&root).unwrap();
    let storage: SharedStorage = rec.clone();
    // (log position when the backup started, when it returned)
    let mut spans = Vec::new();
    for (i, kind) in [BackupKind::Full, BackupKind::Incremental]
        .into_iter()
        .enumerate()
    {
        write(&e, 2000, 40 + i as u64, 4);
        let start = rec.position();
        backup::backup_in(
            &storage,
            &e.lib,
            &e.params,
            &repo,
            kind,
            Some("nbd"),
            &mut |_, _| {},
        )
        .unwrap();
        spans.push((start, rec.position()));
    }
    let catalog = RepoCatalog::load(&repo).unwrap();
    let configs: Vec<Vec<u8>> = catalog
        .backups
        .iter()
        .map(|b| std::fs::read(repo.join(&b.dir).join("config.xml")).unwrap())
        .collect();

    let recording = rec.recording();
    let wanted = std::env::var("VMDK_CRASH_STATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300usize);
    let per_point = wanted.div_ceil(recording.crash_points()).max(2);
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for state in recording.replay(per_point, 0xbac0) {
        state.write_to(scratch.path()).unwrap();
        let p = state.position();
        let done = spans.iter().filter(|s| s.1 <= p).count();
        let running = spans.iter().any(|s| s.0 <= p && p < s.1);
        if let Err(err) = check_repo(&scratch.path().join("repo"), done, running, &configs) {
            panic!(
                "{}\n{err}\nlog around the crash:\n{}",
                state.describe(),
                recording.describe(p.saturating_sub(12)..p + 2)
            );
        }
        checked += 1;
    }
    // Straight to stderr: shown even when the harness captures output.
    let _ = writeln!(
        std::io::stderr(),
        "power loss, backup repository: {checked} crash states checked ({} changes, {} crash points) in {:.1?}",
        recording.len(),
        recording.crash_points(),
        started.elapsed()
    );
}

/// One byte flipped in a stored disk: `verify` reports the block, and a
/// restore of that point fails naming the point, the disk and the offset,
/// leaving no restored file behind.
#[test]
fn restore_checks_every_block_against_its_crc() {
    let e = env(
        Mode::Vcenter,
        "ds",
        &["monolithicSparse", "monolithicFlat"],
        false,
    );
    let repo = e.root.join("repo");
    write(&e, 2000, 7, 20);
    write(&e, 2001, 8, 20);
    let run =
        |kind| backup::backup(&e.lib, &e.params, &repo, kind, Some("nbd"), &mut |_, _| {}).unwrap();
    run(BackupKind::Full);
    write(&e, 2001, 9, 5);
    run(BackupKind::Incremental);
    let restore_to = |id: u64, out: &Path| {
        std::fs::create_dir_all(out).unwrap();
        backup::restore(
            &e.lib,
            &repo,
            id,
            &RestoreTarget::Local(out.to_path_buf()),
            None,
            &mut |_, _| {},
        )
    };
    assert!(restore_to(2, &e.root.join("good")).is_ok());
    assert!(backup::verify(&repo, None).unwrap().1.is_empty());

    // Flip one byte of the first grain of disk 2001 in the full backup.
    let cat = RepoCatalog::load(&repo).unwrap();
    let stored = repo.join(&cat.backups[0].disks[1].file);
    assert_eq!(cat.backups[0].disks[1].key, 2001);
    let mut bytes = std::fs::read(&stored).unwrap();
    let overhead = u64::from_le_bytes(bytes[64..72].try_into().unwrap()) as usize * 512;
    bytes[overhead + 100] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();

    let (_, bad) = backup::verify(&repo, Some(1)).unwrap();
    assert_eq!(bad.len(), 1, "{bad:?}");
    for id in [1, 2] {
        let out = e.root.join(format!("bad{id}"));
        let err = restore_to(id, &out).unwrap_err();
        match &err {
            Error::BadChecksum {
                backup,
                key,
                offset,
                ..
            } => {
                assert_eq!((*backup, *key, *offset), (1, 2001, bad[0].offset), "{err}");
            }
            other => panic!("restore of point {id}: {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("backup 1")
                && text.contains("disk 2001")
                && text.contains(&format!("byte {}", bad[0].offset)),
            "{text}"
        );
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            0,
            "a failed restore leaves no disk behind"
        );
    }
    // The other disk alone still restores.
    let out = e.root.join("other");
    std::fs::create_dir_all(&out).unwrap();
    backup::restore(
        &e.lib,
        &repo,
        2,
        &RestoreTarget::Local(out.clone()),
        Some(2000),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(restored(&out, 2000) == restored(&e.root.join("good"), 2000));
}

/// A backup point read in place equals the disk it recorded (full and
/// incremental), reports its holes, reads only the blocks asked for, and
/// a writable delta on top leaves the point verifying.
#[test]
fn backup_points_read_in_place_and_through_a_delta() {
    let e = env(Mode::Vcenter, "ds", &["monolithicSparse"], false);
    let repo = e.root.join("repo");
    write(&e, 2000, 3, 10);
    let run =
        |kind| backup::backup(&e.lib, &e.params, &repo, kind, Some("nbd"), &mut |_, _| {}).unwrap();
    run(BackupKind::Full);
    let at_full = state(&e, &[2000]).remove(0);
    write(&e, 2000, 4, 6);
    run(BackupKind::Incremental);
    let at_incr = state(&e, &[2000]).remove(0);
    assert_ne!(at_full, at_incr);

    for (id, want) in [(1, &at_full), (2, &at_incr)] {
        let p = backup::BackupPoint::open(&repo, id, None).unwrap();
        assert_eq!(p.capacity(), want.len() as u64);
        let mut got = vec![0xEEu8; want.len()];
        // Odd-sized pieces cross blocks and holes.
        for (i, piece) in got.chunks_mut(777_777).enumerate() {
            p.read_at(i as u64 * 777_777, piece).unwrap();
        }
        assert!(&got == want, "point {id} differs from the disk it recorded");
        let ext = p.extents(0, p.capacity());
        assert_eq!(ext.iter().map(|x| x.length).sum::<u64>(), p.capacity());
        // Holes really read as zero.
        for x in ext.iter().filter(|x| !x.stored) {
            let r = x.start as usize..(x.start + x.length) as usize;
            assert!(want[r].iter().all(|&b| b == 0));
        }
    }

    // One sector costs one stored block, and again nothing once cached.
    let p = backup::BackupPoint::open(&repo, 2, None).unwrap();
    let stored = p
        .extents(0, p.capacity())
        .into_iter()
        .find(|x| x.stored)
        .unwrap();
    let mut sector = [0u8; 512];
    p.read_at(stored.start, &mut sector).unwrap();
    let first = p.bytes_read();
    assert!(
        first > 0 && first <= 1 << 20,
        "{first} bytes for one sector"
    );
    p.read_at(stored.start, &mut sector).unwrap();
    assert_eq!(p.bytes_read(), first);
    assert!(p.read_at(p.capacity() - 1, &mut [0u8; 2]).is_err());
    assert!(backup::BackupPoint::open(&repo, 9, None).is_err());
    assert!(backup::BackupPoint::open(&repo, 1, Some(7)).is_err());

    // A delta: partial and whole-grain writes, zeroes, read back; the
    // point and its CRCs untouched; a reopened delta keeps its writes.
    let delta_path = e.root.join("delta.vmdk");
    let d = backup::PointDelta::open(p, &delta_path).unwrap();
    let mut model = at_incr.clone();
    let mut put = |off: usize, bytes: &[u8], d: &backup::PointDelta| {
        d.write_at(off as u64, bytes).unwrap();
        model[off..off + bytes.len()].copy_from_slice(bytes);
    };
    put(100, &[0xA5; 1000], &d);
    put(65536 * 3, &[0x5A; 65536 * 2], &d);
    put(65536 * 7 + 300, &[0x11; 200_000], &d);
    d.write_zeroes(1 << 20, 4096).unwrap();
    model[1 << 20..(1 << 20) + 4096].fill(0);
    let mut got = vec![0u8; model.len()];
    d.read_at(0, &mut got).unwrap();
    assert!(got == model, "delta reads differ from the model");
    let ext = d.extents(0, d.capacity());
    assert_eq!(ext.iter().map(|x| x.length).sum::<u64>(), d.capacity());
    assert!(ext.iter().any(|x| x.stored && x.start == 0));
    d.flush().unwrap();
    d.close().unwrap();
    assert!(backup::verify(&repo, None).unwrap().1.is_empty());
    let p = backup::BackupPoint::open(&repo, 2, None).unwrap();
    let mut again = vec![0u8; at_incr.len()];
    p.read_at(0, &mut again).unwrap();
    assert!(again == at_incr, "the point changed under its delta");
    let d = backup::PointDelta::open(p, &delta_path).unwrap();
    let mut got = vec![0u8; model.len()];
    d.read_at(0, &mut got).unwrap();
    assert!(got == model, "a reopened delta lost writes");
    d.close().unwrap();
    // A delta belongs to one point: another point refuses it, and a new
    // delta is never made over an existing file.
    let other = backup::BackupPoint::open(&repo, 1, None).unwrap();
    let err = backup::PointDelta::open(other, &delta_path).unwrap_err();
    assert!(err.to_string().contains("not a delta of"), "{err}");
    let again = backup::BackupPoint::open(&repo, 2, None).unwrap();
    assert!(backup::PointDelta::create(again, &delta_path).is_err());
    let plain = e.root.join("plain.vmdk");
    vmdk_file::create::create(
        &plain,
        &vmdk_file::create::CreateOptions::new(
            vmdk_file::create::DiskType::MonolithicSparse,
            at_incr.len() as u64,
        ),
    )
    .unwrap();
    let again = backup::BackupPoint::open(&repo, 2, None).unwrap();
    assert!(
        backup::PointDelta::open(again, &plain).is_err(),
        "a VMDK that is no delta was overlaid"
    );
}
