//! The simulated inventory and what each SOAP call does to it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cbt::{Extent, ExtentList};
use vim_soap::codec::{
    self, ControllerKind, MoRef, SnapshotNode, TaskInfo, TaskState, VirtualController,
    VirtualDiskInfo,
};
use vim_soap::xml::{escape, Element};
use vim_soap::FaultKind;
use vmdk_file::create::{CreateOptions, DiskType};
use vmdk_file::local::{AllocKind, LocalDisk, OpenOptions};

use crate::inventory::{split_datastore_path, Inventory, Mode};
use crate::san::{self, Lun, LunState};

/// A fault to answer with.
pub type Fault = (FaultKind, String);
type Reply = Result<String, Fault>;

fn fault(kind: FaultKind, msg: impl Into<String>) -> Fault {
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
    fn change_id(&self, seq: u64) -> String {
        cbt::ChangeId::new(self.epoch, seq).to_string()
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
    fn file(&self, key: i32, param: &str) -> Result<(&PathBuf, u64), Fault> {
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
    fn snapshot(&self, moref: &str) -> Result<&SimSnapshot, Fault> {
        self.snapshots
            .iter()
            .find(|x| x.moref == moref)
            .ok_or_else(|| not_found("VirtualMachineSnapshot", moref))
    }

    fn disk(&self, key: i32, param: &str) -> Result<&SimDisk, Fault> {
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
    /// The disk to open (descriptor or monolithic file).
    pub path: PathBuf,
    /// Whether only reads are allowed.
    pub read_only: bool,
    /// VM moref.
    pub vm: String,
    /// Disk key.
    pub disk_key: i32,
    /// When it stops being valid.
    pub expires: Instant,
}

#[derive(Debug)]
pub(crate) struct State {
    pub sessions: HashMap<String, String>,
    pub clone_tickets: HashMap<String, String>,
    pub vms: BTreeMap<String, SimVm>,
    pub tasks: HashMap<String, TaskInfo>,
    pub pending: HashMap<String, Vec<String>>,
    pub nfc_tickets: HashMap<String, NfcGrant>,
    pub next_id: u64,
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{}", self.next_id)
    }
    fn vm(&self, moref: &str) -> Result<&SimVm, Fault> {
        self.vms
            .get(moref)
            .ok_or_else(|| not_found("VirtualMachine", moref))
    }
    fn vm_mut(&mut self, moref: &str) -> Result<&mut SimVm, Fault> {
        self.vms
            .get_mut(moref)
            .ok_or_else(|| not_found("VirtualMachine", moref))
    }
    fn snapshot_owner(&self, snap: &str) -> Result<&SimVm, Fault> {
        self.vms
            .values()
            .find(|v| v.snapshots.iter().any(|s| s.moref == snap))
            .ok_or_else(|| not_found("VirtualMachineSnapshot", snap))
    }
}

fn not_found(kind: &str, value: &str) -> Fault {
    fault(FaultKind::ManagedObjectNotFound(Some(MoRef::new(kind, value))), format!("The object '{kind}:{value}' has already been deleted or has not been completely created"))
}

/// Options of a simulator.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Window size of `QueryChangedDiskAreas` answers (vSphere pages them).
    pub qcda_page: u64,
    /// How long an NFC ticket stays valid unused.
    pub ticket_ttl: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            qcda_page: 256 << 20,
            ticket_ttl: Duration::from_secs(60),
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
fn disk_uuid() -> String {
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

fn random_hex(n: usize) -> String {
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

fn random_epoch() -> [u8; 16] {
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
        let mut state = State {
            sessions: HashMap::new(),
            clone_tickets: HashMap::new(),
            vms: BTreeMap::new(),
            tasks: HashMap::new(),
            pending: HashMap::new(),
            nfc_tickets: HashMap::new(),
            next_id: 0,
        };
        for ds in &inv.datastores {
            std::fs::create_dir_all(&ds.path).map_err(|e| format!("{}: {e}", ds.path.display()))?;
        }
        let me = Self {
            state: Mutex::new(State {
                sessions: HashMap::new(),
                clone_tickets: HashMap::new(),
                vms: BTreeMap::new(),
                tasks: HashMap::new(),
                pending: HashMap::new(),
                nfc_tickets: HashMap::new(),
                next_id: 0,
            }),
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
    fn datastore_name(&self, path: &Path) -> String {
        for ds in &self.inv.datastores {
            if let Ok(rel) = path.strip_prefix(&ds.path) {
                return format!("[{}] {}", ds.name, rel.display());
            }
        }
        path.display().to_string()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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
        if d.cbt.enabled && !data.is_empty() {
            let seq = d.cbt.current;
            d.cbt
                .log
                .push((seq, Extent::new(offset, data.len() as u64)));
        }
        Ok(())
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
    pub(crate) fn disks_changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Takes a LUN offline, makes it fail from a byte on, or brings it
    /// back (see [`crate::san`]).
    pub fn set_lun_state(&self, id: &str, state: LunState) -> Result<(), String> {
        let _changed = ChangedOnDrop(self);
        let mut luns = self.luns.lock().unwrap_or_else(|p| p.into_inner());
        let (_, lun) = luns
            .iter_mut()
            .find(|(_, l)| san::naa_hex(&l.id) == san::naa_hex(id))
            .ok_or_else(|| format!("no LUN {id}"))?;
        lun.set_state(state, self.inv.proxy_host.as_deref())
    }

    /// The LUN image of a LUN id.
    pub fn lun_image(&self, id: &str) -> Option<PathBuf> {
        let luns = self.luns.lock().unwrap_or_else(|p| p.into_inner());
        luns.iter()
            .find(|(_, l)| san::naa_hex(&l.id) == san::naa_hex(id))
            .map(|(_, l)| l.image.clone())
    }

    /// The proxy host's view of devices, when simulated.
    pub fn proxy_host(&self) -> Option<&Path> {
        self.inv.proxy_host.as_deref()
    }

    fn block_map(&self, el: &Element) -> Reply {
        let vm = this(el)?;
        let key: i32 = arg_num(el, "deviceKey")?;
        let st = self.lock();
        let v = st.vm(&vm.value)?;
        let d = v.disk(key, "deviceKey")?;
        let file = match el.child("snapshot").and_then(MoRef::from_element) {
            Some(s) => v.snapshot(&s.value)?.file(key, "deviceKey")?.0.clone(),
            None => d.running().to_path_buf(),
        };
        drop(st);
        let luns = self.luns.lock().unwrap_or_else(|p| p.into_inner());
        let (_, lun) = luns
            .iter()
            .find(|(dir, _)| file.starts_with(dir))
            .ok_or_else(|| {
                fault(
                    FaultKind::NotSupported,
                    format!("{} is not on a SAN LUN", self.datastore_name(&file)),
                )
            })?;
        let map = lun
            .map_of(&file)
            .map_err(|m| fault(FaultKind::NotSupported, m))?;
        Ok(codec::disk_block_map_xml(&map))
    }

    /// Tells the model where its NFC server listens.
    pub fn set_nfc_endpoint(&self, host: &str, port: u16) {
        *self.nfc_endpoint.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((host.to_string(), port));
    }
}

/// Calls [`Shared::disks_changed`] when dropped: after the change, on
/// every path out of the function that made it (errors included).
struct ChangedOnDrop<'a>(&'a Shared);

impl Drop for ChangedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.disks_changed();
    }
}

fn this(el: &Element) -> Result<MoRef, Fault> {
    el.child("_this")
        .and_then(MoRef::from_element)
        .ok_or_else(|| fault(FaultKind::InvalidArgument("_this".into()), "missing _this"))
}

fn arg<'a>(el: &'a Element, name: &str) -> Result<&'a str, Fault> {
    el.child_text(name).ok_or_else(|| {
        fault(
            FaultKind::InvalidArgument(name.into()),
            format!("missing {name}"),
        )
    })
}

/// A numeric argument.
fn arg_num<T: std::str::FromStr>(el: &Element, name: &str) -> Result<T, Fault> {
    arg(el, name)?.parse().map_err(|_| {
        fault(
            FaultKind::InvalidArgument(name.into()),
            format!("{name} is not a number in range"),
        )
    })
}

fn arg_moref(el: &Element, name: &str) -> Result<MoRef, Fault> {
    el.child(name).and_then(MoRef::from_element).ok_or_else(|| {
        fault(
            FaultKind::InvalidArgument(name.into()),
            format!("missing {name}"),
        )
    })
}

fn rv(s: &str) -> String {
    format!("<returnval>{s}</returnval>")
}

fn rv_moref(r: &MoRef) -> String {
    format!(
        "<returnval type=\"{}\">{}</returnval>",
        escape(&r.kind),
        escape(&r.value)
    )
}

/// The result of one call: the returnval XML and maybe a new cookie.
pub struct Outcome {
    /// `<returnval>…</returnval>` (empty for void methods).
    pub body: String,
    /// A session cookie to set.
    pub cookie: Option<String>,
}

impl Shared {
    /// Handles one SOAP call.
    pub fn handle(
        self: &Arc<Self>,
        cookie: Option<&str>,
        method: &str,
        el: &Element,
    ) -> Result<Outcome, Fault> {
        let plain = |body: String| Ok(Outcome { body, cookie: None });
        match method {
            "RetrieveServiceContent" => return plain(self.service_content()),
            "Login" => {
                let user = arg(el, "userName")?;
                let pass = el.child_text("password").unwrap_or_default();
                if !self
                    .inv
                    .users
                    .iter()
                    .any(|u| u.user == user && u.password == pass)
                {
                    return Err(fault(
                        FaultKind::InvalidLogin,
                        "Cannot complete login due to an incorrect user name or password.",
                    ));
                }
                return Ok(self.new_session(user));
            }
            "CloneSession" => {
                let t = arg(el, "cloneTicket")?;
                let user = self.lock().clone_tickets.remove(t).ok_or_else(|| {
                    fault(FaultKind::InvalidLogin, "Invalid or used clone ticket")
                })?;
                return Ok(self.new_session(&user));
            }
            _ => {}
        }
        let user = cookie
            .and_then(|c| self.lock().sessions.get(c).cloned())
            .ok_or_else(|| {
                fault(
                    FaultKind::NotAuthenticated,
                    "The session is not authenticated.",
                )
            })?;
        match method {
            "Logout" => {
                if let Some(c) = cookie {
                    self.lock().sessions.remove(c);
                }
                plain(String::new())
            }
            "SessionIsActive" => {
                let id = arg(el, "sessionID")?;
                let who = arg(el, "userName")?;
                let active = self.lock().sessions.get(id).is_some_and(|u| u == who);
                plain(rv(&active.to_string()))
            }
            "AcquireCloneTicket" => {
                let t = format!("cst-{}", random_hex(16));
                self.lock().clone_tickets.insert(t.clone(), user);
                plain(rv(&t))
            }
            "AcquireGenericServiceTicket" => {
                let id = format!("cst-VCT-{}", random_hex(16));
                plain(rv(&format!(
                    "<id>{id}</id><hostName>127.0.0.1</hostName><sslThumbprint>{}</sslThumbprint>",
                    self.thumbprint
                )))
            }
            "RetrieveInternalContent" => plain(rv(
                "<nfcService type=\"NfcService\">nfcService</nfcService>",
            )),
            "NfcRandomAccessOpen" | "NfcRandomAccessOpenReadonly" => self
                .nfc_open(el, method == "NfcRandomAccessOpenReadonly")
                .map(|b| Outcome {
                    body: b,
                    cookie: None,
                }),
            "FindByInventoryPath" => {
                let path = arg(el, "inventoryPath")?;
                let prefix = format!("{}/vm/", self.inv.datacenter);
                let st = self.lock();
                let found = path
                    .strip_prefix(&prefix)
                    .and_then(|name| st.vms.values().find(|v| v.name == name))
                    .map(|v| MoRef::new("VirtualMachine", &v.moref));
                plain(found.map(|r| rv_moref(&r)).unwrap_or_default())
            }
            "FindByUuid" => {
                let uuid = arg(el, "uuid")?;
                let st = self.lock();
                let bare = |u: &str| u.replace('-', "").to_ascii_lowercase();
                let found = st
                    .vms
                    .values()
                    .find(|v| bare(&v.uuid) == bare(uuid))
                    .map(|v| MoRef::new("VirtualMachine", &v.moref));
                plain(found.map(|r| rv_moref(&r)).unwrap_or_default())
            }
            "RetrievePropertiesEx" => self.retrieve(el).map(|b| Outcome {
                body: b,
                cookie: None,
            }),
            "ContinueRetrievePropertiesEx" => {
                let token = arg(el, "token")?;
                let rest = self.lock().pending.remove(token).ok_or_else(|| {
                    fault(FaultKind::InvalidArgument("token".into()), "unknown token")
                })?;
                plain(self.page(rest, 100))
            }
            "CreateSnapshot_Task" => {
                let vm = this(el)?;
                let name = el.child_text("name").unwrap_or("snapshot").to_string();
                self.lock().vm(&vm.value)?;
                plain(rv_moref(
                    &self.task(move |sh| sh.create_snapshot(&vm.value, &name)),
                ))
            }
            "RemoveSnapshot_Task" => {
                let snap = this(el)?;
                let children = el.child_text("removeChildren") == Some("true");
                self.lock().snapshot_owner(&snap.value)?;
                plain(rv_moref(&self.task(move |sh| {
                    sh.remove_snapshot(&snap.value, children).map(|()| None)
                })))
            }
            "ConsolidateVMDisks_Task" => {
                let vm = this(el)?;
                self.lock().vm(&vm.value)?;
                plain(rv_moref(&self.task(|_| Ok(None))))
            }
            "ReconfigVM_Task" => {
                let vm = this(el)?;
                self.lock().vm(&vm.value)?;
                let spec = el.child("spec").cloned().unwrap_or_default();
                plain(rv_moref(
                    &self.task(move |sh| sh.reconfig(&vm.value, &spec).map(|()| None)),
                ))
            }
            "RelocateVM_Task" => {
                let vm = this(el)?;
                let st = self.lock();
                let v = st.vm(&vm.value)?;
                if let Some(src) = v.disabled.get("RelocateVM_Task") {
                    return Err(fault(
                        FaultKind::MethodDisabled(src.clone()),
                        format!("RelocateVM_Task is disabled by {src}"),
                    ));
                }
                drop(st);
                plain(rv_moref(&self.task(|_| Ok(None))))
            }
            "QueryChangedDiskAreas" => self.qcda(el).map(|b| Outcome {
                body: b,
                cookie: None,
            }),
            "SimSetLunState" => {
                let id = arg(el, "lunId")?;
                let state = match arg(el, "state")? {
                    "online" => LunState::Online,
                    "offline" => LunState::Offline,
                    "failingFrom" => LunState::FailingFrom(arg_num(el, "offset")?),
                    other => {
                        return Err(fault(
                            FaultKind::InvalidArgument("state".into()),
                            format!("unknown LUN state {other} (online, offline, failingFrom)"),
                        ))
                    }
                };
                self.set_lun_state(id, state)
                    .map_err(|m| fault(FaultKind::InvalidArgument("lunId".into()), m))?;
                plain(String::new())
            }
            codec::SIM_QUERY_DISK_BLOCK_MAP => self.block_map(el).map(|b| Outcome {
                body: b,
                cookie: None,
            }),
            "DisableMethods" | "EnableMethods" => {
                if self.inv.mode == Mode::Esxi {
                    return Err(fault(
                        FaultKind::NotSupported,
                        "HostAgent is not a VirtualCenter, cannot disable svMotion",
                    ));
                }
                let source = arg(el, "sourceId")?.to_string();
                let methods: Vec<String> = el
                    .children_named("method")
                    .map(|m| {
                        m.child_text("method")
                            .map(str::to_string)
                            .unwrap_or_else(|| m.text.trim().to_string())
                    })
                    .collect();
                let mut st = self.lock();
                let entities: Vec<MoRef> = el
                    .children_named("entity")
                    .filter_map(MoRef::from_element)
                    .collect();
                for e in &entities {
                    st.vm(&e.value)?;
                }
                for e in entities {
                    let v = st.vm_mut(&e.value)?;
                    for m in &methods {
                        if method == "DisableMethods" {
                            if let Some(prev) = v.disabled.get(m) {
                                return Err(fault(
                                    FaultKind::MethodAlreadyDisabled(prev.clone()),
                                    format!("{m} is already disabled by {prev}"),
                                ));
                            }
                            v.disabled.insert(m.clone(), source.clone());
                        } else {
                            v.disabled.remove(m);
                        }
                    }
                }
                plain(String::new())
            }
            "SimGuestWrite" => {
                let vm = arg_moref(el, "vm")?;
                let key: i32 = arg_num(el, "diskKey")?;
                let offset: u64 = arg_num(el, "offset")?;
                let len: u64 = arg_num(el, "length")?;
                let byte: u8 = arg_num(el, "pattern")?;
                if len > 1 << 30 {
                    return Err(fault(
                        FaultKind::InvalidArgument("length".into()),
                        "at most 1 GiB per call",
                    ));
                }
                self.guest_write(&vm.value, key, offset, &vec![byte; len as usize])?;
                plain(String::new())
            }
            other => Err(fault(
                FaultKind::NotSupported,
                format!("method {other} is not implemented by the simulator"),
            )),
        }
    }

    fn new_session(&self, user: &str) -> Outcome {
        let cookie = random_hex(20);
        let key = random_hex(16);
        self.lock()
            .sessions
            .insert(cookie.clone(), user.to_string());
        Outcome {
            body: rv(&format!(
                "<key>{key}</key><userName>{}</userName><fullName>{}</fullName>",
                escape(user),
                escape(user)
            )),
            cookie: Some(cookie),
        }
    }

    fn service_content(&self) -> String {
        let (api_type, full) = match self.inv.mode {
            Mode::Vcenter => ("VirtualCenter", "vddk-rs vSphere simulator (vCenter)"),
            Mode::Esxi => ("HostAgent", "vddk-rs vSphere simulator (ESXi)"),
        };
        rv(&format!(
            "<rootFolder type=\"Folder\">group-d1</rootFolder><propertyCollector type=\"PropertyCollector\">propertyCollector</propertyCollector><sessionManager type=\"SessionManager\">SessionManager</sessionManager><searchIndex type=\"SearchIndex\">SearchIndex</searchIndex><authorizationManager type=\"AuthorizationManager\">AuthorizationManager</authorizationManager><about><name>vsphere-sim</name><fullName>{full}</fullName><apiType>{api_type}</apiType><apiVersion>8.0.1.0</apiVersion></about>"
        ))
    }

    fn task(
        self: &Arc<Self>,
        op: impl FnOnce(&Arc<Shared>) -> Result<Option<MoRef>, Fault> + Send + 'static,
    ) -> MoRef {
        let id = self.lock().id("task");
        let task = MoRef::new("Task", &id);
        self.lock().tasks.insert(
            id.clone(),
            TaskInfo {
                task: task.clone(),
                state: TaskState::Queued,
                result: None,
                error: None,
            },
        );
        let sh = Arc::clone(self);
        std::thread::spawn(move || {
            if let Some(t) = sh.lock().tasks.get_mut(&id) {
                t.state = TaskState::Running;
            }
            let r = op(&sh);
            if let Some(t) = sh.lock().tasks.get_mut(&id) {
                match r {
                    Ok(result) => {
                        t.state = TaskState::Success;
                        t.result = result;
                    }
                    Err((kind, message)) => {
                        t.state = TaskState::Error;
                        t.error = Some(vim_soap::Fault { kind, message });
                    }
                }
            }
        });
        task
    }

    fn create_snapshot(&self, vm: &str, name: &str) -> Result<Option<MoRef>, Fault> {
        let _changed = ChangedOnDrop(self);
        let mut st = self.lock();
        let snap_id = st.id("snapshot");
        let v = st.vm_mut(vm)?;
        let n = v.snapshots.len() + 1;
        let mut frozen = Vec::new();
        let mut made = Vec::new();
        for d in v.disks.iter_mut().filter(|d| !d.independent()) {
            let running = d.running().to_path_buf();
            let stem = running
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let base_stem = stem.split("-0000").next().unwrap_or(&stem).to_string();
            let child = running.with_file_name(format!("{base_stem}-{n:06}.vmdk"));
            if let Err(e) = vmdk_file::maintain::create_child(&running, &child) {
                for p in made {
                    let _ = std::fs::remove_file(p);
                }
                return Err(fault(FaultKind::Other("SystemError".into()), e.to_string()));
            }
            made.push(child.clone());
            if d.cbt.enabled {
                d.cbt.current += 1;
            }
            frozen.push((d.key, running, d.cbt.current));
            d.chain.push(child);
        }
        v.snapshots.push(SimSnapshot {
            moref: snap_id.clone(),
            name: name.to_string(),
            disks: frozen,
        });
        Ok(Some(MoRef::new("VirtualMachineSnapshot", &snap_id)))
    }

    /// Removes a snapshot: the delta created when it was taken is merged
    /// into the file it froze, and whatever sat on that delta now sits
    /// on the merged file.
    fn remove_snapshot(&self, snap: &str, children: bool) -> Result<(), Fault> {
        let _changed = ChangedOnDrop(self);
        let mut st = self.lock();
        let vm_id = st.snapshot_owner(snap)?.moref.clone();
        // A disk of the snapshot still attached elsewhere (a HotAdd proxy)
        // keeps the snapshot: its files are locked.
        let owner = st.vm(&vm_id)?;
        let files: Vec<PathBuf> = owner
            .snapshots
            .iter()
            .filter(|s| s.moref == snap)
            .flat_map(|s| s.disks.iter().map(|(_, f, _)| f.clone()))
            .collect();
        for other in st.vms.values().filter(|o| o.moref != vm_id) {
            for d in &other.disks {
                if let Some(f) = d.chain.iter().find(|p| files.contains(p)) {
                    return Err(fault(
                        FaultKind::Other("FileLocked".into()),
                        format!(
                            "{} is in use by {} (device {}): detach it first",
                            self.datastore_name(f),
                            other.name,
                            d.key
                        ),
                    ));
                }
            }
        }
        let v = st.vm_mut(&vm_id)?;
        let idx = v
            .snapshots
            .iter()
            .position(|s| s.moref == snap)
            .ok_or_else(|| not_found("VirtualMachineSnapshot", snap))?;
        let victims: Vec<usize> = if children {
            (idx..v.snapshots.len()).rev().collect()
        } else {
            vec![idx]
        };
        let err =
            |e: vmdk_file::Error| fault(FaultKind::Other("SystemError".into()), e.to_string());
        for i in victims {
            let s = v.snapshots.remove(i);
            for (key, frozen, _) in &s.disks {
                let Some(d) = v.disks.iter_mut().find(|d| d.key == *key) else {
                    continue;
                };
                let Some(pos) = d.chain.iter().position(|p| p == frozen) else {
                    continue;
                };
                let Some(delta) = d.chain.get(pos + 1).cloned() else {
                    continue;
                };
                vmdk_file::maintain::merge_into_parent(&delta, &mut |_, _| {}).map_err(err)?;
                if let Some(above) = d.chain.get(pos + 2).cloned() {
                    vmdk_file::maintain::set_parent(&above, frozen).map_err(err)?;
                }
                vmdk_file::create::delete(&delta).map_err(err)?;
                d.chain.remove(pos + 1);
                for later in v.snapshots.iter_mut() {
                    for (k, f, _) in later.disks.iter_mut() {
                        if *k == *key && *f == delta {
                            *f = frozen.clone();
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn reconfig(&self, vm: &str, spec: &Element) -> Result<(), Fault> {
        let _changed = ChangedOnDrop(self);
        let mut st = self.lock();
        if let Some(c) = spec.child_text("changeTrackingEnabled") {
            let on = c == "true";
            let v = st.vm_mut(vm)?;
            for d in &mut v.disks {
                if on && !d.cbt.enabled {
                    // A new epoch: ids from before are meaningless now.
                    d.cbt = Cbt {
                        enabled: true,
                        epoch: random_epoch(),
                        current: 1,
                        log: Vec::new(),
                    };
                } else if !on {
                    d.cbt.enabled = false;
                    d.cbt.log.clear();
                }
            }
        }
        for ch in spec.children_named("deviceChange") {
            let op = ch.child_text("operation").unwrap_or_default();
            let dev = ch.child("device").ok_or_else(|| {
                fault(
                    FaultKind::InvalidArgument("device".into()),
                    "deviceChange without device",
                )
            })?;
            match op {
                "add" => {
                    let b = dev.child("backing").ok_or_else(|| {
                        fault(
                            FaultKind::InvalidArgument("backing".into()),
                            "disk without backing",
                        )
                    })?;
                    let file = arg(b, "fileName")?.to_string();
                    let path = self.resolve(&file)?;
                    let disk = LocalDisk::open(
                        &path,
                        &OpenOptions {
                            ignore_cid_mismatch: false,
                            ..OpenOptions::default()
                        },
                    )
                    .map_err(|e| fault(FaultKind::FileNotFound(file.clone()), e.to_string()))?;
                    let cap = disk.capacity();
                    let controller_key: i32 = dev
                        .child_text("controllerKey")
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(1000);
                    let unit: i32 = dev
                        .child_text("unitNumber")
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(-1);
                    drop(disk);
                    let v = st.vm_mut(vm)?;
                    let ctrl = v
                        .controllers
                        .iter()
                        .find(|c| c.key == controller_key)
                        .ok_or_else(|| {
                            fault(
                                FaultKind::InvalidArgument("controllerKey".into()),
                                format!("no controller {controller_key}"),
                            )
                        })?;
                    match ctrl.kind {
                        ControllerKind::Ide if v.power == "poweredOn" => {
                            return Err(fault(
                                FaultKind::NotSupported,
                                "IDE controllers do not support hot add",
                            ))
                        }
                        ControllerKind::Scsi if !(0..=15).contains(&unit) || unit == 7 => {
                            return Err(fault(
                                FaultKind::InvalidArgument("unitNumber".into()),
                                format!(
                                    "SCSI unit {unit} does not exist or is the controller's own"
                                ),
                            ))
                        }
                        _ => {}
                    }
                    if v.disks
                        .iter()
                        .any(|d| d.controller_key == controller_key && d.unit == unit)
                    {
                        return Err(fault(
                            FaultKind::InvalidArgument("unitNumber".into()),
                            format!("unit {controller_key}:{unit} is taken"),
                        ));
                    }
                    let key = v.disks.iter().map(|d| d.key).max().unwrap_or(1999) + 1;
                    let uuid = disk_uuid();
                    let device = match (&self.inv.proxy_host, v.proxy) {
                        (Some(root), true) => Some(
                            san::attach_device(root, &path, &uuid)
                                .map_err(|m| fault(FaultKind::Other("SystemError".into()), m))?,
                        ),
                        _ => None,
                    };
                    v.disks.push(SimDisk {
                        key,
                        controller_key,
                        unit,
                        mode: b.child_text("diskMode").unwrap_or("persistent").to_string(),
                        capacity: cap,
                        thin: true,
                        uuid,
                        chain: vec![path],
                        cbt: Cbt {
                            enabled: false,
                            epoch: random_epoch(),
                            current: 1,
                            log: Vec::new(),
                        },
                        device,
                    });
                }
                "remove" => {
                    let key: i32 = arg_num(dev, "key")?;
                    let v = st.vm_mut(vm)?;
                    let pos = v.disks.iter().position(|d| d.key == key).ok_or_else(|| {
                        fault(
                            FaultKind::InvalidArgument("key".into()),
                            format!("no device {key}"),
                        )
                    })?;
                    let d = &v.disks[pos];
                    if let (Some(root), Some(name)) = (&self.inv.proxy_host, &d.device) {
                        // Changes the proxy made reach the disk before it
                        // is detached (never for a non-persistent attach).
                        san::detach_device(
                            root,
                            name,
                            d.running(),
                            !d.mode.contains("nonpersistent"),
                        )
                        .map_err(|m| fault(FaultKind::Other("SystemError".into()), m))?;
                    }
                    v.disks.remove(pos);
                }
                other => {
                    return Err(fault(
                        FaultKind::NotSupported,
                        format!("device operation {other}"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn disk_infos(&self, v: &SimVm, snapshot: Option<&SimSnapshot>) -> Vec<VirtualDiskInfo> {
        v.disks
            .iter()
            .filter_map(|d| {
                let (file, seq) = match snapshot {
                    Some(s) => {
                        let (_, f, seq) = s.disks.iter().find(|(k, _, _)| *k == d.key)?;
                        (f.clone(), *seq)
                    }
                    None => (d.running().to_path_buf(), d.cbt.current),
                };
                Some(VirtualDiskInfo {
                    key: d.key,
                    file_name: self.datastore_name(&file),
                    capacity: d.capacity,
                    disk_mode: d.mode.clone(),
                    thin: d.thin,
                    change_id: d.cbt.enabled.then(|| d.cbt.change_id(seq)),
                    uuid: Some(d.uuid.clone()),
                    controller_key: d.controller_key,
                    unit_number: d.unit,
                })
            })
            .collect()
    }

    fn config_xml(&self, v: &SimVm, snapshot: Option<&SimSnapshot>) -> String {
        let cbt = v.disks.iter().any(|d| d.cbt.enabled);
        let devices = codec::virtual_devices_xml(&v.controllers, &self.disk_infos(v, snapshot));
        let devices = devices.replacen("<val xsi:type=\"ArrayOfVirtualDevice\">", "", 1);
        let devices = devices.strip_suffix("</val>").unwrap_or(&devices);
        format!(
            "<val xsi:type=\"VirtualMachineConfigInfo\"><name>{}</name><uuid>{}</uuid><changeTrackingEnabled>{cbt}</changeTrackingEnabled><hardware><numCPU>1</numCPU><memoryMB>1024</memoryMB>{}</hardware></val>",
            escape(&v.name),
            escape(&v.uuid),
            devices.replace("<VirtualDevice ", "<device ").replace("</VirtualDevice>", "</device>")
        )
    }

    fn object_props(
        &self,
        st: &State,
        obj: &MoRef,
        paths: &[String],
    ) -> Result<Vec<(String, String)>, Fault> {
        let mut out = Vec::new();
        let dc = &self.inv.datacenter;
        for p in paths {
            let val = match (obj.kind.as_str(), p.as_str()) {
                ("Folder", "childEntity") if obj.value == "group-d1" => Some("<val xsi:type=\"ArrayOfManagedObjectReference\"><ManagedObjectReference type=\"Datacenter\" xsi:type=\"ManagedObjectReference\">datacenter-1</ManagedObjectReference></val>".to_string()),
                ("Folder", "childEntity") if obj.value == "group-v1" => {
                    let mut s = String::from("<val xsi:type=\"ArrayOfManagedObjectReference\">");
                    for v in st.vms.values() {
                        s.push_str(&format!("<ManagedObjectReference type=\"VirtualMachine\" xsi:type=\"ManagedObjectReference\">{}</ManagedObjectReference>", v.moref));
                    }
                    s.push_str("</val>");
                    Some(s)
                }
                ("Folder", "name") => Some(codec::simple_val("string", if obj.value == "group-d1" { "Datacenters" } else { "vm" })),
                ("Datacenter", "vmFolder") => Some(codec::moref_val(&MoRef::new("Folder", "group-v1"))),
                ("Datacenter", "name") => Some(codec::simple_val("string", dc)),
                ("Folder", _) | ("Datacenter", _) => None,
                ("Task", "info") => {
                    let t = st.tasks.get(&obj.value).ok_or_else(|| not_found("Task", &obj.value))?;
                    Some(codec::task_info_xml(t))
                }
                ("VirtualMachine", path) => {
                    let v = st.vm(&obj.value)?;
                    match path {
                        "name" | "config.name" => Some(codec::simple_val("string", &v.name)),
                        "config.uuid" => Some(codec::simple_val("string", &v.uuid)),
                        "config.hardware.device" => Some(codec::virtual_devices_xml(&v.controllers, &self.disk_infos(v, None))),
                        "config.changeTrackingEnabled" => Some(codec::simple_val("boolean", &v.disks.iter().any(|d| d.cbt.enabled).to_string())),
                        "config" => Some(self.config_xml(v, None)),
                        "runtime.powerState" => Some(format!("<val xsi:type=\"VirtualMachinePowerState\">{}</val>", v.power)),
                        "summary.config.template" => Some(codec::simple_val("boolean", "false")),
                        "snapshot.rootSnapshotList" => {
                            if v.snapshots.is_empty() {
                                None
                            } else {
                                // A linear chain: each snapshot the child of the previous.
                                let mut node: Option<SnapshotNode> = None;
                                for s in v.snapshots.iter().rev() {
                                    node = Some(SnapshotNode { snapshot: MoRef::new("VirtualMachineSnapshot", &s.moref), name: s.name.clone(), children: node.into_iter().collect() });
                                }
                                Some(codec::snapshot_tree_xml(&node.into_iter().collect::<Vec<_>>()))
                            }
                        }
                        "snapshot.currentSnapshot" => v.snapshots.last().map(|s| codec::moref_val(&MoRef::new("VirtualMachineSnapshot", &s.moref))),
                        "simulator.proxy" => Some(codec::simple_val("boolean", &v.proxy.to_string())),
                        _ => None,
                    }
                }
                ("VirtualMachineSnapshot", path) => {
                    let v = st.snapshot_owner(&obj.value)?;
                    let s = v.snapshots.iter().find(|s| s.moref == obj.value).ok_or_else(|| not_found("VirtualMachineSnapshot", &obj.value))?;
                    match path {
                        "name" => Some(codec::simple_val("string", &s.name)),
                        "config.hardware.device" => Some(codec::virtual_devices_xml(&v.controllers, &self.disk_infos(v, Some(s)))),
                        "config" => Some(self.config_xml(v, Some(s))),
                        "vm" => Some(codec::moref_val(&MoRef::new("VirtualMachine", &v.moref))),
                        _ => None,
                    }
                }
                (kind, _) => return Err(not_found(kind, &obj.value)),
            };
            if let Some(v) = val {
                out.push((p.clone(), v));
            }
        }
        Ok(out)
    }

    fn retrieve(&self, el: &Element) -> Reply {
        let spec = el.child("specSet").ok_or_else(|| {
            fault(
                FaultKind::InvalidArgument("specSet".into()),
                "missing specSet",
            )
        })?;
        let max = el
            .path(&["options", "maxObjects"])
            .and_then(|m| m.text.trim().parse::<usize>().ok())
            .unwrap_or(100)
            .max(1);
        let st = self.lock();
        let mut objects = Vec::new();
        for os in spec.children_named("objectSet") {
            let obj = arg_moref(os, "obj")?;
            let paths: Vec<String> = spec
                .children_named("propSet")
                .filter(|p| p.child_text("type") == Some(obj.kind.as_str()))
                .flat_map(|p| {
                    p.children_named("pathSet")
                        .map(|x| x.text.trim().to_string())
                })
                .collect();
            let props = self.object_props(&st, &obj, &paths)?;
            objects.push(codec::object_content_xml(&obj, &props));
        }
        drop(st);
        Ok(self.page(objects, max))
    }

    fn page(&self, mut objects: Vec<String>, max: usize) -> String {
        if objects.is_empty() {
            return String::new();
        }
        let rest = if objects.len() > max {
            objects.split_off(max)
        } else {
            Vec::new()
        };
        let mut body = String::from("<returnval>");
        if !rest.is_empty() {
            let token = random_hex(8);
            body.push_str(&format!("<token>{token}</token>"));
            self.lock().pending.insert(token, rest);
        }
        for o in objects {
            body.push_str(&o);
        }
        body.push_str("</returnval>");
        body
    }

    fn qcda(&self, el: &Element) -> Reply {
        let vm = this(el)?;
        let key: i32 = arg_num(el, "deviceKey")?;
        let start: u64 = arg_num(el, "startOffset")?;
        let change_id = arg(el, "changeId")?.to_string();
        let st = self.lock();
        let v = st.vm(&vm.value)?;
        let snap = match el.child("snapshot").and_then(MoRef::from_element) {
            Some(s) => Some(v.snapshot(&s.value)?),
            None => None,
        };
        let d = v.disk(key, "deviceKey")?;
        if !d.cbt.enabled {
            return Err(fault(
                FaultKind::InvalidState,
                "Changed block tracking is not enabled for this virtual machine",
            ));
        }
        if start >= d.capacity {
            return Err(fault(
                FaultKind::InvalidArgument("startOffset".into()),
                "startOffset is past the end of the disk",
            ));
        }
        let (file, upto) = match snap {
            Some(s) => {
                let (f, seq) = s.file(key, "deviceKey")?;
                (f.clone(), seq)
            }
            None => (d.running().to_path_buf(), u64::MAX),
        };
        let changed: ExtentList = if change_id.trim() == "*" {
            let disk = LocalDisk::open(&file, &OpenOptions::default())
                .map_err(|e| fault(FaultKind::Other("SystemError".into()), e.to_string()))?;
            let map = disk
                .map()
                .map_err(|e| fault(FaultKind::Other("SystemError".into()), e.to_string()))?;
            map.iter()
                .filter(|e| e.kind == AllocKind::Data)
                .map(|e| Extent::new(e.start, e.length))
                .collect()
        } else {
            let id: cbt::ChangeId = change_id.parse().map_err(|_| {
                fault(
                    FaultKind::InvalidArgument("changeId".into()),
                    format!("invalid change id {change_id}"),
                )
            })?;
            if id.uuid() != Some(d.cbt.epoch) {
                return Err(fault(
                    FaultKind::InvalidArgument("changeId".into()),
                    format!("change id {change_id} belongs to another change tracking epoch"),
                ));
            }
            let since = id.sequence().unwrap_or(0);
            if since > upto || (snap.is_none() && since > d.cbt.current) {
                return Err(fault(
                    FaultKind::InvalidArgument("changeId".into()),
                    format!("change id {change_id} is newer than the state asked about"),
                ));
            }
            d.cbt
                .log
                .iter()
                .filter(|(s, _)| *s >= since && *s < upto)
                .map(|(_, e)| *e)
                .collect()
        };
        let end = (start.saturating_add(self.opts.qcda_page)).min(d.capacity);
        let window = ExtentList::from_sorted([Extent::from_bounds(start, end)]);
        let areas = changed.clip(d.capacity).intersection(&window);
        let info = codec::DiskChangeInfo {
            start_offset: start,
            length: end - start,
            changed_area: areas.iter().map(|e| (e.start, e.len)).collect(),
        };
        Ok(codec::disk_change_info_xml(&info))
    }

    fn nfc_open(&self, el: &Element, read_only: bool) -> Reply {
        let vm = arg_moref(el, "vm")?;
        let key: i32 = arg_num(el, "diskKey")?;
        let mut st = self.lock();
        let v = st.vm(&vm.value)?;
        let d = v.disk(key, "diskKey")?;
        let (path, ro) = match el.child("snapshot").and_then(MoRef::from_element) {
            // A snapshot's state is frozen: it is only ever read.
            Some(s) => (v.snapshot(&s.value)?.file(key, "diskKey")?.0.clone(), true),
            None => (d.running().to_path_buf(), read_only),
        };
        let grant = NfcGrant {
            path,
            read_only: ro,
            vm: vm.value.clone(),
            disk_key: key,
            expires: Instant::now() + self.opts.ticket_ttl,
        };
        let ticket = random_hex(24);
        st.nfc_tickets.insert(ticket.clone(), grant);
        drop(st);
        let (host, port) = self
            .nfc_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| ("127.0.0.1".into(), 902));
        Ok(rv(&format!(
            "<host>{}</host><port>{port}</port><sslThumbprint>{}</sslThumbprint><service>vpxa-nfc</service><serviceVersion>1.0</serviceVersion><sessionId>{ticket}</sessionId>",
            escape(&host),
            self.thumbprint
        )))
    }
}
