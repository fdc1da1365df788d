//! Snapshot chains: read-through, zeroed grains that do not read through,
//! CID checks, missing parents, loops, depth.

use crate::support::*;

fn base_and_child(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = dir.join("base.vmdk");
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        s(&base),
        "16M",
    ]);
    qemu_io(&["-f", "vmdk", "-c", "write -P 0xaa 0 8M", s(&base)]);
    let child = dir.join("child.vmdk");
    // Run in `dir` so the hint is the relative name.
    let out = std::process::Command::new("qemu-img")
        .current_dir(dir)
        .args([
            "create",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "child.vmdk",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    qemu_io(&["-f", "vmdk", "-c", "write -P 0xbb 1M 64k", s(&child)]);
    qemu_io(&["-f", "vmdk", "-c", "write -P 0xcc 12M 100k", s(&child)]);
    (base, child)
}

#[test]
fn delta_chain_reads_through_like_qemu() {
    let dir = tempdir();
    let (_, child) = base_and_child(dir.path());
    let ours = vdisk_raw(&child);
    assert_same(&ours, &qemu_raw(&child, dir.path()), "child");
    assert_eq!(vdisk_data_ranges(&child), qemu_data_ranges(&child));
    let info: serde_json::Value =
        serde_json::from_slice(&vdisk_ok(&["info", "--json", s(&child)])).unwrap();
    assert_eq!(info["chain"].as_array().unwrap().len(), 2);
    assert!(info["parent"].as_str().unwrap().ends_with("base.vmdk"));
    assert_eq!(vdisk(&["check", s(&child)]).status.code(), Some(0));
}

#[test]
fn zeroed_grain_in_child_hides_parent_data() {
    let dir = tempdir();
    let (_, child) = base_and_child(dir.path());
    qemu_io(&["-f", "vmdk", "-c", "write -z 2M 1M", s(&child)]);
    let ours = vdisk_raw(&child);
    assert!(
        ours[2 << 20..3 << 20].iter().all(|&b| b == 0),
        "zeroed grains must not read through"
    );
    assert!(ours[3 << 20..4 << 20].iter().all(|&b| b == 0xaa));
    assert_same(&ours, &qemu_raw(&child, dir.path()), "child");
}

#[test]
fn three_level_chain_and_deep_chain() {
    let dir = tempdir();
    let (_, child) = base_and_child(dir.path());
    let grandchild = dir.path().join("gc.vmdk");
    let out = std::process::Command::new("qemu-img")
        .current_dir(dir.path())
        .args([
            "create",
            "-f",
            "vmdk",
            "-b",
            "child.vmdk",
            "-F",
            "vmdk",
            "gc.vmdk",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    qemu_io(&["-f", "vmdk", "-c", "write -P 0xdd 1M 4k", s(&grandchild)]);
    assert_same(
        &vdisk_raw(&grandchild),
        &qemu_raw(&grandchild, dir.path()),
        "grandchild",
    );
    let _ = child;

    // 40 links: the chain opens and reads the newest write per range.
    let mut prev = "base.vmdk".to_string();
    for i in 0..40 {
        let name = format!("l{i}.vmdk");
        let out = std::process::Command::new("qemu-img")
            .current_dir(dir.path())
            .args([
                "create", "-q", "-f", "vmdk", "-b", &prev, "-F", "vmdk", &name,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        qemu_io(&[
            "-f",
            "vmdk",
            "-c",
            &format!("write -P {} {}k 4k", i + 1, i * 64),
            s(&dir.path().join(&name)),
        ]);
        prev = name;
    }
    let top = dir.path().join(&prev);
    let raw = vdisk_raw(&top);
    for i in 0..40usize {
        assert!(
            raw[i * 65536..i * 65536 + 4096]
                .iter()
                .all(|&b| b == i as u8 + 1),
            "link {i}"
        );
    }
    let info: serde_json::Value =
        serde_json::from_slice(&vdisk_ok(&["info", "--json", s(&top)])).unwrap();
    assert_eq!(info["chain"].as_array().unwrap().len(), 41);
}

fn rewrite(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read(path).unwrap();
    let s = String::from_utf8_lossy(&text).into_owned();
    assert!(s.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, s.replacen(from, to, 1)).unwrap();
}

#[test]
fn cid_mismatch_is_refused_unless_overridden() {
    let dir = tempdir();
    let base = dir.path().join("base-flat.raw");
    std::fs::write(&base, pattern(1 << 20, 1)).unwrap();
    write(
        dir.path(),
        "base.vmdk",
        flat_descriptor("base-flat.raw", 2048).as_bytes(),
    );
    let child_data = build::Sparse::new(
        2048,
        build::grains_of(
            &{
                let mut d = vec![0u8; 1 << 20];
                d[65536..131072].fill(0x42);
                d
            },
            65536,
        ),
    );
    let (bytes, _) = child_data.build();
    write(dir.path(), "child-s.vmdk", &bytes);
    let desc = "# Disk DescriptorFile\nversion=1\nCID=22222222\nparentCID=11111111\ncreateType=\"twoGbMaxExtentSparse\"\nparentFileNameHint=\"base.vmdk\"\n\nRW 2048 SPARSE \"child-s.vmdk\"\n";
    let child = write(dir.path(), "child.vmdk", desc.as_bytes());
    let raw = vdisk_raw(&child);
    let mut expect = pattern(1 << 20, 1);
    expect[65536..131072].fill(0x42);
    assert_same(&raw, &expect, "chain");

    rewrite(&child, "parentCID=11111111", "parentCID=12345678");
    let out = vdisk(&["cat", s(&child)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("parentCID 12345678 does not match CID 11111111"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(vdisk(&["check", s(&child)]).status.code(), Some(2));
    let raw = vdisk_ok(&["cat", "--ignore-cid-mismatch", s(&child)]);
    assert_same(&raw, &expect, "overridden");

    // Missing parent.
    rewrite(
        &child,
        "parentFileNameHint=\"base.vmdk\"",
        "parentFileNameHint=\"gone.vmdk\"",
    );
    let out = vdisk(&["info", s(&child)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("parent `gone.vmdk` not found"));

    // A chain that loops back on itself.
    rewrite(
        &child,
        "parentFileNameHint=\"gone.vmdk\"",
        "parentFileNameHint=\"child.vmdk\"",
    );
    rewrite(&child, "parentCID=12345678", "parentCID=22222222");
    let out = vdisk(&["info", s(&child)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loops"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A parent hint leaving the directory is refused by default.
    rewrite(
        &child,
        "parentFileNameHint=\"child.vmdk\"",
        "parentFileNameHint=\"../base.vmdk\"",
    );
    let out = vdisk(&["info", s(&child)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("leaves the descriptor's directory"));
}

/// A child whose `parentFileNameHint` is the absolute path qemu was given.
fn child_with_hint(dir: &std::path::Path, base: &std::path::Path) -> std::path::PathBuf {
    let child = dir.join("abs-child.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        s(base),
        "-F",
        "vmdk",
        s(&child),
    ]);
    qemu_io(&["-f", "vmdk", "-c", "write -P 0xdd 2M 64k", s(&child)]);
    let bytes = std::fs::read(&child).unwrap();
    let text = String::from_utf8_lossy(&bytes[512..bytes.len().min(21 * 512)]);
    let hint = format!("parentFileNameHint=\"{}\"", s(base));
    assert!(text.contains(&hint), "qemu wrote the absolute path: {text}");
    child
}

/// An absolute `parentFileNameHint` naming a file in the delta's own
/// directory is inside it; outside it is still refused unless allowed.
#[test]
fn absolute_parent_hint_inside_the_directory() {
    let dir = tempdir();
    let (base, _) = base_and_child(dir.path());
    let child = child_with_hint(dir.path(), &base);
    assert_same(
        &vdisk_raw(&child),
        &qemu_raw(&child, dir.path()),
        "absolute hint",
    );
    assert_eq!(vdisk(&["check", s(&child)]).status.code(), Some(0));
    // Reached through a symlinked directory, the hint still names the
    // directory's canonical path.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    vdisk_ok(&["cat", s(&link.join("abs-child.vmdk")), "-o", "/dev/null"]);

    // The same hint from another directory is outside.
    let other = tempdir();
    let moved = other.path().join("abs-child.vmdk");
    std::fs::copy(&child, &moved).unwrap();
    let out = vdisk(&["cat", s(&moved), "-o", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("leaves the descriptor's directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    vdisk_ok(&["cat", "--allow-outside-paths", s(&moved), "-o", "/dev/null"]);

    // Inside by name, outside by a symlink: the kernel refuses it.
    let outside = tempdir();
    std::fs::rename(&base, outside.path().join("base.vmdk")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("base.vmdk"), &base).unwrap();
    let out = vdisk(&["cat", s(&child), "-o", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("leaves the descriptor's directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
