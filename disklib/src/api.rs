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

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use transport_hotadd::{HotAddDisk, HotAddOptions};
use transport_nbd::{NbdDisk, NbdOptions, Timeouts};
use transport_san::{
    BlockMap, BlockMapSource, DiskLocation, HostBlockMap, LunExtent, SanDisk, SanOptions,
};
use vim_soap::client::{Client, ClientConfig, Thumbprint};
use vim_soap::codec::{self, MoRef};
use vim_soap::Secret;

use crate::error::{Error, Result};
use vmdk_file::local::{AllocKind, LocalDisk, OpenOptions};

/// Settings from an InitEx configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `vixDiskLib.transport.LogLevel` (0–6).
    pub log_level: Option<u32>,
    /// `vixDiskLib.nfc.LogLevel`.
    pub nfc_log_level: Option<u32>,
    /// The `vixDiskLib.nfc.*TimeoutMs` keys.
    pub nfc_timeouts: Timeouts,
    /// `vixDiskLib.nfcFssrvr.TimeoutMs`.
    pub fssrvr_timeout: Option<Duration>,
    /// `vixDiskLib.nfcAio.Session.BufCount` (requests in flight).
    pub aio_buf_count: Option<usize>,
    /// `vixDiskLib.nfcAio.Session.BufSizeIn64KB` (request size).
    pub aio_buf_size_64k: Option<usize>,
    /// `vixDiskLib.transport.san.allowList` / `whitelist`.
    pub san_allow: Vec<String>,
    /// `vixDiskLib.transport.san.denyList` / `blacklist`.
    pub san_deny: Vec<String>,
    /// `tmpDirectory`.
    pub tmp_directory: Option<String>,
    /// `vixDiskLib.disklib.EnableCache`.
    pub enable_cache: bool,
    /// `vixDiskLib.transport.deviceRoot` (this kit's key): the root under
    /// which the proxy's `dev` and `sys` are found (`/`; a simulator's
    /// proxy host directory in tests).
    pub device_root: Option<String>,
    /// `vixDiskLib.transport.san.streams` (this kit's key): parallel
    /// requests per SAN / HotAdd disk (default [`DEFAULT_STREAMS`]).
    pub san_streams: Option<usize>,
    /// `vixDiskLib.transport.hotadd.proxyVm` (this kit's key): the proxy
    /// VM's moref or BIOS UUID (default: this machine's SMBIOS UUID).
    pub hotadd_proxy_vm: Option<String>,
    /// `vixDiskLib.transport.hotadd.stateFile` (this kit's key): where
    /// attaches are recorded for `Cleanup` (default: in `tmpDirectory`).
    pub hotadd_state_file: Option<String>,
    /// Where the san transport learns block maps
    /// (`vixDiskLib.transport.san.blockMapSource = "simulator"`, this
    /// kit's key, or a source of the caller's); none by default.
    pub san_block_maps: SanBlockMaps,
    /// Keys that were not understood (warned about, not fatal).
    pub unknown: Vec<String>,
}

/// Where the san transport learns which LUN blocks hold a disk.
///
/// VMware's hosts give VDDK block maps through internal interfaces whose
/// bytes are unpublished, so nothing is asked of a real vCenter: with
/// [`SanBlockMaps::None`] san declines and the next transport is used.
#[derive(Clone, Debug, Default)]
pub enum SanBlockMaps {
    /// No source: san declines.
    #[default]
    None,
    /// The kit's simulator: `SimQueryDiskBlockMap` on the connection
    /// (`vim_soap::codec::sim_query_disk_block_map`), which only the
    /// simulator answers. `vdisk sim serve` writes the key that selects it.
    Simulator,
    /// A source of the caller's.
    Source(Arc<dyn BlockMapSource>),
}

