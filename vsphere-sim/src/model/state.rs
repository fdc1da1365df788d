//! The model's state: VMs, their disks and snapshots, sessions, tasks and
//! NFC tickets; building it from an inventory; guest writes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cbt::Extent;
use vim_soap::codec::{ControllerKind, MoRef, TaskInfo, VirtualController};
use vim_soap::FaultKind;
use vmdk_file::create::{CreateOptions, DiskType};
use vmdk_file::local::{LocalDisk, OpenOptions};

use crate::inventory::{split_datastore_path, Inventory};
use crate::san::{self, Lun};

/// A fault to answer with.
pub type Fault = (FaultKind, String);
pub(super) type Reply = Result<String, Fault>;

pub(super) fn fault(kind: FaultKind, msg: impl Into<String>) -> Fault {
    (kind, msg.into())
}

/// Changed-block tracking state of one disk.
#[derive(Clone, Debug)]
pub(crate) struct Cbt {
    pub enabled: bool,
    pub epoch: [u8; 16],
    /// Sequence of the running state; every snapshot takes the next one.
    pub current: u64,
    /// Writes, each with the sequence they were made under.
    pub log: Vec<(u64, Extent)>,
}

impl Cbt {
    pub(super) fn change_id(&self, seq: u64) -> String {
        cbt::ChangeId::new(self.epoch, seq).to_string()
    }

