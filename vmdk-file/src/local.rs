//! Local VMDK files: open a disk and its snapshot chain, read it, map it.
//!
//! One file on purpose: opening a chain and reading through it are one
//! mechanism (the links, their tables and the caches they share).
//!
//! ```no_run
//! use vmdk_file::local::{LocalDisk, OpenOptions};
//! let disk = LocalDisk::open("vm/disk.vmdk", &OpenOptions::default())?;
//! let mut first_sector = [0u8; 512];
//! disk.read_at(0, &mut first_sector)?;
//! # Ok::<(), vmdk_file::Error>(())
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmdk_format::cowd::{CowdHeader, COWD_MAGIC};
use vmdk_format::descriptor::{
    self, Access, CreateType, Descriptor, ExtentLine, ExtentType, CID_NO_PARENT, MAX_DESCRIPTOR_LEN,
};
use vmdk_format::extent::{GrainTable, SparseExtent};
use vmdk_format::hosted::{SparseExtentHeader, SPARSE_MAGIC};
use vmdk_format::layout::{Backing, Layout, MapStep, SegmentKind, TableKey, TableRequest};
use vmdk_format::sesparse::{SeSparseHeader, CONST_MAGIC as SESPARSE_MAGIC};
use vmdk_format::stream::{self, GrainParse};

use crate::cache::Cache;
use crate::io::{std_storage, SharedStorage};
pub use crate::map::{AllocKind, MapEntry};
pub(crate) use crate::paths::open_file;
use crate::paths::{open_beneath, resolve};
use crate::{Error, Result};

/// Default limit on the number of links in a snapshot chain.
pub const DEFAULT_MAX_CHAIN_DEPTH: usize = 255;

/// How to open a local disk.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Follow extent and parent paths that are absolute or leave the
    /// directory of the descriptor naming them (`..`, symlinks out).
    /// Off by default: a hostile descriptor must not make us read
    /// `/etc/shadow`.
    pub allow_outside_paths: bool,
    /// Open a chain whose `parentCID` does not match the parent's `CID`.
    pub ignore_cid_mismatch: bool,
    /// Longest snapshot chain accepted.
    pub max_chain_depth: usize,
    /// Memory for cached grain tables, bytes.
    pub table_cache_bytes: usize,
    /// Memory for cached inflated grains, bytes.
    pub grain_cache_bytes: usize,
    /// Threads used to inflate compressed grains of one large read.
    pub inflate_threads: usize,
    /// Open the disk (its top link; parents stay read-only) for writing.
    pub writable: bool,
    /// Where the writes go (reads use the opened files directly). The
    /// operating system's file system by default.
    pub storage: SharedStorage,
    /// Open only the named file, not its parents
    /// (`VIXDISKLIB_FLAG_OPEN_SINGLE_LINK`): a snapshot's delta alone, to
    /// read just its own grains. Unallocated grains read as zeros, `map`
    /// reports only this link's grains, and the parent's CID is not
    /// checked (the parent is neither opened nor required to exist). A
    /// delta opened so cannot be written: a partial grain would need its
    /// parent's bytes.
    pub single_link: bool,
    /// Make each new grain's data durable before its table entry, as for
    /// a delta, even when the disk has no parent: for a disk that stands
    /// over data kept elsewhere (a writable overlay of a backup point),
    /// where a table entry naming unwritten data would show zeros in
    /// place of that data after a power cut.
    pub ordered_allocation: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            allow_outside_paths: false,
            ignore_cid_mismatch: false,
            max_chain_depth: DEFAULT_MAX_CHAIN_DEPTH,
            table_cache_bytes: 32 << 20,
            grain_cache_bytes: 32 << 20,
            inflate_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(8),
            writable: false,
            storage: std_storage(),
            single_link: false,
            ordered_allocation: false,
        }
    }
}

/// One opened extent file.
#[derive(Debug)]
pub struct ExtentFile {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) len: u64,
}

impl ExtentFile {
    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Length at open time.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Truncated {
                path: self.path.clone(),
                offset,
                needed: buf.len() as u64,
                file_len: self.len,
            }),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }
    fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > self.len) {
            return Err(Error::Truncated {
                path: self.path.clone(),
                offset,
                needed: len,
                file_len: self.len,
            });
        }
        let mut v = vec![0u8; len as usize];
        self.read_exact_at(&mut v, offset)?;
        Ok(v)
    }
}

