//! The main job: full, incremental and differential backups of a VM's
//! disks with changed block tracking, a repository, restore of any point
//! in time, and verification.
//!
//! A repository is a directory: `catalog.json` (every backup, per disk its
//! change id, stored extents and a CRC-32 of every stored block) and one
//! sub-directory per backup holding a monolithicSparse VMDK per disk
//! (holes kept) and the VM's configuration (`config.xml`). A backup is
//! written under a temporary name and becomes visible, with its catalog
//! entry, only once complete: a failed backup leaves nothing a restore
//! could pick up.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cbt::{BackupKind, BackupRecord, ChangeId, Extent, ExtentList};
use serde::{Deserialize, Serialize};
use vim_soap::codec::{self, MoRef};

use crate::api::{changed_areas_by_key, ConnectParams, Connection, Library, OpenFlags};
use crate::error::{Error, Result};
use vmdk_file::create::{create, create_in, CreateOptions, DiskType};
use vmdk_file::io::{create_dir_all, remove_dir_all, std_storage, write_file, SharedStorage};
use vmdk_file::local::{LocalDisk, OpenOptions};

const CHUNK: u64 = 1 << 20;
/// Reads from the VM are this large so the transport can pipeline them.
const READ_CHUNK: u64 = 8 << 20;
mod point;
mod restore;
pub mod v2;
mod verify;

pub use point::{BackupPoint, PointDelta, PointExtent};
pub use restore::{restore, RestoreTarget};
pub use verify::{verify, BadBlock};

const TASK_TIMEOUT: Duration = Duration::from_secs(3600);
/// The identity given to PrepareForAccess / EndAccess.
pub const IDENTITY: &str = "vddk-rs backup";

/// One disk in one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    /// Device key.
    pub key: i32,
    /// Datastore path at backup time.
    pub file_name: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// CBT change id of the snapshot read (`None`: CBT was off).
    pub change_id: Option<String>,
    /// The backup this one is relative to.
    pub base: Option<u64>,
    /// File in the repository, relative to it.
    pub file: String,
    /// Byte ranges stored.
    pub extents: Vec<(u64, u64)>,
    /// `(offset, length, crc32)` of every stored block.
    pub crcs: Vec<(u64, u64, u32)>,
}

/// One backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// Id (increasing).
    pub id: u64,
    /// `full`, `incremental` or `differential`.
    pub kind: String,
    /// Seconds since the epoch.
    pub time: u64,
    /// The VM.
    pub vm: String,
    /// Directory in the repository.
    pub dir: String,
    /// Disks.
    pub disks: Vec<DiskEntry>,
    /// Disks skipped (independent), with the reason.
    pub skipped: Vec<String>,
}

/// `catalog.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoCatalog {
    /// Format version.
    pub version: u32,
    /// Backups, oldest first.
    pub backups: Vec<BackupEntry>,
}

fn kind_name(k: BackupKind) -> &'static str {
    match k {
        BackupKind::Full => "full",
        BackupKind::Incremental => "incremental",
        BackupKind::Differential => "differential",
    }
}

fn kind_of(s: &str) -> Result<BackupKind> {
    match s {
        "full" => Ok(BackupKind::Full),
        "incremental" => Ok(BackupKind::Incremental),
        "differential" => Ok(BackupKind::Differential),
        other => Err(Error::InvalidArgument(format!(
            "unknown backup kind {other}"
        ))),
    }
}

/// Largest stored block a catalog may describe (the writer stores 1 MiB
/// pieces); a larger one is refused before anything is allocated for it.
const MAX_BLOCK: u64 = 64 << 20;

/// `repo/file` for a file name from the catalog, refused when it would
/// leave the repository (absolute, or with a `..` component).
fn contained(repo: &Path, file: &str) -> Result<std::path::PathBuf> {
    let rel = Path::new(file);
    let inside = !file.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside {
        return Err(repo_err(
            repo,
            format!("the catalog names a file outside the repository: {file:?}"),
        ));
    }
    Ok(repo.join(rel))
}

fn repo_err(path: &Path, what: impl Into<String>) -> Error {
    Error::Repository {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

impl RepoCatalog {
    /// Loads `catalog.json` (an absent catalog is an empty one).
    pub fn load(repo: &Path) -> Result<Self> {
        let p = repo.join("catalog.json");
        match std::fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| repo_err(repo, format!("catalog.json: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                version: 1,
                backups: Vec::new(),
            }),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    fn save(&self, storage: &SharedStorage, repo: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| repo_err(repo, e.to_string()))?;
        Ok(vmdk_file::replace_file_in(
            storage,
            &repo.join("catalog.json"),
            &bytes,
        )?)
    }

    /// The cbt view of one disk's backups.
    pub fn disk_catalog(&self, key: i32, capacity: u64) -> Result<cbt::Catalog> {
        let mut c = cbt::Catalog::new(capacity);
        for b in &self.backups {
            let Some(d) = b.disks.iter().find(|d| d.key == key) else {
                continue;
            };
            let change_id: ChangeId = match &d.change_id {
                Some(s) => s
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("change id {s}: {e}")))?,
                None => ChangeId::All,
            };
            let kind = kind_of(&b.kind)?;
            c.backups.push(BackupRecord {
                id: b.id,
                kind,
                base: d.base,
                change_id,
                time: b.time,
                extents: d.extents.iter().map(|&(s, n)| Extent::new(s, n)).collect(),
            });
        }
        Ok(c)
    }
}

