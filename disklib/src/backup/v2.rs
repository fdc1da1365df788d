//! Backups into a format-2 repository ([`repo_store`]): deduplicated,
//! compressed, optionally encrypted, on a directory or S3, shared by
//! many proxies.
//!
//! Each backup point writes one complete index per disk. A full backup
//! reads every allocated area; an incremental (or differential) reads
//! only the chunks that changed since its base point (the newest point,
//! or the newest full one, of the same VM, identified by server and
//! instance UUID, and disk) and takes every other chunk from the base's
//! index, so any point restores on its own.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cbt::{Extent, ExtentList};
use repo_format::{BackupId, BackupIndex, BackupKind, ChunkId, NextPoint, VmIdentity};
use repo_store::{BackupWriter, Finish, Repository, WriterOptions};
use vim_soap::codec::{self, MoRef};

use crate::api::{changed_areas_by_key, ConnectParams, Connection, Library, OpenFlags};
use crate::error::{Error, Result};

use super::{now, snapshot_session, Summary};

/// Threads hashing, compressing, sealing and uploading chunks (more than
/// the cores: each also waits on the store).
const STORE_THREADS: usize = 3;
/// Largest read handed to the transport at once.
const READ_BATCH: u64 = 8 << 20;
/// How often a backup stores again the chunks a GC pass removed under it.
const MISSING_ROUNDS: usize = 3;

impl From<repo_store::Error> for Error {
    fn from(e: repo_store::Error) -> Self {
        Error::Store(e)
    }
}

fn to_kind(k: cbt::BackupKind) -> BackupKind {
    match k {
        cbt::BackupKind::Full => BackupKind::Full,
        cbt::BackupKind::Incremental => BackupKind::Incremental,
        cbt::BackupKind::Differential => BackupKind::Differential,
    }
}

/// Chunk slots overlapping `changed`, in order.
fn chunk_slots(changed: &ExtentList, capacity: u64, chunk: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for e in changed.iter() {
        let end = e.end().min(capacity);
        if e.start >= end {
            continue;
        }
        let first = e.start / chunk;
        let last = (end - 1) / chunk;
        for i in first..=last {
            if out.last() != Some(&i) {
                out.push(i);
            }
        }
    }
    out.dedup();
    out
}

/// `(offset, length)` of chunk slot `i`.
fn slot(i: u64, chunk: u64, capacity: u64) -> (u64, u64) {
    let start = i * chunk;
    (start, chunk.min(capacity - start))
}

/// Reads `(offset, at in buf, length)` parts into one buffer.
type ReadScattered<'a> = dyn Fn(&mut [u8], &[(u64, usize, usize)]) -> Result<()> + 'a;

/// Reads the given chunk slots through `read_scattered` in batches and
/// hands each to `put`.
fn read_slots(
    slots: &[u64],
    chunk: u64,
    capacity: u64,
    read_scattered: &ReadScattered<'_>,
    put: &mut dyn FnMut(u64, Vec<u8>) -> Result<()>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let mut read = 0u64;
    let per_batch = (READ_BATCH / chunk).max(1) as usize;
    for batch in slots.chunks(per_batch) {
        let parts: Vec<(u64, usize, usize)> = {
            let mut at = 0usize;
            batch
                .iter()
                .map(|&i| {
                    let (off, len) = slot(i, chunk, capacity);
                    let p = (off, at, len as usize);
                    at += len as usize;
                    p
                })
                .collect()
        };
        let total: usize = parts.iter().map(|p| p.2).sum();
        let mut buf = vec![0u8; total];
        read_scattered(&mut buf, &parts)?;
        for (&i, &(off, at, len)) in batch.iter().zip(&parts) {
            put(i, buf[at..at + len].to_vec())?;
            read += len as u64;
            progress(off + len as u64);
        }
    }
    Ok(read)
}

/// What [`publish`] asks to be read again and stored: the slots of
/// `indexes[n]` whose chunks vanished.
type Reread<'a> = dyn FnMut(&BackupWriter, usize, &[u64]) -> Result<()> + 'a;

