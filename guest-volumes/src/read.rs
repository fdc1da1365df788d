//! The read trait the crate works through, windows onto it, and a small
//! block cache.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use crate::Error;

/// What the crate reads through: a disk, or a window of one.
///
/// Implementations must read exactly `buf.len()` bytes or fail; a read
/// past [`size`](ReadAt::size) must fail.
pub trait ReadAt: Send + Sync {
    /// The size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`. Exact: error if fewer bytes are available.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| Some((start, start.checked_add(buf.len())?)))
            .and_then(|(start, end)| self.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

/// The byte range `[start, start + len)` of another reader, itself a
/// reader. Reads outside the window fail without touching the inner
/// reader.
#[derive(Debug, Clone)]
pub struct Window<R> {
    inner: R,
    start: u64,
    len: u64,
}

impl<R: ReadAt> Window<R> {
    /// A window onto `inner`; fails if the range does not fit inside it.
    pub fn new(inner: R, start: u64, len: u64) -> Result<Self, Error> {
        let size = inner.size();
        match start.checked_add(len) {
            Some(end) if end <= size => Ok(Window { inner, start, len }),
            _ => Err(Error::OutOfBounds {
                offset: start,
                len,
                size,
            }),
        }
    }

    /// Where the window starts on the inner reader.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The inner reader.
    pub fn inner(&self) -> &R {
        &self.inner
    }
}

impl<R: ReadAt> ReadAt for Window<R> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= self.len => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the window",
                ))
            }
        }
        // start + offset <= start + len, which Window::new checked.
        self.inner.read_at(self.start + offset, buf)
    }
}

/// Reads `len` bytes at `offset` into a new vector, refusing more than
/// `cap` bytes and ranges outside the reader.
pub(crate) fn read_vec(
    r: &dyn ReadAt,
    offset: u64,
    len: u64,
    cap: u64,
    context: &'static str,
) -> Result<Vec<u8>, Error> {
    if len > cap {
        return Err(Error::TooLarge {
            what: context,
            size: len,
            max: cap,
        });
    }
    let size = r.size();
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::OutOfBounds { offset, len, size });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_at(offset, &mut buf).map_err(|source| Error::Io {
        context,
        offset,
        source,
    })?;
    Ok(buf)
}

/// Reads into `buf` at `offset`, mapping failures to [`Error`].
pub(crate) fn read_exact(
    r: &dyn ReadAt,
    offset: u64,
    buf: &mut [u8],
    context: &'static str,
) -> Result<(), Error> {
    let size = r.size();
    let len = buf.len() as u64;
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::OutOfBounds { offset, len, size });
    }
    r.read_at(offset, buf).map_err(|source| Error::Io {
        context,
        offset,
        source,
    })
}

/// Block size of [`CachedReader`].
pub(crate) const CACHE_BLOCK: u64 = 32 * 1024;
/// Blocks kept by [`CachedReader`] (4 MiB in all).
const CACHE_BLOCKS: usize = 128;
/// Reads at least this long bypass the cache.
const BYPASS: usize = 128 * 1024;

/// A reader with a small LRU cache of aligned blocks, so the many small
/// metadata reads of a filesystem walk do not each reach the disk.
pub(crate) struct CachedReader {
    inner: Arc<dyn ReadAt>,
    size: u64,
    cache: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    tick: u64,
    blocks: HashMap<u64, (u64, Arc<Vec<u8>>)>,
    /// Evicted blocks kept for reuse.
    spare: Vec<Vec<u8>>,
}

impl CachedReader {
    /// Wraps `inner`.
    pub(crate) fn new(inner: Arc<dyn ReadAt>) -> Self {
        let size = inner.size();
        CachedReader {
            inner,
            size,
            cache: Mutex::new(Lru::default()),
        }
    }

