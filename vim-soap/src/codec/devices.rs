//! Virtual devices: the disks and controllers of a VM configuration, and
//! `ReconfigVM_Task` adding or removing disks.

use std::fmt::Write as _;

#[cfg(feature = "server")]
use crate::xml::escape;
use crate::xml::Element;
use crate::{Error, Result};

use super::envelope::{num, req_text, request, tag, MoRef, Namespace, Request};

/// A virtual disk as `ReconfigVM_Task` adds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Device key (negative for a new device).
    pub key: i32,
    /// `[datastore] dir/file.vmdk`.
    pub file_name: String,
    /// `persistent`, `independent_persistent`, ...
    pub disk_mode: String,
    /// Controller device key.
    pub controller_key: i32,
    /// Unit number on the controller.
    pub unit_number: i32,
}

/// One `deviceChange` of a `ReconfigVM_Task`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceChange {
    /// Attach an existing disk file.
    AddDisk(DiskSpec),
    /// Detach the disk with this device key (the file stays).
    RemoveDisk(i32),
}

/// `VirtualMachineConfigSpec`, the parts a disk kit uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSpec {
    /// Turn changed-block tracking on or off.
    pub change_tracking: Option<bool>,
    /// Device changes.
    pub device_changes: Vec<DeviceChange>,
}

/// `ReconfigVM_Task`.
pub fn reconfig_vm_task(vm: &MoRef, spec: &ConfigSpec) -> Request {
    let mut p = String::from("<spec>");
    if let Some(c) = spec.change_tracking {
        let _ = write!(p, "<changeTrackingEnabled>{c}</changeTrackingEnabled>");
    }
    for d in &spec.device_changes {
        match d {
            DeviceChange::AddDisk(s) => {
                let _ = write!(
                    p,
                    "<deviceChange><operation>add</operation><device xsi:type=\"VirtualDisk\"><key>{}</key><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">{}{}</backing><controllerKey>{}</controllerKey><unitNumber>{}</unitNumber></device></deviceChange>",
                    s.key,
                    tag("fileName", &s.file_name),
                    tag("diskMode", &s.disk_mode),
                    s.controller_key,
                    s.unit_number
                );
            }
            DeviceChange::RemoveDisk(key) => {
                let _ = write!(p, "<deviceChange><operation>remove</operation><device xsi:type=\"VirtualDisk\"><key>{key}</key></device></deviceChange>");
            }
        }
    }
    p.push_str("</spec>");
    request(Namespace::Vim25, "ReconfigVM_Task", vm, &p)
}

/// A virtual disk device of a VM or snapshot configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualDiskInfo {
    /// Device key.
    pub key: i32,
    /// `[datastore] dir/file.vmdk`.
    pub file_name: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// `persistent`, `independent_persistent`, `independent_nonpersistent`, ...
    pub disk_mode: String,
    /// Thin provisioned.
    pub thin: bool,
    /// CBT change id of this configuration, when CBT is on.
    pub change_id: Option<String>,
    /// Backing UUID.
    pub uuid: Option<String>,
    /// Controller key.
    pub controller_key: i32,
    /// Unit number.
    pub unit_number: i32,
}

impl VirtualDiskInfo {
    /// Independent disks are not part of snapshots (and not backed up).
    pub fn is_independent(&self) -> bool {
        self.disk_mode.starts_with("independent")
    }
}

/// The disks in an `ArrayOfVirtualDevice` value.
pub fn virtual_disks(val: &Element) -> Result<Vec<VirtualDiskInfo>> {
    let mut out = Vec::new();
    for d in &val.children {
        if d.xsi_type() != Some("VirtualDisk") {
            continue;
        }
        let b = d
            .child("backing")
            .ok_or_else(|| Error::Malformed("VirtualDisk without backing".into()))?;
        let capacity = match d.child_text("capacityInBytes") {
            Some(t) => t
                .parse()
                .map_err(|_| Error::Malformed("capacityInBytes".into()))?,
            None => num::<u64>(d, "capacityInKB")? * 1024,
        };
        out.push(VirtualDiskInfo {
            key: num(d, "key")?,
            file_name: req_text(b, "fileName")?.to_string(),
            capacity,
            disk_mode: b.child_text("diskMode").unwrap_or("persistent").to_string(),
            thin: b.child_text("thinProvisioned") == Some("true"),
            change_id: b.child_text("changeId").map(str::to_string),
            uuid: b.child_text("uuid").map(str::to_string),
            controller_key: d
                .child_text("controllerKey")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            unit_number: d
                .child_text("unitNumber")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
        });
    }
    Ok(out)
}

