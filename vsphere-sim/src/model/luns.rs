//! SAN LUNs: their state and images, the proxy host, and the simulator's
//! `SimQueryDiskBlockMap` answer.

use std::path::{Path, PathBuf};

use vim_soap::codec::{self, MoRef};
use vim_soap::xml::Element;
use vim_soap::FaultKind;

use crate::san::{self, LunState};

use super::dispatch::{arg_num, this};
use super::state::{fault, ChangedOnDrop, Reply, Shared};

impl Shared {
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

    pub(super) fn block_map(&self, el: &Element) -> Reply {
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
}
