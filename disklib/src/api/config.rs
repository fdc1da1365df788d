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
    /// Everything the parser did not take, with its line: unknown keys,
    /// values that do not parse (the setting keeps its default), lines
    /// that are not `key = value`.
    pub warnings: Vec<ConfigWarning>,
}

/// A line of a configuration file that was not taken as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Line number, from 1.
    pub line: usize,
    /// The key as written (the whole line when there is no `=`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// [`ConfigWarning::message`] of a key this library does not know.
pub const UNKNOWN_KEY: &str = "unknown key, ignored";

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message == UNKNOWN_KEY {
            write!(
                f,
                "unknown configuration key `{}` ignored (line {})",
                self.key, self.line
            )
        } else {
            write!(
                f,
                "configuration line {}: `{}`: {}",
                self.line, self.key, self.message
            )
        }
    }
}

/// One `key = value` line, VDDK's way: the value may be quoted (and then
/// may hold `#`); outside quotes `#` starts a comment.
enum Line<'a> {
    Blank,
    Pair(&'a str, &'a str),
    Bad(&'a str, &'static str),
}

const NOT_A_PAIR: &str = "not a `key = value` line";

fn split_line(line: &str) -> Line<'_> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return Line::Blank;
    }
    let Some((k, rest)) = t.split_once('=') else {
        let k = t.split('#').next().unwrap_or(t).trim();
        return Line::Bad(k, NOT_A_PAIR);
    };
    let key = k.trim();
    if key.contains('#') {
        let k = key.split('#').next().unwrap_or(key).trim();
        return Line::Bad(k, NOT_A_PAIR);
    }
    let rest = rest.trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        let Some((value, after)) = quoted.split_once('"') else {
            return Line::Bad(key, "the quoted value has no closing quote");
        };
        let after = after.trim_start();
        if !after.is_empty() && !after.starts_with('#') {
            return Line::Bad(key, "text after the quoted value");
        }
        return Line::Pair(key, value);
    }
    Line::Pair(key, rest.split('#').next().unwrap_or(rest).trim())
}

fn number<T: std::str::FromStr>(v: &str) -> std::result::Result<T, String> {
    v.parse()
        .map_err(|_| format!("`{v}` is not a number (the default is kept)"))
}