/// Serialises disks as an `ArrayOfVirtualDevice` value (server side).
#[cfg(feature = "server")]
pub fn virtual_disks_xml(disks: &[VirtualDiskInfo]) -> String {
    let mut s = String::from("<val xsi:type=\"ArrayOfVirtualDevice\">");
    for d in disks {
        let _ = write!(
            s,
            "<VirtualDevice xsi:type=\"VirtualDisk\"><key>{}</key><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">{}{}<thinProvisioned>{}</thinProvisioned>{}{}</backing><controllerKey>{}</controllerKey><unitNumber>{}</unitNumber><capacityInKB>{}</capacityInKB><capacityInBytes>{}</capacityInBytes></VirtualDevice>",
            d.key,
            tag("fileName", &d.file_name),
            tag("diskMode", &d.disk_mode),
            d.thin,
            d.uuid.as_deref().map(|u| tag("uuid", u)).unwrap_or_default(),
            d.change_id.as_deref().map(|c| tag("changeId", c)).unwrap_or_default(),
            d.controller_key,
            d.unit_number,
            d.capacity / 1024,
            d.capacity
        );
    }
    s.push_str("</val>");
    s
}

/// What kind of controller a device hangs off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerKind {
    /// A SCSI controller (LSI Logic, LSI Logic SAS, BusLogic, ParaVirtual):
    /// units 0–15, unit 7 is the controller's own.
    Scsi,
    /// An IDE controller (no hot add).
    Ide,
    /// Anything else (SATA, NVMe, ...), by its type name.
    Other(String),
}

/// A disk controller of a VM configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualController {
    /// Device key.
    pub key: i32,
    /// Bus number (SCSI0, SCSI1, ... in this order).
    pub bus_number: i32,
    /// Kind.
    pub kind: ControllerKind,
    /// The `xsi:type` as sent, e.g. `ParaVirtualSCSIController`.
    pub type_name: String,
}

const SCSI_CONTROLLERS: [&str; 4] = [
    "ParaVirtualSCSIController",
    "VirtualLsiLogicController",
    "VirtualLsiLogicSASController",
    "VirtualBusLogicController",
];

/// The controllers in an `ArrayOfVirtualDevice` value (anything with a
/// `busNumber`).
pub fn virtual_controllers(val: &Element) -> Result<Vec<VirtualController>> {
    let mut out = Vec::new();
    for d in &val.children {
        let Some(t) = d.xsi_type() else { continue };
        if d.child("busNumber").is_none() {
            continue;
        }
        let kind = if SCSI_CONTROLLERS.contains(&t) || t == "VirtualSCSIController" {
            ControllerKind::Scsi
        } else if t == "VirtualIDEController" {
            ControllerKind::Ide
        } else {
            ControllerKind::Other(t.to_string())
        };
        out.push(VirtualController {
            key: num(d, "key")?,
            bus_number: num(d, "busNumber")?,
            kind,
            type_name: t.to_string(),
        });
    }
    Ok(out)
}

/// Serialises controllers and disks as one `ArrayOfVirtualDevice` value
/// (server side), controllers first, in the order given.
#[cfg(feature = "server")]
pub fn virtual_devices_xml(controllers: &[VirtualController], disks: &[VirtualDiskInfo]) -> String {
    let disks_xml = virtual_disks_xml(disks);
    let mut s = String::from("<val xsi:type=\"ArrayOfVirtualDevice\">");
    for c in controllers {
        let _ = write!(
            s,
            "<VirtualDevice xsi:type=\"{}\"><key>{}</key><busNumber>{}</busNumber></VirtualDevice>",
            escape(&c.type_name),
            c.key,
            c.bus_number
        );
    }
    s.push_str(
        disks_xml
            .strip_prefix("<val xsi:type=\"ArrayOfVirtualDevice\">")
            .unwrap_or(&disks_xml),
    );
    s
}
