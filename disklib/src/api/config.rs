//! The InitEx-style configuration and what it implies for each transport,
//! the initialised library, and the transport modes and their defaults.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use transport_hotadd::HotAddOptions;
use transport_nbd::{NbdOptions, Timeouts};
use transport_san::{BlockMapSource, SanOptions};

use crate::error::{Error, Result};

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
    /// `vixDiskLib.disklib.confinePaths` (this kit's key): `true` keeps
    /// the extent and parent paths of local disks inside the directory of
    /// the descriptor naming them (an absolute path inside it is fine);
    /// `false` follows them anywhere, as VDDK does. Unset, the Rust API
    /// confines ([`Config::confines_paths`]) and the C library
    /// (`libvixDiskLib.so.8`) follows, as VDDK does.
    pub confine_paths: Option<bool>,
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
                "vixdisklib.disklib.confinepaths" => {
                    c.confine_paths = match v {
                        "1" => Some(true),
                        "0" => Some(false),
                        v if v.eq_ignore_ascii_case("true") => Some(true),
                        v if v.eq_ignore_ascii_case("false") => Some(false),
                        _ => None,
                    }
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

    /// Whether local extent and parent paths stay inside the descriptor's
    /// directory ([`Config::confine_paths`], `true` when unset).
    pub fn confines_paths(&self) -> bool {
        self.confine_paths.unwrap_or(true)
    }

    /// How local disks are opened under these settings (read-only; the
    /// caller sets `writable` and `single_link`).
    pub fn local_open_options(&self) -> vmdk_file::local::OpenOptions {
        vmdk_file::local::OpenOptions {
            allow_outside_paths: !self.confines_paths(),
            ..vmdk_file::local::OpenOptions::default()
        }
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
    pub(super) config: Arc<Config>,
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
        assert!(d.confines_paths() && !d.local_open_options().allow_outside_paths);
        let c = Config::parse("vixDiskLib.disklib.confinePaths = \"0\"\n");
        assert_eq!(c.confine_paths, Some(false));
        assert!(c.local_open_options().allow_outside_paths);
        assert_eq!(
            Config::parse("vixDiskLib.disklib.confinePaths=1").confine_paths,
            Some(true)
        );
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
