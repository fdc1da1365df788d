//! Restore of any backup point: onto local files or onto the VM's disk
//! over a transport, every stored block checked against its CRC.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vim_soap::codec::{self, MoRef};
use vmdk_file::create::{CreateOptions, DiskType};
use vmdk_file::local::{LocalDisk, OpenOptions};

use crate::api::{ConnectParams, Connection, Library, OpenFlags};
use crate::error::{Error, Result};

use super::point::{block_at, open_sources, read_block};
use super::*;

type WriteFn = dyn Fn(u64, &[u8]) -> Result<()>;

/// Where a restore writes.
#[derive(Clone, Debug)]
pub enum RestoreTarget {
    /// New local files: a path for one disk, a directory for several
    /// (files named `<key>.vmdk`). A directory that does not exist is
    /// created (a path ending in `/` names a directory even for one disk).
    /// Existing files are refused: nothing is written then.
    Local(PathBuf),
    /// Like [`RestoreTarget::Local`], but existing disks of the same names
    /// are replaced (only once the restore has succeeded).
    LocalReplace(PathBuf),
    /// The disk with this key of a VM on a server.
    Remote {
        /// Connection.
        params: ConnectParams,
        /// Device key.
        key: i32,
        /// Transports.
        transports: Option<String>,
    },
}

/// Restores backup `id` (every disk, or `only_key`), each byte from the
/// newest backup of its chain that stores it; holes stay holes (and are
/// zeroed on an existing remote disk). Returns bytes written.
///
/// Every stored block is read whole and checked against the CRC-32 the
/// catalog recorded before any of it is written; a mismatch fails the
/// restore with [`Error::BadChecksum`] naming the point, the disk and the
/// offset. A failed restore to local files removes the files it created.
pub fn restore(
    lib: &Library,
    repo: &Path,
    id: u64,
    target: &RestoreTarget,
    only_key: Option<i32>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let catalog = RepoCatalog::load(repo)?;
    let entry = catalog
        .backups
        .iter()
        .find(|b| b.id == id)
        .ok_or_else(|| repo_err(repo, format!("no backup {id}")))?;
    let disks: Vec<&DiskEntry> = entry
        .disks
        .iter()
        .filter(|d| only_key.is_none_or(|k| k == d.key))
        .collect();
    if disks.is_empty() {
        return Err(repo_err(repo, "no such disk in that backup"));
    }
    // Local files are restored under temporary names beside their
    // targets and renamed into place once every disk is restored.
    let local = match target {
        RestoreTarget::Local(p) => Some(local_targets(p, &disks, false)?),
        RestoreTarget::LocalReplace(p) => Some(local_targets(p, &disks, true)?),
        RestoreTarget::Remote { .. } => None,
    };
    let mut created = Vec::new();
    let r = restore_disks(
        lib,
        repo,
        &catalog,
        id,
        &disks,
        target,
        local.as_ref(),
        progress,
        &mut created,
    )
    .and_then(|n| {
        for (final_path, tmp) in local.iter().flat_map(|m| m.values()) {
            if std::fs::symlink_metadata(final_path).is_ok() {
                // Only LocalReplace gets here with an existing file.
                if vmdk_file::create::delete(final_path).is_err() {
                    std::fs::remove_file(final_path).map_err(|e| Error::io(final_path, e))?;
                }
            }
            std::fs::rename(tmp, final_path).map_err(|e| Error::io(final_path, e))?;
        }
        Ok(n)
    });
    if r.is_err() {
        // Nothing may look like a restored disk.
        for p in &created {
            let _ = vmdk_file::create::delete(p);
        }
    }
    r
}

