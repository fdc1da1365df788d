//! Changed-block tracking queries: `QueryChangedDiskAreas`.

use cbt::{Extent, ExtentList};
use vim_soap::codec::{self, MoRef};
use vim_soap::xml::Element;
use vim_soap::FaultKind;
use vmdk_file::local::{AllocKind, LocalDisk, OpenOptions};

use super::dispatch::{arg, arg_num, this};
use super::state::{fault, Reply, Shared};

impl Shared {
    pub(super) fn qcda(&self, el: &Element) -> Reply {
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
        // Whole tracking blocks, as ESXi reports them (never past the
        // disk's end, which is whole sectors).
        let block = self.opts.cbt_block.max(512);
        let areas = changed.align(block).clip(d.capacity).intersection(&window);
        let info = codec::DiskChangeInfo {
            start_offset: start,
            length: end - start,
            changed_area: areas.iter().map(|e| (e.start, e.len)).collect(),
        };
        Ok(codec::disk_change_info_xml(&info))
    }
}
