//! Every call through the real HTTPS client against the simulator, in
//! vCenter and ESXi mode, faults included.

use std::time::Duration;

use vim_soap::client::{Client, ClientConfig, Thumbprint};
use vim_soap::codec::{self, ConfigSpec, DeviceChange, DiskSpec, MoRef, PropertyRequest};
use vim_soap::{Error, FaultKind, Secret};
use vsphere_sim::inventory::{DEMO_PASSWORD, DEMO_USER};
use vsphere_sim::{Inventory, Mode, SimOptions, Simulator};

const T: Duration = Duration::from_secs(60);

fn start(mode: Mode, page: u64) -> (tempfile::TempDir, Simulator) {
    let dir = tempfile::tempdir().unwrap();
    let inv = Inventory::demo(dir.path(), mode);
    let sim = Simulator::start(
        inv,
        SimOptions {
            qcda_page: page,
            ..SimOptions::default()
        },
        0,
    )
    .unwrap();
    (dir, sim)
}

fn client(sim: &Simulator) -> Client {
    let cfg = ClientConfig::new(
        sim.addr().to_string(),
        Thumbprint::parse(sim.thumbprint()).unwrap(),
    );
    Client::connect(cfg).unwrap()
}

fn logged_in(sim: &Simulator) -> Client {
    let c = client(sim);
    c.login(DEMO_USER, &DEMO_PASSWORD.into()).unwrap();
    c
}

fn kind(e: Error) -> FaultKind {
    e.fault_kind()
        .cloned()
        .unwrap_or_else(|| panic!("not a fault: {e}"))
}

fn vm() -> MoRef {
    MoRef::new("VirtualMachine", "vm-100")
}

