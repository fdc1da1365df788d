//! Tidy checks over the workspace's sources, run as tests (rust-analyzer's
//! `tidy.rs`): conventions a compiler does not enforce.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Error enums of a crate's `src/`: `(file, enum name, non_exhaustive)`.
fn error_enums(krate: &str) -> Vec<(PathBuf, String, bool)> {
    let mut files = Vec::new();
    rust_files(&workspace().join(krate).join("src"), &mut files);
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let Some(rest) = l.trim_start().strip_prefix("pub enum ") else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.ends_with("Error") {
                continue;
            }
            // The attributes and doc comments right above the enum.
            let marked = lines[..i]
                .iter()
                .rev()
                .take_while(|l| {
                    let t = l.trim_start();
                    t.starts_with("#[") || t.starts_with("///")
                })
                .any(|l| l.trim() == "#[non_exhaustive]");
            out.push((f.clone(), name, marked));
        }
    }
    out
}

/// Error enums that other crates match on can grow without breaking
/// them: every one is `#[non_exhaustive]`.
#[test]
fn error_enums_are_non_exhaustive() {
    let mut missing = Vec::new();
    for krate in [
        "vmdk-format",
        "vmdk-file",
        "nfc-proto",
        "vim-soap",
        "cbt",
        "transport-nbd",
        "transport-san",
        "transport-hotadd",
        "disklib",
        "nbd-proto",
        "nbd-server",
        "guest-volumes",
        "repo-format",
        "repo-store",
    ] {
        let found = error_enums(krate);
        assert!(!found.is_empty(), "{krate}: no error enum found");
        for (file, name, marked) in found {
            if !marked {
                missing.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(missing.is_empty(), "not #[non_exhaustive]: {missing:#?}");
}

/// `cbt` has one error type, `cbt::Error`.
#[test]
fn cbt_has_one_error_type() {
    let names: Vec<String> = error_enums("cbt").into_iter().map(|e| e.1).collect();
    assert_eq!(names, ["Error"]);
}
