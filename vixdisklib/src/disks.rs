//! Disks: create, open, close, information, transport mode, and clone.

use std::ffi::{c_char, c_int, c_void};
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use disklib::api::{Disk, OpenFlags};
use disklib::vix;
use disklib::Error;
use vmdk_format::create::AdapterType;

use crate::errors::{fail, from_err, guard, log_info, tryv};
use crate::registry::{
    conn_of, cstr, disk_of, free_owned_str, give_str, local_conn, new_id, owned, state, wait_disk,
    ConnEntry, DiskEntry,
};
use crate::types::{
    Bool, CreateParamsC, Geometry, InfoC, ProgressFunc, VixError, FLAG_OPEN_COMPRESSION_ZLIB,
    FLAG_OPEN_READ_ONLY, FLAG_OPEN_SINGLE_LINK, SECTOR,
};

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

pub(crate) fn progress_done(f: ProgressFunc, data: *mut c_void) {
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
    const VMFS_SPARSE: u32 = 8;
    let t = disk_type(p.disk_type).ok_or_else(|| match p.disk_type {
        // A real type, but what ESXi makes for snapshot redo logs (the
        // COWD format); a disk is never created as one.
        VMFS_SPARSE => fail(
            vix::E_NOT_SUPPORTED,
            "VIXDISKLIB_DISK_VMFS_SPARSE (a COWD redo log, made by ESXi for snapshots) cannot be created; use VMFS_THIN or MONOLITHIC_SPARSE for a sparse disk",
        ),
        other => fail(vix::E_INVALID_ARG, format!("unknown disk type {other}")),
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
        log_info(&format!(
            "opened {path} using transport {}{}",
            disk.transport_mode(),
            if f.read_only { " (read-only)" } else { "" }
        ));
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

#[no_mangle]
pub extern "C" fn VixDiskLib_Close(handle: usize) -> VixError {
    guard(|| {
        let Some(d) = state().as_mut().and_then(|g| g.disks.remove(&handle)) else {
            return fail(vix::E_INVALID_HANDLE, "unknown or closed disk handle");
        };
        wait_disk(&d);
        d.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let disk = d.disk.write().unwrap_or_else(|p| p.into_inner()).take();
        log_info(&format!("closing {}", d.path));
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
            match vmdk_file::local::LocalDisk::open(&s, &sc.conn.local_open_options()) {
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
