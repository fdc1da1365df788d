//! `cargo xtask deps`: the peers the tests and benches run against (the
//! programs and files they check our output with), each installed only
//! when it is missing.
//!
//! One file on purpose: the table of peers and the code that plans and
//! installs them are read together (a third of it is their tests).
//!
//! [`PEERS`] is the one place that knows them. A peer is one of:
//! - Debian packages, present when a command is on `PATH`, a file exists
//!   or a command succeeds;
//! - a Python virtualenv, `target/peers/venv-NAME` (made with
//!   `python3 -m venv`), holding pip packages;
//! - a Go program built in GOPATH mode over Debian's `/usr/share/gocode`
//!   (its sources come from `golang-*-dev` packages) into `target/peers/`.
//!
//! [`plan`] works out what is missing from probes alone, through a
//! function the caller passes (so it is tested without touching the
//! machine); [`ensure`] probes for real and carries the plan out: one
//! `apt-get update` and one `apt-get install` (as root, else through
//! `sudo -n`), then the virtualenvs, then the Go builds.
//!
//! `target/peers/` is under the workspace root whatever
//! `CARGO_TARGET_DIR` says, so tests find what is built there at a fixed
//! place.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{root, run, Result};

/// Which runs need a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Group {
    /// `cargo xtask test` and `cargo xtask integration`.
    Test,
    /// The benches that compare with other programs (`cargo xtask bench
    /// read|write|san|serve|repo`); `cargo xtask deps --bench` adds them.
    Bench,
}

/// One thing the tests or benches run against.
#[derive(Debug)]
pub(crate) struct Peer {
    /// What it provides, as a user would name it.
    pub(crate) what: &'static str,
    /// Which tests or benches use it.
    pub(crate) why: &'static str,
    /// The runs that need it.
    pub(crate) groups: &'static [Group],
    /// How it is installed.
    pub(crate) kind: Kind,
}

/// How a peer is installed.
#[derive(Debug)]
pub(crate) enum Kind {
    /// Debian packages.
    Apt(Apt),
    /// A virtualenv `target/peers/venv-NAME` with these pip requirements
    /// (`name` or `name==version`; a package counts as present when
    /// `pip show name` finds it, whatever its version).
    Venv {
        name: &'static str,
        pip: &'static [&'static str],
    },
    /// `go build -o target/peers/NAME MAIN` with `GOPATH=/usr/share/gocode`
    /// and `GO111MODULE=off`; `sources` are the Debian packages holding
    /// MAIN and what it imports.
    Go {
        name: &'static str,
        main: &'static str,
        sources: &'static [Apt],
    },
}

/// Debian packages and what proves them installed.
#[derive(Debug)]
pub(crate) struct Apt {
    pub(crate) present: Probe,
    pub(crate) packages: &'static [&'static str],
}

/// What proves a Debian peer present, as written in the table.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Probe {
    /// An executable of this name on `PATH`.
    Command(&'static str),
    /// This file or directory exists; `{arch}` stands for the machine
    /// (`x86_64`, `aarch64`), as in Debian's multiarch directories.
    Path(&'static str),
    /// This command runs and exits 0.
    Runs(&'static [&'static str]),
}

/// What [`plan`] asks its probe function: [`Probe`] with the paths
/// resolved, plus the questions about virtualenvs and builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    Command(&'static str),
    Path(PathBuf),
    Runs(&'static [&'static str]),
    /// `python -m pip show DIST` succeeds, `python` being a virtualenv's.
    Pip {
        python: PathBuf,
        dist: String,
    },
    /// `out` exists and no file in the directory `sources` is newer (a
    /// Go program of this repository, rebuilt when edited).
    Built {
        out: PathBuf,
        sources: PathBuf,
    },
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Command(c) => write!(f, "`{c}` on PATH"),
            Check::Path(p) => write!(f, "{}", p.display()),
            Check::Runs(argv) => write!(f, "`{}` succeeding", argv.join(" ")),
            Check::Pip { python, dist } => write!(f, "{dist} in {}", python.display()),
            Check::Built { out, sources } => {
                write!(f, "{} newer than {}", out.display(), sources.display())
            }
        }
    }
}

impl Probe {
    fn check(self) -> Check {
        match self {
            Probe::Command(c) => Check::Command(c),
            Probe::Path(p) => Check::Path(p.replace("{arch}", env::consts::ARCH).into()),
            Probe::Runs(argv) => Check::Runs(argv),
        }
    }
}

