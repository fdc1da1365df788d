//! `vdisk sim serve` and the `vdisk vm` commands, end to end.

use crate::support::*;

type Server = SimServer;

fn serve(root: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec!["--demo", "--root", s(root)];
    args.extend_from_slice(extra);
    let srv = sim_serve(&args);
    assert_eq!(srv.env.len(), 5);
    assert_eq!(srv.env[4].0, "VDISK_CONFIG");
    srv
}

fn run(srv: &Server, args: &[&str], overrides: &[(&str, &str)]) -> std::process::Output {
    srv.run(args, overrides)
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
    // Whole 64 KiB tracking blocks (the simulator's default), as ESXi
    // reports them, not the 10 bytes written.
    assert_eq!(ch, serde_json::json!([{"start": 1048576, "length": 65536}]));
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
    ok(&srv, &["repo", "init", s(&repo), "--encryption", "none"]);
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
            "latest",
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

fn current_change_id(srv: &Server) -> String {
    serde_json::from_str::<serde_json::Value>(&ok(
        srv,
        &["vm", "disks", "--vm", "moref=vm-100", "--json"],
    ))
    .unwrap()[0]["change_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn changes_since(srv: &Server, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(
        srv,
        &[
            "vm",
            "changes",
            "--vm",
            "moref=vm-100",
            "--disk",
            "2000",
            "--change-id",
            id,
            "--json",
        ],
    ))
    .unwrap()
}

/// Changed areas cover whole tracking blocks (`--cbt-block`), never an
/// odd byte count a consumer cannot read in sectors; and a write that
/// reaches the disk over NFC is a change like the guest's.
#[test]
fn changes_are_whole_blocks_and_include_writes_over_nfc() {
    let dir = tempdir();
    let srv = serve(dir.path(), &["--cbt-block", "4K"]);
    let id = current_change_id(&srv);
    guest_write(&srv, "2000", "31457380", "7", "1000");
    assert_eq!(
        changes_since(&srv, &id),
        serde_json::json!([{"start": 31457280, "length": 4096}])
    );
    ok(
        &srv,
        &[
            "write",
            "--transport",
            "nbdssl",
            "--vm",
            "moref=vm-100",
            "[datastore1] demo-vm/demo-vm.vmdk",
            "--offset",
            "2097152",
            "--pattern",
            "0x33",
            "--length",
            "512",
        ],
    );
    assert_eq!(
        changes_since(&srv, &id),
        serde_json::json!([
            {"start": 2097152, "length": 4096},
            {"start": 31457280, "length": 4096}
        ])
    );
    let out = run(
        &srv,
        &["sim", "serve", "--demo", "--cbt-block", "1000"],
        &[],
    );
    assert!(!out.status.success());
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
            "vddk.conf: configuration line {first}: `vixDiskLib.nfc.ReadTimeoutMs`"
        )) && warnings[0].contains("`soon` is not a number"),
        "{err}"
    );
    assert!(
        warnings[1].contains(&format!(
            "vddk.conf: unknown configuration key `vixDiskLib.nfc.Bogus` ignored (line {})",
            first + 1
        )),
        "{err}"
    );
}

