//! Datastore files over HTTP, as vSphere serves them:
//! `GET` / `PUT /folder/PATH?dcPath=DATACENTER&dsName=DATASTORE` on a
//! logged-in session's cookie. `GET` honours one `Range: bytes=A-B`
//! (206); `PUT` replaces the file. Paths are confined to the datastore's
//! directory (no `..`, no absolute path, nothing reached through a
//! symlink leading out); an unknown datacenter or datastore is a 404,
//! as on a real host.

use std::path::{Component, Path, PathBuf};

use vim_soap::codec::percent_decode;

use crate::model::Shared;

/// The most one `GET` without a range returns: descriptors and small
/// files; a disk's data is read over NFC, not here.
pub(crate) const MAX_GET: u64 = 16 << 20;

/// An HTTP answer: status, extra header lines, body.
pub(crate) type Answer = (u16, String, Vec<u8>);

fn answer(status: u16, text: &str) -> Answer {
    (status, String::new(), text.as_bytes().to_vec())
}

impl Shared {
    /// Serves `method target` for the session `cookie`.
    pub(crate) fn datastore_file(
        &self,
        cookie: Option<&str>,
        method: &str,
        target: &str,
        range: Option<&str>,
        body: &[u8],
    ) -> Answer {
        if !cookie.is_some_and(|c| self.session_is_valid(c)) {
            return answer(401, "not authenticated");
        }
        let file = match self.resolve_folder_target(target) {
            Ok(p) => p,
            Err(a) => return a,
        };
        match method {
            "GET" => get(&file, range),
            "PUT" => {
                let r = put(&file, body);
                // Whatever changed, cached disk blocks may be stale.
                self.disks_changed();
                r
            }
            _ => answer(405, "method not allowed"),
        }
    }

    /// The file `/folder/PATH?dcPath=…&dsName=…` names, inside its
    /// datastore.
    fn resolve_folder_target(&self, target: &str) -> Result<PathBuf, Answer> {
        let bad = |m: &str| answer(400, m);
        let rest = target
            .strip_prefix("/folder/")
            .ok_or_else(|| bad("not a /folder URL"))?;
        let (path, query) = rest
            .split_once('?')
            .ok_or_else(|| bad("no dcPath/dsName"))?;
        let path = percent_decode(path, false).ok_or_else(|| bad("bad escape in the path"))?;
        let (mut dc, mut ds) = (None, None);
        for kv in query.split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decode(v, true).ok_or_else(|| bad("bad escape in the query"))?;
            match k {
                "dcPath" => dc = Some(v),
                "dsName" => ds = Some(v),
                _ => {}
            }
        }
        let (Some(dc), Some(ds)) = (dc, ds) else {
            return Err(bad("dcPath and dsName are required"));
        };
        if dc != self.inv.datacenter {
            return Err(answer(404, "no such datacenter"));
        }
        let Some(store) = self.inv.datastores.iter().find(|d| d.name == ds) else {
            return Err(answer(404, "no such datastore"));
        };
        let rel = Path::new(&path);
        if path.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(answer(403, "path leaves the datastore"));
        }
        let file = store.path.join(rel);
        // A symlink inside the datastore must not lead out of it.
        let root = store
            .path
            .canonicalize()
            .map_err(|_| answer(404, "no datastore directory"))?;
        let parent = file.parent().unwrap_or(&store.path);
        match parent.canonicalize() {
            Ok(p) if p.starts_with(&root) => {}
            Ok(_) => return Err(answer(403, "path leaves the datastore")),
            Err(_) => return Err(answer(404, "no such directory")),
        }
        match std::fs::symlink_metadata(&file) {
            Ok(m) if m.file_type().is_symlink() => Err(answer(403, "symlinks are not served")),
            _ => Ok(file),
        }
    }
}

fn get(file: &Path, range: Option<&str>) -> Answer {
    use std::os::unix::fs::FileExt;
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(_) => return answer(404, "no such file"),
    };
    let len = match f.metadata() {
        Ok(m) if m.is_file() => m.len(),
        _ => return answer(404, "not a file"),
    };
    let (start, end, partial) = match range {
        None => (0, len, false),
        Some(r) => match parse_range(r, len) {
            Some((a, b)) => (a, b, true),
            None => return (416, format!("Content-Range: bytes */{len}\r\n"), Vec::new()),
        },
    };
    if end - start > MAX_GET {
        return answer(413, "ask for a range");
    }
    let mut buf = vec![0u8; (end - start) as usize];
    if f.read_exact_at(&mut buf, start).is_err() {
        return answer(500, "read failed");
    }
    if partial {
        let header = format!("Content-Range: bytes {start}-{}/{len}\r\n", end - 1);
        (206, header, buf)
    } else {
        (200, String::new(), buf)
    }
}

/// `bytes=A-B` (inclusive, B clamped to the file) as `A..B+1`.
fn parse_range(r: &str, len: u64) -> Option<(u64, u64)> {
    let (a, b) = r.trim().strip_prefix("bytes=")?.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = match b.trim() {
        "" => len.checked_sub(1)?,
        b => b.parse().ok()?,
    };
    (a <= b && a < len).then(|| (a, b.min(len - 1) + 1))
}

fn put(file: &Path, body: &[u8]) -> Answer {
    use std::io::Write;
    let tmp = file.with_extension("upload-tmp");
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(body)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, file));
    match written {
        Ok(()) => answer(201, ""),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            answer(500, &e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-511", 1000), Some((0, 512)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=900-5000", 1000), Some((900, 1000)));
        assert_eq!(parse_range("bytes=1000-1001", 1000), None);
        assert_eq!(parse_range("bytes=5-4", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
        assert_eq!(parse_range("bytes=0-", 0), None);
    }
}