/// Publishes `indexes`. Chunks a GC pass removed meanwhile (see
/// [`Finish::Missing`]) are read again through `reread` and stored, up to
/// [`MISSING_ROUNDS`] times.
fn publish(
    writer: &mut BackupWriter,
    indexes: &[BackupIndex],
    reread: &mut Reread<'_>,
) -> Result<()> {
    let mut round = 0;
    loop {
        let Finish::Missing(ids) = writer.finish(indexes)? else {
            return Ok(());
        };
        if round == MISSING_ROUNDS {
            return Err(Error::InvalidArgument(format!(
                "{} chunks kept vanishing while the point was published (a GC pass with a too short grace?)",
                ids.len()
            )));
        }
        round += 1;
        let wanted: std::collections::HashSet<ChunkId> = ids.into_iter().collect();
        for (n, ix) in indexes.iter().enumerate() {
            let slots: Vec<u64> = ix
                .chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_some_and(|c| wanted.contains(&c)))
                .map(|(i, _)| i as u64)
                .collect();
            if !slots.is_empty() {
                reread(writer, n, &slots)?;
            }
        }
    }
}

/// The VM's identity: the server as given, its instance UUID (the BIOS
/// UUID where the server has none, e.g. a standalone host), moref, name.
fn vm_identity(
    client: &vim_soap::client::Client,
    params: &ConnectParams,
    vm: &MoRef,
) -> Result<VmIdentity> {
    let text = |path: &str| -> Result<Option<String>> {
        Ok(client
            .property(vm, path)?
            .map(|e| e.text.trim().to_string())
            .filter(|s| !s.is_empty()))
    };
    let instance_uuid = match text("config.instanceUuid")? {
        Some(u) => u,
        None => text("config.uuid")?.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "VM {} has neither an instance nor a BIOS UUID",
                vm.value
            ))
        })?,
    };
    Ok(VmIdentity {
        server: params.server.clone().unwrap_or_default(),
        instance_uuid,
        moref: vm.value.clone(),
        name: text("name")?.unwrap_or_default(),
    })
}

/// Options of a format-2 backup.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Lease pacing and the proxy name (default: this host).
    pub writer: WriterOptions,
}

