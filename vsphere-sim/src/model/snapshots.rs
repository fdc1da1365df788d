//! Snapshots: `CreateSnapshot_Task` and `RemoveSnapshot_Task` on the disk
//! chains.

use std::path::PathBuf;

use vim_soap::codec::MoRef;
use vim_soap::FaultKind;

use super::state::{fault, not_found, ChangedOnDrop, Fault, Shared, SimSnapshot};

impl Shared {
    pub(super) fn create_snapshot(&self, vm: &str, name: &str) -> Result<Option<MoRef>, Fault> {
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
    pub(super) fn remove_snapshot(&self, snap: &str, children: bool) -> Result<(), Fault> {
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
}
