//! `vdisk`: the kit's command-line tool. Local VMDK files (info, cat,
//! map, check and repair, create, convert, write, snapshot, commit,
//! metadata, grow, compact, rename, delete), vSphere VMs and their disks
//! over every transport (`vm`, `cat`/`write --transport`), backup,
//! restore and verify, and the vSphere simulator (`sim`, `demo`; the
//! default `sim` feature).

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use vmdk_file::local::{LocalDisk, OpenOptions};

mod check;
#[cfg(feature = "sim")]
mod demo;
mod remote;
#[cfg(feature = "sim")]
mod sim;

/// The virtual disk kit's command-line tool.
#[derive(Parser, Debug)]
#[command(name = "vdisk", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command that opens a local disk.
#[derive(clap::Args, Debug)]
struct DiskArgs {
    /// The disk: a descriptor file or a monolithic VMDK file.
    disk: PathBuf,
    /// Follow extent and parent paths that leave the descriptor's directory.
    #[arg(long)]
    allow_outside_paths: bool,
    /// Open a snapshot chain even if a parentCID does not match its parent's CID.
    #[arg(long)]
    ignore_cid_mismatch: bool,
    /// Reach the disk on a vSphere host through these transports, tried in
    /// order (`nbd`, `nbdssl`, `san`, `hotadd`, or a list such as
    /// `san:hotadd:nbdssl`); DISK is then a datastore path
    /// `[datastore] dir/disk.vmdk`.
    #[arg(long)]
    transport: Option<String>,
    /// The VM owning a remote disk (`moref=vm-N`).
    #[arg(long)]
    vm: Option<String>,
    /// Read a remote disk as of this snapshot (`snapshot-N`).
    #[arg(long)]
    snapshot: Option<String>,
    /// Ask the host to compress data (nbd/nbdssl).
    #[arg(long)]
    compression: bool,
    #[command(flatten)]
    conn: remote::Connection,
}

impl DiskArgs {
    fn options(&self) -> OpenOptions {
        OpenOptions {
            allow_outside_paths: self.allow_outside_paths,
            ignore_cid_mismatch: self.ignore_cid_mismatch,
            ..OpenOptions::default()
        }
    }
    fn open(&self) -> Result<LocalDisk, vmdk_file::Error> {
        LocalDisk::open(&self.disk, &self.options())
    }

    /// A local disk, or a remote one through `--transport`.
    fn open_any(&self, writable: bool) -> Result<AnyDisk, AnyError> {
        let Some(t) = &self.transport else {
            return Ok(AnyDisk::Local(LocalDisk::open(
                &self.disk,
                &OpenOptions {
                    writable,
                    ..self.options()
                },
            )?));
        };
        let vm = self
            .vm
            .as_deref()
            .ok_or("a remote disk needs --vm moref=vm-N")?;
        let params = self.conn.params(vm)?;
        let snapshot = self
            .snapshot
            .as_deref()
            .map(|s| s.strip_prefix("moref=").unwrap_or(s));
        // Any transport list disklib knows: nbd, nbdssl, san, hotadd.
        let conn = disklib::api::Connection::connect(
            &self.conn.library()?,
            &params,
            !writable,
            snapshot,
            Some(t),
        )?;
        let path = self.disk.to_string_lossy();
        let disk = conn.open(
            &path,
            disklib::api::OpenFlags {
                read_only: !writable,
                compression: self.compression,
                single_link: false,
            },
        )?;
        Ok(AnyDisk::Remote(disk))
    }
}

/// A disk read or written by `cat` and `write`.
enum AnyDisk {
    Local(LocalDisk),
    Remote(disklib::api::Disk),
}