/// Backs up every non-independent disk of the VM in `params` into the
/// format-2 repository `repo`. `summary.point` names the new point.
pub fn backup(
    lib: &Library,
    params: &ConnectParams,
    repo: &Repository,
    kind: cbt::BackupKind,
    transports: Option<&str>,
    opts: &BackupOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary> {
    let started = Instant::now();
    let mut summary = Summary::default();
    snapshot_session(
        lib,
        params,
        transports,
        &mut summary,
        &mut |client, vm, snap, summary| {
            backup_snapshot(
                lib, params, repo, client, vm, snap, kind, transports, opts, summary, progress,
            )
        },
    )?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn backup_snapshot(
    lib: &Library,
    params: &ConnectParams,
    repo: &Repository,
    client: &Arc<vim_soap::client::Client>,
    vm: &MoRef,
    snap: &MoRef,
    kind: cbt::BackupKind,
    transports: Option<&str>,
    opts: &BackupOptions,
    summary: &mut Summary,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let identity = vm_identity(client, params, vm)?;
    let config = client
        .property(snap, "config")?
        .map(|e| e.to_xml().into_bytes());
    let disks = codec::virtual_disks(
        &client
            .property(snap, "config.hardware.device")?
            .ok_or_else(|| Error::InvalidArgument("the snapshot has no devices".into()))?,
    )?;
    summary
        .warnings
        .extend(super::independent_disk_warnings(client, vm)?);
    let time = now();
    let backup_id = Repository::new_backup_id(time);
    summary.point = Some(backup_id.to_string());
    let mut writer = BackupWriter::begin(repo, backup_id, opts.writer.clone())?;
    let conn = Connection::connect(lib, params, true, Some(&snap.value), transports)?;
    let chunk = u64::from(repo.chunk_size());
    let total: u64 = disks.iter().fold(0u64, |t, d| t.saturating_add(d.capacity));
    let mut done = 0u64;
    let mut indexes = Vec::new();
    let mut opened = Vec::new();
    for d in &disks {
        let base = match kind {
            cbt::BackupKind::Full => None,
            k => {
                let b = repo
                    .latest(&identity, d.key, k == cbt::BackupKind::Differential)?
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "disk {}: no earlier point of this VM in the repository: take a full backup",
                            d.key
                        ))
                    })?;
                Some(b)
            }
        };
        let since = match (&base, &d.change_id) {
            (None, _) => "*".to_string(),
            (Some(_), None) => {
                return Err(Error::InvalidArgument(format!(
                    "disk {}: changed block tracking is off: take a full backup",
                    d.key
                )))
            }
            (Some(b), Some(_)) => b.change_id.clone().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "disk {}: the base point has no change id: take a full backup",
                    d.key
                ))
            })?,
        };
        let changed = match &d.change_id {
            Some(_) => changed_areas_by_key(client, vm, Some(snap), d.key, d.capacity, &since)?,
            None => ExtentList::from_sorted([Extent::new(0, d.capacity)]),
        };
        let slots = chunk_slots(&changed, d.capacity, chunk);
        let to_read: u64 = slots.iter().map(|&i| slot(i, chunk, d.capacity).1).sum();
        summary.bytes_skipped = summary
            .bytes_skipped
            .saturating_add(d.capacity.saturating_sub(to_read));
        let disk = conn.open(&d.file_name, OpenFlags::read_only())?;
        summary
            .transports
            .push(format!("disk {}: {}", d.key, disk.transport_mode()));
        if let Some(b) = &base {
            writer.reuse(b.referenced());
        }
        let capacity = d.capacity;
        let mut read = 0u64;
        let stored = writer.store_chunks::<Error>(STORE_THREADS, |put| {
            read = read_slots(
                &slots,
                chunk,
                capacity,
                &|buf, parts| disk.read_scattered(buf, parts),
                &mut |i, data| put(i, data),
                &mut |at| progress(done.saturating_add(at), total),
            )?;
            Ok(())
        })?;
        summary.bytes_read += read;
        let vm_config = config.clone();
        let index = match &base {
            Some(b) => b.next(
                NextPoint {
                    backup_id,
                    time,
                    kind: to_kind(kind),
                    change_id: d.change_id.clone(),
                    capacity,
                    vm_config,
                },
                &stored,
            ),
            None => {
                let n = capacity.div_ceil(chunk) as usize;
                let mut chunks: Vec<Option<ChunkId>> = vec![None; n];
                for (i, id) in stored {
                    chunks[i as usize] = id;
                }
                let ix = BackupIndex {
                    backup_id,
                    vm: identity.clone(),
                    disk_key: d.key,
                    capacity,
                    chunk_size: repo.chunk_size(),
                    chunks,
                    change_id: d.change_id.clone(),
                    kind: BackupKind::Full,
                    time,
                    base: None,
                    vm_config,
                };
                ix.validate().map(|()| ix)
            }
        }
        .map_err(|e| {
            Error::Store(repo_store::Error::Format {
                what: format!("index of disk {}", d.key),
                source: e,
            })
        })?;
        indexes.push(index);
        opened.push(disk);
        done = done.saturating_add(capacity);
    }
    publish(&mut writer, &indexes, &mut |writer, n, slots| {
        let (ix, disk) = (&indexes[n], &opened[n]);
        read_slots(
            slots,
            chunk,
            ix.capacity,
            &|buf, parts| disk.read_scattered(buf, parts),
            &mut |_, data| writer.put_chunk(&data).map(|_| ()).map_err(Error::from),
            &mut |_| {},
        )
        .map(|_| ())
    })?;
    let stats = writer.stats();
    summary.bytes_stored = stats
        .bytes_uploaded
        .load(std::sync::atomic::Ordering::Relaxed);
    for d in opened {
        d.close()?;
    }
    Ok(())
}

