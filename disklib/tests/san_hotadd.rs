//! The san and hotadd transports against the simulator: a datastore on a
//! simulated LUN, a proxy VM with a fake sysfs / dev tree. Backups and
//! restores bit-identical with nbdssl, an offline or failing LUN, the
//! refused redo-log write, the thin-disk fallback, an independent disk
//! skipped by HotAdd, SCSI units chosen in bus order, and a process killed
//! in the middle of a HotAdd backup followed by `Cleanup`.
//!
//! One file on purpose: its cases share one simulated SAN and proxy
//! environment (`env`).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use cbt::BackupKind;
use disklib::api::{Config, ConnectParams, Connection, Credentials, Library, OpenFlags};
use disklib::backup::{self, RestoreTarget};
use vim_soap::client::{Client, ClientConfig, Thumbprint};
use vim_soap::codec::{self, MoRef};
use vmdk_file::local::LocalDisk;
use vsphere_sim::inventory::{Datastore, Disk, Inventory, LunSpec, Mode, User, Vm};
use vsphere_sim::{LunState, NfcOptions, NfcServer, SimOptions, Simulator};

const LUN: &str = "naa.6000c2912ab34cd56ef78a9b0c1d2e3f";
const MIB: u64 = 1 << 20;
/// Disk keys: thick on the LUN, thin on the LUN, a sparse file (not on
/// the LUN), an independent thick disk on the LUN.
const THICK: i32 = 2000;
const THIN: i32 = 2001;
const SPARSE: i32 = 2002;
const INDEPENDENT: i32 = 2003;

struct Env {
    dir: tempfile::TempDir,
    sim: Simulator,
    _nfc: NfcServer,
    params: ConnectParams,
    proxy_host: PathBuf,
    state_file: PathBuf,
}

fn disk(file: &str, mib: u64, t: &str, mode: &str) -> Disk {
    Disk {
        file: format!("[san-ds] {file}"),
        capacity: mib * MIB,
        disk_type: t.into(),
        mode: mode.into(),
        create: true,
    }
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let inv = Inventory {
        mode: Mode::Vcenter,
        datacenter: "dc1".into(),
        users: vec![User {
            user: "backup@local".into(),
            password: "pw".into(),
        }],
        hosts: vec![],
        datastores: vec![Datastore {
            name: "san-ds".into(),
            path: root.join("san-ds"),
            lun: Some(LunSpec {
                id: LUN.into(),
                size: 128 * MIB,
            }),
        }],
        vms: vec![
            Vm {
                name: "vm".into(),
                host: None,
                power: "poweredOn".into(),
                uuid: None,
                disks: vec![
                    disk("vm/thick.vmdk", 24, "vmfs", "persistent"),
                    disk("vm/thin.vmdk", 16, "vmfsThin", "persistent"),
                    disk("vm/sparse.vmdk", 8, "monolithicSparse", "persistent"),
                    disk("vm/scratch.vmdk", 4, "vmfs", "independent_persistent"),
                ],
                proxy: false,
                cbt: true,
                scsi_controllers: 1,
            },
            Vm {
                name: "proxy".into(),
                host: None,
                power: "poweredOn".into(),
                uuid: None,
                disks: vec![disk(
                    "proxy/system.vmdk",
                    4,
                    "monolithicSparse",
                    "persistent",
                )],
                proxy: true,
                cbt: false,
                scsi_controllers: 2,
            },
        ],
        proxy_host: Some(root.join("proxy-host")),
    };
    let sim = Simulator::start(inv, SimOptions::default(), 0).unwrap();
    let nfc = sim.start_nfc(NfcOptions::default()).unwrap();
    let params = ConnectParams::remote(
        &sim.addr().to_string(),
        sim.thumbprint(),
        Credentials::password("backup@local", "pw"),
        "moref=vm-100",
    );
    let proxy_host = root.join("proxy-host");
    let state_file = root.join("tmp/hotadd.state");
    Env {
        dir,
        sim,
        _nfc: nfc,
        params,
        proxy_host,
        state_file,
    }
}

