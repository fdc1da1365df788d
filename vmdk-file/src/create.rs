//! Creating new local disks of every hosted type.

use std::fs::File;
use std::path::{Path, PathBuf};

use vmdk_format::create::{
    extent_line, new_descriptor, AdapterType, DescriptorOptions, SparseParams,
    MAX_FLAT_CAPACITY_SECTORS, SPLIT_EXTENT_SECTORS,
};
use vmdk_format::descriptor::{CreateType, ExtentType};

use crate::io::{parent_dir, std_storage, SharedStorage, Storage};
use crate::write::{new_cid, random_bytes, sync_dir};
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
struct Cleanup<'a>(Vec<PathBuf>, bool, &'a dyn Storage);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.1 {
            for p in &self.0 {
                let _ = self.2.remove_file(p);
            }
        }
    }
}

fn create_new(path: &Path, cleanup: &mut Cleanup<'_>) -> Result<File> {
    let f = cleanup.2.create(path, true).map_err(|e| {
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
    create_in(&std_storage(), path, o)
}

/// [`create`] through `storage`.
pub fn create_in(storage: &SharedStorage, path: &Path, o: &CreateOptions) -> Result<()> {
    create_with(storage, path, o, &descriptor_options(o))
}

pub(crate) fn create_with(
    storage: &SharedStorage,
    path: &Path,
    o: &CreateOptions,
    d: &DescriptorOptions,
) -> Result<()> {
    let fs = &**storage;
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
    let mut cleanup = Cleanup(Vec::new(), false, fs);
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
            let desc = desc.to_bytes().map_err(|e| Error::format(path, e))?;
            create_whole(fs, path, |f, at| {
                write_sparse_extent(fs, f, at, sectors, o.zeroed_grain, Some(&desc))
            })?;
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
                    write_sparse_extent(fs, &f, &epath, ext_sectors, o.zeroed_grain, None)?;
                    lines.push(extent_line(
                        ext_sectors,
                        ExtentType::Sparse,
                        Some(&ename),
                        None,
                    ));
                } else {
                    fs.set_len(&f, ext_sectors * 512)
                        .map_err(|e| Error::disk_full_or_io(&epath, e))?;
                    lines.push(extent_line(
                        ext_sectors,
                        ExtentType::Flat,
                        Some(&ename),
                        Some(0),
                    ));
                }
                fs.sync_all(&f).map_err(|e| Error::io(&epath, e))?;
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
            fs.set_len(&f, sectors * 512)
                .map_err(|e| Error::disk_full_or_io(&epath, e))?;
            if o.disk_type == DiskType::Vmfs {
                fs.allocate(&f, sectors * 512)
                    .map_err(|e| Error::disk_full_or_io(&epath, e))?;
            }
            fs.sync_all(&f).map_err(|e| Error::io(&epath, e))?;
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
            crate::stream::write_stream(
                fs,
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

fn write_sparse_extent(
    fs: &dyn Storage,
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
    fs.write_at(f, &meta, 0)
        .map_err(|e| Error::disk_full_or_io(path, e))?;
    fs.sync_all(f).map_err(|e| Error::io(path, e))
}

/// Writes the descriptor of a disk whose extent files are written and
/// synced: their names are made durable first, so that a descriptor
/// never outlives a power cut without its extents.
fn write_descriptor_file(
    path: &Path,
    d: &vmdk_format::descriptor::Descriptor,
    cleanup: &mut Cleanup<'_>,
) -> Result<()> {
    let fs = cleanup.2;
    sync_dir(fs, parent_dir(path))?;
    let bytes = d.to_bytes().map_err(|e| Error::format(path, e))?;
    create_whole(fs, path, |f, at| {
        fs.write_at(f, &bytes, 0)
            .map_err(|e| Error::disk_full_or_io(at, e))
    })
}

/// Creates `path` whole or not at all: `fill` writes a temporary file
/// beside it (errors name `path`, passed to it), which is synced,
/// renamed to `path` unless that exists, and made durable by a sync of
/// the directory. A crash leaves either no `path` or a complete one (and
/// perhaps the temporary).
pub(crate) fn create_whole(
    fs: &dyn Storage,
    path: &Path,
    fill: impl FnOnce(&File, &Path) -> Result<()>,
) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(Error::AlreadyExists(path.to_path_buf()));
    }
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.new-{}", std::process::id()));
    let result = (|| {
        let f = fs
            .create(&tmp, false)
            .map_err(|e| Error::disk_full_or_io(path, e))?;
        fill(&f, path)?;
        fs.sync_all(&f).map_err(|e| Error::io(path, e))?;
        fs.rename_noreplace(&tmp, path).map_err(taken_or_io(path))
    })();
    if result.is_err() {
        let _ = fs.remove_file(&tmp);
        return result;
    }
    sync_dir(fs, dir)
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
    delete_in(&std_storage(), path)
}

/// [`delete`] through `storage`.
pub fn delete_in(storage: &SharedStorage, path: &Path) -> Result<()> {
    let files = files_of(path)?;
    for f in &files {
        storage.remove_file(f).map_err(|e| Error::io(f, e))?;
    }
    let mut dirs: Vec<&Path> = files.iter().map(|f| parent_dir(f)).collect();
    dirs.dedup();
    for d in dirs {
        sync_dir(&**storage, d)?;
    }
    Ok(())
}

/// Renames a disk and every file of it; extent names in the descriptor
/// follow the new name (`new-flat.vmdk`, `new-s001.vmdk`, ...). Children
/// naming this disk as parent are not updated. Existing files are never
/// replaced.
///
/// A crash leaves the disk whole under one of its names: the extents are
/// first linked under their new names, then the new descriptor is
/// written, and only then are the old names removed (on a file system
/// without hard links the extents are renamed instead, and a crash
/// in between leaves neither descriptor matching them).
pub fn rename(path: &Path, new: &Path) -> Result<()> {
    rename_in(&std_storage(), path, new)
}

/// [`rename`] through `storage`.
pub fn rename_in(storage: &SharedStorage, path: &Path, new: &Path) -> Result<()> {
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
    let fs = &**storage;
    let (old_dir, new_dir) = (parent_dir(path), parent_dir(new));
    let sync_both = || {
        sync_dir(fs, new_dir)?;
        if old_dir != new_dir {
            sync_dir(fs, old_dir)?;
        }
        Ok(())
    };
    let link = &d.links()[0];
    if link.is_embedded() {
        drop(d);
        // A monolithic file binds to itself whatever its name.
        fs.rename_noreplace(path, new).map_err(taken_or_io(new))?;
        return sync_both();
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
    // The extents under their new names too, durably, before the new
    // descriptor names them.
    let mut linked: Vec<&Path> = Vec::new();
    let mut links = true;
    for (from, to) in &moves {
        match fs.hard_link(from, to) {
            Ok(()) => linked.push(to),
            Err(e) if links && linked.is_empty() && no_hard_links(&e) => {
                links = false;
                break;
            }
            Err(e) => {
                for l in linked {
                    let _ = fs.remove_file(l);
                }
                return Err(taken_or_io(to)(e));
            }
        }
    }
    if !links {
        for (from, to) in &moves {
            fs.rename_noreplace(from, to).map_err(taken_or_io(to))?;
        }
    }
    sync_both()?;
    let written = create_whole(fs, new, |f, at| {
        fs.write_at(f, &bytes, 0)
            .map_err(|e| Error::disk_full_or_io(at, e))
    });
    if let Err(e) = written {
        for l in linked {
            let _ = fs.remove_file(l);
        }
        return Err(e);
    }
    // The new disk is durable: the old names can go.
    fs.remove_file(path).map_err(|e| Error::io(path, e))?;
    if links {
        for (from, _) in &moves {
            fs.remove_file(from).map_err(|e| Error::io(from, e))?;
        }
    }
    sync_dir(fs, old_dir)
}

/// An error naming `target`: [`Error::AlreadyExists`] when the name is
/// taken.
fn taken_or_io(target: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::AlreadyExists(target.to_path_buf())
        } else {
            Error::io(target, e)
        }
    }
}

/// True when `e` says the file system cannot make hard links here.
fn no_hard_links(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    [
        Errno::PERM,
        Errno::XDEV,
        Errno::OPNOTSUPP,
        Errno::MLINK,
        Errno::NOSYS,
    ]
    .iter()
    .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}