const TEST: &[Group] = &[Group::Test];

/// Every peer. Add new ones here, and nowhere else.
pub(crate) const PEERS: &[Peer] = &[
    Peer {
        what: "qemu-img, qemu-io",
        why: "vdisk's oracle, chain and write tests and the C ABI tests check images with them; \
              bench read, write and san compare with qemu-img",
        groups: &[Group::Test, Group::Bench],
        kind: Kind::Apt(Apt {
            present: Probe::Command("qemu-img"),
            packages: &["qemu-utils"],
        }),
    },
    Peer {
        what: "vmdkinfo",
        why: "vdisk's write tests open their sparse and stream outputs with libvmdk",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("vmdkinfo"),
            packages: &["libvmdk-utils"],
        }),
    },
    Peer {
        what: "gcc",
        why: "the C ABI tests compile tests/c/vixtest.c against vixDiskLib.h",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("gcc"),
            packages: &["gcc"],
        }),
    },
    Peer {
        what: "the C library headers",
        why: "the C ABI tests compile tests/c/vixtest.c against vixDiskLib.h",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Path("/usr/include/stdio.h"),
            packages: &["libc6-dev"],
        }),
    },
    Peer {
        what: "valgrind",
        why: "the C ABI tests run the C program under memcheck (no errors, no growing leaks)",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("valgrind"),
            packages: &["valgrind"],
        }),
    },
    Peer {
        what: "nbdkit",
        why: "the C ABI tests serve a disk through nbdkit and vixdisklib's Python plugin",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("nbdkit"),
            packages: &["nbdkit"],
        }),
    },
    Peer {
        what: "nbdkit's Python plugin",
        why: "the C ABI tests run vixdisklib/tests/nbdkit/vixdisk_plugin.py in it",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Path(
                "/usr/lib/{arch}-linux-gnu/nbdkit/plugins/nbdkit-python-plugin.so",
            ),
            packages: &["nbdkit-plugin-python"],
        }),
    },
    Peer {
        what: "nbdinfo, nbdcopy",
        why: "the C ABI tests map, read and write the disk nbdkit serves with them; the NBD \
              server tests (nbd-server, vdisk serve) read, map and copy exports with them",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("nbdcopy"),
            packages: &["libnbd-bin"],
        }),
    },
    Peer {
        what: "nbdsh",
        why: "the NBD server tests (nbd-server, vdisk serve) drive block status, FUA, zero, trim \
              and TLS through libnbd's Python binding",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("nbdsh"),
            packages: &["python3-libnbd"],
        }),
    },
    Peer {
        what: "mkfs.ext4, debugfs",
        why: "the guest volume tests (guest-volumes, vdisk volumes/ls/get) make ext4 volumes and \
              check listings against debugfs",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("debugfs"),
            packages: &["e2fsprogs"],
        }),
    },
    Peer {
        what: "mkfs.vfat",
        why: "the guest volume tests make FAT12/16/32 volumes",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("mkfs.vfat"),
            packages: &["dosfstools"],
        }),
    },
    Peer {
        what: "mcopy",
        why: "the guest volume tests copy trees into FAT volumes without mounting them",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("mcopy"),
            packages: &["mtools"],
        }),
    },
    Peer {
        what: "mkntfs, ntfscp",
        why: "the guest volume tests make NTFS volumes and copy files in without mounting them",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("ntfscp"),
            packages: &["ntfs-3g"],
        }),
    },
    Peer {
        what: "sfdisk",
        why: "the guest volume tests partition disks with MBR tables (extended and logical)",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("sfdisk"),
            packages: &["fdisk"],
        }),
    },
    Peer {
        what: "sgdisk",
        why: "the guest volume tests partition disks with GPT (names, types, hybrid MBR)",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("sgdisk"),
            packages: &["gdisk"],
        }),
    },
    Peer {
        what: "openssl",
        why: "vdisk serve's TLS test makes its certificate with it",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("openssl"),
            packages: &["openssl"],
        }),
    },
    Peer {
        what: "readelf, nm",
        why: "the C ABI tests check libvixDiskLib.so's SONAME and exported symbols",
        groups: TEST,
        kind: Kind::Apt(Apt {
            present: Probe::Command("readelf"),
            packages: &["binutils"],
        }),
    },
    Peer {
        what: "vcsim",
        why: "the peer tests (vdisk/tests/peers.rs) point our SOAP client and CLI at govmomi's \
              vCenter simulator, a vCenter nobody here wrote",
        groups: TEST,
        kind: Kind::Go {
            name: "vcsim",
            main: "./xtask/peers/vcsim",
            sources: &[Apt {
                present: Probe::Path("/usr/share/gocode/src/github.com/vmware/govmomi/simulator"),
                packages: &["golang-github-vmware-govmomi-dev"],
            }],
        },
    },
    Peer {
        what: "govmomi-client",
        why: "the peer tests (vdisk/tests/peers.rs) run govmomi as a client of our simulator: \
              finder, devices, snapshot tasks, changed areas",
        groups: TEST,
        kind: Kind::Go {
            name: "govmomi-client",
            main: "./xtask/peers/govmomi-client",
            sources: &[Apt {
                present: Probe::Path("/usr/share/gocode/src/github.com/vmware/govmomi/find"),
                packages: &["golang-github-vmware-govmomi-dev"],
            }],
        },
    },
    Peer {
        what: "pyVmomi",
        why: "the peer tests (vdisk/tests/peers.rs) run VMware's Python SDK as a client of our \
              simulator: connect, container views, devices, tasks, snapshots, changed areas",
        groups: TEST,
        kind: Kind::Venv {
            name: "pyvmomi",
            pip: &["pyvmomi"],
        },
    },
    Peer {
        what: "moto",
        why: "the repository tests (repo-store, vdisk) run against moto's S3-compatible server on \
              loopback, an object store nobody here wrote",
        groups: TEST,
        kind: Kind::Venv {
            name: "moto",
            pip: &["moto[server]"],
        },
    },
    Peer {
        what: "fio",
        why: "bench san compares O_DIRECT LUN reads with fio",
        groups: &[Group::Bench],
        kind: Kind::Apt(Apt {
            present: Probe::Command("fio"),
            packages: &["fio"],
        }),
    },
    Peer {
        what: "restic",
        why: "bench repo compares full backups into repository format 2 with `restic backup \
              --stdin`",
        groups: &[Group::Bench],
        kind: Kind::Apt(Apt {
            present: Probe::Command("restic"),
            packages: &["restic"],
        }),
    },
];

