//! An open disk: synchronous, scattered and asynchronous I/O, information,
//! metadata, allocated blocks, and close.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use transport_hotadd::HotAddDisk;
use transport_nbd::NbdDisk;
use transport_san::SanDisk;
use vim_soap::client::Client;
use vim_soap::codec::{self, MoRef};

use crate::error::{Error, Result};
use vmdk_file::local::{AllocKind, LocalDisk};

use super::config::TransportMode;
use super::connection::changed_areas;
use super::host_ddb::HostDescriptor;

pub(super) enum Backend {
    Local(LocalDisk),
    Nbd(NbdDisk),
    /// With the number of parallel requests.
    San(SanDisk, usize),
    /// With the number of parallel requests.
    HotAdd(HotAddDisk, usize),
}

/// `VixDiskLibInfo`, in bytes and sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Capacity in sectors.
    pub capacity_sectors: u64,
    /// BIOS/physical geometry (cylinders, heads, sectors).
    pub geometry: (u32, u32, u32),
    /// VixDiskLib adapter type (1 IDE, 2 BusLogic, 3 LSI Logic, 256 unknown).
    pub adapter_type: u32,
    /// Links in the chain.
    pub num_links: u32,
    /// Parent file name hint.
    pub parent_file_name_hint: Option<String>,
    /// `ddb.uuid`.
    pub uuid: Option<String>,
}

type Job = Box<dyn FnOnce(&Backend) + Send>;

struct Outstanding {
    count: Mutex<usize>,
    zero: Condvar,
}

/// An open disk. Many threads may use it at once.
pub struct Disk {
    backend: Arc<Backend>,
    mode: TransportMode,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    outstanding: Arc<Outstanding>,
    remote: Option<(Arc<Client>, MoRef, Option<MoRef>, String)>,
    /// The disk as the VM's configuration describes it (san, hotadd).
    pub(super) meta: Option<codec::VirtualDiskInfo>,
    /// Opened for writing (metadata writes of remote disks check it).
    pub(super) writable: bool,
    /// DDB keys set on a remote disk, set again after the transport
    /// closes (a host may write the descriptor when the disk closes).
    ddb_set: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("mode", &self.mode)
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// Completion callback of an asynchronous request (called exactly once).
pub type Completion = Box<dyn FnOnce(Result<Vec<u8>>) + Send>;

impl Disk {
    pub(super) fn new(
        b: Backend,
        mode: TransportMode,
        remote: Option<(Arc<Client>, MoRef, Option<MoRef>, String)>,
    ) -> Self {
        Self {
            backend: Arc::new(b),
            mode,
            jobs: Mutex::new(None),
            outstanding: Arc::new(Outstanding {
                count: Mutex::new(0),
                zero: Condvar::new(),
            }),
            remote,
            meta: None,
            writable: false,
            ddb_set: Mutex::new(Vec::new()),
        }
    }

    /// The transport chosen at open.
    pub fn transport_mode(&self) -> &'static str {
        self.mode.as_str()
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        match &*self.backend {
            Backend::Local(d) => d.capacity(),
            Backend::Nbd(d) => d.capacity(),
            Backend::San(d, _) => d.capacity(),
            Backend::HotAdd(d, _) => d.capacity(),
        }
    }

