//! Repository format 2 through the CLI: many backup processes at once
//! with garbage collection beside them, on a directory and on moto's
//! S3-compatible server; encryption and key handling; prune and GC;
//! migration of a format-1 repository made by the format-1 writer.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[path = "../../repo-store/tests/support/moto.rs"]
mod moto;

use crate::support::*;

const PASS: &str = "the repository passphrase";

/// `vdisk ARGS` with extra environment.
fn vdisk_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vdisk"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run vdisk")
}

fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = vdisk_env(args, env);
    assert!(
        out.status.success(),
        "vdisk {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `n` local disks (flat VMDKs over raw files) of 3 MiB: a region every
/// disk shares (deduplicated), one of its own, holes elsewhere.
fn disks(dir: &Path, n: usize) -> Vec<(PathBuf, Vec<u8>)> {
    let shared = pattern(512 << 10, 99);
    (0..n)
        .map(|i| {
            let mut raw = vec![0u8; 3 << 20];
            raw[..shared.len()].copy_from_slice(&shared);
            let own = pattern(700 << 10, i as u64 + 1);
            let at = (1 << 20) + i * 4096;
            raw[at..at + own.len()].copy_from_slice(&own);
            let name = format!("d{i}.raw");
            write(dir, &name, &raw);
            let vmdk = write(
                dir,
                &format!("d{i}.vmdk"),
                flat_descriptor(&name, (raw.len() / 512) as u64).as_bytes(),
            );
            (vmdk, raw)
        })
        .collect()
}

fn point_of(backup_stdout: &str) -> String {
    // "backup POINT: read …"
    backup_stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string()
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vdisk"));
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("spawn vdisk")
}

/// Eight processes backing up (two rounds each, all at once) into one
/// repository while GC passes with a 3 s grace run beside them; then
/// every point restores byte for byte, verify is clean, and a last GC
/// finds no chunk that a finished point references missing.
fn many_writers(location: &str, dir: &Path, env: &[(&str, &str)]) {
    let disks = disks(dir, 8);
    ok_env(&["repo", "init", location, "--chunk-size", "256K"], env);
    let mut gc_env: Vec<(&str, &str)> = env.to_vec();
    gc_env.push(("VDISK_TEST_SHORT_GRACE", "1"));
    let done = AtomicBool::new(false);
    let started = AtomicBool::new(false);
    let mut points: Vec<(String, usize)> = Vec::new();
    std::thread::scope(|scope| {
        let gc = scope.spawn(|| {
            let mut passes = 0;
            while !done.load(Ordering::SeqCst) {
                started.store(true, Ordering::SeqCst);
                let out = vdisk_env(&["repo", "gc", location, "--grace", "3"], &gc_env);
                assert!(
                    out.status.success(),
                    "gc failed beside the writers: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                passes += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            passes
        });
        // The writers start once a GC pass is under way.
        while !started.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut children = Vec::new();
        for round in 0..2 {
            for (i, (vmdk, _)) in disks.iter().enumerate() {
                let proxy = format!("proxy-{i}-{round}");
                children.push((
                    i,
                    spawn(
                        &[
                            "backup",
                            "--file",
                            s(vmdk),
                            "--to",
                            location,
                            "--proxy",
                            &proxy,
                            "--lease-renew",
                            "0.2",
                        ],
                        env,
                    ),
                ));
            }
        }
        for (i, c) in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "backup of disk {i} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            points.push((point_of(&String::from_utf8_lossy(&out.stdout)), i));
        }
        done.store(true, Ordering::SeqCst);
        let passes = gc.join().unwrap();
        assert!(passes >= 1, "no GC pass ran beside the writers");
    });
    assert_eq!(points.len(), 16);
    let listed: serde_json::Value =
        serde_json::from_str(&ok_env(&["repo", "list", location, "--json"], env)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 16);
    // A GC with the grace long passed: everything referenced stays.
    std::thread::sleep(Duration::from_secs(4));
    let out = ok_env(&["repo", "gc", location, "--grace", "3"], &gc_env);
    assert!(out.contains("0 stale leases"), "{out}");
    for (point, i) in &points {
        let to = dir.join(format!("r-{point}.vmdk"));
        ok_env(
            &[
                "restore",
                "--from",
                location,
                "--backup",
                point,
                "--to",
                s(&to),
            ],
            env,
        );
        assert!(vdisk_raw(&to) == disks[*i].1, "point {point} of disk {i}");
    }
    let v = ok_env(&["verify", "--from", location], env);
    assert!(v.contains("0 bad chunks, 0 bad indexes"), "{v}");
}

#[test]
fn eight_processes_and_a_gc_share_a_directory_repository() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    many_writers(s(&repo), dir.path(), &[("VDISK_PASSPHRASE", PASS)]);
}

#[test]
fn eight_processes_and_a_gc_share_an_s3_repository() {
    let dir = tempdir();
    let moto = moto::Moto::start();
    moto.create_bucket("backups");
    let env = [
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", moto::SECRET_ACCESS_KEY),
        ("VDISK_PASSPHRASE", PASS),
    ];
    many_writers("s3://backups/site-a/vms", dir.path(), &env);
}

/// What an encrypted repository stores gives nothing away, a wrong
/// passphrase fails clearly, the passphrase never shows, and damage is
/// found by verify and refused by restore.
#[test]
fn encryption_and_key_handling_through_the_cli() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let disks = disks(dir.path(), 1);
    let (vmdk, raw) = &disks[0];
    let pass_file = write(dir.path(), "pass", format!("{PASS}\n").as_bytes());
    let init = ok_env(
        &[
            "repo",
            "init",
            s(&repo),
            "--passphrase-file",
            s(&pass_file),
            "--chunk-size",
            "256K",
        ],
        &[],
    );
    assert!(init.contains("encrypted") && !init.contains(PASS), "{init}");
    let out = vdisk_env(&["repo", "init", s(&repo), "--encryption", "none"], &[]);
    assert!(!out.status.success(), "a second init over the first");
    let b = ok_env(
        &["backup", "--file", s(vmdk), "--to", s(&repo)],
        &[("VDISK_PASSPHRASE", PASS)],
    );
    let point = point_of(&b);
    // Nothing stored shows the disk's bytes, its name or the passphrase.
    let needles: Vec<&[u8]> = vec![
        &raw[..64],
        &raw[(1 << 20)..(1 << 20) + 64],
        b"d0.vmdk",
        PASS.as_bytes(),
    ];
    let mut objects = Vec::new();
    let mut stack = vec![repo.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                objects.push(p);
            }
        }
    }
    assert!(objects.len() > 3);
    for o in &objects {
        let bytes = std::fs::read(o).unwrap();
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == *n),
                "{} holds plaintext",
                o.display()
            );
        }
    }
    // No passphrase, a wrong one: clear refusals that do not echo it.
    let out = vdisk_env(&["verify", "--from", s(&repo)], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase"));
    let out = vdisk_env(
        &["verify", "--from", s(&repo)],
        &[("VDISK_PASSPHRASE", "not it")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("wrong passphrase"),
        "{err}"
    );
    assert!(!err.contains("not it"));
    // Restored with the right one.
    let to = dir.path().join("r.vmdk");
    ok_env(
        &[
            "restore",
            "--from",
            s(&repo),
            "--backup",
            &point,
            "--to",
            s(&to),
            "--passphrase-file",
            s(&pass_file),
        ],
        &[],
    );
    assert!(vdisk_raw(&to) == *raw);
    // A flipped byte in each object in turn: verify fails, restore fails
    // and leaves nothing behind.
    for o in objects.iter().filter(|o| !o.ends_with("config")) {
        let good = std::fs::read(o).unwrap();
        let mut bad = good.clone();
        let at = bad.len() / 3;
        bad[at] ^= 0x01;
        std::fs::write(o, &bad).unwrap();
        let v = vdisk_env(
            &["verify", "--from", s(&repo)],
            &[("VDISK_PASSPHRASE", PASS)],
        );
        assert!(
            !v.status.success(),
            "verify missed damage in {}",
            o.display()
        );
        let to = dir.path().join("bad.vmdk");
        let r = vdisk_env(
            &[
                "restore",
                "--from",
                s(&repo),
                "--backup",
                &point,
                "--to",
                s(&to),
            ],
            &[("VDISK_PASSPHRASE", PASS)],
        );
        assert!(!r.status.success(), "restore used damaged {}", o.display());
        assert!(!to.exists());
        std::fs::write(o, &good).unwrap();
    }
    ok_env(
        &["verify", "--from", s(&repo)],
        &[("VDISK_PASSPHRASE", PASS)],
    );
}

/// A key-file repository opens with its key file only.
#[test]
fn a_key_file_repository() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let key = dir.path().join("repo.key");
    ok_env(
        &[
            "repo",
            "init",
            s(&repo),
            "--encryption",
            "keyfile",
            "--key-file",
            s(&key),
        ],
        &[],
    );
    assert!(key.is_file());
    let out = vdisk_env(
        &[
            "repo",
            "init",
            s(&dir.path().join("r2")),
            "--encryption",
            "keyfile",
            "--key-file",
            s(&key),
        ],
        &[],
    );
    assert!(
        !out.status.success(),
        "an existing key file was overwritten"
    );
    assert!(!vdisk_env(&["repo", "list", s(&repo)], &[]).status.success());
    ok_env(&["repo", "list", s(&repo), "--key-file", s(&key)], &[]);
}

