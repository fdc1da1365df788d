//! A [`Store`] over an S3-compatible bucket, through the `object_store`
//! crate.
//!
//! Keys are relative to the store's prefix: with `s3://bucket/repos/a`,
//! the key `config` is the object `repos/a/config`. The calls are
//! synchronous; the store owns a small tokio runtime and blocks on it.
//!
//! What S3 gives and does not give:
//! - [`Store::put_if_absent`] is a `PutObject` with `If-None-Match: *`,
//!   which AWS honours since 2024 (and MinIO, R2, Ceph…). A store that
//!   ignores the header would silently overwrite: only use such stores
//!   with a single writer. A 412 or 409 answer is only taken for
//!   "existed" once a `HEAD` sees the object (AWS answers 409 to
//!   concurrent conditional writes, and `object_store` reports a 409 as
//!   "already exists"; the losing side retries). A write whose answer
//!   was lost and that `object_store` retried may be reported as
//!   "existed" although it was ours: the stored bytes are then ours.
//! - [`Store::delete`] with a version is a `HEAD`, a comparison and a
//!   `DeleteObject`: S3 offers no conditional delete here, so an object
//!   rewritten in the short window between the two is deleted anyway.
//!   Callers (garbage collection) keep that window far shorter than their
//!   grace periods.
//! - The version is the ETag and the modification second, identical in
//!   listings and `HEAD` answers (listings carry milliseconds, `HEAD`
//!   only seconds). Rewriting an object with the same bytes within the
//!   same second keeps its version.
//! - [`Store::now`] is this machine's clock: a grace period that compares
//!   it with object times must cover the clock skew with the server.
//!
//! Credentials never appear in `Debug`, [`Store::location`] or errors.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use md5::Digest;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use repo_store::store::{check_key, check_prefix, ObjectInfo, PutOutcome, Store};
use repo_store::{Error, Result};

/// How often an ambiguous conditional put (409, or 412 for an object
/// that a `HEAD` then does not find) is tried again.
const CREATE_ATTEMPTS: u32 = 5;

/// How to reach the S3 service. `Debug` shows no secret.
#[derive(Clone, Default)]
pub struct S3Config {
    /// The service URL (`https://…`, or `http://` on loopback only);
    /// `None` for AWS itself. Requests use path-style addressing when set.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` when `None`).
    pub region: Option<String>,
    /// The access key id; with no keys at all, the default AWS chain of
    /// `object_store` (instance metadata, web identity…) is used.
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<String>,
    /// A session token for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &redacted(&self.access_key_id))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .finish()
    }
}

impl S3Config {
    /// Reads `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` (empty counts as
    /// unset).
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        S3Config {
            endpoint: var("AWS_ENDPOINT_URL"),
            region: var("AWS_REGION"),
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
        }
    }
}

/// A [`Store`] over an S3 bucket and prefix. See the module doc.
pub struct S3Store {
    client: AmazonS3,
    runtime: tokio::runtime::Runtime,
    bucket: String,
    /// The key prefix without a trailing `/`, possibly empty.
    prefix: String,
    endpoint: Option<String>,
    region: String,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.location())
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

fn url_err(url: &str, reason: impl Into<String>) -> Error {
    Error::Url {
        url: url.into(),
        reason: reason.into(),
    }
}

fn store_err(op: &'static str, key: &str, e: impl fmt::Display) -> Error {
    Error::Store {
        op,
        key: key.into(),
        message: e.to_string(),
    }
}

/// Splits `s3://bucket[/prefix]` into a bucket and a prefix without a
/// trailing `/`.
fn parse_s3_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| url_err(url, "not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !bucket_ok {
        return Err(url_err(
            url,
            "the bucket name must be 3 to 63 of [a-z0-9.-]",
        ));
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if !prefix.is_empty() && check_key(prefix).is_err() {
        return Err(url_err(
            url,
            "the prefix must be /-separated components of [A-Za-z0-9._-]",
        ));
    }
    Ok((bucket.into(), prefix.into()))
}

