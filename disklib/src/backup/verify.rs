//! `verify`: every stored block of a backup (or all) against its CRC.

use std::path::Path;

use vmdk_file::local::{LocalDisk, OpenOptions};

use crate::error::Result;

use super::{contained, repo_err, RepoCatalog, MAX_BLOCK};

/// A stored block whose checksum does not match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadBlock {
    /// Backup id.
    pub backup: u64,
    /// Disk key.
    pub key: i32,
    /// Byte offset.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// Checks every CRC of one backup (or all); returns blocks that differ.
pub fn verify(repo: &Path, only: Option<u64>) -> Result<(u64, Vec<BadBlock>)> {
    let catalog = RepoCatalog::load(repo)?;
    let mut bad = Vec::new();
    let mut checked = 0u64;
    for b in catalog
        .backups
        .iter()
        .filter(|b| only.is_none_or(|id| id == b.id))
    {
        for d in &b.disks {
            let disk = LocalDisk::open(contained(repo, &d.file)?, &OpenOptions::default())?;
            let mut buf = Vec::new();
            for &(off, len, crc) in &d.crcs {
                if len == 0 || len > MAX_BLOCK || off.checked_add(len).is_none() {
                    return Err(repo_err(
                        repo,
                        format!(
                            "backup {}, disk {}: the catalog's block at byte {off} has length {len}",
                            b.id, d.key
                        ),
                    ));
                }
                buf.resize(len as usize, 0);
                let ok = disk.read_at(off, &mut buf).is_ok() && crc32fast::hash(&buf) == crc;
                checked += 1;
                if !ok {
                    bad.push(BadBlock {
                        backup: b.id,
                        key: d.key,
                        offset: off,
                        len,
                    });
                }
            }
        }
    }
    if let Some(id) = only {
        if !catalog.backups.iter().any(|b| b.id == id) {
            return Err(repo_err(repo, format!("no backup {id}")));
        }
    }
    Ok((checked, bad))
}
