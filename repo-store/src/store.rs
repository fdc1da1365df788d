//! The storage a repository lives on, behind one small trait.
//!
//! Everything above this module speaks in object keys (`config`,
//! `chunks/ab/ab12…`, `indexes/…`); a [`Store`] maps them to files in a
//! directory ([`crate::local::LocalDir`]), objects in an S3-compatible
//! bucket (`repo_s3::S3Store`, in its own crate) or memory ([`MemStore`], for tests).
//!
//! What every implementation promises:
//! - an object is written whole or not at all, and is durable when the
//!   call returns `Ok` (a file system syncs the file and its directory);
//! - [`Store::put_if_absent`] is atomic: of two writers creating one key,
//!   exactly one sees [`PutOutcome::Created`];
//! - [`Store::list`] sees every object whose write returned before the
//!   listing started (read-after-write, as S3 has given since 2020);
//! - times are unix seconds from the store's own clock where it has one.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// An object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, unix seconds.
    pub modified: u64,
    /// A version tag that changes whenever the object is rewritten (an
    /// ETag, or a file's modification time in nanoseconds and inode).
    pub version: String,
}

/// What [`Store::put_if_absent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was created.
    Created,
    /// An object of that key already existed; nothing was written.
    Existed,
}

/// A place to keep objects. See the module doc for the guarantees.
pub trait Store: Send + Sync + fmt::Debug {
    /// The whole object, or `None` when absent. An object larger than
    /// `max_len` is an error (nothing of that size is allocated).
    fn get(&self, key: &str, max_len: u64) -> Result<Option<Vec<u8>>>;
    /// Creates the object unless the key exists.
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome>;
    /// Creates or atomically replaces the object.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// The object's listing entry, or `None` when absent.
    fn head(&self, key: &str) -> Result<Option<ObjectInfo>>;
    /// Every object whose key starts with `prefix` (a directory-like
    /// prefix ending in `/`), in no particular order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Deletes the object. With `if_version`, only while its version is
    /// still that one (as exactly as the store allows: see each
    /// implementation). Returns whether something was deleted; an absent
    /// object is not an error.
    fn delete(&self, key: &str, if_version: Option<&str>) -> Result<bool>;
    /// The store's clock, unix seconds.
    fn now(&self) -> Result<u64>;
    /// Where the store is, for messages (never with credentials).
    fn location(&self) -> String;
    /// [`Store::put_if_absent`], except that the object's *name* may
    /// become durable only at [`Store::make_durable`]; its content is
    /// durable before the name can appear at all. For the many chunks of
    /// a backup, whose names need to be durable only before an index
    /// names them.
    fn put_if_absent_lazy(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome> {
        self.put_if_absent(key, bytes)
    }
    /// Makes the names of these existing objects durable (a directory
    /// syncs the directories holding them; an object store has nothing to
    /// do). Called before anything durable names them.
    fn make_durable(&self, keys: &[String]) -> Result<()> {
        let _ = keys;
        Ok(())
    }
    /// Removes debris of interrupted writes (a directory's stale
    /// temporary files); GC calls it. Returns how many were removed.
    fn sweep(&self) -> Result<u64> {
        Ok(0)
    }
}

/// Checks an object key: non-empty `/`-separated components of
/// `[A-Za-z0-9._-]`, none of them `.` or `..`, at most 512 bytes.
/// Every store calls this before touching anything.
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidKey(key.into()))
    }
}

/// Checks a listing prefix: empty, or a valid key followed by `/`.
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    match prefix.strip_suffix('/') {
        Some(p) => check_key(p),
        None => Err(Error::InvalidKey(prefix.into())),
    }
}

#[derive(Debug, Clone)]
struct MemObject {
    bytes: Vec<u8>,
    modified: u64,
    version: u64,
}

/// An in-memory [`Store`] with a settable clock and fault injection, for
/// tests: [`MemStore::fail_after`] makes every operation fail after a
/// number of successful writes, which is how a writer "killed between two
/// storage operations" is simulated.
#[derive(Debug, Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, MemObject>>,
    clock: AtomicU64,
    versions: AtomicU64,
    /// Writes (put, put_if_absent, delete) still allowed; `u64::MAX`
    /// when no fault is armed.
    writes_left: AtomicU64,
    writes: AtomicU64,
}

impl MemStore {
    /// An empty store whose clock reads `now`.
    pub fn new(now: u64) -> Self {
        MemStore {
            clock: AtomicU64::new(now),
            writes_left: AtomicU64::new(u64::MAX),
            ..MemStore::default()
        }
    }

    /// Sets the clock.
    pub fn set_now(&self, now: u64) {
        self.clock.store(now, Ordering::SeqCst);
    }

    /// Advances the clock.
    pub fn advance(&self, seconds: u64) {
        self.clock.fetch_add(seconds, Ordering::SeqCst);
    }