/// Checks an endpoint: `https://`, or `http://` to a loopback host only.
/// Returns whether it is plain HTTP.
fn check_endpoint(endpoint: &str) -> Result<bool> {
    // the URL may not be shown whole if it carries user info
    let parsed = url::Url::parse(endpoint).map_err(|e| url_err("(endpoint)", e.to_string()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(url_err(
            "(endpoint)",
            "credentials in the endpoint URL are refused: use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ));
    }
    match parsed.scheme() {
        "https" => Ok(false),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(a)) => Ipv4Addr::is_loopback(&a),
                Some(url::Host::Ipv6(a)) => Ipv6Addr::is_loopback(&a),
                None => false,
            };
            if loopback {
                Ok(true)
            } else {
                Err(url_err(
                    endpoint,
                    "plain http:// is only allowed to a loopback host (localhost, 127.0.0.0/8, ::1): use https://",
                ))
            }
        }
        other => Err(url_err(
            endpoint,
            format!("unsupported endpoint scheme {other:?}"),
        )),
    }
}

fn version_of(meta: &ObjectMeta) -> String {
    format!(
        "{}@{}",
        meta.e_tag.as_deref().unwrap_or(""),
        meta.last_modified.timestamp()
    )
}

impl S3Store {
    /// Opens `s3://bucket[/prefix]` with the configuration of the standard
    /// environment variables ([`S3Config::from_env`]).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::with_config(url, S3Config::from_env())
    }

    /// Opens `s3://bucket[/prefix]` with an explicit configuration.
    ///
    /// ```
    /// use repo_s3::{S3Config, S3Store};
    /// use repo_store::Error;
    /// let config = S3Config {
    ///     endpoint: Some("http://example.com:9000".into()),
    ///     ..S3Config::default()
    /// };
    /// // plain HTTP leaves the machine: refused
    /// assert!(matches!(S3Store::with_config("s3://bucket", config), Err(Error::Url { .. })));
    /// ```
    pub fn with_config(url: &str, config: S3Config) -> Result<Self> {
        let (bucket, prefix) = parse_s3_url(url)?;
        let region = config.region.unwrap_or_else(|| "us-east-1".into());
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&bucket)
            .with_region(&region);
        if let Some(endpoint) = &config.endpoint {
            let http = check_endpoint(endpoint)?;
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(http)
                .with_virtual_hosted_style_request(false);
        }
        match (config.access_key_id, config.secret_access_key) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(token) = config.session_token {
                    builder = builder.with_token(token);
                }
            }
            (None, None) => {}
            _ => {
                return Err(url_err(
                    url,
                    "give both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither",
                ))
            }
        }
        // the builder's errors name keys, never their values
        let client = builder.build().map_err(|e| url_err(url, e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("repo-store-s3")
            .enable_all()
            .build()
            .map_err(|e| url_err(url, format!("cannot start the I/O runtime: {e}")))?;
        Ok(S3Store {
            client,
            runtime,
            bucket,
            prefix,
            endpoint: config.endpoint,
            region,
        })
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn key_of(&self, location: &Path) -> Option<String> {
        let full = location.as_ref();
        let key = if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?
        };
        check_key(key).ok()?;
        Some(key.into())
    }

    async fn head_async(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self.client.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err("head", key, e)),
        }
    }

    async fn get_async(&self, key: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
        let result = match self.client.get(&self.path(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_err("get", key, e)),
        };
        let too_big = |size: u64| {
            store_err(
                "get",
                key,
                format!("object of {size} bytes exceeds {max_len}"),
            )
        };
        if result.meta.size > max_len {
            return Err(too_big(result.meta.size));
        }
        let len = usize::try_from(result.meta.size).map_err(|e| store_err("get", key, e))?;
        let mut bytes = Vec::with_capacity(len);
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| store_err("get", key, e))?;
            // a body longer than announced is still capped
            if (bytes.len() as u64).saturating_add(chunk.len() as u64) > max_len {
                return Err(too_big(bytes.len() as u64 + chunk.len() as u64));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(bytes))
    }

    async fn put_if_absent_async(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome> {
        let path = self.path(key);
        let payload = PutPayload::from(bytes.to_vec());
        for _ in 0..CREATE_ATTEMPTS {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self.client.put_opts(&path, payload.clone(), opts).await {
                Ok(_) => return Ok(PutOutcome::Created),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotModified { .. },
                ) => {
                    // 409 (a concurrent conditional write) also lands here:
                    // only an object we can see makes it "existed". A
                    // write of ours whose answer was lost and that the
                    // client retried also ends here: an object whose ETag
                    // (the MD5 of a single-part upload) is that of our
                    // bytes is ours, or byte for byte what ours would be.
                    if let Some(meta) = self.head_async(key).await? {
                        let digest: String = md5::Md5::digest(bytes)
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        let ours = format!("\"{digest}\"");
                        if meta.e_tag.as_deref() == Some(ours.as_str()) {
                            return Ok(PutOutcome::Created);
                        }
                        return Ok(PutOutcome::Existed);
                    }
                }
                Err(e) => return Err(store_err("put", key, e)),
            }
        }
        Err(store_err(
            "put",
            key,
            "the conditional write kept conflicting, yet the object is absent",
        ))
    }

    async fn list_async(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full = match (self.prefix.is_empty(), prefix.strip_suffix('/')) {
            (true, None) => None,
            (true, Some(p)) => Some(Path::from(p)),
            (false, None) => Some(Path::from(self.prefix.as_str())),
            (false, Some(p)) => Some(Path::from(format!("{}/{p}", self.prefix))),
        };
        let mut stream = self.client.list(full.as_ref());
        let mut found = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| store_err("list", prefix, e))?;
            // object_store lists by path segment; keys no store could
            // address are not objects of ours
            let Some(key) = self.key_of(&meta.location) else {
                continue;
            };
            if !key.starts_with(prefix) {
                continue;
            }
            found.push(ObjectInfo {
                key,
                size: meta.size,
                modified: u64::try_from(meta.last_modified.timestamp()).unwrap_or(0),
                version: version_of(&meta),
            });
        }
        Ok(found)
    }

    async fn delete_async(&self, key: &str, if_version: Option<&str>) -> Result<bool> {
        let Some(meta) = self.head_async(key).await? else {
            return Ok(false);
        };
        if if_version.is_some_and(|v| v != version_of(&meta)) {
            return Ok(false);
        }
        match self.client.delete(&self.path(key)).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err("delete", key, e)),
        }
    }
}

impl Store for S3Store {
    fn get(&self, key: &str, max_len: u64) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.runtime.block_on(self.get_async(key, max_len))
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome> {
        check_key(key)?;
        self.runtime.block_on(self.put_if_absent_async(key, bytes))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        check_key(key)?;
        let payload = PutPayload::from(bytes.to_vec());
        self.runtime
            .block_on(self.client.put(&self.path(key), payload))
            .map(|_| ())
            .map_err(|e| store_err("put", key, e))
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        check_key(key)?;
        Ok(self
            .runtime
            .block_on(self.head_async(key))?
            .map(|meta| ObjectInfo {
                key: key.into(),
                size: meta.size,
                modified: u64::try_from(meta.last_modified.timestamp()).unwrap_or(0),
                version: version_of(&meta),
            }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        check_prefix(prefix)?;
        self.runtime.block_on(self.list_async(prefix))
    }

    fn delete(&self, key: &str, if_version: Option<&str>) -> Result<bool> {
        check_key(key)?;
        self.runtime.block_on(self.delete_async(key, if_version))
    }

    fn now(&self) -> Result<u64> {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .map_err(|e| store_err("now", "", e))
    }

    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}
