//! A repository: its configuration and keys, its object names, and the
//! points it holds.
//!
//! ## Object names
//! ```text
//! config                          RepoConfig (JSON, keys sealed inside)
//! chunks/<2 hex>/<64 hex>         a sealed chunk, named by its id
//! indexes/<48 hex>.<disk key>     a sealed BackupIndex
//! leases/<48 hex>                 the lease of a backup in flight
//! gc/<32 hex>                     the marker of a GC pass in progress
//! ```
//! Index names carry the point and the disk; after opening an index its
//! `backup_id` and `disk_key` are checked against its name, so an index
//! cannot be passed off as another point's.

use std::collections::BTreeMap;
use std::sync::Arc;

use repo_format::keys::{self, KdfParams};
use repo_format::{
    decode_chunk, BackupId, BackupIndex, ChunkId, Encryption, MasterKeys, ObjectContext,
    RepoConfig, VmIdentity,
};

use crate::error::{Error, Result};
use crate::store::{PutOutcome, Store};

/// Name of the configuration object.
pub const CONFIG_KEY: &str = "config";
/// Prefix of chunk objects.
pub const CHUNKS: &str = "chunks/";
/// Prefix of index objects.
pub const INDEXES: &str = "indexes/";
/// Prefix of leases.
pub const LEASES: &str = "leases/";
/// Prefix of GC markers.
pub const GC_MARKERS: &str = "gc/";

/// The key of a chunk object.
pub fn chunk_key(id: &ChunkId) -> String {
    let hex = id.to_string();
    format!("{CHUNKS}{}/{hex}", &hex[..2])
}

/// The key of an index object.
pub fn index_key(id: &BackupId, disk_key: i32) -> String {
    format!("{INDEXES}{id}.{disk_key}")
}

/// The key of a lease.
pub fn lease_key(id: &BackupId) -> String {
    format!("{LEASES}{id}")
}

/// Parses an index key back into its point and disk.
pub fn parse_index_key(key: &str) -> Option<(BackupId, i32)> {
    let name = key.strip_prefix(INDEXES)?;
    let (id, disk) = name.split_once('.')?;
    Some((id.parse().ok()?, disk.parse().ok()?))
}

/// Parses a chunk key back into its id (`None` for a misplaced object).
pub fn parse_chunk_key(key: &str) -> Option<ChunkId> {
    let rest = key.strip_prefix(CHUNKS)?;
    let (dir, hex) = rest.split_once('/')?;
    let id: ChunkId = hex.parse().ok()?;
    (hex.starts_with(dir) && dir.len() == 2).then_some(id)
}

/// Fresh random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom fails only where the OS has no entropy source at all; a
    // repository cannot be written safely there.
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

/// How `init` protects the repository.
#[derive(Clone, Default)]
pub enum InitEncryption {
    /// No encryption (chunk ids are public hashes, objects checksummed).
    #[default]
    None,
    /// Keys sealed under this passphrase, stored in the repository.
    RepoKey(Vec<u8>),
    /// Keys kept outside the repository: `init` returns the key file.
    KeyFile,
}

impl std::fmt::Debug for InitEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InitEncryption::None => "None",
            InitEncryption::RepoKey(_) => "RepoKey(<passphrase>)",
            InitEncryption::KeyFile => "KeyFile",
        })
    }
}

/// What `init` asks for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Chunk size (a power of two, 64 KiB ..= 64 MiB).
    pub chunk_size: u32,
    /// zstd level, or `None` for no compression.
    pub compression: Option<i32>,
    /// Encryption.
    pub encryption: InitEncryption,
    /// Argon2id cost (the default is strong; tests pass a cheap one).
    pub kdf: KdfParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunk_size: repo_format::config::DEFAULT_CHUNK_SIZE,
            compression: Some(repo_format::config::DEFAULT_LEVEL),
            encryption: InitEncryption::None,
            kdf: KdfParams::default(),
        }
    }
}

/// How to open an encrypted repository.
#[derive(Clone, Default)]
pub enum Unlock {
    /// Nothing (an unencrypted repository).
    #[default]
    None,
    /// The passphrase of a repokey repository.
    Passphrase(Vec<u8>),
    /// The bytes of a key file.
    KeyFile(Vec<u8>),
}

impl std::fmt::Debug for Unlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unlock::None => "None",
            Unlock::Passphrase(_) => "Passphrase(<secret>)",
            Unlock::KeyFile(_) => "KeyFile(<secret>)",
        })
    }
}

