//! `vdisk volumes`, `vdisk ls` and `vdisk get` on MBR and GPT disks
//! holding ext4, FAT32 and NTFS volumes made by their own tools: from
//! local VMDKs (sparse, streamOptimized, a snapshot chain), from the
//! simulator over nbdssl, and from a backup point.

use std::path::{Path, PathBuf};

use crate::support::images::{assert_tree_eq, images, Disk, Images};
use crate::support::*;

/// How `vdisk` reaches a disk: its leading arguments and the simulator
/// whose variables it needs.
struct Source<'a> {
    args: Vec<String>,
    sim: Option<&'a SimServer>,
}

impl Source<'_> {
    fn run(&self, extra: &[&str]) -> std::process::Output {
        let mut args: Vec<&str> = vec![extra[0]];
        args.extend(self.args.iter().map(String::as_str));
        args.extend_from_slice(&extra[1..]);
        match self.sim {
            Some(sim) => sim.run(&args, &[]),
            None => vdisk(&args),
        }
    }

    fn ok(&self, extra: &[&str]) -> Vec<u8> {
        let out = self.run(extra);
        assert!(
            out.status.success(),
            "vdisk {extra:?} on {:?}: {}",
            self.args,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

fn local(p: &Path) -> Source<'static> {
    Source {
        args: vec![s(p).to_string()],
        sim: None,
    }
}

/// Checks the volumes and every file of every volume of `disk`.
fn check_disk(src: &Source<'_>, disk: &Disk, gpt: bool, im: &Images, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&src.ok(&["volumes", "--json"])).unwrap();
    assert_eq!(v["table"]["type"], if gpt { "gpt" } else { "mbr" }, "{v}");
    if gpt {
        assert_eq!(v["table"]["protective_mbr"], true);
        assert_eq!(v["table"]["hybrid_mbr"], false);
    }
    let vols = v["volumes"].as_array().unwrap();
    let fs_of = |n: u32| {
        vols.iter()
            .find(|x| x["number"] == n)
            .unwrap_or_else(|| panic!("no volume {n}: {v}"))
    };
    for ((n, start), kind, label, name) in [
        (disk.fat, "fat32", "FATVOL", "fat part"),
        (disk.ext, "ext4", "EXTVOL", "ext part"),
        (disk.ntfs, "ntfs", "NTFSVOL", "ntfs part"),
    ] {
        let x = fs_of(n);
        assert_eq!(x["start"], start, "{x}");
        assert_eq!(
            x["filesystem"]["kind"]
                .as_str()
                .map(str::to_lowercase)
                .as_deref(),
            Some(kind),
            "{x}"
        );
        assert_eq!(x["filesystem"]["label"], label, "{x}");
        if gpt {
            assert_eq!(x["name"], name, "{x}");
        }
    }
    // The human table too.
    let text = String::from_utf8(src.ok(&["volumes"])).unwrap();
    assert!(
        text.contains("EXTVOL") && text.contains("NTFSVOL"),
        "{text}"
    );

    // Every file of every volume, extracted and compared.
    for ((n, _), tree, extra, modes) in [
        (disk.fat, &im.fat_src, &[][..], false),
        (disk.ext, &im.ext_src, &["lost+found"][..], true),
        (disk.ntfs, &im.ntfs_src, &[][..], false),
    ] {
        let dest = out.join(format!("p{n}"));
        let part = n.to_string();
        src.ok(&["get", "--partition", &part, "/", "-o", s(&dest)]);
        assert_tree_eq(tree, &dest, extra, modes);
        // `ls` of the root names what the source holds.
        let ls: serde_json::Value =
            serde_json::from_slice(&src.ok(&["ls", "--partition", &part, "--json", "/"])).unwrap();
        let mut names: Vec<String> = ls
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .filter(|n| !extra.contains(&n.as_str()))
            .collect();
        names.sort();
        let mut want: Vec<String> = std::fs::read_dir(tree)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        want.sort();
        assert_eq!(names, want, "ls / of partition {n}");
    }
    // One file alone, and a subdirectory.
    let (ext_n, _) = disk.ext;
    let part = ext_n.to_string();
    let one = out.join("hostname");
    src.ok(&["get", "--partition", &part, "/etc/hostname", "-o", s(&one)]);
    assert_eq!(std::fs::read(&one).unwrap(), b"guest-vm\n");
    let sub = out.join("etc");
    src.ok(&["get", "--partition", &part, "/etc", "-o", s(&sub)]);
    assert_tree_eq(&im.ext_src.join("etc"), &sub, &[], true);
    // The long listing shows the mode and the link target.
    let long = String::from_utf8(src.ok(&["ls", "--partition", &part, "-l", "/"])).unwrap();
    assert!(
        long.contains("-rw------- ") && long.contains("secret"),
        "{long}"
    );
    assert!(long.contains("rel-link -> etc/hostname"), "{long}");
    // Several partitions: one must be named.
    let err = src.run(&["ls", "/"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("--partition"));
}

/// ext4 listings agree with e2fsprogs' own `debugfs`.
#[test]
fn ext4_listing_matches_debugfs() {
    let im = images();
    let d = local(&im.gpt.vmdk);
    for dir in ["/", "/etc", "/etc/deep/er"] {
        let ours: serde_json::Value =
            serde_json::from_slice(&d.ok(&["ls", "--partition", "2", "--json", dir])).unwrap();
        let mut ours: Vec<(String, u64)> = ours
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                // debugfs gives directories no size.
                let size = match e["kind"].as_str() {
                    Some("dir") => 0,
                    _ => e["size"].as_u64().unwrap(),
                };
                (e["name"].as_str().unwrap().to_string(), size)
            })
            .collect();
        ours.sort();
        // `ls -p`: /inode/mode/uid/gid/name/size/
        let out = tool("debugfs", &["-R", &format!("ls -p {dir}"), s(&im.ext_img)]);
        let mut theirs: Vec<(String, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('/').collect();
                (f.len() >= 7 && f[5] != "." && f[5] != "..")
                    .then(|| (f[5].to_string(), f[6].parse().unwrap_or(0)))
            })
            .collect();
        theirs.sort();
        assert_eq!(ours, theirs, "ls {dir}");
    }
}