/// Backs up a local disk (any VMDK the library opens, with its chain) as
/// disk `disk_key` of `vm`. There is no changed block tracking: every
/// allocated area is read, and deduplication stores only what differs
/// from chunks already in the repository.
pub fn backup_local(
    repo: &Repository,
    path: &Path,
    vm: &VmIdentity,
    disk_key: i32,
    opts: &BackupOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary> {
    let started = Instant::now();
    let disk = vmdk_file::local::LocalDisk::open(path, &vmdk_file::local::OpenOptions::default())?;
    let capacity = disk.capacity();
    let chunk = u64::from(repo.chunk_size());
    // Allocated areas through the chain; holes are never read.
    let mut changed = ExtentList::new();
    for e in disk.allocation_range(0, capacity)? {
        if e.kind == vmdk_file::local::AllocKind::Data {
            changed.insert(Extent::new(e.start, e.length));
        }
    }
    let slots = chunk_slots(&changed, capacity, chunk);
    let time = now();
    let backup_id = Repository::new_backup_id(time);
    let mut summary = Summary {
        point: Some(backup_id.to_string()),
        transports: vec![format!("disk {disk_key}: file")],
        ..Summary::default()
    };
    let mut writer = BackupWriter::begin(repo, backup_id, opts.writer.clone())?;
    let mut read = 0u64;
    let read_scattered = |buf: &mut [u8], parts: &[(u64, usize, usize)]| -> Result<()> {
        for &(off, at, len) in parts {
            disk.read_at(off, &mut buf[at..at + len])?;
        }
        Ok(())
    };
    let stored = writer.store_chunks::<Error>(STORE_THREADS, |put| {
        read = read_slots(
            &slots,
            chunk,
            capacity,
            &read_scattered,
            &mut |i, d| put(i, d),
            &mut |at| progress(at, capacity),
        )?;
        Ok(())
    })?;
    let mut chunks: Vec<Option<ChunkId>> = vec![None; capacity.div_ceil(chunk) as usize];
    for (i, id) in stored {
        chunks[i as usize] = id;
    }
    let index = BackupIndex {
        backup_id,
        vm: vm.clone(),
        disk_key,
        capacity,
        chunk_size: repo.chunk_size(),
        chunks,
        change_id: None,
        kind: BackupKind::Full,
        time,
        base: None,
        vm_config: None,
    };
    let index = index.validate().map(|()| index).map_err(|e| {
        Error::Store(repo_store::Error::Format {
            what: "index".into(),
            source: e,
        })
    })?;
    publish(
        &mut writer,
        std::slice::from_ref(&index),
        &mut |writer, _, slots| {
            read_slots(
                slots,
                chunk,
                capacity,
                &read_scattered,
                &mut |_, data| writer.put_chunk(&data).map(|_| ()).map_err(Error::from),
                &mut |_| {},
            )
            .map(|_| ())
        },
    )?;
    summary.bytes_read = read;
    summary.bytes_skipped = capacity - read;
    summary.bytes_stored = writer
        .stats()
        .bytes_uploaded
        .load(std::sync::atomic::Ordering::Relaxed);
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Resolves `--backup`: `latest` (the newest point), or a unique prefix
/// of a point id.
pub fn resolve(repo: &Repository, point: &str) -> Result<(BackupId, Vec<i32>)> {
    if point == "latest" {
        let points = repo.points()?;
        let last = points
            .last()
            .ok_or_else(|| Error::InvalidArgument("the repository holds no backup".into()))?;
        return Ok(repo.resolve_point(&last.backup_id.to_string())?);
    }
    Ok(repo.resolve_point(point)?)
}

/// Restores point `point` (`latest` or an id prefix) of a format-2
/// repository: every disk, or `only_key`. Local targets are written under
/// temporary names and moved into place once every disk is restored; a
/// remote disk has the point's zero areas zeroed. Every chunk is checked
/// against its id before any of it is written. Returns the point and the
/// bytes written.
pub fn restore(
    lib: &Library,
    repo: &Repository,
    point: &str,
    target: &super::RestoreTarget,
    only_key: Option<i32>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(BackupId, u64)> {
    use super::restore::{local_targets, open_target, place_local, remove_created};
    use super::RestoreTarget;
    let (id, mut keys) = resolve(repo, point)?;
    if let Some(k) = only_key {
        keys.retain(|&x| x == k);
    }
    if keys.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "point {id} has no disk {}",
            only_key.unwrap_or_default()
        )));
    }
    let local = match target {
        RestoreTarget::Local(p) => Some(local_targets(p, &keys, false)?),
        RestoreTarget::LocalReplace(p) => Some(local_targets(p, &keys, true)?),
        RestoreTarget::Remote { .. } => None,
    };
    let mut created = Vec::new();
    let r = (|| -> Result<u64> {
        let mut written = 0u64;
        for &key in &keys {
            let reader = repo_store::PointReader::open(repo, &id, key)?;
            let capacity = reader.capacity();
            let (write_at, zero_holes, mut finish) =
                open_target(lib, target, local.as_ref(), key, capacity, &mut created)?;
            let mut done = 0u64;
            reader.restore(
                STORE_THREADS,
                &|off, data| {
                    write_at(off, data).map_err(|e| {
                        repo_store::Error::InvalidArgument(format!("writing disk {key}: {e}"))
                    })
                },
                &mut |n| {
                    done += n;
                    progress(done, capacity);
                },
            )?;
            written += done;
            if zero_holes {
                let zeros = vec![0u8; 1 << 20];
                for run in reader.runs(0, capacity).iter().filter(|r| !r.data) {
                    let mut off = run.offset;
                    while off < run.offset + run.length {
                        let n = (run.offset + run.length - off).min(zeros.len() as u64);
                        write_at(off, &zeros[..n as usize])?;
                        off += n;
                    }
                }
            }
            finish()?;
        }
        place_local(local.as_ref())?;
        Ok(written)
    })();
    if r.is_err() {
        remove_created(&created);
    }
    Ok((id, r?))
}

