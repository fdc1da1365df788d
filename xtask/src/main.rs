//! `cargo xtask`: the project's automation. Run `cargo xtask help`.

#![forbid(unsafe_code)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod deps;
#[cfg(test)]
mod tidy;

type Result<T = ()> = std::result::Result<T, String>;

/// Every task, with its one-line help.
const TASKS: &[(&str, &str)] = &[
    (
        "demo",
        "full + incremental backup of a VM on the embedded simulator, then a verified restore",
    ),
    (
        "test",
        "run the whole test suite (the README's test command; what .ci/run runs), after deps",
    ),
    (
        "integration",
        "only the integration runs against the simulators and the peers (vcsim), after deps",
    ),
    (
        "crash [--states N]",
        "power-loss tests (release) with about N crash states per workload (default 2000)",
    ),
    (
        "deps [--bench] [--check]",
        "install the missing test peers (--bench: the benches' too; --check: only report)",
    ),
    (
        "fuzz TARGET [--minutes N]",
        "run one cargo-fuzz target (nightly) for N minutes (default 5)",
    ),
    ("fuzz-list", "list the fuzz targets"),
    (
        "bench read",
        "sequential read of 1 GiB sparse, stream and flat images vs qemu-img and dd",
    ),
    (
        "bench write",
        "convert 1 GiB raw to streamOptimized and monolithicSparse vs qemu-img",
    ),
    (
        "bench nbd",
        "1 GiB read from the simulator over nbd / nbdssl vs plain TCP / TLS loops",
    ),
    (
        "bench backup",
        "full backup of a 1 GiB disk over nbd, nbdssl, san, hotadd vs reading it",
    ),
    (
        "bench san",
        "O_DIRECT read of a 1 GiB LUN through the san transport vs fio and qemu-img",
    ),
    (
        "bench serve",
        "nbdcopy from vdisk serve vs qemu-nbd and nbdkit; vdisk get of 1 GiB vs debugfs rdump",
    ),
    (
        "bench repo",
        "2 GiB disk into a repository (format 2) vs restic; 5 % incremental; restore vs cat",
    ),
    ("doc", "build the docs with warnings denied"),
    (
        "dist",
        "release libvixDiskLib.so.8 and vixDiskLib.h under target/dist/{lib64,include}",
    ),
    ("help", "this list"),
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => {
            let mut c = cargo();
            c.args([
                "run", "--quiet", "-p", "vdisk", "--bin", "vdisk", "--", "demo",
            ]);
            run(c)
        }
        Some("test") => test(),
        Some("integration") => integration(),
        Some("crash") => crash(&args[1..]),
        Some("deps") => deps::run_deps(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("fuzz-list") => fuzz_list(),
        Some("bench") => bench::run_bench(&args[1..]),
        Some("doc") => doc(),
        Some("dist") => dist(),
        Some("help") | None => {
            help();
            Ok(())
        }
        Some(other) => {
            help();
            Err(format!("unknown task `{other}`"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn help() {
    println!("cargo xtask <task>\n");
    for (name, what) in TASKS {
        println!("  {name:<28} {what}");
    }
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub(crate) fn run(mut c: Command) -> Result {
    eprintln!("xtask: running {c:?}");
    let status = c.status().map_err(|e| format!("{c:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{c:?} failed: {status}"))
    }
}

fn test() -> Result {
    deps::ensure(&[deps::Group::Test])?;
    let mut c = cargo();
    c.args(["test", "--workspace", "--locked"]);
    run(c)?;
    // The fuzz crate is its own workspace; building its targets on stable
    // keeps them from rotting without needing nightly in CI.
    let mut c = cargo();
    c.env("RUSTFLAGS", "--cfg fuzzing");
    c.args(["build", "--manifest-path", "fuzz/Cargo.toml", "--bins"]);
    run(c)
}

fn integration() -> Result {
    deps::ensure(&[deps::Group::Test])?;
    let mut c = cargo();
    c.args([
        "test",
        "--locked",
        "-p",
        "disklib",
        "--test",
        "backup",
        "--test",
        "san_hotadd",
        "-p",
        "transport-san",
        "--test",
        "lun",
        "-p",
        "transport-nbd",
        "--test",
        "nbd",
        "-p",
        "vsphere-sim",
        "--test",
        "soap",
        // The repository's stores, S3 on moto's server among them.
        "-p",
        "repo-store",
        "--test",
        "stores",
    ]);
    run(c)?;
    let mut c = cargo();
    c.args([
        "test",
        "--locked",
        "-p",
        "vdisk",
        "--test",
        "integration",
        "--",
        "sim_cli",
        "peers",
        "repo::",
    ]);
    run(c)?;
    // The C library against simulator disks over nbd / nbdssl.
    let mut c = cargo();
    c.args([
        "test",
        "--locked",
        "-p",
        "vixdisklib",
        "--test",
        "c_abi",
        "simulator",
    ]);
    run(c)
}

/// The power-loss tests with more crash states than CI checks. Their
/// counts are summed from the lines they print.
fn crash(args: &[String]) -> Result {
    use std::io::{BufRead, BufReader};
    let mut states = 2000u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--states" => {
                states = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--states needs a positive whole number")?
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let runs: [&[&str]; 2] = [
        &["-p", "vmdk-file", "--test", "integration", "power_loss"],
        &[
            "-p",
            "disklib",
            "--test",
            "backup",
            "backups_survive_power_loss",
        ],
    ];
    let mut total = 0u64;
    for run in runs {
        let mut c = cargo();
        c.args(["test", "--release", "--locked"]).args(run);
        c.env("VMDK_CRASH_STATES", states.to_string());
        c.stderr(std::process::Stdio::piped());
        eprintln!("xtask: running {c:?}");
        let mut child = c.spawn().map_err(|e| format!("{c:?}: {e}"))?;
        if let Some(err) = child.stderr.take() {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                eprintln!("{line}");
                total += checked_count(&line).unwrap_or(0);
            }
        }
        let status = child.wait().map_err(|e| format!("{c:?}: {e}"))?;
        if !status.success() {
            return Err(format!("{c:?} failed: {status}"));
        }
    }
    println!("xtask: {total} crash states checked");
    Ok(())
}

/// `N` from a line `... N crash states checked ...`.
fn checked_count(line: &str) -> Option<u64> {
    let (head, _) = line.split_once(" crash states checked")?;
    head.rsplit(' ').next()?.parse().ok()
}

fn fuzz_targets() -> Result<Vec<String>> {
    let dir = root().join("fuzz/fuzz_targets");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .collect();
    v.sort();
    Ok(v)
}

fn fuzz_list() -> Result {
    for t in fuzz_targets()? {
        println!("{t}");
    }
    Ok(())
}

fn fuzz(args: &[String]) -> Result {
    let target = args
        .first()
        .ok_or("usage: cargo xtask fuzz TARGET [--minutes N]")?;
    if !fuzz_targets()?.contains(target) {
        return Err(format!(
            "no fuzz target `{target}` (see `cargo xtask fuzz-list`)"
        ));
    }
    let mut minutes = 5u64;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => {
                minutes = it
                    .next()
                    .and_then(|m| m.parse().ok())
                    .ok_or("--minutes needs a whole number")?
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let corpus = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
    let mut c = Command::new("cargo");
    c.current_dir(root().join("fuzz"));
    c.env_remove("CARGO").env_remove("RUSTUP_TOOLCHAIN");
    c.args(["+nightly", "fuzz", "run", target]);
    c.arg(&corpus);
    c.arg("--");
    c.arg(format!("-max_total_time={}", minutes * 60));
    c.arg("-rss_limit_mb=2048");
    c.arg("-timeout=10");
    // Seeds are whole tiny images, larger than libFuzzer's 4 KiB default.
    c.arg("-max_len=131072");
    run(c)
}

/// The layout nbdkit's `libdir=` (and VDDK users) expect:
/// `lib64/libvixDiskLib.so.8` and `include/vixDiskLib.h`.
fn dist() -> Result {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "--locked",
        "-p",
        "vixdisklib",
        "--lib",
    ]);
    run(c)?;
    let root = root();
    let dist = root.join("target/dist");
    let lib64 = dist.join("lib64");
    let include = dist.join("include");
    for d in [&lib64, &include] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let copy = |from: PathBuf, to: PathBuf| {
        std::fs::copy(&from, &to)
            .map(|_| ())
            .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
    };
    copy(
        root.join("target/release/libvixDiskLib.so"),
        lib64.join("libvixDiskLib.so.8"),
    )?;
    copy(
        root.join("vixdisklib/include/vixDiskLib.h"),
        include.join("vixDiskLib.h"),
    )?;
    println!(
        "xtask: {}\n       {}",
        lib64.join("libvixDiskLib.so.8").display(),
        include.join("vixDiskLib.h").display()
    );
    Ok(())
}

fn doc() -> Result {
    let mut c = cargo();
    c.env("RUSTDOCFLAGS", "-D warnings");
    c.args(["doc", "--workspace", "--no-deps"]);
    run(c)
}

#[cfg(test)]
mod tests {
    /// The words of a task's name before its arguments: `["bench", "san"]`
    /// for "bench san", `["fuzz"]` for "fuzz TARGET [--minutes N]".
    fn words(task: &str) -> Vec<&str> {
        task.split(' ')
            .take_while(|w| w.starts_with(|c: char| c.is_ascii_lowercase()))
            .collect()
    }

    /// The string patterns of a `match` on task names in `src`.
    fn dispatched(src: &str) -> Vec<String> {
        let pat = concat!("Some", "(\"");
        let mut v: Vec<String> = src
            .split(pat)
            .skip(1)
            .filter_map(|rest| rest.split('"').next().map(str::to_owned))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn crash_counts_are_read_from_the_tests_lines() {
        assert_eq!(
            super::checked_count("power loss, create: 105 crash states checked (138 changes)"),
            Some(105)
        );
        assert_eq!(super::checked_count("test power_loss ... ok"), None);
    }

    /// The help table lists exactly the tasks `main` and `bench` dispatch.
    #[test]
    fn help_table_matches_dispatch() {
        let mut top: Vec<String> = super::TASKS
            .iter()
            .map(|(t, _)| words(t)[0].to_owned())
            .collect();
        top.sort();
        top.dedup();
        assert_eq!(top, dispatched(include_str!("main.rs")));

        let mut bench: Vec<String> = super::TASKS
            .iter()
            .filter_map(|(t, _)| match words(t)[..] {
                ["bench", sub] => Some(sub.to_owned()),
                _ => None,
            })
            .collect();
        bench.sort();
        assert_eq!(bench, dispatched(include_str!("bench.rs")));
    }
}