    /// A write of `len` bytes at `offset`, when tracking is on.
    pub(super) fn record(&mut self, offset: u64, len: u64) {
        if self.enabled && len > 0 {
            self.log.push((self.current, Extent::new(offset, len)));
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SimDisk {
    pub key: i32,
    pub controller_key: i32,
    pub unit: i32,
    pub mode: String,
    pub capacity: u64,
    pub thin: bool,
    pub uuid: String,
    /// Files from base to running (the last is written by the guest).
    pub chain: Vec<PathBuf>,
    pub cbt: Cbt,
    /// On a proxy VM: the block device a HotAdd gave the guest (`sdb`).
    pub device: Option<String>,
}

impl SimDisk {
    pub fn running(&self) -> &Path {
        self.chain
            .last()
            .expect("a disk has at least its base file")
    }
    pub fn independent(&self) -> bool {
        self.mode.starts_with("independent")
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SimSnapshot {
    pub moref: String,
    pub name: String,
    /// Per disk key: the file frozen at this snapshot and its change seq.
    pub disks: Vec<(i32, PathBuf, u64)>,
}

impl SimSnapshot {
    /// The file this snapshot froze for disk `key`, and its change seq.
    /// `param` names the argument in the fault.
    pub(super) fn file(&self, key: i32, param: &str) -> Result<(&PathBuf, u64), Fault> {
        self.disks
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, f, seq)| (f, *seq))
            .ok_or_else(|| {
                fault(
                    FaultKind::InvalidArgument(param.into()),
                    format!("disk {key} is not part of the snapshot (independent disks never are)"),
                )
            })
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SimVm {
    pub moref: String,
    pub name: String,
    pub uuid: String,
    pub power: String,
    pub proxy: bool,
    pub controllers: Vec<VirtualController>,
    pub disks: Vec<SimDisk>,
    /// Linear snapshot chain, oldest first.
    pub snapshots: Vec<SimSnapshot>,
    /// Disabled method → source id.
    pub disabled: BTreeMap<String, String>,
}

impl SimVm {
    pub(super) fn snapshot(&self, moref: &str) -> Result<&SimSnapshot, Fault> {
        self.snapshots
            .iter()
            .find(|x| x.moref == moref)
            .ok_or_else(|| not_found("VirtualMachineSnapshot", moref))
    }

    pub(super) fn disk(&self, key: i32, param: &str) -> Result<&SimDisk, Fault> {
        self.disks.iter().find(|d| d.key == key).ok_or_else(|| {
            fault(
                FaultKind::InvalidArgument(param.into()),
                format!("no disk {key}"),
            )
        })
    }
}

/// An NFC ticket grant, for the NFC server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfcGrant {
    /// The files OPEN_FILE may open: every disk file of the VM, snapshot
    /// parents included (`NfcGetVmFiles`), or one disk's running file
    /// (`NfcRandomAccessOpen*`).
    pub paths: Vec<PathBuf>,
    /// Whether only reads are allowed.
    pub read_only: bool,
    /// VM moref.
    pub vm: String,
    /// Disk key of a one-disk ticket.
    pub disk_key: Option<i32>,
    /// The service the ticket names (`vpxa-nfc`, `nfc`): authd accepts it
    /// in `PROXY`, with `ssl` appended for nbdssl.
    pub service: String,
    /// When it stops being valid.
    pub expires: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub sessions: HashMap<String, String>,
    pub clone_tickets: HashMap<String, String>,
    pub vms: BTreeMap<String, SimVm>,
    pub tasks: HashMap<String, TaskInfo>,
    pub pending: HashMap<String, Vec<String>>,
    /// Container views (`CreateContainerView`): id → the managed object
    /// types they list.
    pub views: HashMap<String, Vec<String>>,
    /// Property filters (`CreateFilter`): id → the objects and paths
    /// watched (an empty path list: every property this simulator has).
    pub filters: HashMap<String, (String, Watched)>,
    /// The version `WaitForUpdates` last answered.
    pub update_version: u64,
    pub nfc_tickets: HashMap<String, NfcGrant>,
    pub next_id: u64,
}

impl State {
    /// A write that reached `file` from outside the guest (a HotAdd
    /// write-back): a change of every VM disk running on that file.
    pub(super) fn record_change(&mut self, file: &Path, offset: u64, len: u64) {
        for v in self.vms.values_mut() {
            for d in &mut v.disks {
                if same_file(d.running(), file) {
                    d.cbt.record(offset, len);
                }
            }
        }
    }

    pub(super) fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }
    pub(super) fn vm(&self, moref: &str) -> Result<&SimVm, Fault> {
        self.vms
            .get(moref)
            .ok_or_else(|| not_found("VirtualMachine", moref))
    }
    pub(super) fn vm_mut(&mut self, moref: &str) -> Result<&mut SimVm, Fault> {
        self.vms
            .get_mut(moref)
            .ok_or_else(|| not_found("VirtualMachine", moref))
    }
    pub(super) fn snapshot_owner(&self, snap: &str) -> Result<&SimVm, Fault> {
        self.vms
            .values()
            .find(|v| v.snapshots.iter().any(|s| s.moref == snap))
            .ok_or_else(|| not_found("VirtualMachineSnapshot", snap))
    }
}

pub(super) fn not_found(kind: &str, value: &str) -> Fault {
    fault(FaultKind::ManagedObjectNotFound(Some(MoRef::new(kind, value))), format!("The object '{kind}:{value}' has already been deleted or has not been completely created"))
}

/// What a property filter watches: objects and their property paths.
pub(crate) type Watched = Vec<(MoRef, Vec<String>)>;

/// [`SimOptions::cbt_block`] by default: 64 KiB.
pub const DEFAULT_CBT_BLOCK: u64 = 64 << 10;

/// Options of a simulator.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Window size of `QueryChangedDiskAreas` answers (vSphere pages them).
    pub qcda_page: u64,
    /// How long an NFC ticket stays valid unused.
    pub ticket_ttl: Duration,
    /// The changed-block tracking granularity in bytes (a power of two,
    /// at least 512): `QueryChangedDiskAreas` reports areas rounded out
    /// to it, as ESXi reports whole tracking blocks.
    pub cbt_block: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            qcda_page: 256 << 20,
            ticket_ttl: Duration::from_secs(60),
            cbt_block: DEFAULT_CBT_BLOCK,
        }
    }
}

/// Everything the server threads share.
#[derive(Debug)]
pub struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) inv: Inventory,
    pub(crate) opts: SimOptions,
    pub(crate) thumbprint: String,
    pub(crate) nfc_endpoint: Mutex<Option<(String, u16)>>,
    /// LUNs, with the directory of the datastore each holds.
    pub(crate) luns: Mutex<Vec<(PathBuf, Lun)>>,
    /// Advances whenever the simulator changes any disk's data.
    generation: std::sync::atomic::AtomicU64,
}

/// A VMware-style disk UUID: its hex digits are the SCSI serial Linux
/// shows (`6000c29…`).
pub(super) fn disk_uuid() -> String {
    san::uuid_dashed(&format!("6000c29{}", &random_hex(13)[..25]))
}

/// Two IDE controllers and `scsi` SCSI controllers, listed SCSI first in
/// descending bus order (clients must sort, not trust the order).
fn controllers(scsi: u32) -> Vec<VirtualController> {
    let mut c: Vec<VirtualController> = (0..scsi as i32)
        .rev()
        .map(|bus| VirtualController {
            key: 1000 + bus,
            bus_number: bus,
            kind: ControllerKind::Scsi,
            type_name: "ParaVirtualSCSIController".into(),
        })
        .collect();
    for bus in 0..2 {
        c.push(VirtualController {
            key: 200 + bus,
            bus_number: bus,
            kind: ControllerKind::Ide,
            type_name: "VirtualIDEController".into(),
        });
    }
    c
}