#[test]
fn volumes_and_files_of_local_vmdks() {
    let im = images();
    let dir = tempdir();
    for (disk, gpt) in [(&im.mbr, false), (&im.gpt, true)] {
        let tag = if gpt { "gpt" } else { "mbr" };
        // A sparse VMDK, a streamOptimized one.
        for t in ["monolithicSparse", "streamOptimized"] {
            let vmdk = dir.path().join(format!("{tag}-{t}.vmdk"));
            vdisk_ok(&["convert", "-t", t, s(&disk.raw), s(&vmdk)]);
            check_disk(
                &local(&vmdk),
                disk,
                gpt,
                im,
                &dir.path().join(format!("{tag}-{t}")),
            );
        }
        // A chain: the base lacks the ext4 volume, the child adds it.
        let holed = dir.path().join(format!("{tag}-holed.raw"));
        let mut bytes = std::fs::read(&disk.raw).unwrap();
        let (_, at) = disk.ext;
        bytes[at as usize..at as usize + (24 << 20)].fill(0);
        std::fs::write(&holed, &bytes).unwrap();
        let base = dir.path().join(format!("{tag}-base.vmdk"));
        let child = dir.path().join(format!("{tag}-child.vmdk"));
        vdisk_ok(&["convert", "-t", "monolithicSparse", s(&holed), s(&base)]);
        vdisk_ok(&["snapshot", s(&base), s(&child)]);
        vdisk_ok(&[
            "write",
            s(&child),
            "--offset",
            &at.to_string(),
            "--from",
            s(&im.ext_img),
        ]);
        check_disk(
            &local(&child),
            disk,
            gpt,
            im,
            &dir.path().join(format!("{tag}-chain")),
        );
    }
}

