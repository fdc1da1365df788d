//! A [`Store`] over a local directory.
//!
//! A key maps to the relative path of the same spelling under the root
//! (`chunks/ab/ab12…` is the file `<root>/chunks/ab/ab12…`). Every write
//! goes through a uniquely named temporary file (`.tmp-<hex>`) in the
//! target directory, is synced, then published by a hard link
//! ([`Store::put_if_absent`]) or a rename ([`Store::put`]), and the
//! directory is synced. A crash leaves at most a stale temporary file,
//! which [`Store::list`] ignores and [`LocalDir::sweep_temp`] removes;
//! keys with a component spelling such a name are refused.
//!
//! Symbolic links are not followed inside the root: a key whose path
//! crosses one is refused, the final file is opened with `O_NOFOLLOW`, and
//! listings skip anything that is not a regular file or a directory. The
//! root itself may be a symbolic link. The checks are made by path, so a
//! process that can swap directories for links inside the root while we
//! work is out of scope (it could write there anyway).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::store::{check_key, check_prefix, ObjectInfo, PutOutcome, Store};

/// Names starting with this are temporary files, never objects.
const TEMP_PREFIX: &str = ".tmp-";

/// Temporary files older than this are stale: [`LocalDir::sweep_temp`]
/// removes them.
const TEMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// A [`Store`] whose objects are files under a directory.
///
/// ```
/// use repo_store::{LocalDir, PutOutcome, Store};
/// let dir = tempfile::tempdir().unwrap();
/// let store = LocalDir::create(dir.path().join("repo")).unwrap();
/// assert_eq!(store.put_if_absent("a/b", b"1").unwrap(), PutOutcome::Created);
/// assert_eq!(store.put_if_absent("a/b", b"2").unwrap(), PutOutcome::Existed);
/// assert_eq!(store.get("a/b", 10).unwrap().unwrap(), b"1");
/// // keys are checked before anything is touched
/// assert!(store.get("../b", 10).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

