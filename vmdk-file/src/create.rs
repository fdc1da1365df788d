//! Creating new local disks of every hosted type.

use std::fs::{File, OpenOptions as FsOpen};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmdk_format::create::{
    extent_line, new_descriptor, AdapterType, DescriptorOptions, SparseParams,
    MAX_FLAT_CAPACITY_SECTORS, SPLIT_EXTENT_SECTORS,
};
use vmdk_format::descriptor::{CreateType, ExtentType};

use crate::write::{new_cid, random_bytes};
use crate::{Error, Result};

/// The disk types this kit creates (VixDiskLib's `VIXDISKLIB_DISK_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiskType {
    /// One sparse file with the descriptor embedded.
    MonolithicSparse,
    /// Descriptor plus one flat file.
    MonolithicFlat,
    /// Descriptor plus sparse extents of at most 2 GiB.
    TwoGbMaxExtentSparse,
    /// Descriptor plus flat extents of at most 2 GiB.
    TwoGbMaxExtentFlat,
    /// One compressed, sequential file for transfer.
    StreamOptimized,
    /// ESX thick disk: descriptor plus a preallocated flat file (extent type VMFS).
    Vmfs,
    /// ESX thin disk: descriptor plus a flat file with holes (extent type VMFS).
    VmfsThin,
}

impl DiskType {
    /// Every type.
    pub const ALL: [DiskType; 7] = [
        Self::MonolithicSparse,
        Self::MonolithicFlat,
        Self::TwoGbMaxExtentSparse,
        Self::TwoGbMaxExtentFlat,
        Self::StreamOptimized,
        Self::Vmfs,
        Self::VmfsThin,
    ];

    /// The descriptor's `createType`.
    pub fn create_type(self) -> CreateType {
        match self {
            Self::MonolithicSparse => CreateType::MonolithicSparse,
            Self::MonolithicFlat => CreateType::MonolithicFlat,
            Self::TwoGbMaxExtentSparse => CreateType::TwoGbMaxExtentSparse,
            Self::TwoGbMaxExtentFlat => CreateType::TwoGbMaxExtentFlat,
            Self::StreamOptimized => CreateType::StreamOptimized,
            Self::Vmfs => CreateType::Vmfs,
            Self::VmfsThin => CreateType::VmfsThin,
        }
    }

    /// Name as on the command line (the `createType` spelling).
    pub fn as_str(self) -> &'static str {
        self.create_type().as_str()
    }

    /// Parses a type name (ASCII case-insensitive).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    /// Largest capacity of this type, in bytes.
    pub fn max_capacity(self) -> u64 {
        match self {
            Self::MonolithicSparse | Self::StreamOptimized => SparseParams::max_capacity(128) * 512,
            _ => MAX_FLAT_CAPACITY_SECTORS * 512,
        }
    }

    /// True for types made of grain-directory sparse extents.
    pub fn is_sparse(self) -> bool {
        matches!(
            self,
            Self::MonolithicSparse | Self::TwoGbMaxExtentSparse | Self::StreamOptimized
        )
    }
}

/// How to create a disk.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Type.
    pub disk_type: DiskType,
    /// Capacity in bytes (rounded up to whole sectors).
    pub capacity: u64,
    /// Adapter type.
    pub adapter: AdapterType,
    /// Virtual hardware version.
    pub hw_version: u32,
    /// Allow zeroed-grain entries in sparse extents (header version 2).
    pub zeroed_grain: bool,
}

impl CreateOptions {
    /// A disk of `disk_type` and `capacity` bytes, lsilogic, hardware
    /// version 4 (readable by every VMware product).
    pub fn new(disk_type: DiskType, capacity: u64) -> Self {
        Self {
            disk_type,
            capacity,
            adapter: AdapterType::LsiLogic,
            hw_version: 4,
            zeroed_grain: true,
        }
    }
}

/// Removes files created so far when creation fails midway.
struct Cleanup(Vec<PathBuf>, bool);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.1 {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn create_new(path: &Path, cleanup: &mut Cleanup) -> Result<File> {
    let f = FsOpen::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::AlreadyExists(path.to_path_buf())
            } else {
                Error::disk_full_or_io(path, e)
            }
        })?;
    cleanup.0.push(path.to_path_buf());
    Ok(f)
}

/// `dir/stem` + suffix, the naming VMware uses for extent files.
pub(crate) fn sibling(path: &Path, suffix: &str) -> (PathBuf, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let name = format!("{stem}{suffix}");
    (path.with_file_name(&name), name)
}