    /// Reads at a byte offset.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        read(&self.backend, offset, buf)
    }

    /// Reads several ranges `(disk offset, buffer offset, length)` into one
    /// buffer; remote transports keep requests in flight across ranges.
    pub fn read_scattered(&self, buf: &mut [u8], parts: &[(u64, usize, usize)]) -> Result<()> {
        match &*self.backend {
            Backend::Nbd(d) => Ok(d.read_scattered(buf, parts)?),
            Backend::San(d, n) => Ok(d.read_many(disjoint(buf, parts)?, *n)?),
            Backend::HotAdd(d, n) => Ok(d.read_many(disjoint(buf, parts)?, *n)?),
            Backend::Local(d) => {
                for &(off, at, len) in parts {
                    let dest = at
                        .checked_add(len)
                        .and_then(|end| buf.get_mut(at..end))
                        .ok_or_else(|| {
                            Error::InvalidArgument("a range does not fit the buffer".into())
                        })?;
                    d.read_at(off, dest)?;
                }
                Ok(())
            }
        }
    }

    /// Writes at a byte offset.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        write(&self.backend, offset, data)
    }

    /// Reads whole sectors.
    pub fn read_sectors(&self, start: u64, buf: &mut [u8]) -> Result<()> {
        if !buf.len().is_multiple_of(512) {
            return Err(Error::InvalidArgument(
                "buffer is not a whole number of sectors".into(),
            ));
        }
        self.read_at(
            start
                .checked_mul(512)
                .ok_or_else(|| Error::InvalidArgument("sector out of range".into()))?,
            buf,
        )
    }

    /// Writes whole sectors.
    pub fn write_sectors(&self, start: u64, data: &[u8]) -> Result<()> {
        if !data.len().is_multiple_of(512) {
            return Err(Error::InvalidArgument(
                "buffer is not a whole number of sectors".into(),
            ));
        }
        self.write_at(
            start
                .checked_mul(512)
                .ok_or_else(|| Error::InvalidArgument("sector out of range".into()))?,
            data,
        )
    }

    fn submit(&self, job: Job) {
        *self
            .outstanding
            .count
            .lock()
            .unwrap_or_else(|p| p.into_inner()) += 1;
        let mut g = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let tx = g.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let backend = Arc::clone(&self.backend);
            std::thread::spawn(move || {
                for job in rx {
                    job(&backend);
                }
            });
            tx
        });
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            job(&self.backend);
        }
    }

    fn finish(out: &Arc<Outstanding>) {
        let mut c = out.count.lock().unwrap_or_else(|p| p.into_inner());
        *c -= 1;
        if *c == 0 {
            out.zero.notify_all();
        }
    }

    /// Reads asynchronously into a buffer of `len` bytes; `done` gets it.
    pub fn read_async(&self, offset: u64, len: usize, done: Completion) {
        let out = Arc::clone(&self.outstanding);
        self.submit(Box::new(move |b| {
            let mut buf = vec![0u8; len];
            let r = read(b, offset, &mut buf).map(|()| buf);
            done(r);
            Self::finish(&out);
        }));
    }

    /// Writes asynchronously; `done` gets the data back.
    pub fn write_async(&self, offset: u64, data: Vec<u8>, done: Completion) {
        let out = Arc::clone(&self.outstanding);
        self.submit(Box::new(move |b| {
            let r = write(b, offset, &data).map(|()| data);
            done(r);
            Self::finish(&out);
        }));
    }

    /// Waits for every outstanding asynchronous request.
    pub fn wait(&self) {
        let mut c = self
            .outstanding
            .count
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while *c > 0 {
            c = self
                .outstanding
                .zero
                .wait(c)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Makes written data durable.
    pub fn flush(&self) -> Result<()> {
        self.wait();
        match &*self.backend {
            Backend::Local(d) if d.is_writable() => Ok(d.flush()?),
            Backend::Local(_) => Ok(()),
            Backend::Nbd(d) => Ok(d.flush()?),
            Backend::San(d, _) => Ok(d.flush()?),
            Backend::HotAdd(d, _) => Ok(d.flush()?),
        }
    }

    /// `GetInfo`.
    pub fn info(&self) -> Result<Info> {
        let adapter = |a: Option<&str>| match a {
            Some("ide") => 1,
            Some("buslogic") => 2,
            Some("lsilogic") => 3,
            _ => 256,
        };
        match &*self.backend {
            Backend::Local(d) => {
                let desc = d.descriptor();
                let g = desc
                    .bios_geometry()
                    .or(desc.geometry())
                    .map(|g| (g.cylinders, g.heads, g.sectors))
                    .unwrap_or_default();
                Ok(Info {
                    capacity_sectors: d.capacity() / 512,
                    geometry: g,
                    adapter_type: adapter(desc.adapter_type()),
                    num_links: d.links().len() as u32,
                    parent_file_name_hint: desc.parent_file_name_hint.clone(),
                    uuid: desc.ddb_get("ddb.uuid").map(str::to_string),
                })
            }
            Backend::San(..) | Backend::HotAdd(..) => {
                let m = self.meta.as_ref().ok_or_else(|| {
                    Error::InvalidArgument("the disk's configuration is not known".into())
                })?;
                // The disk's own geometry and adapter, from its descriptor,
                // as every other transport reports them.
                let desc = self.host_descriptor()?.descriptor;
                let g = desc
                    .bios_geometry()
                    .or(desc.geometry())
                    .map(|g| (g.cylinders, g.heads, g.sectors))
                    .unwrap_or_default();
                Ok(Info {
                    capacity_sectors: m.capacity / 512,
                    geometry: g,
                    adapter_type: adapter(desc.adapter_type()),
                    num_links: 1,
                    parent_file_name_hint: None,
                    uuid: m
                        .uuid
                        .clone()
                        .or_else(|| desc.ddb_get("ddb.uuid").map(str::to_string)),
                })
            }
            Backend::Nbd(d) => {
                // As VDDK: capacity and geometry from the OPEN_FILE reply,
                // the adapter, UUID and BIOS geometry from DDB_GET.
                let i = d.info()?;
                Ok(Info {
                    capacity_sectors: i.capacity / 512,
                    geometry: i.bios_geometry.unwrap_or(i.geometry),
                    adapter_type: adapter(i.adapter_type.as_deref()),
                    num_links: 1,
                    parent_file_name_hint: None,
                    uuid: i.uuid,
                })
            }
        }
    }

    /// Every DDB key (local disks).
    pub fn metadata_keys(&self) -> Result<Vec<String>> {
        match &*self.backend {
            Backend::Local(d) => Ok(d.descriptor().ddb.iter().map(|(k, _)| k.clone()).collect()),
            Backend::Nbd(_) | Backend::San(..) | Backend::HotAdd(..) => Ok(self
                .host_descriptor()?
                .descriptor
                .ddb
                .into_iter()
                .map(|(k, _)| k)
                .collect()),
        }
    }

    /// One DDB value.
    pub fn read_metadata(&self, key: &str) -> Result<Option<String>> {
        match &*self.backend {
            Backend::Local(d) => Ok(d.descriptor().ddb_get(key).map(str::to_string)),
            Backend::Nbd(d) => Ok(d.ddb(key)?),
            Backend::San(..) | Backend::HotAdd(..) => Ok(self
                .host_descriptor()?
                .descriptor
                .ddb_get(key)
                .map(str::to_string)),
        }
    }

    /// Sets a DDB value: in the local descriptor, or in a remote disk's
    /// descriptor on its datastore (see `host_ddb`; the disk must be open
    /// for writing).
    pub fn write_metadata(&self, key: &str, value: &str) -> Result<()> {
        match &*self.backend {
            Backend::Local(d) => Ok(d.set_metadata(key, value)?),
            Backend::Nbd(_) | Backend::San(..) | Backend::HotAdd(..) => {
                let Some((client, vm, _, path)) = &self.remote else {
                    return Err(Error::InvalidArgument("no server for this disk".into()));
                };
                if !self.writable {
                    return Err(Error::File(vmdk_file::Error::ReadOnly {
                        path: path.into(),
                        reason: "opened read-only",
                    }));
                }
                let pair = (key.to_string(), value.to_string());
                HostDescriptor::set(client, vm, path, std::slice::from_ref(&pair))?;
                self.ddb_set
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(pair);
                Ok(())
            }
        }
    }

    /// The descriptor of a remote disk, from its datastore.
    fn host_descriptor(&self) -> Result<HostDescriptor> {
        let (client, vm, _, path) = self
            .remote
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no server for this disk".into()))?;
        HostDescriptor::read(client, vm, path)
    }

    /// `QueryAllocatedBlocks`: allocated ranges `(start, count)` in sectors,
    /// at `chunk` sectors of granularity, inside the sector range asked.
    pub fn query_allocated_blocks(
        &self,
        start: u64,
        count: u64,
        chunk: u64,
    ) -> Result<Vec<(u64, u64)>> {
        if chunk < 128 || count == 0 {
            return Err(Error::InvalidArgument(
                "chunk size is at least 128 sectors".into(),
            ));
        }
        let cap = self.capacity() / 512;
        if start.checked_add(count).is_none_or(|e| e > cap) {
            return Err(Error::OutOfRange {
                offset: start.saturating_mul(512),
                len: count.saturating_mul(512),
                capacity: cap * 512,
            });
        }
        // In range: start + count <= capacity / 512, so neither product
        // overflows; the chunk size is the caller's own.
        let chunk_bytes = chunk.checked_mul(512).ok_or_else(|| {
            Error::InvalidArgument(format!("chunk size of {chunk} sectors is too large"))
        })?;
        let allocated: cbt::ExtentList = match &*self.backend {
            Backend::Local(d) => d
                .map()?
                .iter()
                .filter(|e| e.kind == AllocKind::Data)
                .map(|e| cbt::Extent::new(e.start, e.length))
                .collect(),
            Backend::Nbd(_) | Backend::San(..) | Backend::HotAdd(..) => {
                let (client, vm, snap, path) = self
                    .remote
                    .as_ref()
                    .ok_or_else(|| Error::InvalidArgument("no connection".into()))?;
                changed_areas(client, vm, snap.as_ref(), path, "*")?
            }
        };
        let window = cbt::ExtentList::from_sorted([cbt::Extent::new(start * 512, count * 512)]);
        let got = allocated.align(chunk_bytes).intersection(&window);
        Ok(got
            .iter()
            .map(|e| (e.start / 512, e.len.div_ceil(512)))
            .collect())
    }

    /// Waits for outstanding requests and closes.
    pub fn close(self) -> Result<()> {
        self.wait();
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let closed = match Arc::try_unwrap(self.backend) {
            Ok(Backend::Local(d)) => d.close().map_err(Error::from),
            Ok(Backend::Nbd(d)) => d.close().map_err(Error::from),
            Ok(Backend::San(d, _)) => d.flush().map_err(Error::from),
            Ok(Backend::HotAdd(d, _)) => d.close().map_err(Error::from),
            Err(_) => Ok(()), // the worker still holds it; it is dropped with the worker
        };
        closed?;
        // Keys set while the disk was open, once more now that the host
        // has closed it (and may have rewritten its descriptor then).
        let set = self.ddb_set.into_inner().unwrap_or_else(|p| p.into_inner());
        match (&self.remote, set.is_empty()) {
            (Some((client, vm, _, path)), false) => HostDescriptor::set(client, vm, path, &set),
            _ => Ok(()),
        }
    }
}

fn read(b: &Backend, offset: u64, buf: &mut [u8]) -> Result<()> {
    match b {
        Backend::Local(d) => Ok(d.read_at(offset, buf)?),
        Backend::Nbd(d) => Ok(d.read_at(offset, buf)?),
        Backend::San(d, n) => Ok(d.read_streams(offset, buf, *n)?),
        Backend::HotAdd(d, n) => Ok(d.read_at(offset, buf, *n)?),
    }
}

fn write(b: &Backend, offset: u64, data: &[u8]) -> Result<()> {
    match b {
        Backend::Local(d) => Ok(d.write_at(offset, data)?),
        Backend::Nbd(d) => Ok(d.write_at(offset, data)?),
        Backend::San(d, n) => Ok(d.write_streams(offset, data, *n)?),
        Backend::HotAdd(d, n) => Ok(d.write_at(offset, data, *n)?),
    }
}

/// Splits `buf` into the disjoint pieces `parts` (disk offset, buffer
/// offset, length) name; overlapping or out-of-buffer parts are refused.
fn disjoint<'a>(
    buf: &'a mut [u8],
    parts: &[(u64, usize, usize)],
) -> Result<Vec<(u64, &'a mut [u8])>> {
    let mut order: Vec<&(u64, usize, usize)> = parts.iter().collect();
    order.sort_by_key(|p| p.1);
    let mut out = Vec::with_capacity(parts.len());
    let mut rest = buf;
    let mut consumed = 0usize;
    for &&(off, at, len) in &order {
        let bad = || Error::InvalidArgument("ranges overlap or do not fit the buffer".into());
        let skip = at.checked_sub(consumed).ok_or_else(bad)?;
        if skip.checked_add(len).is_none_or(|e| e > rest.len()) {
            return Err(bad());
        }
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
        let (piece, tail) = tail.split_at_mut(len);
        out.push((off, piece));
        rest = tail;
        consumed = at + len;
    }
    Ok(out)
}
