//! Connections: parameters, credentials and open flags, connecting
//! (local, or to a VM on vCenter / ESXi), opening a disk through the best
//! transport, PrepareForAccess / EndAccess / Cleanup, and the queries of
//! the VM's disks and changed areas.

use std::sync::Arc;

use transport_hotadd::HotAddDisk;
use transport_san::{BlockMap, DiskLocation, HostBlockMap, LunExtent, SanDisk};
use vim_soap::client::{Client, ClientConfig, Thumbprint};
use vim_soap::codec::{self, MoRef};
use vim_soap::Secret;

use crate::error::{Error, Result};
use vmdk_file::local::{LocalDisk, OpenOptions};

use super::config::{Library, SanBlockMaps, TransportMode, DEFAULT_TRANSPORTS};
use super::disk::{Backend, Disk};

/// How to log in.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// User and password.
    UserPassword {
        /// User.
        user: String,
        /// Password.
        password: Secret,
    },
    /// An existing `vmware_soap_session` cookie.
    SessionCookie(Secret),
}

impl Credentials {
    /// User and password.
    pub fn password(user: &str, password: &str) -> Self {
        Credentials::UserPassword {
            user: user.into(),
            password: Secret::new(password),
        }
    }
}

/// `VixDiskLibConnectParams`.
#[derive(Clone, Debug)]
pub struct ConnectParams {
    /// `host:port` of vCenter / ESXi; `None` for local disks.
    pub server: Option<String>,
    /// Certificate thumbprint (required for a server).
    pub thumbprint: Option<String>,
    /// Login.
    pub credentials: Option<Credentials>,
    /// The VM (`vm-42`; `moref=` accepted).
    pub vm: Option<String>,
}

impl ConnectParams {
    /// Local disks.
    pub fn local() -> Self {
        Self {
            server: None,
            thumbprint: None,
            credentials: None,
            vm: None,
        }
    }
    /// A VM on a server.
    pub fn remote(server: &str, thumbprint: &str, credentials: Credentials, vm: &str) -> Self {
        Self {
            server: Some(server.into()),
            thumbprint: Some(thumbprint.into()),
            credentials: Some(credentials),
            vm: Some(vm.into()),
        }
    }
}

/// What an open needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// `VIXDISKLIB_FLAG_OPEN_READ_ONLY`.
    pub read_only: bool,
    /// `VIXDISKLIB_FLAG_OPEN_COMPRESSION_ZLIB`.
    pub compression: bool,
    /// `VIXDISKLIB_FLAG_OPEN_SINGLE_LINK` (local disks): only the named
    /// link, without its parents; unallocated grains read as zeros and
    /// `query_allocated_blocks` reports only that link's grains (backup
    /// software reading a snapshot's delta). A delta opened so is
    /// read-only.
    pub single_link: bool,
}

impl OpenFlags {
    /// Read-only.
    pub fn read_only() -> Self {
        Self {
            read_only: true,
            ..Self::default()
        }
    }
}

struct Remote {
    client: Arc<Client>,
    vm: MoRef,
    snapshot: Option<MoRef>,
}

/// A connection: local, or to a VM on a server.
pub struct Connection {
    lib: Library,
    remote: Option<Remote>,
    read_only: bool,
    transports: Vec<TransportMode>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.remote.as_ref().map(|r| r.vm.value.clone()))
            .field("transports", &self.transports)
            .finish()
    }
}

fn vm_moref(s: &str) -> MoRef {
    MoRef::new("VirtualMachine", s.strip_prefix("moref=").unwrap_or(s))
}

