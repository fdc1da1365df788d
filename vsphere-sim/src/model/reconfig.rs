//! Reconfiguration (`ReconfigVM_Task`): changed-block tracking on or off,
//! and disks added or removed (HotAdd).

use vim_soap::codec::ControllerKind;
use vim_soap::xml::Element;
use vim_soap::FaultKind;
use vmdk_file::local::{LocalDisk, OpenOptions};

use crate::san;

use super::dispatch::{arg, arg_num};
use super::state::{disk_uuid, fault, random_epoch, Cbt, ChangedOnDrop, Fault, Shared, SimDisk};

impl Shared {
    pub(super) fn reconfig(&self, vm: &str, spec: &Element) -> Result<(), Fault> {
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
                    let mut written = Vec::new();
                    if let (Some(root), Some(name)) = (&self.inv.proxy_host, &d.device) {
                        // Changes the proxy made reach the disk before it
                        // is detached (never for a non-persistent attach).
                        written = san::detach_device(
                            root,
                            name,
                            d.running(),
                            !d.mode.contains("nonpersistent"),
                        )
                        .map_err(|m| fault(FaultKind::Other("SystemError".into()), m))?;
                    }
                    let file = d.running().to_path_buf();
                    v.disks.remove(pos);
                    // What the proxy wrote is a change of the disk it
                    // belongs to, as ESXi tracks it.
                    for (offset, len) in written {
                        st.record_change(&file, offset, len);
                    }
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
}
