//! A backup point read in place: any byte range of a disk at a point,
//! straight from its index and chunks, with no chain to replay.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use repo_format::{BackupId, BackupIndex};

use crate::error::{Error, Result};
use crate::repo::Repository;

/// Chunks kept decoded in memory per reader.
const CACHE: usize = 4;

/// One disk of one point, readable at any offset.
pub struct PointReader {
    repo: Repository,
    index: BackupIndex,
    cache: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    bytes_read: AtomicU64,
}

impl std::fmt::Debug for PointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointReader")
            .field("backup_id", &self.index.backup_id)
            .field("disk_key", &self.index.disk_key)
            .finish()
    }
}

/// A run of one kind in a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Start offset.
    pub offset: u64,
    /// Length.
    pub length: u64,
    /// Whether it holds stored data (else it reads as zeros).
    pub data: bool,
}

impl PointReader {
    /// Opens one disk of a point.
    pub fn open(repo: &Repository, id: &BackupId, disk_key: i32) -> Result<Self> {
        Ok(Self::from_index(repo, repo.read_index(id, disk_key)?))
    }

    /// A reader over an index already read.
    pub fn from_index(repo: &Repository, index: BackupIndex) -> Self {
        PointReader {
            repo: repo.clone(),
            index,
            cache: Mutex::new(VecDeque::new()),
            bytes_read: AtomicU64::new(0),
        }
    }

    /// The index.
    pub fn index(&self) -> &BackupIndex {
        &self.index
    }

    /// Disk size.
    pub fn capacity(&self) -> u64 {
        self.index.capacity
    }

    /// Plaintext bytes of the chunks fetched from the store so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Reads chunk `id` of slot `i`, checked against its id and against
    /// the slot's length.
    fn read_slot(&self, i: u64, id: &repo_format::ChunkId) -> Result<Vec<u8>> {
        let data = self.repo.read_chunk(id)?;
        if Some(data.len() as u64) != self.index.chunk_extent(i).map(|e| e.1) {
            return Err(Error::format(
                format!("chunk {id}"),
                repo_format::Error::InvalidField {
                    field: "chunk length",
                    reason: "differs from its slot in the index",
                },
            ));
        }
        Ok(data)
    }

    fn chunk(&self, i: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let Some(Some(id)) = usize::try_from(i)
            .ok()
            .and_then(|i| self.index.chunks.get(i))
        else {
            return Ok(None);
        };
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, d)) = cache.iter().find(|(k, _)| *k == i) {
                return Ok(Some(Arc::clone(d)));
            }
        }
        let data = self.read_slot(i, id)?;
        self.bytes_read
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let data = Arc::new(data);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE {
            cache.pop_front();
        }
        cache.push_back((i, Arc::clone(&data)));
        Ok(Some(data))
    }

    /// Reads `buf.len()` bytes at `offset` (within the capacity).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.index.capacity)
            .ok_or_else(|| Error::InvalidArgument("read beyond the end of the disk".into()))?;
        let cs = u64::from(self.index.chunk_size);
        let mut pos = offset;
        while pos < end {
            let i = pos / cs;
            let within = (pos - i * cs) as usize;
            let n = ((i + 1) * cs).min(end) - pos;
            let out = &mut buf[(pos - offset) as usize..][..n as usize];
            match self.chunk(i)? {
                Some(d) => out.copy_from_slice(&d[within..within + n as usize]),
                None => out.fill(0),
            }
            pos += n;
        }
        Ok(())
    }

    /// Data and zero runs over `offset..offset + length`, merged.
    pub fn runs(&self, offset: u64, length: u64) -> Vec<Run> {
        let end = offset.saturating_add(length).min(self.index.capacity);
        let cs = u64::from(self.index.chunk_size);
        let mut out: Vec<Run> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = pos / cs;
            let n = ((i + 1) * cs).min(end) - pos;
            let data = matches!(self.index.chunks.get(i as usize), Some(Some(_)));
            match out.last_mut() {
                Some(r) if r.data == data => r.length += n,
                _ => out.push(Run {
                    offset: pos,
                    length: n,
                    data,
                }),
            }
            pos += n;
        }
        out
    }

    /// Restores the whole disk: `threads` threads fetch and check chunks
    /// and hand each stored chunk to `write(offset, bytes)` themselves
    /// (so `write` runs on several threads at once, in any order); zero
    /// chunks are skipped (the target starts zeroed or sparse, or see
    /// [`PointReader::runs`]). `progress` is called on the calling thread
    /// with the bytes of each chunk written.
    pub fn restore(
        &self,
        threads: usize,
        write: &(dyn Fn(u64, &[u8]) -> Result<()> + Sync),
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let present: Vec<(u64, repo_format::ChunkId)> = self
            .index
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|c| (i as u64, c)))
            .collect();
        let next = AtomicU64::new(0);
        let cs = u64::from(self.index.chunk_size);
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<u64>>(threads.max(1) * 2);
            for _ in 0..threads.max(1) {
                let tx = tx.clone();
                let present = &present;
                let next = &next;
                s.spawn(move || loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some((i, id)) = present.get(k) else {
                        return;
                    };
                    let r = self.read_slot(*i, id).and_then(|d| {
                        write(*i * cs, &d)?;
                        Ok(d.len() as u64)
                    });
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        // Stop the others quickly.
                        next.store(u64::MAX / 2, Ordering::Relaxed);
                        return;
                    }
                });
            }
            drop(tx);
            for r in rx {
                let n = r?;
                self.bytes_read.fetch_add(n, Ordering::Relaxed);
                progress(n);
            }
            Ok(())
        })
    }
}
