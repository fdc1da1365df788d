//! Helpers shared by the integration tests: running `vdisk` and the
//! qemu tools, deterministic test data, and byte-level builders for the
//! fixtures qemu cannot write. The builders follow the format notes
//! directly and share no code with the reader, so what they build is an
//! independent statement of the expected content.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod build;
pub mod images;
pub mod torture;

/// A `vdisk sim serve` child, killed when dropped, and the `VDISK_*`
/// variables it printed.
pub struct SimServer {
    child: std::process::Child,
    pub env: Vec<(String, String)>,
}

impl Drop for SimServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `vdisk sim serve ARGS` and reads the variables it prints.
pub fn sim_serve(args: &[&str]) -> SimServer {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["sim", "serve"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Four variables, then VDISK_CONFIG (the demo) or a `# datastore`
    // comment line (an inventory file).
    let mut env = Vec::new();
    for _ in 0..5 {
        let l = lines.next().unwrap().unwrap();
        if let Some((k, v)) = l.split_once('=').filter(|_| !l.starts_with('#')) {
            env.push((k.to_string(), v.trim_matches('\'').to_string()));
        }
    }
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "VDISK_SERVER",
            "VDISK_USER",
            "VDISK_PASSWORD",
            "VDISK_THUMBPRINT",
        ]
    );
    SimServer { child, env }
}

impl SimServer {
    /// A `vdisk` command with this simulator's variables (and overrides).
    pub fn command(&self, args: &[&str], overrides: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vdisk"));
        c.args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        for (k, v) in overrides {
            c.env(k, v);
        }
        c
    }

    /// Runs `vdisk ARGS` against this simulator.
    pub fn run(&self, args: &[&str], overrides: &[(&str, &str)]) -> Output {
        self.command(args, overrides).output().unwrap()
    }
}

pub fn vdisk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(args)
        .output()
        .expect("run vdisk")
}

pub fn vdisk_ok(args: &[&str]) -> Vec<u8> {
    let out = vdisk(args);
    assert!(
        out.status.success(),
        "vdisk {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs a peer tool; the suite needs it (CI installs qemu-utils).
pub fn tool(name: &str, args: &[&str]) -> Output {
    let out = Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} is required by the test suite (apt-get install qemu-utils): {e}")
    });
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn qemu_img(args: &[&str]) -> Output {
    tool("qemu-img", args)
}

pub fn qemu_io(args: &[&str]) -> Output {
    tool("qemu-io", args)
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 test path")
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        v.extend_from_slice(&state.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// What qemu-img reads from an image, as raw bytes.
pub fn qemu_raw(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!(
        "{}.qemu.raw",
        img.file_name().unwrap().to_string_lossy()
    ));
    qemu_img(&["convert", "-O", "raw", s(img), s(&out)]);
    std::fs::read(out).unwrap()
}

/// What `vdisk cat` reads.
pub fn vdisk_raw(img: &Path) -> Vec<u8> {
    vdisk_ok(&["cat", s(img)])
}

/// Data intervals `[start, end)` from `vdisk map --json`.
pub fn vdisk_data_ranges(img: &Path) -> Vec<(u64, u64)> {
    let out = vdisk_ok(&["map", "--json", s(img)]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let mut ranges = Vec::new();
    let mut expect = 0;
    for e in v.as_array().unwrap() {
        let start = e["start"].as_u64().unwrap();
        let len = e["length"].as_u64().unwrap();
        assert_eq!(start, expect, "map must be ordered and gap-free");
        expect = start + len;
        if e["kind"] == "data" {
            push_range(&mut ranges, start, start + len);
        }
    }
    ranges
}

/// Data intervals from `qemu-img map --output=json`.
pub fn qemu_data_ranges(img: &Path) -> Vec<(u64, u64)> {
    let out = qemu_img(&["map", "--output=json", s(img)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ranges = Vec::new();
    for e in v.as_array().unwrap() {
        if e["data"] == true {
            let start = e["start"].as_u64().unwrap();
            push_range(&mut ranges, start, start + e["length"].as_u64().unwrap());
        }
    }
    ranges
}

pub fn push_range(v: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    if let Some(last) = v.last_mut() {
        if last.1 == start {
            last.1 = end;
            return;
        }
    }
    v.push((start, end));
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Compares two byte buffers, reporting the first difference.
pub fn assert_same(ours: &[u8], expected: &[u8], what: &str) {
    assert_eq!(ours.len(), expected.len(), "{what}: length differs");
    if let Some(i) = ours.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} ({:#x} vs {:#x})",
            ours[i], expected[i]
        );
    }
}

/// A flat-disk descriptor for `sectors` sectors in `file`.
pub fn flat_descriptor(file: &str, sectors: u64) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=11111111\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW {sectors} FLAT \"{file}\" 0\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\n"
    )
}