fn store_err(op: &'static str, key: &str, e: impl std::fmt::Display) -> Error {
    Error::Store {
        op,
        key: key.into(),
        message: e.to_string(),
    }
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| store_err("random", "", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn version_of(meta: &fs::Metadata) -> String {
    let nanos = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    format!("{nanos}-{}-{}", meta.ino(), meta.len())
}

fn info_of(key: &str, meta: &fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        key: key.into(),
        size: meta.len(),
        modified: u64::try_from(meta.mtime()).unwrap_or(0),
        version: version_of(meta),
    }
}

/// [`check_key`], and no component may spell a temporary file.
fn check_local_key(key: &str) -> Result<()> {
    check_key(key)?;
    if key.split('/').any(|c| c.starts_with(TEMP_PREFIX)) {
        return Err(Error::InvalidKey(key.into()));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether an error means "no such object here" (a missing file, or a
/// component of the path that is a file rather than a directory).
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

impl LocalDir {
    /// Opens an existing directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let meta = fs::metadata(path).map_err(|e| store_err("open", &shown, e))?;
        if !meta.is_dir() {
            return Err(store_err("open", &shown, "not a directory"));
        }
        let root = std::path::absolute(path).map_err(|e| store_err("open", &shown, e))?;
        Ok(LocalDir { root })
    }

    /// Creates the directory (and its parents) if needed, then opens it.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        fs::create_dir_all(path).map_err(|e| store_err("create", &shown, e))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(|e| store_err("create", &shown, e))?;
        }
        Self::open(path)
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Checks the directories a key crosses (all but its last component):
    /// `Ok(false)` when one is absent or not a directory, an error when one
    /// is a symbolic link.
    fn parents_present(&self, op: &'static str, key: &str) -> Result<bool> {
        let mut dir = self.root.clone();
        let mut parts: Vec<&str> = key.split('/').collect();
        parts.pop();
        for part in parts {
            dir.push(part);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(store_err(op, key, "path crosses a symbolic link"))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Ok(false),
                Err(e) if is_absent(&e) => return Ok(false),
                Err(e) => return Err(store_err(op, key, e)),
            }
        }
        Ok(true)
    }

    /// Creates the directories a key needs (syncing each new one's
    /// parent) and returns the one that holds it.
    fn make_parents(&self, op: &'static str, key: &str) -> Result<PathBuf> {
        let mut dir = self.root.clone();
        let mut parts: Vec<&str> = key.split('/').collect();
        parts.pop();
        for part in parts {
            let parent = dir.clone();
            dir.push(part);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(store_err(op, key, "path crosses a symbolic link"))
                }
                Ok(m) if m.is_dir() => continue,
                Ok(_) => return Err(store_err(op, key, "a path component is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(store_err(op, key, e)),
            }
            match fs::create_dir(&dir) {
                Ok(()) => sync_dir(&parent).map_err(|e| store_err(op, key, e))?,
                // another writer made it meanwhile: check it again
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let m = fs::symlink_metadata(&dir).map_err(|e| store_err(op, key, e))?;
                    if !m.is_dir() {
                        return Err(store_err(op, key, "a path component is not a directory"));
                    }
                }
                Err(e) => return Err(store_err(op, key, e)),
            }
        }
        Ok(dir)
    }

    /// Writes `bytes` to a synced temporary file and links it in under
    /// `key` unless the key exists; the directory is not synced.
    fn link_new(&self, key: &str, bytes: &[u8]) -> Result<(PutOutcome, PathBuf)> {
        check_local_key(key)?;
        let dir = self.make_parents("put", key)?;
        let tmp = self.write_temp("put", key, &dir, bytes)?;
        let linked = fs::hard_link(&tmp, self.root.join(key));
        let removed = fs::remove_file(&tmp);
        let outcome = match linked {
            Ok(()) => PutOutcome::Created,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => PutOutcome::Existed,
            Err(e) => return Err(store_err("put", key, e)),
        };
        removed.map_err(|e| store_err("put", key, e))?;
        Ok((outcome, dir))
    }

    /// Writes `bytes` to a new synced temporary file in `dir`.
    fn write_temp(&self, op: &'static str, key: &str, dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
        let (tmp, mut file) = loop {
            let tmp = dir.join(format!("{TEMP_PREFIX}{}", random_hex()?));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
            {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(store_err(op, key, e)),
            }
        };
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(store_err(op, key, e));
        }
        Ok(tmp)
    }

    /// Removes temporary files (`.tmp-*`) older than an hour anywhere
    /// under the root, left by writers that crashed, and returns how many
    /// went. Safe while other writers run: a live temporary file is
    /// younger than that.
    pub fn sweep_temp(&self) -> Result<u64> {
        let cutoff = SystemTime::now()
            .checked_sub(TEMP_MAX_AGE)
            .unwrap_or(UNIX_EPOCH);
        let mut removed = 0;
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let shown = dir.display().to_string();
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(store_err("sweep", &shown, e)),
            };
            let mut swept = false;
            for entry in entries {
                let entry = entry.map_err(|e| store_err("sweep", &shown, e))?;
                let kind = entry
                    .file_type()
                    .map_err(|e| store_err("sweep", &shown, e))?;
                let name = entry.file_name();
                if kind.is_dir() {
                    dirs.push(entry.path());
                } else if kind.is_file() && name.to_string_lossy().starts_with(TEMP_PREFIX) {
                    let meta = match entry.metadata() {
                        Ok(m) => m,
                        Err(e) if is_absent(&e) => continue,
                        Err(e) => return Err(store_err("sweep", &shown, e)),
                    };
                    if meta.modified().is_ok_and(|t| t < cutoff) {
                        match fs::remove_file(entry.path()) {
                            Ok(()) => {
                                removed += 1;
                                swept = true;
                            }
                            Err(e) if is_absent(&e) => {}
                            Err(e) => return Err(store_err("sweep", &shown, e)),
                        }
                    }
                }
            }
            if swept {
                sync_dir(&dir).map_err(|e| store_err("sweep", &shown, e))?;
            }
        }
        Ok(removed)
    }
}

