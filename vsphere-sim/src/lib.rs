//! # vsphere-sim
//!
//! A simulator of a vCenter (or a lone ESXi host) for testing disk-kit
//! clients without a vSphere licence: an HTTPS SOAP endpoint on 127.0.0.1
//! with a certificate generated at start, built from a declarative
//! [`Inventory`] whose VMs have real VMDK disks in datastore directories.
//!
//! What it does, in vSphere's own dialect (see `vim-soap`):
//! sessions (`Login`, clone tickets, cookies, `NotAuthenticated`); faults
//! for unknown morefs (`ManagedObjectNotFound`, even for a deleted
//! snapshot); tasks that move through queued → running → success/error;
//! snapshots that create real delta VMDKs and move the running disk to the
//! child, removal that consolidates, chains of any depth; changed block
//! tracking per disk, with a guest-write entry point, change ids that
//! advance at each snapshot, exact paged `QueryChangedDiskAreas` answers
//! for any earlier id of the same epoch, `*` for allocated areas, a new
//! epoch when tracking is turned off and on; `DisableMethods` /
//! `EnableMethods` (vCenter mode; refused in ESXi mode) that block
//! `RelocateVM_Task`; and NFC tickets bound to one disk.
//!
//! Storage fabric ([`san`]): a datastore may sit on a simulated SAN LUN
//! (a file laid out like a thick VMFS volume holding the flat extents of
//! its `vmfs` / `vmfsThin` disks), shown to a proxy host as
//! `dev/disk/by-id/naa.…` under [`Inventory::proxy_host`], with switches
//! to take it offline or make it fail; a proxy VM's HotAdd
//! reconfigurations create and remove `sys/block/sdX` and `dev/sdX`
//! there. `RemoveSnapshot_Task` fails with `FileLocked` while a disk of
//! the snapshot is attached to another VM.
//!
//! Simulator-only calls: `SimGuestWrite` (what a guest OS writing to its
//! disk would do), used by `vdisk sim guest-write`; `SimQueryDiskBlockMap`
//! (where a disk lies on its LUN), a stand-in for the internal host
//! interfaces VMware's SAN transport uses; `SimSetLunState` (the LUN
//! switches), used by `vdisk sim lun`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod files;
pub mod inventory;
pub mod model;
pub mod nfc;
pub mod san;
mod server;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use inventory::{Inventory, Mode};
pub use model::{NfcGrant, Shared, SimOptions, DEFAULT_CBT_BLOCK};
pub use nfc::{Faults, NfcOptions, NfcServer};
pub use san::LunState;

/// The InitEx-style configuration that points the kit at a simulator's
/// proxy host: where its `dev` and `sys` are (`proxy_host`, the
/// inventory's `proxy_host`), where HotAdd records its attaches, and the
/// simulator as the san transport's block-map source (the stand-in for
/// VMware's unpublished interfaces; a real vCenter is never asked).
pub fn proxy_config(proxy_host: &std::path::Path, hotadd_state: &std::path::Path) -> String {
    format!(
        "vixDiskLib.transport.deviceRoot = \"{}\"\nvixDiskLib.transport.hotadd.stateFile = \"{}\"\nvixDiskLib.transport.san.blockMapSource = \"simulator\"\n",
        proxy_host.display(),
        hotadd_state.display()
    )
}

/// A running simulator. Stops when dropped.
#[derive(Debug)]
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    thumbprint: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    stop: Arc<AtomicBool>,
}

impl Simulator {
    /// Builds the inventory (creating disks marked `create`) and starts
    /// the HTTPS SOAP server on `127.0.0.1:port` (0: any free port).
    pub fn start(inv: Inventory, opts: SimOptions, port: u16) -> Result<Self, String> {
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .map_err(|e| e.to_string())?;
        let cert_der = cert.cert.der().to_vec();
        let key_der = cert.key_pair.serialize_der();
        let thumbprint = vim_soap::client::Thumbprint::sha1_of(&cert_der).to_string();
        let shared = Arc::new(Shared::new(inv, opts, thumbprint.clone())?);
        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("binding 127.0.0.1:{port}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        server::spawn(
            listener,
            Arc::clone(&shared),
            &cert_der,
            &key_der,
            Arc::clone(&stop),
        )?;
        Ok(Self {
            shared,
            addr,
            thumbprint,
            cert_der,
            key_der,
            stop,
        })
    }

    /// Where the SOAP endpoint listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate's SHA-1 thumbprint, colon hex.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The certificate (DER), for other servers of the simulator (NFC).
    pub fn certificate(&self) -> (&[u8], &[u8]) {
        (&self.cert_der, &self.key_der)
    }

    /// The model, for the NFC server and for tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Writes into a VM's disk as its guest would (recorded for CBT).
    pub fn guest_write(
        &self,
        vm: &str,
        disk_key: i32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), String> {
        self.shared
            .guest_write(vm, disk_key, offset, data)
            .map_err(|(_, m)| m)
    }

    /// Takes a LUN offline, makes it fail from a byte on, or brings it
    /// back online.
    pub fn set_lun_state(&self, id: &str, state: LunState) -> Result<(), String> {
        self.shared.set_lun_state(id, state)
    }

    /// Starts the NFC server beside the SOAP endpoint (same certificate);
    /// NFC tickets point at it from then on.
    pub fn start_nfc(&self, opts: NfcOptions) -> Result<NfcServer, String> {
        NfcServer::start(
            Arc::clone(&self.shared),
            &self.cert_der,
            &self.key_der,
            opts,
        )
    }

    /// Stops accepting connections.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop();
    }
}
