//! `vdisk serve`: any disk the kit opens as an NBD export (`nbd-server`),
//! for `nbdinfo`, `nbdcopy`, `qemu-img`, `qemu-io`, a kernel NBD client
//! or libguestfs.
//!
//! Each kind of disk is a [`BlockExport`]: a local chain (its grain map
//! gives `base:allocation`), a remote disk (allocated blocks from the
//! host), a backup point (holes where no backup stores anything) and a
//! delta over one (instant recovery). A partition can be served alone.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use cbt::{Extent as Range, ExtentList};
use disklib::backup::{BackupPoint, PointDelta, PointExtent};
use nbd_server::{BlockExport, BlockSizes, Extent, Listen, Server, ServerConfig};
use vmdk_file::local::{AllocKind, LocalDisk};

use crate::source::{Opened, SourceArgs};
use crate::AnyError;

/// Largest range one block-status reply describes (keeps each map walk
/// short; clients ask again for the rest).
const STATUS_WINDOW: u64 = 1 << 30;

/// `vdisk serve` options.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// The disk (a local VMDK, or a datastore path with --transport);
    /// omitted with --from.
    pub(crate) disk: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    /// Listen on this Unix socket (the default is a socket in the
    /// temporary directory).
    #[arg(long, conflicts_with = "listen")]
    pub(crate) socket: Option<PathBuf>,
    /// Listen on this TCP address (`127.0.0.1:10809`; loopback unless
    /// --allow-remote).
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Accept TCP clients from other hosts (the address must then be a
    /// non-loopback one).
    #[arg(long, requires = "listen")]
    pub(crate) allow_remote: bool,
    /// The export name (default: the empty name, the default export). A
    /// backup point of several disks served without --disk gives one
    /// export per disk, named this followed by the disk key, and one
    /// `NBD_URI=` line each.
    #[arg(long, default_value = "")]
    pub(crate) export_name: String,
    /// Allow writes. A local disk is written in place; a backup point is
    /// never written: writes go to a delta (--delta, or a temporary one).
    #[arg(long)]
    pub(crate) writable: bool,
    /// With --from --writable: keep the delta in this file (created, or
    /// reopened to continue).
    #[arg(long, requires = "writable")]
    pub(crate) delta: Option<PathBuf>,
    /// Serve only this partition (numbers as `vdisk volumes` shows them).
    #[arg(long)]
    pub(crate) partition: Option<u32>,
    /// TLS certificate chain (PEM); with --tls-key, TLS is offered.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// `on` (offered, the default with a certificate) or `require`
    /// (nothing but STARTTLS before TLS).
    #[arg(long, value_parser = ["on", "require"], requires = "tls_cert")]
    pub(crate) tls: Option<String>,
}

fn io_err(e: impl Into<AnyError>) -> io::Error {
    let e: AnyError = e.into();
    if let Some(d) = e.downcast_ref::<disklib::Error>() {
        if matches!(d, disklib::Error::OutOfRange { .. }) {
            return io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        }
    }
    io::Error::other(e.to_string())
}

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "the export is read-only")
}

/// A local VMDK (chain), read-only or written in place.
pub(crate) struct LocalExport {
    disk: Arc<LocalDisk>,
    writable: bool,
}

