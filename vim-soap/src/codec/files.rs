//! Datastore files over HTTP: vSphere's documented file access,
//! `https://HOST/folder/PATH?dcPath=DATACENTER&dsName=DATASTORE` (`GET`
//! reads a file, with `Range` for a part of it; `PUT` replaces it), on
//! the SOAP session's cookie.

/// Splits a datastore path `"[datastore1] vm/vm.vmdk"` into the
/// datastore's name and the path inside it.
pub fn split_datastore_path(p: &str) -> Option<(&str, &str)> {
    let rest = p.trim().strip_prefix('[')?;
    let (ds, path) = rest.split_once(']')?;
    let path = path.trim_start();
    (!ds.is_empty() && !path.is_empty()).then_some((ds, path))
}

/// The request target (`/folder/…?dcPath=…&dsName=…`) of a file of
/// datastore `ds` in datacenter `dc`, every part percent-encoded.
pub fn datastore_file_url(dc: &str, ds: &str, path: &str) -> String {
    let path: Vec<String> = path.split('/').map(encode).collect();
    format!(
        "/folder/{}?dcPath={}&dsName={}",
        path.join("/"),
        encode(dc),
        encode(ds)
    )
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` in a query as a space when
/// `query` is set); `None` for a malformed escape or non-UTF-8 result.
pub fn percent_decode(s: &str, query: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls() {
        assert_eq!(
            split_datastore_path("[datastore1] demo-vm/demo-vm.vmdk"),
            Some(("datastore1", "demo-vm/demo-vm.vmdk"))
        );
        assert_eq!(split_datastore_path("datastore1 x.vmdk"), None);
        assert_eq!(split_datastore_path("[] x"), None);
        assert_eq!(split_datastore_path("[ds]"), None);
        let url = datastore_file_url("ha-datacenter", "data store", "my vm/disk#1.vmdk");
        assert_eq!(
            url,
            "/folder/my%20vm/disk%231.vmdk?dcPath=ha-datacenter&dsName=data%20store"
        );
        assert_eq!(
            percent_decode("my%20vm/disk%231.vmdk", false).as_deref(),
            Some("my vm/disk#1.vmdk")
        );
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%4", false), None);
    }
}
