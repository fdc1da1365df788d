//! nbd and nbdssl against the simulator's NFC server: data identical to
//! reading the file locally, and every failure typed.

use std::sync::Arc;
use std::time::Duration;

use transport_nbd::{open_vm_disk, Compression, Error, NbdDisk, NbdOptions, Ticket, Timeouts};
use vim_soap::client::{Client, ClientConfig, Thumbprint};
use vim_soap::codec::{self, MoRef};
use vsphere_sim::inventory::{DEMO_PASSWORD, DEMO_USER};
use vsphere_sim::{Faults, Inventory, Mode, NfcOptions, NfcServer, SimOptions, Simulator};

const DISK: &str = "[datastore1] demo-vm/demo-vm.vmdk";

struct Env {
    dir: tempfile::TempDir,
    sim: Simulator,
    nfc: NfcServer,
    client: Arc<Client>,
    faults: Arc<std::sync::Mutex<Faults>>,
}

fn env(nfc_opts: impl FnOnce(&mut NfcOptions), sim_opts: SimOptions) -> Env {
    env_in(Mode::Vcenter, nfc_opts, sim_opts)
}

fn env_in(mode: Mode, nfc_opts: impl FnOnce(&mut NfcOptions), sim_opts: SimOptions) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(Inventory::demo(dir.path(), mode), sim_opts, 0).unwrap();
    let mut o = NfcOptions::default();
    nfc_opts(&mut o);
    let faults = Arc::clone(&o.faults);
    let nfc = sim.start_nfc(o).unwrap();
    let client = Client::connect(ClientConfig::new(
        sim.addr().to_string(),
        Thumbprint::parse(sim.thumbprint()).unwrap(),
    ))
    .unwrap();
    client.login(DEMO_USER, &DEMO_PASSWORD.into()).unwrap();
    // Some content: a pattern in the first 8 MiB.
    let data: Vec<u8> = (0..8 << 20)
        .map(|i: u32| ((i / 512) ^ (i % 251)) as u8)
        .collect();
    sim.guest_write("vm-100", 2000, 0, &data).unwrap();
    Env {
        dir,
        sim,
        nfc,
        client: Arc::new(client),
        faults,
    }
}

fn vm() -> MoRef {
    MoRef::new("VirtualMachine", "vm-100")
}

fn local(e: &Env) -> Vec<u8> {
    let d = vmdk_file::local::LocalDisk::open(
        e.dir.path().join("datastore1/demo-vm/demo-vm.vmdk"),
        &Default::default(),
    )
    .unwrap();
    let mut b = vec![0u8; d.capacity() as usize];
    d.read_at(0, &mut b).unwrap();
    b
}

fn open(e: &Env, opts: NbdOptions, read_only: bool) -> Result<NbdDisk, Error> {
    open_vm_disk(Arc::clone(&e.client), &vm(), None, DISK, read_only, opts)
}

#[test]
fn reads_match_the_file_over_nbd_and_nbdssl() {
    let e = env(|_| {}, SimOptions::default());
    let want = local(&e);
    for ssl in [false, true] {
        for (in_flight, req, buffer_size) in [(1, 64 << 10, 64 << 10), (4, 1 << 20, 2 << 20)] {
            for compression in [
                Compression::None,
                Compression::FastLz,
                Compression::Zlib,
                Compression::SkipZ,
            ] {
                let d = open(
                    &e,
                    NbdOptions {
                        ssl,
                        in_flight,
                        max_request: req,
                        buffer_size,
                        compression,
                        ..NbdOptions::default()
                    },
                    true,
                )
                .unwrap();
                assert_eq!(d.capacity(), want.len() as u64);
                let mut got = vec![0u8; want.len()];
                d.read_at(0, &mut got).unwrap();
                assert!(
                    got == want,
                    "ssl {ssl} depth {in_flight} req {req} {compression:?}"
                );
                // An odd-sized read in the middle.
                let mut part = vec![0u8; 777_777];
                d.read_at(12_345, &mut part).unwrap();
                assert_eq!(part, want[12_345..12_345 + 777_777]);
                assert!(d.read_at(want.len() as u64 - 10, &mut [0u8; 11]).is_err());
                // GetInfo as VDDK gathers it: OPEN_FILE reply and DDB_GET.
                let info = d.info().unwrap();
                assert_eq!(info.capacity, want.len() as u64);
                assert_eq!(info.adapter_type.as_deref(), Some("lsilogic"));
                let local = vmdk_file::local::LocalDisk::open(
                    e.dir.path().join("datastore1/demo-vm/demo-vm.vmdk"),
                    &Default::default(),
                )
                .unwrap();
                let g = local.descriptor().geometry().unwrap();
                assert_eq!(info.geometry, (g.cylinders, g.heads, g.sectors));
                assert_eq!(info.uuid.as_deref(), local.descriptor().ddb_get("ddb.uuid"));
                // Keys go without the `ddb.` prefix on the wire.
                for k in ["ddb.adapterType", "adapterType"] {
                    assert_eq!(d.ddb(k).unwrap().as_deref(), Some("lsilogic"), "{k}");
                }
                assert_eq!(d.ddb("ddb.nope").unwrap(), None);
                d.close().unwrap();
            }
        }
    }
}

