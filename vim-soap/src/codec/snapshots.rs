//! Snapshots: `CreateSnapshot_Task`, `RemoveSnapshot_Task`,
//! `ConsolidateVMDisks_Task` and the snapshot tree.

#[cfg(feature = "server")]
use std::fmt::Write as _;

use crate::xml::Element;
use crate::{Error, Result};

use super::envelope::{req_moref, request, tag, MoRef, Namespace, Request};

/// `CreateSnapshot_Task`.
pub fn create_snapshot_task(
    vm: &MoRef,
    name: &str,
    description: &str,
    memory: bool,
    quiesce: bool,
) -> Request {
    let p = format!(
        "{}{}<memory>{memory}</memory><quiesce>{quiesce}</quiesce>",
        tag("name", name),
        tag("description", description)
    );
    request(Namespace::Vim25, "CreateSnapshot_Task", vm, &p)
}

/// `RemoveSnapshot_Task`.
pub fn remove_snapshot_task(snapshot: &MoRef, remove_children: bool, consolidate: bool) -> Request {
    let p = format!("<removeChildren>{remove_children}</removeChildren><consolidate>{consolidate}</consolidate>");
    request(Namespace::Vim25, "RemoveSnapshot_Task", snapshot, &p)
}

/// `ConsolidateVMDisks_Task`.
pub fn consolidate_vm_disks_task(vm: &MoRef) -> Request {
    request(Namespace::Vim25, "ConsolidateVMDisks_Task", vm, "")
}

/// A node of a VM's snapshot tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotNode {
    /// The snapshot.
    pub snapshot: MoRef,
    /// Name.
    pub name: String,
    /// Children.
    pub children: Vec<SnapshotNode>,
}

/// Reads `snapshot.rootSnapshotList` (`ArrayOfVirtualMachineSnapshotTree`).
pub fn snapshot_tree(val: &Element) -> Result<Vec<SnapshotNode>> {
    fn node(e: &Element, depth: usize) -> Result<SnapshotNode> {
        if depth > 256 {
            return Err(Error::Malformed("snapshot tree too deep".into()));
        }
        Ok(SnapshotNode {
            snapshot: req_moref(e, "snapshot")?,
            name: e.child_text("name").unwrap_or_default().to_string(),
            children: e
                .children_named("childSnapshotList")
                .map(|c| node(c, depth + 1))
                .collect::<Result<_>>()?,
        })
    }
    val.children.iter().map(|c| node(c, 0)).collect()
}

/// Serialises a snapshot tree (server side).
#[cfg(feature = "server")]
pub fn snapshot_tree_xml(nodes: &[SnapshotNode]) -> String {
    fn node(n: &SnapshotNode, tagname: &str, out: &mut String) {
        let _ = write!(
            out,
            "<{tagname} xsi:type=\"VirtualMachineSnapshotTree\">{}{}",
            n.snapshot.xml("snapshot"),
            tag("name", &n.name)
        );
        for c in &n.children {
            node(c, "childSnapshotList", out);
        }
        let _ = write!(out, "</{tagname}>");
    }
    let mut s = String::from("<val xsi:type=\"ArrayOfVirtualMachineSnapshotTree\">");
    for n in nodes {
        node(n, "VirtualMachineSnapshotTree", &mut s);
    }
    s.push_str("</val>");
    s
}
