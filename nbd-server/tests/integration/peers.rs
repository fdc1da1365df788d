//! Real NBD clients against the server.

use std::sync::atomic::Ordering;

use super::support::*;

#[test]
fn nbdinfo_json_and_map() {
    need("nbdinfo");
    let disk = MemExport::new(1 << 20, true);
    disk.write_at_pattern();
    let srv = start_one(disk.clone());
    let json = run("nbdinfo", &["--json", &srv.uri]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let export = &v["exports"][0];
    assert_eq!(export["export-size"], 1 << 20, "{json}");
    assert_eq!(export["export-name"], "disk", "{json}");
    assert_eq!(export["description"], "in-memory test disk", "{json}");
    assert_eq!(export["is_read_only"], false, "{json}");
    assert_eq!(export["can_multi_conn"], true, "{json}");
    assert_eq!(export["can_trim"], true, "{json}");
    assert_eq!(export["can_zero"], true, "{json}");
    assert_eq!(export["can_fua"], true, "{json}");
    assert_eq!(export["can_flush"], true, "{json}");
    assert_eq!(export["block_size_preferred"], 4096, "{json}");
    assert_eq!(v["protocol"], "newstyle-fixed", "{json}");
    // The map: one line per extent, "offset length type description".
    let map = run("nbdinfo", &["--map", &srv.uri]);
    let got: Vec<(u64, u64, u32)> = map
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let allocated = disk.allocated();
    let mut want: Vec<(u64, u64, u32)> = Vec::new();
    for c in 0..(1 << 20) / CHUNK {
        let t = if allocated.contains(&c) { 0 } else { 3 };
        match want.last_mut() {
            Some(last) if last.2 == t => last.1 += CHUNK,
            _ => want.push((c * CHUNK, CHUNK, t)),
        }
    }
    assert_eq!(got, want, "{map}");
    assert!(want.len() > 2, "the test disk has holes and data");
}

impl MemExport {
    /// Writes [`pattern`] chunk by chunk, leaving its zero chunks as holes.
    pub fn write_at_pattern(&self) {
        use nbd_server::BlockExport;
        let p = pattern(self.size as usize);
        for (i, c) in p.chunks(CHUNK as usize).enumerate() {
            if c.iter().any(|&b| b != 0) {
                self.write_at(i as u64 * CHUNK, c, false).unwrap();
            }
        }
    }
}

#[test]
fn nbdinfo_lists_exports() {
    need("nbdinfo");
    let cfg = nbd_server::ServerConfig::new()
        .with_export("", MemExport::new(4096, false))
        .with_export("second", MemExport::new(8192, true));
    let srv = start(cfg, "");
    let out = run("nbdinfo", &["--list", "--json", &srv.uri]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut names: Vec<(String, u64)> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().unwrap().to_owned(),
                e["export-size"].as_u64().unwrap(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![("".into(), 4096), ("second".into(), 8192)],
        "{out}"
    );
    // The default export by URI, and an unknown one refused.
    assert_eq!(run("nbdinfo", &["--size", &srv.uri]).trim(), "4096");
    let bad = output("nbdinfo", &["--size", &srv.uri_of("nope")]);
    assert!(!bad.status.success());
}

#[test]
fn nbdcopy_both_directions() {
    need("nbdcopy");
    let size = 3 << 20;
    let disk = MemExport::new(size, true);
    let srv = start_one(disk.clone());
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let data = pattern(size as usize);
    std::fs::write(&src, &data).unwrap();
    run("nbdcopy", &[src.to_str().unwrap(), &srv.uri]);
    assert!(
        disk.contents() == data,
        "export differs from the uploaded file"
    );
    let back = dir.path().join("back.img");
    run("nbdcopy", &[&srv.uri, back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data, "download differs");
    // Several connections at once (the export allows multi-conn).
    let back2 = dir.path().join("back2.img");
    run(
        "nbdcopy",
        &[
            "--connections=4",
            "--requests=8",
            &srv.uri,
            back2.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&back2).unwrap() == data,
        "multi-conn download differs"
    );
}

#[test]
fn qemu_img_compare_and_convert() {
    need("qemu-img");
    let disk = MemExport::new(2 << 20, false);
    disk.write_at_pattern_readonly();
    let srv = start_one(disk.clone());
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.img");
    std::fs::write(&local, pattern(2 << 20)).unwrap();
    let l = local.to_str().unwrap();
    run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", l, &srv.uri],
    );
    let out = dir.path().join("out.img");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &srv.uri,
            out.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&out).unwrap() == pattern(2 << 20));
    // A different byte makes compare fail: the comparison is real.
    let mut other = pattern(2 << 20);
    other[12345] ^= 0xff;
    std::fs::write(&local, &other).unwrap();
    let res = output(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", l, &srv.uri],
    );
    assert_eq!(res.status.code(), Some(1), "{res:?}");
}

