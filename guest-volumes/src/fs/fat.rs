//! A small read-only FAT12/16/32 reader with long file names.
//!
//! Written here rather than taken from `fatfs` 0.3 because that crate
//! needs `Write`, lets directory handles borrow the filesystem (so no file
//! handle can be cached), and on hostile input subtracts from cluster
//! numbers below 2 and follows cyclic directory chains forever. Here every
//! cluster number is range-checked, directories are capped at the FAT
//! limit of 65,536 entries, and chains are walked with a step bound.

use std::sync::Arc;

use super::{components, DirEntry, FileKind, GuestFs, Metadata};
use crate::probe::Bpb;
use crate::read::{read_exact, read_vec};
use crate::{Error, FsKind, ReadAt};

/// FAT directories hold at most 65,536 entries of 32 bytes.
const MAX_DIR_BYTES: u64 = 65536 * 32;

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    attr: u8,
    first_cluster: u32,
    size: u32,
    mtime: Option<i64>,
    atime: Option<i64>,
}

impl Entry {
    fn is_dir(&self) -> bool {
        self.attr & 0x10 != 0
    }

    fn metadata(&self) -> Metadata {
        Metadata {
            kind: if self.is_dir() {
                FileKind::Dir
            } else {
                FileKind::File
            },
            size: if self.is_dir() {
                0
            } else {
                u64::from(self.size)
            },
            mode: None,
            uid: None,
            gid: None,
            mtime: self.mtime,
            mtime_nsec: self.mtime.map(|_| 0),
            atime: self.atime,
        }
    }
}

/// Where a directory's entries live.
#[derive(Debug, Clone, Copy)]
enum DirLoc {
    /// The fixed FAT12/16 root directory.
    FixedRoot,
    /// A cluster chain (0 = the FAT32 root given by the BPB).
    Chain(u32),
}

/// An open FAT filesystem.
pub(crate) struct FatFs {
    vol: Arc<dyn ReadAt>,
    bpb: Bpb,
    fat_at: u64,
    root_at: u64,
    data_at: u64,
    cluster_size: u64,
    /// The last file read: its path, and the cluster chain walked so far.
    open: Option<(String, Entry, Vec<u32>)>,
}

impl std::fmt::Debug for FatFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FatFs")
            .field("bpb", &self.bpb)
            .finish_non_exhaustive()
    }
}

/// DOS date and time (local time, taken as UTC) to Unix seconds.
fn dos_time(date: u16, time: u16) -> Option<i64> {
    if date == 0 {
        return None;
    }
    let year = 1980 + i64::from(date >> 9);
    let month = i64::from((date >> 5) & 0xF);
    let day = i64::from(date & 0x1F);
    if !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let (h, m, s) = (
        i64::from(time >> 11),
        i64::from((time >> 5) & 0x3F),
        i64::from(time & 0x1F) * 2,
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86400 + h * 3600 + m * 60 + s)
}

