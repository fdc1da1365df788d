//! Integration tests: real images made with the real tools (e2fsprogs,
//! dosfstools + mtools, ntfs-3g, fdisk's sfdisk, gdisk's sgdisk), and
//! malformed inputs derived from them.

#[path = "integration/common.rs"]
mod common;
#[path = "integration/ext.rs"]
mod ext;
#[path = "integration/fat.rs"]
mod fat;
#[path = "integration/malformed.rs"]
mod malformed;
#[path = "integration/ntfs.rs"]
mod ntfs;
#[path = "integration/tables.rs"]
mod tables;