    /// After `writes` more successful writes, every operation fails (the
    /// writer is "dead") until [`MemStore::heal`].
    pub fn fail_after(&self, writes: u64) {
        self.writes_left.store(writes, Ordering::SeqCst);
    }

    /// Disarms [`MemStore::fail_after`].
    pub fn heal(&self) {
        self.writes_left.store(u64::MAX, Ordering::SeqCst);
    }

    /// Writes done so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Every key and its bytes (for scans in tests).
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        objects
            .iter()
            .map(|(k, o)| (k.clone(), o.bytes.clone()))
            .collect()
    }

    /// Replaces an object's bytes in place, keeping its time (damage for tests).
    pub fn tamper(&self, key: &str, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        match objects.get_mut(key) {
            Some(o) => {
                f(&mut o.bytes);
                true
            }
            None => false,
        }
    }

    fn alive(&self, op: &'static str, key: &str) -> Result<()> {
        if self.writes_left.load(Ordering::SeqCst) == 0 {
            return Err(Error::Store {
                op,
                key: key.into(),
                message: "injected fault: the writer is dead".into(),
            });
        }
        Ok(())
    }

    fn write_done(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .writes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                if n == u64::MAX {
                    None
                } else {
                    Some(n.saturating_sub(1))
                }
            });
    }

    fn info(key: &str, o: &MemObject) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size: o.bytes.len() as u64,
            modified: o.modified,
            version: o.version.to_string(),
        }
    }

    fn new_object(&self, bytes: &[u8]) -> MemObject {
        MemObject {
            bytes: bytes.to_vec(),
            modified: self.clock.load(Ordering::SeqCst),
            version: self.versions.fetch_add(1, Ordering::SeqCst),
        }
    }
}

impl Store for MemStore {
    fn get(&self, key: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.alive("get", key)?;
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        match objects.get(key) {
            Some(o) if o.bytes.len() as u64 > max_len => Err(Error::Store {
                op: "get",
                key: key.into(),
                message: format!("object of {} bytes exceeds {max_len}", o.bytes.len()),
            }),
            Some(o) => Ok(Some(o.bytes.clone())),
            None => Ok(None),
        }
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome> {
        check_key(key)?;
        self.alive("put", key)?;
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        if objects.contains_key(key) {
            return Ok(PutOutcome::Existed);
        }
        let o = self.new_object(bytes);
        objects.insert(key.into(), o);
        self.write_done();
        Ok(PutOutcome::Created)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        check_key(key)?;
        self.alive("put", key)?;
        let o = self.new_object(bytes);
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        objects.insert(key.into(), o);
        self.write_done();
        Ok(())
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        check_key(key)?;
        self.alive("head", key)?;
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        Ok(objects.get(key).map(|o| Self::info(key, o)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        check_prefix(prefix)?;
        self.alive("list", prefix)?;
        let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| Self::info(k, o))
            .collect())
    }

    fn delete(&self, key: &str, if_version: Option<&str>) -> Result<bool> {
        check_key(key)?;
        self.alive("delete", key)?;
        let mut objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
        let matches = match (objects.get(key), if_version) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(o), Some(v)) => o.version.to_string() == v,
        };
        if matches {
            objects.remove(key);
            self.write_done();
        }
        Ok(matches)
    }

    fn now(&self) -> Result<u64> {
        Ok(self.clock.load(Ordering::SeqCst))
    }

    fn location(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in ["config", "chunks/ab/abcd", "indexes/x.1", "a-b_c.d"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a b", "a\0", "é"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("chunks/").is_ok());
        assert!(check_prefix("chunks").is_err());
        assert!(check_prefix("../").is_err());
    }

    #[test]
    fn mem_store_semantics_and_faults() {
        let s = MemStore::new(100);
        assert_eq!(s.put_if_absent("a/x", b"1").unwrap(), PutOutcome::Created);
        assert_eq!(s.put_if_absent("a/x", b"2").unwrap(), PutOutcome::Existed);
        assert_eq!(s.get("a/x", 10).unwrap().unwrap(), b"1");
        assert!(s.get("a/x", 0).is_err());
        let v = s.head("a/x").unwrap().unwrap();
        s.advance(5);
        s.put("a/x", b"3").unwrap();
        let w = s.head("a/x").unwrap().unwrap();
        assert_eq!(w.modified, 105);
        assert!(!s.delete("a/x", Some(&v.version)).unwrap());
        assert_eq!(s.list("a/").unwrap().len(), 1);
        assert!(s.list("b/").unwrap().is_empty());
        s.fail_after(1);
        s.put("a/y", b"").unwrap();
        assert!(s.put("a/z", b"").is_err());
        assert!(s.get("a/x", 10).is_err());
        s.heal();
        assert!(s.delete("a/x", Some(&w.version)).unwrap());
        assert_eq!(s.list("a/").unwrap().len(), 1);
    }
}
