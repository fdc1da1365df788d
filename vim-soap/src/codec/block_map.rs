//! The simulator's `SimQueryDiskBlockMap` (a model, not a vSphere API):
//! where a disk's bytes lie on its LUN.

use std::fmt::Write as _;

use crate::xml::Element;
use crate::Result;

#[cfg(feature = "server")]
use super::envelope::tag;
use super::envelope::{num, req_text, request, returnval, MoRef, Namespace, Request};

/// Name of the simulator's block-map call (see [`sim_query_disk_block_map`]).
pub const SIM_QUERY_DISK_BLOCK_MAP: &str = "SimQueryDiskBlockMap";

/// `SimQueryDiskBlockMap`: where a disk's bytes lie on its LUN.
///
/// **A model, not a vSphere API.** VMware's SAN transport learns a disk's
/// LUN and block layout through internal, undocumented host interfaces
/// (VMFS metadata). This call stands in for them so the SAN transport can
/// be tested against the simulator; a real vCenter answers it with a
/// `MethodNotFound`-style fault, and the SAN transport then declines.
pub fn sim_query_disk_block_map(vm: &MoRef, snapshot: Option<&MoRef>, device_key: i32) -> Request {
    let mut p = String::new();
    if let Some(s) = snapshot {
        p.push_str(&s.xml("snapshot"));
    }
    let _ = write!(p, "<deviceKey>{device_key}</deviceKey>");
    request(Namespace::Vim25, SIM_QUERY_DISK_BLOCK_MAP, vm, &p)
}

/// One piece of a disk on its LUN (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMapExtent {
    /// Offset in the virtual disk.
    pub virtual_offset: u64,
    /// Offset on the LUN.
    pub lun_offset: u64,
    /// Length.
    pub length: u64,
}

/// The answer of `SimQueryDiskBlockMap`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskBlockMap {
    /// The LUN's NAA id, e.g. `naa.6000c2912345678`.
    pub lun_id: String,
    /// Virtual disk size in bytes.
    pub capacity: u64,
    /// Thin provisioned (blocks are allocated by the host on first write).
    pub thin: bool,
    /// The file is a redo log (a snapshot's delta), not the base disk.
    pub redo_log: bool,
    /// The extents of the base disk on the LUN.
    pub extents: Vec<BlockMapExtent>,
}

/// Parses a `SimQueryDiskBlockMapResponse`.
pub fn parse_disk_block_map(resp: &Element) -> Result<DiskBlockMap> {
    let r = returnval(resp)?;
    let mut extents = Vec::new();
    for e in r.children_named("extent") {
        extents.push(BlockMapExtent {
            virtual_offset: num(e, "virtualOffset")?,
            lun_offset: num(e, "lunOffset")?,
            length: num(e, "length")?,
        });
    }
    Ok(DiskBlockMap {
        lun_id: req_text(r, "lunId")?.to_string(),
        capacity: num(r, "capacity")?,
        thin: r.child_text("thin") == Some("true"),
        redo_log: r.child_text("redoLog") == Some("true"),
        extents,
    })
}

/// Serialises a `DiskBlockMap` returnval (server side).
#[cfg(feature = "server")]
pub fn disk_block_map_xml(m: &DiskBlockMap) -> String {
    let mut s = format!(
        "<returnval>{}<capacity>{}</capacity><thin>{}</thin><redoLog>{}</redoLog>",
        tag("lunId", &m.lun_id),
        m.capacity,
        m.thin,
        m.redo_log
    );
    for e in &m.extents {
        let _ = write!(
            s,
            "<extent><virtualOffset>{}</virtualOffset><lunOffset>{}</lunOffset><length>{}</length></extent>",
            e.virtual_offset, e.lun_offset, e.length
        );
    }
    s.push_str("</returnval>");
    s
}
