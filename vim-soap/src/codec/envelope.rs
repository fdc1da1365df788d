//! The SOAP envelope: managed object references, namespaces and requests;
//! parsing a response (and, with `server`, a request or a response
//! envelope); and the helpers every call family reads results with.

use crate::xml::{escape, Element};
use crate::{Error, Result};

use super::faults::parse_fault;

/// `ManagedObjectReference`: a type and an id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MoRef {
    /// The managed object type (`VirtualMachine`, `Task`, ...).
    pub kind: String,
    /// The id (`vm-42`).
    pub value: String,
}

impl MoRef {
    /// A reference.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }
    /// `<tag type="Kind">value</tag>`.
    pub fn xml(&self, tag: &str) -> String {
        format!(
            "<{tag} type=\"{}\">{}</{tag}>",
            escape(&self.kind),
            escape(&self.value)
        )
    }
    /// Reads a reference from an element with a `type` attribute.
    pub fn from_element(e: &Element) -> Option<Self> {
        let kind = e.attr("type")?;
        let value = e.text.trim();
        if value.is_empty() {
            return None;
        }
        Some(Self::new(kind.rsplit(':').next().unwrap_or(kind), value))
    }
}

impl std::fmt::Display for MoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// The two namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    /// `urn:vim25`, the public API.
    Vim25,
    /// `urn:internalvim25`, internal calls.
    Internal,
}

impl Namespace {
    fn urn(self) -> &'static str {
        match self {
            Namespace::Vim25 => "urn:vim25",
            Namespace::Internal => "urn:internalvim25",
        }
    }
}

/// The API version sent in `SOAPAction`.
pub const API_VERSION: &str = "8.0.1.0";

/// A request ready to POST to `/sdk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Method name.
    pub method: &'static str,
    /// The `SOAPAction` header value.
    pub soap_action: String,
    /// The XML envelope. May contain a password: never log it.
    pub body: String,
}

pub(super) const ENVELOPE_OPEN: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" "#,
    r#"xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
    r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
    r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>"#
);
pub(super) const ENVELOPE_CLOSE: &str = "</soapenv:Body></soapenv:Envelope>";

pub(super) fn request(ns: Namespace, method: &'static str, this: &MoRef, params: &str) -> Request {
    let body = format!(
        "{ENVELOPE_OPEN}<{method} xmlns=\"{}\">{}{params}</{method}>{ENVELOPE_CLOSE}",
        ns.urn(),
        this.xml("_this")
    );
    Request {
        method,
        soap_action: format!("{}/{API_VERSION}", ns.urn()),
        body,
    }
}

pub(super) fn tag(name: &str, value: &str) -> String {
    format!("<{name}>{}</{name}>", escape(value))
}

/// The well-known `ServiceInstance`.
pub fn service_instance() -> MoRef {
    MoRef::new("ServiceInstance", "ServiceInstance")
}

/// A whole response envelope (server side): `<{method}Response>` holding
/// `returnval` XML (already serialised; empty for void methods).
#[cfg(feature = "server")]
pub fn response_envelope(method: &str, returnval: &str) -> String {
    let ns = if matches!(
        method,
        "RetrieveInternalContent"
            | "DisableMethods"
            | "EnableMethods"
            | "NfcRandomAccessOpen"
            | "NfcRandomAccessOpenReadonly"
    ) {
        "urn:internalvim25"
    } else {
        "urn:vim25"
    };
    format!("{ENVELOPE_OPEN}<{method}Response xmlns=\"{ns}\">{returnval}</{method}Response>{ENVELOPE_CLOSE}")
}

/// Parses a response: the `…Response` element, or the fault as an error.
pub fn parse_response(bytes: &[u8]) -> Result<Element> {
    let env = Element::parse(bytes)?;
    if env.name != "Envelope" {
        return Err(Error::Malformed(format!(
            "root element is `{}`, not Envelope",
            env.name
        )));
    }
    let body = env
        .child("Body")
        .ok_or_else(|| Error::Malformed("no Body".into()))?;
    let first = body
        .children
        .first()
        .ok_or_else(|| Error::Malformed("empty Body".into()))?;
    if first.name == "Fault" {
        return Err(Error::Fault(parse_fault(first)));
    }
    Ok(first.clone())
}

/// Parses a request (server side): the method name and its element.
#[cfg(feature = "server")]
pub fn parse_request(bytes: &[u8]) -> Result<(String, Element)> {
    let env = Element::parse(bytes)?;
    let body = env
        .child("Body")
        .ok_or_else(|| Error::Malformed("no Body".into()))?;
    let m = body
        .children
        .first()
        .ok_or_else(|| Error::Malformed("empty Body".into()))?;
    Ok((m.name.clone(), m.clone()))
}

pub(super) fn returnval(resp: &Element) -> Result<&Element> {
    resp.child("returnval")
        .ok_or_else(|| Error::Malformed(format!("{} has no returnval", resp.name)))
}

pub(super) fn req_text<'a>(e: &'a Element, name: &str) -> Result<&'a str> {
    e.child_text(name)
        .ok_or_else(|| Error::Malformed(format!("{} has no {name}", e.name)))
}

pub(super) fn req_moref(e: &Element, name: &str) -> Result<MoRef> {
    e.child(name)
        .and_then(MoRef::from_element)
        .ok_or_else(|| Error::Malformed(format!("{} has no {name} reference", e.name)))
}

pub(super) fn num<T: std::str::FromStr>(e: &Element, name: &str) -> Result<T> {
    req_text(e, name)?
        .parse()
        .map_err(|_| Error::Malformed(format!("{}.{name} is not a number", e.name)))
}

/// Parses a response whose `returnval` is a string.
pub fn parse_string(resp: &Element) -> Result<String> {
    Ok(returnval(resp)?.text.trim().to_string())
}

/// Parses a response whose `returnval` is a boolean.
pub fn parse_bool(resp: &Element) -> Result<bool> {
    match returnval(resp)?.text.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(Error::Malformed(format!("`{other}` is not a boolean"))),
    }
}

/// Parses a response whose `returnval` is a reference (absent: `None`).
pub fn parse_moref(resp: &Element) -> Result<Option<MoRef>> {
    Ok(resp.child("returnval").and_then(MoRef::from_element))
}

/// Whether sending `method` twice does no more than sending it once:
/// only such calls are resent when a connection dies under them (a
/// task, a login, a ticket or any change may have happened already).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "RetrieveServiceContent"
            | "RetrieveProperties"
            | "RetrievePropertiesEx"
            | "ContinueRetrievePropertiesEx"
            | "RetrieveInternalContent"
            | "QueryChangedDiskAreas"
            | "FindByInventoryPath"
            | "FindByUuid"
            | "SessionIsActive"
            | "SimQueryDiskBlockMap"
    )
}

#[cfg(test)]
mod idempotency_tests {
    use super::is_idempotent;

    #[test]
    fn only_reads_are_resent() {
        for m in [
            "RetrievePropertiesEx",
            "QueryChangedDiskAreas",
            "RetrieveServiceContent",
        ] {
            assert!(is_idempotent(m), "{m}");
        }
        for m in [
            "Login",
            "CreateSnapshot_Task",
            "RemoveSnapshot_Task",
            "ReconfigVM_Task",
            "AcquireCloneTicket",
            "NfcRandomAccessOpenDisk",
            "DisableMethods",
        ] {
            assert!(!is_idempotent(m), "{m}");
        }
    }
}
