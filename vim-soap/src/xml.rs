//! A small bounded DOM over quick-xml, and XML escaping.
//!
//! Responses are parsed into [`Element`] trees with hard caps on input
//! size, depth and element count, so a hostile server cannot exhaust
//! memory or the stack. Names are kept without their namespace prefix
//! (vSphere's dialect never needs the prefix to tell elements apart).

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::Error;

/// Largest SOAP message accepted (bytes).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one message.
pub const MAX_ELEMENTS: usize = 2_000_000;

/// One XML element.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name (prefix stripped).
    pub name: String,
    /// Attributes as (local name, unescaped value).
    pub attrs: Vec<(String, String)>,
    /// Child elements.
    pub children: Vec<Element>,
    /// Concatenated, unescaped text content.
    pub text: String,
}

fn local(name: &[u8]) -> String {
    let n = match name.iter().rposition(|&b| b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    };
    String::from_utf8_lossy(n).into_owned()
}

impl Element {
    /// Parses a whole document into its root element.
    pub fn parse(bytes: &[u8]) -> Result<Element, Error> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::Malformed("message too large".into()));
        }
        let mut reader = Reader::from_reader(bytes);
        reader.config_mut().trim_text(false);
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        let mut count = 0usize;
        let mut buf = Vec::new();
        loop {
            let ev = reader
                .read_event_into(&mut buf)
                .map_err(|e| Error::Malformed(format!("XML: {e}")))?;
            match ev {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    count += 1;
                    if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                        return Err(Error::Malformed("XML too large or too deep".into()));
                    }
                    let mut el = Element {
                        name: local(e.name().as_ref()),
                        ..Element::default()
                    };
                    for a in e.attributes() {
                        let a = a.map_err(|e| Error::Malformed(format!("XML attribute: {e}")))?;
                        let v = a
                            .unescape_value()
                            .map_err(|e| Error::Malformed(format!("XML attribute: {e}")))?;
                        el.attrs.push((local(a.key.as_ref()), v.into_owned()));
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

    /// The `xsi:type` attribute, prefix stripped.
    pub fn xsi_type(&self) -> Option<&str> {
        self.attr("type").map(|t| t.rsplit(':').next().unwrap_or(t))
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

    #[test]
    fn escaping() {
        assert_eq!(escape("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;");
        let doc = format!("<x a=\"{}\">{}</x>", escape("\"<&>'"), escape("<&>"));
        let e = Element::parse(doc.as_bytes()).unwrap();
        assert_eq!(e.attr("a"), Some("\"<&>'"));
        assert_eq!(e.text, "<&>");
    }
}
