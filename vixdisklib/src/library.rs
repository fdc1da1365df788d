//! The library's lifetime: `VixDiskLib_InitEx` / `Init` / `Exit`, and
//! the transport modes it offers.

use std::collections::HashMap;
use std::ffi::c_char;
use std::panic::catch_unwind;
use std::path::Path;

use disklib::api::{Config, Library};
use disklib::vix;

use crate::errors::{fail, from_err, guard, log_info, log_warn, LOG, WARN};
use crate::registry::{cstr, state, wait_disk, Global};
use crate::types::{LogFunc, VixError};

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
        *LOG.lock().unwrap_or_else(|p| p.into_inner()) = log;
        // SAFETY: a C string or NULL.
        let mut config = match unsafe { cstr(config_file) } {
            Some(p) if !p.is_empty() => match Config::load(Path::new(&p)) {
                Ok(c) => c,
                Err(e) => return from_err(e),
            },
            _ => Config::default(),
        };
        // VDDK follows absolute extent and parent paths; the jail is on
        // only when `vixDiskLib.disklib.confinePaths = "1"` asks for it.
        config.confine_paths.get_or_insert(false);
        let warnings = config.warnings.clone();
        let mut st = state();
        *st = Some(Global {
            lib: Library::init(config),
            conns: HashMap::new(),
            disks: HashMap::new(),
        });
        drop(st);
        log_info(&format!(
            "vddk-rs {} initialised (API {major})",
            env!("CARGO_PKG_VERSION")
        ));
        for w in warnings {
            log_warn(&format!("VixDiskLib: {w}"));
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
        *LOG.lock().unwrap_or_else(|p| p.into_inner()) = None;
    });
}

#[no_mangle]
pub extern "C" fn VixDiskLib_ListTransportModes() -> *const c_char {
    TRANSPORT_MODES.as_ptr()
}

/// `disklib::api::list_transport_modes()` as a static C string (a unit
/// test keeps the two equal).
const TRANSPORT_MODES: &std::ffi::CStr = c"file:san:hotadd:nbdssl:nbd";

#[cfg(test)]
mod tests {
    #[test]
    fn the_c_transport_list_is_disklibs() {
        assert_eq!(
            super::TRANSPORT_MODES.to_str().unwrap(),
            disklib::api::list_transport_modes()
        );
    }
}
