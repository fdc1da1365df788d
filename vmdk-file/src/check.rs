//! `check`: read every piece of metadata of a local disk and report what
//! is inconsistent.

use std::path::{Path, PathBuf};

use vmdk_format::check::{Finding, FindingKind, GrainCheck, SparseChecker, StreamWalk};
use vmdk_format::extent::{GrainState, SparseExtent, SparseFormat};
use vmdk_format::layout::Backing;

use crate::local::{ExtentFile, LocalDisk, OpenOptions};
use crate::{Error, Result};

/// A finding and the file it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFinding {
    /// The file.
    pub file: PathBuf,
    /// What was found.
    pub finding: Finding,
}

/// Everything a check found; empty means consistent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Findings, in file order.
    pub findings: Vec<FileFinding>,
}

impl CheckReport {
    /// True when nothing was found.
    pub fn is_consistent(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Checks the disk at `path` and its chain.
///
/// Structural problems that prevent opening the disk (a bad header, a
/// CID mismatch, a missing parent) are findings; operating-system errors
/// (no such file, permission denied) are errors.
pub fn check_disk(path: &Path, opts: &OpenOptions) -> Result<CheckReport> {
    let disk = match LocalDisk::open(path, opts) {
        Ok(d) => d,
        Err(e @ (Error::Io { .. } | Error::NotVmdk(_))) => return Err(e),
        Err(e) => {
            let file = match &e {
                Error::Format { path, .. } | Error::Truncated { path, .. } => path.clone(),
                Error::CidMismatch { child, .. } | Error::ParentMissing { child, .. } => {
                    child.clone()
                }
                _ => path.to_path_buf(),
            };
            return Ok(CheckReport {
                findings: vec![FileFinding {
                    file,
                    finding: Finding {
                        kind: FindingKind::Unreadable,
                        detail: e.to_string(),
                    },
                }],
            });
        }
    };
    let mut report = CheckReport::default();
    for link in disk.links() {
        for (i, placed) in link.layout().extents().iter().enumerate() {
            let Some(file) = link.extent_files()[i].as_deref() else {
                continue;
            };
            let findings = match &placed.backing {
                Backing::Flat { file_offset } => {
                    let need = file_offset.saturating_add(placed.len);
                    if file.len() < need {
                        vec![Finding {
                            kind: FindingKind::ExtentSize,
                            detail: format!(
                                "extent {i} needs {need} bytes but the file has {} ({} bytes missing)",
                                file.len(),
                                need - file.len()
                            ),
                        }]
                    } else {
                        Vec::new()
                    }
                }
                Backing::Zero => Vec::new(),
                Backing::Sparse(s) => check_sparse(s, placed.len / 512, file)?,
            };
            report
                .findings
                .extend(findings.into_iter().map(|finding| FileFinding {
                    file: file.path().to_path_buf(),
                    finding,
                }));
        }
    }
    Ok(report)
}

fn entries(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

fn check_sparse(s: &SparseExtent, line_sectors: u64, file: &ExtentFile) -> Result<Vec<Finding>> {
    let mut c = SparseChecker::new(s);
    c.expect_capacity(line_sectors);
    let mut extra = Vec::new();
    let mut tables = vec![None; s.gt_count() as usize];
    for (gt, off, len) in c.table_locations() {
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, off)?;
        let table = s
            .parse_table(gt, &bytes)
            .map_err(|e| Error::format(file.path(), e))?;
        c.add_table(gt, off, &table);
        if s.is_compressed() {
            for g in 0..table.entries().len() as u64 {
                let grain = gt * s.gtes_per_gt() + g;
                if let Ok(GrainState::Compressed(goff)) = s.grain_state(grain, Some(&table)) {
                    check_compressed(&mut c, file, s.grain_bytes(), grain, goff)?;
                }
            }
        }
        tables[gt as usize] = Some(table);
    }
    if let SparseFormat::Hosted(h) = s.format() {
        if let Ok(Some((off, len))) = h.rgd_range() {
            if off.checked_add(len).is_some_and(|e| e <= file.len()) {
                let mut bytes = vec![0u8; len as usize];
                file.read_exact_at(&mut bytes, off)?;
                for (gt, toff, tlen) in c.compare_directories(&entries(&bytes)) {
                    let mut tb = vec![0u8; tlen as usize];
                    file.read_exact_at(&mut tb, toff)?;
                    let table = s
                        .parse_table(gt, &tb)
                        .map_err(|e| Error::format(file.path(), e))?;
                    c.add_redundant(gt, toff, &table, tables[gt as usize].as_ref());
                }
            } else {
                c.push(
                    FindingKind::BadDirectoryEntry,
                    "redundant grain directory lies past the end of the file".into(),
                );
            }
        }
        if h.is_compressed() && h.flags.contains(vmdk_format::hosted::SparseFlags::MARKERS) {
            let mut walk =
                StreamWalk::new(h.overhead * 512, file.len(), h.capacity, h.grain_sectors);
            let mut sector = [0u8; 512];
            while let Some(off) = walk.offset() {
                let n = (file.len().saturating_sub(off)).min(512) as usize;
                file.read_exact_at(&mut sector[..n], off)?;
                if !walk.feed(&sector[..n]) {
                    break;
                }
            }
            extra.extend(walk.finish());
        }
    }
    let mut out = c.finish();
    out.extend(extra);
    Ok(out)
}

/// Reads the compressed grain at `goff` (its marker, then as many bytes
/// as the marker announces) and has the checker inflate it.
fn check_compressed(
    c: &mut SparseChecker<'_>,
    file: &ExtentFile,
    grain_bytes: u64,
    grain: u64,
    goff: u64,
) -> Result<()> {
    let avail = file.len().saturating_sub(goff);
    // Most grains fit in the first read: a grain's worth plus framing.
    let mut want = avail.min(grain_bytes + 1024);
    loop {
        let mut bytes = vec![0u8; want as usize];
        file.read_exact_at(&mut bytes, goff)?;
        match c.check_compressed(grain, goff, &bytes) {
            GrainCheck::Done => return Ok(()),
            // The checker asks only for bytes inside the file, and more
            // than it had.
            GrainCheck::NeedBytes(n) if n > want && n <= avail => want = n,
            GrainCheck::NeedBytes(_) => return Ok(()),
        }
    }
}