impl PartialEq for SanBlockMaps {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::None, Self::None) | (Self::Simulator, Self::Simulator) => true,
            (Self::Source(a), Self::Source(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for SanBlockMaps {}

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

impl Config {
    /// Parses `name = "value"` lines (`#` comments, quotes optional).
    pub fn parse(text: &str) -> Self {
        let mut c = Config::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                c.unknown.push(line.to_string());
                continue;
            };
            let key = k.trim();
            let v = v.trim().trim_matches('"');
            let ms = || {
                v.parse::<u64>()
                    .ok()
                    .filter(|&m| m > 0)
                    .map(Duration::from_millis)
            };
            let list = || {
                v.split([',', ' ', ';'])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            match key.to_ascii_lowercase().as_str() {
                "tmpdirectory" => c.tmp_directory = Some(v.to_string()),
                "vixdisklib.transport.loglevel" => c.log_level = v.parse().ok(),
                "vixdisklib.nfc.loglevel" => c.nfc_log_level = v.parse().ok(),
                "vixdisklib.nfc.accepttimeoutms" => c.nfc_timeouts.accept = ms(),
                "vixdisklib.nfc.requesttimeoutms" => c.nfc_timeouts.request = ms(),
                "vixdisklib.nfc.readtimeoutms" => c.nfc_timeouts.read = ms(),
                "vixdisklib.nfc.writetimeoutms" => c.nfc_timeouts.write = ms(),
                "vixdisklib.nfcfssrvr.timeoutms" | "vixdisklib.nfcfssrvrwrite.timeoutms" => {
                    c.fssrvr_timeout = ms()
                }
                "vixdisklib.nfcaio.session.bufcount" => c.aio_buf_count = v.parse().ok(),
                "vixdisklib.nfcaio.session.bufsizein64kb" => c.aio_buf_size_64k = v.parse().ok(),
                "vixdisklib.transport.san.allowlist" | "vixdisklib.transport.san.whitelist" => {
                    c.san_allow = list()
                }
                "vixdisklib.transport.san.denylist" | "vixdisklib.transport.san.blacklist" => {
                    c.san_deny = list()
                }
                "vixdisklib.disklib.enablecache" => {
                    c.enable_cache = v == "1" || v.eq_ignore_ascii_case("true")
                }
                "vixdisklib.transport.deviceroot" => c.device_root = Some(v.to_string()),
                "vixdisklib.transport.san.streams" => c.san_streams = v.parse().ok(),
                "vixdisklib.transport.hotadd.proxyvm" => c.hotadd_proxy_vm = Some(v.to_string()),
                "vixdisklib.transport.hotadd.statefile" => {
                    c.hotadd_state_file = Some(v.to_string())
                }
                "vixdisklib.transport.san.blockmapsource" if v == "simulator" => {
                    c.san_block_maps = SanBlockMaps::Simulator
                }
                "linuxssl.verifycertificates" => {} // certificates are always verified
                _ => c.unknown.push(key.to_string()),
            }
        }
        for k in &c.unknown {
            tracing::warn!(key = %k, "unknown configuration key ignored");
        }
        c
    }

    /// Reads and parses a file of at most [`Config::MAX_FILE_BYTES`].
    pub fn load(path: &Path) -> Result<Self> {
        use std::io::Read;
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut bytes = Vec::new();
        f.take(Self::MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        if bytes.len() as u64 > Self::MAX_FILE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{}: a configuration file larger than {} bytes",
                path.display(),
                Self::MAX_FILE_BYTES
            )));
        }
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::InvalidArgument(format!(
                "{}: the configuration file is not UTF-8",
                path.display()
            ))
        })?;
        Ok(Self::parse(&text))
    }

    /// VDDK configuration files are a few lines; anything past this is
    /// refused rather than read.
    pub const MAX_FILE_BYTES: u64 = 1 << 20;

    fn device_root(&self) -> PathBuf {
        PathBuf::from(self.device_root.as_deref().unwrap_or("/"))
    }

    /// Parallel requests per SAN / HotAdd disk.
    pub fn streams(&self) -> usize {
        self.san_streams.unwrap_or(DEFAULT_STREAMS).clamp(1, 64)
    }

    /// san options these settings imply.
    pub fn san_options(&self, writable: bool, redo_log: bool, thin: bool) -> SanOptions {
        SanOptions {
            device_dir: self.device_root().join("dev/disk/by-id"),
            allow: self.san_allow.clone(),
            deny: self.san_deny.clone(),
            writable,
            redo_log,
            thin,
        }
    }

    /// hotadd options these settings imply.
    pub fn hotadd_options(&self, writable: bool) -> HotAddOptions {
        let state_file = match (&self.hotadd_state_file, &self.tmp_directory) {
            (Some(f), _) => PathBuf::from(f),
            (None, Some(t)) => Path::new(t).join("vddk-rs-hotadd.state"),
            (None, None) => std::env::temp_dir().join("vddk-rs-hotadd.state"),
        };
        HotAddOptions {
            proxy_vm: self.hotadd_proxy_vm.clone(),
            device_root: self.device_root(),
            state_file,
            writable,
            ..HotAddOptions::default()
        }
    }

    /// nbd/nbdssl options these settings imply.
    pub fn nbd_options(&self, ssl: bool) -> NbdOptions {
        let mut o = NbdOptions {
            ssl,
            timeouts: self.nfc_timeouts,
            ..NbdOptions::default()
        };
        if let Some(n) = self.aio_buf_count {
            o.in_flight = n.clamp(1, 64);
        }
        if let Some(n) = self.aio_buf_size_64k {
            o.max_request = (n.clamp(1, 256)) * 65536;
        }
        // A configured timeout needs a keep-alive, or an idle backup loses
        // its session (VMware's advice: read block 0 periodically).
        if let Some(t) = [o.timeouts.read, o.timeouts.request]
            .into_iter()
            .flatten()
            .min()
        {
            o.keepalive = Some(t / 2);
        }
        o
    }
}