/// Prune forgets per policy; GC then frees only what no point needs.
#[test]
fn prune_and_gc_through_the_cli() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let disks = disks(dir.path(), 2);
    ok_env(
        &[
            "repo",
            "init",
            s(&repo),
            "--encryption",
            "none",
            "--chunk-size",
            "64K",
        ],
        &[],
    );
    let mut points = Vec::new();
    for round in 0..3u8 {
        // Each round changes disk 0.
        let raw = dir.path().join("d0.raw");
        let mut bytes = std::fs::read(&raw).unwrap();
        bytes[2 << 20..(2 << 20) + 4096].fill(round + 1);
        std::fs::write(&raw, &bytes).unwrap();
        points.push(point_of(&ok_env(
            &["backup", "--file", s(&disks[0].0), "--to", s(&repo)],
            &[],
        )));
        std::thread::sleep(Duration::from_millis(1100));
    }
    let other = point_of(&ok_env(
        &["backup", "--file", s(&disks[1].0), "--to", s(&repo)],
        &[],
    ));
    let dry = ok_env(
        &["repo", "prune", s(&repo), "--keep-last", "1", "--dry-run"],
        &[],
    );
    assert!(dry.contains("2 of 4 point disks would forget"), "{dry}");
    let out = ok_env(&["repo", "prune", s(&repo), "--keep-last", "1"], &[]);
    assert!(out.contains("2 of 4 point disks forgot"), "{out}");
    let listed = ok_env(&["repo", "list", s(&repo)], &[]);
    assert!(listed.contains(&points[2]) && listed.contains(&other));
    assert!(!listed.contains(&points[0]) && !listed.contains(&points[1]));
    let out = vdisk_env(&["repo", "gc", s(&repo), "--grace", "5"], &[]);
    assert!(
        !out.status.success(),
        "a grace under 10 minutes needs the test switch"
    );
    std::thread::sleep(Duration::from_secs(2));
    let out = ok_env(
        &["repo", "gc", s(&repo), "--grace", "1"],
        &[("VDISK_TEST_SHORT_GRACE", "1")],
    );
    // The two forgotten points each had one 64K chunk of their own.
    assert!(out.contains(" 2 deleted"), "{out}");
    ok_env(&["verify", "--from", s(&repo)], &[]);
    let to = dir.path().join("last.vmdk");
    ok_env(
        &[
            "restore",
            "--from",
            s(&repo),
            "--backup",
            &points[2],
            "--to",
            s(&to),
        ],
        &[],
    );
    assert!(vdisk_raw(&to) == std::fs::read(dir.path().join("d0.raw")).unwrap());
}