#[test]
fn qemu_io_writes_zeroes_and_reads() {
    need("qemu-io");
    let disk = MemExport::new(1 << 20, true);
    let srv = start_one(disk.clone());
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 64k",
            "-c",
            "write -P 0x33 64k 128k",
            "-c",
            "write -z 64k 64k",
            "-c",
            "read -P 0x5a 0 64k",
            "-c",
            "read -P 0 64k 64k",
            "-c",
            "read -P 0x33 128k 64k",
            "-c",
            "flush",
            &srv.uri,
        ],
    );
    assert!(!out.contains("failed"), "{out}");
    assert_eq!(out.matches("read 65536/65536 bytes").count(), 3, "{out}");
    let c = disk.contents();
    assert!(c[..65536].iter().all(|&b| b == 0x5a));
    assert!(c[65536..131072].iter().all(|&b| b == 0));
    assert!(c[131072..196608].iter().all(|&b| b == 0x33));
    assert!(disk.flushes.load(Ordering::SeqCst) >= 1);
    // A wrong pattern is detected: the reads above are real checks.
    let res = output(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x11 0 4k", &srv.uri],
    );
    let out = String::from_utf8_lossy(&res.stdout);
    assert!(out.contains("Pattern verification failed"), "{out}");
}

#[test]
fn read_only_export_refuses_writes() {
    need("qemu-io");
    let disk = MemExport::new(1 << 20, false);
    disk.write_at_pattern_readonly();
    let before = disk.contents();
    let srv = start_one(disk.clone());
    // qemu opens read-write by default: it must refuse (the export is read-only).
    let res = output(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x5a 0 64k", &srv.uri],
    );
    let text =
        String::from_utf8_lossy(&res.stdout).into_owned() + &String::from_utf8_lossy(&res.stderr);
    assert!(!text.contains("wrote 65536/65536"), "{text}");
    assert!(disk.contents() == before);
    need("nbdsh");
    {
        // Below qemu's own check: the server answers EPERM.
        let script = "
import errno
assert h.is_read_only()
try:
    h.pwrite(b'x' * 512, 0)
    raise SystemExit('write accepted')
except nbd.Error as e:
    assert e.errnum == errno.EPERM, e
";
        run("nbdsh", &["-u", &srv.uri, "-c", script]);
        assert!(disk.contents() == before);
    }
}

impl MemExport {
    /// Fills a read-only export's backing store directly.
    pub fn write_at_pattern_readonly(&self) {
        let p = pattern(self.size as usize);
        let mut chunks = self.chunks.lock().unwrap();
        for (i, c) in p.chunks(CHUNK as usize).enumerate() {
            if c.iter().any(|&b| b != 0) {
                chunks.insert(i as u64, c.to_vec());
            }
        }
    }
}