impl BlockExport for LocalExport {
    fn size(&self) -> u64 {
        self.disk.capacity()
    }
    fn writable(&self) -> bool {
        self.writable
    }
    // Every connection shares the one open disk.
    fn multi_conn(&self) -> bool {
        true
    }
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 1,
            preferred: 64 << 10,
            maximum: 32 << 20,
        }
    }
    fn description(&self) -> Option<String> {
        Some(format!(
            "VMDK {}",
            self.disk
                .links()
                .first()
                .map(|l| l.path().display().to_string())
                .unwrap_or_default()
        ))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.disk.read_at(offset, buf).map_err(io_err)
    }
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        self.disk.write_at(offset, buf).map_err(io_err)?;
        if fua {
            self.disk.flush().map_err(io_err)?;
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, length: u64, _may_trim: bool, fua: bool) -> io::Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        // Whole grains become zeroed-grain entries, partial ones are
        // written with zeros: no hole is left that a parent could show
        // through, so NO_HOLE needs nothing else.
        self.disk.write_zeroes(offset, length).map_err(io_err)?;
        if fua {
            self.disk.flush().map_err(io_err)?;
        }
        Ok(())
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> io::Result<()> {
        // Zeroed grains are the format's discard: the data is gone and
        // reads are defined (zero).
        self.write_zeroes(offset, length, true, fua)
    }
    fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.disk.flush().map_err(io_err)?;
        }
        Ok(())
    }
    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let map = self
            .disk
            .allocation_range(offset, length.min(STATUS_WINDOW))
            .map_err(io_err)?;
        Ok(map
            .iter()
            .map(|e| Extent {
                length: e.length,
                hole: e.kind == AllocKind::Unallocated,
                zero: e.kind != AllocKind::Data,
            })
            .collect())
    }
}

/// A disk on a vSphere host, through any transport.
pub(crate) struct RemoteExport {
    disk: Arc<disklib::api::Disk>,
    writable: bool,
    /// Read as of a snapshot: the host's allocation map cannot change
    /// under us. Without one, the VM may allocate at any time, so every
    /// byte is reported as data.
    frozen: bool,
    /// Allocated ranges: asked of the host on the first block-status
    /// request, plus everything written since (`None` until asked).
    allocated: Mutex<Option<ExtentList>>,
}

impl RemoteExport {
    fn allocated(&self) -> io::Result<ExtentList> {
        let mut a = self.allocated.lock().unwrap_or_else(|p| p.into_inner());
        if a.is_none() {
            let sectors = self.disk.capacity() / 512;
            let list = if !self.frozen {
                ExtentList::from_sorted([Range::new(0, self.disk.capacity())])
            } else if sectors == 0 {
                ExtentList::default()
            } else {
                match self.disk.query_allocated_blocks(0, sectors, 128) {
                    Ok(v) => v
                        .into_iter()
                        .map(|(s, n)| Range::new(s * 512, n * 512))
                        .collect(),
                    // No allocation data (CBT off on the VM): all data.
                    Err(_) => ExtentList::from_sorted([Range::new(0, self.disk.capacity())]),
                }
            };
            *a = Some(list);
        }
        Ok(a.clone().unwrap_or_default())
    }

    fn mark_written(&self, offset: u64, length: u64) {
        if let Some(a) = self
            .allocated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            a.insert(Range::new(offset, length));
        }
    }
}

impl BlockExport for RemoteExport {
    fn size(&self) -> u64 {
        self.disk.capacity()
    }
    fn writable(&self) -> bool {
        self.writable
    }
    fn multi_conn(&self) -> bool {
        true
    }
    fn block_sizes(&self) -> BlockSizes {
        // The transports move whole sectors.
        BlockSizes {
            minimum: 512,
            preferred: 1 << 20,
            maximum: 32 << 20,
        }
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.disk.read_at(offset, buf).map_err(io_err)
    }
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        self.disk.write_at(offset, buf).map_err(io_err)?;
        self.mark_written(offset, buf.len() as u64);
        if fua {
            self.disk.flush().map_err(io_err)?;
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, length: u64, _may_trim: bool, fua: bool) -> io::Result<()> {
        let zeros = vec![0u8; length.min(1 << 20) as usize];
        let mut done = 0;
        while done < length {
            let n = (length - done).min(zeros.len() as u64) as usize;
            self.write_at(offset + done, &zeros[..n], false)?;
            done += n as u64;
        }
        if fua {
            self.disk.flush().map_err(io_err)?;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.disk.flush().map_err(io_err)?;
        }
        Ok(())
    }
    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let allocated = self.allocated()?;
        let len = length.min(STATUS_WINDOW);
        Ok(status_of(
            offset,
            len,
            allocated
                .intersection(&ExtentList::from_sorted([Range::new(offset, len)]))
                .iter()
                .map(|e| (e.start, e.len)),
        ))
    }
}