/// One file of a chain: a descriptor (separate or embedded), its extent
/// files and its read mapping.
#[derive(Debug)]
pub struct Link {
    pub(crate) path: PathBuf,
    pub(crate) descriptor: Descriptor,
    pub(crate) embedded: bool,
    pub(crate) files: Vec<Option<Arc<ExtentFile>>>,
    pub(crate) layout: Layout,
    pub(crate) identity: (u64, u64),
}

impl Link {
    /// The file the user (or the child's hint) named.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The parsed descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }
    /// True when the descriptor is embedded in the data file.
    pub fn is_embedded(&self) -> bool {
        self.embedded
    }
    /// Extent files, one per extent line (`None` for ZERO extents).
    pub fn extent_files(&self) -> &[Option<Arc<ExtentFile>>] {
        &self.files
    }
    /// The read mapping.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.layout.capacity()
    }
    pub(crate) fn file(&self, extent: usize) -> Result<&ExtentFile> {
        self.files
            .get(extent)
            .and_then(|f| f.as_deref())
            .ok_or_else(|| Error::format(&self.path, vmdk_format::Error::TableMismatch))
    }
}

/// An opened local disk with its whole chain. `Send + Sync`: many
/// threads may read one handle at once.
pub struct LocalDisk {
    pub(crate) links: Vec<Link>,
    pub(crate) tables: Cache<(usize, TableKey), GrainTable>,
    pub(crate) grains: Cache<(usize, usize, u64), Vec<u8>>,
    pub(crate) inflate_threads: usize,
    pub(crate) writer: Option<std::sync::Mutex<crate::write::WriteState>>,
    pub(crate) storage: SharedStorage,
    /// [`OpenOptions::ordered_allocation`].
    pub(crate) ordered_allocation: bool,
}

impl std::fmt::Debug for LocalDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDisk")
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

struct GrainJob {
    pos: usize,
    len: usize,
    extent: usize,
    grain_offset: u64,
    grain_lba: u64,
    skip: u64,
    grain_len: u64,
}

fn read_prefix(file: &File, path: &Path, len: u64, n: usize) -> Result<Vec<u8>> {
    let n = (n as u64).min(len) as usize;
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

fn magic_u32(b: &[u8]) -> Option<u32> {
    b.get(..4)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]))
}

fn magic_u64(b: &[u8]) -> Option<u64> {
    b.get(..8)
        .map(|m| u64::from_le_bytes(m.try_into().unwrap_or([0; 8])))
}

/// Loads a grain-directory based extent from an opened file.
fn load_sparse(ext: &ExtentFile) -> Result<SparseExtent> {
    let path = &ext.path;
    let fmt = |e| Error::format(path, e);
    let head = ext.read_vec(0, 2048.min(ext.len))?;
    match (magic_u32(&head), magic_u64(&head)) {
        (Some(SPARSE_MAGIC), _) => {
            let mut header = SparseExtentHeader::parse(&head).map_err(fmt)?;
            if header.gd_at_end() {
                let (off, len) = SparseExtentHeader::footer_range(ext.len).map_err(fmt)?;
                let footer = ext.read_vec(off, len)?;
                header = header.with_footer(&footer).map_err(fmt)?;
            }
            let (off, len) = header.gd_range().map_err(fmt)?;
            let gd = read_table_area(ext, off, len)?;
            SparseExtent::hosted(header, &gd, ext.len).map_err(fmt)
        }
        (Some(COWD_MAGIC), _) => {
            let header = CowdHeader::parse(&head).map_err(fmt)?;
            let (off, len) = header.gd_range();
            let gd = read_table_area(ext, off, len)?;
            SparseExtent::cowd(header, &gd, ext.len).map_err(fmt)
        }
        (_, Some(SESPARSE_MAGIC)) => {
            let header = SeSparseHeader::parse(&head).map_err(fmt)?;
            let (off, len) = header.volatile_range();
            SeSparseHeader::check_volatile(&ext.read_vec(off, len)?).map_err(fmt)?;
            let (off, len) = header.gd_range();
            let gd = read_table_area(ext, off, len)?;
            SparseExtent::sesparse(header, &gd, ext.len).map_err(fmt)
        }
        _ => Err(Error::NotVmdk(path.clone())),
    }
}

