//! NTFS through the `ntfs` crate.
//!
//! The crate's own parsers validate what they read; as a last line of
//! defence against an unknown panic on hostile input, each operation runs
//! under `catch_unwind` and a panic is reported as [`Error::Filesystem`]
//! (the filesystem object stays usable: it holds no state a half-finished
//! operation could leave inconsistent besides the cached file, which is
//! dropped). This only helps where panics unwind (`panic = "unwind"`).

use std::io::SeekFrom;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsAttributeFlags, NtfsAttributeType, NtfsError, NtfsFile, NtfsReadSeek};

use super::{components, filetime_to_unix, DirEntry, FileKind, GuestFs, Metadata, MAX_DIR_ENTRIES};
use crate::read::{is_budget_exceeded, ReadSeekAdapter};
use crate::{Error, FsKind, ReadAt};

/// Record number of the root directory.
const ROOT: u64 = 5;
/// Records below this are NTFS metadata files ($MFT … $Extend and reserved).
const FIRST_USER_RECORD: u64 = 16;
/// Index entries examined in one directory walk (also bounds lookups).
const MAX_INDEX_ENTRIES: usize = MAX_DIR_ENTRIES * 2;

/// `read` calls one operation may make (each is served by the block
/// cache when it repeats).
const READ_BUDGET: u64 = 4_000_000;

fn map_err(e: NtfsError) -> Error {
    match e {
        NtfsError::Io(source) if is_budget_exceeded(&source) => Error::TooLarge {
            what: "NTFS metadata walk (looping index or runs?)",
            size: READ_BUDGET,
            max: READ_BUDGET,
        },
        NtfsError::Io(source) => Error::Io {
            context: "NTFS",
            offset: 0,
            source,
        },
        other => Error::Filesystem {
            kind: FsKind::Ntfs,
            message: other.to_string(),
        },
    }
}

fn guarded<R>(f: impl FnOnce() -> Result<R, Error>) -> Result<R, Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(Error::Filesystem {
            kind: FsKind::Ntfs,
            message: "the NTFS library panicked on this volume's metadata".into(),
        }),
    }
}

/// The volume label from `$Volume`, best effort (used by `probe`).
pub(crate) fn volume_label(vol: &dyn ReadAt) -> Option<String> {
    // Reads the boot sector and a few MFT records.
    let mut io = BorrowedSeek {
        r: vol,
        pos: 0,
        reads: 0,
    };
    let label = guarded(|| {
        let ntfs = Ntfs::new(&mut io).map_err(map_err)?;
        match ntfs.volume_name(&mut io) {
            Some(Ok(n)) => Ok(Some(n.name().to_string_lossy())),
            _ => Ok(None),
        }
    });
    label.ok().flatten().filter(|s| !s.is_empty())
}

/// A bounded `Read + Seek` over a borrowed reader.
struct BorrowedSeek<'a> {
    r: &'a dyn ReadAt,
    pos: u64,
    reads: u64,
}

impl std::io::Read for BorrowedSeek<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads += 1;
        if self.reads > 10_000 {
            return Err(std::io::Error::other(crate::read::BudgetExceeded));
        }
        let size = self.r.size();
        if self.pos >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = (size - self.pos).min(buf.len() as u64) as usize;
        self.r.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for BorrowedSeek<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.r.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad seek"))?;
        self.pos = new;
        Ok(new)
    }
}

/// An open NTFS filesystem.
pub(crate) struct NtfsFs {
    io: ReadSeekAdapter,
    ntfs: Ntfs,
    /// The last file read: path and record number.
    open: Option<(String, u64)>,
}

impl std::fmt::Debug for NtfsFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtfsFs").finish_non_exhaustive()
    }
}

/// The longest symlink data read (reparse buffer or Interix file).
const MAX_LINK_DATA: u64 = 16 * 1024;
/// `IO_REPARSE_TAG_SYMLINK`.
const TAG_SYMLINK: u32 = 0xA000_000C;
/// `IO_REPARSE_TAG_MOUNT_POINT` (junction).
const TAG_MOUNT_POINT: u32 = 0xA000_0003;

