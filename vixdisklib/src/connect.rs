//! Connections: connect parameters in and out, `ConnectEx` /
//! `Disconnect`, `Cleanup`, and `PrepareForAccess` / `EndAccess`.

use std::ffi::c_char;
use std::panic::catch_unwind;
use std::sync::Arc;

use disklib::api::{ConnectParams, Connection, Credentials};
use disklib::vix;

use crate::errors::{fail, from_err, guard, log_info, tryv};
use crate::registry::{
    conn_of, cstr, free_owned_str, give_str, lib, new_id, owned, state, ConnEntry, OwnedParams,
};
use crate::types::{
    Bool, ConnectParamsC, VixError, CRED_SESSIONID, CRED_UID, SPEC_VSTORAGE_OBJECT,
};

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
    // An IPv6 literal (`fd00::5`, `[::1]`) is bracketed before its port.
    let port = u16::try_from(o.port)
        .map_err(|_| fail(vix::E_INVALID_ARG, format!("port {} out of range", o.port)))?;
    let server = vim_soap::client::server_address(server, port);
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
        log_info(&match &p.server {
            Some(server) => format!("connected to {server}"),
            None => "connected to local disks".to_string(),
        });
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
