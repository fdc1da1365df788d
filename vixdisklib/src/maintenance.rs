//! Maintenance: unlink, grow, shrink, defragment, rename, child disks,
//! attach, and check / repair.

use std::ffi::{c_char, c_void};
use std::path::Path;

use disklib::vix;

use crate::disks::progress_done;
use crate::errors::{fail, from_err, guard, tryv};
use crate::registry::{cstr, disk_of, local_conn, state, wait_disk};
use crate::types::{Bool, ProgressFunc, VixError, SECTOR};

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
pub unsafe extern "C" fn VixDiskLib_CheckRepair(
    conn: usize,
    filename: *const c_char,
    repair: Bool,
) -> VixError {
    guard(|| {
        let c = tryv!(local_conn(conn));
        // SAFETY: a C string or NULL.
        let Some(f) = (unsafe { cstr(filename) }) else {
            return fail(vix::E_INVALID_ARG, "path is NULL");
        };
        let opts = c.conn.local_open_options();
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