/// Block status from the allocated ranges inside `[offset, offset + len)`
/// (sorted): allocated is data, the rest hole + zero.
fn status_of(offset: u64, len: u64, allocated: impl Iterator<Item = (u64, u64)>) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut at = offset;
    for (s, n) in allocated {
        if s > at {
            out.push(Extent {
                length: s - at,
                hole: true,
                zero: true,
            });
        }
        out.push(Extent {
            length: n,
            hole: false,
            zero: false,
        });
        at = s + n;
    }
    if at < offset + len {
        out.push(Extent {
            length: offset + len - at,
            hole: true,
            zero: true,
        });
    }
    out
}

fn point_status(extents: Vec<PointExtent>) -> Vec<Extent> {
    extents
        .into_iter()
        .map(|e| Extent {
            length: e.length,
            hole: !e.stored,
            zero: !e.stored,
        })
        .collect()
}

/// A backup point, read-only.
pub(crate) struct PointExport(Arc<BackupPoint>);

impl BlockExport for PointExport {
    fn size(&self) -> u64 {
        self.0.capacity()
    }
    fn writable(&self) -> bool {
        false
    }
    fn multi_conn(&self) -> bool {
        true
    }
    fn description(&self) -> Option<String> {
        Some(format!("backup {} disk {}", self.0.label(), self.0.key()))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf).map_err(io_err)
    }
    fn write_at(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool, _: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn trim(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Err(read_only())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        Ok(point_status(
            self.0.extents(offset, length.min(STATUS_WINDOW)),
        ))
    }
}

/// A backup point through a writable delta (instant recovery).
pub(crate) struct DeltaExport(Arc<PointDelta>);

impl BlockExport for DeltaExport {
    fn size(&self) -> u64 {
        self.0.capacity()
    }
    fn writable(&self) -> bool {
        true
    }
    fn multi_conn(&self) -> bool {
        true
    }
    fn description(&self) -> Option<String> {
        Some(format!(
            "backup {} disk {}, writes in {}",
            self.0.point().label(),
            self.0.point().key(),
            self.0.delta_path().display()
        ))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf).map_err(io_err)
    }
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        self.0.write_at(offset, buf).map_err(io_err)?;
        if fua {
            self.0.flush().map_err(io_err)?;
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, length: u64, _may_trim: bool, fua: bool) -> io::Result<()> {
        self.0.write_zeroes(offset, length).map_err(io_err)?;
        if fua {
            self.0.flush().map_err(io_err)?;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush().map_err(io_err)
    }
    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        Ok(point_status(
            self.0.extents(offset, length.min(STATUS_WINDOW)),
        ))
    }
}

/// One partition of another export.
pub(crate) struct PartitionExport {
    inner: Arc<dyn BlockExport>,
    start: u64,
    size: u64,
}

impl PartitionExport {
    fn check(&self, offset: u64, length: u64) -> io::Result<u64> {
        offset
            .checked_add(length)
            .filter(|&e| e <= self.size)
            .map(|_| self.start + offset)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "outside the partition"))
    }
}