pub(crate) fn descriptor_options(o: &CreateOptions) -> DescriptorOptions {
    DescriptorOptions {
        adapter: o.adapter,
        hw_version: o.hw_version,
        cid: new_cid(0),
        uuid: random_bytes(),
        long_content_random: random_bytes(),
        parent_cid: None,
        parent_hint: None,
    }
}

/// Creates an empty disk at `path` (and its extent files beside it).
/// Existing files are never overwritten.
pub fn create(path: &Path, o: &CreateOptions) -> Result<()> {
    create_with(path, o, &descriptor_options(o))
}

pub(crate) fn create_with(path: &Path, o: &CreateOptions, d: &DescriptorOptions) -> Result<()> {
    let sectors = o.capacity.div_ceil(512);
    if sectors
        .checked_mul(512)
        .is_none_or(|b| b > o.disk_type.max_capacity())
    {
        return Err(Error::InvalidArgument(format!(
            "{} bytes is more than a {} disk can hold ({} bytes)",
            o.capacity,
            o.disk_type.as_str(),
            o.disk_type.max_capacity()
        )));
    }
    let mut cleanup = Cleanup(Vec::new(), false);
    match o.disk_type {
        DiskType::MonolithicSparse => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let desc = new_descriptor(
                CreateType::MonolithicSparse,
                sectors,
                vec![extent_line(sectors, ExtentType::Sparse, Some(&name), None)],
                d,
            );
            let f = create_new(path, &mut cleanup)?;
            write_sparse_extent(
                &f,
                path,
                sectors,
                o.zeroed_grain,
                Some(&desc.to_bytes().map_err(|e| Error::format(path, e))?),
            )?;
        }
        DiskType::TwoGbMaxExtentSparse | DiskType::TwoGbMaxExtentFlat => {
            let sparse = o.disk_type == DiskType::TwoGbMaxExtentSparse;
            let mut lines = Vec::new();
            let n = sectors.div_ceil(SPLIT_EXTENT_SECTORS).max(1);
            for i in 0..n {
                let ext_sectors = (sectors - i * SPLIT_EXTENT_SECTORS).min(SPLIT_EXTENT_SECTORS);
                let (epath, ename) = sibling(
                    path,
                    &format!("-{}{:03}.vmdk", if sparse { 's' } else { 'f' }, i + 1),
                );
                let f = create_new(&epath, &mut cleanup)?;
                if sparse {
                    write_sparse_extent(&f, &epath, ext_sectors, o.zeroed_grain, None)?;
                    lines.push(extent_line(
                        ext_sectors,
                        ExtentType::Sparse,
                        Some(&ename),
                        None,
                    ));
                } else {
                    f.set_len(ext_sectors * 512)
                        .map_err(|e| Error::disk_full_or_io(&epath, e))?;
                    lines.push(extent_line(
                        ext_sectors,
                        ExtentType::Flat,
                        Some(&ename),
                        Some(0),
                    ));
                }
                f.sync_all().map_err(|e| Error::io(&epath, e))?;
            }
            write_descriptor_file(
                path,
                &new_descriptor(o.disk_type.create_type(), sectors, lines, d),
                &mut cleanup,
            )?;
        }
        DiskType::MonolithicFlat | DiskType::Vmfs | DiskType::VmfsThin => {
            let (epath, ename) = sibling(path, "-flat.vmdk");
            let f = create_new(&epath, &mut cleanup)?;
            f.set_len(sectors * 512)
                .map_err(|e| Error::disk_full_or_io(&epath, e))?;
            if o.disk_type == DiskType::Vmfs {
                preallocate(&f, &epath, sectors * 512)?;
            }
            f.sync_all().map_err(|e| Error::io(&epath, e))?;
            let kind = if o.disk_type == DiskType::MonolithicFlat {
                ExtentType::Flat
            } else {
                ExtentType::Vmfs
            };
            let line = extent_line(
                sectors,
                kind,
                Some(&ename),
                if kind == ExtentType::Flat {
                    Some(0)
                } else {
                    None
                },
            );
            write_descriptor_file(
                path,
                &new_descriptor(o.disk_type.create_type(), sectors, vec![line], d),
                &mut cleanup,
            )?;
        }
        DiskType::StreamOptimized => {
            cleanup.0.push(path.to_path_buf());
            crate::stream::write_stream(
                path,
                sectors * 512,
                &[],
                &|_, _| Ok(()),
                d,
                &mut |_, _| {},
            )?;
        }
    }
    cleanup.1 = true;
    Ok(())
}