/// Sizes and byte values parse the same way in every verb, local and
/// simulated: `--offset 1M --pattern 0xaa` works for `write` and for
/// `sim guest-write`, and bad values are refused with the same words.
#[test]
fn sizes_and_bytes_parse_the_same_in_every_verb() {
    let dir = tempdir();
    let srv = serve(dir.path(), &[]);
    let local_path = dir.path().join("datastore1/demo-vm/demo-vm.vmdk");
    guest_write(&srv, "2000", "1M", "0xaa", "64K");
    guest_write(&srv, "2000", "0x300000", "170", "512");
    let raw = vdisk_raw(&local_path);
    assert!(raw[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0xaa));
    assert!(raw[(1 << 20) + 65536..(1 << 20) + 65537] != [0xaa]);
    assert!(raw[3 << 20..(3 << 20) + 512].iter().all(|&b| b == 170));

    let local = dir.path().join("local.vmdk");
    vdisk_ok(&["create", s(&local), "4M"]);
    vdisk_ok(&[
        "write",
        s(&local),
        "--offset",
        "1M",
        "--pattern",
        "0xaa",
        "--length",
        "64K",
    ]);
    vdisk_ok(&[
        "write",
        s(&local),
        "--offset",
        "3145728",
        "--pattern",
        "170",
        "--length",
        "512",
    ]);
    vdisk_ok(&["grow", s(&local), "8M"]);
    let raw = vdisk_raw(&local);
    assert_eq!(raw.len(), 8 << 20);
    assert!(raw[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0xaa));
    assert!(raw[3 << 20..(3 << 20) + 512].iter().all(|&b| b == 170));

    // The same refusals, in the same words, from both.
    let sim = |offset: &str, pattern: &str| {
        run(
            &srv,
            &[
                "sim",
                "guest-write",
                "--vm",
                "moref=vm-100",
                "--disk",
                "2000",
                "--offset",
                offset,
                "--pattern",
                pattern,
                "--length",
                "1",
            ],
            &[],
        )
    };
    let local_write = |offset: &str, pattern: &str| {
        vdisk(&[
            "write",
            s(&local),
            "--offset",
            offset,
            "--pattern",
            pattern,
            "--length",
            "1",
        ])
    };
    for (offset, pattern, needle) in [
        ("1Q", "1", "invalid size `1Q`"),
        ("1.5M", "1", "invalid size `1.5M`"),
        ("99999999T", "1", "invalid size `99999999T`"),
        ("0", "256", "invalid byte `256`"),
        ("0", "0x1aa", "invalid byte `0x1aa`"),
        ("0", "0xag", "invalid byte `0xag`"),
    ] {
        for out in [sim(offset, pattern), local_write(offset, pattern)] {
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{offset} {pattern}: {err}");
            assert!(err.contains(needle), "{offset} {pattern}: {err}");
        }
    }
    assert_eq!(
        vdisk(&["create", s(&dir.path().join("x.vmdk")), "2X"])
            .status
            .code(),
        Some(1)
    );
}

/// `restore --to DIR` creates DIR, refuses to overwrite existing disks
/// unless `--force`, and a point with a damaged block fails naming it
/// without claiming success or touching what was there.
#[test]
fn restore_to_a_new_directory_refuses_overwrites_and_checks_chunks() {
    let dir = tempdir();
    let srv = serve(dir.path(), &[]);
    guest_write(&srv, "2000", "1M", "0x5a", "1M");
    let repo = dir.path().join("repo");
    ok(&srv, &["repo", "init", s(&repo), "--encryption", "none"]);
    ok(
        &srv,
        &[
            "backup",
            "--vm",
            "moref=vm-100",
            "--to",
            s(&repo),
            "--transport",
            "nbd",
        ],
    );
    let to = dir.path().join("r1");
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--from",
            s(&repo),
            "--backup",
            "latest",
            "--to",
            s(&to),
        ];
        args.extend_from_slice(extra);
        run(&srv, &args, &[])
    };
    let out = restore(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("restored backup "));
    for (key, file) in [(2000, "demo-vm.vmdk"), (2001, "demo-vm_1.vmdk")] {
        assert!(
            vdisk_raw(&to.join(format!("{key}.vmdk")))
                == vdisk_raw(&dir.path().join("datastore1/demo-vm").join(file)),
            "disk {key}"
        );
    }
    let before = std::fs::read(to.join("2000.vmdk")).unwrap();
    let out = restore(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("2000.vmdk exists") && err.contains("--force"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("restored"));
    assert!(std::fs::read(to.join("2000.vmdk")).unwrap() == before);
    let out = restore(&["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(to.join("2000.vmdk")).unwrap() != before,
        "replaced"
    );
    let before = std::fs::read(to.join("2000.vmdk")).unwrap();
    // One disk into a new directory named with a trailing slash.
    let one = format!("{}/", dir.path().join("r2").display());
    ok(
        &srv,
        &[
            "restore",
            "--from",
            s(&repo),
            "--backup",
            "latest",
            "--disk",
            "2000",
            "--to",
            &one,
        ],
    );
    assert!(dir.path().join("r2/2000.vmdk").is_file());

    // One flipped byte in every stored chunk: verify and restore both
    // name the damage; the restore claims nothing and leaves r1 as it was.
    let mut chunks = Vec::new();
    for sub in std::fs::read_dir(repo.join("chunks")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            chunks.push(f.unwrap().path());
        }
    }
    assert!(!chunks.is_empty());
    for c in &chunks {
        let mut bytes = std::fs::read(c).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0x10;
        std::fs::write(c, &bytes).unwrap();
    }
    let verify = run(&srv, &["verify", "--from", s(&repo)], &[]);
    assert!(!verify.status.success());
    let out = restore(&["--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("chunk") && err.contains("corrupt object"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("restored"));
    assert!(
        std::fs::read(to.join("2000.vmdk")).unwrap() == before,
        "r1 untouched"
    );
    let names: Vec<String> = std::fs::read_dir(&to)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
}