/// What a virtualenv needs: `python3 -m venv` with pip (Debian splits
/// `ensurepip` into python3-venv).
const VENV_TOOL: Apt = Apt {
    present: Probe::Runs(&["python3", "-c", "import ensurepip, venv"]),
    packages: &["python3-venv"],
};

/// What a Go build needs besides its sources.
const GO_TOOL: Apt = Apt {
    present: Probe::Command("go"),
    packages: &["golang-go"],
};

/// Debian's Go sources, the GOPATH of [`Kind::Go`] builds.
const GOCODE: &str = "/usr/share/gocode";

/// What is missing and how to install it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Debian packages, each once, in table order.
    pub(crate) apt: Vec<AptStep>,
    /// What the packages must make pass, checked after installing them.
    pub(crate) apt_checks: Vec<(Check, &'static str)>,
    pub(crate) venvs: Vec<VenvStep>,
    pub(crate) go: Vec<GoStep>,
}

/// One Debian package to install.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AptStep {
    pub(crate) package: &'static str,
    pub(crate) what: &'static str,
    pub(crate) why: &'static str,
}

/// A virtualenv to create and/or fill.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct VenvStep {
    pub(crate) dir: PathBuf,
    pub(crate) create: bool,
    pub(crate) pip: Vec<&'static str>,
    pub(crate) why: &'static str,
}

