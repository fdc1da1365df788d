//! Opening the files a descriptor names: extents and parents are
//! confined beneath the descriptor's directory unless the caller allows
//! otherwise.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::{Error, Result};

pub(crate) fn open_file(path: &Path, nofollow: bool, writable: bool) -> Result<(File, u64)> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(writable);
    if nofollow {
        o.custom_flags(OFlags::NOFOLLOW.bits() as i32);
    }
    let file = o.open(path).map_err(|e| {
        if nofollow && e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) {
            // O_NOFOLLOW met a symlink: following it could lead anywhere.
            Error::PathEscape {
                descriptor: path.to_path_buf(),
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    file_and_len(file, path)
}

fn file_and_len(file: File, path: &Path) -> Result<(File, u64)> {
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "is a directory"),
        ));
    }
    Ok((file, meta.len()))
}

/// A name from a descriptor, resolved against the descriptor's directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The file's path (for messages, and the directory of the next link).
    pub(crate) path: PathBuf,
    /// The file's name relative to the descriptor's directory when it lies
    /// inside it (open it beneath the directory); `None` for a file outside
    /// it, which only an explicit allow lets through.
    pub(crate) beneath: Option<PathBuf>,
}

fn dir_of(naming_file: &Path) -> &Path {
    match naming_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Resolves `name` (from the descriptor at `naming_file`) against that
/// descriptor's directory, refusing escapes unless allowed.
///
/// An absolute name that lies inside the directory (as given, made
/// absolute, or canonical: qemu writes the path it was given, ESXi
/// `/vmfs/volumes/…`) is inside: it is opened beneath the directory like
/// a relative one. Names with `..` are never inside.
pub(crate) fn resolve(naming_file: &Path, name: &str, allow_outside: bool) -> Result<Resolved> {
    let dir = dir_of(naming_file);
    let p = Path::new(name);
    let escapes = p.is_absolute()
        || p.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        });
    if !escapes && !name.is_empty() {
        return Ok(Resolved {
            path: dir.join(p),
            beneath: Some(p.to_path_buf()),
        });
    }
    if let Some(rel) = inside(dir, p) {
        return Ok(Resolved {
            path: dir.join(&rel),
            beneath: Some(rel),
        });
    }
    if !allow_outside {
        return Err(Error::PathEscape {
            descriptor: naming_file.to_path_buf(),
            name: name.to_string(),
        });
    }
    Ok(Resolved {
        path: dir.join(p),
        beneath: None,
    })
}

/// The part of the absolute path `p` below `dir`, when `p` names a file
/// inside `dir` (`dir` as given, made absolute, or canonical).
fn inside(dir: &Path, p: &Path) -> Option<PathBuf> {
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    let bases = [std::path::absolute(dir).ok(), dir.canonicalize().ok()];
    bases.into_iter().flatten().find_map(|base| {
        let rel = p.strip_prefix(&base).ok()?;
        let normal = rel
            .components()
            .filter(|c| *c != Component::CurDir)
            .collect::<PathBuf>();
        (!normal.as_os_str().is_empty()).then_some(normal)
    })
}

/// Opens `rel` (`name` as written in the descriptor `naming_file`, which
/// [`resolve`] found to be `path`, `rel` below the descriptor's
/// directory) so that the file opened lies beneath the descriptor's
/// directory whatever symlinks or renames happen meanwhile.
///
/// The kernel does the confinement (`openat2` with `RESOLVE_BENEATH`: a
/// symlink or `..` leading out fails with `EXDEV`), so there is no window
/// between a check and the open. `follow_last` false refuses a symlink as
/// the last component, as extents always have. Kernels without `openat2`
/// (before 5.6, or a seccomp filter refusing it) get the older way: open,
/// then compare canonical paths.
pub(crate) fn open_beneath(
    naming_file: &Path,
    name: &str,
    rel: &Path,
    path: &Path,
    follow_last: bool,
    writable: bool,
) -> Result<(File, u64)> {
    let escape = || Error::PathEscape {
        descriptor: naming_file.to_path_buf(),
        name: name.to_string(),
    };
    match open_beneath_at(naming_file, rel, follow_last, writable) {
        Ok(file) => file_and_len(file, path),
        Err(Errno::XDEV) => Err(escape()),
        Err(Errno::LOOP) if !follow_last => Err(escape()),
        Err(Errno::NOSYS | Errno::PERM) => {
            let opened = open_file(path, !follow_last, writable)?;
            confirm_inside(naming_file, path, name)?;
            Ok(opened)
        }
        Err(e) => Err(Error::io(path, e.into())),
    }
}

