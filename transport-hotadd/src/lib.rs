//! # transport-hotadd
//!
//! VMware's `hotadd` transport: the disk to back up (a snapshot's disk) or
//! restore is attached to the backup proxy VM this code runs in, and read
//! or written as a local block device, with no network in the data path.
//!
//! What it does, and the traps it avoids:
//!
//! - Knows the proxy VM: from configuration (a moref or a BIOS UUID), or
//!   from the machine's own SMBIOS UUID (`sys/class/dmi/id/product_uuid`)
//!   looked up with `FindByUuid`.
//! - Attaches with `ReconfigVM_Task` on the next free SCSI unit, taking
//!   SCSI controllers in bus order (SCSI0, SCSI1, ...) whatever order the
//!   configuration lists them in; never on IDE (no hot add there), never
//!   unit 7 (the controller's own).
//! - Never attaches an independent disk (it is not part of snapshots): the
//!   open is declined with that reason, so the caller uses another
//!   transport for that disk only, instead of failing the whole VM.
//! - Finds the attached device through sysfs (a configurable root): the
//!   `device/wwid` whose hex digits are the disk's backing UUID (what
//!   Linux shows for VMware disks with `disk.EnableUUID`), then reads and
//!   writes `dev/<name>` with `O_DIRECT` through `transport-san`'s aligned
//!   I/O.
//! - Detaches at close (and when dropped). Every attach is written to a
//!   local state file before the reconfiguration and removed after the
//!   detach, so [`cleanup`] can find disks a crash left on the proxy —
//!   from the state file and from what the proxy's configuration shows —
//!   and detach them, returning counts cleaned and remaining. Detach
//!   before removing the snapshot: a snapshot whose disk is still
//!   attached to the proxy cannot be removed.
//!
//! Reads use the backing file's attach mode `independent_nonpersistent`,
//! so nothing the proxy does reaches the disk; writes (restores) attach
//! `persistent`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use transport_san::{BlockMap, LunExtent, SanDisk};
use vim_soap::client::Client;
use vim_soap::codec::{
    self, ConfigSpec, ControllerKind, DeviceChange, DiskSpec, MoRef, VirtualController,
    VirtualDiskInfo,
};

/// Mode of a read-only attach: the proxy's writes (there should be none)
/// never reach the disk.
pub const READ_MODE: &str = "independent_nonpersistent";
/// Mode of a writable attach (a restore).
pub const WRITE_MODE: &str = "persistent";

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport does not take this disk; the caller should fall back.
    #[error("hotadd transport declined: {0}")]
    Declined(String),
    /// The server said no.
    #[error(transparent)]
    Soap(#[from] vim_soap::Error),
    /// The attached disk did not show up on the proxy.
    #[error("the attached disk (wwid {wwid}) did not appear under {sys} within {waited:?}")]
    DeviceNotFound {
        /// What was looked for.
        wwid: String,
        /// The sysfs `block` directory searched.
        sys: PathBuf,
        /// How long.
        waited: Duration,
    },
    /// Device I/O (through the SAN layer's `O_DIRECT` code).
    #[error(transparent)]
    Device(#[from] transport_san::Error),
    /// A local file (state file, sysfs).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to attach.
#[derive(Clone, Debug)]
pub struct HotAddOptions {
    /// The proxy VM: a moref (`vm-42`) or a BIOS UUID. `None`: this
    /// machine's SMBIOS UUID.
    pub proxy_vm: Option<String>,
    /// Root of the proxy's `sys` and `dev` (`/` on a real proxy).
    pub device_root: PathBuf,
    /// Where attaches are recorded until detached.
    pub state_file: PathBuf,
    /// Attach for writing (a restore).
    pub writable: bool,
    /// Longest wait for a reconfiguration task.
    pub task_timeout: Duration,
    /// Longest wait for the attached device to appear.
    pub device_wait: Duration,
}

impl Default for HotAddOptions {
    fn default() -> Self {
        Self {
            proxy_vm: None,
            device_root: PathBuf::from("/"),
            state_file: std::env::temp_dir().join("vddk-rs-hotadd.state"),
            writable: false,
            task_timeout: Duration::from_secs(300),
            device_wait: Duration::from_secs(30),
        }
    }
}

/// One attach, as the state file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The server (`host:port`).
    pub server: String,
    /// The proxy VM's moref value.
    pub proxy: String,
    /// Controller device key.
    pub controller_key: i32,
    /// Unit number.
    pub unit: i32,
    /// The attached disk file.
    pub file: String,
    /// The process that attached it.
    pub pid: u32,
}

/// The state file: JSON lines, updated under an exclusive lock.
fn with_state<T>(path: &Path, f: impl FnOnce(&mut Vec<Record>) -> T) -> Result<T> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(path))?;
    file.lock().map_err(io(path))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut (&file).take(MAX_STATE_BYTES), &mut bytes).map_err(io(path))?;
    let mut records = parse_state(&bytes);
    let out = f(&mut records);
    let mut text = String::new();
    for r in &records {
        text.push_str(&serde_json::to_string(r).unwrap_or_default());
        text.push('\n');
    }
    file.set_len(0).map_err(io(path))?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))?;
    file.sync_data().map_err(io(path))?;
    Ok(out)
}