/// A Go program to build.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct GoStep {
    pub(crate) out: PathBuf,
    pub(crate) main: &'static str,
    pub(crate) why: &'static str,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.apt.is_empty() && self.venvs.is_empty() && self.go.is_empty()
    }

    /// Adds `apt`'s packages unless its probe passes (or they are already
    /// planned).
    fn need_apt(
        &mut self,
        apt: &Apt,
        what: &'static str,
        why: &'static str,
        probe: &mut dyn FnMut(&Check) -> bool,
    ) {
        if apt
            .packages
            .iter()
            .all(|p| self.apt.iter().any(|s| s.package == *p))
        {
            return;
        }
        let check = apt.present.check();
        if probe(&check) {
            return;
        }
        for &package in apt.packages {
            if !self.apt.iter().any(|s| s.package == package) {
                self.apt.push(AptStep { package, what, why });
            }
        }
        self.apt_checks.push((check, what));
    }

    /// One line per step, for the user.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        for s in &self.apt {
            v.push(format!(
                "Debian package {} for {}: {}",
                s.package, s.what, s.why
            ));
        }
        for s in &self.venvs {
            let verb = if s.create { "create" } else { "fill" };
            let pip = if s.pip.is_empty() {
                String::new()
            } else {
                format!(" with pip install {}", s.pip.join(" "))
            };
            v.push(format!("{verb} {}{pip}: {}", s.dir.display(), s.why));
        }
        for s in &self.go {
            v.push(format!(
                "go build {} -> {}: {}",
                s.main,
                s.out.display(),
                s.why
            ));
        }
        v
    }
}

/// The name pip knows a requirement by: `foo` in `foo[x]==1.2`.
fn dist_name(req: &str) -> &str {
    let end = req
        .find(|c: char| "<>=!~;[ @".contains(c))
        .unwrap_or(req.len());
    &req[..end]
}

/// What of `peers` (those in one of `groups`) is missing, `probe` saying
/// what is present; `peers_dir` is where virtualenvs and Go builds go.
pub(crate) fn plan(
    peers: &[Peer],
    groups: &[Group],
    peers_dir: &Path,
    probe: &mut dyn FnMut(&Check) -> bool,
) -> Plan {
    let mut plan = Plan::default();
    for peer in peers
        .iter()
        .filter(|p| p.groups.iter().any(|g| groups.contains(g)))
    {
        match &peer.kind {
            Kind::Apt(apt) => plan.need_apt(apt, peer.what, peer.why, probe),
            Kind::Venv { name, pip } => {
                let dir = peers_dir.join(format!("venv-{name}"));
                let python = dir.join("bin/python");
                let create = !probe(&Check::Path(python.clone()));
                let pip: Vec<&'static str> = pip
                    .iter()
                    .copied()
                    .filter(|req| {
                        create
                            || !probe(&Check::Pip {
                                python: python.clone(),
                                dist: dist_name(req).to_owned(),
                            })
                    })
                    .collect();
                if create || !pip.is_empty() {
                    if create {
                        plan.need_apt(&VENV_TOOL, "python3 -m venv", peer.why, probe);
                    }
                    plan.venvs.push(VenvStep {
                        dir,
                        create,
                        pip,
                        why: peer.why,
                    });
                }
            }
            Kind::Go {
                name,
                main,
                sources,
            } => {
                let out = peers_dir.join(name);
                // A program of this repository is rebuilt when edited.
                let present = match main.strip_prefix("./") {
                    Some(dir) => Check::Built {
                        out: out.clone(),
                        sources: root().join(dir),
                    },
                    None => Check::Path(out.clone()),
                };
                if probe(&present) {
                    continue;
                }
                plan.need_apt(&GO_TOOL, "go", peer.why, probe);
                for src in *sources {
                    plan.need_apt(src, main, peer.why, probe);
                }
                plan.go.push(GoStep {
                    out,
                    main,
                    why: peer.why,
                });
            }
        }
    }
    plan
}

