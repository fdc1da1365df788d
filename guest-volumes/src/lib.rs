//! # guest-volumes
//!
//! Looks inside a guest disk: partition tables (MBR with extended and
//! logical partitions, GPT with protective and hybrid MBRs),
//! filesystem identification (ext2/3/4, XFS, Btrfs, NTFS, FAT12/16/32,
//! exFAT, swap, LVM2 PV, LUKS) and read-only file access for ext2/3/4,
//! FAT12/16/32 and NTFS.
//!
//! The crate does no I/O of its own: everything is read through the
//! caller's [`ReadAt`]. Every value taken from the disk is treated as
//! hostile: sizes are capped, chains are bounded and checked for cycles,
//! and errors are typed ([`Error`]); nothing panics on corrupt input.
//!
//! What it does not do: write, mount, follow LVM or LUKS into their
//! contents, or read XFS, Btrfs and exFAT files.
//!
//! File access is built on `ext4-view` (ext2/3/4) and `ntfs` (NTFS);
//! FAT is read by the crate's own small reader, which bounds every
//! cluster chain. Reads go through a 4 MiB LRU cache of 32 KiB blocks,
//! and listing a directory or reading a file only reads the metadata
//! and data it needs.
//!
//! Notes on the libraries:
//! - `ext4_view::Ext4` is not `Send`, so an opened ext filesystem lives on
//!   a worker thread of its own (ended when the [`GuestFs`] is dropped); a
//!   panic inside the library ends that thread and shows up as
//!   [`Error::Filesystem`]. Before loading, the superblock's block count
//!   is checked against the volume size, which bounds what the library
//!   allocates.
//! - NTFS operations each get a budget of reads (a looping index fails
//!   with [`Error::TooLarge`]) and run under `catch_unwind` as a last
//!   resort; fuzzing has not produced a panic there.
//! - Symlinks: ext symlinks; on NTFS, ntfs-3g (Interix) symlinks and
//!   Windows symlink/junction reparse points (targets with `/`).
//! - Names that are not UTF-8 (ext) are in [`DirEntry::name_bytes`] and
//!   reachable through the `*_bytes` methods of [`GuestFs`].
//!
//! Also here: [`safe_relative_path`] and [`symlink_target_is_contained`],
//! the pure checks an extractor applies before writing guest files to
//! the host.
//!
//! ## Example
//!
//! ```
//! use guest_volumes::{scan, TableKind};
//! // A blank disk has no table and no volumes.
//! let disk = vec![0u8; 1 << 20];
//! let layout = scan(&disk)?;
//! assert_eq!(layout.table, TableKind::Unknown);
//! assert!(layout.volumes.is_empty());
//!
//! // A GPT whose header checksum is wrong behind a protective MBR is an error.
//! let mut disk = vec![0u8; 1 << 20];
//! disk[446 + 4] = 0xEE;
//! disk[446 + 8] = 1;
//! disk[446 + 12..446 + 16].copy_from_slice(&2047u32.to_le_bytes());
//! disk[510..512].copy_from_slice(&[0x55, 0xAA]);
//! disk[512..520].copy_from_slice(b"EFI PART");
//! assert!(matches!(scan(&disk), Err(guest_volumes::Error::Corrupt { .. })));
//! # Ok::<(), guest_volumes::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

mod bytes;
mod error;
mod fs;
mod probe;
mod read;
mod safe;
mod table;

pub use error::Error;
pub use fs::{
    open_fs, DirEntry, FileKind, GuestFs, Metadata, MAX_DIR_ENTRIES, MAX_PATH_COMPONENTS,
    MAX_PATH_LEN,
};
pub use probe::{probe, FsInfo, FsKind};
pub use read::{ReadAt, Window};
pub use safe::{safe_relative_path, symlink_target_is_contained, PathComponent};
pub use table::{
    gpt_type_name, mbr_type_name, parse_table, scan, DiskLayout, PartitionKind, TableKind, Volume,
    MAX_GPT_ARRAY, MAX_GPT_ENTRIES, MAX_GPT_ENTRY_SIZE, MAX_LOGICAL, SECTOR,
};