#[test]
fn writes_reach_the_disk_and_snapshots_read_their_state() {
    let e = env(|_| {}, SimOptions::default());
    let d = open(
        &e,
        NbdOptions {
            ssl: true,
            ..NbdOptions::default()
        },
        false,
    )
    .unwrap();
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    d.write_at(100_000, &payload).unwrap();
    d.flush().unwrap();
    d.close().unwrap();
    let after = local(&e);
    assert_eq!(&after[100_000..3_100_000], &payload[..]);
    // Compressed writes: each fragment on its own, any codec.
    for (i, compression) in [Compression::FastLz, Compression::Zlib, Compression::SkipZ]
        .into_iter()
        .enumerate()
    {
        let d = open(
            &e,
            NbdOptions {
                compression,
                ..NbdOptions::default()
            },
            false,
        )
        .unwrap();
        let mut data = vec![0u8; 300_000];
        data[1000..5000].fill(i as u8 + 1);
        data[200_000..200_100].copy_from_slice(&payload[..100]);
        d.write_at(4 << 20, &data).unwrap();
        d.close().unwrap();
        assert!(
            local(&e)[4 << 20..(4 << 20) + 300_000] == data[..],
            "{compression:?}"
        );
    }
    let after = local(&e);
    // Take a snapshot, write more; the snapshot's view is the old data.
    let task = codec::parse_moref(
        &e.client
            .call(&codec::create_snapshot_task(&vm(), "s", "", false, true))
            .unwrap(),
    )
    .unwrap()
    .unwrap();
    let snap = e
        .client
        .wait_task(&task, Duration::from_secs(30))
        .unwrap()
        .result
        .unwrap();
    e.sim
        .guest_write("vm-100", 2000, 0, &[0xEE; 65536])
        .unwrap();
    let s = open_vm_disk(
        Arc::clone(&e.client),
        &vm(),
        Some(&snap),
        DISK,
        true,
        NbdOptions::default(),
    )
    .unwrap();
    let mut got = vec![0u8; after.len()];
    s.read_at(0, &mut got).unwrap();
    assert!(
        got == after,
        "the snapshot shows the state at snapshot time"
    );
    // Writing the snapshot's file is refused: a read-write ticket covers
    // the disk's running file only.
    assert!(matches!(
        open_vm_disk(
            Arc::clone(&e.client),
            &vm(),
            Some(&snap),
            DISK,
            false,
            NbdOptions::default()
        ),
        Err(Error::Server { code: 3, .. })
    ));
    // A read-only (NfcGetVmFiles) ticket opened for writing: 0x0b.
    let t = ticket(&e);
    assert!(matches!(
        NbdDisk::open(&t, DISK, false, NbdOptions::default(), None),
        Err(Error::Server { code: 11, .. })
    ));
}

/// A read-only ticket, as VDDK asks for it.
fn ticket(e: &Env) -> Ticket {
    let nfc =
        codec::parse_internal_content(&e.client.call(&codec::retrieve_internal_content()).unwrap())
            .unwrap()
            .nfc_service;
    let t = codec::parse_host_service_ticket(
        &e.client
            .call(&codec::nfc_get_vm_files(&nfc, &vm()))
            .unwrap(),
    )
    .unwrap();
    Ticket::from_host_ticket(&t, "127.0.0.1").unwrap()
}

