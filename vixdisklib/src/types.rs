//! The C types of `vixDiskLib.h`: the `repr(C)` structs, callback types
//! and constants.

use std::ffi::{c_char, c_int, c_void};

pub type VixError = u64;
pub type Bool = c_char;
pub type LogFunc = unsafe extern "C" fn(fmt: *const c_char, args: *mut c_void);
pub type ProgressFunc = Option<unsafe extern "C" fn(data: *mut c_void, percent: c_int) -> Bool>;
pub type CompletionCb = Option<unsafe extern "C" fn(data: *mut c_void, result: VixError)>;

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

#[cfg(test)]
mod tests {
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