/// What a backup did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The backup id (format 1).
    pub id: u64,
    /// The point id (format 2).
    pub point: Option<String>,
    /// Bytes read from the VM.
    pub bytes_read: u64,
    /// Bytes stored (non-zero, or changed).
    pub bytes_stored: u64,
    /// Bytes of the disks not read at all.
    pub bytes_skipped: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Warnings (independent disks skipped, ESXi without PrepareForAccess).
    pub warnings: Vec<String>,
    /// Transport used per disk.
    pub transports: Vec<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn wait_task(
    client: &vim_soap::client::Client,
    resp: &vim_soap::xml::Element,
) -> Result<codec::TaskInfo> {
    let task = codec::parse_moref(resp)?
        .ok_or_else(|| Error::InvalidArgument("no task returned".into()))?;
    Ok(client.wait_task(&task, TASK_TIMEOUT)?)
}

/// Turns changed-block tracking off and on again: a new epoch, so the
/// next incremental backup refuses (`EpochChanged`: take a full one)
/// instead of missing what was written where the host could not see it
/// (a restore over san).
fn reset_change_tracking(client: &vim_soap::client::Client, vm: &MoRef) -> Result<()> {
    for on in [false, true] {
        let spec = codec::ConfigSpec {
            change_tracking: Some(on),
            device_changes: Vec::new(),
        };
        wait_task(client, &client.call(&codec::reconfig_vm_task(vm, &spec))?)?;
    }
    Ok(())
}

