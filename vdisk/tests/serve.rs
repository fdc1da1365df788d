//! `vdisk serve` against libnbd's tools and qemu: a local chain, a
//! writable local disk, one partition, a simulator disk over nbdssl, a
//! backup point and a writable delta over one, TLS.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::guest::sim_with_disks;
use crate::support::images::images;
use crate::support::*;

/// A running `vdisk serve` and the URI it printed.
struct Served {
    child: Option<Child>,
    uri: String,
    /// Kept open: the server may print more lines (one per export).
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Served {
    fn start(mut c: Command) -> Self {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let uri = match line.trim_end().strip_prefix("NBD_URI=") {
            Some(u) => u.to_string(),
            None => {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "vdisk serve printed {line:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        Served {
            child: Some(child),
            uri,
            _stdout: stdout,
        }
    }

    /// SIGTERM, then the exit status must be success.
    fn stop(mut self) {
        let child = self.child.take().unwrap();
        tool("kill", &["-TERM", &child.id().to_string()]);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "vdisk serve after SIGTERM: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn serve_local(args: &[&str]) -> Served {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vdisk"));
    c.arg("serve").args(args);
    Served::start(c)
}

/// PATH with /usr/bin first: nbdsh runs `python3 -m nbd`, and the
/// distribution's python3 is the one with libnbd's bindings.
fn nbd_tool(name: &str, args: &[&str]) -> std::process::Output {
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let out = Command::new(name)
        .args(args)
        .env("PATH", path)
        .output()
        .unwrap_or_else(|e| panic!("{name} is required by the test suite: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `nbdinfo --map`: (start, length, type) with type 0 data, 2 zero,
/// 3 hole+zero.
fn nbd_map(uri: &str) -> Vec<(u64, u64, u32)> {
    let out = nbd_tool("nbdinfo", &["--map", uri]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// `vdisk map` in the same terms.
fn vdisk_map(disk: &Path) -> Vec<(u64, u64, u32)> {
    let v: serde_json::Value =
        serde_json::from_slice(&vdisk_ok(&["map", "--json", s(disk)])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let t = match e["kind"].as_str().unwrap() {
                "data" => 0,
                "zero" => 2,
                _ => 3,
            };
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                t,
            )
        })
        .collect()
}

fn nbdcopy_out(uri: &str, out: &Path) -> Vec<u8> {
    nbd_tool("nbdcopy", &["--connections=4", uri, s(out)]);
    std::fs::read(out).unwrap()
}

fn qemu_compare(raw: &Path, uri: &str) {
    tool(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", s(raw), uri],
    );
}

#[test]
fn a_local_chain_read_by_nbdinfo_nbdcopy_and_qemu() {
    let im = images();
    let dir = tempdir();
    // base: the GPT disk; child: a pattern over part of it.
    let base = dir.path().join("base.vmdk");
    let child = dir.path().join("child.vmdk");
    vdisk_ok(&[
        "convert",
        "-t",
        "monolithicSparse",
        s(&im.gpt.raw),
        s(&base),
    ]);
    vdisk_ok(&["snapshot", s(&base), s(&child)]);
    vdisk_ok(&[
        "write",
        s(&child),
        "--offset",
        "5000000",
        "--pattern",
        "0x6b",
        "--length",
        "300000",
    ]);
    let mut want = std::fs::read(&im.gpt.raw).unwrap();
    want[5_000_000..5_300_000].fill(0x6b);
    let want_path = write(dir.path(), "want.raw", &want);

    let srv = serve_local(&[
        s(&child),
        "--socket",
        s(&dir.path().join("s")),
        "--export-name",
        "chain",
    ]);
    assert!(
        srv.uri.starts_with("nbd+unix:///chain?socket="),
        "{}",
        srv.uri
    );
    assert_eq!(nbd_map(&srv.uri), vdisk_map(&child));
    let info = String::from_utf8(nbd_tool("nbdinfo", &["--json", &srv.uri]).stdout).unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["exports"][0]["export-size"], want.len() as u64);
    assert_eq!(info["exports"][0]["is_read_only"], true);
    assert_eq!(info["exports"][0]["can_multi_conn"], true);
    assert!(nbdcopy_out(&srv.uri, &dir.path().join("copy.raw")) == want);
    qemu_compare(&want_path, &srv.uri);
    let conv = dir.path().join("conv.raw");
    tool(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &srv.uri, s(&conv)],
    );
    assert!(std::fs::read(&conv).unwrap() == want);
    // Read-only: qemu-io's write fails and nothing changes.
    let w = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x11 0 4096", &srv.uri])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&w.stdout),
        String::from_utf8_lossy(&w.stderr)
    );
    assert!(!w.status.success() || text.contains("failed"), "{text}");
    srv.stop();
    assert!(vdisk_raw(&child) == want);
    assert!(
        !dir.path().join("s").exists(),
        "the socket is removed at exit"
    );

    // One partition alone: the ext4 volume's bytes.
    let srv = serve_local(&[
        s(&child),
        "--partition",
        "2",
        "--socket",
        s(&dir.path().join("p")),
    ]);
    let ext = nbdcopy_out(&srv.uri, &dir.path().join("p2.raw"));
    assert!(ext == std::fs::read(&im.ext_img).unwrap());
    srv.stop();
}

#[test]
fn a_writable_local_disk_written_by_qemu_io_and_nbdsh() {
    let im = images();
    let dir = tempdir();
    let disk = dir.path().join("w.vmdk");
    vdisk_ok(&[
        "convert",
        "-t",
        "monolithicSparse",
        s(&im.mbr.raw),
        s(&disk),
    ]);
    let srv = serve_local(&[s(&disk), "--writable", "--socket", s(&dir.path().join("s"))]);
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 1048576 65536",
            "-c",
            "write -z 2097152 131072",
            "-c",
            "write -P 0x33 100000 777",
            "-c",
            "flush",
            &srv.uri,
        ],
    );
    // FUA, zero without holes, trim, structured reads and block status
    // through libnbd's own Python binding.
    let script = r#"