/// The most of a state file read (a proxy has at most a few dozen
/// attaches at once; anything past this is not a file we wrote).
pub const MAX_STATE_BYTES: u64 = 4 << 20;

/// Parses state file bytes: one JSON record per line; lines that do not
/// parse (a torn last line after a crash, foreign text) are skipped.
pub fn parse_state(bytes: &[u8]) -> Vec<Record> {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Record>(line).ok())
        .collect()
}

/// Reads the attaches recorded in a state file.
pub fn recorded(state_file: &Path) -> Result<Vec<Record>> {
    // Reading makes nothing: the file exists from the first attach on.
    if !state_file.exists() {
        return Ok(Vec::new());
    }
    with_state(state_file, |r| r.clone())
}

/// The proxy VM this code runs in.
pub fn find_proxy(client: &Client, opts: &HotAddOptions) -> Result<MoRef> {
    let uuid = match opts.proxy_vm.as_deref().map(str::trim) {
        Some(v) if v.starts_with("vm-") || v.starts_with("moref=") => {
            return Ok(MoRef::new("VirtualMachine", v.trim_start_matches("moref=")));
        }
        Some(u) if !u.is_empty() => u.to_string(),
        _ => {
            let p = opts.device_root.join("sys/class/dmi/id/product_uuid");
            std::fs::read_to_string(&p)
                .map_err(|e| {
                    Error::Declined(format!(
                        "cannot tell which VM this proxy is ({}: {e}); set the proxy VM",
                        p.display()
                    ))
                })?
                .trim()
                .to_string()
        }
    };
    let si = client.content().search_index.clone();
    // SMBIOS 2.6+ stores the first three UUID fields little-endian, and
    // some kernels show them that way: try the UUID as read, then swapped.
    for candidate in [Some(uuid.clone()), smbios_swapped(&uuid)]
        .into_iter()
        .flatten()
    {
        let found = client.call(&codec::find_by_uuid(&si, &candidate, false))?;
        if let Some(vm) = codec::parse_moref(&found)? {
            return Ok(vm);
        }
    }
    Err(Error::Declined(format!(
        "no VM with BIOS UUID {uuid}: this is not a proxy VM of this server"
    )))
}

/// `uuid` with its first three fields byte-swapped (`None` when it is not
/// 32 hex digits).
pub fn smbios_swapped(uuid: &str) -> Option<String> {
    let h = hex_of(uuid);
    if h.len() != 32 {
        return None;
    }
    let swap = |s: &str| -> String {
        (0..s.len() / 2)
            .rev()
            .map(|i| &s[2 * i..2 * i + 2])
            .collect()
    };
    Some(format!(
        "{}-{}-{}-{}-{}",
        swap(&h[..8]),
        swap(&h[8..12]),
        swap(&h[12..16]),
        &h[16..20],
        &h[20..]
    ))
}

fn devices(
    client: &Client,
    owner: &MoRef,
) -> Result<(Vec<VirtualController>, Vec<VirtualDiskInfo>)> {
    let val = client
        .property(owner, "config.hardware.device")?
        .unwrap_or_default();
    Ok((
        codec::virtual_controllers(&val)?,
        codec::virtual_disks(&val)?,
    ))
}

/// The next free SCSI unit: controllers by bus number, units 0–15 but 7.
pub fn next_free_unit(
    controllers: &[VirtualController],
    disks: &[VirtualDiskInfo],
) -> Option<(i32, i32)> {
    let mut scsi: Vec<&VirtualController> = controllers
        .iter()
        .filter(|c| c.kind == ControllerKind::Scsi)
        .collect();
    scsi.sort_by_key(|c| (c.bus_number, c.key));
    scsi.into_iter().find_map(|c| {
        (0..16)
            .filter(|&u| u != 7)
            .find(|&u| {
                !disks
                    .iter()
                    .any(|d| d.controller_key == c.key && d.unit_number == u)
            })
            .map(|u| (c.key, u))
    })
}

