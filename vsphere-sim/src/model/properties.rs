//! The property collector: `RetrievePropertiesEx` and its paging, and the
//! properties of each object.

use std::collections::HashMap;

use vim_soap::codec::{self, MoRef, SnapshotNode, VirtualDiskInfo};
use vim_soap::xml::{escape, Element};
use vim_soap::FaultKind;

use super::dispatch::arg_moref;
use super::state::{
    fault, not_found, random_hex, Fault, Reply, Shared, SimSnapshot, SimVm, State, Watched,
};

impl Shared {
    fn disk_infos(&self, v: &SimVm, snapshot: Option<&SimSnapshot>) -> Vec<VirtualDiskInfo> {
        v.disks
            .iter()
            .filter_map(|d| {
                let (file, seq) = match snapshot {
                    Some(s) => {
                        let (_, f, seq) = s.disks.iter().find(|(k, _, _)| *k == d.key)?;
                        (f.clone(), *seq)
                    }
                    None => (d.running().to_path_buf(), d.cbt.current),
                };
                Some(VirtualDiskInfo {
                    key: d.key,
                    file_name: self.datastore_name(&file),
                    capacity: d.capacity,
                    disk_mode: d.mode.clone(),
                    thin: d.thin,
                    change_id: d.cbt.enabled.then(|| d.cbt.change_id(seq)),
                    uuid: Some(d.uuid.clone()),
                    controller_key: d.controller_key,
                    unit_number: d.unit,
                })
            })
            .collect()
    }

    fn config_xml(&self, v: &SimVm, snapshot: Option<&SimSnapshot>) -> String {
        let cbt = v.disks.iter().any(|d| d.cbt.enabled);
        let devices = codec::virtual_devices_xml(&v.controllers, &self.disk_infos(v, snapshot));
        let devices = devices.replacen("<val xsi:type=\"ArrayOfVirtualDevice\">", "", 1);
        let devices = devices.strip_suffix("</val>").unwrap_or(&devices);
        format!(
            "<val xsi:type=\"VirtualMachineConfigInfo\"><name>{}</name><uuid>{}</uuid><instanceUuid>{}</instanceUuid><changeTrackingEnabled>{cbt}</changeTrackingEnabled><hardware><numCPU>1</numCPU><memoryMB>1024</memoryMB>{}</hardware></val>",
            escape(&v.name),
            escape(&v.uuid),
            escape(&instance_uuid(&v.uuid)),
            devices.replace("<VirtualDevice ", "<device ").replace("</VirtualDevice>", "</device>")
        )
    }