/// An initialised library. `init` → `exit` → `init` works as often as
/// wanted: there is no hidden global state.
#[derive(Clone, Debug)]
pub struct Library {
    config: Arc<Config>,
}

impl Library {
    /// Initialises with a configuration.
    pub fn init(config: Config) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Releases the library (connections keep working until dropped).
    pub fn exit(self) {}
}

/// Transports, VixDiskLib's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportMode {
    /// Local files.
    File,
    /// Direct LUN access.
    San,
    /// Disk attached to the proxy VM.
    HotAdd,
    /// NFC over TLS.
    NbdSsl,
    /// NFC over TCP.
    Nbd,
}

impl TransportMode {
    /// VixDiskLib's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportMode::File => "file",
            TransportMode::San => "san",
            TransportMode::HotAdd => "hotadd",
            TransportMode::NbdSsl => "nbdssl",
            TransportMode::Nbd => "nbd",
        }
    }
    fn from_name(s: &str) -> Option<Self> {
        [Self::File, Self::San, Self::HotAdd, Self::NbdSsl, Self::Nbd]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
    }
    /// Parses a colon-separated list (unknown names are an error).
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        s.split(':')
            .filter(|x| !x.is_empty())
            .map(|x| {
                Self::from_name(x)
                    .ok_or_else(|| Error::InvalidArgument(format!("unknown transport `{x}`")))
            })
            .collect()
    }
}

/// Parallel requests per SAN / HotAdd disk (VMware's advice is about six
/// SAN streams per host).
pub const DEFAULT_STREAMS: usize = 6;

/// The default order when a connection names none.
pub const DEFAULT_TRANSPORTS: &str = "san:hotadd:nbdssl:nbd";

