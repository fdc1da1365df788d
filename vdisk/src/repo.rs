//! `vdisk repo …` and the repository plumbing every backup command
//! shares: locations (a directory or `s3://bucket/prefix`), secrets, and
//! telling format 1 (`catalog.json`) from format 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use disklib::backup::BackupPoint;
use repo_format::PrunePolicy;
use repo_store::{InitEncryption, InitOptions, Repository, Unlock};

use crate::AnyError;

/// How an encrypted repository is opened. The passphrase never comes
/// from the command line (it would show in `ps` and shell history).
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct Secrets {
    /// Read the repository passphrase from this file (first line); else
    /// from the VDISK_PASSPHRASE environment variable.
    #[arg(long, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
    /// The key file of a repository initialised with `--encryption keyfile`.
    #[arg(long, value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
}

impl Secrets {
    fn passphrase(&self) -> Result<Option<Vec<u8>>, AnyError> {
        if let Some(f) = &self.passphrase_file {
            let text = std::fs::read(f)
                .map_err(|e| format!("reading the passphrase file {}: {e}", f.display()))?;
            let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Ok(Some(line.to_vec()));
        }
        Ok(std::env::var_os("VDISK_PASSPHRASE").map(|v| v.into_encoded_bytes()))
    }

    fn unlock(&self) -> Result<Unlock, AnyError> {
        if let Some(k) = &self.key_file {
            let bytes = std::fs::read(k)
                .map_err(|e| format!("reading the key file {}: {e}", k.display()))?;
            return Ok(Unlock::KeyFile(bytes));
        }
        Ok(self.passphrase()?.map_or(Unlock::None, Unlock::Passphrase))
    }
}

/// Whether `location` is a format-1 repository (a directory with
/// `catalog.json`).
pub(crate) fn is_format1(location: &str) -> bool {
    !location.contains("://") && Path::new(location).join("catalog.json").is_file()
}

/// Opens the format-2 repository at `location`.
pub(crate) fn open(location: &str, secrets: &Secrets) -> Result<Repository, AnyError> {
    let store = repo_s3::open_store(location, false)?;
    Ok(Repository::open(store, &secrets.unlock()?)?)
}

/// Opens disk `key` of point `point` of either format.
pub(crate) fn open_point(
    location: &str,
    point: &str,
    key: Option<i32>,
    secrets: &Secrets,
) -> Result<BackupPoint, AnyError> {
    if is_format1(location) {
        let id: u64 = point
            .parse()
            .map_err(|_| format!("{location} is a format-1 repository: backups are numbered"))?;
        return Ok(BackupPoint::open(Path::new(location), id, key)?);
    }
    let repo = open(location, secrets)?;
    Ok(BackupPoint::open_v2(&repo, location, point, key)?)
}

/// The disks of a point of either format.
pub(crate) fn point_keys(
    location: &str,
    point: &str,
    secrets: &Secrets,
) -> Result<Vec<i32>, AnyError> {
    if is_format1(location) {
        let id: u64 = point.parse().unwrap_or(u64::MAX);
        let catalog = disklib::backup::RepoCatalog::load(Path::new(location))?;
        return Ok(catalog
            .backups
            .iter()
            .find(|b| b.id == id)
            .map(|b| b.disks.iter().map(|d| d.key).collect())
            .unwrap_or_default());
    }
    let repo = open(location, secrets)?;
    Ok(disklib::backup::v2::resolve(&repo, point)?.1)
}

/// `vdisk repo …`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum RepoCommand {
    /// Create a format-2 repository: a directory (created) or
    /// `s3://bucket/prefix` (endpoint and credentials from AWS_ENDPOINT_URL,
    /// AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    Init {
        /// Where.
        repo: String,
        /// `repokey` (keys sealed under the passphrase, kept in the
        /// repository), `keyfile` (keys written to --key-file, kept
        /// outside), or `none`.
        #[arg(long, default_value = "repokey")]
        encryption: String,
        /// Chunk size: a power of two from 64K to 64M.
        #[arg(long, default_value = "4M", value_parser = crate::args::parse_size)]
        chunk_size: u64,
        /// zstd level (-7..=22), or `none`.
        #[arg(long, default_value = "3")]
        compression: String,
        #[command(flatten)]
        secrets: Secrets,
    },
    /// List the backup points.
    List {
        /// The repository.
        repo: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        secrets: Secrets,
    },
    /// Forget the points a retention policy does not keep (per VM and
    /// disk); their chunks go at the next `gc`.
    Prune {
        /// The repository.
        repo: String,
        /// Keep the N newest points.
        #[arg(long, default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest point of each of the last N hours.
        #[arg(long, default_value_t = 0)]
        keep_hourly: u32,
        /// … days.
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        /// … weeks.
        #[arg(long, default_value_t = 0)]
        keep_weekly: u32,
        /// … months.
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
        /// … years.
        #[arg(long, default_value_t = 0)]
        keep_yearly: u32,
        /// Only say what would go.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        secrets: Secrets,
    },
    /// Delete the chunks no point references, sparing those a running
    /// backup may still reference (its lease) and those younger than the
    /// grace period. Safe beside running backups.
    Gc {
        /// The repository.
        repo: String,
        /// Grace period in seconds (at least 600; covers clock skew
        /// between proxies and the store).
        #[arg(long, default_value_t = repo_store::DEFAULT_GRACE)]
        grace: u64,
        /// Only say what would go.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        secrets: Secrets,
    },
    /// Convert a format-1 repository (today's `catalog.json` directory)
    /// into a new format-2 repository; every point keeps its data, VM
    /// configuration, kind and change id.
    Migrate {
        /// The format-1 repository.
        old: PathBuf,
        /// The format-2 repository (must exist: `vdisk repo init`).
        new: String,
        #[command(flatten)]
        secrets: Secrets,
    },
}