pub(super) fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; n];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn random_epoch() -> [u8; 16] {
    let h = random_hex(16);
    let mut e = [0u8; 16];
    for (i, x) in e.iter_mut().enumerate() {
        *x = u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).unwrap_or(0);
    }
    e[0] = 0x52;
    e
}

impl Shared {
    /// Builds the model, creating disks the inventory asks for.
    pub fn new(inv: Inventory, opts: SimOptions, thumbprint: String) -> Result<Self, String> {
        let mut state = State::default();
        for ds in &inv.datastores {
            std::fs::create_dir_all(&ds.path).map_err(|e| format!("{}: {e}", ds.path.display()))?;
        }
        let me = Self {
            state: Mutex::new(State::default()),
            inv,
            opts,
            thumbprint,
            nfc_endpoint: Mutex::new(None),
            luns: Mutex::new(Vec::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        };
        let mut luns = Vec::new();
        for ds in &me.inv.datastores {
            if let Some(l) = &ds.lun {
                let lun = Lun::prepare(&ds.path, &l.id, l.size)?;
                if let Some(root) = &me.inv.proxy_host {
                    san::expose_lun(root, &lun)?;
                }
                luns.push((ds.path.clone(), lun));
            }
        }
        // Disks already on a LUN keep their space.
        for v in &me.inv.vms {
            for d in &v.disks {
                if let Ok(path) = me.resolve(&d.file) {
                    for (dir, lun) in luns.iter_mut() {
                        if path.starts_with(&*dir) && path.exists() {
                            lun.account(&path);
                        }
                    }
                }
            }
        }
        for (n, v) in me.inv.vms.iter().enumerate() {
            let moref = format!("vm-{}", 100 + n);
            let mut disks = Vec::new();
            for (i, d) in v.disks.iter().enumerate() {
                let path = me.resolve(&d.file).map_err(|f| f.1)?;
                if !path.exists() {
                    if !d.create {
                        return Err(format!(
                            "{}: disk {} does not exist (set \"create\": true)",
                            v.name, d.file
                        ));
                    }
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| format!("{}: {e}", dir.display()))?;
                    }
                    let on_lun = luns
                        .iter_mut()
                        .find(|(dir, _)| path.starts_with(dir))
                        .zip(san::lun_disk_type(&d.disk_type));
                    if let Some(((_, lun), thin)) = on_lun {
                        lun.create_disk(&path, d.capacity, thin)?;
                    } else {
                        let t = DiskType::from_name(&d.disk_type)
                            .ok_or_else(|| format!("unknown disk type {}", d.disk_type))?;
                        vmdk_file::create::create(&path, &CreateOptions::new(t, d.capacity))
                            .map_err(|e| e.to_string())?;
                    }
                }
                let disk =
                    LocalDisk::open(&path, &OpenOptions::default()).map_err(|e| e.to_string())?;
                use vmdk_format::descriptor::CreateType as Ct;
                let thin = !matches!(
                    disk.descriptor().create_type,
                    Ct::Vmfs
                        | Ct::MonolithicFlat
                        | Ct::TwoGbMaxExtentFlat
                        | Ct::VmfsEagerZeroedThick
                        | Ct::VmfsPreallocated
                );
                disks.push(SimDisk {
                    key: 2000 + i as i32,
                    controller_key: 1000,
                    // Unit 7 is the SCSI controller's own.
                    unit: if i >= 7 { i as i32 + 1 } else { i as i32 },
                    mode: d.mode.clone(),
                    capacity: disk.capacity(),
                    thin,
                    uuid: disk_uuid(),
                    chain: vec![path],
                    cbt: Cbt {
                        enabled: v.cbt,
                        epoch: random_epoch(),
                        current: 1,
                        log: Vec::new(),
                    },
                    device: None,
                });
            }
            state.vms.insert(
                moref.clone(),
                SimVm {
                    moref,
                    name: v.name.clone(),
                    uuid: v.uuid.clone().unwrap_or_else(|| random_hex(16)),
                    power: v.power.clone(),
                    proxy: v.proxy,
                    controllers: controllers(v.scsi_controllers),
                    disks,
                    snapshots: Vec::new(),
                    disabled: BTreeMap::new(),
                },
            );
        }
        if let Some(root) = &me.inv.proxy_host {
            if let Some(p) = state.vms.values().find(|v| v.proxy) {
                san::expose_proxy_identity(root, &p.uuid)?;
            }
        }
        *me.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        *me.luns.lock().unwrap_or_else(|p| p.into_inner()) = luns;
        Ok(me)
    }

    /// `[datastore] path` → a file inside that datastore's directory;
    /// `..`, absolute paths and unknown datastores are refused.
    pub fn resolve(&self, ds_path: &str) -> Result<PathBuf, Fault> {
        let (ds, rel) = split_datastore_path(ds_path).ok_or_else(|| {
            fault(
                FaultKind::InvalidArgument("fileName".into()),
                format!("not a datastore path: {ds_path}"),
            )
        })?;
        let store = self
            .inv
            .datastores
            .iter()
            .find(|d| d.name == ds)
            .ok_or_else(|| {
                fault(
                    FaultKind::FileNotFound(ds_path.into()),
                    format!("no datastore named {ds}"),
                )
            })?;
        let p = Path::new(rel);
        if p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(fault(
                FaultKind::InvalidArgument("fileName".into()),
                format!("path leaves the datastore: {ds_path}"),
            ));
        }
        Ok(store.path.join(p))
    }

    /// The datastore path of a file inside a datastore.
    pub(super) fn datastore_name(&self, path: &Path) -> String {
        for ds in &self.inv.datastores {
            if let Ok(rel) = path.strip_prefix(&ds.path) {
                return format!("[{}] {}", ds.name, rel.display());
            }
        }
        path.display().to_string()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes into a VM's running disk as its guest would, recording the
    /// change for CBT.
    pub fn guest_write(&self, vm: &str, key: i32, offset: u64, data: &[u8]) -> Result<(), Fault> {
        let _changed = ChangedOnDrop(self);
        let mut st = self.lock();
        let v = st.vm_mut(vm)?;
        let d = v.disks.iter_mut().find(|d| d.key == key).ok_or_else(|| {
            fault(
                FaultKind::InvalidArgument("deviceKey".into()),
                format!("no disk {key}"),
            )
        })?;
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > d.capacity)
        {
            return Err(fault(
                FaultKind::InvalidArgument("offset".into()),
                "write past the end of the disk",
            ));
        }
        let disk = LocalDisk::open(
            d.running(),
            &OpenOptions {
                writable: true,
                ..OpenOptions::default()
            },
        )
        .map_err(|e| fault(FaultKind::Other("SystemError".into()), e.to_string()))?;
        disk.write_at(offset, data)
            .and_then(|()| disk.close())
            .map_err(|e| fault(FaultKind::Other("SystemError".into()), e.to_string()))?;
        d.cbt.record(offset, data.len() as u64);
        Ok(())
    }

    /// Records a write that reached disk `key` of `vm` through `path`
    /// (NFC, HotAdd write-back): a change for CBT when `path` is the
    /// disk's running file, as ESXi tracks every write whoever makes it.
    pub(crate) fn record_change(&self, vm: &str, key: i32, path: &Path, offset: u64, len: usize) {
        let mut st = self.lock();
        let Ok(v) = st.vm_mut(vm) else { return };
        let Some(d) = v.disks.iter_mut().find(|d| d.key == key) else {
            return;
        };
        if same_file(d.running(), path) {
            d.cbt.record(offset, len as u64);
        }
    }

    /// Validates and consumes an NFC ticket.
    pub fn take_nfc_ticket(&self, ticket: &str) -> Option<NfcGrant> {
        let mut st = self.lock();
        let g = st.nfc_tickets.remove(ticket)?;
        (g.expires > Instant::now()).then_some(g)
    }

    /// A number that advances whenever the simulator changes the data of
    /// any disk (what the NFC read cache is checked against).
    pub fn data_generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records that disk data changed; called after the change is made.
    /// Whether `cookie` is a logged-in session.
    pub(crate) fn session_is_valid(&self, cookie: &str) -> bool {
        self.lock().sessions.contains_key(cookie)
    }

    pub(crate) fn disks_changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Tells the model where its NFC server listens.
    pub fn set_nfc_endpoint(&self, host: &str, port: u16) {
        *self.nfc_endpoint.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((host.to_string(), port));
    }
}

/// Calls [`Shared::disks_changed`] when dropped: after the change, on
/// every path out of the function that made it (errors included).
pub(super) struct ChangedOnDrop<'a>(pub(super) &'a Shared);

impl Drop for ChangedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.disks_changed();
    }
}

/// Whether two paths name the same file (by identity, else by name).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}
