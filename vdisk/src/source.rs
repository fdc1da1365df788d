//! What `serve`, `volumes`, `ls` and `get` open: a local VMDK chain, a
//! vSphere disk through `--transport`, or a backup point (`--from REPO
//! --backup N [--disk KEY]`), read in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use disklib::backup::{BackupPoint, PointDelta};

use disklib::guest::DiskReader;
use vmdk_file::local::LocalDisk;

use crate::args::{AnyDisk, DiskArgs};
use crate::remote;
use crate::AnyError;

/// Where a disk comes from (everything but the DISK operand itself).
#[derive(clap::Args, Debug)]
pub(crate) struct SourceArgs {
    /// A backup point instead of DISK: the repository (a directory or
    /// `s3://bucket/prefix`).
    #[arg(long, requires = "backup")]
    pub(crate) from: Option<String>,
    /// The point (with --from): `latest` or a unique prefix of its id (a
    /// number in a format-1 repository).
    #[arg(long, requires = "from")]
    pub(crate) backup: Option<String>,
    /// The disk key inside the backup (with --from; needed when the backup
    /// holds several disks).
    #[arg(long = "disk", requires = "from")]
    pub(crate) disk_key: Option<i32>,
    /// Follow extent and parent paths that leave the descriptor's directory.
    #[arg(long)]
    pub(crate) allow_outside_paths: bool,
    /// Open a snapshot chain even if a parentCID does not match its parent's CID.
    #[arg(long)]
    pub(crate) ignore_cid_mismatch: bool,
    /// Reach the disk on a vSphere host through these transports (`nbd`,
    /// `nbdssl`, `san`, `hotadd`, or a list such as `san:hotadd:nbdssl`);
    /// DISK is then a datastore path `[datastore] dir/disk.vmdk`.
    #[arg(long, conflicts_with = "from")]
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
    #[command(flatten)]
    pub(crate) secrets: crate::repo::Secrets,
}

/// An opened disk of any kind.
pub(crate) enum Opened {
    Local(Arc<LocalDisk>),
    Remote(Arc<disklib::api::Disk>),
    Point(Arc<BackupPoint>),
    Delta(Arc<PointDelta>, TempDelta),
}

/// A delta file removed when dropped, unless the user named it.
pub(crate) struct TempDelta(Option<PathBuf>);

impl Drop for TempDelta {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = vmdk_file::create::delete(&p);
        }
    }
}

impl SourceArgs {
    /// Opens DISK (or the backup point). `writable` opens a local or remote
    /// disk for writing; a backup point is never written: with `writable`
    /// it is opened through a delta at `delta` (a temporary file removed at
    /// exit when `None`).
    pub(crate) fn open(
        &self,
        disk: Option<&Path>,
        writable: bool,
        delta: Option<&Path>,
    ) -> Result<Opened, AnyError> {
        if let Some(repo) = &self.from {
            if disk.is_some() {
                return Err("give either DISK or --from, not both".into());
            }
            let id = self.backup.as_deref().ok_or("--from needs --backup N")?;
            let point = crate::repo::open_point(repo, id, self.disk_key, &self.secrets)?;
            if !writable {
                if delta.is_some() {
                    return Err("--delta needs --writable".into());
                }
                return Ok(Opened::Point(Arc::new(point)));
            }
            let (d, temp) = match delta {
                Some(p) => (PointDelta::open(point, p)?, TempDelta(None)),
                None => {
                    // A new name each time, created exclusively: a file
                    // left by a killed run (or planted) is never reused.
                    let nanos = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos());
                    let p = std::env::temp_dir().join(format!(
                        "vdisk-delta-{}-{nanos:x}-b{}-d{}.vmdk",
                        std::process::id(),
                        point.label().get(..12).unwrap_or(&point.label()),
                        point.key()
                    ));
                    (PointDelta::create(point, &p)?, TempDelta(Some(p)))
                }
            };
            return Ok(Opened::Delta(Arc::new(d), temp));
        }
        if delta.is_some() {
            return Err("--delta is for backup points (--from)".into());
        }
        let disk = disk.ok_or("name a DISK (or a backup point with --from REPO --backup N)")?;
        let args = DiskArgs {
            disk: disk.to_path_buf(),
            allow_outside_paths: self.allow_outside_paths,
            ignore_cid_mismatch: self.ignore_cid_mismatch,
            transport: self.transport.clone(),
            vm: self.vm.clone(),
            snapshot: self.snapshot.clone(),
            compression: self.compression,
            conn: self.conn.clone(),
        };
        Ok(match args.open_any(writable)? {
            AnyDisk::Local(d) => Opened::Local(Arc::new(d)),
            AnyDisk::Remote(d) => Opened::Remote(Arc::new(d)),
        })
    }
}

impl Opened {
    /// The disk as the guest readers' `ReadAt`.
    pub(crate) fn reader(&self) -> Arc<DiskReader> {
        Arc::new(match self {
            Opened::Local(d) => DiskReader::local(Arc::clone(d)),
            Opened::Remote(d) => DiskReader::remote(Arc::clone(d)),
            Opened::Point(p) => DiskReader::point(Arc::clone(p)),
            Opened::Delta(d, _) => DiskReader::delta(Arc::clone(d)),
        })
    }

    /// Flushes and closes (a temporary delta is removed).
    pub(crate) fn close(self) -> Result<(), AnyError> {
        match self {
            Opened::Local(d) => {
                if let Ok(d) = Arc::try_unwrap(d) {
                    d.close()?;
                }
            }
            Opened::Remote(d) => {
                if let Ok(d) = Arc::try_unwrap(d) {
                    d.flush()?;
                    d.close()?;
                }
            }
            Opened::Point(_) => {}
            Opened::Delta(d, temp) => {
                if let Ok(d) = Arc::try_unwrap(d) {
                    let path = d.close()?;
                    if temp.0.is_none() {
                        eprintln!("vdisk: the delta is kept in {}", path.display());
                    }
                }
                drop(temp);
            }
        }
        Ok(())
    }
}