impl Store for LocalDir {
    fn get(&self, key: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
        check_local_key(key)?;
        if !self.parents_present("get", key)? {
            return Ok(None);
        }
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.root.join(key))
        {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(store_err("get", key, "the object is a symbolic link"))
            }
            Err(e) => return Err(store_err("get", key, e)),
        };
        let meta = file.metadata().map_err(|e| store_err("get", key, e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        if meta.len() > max_len {
            return Err(store_err(
                "get",
                key,
                format!("object of {} bytes exceeds {max_len}", meta.len()),
            ));
        }
        let len = usize::try_from(meta.len()).map_err(|e| store_err("get", key, e))?;
        let mut bytes = Vec::with_capacity(len);
        // the file may grow meanwhile: never read more than the cap
        Read::by_ref(&mut file)
            .take(max_len.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| store_err("get", key, e))?;
        if bytes.len() as u64 > max_len {
            return Err(store_err(
                "get",
                key,
                format!("object exceeds {max_len} bytes"),
            ));
        }
        Ok(Some(bytes))
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome> {
        let (outcome, dir) = self.link_new(key, bytes)?;
        sync_dir(&dir).map_err(|e| store_err("put", key, e))?;
        Ok(outcome)
    }

    fn put_if_absent_lazy(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome> {
        // The content was synced before the link: a name that survives a
        // crash never shows a torn object.
        Ok(self.link_new(key, bytes)?.0)
    }

    fn make_durable(&self, keys: &[String]) -> Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for key in keys {
            check_local_key(key)?;
            if let Some(parent) = self.root.join(key).parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        for d in dirs {
            sync_dir(&d).map_err(|e| store_err("sync", &d.display().to_string(), e))?;
        }
        Ok(())
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        check_local_key(key)?;
        let dir = self.make_parents("put", key)?;
        let tmp = self.write_temp("put", key, &dir, bytes)?;
        if let Err(e) = fs::rename(&tmp, self.root.join(key)) {
            let _ = fs::remove_file(&tmp);
            return Err(store_err("put", key, e));
        }
        sync_dir(&dir).map_err(|e| store_err("put", key, e))
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        check_local_key(key)?;
        if !self.parents_present("head", key)? {
            return Ok(None);
        }
        match fs::symlink_metadata(self.root.join(key)) {
            Ok(m) if m.file_type().is_symlink() => {
                Err(store_err("head", key, "the object is a symbolic link"))
            }
            Ok(m) if m.is_file() => Ok(Some(info_of(key, &m))),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(store_err("head", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        check_prefix(prefix)?;
        if prefix.split('/').any(|c| c.starts_with(TEMP_PREFIX)) {
            return Err(Error::InvalidKey(prefix.into()));
        }
        let start = match prefix.strip_suffix('/') {
            Some(p) => {
                // the prefix directory itself must not be a link either
                let probe = format!("{p}/x");
                if !self.parents_present("list", &probe)? {
                    return Ok(Vec::new());
                }
                self.root.join(p)
            }
            None => self.root.clone(),
        };
        let mut found = Vec::new();
        let mut dirs = vec![(start, prefix.to_string())];
        while let Some((dir, key_prefix)) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                // removed meanwhile
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(store_err("list", &key_prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| store_err("list", &key_prefix, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                let key = format!("{key_prefix}{name}");
                // names no key could spell are not objects
                if check_local_key(&key).is_err() {
                    continue;
                }
                // does not follow links: a link is neither a file nor a directory here
                let kind = entry
                    .file_type()
                    .map_err(|e| store_err("list", &key_prefix, e))?;
                if kind.is_dir() {
                    dirs.push((entry.path(), format!("{key}/")));
                } else if kind.is_file() {
                    match entry.metadata() {
                        Ok(m) => found.push(info_of(&key, &m)),
                        Err(e) if is_absent(&e) => {}
                        Err(e) => return Err(store_err("list", &key, e)),
                    }
                }
            }
        }
        Ok(found)
    }

    /// With `if_version`, the file is first renamed to a private name,
    /// then checked: a file rewritten meanwhile is linked back (unless the
    /// key was re-created in between, which then wins). Readers may see
    /// the object absent during that short window, never a wrong one; a
    /// crash inside it leaves the object under its `.tmp-del-` name, which
    /// [`LocalDir::sweep_temp`] later removes.
    fn delete(&self, key: &str, if_version: Option<&str>) -> Result<bool> {
        check_local_key(key)?;
        if !self.parents_present("delete", key)? {
            return Ok(false);
        }
        let path = self.root.join(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let Some(version) = if_version else {
            return match fs::remove_file(&path) {
                Ok(()) => {
                    sync_dir(&dir).map_err(|e| store_err("delete", key, e))?;
                    Ok(true)
                }
                Err(e) if is_absent(&e) => Ok(false),
                Err(e) => Err(store_err("delete", key, e)),
            };
        };
        let trash = dir.join(format!("{TEMP_PREFIX}del-{}", random_hex()?));
        match fs::rename(&path, &trash) {
            Ok(()) => {}
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(store_err("delete", key, e)),
        }
        let meta = fs::symlink_metadata(&trash).map_err(|e| store_err("delete", key, e))?;
        let deleted = meta.is_file() && version_of(&meta) == version;
        if !deleted {
            match fs::hard_link(&trash, &path) {
                // re-created meanwhile: the newer object stays
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    // keep the object under its name if at all possible
                    let _ = fs::rename(&trash, &path);
                    return Err(store_err("delete", key, e));
                }
            }
        }
        fs::remove_file(&trash).map_err(|e| store_err("delete", key, e))?;
        sync_dir(&dir).map_err(|e| store_err("delete", key, e))?;
        Ok(deleted)
    }

    fn now(&self) -> Result<u64> {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .map_err(|e| store_err("now", "", e))
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn sweep(&self) -> Result<u64> {
        self.sweep_temp()
    }
}
