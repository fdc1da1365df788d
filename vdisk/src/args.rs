//! The command line: every verb and its arguments (clap), and how the
//! arguments open a disk, local or remote.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vmdk_file::local::{LocalDisk, OpenOptions};

#[cfg(feature = "sim")]
use crate::sim;
use crate::{remote, AnyError};

/// The virtual disk kit's command-line tool.
#[derive(Parser, Debug)]
#[command(name = "vdisk", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options shared by every command that opens a local disk.
#[derive(clap::Args, Debug)]
pub(crate) struct DiskArgs {
    /// The disk: a descriptor file or a monolithic VMDK file.
    pub(crate) disk: PathBuf,
    /// Follow extent and parent paths that leave the descriptor's directory.
    #[arg(long)]
    pub(crate) allow_outside_paths: bool,
    /// Open a snapshot chain even if a parentCID does not match its parent's CID.
    #[arg(long)]
    pub(crate) ignore_cid_mismatch: bool,
    /// Reach the disk on a vSphere host through these transports, tried in
    /// order (`nbd`, `nbdssl`, `san`, `hotadd`, or a list such as
    /// `san:hotadd:nbdssl`); DISK is then a datastore path
    /// `[datastore] dir/disk.vmdk`.
    #[arg(long)]
    pub(crate) transport: Option<String>,
    /// The VM owning a remote disk (`moref=vm-N`).
    #[arg(long)]
    pub(crate) vm: Option<String>,
    /// Read a remote disk as of this snapshot (`snapshot-N`).
    #[arg(long)]
    pub(crate) snapshot: Option<String>,
    /// Ask the host to compress data (nbd/nbdssl).
    #[arg(long)]
    pub(crate) compression: bool,
    #[command(flatten)]
    pub(crate) conn: remote::Connection,
}

impl DiskArgs {
    pub(crate) fn options(&self) -> OpenOptions {
        OpenOptions {
            allow_outside_paths: self.allow_outside_paths,
            ignore_cid_mismatch: self.ignore_cid_mismatch,
            ..OpenOptions::default()
        }
    }
    pub(crate) fn open(&self) -> Result<LocalDisk, vmdk_file::Error> {
        LocalDisk::open(&self.disk, &self.options())
    }