fn open_beneath_at(
    naming_file: &Path,
    rel: &Path,
    follow_last: bool,
    writable: bool,
) -> rustix::io::Result<File> {
    use rustix::fs::{open, openat2, Mode, ResolveFlags};
    let dir = dir_of(naming_file);
    let dirfd = open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut flags = OFlags::CLOEXEC
        | if writable {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
    if !follow_last {
        flags |= OFlags::NOFOLLOW;
    }
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    // EAGAIN: a concurrent rename somewhere on the path; the kernel asks
    // for a retry rather than risk a wrong answer.
    let mut tries = 0;
    loop {
        match openat2(&dirfd, rel, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            r => return r.map(File::from),
        }
    }
}

/// Checks, after opening, that `path` really lies inside the directory of
/// `naming_file` (a symlinked directory could lead out). Only for kernels
/// without `openat2`.
fn confirm_inside(naming_file: &Path, path: &Path, name: &str) -> Result<()> {
    let dir = dir_of(naming_file);
    let base = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let real = path.canonicalize().map_err(|e| Error::io(path, e))?;
    if !real.starts_with(&base) {
        return Err(Error::PathEscape {
            descriptor: naming_file.to_path_buf(),
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_escapes() {
        let d = Path::new("/data/vm/disk.vmdk");
        assert_eq!(
            resolve(d, "disk-flat.vmdk", false).unwrap().path,
            Path::new("/data/vm/disk-flat.vmdk")
        );
        assert_eq!(
            resolve(d, "sp ace ü@x.vmdk", false).unwrap().path,
            Path::new("/data/vm/sp ace ü@x.vmdk")
        );
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b"] {
            assert!(
                matches!(resolve(d, bad, false), Err(Error::PathEscape { .. })),
                "{bad}"
            );
            assert!(resolve(d, bad, true).is_ok());
        }
    }

    #[test]
    fn absolute_names_inside_the_directory_are_inside() {
        let d = Path::new("/data/vm/disk.vmdk");
        assert_eq!(
            resolve(d, "/data/vm/base.vmdk", false).unwrap(),
            Resolved {
                path: "/data/vm/base.vmdk".into(),
                beneath: Some("base.vmdk".into())
            }
        );
        assert_eq!(
            resolve(d, "/data/vm/./sub/base.vmdk", false)
                .unwrap()
                .beneath,
            Some("sub/base.vmdk".into())
        );
        for outside in [
            "/data/vm",
            "/data/vm/",
            "/data/vmx/base.vmdk",
            "/data/base.vmdk",
            "/data/vm/../vm/base.vmdk",
            "/vmfs/volumes/ds1/vm/base.vmdk",
        ] {
            assert!(
                matches!(resolve(d, outside, false), Err(Error::PathEscape { .. })),
                "{outside}"
            );
            assert_eq!(
                resolve(d, outside, true).unwrap().beneath,
                None,
                "{outside}"
            );
        }
        // A relative descriptor path: its directory made absolute.
        let cwd = std::env::current_dir().unwrap();
        let abs = cwd.join("some-disk-base.vmdk");
        let r = resolve(Path::new("some-disk.vmdk"), abs.to_str().unwrap(), false).unwrap();
        assert_eq!(r.beneath, Some("some-disk-base.vmdk".into()));
    }
}
