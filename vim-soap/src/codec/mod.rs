//! Requests and responses, both directions, without I/O.
//!
//! One module per call family, every item re-exported here (`codec::X`).
//! The server half (parsing requests, building response envelopes, fault
//! envelopes and response values) needs the `server` feature.

mod block_map;
mod cbt;
mod devices;
mod envelope;
mod faults;
mod files;
mod methods;
mod nfc;
mod properties;
mod search;
mod session;
mod snapshots;
mod tasks;
mod versions;

#[cfg(feature = "server")]
pub use block_map::disk_block_map_xml;
pub use block_map::{
    parse_disk_block_map, sim_query_disk_block_map, BlockMapExtent, DiskBlockMap,
    SIM_QUERY_DISK_BLOCK_MAP,
};
#[cfg(feature = "server")]
pub use cbt::disk_change_info_xml;
pub use cbt::{parse_disk_change_info, query_changed_disk_areas, DiskChangeInfo};
pub use devices::{
    reconfig_vm_task, virtual_controllers, virtual_disks, ConfigSpec, ControllerKind, DeviceChange,
    DiskSpec, VirtualController, VirtualDiskInfo,
};
#[cfg(feature = "server")]
pub use devices::{virtual_devices_xml, virtual_disks_xml};
pub use envelope::{
    is_idempotent, parse_bool, parse_moref, parse_response, parse_string, service_instance, MoRef,
    Namespace, Request, API_VERSION,
};
#[cfg(feature = "server")]
pub use envelope::{parse_request, response_envelope};
#[cfg(feature = "server")]
pub use faults::fault_envelope;
pub use faults::{Fault, FaultKind};
pub use files::{datastore_file_url, percent_decode, split_datastore_path};
pub use methods::{disable_methods, enable_methods, relocate_vm_task};
pub use nfc::{
    nfc_get_vm_files, nfc_random_access_open_disk, parse_host_service_ticket,
    parse_internal_content, retrieve_internal_content, HostServiceTicket, InternalContent,
};
pub use properties::{
    continue_retrieve_properties_ex, parse_retrieve_result, retrieve_properties_ex, ObjectContent,
    PropertyRequest, RetrieveResult,
};
#[cfg(feature = "server")]
pub use properties::{moref_val, object_content_xml, simple_val};
pub use search::{find_by_inventory_path, find_by_uuid};
pub use session::{
    acquire_clone_ticket, acquire_generic_service_ticket, clone_session, login, logout,
    parse_generic_service_ticket, parse_service_content, parse_user_session,
    retrieve_service_content, session_is_active, About, GenericServiceTicket, ServiceContent,
    ServiceRequestSpec, UserSession,
};
#[cfg(feature = "server")]
pub use snapshots::snapshot_tree_xml;
pub use snapshots::{
    consolidate_vm_disks_task, create_snapshot_task, remove_snapshot_task, snapshot_tree,
    SnapshotNode,
};
#[cfg(feature = "server")]
pub use tasks::task_info_xml;
pub use tasks::{task_info, TaskInfo, TaskState};
pub use versions::{negotiate_version, SUPPORTED_VERSIONS};

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;
    use crate::xml::Element;
    use crate::{Error, Secret};

    /// A response value as it sits in an envelope, which binds `xsi` and
    /// `xsd` (the `*_xml` writers make fragments for the envelope).
    fn fragment(xml: &str) -> Element {
        let doc = format!(
            r#"<r xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">{xml}</r>"#
        );
        let mut r = Element::parse(doc.as_bytes()).unwrap();
        r.children.remove(0)
    }

    fn sm() -> MoRef {
        MoRef::new("SessionManager", "SessionManager")
    }

    /// The expected XML of each request, in vSphere's dialect.
    #[test]
    fn request_xml() {
        let r = login(&sm(), "administrator@vsphere.local", &Secret::new("p&ss"));
        assert_eq!(r.soap_action, "urn:vim25/8.0.1.0");
        assert!(r.body.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/""#));
        assert!(r.body.contains(r#"<soapenv:Body><Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><userName>administrator@vsphere.local</userName><password>p&amp;ss</password></Login></soapenv:Body></soapenv:Envelope>"#));
        assert!(
            format!("{r:?}").contains("p&amp;ss"),
            "Request bodies are for the wire; Secret is what redacts"
        );

        let r = retrieve_service_content();
        assert!(r.body.contains(r#"<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>"#));

        let vm = MoRef::new("VirtualMachine", "vm-42");
        let snap = MoRef::new("VirtualMachineSnapshot", "snapshot-7");
        let r = query_changed_disk_areas(&vm, Some(&snap), 2000, 0, "52 de c0 d9/3");
        assert!(r.body.contains(r#"<QueryChangedDiskAreas xmlns="urn:vim25"><_this type="VirtualMachine">vm-42</_this><snapshot type="VirtualMachineSnapshot">snapshot-7</snapshot><deviceKey>2000</deviceKey><startOffset>0</startOffset><changeId>52 de c0 d9/3</changeId></QueryChangedDiskAreas>"#), "{}", r.body);

        let am = MoRef::new("AuthorizationManager", "AuthorizationManager");
        let r = disable_methods(
            &am,
            std::slice::from_ref(&vm),
            &["RelocateVM_Task"],
            "vddk-rs backup",
            false,
        );
        assert_eq!(r.soap_action, "urn:internalvim25/8.0.1.0");
        assert!(r.body.contains(r#"<DisableMethods xmlns="urn:internalvim25"><_this type="AuthorizationManager">AuthorizationManager</_this><entity type="VirtualMachine">vm-42</entity><method><method>RelocateVM_Task</method><reasonId>vddk-rs backup</reasonId></method><sourceId>vddk-rs backup</sourceId></DisableMethods>"#), "{}", r.body);
        let r = enable_methods(&am, std::slice::from_ref(&vm), &["RelocateVM_Task"], "x");
        assert!(r.body.contains(r#"<entity type="VirtualMachine">vm-42</entity><method>RelocateVM_Task</method><sourceId>x</sourceId>"#));

        let r = reconfig_vm_task(
            &vm,
            &ConfigSpec {
                change_tracking: Some(true),
                device_changes: vec![DeviceChange::AddDisk(DiskSpec {
                    key: -1,
                    file_name: "[ds 1@x] vm/d.vmdk".into(),
                    disk_mode: "independent_persistent".into(),
                    controller_key: 1000,
                    unit_number: 3,
                })],
            },
        );
        assert!(r.body.contains(r#"<spec><changeTrackingEnabled>true</changeTrackingEnabled><deviceChange><operation>add</operation><device xsi:type="VirtualDisk"><key>-1</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds 1@x] vm/d.vmdk</fileName>"#), "{}", r.body);

        let r = acquire_generic_service_ticket(
            &sm(),
            &ServiceRequestSpec::Http {
                method: "httpGet".into(),
                url: "https://h/folder?a=1&b=2".into(),
            },
        );
        assert!(r.body.contains(r#"<spec xsi:type="SessionManagerHttpServiceRequestSpec"><method>httpGet</method><url>https://h/folder?a=1&amp;b=2</url></spec>"#));

        let pc = MoRef::new("PropertyCollector", "propertyCollector");
        let r = retrieve_properties_ex(
            &pc,
            &[PropertyRequest {
                obj: vm.clone(),
                paths: vec!["config.hardware.device".into(), "name".into()],
            }],
            Some(100),
        );
        assert!(r.body.contains(r#"<specSet><propSet><type>VirtualMachine</type><pathSet>config.hardware.device</pathSet><pathSet>name</pathSet></propSet><objectSet><obj type="VirtualMachine">vm-42</obj><skip>false</skip></objectSet></specSet><options><maxObjects>100</maxObjects></options>"#), "{}", r.body);

        for r in [
            logout(&sm()),
            session_is_active(&sm(), "k", "u"),
            acquire_clone_ticket(&sm()),
            clone_session(&sm(), &Secret::new("t")),
            retrieve_internal_content(),
            find_by_inventory_path(&MoRef::new("SearchIndex", "SearchIndex"), "dc/vm/My VM"),
            find_by_uuid(&MoRef::new("SearchIndex", "SearchIndex"), "4201", false),
            continue_retrieve_properties_ex(&pc, "tok"),
            create_snapshot_task(&vm, "backup <1>", "", false, true),
            remove_snapshot_task(&snap, false, true),
            consolidate_vm_disks_task(&vm),
            relocate_vm_task(&vm, &MoRef::new("Datastore", "datastore-1")),
        ] {
            let (name, _) = parse_request(r.body.as_bytes()).unwrap();
            assert_eq!(name, r.method);
        }
        assert!(create_snapshot_task(&vm, "backup <1>", "", false, true)
            .body
            .contains("<name>backup &lt;1&gt;</name>"));
    }

    #[test]
    fn responses_round_trip() {
        let disks = vec![VirtualDiskInfo {
            key: 2000,
            file_name: "[datastore @ 1] vm/vm.vmdk".into(),
            capacity: 1 << 30,
            disk_mode: "persistent".into(),
            thin: true,
            change_id: Some("52 00/1".into()),
            uuid: Some("6000".into()),
            controller_key: 1000,
            unit_number: 0,
        }];
        let obj = MoRef::new("VirtualMachine", "vm-1");
        let props = vec![
            (
                "config.hardware.device".to_string(),
                virtual_disks_xml(&disks),
            ),
            ("name".into(), simple_val("string", "VM <1>")),
        ];
        let body = response_envelope(
            "RetrievePropertiesEx",
            &format!(
                "<returnval><token>t1</token>{}</returnval>",
                object_content_xml(&obj, &props)
            ),
        );
        let r = parse_retrieve_result(&parse_response(body.as_bytes()).unwrap()).unwrap();
        assert_eq!(r.token.as_deref(), Some("t1"));
        assert_eq!(r.objects[0].obj, obj);
        assert_eq!(
            virtual_disks(r.objects[0].prop("config.hardware.device").unwrap()).unwrap(),
            disks
        );
        assert_eq!(r.objects[0].prop("name").unwrap().text, "VM <1>");

        let info = TaskInfo {
            task: MoRef::new("Task", "task-1"),
            state: TaskState::Error,
            result: None,
            error: Some(Fault {
                kind: FaultKind::InvalidState,
                message: "no".into(),
            }),
        };
        let val = fragment(&task_info_xml(&info));
        assert_eq!(task_info(&val).unwrap(), info);

        let tree = vec![SnapshotNode {
            snapshot: MoRef::new("VirtualMachineSnapshot", "snapshot-1"),
            name: "a".into(),
            children: vec![SnapshotNode {
                snapshot: MoRef::new("VirtualMachineSnapshot", "snapshot-2"),
                name: "b".into(),
                children: vec![],
            }],
        }];
        assert_eq!(
            snapshot_tree(&fragment(&snapshot_tree_xml(&tree))).unwrap(),
            tree
        );

        let dci = DiskChangeInfo {
            start_offset: 0,
            length: 1 << 20,
            changed_area: vec![(0, 512), (4096, 8192)],
        };
        let body = response_envelope("QueryChangedDiskAreas", &disk_change_info_xml(&dci));
        assert_eq!(
            parse_disk_change_info(&parse_response(body.as_bytes()).unwrap()).unwrap(),
            dci
        );

        let map = DiskBlockMap {
            lun_id: "naa.6000c29a1b2c3d4e".into(),
            capacity: 1 << 30,
            thin: true,
            redo_log: false,
            extents: vec![BlockMapExtent {
                virtual_offset: 0,
                lun_offset: 1 << 20,
                length: 1 << 30,
            }],
        };
        let body = response_envelope(SIM_QUERY_DISK_BLOCK_MAP, &disk_block_map_xml(&map));
        assert_eq!(
            parse_disk_block_map(&parse_response(body.as_bytes()).unwrap()).unwrap(),
            map
        );
        let vm42 = MoRef::new("VirtualMachine", "vm-42");
        let r = sim_query_disk_block_map(&vm42, None, 2001);
        assert!(r.body.contains(r#"<SimQueryDiskBlockMap xmlns="urn:vim25"><_this type="VirtualMachine">vm-42</_this><deviceKey>2001</deviceKey></SimQueryDiskBlockMap>"#), "{}", r.body);
        let no_lun = response_envelope(
            SIM_QUERY_DISK_BLOCK_MAP,
            "<returnval><capacity>1</capacity></returnval>",
        );
        assert!(parse_disk_block_map(&parse_response(no_lun.as_bytes()).unwrap()).is_err());

        let ctrls = vec![
            VirtualController {
                key: 1001,
                bus_number: 1,
                kind: ControllerKind::Scsi,
                type_name: "ParaVirtualSCSIController".into(),
            },
            VirtualController {
                key: 200,
                bus_number: 0,
                kind: ControllerKind::Ide,
                type_name: "VirtualIDEController".into(),
            },
            VirtualController {
                key: 15000,
                bus_number: 0,
                kind: ControllerKind::Other("VirtualAHCIController".into()),
                type_name: "VirtualAHCIController".into(),
            },
        ];
        // Malformed numbers are typed errors, not defaults.
        let bad_bus = fragment(
            r#"<val><VirtualDevice xsi:type="ParaVirtualSCSIController"><key>1000</key><busNumber>x</busNumber></VirtualDevice></val>"#,
        );
        assert!(matches!(
            virtual_controllers(&bad_bus),
            Err(Error::Malformed(_))
        ));
        let bad_extent = response_envelope(SIM_QUERY_DISK_BLOCK_MAP, "<returnval><lunId>naa.1</lunId><capacity>512</capacity><extent><virtualOffset>0</virtualOffset><lunOffset>-1</lunOffset><length>512</length></extent></returnval>");
        assert!(matches!(
            parse_disk_block_map(&parse_response(bad_extent.as_bytes()).unwrap()),
            Err(Error::Malformed(_))
        ));
        let xml = virtual_devices_xml(&ctrls, &disks);
        let el = fragment(&xml);
        assert_eq!(virtual_controllers(&el).unwrap(), ctrls);
        assert_eq!(virtual_disks(&el).unwrap(), disks);

        assert!(parse_response(b"<notsoap/>").is_err());
        assert!(parse_retrieve_result(&Element::default())
            .unwrap()
            .objects
            .is_empty());
    }
}