impl BlockExport for PartitionExport {
    fn size(&self) -> u64 {
        self.size
    }
    fn writable(&self) -> bool {
        self.inner.writable()
    }
    fn multi_conn(&self) -> bool {
        self.inner.multi_conn()
    }
    fn block_sizes(&self) -> BlockSizes {
        self.inner.block_sizes()
    }
    fn description(&self) -> Option<String> {
        self.inner
            .description()
            .map(|d| format!("{d}, bytes {}+{}", self.start, self.size))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = self.check(offset, buf.len() as u64)?;
        self.inner.read_at(at, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        let at = self.check(offset, buf.len() as u64)?;
        self.inner.write_at(at, buf, fua)
    }
    fn write_zeroes(&self, offset: u64, length: u64, may_trim: bool, fua: bool) -> io::Result<()> {
        let at = self.check(offset, length)?;
        self.inner.write_zeroes(at, length, may_trim, fua)
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> io::Result<()> {
        let at = self.check(offset, length)?;
        self.inner.trim(at, length, fua)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn block_status(&self, offset: u64, length: u64) -> io::Result<Vec<Extent>> {
        let at = self.check(offset, length)?;
        let mut v = self.inner.block_status(at, length)?;
        // The inner map may run on past the partition's end.
        let mut left = length;
        v.retain_mut(|e| {
            if left == 0 {
                return false;
            }
            e.length = e.length.min(left);
            left -= e.length;
            true
        });
        Ok(v)
    }
}

/// The export for an opened disk (`frozen`: a remote disk read as of a
/// snapshot).
pub(crate) fn export_of(opened: &Opened, writable: bool, frozen: bool) -> Arc<dyn BlockExport> {
    match opened {
        Opened::Local(d) => Arc::new(LocalExport {
            disk: Arc::clone(d),
            writable,
        }),
        Opened::Remote(d) => Arc::new(RemoteExport {
            disk: Arc::clone(d),
            writable,
            frozen,
            allocated: Mutex::new(None),
        }),
        Opened::Point(p) => Arc::new(PointExport(Arc::clone(p))),
        Opened::Delta(d, _) => Arc::new(DeltaExport(Arc::clone(d))),
    }
}

/// `vdisk serve`.
pub(crate) fn serve(a: ServeArgs) -> Result<ExitCode, AnyError> {
    // Every disk of a backup point, one export each (named by disk key),
    // when no disk is named and the point holds several.
    let mut opened_all: Vec<(String, Opened)> = Vec::new();
    if let (Some(repo), Some(id), None) = (&a.source.from, &a.source.backup, a.source.disk_key) {
        let keys = crate::repo::point_keys(repo, id, &a.source.secrets)?;
        if keys.len() > 1 {
            if a.writable || a.partition.is_some() {
                return Err("--writable and --partition need one disk (--disk KEY)".into());
            }
            for key in keys {
                let p = crate::repo::open_point(repo, id, Some(key), &a.source.secrets)?;
                opened_all.push((
                    format!("{}{key}", a.export_name),
                    Opened::Point(Arc::new(p)),
                ));
            }
        }
    }
    if opened_all.is_empty() {
        let opened = a
            .source
            .open(a.disk.as_deref(), a.writable, a.delta.as_deref())?;
        opened_all.push((a.export_name.clone(), opened));
    }
    let mut config = ServerConfig::new();
    for (name, opened) in &opened_all {
        let mut export = export_of(opened, a.writable, a.source.snapshot.is_some());
        if let Some(n) = a.partition {
            let (v, _) = disklib::guest::open_volume(opened.reader(), Some(n))?;
            export = Arc::new(PartitionExport {
                inner: export,
                start: v.start,
                size: v.size,
            });
        }
        config = config.with_export(name, export);
    }
    if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
        let c = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
        let k = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
        let tls = nbd_server::tls_config_from_pem(&c, &k)?;
        config = config.with_tls(tls, a.tls.as_deref() == Some("require"));
    }
    config = config.allow_non_loopback(a.allow_remote);
    let listen = match (&a.socket, a.listen) {
        (Some(p), _) => Listen::Unix(p.clone()),
        (None, Some(addr)) => Listen::Tcp(addr),
        (None, None) => Listen::Unix(
            std::env::temp_dir().join(format!("vdisk-serve-{}.sock", std::process::id())),
        ),
    };
    let server = Server::bind(listen, config)?;
    let stop = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let signal_handle = signals.handle();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            stop.shutdown();
        }
    });
    {
        use std::io::Write;
        let mut out = io::stdout().lock();
        for (name, _) in &opened_all {
            writeln!(out, "NBD_URI={}", server.uri(name))?;
        }
        out.flush()?;
    }
    let served = server.serve();
    signal_handle.close();
    let mut closed = Ok(());
    for (_, opened) in opened_all {
        if let Err(e) = opened.close() {
            closed = Err(e);
        }
    }
    served?;
    closed?;
    Ok(ExitCode::SUCCESS)
}
