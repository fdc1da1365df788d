//! Peers nobody here wrote, on the other end of our wires. govmomi's
//! vCenter simulator (vcsim, from Debian's govmomi sources, built into
//! `target/peers/vcsim` by `cargo xtask deps`) answers `vdisk vm …` the
//! way a vCenter does: Go's XML writes `xsi:type` under the prefix
//! `XMLSchema-instance`, its inventory is its own.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

struct Vcsim {
    child: Child,
    env: Vec<(String, String)>,
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vcsim() -> Vcsim {
    let exe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/peers/vcsim");
    let mut child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the peer tests need it: run `cargo xtask deps`)",
                exe.display()
            )
        });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let env = (0..4)
        .map(|_| {
            let l = lines.next().unwrap().unwrap();
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    Vcsim { child, env }
}

fn vdisk(sim: &Vcsim, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(args)
        .envs(sim.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("VDISK_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vdisk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn vcsim_answers_vm_list_disks_snapshots_and_cbt() {
    let sim = vcsim();
    let list: serde_json::Value =
        serde_json::from_str(&vdisk(&sim, &["vm", "list", "--json"])).unwrap();
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    names.sort();
    // vcsim's VPX model: two VMs on a standalone host, two in a cluster.
    assert_eq!(
        names,
        [
            "DC0_C0_RP0_VM0",
            "DC0_C0_RP0_VM1",
            "DC0_H0_VM0",
            "DC0_H0_VM1"
        ]
    );
    let vm = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "DC0_H0_VM0")
        .unwrap()["moref"]
        .as_str()
        .unwrap()
        .to_string();
    let vm_arg = format!("moref={vm}");
    let disks: serde_json::Value =
        serde_json::from_str(&vdisk(&sim, &["vm", "disks", "--vm", &vm_arg, "--json"])).unwrap();
    let disks = disks.as_array().unwrap();
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert_eq!(disks[0]["file"], "[LocalDS_0] DC0_H0_VM0/disk1.vmdk");
    let snap = vdisk(
        &sim,
        &[
            "vm", "snapshot", "create", "--vm", &vm_arg, "--name", "peer",
        ],
    )
    .trim()
    .to_string();
    assert!(snap.starts_with("snapshot-"), "{snap}");
    let listed = vdisk(&sim, &["vm", "snapshot", "list", "--vm", &vm_arg]);
    assert!(
        listed.contains(&snap) && listed.contains("peer"),
        "{listed}"
    );
    vdisk(&sim, &["vm", "snapshot", "remove", &snap]);
    let listed = vdisk(&sim, &["vm", "snapshot", "list", "--vm", &vm_arg]);
    assert!(!listed.contains(&snap), "{listed}");
    vdisk(&sim, &["vm", "cbt", "enable", "--vm", &vm_arg]);
}

/// pyVmomi (VMware's Python SDK, from PyPI, in the virtualenv `cargo
/// xtask deps` makes) as a client of `vdisk sim serve`: version
/// negotiation through `/sdk/vimServiceVersions.xml`, `Fetch`, a
/// container view, devices and `runtime.host`, a snapshot taken and
/// removed through tasks (`WaitForTask`: a property filter and
/// `WaitForUpdates`), `QueryChangedDiskAreas`, and `InvalidLogin`.
#[test]
fn pyvmomi_drives_the_simulator() {
    let python =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/peers/venv-pyvmomi/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pyvmomi_client.py");
    let text = client_of_the_simulator(Command::new(&python).arg(&script));
    let want = [
        "wrong password: InvalidLogin",
        "connected VirtualCenter 8.0.1.0",
        "vms backup-proxy demo-vm",
        "disks 2000:[datastore1] demo-vm/demo-vm.vmdk 2001:[datastore1] demo-vm/demo-vm_1.vmdk",
        "host esx1.sim.local",
    ];
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(&got[..want.len()], want, "{text}");
    assert!(
        got.iter().any(|l| l.starts_with("snapshot snapshot-")),
        "{text}"
    );
    assert!(
        got.contains(&"snapshot removed") && got.last() == Some(&"ok"),
        "{text}"
    );
}

/// Runs `client` with the VDISK_* variables of a fresh `vdisk sim serve
/// --demo`; its standard output, once it exited successfully.
fn client_of_the_simulator(client: &mut Command) -> String {
    let root = tempfile::tempdir().unwrap();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["sim", "serve", "--demo", "--root"])
        .arg(root.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    for _ in 0..4 {
        let l = lines.next().unwrap().unwrap();
        let (k, v) = l.split_once('=').unwrap();
        client.env(k, v.trim_matches('\''));
    }
    let out = client
        .output()
        .unwrap_or_else(|e| panic!("{:?}: {e} (run `cargo xtask deps`)", client.get_program()));
    let _ = sim.kill();
    let _ = sim.wait();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// govmomi (Debian's sources, `xtask/peers/govmomi-client`) as a client
/// of `vdisk sim serve`: a chunked SOAP body (Go's HTTP client), the
/// finder's traversal specs over `RetrieveProperties`, `Device()`,
/// `CreateSnapshot` and `task.Wait` (a collector of its own, a filter,
/// `WaitForUpdatesEx`), `QueryChangedDiskAreas`, `RemoveSnapshot` by
/// the snapshot tree, `Logout`.
#[test]
fn govmomi_drives_the_simulator() {
    let exe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/peers/govmomi-client");
    let text = client_of_the_simulator(&mut Command::new(&exe));
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(
        got[..5],
        [
            "wrong password refused",
            "connected VirtualCenter",
            "vm vm-100",
            "disk 2000 [datastore1] demo-vm/demo-vm.vmdk",
            "disk 2001 [datastore1] demo-vm/demo-vm_1.vmdk",
        ],
        "{text}"
    );
    assert!(got[5].starts_with("snapshot snapshot-"), "{text}");
    assert_eq!(
        got[6..],
        ["changes true", "snapshot removed", "ok"],
        "{text}"
    );
}
