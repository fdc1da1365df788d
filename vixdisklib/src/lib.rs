//! # vixdisklib
//!
//! `libvixDiskLib.so.8`: VMware's VixDiskLib C ABI implemented over
//! `disklib`, so that programs written against VDDK (nbdkit's vddk
//! plugin, virt-v2v, backup products) can switch by pointing at another
//! directory. `cargo xtask dist` lays out `target/dist/lib64/` and
//! `target/dist/include/vixDiskLib.h`.
//!
//! The rules of the C world are kept: no panic crosses the boundary (it
//! becomes `VIX_E_FAIL`); NULL or invalid arguments give
//! `VIX_E_INVALID_ARG`; handles are ids in a registry, never dereferenced,
//! so a closed or unknown handle gives `VIX_E_INVALID_HANDLE` (double close
//! included), never a use-after-free; strings and structs the library
//! returns are freed by the matching Free function; `ReadAsync` /
//! `WriteAsync` return `VIX_ASYNC` and call the completion callback
//! exactly once; `Wait` waits for all of a handle's outstanding requests.

#![allow(clippy::missing_safety_doc)]
#![allow(missing_docs)]
#![allow(non_snake_case)]

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};

use disklib::api::{Config, ConnectParams, Connection, Credentials, Disk, Library, OpenFlags};
use disklib::vix;
use disklib::Error;
use vmdk_format::create::AdapterType;

pub type VixError = u64;
pub type Bool = c_char;
pub type LogFunc = unsafe extern "C" fn(fmt: *const c_char, args: *mut c_void);
pub type ProgressFunc = Option<unsafe extern "C" fn(data: *mut c_void, percent: c_int) -> Bool>;
pub type CompletionCb = Option<unsafe extern "C" fn(data: *mut c_void, result: VixError)>;

unsafe extern "C" {
    fn vixrs_log(f: LogFunc, msg: *const c_char);
}

/// `VixDiskLibConnectParams` (128 bytes on x86-64).
#[repr(C)]
#[derive(Debug)]
pub struct ConnectParamsC {
    pub vmx_spec: *mut c_char,
    pub server_name: *mut c_char,
    pub thumb_print: *mut c_char,
    pub reserved1: std::ffi::c_long,
    pub cred_type: u32,
    pub creds: [*mut c_char; 3],
    pub port: u32,
    pub nfc_host_port: u32,
    pub reserved3: *mut c_char,
    pub reserved4: [c_char; 8],
    pub reserved5: *mut c_void,
    pub spec: [*mut c_char; 3],
    pub spec_type: u32,
}

/// `VixDiskLibGeometry`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Geometry {
    pub cylinders: u32,
    pub heads: u32,
    pub sectors: u32,
}

/// `VixDiskLibInfo` (64 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct InfoC {
    pub bios_geo: Geometry,
    pub phys_geo: Geometry,
    pub capacity: u64,
    pub adapter_type: u32,
    pub num_links: c_int,
    pub parent_file_name_hint: *mut c_char,
    pub uuid: *mut c_char,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
}

/// `VixDiskLibCreateParams` (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CreateParamsC {
    pub disk_type: u32,
    pub adapter_type: u32,
    pub hw_version: u16,
    pub capacity: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
}

/// One block of `VixDiskLibBlockList`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockC {
    pub offset: u64,
    pub length: u64,
}

/// `VixDiskLibBlockList`: a count then the blocks at offset 8.
#[repr(C)]
#[derive(Debug)]
pub struct BlockListC {
    pub num_blocks: u32,
    pub blocks: [BlockC; 0],
}

pub const CRED_UID: u32 = 1;
pub const SPEC_VSTORAGE_OBJECT: u32 = 1;
pub const CRED_SESSIONID: u32 = 2;
pub const FLAG_OPEN_UNBUFFERED: u32 = 1;
pub const FLAG_OPEN_SINGLE_LINK: u32 = 2;
pub const FLAG_OPEN_READ_ONLY: u32 = 4;
pub const FLAG_OPEN_COMPRESSION_ZLIB: u32 = 16;
pub const SECTOR: u64 = 512;

/// One queued asynchronous request.
type Job = Box<dyn FnOnce() + Send>;

struct DiskEntry {
    /// `None` once closed, or for the moment Shrink / Defragment rewrite
    /// the file; I/O holds the read lock for its whole duration.
    disk: RwLock<Option<Disk>>,
    /// The connection and flags it was opened with, to reopen it.
    conn: Arc<ConnEntry>,
    flags: OpenFlags,
    path: String,
    local: bool,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    pending: Arc<(Mutex<usize>, Condvar)>,
}

/// An open disk, borrowed for one call.
struct DiskRef<'a>(RwLockReadGuard<'a, Option<Disk>>);

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
    fn disk(&self) -> Result<DiskRef<'_>, VixError> {
        let g = self.disk.read().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            return Err(fail(vix::E_INVALID_HANDLE, "disk handle is closed"));
        }
        Ok(DiskRef(g))
    }
}

struct ConnEntry {
    conn: Connection,
    params: OwnedParams,
    local: bool,
}

#[derive(Clone, Default)]
struct OwnedParams {
    vmx: Option<String>,
    server: Option<String>,
    thumbprint: Option<String>,
    user: Option<String>,
    password: Option<String>,
    cookie: Option<String>,
    port: u32,
}

struct Global {
    lib: Library,
    conns: HashMap<usize, Arc<ConnEntry>>,
    disks: HashMap<usize, Arc<DiskEntry>>,
}

static STATE: OnceLock<Mutex<Option<Global>>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0x1000);
/// Pointers this library handed out, so Free functions refuse others.
static OWNED: OnceLock<Mutex<HashSet<usize>>> = OnceLock::new();

thread_local! {
    static LAST: RefCell<Option<(VixError, String)>> = const { RefCell::new(None) };
}

fn state() -> MutexGuard<'static, Option<Global>> {
    STATE
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn owned() -> MutexGuard<'static, HashSet<usize>> {
    OWNED
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The InitEx warning (else log) function, apart from `STATE` so that
/// reporting an error never needs the state lock a caller may hold.
static WARN: Mutex<Option<LogFunc>> = Mutex::new(None);

fn log_warn(msg: &str) {
    let f = *WARN.lock().unwrap_or_else(|p| p.into_inner());
    if let (Some(f), Ok(c)) = (f, CString::new(msg.replace('\0', " "))) {
        // SAFETY: `f` was given to InitEx as a VixDiskLib log function;
        // the shim builds the va_list it expects.
        unsafe { vixrs_log(f, c.as_ptr()) };
    }
}

fn fail(code: VixError, msg: impl Into<String>) -> VixError {
    let msg = msg.into();
    LAST.with(|l| *l.borrow_mut() = Some((code, msg.clone())));
    log_warn(&format!("VixDiskLib: {msg}"));
    code
}