h.pwrite(b"\x77" * 4096, 8388608, nbd.CMD_FLAG_FUA)
h.zero(65536, 16777216, nbd.CMD_FLAG_NO_HOLE)
h.trim(65536, 33554432)
assert h.pread(4096, 8388608) == b"\x77" * 4096
assert h.pread(65536, 16777216) == bytes(65536)
assert h.can_meta_context("base:allocation")
seen = []
def f(meta, offset, entries, err):
    seen.extend(entries)
h.block_status(4 << 20, 8 << 20, f)
assert len(seen) >= 2 and seen[1] in (0, 1, 2, 3), seen
h.flush()
"#;
    nbd_tool(
        "nbdsh",
        &["--base-allocation", "-u", &srv.uri, "-c", script],
    );
    srv.stop();
    let mut want = std::fs::read(&im.mbr.raw).unwrap();
    want[1 << 20..(1 << 20) + 65536].fill(0x5a);
    want[2 << 20..(2 << 20) + 131072].fill(0);
    want[100_000..100_777].fill(0x33);
    want[8 << 20..(8 << 20) + 4096].fill(0x77);
    want[16 << 20..(16 << 20) + 65536].fill(0);
    let got = vdisk_raw(&disk);
    // Trimmed bytes read as zero (trim zeroes whole grains here).
    want[32 << 20..(32 << 20) + 65536].fill(0);
    assert!(got == want, "the disk differs from what was written");
    let check = vdisk(&["check", s(&disk)]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn a_simulator_disk_over_nbdssl() {
    let im = images();
    let dir = tempdir();
    let sim = sim_with_disks(dir.path());
    let c = sim.command(
        &[
            "serve",
            "[ds] vm/gpt.vmdk",
            "--transport",
            "nbdssl",
            "--vm",
            "moref=vm-100",
            "--socket",
            s(&dir.path().join("s")),
        ],
        &[],
    );
    let srv = Served::start(c);
    let want = std::fs::read(&im.gpt.raw).unwrap();
    assert!(nbdcopy_out(&srv.uri, &dir.path().join("copy.raw")) == want);
    qemu_compare(&im.gpt.raw, &srv.uri);
    // The host's allocation: every byte the VMDK stores is data, and what
    // is reported as a hole reads as zero (checked by the copy above).
    let map = nbd_map(&srv.uri);
    assert_eq!(map.iter().map(|m| m.1).sum::<u64>(), want.len() as u64);
    for (start, len, t) in vdisk_map(&im.gpt.vmdk) {
        if t == 0 {
            assert!(
                map.iter()
                    .any(|&(s2, l2, t2)| t2 == 0 && s2 <= start && start + len <= s2 + l2),
                "data at {start}+{len} is not data over NBD: {map:?}"
            );
        }
    }
    srv.stop();
}

#[test]
fn a_backup_point_and_a_writable_delta_over_it() {
    let im = images();
    let dir = tempdir();
    let sim = sim_with_disks(dir.path());
    let repo = dir.path().join("repo");
    let out = sim.run(&["repo", "init", s(&repo), "--encryption", "none"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup = |kind: &str| -> String {
        let out = sim.run(
            &[
                "backup",
                "--vm",
                "moref=vm-100",
                "--to",
                s(&repo),
                "--transport",
                "nbd",
                kind,
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // "backup POINT: read …"
        let out = String::from_utf8_lossy(&out.stdout);
        out.split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches(':')
            .to_string()
    };
    backup("--full");
    let out = sim.run(
        &[
            "sim",
            "guest-write",
            "--vm",
            "moref=vm-100",
            "--disk",
            "2001",
            "--offset",
            "70M",
            "--pattern",
            "0xc3",
            "--length",
            "200K",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let point_id = backup("--incremental");
    let mut want = std::fs::read(&im.gpt.raw).unwrap();
    want[70 << 20..(70 << 20) + (200 << 10)].fill(0xc3);
    let want_path = write(dir.path(), "want.raw", &want);

    let point = |extra: &[&str]| {
        let mut args = vec![
            "--from",
            s(&repo),
            "--backup",
            &point_id,
            "--disk",
            "2001",
            "--socket",
        ];
        let sock = dir.path().join("s");
        let sock = s(&sock).to_string();
        let mut c = Command::new(env!("CARGO_BIN_EXE_vdisk"));
        args.push(&sock);
        c.arg("serve").args(&args).args(extra);
        Served::start(c)
    };
    // Read in place: the incremental point, holes where nothing is stored.
    let srv = point(&[]);
    assert!(nbdcopy_out(&srv.uri, &dir.path().join("p.raw")) == want);
    qemu_compare(&want_path, &srv.uri);
    let map = nbd_map(&srv.uri);
    assert!(
        map.iter().any(|m| m.2 == 3),
        "no hole in a mostly empty disk: {map:?}"
    );
    for &(start, len, t) in &map {
        if t == 3 {
            let r = start as usize..(start + len) as usize;
            assert!(
                want[r].iter().all(|&b| b == 0),
                "a hole at {start} holds data"
            );
        }
    }
    srv.stop();

    // Instant recovery: writes land in the delta, never in the point.
    let delta = dir.path().join("delta.vmdk");
    let srv = point(&["--writable", "--delta", s(&delta)]);
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x99 4096 10000",
            "-c",
            "write -z 70M 64k",
            &srv.uri,
        ],
    );
    let mut written = want.clone();
    written[4096..14096].fill(0x99);
    written[70 << 20..(70 << 20) + (64 << 10)].fill(0);
    assert!(nbdcopy_out(&srv.uri, &dir.path().join("w.raw")) == written);
    srv.stop();
    let v = vdisk(&["verify", "--from", s(&repo)]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let srv = point(&[]);
    assert!(
        nbdcopy_out(&srv.uri, &dir.path().join("p2.raw")) == want,
        "the point changed"
    );
    srv.stop();
    // The kept delta carries on where it stopped.
    let srv = point(&["--writable", "--delta", s(&delta)]);
    assert!(nbdcopy_out(&srv.uri, &dir.path().join("w2.raw")) == written);
    srv.stop();
    // Without --delta the delta is temporary and goes away.
    let srv = point(&["--writable"]);
    tool(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 1 0 512", &srv.uri],
    );
    srv.stop();
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("vdisk-delta-"))
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!("-b{}-d2001.vmdk", &point_id[..12]))
        })
        .collect();
    assert!(leftovers.is_empty(), "a temporary delta was left behind");

    // Without --disk, every disk of the point is its own export.
    let mut c = Command::new(env!("CARGO_BIN_EXE_vdisk"));
    c.args([
        "serve",
        "--from",
        s(&repo),
        "--backup",
        "latest",
        "--export-name",
        "disk-",
    ]);
    c.args(["--socket", s(&dir.path().join("all"))]);
    let srv = Served::start(c);
    assert!(srv.uri.starts_with("nbd+unix:///disk-2000?"), "{}", srv.uri);
    let list =
        String::from_utf8(nbd_tool("nbdinfo", &["--list", "--json", &srv.uri]).stdout).unwrap();
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["disk-2000", "disk-2001"]);
    let second = srv.uri.replacen("disk-2000", "disk-2001", 1);
    assert!(nbdcopy_out(&second, &dir.path().join("all.raw")) == want);
    srv.stop();
}

#[test]
fn tls_required_over_tcp() {
    let im = images();
    let dir = tempdir();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let key = certs.join("key.pem");
    let cert = certs.join("ca-cert.pem");
    tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            s(&key),
            "-out",
            s(&cert),
        ],
    );
    let srv = serve_local(&[
        s(&im.gpt.vmdk),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        s(&cert),
        "--tls-key",
        s(&key),
        "--tls",
        "require",
    ]);
    assert!(srv.uri.starts_with("nbds://127.0.0.1:"), "{}", srv.uri);
    let uri = format!("{}?tls-certificates={}", srv.uri, s(&certs));
    let info = String::from_utf8(nbd_tool("nbdinfo", &[&uri]).stdout).unwrap();
    assert!(
        info.contains("using TLS") || info.contains("with TLS"),
        "{info}"
    );
    assert!(nbdcopy_out(&uri, &dir.path().join("t.raw")) == std::fs::read(&im.gpt.raw).unwrap());
    // Without TLS the server refuses.
    let plain = srv.uri.replacen("nbds://", "nbd://", 1);
    let out = Command::new("nbdinfo").arg(&plain).output().unwrap();
    assert!(!out.status.success(), "a plain client was served");
    srv.stop();
}

