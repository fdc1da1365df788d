//! NFC tickets, as VDDK 8 asks for them (public traces, `nfc_auth.md`):
//! `RetrieveInternalContent` for the `NfcService` moref (`nfcService` on
//! vCenter, `ha-nfc-service` on a bare ESXi host: read, never assumed),
//! then `NfcGetVmFiles(vm)` for a read-only open (a ticket for the VM's
//! files, snapshot parents included, each opened by path) or
//! `NfcRandomAccessOpenDisk(vm, diskDeviceKey, hostForAccess)` for a
//! read-write one. All three go in `urn:vim25`. The reply is a
//! `HostServiceTicket`; a bare ESXi host leaves out `host` (meaning the
//! host the client is connected to).

use std::fmt::Write as _;

use crate::xml::Element;
use crate::{Result, Secret};

use super::envelope::{
    num, req_moref, req_text, request, returnval, service_instance, MoRef, Namespace, Request,
};

/// `RetrieveInternalContent` on the `ServiceInstance`.
pub fn retrieve_internal_content() -> Request {
    request(
        Namespace::Vim25,
        "RetrieveInternalContent",
        &service_instance(),
        "",
    )
}

/// `NfcGetVmFiles`: a read-only ticket for the files of `vm`.
pub fn nfc_get_vm_files(nfc: &MoRef, vm: &MoRef) -> Request {
    request(Namespace::Vim25, "NfcGetVmFiles", nfc, &vm.xml("vm"))
}

/// `NfcRandomAccessOpenDisk`: a read-write ticket for disk
/// `disk_device_key` (`VirtualDisk.key`) of `vm`, through `host_for_access`
/// (the VM's host; left out when unknown).
pub fn nfc_random_access_open_disk(
    nfc: &MoRef,
    vm: &MoRef,
    disk_device_key: i32,
    host_for_access: Option<&MoRef>,
) -> Request {
    let mut p = vm.xml("vm");
    let _ = write!(p, "<diskDeviceKey>{disk_device_key}</diskDeviceKey>");
    if let Some(h) = host_for_access {
        p.push_str(&h.xml("hostForAccess"));
    }
    request(Namespace::Vim25, "NfcRandomAccessOpenDisk", nfc, &p)
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
    /// Host to connect to; `None` (bare ESXi): the host the client is
    /// connected to.
    pub host: Option<String>,
    /// Port (902 on ESXi).
    pub port: u16,
    /// The host's SHA-1 thumbprint.
    pub ssl_thumbprint: String,
    /// `vpxa-nfc` (vCenter) or `nfc` (ESXi): the authd `PROXY` service.
    pub service: String,
    /// Service version (`1.1`).
    pub service_version: String,
    /// The ticket itself.
    pub session_id: Secret,
}

/// Parses an `NfcGetVmFiles` / `NfcRandomAccessOpenDisk` response.
pub fn parse_host_service_ticket(resp: &Element) -> Result<HostServiceTicket> {
    let r = returnval(resp)?;
    Ok(HostServiceTicket {
        host: r
            .child_text("host")
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string),
        port: num(r, "port")?,
        ssl_thumbprint: r
            .child_text("sslThumbprint")
            .unwrap_or_default()
            .to_string(),
        service: req_text(r, "service")?.trim().to_string(),
        service_version: r
            .child_text("serviceVersion")
            .unwrap_or_default()
            .to_string(),
        session_id: Secret::new(req_text(r, "sessionId")?),
    })
}

#[cfg(test)]
mod tests {
    use super::super::envelope::{parse_response, ENVELOPE_CLOSE, ENVELOPE_OPEN};
    use super::*;

    /// The method elements exactly as `nfc_auth.md` shows them (its
    /// indentation removed).
    #[test]
    fn requests_as_the_traces_show_them() {
        let nfc = MoRef::new("NfcService", "nfcService");
        let vm = MoRef::new("VirtualMachine", "vm-13098");
        let r = retrieve_internal_content();
        assert!(r.body.contains(r#"<RetrieveInternalContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveInternalContent>"#), "{}", r.body);
        assert_eq!(r.soap_action, "urn:vim25/8.0.1.0");
        let r = nfc_get_vm_files(&nfc, &vm);
        assert!(r.body.contains(r#"<NfcGetVmFiles xmlns="urn:vim25"><_this type="NfcService">nfcService</_this><vm type="VirtualMachine">vm-13098</vm></NfcGetVmFiles>"#), "{}", r.body);
        let r = nfc_random_access_open_disk(
            &nfc,
            &vm,
            2000,
            Some(&MoRef::new("HostSystem", "host-13001")),
        );
        assert!(r.body.contains(r#"<NfcRandomAccessOpenDisk xmlns="urn:vim25"><_this type="NfcService">nfcService</_this><vm type="VirtualMachine">vm-13098</vm><diskDeviceKey>2000</diskDeviceKey><hostForAccess type="HostSystem">host-13001</hostForAccess></NfcRandomAccessOpenDisk>"#), "{}", r.body);
        // Direct ESXi: the moref the host gave.
        let r = nfc_get_vm_files(
            &MoRef::new("NfcService", "ha-nfc-service"),
            &MoRef::new("VirtualMachine", "1"),
        );
        assert!(r.body.contains(r#"<NfcGetVmFiles xmlns="urn:vim25"><_this type="NfcService">ha-nfc-service</_this><vm type="VirtualMachine">1</vm></NfcGetVmFiles>"#));
    }

    #[test]
    fn tickets_with_and_without_host() {
        let esxi = format!("{ENVELOPE_OPEN}<NfcGetVmFilesResponse xmlns=\"urn:vim25\"><returnval><port>902</port><sslThumbprint>BE:22</sslThumbprint><service>nfc</service><serviceVersion>1.1</serviceVersion><sessionId>52cdebc5-b7ee-359a-1dec-76f0bc105ac5</sessionId></returnval></NfcGetVmFilesResponse>{ENVELOPE_CLOSE}");
        let t = parse_host_service_ticket(&parse_response(esxi.as_bytes()).unwrap()).unwrap();
        assert_eq!(t.host, None);
        assert_eq!((t.port, t.service.as_str()), (902, "nfc"));
        assert_eq!(
            t.session_id.expose(),
            "52cdebc5-b7ee-359a-1dec-76f0bc105ac5"
        );
        let vc = esxi
            .replace("<port>", "<host>10.11.12.13</host><port>")
            .replace(">nfc<", ">vpxa-nfc<");
        let t = parse_host_service_ticket(&parse_response(vc.as_bytes()).unwrap()).unwrap();
        assert_eq!(t.host.as_deref(), Some("10.11.12.13"));
        assert_eq!(t.service, "vpxa-nfc");
        let internal = format!("{ENVELOPE_OPEN}<RetrieveInternalContentResponse xmlns=\"urn:vim25\"><returnval><nfcService type=\"NfcService\">ha-nfc-service</nfcService></returnval></RetrieveInternalContentResponse>{ENVELOPE_CLOSE}");
        let c = parse_internal_content(&parse_response(internal.as_bytes()).unwrap()).unwrap();
        assert_eq!(c.nfc_service, MoRef::new("NfcService", "ha-nfc-service"));
    }
}