impl Connection {
    /// Whether every open through this connection is read-only
    /// (`ConnectEx(readOnly = TRUE)`).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Connects. A requested advanced transport that is unavailable does
    /// not fail here; `open` skips it.
    pub fn connect(
        lib: &Library,
        params: &ConnectParams,
        read_only: bool,
        snapshot: Option<&str>,
        transports: Option<&str>,
    ) -> Result<Self> {
        let Some(server) = &params.server else {
            return Ok(Self {
                lib: lib.clone(),
                remote: None,
                read_only,
                transports: vec![TransportMode::File],
            });
        };
        let tp = params.thumbprint.as_deref().ok_or_else(|| {
            Error::InvalidArgument("a server needs its certificate thumbprint".into())
        })?;
        let client = Client::connect(ClientConfig::new(server.clone(), Thumbprint::parse(tp)?))?;
        match &params.credentials {
            Some(Credentials::UserPassword { user, password }) => {
                client.login(user, password)?;
            }
            Some(Credentials::SessionCookie(c)) => client.set_cookie(c.clone()),
            None => return Err(Error::InvalidArgument("a server needs credentials".into())),
        }
        let vm = vm_moref(params.vm.as_deref().ok_or_else(|| {
            Error::InvalidArgument("a server connection needs the VM's moref".into())
        })?);
        let transports = TransportMode::parse_list(transports.unwrap_or(DEFAULT_TRANSPORTS))?;
        let snapshot = snapshot.map(|s| {
            MoRef::new(
                "VirtualMachineSnapshot",
                s.strip_prefix("moref=").unwrap_or(s),
            )
        });
        Ok(Self {
            lib: lib.clone(),
            remote: Some(Remote {
                client: Arc::new(client),
                vm,
                snapshot,
            }),
            read_only,
            transports,
        })
    }

    /// Local disks only.
    pub fn local(lib: &Library) -> Self {
        Self {
            lib: lib.clone(),
            remote: None,
            read_only: false,
            transports: vec![TransportMode::File],
        }
    }

    /// How this connection opens local disks (paths confined or not, as
    /// the configuration says); read-only.
    pub fn local_open_options(&self) -> OpenOptions {
        self.lib.config.local_open_options()
    }

    /// The vSphere client of a remote connection.
    pub fn client(&self) -> Option<&Arc<Client>> {
        self.remote.as_ref().map(|r| &r.client)
    }

    /// Opens a disk (a local path, or `[datastore] dir/disk.vmdk`) through
    /// the first transport of the list that can actually reach it.
    pub fn open(&self, path: &str, flags: OpenFlags) -> Result<Disk> {
        let read_only = flags.read_only || self.read_only;
        let Some(r) = &self.remote else {
            let opts = OpenOptions {
                writable: !read_only,
                single_link: flags.single_link,
                ..self.lib.config.local_open_options()
            };
            let d = LocalDisk::open(path, &opts)?;
            return Ok(Disk::new(Backend::Local(d), TransportMode::File, None));
        };
        let remote = || {
            Some((
                Arc::clone(&r.client),
                r.vm.clone(),
                r.snapshot.clone(),
                path.to_string(),
            ))
        };
        let streams = self.lib.config.streams();
        let mut failed: Vec<(TransportMode, Error)> = Vec::new();
        for &mode in &self.transports {
            let ssl = match mode {
                TransportMode::NbdSsl => true,
                TransportMode::Nbd => false,
                TransportMode::San => {
                    match self.open_san(r, path, read_only) {
                        Ok((d, meta)) => {
                            let mut disk = Disk::new(Backend::San(d, streams), mode, remote());
                            disk.meta = Some(meta);
                            disk.writable = !read_only;
                            return Ok(disk);
                        }
                        Err(e) => failed.push((mode, e)),
                    }
                    continue;
                }
                TransportMode::HotAdd => {
                    match HotAddDisk::attach(
                        Arc::clone(&r.client),
                        &r.vm,
                        r.snapshot.as_ref(),
                        path,
                        &self.lib.config.hotadd_options(!read_only),
                    ) {
                        Ok(d) => {
                            let meta = d.disk_info().clone();
                            let mut disk = Disk::new(Backend::HotAdd(d, streams), mode, remote());
                            disk.meta = Some(meta);
                            disk.writable = !read_only;
                            return Ok(disk);
                        }
                        Err(e) => failed.push((mode, e.into())),
                    }
                    continue;
                }
                TransportMode::File => {
                    failed.push((mode, Error::InvalidArgument("only for local disks".into())));
                    continue;
                }
            };
            let mut opts = self.lib.config.nbd_options(ssl);
            if flags.compression {
                opts.compression = transport_nbd::Compression::Zlib;
            }
            match transport_nbd::open_vm_disk(
                Arc::clone(&r.client),
                &r.vm,
                r.snapshot.as_ref(),
                path,
                read_only,
                opts,
            ) {
                Ok(d) => {
                    let mut disk = Disk::new(Backend::Nbd(d), mode, remote());
                    disk.writable = !read_only;
                    return Ok(disk);
                }
                Err(e @ transport_nbd::Error::InvalidArgument(_)) => return Err(e.into()),
                Err(e) => failed.push((mode, e.into())),
            }
        }
        Err(no_transport(path, failed))
    }

