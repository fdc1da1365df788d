//! Repository URLs: which [`Store`] a location names.

use std::sync::Arc;

use repo_store::{Error, LocalDir, Result, Store};

use crate::s3::S3Store;

/// Opens the store a repository URL names:
/// - `s3://bucket[/prefix]`: an [`S3Store`] configured from the standard
///   `AWS_*` environment variables (the bucket must exist; `create` does
///   not make one);
/// - `file:///absolute/path`, or a plain path (absolute or relative): a
///   [`LocalDir`], created with its parents when `create` is set.
///
/// Any other scheme (`http://`, `ftp://`…) is refused.
///
/// ```
/// use repo_s3::open_store;
/// use repo_store::Error;
/// let dir = tempfile::tempdir().unwrap();
/// let store = open_store(dir.path().join("r").to_str().unwrap(), true).unwrap();
/// assert!(store.head("config").unwrap().is_none());
/// assert!(matches!(open_store("http://example.com/r", false), Err(Error::Url { .. })));
/// ```
pub fn open_store(url: &str, create: bool) -> Result<Arc<dyn Store>> {
    let refuse = |reason: &str| Error::Url {
        url: url.into(),
        reason: reason.into(),
    };
    if url.is_empty() {
        return Err(refuse("empty location"));
    }
    if url.starts_with("s3://") {
        return Ok(Arc::new(S3Store::from_url(url)?));
    }
    let path = if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(refuse(
                "a file URL needs an absolute path and no host: file:///path",
            ));
        }
        rest
    } else if let Some((scheme, _)) = url.split_once("://") {
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme {
            return Err(refuse(
                "unsupported scheme: use s3://bucket[/prefix], file:///path or a path",
            ));
        }
        url
    } else {
        url
    };
    let dir = if create {
        LocalDir::create(path)?
    } else {
        LocalDir::open(path)?
    };
    Ok(Arc::new(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        let dir = tempfile::tempdir().unwrap();
        let abs = dir.path().join("a/b");
        let abs = abs.to_str().unwrap();
        assert!(open_store(abs, false).is_err());
        let s = open_store(abs, true).unwrap();
        assert_eq!(s.location(), abs);
        let s = open_store(&format!("file://{abs}"), false).unwrap();
        assert_eq!(s.location(), abs);
        for bad in [
            "",
            "http://x/y",
            "ftp://x/y",
            "https://x",
            "file://host/x",
            "file://rel",
        ] {
            assert!(
                matches!(open_store(bad, true), Err(Error::Url { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            open_store("s3://Bad_Bucket", false),
            Err(Error::Url { .. })
        ));
    }
}