fn flag(v: &str) -> std::result::Result<bool, String> {
    match v {
        "1" => Ok(true),
        "0" => Ok(false),
        v if v.eq_ignore_ascii_case("true") => Ok(true),
        v if v.eq_ignore_ascii_case("false") => Ok(false),
        v => Err(format!(
            "`{v}` is not 1, 0, true or false (the default is kept)"
        )),
    }
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
    /// Parses `name = "value"` lines as VDDK does: quotes are optional, a
    /// quoted value may contain `#`, and outside quotes `#` starts a
    /// comment (on its own line or after the value). Unknown keys, values
    /// that do not parse and malformed lines are kept in
    /// [`Config::warnings`] with their line numbers (and unknown keys in
    /// [`Config::unknown`]); they are never fatal.
    ///
    /// ```
    /// use disklib::api::Config;
    /// let c = Config::parse("vixDiskLib.transport.deviceRoot = \"/x#1\"  # the proxy\nvixDiskLib.nfc.ReadTimeoutMs = soon\n");
    /// assert_eq!(c.device_root.as_deref(), Some("/x#1"));
    /// assert_eq!(c.nfc_timeouts.read, None);
    /// assert_eq!(c.warnings[0].line, 2);
    /// ```
    pub fn parse(text: &str) -> Self {
        let mut c = Config::default();
        for (i, line) in text.lines().enumerate() {
            let (key, v) = match split_line(line) {
                Line::Blank => continue,
                Line::Pair(k, v) => (k, v),
                Line::Bad(k, message) => {
                    if message == NOT_A_PAIR {
                        c.unknown.push(line.trim().to_string());
                    }
                    c.warnings.push(ConfigWarning {
                        line: i + 1,
                        key: k.to_string(),
                        message: message.into(),
                    });
                    continue;
                }
            };
            if let Err(message) = c.set(key, v) {
                c.warnings.push(ConfigWarning {
                    line: i + 1,
                    key: key.to_string(),
                    message,
                });
            }
        }
        for w in &c.warnings {
            tracing::warn!(line = w.line, key = %w.key, "configuration: {}", w.message);
        }
        c
    }

    /// Takes one setting; `Err` says why it was not taken.
    fn set(&mut self, key: &str, v: &str) -> std::result::Result<(), String> {
        // A timeout of 0 means none.
        let ms = |v: &str| number::<u64>(v).map(|m| (m > 0).then(|| Duration::from_millis(m)));
        let list = || {
            v.split([',', ' ', ';'])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        match key.to_ascii_lowercase().as_str() {
            "tmpdirectory" => self.tmp_directory = Some(v.to_string()),
            "vixdisklib.transport.loglevel" => self.log_level = Some(number(v)?),
            "vixdisklib.nfc.loglevel" => self.nfc_log_level = Some(number(v)?),
            "vixdisklib.nfc.accepttimeoutms" => self.nfc_timeouts.accept = ms(v)?,
            "vixdisklib.nfc.requesttimeoutms" => self.nfc_timeouts.request = ms(v)?,
            "vixdisklib.nfc.readtimeoutms" => self.nfc_timeouts.read = ms(v)?,
            "vixdisklib.nfc.writetimeoutms" => self.nfc_timeouts.write = ms(v)?,
            "vixdisklib.nfcfssrvr.timeoutms" | "vixdisklib.nfcfssrvrwrite.timeoutms" => {
                self.fssrvr_timeout = ms(v)?
            }
            "vixdisklib.nfcaio.session.bufcount" => self.aio_buf_count = Some(number(v)?),
            "vixdisklib.nfcaio.session.bufsizein64kb" => self.aio_buf_size_64k = Some(number(v)?),
            "vixdisklib.transport.san.allowlist" | "vixdisklib.transport.san.whitelist" => {
                self.san_allow = list()
            }
            "vixdisklib.transport.san.denylist" | "vixdisklib.transport.san.blacklist" => {
                self.san_deny = list()
            }
            "vixdisklib.disklib.enablecache" => self.enable_cache = flag(v)?,
            "vixdisklib.transport.deviceroot" => self.device_root = Some(v.to_string()),
            "vixdisklib.transport.san.streams" => self.san_streams = Some(number(v)?),
            "vixdisklib.transport.hotadd.proxyvm" => self.hotadd_proxy_vm = Some(v.to_string()),
            "vixdisklib.transport.hotadd.statefile" => self.hotadd_state_file = Some(v.to_string()),
            "vixdisklib.disklib.confinepaths" => self.confine_paths = Some(flag(v)?),
            "vixdisklib.transport.san.blockmapsource" => match v {
                "simulator" => self.san_block_maps = SanBlockMaps::Simulator,
                "" | "none" => self.san_block_maps = SanBlockMaps::None,
                _ => {
                    return Err(format!(
                        "`{v}` is not a block-map source this kit knows (`simulator`)"
                    ))
                }
            },
            "linuxssl.verifycertificates" => {} // certificates are always verified
            _ => {
                self.unknown.push(key.to_string());
                return Err(UNKNOWN_KEY.into());
            }
        }
        Ok(())
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
            o.buffer_count = n.clamp(1, 64) as u32;
        }
        if let Some(n) = self.aio_buf_size_64k {
            o.max_request = (n.clamp(1, 256)) * 65536;
            // The OPEN_SESSION buffer, at most the 2 MiB ESXi 8 accepts.
            o.buffer_size = (n.clamp(1, 32) * 65536) as u32;
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

    /// VDDK's syntax: `#` after a value starts a comment, inside quotes
    /// it is part of the value.
    #[test]
    fn trailing_comments_and_quoted_hashes() {
        let c = Config::parse(concat!(
            "vixDiskLib.transport.deviceRoot = \"/x\"  # the proxy's root\n",
            "tmpDirectory = /tmp/vddk # unquoted, then a comment\n",
            "vixDiskLib.transport.hotadd.proxyVm = \"vm-#7\"\n",
            "vixDiskLib.transport.hotadd.stateFile=\"/s#1\"# glued comment\n",
            "vixDiskLib.nfc.ReadTimeoutMs = 60000 # one minute\n",
            "vixDiskLib.transport.san.allowList = naa.1 naa.2 # two LUNs\n",
            "   # an indented comment = not a key\n",
            "vixDiskLib.disklib.EnableCache = 1#on\n",
        ));
        assert_eq!(c.device_root.as_deref(), Some("/x"));
        assert_eq!(c.tmp_directory.as_deref(), Some("/tmp/vddk"));
        assert_eq!(c.hotadd_proxy_vm.as_deref(), Some("vm-#7"));
        assert_eq!(c.hotadd_state_file.as_deref(), Some("/s#1"));
        assert_eq!(c.nfc_timeouts.read, Some(Duration::from_secs(60)));
        assert_eq!(c.san_allow, vec!["naa.1".to_string(), "naa.2".to_string()]);
        assert!(c.enable_cache);
        assert!(c.unknown.is_empty(), "{:?}", c.unknown);
    }

    /// Unknown keys, values that do not parse and malformed lines are all
    /// reported with their line numbers; the settings keep their defaults.
    #[test]
    fn every_unknown_key_and_bad_value_is_a_warning_with_its_line() {
        let c = Config::parse(concat!(
            "# a VDDK configuration\n",
            "vixDiskLib.nfc.ReadTimeoutMs = soon\n",
            "vixDiskLib.transport.LogLevel = \"high\" # loud\n",
            "bogus.key = 1\n",
            "\n",
            "vixDiskLib.transport.san.streams = -3\n",
            "vixDiskLib.disklib.EnableCache = maybe\n",
            "just some words # and a comment\n",
            "tmpDirectory = \"/t\n",
            "vixDiskLib.transport.deviceRoot = \"/d\" trailing\n",
            "vixDiskLib.transport.san.blockMapSource = vcenter\n",
            "vixDiskLib.disklib.confinePaths = yes\n",
            "vixDiskLib.nfc.WriteTimeoutMs = 0\n",
        ));
        let got: Vec<(usize, &str)> = c
            .warnings
            .iter()
            .map(|w| (w.line, w.key.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "vixDiskLib.nfc.ReadTimeoutMs"),
                (3, "vixDiskLib.transport.LogLevel"),
                (4, "bogus.key"),
                (6, "vixDiskLib.transport.san.streams"),
                (7, "vixDiskLib.disklib.EnableCache"),
                (8, "just some words"),
                (9, "tmpDirectory"),
                (10, "vixDiskLib.transport.deviceRoot"),
                (11, "vixDiskLib.transport.san.blockMapSource"),
                (12, "vixDiskLib.disklib.confinePaths"),
            ],
            "{:#?}",
            c.warnings
        );
        assert!(c.warnings[0].message.contains("`soon` is not a number"));
        assert!(c.warnings[2].message.contains("unknown key"));
        assert_eq!(
            c.warnings[0].to_string(),
            "configuration line 2: `vixDiskLib.nfc.ReadTimeoutMs`: `soon` is not a number (the default is kept)"
        );
        assert_eq!(
            c.warnings[2].to_string(),
            "unknown configuration key `bogus.key` ignored (line 4)"
        );
        // Defaults kept; the valid 0 ("no timeout") is not a warning.
        assert_eq!(c.nfc_timeouts.read, None);
        assert_eq!(c.nfc_timeouts.write, None);
        assert_eq!(c.log_level, None);
        assert_eq!(c.streams(), DEFAULT_STREAMS);
        assert!(!c.enable_cache);
        assert_eq!(
            (c.tmp_directory.as_ref(), c.device_root.as_ref()),
            (None, None)
        );
        assert_eq!(c.san_block_maps, SanBlockMaps::None);
        assert_eq!(c.confine_paths, None);
        assert_eq!(
            c.unknown,
            vec![
                "bogus.key".to_string(),
                "just some words # and a comment".to_string()
            ]
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