impl Env {
    fn lib(&self) -> Library {
        Library::init(Config::parse(&vsphere_sim::proxy_config(
            &self.proxy_host,
            &self.state_file,
        )))
    }
    fn client(&self) -> Client {
        let c = Client::connect(ClientConfig::new(
            self.sim.addr().to_string(),
            Thumbprint::parse(self.sim.thumbprint()).unwrap(),
        ))
        .unwrap();
        c.login("backup@local", &"pw".into()).unwrap();
        c
    }
    fn path(&self, key: i32) -> String {
        let f = [
            "vm/thick.vmdk",
            "vm/thin.vmdk",
            "vm/sparse.vmdk",
            "vm/scratch.vmdk",
        ][(key - 2000) as usize];
        format!("[san-ds] {f}")
    }
    fn capacity(key: i32) -> u64 {
        [24, 16, 8, 4][(key - 2000) as usize] * MIB
    }
    /// The guest's view of a disk, read from the datastore files.
    fn contents(&self, key: i32) -> Vec<u8> {
        let f = [
            "vm/thick.vmdk",
            "vm/thin.vmdk",
            "vm/sparse.vmdk",
            "vm/scratch.vmdk",
        ][(key - 2000) as usize];
        let d =
            LocalDisk::open(self.dir.path().join("san-ds").join(f), &Default::default()).unwrap();
        let mut b = vec![0u8; d.capacity() as usize];
        d.read_at(0, &mut b).unwrap();
        b
    }
    fn scribble(&self, key: i32, seed: u64) {
        let mut x = seed | 1;
        for _ in 0..5 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1 + (x >> 30) % 400_000;
            let off = (x >> 5) % (Self::capacity(key) - len);
            self.sim
                .guest_write("vm-100", key, off, &pattern(len as usize, x as u32))
                .unwrap();
        }
    }
    fn snapshot(&self, c: &Client) -> MoRef {
        let t = codec::parse_moref(
            &c.call(&codec::create_snapshot_task(
                &MoRef::new("VirtualMachine", "vm-100"),
                "user",
                "",
                false,
                true,
            ))
            .unwrap(),
        )
        .unwrap()
        .unwrap();
        c.wait_task(&t, std::time::Duration::from_secs(30))
            .unwrap()
            .result
            .unwrap()
    }
    fn remove_snapshot(&self, c: &Client, snap: &MoRef) -> Result<(), vim_soap::Error> {
        let t =
            codec::parse_moref(&c.call(&codec::remove_snapshot_task(snap, false, true))?)?.unwrap();
        c.wait_task(&t, std::time::Duration::from_secs(30))
            .map(|_| ())
    }
    fn proxy_disks(&self, c: &Client) -> Vec<codec::VirtualDiskInfo> {
        codec::virtual_disks(
            &c.property(
                &MoRef::new("VirtualMachine", "vm-101"),
                "config.hardware.device",
            )
            .unwrap()
            .unwrap(),
        )
        .unwrap()
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 3) as u8
        })
        .collect()
}

fn restored(dir: &Path, key: i32) -> Vec<u8> {
    let d = LocalDisk::open(dir.join(format!("{key}.vmdk")), &Default::default()).unwrap();
    let mut b = vec![0u8; d.capacity() as usize];
    d.read_at(0, &mut b).unwrap();
    b
}

fn transports_of(s: &backup::Summary) -> Vec<String> {
    s.transports.clone()
}