#[test]
fn tickets_thumbprints_and_paths() {
    let e = env(
        |_| {},
        SimOptions {
            ticket_ttl: Duration::from_millis(300),
            ..SimOptions::default()
        },
    );
    // Wrong thumbprint: refused before the ticket is sent.
    let mut t = ticket(&e);
    t.thumbprint = Thumbprint::parse(&"AB:".repeat(20)).unwrap();
    assert!(matches!(
        NbdDisk::open(&t, DISK, true, NbdOptions::default(), None),
        Err(Error::ThumbprintMismatch { .. })
    ));
    // The ticket was not consumed by that attempt... but it is single-use.
    let t = ticket(&e);
    NbdDisk::open(&t, DISK, true, NbdOptions::default(), None)
        .unwrap()
        .close()
        .unwrap();
    assert!(matches!(
        NbdDisk::open(&t, DISK, true, NbdOptions::default(), None),
        Err(Error::Refused(_))
    ));
    // Expired.
    let t = ticket(&e);
    std::thread::sleep(Duration::from_millis(400));
    assert!(matches!(
        NbdDisk::open(&t, DISK, true, NbdOptions::default(), None),
        Err(Error::Refused(_))
    ));
    // Foreign.
    let mut t = ticket(&e);
    t.ticket = "not-a-ticket".into();
    assert!(matches!(
        NbdDisk::open(&t, DISK, true, NbdOptions::default(), None),
        Err(Error::Refused(_))
    ));
    // Paths: files of no disk of the VM, escapes.
    for p in [
        "[datastore1] backup-proxy/backup-proxy.vmdk",
        "[datastore1] ../datastore1/demo-vm/demo-vm.vmdk",
        "[datastore1] /etc/passwd",
        "[other] demo-vm/demo-vm.vmdk",
    ] {
        let t = ticket(&e);
        match NbdDisk::open(&t, p, true, NbdOptions::default(), None) {
            Err(Error::Server { code: 3, .. }) => {}
            other => panic!("{p}: {other:?}"),
        }
    }
    // A symlink inside the datastore pointing out of it.
    let outside = e.dir.path().join("outside.vmdk");
    vmdk_file::create::create(
        &outside,
        &vmdk_file::create::CreateOptions::new(
            vmdk_file::create::DiskType::MonolithicSparse,
            1 << 20,
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, e.dir.path().join("datastore1/demo-vm/link.vmdk"))
        .unwrap();
    let t = ticket(&e);
    assert!(matches!(
        NbdDisk::open(
            &t,
            "[datastore1] demo-vm/link.vmdk",
            true,
            NbdOptions::default(),
            None
        ),
        Err(Error::Server { .. })
    ));
}

#[test]
fn faults_are_typed_and_reads_retry_once() {
    let e = env(|_| {}, SimOptions::default());
    let want = local(&e);
    // Dropped connection: typed error without retry...
    let d = open(
        &e,
        NbdOptions {
            retry_reads: false,
            ..NbdOptions::default()
        },
        true,
    )
    .unwrap();
    e.faults.lock().unwrap().drop_after_bytes = Some(200_000);
    let mut b = vec![0u8; 4 << 20];
    assert!(matches!(
        d.read_at(0, &mut b),
        Err(Error::ConnectionLost { .. })
    ));
    assert!(
        matches!(d.read_at(0, &mut b), Err(Error::ConnectionLost { .. })),
        "stays broken, no silent success"
    );
    // ... and a reconnect with a fresh ticket with it.
    e.faults.lock().unwrap().drop_after_bytes = None;
    let d = open(&e, NbdOptions::default(), true).unwrap();
    e.faults.lock().unwrap().drop_after_bytes = Some(100_000);
    let r = {
        let f = Arc::clone(&e.faults);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            f.lock().unwrap().drop_after_bytes = None;
        });
        std::thread::sleep(Duration::from_millis(100));
        d.read_at(0, &mut b)
    };
    r.unwrap();
    assert!(b == want[..4 << 20]);
    // A write on a dropped connection is an error, never a success.
    let w = open(
        &e,
        NbdOptions {
            ssl: false,
            ..NbdOptions::default()
        },
        false,
    )
    .unwrap();
    e.faults.lock().unwrap().drop_after_bytes = Some(10);
    assert!(w.write_at(0, &[1u8; 1 << 20]).is_err());
    e.faults.lock().unwrap().drop_after_bytes = None;
    // A corrupted frame is a protocol error.
    let d = open(
        &e,
        NbdOptions {
            retry_reads: false,
            ..NbdOptions::default()
        },
        true,
    )
    .unwrap();
    e.faults.lock().unwrap().corrupt_frame = Some(1);
    assert!(matches!(d.read_at(0, &mut b), Err(Error::Protocol(_))));
    e.faults.lock().unwrap().corrupt_frame = None;
    // Delayed replies against a read timeout.
    let d = open(
        &e,
        NbdOptions {
            retry_reads: false,
            timeouts: Timeouts {
                read: Some(Duration::from_millis(100)),
                ..Timeouts::default()
            },
            ..NbdOptions::default()
        },
        true,
    )
    .unwrap();
    e.faults.lock().unwrap().delay = Some(Duration::from_millis(400));
    assert!(matches!(
        d.read_at(0, &mut b),
        Err(Error::Timeout {
            what: "reply" | "read data",
            ..
        })
    ));
    // ... and a request timeout (a DDB key), a write timeout.
    e.faults.lock().unwrap().delay = None;
    let d = open(
        &e,
        NbdOptions {
            retry_reads: false,
            timeouts: Timeouts {
                request: Some(Duration::from_millis(100)),
                write: Some(Duration::from_millis(100)),
                ..Timeouts::default()
            },
            ..NbdOptions::default()
        },
        false,
    )
    .unwrap();
    let w = open(
        &e,
        NbdOptions {
            retry_reads: false,
            timeouts: Timeouts {
                request: Some(Duration::from_millis(100)),
                write: Some(Duration::from_millis(100)),
                ..Timeouts::default()
            },
            ..NbdOptions::default()
        },
        false,
    )
    .unwrap();
    e.faults.lock().unwrap().delay = Some(Duration::from_millis(400));
    assert!(matches!(
        d.ddb("uuid"),
        Err(Error::Timeout { what: "reply", .. })
    ));
    assert!(matches!(
        w.write_at(0, &[1u8; 4096]),
        Err(Error::Timeout { .. })
    ));
    e.faults.lock().unwrap().delay = None;
    // Accept timeout: a listener that never speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let t = Ticket {
        server: silent.local_addr().unwrap().to_string(),
        thumbprint: Thumbprint::parse(e.sim.thumbprint()).unwrap(),
        ticket: "x".into(),
        service: "vpxa-nfc".into(),
    };
    let start = std::time::Instant::now();
    let r = NbdDisk::open(
        &t,
        DISK,
        true,
        NbdOptions {
            timeouts: Timeouts {
                accept: Some(Duration::from_millis(200)),
                ..Timeouts::default()
            },
            ..NbdOptions::default()
        },
        None,
    );
    assert!(
        matches!(r, Err(Error::ConnectionLost { .. } | Error::Timeout { .. })),
        "{r:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(silent);
}