#[test]
fn sessions_and_thumbprints() {
    let (_d, sim) = start(Mode::Vcenter, 1 << 30);
    // A wrong thumbprint fails the handshake: nothing else is sent.
    let wrong = Thumbprint::parse(&"AA:".repeat(20)).unwrap();
    match Client::connect(ClientConfig::new(sim.addr().to_string(), wrong)) {
        Err(Error::ThumbprintMismatch { found, .. }) => assert_eq!(found, sim.thumbprint()),
        other => panic!("{other:?}"),
    }
    let c = client(&sim);
    assert!(c.is_vcenter());
    assert_eq!(c.content().about.api_type, "VirtualCenter");
    // Not logged in.
    let e = c
        .call(&codec::acquire_clone_ticket(&c.content().session_manager))
        .unwrap_err();
    assert_eq!(kind(e), FaultKind::NotAuthenticated);
    // Wrong password; the error text holds no password.
    let e = c
        .login(DEMO_USER, &Secret::new("wrong-password-123"))
        .unwrap_err();
    assert!(!e.to_string().contains("wrong-password-123"));
    assert_eq!(kind(e), FaultKind::InvalidLogin);
    let s = c.login(DEMO_USER, &DEMO_PASSWORD.into()).unwrap();
    assert_eq!(s.user_name, DEMO_USER);
    let cookie = c.cookie().unwrap();
    assert_eq!(format!("{cookie:?}"), "Secret(***)");
    let sm = c.content().session_manager.clone();
    let active = codec::parse_bool(
        &c.call(&codec::session_is_active(&sm, cookie.expose(), DEMO_USER))
            .unwrap(),
    )
    .unwrap();
    assert!(active);
    // Clone tickets are single-use.
    let ticket = codec::parse_string(&c.call(&codec::acquire_clone_ticket(&sm)).unwrap()).unwrap();
    let other = client(&sim);
    let cs = codec::parse_user_session(
        &other
            .call(&codec::clone_session(&sm, &ticket.clone().into()))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(cs.user_name, DEMO_USER);
    assert!(other.cookie().is_some());
    let again = client(&sim);
    assert_eq!(
        kind(
            again
                .call(&codec::clone_session(&sm, &ticket.into()))
                .unwrap_err()
        ),
        FaultKind::InvalidLogin
    );
    // A session cookie can be handed to another client (VDDK's SESSIONID).
    let third = client(&sim);
    third.set_cookie(cookie);
    assert!(third.property(&vm(), "name").unwrap().is_some());
    let t = codec::parse_generic_service_ticket(
        &c.call(&codec::acquire_generic_service_ticket(
            &sm,
            &codec::ServiceRequestSpec::Vmomi { method: "x".into() },
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(t.ssl_thumbprint.as_deref(), Some(sim.thumbprint()));
    c.logout().unwrap();
    assert_eq!(
        kind(c.property(&vm(), "name").unwrap_err()),
        FaultKind::NotAuthenticated
    );
}

#[test]
fn inventory_properties_and_faults() {
    let (_d, sim) = start(Mode::Vcenter, 1 << 30);
    let c = logged_in(&sim);
    let si = c.content().search_index.clone();
    let found = codec::parse_moref(
        &c.call(&codec::find_by_inventory_path(&si, "dc1/vm/demo-vm"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(found, Some(vm()));
    assert_eq!(
        codec::parse_moref(
            &c.call(&codec::find_by_inventory_path(&si, "dc1/vm/nope"))
                .unwrap()
        )
        .unwrap(),
        None
    );
    let uuid = c.property(&vm(), "config.uuid").unwrap().unwrap().text;
    assert_eq!(
        codec::parse_moref(&c.call(&codec::find_by_uuid(&si, &uuid, false)).unwrap()).unwrap(),
        Some(vm())
    );
    let disks = codec::virtual_disks(
        &c.property(&vm(), "config.hardware.device")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0].file_name, "[datastore1] demo-vm/demo-vm.vmdk");
    assert!(disks[0].thin && !disks[1].thin);
    assert!(disks[0].change_id.is_some());
    // Folder traversal, as `vdisk vm list` does it.
    let root = c.content().root_folder.clone();
    let dcs = c.property(&root, "childEntity").unwrap().unwrap();
    let dc = MoRef::from_element(&dcs.children[0]).unwrap();
    let vm_folder = MoRef::from_element(&c.property(&dc, "vmFolder").unwrap().unwrap()).unwrap();
    let vms = c.property(&vm_folder, "childEntity").unwrap().unwrap();
    assert_eq!(vms.children.len(), 2);
    // Paged retrieval with a continuation token.
    let objs: Vec<PropertyRequest> = ["vm-100", "vm-101"]
        .iter()
        .map(|v| PropertyRequest {
            obj: MoRef::new("VirtualMachine", *v),
            paths: vec!["name".into()],
        })
        .collect();
    let first = codec::parse_retrieve_result(
        &c.call(&codec::retrieve_properties_ex(
            &c.content().property_collector,
            &objs,
            Some(1),
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(first.objects.len(), 1);
    let token = first.token.unwrap();
    let rest = codec::parse_retrieve_result(
        &c.call(&codec::continue_retrieve_properties_ex(
            &c.content().property_collector,
            &token,
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rest.objects[0].prop("name").unwrap().text, "backup-proxy");
    assert_eq!(c.properties(&objs).unwrap().len(), 2);
    // Unknown morefs.
    match kind(
        c.property(&MoRef::new("VirtualMachine", "vm-999"), "name")
            .unwrap_err(),
    ) {
        FaultKind::ManagedObjectNotFound(Some(o)) => assert_eq!(o.value, "vm-999"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        kind(
            c.call(&codec::create_snapshot_task(
                &MoRef::new("VirtualMachine", "vm-7"),
                "s",
                "",
                false,
                false
            ))
            .unwrap_err()
        ),
        FaultKind::ManagedObjectNotFound(_)
    ));
    let internal =
        codec::parse_internal_content(&c.call(&codec::retrieve_internal_content()).unwrap())
            .unwrap();
    assert_eq!(internal.nfc_service.value, "nfcService");
    // NfcGetVmFiles: read-only, every disk file of the VM.
    let t = codec::parse_host_service_ticket(
        &c.call(&codec::nfc_get_vm_files(&internal.nfc_service, &vm()))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(t.ssl_thumbprint, sim.thumbprint());
    assert_eq!(t.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        (t.service.as_str(), t.service_version.as_str()),
        ("vpxa-nfc", "1.1")
    );
    assert_eq!(t.session_id.expose().len(), 36, "a UUID");
    let grant = sim.shared().take_nfc_ticket(t.session_id.expose()).unwrap();
    assert!(grant.read_only && grant.disk_key.is_none());
    assert!(grant.paths.iter().any(|p| p.ends_with("demo-vm.vmdk")));
    assert!(grant.paths.iter().any(|p| p.ends_with("demo-vm_1.vmdk")));
    assert!(
        sim.shared()
            .take_nfc_ticket(t.session_id.expose())
            .is_none(),
        "tickets are single-use"
    );
    // NfcRandomAccessOpenDisk: one disk, read-write, through the VM's host.
    let host = MoRef::from_element(&c.property(&vm(), "runtime.host").unwrap().unwrap()).unwrap();
    assert_eq!(host, MoRef::new("HostSystem", "host-1"));
    let t = codec::parse_host_service_ticket(
        &c.call(&codec::nfc_random_access_open_disk(
            &internal.nfc_service,
            &vm(),
            2000,
            Some(&host),
        ))
        .unwrap(),
    )
    .unwrap();
    let grant = sim.shared().take_nfc_ticket(t.session_id.expose()).unwrap();
    assert!(!grant.read_only && grant.disk_key == Some(2000) && grant.paths.len() == 1);
    // Without or with another hostForAccess, or on a moref of ESXi's.
    for h in [None, Some(MoRef::new("HostSystem", "host-99"))] {
        let r = c.call(&codec::nfc_random_access_open_disk(
            &internal.nfc_service,
            &vm(),
            2000,
            h.as_ref(),
        ));
        assert!(matches!(
            kind(r.unwrap_err()),
            FaultKind::InvalidArgument(_)
        ));
    }
    let r = c.call(&codec::nfc_get_vm_files(
        &MoRef::new("NfcService", "ha-nfc-service"),
        &vm(),
    ));
    assert!(matches!(
        kind(r.unwrap_err()),
        FaultKind::ManagedObjectNotFound(_)
    ));
}

fn snapshot(c: &Client, name: &str) -> MoRef {
    let task = codec::parse_moref(
        &c.call(&codec::create_snapshot_task(&vm(), name, "", false, true))
            .unwrap(),
    )
    .unwrap()
    .unwrap();
    c.wait_task(&task, T).unwrap().result.unwrap()
}

fn remove(c: &Client, s: &MoRef) -> Result<(), Error> {
    let task = codec::parse_moref(&c.call(&codec::remove_snapshot_task(s, false, true))?)?.unwrap();
    c.wait_task(&task, T).map(|_| ())
}

fn read_disk(path: &std::path::Path, off: u64, len: usize) -> Vec<u8> {
    let d = vmdk_file::local::LocalDisk::open(path, &Default::default()).unwrap();
    let mut b = vec![0u8; len];
    d.read_at(off, &mut b).unwrap();
    b
}

#[test]
fn snapshots_consolidation_and_deep_trees() {
    let (dir, sim) = start(Mode::Vcenter, 1 << 30);
    let c = logged_in(&sim);
    let base = dir.path().join("datastore1/demo-vm/demo-vm.vmdk");
    sim.guest_write("vm-100", 2000, 0, &[1u8; 4096]).unwrap();
    let s1 = snapshot(&c, "one");
    let disks = codec::virtual_disks(
        &c.property(&vm(), "config.hardware.device")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        disks[0].file_name, "[datastore1] demo-vm/demo-vm-000001.vmdk",
        "the running disk moved to the delta"
    );
    let snap_disks =
        codec::virtual_disks(&c.property(&s1, "config.hardware.device").unwrap().unwrap()).unwrap();
    assert_eq!(snap_disks[0].file_name, "[datastore1] demo-vm/demo-vm.vmdk");
    sim.guest_write("vm-100", 2000, 4096, &[2u8; 4096]).unwrap();
    assert_eq!(
        read_disk(&base, 4096, 1),
        [0],
        "the frozen base does not change"
    );
    let tree = codec::snapshot_tree(
        &c.property(&vm(), "snapshot.rootSnapshotList")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(tree[0].snapshot, s1);
    remove(&c, &s1).unwrap();
    assert_eq!(
        read_disk(&base, 0, 8192),
        [vec![1u8; 4096], vec![2u8; 4096]].concat(),
        "consolidated into the base"
    );
    assert!(!dir
        .path()
        .join("datastore1/demo-vm/demo-vm-000001.vmdk")
        .exists());
    // The removed snapshot's moref is gone everywhere.
    assert!(matches!(
        kind(c.property(&s1, "config.hardware.device").unwrap_err()),
        FaultKind::ManagedObjectNotFound(_)
    ));
    assert!(matches!(
        kind(remove(&c, &s1).unwrap_err()),
        FaultKind::ManagedObjectNotFound(_)
    ));

    // 32 levels, each with a write; then remove one in the middle and all.
    let mut snaps = Vec::new();
    for i in 0..32u8 {
        sim.guest_write("vm-100", 2000, u64::from(i) * 65536, &[i + 10; 512])
            .unwrap();
        snaps.push(snapshot(&c, &format!("s{i}")));
    }
    let mut depth = 0;
    let mut node = codec::snapshot_tree(
        &c.property(&vm(), "snapshot.rootSnapshotList")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    while let Some(n) = node.pop() {
        depth += 1;
        node = n.children;
    }
    assert_eq!(depth, 32);
    remove(&c, &snaps[10]).unwrap();
    let s20 = codec::virtual_disks(
        &c.property(&snaps[20], "config.hardware.device")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let p20 = dir
        .path()
        .join("datastore1")
        .join(s20[0].file_name.trim_start_matches("[datastore1] "));
    for i in 0..=20u8 {
        assert_eq!(
            read_disk(&p20, u64::from(i) * 65536, 512),
            vec![i + 10; 512],
            "state at snapshot 20, write {i}"
        );
    }
    let task = codec::parse_moref(
        &c.call(&codec::remove_snapshot_task(&snaps[0], true, true))
            .unwrap(),
    )
    .unwrap()
    .unwrap();
    c.wait_task(&task, T).unwrap();
    assert!(c
        .property(&vm(), "snapshot.rootSnapshotList")
        .unwrap()
        .is_none());
    for i in 0..32u8 {
        assert_eq!(
            read_disk(&base, u64::from(i) * 65536, 512),
            vec![i + 10; 512]
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path().join("datastore1/demo-vm"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
}

fn changes(c: &Client, snap: &MoRef, key: i32, change_id: &str, capacity: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut pages = 0;
    while start < capacity {
        let r = codec::parse_disk_change_info(
            &c.call(&codec::query_changed_disk_areas(
                &vm(),
                Some(snap),
                key,
                start,
                change_id,
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(r.start_offset, start);
        out.extend(r.changed_area);
        start += r.length;
        pages += 1;
    }
    assert!(pages > 1, "answers are paged");
    out
}

#[test]
fn cbt_answers_exactly_the_writes_since_each_change_id() {
    let page = 4 << 20;
    let (_d, sim) = start(Mode::Vcenter, page);
    let c = logged_in(&sim);
    let cap = 64u64 << 20;
    let key = 2000;
    let mut writes: Vec<Vec<(u64, u64)>> = vec![Vec::new()];
    let mut ids: Vec<String> = Vec::new();
    let mut snaps = Vec::new();
    let mut x = 7u64;
    for round in 0..3 {
        for _ in 0..20 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 16) % (cap - 300_000);
            let len = 1 + (x >> 40) % 200_000;
            sim.guest_write("vm-100", key, off, &vec![round as u8 + 1; len as usize])
                .unwrap();
            writes.last_mut().unwrap().push((off, len));
        }
        let s = snapshot(&c, &format!("r{round}"));
        let d = codec::virtual_disks(&c.property(&s, "config.hardware.device").unwrap().unwrap())
            .unwrap();
        ids.push(d[0].change_id.clone().unwrap());
        snaps.push(s);
        writes.push(Vec::new());
    }
    let norm = |v: Vec<(u64, u64)>| -> Vec<(u64, u64)> {
        let l: cbt::ExtentList = v.into_iter().map(|(s, n)| cbt::Extent::new(s, n)).collect();
        l.iter().map(|e| (e.start, e.len)).collect()
    };
    // Against the last snapshot, with each earlier change id: exactly the
    // union of the writes made since, rounded out to whole tracking
    // blocks as ESXi reports them.
    let blocks = |v: Vec<(u64, u64)>| -> Vec<(u64, u64)> {
        let l: cbt::ExtentList = v.into_iter().map(|(s, n)| cbt::Extent::new(s, n)).collect();
        let l = l.align(vsphere_sim::DEFAULT_CBT_BLOCK).clip(cap);
        l.iter().map(|e| (e.start, e.len)).collect()
    };
    for (i, id) in ids.iter().enumerate().take(2) {
        let expect: Vec<(u64, u64)> = writes[i + 1..3].iter().flatten().copied().collect();
        assert_eq!(
            norm(changes(&c, &snaps[2], key, id, cap)),
            blocks(expect),
            "since id {i}"
        );
    }
    assert!(norm(changes(&c, &snaps[2], key, &ids[2], cap)).is_empty());
    // `*`: the allocated areas.
    let all = norm(changes(&c, &snaps[0], key, "*", cap));
    assert!(!all.is_empty());
    // Turning CBT off and on starts a new epoch: old ids are refused.
    let cfg = |on| ConfigSpec {
        change_tracking: Some(on),
        device_changes: vec![],
    };
    for on in [false, true] {
        let t = codec::parse_moref(&c.call(&codec::reconfig_vm_task(&vm(), &cfg(on))).unwrap())
            .unwrap()
            .unwrap();
        c.wait_task(&t, T).unwrap();
        if !on {
            let e = c
                .call(&codec::query_changed_disk_areas(
                    &vm(),
                    Some(&snaps[2]),
                    key,
                    0,
                    &ids[0],
                ))
                .unwrap_err();
            assert_eq!(kind(e), FaultKind::InvalidState);
        }
    }
    let e = c
        .call(&codec::query_changed_disk_areas(
            &vm(),
            Some(&snaps[2]),
            key,
            0,
            &ids[0],
        ))
        .unwrap_err();
    assert!(matches!(kind(e), FaultKind::InvalidArgument(_)));
    let e = c
        .call(&codec::query_changed_disk_areas(&vm(), None, 9999, 0, "*"))
        .unwrap_err();
    assert!(matches!(kind(e), FaultKind::InvalidArgument(_)));
}

#[test]
fn prepare_for_access_in_both_modes() {
    let (_d, sim) = start(Mode::Vcenter, 1 << 30);
    let c = logged_in(&sim);
    let am = c.content().authorization_manager.clone();
    let ds = MoRef::new("Datastore", "datastore-1");
    c.call(&codec::disable_methods(
        &am,
        &[vm()],
        &["RelocateVM_Task"],
        "vddk-rs",
        false,
    ))
    .unwrap();
    match kind(c.call(&codec::relocate_vm_task(&vm(), &ds)).unwrap_err()) {
        FaultKind::MethodDisabled(src) => assert_eq!(src, "vddk-rs"),
        other => panic!("{other:?}"),
    }
    match kind(
        c.call(&codec::disable_methods(
            &am,
            &[vm()],
            &["RelocateVM_Task"],
            "other",
            false,
        ))
        .unwrap_err(),
    ) {
        FaultKind::MethodAlreadyDisabled(src) => assert_eq!(src, "vddk-rs"),
        other => panic!("{other:?}"),
    }
    c.call(&codec::enable_methods(
        &am,
        &[vm()],
        &["RelocateVM_Task"],
        "vddk-rs",
    ))
    .unwrap();
    let t = codec::parse_moref(&c.call(&codec::relocate_vm_task(&vm(), &ds)).unwrap())
        .unwrap()
        .unwrap();
    c.wait_task(&t, T).unwrap();
    assert!(matches!(
        kind(
            c.call(&codec::disable_methods(
                &am,
                &[MoRef::new("VirtualMachine", "vm-1")],
                &["RelocateVM_Task"],
                "x",
                false
            ))
            .unwrap_err()
        ),
        FaultKind::ManagedObjectNotFound(_)
    ));

    let (_d2, esx) = start(Mode::Esxi, 1 << 30);
    let c = logged_in(&esx);
    assert!(!c.is_vcenter());
    let e = c
        .call(&codec::disable_methods(
            &c.content().authorization_manager,
            &[vm()],
            &["RelocateVM_Task"],
            "x",
            false,
        ))
        .unwrap_err();
    assert!(
        e.to_string().contains("HostAgent is not a VirtualCenter"),
        "{e}"
    );
    assert_eq!(kind(e), FaultKind::NotSupported);
}

#[test]
fn reconfigure_disks_and_failing_tasks() {
    let (dir, sim) = start(Mode::Vcenter, 1 << 30);
    let c = logged_in(&sim);
    let proxy = MoRef::new("VirtualMachine", "vm-101");
    let add = ConfigSpec {
        change_tracking: None,
        device_changes: vec![DeviceChange::AddDisk(DiskSpec {
            key: -1,
            file_name: "[datastore1] demo-vm/demo-vm.vmdk".into(),
            disk_mode: "independent_nonpersistent".into(),
            controller_key: 1000,
            unit_number: 1,
        })],
    };
    let t = codec::parse_moref(&c.call(&codec::reconfig_vm_task(&proxy, &add)).unwrap())
        .unwrap()
        .unwrap();
    c.wait_task(&t, T).unwrap();
    let disks = codec::virtual_disks(
        &c.property(&proxy, "config.hardware.device")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(disks.len(), 2, "the proxy's own disk and the one added");
    let added = disks.iter().find(|d| d.unit_number == 1).unwrap();
    let rm = ConfigSpec {
        change_tracking: None,
        device_changes: vec![DeviceChange::RemoveDisk(added.key)],
    };
    let t = codec::parse_moref(&c.call(&codec::reconfig_vm_task(&proxy, &rm)).unwrap())
        .unwrap()
        .unwrap();
    c.wait_task(&t, T).unwrap();
    // A task that fails: a file that does not exist, and a path that leaves the datastore.
    for f in [
        "[datastore1] nope/none.vmdk",
        "[datastore1] ../../etc/passwd",
        "[nostore] x.vmdk",
    ] {
        let bad = ConfigSpec {
            change_tracking: None,
            device_changes: vec![DeviceChange::AddDisk(DiskSpec {
                key: -1,
                file_name: f.into(),
                disk_mode: "persistent".into(),
                controller_key: 1000,
                unit_number: 1,
            })],
        };
        let t = codec::parse_moref(&c.call(&codec::reconfig_vm_task(&proxy, &bad)).unwrap())
            .unwrap()
            .unwrap();
        match c.wait_task(&t, T) {
            Err(Error::TaskFailed { fault, .. }) => assert!(
                matches!(
                    fault.kind,
                    FaultKind::FileNotFound(_) | FaultKind::InvalidArgument(_)
                ),
                "{f}: {fault}"
            ),
            other => panic!("{f}: {other:?}"),
        }
    }
    let t = codec::parse_moref(&c.call(&codec::consolidate_vm_disks_task(&vm())).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(c.wait_task(&t, T).unwrap().state, codec::TaskState::Success);
    drop(dir);
}

/// The client reads `/sdk/vimServiceVersions.xml` before anything else
/// and speaks the newest version both sides know (the simulator lists
/// 8.0.1.0 first); the document is served before login, as hosts do.
#[test]
fn api_version_is_negotiated_from_vim_service_versions() {
    let (_d, sim) = start(Mode::Vcenter, 1 << 30);
    let c = client(&sim);
    assert_eq!(c.api_version(), "8.0.1.0");
    let doc = c.get_file("/sdk/vimServiceVersions.xml", None).unwrap();
    let text = String::from_utf8(doc).unwrap();
    assert!(
        text.contains("<name>urn:vim25</name>") && text.contains("<priorVersions>"),
        "{text}"
    );
    assert_eq!(codec::negotiate_version(text.as_bytes()), Some("8.0.1.0"));
}
