//! Restore of any backup point: onto local files or onto the VM's disk
//! over a transport, every stored block checked against its CRC.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vim_soap::codec;
use vmdk_file::create::{CreateOptions, DiskType};
use vmdk_file::local::{LocalDisk, OpenOptions};

use crate::api::{ConnectParams, Connection, Library, OpenFlags};
use crate::error::{Error, Result};

use super::point::{block_at, open_sources, read_block};
use super::*;

type WriteFn = dyn Fn(u64, &[u8]) -> Result<()> + Send + Sync;

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
    let keys: Vec<i32> = disks.iter().map(|d| d.key).collect();
    // Local files are restored under temporary names beside their
    // targets and renamed into place once every disk is restored.
    let local = match target {
        RestoreTarget::Local(p) => Some(local_targets(p, &keys, false)?),
        RestoreTarget::LocalReplace(p) => Some(local_targets(p, &keys, true)?),
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
    .and_then(|n| place_local(local.as_ref()).map(|()| n));
    if r.is_err() {
        remove_created(&created);
    }
    r
}

/// Moves restored local disks from their temporary names into place.
pub(crate) fn place_local(local: Option<&BTreeMap<i32, (PathBuf, PathBuf)>>) -> Result<()> {
    for (final_path, tmp) in local.iter().flat_map(|m| m.values()) {
        if std::fs::symlink_metadata(final_path).is_ok() {
            // Only LocalReplace gets here with an existing file.
            if vmdk_file::create::delete(final_path).is_err() {
                std::fs::remove_file(final_path).map_err(|e| Error::io(final_path, e))?;
            }
        }
        std::fs::rename(tmp, final_path).map_err(|e| Error::io(final_path, e))?;
    }
    Ok(())
}

/// After a failed restore: nothing may look like a restored disk.
pub(crate) fn remove_created(created: &[PathBuf]) {
    for p in created {
        let _ = vmdk_file::create::delete(p);
    }
}

/// Where each disk of a local restore goes: key → (final path, temporary
/// path beside it). Creates the directory; refuses existing files unless
/// `replace`.
pub(crate) fn local_targets(
    p: &Path,
    keys: &[i32],
    replace: bool,
) -> Result<BTreeMap<i32, (PathBuf, PathBuf)>> {
    let as_dir = keys.len() > 1 || p.is_dir() || p.as_os_str().as_encoded_bytes().ends_with(b"/");
    if as_dir {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    let mut out = BTreeMap::new();
    for &key in keys {
        let path = if as_dir {
            p.join(format!("{key}.vmdk"))
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
        out.insert(key, (path, tmp));
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
        let (write_at, zero_holes, mut finish) =
            open_target(lib, target, local, d.key, d.capacity, created)?;
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

/// A restore target's writer for one disk: `(write, zero holes, finish)`.
type Target = (Box<WriteFn>, bool, Box<dyn FnMut() -> Result<()>>);

/// Opens where disk `key` of `capacity` bytes is restored to: a new
/// monolithicSparse file (its temporary name from `local`, recorded in
/// `created`) or the VM's disk over a transport.
pub(crate) fn open_target(
    lib: &Library,
    target: &RestoreTarget,
    local: Option<&BTreeMap<i32, (PathBuf, PathBuf)>>,
    key: i32,
    capacity: u64,
    created: &mut Vec<PathBuf>,
) -> Result<Target> {
    let (write_at, zero_holes): (Box<WriteFn>, bool);
    let finish: Box<dyn FnMut() -> Result<()>>;
    match target {
        RestoreTarget::Local(_) | RestoreTarget::LocalReplace(_) => {
            let path = local
                .and_then(|m| m.get(&key))
                .map(|(_, tmp)| tmp.clone())
                .ok_or_else(|| Error::InvalidArgument(format!("no local target for disk {key}")))?;
            create(
                &path,
                &CreateOptions::new(DiskType::MonolithicSparse, capacity),
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
            key: remote_key,
            transports,
        } => {
            let conn = Connection::connect(lib, params, false, None, transports.as_deref())?;
            let client = conn
                .client()
                .ok_or_else(|| Error::InvalidArgument("no server".into()))?;
            let vm = vm_moref(params);
            let disks_now = codec::virtual_disks(
                &client
                    .property(&vm, "config.hardware.device")?
                    .ok_or_else(|| Error::InvalidArgument("no devices".into()))?,
            )?;
            let cur = disks_now
                .iter()
                .find(|x| x.key == *remote_key)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("the VM has no disk {remote_key}"))
                })?;
            if cur.capacity < capacity {
                return Err(Error::InvalidArgument(format!(
                    "disk {remote_key} is smaller than the backup"
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
    Ok((write_at, zero_holes, finish))
}
