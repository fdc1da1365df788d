//! The streamOptimized writer: version 3, compressed grains, GT markers
//! after each table's grains, a GD marker and directory, a footer holding
//! the real header (`GD_AT_END`), and an end-of-stream marker; the layout
//! ESX and VMware's own tools produce.
//!
//! Grains are compressed on several threads; a grain that does not shrink
//! is stored (deflate level 0) rather than expanded.

use std::fs::File;
use std::path::Path;

use flate2::{Compress, Compression, FlushCompress, Status};
use vmdk_format::create::{
    extent_line, marker_sector, new_descriptor, push_grain_record, stream_header,
    DescriptorOptions, GTES_PER_GT,
};
use vmdk_format::descriptor::{CreateType, ExtentType};

use crate::io::Storage;
use crate::{Error, Result};

const GRAIN_SECTORS: u64 = 128;
const GRAIN: usize = 65536;
const DESCRIPTOR_SECTORS: u64 = 20;
const OVERHEAD: u64 = 128;
/// Grains read, compressed and written per round.
const BATCH: usize = 256;

/// Bytes of a grain compressed at level 1 to decide whether the whole
/// grain is worth compressing.
const PROBE: usize = 8192;

fn deflate_into(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    out.reserve(input.len() + input.len() / 16 + 64);
    c.reset();
    loop {
        match c.compress_vec(&input[c.total_in() as usize..], out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return true,
            Ok(_) if out.len() < input.len() + input.len() / 8 + 1024 => out.reserve(4096),
            _ => return false,
        }
    }
}

/// Compresses one grain with zlib framing at level 6. Incompressible
/// grains (a level-1 probe of the first 8 KiB does not shrink, or the
/// result would not be smaller) are stored instead: level 6 would spend
/// its time for nothing, and a deflate stream larger than its input
/// also inflates slower.
fn compress_grain(c: &mut Compress, probe: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    let head = &input[..input.len().min(PROBE)];
    let worth = deflate_into(probe, head, out) && out.len() * 100 < head.len() * 97;
    if !(worth && deflate_into(c, input, out) && out.len() < input.len()) {
        let mut stored = Compress::new(Compression::none(), true);
        deflate_into(&mut stored, input, out);
    }
}

/// Writes a streamOptimized disk of `capacity` bytes at `path` (created
/// anew). `data` lists the byte ranges that may hold data, in order;
/// everything else is zeros. `read(offset, buf)` supplies bytes.
/// `progress(done, total)` is called with bytes of `data` handled.
pub fn write_stream(
    fs: &dyn Storage,
    path: &Path,
    capacity: u64,
    data: &[(u64, u64)],
    read: &(dyn Fn(u64, &mut [u8]) -> Result<()> + Sync),
    d: &DescriptorOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let sectors = capacity.div_ceil(512);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let desc = new_descriptor(
        CreateType::StreamOptimized,
        sectors,
        vec![extent_line(sectors, ExtentType::Sparse, Some(&name), None)],
        d,
    )
    .to_bytes()
    .map_err(|e| Error::format(path, e))?;
    if desc.len() > (DESCRIPTOR_SECTORS * 512) as usize {
        return Err(Error::DescriptorFull {
            path: path.to_path_buf(),
            needed: desc.len(),
            capacity: (DESCRIPTOR_SECTORS * 512) as usize,
        });
    }
    // Written beside, then renamed into place: a crash leaves no
    // half-written stream at `path`.
    crate::create::create_whole(fs, path, |file, at| {
        write_body(fs, file, at, sectors, capacity, &desc, data, read, progress)
    })?;
    let total = data.iter().map(|r| r.1).sum();
    progress(total, total);
    Ok(())
}

/// Bytes of output gathered before one write.
const OUT_BUFFER: usize = 4 << 20;

