//! The VixDiskLib-shaped API: a library initialised from an InitEx-style
//! configuration, connections (local, or to vCenter / ESXi), disks opened
//! through the best transport that can actually reach them.
//!
//! ```no_run
//! use disklib::api::*;
//! let lib = Library::init(Config::default());
//! let params = ConnectParams::remote("vc:443", "AA:BB:…", Credentials::password("user", "secret"), "vm-42");
//! let conn = Connection::connect(&lib, &params, true, Some("snapshot-7"), None)?;
//! let disk = conn.open("[datastore1] vm/vm.vmdk", OpenFlags::read_only())?;
//! println!("{} via {}", disk.capacity(), disk.transport_mode());
//! # Ok::<(), disklib::Error>(())
//! ```
//!
//! The InitEx configuration, the library and the transport modes are in
//! one module, connections and disks in one each; every item is
//! re-exported here (`disklib::api::X`).

mod config;
mod connection;
mod disk;
mod host_ddb;

pub use config::{
    list_transport_modes, Config, ConfigWarning, Library, SanBlockMaps, TransportMode,
    DEFAULT_STREAMS, DEFAULT_TRANSPORTS,
};
pub use connection::{
    changed_areas, changed_areas_by_key, disk_info, disk_key, ConnectParams, Connection,
    Credentials, OpenFlags,
};
pub use disk::{Completion, Disk, Info};