/// An inventory whose VM has the two test disks (keys 2000: MBR, 2001:
/// GPT) as sparse VMDKs on datastore `ds`.
pub(crate) fn sim_with_disks(root: &Path) -> SimServer {
    let im = images();
    let ds = root.join("ds");
    std::fs::create_dir_all(ds.join("vm")).unwrap();
    for (raw, name) in [(&im.mbr.raw, "mbr"), (&im.gpt.raw, "gpt")] {
        vdisk_ok(&[
            "convert",
            "-t",
            "monolithicSparse",
            s(raw),
            s(&ds.join(format!("vm/{name}.vmdk"))),
        ]);
    }
    let inv = serde_json::json!({
        "mode": "vcenter",
        "datacenter": "dc1",
        "users": [{"user": "backup@local", "password": "pw"}],
        "hosts": [],
        "datastores": [{"name": "ds", "path": s(&ds)}],
        "vms": [{
            "name": "vm",
            "power": "poweredOn",
            "cbt": true,
            "disks": [
                {"file": "[ds] vm/mbr.vmdk", "capacity": 128 << 20},
                {"file": "[ds] vm/gpt.vmdk", "capacity": 128 << 20}
            ]
        }]
    });
    let inv_path = root.join("inventory.json");
    std::fs::write(&inv_path, serde_json::to_vec_pretty(&inv).unwrap()).unwrap();
    sim_serve(&["--inventory", s(&inv_path)])
}

#[test]
fn volumes_and_files_over_nbdssl_and_from_a_backup_point() {
    let im = images();
    let dir = tempdir();
    let sim = sim_with_disks(dir.path());
    for (disk, gpt, file) in [
        (&im.mbr, false, "[ds] vm/mbr.vmdk"),
        (&im.gpt, true, "[ds] vm/gpt.vmdk"),
    ] {
        let remote = Source {
            args: vec![
                "--transport".into(),
                "nbdssl".into(),
                "--vm".into(),
                "moref=vm-100".into(),
                file.into(),
            ],
            sim: Some(&sim),
        };
        check_disk(
            &remote,
            disk,
            gpt,
            im,
            &dir.path().join(format!("sim-{gpt}")),
        );
    }
    let repo = dir.path().join("repo");
    let out = sim.run(&["repo", "init", s(&repo), "--encryption", "none"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sim.run(
        &[
            "backup",
            "--vm",
            "moref=vm-100",
            "--to",
            s(&repo),
            "--transport",
            "nbd",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (disk, gpt, key) in [(&im.mbr, false, "2000"), (&im.gpt, true, "2001")] {
        let point = Source {
            args: vec![
                "--from".into(),
                s(&repo).into(),
                "--backup".into(),
                "latest".into(),
                "--disk".into(),
                key.into(),
            ],
            sim: None,
        };
        check_disk(
            &point,
            disk,
            gpt,
            im,
            &dir.path().join(format!("point-{gpt}")),
        );
    }
    // A backup of several disks: the disk must be named.
    let out = vdisk(&["volumes", "--from", s(&repo), "--backup", "latest"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--disk"));
}

/// Hostile names never leave the destination, and nothing is written
/// through an existing path.
#[test]
fn extraction_refuses_existing_targets() {
    let im = images();
    let dir = tempdir();
    let dest: PathBuf = dir.path().join("x");
    std::fs::write(&dest, b"keep").unwrap();
    let out = vdisk(&[
        "get",
        s(&im.gpt.vmdk),
        "--partition",
        "2",
        "/hello.txt",
        "-o",
        s(&dest),
    ]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&dest).unwrap(), b"keep");
    // A relative guest path is refused.
    let out = vdisk(&["ls", s(&im.gpt.vmdk), "--partition", "2", "etc"]);
    assert!(!out.status.success());
    // A path that does not exist is a clear error.
    let out = vdisk(&["ls", s(&im.gpt.vmdk), "--partition", "2", "/nope"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}