impl AnyDisk {
    fn capacity(&self) -> u64 {
        match self {
            AnyDisk::Local(d) => d.capacity(),
            AnyDisk::Remote(d) => d.capacity(),
        }
    }
    fn preferred_read_size(&self) -> usize {
        match self {
            AnyDisk::Local(d) => d.preferred_read_size(),
            AnyDisk::Remote(_) => 8 << 20,
        }
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), AnyError> {
        match self {
            AnyDisk::Local(d) => Ok(d.read_at(off, buf)?),
            AnyDisk::Remote(d) => Ok(d.read_at(off, buf)?),
        }
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> Result<(), AnyError> {
        match self {
            AnyDisk::Local(d) => Ok(d.write_at(off, buf)?),
            AnyDisk::Remote(d) => Ok(d.write_at(off, buf)?),
        }
    }
    fn write_zeroes(&self, off: u64, len: u64) -> Result<(), AnyError> {
        match self {
            AnyDisk::Local(d) => Ok(d.write_zeroes(off, len)?),
            AnyDisk::Remote(d) => {
                let zeros = vec![0u8; (len as usize).min(1 << 20)];
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(zeros.len() as u64) as usize;
                    d.write_at(off + done, &zeros[..n])?;
                    done += n as u64;
                }
                Ok(())
            }
        }
    }
    fn close(self) -> Result<(), AnyError> {
        match self {
            AnyDisk::Local(d) => Ok(d.close()?),
            AnyDisk::Remote(d) => {
                d.flush()?;
                Ok(d.close()?)
            }
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Describe a disk: type, capacity, CIDs, chain, extents, DDB.
    Info {
        #[command(flatten)]
        disk: DiskArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the whole virtual disk as raw bytes.
    Cat {
        #[command(flatten)]
        disk: DiskArgs,
        /// Output file (stdout when absent).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List what each byte range holds: data, zero or unallocated.
    Map {
        #[command(flatten)]
        disk: DiskArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a disk's metadata; exit 0 when consistent, 2 on corruption.
    Check {
        #[command(flatten)]
        disk: DiskArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Repair what can be repaired, reporting each change.
        #[arg(long)]
        repair: bool,
    },
    /// Create an empty disk.
    Create {
        /// Disk type: monolithicSparse, monolithicFlat, twoGbMaxExtentSparse,
        /// twoGbMaxExtentFlat, streamOptimized, vmfs, vmfsThin.
        #[arg(short = 't', long = "type", default_value = "monolithicSparse")]
        disk_type: String,
        /// Path of the new disk (descriptor or monolithic file).
        disk: PathBuf,
        /// Capacity: bytes, or with a K/M/G/T suffix (powers of 1024).
        size: String,
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Convert (clone) a raw image or any VMDK, chains included, into any type or raw.
    Convert {
        /// Target type, as for `create`, or `raw`.
        #[arg(short = 't', long = "type", default_value = "monolithicSparse")]
        disk_type: String,
        /// Show a progress bar (on by default when stderr is a terminal).
        #[arg(long)]
        progress: bool,
        /// Source: a raw image or a VMDK.
        src: PathBuf,
        /// Destination (must not exist).
        dst: PathBuf,
        #[command(flatten)]
        create: CreateArgs,
        /// Follow extent and parent paths that leave the descriptor's directory.
        #[arg(long)]
        allow_outside_paths: bool,
    },
    /// Write bytes into a disk.
    Write {
        #[command(flatten)]
        disk: DiskArgs,
        /// Byte offset.
        #[arg(long)]
        offset: String,
        /// Fill with this byte value (0-255, or 0xNN).
        #[arg(long, conflicts_with = "from")]
        pattern: Option<String>,
        /// Number of bytes for --pattern or --zero.
        #[arg(long)]
        length: Option<String>,
        /// Write the contents of this file.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Write zeros (whole grains become zeroed-grain entries).
        #[arg(long, conflicts_with_all = ["from", "pattern"])]
        zero: bool,
    },
    /// Create CHILD, a delta (snapshot) of DISK that reads through to it.
    Snapshot {
        /// The parent.
        disk: PathBuf,
        /// The new child (monolithicSparse).
        child: PathBuf,
    },
    /// Merge CHILD into its parent and delete CHILD.
    Commit {
        /// The child.
        child: PathBuf,
        /// Show a progress bar.
        #[arg(long)]
        progress: bool,
    },
    /// Read or change the disk database (DDB).
    Meta {
        #[command(subcommand)]
        action: MetaAction,
    },
    /// Grow a disk to SIZE.
    Grow {
        /// The disk.
        disk: PathBuf,
        /// New capacity (bytes or K/M/G/T).
        size: String,
    },
    /// Rewrite sparse extents without zero and unreferenced grains.
    Compact {
        /// The disk.
        disk: PathBuf,
    },
    /// Rename a disk and all its files (extent names in the descriptor follow).
    Rename {
        /// The disk.
        disk: PathBuf,
        /// The new name.
        new: PathBuf,
    },
    /// The vSphere simulator: serve, guest writes.
    #[cfg(feature = "sim")]
    Sim {
        #[command(subcommand)]
        command: sim::SimCommand,
    },
    /// Virtual machines on vCenter / ESXi (or the simulator).
    Vm {
        #[command(subcommand)]
        command: remote::VmCommand,
    },
    /// The main job end to end on an in-process simulator (what `cargo xtask demo` runs).
    #[cfg(feature = "sim")]
    Demo,
    /// Back up a VM's disks (full, incremental or differential) into a repository.
    Backup {
        #[command(flatten)]
        conn: remote::Connection,
        /// `moref=vm-N`.
        #[arg(long)]
        vm: String,
        /// Repository directory.
        #[arg(long)]
        to: PathBuf,
        /// Transports to try, in order (default san:hotadd:nbdssl:nbd).
        #[arg(long)]
        transport: Option<String>,
        /// Full backup (the default).
        #[arg(long, group = "kind")]
        full: bool,
        /// Changes since the previous backup.
        #[arg(long, group = "kind")]
        incremental: bool,
        /// Changes since the last full backup.
        #[arg(long, group = "kind")]
        differential: bool,
    },
    /// Restore a point in time to local files or onto a VM's disk.
    Restore {
        /// Repository directory.
        #[arg(long)]
        from: PathBuf,
        /// Backup id.
        #[arg(long)]
        backup: u64,
        /// Local target: a file for one disk, a directory for several.
        #[arg(long, conflicts_with = "vm")]
        to: Option<PathBuf>,
        /// Remote target VM (`moref=vm-N`).
        #[arg(long, requires = "disk")]
        vm: Option<String>,
        /// Disk key (restores only that disk).
        #[arg(long)]
        disk: Option<i32>,
        /// Transports for a remote target.
        #[arg(long)]
        transport: Option<String>,
        #[command(flatten)]
        conn: remote::Connection,
    },
    /// Check every CRC of a repository (or one backup).
    Verify {
        /// Repository directory.
        #[arg(long)]
        from: PathBuf,
        /// Only this backup.
        #[arg(long)]
        backup: Option<u64>,
    },
    /// Delete a disk and all its files (not its parents).
    Delete {
        /// The disk.
        disk: PathBuf,
    },
}

/// `vdisk meta` actions.
#[derive(Subcommand, Debug)]
enum MetaAction {
    /// List every DDB key.
    List {
        #[command(flatten)]
        disk: DiskArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one key's value.
    Get {
        #[command(flatten)]
        disk: DiskArgs,
        /// The key (`ddb.…`).
        key: String,
    },
    /// Set (or add) a key.
    Set {
        #[command(flatten)]
        disk: DiskArgs,
        /// The key (`ddb.…`).
        key: String,
        /// The value.
        value: String,
    },
    /// Remove a key.
    Rm {
        #[command(flatten)]
        disk: DiskArgs,
        /// The key.
        key: String,
    },
}

/// Options for new disks.
#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Adapter type: ide, buslogic, lsilogic, legacyESX, pvscsi.
    #[arg(long, default_value = "lsilogic")]
    adapter: String,
    /// Virtual hardware version.
    #[arg(long, default_value_t = 4)]
    hw_version: u32,
    /// Do not use zeroed-grain entries (header version 1).
    #[arg(long)]
    no_zeroed_grain: bool,
}

impl CreateArgs {
    fn options(
        &self,
        disk_type: vmdk_file::create::DiskType,
        capacity: u64,
    ) -> Result<vmdk_file::create::CreateOptions, AnyError> {
        let adapter = vmdk_format::create::AdapterType::from_name(&self.adapter)
            .ok_or_else(|| format!("unknown adapter type `{}`", self.adapter))?;
        Ok(vmdk_file::create::CreateOptions {
            disk_type,
            capacity,
            adapter,
            hw_version: self.hw_version,
            zeroed_grain: !self.no_zeroed_grain,
        })
    }
}

/// Parses `123`, `4k`, `10M`, `2G`, `1T`, `0x10`.
fn parse_size(s: &str) -> Result<u64, AnyError> {
    let t = s.trim();
    let bad = || -> AnyError { format!("invalid size `{s}`").into() };
    if let Some(hex) = t.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).map_err(|_| bad());
    }
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'B' => 1,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(bad()),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

fn disk_type(name: &str) -> Result<vmdk_file::create::DiskType, AnyError> {
    vmdk_file::create::DiskType::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = vmdk_file::create::DiskType::ALL
            .iter()
            .map(|t| t.as_str())
            .collect();
        format!(
            "unknown disk type `{name}` (one of: {}, raw)",
            names.join(", ")
        )
        .into()
    })
}

/// A progress reporter: a bar on a terminal, nothing otherwise.
fn progress_bar(enabled: bool) -> impl FnMut(u64, u64) {
    use std::io::IsTerminal;
    let bar = (enabled || io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    move |done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
            if done >= total {
                b.finish_and_clear();
            }
        }
    }
}

/// An error for the one-line report: the error and its sources.
fn report(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vdisk: error: {}", report(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

fn run(cli: Cli) -> Result<ExitCode, AnyError> {
    match cli.command {
        Command::Info { disk, json } => {
            let d = disk.open()?;
            let v = info_json(&d);
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_info(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cat { disk, output } => {
            let d = disk.open_any(false)?;
            match output {
                Some(p) => {
                    let f = File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                    cat(&d, f)?
                }
                None => cat(&d, io::stdout().lock())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Map { disk, json } => {
            let d = disk.open()?;
            let map = d.map()?;
            let mut out = BufWriter::new(io::stdout().lock());
            if json {
                let v: Vec<Value> = map
                    .iter()
                    .map(|e| json!({"start": e.start, "length": e.length, "kind": e.kind.as_str()}))
                    .collect();
                serde_json::to_writer_pretty(&mut out, &v)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{:>16} {:>16}  kind", "start", "length")?;
                for e in &map {
                    writeln!(out, "{:>16} {:>16}  {}", e.start, e.length, e.kind.as_str())?;
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { disk, json, repair } => {
            check::run(&disk.disk, &disk.options(), json, repair)
        }
        Command::Create {
            disk_type: t,
            disk,
            size,
            create,
        } => {
            let o = create.options(disk_type(&t)?, parse_size(&size)?)?;
            vmdk_file::create::create(&disk, &o)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Convert {
            disk_type: t,
            progress,
            src,
            dst,
            create,
            allow_outside_paths,
        } => {
            let target = if t.eq_ignore_ascii_case("raw") {
                vmdk_file::convert::Target::Raw
            } else {
                vmdk_file::convert::Target::Disk(create.options(disk_type(&t)?, 0)?)
            };
            let opts = OpenOptions {
                allow_outside_paths,
                ..OpenOptions::default()
            };
            let disk = match LocalDisk::open(&src, &opts) {
                Ok(d) => Some(d),
                Err(vmdk_file::Error::NotVmdk(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let source = match &disk {
                Some(d) => vmdk_file::convert::Source::Disk(d),
                None => vmdk_file::convert::Source::Raw(&src),
            };
            let mut bar = progress_bar(progress);
            vmdk_file::convert::convert(&source, &dst, &target, &mut bar)?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "sim")]
        Command::Sim { command } => sim::sim(command),
        #[cfg(feature = "sim")]
        Command::Demo => demo::run(),
        Command::Backup {
            conn,
            vm,
            to,
            transport,
            full: _,
            incremental,
            differential,
        } => {
            let kind = if incremental {
                cbt::BackupKind::Incremental
            } else if differential {
                cbt::BackupKind::Differential
            } else {
                cbt::BackupKind::Full
            };
            let params = conn.params(&vm)?;
            let lib = conn.library()?;
            let mut bar = progress_bar(false);
            let s =
                disklib::backup::backup(&lib, &params, &to, kind, transport.as_deref(), &mut bar)?;
            for w in &s.warnings {
                eprintln!("vdisk: warning: {w}");
            }
            println!(
                "backup {}: read {} bytes, stored {}, skipped {}, {:.0} MB/s in {:.2} s ({})",
                s.id,
                s.bytes_read,
                s.bytes_stored,
                s.bytes_skipped,
                s.bytes_read as f64 / 1e6 / s.elapsed.as_secs_f64().max(1e-6),
                s.elapsed.as_secs_f64(),
                s.transports.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            from,
            backup,
            to,
            vm,
            disk,
            transport,
            conn,
        } => {
            let lib = conn.library()?;
            let target = match (to, vm) {
                (Some(p), None) => disklib::backup::RestoreTarget::Local(p),
                (None, Some(vm)) => disklib::backup::RestoreTarget::Remote {
                    params: conn.params(&vm)?,
                    key: disk.ok_or("--vm needs --disk KEY")?,
                    transports: transport,
                },
                _ => return Err("give --to LOCAL_PATH or --vm moref=vm-N --disk KEY".into()),
            };
            let mut bar = progress_bar(false);
            let n = disklib::backup::restore(&lib, &from, backup, &target, disk, &mut bar)?;
            println!("restored backup {backup}: {n} bytes written");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { from, backup } => {
            let (checked, bad) = disklib::backup::verify(&from, backup)?;
            for b in &bad {
                println!(
                    "backup {} disk {}: block {}+{} does not match its CRC",
                    b.backup, b.key, b.offset, b.len
                );
            }
            println!("{checked} blocks checked, {} bad", bad.len());
            Ok(if bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Vm { command } => remote::vm(command),
        Command::Snapshot { disk, child } => {
            vmdk_file::maintain::create_child(&disk, &child)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Commit { child, progress } => {
            let mut bar = progress_bar(progress);
            let parent = vmdk_file::maintain::commit(&child, &mut bar)?;
            eprintln!("committed into {}", parent.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Meta { action } => meta(action),
        Command::Grow { disk, size } => {
            vmdk_file::maintain::grow(&disk, parse_size(&size)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Compact { disk } => {
            let saved = vmdk_file::maintain::compact(&disk)?;
            eprintln!("{}: {saved} bytes freed", disk.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Rename { disk, new } => {
            vmdk_file::create::rename(&disk, &new)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { disk } => {
            vmdk_file::create::delete(&disk)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Write {
            disk,
            offset,
            pattern,
            length,
            from,
            zero,
        } => {
            let offset = parse_size(&offset)?;
            let d = disk.open_any(true)?;
            if zero {
                let len = parse_size(length.as_deref().ok_or("--zero needs --length")?)?;
                d.write_zeroes(offset, len)?;
            } else if let Some(p) = pattern {
                let len = parse_size(length.as_deref().ok_or("--pattern needs --length")?)?;
                let byte = parse_size(&p)
                    .ok()
                    .filter(|&b| b <= 255)
                    .ok_or_else(|| format!("invalid pattern byte `{p}`"))?
                    as u8;
                let chunk = vec![byte; (len as usize).min(8 << 20)];
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(chunk.len() as u64) as usize;
                    d.write_at(offset + done, &chunk[..n])?;
                    done += n as u64;
                }
            } else if let Some(f) = from {
                let data = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                d.write_at(offset, &data)?;
            } else {
                return Err(
                    "write needs --pattern BYTE --length L, --zero --length L, or --from FILE"
                        .into(),
                );
            }
            d.close()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Streams the whole disk to `out`. Two reader threads take alternate
/// chunks, each into buffers of its own (which stay in its core's cache),
/// so reading overlaps the copy out and uses both cores.
fn cat(d: &AnyDisk, mut out: impl Write) -> Result<(), AnyError> {
    use std::sync::mpsc;
    const READERS: u64 = 2;
    let cap = d.capacity();
    let chunk = d.preferred_read_size().min(cap as usize).max(1) as u64;
    let chunks = cap.div_ceil(chunk);
    std::thread::scope(|scope| -> Result<(), AnyError> {
        let mut filled = Vec::new();
        let mut recycle = Vec::new();
        for r in 0..READERS {
            let (tx, rx) = mpsc::sync_channel::<Result<Vec<u8>, String>>(2);
            let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
            for _ in 0..2 {
                let _ = back_tx.send(vec![0u8; chunk as usize]);
            }
            scope.spawn(move || {
                let mut i = r;
                while i < chunks {
                    let Ok(mut buf) = back_rx.recv() else { return };
                    let off = i * chunk;
                    let n = (cap - off).min(chunk) as usize;
                    buf.truncate(n);
                    let res = d
                        .read_at(off, &mut buf)
                        .map(|()| buf)
                        .map_err(|e| report(e.as_ref()));
                    let failed = res.is_err();
                    if tx.send(res).is_err() || failed {
                        return;
                    }
                    i += READERS;
                }
            });
            filled.push(rx);
            recycle.push(back_tx);
        }
        for i in 0..chunks {
            let k = (i % READERS) as usize;
            let buf = filled[k]
                .recv()
                .map_err(|_| "reader thread stopped")?
                .map_err(AnyError::from)?;
            match out.write_all(&buf) {
                Ok(()) => {}
                // A closed pipe (`vdisk cat | head`) is not an error worth a report.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let mut buf = buf;
            buf.resize(chunk as usize, 0);
            let _ = recycle[k].send(buf);
        }
        drop(recycle);
        match out.flush() {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    })
}

fn meta(action: MetaAction) -> Result<ExitCode, AnyError> {
    match action {
        MetaAction::List { disk, json } => {
            let d = disk.open()?;
            let desc = d.descriptor();
            if json {
                let m: serde_json::Map<String, Value> = desc
                    .ddb
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                for (k, v) in &desc.ddb {
                    println!("{k} = {v}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        MetaAction::Get { disk, key } => {
            let d = disk.open()?;
            match d.descriptor().ddb_get(&key) {
                Some(v) => {
                    println!("{v}");
                    Ok(ExitCode::SUCCESS)
                }
                None => Err(format!("{}: no key `{key}`", disk.disk.display()).into()),
            }
        }
        MetaAction::Set { disk, key, value } => {
            let d = LocalDisk::open(
                &disk.disk,
                &OpenOptions {
                    writable: true,
                    ..disk.options()
                },
            )?;
            d.set_metadata(&key, &value)?;
            d.close()?;
            Ok(ExitCode::SUCCESS)
        }
        MetaAction::Rm { disk, key } => {
            let d = LocalDisk::open(
                &disk.disk,
                &OpenOptions {
                    writable: true,
                    ..disk.options()
                },
            )?;
            let existed = d.remove_metadata(&key)?;
            d.close()?;
            if existed {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(format!("{}: no key `{key}`", disk.disk.display()).into())
            }
        }
    }
}

fn info_json(d: &LocalDisk) -> Value {
    let top = &d.links()[0];
    let desc = top.descriptor();
    let parent = d.links().get(1).map(|l| l.path().display().to_string());
    let chain: Vec<String> = d
        .links()
        .iter()
        .map(|l| l.path().display().to_string())
        .collect();
    let extents: Vec<Value> = desc
        .extents
        .iter()
        .zip(top.extent_files())
        .map(|(e, f)| {
            json!({
                "access": e.access.as_str(),
                "sectors": e.sectors,
                "type": e.kind.as_str(),
                "file": f.as_ref().map(|f| f.path().display().to_string()).or_else(|| e.file.clone()),
                "offset": e.offset.unwrap_or(0),
            })
        })
        .collect();
    let ddb: serde_json::Map<String, Value> = desc
        .ddb
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "create_type": desc.create_type.as_str(),
        "capacity": d.capacity(),
        "cid": format!("{:08x}", desc.cid),
        "parent_cid": format!("{:08x}", desc.parent_cid),
        "parent": parent,
        "parent_file_name_hint": desc.parent_file_name_hint,
        "chain": chain,
        "extents": extents,
        "adapter_type": desc.adapter_type(),
        "hw_version": desc.hw_version(),
        "geometry": desc.geometry().map(|g| json!({"cylinders": g.cylinders, "heads": g.heads, "sectors": g.sectors})),
        "ddb": ddb,
    })
}

fn print_info(v: &Value) {
    let s = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    println!("create type:   {}", s("create_type"));
    println!("capacity:      {} bytes", s("capacity"));
    println!("CID:           {}", s("cid"));
    println!("parent CID:    {}", s("parent_cid"));
    println!("parent:        {}", s("parent"));
    println!("adapter type:  {}", s("adapter_type"));
    println!("hw version:    {}", s("hw_version"));
    if let Value::Object(g) = &v["geometry"] {
        println!(
            "geometry:      {}/{}/{} (C/H/S)",
            g["cylinders"], g["heads"], g["sectors"]
        );
    }
    println!("chain:");
    for f in v["chain"].as_array().into_iter().flatten() {
        println!("  {}", f.as_str().unwrap_or_default());
    }
    println!("extents:");
    for e in v["extents"].as_array().into_iter().flatten() {
        println!(
            "  {} {} {} {} {}",
            e["access"].as_str().unwrap_or_default(),
            e["sectors"],
            e["type"].as_str().unwrap_or_default(),
            e["file"].as_str().unwrap_or("-"),
            e["offset"]
        );
    }
    println!("ddb:");
    if let Value::Object(m) = &v["ddb"] {
        for (k, val) in m {
            println!("  {k} = {}", val.as_str().unwrap_or_default());
        }
    }
}