/// Reads the whole value of `attr` (at most [`MAX_LINK_DATA`] bytes).
fn small_value(
    attr: &ntfs::NtfsAttribute<'_, '_>,
    io: &mut ReadSeekAdapter,
) -> Result<Vec<u8>, Error> {
    let len = attr.value_length();
    if len > MAX_LINK_DATA {
        return Err(Error::TooLarge {
            what: "NTFS symlink data",
            size: len,
            max: MAX_LINK_DATA,
        });
    }
    let mut out = vec![0u8; len as usize];
    let mut value = attr.value(io).map_err(map_err)?;
    let mut done = 0;
    while done < out.len() {
        let n = value.read(io, &mut out[done..]).map_err(map_err)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    out.truncate(done);
    Ok(out)
}

/// Decodes a symlink or junction reparse buffer to a `/`-separated target.
fn reparse_target(b: &[u8]) -> Option<Vec<u8>> {
    use crate::bytes::{slice, u16_le, u32_le};
    let tag = u32_le(b, 0)?;
    let base = match tag {
        TAG_SYMLINK => 20,
        TAG_MOUNT_POINT => 16,
        _ => return None,
    };
    let sub_off = usize::from(u16_le(b, 8)?);
    let sub_len = usize::from(u16_le(b, 10)?);
    let print_off = usize::from(u16_le(b, 12)?);
    let print_len = usize::from(u16_le(b, 14)?);
    let print = slice(b, base + print_off, print_len)?;
    let name = if print.is_empty() {
        slice(b, base + sub_off, sub_len)?
    } else {
        print
    };
    let units: Vec<u16> = name
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let text = String::from_utf16_lossy(&units);
    let text = text.strip_prefix("\\??\\").unwrap_or(&text);
    Some(text.replace('\\', "/").into_bytes())
}

/// The symlink target of `file`, if it is one: an NTFS symlink or junction
/// reparse point, or an Interix symlink (what ntfs-3g writes: a SYSTEM
/// file whose data is `IntxLNK\x01` and a UTF-16LE target).
fn symlink_target(file: &NtfsFile<'_>, io: &mut ReadSeekAdapter) -> Result<Option<Vec<u8>>, Error> {
    let attrs = file.info().map_err(map_err)?.file_attributes();
    if attrs.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
        let mut iter = file.attributes();
        while let Some(item) = iter.next(io) {
            let item = item.map_err(map_err)?;
            let attr = item.to_attribute().map_err(map_err)?;
            if attr.ty().map_err(map_err)? == NtfsAttributeType::ReparsePoint {
                return Ok(reparse_target(&small_value(&attr, io)?));
            }
        }
        return Ok(None);
    }
    if !attrs.contains(NtfsFileAttributeFlags::SYSTEM) || file.is_directory() {
        return Ok(None);
    }
    let Some(item) = file.data(io, "") else {
        return Ok(None);
    };
    let item = item.map_err(map_err)?;
    let attr = item.to_attribute().map_err(map_err)?;
    let len = attr.value_length();
    if !(8..=MAX_LINK_DATA).contains(&len) || len % 2 != 0 {
        return Ok(None);
    }
    let data = small_value(&attr, io)?;
    let Some(target) = data.strip_prefix(b"IntxLNK\x01") else {
        return Ok(None);
    };
    let units: Vec<u16> = target
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Ok(Some(String::from_utf16_lossy(&units).into_bytes()))
}

fn file_metadata(file: &NtfsFile<'_>, io: &mut ReadSeekAdapter) -> Result<Metadata, Error> {
    let info = file.info().map_err(map_err)?;
    let attrs = info.file_attributes();
    let link = symlink_target(file, io)?;
    let (kind, size) = if let Some(target) = &link {
        (FileKind::Symlink, target.len() as u64)
    } else if attrs.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
        (FileKind::Other, 0)
    } else if file.is_directory() {
        (FileKind::Dir, 0)
    } else {
        let size = match file.data(io, "") {
            Some(item) => {
                let item = item.map_err(map_err)?;
                item.to_attribute().map_err(map_err)?.value_length()
            }
            None => 0,
        };
        (FileKind::File, size)
    };
    let (mtime, mtime_nsec) = filetime_to_unix(info.modification_time().nt_timestamp());
    let (atime, _) = filetime_to_unix(info.access_time().nt_timestamp());
    Ok(Metadata {
        kind,
        size,
        mode: None,
        uid: None,
        gid: None,
        mtime: Some(mtime),
        mtime_nsec: Some(mtime_nsec),
        atime: Some(atime),
    })
}

impl NtfsFs {
    /// Opens the NTFS filesystem in `vol` and loads its `$UpCase` table.
    pub(crate) fn open(vol: Arc<dyn ReadAt>) -> Result<Self, Error> {
        let mut io = ReadSeekAdapter::new(vol, READ_BUDGET);
        guarded(move || {
            let mut ntfs = Ntfs::new(&mut io).map_err(map_err)?;
            ntfs.read_upcase_table(&mut io).map_err(map_err)?;
            Ok(NtfsFs {
                io,
                ntfs,
                open: None,
            })
        })
    }

    /// The record number of `path`.
    fn lookup(&mut self, path: &str) -> Result<u64, Error> {
        let parts = components(path)?;
        let mut rec = ROOT;
        for (i, part) in parts.iter().enumerate() {
            let dir = self.ntfs.file(&mut self.io, rec).map_err(map_err)?;
            if !dir.is_directory() {
                return Err(if i == 0 {
                    Error::corrupt("NTFS root is not a directory", 0)
                } else {
                    Error::NotADirectory(path.to_string())
                });
            }
            let index = dir.directory_index(&mut self.io).map_err(map_err)?;
            let mut finder = index.finder();
            let entry = NtfsFileNameIndex::find(&mut finder, &self.ntfs, &mut self.io, part)
                .ok_or_else(|| Error::NotFound(path.to_string()))?
                .map_err(map_err)?;
            rec = entry.file_reference().file_record_number();
            if parts.len() == 1 && rec < FIRST_USER_RECORD {
                // Metadata files are not part of the visible tree.
                return Err(Error::NotFound(path.to_string()));
            }
        }
        Ok(rec)
    }