/// Transports this build implements.
pub fn list_transport_modes() -> &'static str {
    "file:san:hotadd:nbdssl:nbd"
}

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
    /// `VIXDISKLIB_FLAG_OPEN_SINGLE_LINK` (local: only the top link).
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
                max_chain_depth: if flags.single_link {
                    1
                } else {
                    vmdk_file::local::DEFAULT_MAX_CHAIN_DEPTH
                },
                ..OpenOptions::default()
            };
            let d = match LocalDisk::open(path, &opts) {
                Err(vmdk_file::Error::ChainTooDeep(..)) if flags.single_link => LocalDisk::open(
                    path,
                    &OpenOptions {
                        ignore_cid_mismatch: true,
                        ..opts
                    },
                )?,
                other => other?,
            };
            return Ok(Disk::new(Backend::Local(d), TransportMode::File, None));
        };
        let mut tried = Vec::new();
        let remote = || {
            Some((
                Arc::clone(&r.client),
                r.vm.clone(),
                r.snapshot.clone(),
                path.to_string(),
            ))
        };
        let streams = self.lib.config.streams();
        for &mode in &self.transports {
            let ssl = match mode {
                TransportMode::NbdSsl => true,
                TransportMode::Nbd => false,
                TransportMode::San => {
                    match self.open_san(r, path, read_only) {
                        Ok((d, meta)) => {
                            let mut disk = Disk::new(Backend::San(d, streams), mode, remote());
                            disk.meta = Some(meta);
                            return Ok(disk);
                        }
                        Err(e) => tried.push(format!("san: {e}")),
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
                            return Ok(disk);
                        }
                        Err(e) => tried.push(format!("hotadd: {e}")),
                    }
                    continue;
                }
                TransportMode::File => {
                    tried.push("file: only for local disks".into());
                    continue;
                }
            };
            let mut opts = self.lib.config.nbd_options(ssl);
            opts.compression = flags.compression;
            match transport_nbd::open_vm_disk(
                Arc::clone(&r.client),
                &r.vm,
                r.snapshot.as_ref(),
                path,
                read_only,
                opts,
            ) {
                Ok(d) => return Ok(Disk::new(Backend::Nbd(d), mode, remote())),
                Err(e @ transport_nbd::Error::InvalidArgument(_)) => return Err(e.into()),
                Err(e) => tried.push(format!("{}: {e}", mode.as_str())),
            }
        }
        Err(Error::NoTransport {
            disk: path.into(),
            tried: tried.join("; "),
        })
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

enum Backend {
    Local(LocalDisk),
    Nbd(NbdDisk),
    /// With the number of parallel requests.
    San(SanDisk, usize),
    /// With the number of parallel requests.
    HotAdd(HotAddDisk, usize),
}

/// `VixDiskLibInfo`, in bytes and sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Capacity in sectors.
    pub capacity_sectors: u64,
    /// BIOS/physical geometry (cylinders, heads, sectors).
    pub geometry: (u32, u32, u32),
    /// VixDiskLib adapter type (1 IDE, 2 BusLogic, 3 LSI Logic, 256 unknown).
    pub adapter_type: u32,
    /// Links in the chain.
    pub num_links: u32,
    /// Parent file name hint.
    pub parent_file_name_hint: Option<String>,
    /// `ddb.uuid`.
    pub uuid: Option<String>,
}

type Job = Box<dyn FnOnce(&Backend) + Send>;

struct Outstanding {
    count: Mutex<usize>,
    zero: Condvar,
}

/// An open disk. Many threads may use it at once.
pub struct Disk {
    backend: Arc<Backend>,
    mode: TransportMode,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    outstanding: Arc<Outstanding>,
    remote: Option<(Arc<Client>, MoRef, Option<MoRef>, String)>,
    /// The disk as the VM's configuration describes it (san, hotadd).
    meta: Option<codec::VirtualDiskInfo>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("mode", &self.mode)
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// Completion callback of an asynchronous request (called exactly once).
pub type Completion = Box<dyn FnOnce(Result<Vec<u8>>) + Send>;

impl Disk {
    fn new(
        b: Backend,
        mode: TransportMode,
        remote: Option<(Arc<Client>, MoRef, Option<MoRef>, String)>,
    ) -> Self {
        Self {
            backend: Arc::new(b),
            mode,
            jobs: Mutex::new(None),
            outstanding: Arc::new(Outstanding {
                count: Mutex::new(0),
                zero: Condvar::new(),
            }),
            remote,
            meta: None,
        }
    }