/// The file written sequentially, in large writes.
struct Out<'a> {
    fs: &'a dyn Storage,
    file: &'a File,
    /// Bytes put but not yet written; they go at `written`.
    buf: Vec<u8>,
    written: u64,
    /// Sectors put so far (written or buffered).
    sector: u64,
    path: &'a Path,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        debug_assert_eq!(bytes.len() % 512, 0);
        if self.buf.len() + bytes.len() > OUT_BUFFER {
            self.flush()?;
        }
        if bytes.len() >= OUT_BUFFER {
            self.write(bytes)?;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        self.sector += bytes.len() as u64 / 512;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.fs
            .write_at(self.file, bytes, self.written)
            .map_err(|e| Error::disk_full_or_io(self.path, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            let r = self.write(&buf);
            self.buf = buf;
            self.buf.clear();
            r?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn write_body(
    fs: &dyn Storage,
    file: &File,
    path: &Path,
    sectors: u64,
    capacity: u64,
    desc: &[u8],
    data: &[(u64, u64)],
    read: &(dyn Fn(u64, &mut [u8]) -> Result<()> + Sync),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let header = stream_header(sectors, GRAIN_SECTORS, DESCRIPTOR_SECTORS, OVERHEAD);
    let mut head = vec![0u8; (OVERHEAD * 512) as usize];
    head[..512].copy_from_slice(&header.to_bytes());
    head[512..512 + desc.len()].copy_from_slice(desc);
    let mut out = Out {
        fs,
        file,
        buf: Vec::with_capacity(OUT_BUFFER),
        written: 0,
        sector: 0,
        path,
    };
    out.put(&head)?;

    let n_gt = sectors.div_ceil(GTES_PER_GT * GRAIN_SECTORS);
    let mut gd = vec![0u32; n_gt as usize];
    let mut table: Vec<u32> = vec![0; GTES_PER_GT as usize];
    let mut table_index: Option<u64> = None;
    let total: u64 = data.iter().map(|r| r.1).sum();
    let mut done = 0u64;

    // Grains overlapping a data range, in order, without duplicates.
    let mut grains = data
        .iter()
        .flat_map(|&(s, n)| {
            let first = s / GRAIN as u64;
            let last = if n == 0 {
                first
            } else {
                (s + n).div_ceil(GRAIN as u64)
            };
            first..last
        })
        .filter(|&g| g * (GRAIN as u64) < capacity)
        .peekable();
    let mut last_grain: Option<u64> = None;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16);
    let mut buf = vec![0u8; BATCH * GRAIN];
    let mut compressed: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::new()).collect();
    let mut compressors: Vec<(Compress, Compress)> = (0..threads)
        .map(|_| {
            (
                Compress::new(Compression::new(6), true),
                Compress::new(Compression::new(1), true),
            )
        })
        .collect();
    loop {
        // Gather a batch of distinct grains.
        let mut batch: Vec<(u64, usize)> = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            let Some(g) = grains.next() else { break };
            if last_grain.is_some_and(|l| g <= l) {
                continue;
            }
            last_grain = Some(g);
            let len = (capacity - g * GRAIN as u64).min(GRAIN as u64) as usize;
            batch.push((g, len));
        }
        if batch.is_empty() {
            break;
        }
        for (i, &(g, len)) in batch.iter().enumerate() {
            read(g * GRAIN as u64, &mut buf[i * GRAIN..i * GRAIN + len])?;
        }
        // Compress the non-zero grains on several threads.
        {
            let per = batch.len().div_ceil(threads);
            let chunks = buf.chunks(per * GRAIN);
            let outs = compressed.chunks_mut(per);
            std::thread::scope(|scope| {
                for ((inp, outs), (c, idx)) in chunks
                    .zip(outs)
                    .zip(compressors.iter_mut().zip((0..).step_by(per)))
                {
                    let batch = &batch;
                    scope.spawn(move || {
                        for (j, o) in outs.iter_mut().enumerate() {
                            let Some(&(_, len)) = batch.get(idx + j) else {
                                break;
                            };
                            let grain = &inp[j * GRAIN..j * GRAIN + len];
                            if grain.iter().all(|&b| b == 0) {
                                o.clear();
                            } else {
                                compress_grain(&mut c.0, &mut c.1, grain, o);
                            }
                        }
                    });
                }
            });
        }
        for (i, &(g, len)) in batch.iter().enumerate() {
            let z = &compressed[i];
            done += len as u64;
            if z.is_empty() {
                continue;
            }
            let gt = g / GTES_PER_GT;
            if table_index != Some(gt) {
                if let Some(t) = table_index {
                    flush_table(&mut out, &mut gd, t, &mut table)?;
                }
                table_index = Some(gt);
            }
            table[(g % GTES_PER_GT) as usize] = out.sector as u32;
            let mut rec = Vec::with_capacity(z.len() + 512);
            push_grain_record(&mut rec, g * GRAIN_SECTORS, z);
            out.put(&rec)?;
        }
        progress(done.min(total), total);
    }
    if let Some(t) = table_index {
        flush_table(&mut out, &mut gd, t, &mut table)?;
    }
    // Grain directory, footer, end of stream.
    let gd_sectors = (n_gt * 4).div_ceil(512).max(1);
    out.put(&marker_sector(gd_sectors, 2))?;
    let gd_at = out.sector;
    let mut gd_bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
    gd_bytes.resize((gd_sectors * 512) as usize, 0);
    out.put(&gd_bytes)?;
    out.put(&marker_sector(1, 3))?;
    let mut footer = header.clone();
    footer.gd_offset = gd_at;
    out.put(&footer.to_bytes())?;
    out.put(&marker_sector(0, 0))?;
    out.flush()
}

fn flush_table(out: &mut Out<'_>, gd: &mut [u32], gt: u64, table: &mut [u32]) -> Result<()> {
    out.put(&marker_sector(GTES_PER_GT * 4 / 512, 1))?;
    gd[gt as usize] = out.sector as u32;
    let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
    out.put(&bytes)?;
    table.fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incompressible_grains_are_stored_not_expanded() {
        let mut c = Compress::new(Compression::new(6), true);
        let mut p = Compress::new(Compression::new(1), true);
        let mut x = 0x1234_5678_9abc_def1u64;
        let noise: Vec<u8> = (0..GRAIN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut out = Vec::new();
        compress_grain(&mut c, &mut p, &noise, &mut out);
        // Stored blocks: 5 bytes per 64 KiB block plus zlib framing.
        assert!(out.len() <= GRAIN + 16, "{}", out.len());
        let mut back = vec![0u8; GRAIN];
        assert_eq!(
            vmdk_format::stream::inflate_grain(&out, &mut back, 0).unwrap(),
            GRAIN
        );
        assert_eq!(back, noise);
        compress_grain(&mut c, &mut p, &[7u8; GRAIN], &mut out);
        assert!(out.len() < 1024);
    }
}