/// An open repository. Cheap to clone; every clone shares the store.
#[derive(Clone)]
pub struct Repository {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Arc<RepoConfig>,
    pub(crate) ctx: Arc<ObjectContext>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("store", &self.store.location())
            .field("chunk_size", &self.config.chunk_size)
            .field("encrypted", &self.config.is_encrypted())
            .finish()
    }
}

/// One disk of one point, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointDisk {
    /// The point.
    pub backup_id: BackupId,
    /// The disk.
    pub disk_key: i32,
    /// Its VM.
    pub vm: VmIdentity,
    /// Time of the point.
    pub time: u64,
    /// How it was read.
    pub kind: repo_format::BackupKind,
    /// Disk size.
    pub capacity: u64,
    /// Chunks present (not zero).
    pub stored_chunks: u64,
    /// The change id.
    pub change_id: Option<String>,
}

impl Repository {
    /// Creates a repository in an empty location. With
    /// [`InitEncryption::KeyFile`] the key file is returned: it is the only
    /// copy of the keys.
    pub fn init(store: Arc<dyn Store>, opts: &InitOptions) -> Result<(Self, Option<Vec<u8>>)> {
        if store.head(CONFIG_KEY)?.is_some() {
            return Err(Error::AlreadyExists(store.location()));
        }
        let keys = MasterKeys::generate(random());
        let repo_id: [u8; 16] = random();
        let (encryption, key_file) = match &opts.encryption {
            InitEncryption::None => (Encryption::None, None),
            InitEncryption::RepoKey(pass) => {
                if pass.is_empty() {
                    return Err(Error::InvalidArgument("the passphrase is empty".into()));
                }
                let blob = keys::wrap(&keys, pass, opts.kdf, random(), random())
                    .map_err(|e| Error::format("sealing the keys", e))?;
                (Encryption::RepoKey(blob), None)
            }
            // Only a check value stays in the repository.
            InitEncryption::KeyFile => (
                Encryption::KeyFile {
                    check: keys.check_value(&repo_id),
                },
                Some(keys.to_key_file()),
            ),
        };
        let config = RepoConfig::new(repo_id, opts.chunk_size, opts.compression, encryption)
            .map_err(|e| Error::format("configuration", e))?;
        let encrypted = config.is_encrypted();
        let ctx = ObjectContext::new(&config, encrypted.then_some(&keys))
            .map_err(|e| Error::format("configuration", e))?;
        if store.put_if_absent(CONFIG_KEY, &config.encode())? == PutOutcome::Existed {
            return Err(Error::AlreadyExists(store.location()));
        }
        Ok((
            Repository {
                store,
                config: Arc::new(config),
                ctx: Arc::new(ctx),
            },
            key_file,
        ))
    }

    /// Opens a repository; an encrypted one needs `unlock`.
    pub fn open(store: Arc<dyn Store>, unlock: &Unlock) -> Result<Self> {
        let bytes = store
            .get(CONFIG_KEY, repo_format::config::MAX_CONFIG_LEN as u64)?
            .ok_or_else(|| Error::NoRepository(store.location()))?;
        let config = RepoConfig::decode(&bytes).map_err(|e| Error::format("config", e))?;
        let keys = match (&config.encryption, unlock) {
            (Encryption::None, _) => None,
            (Encryption::RepoKey(_), Unlock::Passphrase(p)) => Some(
                config
                    .unlock(p)
                    .map_err(|e| Error::format("opening the keys", e))?,
            ),
            (Encryption::KeyFile { .. }, Unlock::KeyFile(k)) => {
                Some(MasterKeys::from_key_file(k).map_err(|e| Error::format("key file", e))?)
            }
            _ => return Err(Error::PassphraseRequired),
        };
        let ctx = ObjectContext::new(&config, keys.as_ref())
            .map_err(|e| Error::format("opening the keys", e))?;
        Ok(Repository {
            store,
            config: Arc::new(config),
            ctx: Arc::new(ctx),
        })
    }

    /// Whether a repository (a `config` object) exists in the store.
    pub fn exists(store: &dyn Store) -> Result<bool> {
        Ok(store.head(CONFIG_KEY)?.is_some())
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size
    }

    /// The object context (ids, sealing).
    pub fn context(&self) -> &ObjectContext {
        &self.ctx
    }