    fn block(&self, index: u64) -> io::Result<Arc<Vec<u8>>> {
        {
            let mut lru = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            lru.tick = lru.tick.wrapping_add(1);
            let tick = lru.tick;
            if let Some(entry) = lru.blocks.get_mut(&index) {
                entry.0 = tick;
                return Ok(entry.1.clone());
            }
        }
        let start = index * CACHE_BLOCK;
        let len = CACHE_BLOCK.min(self.size - start) as usize;
        // An evicted block nobody holds any more is refilled in place
        // rather than allocated and zeroed again.
        let recycled = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spare
            .pop();
        let mut data = match recycled {
            Some(mut v) if v.len() == len => {
                v.shrink_to(len);
                v
            }
            _ => vec![0u8; len],
        };
        self.inner.read_at(start, &mut data)?;
        let data = Arc::new(data);
        let mut lru = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if lru.blocks.len() >= CACHE_BLOCKS {
            if let Some(oldest) = lru.blocks.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k) {
                if let Some((_, old)) = lru.blocks.remove(&oldest) {
                    if let Ok(v) = Arc::try_unwrap(old) {
                        if lru.spare.len() < 4 {
                            lru.spare.push(v);
                        }
                    }
                }
            }
        }
        let tick = lru.tick;
        lru.blocks.insert(index, (tick, data.clone()));
        Ok(data)
    }
}

impl ReadAt for CachedReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        if buf.len() >= BYPASS {
            return self.inner.read_at(offset, buf);
        }
        let mut pos = offset;
        let mut done = 0usize;
        while pos < end {
            let index = pos / CACHE_BLOCK;
            let block = self.block(index)?;
            let within = (pos - index * CACHE_BLOCK) as usize;
            let n = (block.len() - within).min(buf.len() - done);
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short block"));
            }
            buf[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
            pos += n as u64;
        }
        Ok(())
    }
}

/// The error a [`ReadSeekAdapter`] returns once an operation has used up
/// its read budget: a library is walking metadata in circles.
#[derive(Debug)]
pub(crate) struct BudgetExceeded;

impl std::fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("read budget of one operation exceeded (looping metadata?)")
    }
}

impl std::error::Error for BudgetExceeded {}

/// True when `e` is a [`BudgetExceeded`].
pub(crate) fn is_budget_exceeded(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<BudgetExceeded>())
}

/// A bounded `Read + Seek` cursor over a [`ReadAt`], for libraries that
/// want one. Reads stop at the reader's end; nothing is ever written.
/// Each operation gets a budget of `read` calls, so a library that loops
/// over cyclic on-disk references fails instead of hanging.
pub(crate) struct ReadSeekAdapter {
    inner: Arc<dyn ReadAt>,
    pos: u64,
    reads: u64,
    budget: u64,
}

impl ReadSeekAdapter {
    pub(crate) fn new(inner: Arc<dyn ReadAt>, budget: u64) -> Self {
        ReadSeekAdapter {
            inner,
            pos: 0,
            reads: 0,
            budget,
        }
    }

    /// Starts a new operation with a fresh budget.
    pub(crate) fn reset_budget(&mut self) {
        self.reads = 0;
    }
}

impl io::Read for ReadSeekAdapter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.reads > self.budget {
            return Err(io::Error::other(BudgetExceeded));
        }
        let size = self.inner.size();
        if self.pos >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = (size - self.pos).min(buf.len() as u64) as usize;
        self.inner.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for ReadSeekAdapter {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let new = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.inner.size().checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let new = new.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing offset",
            )
        })?;
        self.pos = new;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds() {
        let data: Vec<u8> = (0..=255).collect();
        let w = Window::new(&data, 10, 20).unwrap();
        let mut b = [0u8; 5];
        w.read_at(15, &mut b).unwrap();
        assert_eq!(b, [25, 26, 27, 28, 29]);
        assert!(w.read_at(16, &mut b).is_err());
        assert!(w.read_at(u64::MAX, &mut b).is_err());
        assert!(Window::new(&data, 250, 7).is_err());
        assert!(Window::new(&data, u64::MAX, 2).is_err());
    }

    #[test]
    fn cache_matches_direct_reads() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let arc: Arc<dyn ReadAt> = Arc::new(data.clone());
        let c = CachedReader::new(arc);
        for &(off, len) in &[
            (0usize, 10usize),
            (32760, 20),
            (199_990, 10),
            (5, 140_000),
            (65536, 65536),
        ] {
            let mut b = vec![0u8; len];
            c.read_at(off as u64, &mut b).unwrap();
            assert_eq!(&b[..], &data[off..off + len]);
        }
        let mut b = [0u8; 11];
        assert!(c.read_at(199_990, &mut b).is_err());
    }
}
