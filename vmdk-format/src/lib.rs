//! # vmdk-format
//!
//! The VMDK engine of the kit, with **no I/O**: it parses and validates
//! descriptors, hosted sparse headers (`KDMV` v1–v3, streamOptimized
//! included), COWD (vmfsSparse) and seSparse headers, walks grain
//! directories and tables, and maps virtual byte ranges to segments of
//! extent files. It never opens a file, a socket or a clock: the caller
//! reads the bytes the crate asks for and hands them in. That makes every
//! parser fuzzable from `&[u8]` and lets one engine serve local files,
//! network transports and tests alike.
//!
//! What it does not do: resolve extent or parent paths (that is
//! `disklib`'s job, which keeps them inside the descriptor's directory),
//! cache tables, or read through snapshot chains.
//!
//! ## Modules
//!
//! - [`descriptor`]: the text descriptor (parse, serialize).
//! - [`hosted`]: the `KDMV` header and footer.
//! - [`stream`]: streamOptimized markers and compressed grains.
//! - [`cowd`], [`sesparse`]: the ESX sparse formats.
//! - [`extent`]: one interface over grain-directory extents.
//! - [`layout`]: a disk's extents end to end, and [`layout::Layout::map_next`].
//! - [`check`]: consistency checks over loaded metadata.
//!
//! ## Example: map a monolithicSparse image held in memory
//!
//! ```
//! use std::{collections::HashMap, sync::Arc};
//! use vmdk_format::{descriptor::Access, extent::SparseExtent, hosted::*, layout::*};
//!
//! // A 1 MiB disk, 64 KiB grains, one grain of data at virtual 64 KiB.
//! let header = SparseExtentHeader {
//!     version: 1, flags: SparseFlags::VALID_NEWLINE_CHECK, capacity: 2048,
//!     grain_sectors: 128, descriptor_offset: 0, descriptor_size: 0,
//!     gtes_per_gt: 512, rgd_offset: 0, gd_offset: 1, overhead: 8,
//!     unclean_shutdown: false, compression: Compression::None,
//! };
//! let mut file = vec![0u8; 8 * 512 + 65536];
//! file[512..516].copy_from_slice(&2u32.to_le_bytes()); // GD[0] -> GT at sector 2
//! file[1024 + 4..1024 + 8].copy_from_slice(&8u32.to_le_bytes()); // GTE[1] -> sector 8
//! file[8 * 512..].fill(0xAB);
//!
//! let (gd_off, gd_len) = header.gd_range()?;
//! let gd = &file[gd_off as usize..(gd_off + gd_len) as usize];
//! let extent = SparseExtent::hosted(header, gd, file.len() as u64)?;
//! let layout = Layout::new(vec![(Access::ReadWrite, 2048, Backing::Sparse(extent))])?;
//!
//! let mut cache = HashMap::new();
//! let step = layout.map_next(0, 1 << 20, &mut |k| cache.get(&k).cloned())?;
//! let MapStep::NeedTable(req) = step else { unreachable!() };
//! // The caller performs the read.
//! let bytes = &file[req.file_offset as usize..(req.file_offset + req.len) as usize];
//! cache.insert(req.key, Arc::new(layout.parse_table(req.key, bytes)?));
//!
//! let step = layout.map_next(0, 1 << 20, &mut |k| cache.get(&k).cloned())?;
//! assert_eq!(step, MapStep::Segment(Segment { len: 65536, extent: 0, kind: SegmentKind::Unallocated }));
//! let step = layout.map_next(65536, 65536, &mut |k| cache.get(&k).cloned())?;
//! assert_eq!(step, MapStep::Segment(Segment {
//!     len: 65536, extent: 0, kind: SegmentKind::Data { file_offset: 8 * 512 },
//! }));
//! # Ok::<(), vmdk_format::Error>(())
//! ```
//!
//! Bad input gives a typed [`Error`], never a panic; allocations are
//! bounded by the lengths the caller supplies, which are in turn bounded
//! by the file size.

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod check;
pub mod cowd;
pub mod create;
pub mod descriptor;
mod error;
pub mod extent;
#[cfg(any(fuzzing, test))]
#[allow(missing_docs)]
pub mod fuzzing;
pub mod hosted;
pub mod layout;
pub mod sesparse;
pub mod stream;

pub use error::{DescriptorError, Error, Result, Structure};

/// Bytes per sector; every VMDK offset is counted in these.
pub const SECTOR_SIZE: u64 = 512;