    /// Reads and checks one chunk (authenticated, decompressed, hashed
    /// back to its id).
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let key = chunk_key(id);
        let max = repo_format::object::HEADER_LEN as u64
            + repo_format::object::TAG_LEN as u64
            + 64
            + u64::from(self.config.chunk_size) * 2;
        let bytes = self.store.get(&key, max)?.ok_or_else(|| Error::Missing {
            what: "chunk",
            name: id.to_string(),
        })?;
        decode_chunk(&bytes, &self.ctx, id, self.config.chunk_size as usize)
            .map_err(|e| Error::format(format!("chunk {id}"), e))
    }

    /// Reads one index, checking it is the one its name says.
    pub fn read_index(&self, id: &BackupId, disk_key: i32) -> Result<BackupIndex> {
        let key = index_key(id, disk_key);
        let max = BackupIndex::max_encoded_len(self.config.chunk_size) as u64 + 4096;
        let bytes = self.store.get(&key, max)?.ok_or_else(|| Error::Missing {
            what: "index",
            name: key.clone(),
        })?;
        let index = BackupIndex::open(&bytes, &self.ctx, self.config.chunk_size)
            .map_err(|e| Error::format(format!("index {key}"), e))?;
        if index.backup_id != *id || index.disk_key != disk_key {
            return Err(Error::format(
                format!("index {key}"),
                repo_format::Error::InvalidField {
                    field: "index name",
                    reason: "names another point or disk",
                },
            ));
        }
        Ok(index)
    }

    /// The `(point, disk)` pairs of every index stored, sorted.
    pub fn index_names(&self) -> Result<Vec<(BackupId, i32)>> {
        let mut v: Vec<_> = self
            .store
            .list(INDEXES)?
            .iter()
            .filter_map(|o| parse_index_key(&o.key))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Every point disk, oldest first, read from its index.
    pub fn points(&self) -> Result<Vec<PointDisk>> {
        let mut out = Vec::new();
        for (id, key) in self.index_names()? {
            let ix = self.read_index(&id, key)?;
            out.push(PointDisk {
                backup_id: id,
                disk_key: key,
                stored_chunks: ix.chunks.iter().filter(|c| c.is_some()).count() as u64,
                vm: ix.vm,
                time: ix.time,
                kind: ix.kind,
                capacity: ix.capacity,
                change_id: ix.change_id,
            });
        }
        out.sort_by(|a, b| {
            (a.time, a.backup_id, a.disk_key).cmp(&(b.time, b.backup_id, b.disk_key))
        });
        Ok(out)
    }

    /// Resolves a point given as a full id or a unique prefix of its hex
    /// form; the disks it holds, sorted.
    pub fn resolve_point(&self, prefix: &str) -> Result<(BackupId, Vec<i32>)> {
        let mut found: BTreeMap<BackupId, Vec<i32>> = BTreeMap::new();
        let prefix = prefix.to_ascii_lowercase();
        for (id, key) in self.index_names()? {
            if id.to_string().starts_with(&prefix) {
                found.entry(id).or_default().push(key);
            }
        }
        match found.len() {
            0 => Err(Error::NotFound(format!("no backup point {prefix}"))),
            1 => Ok(found.into_iter().next().expect("one entry")),
            n => Err(Error::NotFound(format!(
                "{n} backup points start with {prefix}: give more digits"
            ))),
        }
    }

    /// The newest point disk of `vm` (same server and instance UUID) and
    /// `disk_key`, optionally only full points.
    pub fn latest(
        &self,
        vm: &VmIdentity,
        disk_key: i32,
        full_only: bool,
    ) -> Result<Option<BackupIndex>> {
        let mut best: Option<BackupIndex> = None;
        for (id, key) in self.index_names()? {
            if key != disk_key {
                continue;
            }
            let ix = self.read_index(&id, key)?;
            if !ix.vm.same_vm(vm) || (full_only && ix.kind != repo_format::BackupKind::Full) {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| (ix.time, ix.backup_id) > (b.time, b.backup_id))
            {
                best = Some(ix);
            }
        }
        Ok(best)
    }

    /// Deletes the index of one point disk (prune uses this; the chunks
    /// go at the next GC).
    pub fn forget(&self, id: &BackupId, disk_key: i32) -> Result<bool> {
        self.store.delete(&index_key(id, disk_key), None)
    }

    /// A fresh point id for `time`: the time, then this machine's
    /// sub-second clock (so that points of one second still sort in the
    /// order they were taken, on one machine), then random bytes.
    pub fn new_backup_id(time: u64) -> BackupId {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self::backup_id_with_sequence(time, nanos)
    }

    /// A point id for `time` whose first four random bytes are
    /// `sequence` (big endian), so ids of the same second sort by it.
    pub fn backup_id_with_sequence(time: u64, sequence: u32) -> BackupId {
        let mut r: [u8; 16] = random();
        r[..4].copy_from_slice(&sequence.to_be_bytes());
        BackupId::new(time, r)
    }
}