/// Reads a directory, refusing one that extends past the end of the
/// file before allocating for it.
fn read_table_area(ext: &ExtentFile, off: u64, len: u64) -> Result<Vec<u8>> {
    if off.checked_add(len).is_none_or(|e| e > ext.len) {
        return Err(Error::format(
            &ext.path,
            vmdk_format::Error::BeyondEof {
                what: vmdk_format::Structure::GrainDirectory,
                index: 0,
                offset: off,
                file_len: ext.len,
            },
        ));
    }
    ext.read_vec(off, len)
}

fn synthesized_descriptor(
    create_type: CreateType,
    kind: ExtentType,
    sectors: u64,
    name: &str,
) -> Descriptor {
    Descriptor {
        version: 1,
        encoding: None,
        cid: 0,
        parent_cid: CID_NO_PARENT,
        create_type,
        is_native_snapshot: None,
        parent_file_name_hint: None,
        change_track_path: None,
        extra_header: Vec::new(),
        extents: vec![ExtentLine {
            access: Access::ReadWrite,
            sectors,
            kind,
            file: Some(name.to_string()),
            offset: None,
            extra: Vec::new(),
        }],
        ddb: Vec::new(),
    }
}

fn open_link(
    path: &Path,
    (file, len): (File, u64),
    opts: &OpenOptions,
    writable: bool,
) -> Result<Link> {
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let identity = (meta.dev(), meta.ino());
    let head = read_prefix(&file, path, len, 2048)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_data_file = matches!(magic_u32(&head), Some(SPARSE_MAGIC | COWD_MAGIC))
        || magic_u64(&head) == Some(SESPARSE_MAGIC);

    if is_data_file {
        let ext = Arc::new(ExtentFile {
            path: path.to_path_buf(),
            file: file.try_clone().map_err(|e| Error::io(path, e))?,
            len,
        });
        let sparse = load_sparse(&ext)?;
        let descriptor = match sparse.format() {
            vmdk_format::extent::SparseFormat::Hosted(h) => match h.descriptor_range() {
                Some((off, dlen)) => {
                    if off >= len {
                        return Err(Error::Truncated {
                            path: path.to_path_buf(),
                            offset: off,
                            needed: dlen,
                            file_len: len,
                        });
                    }
                    let bytes = ext.read_vec(off, dlen.min(len - off))?;
                    if bytes.iter().all(|&b| b == 0) {
                        // An extent of a split disk: the descriptor area is
                        // reserved but empty. Describe the extent alone.
                        synthesized_descriptor(
                            CreateType::MonolithicSparse,
                            ExtentType::Sparse,
                            h.capacity,
                            &file_name,
                        )
                    } else {
                        let d = Descriptor::parse(&bytes).map_err(|e| Error::format(path, e))?;
                        if d.extents.len() != 1 || d.extents[0].kind != ExtentType::Sparse {
                            return Err(Error::format(
                                path,
                                vmdk_format::Error::BadExtent {
                                    index: 0,
                                    reason:
                                        "an embedded descriptor must name exactly one SPARSE extent",
                                },
                            ));
                        }
                        d
                    }
                }
                None => synthesized_descriptor(
                    if h.is_compressed() {
                        CreateType::StreamOptimized
                    } else {
                        CreateType::MonolithicSparse
                    },
                    ExtentType::Sparse,
                    h.capacity,
                    &file_name,
                ),
            },
            vmdk_format::extent::SparseFormat::Cowd(h) => synthesized_descriptor(
                CreateType::VmfsSparse,
                ExtentType::VmfsSparse,
                h.capacity,
                &file_name,
            ),
            vmdk_format::extent::SparseFormat::SeSparse(h) => synthesized_descriptor(
                CreateType::SeSparse,
                ExtentType::SeSparse,
                h.capacity,
                &file_name,
            ),
        };
        // The single extent is this very file, whatever name the embedded
        // descriptor gives it: a renamed monolithic file still opens.
        let line = &descriptor.extents[0];
        let layout = Layout::new(vec![(line.access, line.sectors, Backing::Sparse(sparse))])
            .map_err(|e| Error::format(path, e))?;
        return Ok(Link {
            path: path.to_path_buf(),
            descriptor,
            embedded: true,
            files: vec![Some(ext)],
            layout,
            identity,
        });
    }
    if !descriptor::looks_like_descriptor(&head) {
        return Err(Error::NotVmdk(path.to_path_buf()));
    }
    if len > MAX_DESCRIPTOR_LEN as u64 {
        return Err(Error::format(
            path,
            vmdk_format::Error::Descriptor {
                line: 0,
                kind: vmdk_format::DescriptorError::TooLarge,
            },
        ));
    }
    let mut text = vec![0u8; len as usize];
    file.read_exact_at(&mut text, 0)
        .map_err(|e| Error::io(path, e))?;
    let descriptor = Descriptor::parse(&text).map_err(|e| Error::format(path, e))?;

    let mut files = Vec::with_capacity(descriptor.extents.len());
    let mut placed = Vec::with_capacity(descriptor.extents.len());
    for line in &descriptor.extents {
        let Some(name) = &line.file else {
            files.push(None);
            placed.push((line.access, line.sectors, Backing::Zero));
            continue;
        };
        let r = resolve(path, name, opts.allow_outside_paths)?;
        let epath = r.path;
        let (efile, elen) = match &r.beneath {
            Some(rel) if !opts.allow_outside_paths => {
                open_beneath(path, name, rel, &epath, false, writable)?
            }
            _ => open_file(&epath, false, writable)?,
        };
        let ext = Arc::new(ExtentFile {
            path: epath,
            file: efile,
            len: elen,
        });
        let backing = match line.kind {
            ExtentType::Zero => Backing::Zero,
            k if k.is_flat_like() => {
                let file_offset = line.offset.unwrap_or(0).checked_mul(512).ok_or_else(|| {
                    Error::format(
                        path,
                        vmdk_format::Error::BadExtent {
                            index: files.len(),
                            reason: "offset too large",
                        },
                    )
                })?;
                Backing::Flat { file_offset }
            }
            _ => Backing::Sparse(load_sparse(&ext)?),
        };
        files.push(Some(ext));
        placed.push((line.access, line.sectors, backing));
    }
    let layout = Layout::new(placed).map_err(|e| Error::format(path, e))?;
    Ok(Link {
        path: path.to_path_buf(),
        descriptor,
        embedded: false,
        files,
        layout,
        identity,
    })
}