    /// The san transport: the disk's block map from the configured
    /// [`SanBlockMaps`] source, then the LUN among this machine's devices.
    fn open_san(
        &self,
        r: &Remote,
        path: &str,
        read_only: bool,
    ) -> Result<(SanDisk, codec::VirtualDiskInfo)> {
        let meta = disk_info(&r.client, &r.vm, r.snapshot.as_ref(), path)?;
        let disk = DiskLocation {
            vm: &r.vm.value,
            snapshot: r.snapshot.as_ref().map(|s| s.value.as_str()),
            device_key: meta.key,
            path,
        };
        let host = match &self.lib.config.san_block_maps {
            SanBlockMaps::None => {
                return Err(transport_san::Error::Declined(
                    "no block-map source is configured (VMware's host interfaces for block maps are unpublished)"
                        .into(),
                )
                .into())
            }
            SanBlockMaps::Simulator => SimulatorBlockMaps { client: &r.client }.block_map(&disk)?,
            SanBlockMaps::Source(source) => source
                .block_map(&disk)
                .map_err(transport_san::Error::Declined)?,
        };
        let opts = self
            .lib
            .config
            .san_options(!read_only, host.redo_log, host.thin);
        Ok((SanDisk::open(host.map, &opts)?, meta))
    }

    /// `PrepareForAccess`: keeps Storage vMotion away from the VM. The
    /// identity is at most 50 characters. On a lone ESXi host the server's
    /// fault is returned as is.
    pub fn prepare_for_access(&self, identity: &str) -> Result<()> {
        let r = self.remote.as_ref().ok_or_else(|| {
            Error::InvalidArgument("PrepareForAccess needs a server connection".into())
        })?;
        check_identity(identity)?;
        let am = r.client.content().authorization_manager.clone();
        r.client.call(&codec::disable_methods(
            &am,
            std::slice::from_ref(&r.vm),
            &["RelocateVM_Task"],
            identity,
            false,
        ))?;
        Ok(())
    }

    /// `EndAccess`: lets Storage vMotion run again (also after a crash).
    pub fn end_access(&self, identity: &str) -> Result<()> {
        let r = self
            .remote
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("EndAccess needs a server connection".into()))?;
        check_identity(identity)?;
        let am = r.client.content().authorization_manager.clone();
        r.client.call(&codec::enable_methods(
            &am,
            std::slice::from_ref(&r.vm),
            &["RelocateVM_Task"],
            identity,
        ))?;
        Ok(())
    }

    /// `Cleanup`: detaches disks an unclean shutdown left HotAdded to the
    /// proxy VM (from the state file and the proxy's configuration).
    /// Returns (cleaned, remaining); (0, 0) for local connections.
    pub fn cleanup(&self) -> Result<(u32, u32)> {
        let Some(r) = &self.remote else {
            return Ok((0, 0));
        };
        Ok(transport_hotadd::cleanup(
            &r.client,
            &self.lib.config.hotadd_options(false),
        )?)
    }
}

fn check_identity(identity: &str) -> Result<()> {
    if identity.is_empty() || identity.chars().count() > 50 {
        return Err(Error::InvalidArgument(
            "the identity must be 1 to 50 characters".into(),
        ));
    }
    Ok(())
}

/// The disk key of `path` in the VM's (or snapshot's) configuration.
pub fn disk_key(
    client: &Client,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    path: &str,
) -> Result<(i32, u64)> {
    let d = disk_info(client, vm, snapshot, path)?;
    Ok((d.key, d.capacity))
}

/// The disk `path` as the VM's (or snapshot's) configuration shows it.
pub fn disk_info(
    client: &Client,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    path: &str,
) -> Result<codec::VirtualDiskInfo> {
    let owner = snapshot.unwrap_or(vm);
    let val = client
        .property(owner, "config.hardware.device")?
        .ok_or_else(|| Error::InvalidArgument("no devices".into()))?;
    codec::virtual_disks(&val)?
        .into_iter()
        .find(|d| d.file_name == path)
        .ok_or_else(|| Error::NotADisk {
            path: path.to_string(),
            owner: owner.value.clone(),
        })
}

/// `QueryChangedDiskAreas`, every page, assembled and checked.
pub fn changed_areas(
    client: &Client,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    path: &str,
    change_id: &str,
) -> Result<cbt::ExtentList> {
    let (key, capacity) = disk_key(client, vm, snapshot, path)?;
    changed_areas_by_key(client, vm, snapshot, key, capacity, change_id)
}