/// A format-1 repository made by the format-1 writer (full, incremental
/// and differential backups of the simulator's VM) converts, and every
/// point restores exactly as it did from format 1; a second run converts
/// nothing more. Backups refuse a format-1 repository.
#[test]
fn migrate_converts_a_format1_repository() {
    let dir = tempdir();
    let root = dir.path().join("sim");
    let srv = sim_serve(&["--demo", "--root", s(&root)]);
    let env: std::collections::HashMap<&str, &str> = srv
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let lib = disklib::api::Library::init(disklib::api::Config::default());
    let params = disklib::api::ConnectParams::remote(
        env["VDISK_SERVER"],
        env["VDISK_THUMBPRINT"],
        disklib::api::Credentials::password(env["VDISK_USER"], env["VDISK_PASSWORD"]),
        "vm-100",
    );
    let old = dir.path().join("old");
    let guest = |offset: &str, pattern: &str| {
        let out = srv.run(
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
                "300K",
            ],
            &[],
        );
        assert!(out.status.success());
    };
    guest("1M", "0x21");
    for (kind, offset, pattern) in [
        (cbt::BackupKind::Full, "5M", "0x42"),
        (cbt::BackupKind::Incremental, "9M", "0x43"),
        (cbt::BackupKind::Differential, "", ""),
    ] {
        disklib::backup::backup(&lib, &params, &old, kind, Some("nbd"), &mut |_, _| {}).unwrap();
        if !offset.is_empty() {
            guest(offset, pattern);
        }
    }
    let new = dir.path().join("new");
    ok_env(&["repo", "init", s(&new), "--encryption", "none"], &[]);
    let out = vdisk_env(&["backup", "--vm", "moref=vm-100", "--to", s(&old)], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("vdisk repo migrate"));
    let out = ok_env(&["repo", "migrate", s(&old), s(&new)], &[]);
    let pairs: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("backup ")?;
            let (a, b) = rest.split_once(" -> point ")?;
            Some((a.to_string(), b.to_string()))
        })
        .collect();
    assert_eq!(pairs.len(), 3, "{out}");
    for (old_id, new_id) in &pairs {
        let a = dir.path().join(format!("v1-{old_id}"));
        let b = dir.path().join(format!("v2-{old_id}"));
        ok_env(
            &[
                "restore",
                "--from",
                s(&old),
                "--backup",
                old_id,
                "--to",
                s(&a),
            ],
            &[],
        );
        ok_env(
            &[
                "restore",
                "--from",
                s(&new),
                "--backup",
                new_id,
                "--to",
                s(&b),
            ],
            &[],
        );
        for key in ["2000", "2001"] {
            let f = format!("{key}.vmdk");
            assert!(
                vdisk_raw(&a.join(&f)) == vdisk_raw(&b.join(&f)),
                "backup {old_id} disk {key}"
            );
        }
    }
    let listed: serde_json::Value =
        serde_json::from_str(&ok_env(&["repo", "list", s(&new), "--json"], &[])).unwrap();
    let kinds: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["disk"] == 2000)
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["full", "incremental", "differential"]);
    let again = ok_env(&["repo", "migrate", s(&old), s(&new)], &[]);
    assert!(again.contains("migrated 0 backups"), "{again}");
    ok_env(&["verify", "--from", s(&new)], &[]);
    ok_env(&["verify", "--from", s(&old)], &[]);
}