/// Full and incremental backups over san, hotadd and nbdssl restore to
/// the same bytes; restores over san land on the LUN, a thin disk's
/// restore falls back to nbdssl.
#[test]
fn backups_and_restores_are_bit_identical_across_transports() {
    let e = env();
    let lib = e.lib();
    let keys = [THICK, THIN, SPARSE];
    for &k in &keys {
        e.scribble(k, k as u64);
    }
    let mut points = Vec::new();
    let repos: Vec<(&str, PathBuf)> = ["san:nbdssl", "hotadd:nbdssl", "nbdssl"]
        .into_iter()
        .map(|t| {
            (
                t,
                e.dir.path().join(format!("repo-{}", t.replace(':', "-"))),
            )
        })
        .collect();
    for (round, kind) in [BackupKind::Full, BackupKind::Incremental]
        .into_iter()
        .enumerate()
    {
        if round > 0 {
            for &k in &keys {
                e.scribble(k, 1000 + k as u64);
            }
        }
        points.push(keys.map(|k| e.contents(k)));
        for (t, repo) in &repos {
            let s = backup::backup(&lib, &e.params, repo, kind, Some(t), &mut |_, _| {}).unwrap();
            let want: Vec<String> = match *t {
                // The sparse file is not on the LUN: nbdssl takes it.
                "san:nbdssl" => vec!["disk 2000: san", "disk 2001: san", "disk 2002: nbdssl"],
                "hotadd:nbdssl" => vec![
                    "disk 2000: hotadd",
                    "disk 2001: hotadd",
                    "disk 2002: hotadd",
                ],
                _ => vec![
                    "disk 2000: nbdssl",
                    "disk 2001: nbdssl",
                    "disk 2002: nbdssl",
                ],
            }
            .into_iter()
            .map(String::from)
            .collect();
            assert_eq!(transports_of(&s), want, "{t}");
            assert!(
                s.warnings
                    .iter()
                    .any(|w| w.contains("2003") && w.contains("independent")),
                "{t}: {:?}",
                s.warnings
            );
        }
    }
    // Every point from every repository, restored locally.
    for (t, repo) in &repos {
        for (i, point) in points.iter().enumerate() {
            let out = e
                .dir
                .path()
                .join(format!("restore-{}-{i}", t.replace(':', "-")));
            std::fs::create_dir_all(&out).unwrap();
            backup::restore(
                &lib,
                repo,
                i as u64 + 1,
                &RestoreTarget::Local(out.clone()),
                None,
                &mut |_, _| {},
            )
            .unwrap();
            for (j, &k) in keys.iter().enumerate() {
                assert!(
                    restored(&out, k) == point[j],
                    "{t}: backup {} disk {k}",
                    i + 1
                );
            }
        }
    }
    // No HotAdd disk is left on the proxy, no record in the state file.
    let c = e.client();
    assert_eq!(e.proxy_disks(&c).len(), 1, "only the proxy's own disk");
    assert!(transport_hotadd::recorded(&e.state_file)
        .unwrap()
        .is_empty());

    // Restore the first full backup onto the VM over san: the thick disk
    // goes over the LUN, the thin one falls back to nbdssl.
    for (k, via) in [(THICK, "san"), (THIN, "nbdssl")] {
        let conn = Connection::connect(&lib, &e.params, false, None, Some("san:nbdssl")).unwrap();
        let d = conn.open(&e.path(k), OpenFlags::default()).unwrap();
        assert_eq!(d.transport_mode(), via, "disk {k}");
        d.close().unwrap();
        backup::restore(
            &lib,
            &repos[2].1,
            1,
            &RestoreTarget::Remote {
                params: e.params.clone(),
                key: k,
                transports: Some("san:nbdssl".into()),
            },
            Some(k),
            &mut |_, _| {},
        )
        .unwrap();
        let idx = keys.iter().position(|&x| x == k).unwrap();
        assert!(
            e.contents(k) == points[0][idx],
            "disk {k} restored over {via}"
        );
    }
    // And over hotadd (the VM has no snapshot: a writable attach).
    e.scribble(THICK, 77);
    backup::restore(
        &lib,
        &repos[0].1,
        2,
        &RestoreTarget::Remote {
            params: e.params.clone(),
            key: THICK,
            transports: Some("hotadd".into()),
        },
        Some(THICK),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(e.contents(THICK) == points[1][0], "restored over hotadd");
    assert_eq!(e.proxy_disks(&c).len(), 1);
}

/// Direct reads and writes over san agree with the datastore; an offline
/// LUN fails every request (no silent zeros, no write "succeeding"), a
/// LUN failing from a byte fails what lies past it, and back online the
/// bytes are all there.
#[test]
fn offline_and_failing_lun() {
    let e = env();
    let lib = e.lib();
    e.scribble(THICK, 5);
    let conn = Connection::connect(&lib, &e.params, false, None, Some("san")).unwrap();
    let d = conn.open(&e.path(THICK), OpenFlags::default()).unwrap();
    assert_eq!(d.transport_mode(), "san");
    let cap = Env::capacity(THICK) as usize;
    let mut all = vec![0u8; cap];
    d.read_at(0, &mut all).unwrap();
    assert!(all == e.contents(THICK));
    // Writes across the two LUN runs of the disk, on several streams.
    let data = pattern(5 * MIB as usize + 4097, 9);
    let at = cap as u64 / 2 - 2 * MIB - 3;
    d.write_at(at, &data).unwrap();
    d.flush().unwrap();
    all[at as usize..at as usize + data.len()].copy_from_slice(&data);
    assert!(
        e.contents(THICK) == all,
        "san writes are what NFC and the guest see"
    );

    e.sim.set_lun_state(LUN, LunState::Offline).unwrap();
    let mut b = vec![0u8; 64 * 1024];
    let err = d.read_at(0, &mut b).unwrap_err().to_string();
    assert!(err.contains("offline"), "{err}");
    let err = d.write_at(4096, &[1u8; 4096]).unwrap_err().to_string();
    assert!(err.contains("offline"), "{err}");
    // A new open fails early: the LUN is not visible.
    let err = conn
        .open(&e.path(THICK), OpenFlags::read_only())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not visible"), "{err}");

    e.sim.set_lun_state(LUN, LunState::Online).unwrap();
    let mut again = vec![0u8; cap];
    d.read_at(0, &mut again).unwrap();
    assert!(
        again == all,
        "back online, nothing lost (and the failed write left nothing)"
    );

    // Failing from 1 MiB into the disk's first run: the disk's first
    // half lies past its second half on the LUN (the simulator swaps the
    // runs), so the start reads, 2 MiB in fails, the end reads.
    let c = e.client();
    let map = codec::parse_disk_block_map(
        &c.call(&codec::sim_query_disk_block_map(
            &MoRef::new("VirtualMachine", "vm-100"),
            None,
            THICK,
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(map.extents.len(), 2);
    assert!(map.extents[1].lun_offset < map.extents[0].lun_offset);
    e.sim
        .set_lun_state(LUN, LunState::FailingFrom(map.extents[0].lun_offset + MIB))
        .unwrap();
    d.read_at(0, &mut b).unwrap();
    assert!(b[..] == all[..b.len()]);
    let err = d.read_at(2 * MIB, &mut b).unwrap_err().to_string();
    assert!(err.contains("offline"), "{err}");
    d.read_at(cap as u64 - b.len() as u64, &mut b).unwrap();
    assert!(b[..] == all[cap - b.len()..]);
    e.sim.set_lun_state(LUN, LunState::Online).unwrap();
    d.close().unwrap();
    assert!(e.contents(THICK) == all);
}

/// A disk with a snapshot is a redo log: san refuses to write it (and
/// does not read it); the list falls back to nbdssl.
#[test]
fn redo_log_writes_are_refused_over_san() {
    let e = env();
    let lib = e.lib();
    let c = e.client();
    let snap = e.snapshot(&c);
    // The VM's current disk is now the snapshot's delta.
    let cfg = codec::virtual_disks(
        &c.property(
            &MoRef::new("VirtualMachine", "vm-100"),
            "config.hardware.device",
        )
        .unwrap()
        .unwrap(),
    )
    .unwrap();
    let running = cfg
        .iter()
        .find(|d| d.key == THICK)
        .unwrap()
        .file_name
        .clone();
    assert_ne!(running, e.path(THICK));
    let conn = Connection::connect(&lib, &e.params, false, None, Some("san")).unwrap();
    let err = conn
        .open(&running, OpenFlags::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("redo log"), "{err}");
    let conn = Connection::connect(&lib, &e.params, false, None, Some("san:nbdssl")).unwrap();
    let d = conn.open(&running, OpenFlags::default()).unwrap();
    assert_eq!(d.transport_mode(), "nbdssl");
    d.write_at(0, &[9u8; 512]).unwrap();
    d.close().unwrap();
    // The snapshot's own (base) disk is on the LUN and reads over san.
    let conn = Connection::connect(&lib, &e.params, true, Some(&snap.value), Some("san")).unwrap();
    let d = conn.open(&e.path(THICK), OpenFlags::read_only()).unwrap();
    assert_eq!(d.transport_mode(), "san");
    d.close().unwrap();
    e.remove_snapshot(&c, &snap).unwrap();
    assert_eq!(&e.contents(THICK)[..512], &[9u8; 512][..]);
}

/// HotAdd takes the next free SCSI unit in bus order (the proxy's own
/// disk holds SCSI0:0; the simulator lists SCSI1 first), finds the device
/// through sysfs, declines an independent disk so that disk alone falls
/// back, and detaches at close.
#[test]
fn hotadd_units_devices_and_independent_disks() {
    let e = env();
    let lib = e.lib();
    let c = e.client();
    // The kernel shows the SMBIOS UUID with its first fields swapped:
    // the proxy is still found.
    let id = e.proxy_host.join("sys/class/dmi/id/product_uuid");
    let shown = std::fs::read_to_string(&id).unwrap();
    std::fs::write(&id, transport_hotadd::smbios_swapped(&shown).unwrap()).unwrap();
    let conn = Connection::connect(&lib, &e.params, true, None, Some("hotadd")).unwrap();
    let d = conn.open(&e.path(THICK), OpenFlags::read_only()).unwrap();
    assert_eq!(d.transport_mode(), "hotadd");
    let attached = e.proxy_disks(&c);
    let mine = attached
        .iter()
        .find(|x| x.file_name == e.path(THICK))
        .unwrap();
    assert_eq!(
        (mine.controller_key, mine.unit_number),
        (1000, 1),
        "SCSI0:1"
    );
    assert_eq!(mine.disk_mode, transport_hotadd::READ_MODE);
    let devs: Vec<_> = std::fs::read_dir(e.proxy_host.join("sys/block"))
        .unwrap()
        .collect();
    assert_eq!(devs.len(), 1);
    assert_eq!(transport_hotadd::recorded(&e.state_file).unwrap().len(), 1);
    // A second disk goes to the next unit.
    let d2 = conn.open(&e.path(SPARSE), OpenFlags::read_only()).unwrap();
    let attached = e.proxy_disks(&c);
    let second = attached
        .iter()
        .find(|x| x.file_name == e.path(SPARSE))
        .unwrap();
    assert_eq!((second.controller_key, second.unit_number), (1000, 2));
    let mut b = vec![0u8; Env::capacity(SPARSE) as usize];
    d2.read_at(0, &mut b).unwrap();
    assert!(b == e.contents(SPARSE));
    d2.close().unwrap();
    d.close().unwrap();
    assert_eq!(e.proxy_disks(&c).len(), 1, "detached at close");
    assert_eq!(
        std::fs::read_dir(e.proxy_host.join("sys/block"))
            .unwrap()
            .count(),
        0
    );
    assert!(transport_hotadd::recorded(&e.state_file)
        .unwrap()
        .is_empty());

    // The independent disk: declined with the reason, alone.
    let err = conn
        .open(&e.path(INDEPENDENT), OpenFlags::read_only())
        .unwrap_err()
        .to_string();
    assert!(err.contains("independent"), "{err}");
    let conn = Connection::connect(&lib, &e.params, true, None, Some("hotadd:nbdssl")).unwrap();
    let d = conn
        .open(&e.path(INDEPENDENT), OpenFlags::read_only())
        .unwrap();
    assert_eq!(d.transport_mode(), "nbdssl");
    d.close().unwrap();
    let d = conn.open(&e.path(THIN), OpenFlags::read_only()).unwrap();
    assert_eq!(
        d.transport_mode(),
        "hotadd",
        "the other disks still use HotAdd"
    );
    d.close().unwrap();
}

const CHILD_ENV: &str = "VDDK_RS_HOTADD_CRASH_CHILD";

/// The child of `a_crash_mid_hotadd_backup_is_cleaned_up`: a HotAdd
/// backup that stops in the middle (its first progress report) to be
/// killed.
#[test]
fn hotadd_crash_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return; // only meaningful as the child process
    };
    let a: Vec<&str> = args.split('\t').collect();
    let [addr, thumb, repo, root, state] = a[..] else {
        panic!("bad child arguments {args}");
    };
    let lib = Library::init(Config::parse(&vsphere_sim::proxy_config(
        Path::new(root),
        Path::new(state),
    )));
    let params = ConnectParams::remote(
        addr,
        thumb,
        Credentials::password("backup@local", "pw"),
        "vm-100",
    );
    let _ = backup::backup(
        &lib,
        &params,
        Path::new(repo),
        BackupKind::Full,
        Some("hotadd"),
        &mut |_, _| {
            println!("IN BACKUP");
            std::io::Write::flush(&mut std::io::stdout()).unwrap();
            std::thread::sleep(std::time::Duration::from_secs(600));
        },
    );
    panic!("the backup was meant to be killed");
}

/// A backup process killed while its disk is HotAdded: the snapshot it
/// took cannot be removed until `Cleanup` detaches the disk it reports.
#[test]
fn a_crash_mid_hotadd_backup_is_cleaned_up() {
    let e = env();
    let lib = e.lib();
    let c = e.client();
    e.scribble(THICK, 3);
    let args = [
        e.sim.addr().to_string(),
        e.sim.thumbprint().to_string(),
        e.dir.path().join("repo").display().to_string(),
        e.proxy_host.display().to_string(),
        e.state_file.display().to_string(),
    ]
    .join("\t");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hotadd_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let in_backup = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("IN BACKUP"));
    // SIGKILL: no destructor, no detach, no snapshot removal.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(in_backup, "the child never got into its backup");
    assert_eq!(
        e.proxy_disks(&c).len(),
        2,
        "the crashed backup's disk is still attached"
    );
    assert_eq!(transport_hotadd::recorded(&e.state_file).unwrap().len(), 1);
    let vm = MoRef::new("VirtualMachine", "vm-100");
    let snap = c
        .property(&vm, "snapshot.currentSnapshot")
        .unwrap()
        .and_then(|v| MoRef::from_element(&v))
        .expect("the backup's snapshot is still there");
    let err = e.remove_snapshot(&c, &snap).unwrap_err().to_string();
    assert!(err.contains("in use by proxy"), "{err}");

    let conn = Connection::connect(&lib, &e.params, true, None, None).unwrap();
    assert_eq!(
        conn.cleanup().unwrap(),
        (1, 0),
        "one disk cleaned, none remaining"
    );
    assert_eq!(e.proxy_disks(&c).len(), 1);
    assert!(transport_hotadd::recorded(&e.state_file)
        .unwrap()
        .is_empty());
    assert_eq!(
        std::fs::read_dir(e.proxy_host.join("sys/block"))
            .unwrap()
            .count(),
        0
    );
    // Detached first, now the snapshot goes; the crashed backup's
    // PrepareForAccess is undone with EndAccess.
    e.remove_snapshot(&c, &snap).unwrap();
    conn.end_access(backup::IDENTITY).unwrap();
    assert_eq!(conn.cleanup().unwrap(), (0, 0));
    // And the next backup over HotAdd works.
    let s = backup::backup(
        &lib,
        &e.params,
        &e.dir.path().join("repo2"),
        BackupKind::Full,
        Some("hotadd"),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(
        s.transports.iter().all(|t| t.ends_with("hotadd")),
        "{:?}",
        s.transports
    );
}

/// Without a record (the state file lost too), the proxy's configuration
/// still shows a read-only attach from another VM's directory.
#[test]
fn cleanup_finds_attaches_the_state_file_does_not_know() {
    let e = env();
    let lib = e.lib();
    let c = e.client();
    let conn = Connection::connect(&lib, &e.params, true, None, Some("hotadd")).unwrap();
    let d = conn.open(&e.path(THIN), OpenFlags::read_only()).unwrap();
    // Simulate a crash that also lost the state file.
    std::fs::remove_file(&e.state_file).unwrap();
    std::mem::forget(d);
    assert_eq!(e.proxy_disks(&c).len(), 2);
    assert_eq!(conn.cleanup().unwrap(), (1, 0));
    assert_eq!(e.proxy_disks(&c).len(), 1, "the proxy's own disk stays");
}

/// ESXi tracks every write to a disk, whoever makes it: what a restore
/// writes over hotadd (written back at detach) or nbdssl is in the next
/// `QueryChangedDiskAreas`, rounded out to whole tracking blocks.
#[test]
fn writes_over_hotadd_and_nbdssl_are_changes() {
    let e = env();
    let c = e.client();
    let vm = MoRef::new("VirtualMachine", "vm-100");
    let change_id = |snap: &MoRef| {
        codec::virtual_disks(&c.property(snap, "config.hardware.device").unwrap().unwrap())
            .unwrap()
            .into_iter()
            .find(|d| d.key == SPARSE)
            .and_then(|d| d.change_id)
            .unwrap()
    };
    let s0 = e.snapshot(&c);
    let id0 = change_id(&s0);
    e.remove_snapshot(&c, &s0).unwrap();
    let lib = e.lib();
    for (transport, offset) in [("hotadd", 3 * MIB + 100), ("nbdssl", 5 * MIB + 7)] {
        let conn = Connection::connect(&lib, &e.params, false, None, Some(transport)).unwrap();
        let d = conn.open(&e.path(SPARSE), OpenFlags::default()).unwrap();
        assert_eq!(d.transport_mode(), transport);
        d.write_at(offset, &pattern(1000, 5)).unwrap();
        d.close().unwrap();
    }
    let s1 = e.snapshot(&c);
    let areas = disklib::api::changed_areas(&c, &vm, Some(&s1), &e.path(SPARSE), &id0).unwrap();
    let got: Vec<(u64, u64)> = areas.iter().map(|a| (a.start, a.len)).collect();
    let block = vsphere_sim::DEFAULT_CBT_BLOCK;
    assert_eq!(got, [(3 * MIB, block), (5 * MIB, block)]);
}

/// A restore over san writes the LUN without passing through the host,
/// whose changed-block tracking therefore cannot see it: the restore
/// resets tracking, so the next incremental refuses (take a full) rather
/// than miss the restored bytes, and a full works.
#[test]
fn a_restore_over_san_makes_the_next_backup_full() {
    let e = env();
    let lib = e.lib();
    let repo = e.dir.path().join("repo");
    backup::backup(
        &lib,
        &e.params,
        &repo,
        BackupKind::Full,
        Some("nbdssl"),
        &mut |_, _| {},
    )
    .unwrap();
    e.scribble(THICK, 5);
    backup::restore(
        &lib,
        &repo,
        1,
        &RestoreTarget::Remote {
            params: e.params.clone(),
            key: THICK,
            transports: Some("san".into()),
        },
        Some(THICK),
        &mut |_, _| {},
    )
    .unwrap();
    let err = backup::backup(
        &lib,
        &e.params,
        &repo,
        BackupKind::Incremental,
        Some("nbdssl"),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, disklib::Error::Cbt(cbt::Error::EpochChanged { .. })),
        "{err}"
    );
    backup::backup(
        &lib,
        &e.params,
        &repo,
        BackupKind::Full,
        Some("nbdssl"),
        &mut |_, _| {},
    )
    .unwrap();
}
