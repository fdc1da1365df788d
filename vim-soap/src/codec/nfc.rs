//! NFC tickets: `RetrieveInternalContent` for the `NfcService`, and
//! `NfcRandomAccessOpen*` for the host service ticket of one disk.

use std::fmt::Write as _;

use crate::xml::Element;
use crate::{Result, Secret};

use super::envelope::{
    num, req_moref, req_text, request, returnval, service_instance, MoRef, Namespace, Request,
};

/// `RetrieveInternalContent` (internal).
pub fn retrieve_internal_content() -> Request {
    request(
        Namespace::Internal,
        "RetrieveInternalContent",
        &service_instance(),
        "",
    )
}

/// `NfcRandomAccessOpen` / `NfcRandomAccessOpenReadonly` on the
/// `NfcService` (internal): a ticket to open one disk of `vm` (as of
/// `snapshot` when given) through NFC.
pub fn nfc_random_access_open(
    nfc: &MoRef,
    vm: &MoRef,
    disk_key: i32,
    snapshot: Option<&MoRef>,
    read_only: bool,
) -> Request {
    let mut p = vm.xml("vm");
    if let Some(s) = snapshot {
        p.push_str(&s.xml("snapshot"));
    }
    let _ = write!(p, "<diskKey>{disk_key}</diskKey>");
    let method = if read_only {
        "NfcRandomAccessOpenReadonly"
    } else {
        "NfcRandomAccessOpen"
    };
    request(Namespace::Internal, method, nfc, &p)
}

/// `InternalServiceInstanceContent`, the NFC part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalContent {
    /// The `NfcService` object.
    pub nfc_service: MoRef,
}

/// Parses `RetrieveInternalContentResponse`.
pub fn parse_internal_content(resp: &Element) -> Result<InternalContent> {
    Ok(InternalContent {
        nfc_service: req_moref(returnval(resp)?, "nfcService")?,
    })
}

/// `HostServiceTicket`: where and how to open an NFC session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostServiceTicket {
    /// Host to connect to.
    pub host: String,
    /// Port (902 on ESXi).
    pub port: u16,
    /// The host's SHA-1 thumbprint.
    pub ssl_thumbprint: String,
    /// `vpxa-nfc` etc.
    pub service: String,
    /// Service version.
    pub service_version: String,
    /// The ticket itself.
    pub session_id: Secret,
}

/// Parses an `NfcRandomAccessOpen*` response.
pub fn parse_host_service_ticket(resp: &Element) -> Result<HostServiceTicket> {
    let r = returnval(resp)?;
    Ok(HostServiceTicket {
        host: req_text(r, "host")?.to_string(),
        port: num(r, "port")?,
        ssl_thumbprint: r
            .child_text("sslThumbprint")
            .unwrap_or_default()
            .to_string(),
        service: r.child_text("service").unwrap_or_default().to_string(),
        service_version: r
            .child_text("serviceVersion")
            .unwrap_or_default()
            .to_string(),
        session_id: Secret::new(req_text(r, "sessionId")?),
    })
}
