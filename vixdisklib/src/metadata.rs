//! Metadata: the disk database (DDB) keys and values.

use std::ffi::c_char;

use disklib::vix;

use crate::errors::{fail, fail_quiet, from_err, guard, tryv};
use crate::registry::{cstr, disk_of};
use crate::types::VixError;

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
    if buf.is_null() {
        // A length query: the answer is in `required`, nothing is wrong.
        return fail_quiet(vix::E_BUFFER_TOOSMALL, format!("{} bytes needed", s.len()));
    }
    if len < s.len() {
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
