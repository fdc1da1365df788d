//! The property collector: `RetrievePropertiesEx`, its continuation and
//! their result (and, with `server`, the writers of retrieved values).

use std::fmt::Write as _;

#[cfg(feature = "server")]
use crate::xml::escape;
use crate::xml::Element;
use crate::Result;

use super::envelope::{req_moref, req_text, request, tag, MoRef, Namespace, Request};

/// One object and the properties to fetch from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyRequest {
    /// The object.
    pub obj: MoRef,
    /// Property paths (`config.hardware.device`, `info`, ...).
    pub paths: Vec<String>,
}

/// `RetrievePropertiesEx` for explicit objects.
pub fn retrieve_properties_ex(
    property_collector: &MoRef,
    objects: &[PropertyRequest],
    max_objects: Option<u32>,
) -> Request {
    let mut p = String::from("<specSet>");
    let mut kinds: Vec<&str> = objects.iter().map(|o| o.obj.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for k in kinds {
        let _ = write!(p, "<propSet>{}", tag("type", k));
        let mut paths: Vec<&String> = objects
            .iter()
            .filter(|o| o.obj.kind == k)
            .flat_map(|o| &o.paths)
            .collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            p.push_str(&tag("pathSet", path));
        }
        p.push_str("</propSet>");
    }
    for o in objects {
        let _ = write!(
            p,
            "<objectSet>{}<skip>false</skip></objectSet>",
            o.obj.xml("obj")
        );
    }
    p.push_str("</specSet><options>");
    if let Some(m) = max_objects {
        let _ = write!(p, "<maxObjects>{m}</maxObjects>");
    }
    p.push_str("</options>");
    request(
        Namespace::Vim25,
        "RetrievePropertiesEx",
        property_collector,
        &p,
    )
}

/// `ContinueRetrievePropertiesEx`.
pub fn continue_retrieve_properties_ex(property_collector: &MoRef, token: &str) -> Request {
    request(
        Namespace::Vim25,
        "ContinueRetrievePropertiesEx",
        property_collector,
        &tag("token", token),
    )
}

/// One object of a property retrieval, its properties by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectContent {
    /// The object.
    pub obj: MoRef,
    /// `(path, val)`; unset properties are absent.
    pub props: Vec<(String, Element)>,
}

impl ObjectContent {
    /// A property's value element.
    pub fn prop(&self, path: &str) -> Option<&Element> {
        self.props.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }
}

/// `RetrieveResult`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetrieveResult {
    /// Token for `ContinueRetrievePropertiesEx`, when more remain.
    pub token: Option<String>,
    /// Objects.
    pub objects: Vec<ObjectContent>,
}

/// Parses `RetrievePropertiesExResponse` / `ContinueRetrievePropertiesExResponse`
/// (an absent `returnval` means no objects).
pub fn parse_retrieve_result(resp: &Element) -> Result<RetrieveResult> {
    let Some(r) = resp.child("returnval") else {
        return Ok(RetrieveResult::default());
    };
    let mut out = RetrieveResult {
        token: r.child_text("token").map(str::to_string),
        objects: Vec::new(),
    };
    for o in r.children_named("objects") {
        let obj = req_moref(o, "obj")?;
        let mut props = Vec::new();
        for p in o.children_named("propSet") {
            let name = req_text(p, "name")?.to_string();
            let val = p.child("val").cloned().unwrap_or_default();
            props.push((name, val));
        }
        out.objects.push(ObjectContent { obj, props });
    }
    Ok(out)
}

/// Serialises one `ObjectContent` (server side); `props` are `(path, val
/// XML)` where the val XML is a complete `<val …>…</val>` element.
#[cfg(feature = "server")]
pub fn object_content_xml(obj: &MoRef, props: &[(String, String)]) -> String {
    let mut s = format!("<objects>{}", obj.xml("obj"));
    for (name, val) in props {
        let _ = write!(s, "<propSet>{}{val}</propSet>", tag("name", name));
    }
    s.push_str("</objects>");
    s
}

/// `<val xsi:type="xsd:T">text</val>`.
#[cfg(feature = "server")]
pub fn simple_val(xsd_type: &str, text: &str) -> String {
    format!("<val xsi:type=\"xsd:{xsd_type}\">{}</val>", escape(text))
}

/// A reference value.
#[cfg(feature = "server")]
pub fn moref_val(r: &MoRef) -> String {
    format!(
        "<val type=\"{}\" xsi:type=\"ManagedObjectReference\">{}</val>",
        escape(&r.kind),
        escape(&r.value)
    )
}