/// A flat disk's file holes are holes over NBD (what nbdkit's file
/// plugin reports for the same file), so copies skip them.
#[test]
fn holes_of_a_flat_extent_are_holes() {
    let dir = tempdir();
    let disk = dir.path().join("flat.vmdk");
    vdisk_ok(&["create", "-t", "monolithicFlat", s(&disk), "8M"]);
    vdisk_ok(&[
        "write",
        s(&disk),
        "--offset",
        "1M",
        "--pattern",
        "0x42",
        "--length",
        "64K",
    ]);
    let srv = serve_local(&[s(&disk), "--socket", s(&dir.path().join("s"))]);
    let map = nbd_map(&srv.uri);
    let data: Vec<(u64, u64)> = map
        .iter()
        .filter(|m| m.2 == 0)
        .map(|m| (m.0, m.1))
        .collect();
    // The filesystem may allocate a little around the write, never the
    // whole disk.
    assert!(
        data.iter()
            .any(|&(s2, l)| s2 <= 1 << 20 && (1 << 20) + 65536 <= s2 + l),
        "{map:?}"
    );
    assert!(data.iter().map(|d| d.1).sum::<u64>() < 4 << 20, "{map:?}");
    let mut want = vec![0u8; 8 << 20];
    want[1 << 20..(1 << 20) + 65536].fill(0x42);
    assert!(nbdcopy_out(&srv.uri, &dir.path().join("c.raw")) == want);
    srv.stop();
}