    /// The transport chosen at open.
    pub fn transport_mode(&self) -> &'static str {
        self.mode.as_str()
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        match &*self.backend {
            Backend::Local(d) => d.capacity(),
            Backend::Nbd(d) => d.capacity(),
            Backend::San(d, _) => d.capacity(),
            Backend::HotAdd(d, _) => d.capacity(),
        }
    }

    /// Reads at a byte offset.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        read(&self.backend, offset, buf)
    }

    /// Reads several ranges `(disk offset, buffer offset, length)` into one
    /// buffer; remote transports keep requests in flight across ranges.
    pub fn read_scattered(&self, buf: &mut [u8], parts: &[(u64, usize, usize)]) -> Result<()> {
        match &*self.backend {
            Backend::Nbd(d) => Ok(d.read_scattered(buf, parts)?),
            Backend::San(d, n) => Ok(d.read_many(disjoint(buf, parts)?, *n)?),
            Backend::HotAdd(d, n) => Ok(d.read_many(disjoint(buf, parts)?, *n)?),
            Backend::Local(d) => {
                for &(off, at, len) in parts {
                    let dest = buf.get_mut(at..at + len).ok_or_else(|| {
                        Error::InvalidArgument("a range does not fit the buffer".into())
                    })?;
                    d.read_at(off, dest)?;
                }
                Ok(())
            }
        }
    }

    /// Writes at a byte offset.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        write(&self.backend, offset, data)
    }

    /// Reads whole sectors.
    pub fn read_sectors(&self, start: u64, buf: &mut [u8]) -> Result<()> {
        if !buf.len().is_multiple_of(512) {
            return Err(Error::InvalidArgument(
                "buffer is not a whole number of sectors".into(),
            ));
        }
        self.read_at(
            start
                .checked_mul(512)
                .ok_or_else(|| Error::InvalidArgument("sector out of range".into()))?,
            buf,
        )
    }

    /// Writes whole sectors.
    pub fn write_sectors(&self, start: u64, data: &[u8]) -> Result<()> {
        if !data.len().is_multiple_of(512) {
            return Err(Error::InvalidArgument(
                "buffer is not a whole number of sectors".into(),
            ));
        }
        self.write_at(
            start
                .checked_mul(512)
                .ok_or_else(|| Error::InvalidArgument("sector out of range".into()))?,
            data,
        )
    }

    fn submit(&self, job: Job) {
        *self
            .outstanding
            .count
            .lock()
            .unwrap_or_else(|p| p.into_inner()) += 1;
        let mut g = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let tx = g.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let backend = Arc::clone(&self.backend);
            std::thread::spawn(move || {
                for job in rx {
                    job(&backend);
                }
            });
            tx
        });
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            job(&self.backend);
        }
    }

    fn finish(out: &Arc<Outstanding>) {
        let mut c = out.count.lock().unwrap_or_else(|p| p.into_inner());
        *c -= 1;
        if *c == 0 {
            out.zero.notify_all();
        }
    }

    /// Reads asynchronously into a buffer of `len` bytes; `done` gets it.
    pub fn read_async(&self, offset: u64, len: usize, done: Completion) {
        let out = Arc::clone(&self.outstanding);
        self.submit(Box::new(move |b| {
            let mut buf = vec![0u8; len];
            let r = read(b, offset, &mut buf).map(|()| buf);
            done(r);
            Self::finish(&out);
        }));
    }

    /// Writes asynchronously; `done` gets the data back.
    pub fn write_async(&self, offset: u64, data: Vec<u8>, done: Completion) {
        let out = Arc::clone(&self.outstanding);
        self.submit(Box::new(move |b| {
            let r = write(b, offset, &data).map(|()| data);
            done(r);
            Self::finish(&out);
        }));
    }

    /// Waits for every outstanding asynchronous request.
    pub fn wait(&self) {
        let mut c = self
            .outstanding
            .count
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while *c > 0 {
            c = self
                .outstanding
                .zero
                .wait(c)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Makes written data durable.
    pub fn flush(&self) -> Result<()> {
        self.wait();
        match &*self.backend {
            Backend::Local(d) if d.is_writable() => Ok(d.flush()?),
            Backend::Local(_) => Ok(()),
            Backend::Nbd(d) => Ok(d.flush()?),
            Backend::San(d, _) => Ok(d.flush()?),
            Backend::HotAdd(d, _) => Ok(d.flush()?),
        }
    }

    /// `GetInfo`.
    pub fn info(&self) -> Result<Info> {
        let adapter = |a: Option<&str>| match a {
            Some("ide") => 1,
            Some("buslogic") => 2,
            Some("lsilogic") => 3,
            _ => 256,
        };
        match &*self.backend {
            Backend::Local(d) => {
                let desc = d.descriptor();
                let g = desc
                    .bios_geometry()
                    .or(desc.geometry())
                    .map(|g| (g.cylinders, g.heads, g.sectors))
                    .unwrap_or_default();
                Ok(Info {
                    capacity_sectors: d.capacity() / 512,
                    geometry: g,
                    adapter_type: adapter(desc.adapter_type()),
                    num_links: d.links().len() as u32,
                    parent_file_name_hint: desc.parent_file_name_hint.clone(),
                    uuid: desc.ddb_get("ddb.uuid").map(str::to_string),
                })
            }
            Backend::San(..) | Backend::HotAdd(..) => {
                let m = self.meta.as_ref().ok_or_else(|| {
                    Error::InvalidArgument("the disk's configuration is not known".into())
                })?;
                // VMware's geometry for SCSI disks: 255 heads, 63 sectors.
                let sectors = m.capacity / 512;
                Ok(Info {
                    capacity_sectors: sectors,
                    geometry: ((sectors / (255 * 63)).clamp(1, 65535) as u32, 255, 63),
                    adapter_type: 256,
                    num_links: 1,
                    parent_file_name_hint: None,
                    uuid: m.uuid.clone(),
                })
            }
            Backend::Nbd(d) => {
                let i = d.info()?;
                Ok(Info {
                    capacity_sectors: i.capacity / 512,
                    geometry: i.geometry,
                    adapter_type: i.adapter,
                    num_links: i.links,
                    parent_file_name_hint: None,
                    uuid: d.ddb("ddb.uuid")?,
                })
            }
        }
    }

    /// Every DDB key (local disks).
    pub fn metadata_keys(&self) -> Result<Vec<String>> {
        match &*self.backend {
            Backend::Local(d) => Ok(d.descriptor().ddb.iter().map(|(k, _)| k.clone()).collect()),
            Backend::Nbd(_) | Backend::San(..) | Backend::HotAdd(..) => Err(Error::Unsupported {
                path: "remote disk".into(),
                what: format!("listing DDB keys over {}", self.mode.as_str()),
            }),
        }
    }

    /// One DDB value.
    pub fn read_metadata(&self, key: &str) -> Result<Option<String>> {
        match &*self.backend {
            Backend::Local(d) => Ok(d.descriptor().ddb_get(key).map(str::to_string)),
            Backend::Nbd(d) => Ok(d.ddb(key)?),
            Backend::San(..) | Backend::HotAdd(..) => match key {
                "uuid" | "ddb.uuid" => Ok(self.meta.as_ref().and_then(|m| m.uuid.clone())),
                _ => Err(Error::Unsupported {
                    path: "remote disk".into(),
                    what: format!(
                        "reading DDB key {key} over {} (use nbd or nbdssl)",
                        self.mode.as_str()
                    ),
                }),
            },
        }
    }

    /// Sets a DDB value (local disks opened for writing).
    pub fn write_metadata(&self, key: &str, value: &str) -> Result<()> {
        match &*self.backend {
            Backend::Local(d) => Ok(d.set_metadata(key, value)?),
            Backend::Nbd(_) | Backend::San(..) | Backend::HotAdd(..) => Err(Error::Unsupported {
                path: "remote disk".into(),
                what: format!("writing DDB keys over {}", self.mode.as_str()),
            }),
        }
    }

    /// `QueryAllocatedBlocks`: allocated ranges `(start, count)` in sectors,
    /// at `chunk` sectors of granularity, inside the sector range asked.
    pub fn query_allocated_blocks(
        &self,
        start: u64,
        count: u64,
        chunk: u64,
    ) -> Result<Vec<(u64, u64)>> {
        if chunk < 128 || count == 0 {
            return Err(Error::InvalidArgument(
                "chunk size is at least 128 sectors".into(),
            ));
        }
        let cap = self.capacity() / 512;
        if start.checked_add(count).is_none_or(|e| e > cap) {
            return Err(Error::OutOfRange {
                offset: start * 512,
                len: count * 512,
                capacity: cap * 512,
            });
        }
        let allocated: cbt::ExtentList = match &*self.backend {
            Backend::Local(d) => d
                .map()?
                .iter()
                .filter(|e| e.kind == AllocKind::Data)
                .map(|e| cbt::Extent::new(e.start, e.length))
                .collect(),
            Backend::Nbd(_) | Backend::San(..) | Backend::HotAdd(..) => {
                let (client, vm, snap, path) = self
                    .remote
                    .as_ref()
                    .ok_or_else(|| Error::InvalidArgument("no connection".into()))?;
                changed_areas(client, vm, snap.as_ref(), path, "*")?
            }
        };
        let window = cbt::ExtentList::from_sorted([cbt::Extent::new(start * 512, count * 512)]);
        let got = allocated.align(chunk * 512).intersection(&window);
        Ok(got
            .iter()
            .map(|e| (e.start / 512, e.len.div_ceil(512)))
            .collect())
    }

    /// Waits for outstanding requests and closes.
    pub fn close(self) -> Result<()> {
        self.wait();
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        match Arc::try_unwrap(self.backend) {
            Ok(Backend::Local(d)) => Ok(d.close()?),
            Ok(Backend::Nbd(d)) => Ok(d.close()?),
            Ok(Backend::San(d, _)) => Ok(d.flush()?),
            Ok(Backend::HotAdd(d, _)) => Ok(d.close()?),
            Err(_) => Ok(()), // the worker still holds it; it is dropped with the worker
        }
    }
}

fn read(b: &Backend, offset: u64, buf: &mut [u8]) -> Result<()> {
    match b {
        Backend::Local(d) => Ok(d.read_at(offset, buf)?),
        Backend::Nbd(d) => Ok(d.read_at(offset, buf)?),
        Backend::San(d, n) => Ok(d.read_streams(offset, buf, *n)?),
        Backend::HotAdd(d, n) => Ok(d.read_at(offset, buf, *n)?),
    }
}

fn write(b: &Backend, offset: u64, data: &[u8]) -> Result<()> {
    match b {
        Backend::Local(d) => Ok(d.write_at(offset, data)?),
        Backend::Nbd(d) => Ok(d.write_at(offset, data)?),
        Backend::San(d, n) => Ok(d.write_streams(offset, data, *n)?),
        Backend::HotAdd(d, n) => Ok(d.write_at(offset, data, *n)?),
    }
}

/// Splits `buf` into the disjoint pieces `parts` (disk offset, buffer
/// offset, length) name; overlapping or out-of-buffer parts are refused.
fn disjoint<'a>(
    buf: &'a mut [u8],
    parts: &[(u64, usize, usize)],
) -> Result<Vec<(u64, &'a mut [u8])>> {
    let mut order: Vec<&(u64, usize, usize)> = parts.iter().collect();
    order.sort_by_key(|p| p.1);
    let mut out = Vec::with_capacity(parts.len());
    let mut rest = buf;
    let mut consumed = 0usize;
    for &&(off, at, len) in &order {
        let bad = || Error::InvalidArgument("ranges overlap or do not fit the buffer".into());
        let skip = at.checked_sub(consumed).ok_or_else(bad)?;
        if skip.checked_add(len).is_none_or(|e| e > rest.len()) {
            return Err(bad());
        }
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
        let (piece, tail) = tail.split_at_mut(len);
        out.push((off, piece));
        rest = tail;
        consumed = at + len;
    }
    Ok(out)
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
        .ok_or_else(|| Error::InvalidArgument(format!("{path} is not a disk of {}", owner.value)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys() {
        let c = Config::parse("# comment\ntmpDirectory=/tmp/x\nvixDiskLib.nfc.AcceptTimeoutMs = \"180000\"\nvixDiskLib.nfc.ReadTimeoutMs=60000\nvixDiskLib.nfc.WriteTimeoutMs=0\nvixDiskLib.transport.san.blacklist = a,b\nvixDiskLib.transport.LogLevel=3\nbogus.key=1\nno equals sign\n");
        assert_eq!(c.tmp_directory.as_deref(), Some("/tmp/x"));
        assert_eq!(c.nfc_timeouts.accept, Some(Duration::from_secs(180)));
        assert_eq!(c.nfc_timeouts.read, Some(Duration::from_secs(60)));
        assert_eq!(c.nfc_timeouts.write, None, "0 means no timeout");
        assert_eq!(c.san_deny, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(c.log_level, Some(3));
        assert_eq!(
            c.unknown,
            vec!["bogus.key".to_string(), "no equals sign".to_string()]
        );
        let o = c.nbd_options(true);
        assert_eq!(
            o.keepalive,
            Some(Duration::from_secs(30)),
            "a read timeout implies a keep-alive"
        );
        // init → exit → init.
        let l = Library::init(c.clone());
        l.exit();
        let l = Library::init(c);
        assert_eq!(l.config().log_level, Some(3));
        assert!(TransportMode::parse_list("nbd:bogus").is_err());
        assert_eq!(
            TransportMode::parse_list(DEFAULT_TRANSPORTS).unwrap().len(),
            4
        );
    }

    #[test]
    fn san_and_hotadd_keys() {
        let c = Config::parse("vixDiskLib.transport.deviceRoot = \"/sim/proxy\"\nvixDiskLib.transport.san.streams = 9\nvixDiskLib.transport.hotadd.proxyVm = vm-7\ntmpDirectory = /t\nvixDiskLib.transport.san.allowList = naa.1 naa.2\n");
        assert!(c.unknown.is_empty(), "{:?}", c.unknown);
        assert_eq!(c.streams(), 9);
        let s = c.san_options(true, false, true);
        assert_eq!(s.device_dir, Path::new("/sim/proxy/dev/disk/by-id"));
        assert_eq!(s.allow, vec!["naa.1".to_string(), "naa.2".to_string()]);
        assert!(s.writable && s.thin && !s.redo_log);
        let h = c.hotadd_options(false);
        assert_eq!(h.proxy_vm.as_deref(), Some("vm-7"));
        assert_eq!(h.device_root, Path::new("/sim/proxy"));
        assert_eq!(
            h.state_file,
            Path::new("/t/vddk-rs-hotadd.state"),
            "in tmpDirectory"
        );
        let d = Config::default();
        assert_eq!(d.streams(), DEFAULT_STREAMS);
        assert_eq!(
            d.san_options(false, false, false).device_dir,
            Path::new("/dev/disk/by-id")
        );
        assert_eq!(
            Config::parse("vixDiskLib.transport.san.streams = 0").streams(),
            1,
            "clamped"
        );
    }

    #[test]
    fn config_files_too_big_binary_or_missing() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.conf");
        std::fs::write(&big, vec![b'#'; Config::MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(Config::load(&big), Err(Error::InvalidArgument(_))));
        let binary = dir.path().join("bin.conf");
        std::fs::write(&binary, [0xff, 0xfe, b'=', 0x80]).unwrap();
        assert!(matches!(
            Config::load(&binary),
            Err(Error::InvalidArgument(_))
        ));
        assert!(Config::load(&dir.path().join("missing.conf")).is_err());
        let ok = dir.path().join("ok.conf");
        std::fs::write(&ok, "vixDiskLib.nfc.LogLevel = 2\n").unwrap();
        assert_eq!(Config::load(&ok).unwrap().nfc_log_level, Some(2));
    }
}
