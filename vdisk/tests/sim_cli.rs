//! `vdisk sim serve` and the `vdisk vm` commands, end to end.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::support::*;

struct Server {
    child: Child,
    env: Vec<(String, String)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(root: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["sim", "serve", "--demo", "--root", s(root)])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut env = Vec::new();
    for _ in 0..5 {
        let l = lines.next().unwrap().unwrap();
        let (k, v) = l.split_once('=').unwrap();
        env.push((k.to_string(), v.trim_matches('\'').to_string()));
    }
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "VDISK_SERVER",
            "VDISK_USER",
            "VDISK_PASSWORD",
            "VDISK_THUMBPRINT",
            "VDISK_CONFIG"
        ]
    );
    Server { child, env }
}

fn run(srv: &Server, args: &[&str], overrides: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vdisk"));
    c.args(args);
    for (k, v) in &srv.env {
        c.env(k, v);
    }
    for (k, v) in overrides {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// `vdisk sim guest-write` into vm-100's disk.
fn guest_write(srv: &Server, disk: &str, offset: &str, pattern: &str, length: &str) {
    ok(
        srv,
        &[
            "sim",
            "guest-write",
            "--vm",
            "moref=vm-100",
            "--disk",
            disk,
            "--offset",
            offset,
            "--pattern",
            pattern,
            "--length",
            length,
        ],
    );
}

fn ok(srv: &Server, args: &[&str]) -> String {
    let out = run(srv, args, &[]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn serve_list_snapshot_changes_and_errors() {
    let dir = tempdir();
    let srv = serve(dir.path(), &[]);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&srv, &["vm", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let disks: serde_json::Value = serde_json::from_str(&ok(
        &srv,
        &["vm", "disks", "--vm", "moref=vm-100", "--json"],
    ))
    .unwrap();
    assert_eq!(disks[0]["key"], 2000);
    guest_write(&srv, "2000", "70000", "5", "3000");
    let snap = ok(
        &srv,
        &[
            "vm",
            "snapshot",
            "create",
            "--vm",
            "moref=vm-100",
            "--name",
            "a",
        ],
    )
    .trim()
    .to_string();
    assert!(snap.starts_with("snapshot-"));
    let listed = ok(&srv, &["vm", "snapshot", "list", "--vm", "moref=vm-100"]);
    assert!(listed.contains(&snap));
    let id = serde_json::from_str::<serde_json::Value>(&ok(
        &srv,
        &["vm", "disks", "--vm", "moref=vm-100", "--json"],
    ))
    .unwrap()[0]["change_id"]
        .as_str()
        .unwrap()
        .to_string();
    guest_write(&srv, "2000", "1048576", "6", "10");
    let ch: serde_json::Value = serde_json::from_str(&ok(
        &srv,
        &[
            "vm",
            "changes",
            "--vm",
            "moref=vm-100",
            "--disk",
            "2000",
            "--change-id",
            &id,
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(ch, serde_json::json!([{"start": 1048576, "length": 10}]));
    ok(&srv, &["vm", "snapshot", "remove", &snap]);
    ok(&srv, &["vm", "cbt", "disable", "--vm", "moref=vm-100"]);
    // One clear line and a non-zero exit for each of these.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "not-it\n").unwrap();
    for (args, env, needle) in [
        (
            vec!["vm", "list"],
            vec![("VDISK_PASSWORD", "wrong")],
            "InvalidLogin",
        ),
        (
            vec!["vm", "list", "--password-file", s(&pw)],
            vec![],
            "InvalidLogin",
        ),
        (
            vec!["vm", "list"],
            vec![(
                "VDISK_THUMBPRINT",
                "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33",
            )],
            "does not match",
        ),
        (
            vec!["vm", "disks", "--vm", "moref=vm-9"],
            vec![],
            "ManagedObjectNotFound",
        ),
        (
            vec!["vm", "snapshot", "remove", &snap],
            vec![],
            "ManagedObjectNotFound",
        ),
    ] {
        let out = run(&srv, &args, &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            !err.contains("wrong") && !err.contains("not-it"),
            "password leaked: {err}"
        );
    }
    drop(srv);
    // ESXi mode refuses DisableMethods; the server says so.
    let dir2 = tempdir();
    let esx = serve(dir2.path(), &["--esxi"]);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&esx, &["vm", "list", "--json"])).unwrap();
    assert_eq!(list[0]["name"], "demo-vm");
}

#[test]
fn cat_and_write_through_nbd_and_nbdssl() {
    let dir = tempdir();
    let srv = serve(dir.path(), &[]);
    guest_write(&srv, "2000", "65000", "3", "300000");
    let local_path = dir.path().join("datastore1/demo-vm/demo-vm.vmdk");
    let disk = "[datastore1] demo-vm/demo-vm.vmdk";
    for t in ["nbd", "nbdssl"] {
        let out = run(
            &srv,
            &["cat", "--transport", t, "--vm", "moref=vm-100", disk],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same(&out.stdout, &vdisk_raw(&local_path), t);
        let out = run(
            &srv,
            &[
                "cat",
                "--transport",
                t,
                "--compression",
                "--vm",
                "moref=vm-100",
                "[datastore1] demo-vm/demo-vm_1.vmdk",
            ],
            &[],
        );
        assert!(out.status.success());
        assert_same(
            &out.stdout,
            &vdisk_raw(&dir.path().join("datastore1/demo-vm/demo-vm_1.vmdk")),
            t,
        );
    }
    // The same reads over san (the thick disk lies on the LUN) and
    // hotadd (the thin one attached to the proxy), with no fallback.
    for (t, file) in [("san", "demo-vm_1.vmdk"), ("hotadd", "demo-vm.vmdk")] {
        let out = run(
            &srv,
            &[
                "cat",
                "--transport",
                t,
                "--vm",
                "moref=vm-100",
                &format!("[datastore1] demo-vm/{file}"),
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same(
            &out.stdout,
            &vdisk_raw(&dir.path().join("datastore1/demo-vm").join(file)),
            t,
        );
    }
    ok(
        &srv,
        &[
            "write",
            "--transport",
            "nbdssl",
            "--vm",
            "moref=vm-100",
            disk,
            "--offset",
            "1000000",
            "--pattern",
            "0x44",
            "--length",
            "70000",
        ],
    );
    ok(
        &srv,
        &[
            "write",
            "--transport",
            "nbd",
            "--vm",
            "moref=vm-100",
            disk,
            "--offset",
            "2000000",
            "--pattern",
            "0x45",
            "--length",
            "10",
        ],
    );
    let raw = vdisk_raw(&local_path);
    assert!(raw[1_000_000..1_070_000].iter().all(|&b| b == 0x44));
    assert!(raw[2_000_000..2_000_010].iter().all(|&b| b == 0x45));
    // A snapshot's view over nbd, a bad transport name, a disk not of the VM.
    let snap = ok(&srv, &["vm", "snapshot", "create", "--vm", "moref=vm-100"])
        .trim()
        .to_string();
    guest_write(&srv, "2000", "0", "9", "512");
    let out = run(
        &srv,
        &[
            "cat",
            "--transport",
            "nbd",
            "--vm",
            "moref=vm-100",
            "--snapshot",
            &snap,
            disk,
        ],
        &[],
    );
    assert_same(&out.stdout, &raw, "snapshot view");
    let out = run(
        &srv,
        &[
            "cat",
            "--transport",
            "carrier-pigeon",
            "--vm",
            "moref=vm-100",
            disk,
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown transport"));
    let out = run(
        &srv,
        &[
            "cat",
            "--transport",
            "nbd",
            "--vm",
            "moref=vm-100",
            "[datastore1] other.vmdk",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
}

/// `vdisk backup` over san and hotadd with the configuration `sim serve`
/// prints: the thick disk from the LUN, the thin one HotAdded; restored
/// and verified.
#[test]
fn backup_over_san_and_hotadd_from_the_cli() {
    let dir = tempdir();
    let srv = serve(dir.path(), &[]);
    let repo = dir.path().join("repo");
    for (disk, offset, pattern) in [("2000", "1048576", "7"), ("2001", "5000192", "9")] {
        guest_write(&srv, disk, offset, pattern, "3000000");
    }
    let out = ok(
        &srv,
        &[
            "backup",
            "--vm",
            "moref=vm-100",
            "--to",
            s(&repo),
            "--transport",
            "san:hotadd:nbdssl",
        ],
    );
    assert!(out.contains("disk 2000: hotadd, disk 2001: san"), "{out}");
    // The LUN offline: neither san nor nbdssl (the datastore is on it)
    // can read what changed, and the backup says so; back online, backup
    // 2 takes the change over san.
    guest_write(&srv, "2001", "0", "3", "65536");
    let lun = ["sim", "lun", "--lun", vsphere_sim::inventory::DEMO_LUN];
    ok(&srv, &[&lun[..], &["--offline"]].concat());
    let args = [
        "backup",
        "--vm",
        "moref=vm-100",
        "--to",
        s(&repo),
        "--transport",
        "san:nbdssl",
        "--incremental",
    ];
    let failed = run(&srv, &args, &[]);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success(),
        "a backup from an offline LUN succeeded"
    );
    assert!(err.contains("file ends at byte 0"), "{err}");
    ok(&srv, &[&lun[..], &["--online"]].concat());
    let out = ok(&srv, &args);
    assert!(out.contains("disk 2001: san"), "{out}");
    let to = dir.path().join("restored");
    std::fs::create_dir_all(&to).unwrap();
    ok(
        &srv,
        &[
            "restore",
            "--from",
            s(&repo),
            "--backup",
            "2",
            "--to",
            s(&to),
        ],
    );
    for (key, file) in [(2000, "demo-vm.vmdk"), (2001, "demo-vm_1.vmdk")] {
        assert!(
            vdisk_raw(&to.join(format!("{key}.vmdk")))
                == vdisk_raw(&dir.path().join("datastore1/demo-vm").join(file)),
            "disk {key}"
        );
    }
    assert!(
        vdisk_raw(&to.join("2001.vmdk"))[5000192..8000192]
            .iter()
            .all(|&b| b == 9),
        "the guest's data came back"
    );
    ok(&srv, &["verify", "--from", s(&repo)]);
}

/// `--config` / `VDISK_CONFIG`: every unknown key and bad value is a
/// warning naming the file and the line; the rest of the file applies.
#[test]
fn config_warnings_name_their_lines() {
    let dir = tempdir();
    let srv = serve(dir.path(), &[]);
    let sim_conf = &srv.env.iter().find(|(k, _)| k == "VDISK_CONFIG").unwrap().1;
    let mut text = std::fs::read_to_string(sim_conf).unwrap();
    let first = text.lines().count() + 1;
    text.push_str("vixDiskLib.nfc.ReadTimeoutMs = soon  # not a number\n");
    text.push_str("vixDiskLib.nfc.Bogus = 1\n");
    text.push_str("tmpDirectory = \"/tmp#x\" # a quoted hash is fine\n");
    let conf = write(dir.path(), "vddk.conf", text.as_bytes());
    let out = run(
        &srv,
        &[
            "cat",
            "--transport",
            "nbdssl",
            "--vm",
            "moref=vm-100",
            "[datastore1] demo-vm/demo-vm.vmdk",
            "-o",
            "/dev/null",
        ],
        &[("VDISK_CONFIG", s(&conf))],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].contains(&format!(
            "vddk.conf: line {first}: `vixDiskLib.nfc.ReadTimeoutMs`"
        )) && warnings[0].contains("`soon` is not a number"),
        "{err}"
    );
    assert!(
        warnings[1].contains(&format!(
            "line {}: `vixDiskLib.nfc.Bogus`: unknown key",
            first + 1
        )),
        "{err}"
    );
}