    pub(super) fn object_props(
        &self,
        st: &State,
        obj: &MoRef,
        paths: &[String],
    ) -> Result<Vec<(String, String)>, Fault> {
        let mut out = Vec::new();
        let dc = &self.inv.datacenter;
        for p in paths {
            let val = match (obj.kind.as_str(), p.as_str()) {
                ("Folder", "childEntity") if obj.value == "group-d1" => Some("<val xsi:type=\"ArrayOfManagedObjectReference\"><ManagedObjectReference type=\"Datacenter\" xsi:type=\"ManagedObjectReference\">datacenter-1</ManagedObjectReference></val>".to_string()),
                ("Folder", "childEntity") if obj.value == "group-v1" => {
                    let mut s = String::from("<val xsi:type=\"ArrayOfManagedObjectReference\">");
                    for v in st.vms.values() {
                        s.push_str(&format!("<ManagedObjectReference type=\"VirtualMachine\" xsi:type=\"ManagedObjectReference\">{}</ManagedObjectReference>", v.moref));
                    }
                    s.push_str("</val>");
                    Some(s)
                }
                ("Folder", "parent") if obj.value == "group-v1" => Some(codec::moref_val(&MoRef::new("Datacenter", "datacenter-1"))),
                ("Datacenter", "parent") => Some(codec::moref_val(&MoRef::new("Folder", "group-d1"))),
                ("Folder", "name") => Some(codec::simple_val("string", if obj.value == "group-d1" { "Datacenters" } else { "vm" })),
                ("Datacenter", "vmFolder") => Some(codec::moref_val(&MoRef::new("Folder", "group-v1"))),
                ("Datacenter", "name") => Some(codec::simple_val("string", dc)),
                ("Folder", _) | ("Datacenter", _) => None,
                ("ContainerView", "view") => {
                    let types = st.views.get(&obj.value).ok_or_else(|| not_found("ContainerView", &obj.value))?;
                    let mut s = String::from("<val xsi:type=\"ArrayOfManagedObjectReference\">");
                    if types.iter().any(|t| t == "VirtualMachine") {
                        for v in st.vms.values() {
                            s.push_str(&format!("<ManagedObjectReference type=\"VirtualMachine\" xsi:type=\"ManagedObjectReference\">{}</ManagedObjectReference>", v.moref));
                        }
                    }
                    if types.iter().any(|t| t == "HostSystem") {
                        s.push_str("<ManagedObjectReference type=\"HostSystem\" xsi:type=\"ManagedObjectReference\">host-1</ManagedObjectReference>");
                    }
                    s.push_str("</val>");
                    Some(s)
                }
                ("HostSystem", "name") if obj.value == "host-1" => Some(codec::simple_val("string", &self.host_name())),
                ("HostSystem", "parent") if obj.value == "host-1" => Some(codec::moref_val(&MoRef::new("Folder", "group-h1"))),
                ("HostSystem", _) if obj.value == "host-1" => None,
                ("Task", "info") => {
                    let t = st.tasks.get(&obj.value).ok_or_else(|| not_found("Task", &obj.value))?;
                    Some(codec::task_info_xml(t))
                }
                ("VirtualMachine", path) => {
                    let v = st.vm(&obj.value)?;
                    match path {
                        "name" | "config.name" => Some(codec::simple_val("string", &v.name)),
                        "parent" => Some(codec::moref_val(&MoRef::new("Folder", "group-v1"))),
                        "config.uuid" => Some(codec::simple_val("string", &v.uuid)),
                        "config.instanceUuid" => Some(codec::simple_val("string", &instance_uuid(&v.uuid))),
                        "config.hardware.device" => Some(codec::virtual_devices_xml(&v.controllers, &self.disk_infos(v, None))),
                        "config.changeTrackingEnabled" => Some(codec::simple_val("boolean", &v.disks.iter().any(|d| d.cbt.enabled).to_string())),
                        "config" => Some(self.config_xml(v, None)),
                        "runtime.host" => Some(codec::moref_val(&MoRef::new("HostSystem", "host-1"))),
                        "runtime" => Some(format!("<val xsi:type=\"VirtualMachineRuntimeInfo\"><host type=\"HostSystem\">host-1</host><connectionState>connected</connectionState><powerState>{}</powerState></val>", v.power)),
                        "runtime.powerState" => Some(format!("<val xsi:type=\"VirtualMachinePowerState\">{}</val>", v.power)),
                        "summary.config.template" => Some(codec::simple_val("boolean", "false")),
                        "snapshot.rootSnapshotList" => {
                            if v.snapshots.is_empty() {
                                None
                            } else {
                                // A linear chain: each snapshot the child of the previous.
                                let mut node: Option<SnapshotNode> = None;
                                for s in v.snapshots.iter().rev() {
                                    node = Some(SnapshotNode { snapshot: MoRef::new("VirtualMachineSnapshot", &s.moref), name: s.name.clone(), children: node.into_iter().collect() });
                                }
                                Some(codec::snapshot_tree_xml(&node.into_iter().collect::<Vec<_>>()))
                            }
                        }
                        // The whole VirtualMachineSnapshotInfo (govmomi
                        // finds snapshots by name through it).
                        "snapshot" => v.snapshots.last().map(|cur| {
                            let mut node: Option<SnapshotNode> = None;
                            for s in v.snapshots.iter().rev() {
                                node = Some(SnapshotNode { snapshot: MoRef::new("VirtualMachineSnapshot", &s.moref), name: s.name.clone(), children: node.into_iter().collect() });
                            }
                            let tree = codec::snapshot_tree_xml(&node.into_iter().collect::<Vec<_>>());
                            let roots = tree
                                .strip_prefix("<val xsi:type=\"ArrayOfVirtualMachineSnapshotTree\">")
                                .and_then(|t| t.strip_suffix("</val>"))
                                .unwrap_or_default()
                                .replace("<VirtualMachineSnapshotTree ", "<rootSnapshotList ")
                                .replace("</VirtualMachineSnapshotTree>", "</rootSnapshotList>");
                            format!(
                                "<val xsi:type=\"VirtualMachineSnapshotInfo\"><currentSnapshot type=\"VirtualMachineSnapshot\">{}</currentSnapshot>{roots}</val>",
                                escape(&cur.moref)
                            )
                        }),
                        "snapshot.currentSnapshot" => v.snapshots.last().map(|s| codec::moref_val(&MoRef::new("VirtualMachineSnapshot", &s.moref))),
                        "simulator.proxy" => Some(codec::simple_val("boolean", &v.proxy.to_string())),
                        _ => None,
                    }
                }
                ("VirtualMachineSnapshot", path) => {
                    let v = st.snapshot_owner(&obj.value)?;
                    let s = v.snapshots.iter().find(|s| s.moref == obj.value).ok_or_else(|| not_found("VirtualMachineSnapshot", &obj.value))?;
                    match path {
                        "name" => Some(codec::simple_val("string", &s.name)),
                        "config.hardware.device" => Some(codec::virtual_devices_xml(&v.controllers, &self.disk_infos(v, Some(s)))),
                        "config" => Some(self.config_xml(v, Some(s))),
                        "vm" => Some(codec::moref_val(&MoRef::new("VirtualMachine", &v.moref))),
                        _ => None,
                    }
                }
                (kind, _) => return Err(not_found(kind, &obj.value)),
            };
            if let Some(v) = val {
                out.push((p.clone(), v));
            }
        }
        Ok(out)
    }