#[test]
fn memory_and_connection_limits() {
    let e = env(
        |o| {
            o.memory_limit = 1 << 20;
            o.max_connections = 1;
        },
        SimOptions::default(),
    );
    let d = open(
        &e,
        NbdOptions {
            max_request: 2 << 20,
            ..NbdOptions::default()
        },
        true,
    )
    .unwrap();
    let mut b = vec![0u8; 2 << 20];
    match d.read_at(0, &mut b) {
        Err(Error::Server { code: 2, text }) => assert!(text.contains("memory limit"), "{text}"),
        other => panic!("{other:?}"),
    }
    // Within the limit it works.
    let mut small = vec![0u8; 512 << 10];
    d.read_at(0, &mut small).unwrap();
    // A second connection is refused while the first is open.
    assert!(
        matches!(open(&e, NbdOptions::default(), true), Err(Error::Refused(m)) if m.contains("limit"))
    );
    d.close().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    open(&e, NbdOptions::default(), true).unwrap();
    let _ = &e.nfc;
}

#[test]
fn keepalive_outlives_the_idle_timeout() {
    let e = env(
        |o| o.idle_timeout = Duration::from_millis(300),
        SimOptions::default(),
    );
    let want = local(&e);
    let kept = open(
        &e,
        NbdOptions {
            keepalive: Some(Duration::from_millis(100)),
            retry_reads: false,
            ..NbdOptions::default()
        },
        true,
    )
    .unwrap();
    let idle = open(
        &e,
        NbdOptions {
            keepalive: None,
            retry_reads: false,
            ..NbdOptions::default()
        },
        true,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let mut b = vec![0u8; 1 << 20];
    kept.read_at(0, &mut b).unwrap();
    assert!(b == want[..1 << 20]);
    assert!(matches!(
        idle.read_at(0, &mut b),
        Err(Error::ConnectionLost { .. })
    ));
}

/// The simulator's opt-in read cache ("disk cached in memory" for the
/// benchmark) serves the same bytes, and no stale ones: guest writes, NFC
/// writes and a LUN switched offline all invalidate it.
#[test]
fn the_read_cache_never_serves_stale_data() {
    let e = env(|o| o.read_cache_bytes = 64 << 20, SimOptions::default());
    let opts = NbdOptions {
        in_flight: 4,
        max_request: 1 << 20,
        ..NbdOptions::default()
    };
    let read_all = |path: &str| {
        let d = open_vm_disk(Arc::clone(&e.client), &vm(), None, path, true, opts.clone()).unwrap();
        let mut b = vec![0u8; d.capacity() as usize];
        d.read_at(0, &mut b).unwrap();
        d.close().unwrap();
        b
    };
    // Twice: the second pass is served from the cache.
    for _ in 0..2 {
        assert!(read_all(DISK) == local(&e));
    }
    let before = e.sim.shared().data_generation();
    e.sim
        .guest_write("vm-100", 2000, 4096, &[0xEE; 9000])
        .unwrap();
    assert!(e.sim.shared().data_generation() > before);
    let now = read_all(DISK);
    assert_eq!(
        &now[4096..13096],
        &[0xEE; 9000][..],
        "a guest write is seen"
    );
    assert!(now == local(&e));
    // A write through another NFC session.
    let w = open(&e, opts.clone(), false).unwrap();
    w.write_at(1 << 20, &[0x77; 512]).unwrap();
    w.flush().unwrap();
    w.close().unwrap();
    assert_eq!(&read_all(DISK)[1 << 20..(1 << 20) + 512], &[0x77; 512][..]);
    // The thick disk lies on the demo LUN: cached, then the LUN goes
    // offline and the read fails instead of coming from memory.
    let thick = "[datastore1] demo-vm/demo-vm_1.vmdk";
    let _ = read_all(thick);
    e.sim
        .set_lun_state(
            vsphere_sim::inventory::DEMO_LUN,
            vsphere_sim::LunState::Offline,
        )
        .unwrap();
    let d = open_vm_disk(
        Arc::clone(&e.client),
        &vm(),
        None,
        thick,
        true,
        opts.clone(),
    );
    let failed = d.and_then(|d| {
        let mut b = vec![0u8; 1 << 20];
        d.read_at(0, &mut b)
    });
    assert!(failed.is_err(), "an offline LUN read from the cache");
    e.sim
        .set_lun_state(
            vsphere_sim::inventory::DEMO_LUN,
            vsphere_sim::LunState::Online,
        )
        .unwrap();
}

/// VDDK 8's authd lines, in order, with the ticket's service in PROXY
/// (`ssl` appended for nbdssl), on vCenter and on a bare ESXi host (whose
/// tickets name no host and the service `nfc`).
#[test]
fn authd_lines_are_vddks() {
    for mode in [Mode::Vcenter, Mode::Esxi] {
        let e = env_in(mode, |_| {}, SimOptions::default());
        let want = local(&e);
        for ssl in [false, true] {
            let d = open(
                &e,
                NbdOptions {
                    ssl,
                    ..NbdOptions::default()
                },
                true,
            )
            .unwrap();
            let mut b = vec![0u8; 1 << 20];
            d.read_at(0, &mut b).unwrap();
            assert!(b == want[..1 << 20]);
            // Closing: CLOSE_FILE, CLOSE_SESSION, classic type 4.
            let before = e.nfc.completed.load(std::sync::atomic::Ordering::Acquire);
            d.close().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while e.nfc.completed.load(std::sync::atomic::Ordering::Acquire) == before {
                assert!(std::time::Instant::now() < deadline, "no clean close");
                std::thread::sleep(Duration::from_millis(10));
            }
            let service = match mode {
                Mode::Vcenter => "vpxa-nfc",
                Mode::Esxi => "nfc",
            };
            let lines = e.nfc.authd_lines.lock().unwrap().last().cloned().unwrap();
            assert_eq!(
                lines,
                [
                    "SESSION <ticket>".to_string(),
                    "BANNER ".into(),
                    "THUMBPRINT_SHA2 PlainText".into(),
                    format!("PROXY {service}{}", if ssl { "ssl" } else { "" }),
                ],
                "{mode:?} ssl {ssl}"
            );
        }
        // Writing goes through NfcRandomAccessOpenDisk with the VM's host.
        let w = open(&e, NbdOptions::default(), false).unwrap();
        w.write_at(0, &[0x42; 4096]).unwrap();
        w.close().unwrap();
        assert_eq!(&local(&e)[..4096], &[0x42; 4096][..]);
    }
}

/// Read replies whose fragments come last first, and a session buffer
/// larger than the requests.
#[test]
fn fragments_in_any_order() {
    let e = env(|_| {}, SimOptions::default());
    let want = local(&e);
    e.faults.lock().unwrap().reverse_fragments = true;
    for (buffer_size, max_request) in [(64 << 10, 1 << 20), (2 << 20, 4 << 20)] {
        let d = open(
            &e,
            NbdOptions {
                buffer_size,
                max_request,
                ..NbdOptions::default()
            },
            true,
        )
        .unwrap();
        let mut b = vec![0u8; 6 << 20];
        d.read_at(1000, &mut b).unwrap();
        assert!(b == want[1000..1000 + (6 << 20)]);
        d.close().unwrap();
    }
}

/// The simulator's authd answers as the traces show a host answering:
/// `BANNER ` with the 220 line, `THUMBPRINT_SHA2 PlainText` with the
/// SHA-256 thumbprint and anything else with 501, credentials and the
/// old ticket commands with 530.
#[test]
fn authd_answers_like_a_host() {
    use std::io::{BufRead, BufReader, Write};
    let e = env(|_| {}, SimOptions::default());
    let tcp = std::net::TcpStream::connect(("127.0.0.1", e.nfc.port())).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut plain = BufReader::new(tcp.try_clone().unwrap());
    let mut banner = String::new();
    plain.read_line(&mut banner).unwrap();
    assert_eq!(banner, format!("{}\r\n", nfc_proto::authd::BANNER));
    let pin = Thumbprint::parse(e.sim.thumbprint()).unwrap();
    let (cfg, _) = vim_soap::client::pinned_tls_config(&pin);
    let conn = rustls::ClientConnection::new(cfg, "127.0.0.1".try_into().unwrap()).unwrap();
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let (cert, _) = e.sim.certificate();
    let sha256 = Thumbprint::sha256_of(cert).to_string();
    for (line, want) in [
        ("BANNER ", nfc_proto::authd::BANNER.to_string()),
        ("THUMBPRINT_SHA2 PlainText", format!("200 {sha256}")),
        ("THUMBPRINT_SHA2 AB:CD", "501 Invalid arguments".into()),
        ("USER root", "331 Password required".into()),
        ("PASS secret", "530 Login incorrect".into()),
        ("SESSIONID x", "530 Please login with USER and PASS".into()),
        (
            "CONNECT_VPXA x",
            "530 Please login with USER and PASS".into(),
        ),
        ("SESSION not-a-ticket", String::new()),
        (
            "PROXY vpxa-nfc",
            "530 Invalid, expired or used ticket".into(),
        ),
    ] {
        tls.get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        if want.is_empty() {
            continue; // SESSION has no reply
        }
        let mut got = String::new();
        tls.read_line(&mut got).unwrap();
        assert_eq!(got, format!("{want}\r\n"), "{line}");
    }
}

/// QueryAllocatedBlocks: the bitmap of chunks holding data, and the
/// refusal of a start that is not a multiple of the chunk size.
#[test]
fn allocated_chunks() {
    let e = env(|_| {}, SimOptions::default());
    // The pattern covers the first 8 MiB; write one more block at 20 MiB.
    e.sim
        .guest_write("vm-100", 2000, 20 << 20, &[1u8; 4096])
        .unwrap();
    let d = open(&e, NbdOptions::default(), true).unwrap();
    let bitmap = d.allocated_chunks(0, 1 << 20, 32).unwrap();
    assert_eq!(bitmap.len(), 4);
    let bits: Vec<bool> = (0..32)
        .map(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
        .collect();
    let want: Vec<bool> = (0..32).map(|i| i < 8 || i == 20).collect();
    assert_eq!(bits, want);
    assert!(matches!(
        d.allocated_chunks(512, 1 << 20, 4),
        Err(Error::Server { code: 3, .. })
    ));
    d.close().unwrap();
}