#[test]
fn nbdsh_block_status_fua_zero_trim_multi_conn() {
    need("nbdsh");
    let disk = MemExport::new(1 << 20, true);
    let srv = start_one(disk.clone());
    let script = r#"
import nbd, errno
uri = URI
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
assert h.get_structured_replies_negotiated()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert h.can_fua() and h.can_trim() and h.can_zero() and h.can_df() and h.can_multi_conn()
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
assert h.get_size() == 1 << 20

def extents(off, length, flags=0):
    got = []
    def cb(meta, offset, entries, err):
        assert meta == nbd.CONTEXT_BASE_ALLOCATION
        got.extend(zip(entries[0::2], entries[1::2]))
    h.block_status(length, off, cb, flags)
    return got

assert extents(0, 1 << 20) == [(1 << 20, 3)], extents(0, 1 << 20)
h.pwrite(b'\xab' * 65536, 65536, nbd.CMD_FLAG_FUA)
assert extents(0, 1 << 20) == [(65536, 3), (65536, 0), ((1 << 20) - 131072, 3)], extents(0, 1 << 20)
assert extents(0, 1 << 20, nbd.CMD_FLAG_REQ_ONE) == [(65536, 3)]
assert h.pread(65536, 65536) == b'\xab' * 65536
# A structured read over data and holes, reassembled by libnbd.
assert h.pread(3 * 65536, 0) == bytes(65536) + b'\xab' * 65536 + bytes(65536)
chunks = []
def chunk(sub, off, status, err):
    chunks.append((off, len(sub), status))
    return 0
h.pread_structured(3 * 65536, 0, chunk)
assert chunks == [(0, 65536, nbd.READ_HOLE), (65536, 65536, nbd.READ_DATA), (131072, 65536, nbd.READ_HOLE)], chunks
chunks.clear()
h.pread_structured(3 * 65536, 0, chunk, nbd.CMD_FLAG_DF)
assert chunks == [(0, 3 * 65536, nbd.READ_DATA)], chunks
# Zero keeping the allocation, then with a hole allowed.
h.zero(4096, 65536, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 65536) == bytes(4096)
assert extents(65536, 65536) == [(65536, 0)]
h.zero(65536, 65536)
assert extents(65536, 65536) == [(65536, 3)]
h.pwrite(b'\x01' * 131072, 262144)
h.trim(131072, 262144)
assert extents(262144, 131072) == [(131072, 3)]
h.flush()
# Out of bounds.
try:
    h.pread(512, (1 << 20) - 256)
    raise SystemExit('read past the end accepted')
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
# Several connections at once: writes on one are seen by the others.
hs = []
for i in range(4):
    o = nbd.NBD()
    o.connect_uri(uri)
    hs.append(o)
cookies = [o.aio_pwrite(bytes([i + 1]) * 4096, 8192 * (i + 1)) for i, o in enumerate(hs)]
for o, c in zip(hs, cookies):
    while not o.aio_command_completed(c):
        o.poll(-1)
for i in range(4):
    assert hs[(i + 1) % 4].pread(4096, 8192 * (i + 1)) == bytes([i + 1]) * 4096
for o in hs:
    o.shutdown()
"#
    .replace("URI", &format!("{:?}", srv.uri));
    run("nbdsh", &["-c", &script]);
    assert!(disk.fua_writes.load(Ordering::SeqCst) >= 1);
    assert!(disk.flushes.load(Ordering::SeqCst) >= 1);
    let c = disk.contents();
    for i in 0..4usize {
        let at = 8192 * (i + 1);
        assert!(c[at..at + 4096].iter().all(|&b| b == i as u8 + 1));
    }
    srv.stop().unwrap();
}

#[test]
fn tcp_loopback_with_nbdinfo_and_nbdcopy() {
    need("nbdinfo");
    need("nbdcopy");
    let disk = MemExport::new(1 << 20, false);
    disk.write_at_pattern_readonly();
    let cfg = nbd_server::ServerConfig::new().with_export("disk", disk.clone());
    let srv = start_on(nbd_server::Listen::tcp_loopback(0), cfg, "disk");
    assert!(srv.uri.starts_with("nbd://127.0.0.1:"), "{}", srv.uri);
    assert_eq!(run("nbdinfo", &["--size", &srv.uri]).trim(), "1048576");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.img");
    run("nbdcopy", &[&srv.uri, out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == disk.contents());
    srv.stop().unwrap();
}