    pub(super) fn retrieve(&self, el: &Element) -> Reply {
        let max = el
            .path(&["options", "maxObjects"])
            .and_then(|m| m.text.trim().parse::<usize>().ok())
            .unwrap_or(100)
            .max(1);
        let objects = self.collect(el)?;
        Ok(self.page(objects, max))
    }

    /// `RetrieveProperties` (the old form govmomi's finder uses): every
    /// object content as a `returnval` of its own, unpaged.
    pub(super) fn retrieve_unpaged(&self, el: &Element) -> Reply {
        Ok(self
            .collect(el)?
            .into_iter()
            .map(|o| {
                let inner = o
                    .strip_prefix("<objects>")
                    .and_then(|o| o.strip_suffix("</objects>"))
                    .unwrap_or(&o)
                    .to_string();
                format!("<returnval>{inner}</returnval>")
            })
            .collect())
    }

    /// The object contents a `specSet` asks for: each `objectSet`'s
    /// object (unless `skip`) and what its `selectSet` traversal specs
    /// reach (by `path` from objects of their `type`, `SelectionSpec`s
    /// naming specs anywhere in the set), each with the `propSet` paths
    /// of its type.
    fn collect(&self, el: &Element) -> Result<Vec<String>, Fault> {
        let spec = el.child("specSet").ok_or_else(|| {
            fault(
                FaultKind::InvalidArgument("specSet".into()),
                "missing specSet",
            )
        })?;
        let mut named = HashMap::new();
        for os in spec.children_named("objectSet") {
            name_specs(os, &mut named);
        }
        let st = self.lock();
        let mut found: Vec<MoRef> = Vec::new();
        for os in spec.children_named("objectSet") {
            let obj = arg_moref(os, "obj")?;
            if os.child_text("skip") != Some("true") && !found.contains(&obj) {
                found.push(obj.clone());
            }
            let select: Vec<&Element> = os.children_named("selectSet").collect();
            self.traverse(&st, &obj, &select, &named, &mut found, 0);
        }
        let mut objects = Vec::new();
        for obj in found {
            let paths: Vec<String> = spec
                .children_named("propSet")
                .filter(|p| p.child_text("type") == Some(obj.kind.as_str()))
                .flat_map(|p| {
                    p.children_named("pathSet")
                        .map(|x| x.text.trim().to_string())
                })
                .collect();
            if !spec
                .children_named("propSet")
                .any(|p| p.child_text("type") == Some(obj.kind.as_str()))
            {
                continue; // no propSet for this type: not reported
            }
            let props = self.object_props(&st, &obj, &paths)?;
            objects.push(codec::object_content_xml(&obj, &props));
        }
        Ok(objects)
    }

    fn traverse<'a>(
        &self,
        st: &State,
        obj: &MoRef,
        select: &[&'a Element],
        named: &HashMap<String, &'a Element>,
        found: &mut Vec<MoRef>,
        depth: usize,
    ) {
        if depth > 16 {
            return;
        }
        for sel in select {
            let ts = match sel.child_text("type") {
                Some(_) => *sel,
                None => match sel.child_text("name").and_then(|n| named.get(n)) {
                    Some(ts) => *ts,
                    None => continue,
                },
            };
            if ts.child_text("type") != Some(obj.kind.as_str()) {
                continue;
            }
            let Some(path) = ts.child_text("path") else {
                continue;
            };
            let Ok(props) = self.object_props(st, obj, &[path.to_string()]) else {
                continue;
            };
            let children: Vec<MoRef> = props.iter().flat_map(|(_, v)| morefs_in(v)).collect();
            let next: Vec<&Element> = ts.children_named("selectSet").collect();
            for child in children {
                let seen = found.contains(&child);
                if ts.child_text("skip") != Some("true") && !seen {
                    found.push(child.clone());
                }
                if !seen {
                    self.traverse(st, &child, &next, named, found, depth + 1);
                }
            }
        }
    }

