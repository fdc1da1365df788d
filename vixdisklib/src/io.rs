//! I/O: synchronous and asynchronous reads and writes, `Wait`, `Flush`,
//! and allocated-block queries.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};

use disklib::vix;

use crate::errors::{fail, from_err, guard, tryv};
use crate::registry::{disk_of, owned, wait_disk, DiskEntry, Job};
use crate::types::{BlockC, BlockListC, CompletionCb, VixError, SECTOR};

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
