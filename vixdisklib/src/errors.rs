//! Errors: the last error of each thread and its text
//! (`VixDiskLib_GetErrorText`), the warning log, and panics kept from
//! crossing the C boundary.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use disklib::vix;
use disklib::Error;

use crate::registry::{free_owned_str, give_str};
use crate::types::{LogFunc, VixError};

unsafe extern "C" {
    fn vixrs_log(f: LogFunc, msg: *const c_char);
}

thread_local! {
    static LAST: RefCell<Option<(VixError, String)>> = const { RefCell::new(None) };
}

/// The latest text of each error code, whichever thread set it: an async
/// request fails on a worker thread and its caller asks for the text on
/// its own; and in exit handlers (after thread-locals are destroyed) this
/// is the only record. Codes are few, so this stays small.
static RECENT: Mutex<BTreeMap<VixError, String>> = Mutex::new(BTreeMap::new());

/// Records `msg` as the text of `code` for this thread and for all.
/// Never panics: not while thread-locals are being destroyed (an exit
/// handler), not with a poisoned lock.
fn remember(code: VixError, msg: &str) {
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = Some((code, msg.to_string()));
        }
    });
    RECENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(code, msg.to_string());
}

/// The detail text of `code`: this thread's if its last error has that
/// code, else the latest any thread recorded.
fn detail_of(code: VixError) -> Option<String> {
    LAST.try_with(|l| l.try_borrow().ok().and_then(|l| l.clone()))
        .ok()
        .flatten()
        .filter(|(c, _)| *c == code)
        .map(|(_, m)| m)
        .or_else(|| {
            RECENT
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&code)
                .cloned()
        })
}

/// The InitEx warning (else log) function, apart from `STATE` so that
/// reporting an error never needs the state lock a caller may hold.
pub(crate) static WARN: Mutex<Option<LogFunc>> = Mutex::new(None);
/// The InitEx log function: the library's informational messages.
pub(crate) static LOG: Mutex<Option<LogFunc>> = Mutex::new(None);

fn log_to(to: &Mutex<Option<LogFunc>>, msg: &str) {
    let f = *to.lock().unwrap_or_else(|p| p.into_inner());
    if let (Some(f), Ok(c)) = (f, CString::new(msg.replace('\0', " "))) {
        // SAFETY: `f` was given to InitEx as a VixDiskLib log function;
        // the shim builds the va_list it expects.
        unsafe { vixrs_log(f, c.as_ptr()) };
    }
}

pub(crate) fn log_warn(msg: &str) {
    log_to(&WARN, msg);
}

/// An informational message to the InitEx log function (what VDDK logs
/// at its default level: initialisation, connections, opens, closes).
pub(crate) fn log_info(msg: &str) {
    log_to(&LOG, &format!("VixDiskLib: {msg}\n"));
}

pub(crate) fn fail(code: VixError, msg: impl Into<String>) -> VixError {
    let msg = msg.into();
    remember(code, &msg);
    log_warn(&format!("VixDiskLib: {msg}"));
    code
}

/// An error the caller expects, such as the `BUFFER_TOOSMALL` of a
/// length-only query (a NULL buffer): recorded for `GetErrorText`,
/// not reported to the warning function.
pub(crate) fn fail_quiet(code: VixError, msg: impl Into<String>) -> VixError {
    remember(code, &msg.into());
    code
}

pub(crate) fn from_err(e: impl Into<Error>) -> VixError {
    let e = e.into();
    let code = e.vix_code();
    fail(code, e.to_string())
}

/// Runs `f`, turning a panic into `VIX_E_FAIL`.
pub(crate) fn guard(f: impl FnOnce() -> VixError) -> VixError {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => fail(vix::E_FAIL, "internal error (caught panic)"),
    }
}

macro_rules! tryv {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}

pub(crate) use tryv;

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
        let detail = detail_of(code);
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