fn preallocate(f: &File, path: &Path, len: u64) -> Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    use rustix::io::Errno;
    if i64::try_from(len).is_err() {
        return Ok(());
    }
    match fallocate(f, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(Errno::OPNOTSUPP | Errno::INVAL) => Ok(()), // file system without fallocate: stays sparse
        Err(e) => Err(Error::disk_full_or_io(path, e.into())),
    }
}

fn write_sparse_extent(
    f: &File,
    path: &Path,
    sectors: u64,
    zeroed_grain: bool,
    descriptor: Option<&[u8]>,
) -> Result<()> {
    let mut p = SparseParams::new(sectors);
    p.zeroed_grain = zeroed_grain;
    if descriptor.is_none() {
        p.descriptor_sectors = 0;
    }
    let layout = p.layout().map_err(|e| Error::format(path, e))?;
    let meta = layout
        .metadata(descriptor.unwrap_or_default())
        .map_err(|e| Error::format(path, e))?;
    f.write_all_at(&meta, 0)
        .map_err(|e| Error::disk_full_or_io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

fn write_descriptor_file(
    path: &Path,
    d: &vmdk_format::descriptor::Descriptor,
    cleanup: &mut Cleanup,
) -> Result<()> {
    let f = create_new(path, cleanup)?;
    let bytes = d.to_bytes().map_err(|e| Error::format(path, e))?;
    f.write_all_at(&bytes, 0)
        .map_err(|e| Error::disk_full_or_io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Every file of the disk at `path` (descriptor and extents) and its
/// parents are not included.
pub fn files_of(path: &Path) -> Result<Vec<PathBuf>> {
    let opts = crate::local::OpenOptions {
        ignore_cid_mismatch: true,
        max_chain_depth: 1,
        ..Default::default()
    };
    let disk = match crate::local::LocalDisk::open(path, &opts) {
        Ok(d) => d,
        Err(Error::ChainTooDeep(..)) => {
            let opts = crate::local::OpenOptions {
                ignore_cid_mismatch: true,
                ..Default::default()
            };
            crate::local::LocalDisk::open(path, &opts)?
        }
        Err(e) => return Err(e),
    };
    let link = &disk.links()[0];
    let mut out = vec![link.path().to_path_buf()];
    for f in link.extent_files().iter().flatten() {
        if !out.iter().any(|p| p == f.path()) {
            out.push(f.path().to_path_buf());
        }
    }
    Ok(out)
}

/// Deletes every file of a disk (not its parents).
pub fn delete(path: &Path) -> Result<()> {
    for f in files_of(path)? {
        std::fs::remove_file(&f).map_err(|e| Error::io(&f, e))?;
    }
    Ok(())
}

/// Renames a disk and every file of it; extent names in the descriptor
/// follow the new name (`new-flat.vmdk`, `new-s001.vmdk`, ...). Children
/// naming this disk as parent are not updated.
pub fn rename(path: &Path, new: &Path) -> Result<()> {
    if new.exists() {
        return Err(Error::AlreadyExists(new.to_path_buf()));
    }
    let d = crate::local::LocalDisk::open(
        path,
        &crate::local::OpenOptions {
            ignore_cid_mismatch: true,
            ..Default::default()
        },
    )?;
    let link = &d.links()[0];
    if link.is_embedded() {
        drop(d);
        // A monolithic file binds to itself whatever its name.
        return std::fs::rename(path, new).map_err(|e| Error::io(path, e));
    }
    let old_stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let new_stem = new
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut desc = d.descriptor();
    let mut moves = Vec::new();
    for (line, file) in desc.extents.iter_mut().zip(link.extent_files()) {
        let (Some(name), Some(file)) = (line.file.as_mut(), file) else {
            continue;
        };
        let base = Path::new(name.as_str())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let renamed = match base.strip_prefix(&old_stem) {
            Some(rest) => format!("{new_stem}{rest}"),
            None => continue, // a name that does not follow the disk's: keep it
        };
        let target = new.with_file_name(&renamed);
        if target.exists() {
            return Err(Error::AlreadyExists(target));
        }
        moves.push((file.path().to_path_buf(), target));
        *name = renamed;
    }
    let bytes = desc.to_bytes().map_err(|e| Error::format(path, e))?;
    drop(d);
    for (from, to) in &moves {
        std::fs::rename(from, to).map_err(|e| Error::io(from, e))?;
    }
    crate::write::replace_file(new, &bytes)?;
    std::fs::remove_file(path).map_err(|e| Error::io(path, e))
}