/// Like [`changed_areas`], for a known device key and capacity.
pub fn changed_areas_by_key(
    client: &Client,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    key: i32,
    capacity: u64,
    change_id: &str,
) -> Result<cbt::ExtentList> {
    let mut asm = cbt::ChangeAssembler::new(capacity);
    while let Some(start) = asm.next_offset() {
        let r = codec::parse_disk_change_info(&client.call(&codec::query_changed_disk_areas(
            vm, snapshot, key, start, change_id,
        ))?)?;
        asm.feed(&cbt::DiskChangeInfo {
            start_offset: r.start_offset,
            length: r.length,
            changed_areas: r
                .changed_area
                .iter()
                .map(|&(s, n)| cbt::Extent::new(s, n))
                .collect(),
        })?;
    }
    Ok(asm.finish()?)
}

/// [`SanBlockMaps::Simulator`]: the simulator's stand-in call on the
/// connection's session.
#[derive(Debug)]
struct SimulatorBlockMaps<'a> {
    client: &'a Client,
}

impl SimulatorBlockMaps<'_> {
    fn block_map(&self, disk: &DiskLocation<'_>) -> Result<HostBlockMap> {
        let vm = MoRef::new("VirtualMachine", disk.vm);
        let snapshot = disk
            .snapshot
            .map(|s| MoRef::new("VirtualMachineSnapshot", s));
        let m = codec::parse_disk_block_map(&self.client.call(
            &codec::sim_query_disk_block_map(&vm, snapshot.as_ref(), disk.device_key),
        )?)?;
        let map = BlockMap::new(
            &m.lun_id,
            m.capacity,
            m.extents
                .iter()
                .map(|e| LunExtent {
                    virtual_offset: e.virtual_offset,
                    lun_offset: e.lun_offset,
                    len: e.length,
                })
                .collect(),
        )?;
        Ok(HostBlockMap {
            map,
            redo_log: m.redo_log,
            thin: m.thin,
        })
    }
}

