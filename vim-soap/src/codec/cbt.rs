//! Changed-block tracking: `QueryChangedDiskAreas` and its `DiskChangeInfo`.

use std::fmt::Write as _;

use crate::xml::Element;
use crate::Result;

use super::envelope::{num, request, returnval, tag, MoRef, Namespace, Request};

/// `QueryChangedDiskAreas`.
pub fn query_changed_disk_areas(
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    device_key: i32,
    start_offset: u64,
    change_id: &str,
) -> Request {
    let mut p = String::new();
    if let Some(s) = snapshot {
        p.push_str(&s.xml("snapshot"));
    }
    let _ = write!(
        p,
        "<deviceKey>{device_key}</deviceKey><startOffset>{start_offset}</startOffset>{}",
        tag("changeId", change_id)
    );
    request(Namespace::Vim25, "QueryChangedDiskAreas", vm, &p)
}

/// `DiskChangeInfo` (bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskChangeInfo {
    /// Window start.
    pub start_offset: u64,
    /// Window length.
    pub length: u64,
    /// Changed areas `(start, length)`.
    pub changed_area: Vec<(u64, u64)>,
}

/// Parses `QueryChangedDiskAreasResponse`.
pub fn parse_disk_change_info(resp: &Element) -> Result<DiskChangeInfo> {
    let r = returnval(resp)?;
    let mut changed_area = Vec::new();
    for a in r.children_named("changedArea") {
        changed_area.push((num(a, "start")?, num(a, "length")?));
    }
    Ok(DiskChangeInfo {
        start_offset: num(r, "startOffset")?,
        length: num(r, "length")?,
        changed_area,
    })
}

/// Serialises a `DiskChangeInfo` returnval (server side).
#[cfg(feature = "server")]
pub fn disk_change_info_xml(d: &DiskChangeInfo) -> String {
    let mut s = format!(
        "<returnval><startOffset>{}</startOffset><length>{}</length>",
        d.start_offset, d.length
    );
    for (start, len) in &d.changed_area {
        let _ = write!(
            s,
            "<changedArea><start>{start}</start><length>{len}</length></changedArea>"
        );
    }
    s.push_str("</returnval>");
    s
}