fn lfn_checksum(short: &[u8]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

fn short_name(e: &[u8]) -> String {
    let case = e[12];
    let mut base: Vec<u8> = e[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let ext = &e[8..11];
    let decode = |b: &[u8], lower: bool| -> String {
        let s: String = b.iter().map(|&c| char::from(c)).collect::<String>();
        let s = s.trim_end_matches(' ').to_string();
        if lower {
            s.to_ascii_lowercase()
        } else {
            s
        }
    };
    let base = decode(&base, case & 0x08 != 0);
    let ext = decode(ext, case & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// Parses raw directory bytes into entries (without `.`, `..`, volume
/// labels and deleted entries).
fn parse_dir(raw: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut lfn: Vec<Option<[u16; 13]>> = Vec::new();
    let mut lfn_sum = 0u8;
    for e in raw.chunks_exact(32) {
        let first = e[0];
        if first == 0 {
            break;
        }
        if first == 0xE5 {
            lfn.clear();
            continue;
        }
        let attr = e[11];
        if attr & 0x3F == 0x0F {
            let seq = usize::from(first & 0x1F);
            if seq == 0 {
                lfn.clear();
                continue;
            }
            if first & 0x40 != 0 {
                lfn = vec![None; seq];
                lfn_sum = e[13];
            }
            if seq > lfn.len() || e[13] != lfn_sum {
                lfn.clear();
                continue;
            }
            let mut units = [0u16; 13];
            let offsets = [1usize, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
            for (u, &o) in units.iter_mut().zip(offsets.iter()) {
                *u = u16::from_le_bytes([e[o], e[o + 1]]);
            }
            lfn[seq - 1] = Some(units);
            continue;
        }
        let long = if !lfn.is_empty()
            && lfn.iter().all(Option::is_some)
            && lfn_checksum(&e[..11]) == lfn_sum
        {
            let units: Vec<u16> = lfn
                .iter()
                .flatten()
                .flat_map(|u| u.iter().copied())
                .take_while(|&u| u != 0)
                .collect();
            Some(String::from_utf16_lossy(&units))
        } else {
            None
        };
        lfn.clear();
        if attr & 0x08 != 0 {
            continue; // volume label
        }
        let name = long
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| short_name(e));
        if name == "." || name == ".." || name.is_empty() {
            continue;
        }
        let hi = u32::from(u16::from_le_bytes([e[20], e[21]]));
        let lo = u32::from(u16::from_le_bytes([e[26], e[27]]));
        out.push(Entry {
            name,
            attr,
            first_cluster: (hi << 16) | lo,
            size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
            mtime: dos_time(
                u16::from_le_bytes([e[24], e[25]]),
                u16::from_le_bytes([e[22], e[23]]),
            ),
            atime: dos_time(u16::from_le_bytes([e[18], e[19]]), 0),
        });
    }
    out
}

impl FatFs {
    /// Opens the FAT filesystem in `vol`.
    pub(crate) fn open(vol: Arc<dyn ReadAt>) -> Result<Self, Error> {
        let mut boot = [0u8; 512];
        read_exact(&*vol, 0, &mut boot, "FAT boot sector")?;
        let bpb = Bpb::parse(&boot).ok_or(Error::corrupt("FAT boot sector", 0))?;
        let bps = u64::from(bpb.bytes_per_sector);
        let fat_at = u64::from(bpb.reserved) * bps;
        let root_at = fat_at + u64::from(bpb.fats) * bpb.fat_sectors * bps;
        let root_len = u64::from(bpb.root_entries) * 32;
        let data_at = (root_at + root_len).div_ceil(bps) * bps;
        let cluster_size = u64::from(bpb.sectors_per_cluster) * bps;
        if bpb.kind == FsKind::Fat32
            && !(2..u64::from(bpb.clusters) + 2).contains(&u64::from(bpb.root_cluster))
        {
            return Err(Error::corrupt("FAT32 root cluster", 44));
        }
        Ok(FatFs {
            vol,
            bpb,
            fat_at,
            root_at,
            data_at,
            cluster_size,
            open: None,
        })
    }

    fn valid_cluster(&self, c: u32) -> bool {
        c >= 2 && u64::from(c) < u64::from(self.bpb.clusters) + 2
    }

    /// The FAT entry for cluster `c`: `Ok(None)` at the end of the chain.
    fn next_cluster(&self, c: u32) -> Result<Option<u32>, Error> {
        let (at, width) = match self.bpb.kind {
            FsKind::Fat12 => (u64::from(c) * 3 / 2, 2),
            FsKind::Fat16 => (u64::from(c) * 2, 2),
            _ => (u64::from(c) * 4, 4),
        };
        let at = self.fat_at + at;
        let mut b = [0u8; 4];
        read_exact(&*self.vol, at, &mut b[..width], "FAT")?;
        let (v, eoc) = match self.bpb.kind {
            FsKind::Fat12 => {
                let raw = u32::from(u16::from_le_bytes([b[0], b[1]]));
                (if c & 1 == 1 { raw >> 4 } else { raw & 0xFFF }, 0xFF8)
            }
            FsKind::Fat16 => (u32::from(u16::from_le_bytes([b[0], b[1]])), 0xFFF8),
            _ => (u32::from_le_bytes(b) & 0x0FFF_FFFF, 0x0FFF_FFF8),
        };
        if v >= eoc {
            return Ok(None);
        }
        if !self.valid_cluster(v) {
            return Err(Error::corrupt("FAT cluster chain", at));
        }
        Ok(Some(v))
    }

    fn cluster_offset(&self, c: u32) -> Result<u64, Error> {
        if !self.valid_cluster(c) {
            return Err(Error::corrupt("cluster number", 0));
        }
        Ok(self.data_at + u64::from(c - 2) * self.cluster_size)
    }

    /// Reads a directory's raw bytes, at most [`MAX_DIR_BYTES`].
    fn dir_bytes(&self, loc: DirLoc) -> Result<Vec<u8>, Error> {
        let first = match loc {
            DirLoc::FixedRoot => {
                let len = u64::from(self.bpb.root_entries) * 32;
                return read_vec(
                    &*self.vol,
                    self.root_at,
                    len,
                    MAX_DIR_BYTES,
                    "FAT root directory",
                );
            }
            DirLoc::Chain(0) => self.bpb.root_cluster,
            DirLoc::Chain(c) => c,
        };
        let max_clusters = MAX_DIR_BYTES.div_ceil(self.cluster_size);
        let mut out = Vec::new();
        let mut c = Some(first);
        let mut steps = 0u64;
        while let Some(cl) = c {
            steps += 1;
            if steps > max_clusters {
                return Err(Error::TooLarge {
                    what: "FAT directory (or a looping cluster chain)",
                    size: steps * self.cluster_size,
                    max: MAX_DIR_BYTES,
                });
            }
            let at = self.cluster_offset(cl)?;
            let chunk = read_vec(
                &*self.vol,
                at,
                self.cluster_size,
                self.cluster_size,
                "FAT directory",
            )?;
            let end = chunk.chunks_exact(32).position(|e| e[0] == 0);
            out.extend_from_slice(&chunk);
            if end.is_some() {
                break;
            }
            c = self.next_cluster(cl)?;
        }
        Ok(out)
    }

    fn list(&self, loc: DirLoc) -> Result<Vec<Entry>, Error> {
        Ok(parse_dir(&self.dir_bytes(loc)?))
    }

    fn root_loc(&self) -> DirLoc {
        if self.bpb.kind == FsKind::Fat32 {
            DirLoc::Chain(0)
        } else {
            DirLoc::FixedRoot
        }
    }

    /// Resolves `path`: `None` for the root directory.
    fn lookup(&self, path: &str) -> Result<Option<Entry>, Error> {
        let parts = components(path)?;
        let mut loc = self.root_loc();
        let mut found = None;
        for (i, part) in parts.iter().enumerate() {
            let entries = self.list(loc)?;
            let e = entries
                .iter()
                .find(|e| e.name == *part)
                .or_else(|| {
                    entries
                        .iter()
                        .find(|e| e.name.to_lowercase() == part.to_lowercase())
                })
                .cloned()
                .ok_or_else(|| Error::NotFound(path.to_string()))?;
            if i + 1 < parts.len() {
                if !e.is_dir() {
                    return Err(Error::NotADirectory(path.to_string()));
                }
                if e.first_cluster == 0 {
                    // A ".."-style pointer to the root; never a real subdirectory.
                    loc = self.root_loc();
                } else {
                    loc = DirLoc::Chain(e.first_cluster);
                }
            }
            found = Some(e);
        }
        Ok(found)
    }

    fn dir_loc_of(&self, path: &str) -> Result<DirLoc, Error> {
        match self.lookup(path)? {
            None => Ok(self.root_loc()),
            Some(e) if e.is_dir() => {
                if e.first_cluster == 0 {
                    Err(Error::corrupt("directory without clusters", 0))
                } else {
                    Ok(DirLoc::Chain(e.first_cluster))
                }
            }
            Some(_) => Err(Error::NotADirectory(path.to_string())),
        }
    }
}

impl GuestFs for FatFs {
    fn kind(&self) -> FsKind {
        self.bpb.kind
    }

    fn metadata(&mut self, path: &str) -> Result<Metadata, Error> {
        Ok(match self.lookup(path)? {
            Some(e) => e.metadata(),
            None => Metadata {
                kind: FileKind::Dir,
                size: 0,
                mode: None,
                uid: None,
                gid: None,
                mtime: None,
                mtime_nsec: None,
                atime: None,
            },
        })
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let loc = self.dir_loc_of(path)?;
        let mut out: Vec<DirEntry> = self
            .list(loc)?
            .into_iter()
            .map(|e| DirEntry {
                name_bytes: e.name.as_bytes().to_vec(),
                metadata: e.metadata(),
                name: e.name,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_link(&mut self, path: &str) -> Result<Vec<u8>, Error> {
        self.lookup(path)?;
        Err(Error::NotASymlink(path.to_string()))
    }

    fn read_file_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let cached = matches!(&self.open, Some((p, _, _)) if p == path);
        if !cached {
            let e = match self.lookup(path)? {
                None => return Err(Error::IsADirectory(path.to_string())),
                Some(e) if e.is_dir() => return Err(Error::IsADirectory(path.to_string())),
                Some(e) => e,
            };
            let chain = if e.size > 0 {
                if !self.valid_cluster(e.first_cluster) {
                    return Err(Error::corrupt("file's first cluster", 0));
                }
                vec![e.first_cluster]
            } else {
                Vec::new()
            };
            self.open = Some((path.to_string(), e, chain));
        }
        let Some((_, entry, mut chain)) = self.open.take() else {
            return Err(Error::NotFound(path.to_string()));
        };
        let result = self.read_chain(&entry, &mut chain, offset, buf);
        self.open = Some((path.to_string(), entry, chain));
        result
    }
}

impl FatFs {
    fn read_chain(
        &self,
        entry: &Entry,
        chain: &mut Vec<u32>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Error> {
        let size = u64::from(entry.size);
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = (size - offset).min(buf.len() as u64) as usize;
        let mut done = 0usize;
        while done < want {
            let pos = offset + done as u64;
            let index = (pos / self.cluster_size) as usize;
            while chain.len() <= index {
                let last = *chain
                    .last()
                    .ok_or(Error::corrupt("empty cluster chain", 0))?;
                // The chain can never be longer than the volume has clusters.
                if chain.len() as u64 > u64::from(self.bpb.clusters) {
                    return Err(Error::corrupt("FAT cluster chain loops", 0));
                }
                match self.next_cluster(last)? {
                    Some(n) => chain.push(n),
                    None => {
                        return Err(Error::corrupt("FAT cluster chain shorter than the file", 0))
                    }
                }
            }
            let within = pos % self.cluster_size;
            let n = ((self.cluster_size - within) as usize).min(want - done);
            let at = self.cluster_offset(chain[index])? + within;
            read_exact(&*self.vol, at, &mut buf[done..done + n], "FAT file data")?;
            done += n;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_times() {
        // 2020-02-29 12:34:56
        let date = ((2020 - 1980) << 9) | (2 << 5) | 29;
        let time = (12 << 11) | (34 << 5) | (56 / 2);
        assert_eq!(dos_time(date, time), Some(1_582_979_696));
        assert_eq!(dos_time(0, 0), None);
        assert_eq!(dos_time(13 << 5 | 1, 0), None);
    }

    #[test]
    fn lfn_with_bad_checksum_falls_back_to_short_name() {
        let mut short = [b' '; 32];
        short[..8].copy_from_slice(b"LONGNA~1");
        short[8..11].copy_from_slice(b"TXT");
        short[11] = 0x20;
        short[12..].fill(0);
        let mut lfn = [0xFFu8; 32];
        lfn[0] = 0x41;
        lfn[11] = 0x0F;
        lfn[12] = 0;
        lfn[13] = lfn_checksum(&short[..11]);
        let name: Vec<u16> = "longname.txt".encode_utf16().collect();
        let offsets = [1usize, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (i, &o) in offsets.iter().enumerate() {
            let u = name.get(i).copied().unwrap_or(0);
            lfn[o..o + 2].copy_from_slice(&u.to_le_bytes());
        }
        lfn[26] = 0;
        lfn[27] = 0;
        let mut raw = lfn.to_vec();
        raw.extend_from_slice(&short);
        assert_eq!(parse_dir(&raw)[0].name, "longname.txt");
        raw[13] ^= 1;
        assert_eq!(parse_dir(&raw)[0].name, "LONGNA~1.TXT");
    }
}