    pub(super) fn page(&self, mut objects: Vec<String>, max: usize) -> String {
        if objects.is_empty() {
            return String::new();
        }
        let rest = if objects.len() > max {
            objects.split_off(max)
        } else {
            Vec::new()
        };
        let mut body = String::from("<returnval>");
        if !rest.is_empty() {
            let token = random_hex(8);
            body.push_str(&format!("<token>{token}</token>"));
            self.lock().pending.insert(token, rest);
        }
        for o in objects {
            body.push_str(&o);
        }
        body.push_str("</returnval>");
        body
    }
}

impl Shared {
    /// The one host the simulator's VMs run on (`host-1`): the
    /// inventory's first host's name, else a made-up one.
    fn host_name(&self) -> String {
        self.inv
            .hosts
            .first()
            .map_or_else(|| "esx-sim.local".to_string(), |h| h.name.clone())
    }
}

impl Shared {
    /// An `UpdateSet` with the current value of everything the filters
    /// of `collector` watch (a full update each time: correct, if not
    /// minimal).
    pub(super) fn update_set(&self, collector: &str) -> Reply {
        let mut st = self.lock();
        st.update_version += 1;
        let version = st.update_version;
        let mut sets = String::new();
        let filters: Vec<(String, Watched)> = st
            .filters
            .iter()
            .filter(|(_, (owner, _))| owner == collector)
            .map(|(k, (_, w))| (k.clone(), w.clone()))
            .collect();
        for (id, watched) in filters {
            let mut objects = String::new();
            for (obj, paths) in watched {
                let paths = if paths.is_empty() && obj.kind == "Task" {
                    vec!["info".to_string()]
                } else {
                    paths
                };
                let props = match self.object_props(&st, &obj, &paths) {
                    Ok(p) => p,
                    Err(_) => continue, // gone: nothing to report
                };
                let changes: String = props
                    .iter()
                    .map(|(name, val)| {
                        format!(
                            "<changeSet><name>{}</name><op>assign</op>{val}</changeSet>",
                            escape(name)
                        )
                    })
                    .collect();
                objects.push_str(&format!(
                    "<objectSet><kind>modify</kind><obj type=\"{}\">{}</obj>{changes}</objectSet>",
                    escape(&obj.kind),
                    escape(&obj.value)
                ));
            }
            sets.push_str(&format!(
                "<filterSet><filter type=\"PropertyFilter\">{}</filter>{objects}</filterSet>",
                escape(&id)
            ));
        }
        Ok(format!(
            "<returnval xsi:type=\"UpdateSet\"><version>{version}</version>{sets}</returnval>"
        ))
    }
}

/// Every `TraversalSpec` with a name, wherever it sits in `el`.
fn name_specs<'a>(el: &'a Element, named: &mut HashMap<String, &'a Element>) {
    for sel in el.children_named("selectSet") {
        if let (Some(name), Some(_)) = (sel.child_text("name"), sel.child_text("type")) {
            named.insert(name.to_string(), sel);
        }
        name_specs(sel, named);
    }
}

/// The managed object references in a property value (one, or an array).
fn morefs_in(val: &str) -> Vec<MoRef> {
    let doc = format!("<r xmlns:xsi=\"{}\">{val}</r>", vim_soap::xml::XSI_NS);
    let Ok(r) = Element::parse(doc.as_bytes()) else {
        return Vec::new();
    };
    let Some(v) = r.children.first() else {
        return Vec::new();
    };
    match MoRef::from_element(v) {
        Some(m) => vec![m],
        None => v.children.iter().filter_map(MoRef::from_element).collect(),
    }
}

/// The VM's vCenter instance UUID: distinct from its BIOS UUID, as on a
/// real vCenter (whose instance UUIDs start with `50`), and stable.
pub(crate) fn instance_uuid(bios: &str) -> String {
    let rest: String = bios.chars().skip(2).collect();
    format!("50{rest}")
}