/// Verifies a format-2 repository (or one point): every chunk referenced,
/// or a random `fraction` of them.
pub fn verify(
    repo: &Repository,
    point: Option<&str>,
    fraction: f64,
) -> Result<repo_store::VerifyReport> {
    let only = point.map(|p| resolve(repo, p)).transpose()?;
    Ok(repo.verify(only.as_ref().map(|(id, _)| id), fraction)?)
}

/// The text of the first `<name>` element in an XML document (no parser
/// needed for the three fields migration takes from `config.xml`).
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim().to_string()).filter(|s| !s.is_empty())
}

/// Converts the format-1 repository at `old` into points of `repo`, oldest
/// first: each backup becomes one point holding all its disks, with its
/// time, kind, change ids and VM configuration; each disk's index is
/// complete (read through the format-1 chain, every block checked against
/// its CRC). Backups already migrated (same VM, time and disk) are
/// skipped, so an interrupted migration can be run again. Returns
/// `(old id, new point)` of the backups converted.
pub fn migrate(
    old: &Path,
    repo: &Repository,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<(u64, BackupId)>> {
    let catalog = super::RepoCatalog::load(old)?;
    let chunk = u64::from(repo.chunk_size());
    let existing: std::collections::HashSet<(String, u64, i32)> = repo
        .points()?
        .into_iter()
        .filter(|p| p.vm.server == FORMAT1_SERVER)
        .map(|p| (p.vm.moref, p.time, p.disk_key))
        .collect();
    let mut ids: HashMap<u64, BackupId> = HashMap::new();
    let mut out = Vec::new();
    let total = catalog.backups.len() as u64;
    for (n, entry) in catalog.backups.iter().enumerate() {
        progress(n as u64, total);
        let config =
            std::fs::read(super::contained(old, &format!("{}/config.xml", entry.dir))?).ok();
        let xml = config
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let vm = VmIdentity {
            server: FORMAT1_SERVER.into(),
            instance_uuid: xml_field(&xml, "instanceUuid")
                .or_else(|| xml_field(&xml, "uuid"))
                .unwrap_or_else(|| format!("moref:{}", entry.vm)),
            moref: entry.vm.clone(),
            name: xml_field(&xml, "name").unwrap_or_default(),
        };
        if entry
            .disks
            .iter()
            .all(|d| existing.contains(&(entry.vm.clone(), entry.time, d.key)))
        {
            continue;
        }
        let kind = match entry.kind.as_str() {
            "incremental" => BackupKind::Incremental,
            "differential" => BackupKind::Differential,
            _ => BackupKind::Full,
        };
        // Backups of one second keep their catalog order.
        let backup_id = Repository::backup_id_with_sequence(entry.time, n as u32);
        let mut writer = BackupWriter::begin(repo, backup_id, WriterOptions::default())?;
        let mut indexes = Vec::new();
        let mut points = Vec::new();
        for d in &entry.disks {
            let point = super::BackupPoint::open(old, entry.id, Some(d.key))?;
            let mut stored_areas = ExtentList::new();
            for e in point.extents(0, point.capacity()) {
                if e.stored {
                    stored_areas.insert(Extent::new(e.start, e.length));
                }
            }
            let capacity = point.capacity();
            let slots = chunk_slots(&stored_areas, capacity, chunk);
            let read = |buf: &mut [u8], parts: &[(u64, usize, usize)]| -> Result<()> {
                for &(off, at, len) in parts {
                    point.read_at(off, &mut buf[at..at + len])?;
                }
                Ok(())
            };
            let stored = writer.store_chunks::<Error>(STORE_THREADS, |put| {
                read_slots(
                    &slots,
                    chunk,
                    capacity,
                    &read,
                    &mut |i, b| put(i, b),
                    &mut |_| {},
                )
                .map(|_| ())
            })?;
            let mut chunks: Vec<Option<ChunkId>> = vec![None; capacity.div_ceil(chunk) as usize];
            for (i, id) in stored {
                chunks[i as usize] = id;
            }
            let base = match kind {
                BackupKind::Full => None,
                _ => Some(
                    d.base
                        .and_then(|b| ids.get(&b).copied())
                        // A base that did not migrate (damaged): the point
                        // is complete anyway; name itself as base.
                        .unwrap_or(backup_id),
                ),
            };
            let index = BackupIndex {
                backup_id,
                vm: vm.clone(),
                disk_key: d.key,
                capacity,
                chunk_size: repo.chunk_size(),
                chunks,
                change_id: d.change_id.clone(),
                kind,
                time: entry.time,
                base,
                vm_config: config.clone(),
            };
            index.validate().map_err(|e| {
                Error::Store(repo_store::Error::Format {
                    what: format!("index of backup {} disk {}", entry.id, d.key),
                    source: e,
                })
            })?;
            indexes.push(index);
            points.push(point);
        }
        publish(&mut writer, &indexes, &mut |writer, n, slots| {
            let (ix, point) = (&indexes[n], &points[n]);
            for &i in slots {
                let (off, len) = slot(i, chunk, ix.capacity);
                let mut buf = vec![0u8; len as usize];
                point.read_at(off, &mut buf)?;
                writer.put_chunk(&buf)?;
            }
            Ok(())
        })?;
        ids.insert(entry.id, backup_id);
        out.push((entry.id, backup_id));
    }
    progress(total, total);
    Ok(out)
}

/// The server recorded for VMs of migrated format-1 backups (format 1 did
/// not record one).
pub const FORMAT1_SERVER: &str = "format-1";