    fn list(&mut self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let rec = self.lookup(path)?;
        let is_root = rec == ROOT;
        let dir = self.ntfs.file(&mut self.io, rec).map_err(map_err)?;
        if !dir.is_directory() {
            return Err(Error::NotADirectory(path.to_string()));
        }
        let index = dir.directory_index(&mut self.io).map_err(map_err)?;
        let mut entries = index.entries();
        let mut found: Vec<(String, u64)> = Vec::new();
        let mut seen = 0usize;
        while let Some(entry) = entries.next(&mut self.io) {
            seen += 1;
            if seen > MAX_INDEX_ENTRIES {
                return Err(Error::TooLarge {
                    what: "NTFS directory index",
                    size: seen as u64,
                    max: MAX_INDEX_ENTRIES as u64,
                });
            }
            let entry = entry.map_err(map_err)?;
            let Some(key) = entry.key() else { continue };
            let key = key.map_err(map_err)?;
            if key.namespace() == NtfsFileNamespace::Dos {
                continue;
            }
            let child = entry.file_reference().file_record_number();
            if child == rec || (is_root && child < FIRST_USER_RECORD) {
                continue;
            }
            let name = key.name().to_string_lossy();
            if name == "." || name == ".." {
                continue;
            }
            found.push((name, child));
        }
        found.sort();
        found.dedup();
        let mut out = Vec::with_capacity(found.len());
        for (name, child) in found {
            let file = self.ntfs.file(&mut self.io, child).map_err(map_err)?;
            let metadata = file_metadata(&file, &mut self.io)?;
            out.push(DirEntry {
                name_bytes: name.as_bytes().to_vec(),
                name,
                metadata,
            });
        }
        Ok(out)
    }

    fn read_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let rec = match &self.open {
            Some((p, rec)) if p == path => *rec,
            _ => {
                let rec = self.lookup(path)?;
                self.open = Some((path.to_string(), rec));
                rec
            }
        };
        let file = self.ntfs.file(&mut self.io, rec).map_err(map_err)?;
        if file.is_directory() {
            return Err(Error::IsADirectory(path.to_string()));
        }
        let info = file.info().map_err(map_err)?;
        if info
            .file_attributes()
            .contains(NtfsFileAttributeFlags::REPARSE_POINT)
            || symlink_target(&file, &mut self.io)?.is_some()
        {
            return Err(Error::NotAFile(path.to_string()));
        }
        let Some(item) = file.data(&mut self.io, "") else {
            return Ok(0);
        };
        let item = item.map_err(map_err)?;
        let attr = item.to_attribute().map_err(map_err)?;
        let flags = attr.flags();
        if flags.intersects(NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED) {
            return Err(Error::UnsupportedFeature(format!(
                "{path}: compressed or encrypted NTFS data"
            )));
        }
        let len = attr.value_length();
        if offset >= len || buf.is_empty() {
            return Ok(0);
        }
        let want = (len - offset).min(buf.len() as u64) as usize;
        let mut value = attr.value(&mut self.io).map_err(map_err)?;
        value
            .seek(&mut self.io, SeekFrom::Start(offset))
            .map_err(map_err)?;
        let mut done = 0;
        while done < want {
            let n = value
                .read(&mut self.io, &mut buf[done..want])
                .map_err(map_err)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

impl GuestFs for NtfsFs {
    fn kind(&self) -> FsKind {
        FsKind::Ntfs
    }

    fn metadata(&mut self, path: &str) -> Result<Metadata, Error> {
        self.io.reset_budget();
        guarded(|| {
            let rec = self.lookup(path)?;
            let file = self.ntfs.file(&mut self.io, rec).map_err(map_err)?;
            file_metadata(&file, &mut self.io)
        })
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, Error> {
        self.io.reset_budget();
        guarded(|| self.list(path))
    }

    fn read_link(&mut self, path: &str) -> Result<Vec<u8>, Error> {
        self.io.reset_budget();
        guarded(|| {
            let rec = self.lookup(path)?;
            let file = self.ntfs.file(&mut self.io, rec).map_err(map_err)?;
            symlink_target(&file, &mut self.io)?.ok_or_else(|| Error::NotASymlink(path.to_string()))
        })
    }

    fn read_file_at(&mut self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        self.io.reset_budget();
        let r = guarded(|| self.read_at(path, offset, buf));
        if r.is_err() {
            self.open = None;
        }
        r
    }
}
