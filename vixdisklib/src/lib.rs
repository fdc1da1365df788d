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
//!
//! Local disks: absolute extent and parent paths are followed as VDDK
//! follows them; `vixDiskLib.disklib.confinePaths = "1"` in the InitEx
//! configuration file keeps them inside the directory of the descriptor
//! naming them. `InitEx` passes every line of that file it did not take
//! (unknown key, bad value), with its line number, to the warning (else
//! log) callback.

#![allow(clippy::missing_safety_doc)]
#![allow(missing_docs)]
#![allow(non_snake_case)]

mod connect;
mod disks;
mod errors;
mod io;
mod library;
mod maintenance;
mod metadata;
mod registry;
mod types;

pub use connect::{
    VixDiskLib_AllocateConnectParams, VixDiskLib_Cleanup, VixDiskLib_Connect, VixDiskLib_ConnectEx,
    VixDiskLib_Disconnect, VixDiskLib_EndAccess, VixDiskLib_FreeConnectParams,
    VixDiskLib_GetConnectParams, VixDiskLib_PrepareForAccess,
};
pub use disks::{
    VixDiskLib_Clone, VixDiskLib_Close, VixDiskLib_Create, VixDiskLib_FreeInfo, VixDiskLib_GetInfo,
    VixDiskLib_GetTransportMode, VixDiskLib_Open, VixDiskLib_SpaceNeededForClone,
};
pub use errors::{VixDiskLib_FreeErrorText, VixDiskLib_GetErrorText};
pub use io::{
    VixDiskLib_Flush, VixDiskLib_FreeBlockList, VixDiskLib_QueryAllocatedBlocks, VixDiskLib_Read,
    VixDiskLib_ReadAsync, VixDiskLib_Wait, VixDiskLib_Write, VixDiskLib_WriteAsync,
};
pub use library::{
    VixDiskLib_Exit, VixDiskLib_Init, VixDiskLib_InitEx, VixDiskLib_ListTransportModes,
};
pub use maintenance::{
    VixDiskLib_Attach, VixDiskLib_CheckRepair, VixDiskLib_CreateChild, VixDiskLib_Defragment,
    VixDiskLib_Grow, VixDiskLib_IsAttachPossible, VixDiskLib_Rename, VixDiskLib_Shrink,
    VixDiskLib_Unlink,
};
pub use metadata::{VixDiskLib_GetMetadataKeys, VixDiskLib_ReadMetadata, VixDiskLib_WriteMetadata};
pub use types::{
    BlockC, BlockListC, Bool, CompletionCb, ConnectParamsC, CreateParamsC, Geometry, InfoC,
    LogFunc, ProgressFunc, VixError, CRED_SESSIONID, CRED_UID, FLAG_OPEN_COMPRESSION_ZLIB,
    FLAG_OPEN_READ_ONLY, FLAG_OPEN_SINGLE_LINK, FLAG_OPEN_UNBUFFERED, SECTOR, SPEC_VSTORAGE_OBJECT,
};
