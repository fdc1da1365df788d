//! The simulator's storage fabric: a LUN laid out like a thick VMFS
//! volume under a datastore, the proxy host's view of it (a device entry
//! in `dev/disk/by-id`), switches to take it offline or make it fail, and
//! the block devices a HotAdd reconfiguration gives the proxy VM (a fake
//! `sys/block` tree and raw images in `dev/`).
//!
//! How it differs from a real host, on purpose:
//!
//! - The LUN is a regular file `<datastore>/.lun/<naa id>.img`. Thick
//!   (`vmfs`, `vmfsThin`) disks of a LUN-backed datastore have their flat
//!   extents inside it: the descriptor's extents name a hard link of the
//!   image (`<disk>-flat.vmdk`) as FLAT extents with sector offsets (the
//!   form qemu also reads; VMFS extent lines carry no offset), so NFC,
//!   guest writes
//!   and the SAN transport all see the same bytes. Each disk is placed in
//!   two runs, the second half first, with a block between them, so block
//!   maps are never a single trivial extent.
//! - Offline means the image is emptied (its bytes saved beside it) and
//!   the device entry removed: descriptors the proxy already holds then
//!   fail every request, as a dead path would. "Failing from byte N" cuts
//!   the image at N. Back online, the same inode gets its bytes back.
//! - A HotAdded disk appears to the proxy as a raw image of the disk's
//!   contents, made at attach; at detach, blocks the proxy changed are
//!   written back into the disk unless it was attached non-persistent.
//!   A real ESXi exposes the disk itself; the client code cannot tell.

use std::fs::{File, OpenOptions as FsOpen};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use vim_soap::codec::{BlockMapExtent, DiskBlockMap};
use vmdk_file::local::{LocalDisk, OpenOptions};

/// Bytes at the start of the LUN kept for the volume header.
pub const VMFS_HEADER: u64 = 1 << 20;
/// The allocation unit on the LUN (VMFS 6's file block).
pub const VMFS_BLOCK: u64 = 1 << 20;
const CHUNK: usize = 1 << 20;

/// Health of a simulated LUN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LunState {
    /// Reads and writes work.
    Online,
    /// Every request fails; the device entry is gone.
    Offline,
    /// Requests that reach this byte of the LUN or beyond fail.
    FailingFrom(u64),
}

/// One LUN of the simulator.
#[derive(Clone, Debug)]
pub struct Lun {
    /// NAA id, `naa.` + hex.
    pub id: String,
    /// The image file.
    pub image: PathBuf,
    /// Its size when online.
    pub size: u64,
    /// Next free byte.
    pub(crate) cursor: u64,
    pub(crate) state: LunState,
}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// The hex digits of an NAA id, lower case.
pub fn naa_hex(id: &str) -> String {
    id.trim()
        .trim_start_matches("naa.")
        .trim_start_matches("0x")
        .to_ascii_lowercase()
}