fn from_err(e: impl Into<Error>) -> VixError {
    let e = e.into();
    let code = e.vix_code();
    fail(code, e.to_string())
}

/// Runs `f`, turning a panic into `VIX_E_FAIL`.
fn guard(f: impl FnOnce() -> VixError) -> VixError {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => fail(vix::E_FAIL, "internal error (caught panic)"),
    }
}

unsafe fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

fn new_id() -> usize {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn conn_of(id: usize) -> Result<Arc<ConnEntry>, VixError> {
    state()
        .as_ref()
        .and_then(|g| g.conns.get(&id).cloned())
        .ok_or_else(|| fail(vix::E_INVALID_HANDLE, "unknown or closed connection"))
}

fn disk_of(id: usize) -> Result<Arc<DiskEntry>, VixError> {
    state()
        .as_ref()
        .and_then(|g| g.disks.get(&id).cloned())
        .ok_or_else(|| fail(vix::E_INVALID_HANDLE, "unknown or closed disk handle"))
}

fn lib() -> Result<Library, VixError> {
    state()
        .as_ref()
        .map(|g| g.lib.clone())
        .ok_or_else(|| fail(vix::E_FAIL, "VixDiskLib_InitEx has not been called"))
}

macro_rules! tryv {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}

// ------------------------------------------------------------- library

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_InitEx(
    major: u32,
    _minor: u32,
    log: Option<LogFunc>,
    warn: Option<LogFunc>,
    _panic: Option<LogFunc>,
    _lib_dir: *const c_char,
    config_file: *const c_char,
) -> VixError {
    guard(|| {
        if major < 1 {
            return fail(vix::E_INVALID_ARG, "unsupported API version");
        }
        *WARN.lock().unwrap_or_else(|p| p.into_inner()) = warn.or(log);
        // SAFETY: a C string or NULL.
        let config = match unsafe { cstr(config_file) } {
            Some(p) if !p.is_empty() => match Config::load(Path::new(&p)) {
                Ok(c) => c,
                Err(e) => return from_err(e),
            },
            _ => Config::default(),
        };
        let unknown = config.unknown.clone();
        let mut st = state();
        *st = Some(Global {
            lib: Library::init(config),
            conns: HashMap::new(),
            disks: HashMap::new(),
        });
        drop(st);
        for k in unknown {
            log_warn(&format!(
                "VixDiskLib: unknown configuration key `{k}` ignored"
            ));
        }
        vix::OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Init(
    major: u32,
    minor: u32,
    log: Option<LogFunc>,
    warn: Option<LogFunc>,
    panic: Option<LogFunc>,
    lib_dir: *const c_char,
) -> VixError {
    // SAFETY: same contract as InitEx without a configuration file.
    unsafe { VixDiskLib_InitEx(major, minor, log, warn, panic, lib_dir, std::ptr::null()) }
}

#[no_mangle]
pub extern "C" fn VixDiskLib_Exit() {
    let _ = catch_unwind(|| {
        let g = state().take();
        if let Some(g) = g {
            for d in g.disks.values() {
                wait_disk(d);
            }
        }
        *WARN.lock().unwrap_or_else(|p| p.into_inner()) = None;
    });
}

#[no_mangle]
pub extern "C" fn VixDiskLib_ListTransportModes() -> *const c_char {
    TRANSPORT_MODES.as_ptr()
}

/// `disklib::api::list_transport_modes()` as a static C string (a unit
/// test keeps the two equal).
const TRANSPORT_MODES: &std::ffi::CStr = c"file:san:hotadd:nbdssl:nbd";

// ---------------------------------------------------------- connections

unsafe fn read_params(p: *const ConnectParamsC) -> Result<OwnedParams, VixError> {
    if p.is_null() {
        return Err(fail(vix::E_INVALID_ARG, "connection parameters are NULL"));
    }
    // SAFETY: the caller passes a valid VixDiskLibConnectParams.
    let p = unsafe { &*p };
    if p.spec_type == SPEC_VSTORAGE_OBJECT {
        return Err(fail(
            vix::E_NOT_SUPPORTED,
            "first-class disks (specType VSTORAGE_OBJECT) are not supported",
        ));
    }
    // SAFETY: each pointer is a C string or NULL.
    unsafe {
        let mut o = OwnedParams {
            vmx: cstr(p.vmx_spec),
            server: cstr(p.server_name).filter(|s| !s.is_empty()),
            thumbprint: cstr(p.thumb_print),
            port: p.port,
            ..OwnedParams::default()
        };
        match p.cred_type {
            CRED_UID => {
                o.user = cstr(p.creds[0]);
                o.password = cstr(p.creds[1]);
            }
            CRED_SESSIONID => {
                o.cookie = cstr(p.creds[0]);
                o.user = cstr(p.creds[1]);
            }
            _ => {}
        }
        Ok(o)
    }
}

fn to_params(o: &OwnedParams) -> Result<ConnectParams, VixError> {
    let Some(server) = &o.server else {
        return Ok(ConnectParams::local());
    };
    let server = if server.contains(':') || o.port == 0 {
        if server.contains(':') {
            server.clone()
        } else {
            format!("{server}:443")
        }
    } else {
        format!("{server}:{}", o.port)
    };
    let credentials = match (&o.cookie, &o.user, &o.password) {
        (Some(c), _, _) => Credentials::SessionCookie(c.as_str().into()),
        (None, Some(u), Some(p)) => Credentials::password(u, p),
        _ => return Err(fail(vix::E_INVALID_ARG, "no credentials")),
    };
    let vm = o
        .vmx
        .clone()
        .ok_or_else(|| fail(vix::E_INVALID_ARG, "vmxSpec (moref=vm-N) is required"))?;
    let mut p = ConnectParams::remote(
        &server,
        o.thumbprint.as_deref().unwrap_or_default(),
        credentials,
        &vm,
    );
    if o.thumbprint.as_deref().is_none_or(str::is_empty) {
        p.thumbprint = None;
    }
    Ok(p)
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_ConnectEx(
    params: *const ConnectParamsC,
    read_only: Bool,
    snapshot_ref: *const c_char,
    transport_modes: *const c_char,
    out: *mut usize,
) -> VixError {
    guard(|| {
        if out.is_null() {
            return fail(vix::E_INVALID_ARG, "connection out-pointer is NULL");
        }
        let lib = tryv!(lib());
        // SAFETY: as documented for ConnectEx.
        let owned = tryv!(unsafe { read_params(params) });
        let p = tryv!(to_params(&owned));
        // SAFETY: C strings or NULL.
        let (snap, modes) = unsafe { (cstr(snapshot_ref), cstr(transport_modes)) };
        let local = p.server.is_none();
        let conn = match Connection::connect(
            &lib,
            &p,
            read_only != 0,
            snap.as_deref().filter(|s| !s.is_empty()),
            modes.as_deref().filter(|s| !s.is_empty()),
        ) {
            Ok(c) => c,
            Err(e) => return from_err(e),
        };
        let id = new_id();
        if let Some(g) = state().as_mut() {
            g.conns.insert(
                id,
                Arc::new(ConnEntry {
                    conn,
                    params: owned,
                    local,
                }),
            );
        }
        // SAFETY: checked non-NULL above.
        unsafe { *out = id };
        vix::OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Connect(
    params: *const ConnectParamsC,
    out: *mut usize,
) -> VixError {
    // SAFETY: same contract.
    unsafe { VixDiskLib_ConnectEx(params, 0, std::ptr::null(), std::ptr::null(), out) }
}

#[no_mangle]
pub extern "C" fn VixDiskLib_Disconnect(conn: usize) -> VixError {
    guard(
        || match state().as_mut().and_then(|g| g.conns.remove(&conn)) {
            Some(_) => vix::OK,
            None => fail(vix::E_INVALID_HANDLE, "unknown or closed connection"),
        },
    )
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Cleanup(
    params: *const ConnectParamsC,
    cleaned: *mut u32,
    remaining: *mut u32,
) -> VixError {
    guard(|| {
        let lib = tryv!(lib());
        // SAFETY: as documented.
        let owned = tryv!(unsafe { read_params(params) });
        let p = tryv!(to_params(&owned));
        // Local connections have nothing to clean; remote ones detach
        // disks a crash left HotAdded to the proxy.
        let counts = if p.server.is_none() {
            Ok((0, 0))
        } else {
            Connection::connect(&lib, &p, true, None, None).and_then(|c| c.cleanup())
        };
        let (c, r) = match counts {
            Ok(x) => x,
            Err(e) => return from_err(e),
        };
        // SAFETY: optional out-pointers.
        unsafe {
            if !cleaned.is_null() {
                *cleaned = c;
            }
            if !remaining.is_null() {
                *remaining = r;
            }
        }
        vix::OK
    })
}

fn access(params: *const ConnectParamsC, identity: *const c_char, prepare: bool) -> VixError {
    guard(|| {
        let lib = tryv!(lib());
        // SAFETY: as documented.
        let owned = tryv!(unsafe { read_params(params) });
        let p = tryv!(to_params(&owned));
        // SAFETY: a C string or NULL.
        let Some(id) = (unsafe { cstr(identity) }) else {
            return fail(vix::E_INVALID_ARG, "identity is NULL");
        };
        let conn = match Connection::connect(&lib, &p, true, None, None) {
            Ok(c) => c,
            Err(e) => return from_err(e),
        };
        let r = if prepare {
            conn.prepare_for_access(&id)
        } else {
            conn.end_access(&id)
        };
        r.map_or_else(from_err, |()| vix::OK)
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_PrepareForAccess(
    params: *const ConnectParamsC,
    identity: *const c_char,
) -> VixError {
    access(params, identity, true)
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_EndAccess(
    params: *const ConnectParamsC,
    identity: *const c_char,
) -> VixError {
    access(params, identity, false)
}

#[no_mangle]
pub extern "C" fn VixDiskLib_AllocateConnectParams() -> *mut ConnectParamsC {
    // SAFETY: calloc gives zeroed memory: all pointers NULL.
    let p =
        unsafe { libc::calloc(1, std::mem::size_of::<ConnectParamsC>()) }.cast::<ConnectParamsC>();
    if !p.is_null() {
        owned().insert(p as usize);
    }
    p
}

fn free_owned_str(p: *mut c_char) {
    if !p.is_null() && owned().remove(&(p as usize)) {
        // SAFETY: made by CString::into_raw in this library.
        drop(unsafe { CString::from_raw(p) });
    }
}

fn give_str(s: &str) -> *mut c_char {
    match CString::new(s.replace('\0', " ")) {
        Ok(c) => {
            let p = c.into_raw();
            owned().insert(p as usize);
            p
        }
        Err(_) => std::ptr::null_mut(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeConnectParams(p: *mut ConnectParamsC) {
    let _ = catch_unwind(|| {
        if p.is_null() || !owned().remove(&(p as usize)) {
            return;
        }
        // SAFETY: a struct this library allocated; its strings, when ours,
        // are freed; strings the caller put there are the caller's.
        unsafe {
            let r = &*p;
            for s in [
                r.vmx_spec,
                r.server_name,
                r.thumb_print,
                r.creds[0],
                r.creds[1],
                r.creds[2],
            ] {
                free_owned_str(s);
            }
            libc::free(p.cast());
        }
    });
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_GetConnectParams(
    conn: usize,
    out: *mut *mut ConnectParamsC,
) -> VixError {
    guard(|| {
        if out.is_null() {
            return fail(vix::E_INVALID_ARG, "out-pointer is NULL");
        }
        let c = tryv!(conn_of(conn));
        let p = VixDiskLib_AllocateConnectParams();
        if p.is_null() {
            return fail(vix::E_OUT_OF_MEMORY, "out of memory");
        }
        let o = &c.params;
        let s = |v: &Option<String>| v.as_deref().map_or(std::ptr::null_mut(), give_str);
        // SAFETY: `p` is ours, zeroed; `out` checked.
        unsafe {
            (*p).vmx_spec = s(&o.vmx);
            (*p).server_name = s(&o.server);
            (*p).thumb_print = s(&o.thumbprint);
            (*p).port = o.port;
            if o.cookie.is_some() {
                (*p).cred_type = CRED_SESSIONID;
                (*p).creds[1] = s(&o.user);
            } else {
                (*p).cred_type = CRED_UID;
                (*p).creds[0] = s(&o.user);
                // The password is not handed back.
            }
            *out = p;
        }
        vix::OK
    })
}

// ---------------------------------------------------------------- disks

fn disk_type(t: u32) -> Option<vmdk_file::create::DiskType> {
    use vmdk_file::create::DiskType as D;
    Some(match t {
        1 => D::MonolithicSparse,
        2 => D::MonolithicFlat,
        3 => D::TwoGbMaxExtentSparse,
        4 => D::TwoGbMaxExtentFlat,
        5 => D::Vmfs,
        6 => D::StreamOptimized,
        7 => D::VmfsThin,
        _ => return None,
    })
}

fn adapter(a: u32) -> AdapterType {
    match a {
        1 => AdapterType::Ide,
        2 => AdapterType::BusLogic,
        _ => AdapterType::LsiLogic,
    }
}

fn progress_done(f: ProgressFunc, data: *mut c_void) {
    if let Some(f) = f {
        // SAFETY: a VixDiskLibProgressFunc with its opaque data.
        unsafe { f(data, 100) };
    }
}

/// Create parameters for Create (a capacity is required).
fn create_options(p: *const CreateParamsC) -> Result<vmdk_file::create::CreateOptions, VixError> {
    create_options_with(p, true)
}

/// `VixDiskLibCreateParams` as disklib's options. Clone takes the
/// capacity from its source, so it does not require one.
fn create_options_with(
    p: *const CreateParamsC,
    need_capacity: bool,
) -> Result<vmdk_file::create::CreateOptions, VixError> {
    if p.is_null() {
        return Err(fail(vix::E_INVALID_ARG, "create parameters are NULL"));
    }
    // SAFETY: a valid VixDiskLibCreateParams.
    let p = unsafe { *p };
    let t = disk_type(p.disk_type).ok_or_else(|| {
        fail(
            vix::E_INVALID_ARG,
            format!("unknown disk type {}", p.disk_type),
        )
    })?;
    let cap = if need_capacity {
        if p.capacity == 0 {
            return Err(fail(vix::E_INVALID_ARG, "capacity is 0"));
        }
        p.capacity
            .checked_mul(SECTOR)
            .ok_or_else(|| fail(vix::E_INVALID_ARG, "capacity too large"))?
    } else {
        0
    };
    Ok(vmdk_file::create::CreateOptions {
        disk_type: t,
        capacity: cap,
        adapter: adapter(p.adapter_type),
        hw_version: u32::from(p.hw_version).max(4),
        zeroed_grain: true,
    })
}

fn local_conn(conn: usize) -> Result<Arc<ConnEntry>, VixError> {
    let c = conn_of(conn)?;
    if !c.local {
        return Err(fail(
            vix::E_NOT_SUPPORTED,
            "this operation needs a local connection",
        ));
    }
    Ok(c)
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Create(
    conn: usize,
    path: *const c_char,
    params: *const CreateParamsC,
    progress: ProgressFunc,
    data: *mut c_void,
) -> VixError {
    guard(|| {
        tryv!(local_conn(conn));
        // SAFETY: a C string or NULL.
        let Some(path) = (unsafe { cstr(path) }) else {
            return fail(vix::E_INVALID_ARG, "path is NULL");
        };
        let o = tryv!(create_options(params));
        match vmdk_file::create::create(Path::new(&path), &o) {
            Ok(()) => {
                progress_done(progress, data);
                vix::OK
            }
            Err(e) => from_err(e),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Open(
    conn: usize,
    path: *const c_char,
    flags: u32,
    out: *mut usize,
) -> VixError {
    guard(|| {
        if out.is_null() {
            return fail(vix::E_INVALID_ARG, "handle out-pointer is NULL");
        }
        let c = tryv!(conn_of(conn));
        // SAFETY: a C string or NULL.
        let Some(path) = (unsafe { cstr(path) }) else {
            return fail(vix::E_INVALID_ARG, "path is NULL");
        };
        let f = OpenFlags {
            read_only: flags & FLAG_OPEN_READ_ONLY != 0,
            compression: flags & FLAG_OPEN_COMPRESSION_ZLIB != 0,
            single_link: flags & FLAG_OPEN_SINGLE_LINK != 0,
        };
        let disk = match c.conn.open(&path, f) {
            Ok(d) => d,
            Err(e) => return from_err(e),
        };
        let id = new_id();
        let entry = DiskEntry {
            disk: RwLock::new(Some(disk)),
            conn: Arc::clone(&c),
            flags: f,
            path,
            local: c.local,
            jobs: Mutex::new(None),
            pending: Arc::new((Mutex::new(0), Condvar::new())),
        };
        match state().as_mut() {
            Some(g) => {
                g.disks.insert(id, Arc::new(entry));
            }
            None => return fail(vix::E_FAIL, "library exited"),
        }
        // SAFETY: checked non-NULL.
        unsafe { *out = id };
        vix::OK
    })
}

fn wait_disk(d: &DiskEntry) {
    let (m, cv) = &*d.pending;
    let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
    while *n > 0 {
        n = cv.wait(n).unwrap_or_else(|p| p.into_inner());
    }
}

#[no_mangle]
pub extern "C" fn VixDiskLib_Close(handle: usize) -> VixError {
    guard(|| {
        let Some(d) = state().as_mut().and_then(|g| g.disks.remove(&handle)) else {
            return fail(vix::E_INVALID_HANDLE, "unknown or closed disk handle");
        };
        wait_disk(&d);
        d.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let disk = d.disk.write().unwrap_or_else(|p| p.into_inner()).take();
        match disk.map(Disk::close) {
            Some(Err(e)) => from_err(e),
            _ => vix::OK,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_GetInfo(handle: usize, out: *mut *mut InfoC) -> VixError {
    guard(|| {
        if out.is_null() {
            return fail(vix::E_INVALID_ARG, "out-pointer is NULL");
        }
        let d = tryv!(disk_of(handle));
        let i = match tryv!(d.disk()).info() {
            Ok(i) => i,
            Err(e) => return from_err(e),
        };
        let g = Geometry {
            cylinders: i.geometry.0,
            heads: i.geometry.1,
            sectors: i.geometry.2,
        };
        let info = Box::new(InfoC {
            bios_geo: g,
            phys_geo: g,
            capacity: i.capacity_sectors,
            adapter_type: i.adapter_type,
            num_links: i.num_links as c_int,
            parent_file_name_hint: i
                .parent_file_name_hint
                .as_deref()
                .map_or(std::ptr::null_mut(), give_str),
            uuid: i.uuid.as_deref().map_or(std::ptr::null_mut(), give_str),
            logical_sector_size: 512,
            physical_sector_size: 512,
        });
        let p = Box::into_raw(info);
        owned().insert(p as usize);
        // SAFETY: checked non-NULL.
        unsafe { *out = p };
        vix::OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeInfo(info: *mut InfoC) {
    let _ = catch_unwind(|| {
        if info.is_null() || !owned().remove(&(info as usize)) {
            return;
        }
        // SAFETY: made by Box::into_raw above; its strings by give_str.
        let b = unsafe { Box::from_raw(info) };
        free_owned_str(b.parent_file_name_hint);
        free_owned_str(b.uuid);
    });
}

#[no_mangle]
pub extern "C" fn VixDiskLib_GetTransportMode(handle: usize) -> *const c_char {
    let r = catch_unwind(|| match disk_of(handle) {
        Ok(d) => match d.disk().map(|k| k.transport_mode()).unwrap_or("") {
            "file" => c"file".as_ptr(),
            "nbd" => c"nbd".as_ptr(),
            "nbdssl" => c"nbdssl".as_ptr(),
            "san" => c"san".as_ptr(),
            "hotadd" => c"hotadd".as_ptr(),
            _ => std::ptr::null(),
        },
        Err(_) => std::ptr::null(),
    });
    r.unwrap_or(std::ptr::null())
}

fn byte_range(start: u64, count: u64) -> Result<(u64, usize), VixError> {
    let off = start
        .checked_mul(SECTOR)
        .ok_or_else(|| fail(vix::E_INVALID_ARG, "sector out of range"))?;
    let len = count
        .checked_mul(SECTOR)
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| fail(vix::E_INVALID_ARG, "too many sectors"))?;
    Ok((off, len))
}

/// Reads `len` bytes at `off` into the caller's buffer, or writes them
/// from it.
fn transfer(d: &DiskEntry, off: u64, buf: *mut u8, len: usize, write: bool) -> VixError {
    let disk = match d.disk() {
        Ok(k) => k,
        Err(code) => return code,
    };
    // SAFETY: the caller's buffer holds `len` bytes (checked non-NULL by
    // the callers) and stays valid for the call; a write only reads it.
    let res = if write {
        disk.write_at(off, unsafe { std::slice::from_raw_parts(buf, len) })
    } else {
        disk.read_at(off, unsafe { std::slice::from_raw_parts_mut(buf, len) })
    };
    res.map_or_else(from_err, |()| vix::OK)
}

fn sync_io(handle: usize, start: u64, count: u64, buf: *mut u8, write: bool) -> VixError {
    guard(|| {
        if buf.is_null() {
            return fail(vix::E_INVALID_ARG, "buffer is NULL");
        }
        let d = tryv!(disk_of(handle));
        let (off, len) = tryv!(byte_range(start, count));
        transfer(&d, off, buf, len, write)
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Read(
    handle: usize,
    start: u64,
    count: u64,
    buf: *mut u8,
) -> VixError {
    sync_io(handle, start, count, buf, false)
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Write(
    handle: usize,
    start: u64,
    count: u64,
    buf: *const u8,
) -> VixError {
    sync_io(handle, start, count, buf.cast_mut(), true)
}

/// A caller's buffer and callback data, moved to the worker thread: the
/// caller guarantees both live until the callback runs.
struct SendPtr(*mut u8, *mut c_void);
// SAFETY: VixDiskLib's contract: the buffer and data stay valid and
// untouched by the caller until the completion callback.
unsafe impl Send for SendPtr {}

fn submit(d: &Arc<DiskEntry>, job: Job) {
    *d.pending.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    let mut g = d.jobs.lock().unwrap_or_else(|p| p.into_inner());
    let tx = g.get_or_insert_with(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for job in rx {
                job();
            }
        });
        tx
    });
    if let Err(mpsc::SendError(job)) = tx.send(job) {
        job();
    }
}

fn async_io(
    handle: usize,
    start: u64,
    count: u64,
    buf: *mut u8,
    cb: CompletionCb,
    data: *mut c_void,
    write: bool,
) -> VixError {
    guard(|| {
        if buf.is_null() || cb.is_none() {
            return fail(vix::E_INVALID_ARG, "buffer or callback is NULL");
        }
        let d = tryv!(disk_of(handle));
        let (off, len) = tryv!(byte_range(start, count));
        let p = SendPtr(buf, data);
        let d2 = Arc::clone(&d);
        submit(
            &d,
            Box::new(move || {
                let p = p;
                let r = catch_unwind(AssertUnwindSafe(|| {
                    // See SendPtr: the caller keeps the buffer valid.
                    transfer(&d2, off, p.0, len, write)
                }))
                .unwrap_or(vix::E_FAIL);
                if let Some(cb) = cb {
                    // SAFETY: the caller's completion callback, exactly once.
                    unsafe { cb(p.1, r) };
                }
                let (m, cv) = &*d2.pending;
                let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
                *n -= 1;
                if *n == 0 {
                    cv.notify_all();
                }
            }),
        );
        vix::ASYNC
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_ReadAsync(
    handle: usize,
    start: u64,
    count: u64,
    buf: *mut u8,
    cb: CompletionCb,
    data: *mut c_void,
) -> VixError {
    async_io(handle, start, count, buf, cb, data, false)
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_WriteAsync(
    handle: usize,
    start: u64,
    count: u64,
    buf: *const u8,
    cb: CompletionCb,
    data: *mut c_void,
) -> VixError {
    async_io(handle, start, count, buf.cast_mut(), cb, data, true)
}

#[no_mangle]
pub extern "C" fn VixDiskLib_Wait(handle: usize) -> VixError {
    guard(|| {
        let d = tryv!(disk_of(handle));
        wait_disk(&d);
        vix::OK
    })
}

#[no_mangle]
pub extern "C" fn VixDiskLib_Flush(handle: usize) -> VixError {
    guard(|| {
        let d = tryv!(disk_of(handle));
        wait_disk(&d);
        let disk = tryv!(d.disk());
        disk.flush().map_or_else(from_err, |()| vix::OK)
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_QueryAllocatedBlocks(
    handle: usize,
    start: u64,
    count: u64,
    chunk: u64,
    out: *mut *mut BlockListC,
) -> VixError {
    guard(|| {
        if out.is_null() {
            return fail(vix::E_INVALID_ARG, "out-pointer is NULL");
        }
        if chunk < 128 || count / chunk.max(1) > 512 * 1024 {
            return fail(
                vix::E_INVALID_ARG,
                "chunk size under 128 sectors or too many chunks",
            );
        }
        let d = tryv!(disk_of(handle));
        let blocks = match tryv!(d.disk()).query_allocated_blocks(start, count, chunk) {
            Ok(b) => b,
            Err(e) => return from_err(e),
        };
        let size = 8 + blocks.len() * std::mem::size_of::<BlockC>();
        // SAFETY: a fresh allocation large enough for the header and blocks.
        let p = unsafe { libc::calloc(1, size) }.cast::<BlockListC>();
        if p.is_null() {
            return fail(vix::E_OUT_OF_MEMORY, "out of memory");
        }
        // SAFETY: `p` has room for `blocks.len()` blocks after the count.
        unsafe {
            (*p).num_blocks = blocks.len() as u32;
            let first = p.cast::<u8>().add(8).cast::<BlockC>();
            for (i, &(s, n)) in blocks.iter().enumerate() {
                first.add(i).write(BlockC {
                    offset: s,
                    length: n,
                });
            }
            *out = p;
        }
        owned().insert(p as usize);
        vix::OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeBlockList(list: *mut BlockListC) -> VixError {
    guard(|| {
        if list.is_null() || !owned().remove(&(list as usize)) {
            return fail(vix::E_INVALID_ARG, "not a block list from this library");
        }
        // SAFETY: allocated with calloc above.
        unsafe { libc::free(list.cast()) };
        vix::OK
    })
}

/// VixDiskLib names DDB keys without the descriptor's `ddb.` prefix
/// (`adapterType`, `geometry.sectors`, `uuid`); a prefixed key is taken
/// as is.
fn ddb_key(key: &str) -> String {
    if key.starts_with("ddb.") {
        key.to_string()
    } else {
        format!("ddb.{key}")
    }
}

unsafe fn copy_out(s: &[u8], buf: *mut c_char, len: usize, required: *mut usize) -> VixError {
    // SAFETY: optional out-pointer.
    unsafe {
        if !required.is_null() {
            *required = s.len();
        }
    }
    if buf.is_null() || len < s.len() {
        return fail(vix::E_BUFFER_TOOSMALL, format!("{} bytes needed", s.len()));
    }
    // SAFETY: the caller's buffer holds `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len()) };
    vix::OK
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_ReadMetadata(
    handle: usize,
    key: *const c_char,
    buf: *mut c_char,
    len: usize,
    required: *mut usize,
) -> VixError {
    guard(|| {
        let d = tryv!(disk_of(handle));
        // SAFETY: a C string or NULL.
        let Some(key) = (unsafe { cstr(key) }) else {
            return fail(vix::E_INVALID_ARG, "key is NULL");
        };
        let disk = tryv!(d.disk());
        match disk.read_metadata(&ddb_key(&key)) {
            Ok(Some(v)) => {
                let mut bytes = v.into_bytes();
                bytes.push(0);
                // SAFETY: as documented.
                unsafe { copy_out(&bytes, buf, len, required) }
            }
            Ok(None) => fail(vix::E_DISK_KEY_NOTFOUND, format!("no key {key}")),
            Err(e) => from_err(e),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_WriteMetadata(
    handle: usize,
    key: *const c_char,
    val: *const c_char,
) -> VixError {
    guard(|| {
        let d = tryv!(disk_of(handle));
        // SAFETY: C strings or NULL.
        let (Some(k), Some(v)) = (unsafe { cstr(key) }, unsafe { cstr(val) }) else {
            return fail(vix::E_INVALID_ARG, "key or value is NULL");
        };
        let disk = tryv!(d.disk());
        disk.write_metadata(&ddb_key(&k), &v)
            .map_or_else(from_err, |()| vix::OK)
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_GetMetadataKeys(
    handle: usize,
    keys: *mut c_char,
    max: usize,
    required: *mut usize,
) -> VixError {
    guard(|| {
        let d = tryv!(disk_of(handle));
        let disk = tryv!(d.disk());
        match disk.metadata_keys() {
            Ok(list) => {
                let mut bytes = Vec::new();
                for k in list {
                    bytes.extend_from_slice(k.strip_prefix("ddb.").unwrap_or(&k).as_bytes());
                    bytes.push(0);
                }
                bytes.push(0);
                // SAFETY: as documented.
                unsafe { copy_out(&bytes, keys, max, required) }
            }
            Err(e) => from_err(e),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Unlink(conn: usize, path: *const c_char) -> VixError {
    guard(|| {
        tryv!(local_conn(conn));
        // SAFETY: a C string or NULL.
        let Some(p) = (unsafe { cstr(path) }) else {
            return fail(vix::E_INVALID_ARG, "path is NULL");
        };
        vmdk_file::create::delete(Path::new(&p)).map_or_else(from_err, |()| vix::OK)
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Grow(
    conn: usize,
    path: *const c_char,
    capacity: u64,
    _update_geometry: Bool,
    progress: ProgressFunc,
    data: *mut c_void,
) -> VixError {
    guard(|| {
        tryv!(local_conn(conn));
        // SAFETY: a C string or NULL.
        let Some(p) = (unsafe { cstr(path) }) else {
            return fail(vix::E_INVALID_ARG, "path is NULL");
        };
        let Some(bytes) = capacity.checked_mul(SECTOR) else {
            return fail(vix::E_INVALID_ARG, "capacity too large");
        };
        match vmdk_file::maintain::grow(Path::new(&p), bytes) {
            Ok(()) => {
                progress_done(progress, data);
                vix::OK
            }
            Err(e) => from_err(e),
        }
    })
}

/// Shrink and Defragment: our compaction rewrites a sparse file with its
/// grains in order and zero grains dropped, which does both. It runs on
/// the closed file, so the handle must be the file's only one; the disk
/// is reopened afterwards whatever happened.
fn compact_handle(handle: usize, progress: ProgressFunc, data: *mut c_void) -> VixError {
    guard(|| {
        let d = tryv!(disk_of(handle));
        if !d.local {
            return fail(vix::E_NOT_SUPPORTED, "shrinking a remote disk");
        }
        if d.flags.read_only || d.conn.conn.is_read_only() {
            return fail(vix::E_FILE_READ_ONLY, "the disk was opened read-only");
        }
        let shared = state().as_ref().is_some_and(|g| {
            g.disks
                .iter()
                .any(|(id, o)| *id != handle && o.path == d.path)
        });
        if shared {
            return fail(
                vix::E_OBJECT_IS_BUSY,
                format!("{} is open through another handle", d.path),
            );
        }
        wait_disk(&d);
        let mut slot = d.disk.write().unwrap_or_else(|p| p.into_inner());
        let Some(disk) = slot.take() else {
            return fail(vix::E_INVALID_HANDLE, "disk handle is closed");
        };
        if let Err(e) = disk.close() {
            let code = from_err(e);
            if let Ok(again) = d.conn.conn.open(&d.path, d.flags) {
                *slot = Some(again);
            }
            return code;
        }
        let compacted = vmdk_file::maintain::compact(Path::new(&d.path));
        match d.conn.conn.open(&d.path, d.flags) {
            Ok(again) => *slot = Some(again),
            Err(e) => return from_err(e),
        }
        match compacted {
            Ok(_) => {
                progress_done(progress, data);
                vix::OK
            }
            Err(e) => from_err(e),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Shrink(
    handle: usize,
    progress: ProgressFunc,
    data: *mut c_void,
) -> VixError {
    compact_handle(handle, progress, data)
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Defragment(
    handle: usize,
    progress: ProgressFunc,
    data: *mut c_void,
) -> VixError {
    compact_handle(handle, progress, data)
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Rename(src: *const c_char, dst: *const c_char) -> VixError {
    guard(|| {
        // SAFETY: C strings or NULL.
        let (Some(s), Some(d)) = (unsafe { cstr(src) }, unsafe { cstr(dst) }) else {
            return fail(vix::E_INVALID_ARG, "path is NULL");
        };
        vmdk_file::create::rename(Path::new(&s), Path::new(&d)).map_or_else(from_err, |()| vix::OK)
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_CreateChild(
    handle: usize,
    child: *const c_char,
    _disk_type: u32,
    progress: ProgressFunc,
    data: *mut c_void,
) -> VixError {
    guard(|| {
        let d = tryv!(disk_of(handle));
        if !d.local {
            return fail(vix::E_NOT_SUPPORTED, "children of remote disks");
        }
        // SAFETY: a C string or NULL.
        let Some(c) = (unsafe { cstr(child) }) else {
            return fail(vix::E_INVALID_ARG, "path is NULL");
        };
        match vmdk_file::maintain::create_child(Path::new(&d.path), Path::new(&c)) {
            Ok(()) => {
                progress_done(progress, data);
                vix::OK
            }
            Err(e) => from_err(e),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Clone(
    dst_conn: usize,
    dst: *const c_char,
    src_conn: usize,
    src: *const c_char,
    params: *const CreateParamsC,
    progress: ProgressFunc,
    data: *mut c_void,
    overwrite: Bool,
) -> VixError {
    guard(|| {
        tryv!(local_conn(dst_conn));
        let sc = tryv!(conn_of(src_conn));
        // SAFETY: C strings or NULL.
        let (Some(d), Some(s)) = (unsafe { cstr(dst) }, unsafe { cstr(src) }) else {
            return fail(vix::E_INVALID_ARG, "path is NULL");
        };
        let mut o = if params.is_null() {
            vmdk_file::create::CreateOptions::new(vmdk_file::create::DiskType::MonolithicSparse, 0)
        } else {
            tryv!(create_options_with(params, false))
        };
        o.capacity = 0;
        let dpath = PathBuf::from(&d);
        if dpath.exists() {
            if overwrite == 0 {
                return fail(vix::E_FILE_ALREADY_EXISTS, format!("{d} exists"));
            }
            if let Err(e) = vmdk_file::create::delete(&dpath) {
                return from_err(e);
            }
        }
        let mut report = |done: u64, total: u64| {
            if let (Some(f), Some(pct)) = (progress, (done * 100).checked_div(total)) {
                // SAFETY: the caller's progress function with its data.
                unsafe { f(data, pct.min(100) as c_int) };
            }
        };
        let r = if sc.local {
            match vmdk_file::local::LocalDisk::open(&s, &Default::default()) {
                Ok(src) => vmdk_file::convert::convert(
                    &vmdk_file::convert::Source::Disk(&src),
                    &dpath,
                    &vmdk_file::convert::Target::Disk(o),
                    &mut report,
                )
                .map_err(Error::from),
                Err(e) => Err(e.into()),
            }
        } else {
            clone_remote(&sc, &s, &dpath, o, &mut report)
        };
        match r {
            Ok(_) => {
                progress_done(progress, data);
                vix::OK
            }
            Err(e) => from_err(e),
        }
    })
}

/// Clone from a remote disk: its allocated blocks are read over the
/// connection's transport into a local sparse or flat disk; other types
/// go through a temporary sparse copy and a local conversion.
fn clone_remote(
    sc: &ConnEntry,
    src: &str,
    dst: &Path,
    mut o: vmdk_file::create::CreateOptions,
    report: &mut dyn FnMut(u64, u64),
) -> Result<u64, Error> {
    use vmdk_file::create::DiskType;
    let disk = sc.conn.open(
        src,
        OpenFlags {
            read_only: true,
            ..OpenFlags::default()
        },
    )?;
    let capacity = disk.capacity();
    o.capacity = capacity;
    let direct = matches!(
        o.disk_type,
        DiskType::MonolithicSparse
            | DiskType::MonolithicFlat
            | DiskType::TwoGbMaxExtentSparse
            | DiskType::TwoGbMaxExtentFlat
            | DiskType::Vmfs
            | DiskType::VmfsThin
    );
    let target = if direct {
        dst.to_path_buf()
    } else {
        let mut t = dst.as_os_str().to_owned();
        t.push(".clone-tmp.vmdk");
        PathBuf::from(t)
    };
    let mut sparse = o.clone();
    if !direct {
        sparse.disk_type = DiskType::MonolithicSparse;
    }
    vmdk_file::create::create(&target, &sparse)?;
    let copied = (|| -> Result<u64, Error> {
        let out = vmdk_file::local::LocalDisk::open(
            &target,
            &vmdk_file::local::OpenOptions {
                writable: true,
                ..Default::default()
            },
        )?;
        let sectors = capacity / SECTOR;
        let whole = sectors / 128 * 128;
        let mut ranges = if whole > 0 {
            disk.query_allocated_blocks(0, whole, 128)?
        } else {
            Vec::new()
        };
        if whole < sectors {
            ranges.push((whole, sectors - whole));
        }
        let total: u64 = ranges.iter().map(|r| r.1 * SECTOR).sum();
        let mut done = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for (start, count) in ranges {
            let (mut off, end) = (start * SECTOR, (start + count) * SECTOR);
            while off < end {
                let n = (end - off).min(buf.len() as u64) as usize;
                disk.read_at(off, &mut buf[..n])?;
                if buf[..n].iter().any(|&b| b != 0) {
                    out.write_at(off, &buf[..n])?;
                }
                off += n as u64;
                done += n as u64;
                report(done, total);
            }
        }
        out.close()?;
        Ok(done)
    })();
    let copied = match copied {
        Ok(n) => n,
        Err(e) => {
            let _ = vmdk_file::create::delete(&target);
            return Err(e);
        }
    };
    if direct {
        return Ok(copied);
    }
    let r = vmdk_file::local::LocalDisk::open(&target, &Default::default()).and_then(|t| {
        vmdk_file::convert::convert(
            &vmdk_file::convert::Source::Disk(&t),
            dst,
            &vmdk_file::convert::Target::Disk(o),
            &mut |_, _| {},
        )
    });
    let _ = vmdk_file::create::delete(&target);
    Ok(r?)
}

#[no_mangle]
pub extern "C" fn VixDiskLib_IsAttachPossible(parent: usize, child: usize) -> VixError {
    guard(|| {
        let p = tryv!(disk_of(parent));
        let c = tryv!(disk_of(child));
        if !p.local || !c.local {
            return fail(vix::E_NOT_SUPPORTED, "attaching remote disks");
        }
        if tryv!(p.disk()).capacity() != tryv!(c.disk()).capacity() {
            return fail(
                vix::E_DISK_CAPACITY_MISMATCH,
                "parent and child capacities differ",
            );
        }
        vix::OK
    })
}

#[no_mangle]
pub extern "C" fn VixDiskLib_Attach(parent: usize, child: usize) -> VixError {
    guard(|| {
        let r = VixDiskLib_IsAttachPossible(parent, child);
        if r != vix::OK {
            return r;
        }
        let p = tryv!(disk_of(parent));
        let c = tryv!(disk_of(child));
        vmdk_file::maintain::set_parent(Path::new(&c.path), Path::new(&p.path))
            .map_or_else(from_err, |()| vix::OK)
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_SpaceNeededForClone(
    handle: usize,
    disk_type_code: u32,
    needed: *mut u64,
) -> VixError {
    guard(|| {
        if needed.is_null() {
            return fail(vix::E_INVALID_ARG, "out-pointer is NULL");
        }
        let d = tryv!(disk_of(handle));
        let Some(t) = disk_type(disk_type_code) else {
            return fail(vix::E_INVALID_ARG, "unknown disk type");
        };
        let cap = tryv!(d.disk()).capacity();
        let bytes = if t.is_sparse() {
            match tryv!(d.disk()).query_allocated_blocks(0, cap / SECTOR, 128) {
                Ok(b) => b.iter().map(|(_, n)| n * SECTOR).sum::<u64>() + (cap / 4096) + (1 << 20),
                Err(e) => return from_err(e),
            }
        } else {
            cap
        };
        // SAFETY: checked non-NULL.
        unsafe { *needed = bytes };
        vix::OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_CheckRepair(
    conn: usize,
    filename: *const c_char,
    repair: Bool,
) -> VixError {
    guard(|| {
        tryv!(local_conn(conn));
        // SAFETY: a C string or NULL.
        let Some(f) = (unsafe { cstr(filename) }) else {
            return fail(vix::E_INVALID_ARG, "path is NULL");
        };
        let opts = vmdk_file::local::OpenOptions::default();
        if repair != 0 {
            if let Err(e) = vmdk_file::repair::repair(Path::new(&f), &opts) {
                return from_err(e);
            }
        }
        match vmdk_file::check::check_disk(Path::new(&f), &opts) {
            Ok(r) if r.is_consistent() => vix::OK,
            Ok(r) => fail(
                vix::E_DISK_INVAL,
                format!(
                    "{} problem(s), first: {}",
                    r.findings.len(),
                    r.findings[0].finding.detail
                ),
            ),
            Err(e) => from_err(e),
        }
    })
}

fn base_text(code: u64) -> &'static str {
    match code {
        vix::OK => "The operation was successful",
        vix::E_FAIL => "Unknown error",
        vix::E_OUT_OF_MEMORY => "Memory allocation failed. Out of memory.",
        vix::E_INVALID_ARG => "One of the parameters was invalid",
        vix::E_FILE_NOT_FOUND => "A file was not found",
        vix::E_OBJECT_IS_BUSY => {
            "This function cannot be performed because the handle is executing another function"
        }
        vix::E_NOT_SUPPORTED => "The operation is not supported",
        vix::E_FILE_ERROR => "A file access error occurred on the host or guest operating system",
        vix::E_DISK_FULL => "An error occurred while writing a file; the disk is full",
        vix::E_INCORRECT_FILE_TYPE => "An error occurred while accessing a file: wrong file type",
        vix::E_FILE_READ_ONLY => "The file is write-protected",
        vix::E_FILE_ALREADY_EXISTS => "The file already exists",
        vix::E_FILE_ACCESS_ERROR => "You do not have access rights to this file",
        vix::E_BUFFER_TOOSMALL => "The buffer is too small",
        vix::E_OBJECT_NOT_FOUND => "The object was not found",
        vix::E_AUTHENTICATION_FAIL => "Authentication failed",
        vix::E_HOST_CONNECTION_LOST => "The connection to the host was lost",
        vix::E_INVALID_HANDLE => "The handle is not a valid VIX object",
        vix::E_HOST_NETBLKDEV_HANDSHAKE => "NBD_ERR_HANDSHAKE",
        vix::E_HOST_NETWORK_CONN_REFUSED => "NBD_ERR_NETWORK_CONNECT",
        vix::E_HOST_TCP_CONN_LOST => "Lost connection to the host",
        vix::E_DISK_INVAL => "One of the parameters supplied is invalid",
        vix::E_DISK_OUTOFRANGE => "The disk sector number is out of range",
        vix::E_DISK_CID_MISMATCH => {
            "The parent virtual disk has been modified since the child was created"
        }
        vix::E_DISK_OPENPARENT => "Cannot open the parent of a virtual disk",
        vix::E_DISK_INVALIDCHAIN => "The specified virtual disk chain is invalid",
        vix::E_DISK_KEY_NOTFOUND => "The specified key was not found in the disk database",
        vix::E_DISK_CAPACITY_MISMATCH => "The virtual disk capacities do not match",
        vix::E_CANNOT_CONNECT_TO_HOST => "Cannot connect to the host",
        vix::ASYNC => "The asynchronous operation is in progress",
        _ => "Unknown error",
    }
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_GetErrorText(
    err: VixError,
    _locale: *const c_char,
) -> *mut c_char {
    let r = catch_unwind(|| {
        let code = err & 0xffff;
        let detail = LAST
            .with(|l| l.borrow().clone())
            .filter(|(c, _)| *c == code)
            .map(|(_, m)| m);
        let text = match detail {
            Some(d) => format!("{} ({d})", base_text(code)),
            None => base_text(code).to_string(),
        };
        give_str(&text)
    });
    r.unwrap_or(std::ptr::null_mut())
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeErrorText(text: *mut c_char) {
    let _ = catch_unwind(|| free_owned_str(text));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_c_transport_list_is_disklibs() {
        assert_eq!(
            super::TRANSPORT_MODES.to_str().unwrap(),
            disklib::api::list_transport_modes()
        );
    }

    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_vddk() {
        assert_eq!(size_of::<ConnectParamsC>(), 128);
        assert_eq!(offset_of!(ConnectParamsC, vmx_spec), 0);
        assert_eq!(offset_of!(ConnectParamsC, server_name), 8);
        assert_eq!(offset_of!(ConnectParamsC, thumb_print), 16);
        assert_eq!(offset_of!(ConnectParamsC, reserved1), 24);
        assert_eq!(offset_of!(ConnectParamsC, cred_type), 32);
        assert_eq!(offset_of!(ConnectParamsC, creds), 40);
        assert_eq!(offset_of!(ConnectParamsC, port), 64);
        assert_eq!(offset_of!(ConnectParamsC, nfc_host_port), 68);
        assert_eq!(offset_of!(ConnectParamsC, reserved3), 72);
        assert_eq!(offset_of!(ConnectParamsC, reserved4), 80);
        assert_eq!(offset_of!(ConnectParamsC, reserved5), 88);
        assert_eq!(offset_of!(ConnectParamsC, spec), 96);
        assert_eq!(offset_of!(ConnectParamsC, spec_type), 120);
        assert_eq!(size_of::<InfoC>(), 64);
        assert_eq!(offset_of!(InfoC, phys_geo), 12);
        assert_eq!(offset_of!(InfoC, capacity), 24);
        assert_eq!(offset_of!(InfoC, adapter_type), 32);
        assert_eq!(offset_of!(InfoC, num_links), 36);
        assert_eq!(offset_of!(InfoC, parent_file_name_hint), 40);
        assert_eq!(offset_of!(InfoC, uuid), 48);
        assert_eq!(offset_of!(InfoC, logical_sector_size), 56);
        assert_eq!(offset_of!(InfoC, physical_sector_size), 60);
        assert_eq!(size_of::<CreateParamsC>(), 32);
        assert_eq!(offset_of!(CreateParamsC, hw_version), 8);
        assert_eq!(offset_of!(CreateParamsC, capacity), 16);
        assert_eq!(offset_of!(CreateParamsC, logical_sector_size), 24);
        assert_eq!(offset_of!(CreateParamsC, physical_sector_size), 28);
        assert_eq!(offset_of!(BlockListC, blocks), 8);
    }
}