/// The hex digits of a UUID or WWID, lower case (`naa.` dropped).
fn hex_of(s: &str) -> String {
    s.trim()
        .trim_start_matches("naa.")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The block device (`sdX`) whose `device/wwid` carries `uuid`'s digits.
pub fn find_device(device_root: &Path, uuid: &str) -> Result<Option<String>> {
    let want = hex_of(uuid);
    let sys = device_root.join("sys/block");
    let entries = match std::fs::read_dir(&sys) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&sys)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(&sys))?;
        let wwid = entry.path().join("device/wwid");
        if let Ok(w) = std::fs::read_to_string(&wwid) {
            if !want.is_empty() && hex_of(&w) == want {
                return Ok(Some(entry.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    Ok(None)
}

fn reconfig(client: &Client, proxy: &MoRef, change: DeviceChange, timeout: Duration) -> Result<()> {
    let spec = ConfigSpec {
        change_tracking: None,
        device_changes: vec![change],
    };
    let task = codec::parse_moref(&client.call(&codec::reconfig_vm_task(proxy, &spec))?)?
        .ok_or_else(|| vim_soap::Error::Malformed("ReconfigVM_Task returned no task".into()))?;
    client.wait_task(&task, timeout)?;
    Ok(())
}

/// A disk attached to the proxy and opened as a local block device.
#[derive(Debug)]
pub struct HotAddDisk {
    client: Arc<Client>,
    proxy: MoRef,
    record: Record,
    device_key: i32,
    device: PathBuf,
    io: Option<SanDisk>,
    opts: HotAddOptions,
    disk: VirtualDiskInfo,
}

impl HotAddDisk {
    /// Attaches `path` (a disk of `vm`, or of its `snapshot`) to the proxy
    /// and opens the device. Declines independent disks, a proxy without
    /// a free SCSI unit, and the proxy's own disks.
    pub fn attach(
        client: Arc<Client>,
        vm: &MoRef,
        snapshot: Option<&MoRef>,
        path: &str,
        opts: &HotAddOptions,
    ) -> Result<Self> {
        let proxy = find_proxy(&client, opts)?;
        if proxy.value == vm.value {
            return Err(Error::Declined(
                "the disk belongs to the proxy VM itself".into(),
            ));
        }
        let owner = snapshot.unwrap_or(vm);
        let (_, disks) = devices(&client, owner)?;
        let disk = disks
            .into_iter()
            .find(|d| d.file_name == path)
            .ok_or_else(|| Error::Declined(format!("{path} is not a disk of {}", owner.value)))?;
        if disk.is_independent() {
            return Err(Error::Declined(format!(
                "{path} is an independent disk ({}): HotAdd skips it (not part of snapshots)",
                disk.disk_mode
            )));
        }
        let (controllers, proxy_disks) = devices(&client, &proxy)?;
        let (controller_key, unit) =
            next_free_unit(&controllers, &proxy_disks).ok_or_else(|| {
                Error::Declined("the proxy has no free SCSI unit (IDE is never used)".into())
            })?;
        let record = Record {
            server: client.server().to_string(),
            proxy: proxy.value.clone(),
            controller_key,
            unit,
            file: path.to_string(),
            pid: std::process::id(),
        };
        // Recorded before the attach: a crash from here on is cleanable.
        with_state(&opts.state_file, |r| r.push(record.clone()))?;
        let attached = reconfig(
            &client,
            &proxy,
            DeviceChange::AddDisk(DiskSpec {
                key: -100,
                file_name: path.to_string(),
                disk_mode: if opts.writable { WRITE_MODE } else { READ_MODE }.into(),
                controller_key,
                unit_number: unit,
            }),
            opts.task_timeout,
        );
        if let Err(e) = attached {
            let _ = with_state(&opts.state_file, |r| r.retain(|x| *x != record));
            return Err(e);
        }
        let mut me = Self {
            client,
            proxy,
            record,
            device_key: 0,
            device: PathBuf::new(),
            io: None,
            opts: opts.clone(),
            disk,
        };
        // From here on, failing means detaching again (Drop does it).
        me.open_attached()?;
        tracing::info!(disk = path, proxy = %me.proxy.value, device = %me.device.display(), "hot-added");
        Ok(me)
    }

    fn open_attached(&mut self) -> Result<()> {
        let (_, proxy_disks) = devices(&self.client, &self.proxy)?;
        let mine = proxy_disks
            .iter()
            .find(|d| {
                d.controller_key == self.record.controller_key
                    && d.unit_number == self.record.unit
                    && d.file_name == self.record.file
            })
            .ok_or_else(|| {
                Error::Declined("the proxy's configuration does not show the attached disk".into())
            })?;
        self.device_key = mine.key;
        let uuid = mine.uuid.clone().unwrap_or_default();
        let started = Instant::now();
        let name = loop {
            if let Some(n) = find_device(&self.opts.device_root, &uuid)? {
                break n;
            }
            if started.elapsed() >= self.opts.device_wait {
                return Err(Error::DeviceNotFound {
                    wwid: format!("naa.{}", hex_of(&uuid)),
                    sys: self.opts.device_root.join("sys/block"),
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.device = self.opts.device_root.join("dev").join(&name);
        let map = BlockMap::new(
            &format!("hotadd:{name}"),
            self.disk.capacity,
            vec![LunExtent {
                virtual_offset: 0,
                lun_offset: 0,
                len: self.disk.capacity,
            }],
        )?;
        self.io = Some(SanDisk::open_device(&self.device, map, self.opts.writable)?);
        Ok(())
    }

    fn io(&self) -> &SanDisk {
        // Set by `attach` before the value is handed out.
        self.io
            .as_ref()
            .expect("an attached disk has its device open")
    }

    /// The device node on the proxy.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The proxy VM.
    pub fn proxy(&self) -> &MoRef {
        &self.proxy
    }

    /// Size in bytes.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity
    }

    /// The disk as the VM's configuration describes it.
    pub fn disk_info(&self) -> &VirtualDiskInfo {
        &self.disk
    }

    /// Reads at a byte offset (large reads on several threads).
    pub fn read_at(&self, offset: u64, buf: &mut [u8], streams: usize) -> Result<()> {
        Ok(self.io().read_streams(offset, buf, streams)?)
    }

    /// Reads several `(disk offset, buffer)` ranges on several threads.
    pub fn read_many(&self, ranges: Vec<(u64, &mut [u8])>, streams: usize) -> Result<()> {
        Ok(self.io().read_many(ranges, streams)?)
    }

    /// Writes at a byte offset.
    pub fn write_at(&self, offset: u64, data: &[u8], streams: usize) -> Result<()> {
        Ok(self.io().write_streams(offset, data, streams)?)
    }

    /// Makes written data durable on the device.
    pub fn flush(&self) -> Result<()> {
        Ok(self.io().flush()?)
    }

    fn detach(&mut self) -> Result<()> {
        if let Some(d) = self.io.take() {
            if self.opts.writable {
                d.flush()?;
            }
        }
        if self.device_key != 0 {
            reconfig(
                &self.client,
                &self.proxy,
                DeviceChange::RemoveDisk(self.device_key),
                self.opts.task_timeout,
            )?;
            self.device_key = 0;
        }
        let r = self.record.clone();
        with_state(&self.opts.state_file, |v| v.retain(|x| *x != r))?;
        Ok(())
    }

    /// Flushes, detaches the disk from the proxy and forgets the record.
    pub fn close(mut self) -> Result<()> {
        let r = self.detach();
        self.device_key = 0;
        r
    }
}

impl Drop for HotAddDisk {
    fn drop(&mut self) {
        if self.device_key != 0 || self.io.is_some() {
            if let Err(e) = self.detach() {
                tracing::warn!(error = %e, "detaching a hot-added disk failed; run cleanup");
            }
        }
    }
}

/// Detaches disks a crash left on the proxy: those the state file
/// records, and those the proxy's configuration shows attached read-only
/// from outside its own directory. Returns (cleaned, remaining). On a
/// machine that is not a proxy VM of this server nothing is detached and
/// the records kept for the server count as remaining.
pub fn cleanup(client: &Client, opts: &HotAddOptions) -> Result<(u32, u32)> {
    let proxy = match find_proxy(client, opts) {
        Ok(p) => p,
        // Not a proxy VM of this server: nothing can be detached from
        // here; what the state file still records for it is "remaining".
        Err(Error::Declined(why)) => {
            let server = client.server().to_string();
            let left = recorded(&opts.state_file)?
                .iter()
                .filter(|r| r.server == server)
                .count() as u32;
            tracing::warn!(reason = %why, remaining = left, "HotAdd cleanup skipped");
            return Ok((0, left));
        }
        Err(e) => return Err(e),
    };
    let name = client
        .property(&proxy, "name")?
        .map(|e| e.text.trim().to_string())
        .unwrap_or_default();
    let (_, disks) = devices(client, &proxy)?;
    let server = client.server().to_string();
    let records = recorded(&opts.state_file)?;
    let own_dir = format!("] {name}/");
    let mut victims: Vec<&VirtualDiskInfo> = Vec::new();
    for d in &disks {
        let in_state = records.iter().any(|r| {
            r.server == server
                && r.proxy == proxy.value
                && r.controller_key == d.controller_key
                && r.unit == d.unit_number
                && r.file == d.file_name
        });
        let foreign =
            !name.is_empty() && !d.file_name.contains(&own_dir) && d.disk_mode == READ_MODE;
        if in_state || foreign {
            victims.push(d);
        }
    }
    let (mut cleaned, mut remaining) = (0u32, 0u32);
    let mut failed = Vec::new();
    for d in victims {
        match reconfig(
            client,
            &proxy,
            DeviceChange::RemoveDisk(d.key),
            opts.task_timeout,
        ) {
            Ok(()) => {
                tracing::info!(disk = %d.file_name, proxy = %proxy.value, "cleanup detached a hot-added disk");
                cleaned += 1;
            }
            Err(e) => {
                tracing::warn!(disk = %d.file_name, error = %e, "cleanup could not detach");
                remaining += 1;
                failed.push((d.controller_key, d.unit_number, d.file_name.clone()));
            }
        }
    }
    // Records of this proxy are settled: detached, failed (kept), or no
    // longer on the proxy at all.
    with_state(&opts.state_file, |v| {
        v.retain(|r| {
            r.server != server
                || r.proxy != proxy.value
                || failed
                    .iter()
                    .any(|(c, u, f)| *c == r.controller_key && *u == r.unit && *f == r.file)
        })
    })?;
    Ok((cleaned, remaining))
}

/// Writes a record by hand (tests, and tools that attach by other means).
pub fn record_attach(state_file: &Path, record: Record) -> Result<()> {
    with_state(state_file, |r| r.push(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctrl(key: i32, bus: i32, kind: ControllerKind) -> VirtualController {
        VirtualController {
            key,
            bus_number: bus,
            kind,
            type_name: String::new(),
        }
    }
    fn disk(c: i32, u: i32) -> VirtualDiskInfo {
        VirtualDiskInfo {
            key: 2000 + c * 16 + u,
            file_name: String::new(),
            capacity: 0,
            disk_mode: "persistent".into(),
            thin: false,
            change_id: None,
            uuid: None,
            controller_key: c,
            unit_number: u,
        }
    }

    #[test]
    fn units_in_bus_order_skipping_7_and_never_ide() {
        let cs = vec![
            ctrl(1001, 1, ControllerKind::Scsi),
            ctrl(200, 0, ControllerKind::Ide),
            ctrl(1000, 0, ControllerKind::Scsi),
        ];
        assert_eq!(next_free_unit(&cs, &[]), Some((1000, 0)));
        let used: Vec<_> = (0..7).map(|u| disk(1000, u)).collect();
        assert_eq!(
            next_free_unit(&cs, &used),
            Some((1000, 8)),
            "7 is the controller's"
        );
        let full: Vec<_> = (0..16).filter(|&u| u != 7).map(|u| disk(1000, u)).collect();
        assert_eq!(next_free_unit(&cs, &full), Some((1001, 0)));
        let only_ide = vec![ctrl(200, 0, ControllerKind::Ide)];
        assert_eq!(next_free_unit(&only_ide, &[]), None);
    }

    #[test]
    fn state_file_survives_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state");
        let r = Record {
            server: "h:1".into(),
            proxy: "vm-1".into(),
            controller_key: 1000,
            unit: 1,
            file: "[ds\t1] a/b.vmdk".into(),
            pid: 7,
        };
        record_attach(&p, r.clone()).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"server\":\"torn").unwrap();
        assert_eq!(recorded(&p).unwrap(), vec![r]);
        assert_eq!(hex_of("naa.6000C29A-bc"), "6000c29abc");
        assert_eq!(
            smbios_swapped("564D1234-5678-9ABC-DEF0-123456789ABC").as_deref(),
            Some("34124d56-7856-bc9a-def0-123456789abc")
        );
        assert_eq!(smbios_swapped("short"), None);
    }
}
