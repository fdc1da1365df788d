//! The declarative inventory a simulator is built from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// vCenter or a lone ESXi host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `apiType` VirtualCenter: DisableMethods works.
    #[default]
    Vcenter,
    /// `apiType` HostAgent: DisableMethods is refused.
    Esxi,
}

/// A user account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Login name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// A host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Name.
    pub name: String,
}

/// A datastore: a directory on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datastore {
    /// Name as in `[name] path`; may hold spaces, UTF-8 and `@`.
    pub name: String,
    /// Directory (relative paths are relative to the inventory file).
    pub path: PathBuf,
    /// The SAN LUN holding this (VMFS) datastore's thick and thin disks.
    #[serde(default)]
    pub lun: Option<LunSpec>,
}

/// A simulated SAN LUN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunSpec {
    /// NAA id, e.g. `naa.6000c29a5e8d2b41c3f0a9b7d6e41f02`.
    pub id: String,
    /// Size in bytes (whole MiB).
    pub size: u64,
}

/// A disk of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// `[datastore] dir/file.vmdk`.
    pub file: String,
    /// Capacity in bytes (used when the simulator creates the disk).
    #[serde(default)]
    pub capacity: u64,
    /// Disk type to create (`monolithicSparse`, `vmfs`, `vmfsThin`, ...).
    #[serde(default = "default_type", rename = "type")]
    pub disk_type: String,
    /// `persistent`, `independent_persistent`, `independent_nonpersistent`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Create the file at start when it does not exist.
    #[serde(default)]
    pub create: bool,
}

fn default_type() -> String {
    "monolithicSparse".into()
}
fn default_mode() -> String {
    "persistent".into()
}

/// A virtual machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// Name.
    pub name: String,
    /// Host it runs on.
    #[serde(default)]
    pub host: Option<String>,
    /// `poweredOn` or `poweredOff`.
    #[serde(default = "default_power")]
    pub power: String,
    /// BIOS UUID (generated when absent).
    #[serde(default)]
    pub uuid: Option<String>,
    /// Disks, in controller order.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// This VM is a backup proxy (HotAdd target).
    #[serde(default)]
    pub proxy: bool,
    /// Start with changed-block tracking on.
    #[serde(default)]
    pub cbt: bool,
    /// SCSI controllers (SCSI0, SCSI1, ...); every VM also has two IDE
    /// controllers.
    #[serde(default = "default_scsi")]
    pub scsi_controllers: u32,
}

fn default_scsi() -> u32 {
    1
}

fn default_power() -> String {
    "poweredOn".into()
}

/// The whole inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// vCenter or ESXi.
    #[serde(default)]
    pub mode: Mode,
    /// Datacenter name.
    #[serde(default = "default_dc")]
    pub datacenter: String,
    /// Accounts.
    pub users: Vec<User>,
    /// Hosts.
    #[serde(default)]
    pub hosts: Vec<Host>,
    /// Datastores.
    pub datastores: Vec<Datastore>,
    /// Virtual machines.
    #[serde(default)]
    pub vms: Vec<Vm>,
    /// The backup proxy host's view, a root holding `dev/disk/by-id` (the
    /// LUNs), `dev/sdX` and `sys/block` (HotAdded disks) and
    /// `sys/class/dmi/id/product_uuid` (the proxy VM's identity).
    #[serde(default)]
    pub proxy_host: Option<PathBuf>,
}

fn default_dc() -> String {
    "dc1".into()
}

/// The demo datastore's LUN.
pub const DEMO_LUN: &str = "naa.6000c29a5e8d2b41c3f0a9b7d6e41f02";

/// User and password of the demo inventory.
pub const DEMO_USER: &str = "administrator@vsphere.local";
/// Password of the demo inventory's user (a test fixture, not a secret).
pub const DEMO_PASSWORD: &str = "vddk-rs-demo";

impl Inventory {
    /// Reads an inventory file (JSON); relative datastore paths are made
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut inv: Inventory =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for ds in &mut inv.datastores {
            if ds.path.is_relative() {
                ds.path = base.join(&ds.path);
            }
        }
        if let Some(p) = inv.proxy_host.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
        Ok(inv)
    }

    /// The demo: one datastore under `root`, a VM with a thin sparse disk
    /// and a thick flat disk, CBT on, and a backup proxy VM.
    pub fn demo(root: &Path, mode: Mode) -> Self {
        Inventory {
            mode,
            datacenter: "dc1".into(),
            users: vec![User {
                user: DEMO_USER.into(),
                password: DEMO_PASSWORD.into(),
            }],
            hosts: vec![Host {
                name: "esx1.sim.local".into(),
            }],
            datastores: vec![Datastore {
                name: "datastore1".into(),
                path: root.join("datastore1"),
                lun: Some(LunSpec {
                    id: DEMO_LUN.into(),
                    size: 256 << 20,
                }),
            }],
            proxy_host: Some(root.join("proxy-host")),
            vms: vec![
                Vm {
                    name: "demo-vm".into(),
                    host: Some("esx1.sim.local".into()),
                    power: "poweredOn".into(),
                    uuid: None,
                    disks: vec![
                        Disk {
                            file: "[datastore1] demo-vm/demo-vm.vmdk".into(),
                            capacity: 64 << 20,
                            disk_type: "monolithicSparse".into(),
                            mode: "persistent".into(),
                            create: true,
                        },
                        Disk {
                            file: "[datastore1] demo-vm/demo-vm_1.vmdk".into(),
                            capacity: 32 << 20,
                            disk_type: "vmfs".into(),
                            mode: "persistent".into(),
                            create: true,
                        },
                    ],
                    proxy: false,
                    cbt: true,
                    scsi_controllers: 1,
                },
                Vm {
                    name: "backup-proxy".into(),
                    host: Some("esx1.sim.local".into()),
                    power: "poweredOn".into(),
                    uuid: None,
                    disks: vec![Disk {
                        file: "[datastore1] backup-proxy/backup-proxy.vmdk".into(),
                        capacity: 16 << 20,
                        disk_type: "monolithicSparse".into(),
                        mode: "persistent".into(),
                        create: true,
                    }],
                    proxy: true,
                    cbt: false,
                    scsi_controllers: 2,
                },
            ],
        }
    }
}

/// Splits `[datastore name] dir/file.vmdk`.
pub fn split_datastore_path(p: &str) -> Option<(&str, &str)> {
    let rest = p.trim().strip_prefix('[')?;
    let (ds, path) = rest.split_once(']')?;
    Some((ds, path.trim_start()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datastore_paths() {
        assert_eq!(
            split_datastore_path("[datastore 1@x ü] vm dir/disk.vmdk"),
            Some(("datastore 1@x ü", "vm dir/disk.vmdk"))
        );
        assert_eq!(split_datastore_path("no brackets"), None);
    }
}
