//! Converting (cloning) any disk or raw image into any disk type or raw.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::create::{create_with, descriptor_options, CreateOptions, DiskType};
use crate::io::{std_storage, SharedStorage};
use crate::local::{AllocKind, LocalDisk, OpenOptions};
use crate::{Error, Result};

/// Where data comes from.
pub enum Source<'a> {
    /// A VMDK (any type, chains included).
    Disk(&'a LocalDisk),
    /// A raw image file.
    Raw(&'a Path),
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Disk(d) => f.debug_tuple("Disk").field(&d.links()[0].path()).finish(),
            Source::Raw(p) => f.debug_tuple("Raw").field(p).finish(),
        }
    }
}

/// Where data goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// A VMDK of this type and options (capacity is taken from the source).
    Disk(CreateOptions),
    /// A raw image (holes where the source has none).
    Raw,
}

const CHUNK: usize = 1 << 20;
const GRAIN: usize = 65536;

/// Data ranges of a raw file, from SEEK_DATA / SEEK_HOLE.
fn raw_data_ranges(f: &File, len: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(f, SeekFrom::Data(pos)) {
            Ok(data) => data,
            Err(rustix::io::Errno::NXIO) => break, // no more data
            Err(_) => return vec![(0, len)],       // no hole support: everything is data
        };
        let hole = seek(f, SeekFrom::Hole(data)).map_or(len, |h| h.min(len));
        if hole <= data {
            break; // data at or past the end
        }
        out.push((data, hole - data));
        pos = hole;
    }
    out
}

/// Copies `source` into a new disk (or raw file) at `dst`. Zero grains
/// are not stored; `progress(done, total)` reports bytes of source data
/// handled. Returns the bytes of data copied.
pub fn convert(
    source: &Source<'_>,
    dst: &Path,
    target: &Target,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    convert_in(&std_storage(), source, dst, target, progress)
}

/// [`convert`], writing through `storage`.
pub fn convert_in(
    storage: &SharedStorage,
    source: &Source<'_>,
    dst: &Path,
    target: &Target,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let fs = &**storage;
    // What to read, and how.
    let raw_file;
    let (capacity, ranges): (u64, Vec<(u64, u64)>) = match source {
        Source::Disk(d) => {
            let map = d.map()?;
            (
                d.capacity(),
                map.iter()
                    .filter(|e| e.kind == AllocKind::Data)
                    .map(|e| (e.start, e.length))
                    .collect(),
            )
        }
        Source::Raw(p) => {
            raw_file = File::open(p).map_err(|e| Error::io(p, e))?;
            let len = raw_file.metadata().map_err(|e| Error::io(p, e))?.len();
            (len, raw_data_ranges(&raw_file, len))
        }
    };
    let read = |off: u64, buf: &mut [u8]| -> Result<()> {
        match source {
            Source::Disk(d) => d.read_at(off, buf),
            Source::Raw(p) => {
                let f = File::open(p).map_err(|e| Error::io(*p, e))?;
                read_raw(&f, p, off, buf)
            }
        }
    };
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    match target {
        Target::Disk(o) if o.disk_type == DiskType::StreamOptimized => {
            let mut o = o.clone();
            o.capacity = capacity;
            let d = descriptor_options(&o);
            let shared_raw = match source {
                Source::Raw(p) => Some(File::open(p).map_err(|e| Error::io(*p, e))?),
                _ => None,
            };
            let read_sync = |off: u64, buf: &mut [u8]| -> Result<()> {
                match (source, &shared_raw) {
                    (Source::Disk(disk), _) => disk.read_at(off, buf),
                    (Source::Raw(p), Some(f)) => read_raw(f, p, off, buf),
                    (Source::Raw(p), None) => {
                        Err(Error::io(*p, std::io::Error::other("raw source not open")))
                    }
                }
            };
            crate::stream::write_stream(fs, dst, capacity, &ranges, &read_sync, &d, progress)?;
            Ok(total)
        }
        Target::Disk(o) => {
            let mut o = o.clone();
            o.capacity = capacity;
            create_with(storage, dst, &o, &descriptor_options(&o))?;
            let copied = (|| {
                let out = LocalDisk::open(
                    dst,
                    &OpenOptions {
                        writable: true,
                        storage: storage.clone(),
                        ..OpenOptions::default()
                    },
                )?;
                let n = copy_ranges(
                    &ranges,
                    &read,
                    &mut |off, bytes| out.write_at(off, bytes),
                    progress,
                    total,
                )?;
                out.close()?;
                Ok(n)
            })();
            if copied.is_err() {
                let _ = crate::create::delete_in(storage, dst);
            }
            copied
        }
        Target::Raw => {
            let f = fs.create(dst, true).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::AlreadyExists(dst.to_path_buf())
                } else {
                    Error::disk_full_or_io(dst, e)
                }
            })?;
            let copied = (|| {
                fs.set_len(&f, capacity)
                    .map_err(|e| Error::disk_full_or_io(dst, e))?;
                let n = copy_ranges(
                    &ranges,
                    &read,
                    &mut |off, bytes| {
                        fs.write_at(&f, bytes, off)
                            .map_err(|e| Error::disk_full_or_io(dst, e))
                    },
                    progress,
                    total,
                )?;
                fs.sync_all(&f).map_err(|e| Error::io(dst, e))?;
                Ok(n)
            })();
            if copied.is_err() {
                let _ = fs.remove_file(dst);
            }
            copied
        }
    }
}

fn read_raw(f: &File, p: &Path, off: u64, buf: &mut [u8]) -> Result<()> {
    f.read_exact_at(buf, off).map_err(|e| Error::io(p, e))
}

/// Copies data ranges chunk by chunk, skipping all-zero 64 KiB blocks
/// so the target keeps its holes.
fn copy_ranges(
    ranges: &[(u64, u64)],
    read: &dyn Fn(u64, &mut [u8]) -> Result<()>,
    write: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    progress: &mut dyn FnMut(u64, u64),
    total: u64,
) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    for &(start, len) in ranges {
        let mut off = start;
        let end = start + len;
        while off < end {
            let n = ((end - off) as usize).min(CHUNK - (off % GRAIN as u64) as usize);
            let chunk = &mut buf[..n];
            read(off, chunk)?;
            // Write runs of non-zero 64 KiB-aligned blocks.
            let mut i = 0usize;
            while i < n {
                let block_end =
                    (((off + i as u64) / GRAIN as u64 + 1) * GRAIN as u64 - off) as usize;
                let j = block_end.min(n);
                if chunk[i..j].iter().any(|&b| b != 0) {
                    let mut k = j;
                    while k < n {
                        let next_end = (k + GRAIN).min(n);
                        if chunk[k..next_end].iter().all(|&b| b == 0) {
                            break;
                        }
                        k = next_end;
                    }
                    write(off + i as u64, &chunk[i..k])?;
                    i = k;
                } else {
                    i = j;
                }
            }
            off += n as u64;
            done += n as u64;
            progress(done, total);
        }
    }
    Ok(done)
}
