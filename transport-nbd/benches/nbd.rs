//! `cargo xtask bench nbd`: read 1 GiB from the simulator (disk cached in
//! memory: the NFC server's read cache, so the server sends from memory
//! as the baseline server does) over nbd and nbdssl, 1 and 4 requests in
//! flight, 64 KiB and 1 MiB requests, each next to a plain TCP (or rustls)
//! request/response loop of the same size and depth measured in the same
//! run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use transport_nbd::{open_vm_disk, NbdOptions};
use vim_soap::client::{pinned_tls_config, Client, ClientConfig, Thumbprint};
use vim_soap::codec::MoRef;
use vsphere_sim::inventory::{Datastore, Disk, Inventory, Mode, User, Vm};
use vsphere_sim::{NfcOptions, SimOptions, Simulator};

const TOTAL: u64 = 1 << 30;
const BUF: usize = 64 << 20;

fn mbs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// A server answering 16-byte requests (len) with that many bytes from memory.
fn baseline_server(tls: Option<Arc<rustls::ServerConfig>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let data = vec![0x5Au8; 1 << 20];
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let _ = s.set_nodelay(true);
            let data = data.clone();
            let tls = tls.clone();
            std::thread::spawn(move || {
                let mut stream: Box<dyn ReadWrite> = match tls {
                    Some(cfg) => Box::new(rustls::StreamOwned::new(
                        rustls::ServerConnection::new(cfg).unwrap(),
                        s,
                    )),
                    None => Box::new(s),
                };
                let mut req = [0u8; 16];
                while stream.read_exact(&mut req).is_ok() {
                    let len = u64::from_le_bytes(req[..8].try_into().unwrap()) as usize;
                    let mut head = [0u8; 16];
                    head[..8].copy_from_slice(&(len as u64).to_le_bytes());
                    if stream.write_all(&head).is_err() || stream.write_all(&data[..len]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

fn baseline(port: u16, tls: Option<&Thumbprint>, size: usize, depth: usize) -> f64 {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut stream: Box<dyn ReadWrite> = match tls {
        Some(pin) => {
            let (cfg, _) = pinned_tls_config(pin);
            Box::new(rustls::StreamOwned::new(
                rustls::ClientConnection::new(cfg, ServerName::try_from("127.0.0.1").unwrap())
                    .unwrap(),
                s,
            ))
        }
        None => Box::new(s),
    };
    let mut buf = vec![0u8; BUF];
    let requests = TOTAL as usize / size;
    let start = Instant::now();
    let (mut sent, mut got) = (0, 0);
    let mut req = [0u8; 16];
    req[..8].copy_from_slice(&(size as u64).to_le_bytes());
    while got < requests {
        while sent < requests && sent - got < depth {
            stream.write_all(&req).unwrap();
            sent += 1;
        }
        stream.flush().unwrap();
        let mut head = [0u8; 16];
        stream.read_exact(&mut head).unwrap();
        let at = (got * size) % (BUF - size + 1);
        stream.read_exact(&mut buf[at..at + size]).unwrap();
        got += 1;
    }
    mbs(TOTAL, start.elapsed().as_secs_f64())
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
            lun: None,
        }],
        vms: vec![Vm {
            name: "bench".into(),
            host: None,
            power: "poweredOn".into(),
            uuid: None,
            disks: vec![Disk {
                file: "[ds] bench/bench.vmdk".into(),
                capacity: TOTAL,
                disk_type: "monolithicFlat".into(),
                mode: "persistent".into(),
                create: true,
            }],
            proxy: false,
            cbt: false,
            scsi_controllers: 1,
        }],
        proxy_host: None,
    };
    let sim = Simulator::start(inv, SimOptions::default(), 0).unwrap();
    let _nfc = sim
        .start_nfc(NfcOptions {
            memory_limit: 256 << 20,
            // The whole disk fits; the first of the three passes fills it.
            read_cache_bytes: TOTAL + (64 << 20),
            ..NfcOptions::default()
        })
        .unwrap();
    // Fill the disk and warm the page cache.
    let flat = dir.path().join("ds/bench/bench-flat.vmdk");
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&flat).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
        for _ in 0..TOTAL >> 20 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
        let mut b = vec![0u8; 1 << 20];
        let mut r = std::fs::File::open(&flat).unwrap();
        while r.read(&mut b).unwrap() > 0 {}
    }
    let pin = Thumbprint::parse(sim.thumbprint()).unwrap();
    let client =
        Arc::new(Client::connect(ClientConfig::new(sim.addr().to_string(), pin.clone())).unwrap());
    client.login("u", &"p".into()).unwrap();
    let (cert, key) = sim.certificate();
    let tls_cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )
        .unwrap(),
    );
    let tcp_port = baseline_server(None);
    let tls_port = baseline_server(Some(tls_cfg));
    let vm = MoRef::new("VirtualMachine", "vm-100");
    println!("read 1 GiB from the simulator (disk cached in memory) vs a request/response loop of the same size and depth (best of 3)");
    for ssl in [false, true] {
        for depth in [1usize, 4] {
            for size in [64usize << 10, 1 << 20] {
                // Best of three for both sides: the machine is shared.
                let mut ours = 0f64;
                let mut peer = 0f64;
                for _ in 0..3 {
                    let d = open_vm_disk(
                        Arc::clone(&client),
                        &vm,
                        None,
                        "[ds] bench/bench.vmdk",
                        true,
                        NbdOptions {
                            ssl,
                            in_flight: depth,
                            max_request: size,
                            ..NbdOptions::default()
                        },
                    )
                    .unwrap();
                    let mut buf = vec![0u8; BUF];
                    let start = Instant::now();
                    let mut off = 0u64;
                    while off < TOTAL {
                        d.read_at(off, &mut buf).unwrap();
                        off += BUF as u64;
                    }
                    ours = ours.max(mbs(TOTAL, start.elapsed().as_secs_f64()));
                    d.close().unwrap();
                    peer = peer.max(if ssl {
                        baseline(tls_port, Some(&pin), size, depth)
                    } else {
                        baseline(tcp_port, None, size, depth)
                    });
                }
                let target = match (ssl, depth) {
                    (false, 1) => 0.7,
                    (false, _) => 0.8,
                    (true, _) => 0.7,
                };
                let ratio = ours / peer;
                println!(
                    "{:<6} depth {depth} {:>5} KiB: {ours:>7.0} MB/s   {} loop {peer:>7.0} MB/s   ratio {ratio:.2} (target >= {target:.1}){}",
                    if ssl { "nbdssl" } else { "nbd" },
                    size >> 10,
                    if ssl { "rustls" } else { "TCP   " },
                    if ratio >= target { "" } else { "  MISSED" }
                );
            }
        }
    }
}