/// Whether `name` is an executable file in a `PATH` directory.
fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path).any(|d| {
        std::fs::metadata(d.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

fn quiet_success(c: &mut Command) -> bool {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The real probe.
fn probe(check: &Check) -> bool {
    match check {
        Check::Command(c) => on_path(c),
        Check::Path(p) => p.exists(),
        Check::Runs(argv) => quiet_success(Command::new(argv[0]).args(&argv[1..])),
        Check::Pip { python, dist } => {
            quiet_success(Command::new(python).args(["-m", "pip", "show", "-q", dist]))
        }
        Check::Built { out, sources } => built_after(out, sources),
    }
}

/// Whether `out` exists and is newer than every file in `sources`.
fn built_after(out: &Path, sources: &Path) -> bool {
    let Ok(built) = std::fs::metadata(out).and_then(|m| m.modified()) else {
        return false;
    };
    let Ok(dir) = std::fs::read_dir(sources) else {
        return true; // nothing to compare with
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .all(|m| m <= built)
}

fn is_root() -> bool {
    // "Uid:\treal\teffective\tsaved\tfs"
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            return line.split_whitespace().nth(2) == Some("0");
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `apt-get ARGS` with `DEBIAN_FRONTEND=noninteractive`, directly or
/// through `sudo -n`.
fn apt_get(sudo: bool, args: &[&str]) -> Command {
    let mut c = if sudo {
        let mut c = Command::new("sudo");
        c.args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        c
    } else {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    c.args(args);
    c
}

const APT_INSTALL: &[&str] = &["install", "-y", "--no-install-recommends"];

fn install_apt(plan: &Plan) -> Result {
    let packages: Vec<&str> = plan.apt.iter().map(|s| s.package).collect();
    let list = packages.join(" ");
    let by_hand = format!(
        "sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get {} {list}",
        APT_INSTALL.join(" ")
    );
    if !on_path("apt-get") {
        return Err(format!(
            "missing Debian packages {list}, and there is no apt-get here: \
             install their equivalents by hand"
        ));
    }
    let sudo = if is_root() {
        false
    } else if on_path("sudo") && quiet_success(Command::new("sudo").args(["-n", "true"])) {
        true
    } else {
        return Err(format!(
            "missing Debian packages {list}; installing them needs root \
             (not root, and no password-less sudo). Run:\n  {by_hand}"
        ));
    };
    run(apt_get(sudo, &["update"]))?;
    run(apt_get(sudo, &[APT_INSTALL, &packages].concat()))?;
    let still: Vec<String> = plan
        .apt_checks
        .iter()
        .filter(|(c, _)| !probe(c))
        .map(|(c, what)| format!("{what} ({c})"))
        .collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "still missing after installing {list}: {}",
            still.join(", ")
        ))
    }
}

fn install_venv(step: &VenvStep) -> Result {
    if step.create {
        let mut c = Command::new("python3");
        c.args(["-m", "venv"]).arg(&step.dir);
        run(c)?;
    }
    if !step.pip.is_empty() {
        let mut c = Command::new(step.dir.join("bin/python"));
        c.args(["-m", "pip", "install", "--disable-pip-version-check"]);
        c.args(&step.pip);
        run(c)?;
    }
    Ok(())
}

fn build_go(step: &GoStep, peers_dir: &Path) -> Result {
    let mut c = Command::new("go");
    c.current_dir(root())
        .env("GOPATH", GOCODE)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", peers_dir.join("go-cache"))
        .args(["build", "-o"])
        .arg(&step.out)
        .arg(step.main);
    run(c)
}

/// Installs what the peers of `groups` are missing.
pub(crate) fn ensure(groups: &[Group]) -> Result {
    let peers_dir = root().join("target/peers");
    let plan = plan(PEERS, groups, &peers_dir, &mut probe);
    if plan.is_empty() {
        let present: Vec<&str> = PEERS
            .iter()
            .filter(|p| p.groups.iter().any(|g| groups.contains(g)))
            .map(|p| p.what)
            .collect();
        eprintln!("xtask deps: all present: {}", present.join("; "));
        return Ok(());
    }
    for line in plan.lines() {
        eprintln!("xtask deps: {line}");
    }
    if !plan.apt.is_empty() {
        install_apt(&plan)?;
    }
    if !plan.venvs.is_empty() || !plan.go.is_empty() {
        std::fs::create_dir_all(&peers_dir).map_err(|e| format!("{}: {e}", peers_dir.display()))?;
    }
    for step in &plan.venvs {
        install_venv(step)?;
    }
    for step in &plan.go {
        build_go(step, &peers_dir)?;
    }
    Ok(())
}

/// `cargo xtask deps [--bench] [--check]`.
pub(crate) fn run_deps(args: &[String]) -> Result {
    let mut groups = vec![Group::Test];
    let mut check_only = false;
    for a in args {
        match a.as_str() {
            "--bench" => groups.push(Group::Bench),
            "--check" => check_only = true,
            other => {
                return Err(format!(
                    "unknown argument `{other}` (usage: cargo xtask deps [--bench] [--check])"
                ))
            }
        }
    }
    if !check_only {
        return ensure(&groups);
    }
    let plan = plan(PEERS, &groups, &root().join("target/peers"), &mut probe);
    if plan.is_empty() {
        eprintln!("xtask deps: all present");
        return Ok(());
    }
    for line in plan.lines() {
        eprintln!("xtask deps: missing: {line}");
    }
    Err("missing peers (run `cargo xtask deps` to install them)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEERS_DIR: &str = "/ws/target/peers";

    fn apt(
        what: &'static str,
        groups: &'static [Group],
        probe: Probe,
        packages: &'static [&'static str],
    ) -> Peer {
        Peer {
            what,
            why: "tests",
            groups,
            kind: Kind::Apt(Apt {
                present: probe,
                packages,
            }),
        }
    }

    /// Plans with a probe that says yes to `present` only, and returns the
    /// plan with every check asked.
    fn plan_with(peers: &[Peer], groups: &[Group], present: &[Check]) -> (Plan, Vec<Check>) {
        let mut asked = Vec::new();
        let plan = plan(peers, groups, Path::new(PEERS_DIR), &mut |c| {
            asked.push(c.clone());
            present.contains(c)
        });
        (plan, asked)
    }

    fn packages(plan: &Plan) -> Vec<&'static str> {
        plan.apt.iter().map(|s| s.package).collect()
    }

    #[test]
    fn only_missing_packages_are_planned_each_once() {
        let peers = [
            apt("a", TEST, Probe::Command("a"), &["pkg-a"]),
            apt(
                "b",
                TEST,
                Probe::Path("/lib/{arch}/b"),
                &["pkg-b", "pkg-common"],
            ),
            apt("c", TEST, Probe::Command("c"), &["pkg-c", "pkg-common"]),
            apt("d", TEST, Probe::Runs(&["d", "--version"]), &["pkg-d"]),
        ];
        let (plan, asked) = plan_with(&peers, &[Group::Test], &[Check::Command("a")]);
        assert_eq!(packages(&plan), ["pkg-b", "pkg-common", "pkg-c", "pkg-d"]);
        let b = PathBuf::from(format!("/lib/{}/b", env::consts::ARCH));
        assert_eq!(asked[1], Check::Path(b.clone()));
        assert_eq!(
            plan.apt_checks,
            [
                (Check::Path(b), "b"),
                (Check::Command("c"), "c"),
                (Check::Runs(&["d", "--version"]), "d")
            ]
        );
        assert!(plan.venvs.is_empty() && plan.go.is_empty());
        assert_eq!(plan.lines()[0], "Debian package pkg-b for b: tests");

        let all = [
            Check::Command("a"),
            asked[1].clone(),
            Check::Command("c"),
            Check::Runs(&["d", "--version"]),
        ];
        let (plan, _) = plan_with(&peers, &[Group::Test], &all);
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn groups_select_peers() {
        let peers = [
            apt("t", TEST, Probe::Command("t"), &["pkg-t"]),
            apt("b", &[Group::Bench], Probe::Command("b"), &["pkg-b"]),
            apt(
                "tb",
                &[Group::Test, Group::Bench],
                Probe::Command("tb"),
                &["pkg-tb"],
            ),
        ];
        let (plan, asked) = plan_with(&peers, &[Group::Test], &[]);
        assert_eq!(packages(&plan), ["pkg-t", "pkg-tb"]);
        assert!(!asked.contains(&Check::Command("b")));
        let (plan, _) = plan_with(&peers, &[Group::Bench], &[]);
        assert_eq!(packages(&plan), ["pkg-b", "pkg-tb"]);
        let (plan, _) = plan_with(&peers, &[Group::Test, Group::Bench], &[]);
        assert_eq!(packages(&plan), ["pkg-t", "pkg-b", "pkg-tb"]);
    }

    #[test]
    fn venv_created_or_filled_with_only_missing_packages() {
        let peers = [Peer {
            what: "py",
            why: "tests",
            groups: TEST,
            kind: Kind::Venv {
                name: "py",
                pip: &["alpha==1.2", "beta[extra]>=3", "gamma"],
            },
        }];
        let dir = Path::new(PEERS_DIR).join("venv-py");
        let python = dir.join("bin/python");
        let venv_tool = VENV_TOOL.present.check();

        // No virtualenv: create it with everything, and python3-venv if
        // `python3 -m venv` would fail.
        let (plan, asked) = plan_with(&peers, TEST, &[]);
        assert_eq!(packages(&plan), ["python3-venv"]);
        assert_eq!(
            plan.venvs,
            [VenvStep {
                dir: dir.clone(),
                create: true,
                pip: vec!["alpha==1.2", "beta[extra]>=3", "gamma"],
                why: "tests"
            }]
        );
        assert!(!asked.iter().any(|c| matches!(c, Check::Pip { .. })));
        let (plan, _) = plan_with(&peers, TEST, std::slice::from_ref(&venv_tool));
        assert!(plan.apt.is_empty());
        assert!(plan.venvs[0].create);

        // The virtualenv exists with alpha and gamma: only beta.
        let has = |dist: &str| Check::Pip {
            python: python.clone(),
            dist: dist.into(),
        };
        let present = [Check::Path(python.clone()), has("alpha"), has("gamma")];
        let (plan, asked) = plan_with(&peers, TEST, &present);
        assert!(!asked.contains(&venv_tool));
        assert!(plan.apt.is_empty());
        assert_eq!(
            plan.venvs,
            [VenvStep {
                dir: dir.clone(),
                create: false,
                pip: vec!["beta[extra]>=3"],
                why: "tests"
            }]
        );

        let present = [
            Check::Path(python.clone()),
            has("alpha"),
            has("beta"),
            has("gamma"),
        ];
        assert!(plan_with(&peers, TEST, &present).0.is_empty());
    }

    #[test]
    fn go_built_only_when_missing_with_missing_sources() {
        const SOURCES: &[Apt] = &[
            Apt {
                present: Probe::Path("/usr/share/gocode/src/example.org/tool"),
                packages: &["golang-example-tool-dev"],
            },
            Apt {
                present: Probe::Path("/usr/share/gocode/src/example.org/lib"),
                packages: &["golang-example-lib-dev"],
            },
        ];
        let peers = [Peer {
            what: "tool",
            why: "tests",
            groups: TEST,
            kind: Kind::Go {
                name: "tool",
                main: "example.org/tool/cmd/tool",
                sources: SOURCES,
            },
        }];
        let out = Path::new(PEERS_DIR).join("tool");
        let lib = Check::Path("/usr/share/gocode/src/example.org/lib".into());
        let (plan, _) = plan_with(&peers, TEST, std::slice::from_ref(&lib));
        assert_eq!(packages(&plan), ["golang-go", "golang-example-tool-dev"]);
        assert_eq!(
            plan.go,
            [GoStep {
                out: out.clone(),
                main: "example.org/tool/cmd/tool",
                why: "tests"
            }]
        );
        let (plan, _) = plan_with(&peers, TEST, &[lib, Check::Command("go")]);
        assert_eq!(packages(&plan), ["golang-example-tool-dev"]);

        // Built already: nothing asked about go or its sources.
        let (plan, asked) = plan_with(&peers, TEST, &[Check::Path(out.clone())]);
        assert!(plan.is_empty());
        assert_eq!(asked, [Check::Path(out)]);
    }

    #[test]
    fn dist_names() {
        assert_eq!(dist_name("pyvmomi"), "pyvmomi");
        assert_eq!(dist_name("pyvmomi==8.0.3"), "pyvmomi");
        assert_eq!(dist_name("requests[socks]>=2"), "requests");
        assert_eq!(dist_name("x ; python_version>'3'"), "x");
    }

    /// The table covers what `.ci/run` used to install, the Go toolchain
    /// and govmomi's sources for vcsim, python3-venv for pyVmomi's
    /// virtualenv, the NBD and guest-filesystem tools, fio only for the
    /// benches.
    #[test]
    fn table_covers_the_debian_peers() {
        let (test, _) = plan_with(PEERS, &[Group::Test], &[]);
        let mut got = packages(&test);
        got.sort();
        assert_eq!(
            got,
            [
                "binutils",
                "dosfstools",
                "e2fsprogs",
                "fdisk",
                "gcc",
                "gdisk",
                "golang-github-vmware-govmomi-dev",
                "golang-go",
                "libc6-dev",
                "libnbd-bin",
                "libvmdk-utils",
                "mtools",
                "nbdkit",
                "nbdkit-plugin-python",
                "ntfs-3g",
                "openssl",
                "python3-libnbd",
                "python3-venv",
                "qemu-utils",
                "valgrind"
            ]
        );
        let (bench, _) = plan_with(PEERS, &[Group::Bench], &[]);
        assert_eq!(packages(&bench), ["qemu-utils", "fio", "restic"]);
        for p in PEERS {
            assert!(!p.groups.is_empty() && !p.why.is_empty(), "{}", p.what);
        }
    }
}
