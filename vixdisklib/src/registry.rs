//! The handle registry: open connections and disks by id, the pointers
//! this library handed out, and C strings in and out.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};

use disklib::api::{Connection, Disk, Library, OpenFlags};
use disklib::vix;

use crate::errors::fail;
use crate::types::VixError;

/// One queued asynchronous request.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct DiskEntry {
    /// `None` once closed, or for the moment Shrink / Defragment rewrite
    /// the file; I/O holds the read lock for its whole duration.
    pub(crate) disk: RwLock<Option<Disk>>,
    /// The connection and flags it was opened with, to reopen it.
    pub(crate) conn: Arc<ConnEntry>,
    pub(crate) flags: OpenFlags,
    pub(crate) path: String,
    pub(crate) local: bool,
    pub(crate) jobs: Mutex<Option<mpsc::Sender<Job>>>,
    pub(crate) pending: Arc<(Mutex<usize>, Condvar)>,
}

/// An open disk, borrowed for one call.
pub(crate) struct DiskRef<'a>(RwLockReadGuard<'a, Option<Disk>>);

impl std::ops::Deref for DiskRef<'_> {
    type Target = Disk;
    fn deref(&self) -> &Disk {
        // Built only around `Some` (see `DiskEntry::disk`).
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("checked in DiskEntry::disk"))
    }
}

impl DiskEntry {
    pub(crate) fn disk(&self) -> Result<DiskRef<'_>, VixError> {
        let g = self.disk.read().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            return Err(fail(vix::E_INVALID_HANDLE, "disk handle is closed"));
        }
        Ok(DiskRef(g))
    }
}

pub(crate) struct ConnEntry {
    pub(crate) conn: Connection,
    pub(crate) params: OwnedParams,
    pub(crate) local: bool,
}

#[derive(Clone, Default)]
pub(crate) struct OwnedParams {
    pub(crate) vmx: Option<String>,
    pub(crate) server: Option<String>,
    pub(crate) thumbprint: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) cookie: Option<String>,
    pub(crate) port: u32,
}

pub(crate) struct Global {
    pub(crate) lib: Library,
    pub(crate) conns: HashMap<usize, Arc<ConnEntry>>,
    pub(crate) disks: HashMap<usize, Arc<DiskEntry>>,
}

static STATE: OnceLock<Mutex<Option<Global>>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0x1000);
/// Pointers this library handed out, so Free functions refuse others.
static OWNED: OnceLock<Mutex<HashSet<usize>>> = OnceLock::new();

pub(crate) fn state() -> MutexGuard<'static, Option<Global>> {
    STATE
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn owned() -> MutexGuard<'static, HashSet<usize>> {
    OWNED
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

pub(crate) unsafe fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

pub(crate) fn new_id() -> usize {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn conn_of(id: usize) -> Result<Arc<ConnEntry>, VixError> {
    state()
        .as_ref()
        .and_then(|g| g.conns.get(&id).cloned())
        .ok_or_else(|| fail(vix::E_INVALID_HANDLE, "unknown or closed connection"))
}

pub(crate) fn disk_of(id: usize) -> Result<Arc<DiskEntry>, VixError> {
    state()
        .as_ref()
        .and_then(|g| g.disks.get(&id).cloned())
        .ok_or_else(|| fail(vix::E_INVALID_HANDLE, "unknown or closed disk handle"))
}

pub(crate) fn lib() -> Result<Library, VixError> {
    state()
        .as_ref()
        .map(|g| g.lib.clone())
        .ok_or_else(|| fail(vix::E_FAIL, "VixDiskLib_InitEx has not been called"))
}

pub(crate) fn free_owned_str(p: *mut c_char) {
    if !p.is_null() && owned().remove(&(p as usize)) {
        // SAFETY: made by CString::into_raw in this library.
        drop(unsafe { CString::from_raw(p) });
    }
}

pub(crate) fn give_str(s: &str) -> *mut c_char {
    match CString::new(s.replace('\0', " ")) {
        Ok(c) => {
            let p = c.into_raw();
            owned().insert(p as usize);
            p
        }
        Err(_) => std::ptr::null_mut(),
    }
}

pub(crate) fn local_conn(conn: usize) -> Result<Arc<ConnEntry>, VixError> {
    let c = conn_of(conn)?;
    if !c.local {
        return Err(fail(
            vix::E_NOT_SUPPORTED,
            "this operation needs a local connection",
        ));
    }
    Ok(c)
}

pub(crate) fn wait_disk(d: &DiskEntry) {
    let (m, cv) = &*d.pending;
    let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
    while *n > 0 {
        n = cv.wait(n).unwrap_or_else(|p| p.into_inner());
    }
}