/// Every transport of the list failed. When they failed for the same
/// reason (a VM or snapshot that does not exist, a path that is not one
/// of its disks), that reason is the cause, and its VixDiskLib code the
/// error's; transports that only declined the disk (a san LUN not
/// visible, a disk HotAdd cannot take) do not hide it.
fn no_transport(path: &str, failed: Vec<(TransportMode, Error)>) -> Error {
    let tried = failed
        .iter()
        .map(|(m, e)| format!("{}: {e}", m.as_str()))
        .collect::<Vec<_>>()
        .join("; ");
    let declined = |e: &Error| {
        matches!(
            e,
            Error::San(transport_san::Error::Declined(_) | transport_san::Error::NotVisible { .. })
                | Error::HotAdd(transport_hotadd::Error::Declined(_))
                | Error::InvalidArgument(_)
        )
    };
    let mut reasons = failed.into_iter().map(|(_, e)| e).filter(|e| !declined(e));
    let cause = reasons.next().filter(|first| {
        let code = first.vix_code();
        reasons.all(|e| e.vix_code() == code)
    });
    Error::NoTransport {
        disk: path.into(),
        tried,
        cause: cause.map(Box::new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Config;
    use vmdk_file::create::{create, CreateOptions, DiskType};

    const G: usize = 65536;

    fn fill(path: &std::path::Path, at: u64, len: usize, byte: u8) {
        let d = LocalDisk::open(
            path,
            &OpenOptions {
                writable: true,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        d.write_at(at, &vec![byte; len]).unwrap();
        d.close().unwrap();
    }

    /// A 1 MiB base with grains 0..4 written, and a delta holding grain 1
    /// and half of grain 5.
    fn chain(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let base = dir.join("base.vmdk");
        create(
            &base,
            &CreateOptions::new(DiskType::MonolithicSparse, 1 << 20),
        )
        .unwrap();
        fill(&base, 0, 4 * G, 0x11);
        let delta = dir.join("base-000001.vmdk");
        vmdk_file::maintain::create_child(&base, &delta).unwrap();
        fill(&delta, G as u64, G, 0x22);
        fill(&delta, 5 * G as u64, G / 2, 0x33);
        (base, delta)
    }

    #[test]
    fn single_link_opens_a_delta_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (base, delta) = chain(dir.path());
        let conn = Connection::local(&Library::init(Config::default()));
        let flags = OpenFlags {
            read_only: true,
            single_link: true,
            ..OpenFlags::default()
        };
        let check = |disk: &Disk| {
            assert_eq!(disk.info().unwrap().num_links, 1);
            let mut got = vec![0u8; 1 << 20];
            disk.read_at(0, &mut got).unwrap();
            let mut want = vec![0u8; 1 << 20];
            want[G..2 * G].fill(0x22);
            want[5 * G..5 * G + G / 2].fill(0x33);
            assert!(got == want, "only the delta's grains, zeros elsewhere");
            assert_eq!(
                disk.query_allocated_blocks(0, 2048, 128).unwrap(),
                vec![(128, 128), (640, 128)],
                "only the delta's grains are allocated"
            );
        };
        let disk = conn.open(delta.to_str().unwrap(), flags).unwrap();
        check(&disk);
        disk.close().unwrap();

        // The whole chain, for contrast.
        let disk = conn
            .open(delta.to_str().unwrap(), OpenFlags::read_only())
            .unwrap();
        assert_eq!(disk.info().unwrap().num_links, 2);
        assert_eq!(
            disk.query_allocated_blocks(0, 2048, 128).unwrap(),
            vec![(0, 512), (640, 128)]
        );
        disk.close().unwrap();

        // The parent is not opened: its CID may differ, it may be gone.
        fill(&base, 0, 512, 0x44);
        assert!(conn
            .open(delta.to_str().unwrap(), OpenFlags::read_only())
            .is_err());
        let disk = conn.open(delta.to_str().unwrap(), flags).unwrap();
        check(&disk);
        disk.close().unwrap();
        std::fs::remove_file(&base).unwrap();
        let disk = conn.open(delta.to_str().unwrap(), flags).unwrap();
        check(&disk);
        disk.close().unwrap();

        // A delta without its parent cannot be written.
        let e = conn
            .open(
                delta.to_str().unwrap(),
                OpenFlags {
                    single_link: true,
                    ..OpenFlags::default()
                },
            )
            .unwrap_err();
        assert_eq!(e.vix_code(), crate::vix::E_FILE_READ_ONLY, "{e}");
    }

    /// Sector numbers and chunk sizes near `u64::MAX` are typed errors,
    /// never an overflow.
    #[test]
    fn allocated_blocks_and_sectors_near_u64_max() {
        let dir = tempfile::tempdir().unwrap();
        let (base, _) = chain(dir.path());
        let conn = Connection::local(&Library::init(Config::default()));
        let disk = conn
            .open(base.to_str().unwrap(), OpenFlags::read_only())
            .unwrap();
        for (start, count, chunk) in [
            (u64::MAX - 1, 1, 128),
            (u64::MAX / 512 + 1, 1, 128),
            (1, u64::MAX, 128),
            (u64::MAX, u64::MAX, 128),
        ] {
            assert!(
                matches!(
                    disk.query_allocated_blocks(start, count, chunk),
                    Err(Error::OutOfRange { .. })
                ),
                "{start} {count}"
            );
        }
        for chunk in [u64::MAX, u64::MAX / 512 + 1] {
            assert!(matches!(
                disk.query_allocated_blocks(0, 2048, chunk),
                Err(Error::InvalidArgument(_))
            ));
        }
        // The largest chunk that fits: one block covering the data.
        assert_eq!(
            disk.query_allocated_blocks(0, 2048, u64::MAX / 512)
                .unwrap(),
            vec![(0, 2048)]
        );
        let mut b = [0u8; 512];
        for s in [u64::MAX, u64::MAX / 512 + 1] {
            assert!(disk.read_sectors(s, &mut b).is_err());
        }
        assert!(disk
            .read_scattered(&mut b, &[(0, usize::MAX, 2), (0, 1, usize::MAX)])
            .is_err());
        disk.close().unwrap();
    }

    #[test]
    fn single_link_on_a_disk_without_parent_is_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (base, _) = chain(dir.path());
        let conn = Connection::local(&Library::init(Config::default()));
        let disk = conn
            .open(
                base.to_str().unwrap(),
                OpenFlags {
                    single_link: true,
                    ..OpenFlags::default()
                },
            )
            .unwrap();
        disk.write_at(0, &[0x55; 512]).unwrap();
        let mut b = [0u8; 1024];
        disk.read_at(0, &mut b).unwrap();
        assert!(b[..512].iter().all(|&x| x == 0x55) && b[512..].iter().all(|&x| x == 0x11));
        disk.close().unwrap();
    }
}