/// Where each disk of a local restore goes: key → (final path, temporary
/// path beside it). Creates the directory; refuses existing files unless
/// `replace`.
fn local_targets(
    p: &Path,
    disks: &[&DiskEntry],
    replace: bool,
) -> Result<BTreeMap<i32, (PathBuf, PathBuf)>> {
    let as_dir = disks.len() > 1 || p.is_dir() || p.as_os_str().as_encoded_bytes().ends_with(b"/");
    if as_dir {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    let mut out = BTreeMap::new();
    for d in disks {
        let path = if as_dir {
            p.join(format!("{}.vmdk", d.key))
        } else {
            p.to_path_buf()
        };
        if !replace && std::fs::symlink_metadata(&path).is_ok() {
            return Err(Error::InvalidArgument(format!(
                "{} exists: a restore does not replace existing disks unless asked to (--force)",
                path.display()
            )));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.restoring-{}", std::process::id()));
        out.insert(d.key, (path, tmp));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn restore_disks(
    lib: &Library,
    repo: &Path,
    catalog: &RepoCatalog,
    id: u64,
    disks: &[&DiskEntry],
    target: &RestoreTarget,
    local: Option<&BTreeMap<i32, (PathBuf, PathBuf)>>,
    progress: &mut dyn FnMut(u64, u64),
    created: &mut Vec<PathBuf>,
) -> Result<u64> {
    let mut written = 0;
    for d in disks {
        let plan = catalog.disk_catalog(d.key, d.capacity)?.restore_plan(id)?;
        let sources = open_sources(repo, catalog, d.key, plan.reads.iter().map(|r| r.backup))?;
        let (write_at, zero_holes): (Box<WriteFn>, bool);
        let mut finish: Box<dyn FnMut() -> Result<()>>;
        match target {
            RestoreTarget::Local(_) | RestoreTarget::LocalReplace(_) => {
                let path = local
                    .and_then(|m| m.get(&d.key))
                    .map(|(_, tmp)| tmp.clone())
                    .ok_or_else(|| repo_err(repo, format!("no local target for disk {}", d.key)))?;
                create(
                    &path,
                    &CreateOptions::new(DiskType::MonolithicSparse, d.capacity),
                )?;
                created.push(path.clone());
                let out = Arc::new(LocalDisk::open(
                    &path,
                    &OpenOptions {
                        writable: true,
                        ..OpenOptions::default()
                    },
                )?);
                let o2 = Arc::clone(&out);
                write_at = Box::new(move |off, b| Ok(o2.write_at(off, b)?));
                zero_holes = false;
                let mut slot = Some(out);
                finish = Box::new(move || match slot.take().map(Arc::try_unwrap) {
                    Some(Ok(d)) => Ok(d.close()?),
                    _ => Ok(()),
                });
            }
            RestoreTarget::Remote {
                params,
                key,
                transports,
            } => {
                let conn = Connection::connect(lib, params, false, None, transports.as_deref())?;
                let client = conn
                    .client()
                    .ok_or_else(|| Error::InvalidArgument("no server".into()))?;
                let vm = MoRef::new(
                    "VirtualMachine",
                    params
                        .vm
                        .as_deref()
                        .unwrap_or_default()
                        .trim_start_matches("moref="),
                );
                let disks_now = codec::virtual_disks(
                    &client
                        .property(&vm, "config.hardware.device")?
                        .ok_or_else(|| Error::InvalidArgument("no devices".into()))?,
                )?;
                let cur = disks_now
                    .iter()
                    .find(|x| x.key == *key)
                    .ok_or_else(|| Error::InvalidArgument(format!("the VM has no disk {key}")))?;
                if cur.capacity < d.capacity {
                    return Err(Error::InvalidArgument(format!(
                        "disk {key} is smaller than the backup"
                    )));
                }
                let disk = Arc::new(conn.open(&cur.file_name, OpenFlags::default())?);
                // SAN writes reach the LUN without passing through the
                // host, so its changed-block tracking cannot see them.
                let via_san = disk.transport_mode() == "san";
                let client = Arc::clone(client);
                let d2 = Arc::clone(&disk);
                write_at = Box::new(move |off, b| d2.write_at(off, b));
                zero_holes = true;
                let mut slot = Some(disk);
                finish = Box::new(move || {
                    if let Some(Ok(d)) = slot.take().map(Arc::try_unwrap) {
                        d.flush()?;
                        d.close()?;
                    }
                    if via_san {
                        reset_change_tracking(&client, &vm)?;
                    }
                    Ok(())
                });
            }
        }
        let total = d.capacity;
        // The block last read and checked: (backup, first byte).
        let mut block = Vec::new();
        let mut checked: Option<(u64, u64)> = None;
        for r in &plan.reads {
            let (src, index) = &sources[&r.backup];
            let mut off = r.extent.start;
            let end = r.extent.end();
            while off < end {
                let (start, len, crc) = block_at(repo, index, r.backup, d.key, off)?;
                if checked != Some((r.backup, start)) {
                    read_block(repo, src, r.backup, d.key, (start, len, crc), &mut block)?;
                    checked = Some((r.backup, start));
                }
                // Both bounded by the block: `off` lies inside it.
                let n = end.min(start + len) - off;
                let at = (off - start) as usize;
                write_at(off, &block[at..at + n as usize])?;
                written += n;
                off += n;
                progress(off, total);
            }
        }
        if zero_holes {
            let zeros = vec![0u8; CHUNK as usize];
            for h in plan.holes.iter() {
                let mut off = h.start;
                while off < h.end() {
                    let n = (h.end() - off).min(CHUNK);
                    write_at(off, &zeros[..n as usize])?;
                    off += n;
                }
            }
        }
        finish()?;
    }
    Ok(written)
}