    /// A local disk, or a remote one through `--transport`.
    pub(crate) fn open_any(&self, writable: bool) -> Result<AnyDisk, AnyError> {
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
pub(crate) enum AnyDisk {
    Local(LocalDisk),
    Remote(disklib::api::Disk),
}

impl AnyDisk {
    pub(crate) fn capacity(&self) -> u64 {
        match self {
            AnyDisk::Local(d) => d.capacity(),
            AnyDisk::Remote(d) => d.capacity(),
        }
    }
    pub(crate) fn preferred_read_size(&self) -> usize {
        match self {
            AnyDisk::Local(d) => d.preferred_read_size(),
            AnyDisk::Remote(_) => 8 << 20,
        }
    }
    pub(crate) fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), AnyError> {
        match self {
            AnyDisk::Local(d) => Ok(d.read_at(off, buf)?),
            AnyDisk::Remote(d) => Ok(d.read_at(off, buf)?),
        }
    }
    pub(crate) fn write_at(&self, off: u64, buf: &[u8]) -> Result<(), AnyError> {
        match self {
            AnyDisk::Local(d) => Ok(d.write_at(off, buf)?),
            AnyDisk::Remote(d) => Ok(d.write_at(off, buf)?),
        }
    }
    pub(crate) fn write_zeroes(&self, off: u64, len: u64) -> Result<(), AnyError> {
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
    pub(crate) fn close(self) -> Result<(), AnyError> {
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
pub(crate) enum Command {
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
    ///
    /// Every link of the chain and every extent of each link is checked:
    ///
    /// - the chain opens: headers and descriptors are valid, every parent is
    ///   found, each parentCID is its parent's CID, no loop, bounded depth;
    ///
    /// - flat extents: the file holds every sector the descriptor gives it;
    ///
    /// - sparse extents (hosted, COWD, seSparse): the header's capacity is
    ///   the descriptor line's size; the file is at least as long as the
    ///   header's metadata (overHead); the file was closed cleanly; every
    ///   grain directory entry points at a whole table inside the file and
    ///   past the header; every grain table entry inside the capacity points
    ///   at a whole grain inside the file (only the last grain may be cut by
    ///   the end of the capacity), outside the metadata and used by no other
    ///   entry, and entries past the capacity are zero; the redundant grain
    ///   directory and tables equal the primary ones; no metadata overlaps;
    ///
    /// - streamOptimized: every compressed grain's marker names the sector
    ///   of its grain-table entry and the grain inflates to a whole grain
    ///   (the last grain to at least what the capacity leaves it); the
    ///   markers are well formed up to the end-of-stream marker.
    ///
    /// This includes everything `qemu-img check` checks for VMDK (each
    /// cluster of the disk maps to an offset inside its extent file).
    /// Exit 1 for usage or I/O errors.
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
        #[arg(value_parser = parse_size)]
        size: u64,
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
        /// Byte offset: bytes, or with a K/M/G/T suffix.
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Fill with this byte value (0-255, or 0xNN).
        #[arg(long, conflicts_with = "from", value_parser = parse_byte)]
        pattern: Option<u8>,
        /// Number of bytes for --pattern or --zero (K/M/G/T suffixes).
        #[arg(long, value_parser = parse_size)]
        length: Option<u64>,
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
        #[arg(value_parser = parse_size)]
        size: u64,
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
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        vm: Option<String>,
        /// Back up a local disk (VMDK, any variant, with its chain) instead
        /// of a VM; every allocated area is read and deduplicated.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Disk key recorded for --file.
        #[arg(long, default_value_t = 2000, requires = "file")]
        disk_key: i32,
        /// The repository: a directory or `s3://bucket/prefix` (format 2,
        /// made by `vdisk repo init`).
        #[arg(long)]
        to: String,
        /// Transports to try, in order (default san:hotadd:nbdssl:nbd).
        #[arg(long)]
        transport: Option<String>,
        /// Full backup (the default).
        #[arg(long, group = "kind")]
        full: bool,
        /// Changes since the previous point of this VM.
        #[arg(long, group = "kind")]
        incremental: bool,
        /// Changes since the last full point of this VM.
        #[arg(long, group = "kind")]
        differential: bool,
        /// The proxy name recorded in the backup's lease (default: host name).
        #[arg(long)]
        proxy: Option<String>,
        /// Seconds between renewals of the backup's lease (default 30);
        /// must stay well below the GC grace period.
        #[arg(long)]
        lease_renew: Option<f64>,
        #[command(flatten)]
        secrets: crate::repo::Secrets,
    },
    /// Restore a point in time to local files or onto a VM's disk.
    Restore {
        /// The repository (a format-1 directory, a format-2 directory or
        /// `s3://bucket/prefix`).
        #[arg(long)]
        from: String,
        /// The point: `latest` or a unique prefix of its id (a number in a
        /// format-1 repository).
        #[arg(long)]
        backup: String,
        /// Local target: a directory (created when missing; files named
        /// `KEY.vmdk`), or a file for one disk (a path without a trailing
        /// `/` that is not a directory).
        #[arg(long, conflicts_with = "vm")]
        to: Option<PathBuf>,
        /// Replace existing disk files at the local target (only once the
        /// restore has succeeded); without it they are refused.
        #[arg(long, requires = "to")]
        force: bool,
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
        #[command(flatten)]
        secrets: crate::repo::Secrets,
    },
    /// Check a repository (or one point): every chunk against its id
    /// (format 2), every block against its CRC (format 1).
    Verify {
        /// The repository.
        #[arg(long)]
        from: String,
        /// Only this point.
        #[arg(long)]
        backup: Option<String>,
        /// Check only this random fraction of the chunks (format 2), e.g. 0.1.
        #[arg(long, default_value_t = 1.0)]
        sample: f64,
        #[command(flatten)]
        secrets: crate::repo::Secrets,
    },
    /// Repository maintenance: init, list, prune, gc, migrate.
    Repo {
        #[command(subcommand)]
        command: crate::repo::RepoCommand,
    },
    /// Serve a disk over NBD (qemu-nbd's protocol): a local chain, a
    /// remote disk (--transport), a backup point (--from), or one partition.
    ///
    /// Prints `NBD_URI=…` on stdout once ready; serves until SIGINT or
    /// SIGTERM, then flushes and exits.
    Serve(crate::serve::ServeArgs),
    /// List a disk's partitions and filesystems.
    Volumes(crate::guest::VolumesArgs),
    /// List a directory (or one file) inside a guest filesystem.
    Ls {
        #[command(flatten)]
        files: crate::guest::FilesArgs,
        /// Long listing: mode, owner, size, modification time, link targets.
        #[arg(short = 'l', long = "long")]
        long: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy a file or a directory tree out of a guest filesystem.
    Get {
        #[command(flatten)]
        files: crate::guest::FilesArgs,
        /// Where to write it (must not exist).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Make everything written durable (fsync) before exiting; like
        /// cp and tar, the default leaves writing back to the kernel.
        #[arg(long)]
        sync: bool,
    },
    /// Delete a disk and all its files (not its parents).
    Delete {
        /// The disk.
        disk: PathBuf,
    },
}

/// `vdisk meta` actions.
#[derive(Subcommand, Debug)]
pub(crate) enum MetaAction {
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
pub(crate) struct CreateArgs {
    /// Adapter type: ide, buslogic, lsilogic, legacyESX, pvscsi.
    #[arg(long, default_value = "lsilogic")]
    pub(crate) adapter: String,
    /// Virtual hardware version.
    #[arg(long, default_value_t = 4)]
    pub(crate) hw_version: u32,
    /// Do not use zeroed-grain entries (header version 1).
    #[arg(long)]
    pub(crate) no_zeroed_grain: bool,
}

impl CreateArgs {
    pub(crate) fn options(
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

/// Parses a size or offset the same way in every verb: bytes (`512`),
/// or with a K/M/G/T suffix in powers of 1024 (`64K`, `1M`, `2G`, `1T`;
/// `B` for bytes, lower case too), or hexadecimal bytes (`0x10000`).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad =
        || format!("invalid size `{s}`: expected bytes, or a number with K, M, G or T (64K, 1M)");
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
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
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size `{s}`: larger than 2^64 bytes"))
}

/// Parses a byte value the same way in every verb: decimal `0`..`255` or
/// hexadecimal `0x00`..`0xff`.
pub(crate) fn parse_byte(s: &str) -> Result<u8, String> {
    let t = s.trim();
    let v = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u8::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t.parse::<u8>().ok(),
        None => None,
    };
    v.ok_or_else(|| format!("invalid byte `{s}`: expected 0 to 255, or 0x00 to 0xff"))
}

pub(crate) fn disk_type(name: &str) -> Result<vmdk_file::create::DiskType, AnyError> {
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
