//! API version negotiation: `/sdk/vimServiceVersions.xml`, which vCenter
//! and ESXi publish, lists the `urn:vim25` versions a server speaks.

use crate::xml::Element;

use super::envelope::API_VERSION;

/// The `urn:vim25` versions this codec's requests are valid in, newest
/// first (the calls the kit makes have not changed shape across them).
pub const SUPPORTED_VERSIONS: &[&str] = &[
    API_VERSION,
    "8.0.0.0",
    "7.0.3.0",
    "7.0.2.0",
    "7.0.1.0",
    "7.0.0.0",
    "6.7.3",
    "6.7.2",
    "6.7.1",
    "6.7",
    "6.5",
];

/// The version to speak with a server whose `vimServiceVersions.xml` is
/// `doc`: the newest of [`SUPPORTED_VERSIONS`] the server lists for
/// `urn:vim25` (its current version or a prior one). `None` when the
/// document cannot be read or shares no version with us; callers then
/// fall back to [`API_VERSION`], as pyVmomi falls back to its default.
pub fn negotiate_version(doc: &[u8]) -> Option<&'static str> {
    let root = Element::parse(doc).ok()?;
    let ns = root
        .children_named("namespace")
        .find(|n| n.child_text("name") == Some("urn:vim25"))?;
    let mut offered: Vec<&str> = ns.child_text("version").into_iter().collect();
    if let Some(prior) = ns.child("priorVersions") {
        offered.extend(prior.children_named("version").map(|v| v.text.trim()));
    }
    SUPPORTED_VERSIONS
        .iter()
        .copied()
        .find(|v| offered.contains(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_common_version() {
        let esxi8 = br#"<?xml version="1.0" encoding="UTF-8" ?><namespaces version="1.0"><namespace><name>urn:vim25</name><version>8.0.2.0</version><priorVersions><version>8.0.1.0</version><version>8.0.0.0</version></priorVersions></namespace></namespaces>"#;
        assert_eq!(negotiate_version(esxi8), Some("8.0.1.0"));
        let old = br#"<namespaces version="1.0"><namespace><name>urn:vim25</name><version>6.7</version><priorVersions><version>6.5</version></priorVersions></namespace><namespace><name>urn:vim2</name><version>2.0</version></namespace></namespaces>"#;
        assert_eq!(negotiate_version(old), Some("6.7"));
        let none = br#"<namespaces><namespace><name>urn:vim25</name><version>5.5</version></namespace></namespaces>"#;
        assert_eq!(negotiate_version(none), None);
        assert_eq!(negotiate_version(b"<html>not here</html>"), None);
        assert_eq!(negotiate_version(b""), None);
    }
}