impl LocalDisk {
    /// Opens a disk (descriptor file or monolithic file) and its parents.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        let opened = open_file(path, false, opts.writable)?;
        let mut links = vec![open_link(path, opened, opts, opts.writable)?];
        if opts.single_link && opts.writable && links[0].descriptor.has_parent() {
            return Err(Error::ReadOnly {
                path: path.to_path_buf(),
                reason: "a delta opened without its parent (single link) cannot be written",
            });
        }
        let mut seen = HashSet::new();
        seen.insert(links[0].identity);
        loop {
            let child = links.last().expect("at least one link");
            if !child.descriptor.has_parent() || opts.single_link {
                break;
            }
            let Some(hint) = child.descriptor.parent_file_name_hint.clone() else {
                return Err(Error::ParentMissing {
                    child: child.path.clone(),
                    hint: String::new(),
                });
            };
            if links.len() >= opts.max_chain_depth {
                return Err(Error::ChainTooDeep(
                    path.to_path_buf(),
                    opts.max_chain_depth,
                ));
            }
            let r = resolve(&child.path, &hint, opts.allow_outside_paths)?;
            let ppath = r.path;
            if !ppath.exists() {
                return Err(Error::ParentMissing {
                    child: child.path.clone(),
                    hint,
                });
            }
            let opened = match &r.beneath {
                Some(rel) if !opts.allow_outside_paths => {
                    open_beneath(&child.path, &hint, rel, &ppath, true, false)?
                }
                _ => open_file(&ppath, false, false)?,
            };
            let parent = open_link(&ppath, opened, opts, false)?;
            if !seen.insert(parent.identity) {
                return Err(Error::ChainLoop(ppath));
            }
            let expected = child.descriptor.parent_cid;
            if expected != parent.descriptor.cid && !opts.ignore_cid_mismatch {
                return Err(Error::CidMismatch {
                    child: child.path.clone(),
                    parent: ppath,
                    expected,
                    found: parent.descriptor.cid,
                });
            }
            links.push(parent);
        }
        let mut disk = Self {
            links,
            tables: Cache::new(opts.table_cache_bytes),
            grains: Cache::new(opts.grain_cache_bytes),
            inflate_threads: opts.inflate_threads.max(1),
            writer: None,
            storage: opts.storage.clone(),
            ordered_allocation: opts.ordered_allocation,
        };
        if opts.writable {
            disk.writer = Some(std::sync::Mutex::new(crate::write::WriteState::begin(
                &disk,
            )?));
        }
        Ok(disk)
    }

    /// The chain, child first.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// A read size that suits this disk for sequential reading: large
    /// enough to inflate compressed grains on several threads, small
    /// enough elsewhere for the buffer to stay in the CPU cache.
    pub fn preferred_read_size(&self) -> usize {
        let compressed = self.links.iter().any(|l| {
            l.layout
                .extents()
                .iter()
                .any(|e| matches!(&e.backing, Backing::Sparse(s) if s.is_compressed()))
        });
        if compressed {
            8 << 20
        } else {
            1 << 20
        }
    }

    /// Capacity in bytes (the child's).
    pub fn capacity(&self) -> u64 {
        self.links[0].capacity()
    }

    /// Reads `buf.len()` bytes at virtual byte `offset`, straight into
    /// `buf`. Fails rather than return zeros where data was expected.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let cap = self.capacity();
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|e| e > cap) {
            return Err(Error::OutOfRange {
                offset,
                len,
                capacity: cap,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.read_link(0, offset, buf)
    }

    pub(crate) fn load_table(&self, li: usize, req: TableRequest) -> Result<()> {
        let link = &self.links[li];
        let bytes = link
            .file(req.key.extent)?
            .read_vec(req.file_offset, req.len)?;
        let table = link
            .layout
            .parse_table(req.key, &bytes)
            .map_err(|e| Error::format(&link.path, e))?;
        self.tables
            .insert((li, req.key), Arc::new(table), req.len as usize + 64);
        Ok(())
    }

    pub(crate) fn next_step(
        &self,
        li: usize,
        offset: u64,
        len: u64,
    ) -> Result<vmdk_format::layout::Segment> {
        let link = &self.links[li];
        loop {
            let step = link
                .layout
                .map_next(offset, len, &mut |k| self.tables.get(&(li, k)))
                .map_err(|e| Error::format(&link.path, e))?;
            match step {
                MapStep::Segment(s) => return Ok(s),
                MapStep::NeedTable(req) => self.load_table(li, req)?,
            }
        }
    }

    fn read_link(&self, li: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        let link = &self.links[li];
        let mut jobs = Vec::new();
        let mut pos = 0usize;
        while pos < buf.len() {
            let cur = offset + pos as u64;
            let seg = self.next_step(li, cur, (buf.len() - pos) as u64)?;
            let n = seg.len as usize;
            if link.layout.extents()[seg.extent].access == Access::NoAccess {
                return Err(Error::NoAccess {
                    path: link.path.clone(),
                    extent: seg.extent,
                });
            }
            let out = &mut buf[pos..pos + n];
            match seg.kind {
                SegmentKind::Data { file_offset } => {
                    link.file(seg.extent)?.read_exact_at(out, file_offset)?
                }
                SegmentKind::Zero => out.fill(0),
                SegmentKind::Unallocated => self.read_parent(li, cur, out)?,
                SegmentKind::Compressed {
                    grain_offset,
                    grain_lba,
                    skip,
                    grain_len,
                } => jobs.push(GrainJob {
                    pos,
                    len: n,
                    extent: seg.extent,
                    grain_offset,
                    grain_lba,
                    skip,
                    grain_len,
                }),
            }
            pos += n;
        }
        if !jobs.is_empty() {
            self.run_grain_jobs(li, buf, jobs)?;
        }
        Ok(())
    }

    pub(crate) fn read_parent(&self, li: usize, offset: u64, out: &mut [u8]) -> Result<()> {
        let Some(parent) = self.links.get(li + 1) else {
            out.fill(0);
            return Ok(());
        };
        // A parent smaller than its child reads as zeros past its end.
        let inside = parent
            .capacity()
            .saturating_sub(offset)
            .min(out.len() as u64) as usize;
        let (head, tail) = out.split_at_mut(inside);
        tail.fill(0);
        if !head.is_empty() {
            self.read_link(li + 1, offset, head)?;
        }
        Ok(())
    }

    fn run_grain_jobs(&self, li: usize, buf: &mut [u8], jobs: Vec<GrainJob>) -> Result<()> {
        // Cut `buf` into the disjoint slices the jobs fill.
        let mut slices = Vec::with_capacity(jobs.len());
        let mut rest = buf;
        let mut consumed = 0usize;
        for job in &jobs {
            let (_, tail) = rest.split_at_mut(job.pos - consumed);
            let (mine, tail) = tail.split_at_mut(job.len);
            slices.push(mine);
            rest = tail;
            consumed = job.pos + job.len;
        }
        let work: Vec<(GrainJob, &mut [u8])> = jobs.into_iter().zip(slices).collect();
        let threads = self.inflate_threads.min(work.len());
        if threads <= 1 || work.len() < 4 {
            for (job, out) in work {
                self.fill_grain(li, &job, out)?;
            }
            return Ok(());
        }
        let per = work.len().div_ceil(threads);
        let mut groups: Vec<Vec<(GrainJob, &mut [u8])>> = Vec::new();
        let mut it = work.into_iter();
        loop {
            let g: Vec<_> = it.by_ref().take(per).collect();
            if g.is_empty() {
                break;
            }
            groups.push(g);
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = groups
                .into_iter()
                .map(|group| {
                    scope.spawn(move || -> Result<()> {
                        for (job, out) in group {
                            self.fill_grain(li, &job, out)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            let mut first_err = None;
            for h in handles {
                let r = h.join().unwrap_or_else(|_| {
                    Err(Error::io(
                        &self.links[li].path,
                        io::Error::other("inflate thread panicked"),
                    ))
                });
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                }
            }
            first_err.map_or(Ok(()), Err)
        })
    }

    fn fill_grain(&self, li: usize, job: &GrainJob, out: &mut [u8]) -> Result<()> {
        let key = (li, job.extent, job.grain_offset);
        let skip = job.skip as usize;
        if let Some(g) = self.grains.get(&key) {
            out.copy_from_slice(&g[skip..skip + out.len()]);
            return Ok(());
        }
        let link = &self.links[li];
        let file = link.file(job.extent)?;
        let grain_bytes = match &link.layout.extents()[job.extent].backing {
            Backing::Sparse(s) => s.grain_bytes(),
            _ => return Err(Error::format(&link.path, vmdk_format::Error::TableMismatch)),
        };
        let fmt = |e| Error::format(&file.path, e);
        let avail = file.len.saturating_sub(job.grain_offset);
        let first = (grain_bytes + 1024).min(avail);
        let mut raw = file.read_vec(job.grain_offset, first)?;
        let compressed = loop {
            match stream::parse_grain(&raw, job.grain_offset, job.grain_lba, grain_bytes)
                .map_err(fmt)?
            {
                GrainParse::Complete { compressed } => break compressed,
                GrainParse::NeedMore(total) => {
                    if total <= raw.len() as u64 || total > avail {
                        return Err(Error::Truncated {
                            path: file.path.clone(),
                            offset: job.grain_offset,
                            needed: total,
                            file_len: file.len,
                        });
                    }
                    raw = file.read_vec(job.grain_offset, total)?;
                }
            }
        };
        let partial = skip != 0 || (out.len() as u64) < job.grain_len;
        if !partial && out.len() as u64 == grain_bytes {
            // Whole grain wanted: inflate straight into the caller's buffer.
            let n = stream::inflate_grain(compressed, out, job.grain_offset).map_err(fmt)?;
            if (n as u64) < job.grain_len {
                return Err(fmt(vmdk_format::Error::BadCompressedGrain {
                    offset: job.grain_offset,
                    reason: "grain inflates to fewer bytes than the disk needs",
                }));
            }
            return Ok(());
        }
        let mut grain = vec![0u8; grain_bytes as usize];
        let n = stream::inflate_grain(compressed, &mut grain, job.grain_offset).map_err(fmt)?;
        if (n as u64) < job.grain_len {
            return Err(fmt(vmdk_format::Error::BadCompressedGrain {
                offset: job.grain_offset,
                reason: "grain inflates to fewer bytes than the disk needs",
            }));
        }
        out.copy_from_slice(&grain[skip..skip + out.len()]);
        if partial {
            self.grains
                .insert(key, Arc::new(grain), grain_bytes as usize);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handle_is_send_sync() {
        assert_send_sync::<LocalDisk>();
    }
}