pub(crate) fn repo(cmd: RepoCommand) -> Result<ExitCode, AnyError> {
    match cmd {
        RepoCommand::Init {
            repo,
            encryption,
            chunk_size,
            compression,
            secrets,
        } => {
            let encryption = match encryption.as_str() {
                "none" => InitEncryption::None,
                "repokey" => InitEncryption::RepoKey(secrets.passphrase()?.ok_or(
                    "--encryption repokey needs a passphrase: --passphrase-file FILE or VDISK_PASSPHRASE",
                )?),
                "keyfile" => {
                    let k = secrets.key_file.as_ref().ok_or("--encryption keyfile needs --key-file FILE (written)")?;
                    if k.exists() {
                        return Err(format!("{} exists: a key file is never overwritten", k.display()).into());
                    }
                    InitEncryption::KeyFile
                }
                other => return Err(format!("unknown encryption {other:?}: none, repokey or keyfile").into()),
            };
            let compression = match compression.as_str() {
                "none" => None,
                l => Some(
                    l.parse::<i32>()
                        .map_err(|_| format!("bad compression level {l:?}"))?,
                ),
            };
            let chunk_size = u32::try_from(chunk_size).map_err(|_| "chunk size too large")?;
            let store = repo_s3::open_store(&repo, true)?;
            let (r, key_file) = Repository::init(
                store,
                &InitOptions {
                    chunk_size,
                    compression,
                    encryption,
                    ..InitOptions::default()
                },
            )?;
            if let (Some(bytes), Some(path)) = (key_file, &secrets.key_file) {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                f.write_all(&bytes)?;
                f.sync_all()?;
            }
            println!(
                "created repository {repo}: format 2, chunks of {} bytes, compression {}, {}",
                r.chunk_size(),
                compression.map_or("none".to_string(), |l| format!("zstd {l}")),
                if r.config().is_encrypted() {
                    "encrypted"
                } else {
                    "NOT encrypted"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::List {
            repo,
            json,
            secrets,
        } => {
            let r = open(&repo, &secrets)?;
            let points = r.points()?;
            if json {
                let v: Vec<serde_json::Value> = points
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "point": p.backup_id.to_string(),
                            "disk": p.disk_key,
                            "time": p.time,
                            "kind": format!("{:?}", p.kind).to_lowercase(),
                            "capacity": p.capacity,
                            "stored_chunks": p.stored_chunks,
                            "change_id": p.change_id,
                            "vm": {
                                "server": p.vm.server,
                                "instance_uuid": p.vm.instance_uuid,
                                "moref": p.vm.moref,
                                "name": p.vm.name,
                            },
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for p in &points {
                    println!(
                        "{} disk {} {:?} time {} {} bytes vm {} ({} {} on {})",
                        p.backup_id,
                        p.disk_key,
                        p.kind,
                        p.time,
                        p.capacity,
                        p.vm.name,
                        p.vm.moref,
                        p.vm.instance_uuid,
                        p.vm.server
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Prune {
            repo,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            dry_run,
            secrets,
        } => {
            let r = open(&repo, &secrets)?;
            let policy = PrunePolicy {
                keep_last,
                keep_hourly,
                keep_daily,
                keep_weekly,
                keep_monthly,
                keep_yearly,
            };
            let out = r.prune(&policy, dry_run)?;
            let verb = if dry_run { "would forget" } else { "forgot" };
            let mut gone = 0;
            for o in &out {
                if o.reasons.is_empty() {
                    gone += 1;
                    println!("{verb} {} disk {}", o.point.id, o.point.disk_key);
                } else {
                    println!(
                        "keep {} disk {} ({:?})",
                        o.point.id, o.point.disk_key, o.reasons
                    );
                }
            }
            println!(
                "{gone} of {} point disks {verb}; run `vdisk repo gc` to free their chunks",
                out.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Gc {
            repo,
            grace,
            dry_run,
            secrets,
        } => {
            if grace < repo_store::maint::MIN_GRACE
                && std::env::var_os("VDISK_TEST_SHORT_GRACE").is_none()
            {
                return Err(format!(
                    "--grace must be at least {} seconds",
                    repo_store::maint::MIN_GRACE
                )
                .into());
            }
            let r = open(&repo, &secrets)?;
            let g = r.gc(grace, dry_run)?;
            println!(
                "gc: {} chunks listed, {} deleted ({} bytes){}, {} protected, {} stale leases removed{}",
                g.chunks_listed,
                g.chunks_deleted,
                g.bytes_deleted,
                if dry_run { " [dry run]" } else { "" },
                g.chunks_protected,
                g.stale_leases.len(),
                if g.stopped_early { ", stopped early (run again)" } else { "" }
            );
            if !g.missing.is_empty() {
                eprintln!(
                    "vdisk: {} chunks referenced by points are missing: run `vdisk verify`",
                    g.missing.len()
                );
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Migrate { old, new, secrets } => {
            let r = open(&new, &secrets)?;
            let m = disklib::backup::v2::migrate(&old, &r, &mut |_, _| {})?;
            for (old_id, new_id) in &m {
                println!("backup {old_id} -> point {new_id}");
            }
            println!(
                "migrated {} backups from {} to {new}",
                m.len(),
                old.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