impl Lun {
    /// Creates (or reopens) the image of a LUN under a datastore.
    pub(crate) fn prepare(datastore: &Path, id: &str, size: u64) -> Result<Self, String> {
        let hex = naa_hex(id);
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("LUN id {id} is not an NAA id (naa.<hex>)"));
        }
        if size < VMFS_HEADER + VMFS_BLOCK || !size.is_multiple_of(VMFS_BLOCK) {
            return Err(format!(
                "LUN {id}: size {size} is not whole MiB above 2 MiB"
            ));
        }
        let dir = datastore.join(".lun");
        std::fs::create_dir_all(&dir).map_err(|e| err(dir.display(), e))?;
        let image = dir.join(format!("naa.{hex}.img"));
        if !image.exists() {
            let f = File::create(&image).map_err(|e| err(image.display(), e))?;
            let mut header =
                format!("vsphere-sim VMFS-like volume\nlun=naa.{hex}\nblock={VMFS_BLOCK}\n")
                    .into_bytes();
            header.resize(4096, 0);
            f.write_all_at(&header, 0)
                .and_then(|()| f.set_len(size))
                .map_err(|e| err(image.display(), e))?;
        }
        Ok(Self {
            id: format!("naa.{hex}"),
            image,
            size,
            cursor: VMFS_HEADER,
            state: LunState::Online,
        })
    }

    fn inode(&self) -> Option<(u64, u64)> {
        std::fs::metadata(&self.image)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    /// Notes the LUN space an existing disk uses, so new disks go after it.
    pub(crate) fn account(&mut self, disk: &Path) {
        if let Ok(m) = self.map_of(disk) {
            for e in m.extents {
                self.cursor = self
                    .cursor
                    .max((e.lun_offset + e.length).next_multiple_of(VMFS_BLOCK));
            }
        }
    }

    /// Creates a disk whose data lies on the LUN: a descriptor beside a
    /// hard link of the image, two runs in swapped order.
    pub(crate) fn create_disk(
        &mut self,
        path: &Path,
        capacity: u64,
        thin: bool,
    ) -> Result<(), String> {
        let cap = capacity.next_multiple_of(VMFS_BLOCK).max(2 * VMFS_BLOCK);
        let first = (cap / 2).next_multiple_of(VMFS_BLOCK);
        let second = cap - first;
        let need = cap + VMFS_BLOCK;
        if self.cursor + need > self.size {
            return Err(format!(
                "LUN {} is full: {} bytes wanted, {} free",
                self.id,
                need,
                self.size - self.cursor
            ));
        }
        // The second half first, a block apart from the first half.
        let second_at = self.cursor;
        let first_at = self.cursor + second + VMFS_BLOCK;
        self.cursor += need;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "disk".into());
        let flat_name = format!("{stem}-flat.vmdk");
        let flat = path.with_file_name(&flat_name);
        if !flat.exists() {
            std::fs::hard_link(&self.image, &flat).map_err(|e| err(flat.display(), e))?;
        }
        let sectors = cap / 512;
        let heads = 255u64;
        let spt = 63u64;
        let cylinders = (sectors / (heads * spt)).clamp(1, 65535);
        let text = format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"{}\"\n\n# Extent description\nRW {} FLAT \"{flat_name}\" {}\nRW {} FLAT \"{flat_name}\" {}\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"{heads}\"\nddb.geometry.sectors = \"{spt}\"\nddb.thinProvisioned = \"{}\"\nddb.virtualHWVersion = \"14\"\n",
            if thin { "vmfsThin" } else { "vmfs" },
            first / 512,
            first_at / 512,
            second / 512,
            second_at / 512,
            u8::from(thin)
        );
        std::fs::write(path, text).map_err(|e| err(path.display(), e))
    }

    /// Where the disk (descriptor `path`) lies on this LUN. A delta disk
    /// is a redo log: its map is empty.
    pub(crate) fn map_of(&self, path: &Path) -> Result<DiskBlockMap, String> {
        let disk =
            LocalDisk::open(path, &OpenOptions::default()).map_err(|e| err(path.display(), e))?;
        let desc = disk.descriptor();
        let thin = desc.ddb_get("ddb.thinProvisioned") == Some("1")
            || matches!(
                desc.create_type,
                vmdk_format::descriptor::CreateType::VmfsThin
            );
        if disk.links().len() > 1 {
            return Ok(DiskBlockMap {
                lun_id: self.id.clone(),
                capacity: disk.capacity(),
                thin,
                redo_log: true,
                extents: Vec::new(),
            });
        }
        let lun = self
            .inode()
            .ok_or_else(|| format!("LUN {} is gone", self.id))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut extents = Vec::new();
        let mut at = 0u64;
        for e in &desc.extents {
            let on_lun = e.kind.is_flat_like()
                && e.file.as_ref().is_some_and(|f| {
                    std::fs::metadata(dir.join(f)).is_ok_and(|m| (m.dev(), m.ino()) == lun)
                });
            if !on_lun {
                return Err(format!(
                    "{} is not on LUN {} (its {} extent {} is not a flat extent of the LUN)",
                    path.display(),
                    self.id,
                    e.kind.as_str(),
                    e.file.as_deref().unwrap_or("(no file)")
                ));
            }
            extents.push(BlockMapExtent {
                virtual_offset: at,
                lun_offset: e.offset.unwrap_or(0) * 512,
                length: e.sectors * 512,
            });
            at += e.sectors * 512;
        }
        Ok(DiskBlockMap {
            lun_id: self.id.clone(),
            capacity: disk.capacity(),
            thin,
            redo_log: false,
            extents,
        })
    }

    fn side_file(&self) -> PathBuf {
        self.image.with_extension("img.saved")
    }

    /// Switches the LUN's health; `devices` is the proxy host's view.
    pub(crate) fn set_state(
        &mut self,
        state: LunState,
        devices: Option<&Path>,
    ) -> Result<(), String> {
        if state == self.state {
            return Ok(());
        }
        // Back to online first, then to the new state.
        if self.state != LunState::Online {
            let keep = match self.state {
                LunState::FailingFrom(n) => n.min(self.size),
                _ => 0,
            };
            let side = self.side_file();
            let mut saved = File::open(&side).map_err(|e| err(side.display(), e))?;
            let img = FsOpen::new()
                .write(true)
                .open(&self.image)
                .map_err(|e| err(self.image.display(), e))?;
            img.set_len(self.size)
                .map_err(|e| err(self.image.display(), e))?;
            let mut buf = vec![0u8; CHUNK];
            let mut at = keep;
            loop {
                let n = read_full(&mut saved, &mut buf).map_err(|e| err(side.display(), e))?;
                if n == 0 {
                    break;
                }
                if buf[..n].iter().any(|&b| b != 0) {
                    img.write_all_at(&buf[..n], at)
                        .map_err(|e| err(self.image.display(), e))?;
                }
                at += n as u64;
            }
            img.sync_all().map_err(|e| err(self.image.display(), e))?;
            let _ = std::fs::remove_file(&side);
            self.state = LunState::Online;
            if let Some(d) = devices {
                expose_lun(d, self)?;
            }
        }
        let cut = match state {
            LunState::Online => return Ok(()),
            LunState::Offline => 0,
            LunState::FailingFrom(n) => n.min(self.size),
        };
        let side = self.side_file();
        {
            let mut img = File::open(&self.image).map_err(|e| err(self.image.display(), e))?;
            let mut out = File::create(&side).map_err(|e| err(side.display(), e))?;
            std::io::Seek::seek(&mut img, std::io::SeekFrom::Start(cut))
                .map_err(|e| err(self.image.display(), e))?;
            std::io::copy(&mut img, &mut out).map_err(|e| err(side.display(), e))?;
            out.flush().map_err(|e| err(side.display(), e))?;
        }
        FsOpen::new()
            .write(true)
            .open(&self.image)
            .and_then(|f| f.set_len(cut))
            .map_err(|e| err(self.image.display(), e))?;
        if state == LunState::Offline {
            if let Some(d) = devices {
                let _ = std::fs::remove_file(lun_entry(d, &self.id));
            }
        }
        self.state = state;
        Ok(())
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn lun_entry(devices: &Path, id: &str) -> PathBuf {
    devices
        .join("dev/disk/by-id")
        .join(format!("naa.{}", naa_hex(id)))
}

/// Makes the LUN visible to the proxy host: `dev/disk/by-id/naa.<hex>`.
pub(crate) fn expose_lun(devices: &Path, lun: &Lun) -> Result<(), String> {
    let dir = devices.join("dev/disk/by-id");
    std::fs::create_dir_all(&dir).map_err(|e| err(dir.display(), e))?;
    let entry = lun_entry(devices, &lun.id);
    let _ = std::fs::remove_file(&entry);
    let target = std::fs::canonicalize(&lun.image).map_err(|e| err(lun.image.display(), e))?;
    std::os::unix::fs::symlink(target, &entry).map_err(|e| err(entry.display(), e))
}

/// Writes the proxy VM's SMBIOS UUID where Linux shows it.
pub(crate) fn expose_proxy_identity(devices: &Path, uuid: &str) -> Result<(), String> {
    let dir = devices.join("sys/class/dmi/id");
    std::fs::create_dir_all(&dir).map_err(|e| err(dir.display(), e))?;
    std::fs::write(
        dir.join("product_uuid"),
        format!("{}\n", uuid_dashed(uuid).to_ascii_uppercase()),
    )
    .map_err(|e| err(dir.display(), e))?;
    std::fs::create_dir_all(devices.join("sys/block")).map_err(|e| err(devices.display(), e))
}

/// `8-4-4-4-12` form of a 32-hex-digit UUID (other text is kept).
pub fn uuid_dashed(u: &str) -> String {
    let h: String = u.chars().filter(|c| *c != '-').collect();
    if h.len() != 32 {
        return u.to_string();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The SCSI WWID Linux shows for a VMware virtual disk with this backing
/// UUID (`disk.EnableUUID`): `naa.` and the UUID's hex digits.
pub fn disk_wwid(uuid: &str) -> String {
    let h: String = uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("naa.{h}")
}

/// Gives the proxy a block device holding `disk`'s contents; returns its
/// name (`sdb`, `sdc`, ...).
pub(crate) fn attach_device(devices: &Path, disk: &Path, uuid: &str) -> Result<String, String> {
    let name = (b'b'..=b'z')
        .map(|c| format!("sd{}", c as char))
        .find(|n| {
            !devices.join("sys/block").join(n).exists() && !devices.join("dev").join(n).exists()
        })
        .ok_or("the proxy has no free device names")?;
    let src = LocalDisk::open(disk, &OpenOptions::default()).map_err(|e| err(disk.display(), e))?;
    let cap = src.capacity();
    let dev = devices.join("dev").join(&name);
    std::fs::create_dir_all(devices.join("dev")).map_err(|e| err(devices.display(), e))?;
    let out = File::create(&dev).map_err(|e| err(dev.display(), e))?;
    out.set_len(cap).map_err(|e| err(dev.display(), e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < cap {
        let n = (cap - at).min(CHUNK as u64) as usize;
        src.read_at(at, &mut buf[..n])
            .map_err(|e| err(disk.display(), e))?;
        if buf[..n].iter().any(|&b| b != 0) {
            out.write_all_at(&buf[..n], at)
                .map_err(|e| err(dev.display(), e))?;
        }
        at += n as u64;
    }
    out.sync_all().map_err(|e| err(dev.display(), e))?;
    let sys = devices.join("sys/block").join(&name);
    std::fs::create_dir_all(sys.join("device")).map_err(|e| err(sys.display(), e))?;
    let files = [
        ("size", format!("{}\n", cap / 512)),
        ("device/vendor", "VMware  \n".to_string()),
        ("device/model", "Virtual disk    \n".to_string()),
        ("device/wwid", format!("{}\n", disk_wwid(uuid))),
        ("device/state", "running\n".to_string()),
    ];
    for (f, text) in files {
        std::fs::write(sys.join(f), text).map_err(|e| err(sys.join(f).display(), e))?;
    }
    Ok(name)
}

/// Removes a HotAdded device; with `write_back`, blocks the proxy changed
/// go into the disk first. Returns the `(offset, length)` areas written
/// back (for CBT).
pub(crate) fn detach_device(
    devices: &Path,
    name: &str,
    disk: &Path,
    write_back: bool,
) -> Result<Vec<(u64, u64)>, String> {
    let dev = devices.join("dev").join(name);
    let mut changed = Vec::new();
    if write_back {
        let dst = LocalDisk::open(
            disk,
            &OpenOptions {
                writable: true,
                ..OpenOptions::default()
            },
        )
        .map_err(|e| err(disk.display(), e))?;
        let f = File::open(&dev).map_err(|e| err(dev.display(), e))?;
        let cap = dst.capacity();
        let (mut a, mut b) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
        let mut at = 0u64;
        while at < cap {
            let n = (cap - at).min(CHUNK as u64) as usize;
            f.read_exact_at(&mut a[..n], at)
                .map_err(|e| err(dev.display(), e))?;
            dst.read_at(at, &mut b[..n])
                .map_err(|e| err(disk.display(), e))?;
            if a[..n] != b[..n] {
                dst.write_at(at, &a[..n])
                    .map_err(|e| err(disk.display(), e))?;
                // The sectors that differ, in runs: what the proxy wrote.
                let mut run: Option<(u64, u64)> = None;
                for (i, (x, y)) in a[..n].chunks(512).zip(b[..n].chunks(512)).enumerate() {
                    let sector = at + i as u64 * 512;
                    match (x != y, run) {
                        (true, Some((start, len))) if start + len == sector => {
                            run = Some((start, len + x.len() as u64))
                        }
                        (true, _) => {
                            changed.extend(run);
                            run = Some((sector, x.len() as u64));
                        }
                        (false, _) => {}
                    }
                }
                changed.extend(run);
            }
            at += n as u64;
        }
        dst.close().map_err(|e| err(disk.display(), e))?;
    }
    let _ = std::fs::remove_dir_all(devices.join("sys/block").join(name));
    let _ = std::fs::remove_file(dev);
    Ok(changed)
}

/// For a disk type the simulator places on a LUN, whether it is thin;
/// `None` for types kept as ordinary files (sparse disks and the like).
pub(crate) fn lun_disk_type(t: &str) -> Option<bool> {
    match t {
        "vmfs" | "vmfsEagerZeroedThick" | "vmfsPreallocated" => Some(false),
        "vmfsThin" => Some(true),
        _ => None,
    }
}