/// Backs up every non-independent disk of the VM in `params` into `repo`.
/// PrepareForAccess, snapshot, read, remove the snapshot, EndAccess —
/// the last two also after a failure.
pub fn backup(
    lib: &Library,
    params: &ConnectParams,
    repo: &Path,
    kind: BackupKind,
    transports: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary> {
    backup_in(
        &std_storage(),
        lib,
        params,
        repo,
        kind,
        transports,
        progress,
    )
}

/// [`backup`], writing the repository through `storage` (every file,
/// directory, rename and sync of it).
pub fn backup_in(
    storage: &SharedStorage,
    lib: &Library,
    params: &ConnectParams,
    repo: &Path,
    kind: BackupKind,
    transports: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary> {
    let started = Instant::now();
    create_dir_all(&**storage, repo, true).map_err(|e| Error::io(repo, e))?;
    let mut summary = Summary::default();
    snapshot_session(
        lib,
        params,
        transports,
        &mut summary,
        &mut |client, vm, snap, summary| {
            backup_snapshot(
                storage, lib, params, repo, client, vm, snap, kind, transports, summary, progress,
            )
        },
    )?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// What a backup does inside its snapshot session.
pub(crate) type SnapshotBody<'a> =
    dyn FnMut(&Arc<vim_soap::client::Client>, &MoRef, &MoRef, &mut Summary) -> Result<()> + 'a;

/// PrepareForAccess, a temporary snapshot, `body`, removal of the
/// snapshot and EndAccess, the last two also after a failure.
pub(crate) fn snapshot_session(
    lib: &Library,
    params: &ConnectParams,
    transports: Option<&str>,
    summary: &mut Summary,
    body: &mut SnapshotBody<'_>,
) -> Result<()> {
    let conn = Connection::connect(lib, params, true, None, transports)?;
    let client = Arc::clone(
        conn.client()
            .ok_or_else(|| Error::InvalidArgument("a backup needs a server".into()))?,
    );
    let vm = vm_moref(params);
    let prepared = match conn.prepare_for_access(IDENTITY) {
        Ok(()) => true,
        Err(Error::Soap(e))
            if matches!(e.fault_kind(), Some(vim_soap::FaultKind::NotSupported)) =>
        {
            summary.warnings.push(format!(
                "PrepareForAccess not available ({e}); continuing without it"
            ));
            false
        }
        Err(e) => return Err(e),
    };
    let result = (|| -> Result<()> {
        let snap = wait_task(
            &client,
            &client.call(&codec::create_snapshot_task(
                &vm,
                "vddk-rs backup",
                "temporary snapshot for a backup",
                false,
                true,
            ))?,
        )?
        .result
        .ok_or_else(|| Error::InvalidArgument("snapshot task returned no snapshot".into()))?;
        let inner = body(&client, &vm, &snap, summary);
        // The snapshot goes whatever happened.
        let removed = client
            .call(&codec::remove_snapshot_task(&snap, false, true))
            .map_err(Error::from)
            .and_then(|r| wait_task(&client, &r).map(|_| ()));
        inner.and(removed)
    })();
    let ended = if prepared {
        conn.end_access(IDENTITY)
    } else {
        Ok(())
    };
    result?;
    ended
}

/// A warning for each independent disk of the VM (its current disk list:
/// independent disks are not part of snapshots, so a backup skips them).
pub(crate) fn independent_disk_warnings(
    client: &vim_soap::client::Client,
    vm: &MoRef,
) -> Result<Vec<String>> {
    let current = codec::virtual_disks(
        &client
            .property(vm, "config.hardware.device")?
            .ok_or_else(|| Error::InvalidArgument("the VM has no devices".into()))?,
    )?;
    Ok(current
        .iter()
        .filter(|d| d.is_independent())
        .map(|d| {
            format!(
                "disk {} ({}) is independent: not part of snapshots, skipped",
                d.key, d.file_name
            )
        })
        .collect())
}

/// The VM of `params` as a managed object reference.
pub(crate) fn vm_moref(params: &ConnectParams) -> MoRef {
    MoRef::new(
        "VirtualMachine",
        params
            .vm
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches("moref="),
    )
}

#[allow(clippy::too_many_arguments)]
fn backup_snapshot(
    storage: &SharedStorage,
    lib: &Library,
    params: &ConnectParams,
    repo: &Path,
    client: &Arc<vim_soap::client::Client>,
    vm: &MoRef,
    snap: &MoRef,
    kind: BackupKind,
    transports: Option<&str>,
    summary: &mut Summary,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut catalog = RepoCatalog::load(repo)?;
    let id = catalog.backups.iter().map(|b| b.id).max().unwrap_or(0) + 1;
    summary.id = id;
    let dir_name = format!("{id:06}-{}", kind_name(kind));
    let tmp = repo.join(format!(".tmp-{dir_name}"));
    let fs = &**storage;
    if tmp.exists() {
        let _ = remove_dir_all(fs, &tmp);
    }
    fs.create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| -> Result<BackupEntry> {
        let config = client
            .property(snap, "config")?
            .map(|e| e.to_xml())
            .unwrap_or_default();
        let config_path = tmp.join("config.xml");
        write_file(fs, &config_path, config.as_bytes(), true)
            .map_err(|e| Error::io(&config_path, e))?;
        let disks = codec::virtual_disks(
            &client
                .property(snap, "config.hardware.device")?
                .ok_or_else(|| Error::InvalidArgument("the snapshot has no devices".into()))?,
        )?;
        let conn = Connection::connect(lib, params, true, Some(&snap.value), transports)?;
        let mut entry = BackupEntry {
            id,
            kind: kind_name(kind).into(),
            time: now(),
            vm: vm.value.clone(),
            dir: dir_name.clone(),
            disks: Vec::new(),
            skipped: Vec::new(),
        };
        for w in independent_disk_warnings(client, vm)? {
            summary.warnings.push(w.clone());
            entry.skipped.push(w);
        }
        // Capacities come from the host: sums saturate rather than wrap.
        let total: u64 = disks.iter().fold(0u64, |t, d| t.saturating_add(d.capacity));
        let mut done_disks = 0u64;
        for d in &disks {
            let cat = catalog.disk_catalog(d.key, d.capacity)?;
            let current_id: ChangeId = match &d.change_id {
                Some(s) => s
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("change id {s}: {e}")))?,
                None => ChangeId::All,
            };
            let plan = if kind == BackupKind::Full || d.change_id.is_none() {
                if kind != BackupKind::Full {
                    return Err(Error::InvalidArgument(format!(
                        "disk {}: changed block tracking is off: take a full backup",
                        d.key
                    )));
                }
                cbt::BackupPlan {
                    kind,
                    base: None,
                    since: ChangeId::All,
                }
            } else {
                cat.plan_next(kind, &current_id)?
            };
            let changed = match &d.change_id {
                Some(_) => changed_areas_by_key(
                    client,
                    vm,
                    Some(snap),
                    d.key,
                    d.capacity,
                    plan.since.as_str(),
                )?,
                None => ExtentList::from_sorted([Extent::new(0, d.capacity)]),
            };
            let disk = conn.open(&d.file_name, OpenFlags::read_only())?;
            summary
                .transports
                .push(format!("disk {}: {}", d.key, disk.transport_mode()));
            let file = format!("{}.vmdk", d.key);
            let path = tmp.join(&file);
            create_in(
                storage,
                &path,
                &CreateOptions::new(DiskType::MonolithicSparse, d.capacity),
            )?;
            let out = LocalDisk::open(
                &path,
                &OpenOptions {
                    writable: true,
                    storage: storage.clone(),
                    ..OpenOptions::default()
                },
            )?;
            let mut stored = ExtentList::new();
            let mut crcs: Vec<(u64, u64, u32)> = Vec::new();
            // Large reads (the transport pipelines them) on one thread,
            // checksums and writes to the repository on this one.
            let reads = cbt::plan::read_requests(&changed, d.capacity, 65536, READ_CHUNK);
            let to_read: u64 = reads.iter().map(|r| r.len).sum();
            summary.bytes_skipped = summary
                .bytes_skipped
                .saturating_add(d.capacity.saturating_sub(to_read));
            // Batches of reads (the transport keeps requests in flight
            // across them) on one thread; checksums and repository writes
            // on this one.
            let mut batches: Vec<Vec<Extent>> = Vec::new();
            let mut cur: Vec<Extent> = Vec::new();
            let mut cur_len = 0;
            for r in reads.iter() {
                if cur_len + r.len > READ_CHUNK && !cur.is_empty() {
                    batches.push(std::mem::take(&mut cur));
                    cur_len = 0;
                }
                cur.push(*r);
                cur_len += r.len;
            }
            if !cur.is_empty() {
                batches.push(cur);
            }
            std::thread::scope(|scope| -> Result<()> {
                type Batch = (Vec<Extent>, Vec<u8>);
                let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(2);
                let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
                for _ in 0..3 {
                    let _ = back_tx.send(vec![0u8; READ_CHUNK as usize]);
                }
                let disk = &disk;
                let batches = &batches;
                scope.spawn(move || {
                    for batch in batches {
                        let Ok(mut buf) = back_rx.recv() else { return };
                        let mut at = 0usize;
                        let parts: Vec<(u64, usize, usize)> = batch
                            .iter()
                            .map(|e| {
                                let p = (e.start, at, e.len as usize);
                                at += e.len as usize;
                                p
                            })
                            .collect();
                        let res = disk
                            .read_scattered(&mut buf, &parts)
                            .map(|()| (batch.clone(), buf));
                        let failed = res.is_err();
                        if tx.send(res).is_err() || failed {
                            return;
                        }
                    }
                });
                for _ in 0..batches.len() {
                    let (batch, buf) = rx
                        .recv()
                        .map_err(|_| Error::InvalidArgument("reader stopped".into()))??;
                    let mut at = 0usize;
                    for r in batch {
                        let data = &buf[at..at + r.len as usize];
                        at += r.len as usize;
                        summary.bytes_read += r.len;
                        // Checksums and holes at 1 MiB granularity.
                        for (i, b) in data.chunks(CHUNK as usize).enumerate() {
                            let piece = Extent::new(r.start + i as u64 * CHUNK, b.len() as u64);
                            let zero = b.iter().all(|&x| x == 0);
                            if zero && kind == BackupKind::Full {
                                continue; // a full backup keeps holes as holes
                            }
                            if zero {
                                out.write_zeroes(piece.start, piece.len)?;
                            } else {
                                out.write_at(piece.start, b)?;
                            }
                            stored.insert(piece);
                            crcs.push((piece.start, piece.len, crc32fast::hash(b)));
                            summary.bytes_stored += piece.len;
                        }
                        progress(done_disks.saturating_add(r.start + r.len), total);
                    }
                    let _ = back_tx.send(buf);
                }
                Ok(())
            })?;
            out.close()?;
            disk.close()?;

            done_disks = done_disks.saturating_add(d.capacity);
            entry.disks.push(DiskEntry {
                key: d.key,
                file_name: d.file_name.clone(),
                capacity: d.capacity,
                change_id: d.change_id.clone(),
                base: plan.base,
                file: format!("{dir_name}/{file}"),
                extents: stored.iter().map(|e| (e.start, e.len)).collect(),
                crcs,
            });
        }
        Ok(entry)
    })();
    let entry = match result {
        Ok(e) => e,
        Err(e) => {
            let _ = remove_dir_all(fs, &tmp);
            return Err(e);
        }
    };
    // Publication, each step durable before the next can refer to it:
    // the backup's files and their names, then the directory's name,
    // then the catalog entry (a power cut leaves the backup whole and
    // listed, or unlisted).
    let sync = |dir: &Path| fs.sync_dir(dir).map_err(|e| Error::io(dir, e));
    sync(&tmp)?;
    let final_dir = repo.join(&dir_name);
    fs.rename(&tmp, &final_dir)
        .map_err(|e| Error::io(&final_dir, e))?;
    sync(repo)?;
    catalog.backups.push(entry);
    catalog.save(storage, repo)
}
