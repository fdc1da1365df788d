//! A small bounded DOM over quick-xml, and XML escaping.
//!
//! Responses are parsed into [`Element`] trees with hard caps on input
//! size, depth and element count, so a hostile server cannot exhaust
//! memory or the stack. Namespaces are resolved (quick-xml's `NsReader`):
//! each element keeps its local name and namespace URI; `xsi:type` is
//! recognised by the XML Schema instance namespace under whatever prefix
//! a peer binds it to (Go's encoding/xml writes `XMLSchema-instance:type`)
//! and kept apart from a plain `type` attribute such as a
//! `ManagedObjectReference`'s, in either order. A prefix bound nowhere is
//! an error.

use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;

use crate::Error;

/// Largest SOAP message accepted (bytes).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one message.
pub const MAX_ELEMENTS: usize = 2_000_000;

/// The XML Schema instance namespace (`xsi:`).
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// One XML element.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name (prefix stripped).
    pub name: String,
    /// The element's namespace URI, if it is in one.
    pub ns: Option<String>,
    /// Attributes in no namespace, as (local name, unescaped value).
    /// Namespace declarations and namespaced attributes are not here.
    pub attrs: Vec<(String, String)>,
    /// The value of the `type` attribute in the XML Schema instance
    /// namespace ([`XSI_NS`]), as written (a QName such as `xsd:string`).
    pub xsi: Option<String>,
    /// Child elements.
    pub children: Vec<Element>,
    /// Concatenated, unescaped text content.
    pub text: String,
}

fn local(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// The namespace URI a name resolved to; a prefix bound nowhere is an
/// error (the document is not namespace-well-formed).
fn namespace(res: ResolveResult<'_>) -> Result<Option<String>, Error> {
    match res {
        ResolveResult::Bound(Namespace(uri)) => Ok(Some(String::from_utf8_lossy(uri).into_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => Err(Error::Malformed(format!(
            "XML: prefix `{}` is bound to no namespace",
            String::from_utf8_lossy(&prefix)
        ))),
    }
}

impl Element {
    /// Parses a whole document into its root element.
    pub fn parse(bytes: &[u8]) -> Result<Element, Error> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::Malformed("message too large".into()));
        }
        let mut reader = NsReader::from_reader(bytes);
        reader.config_mut().trim_text(false);
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        let mut count = 0usize;
        let mut buf = Vec::new();
        let malformed =
            |what: &str, e: &dyn std::fmt::Display| Error::Malformed(format!("XML {what}: {e}"));
        loop {
            let (res, ev) = reader
                .read_resolved_event_into(&mut buf)
                .map_err(|e| Error::Malformed(format!("XML: {e}")))?;
            let ns = namespace(res)?;
            match ev {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    count += 1;
                    if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                        return Err(Error::Malformed("XML too large or too deep".into()));
                    }
                    let mut el = Element {
                        name: local(e.local_name().as_ref()),
                        ns,
                        ..Element::default()
                    };
                    for a in e.attributes() {
                        let a = a.map_err(|e| malformed("attribute", &e))?;
                        if a.key.as_namespace_binding().is_some() {
                            continue; // a declaration, resolved by the reader
                        }
                        let v = a
                            .unescape_value()
                            .map_err(|e| malformed("attribute", &e))?
                            .into_owned();
                        let (res, name) = reader.resolve_attribute(a.key);
                        let name = local(name.as_ref());
                        match namespace(res)? {
                            None => el.attrs.push((name, v)),
                            Some(uri) if uri == XSI_NS && name == "type" => el.xsi = Some(v),
                            Some(_) => {} // other namespaced attributes: not vSphere's
                        }
                    }
                    if matches!(ev, Event::Empty(_)) {
                        match stack.last_mut() {
                            Some(parent) => parent.children.push(el),
                            None => {
                                if root.is_some() {
                                    return Err(Error::Malformed("two root elements".into()));
                                }
                                root = Some(el);
                            }
                        }
                    } else {
                        stack.push(el);
                    }
                }
                Event::End(_) => {
                    let el = stack
                        .pop()
                        .ok_or_else(|| Error::Malformed("unbalanced end tag".into()))?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => {
                            if root.is_some() {
                                return Err(Error::Malformed("two root elements".into()));
                            }
                            root = Some(el);
                        }
                    }
                }
                Event::Text(t) => {
                    if let Some(top) = stack.last_mut() {
                        let s = t
                            .unescape()
                            .map_err(|e| Error::Malformed(format!("XML text: {e}")))?;
                        top.text.push_str(&s);
                    }
                }
                Event::CData(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&String::from_utf8_lossy(&t));
                    }
                }
                Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        if !stack.is_empty() {
            return Err(Error::Malformed("document ends inside an element".into()));
        }
        root.ok_or_else(|| Error::Malformed("empty document".into()))
    }

    /// First child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follows a path of child names.
    pub fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |el, n| el.child(n))
    }

    /// Text of the child `name`, trimmed.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// An attribute's value (local name).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `xsi:type` attribute (in the XML Schema instance namespace,
    /// whatever its prefix), the type's prefix stripped. Never a plain
    /// `type` attribute.
    pub fn xsi_type(&self) -> Option<&str> {
        self.xsi
            .as_deref()
            .map(|t| t.rsplit(':').next().unwrap_or(t))
    }

    /// Serialises the element (local names; attributes kept, namespaces
    /// dropped) — enough to save and reread a configuration.
    pub fn to_xml(&self) -> String {
        let mut s = String::new();
        self.write_xml(&mut s);
        s
    }

    fn write_xml(&self, s: &mut String) {
        s.push('<');
        s.push_str(&self.name);
        if let Some(t) = &self.xsi {
            s.push_str(" xmlns:xsi=\"");
            s.push_str(XSI_NS);
            s.push_str("\" xsi:type=\"");
            s.push_str(&escape(t));
            s.push('"');
        }
        for (k, v) in &self.attrs {
            s.push(' ');
            s.push_str(k);
            s.push_str("=\"");
            s.push_str(&escape(v));
            s.push('"');
        }
        s.push('>');
        s.push_str(&escape(&self.text));
        for c in &self.children {
            c.write_xml(s);
        }
        s.push_str("</");
        s.push_str(&self.name);
        s.push('>');
    }

    /// Depth-first search for the first element with this name.
    pub fn find(&self, name: &str) -> Option<&Element> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }
}

/// Escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all are dropped rather
            // than producing a document the peer must reject.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_navigate() {
        let doc = br#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="x"><soapenv:Body><R xmlns="urn:vim25"><returnval type="VirtualMachine">vm-1</returnval><a/><a>t &amp; u</a></R></soapenv:Body></soapenv:Envelope>"#;
        let e = Element::parse(doc).unwrap();
        assert_eq!(e.name, "Envelope");
        let r = e.path(&["Body", "R"]).unwrap();
        assert_eq!(
            r.child("returnval").unwrap().attr("type"),
            Some("VirtualMachine")
        );
        assert_eq!(r.children_named("a").count(), 2);
        assert_eq!(r.children_named("a").nth(1).unwrap().text, "t & u");
        assert!(Element::parse(b"<a><b></a>").is_err());
        assert!(Element::parse(b"").is_err());
        assert!(Element::parse(b"<a/><b/>").is_err());
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(Element::parse(deep.as_bytes()).is_err());
    }

    /// Go's encoding/xml (govmomi's vcsim) binds the XML Schema instance
    /// namespace to the prefix `XMLSchema-instance`, and a
    /// ManagedObjectReference has a plain `type` too: the two never mix,
    /// in either order, under any prefix.
    #[test]
    fn xsi_type_by_namespace_not_by_prefix() {
        let vcsim = br#"<val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="ManagedObjectReference" type="Folder">group-v3</val>"#;
        let e = Element::parse(vcsim).unwrap();
        assert_eq!(e.attr("type"), Some("Folder"));
        assert_eq!(e.xsi_type(), Some("ManagedObjectReference"));
        let reversed = br#"<val type="Folder" x:type="ManagedObjectReference" xmlns:x="http://www.w3.org/2001/XMLSchema-instance">group-v3</val>"#;
        let e = Element::parse(reversed).unwrap();
        assert_eq!(e.attr("type"), Some("Folder"));
        assert_eq!(e.xsi_type(), Some("ManagedObjectReference"));
        // Bound on an ancestor; a value with a prefix of its own.
        let nested = br#"<r xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><val xsi:type="xsd:string">x</val></r>"#;
        let e = Element::parse(nested).unwrap();
        assert_eq!(e.children[0].xsi_type(), Some("string"));
        assert_eq!(e.children[0].attr("type"), None);
        // A `type` in another namespace is neither.
        let other = br#"<val xmlns:o="urn:other" o:type="X">x</val>"#;
        let e = Element::parse(other).unwrap();
        assert_eq!((e.attr("type"), e.xsi_type()), (None, None));
        // A plain `type` alone is no xsi:type.
        let e =
            Element::parse(br#"<_this type="ServiceInstance">ServiceInstance</_this>"#).unwrap();
        assert_eq!(
            (e.attr("type"), e.xsi_type()),
            (Some("ServiceInstance"), None)
        );
        // Element namespaces are resolved too.
        let e = Element::parse(br#"<a:R xmlns:a="urn:vim25"><b/></a:R>"#).unwrap();
        assert_eq!((e.name.as_str(), e.ns.as_deref()), ("R", Some("urn:vim25")));
        assert_eq!(e.children[0].ns, None);
        // An unbound prefix is malformed.
        assert!(Element::parse(br#"<val xsi:type="string">x</val>"#).is_err());
        assert!(Element::parse(br#"<q:val>x</q:val>"#).is_err());
        // Round trip through to_xml keeps the xsi:type.
        let e = Element::parse(vcsim).unwrap();
        let again = Element::parse(e.to_xml().as_bytes()).unwrap();
        assert_eq!(again.xsi_type(), Some("ManagedObjectReference"));
        assert_eq!(again.attr("type"), Some("Folder"));
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;");
        let doc = format!("<x a=\"{}\">{}</x>", escape("\"<&>'"), escape("<&>"));
        let e = Element::parse(doc.as_bytes()).unwrap();
        assert_eq!(e.attr("a"), Some("\"<&>'"));
        assert_eq!(e.text, "<&>");
    }
}
