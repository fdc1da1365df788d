//! Requests and responses, both directions, without I/O.

use std::fmt::Write as _;

use crate::xml::{escape, Element};
use crate::{Error, Result, Secret};

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

const ENVELOPE_OPEN: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" "#,
    r#"xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
    r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
    r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>"#
);
const ENVELOPE_CLOSE: &str = "</soapenv:Body></soapenv:Envelope>";

fn request(ns: Namespace, method: &'static str, this: &MoRef, params: &str) -> Request {
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

fn tag(name: &str, value: &str) -> String {
    format!("<{name}>{}</{name}>", escape(value))
}

/// The well-known `ServiceInstance`.
pub fn service_instance() -> MoRef {
    MoRef::new("ServiceInstance", "ServiceInstance")
}

/// `RetrieveServiceContent`.
pub fn retrieve_service_content() -> Request {
    request(
        Namespace::Vim25,
        "RetrieveServiceContent",
        &service_instance(),
        "",
    )
}

/// `Login`.
pub fn login(session_manager: &MoRef, user: &str, password: &Secret) -> Request {
    let p = format!(
        "{}{}",
        tag("userName", user),
        tag("password", password.expose())
    );
    request(Namespace::Vim25, "Login", session_manager, &p)
}

/// `Logout`.
pub fn logout(session_manager: &MoRef) -> Request {
    request(Namespace::Vim25, "Logout", session_manager, "")
}

/// `SessionIsActive`.
pub fn session_is_active(session_manager: &MoRef, session_id: &str, user: &str) -> Request {
    let p = format!("{}{}", tag("sessionID", session_id), tag("userName", user));
    request(Namespace::Vim25, "SessionIsActive", session_manager, &p)
}

/// `AcquireCloneTicket`.
pub fn acquire_clone_ticket(session_manager: &MoRef) -> Request {
    request(Namespace::Vim25, "AcquireCloneTicket", session_manager, "")
}

/// `CloneSession` (a clone ticket is single-use).
pub fn clone_session(session_manager: &MoRef, ticket: &Secret) -> Request {
    request(
        Namespace::Vim25,
        "CloneSession",
        session_manager,
        &tag("cloneTicket", ticket.expose()),
    )
}

/// The `spec` of `AcquireGenericServiceTicket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceRequestSpec {
    /// `SessionManagerVmomiServiceRequestSpec`.
    Vmomi {
        /// The method to be allowed.
        method: String,
    },
    /// `SessionManagerHttpServiceRequestSpec`.
    Http {
        /// HTTP method.
        method: String,
        /// URL.
        url: String,
    },
}

/// `AcquireGenericServiceTicket`.
pub fn acquire_generic_service_ticket(
    session_manager: &MoRef,
    spec: &ServiceRequestSpec,
) -> Request {
    let p = match spec {
        ServiceRequestSpec::Vmomi { method } => {
            format!(
                "<spec xsi:type=\"SessionManagerVmomiServiceRequestSpec\">{}</spec>",
                tag("method", method)
            )
        }
        ServiceRequestSpec::Http { method, url } => format!(
            "<spec xsi:type=\"SessionManagerHttpServiceRequestSpec\">{}{}</spec>",
            tag("method", method),
            tag("url", url)
        ),
    };
    request(
        Namespace::Vim25,
        "AcquireGenericServiceTicket",
        session_manager,
        &p,
    )
}

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

/// `FindByInventoryPath`.
pub fn find_by_inventory_path(search_index: &MoRef, path: &str) -> Request {
    request(
        Namespace::Vim25,
        "FindByInventoryPath",
        search_index,
        &tag("inventoryPath", path),
    )
}

/// `FindByUuid` for a virtual machine.
pub fn find_by_uuid(search_index: &MoRef, uuid: &str, instance_uuid: bool) -> Request {
    let p = format!(
        "{}<vmSearch>true</vmSearch><instanceUuid>{instance_uuid}</instanceUuid>",
        tag("uuid", uuid)
    );
    request(Namespace::Vim25, "FindByUuid", search_index, &p)
}

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

/// `CreateSnapshot_Task`.
pub fn create_snapshot_task(
    vm: &MoRef,
    name: &str,
    description: &str,
    memory: bool,
    quiesce: bool,
) -> Request {
    let p = format!(
        "{}{}<memory>{memory}</memory><quiesce>{quiesce}</quiesce>",
        tag("name", name),
        tag("description", description)
    );
    request(Namespace::Vim25, "CreateSnapshot_Task", vm, &p)
}

/// `RemoveSnapshot_Task`.
pub fn remove_snapshot_task(snapshot: &MoRef, remove_children: bool, consolidate: bool) -> Request {
    let p = format!("<removeChildren>{remove_children}</removeChildren><consolidate>{consolidate}</consolidate>");
    request(Namespace::Vim25, "RemoveSnapshot_Task", snapshot, &p)
}

/// `ConsolidateVMDisks_Task`.
pub fn consolidate_vm_disks_task(vm: &MoRef) -> Request {
    request(Namespace::Vim25, "ConsolidateVMDisks_Task", vm, "")
}

/// A virtual disk as `ReconfigVM_Task` adds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Device key (negative for a new device).
    pub key: i32,
    /// `[datastore] dir/file.vmdk`.
    pub file_name: String,
    /// `persistent`, `independent_persistent`, ...
    pub disk_mode: String,
    /// Controller device key.
    pub controller_key: i32,
    /// Unit number on the controller.
    pub unit_number: i32,
}

/// One `deviceChange` of a `ReconfigVM_Task`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceChange {
    /// Attach an existing disk file.
    AddDisk(DiskSpec),
    /// Detach the disk with this device key (the file stays).
    RemoveDisk(i32),
}

/// `VirtualMachineConfigSpec`, the parts a disk kit uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSpec {
    /// Turn changed-block tracking on or off.
    pub change_tracking: Option<bool>,
    /// Device changes.
    pub device_changes: Vec<DeviceChange>,
}

/// `ReconfigVM_Task`.
pub fn reconfig_vm_task(vm: &MoRef, spec: &ConfigSpec) -> Request {
    let mut p = String::from("<spec>");
    if let Some(c) = spec.change_tracking {
        let _ = write!(p, "<changeTrackingEnabled>{c}</changeTrackingEnabled>");
    }
    for d in &spec.device_changes {
        match d {
            DeviceChange::AddDisk(s) => {
                let _ = write!(
                    p,
                    "<deviceChange><operation>add</operation><device xsi:type=\"VirtualDisk\"><key>{}</key><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">{}{}</backing><controllerKey>{}</controllerKey><unitNumber>{}</unitNumber></device></deviceChange>",
                    s.key,
                    tag("fileName", &s.file_name),
                    tag("diskMode", &s.disk_mode),
                    s.controller_key,
                    s.unit_number
                );
            }
            DeviceChange::RemoveDisk(key) => {
                let _ = write!(p, "<deviceChange><operation>remove</operation><device xsi:type=\"VirtualDisk\"><key>{key}</key></device></deviceChange>");
            }
        }
    }
    p.push_str("</spec>");
    request(Namespace::Vim25, "ReconfigVM_Task", vm, &p)
}

/// `RelocateVM_Task` to another datastore (what PrepareForAccess blocks).
pub fn relocate_vm_task(vm: &MoRef, datastore: &MoRef) -> Request {
    request(
        Namespace::Vim25,
        "RelocateVM_Task",
        vm,
        &format!("<spec>{}</spec>", datastore.xml("datastore")),
    )
}

/// `QueryChangedDiskAreas`.
pub fn query_changed_disk_areas(
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    device_key: i32,
    start_offset: u64,
    change_id: &str,
) -> Request {
    let mut p = String::new();
    if let Some(s) = snapshot {
        p.push_str(&s.xml("snapshot"));
    }
    let _ = write!(
        p,
        "<deviceKey>{device_key}</deviceKey><startOffset>{start_offset}</startOffset>{}",
        tag("changeId", change_id)
    );
    request(Namespace::Vim25, "QueryChangedDiskAreas", vm, &p)
}

/// `DisableMethods` (internal): keep `methods` from running on `entities`.
pub fn disable_methods(
    authorization_manager: &MoRef,
    entities: &[MoRef],
    methods: &[&str],
    source_id: &str,
    session_scope: bool,
) -> Request {
    let mut p = String::new();
    for e in entities {
        p.push_str(&e.xml("entity"));
    }
    for m in methods {
        let _ = write!(
            p,
            "<method>{}<reasonId>{}</reasonId></method>",
            tag("method", m),
            escape(source_id)
        );
    }
    p.push_str(&tag("sourceId", source_id));
    if session_scope {
        p.push_str("<sessionScope>true</sessionScope>");
    }
    request(
        Namespace::Internal,
        "DisableMethods",
        authorization_manager,
        &p,
    )
}

/// `EnableMethods` (internal).
pub fn enable_methods(
    authorization_manager: &MoRef,
    entities: &[MoRef],
    methods: &[&str],
    source_id: &str,
) -> Request {
    let mut p = String::new();
    for e in entities {
        p.push_str(&e.xml("entity"));
    }
    for m in methods {
        p.push_str(&tag("method", m));
    }
    p.push_str(&tag("sourceId", source_id));
    request(
        Namespace::Internal,
        "EnableMethods",
        authorization_manager,
        &p,
    )
}

// ---------------------------------------------------------------- faults

/// The faults a disk kit tells apart.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Wrong user or password.
    InvalidLogin,
    /// No session, or it expired.
    NotAuthenticated,
    /// A moref that does not (or no longer) exist(s).
    ManagedObjectNotFound(Option<MoRef>),
    /// `DisableMethods` for a method already disabled.
    MethodAlreadyDisabled(String),
    /// A call to a disabled method.
    MethodDisabled(String),
    /// Not supported here (e.g. `DisableMethods` on ESXi).
    NotSupported,
    /// The object's state forbids the call.
    InvalidState,
    /// A file is missing.
    FileNotFound(String),
    /// A bad argument.
    InvalidArgument(String),
    /// A task is already running on the object.
    TaskInProgress,
    /// Anything else, by its type name.
    Other(String),
}

impl FaultKind {
    /// The fault type name as vSphere spells it.
    pub fn type_name(&self) -> &str {
        match self {
            FaultKind::InvalidLogin => "InvalidLogin",
            FaultKind::NotAuthenticated => "NotAuthenticated",
            FaultKind::ManagedObjectNotFound(_) => "ManagedObjectNotFound",
            FaultKind::MethodAlreadyDisabled(_) => "MethodAlreadyDisabledFault",
            FaultKind::MethodDisabled(_) => "MethodDisabled",
            FaultKind::NotSupported => "NotSupported",
            FaultKind::InvalidState => "InvalidState",
            FaultKind::FileNotFound(_) => "FileNotFound",
            FaultKind::InvalidArgument(_) => "InvalidArgument",
            FaultKind::TaskInProgress => "TaskInProgress",
            FaultKind::Other(t) => t,
        }
    }

    fn detail_xml(&self) -> String {
        match self {
            FaultKind::ManagedObjectNotFound(Some(o)) => o.xml("obj"),
            FaultKind::MethodAlreadyDisabled(m) => tag("sourceId", m),
            FaultKind::MethodDisabled(m) => tag("source", m),
            FaultKind::FileNotFound(f) => tag("file", f),
            FaultKind::InvalidArgument(p) => tag("invalidProperty", p),
            _ => String::new(),
        }
    }

    fn from_detail(type_name: &str, d: &Element) -> Self {
        let t = type_name
            .strip_suffix("Fault")
            .filter(|s| !s.is_empty() && *s != "MethodAlreadyDisabled")
            .unwrap_or(type_name);
        match t {
            "InvalidLogin" => FaultKind::InvalidLogin,
            "NotAuthenticated" => FaultKind::NotAuthenticated,
            "ManagedObjectNotFound" => {
                FaultKind::ManagedObjectNotFound(d.child("obj").and_then(MoRef::from_element))
            }
            "MethodAlreadyDisabledFault" | "MethodAlreadyDisabled" => {
                FaultKind::MethodAlreadyDisabled(
                    d.child_text("sourceId").unwrap_or_default().to_string(),
                )
            }
            "MethodDisabled" => {
                FaultKind::MethodDisabled(d.child_text("source").unwrap_or_default().to_string())
            }
            "NotSupported" => FaultKind::NotSupported,
            "InvalidState" => FaultKind::InvalidState,
            "FileNotFound" => {
                FaultKind::FileNotFound(d.child_text("file").unwrap_or_default().to_string())
            }
            "InvalidArgument" => FaultKind::InvalidArgument(
                d.child_text("invalidProperty")
                    .unwrap_or_default()
                    .to_string(),
            ),
            "TaskInProgress" => FaultKind::TaskInProgress,
            other => FaultKind::Other(other.to_string()),
        }
    }
}

/// A SOAP fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} fault: {message}", kind.type_name())]
pub struct Fault {
    /// What kind.
    pub kind: FaultKind,
    /// `faultstring`.
    pub message: String,
}

fn parse_fault(f: &Element) -> Fault {
    let message = f.child_text("faultstring").unwrap_or_default().to_string();
    let kind = match f.child("detail").and_then(|d| d.children.first()) {
        Some(d) => {
            let t = d.xsi_type().unwrap_or(&d.name).to_string();
            FaultKind::from_detail(&t, d)
        }
        None => FaultKind::Other("Unknown".into()),
    };
    Fault { kind, message }
}

/// A whole fault envelope (server side).
pub fn fault_envelope(kind: &FaultKind, message: &str) -> String {
    let t = kind.type_name();
    let elem = if t.ends_with("Fault") {
        t.to_string()
    } else {
        format!("{t}Fault")
    };
    format!(
        "{ENVELOPE_OPEN}<soapenv:Fault><faultcode>ServerFaultCode</faultcode>{}<detail><{elem} xmlns=\"urn:vim25\" xsi:type=\"{t}\">{}</{elem}></detail></soapenv:Fault>{ENVELOPE_CLOSE}",
        tag("faultstring", message),
        kind.detail_xml()
    )
}

/// A whole response envelope (server side): `<{method}Response>` holding
/// `returnval` XML (already serialised; empty for void methods).
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

// ---------------------------------------------------------------- results

fn returnval(resp: &Element) -> Result<&Element> {
    resp.child("returnval")
        .ok_or_else(|| Error::Malformed(format!("{} has no returnval", resp.name)))
}

fn req_text<'a>(e: &'a Element, name: &str) -> Result<&'a str> {
    e.child_text(name)
        .ok_or_else(|| Error::Malformed(format!("{} has no {name}", e.name)))
}

fn req_moref(e: &Element, name: &str) -> Result<MoRef> {
    e.child(name)
        .and_then(MoRef::from_element)
        .ok_or_else(|| Error::Malformed(format!("{} has no {name} reference", e.name)))
}

fn num<T: std::str::FromStr>(e: &Element, name: &str) -> Result<T> {
    req_text(e, name)?
        .parse()
        .map_err(|_| Error::Malformed(format!("{}.{name} is not a number", e.name)))
}

/// `AboutInfo`, the parts that matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct About {
    /// `VirtualCenter` or `HostAgent`.
    pub api_type: String,
    /// API version.
    pub api_version: String,
    /// Product name.
    pub full_name: String,
}

/// `ServiceContent`, the parts that matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceContent {
    /// Root folder.
    pub root_folder: MoRef,
    /// The property collector.
    pub property_collector: MoRef,
    /// The session manager.
    pub session_manager: MoRef,
    /// The search index.
    pub search_index: MoRef,
    /// The authorization manager.
    pub authorization_manager: MoRef,
    /// About.
    pub about: About,
}

/// Parses `RetrieveServiceContentResponse`.
pub fn parse_service_content(resp: &Element) -> Result<ServiceContent> {
    let r = returnval(resp)?;
    let about = r
        .child("about")
        .ok_or_else(|| Error::Malformed("no about".into()))?;
    Ok(ServiceContent {
        root_folder: req_moref(r, "rootFolder")?,
        property_collector: req_moref(r, "propertyCollector")?,
        session_manager: req_moref(r, "sessionManager")?,
        search_index: req_moref(r, "searchIndex")?,
        authorization_manager: req_moref(r, "authorizationManager")?,
        about: About {
            api_type: req_text(about, "apiType")?.to_string(),
            api_version: about
                .child_text("apiVersion")
                .unwrap_or_default()
                .to_string(),
            full_name: about.child_text("fullName").unwrap_or_default().to_string(),
        },
    })
}

/// `UserSession`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSession {
    /// Session key.
    pub key: String,
    /// User name.
    pub user_name: String,
}

/// Parses `LoginResponse` / `CloneSessionResponse`.
pub fn parse_user_session(resp: &Element) -> Result<UserSession> {
    let r = returnval(resp)?;
    Ok(UserSession {
        key: req_text(r, "key")?.to_string(),
        user_name: req_text(r, "userName")?.to_string(),
    })
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

/// `SessionManagerGenericServiceTicket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenericServiceTicket {
    /// The ticket.
    pub id: Secret,
    /// Host the ticket is for.
    pub host_name: Option<String>,
    /// The host's thumbprint.
    pub ssl_thumbprint: Option<String>,
}

/// Parses `AcquireGenericServiceTicketResponse`.
pub fn parse_generic_service_ticket(resp: &Element) -> Result<GenericServiceTicket> {
    let r = returnval(resp)?;
    Ok(GenericServiceTicket {
        id: Secret::new(req_text(r, "id")?),
        host_name: r.child_text("hostName").map(str::to_string),
        ssl_thumbprint: r.child_text("sslThumbprint").map(str::to_string),
    })
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

/// States of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting to run.
    Queued,
    /// Running.
    Running,
    /// Done.
    Success,
    /// Failed.
    Error,
}

impl TaskState {
    /// vSphere spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Error => "error",
        }
    }
}

/// `TaskInfo`, the parts that matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task.
    pub task: MoRef,
    /// State.
    pub state: TaskState,
    /// A reference result (the snapshot of `CreateSnapshot_Task`).
    pub result: Option<MoRef>,
    /// The error of a failed task.
    pub error: Option<Fault>,
}

/// Reads a `TaskInfo` value element.
pub fn task_info(val: &Element) -> Result<TaskInfo> {
    let state = match req_text(val, "state")? {
        "queued" => TaskState::Queued,
        "running" => TaskState::Running,
        "success" => TaskState::Success,
        "error" => TaskState::Error,
        s => return Err(Error::Malformed(format!("unknown task state `{s}`"))),
    };
    let error = val.child("error").map(|e| {
        let message = e
            .child_text("localizedMessage")
            .unwrap_or_default()
            .to_string();
        let kind = match e.child("fault") {
            Some(f) => FaultKind::from_detail(f.xsi_type().unwrap_or("Unknown"), f),
            None => FaultKind::Other("Unknown".into()),
        };
        Fault { kind, message }
    });
    Ok(TaskInfo {
        task: req_moref(val, "task")?,
        state,
        result: val.child("result").and_then(MoRef::from_element),
        error,
    })
}

/// Serialises a `TaskInfo` (server side).
pub fn task_info_xml(t: &TaskInfo) -> String {
    let mut s = format!(
        "<val xsi:type=\"TaskInfo\">{}{}",
        t.task.xml("task"),
        tag("state", t.state.as_str())
    );
    if let Some(r) = &t.result {
        let _ = write!(
            s,
            "<result type=\"{}\" xsi:type=\"ManagedObjectReference\">{}</result>",
            escape(&r.kind),
            escape(&r.value)
        );
    }
    if let Some(f) = &t.error {
        let _ = write!(
            s,
            "<error>{}<fault xsi:type=\"{}\">{}</fault></error>",
            tag("localizedMessage", &f.message),
            escape(f.kind.type_name()),
            f.kind.detail_xml()
        );
    }
    s.push_str("</val>");
    s
}

/// A virtual disk device of a VM or snapshot configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualDiskInfo {
    /// Device key.
    pub key: i32,
    /// `[datastore] dir/file.vmdk`.
    pub file_name: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// `persistent`, `independent_persistent`, `independent_nonpersistent`, ...
    pub disk_mode: String,
    /// Thin provisioned.
    pub thin: bool,
    /// CBT change id of this configuration, when CBT is on.
    pub change_id: Option<String>,
    /// Backing UUID.
    pub uuid: Option<String>,
    /// Controller key.
    pub controller_key: i32,
    /// Unit number.
    pub unit_number: i32,
}

impl VirtualDiskInfo {
    /// Independent disks are not part of snapshots (and not backed up).
    pub fn is_independent(&self) -> bool {
        self.disk_mode.starts_with("independent")
    }
}

/// The disks in an `ArrayOfVirtualDevice` value.
pub fn virtual_disks(val: &Element) -> Result<Vec<VirtualDiskInfo>> {
    let mut out = Vec::new();
    for d in &val.children {
        if d.xsi_type() != Some("VirtualDisk") {
            continue;
        }
        let b = d
            .child("backing")
            .ok_or_else(|| Error::Malformed("VirtualDisk without backing".into()))?;
        let capacity = match d.child_text("capacityInBytes") {
            Some(t) => t
                .parse()
                .map_err(|_| Error::Malformed("capacityInBytes".into()))?,
            None => num::<u64>(d, "capacityInKB")? * 1024,
        };
        out.push(VirtualDiskInfo {
            key: num(d, "key")?,
            file_name: req_text(b, "fileName")?.to_string(),
            capacity,
            disk_mode: b.child_text("diskMode").unwrap_or("persistent").to_string(),
            thin: b.child_text("thinProvisioned") == Some("true"),
            change_id: b.child_text("changeId").map(str::to_string),
            uuid: b.child_text("uuid").map(str::to_string),
            controller_key: d
                .child_text("controllerKey")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            unit_number: d
                .child_text("unitNumber")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
        });
    }
    Ok(out)
}

/// Serialises disks as an `ArrayOfVirtualDevice` value (server side).
pub fn virtual_disks_xml(disks: &[VirtualDiskInfo]) -> String {
    let mut s = String::from("<val xsi:type=\"ArrayOfVirtualDevice\">");
    for d in disks {
        let _ = write!(
            s,
            "<VirtualDevice xsi:type=\"VirtualDisk\"><key>{}</key><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">{}{}<thinProvisioned>{}</thinProvisioned>{}{}</backing><controllerKey>{}</controllerKey><unitNumber>{}</unitNumber><capacityInKB>{}</capacityInKB><capacityInBytes>{}</capacityInBytes></VirtualDevice>",
            d.key,
            tag("fileName", &d.file_name),
            tag("diskMode", &d.disk_mode),
            d.thin,
            d.uuid.as_deref().map(|u| tag("uuid", u)).unwrap_or_default(),
            d.change_id.as_deref().map(|c| tag("changeId", c)).unwrap_or_default(),
            d.controller_key,
            d.unit_number,
            d.capacity / 1024,
            d.capacity
        );
    }
    s.push_str("</val>");
    s
}

/// What kind of controller a device hangs off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerKind {
    /// A SCSI controller (LSI Logic, LSI Logic SAS, BusLogic, ParaVirtual):
    /// units 0–15, unit 7 is the controller's own.
    Scsi,
    /// An IDE controller (no hot add).
    Ide,
    /// Anything else (SATA, NVMe, ...), by its type name.
    Other(String),
}

/// A disk controller of a VM configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualController {
    /// Device key.
    pub key: i32,
    /// Bus number (SCSI0, SCSI1, ... in this order).
    pub bus_number: i32,
    /// Kind.
    pub kind: ControllerKind,
    /// The `xsi:type` as sent, e.g. `ParaVirtualSCSIController`.
    pub type_name: String,
}

const SCSI_CONTROLLERS: [&str; 4] = [
    "ParaVirtualSCSIController",
    "VirtualLsiLogicController",
    "VirtualLsiLogicSASController",
    "VirtualBusLogicController",
];

/// The controllers in an `ArrayOfVirtualDevice` value (anything with a
/// `busNumber`).
pub fn virtual_controllers(val: &Element) -> Result<Vec<VirtualController>> {
    let mut out = Vec::new();
    for d in &val.children {
        let Some(t) = d.xsi_type() else { continue };
        if d.child("busNumber").is_none() {
            continue;
        }
        let kind = if SCSI_CONTROLLERS.contains(&t) || t == "VirtualSCSIController" {
            ControllerKind::Scsi
        } else if t == "VirtualIDEController" {
            ControllerKind::Ide
        } else {
            ControllerKind::Other(t.to_string())
        };
        out.push(VirtualController {
            key: num(d, "key")?,
            bus_number: num(d, "busNumber")?,
            kind,
            type_name: t.to_string(),
        });
    }
    Ok(out)
}

/// Serialises controllers and disks as one `ArrayOfVirtualDevice` value
/// (server side), controllers first, in the order given.
pub fn virtual_devices_xml(controllers: &[VirtualController], disks: &[VirtualDiskInfo]) -> String {
    let disks_xml = virtual_disks_xml(disks);
    let mut s = String::from("<val xsi:type=\"ArrayOfVirtualDevice\">");
    for c in controllers {
        let _ = write!(
            s,
            "<VirtualDevice xsi:type=\"{}\"><key>{}</key><busNumber>{}</busNumber></VirtualDevice>",
            escape(&c.type_name),
            c.key,
            c.bus_number
        );
    }
    s.push_str(
        disks_xml
            .strip_prefix("<val xsi:type=\"ArrayOfVirtualDevice\">")
            .unwrap_or(&disks_xml),
    );
    s
}

/// Name of the simulator's block-map call (see [`sim_query_disk_block_map`]).
pub const SIM_QUERY_DISK_BLOCK_MAP: &str = "SimQueryDiskBlockMap";

/// `SimQueryDiskBlockMap`: where a disk's bytes lie on its LUN.
///
/// **A model, not a vSphere API.** VMware's SAN transport learns a disk's
/// LUN and block layout through internal, undocumented host interfaces
/// (VMFS metadata). This call stands in for them so the SAN transport can
/// be tested against the simulator; a real vCenter answers it with a
/// `MethodNotFound`-style fault, and the SAN transport then declines.
pub fn sim_query_disk_block_map(vm: &MoRef, snapshot: Option<&MoRef>, device_key: i32) -> Request {
    let mut p = String::new();
    if let Some(s) = snapshot {
        p.push_str(&s.xml("snapshot"));
    }
    let _ = write!(p, "<deviceKey>{device_key}</deviceKey>");
    request(Namespace::Vim25, SIM_QUERY_DISK_BLOCK_MAP, vm, &p)
}

/// One piece of a disk on its LUN (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMapExtent {
    /// Offset in the virtual disk.
    pub virtual_offset: u64,
    /// Offset on the LUN.
    pub lun_offset: u64,
    /// Length.
    pub length: u64,
}

/// The answer of `SimQueryDiskBlockMap`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskBlockMap {
    /// The LUN's NAA id, e.g. `naa.6000c2912345678`.
    pub lun_id: String,
    /// Virtual disk size in bytes.
    pub capacity: u64,
    /// Thin provisioned (blocks are allocated by the host on first write).
    pub thin: bool,
    /// The file is a redo log (a snapshot's delta), not the base disk.
    pub redo_log: bool,
    /// The extents of the base disk on the LUN.
    pub extents: Vec<BlockMapExtent>,
}

/// Parses a `SimQueryDiskBlockMapResponse`.
pub fn parse_disk_block_map(resp: &Element) -> Result<DiskBlockMap> {
    let r = returnval(resp)?;
    let mut extents = Vec::new();
    for e in r.children_named("extent") {
        extents.push(BlockMapExtent {
            virtual_offset: num(e, "virtualOffset")?,
            lun_offset: num(e, "lunOffset")?,
            length: num(e, "length")?,
        });
    }
    Ok(DiskBlockMap {
        lun_id: req_text(r, "lunId")?.to_string(),
        capacity: num(r, "capacity")?,
        thin: r.child_text("thin") == Some("true"),
        redo_log: r.child_text("redoLog") == Some("true"),
        extents,
    })
}

/// Serialises a `DiskBlockMap` returnval (server side).
pub fn disk_block_map_xml(m: &DiskBlockMap) -> String {
    let mut s = format!(
        "<returnval>{}<capacity>{}</capacity><thin>{}</thin><redoLog>{}</redoLog>",
        tag("lunId", &m.lun_id),
        m.capacity,
        m.thin,
        m.redo_log
    );
    for e in &m.extents {
        let _ = write!(
            s,
            "<extent><virtualOffset>{}</virtualOffset><lunOffset>{}</lunOffset><length>{}</length></extent>",
            e.virtual_offset, e.lun_offset, e.length
        );
    }
    s.push_str("</returnval>");
    s
}

/// A node of a VM's snapshot tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotNode {
    /// The snapshot.
    pub snapshot: MoRef,
    /// Name.
    pub name: String,
    /// Children.
    pub children: Vec<SnapshotNode>,
}

/// Reads `snapshot.rootSnapshotList` (`ArrayOfVirtualMachineSnapshotTree`).
pub fn snapshot_tree(val: &Element) -> Result<Vec<SnapshotNode>> {
    fn node(e: &Element, depth: usize) -> Result<SnapshotNode> {
        if depth > 256 {
            return Err(Error::Malformed("snapshot tree too deep".into()));
        }
        Ok(SnapshotNode {
            snapshot: req_moref(e, "snapshot")?,
            name: e.child_text("name").unwrap_or_default().to_string(),
            children: e
                .children_named("childSnapshotList")
                .map(|c| node(c, depth + 1))
                .collect::<Result<_>>()?,
        })
    }
    val.children.iter().map(|c| node(c, 0)).collect()
}

/// Serialises a snapshot tree (server side).
pub fn snapshot_tree_xml(nodes: &[SnapshotNode]) -> String {
    fn node(n: &SnapshotNode, tagname: &str, out: &mut String) {
        let _ = write!(
            out,
            "<{tagname} xsi:type=\"VirtualMachineSnapshotTree\">{}{}",
            n.snapshot.xml("snapshot"),
            tag("name", &n.name)
        );
        for c in &n.children {
            node(c, "childSnapshotList", out);
        }
        let _ = write!(out, "</{tagname}>");
    }
    let mut s = String::from("<val xsi:type=\"ArrayOfVirtualMachineSnapshotTree\">");
    for n in nodes {
        node(n, "VirtualMachineSnapshotTree", &mut s);
    }
    s.push_str("</val>");
    s
}

/// `DiskChangeInfo` (bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskChangeInfo {
    /// Window start.
    pub start_offset: u64,
    /// Window length.
    pub length: u64,
    /// Changed areas `(start, length)`.
    pub changed_area: Vec<(u64, u64)>,
}

/// Parses `QueryChangedDiskAreasResponse`.
pub fn parse_disk_change_info(resp: &Element) -> Result<DiskChangeInfo> {
    let r = returnval(resp)?;
    let mut changed_area = Vec::new();
    for a in r.children_named("changedArea") {
        changed_area.push((num(a, "start")?, num(a, "length")?));
    }
    Ok(DiskChangeInfo {
        start_offset: num(r, "startOffset")?,
        length: num(r, "length")?,
        changed_area,
    })
}

/// Serialises a `DiskChangeInfo` returnval (server side).
pub fn disk_change_info_xml(d: &DiskChangeInfo) -> String {
    let mut s = format!(
        "<returnval><startOffset>{}</startOffset><length>{}</length>",
        d.start_offset, d.length
    );
    for (start, len) in &d.changed_area {
        let _ = write!(
            s,
            "<changedArea><start>{start}</start><length>{len}</length></changedArea>"
        );
    }
    s.push_str("</returnval>");
    s
}

/// Serialises one `ObjectContent` (server side); `props` are `(path, val
/// XML)` where the val XML is a complete `<val …>…</val>` element.
pub fn object_content_xml(obj: &MoRef, props: &[(String, String)]) -> String {
    let mut s = format!("<objects>{}", obj.xml("obj"));
    for (name, val) in props {
        let _ = write!(s, "<propSet>{}{val}</propSet>", tag("name", name));
    }
    s.push_str("</objects>");
    s
}

/// `<val xsi:type="xsd:T">text</val>`.
pub fn simple_val(xsd_type: &str, text: &str) -> String {
    format!("<val xsi:type=\"xsd:{xsd_type}\">{}</val>", escape(text))
}

/// A reference value.
pub fn moref_val(r: &MoRef) -> String {
    format!(
        "<val type=\"{}\" xsi:type=\"ManagedObjectReference\">{}</val>",
        escape(&r.kind),
        escape(&r.value)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm() -> MoRef {
        MoRef::new("SessionManager", "SessionManager")
    }

    /// The expected XML of each request, in vSphere's dialect.
    #[test]
    fn request_xml() {
        let r = login(&sm(), "administrator@vsphere.local", &Secret::new("p&ss"));
        assert_eq!(r.soap_action, "urn:vim25/8.0.1.0");
        assert!(r.body.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/""#));
        assert!(r.body.contains(r#"<soapenv:Body><Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><userName>administrator@vsphere.local</userName><password>p&amp;ss</password></Login></soapenv:Body></soapenv:Envelope>"#));
        assert!(
            format!("{r:?}").contains("p&amp;ss"),
            "Request bodies are for the wire; Secret is what redacts"
        );

        let r = retrieve_service_content();
        assert!(r.body.contains(r#"<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>"#));

        let vm = MoRef::new("VirtualMachine", "vm-42");
        let snap = MoRef::new("VirtualMachineSnapshot", "snapshot-7");
        let r = query_changed_disk_areas(&vm, Some(&snap), 2000, 0, "52 de c0 d9/3");
        assert!(r.body.contains(r#"<QueryChangedDiskAreas xmlns="urn:vim25"><_this type="VirtualMachine">vm-42</_this><snapshot type="VirtualMachineSnapshot">snapshot-7</snapshot><deviceKey>2000</deviceKey><startOffset>0</startOffset><changeId>52 de c0 d9/3</changeId></QueryChangedDiskAreas>"#), "{}", r.body);

        let am = MoRef::new("AuthorizationManager", "AuthorizationManager");
        let r = disable_methods(
            &am,
            std::slice::from_ref(&vm),
            &["RelocateVM_Task"],
            "vddk-rs backup",
            false,
        );
        assert_eq!(r.soap_action, "urn:internalvim25/8.0.1.0");
        assert!(r.body.contains(r#"<DisableMethods xmlns="urn:internalvim25"><_this type="AuthorizationManager">AuthorizationManager</_this><entity type="VirtualMachine">vm-42</entity><method><method>RelocateVM_Task</method><reasonId>vddk-rs backup</reasonId></method><sourceId>vddk-rs backup</sourceId></DisableMethods>"#), "{}", r.body);
        let r = enable_methods(&am, std::slice::from_ref(&vm), &["RelocateVM_Task"], "x");
        assert!(r.body.contains(r#"<entity type="VirtualMachine">vm-42</entity><method>RelocateVM_Task</method><sourceId>x</sourceId>"#));

        let r = reconfig_vm_task(
            &vm,
            &ConfigSpec {
                change_tracking: Some(true),
                device_changes: vec![DeviceChange::AddDisk(DiskSpec {
                    key: -1,
                    file_name: "[ds 1@x] vm/d.vmdk".into(),
                    disk_mode: "independent_persistent".into(),
                    controller_key: 1000,
                    unit_number: 3,
                })],
            },
        );
        assert!(r.body.contains(r#"<spec><changeTrackingEnabled>true</changeTrackingEnabled><deviceChange><operation>add</operation><device xsi:type="VirtualDisk"><key>-1</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds 1@x] vm/d.vmdk</fileName>"#), "{}", r.body);

        let r = acquire_generic_service_ticket(
            &sm(),
            &ServiceRequestSpec::Http {
                method: "httpGet".into(),
                url: "https://h/folder?a=1&b=2".into(),
            },
        );
        assert!(r.body.contains(r#"<spec xsi:type="SessionManagerHttpServiceRequestSpec"><method>httpGet</method><url>https://h/folder?a=1&amp;b=2</url></spec>"#));

        let pc = MoRef::new("PropertyCollector", "propertyCollector");
        let r = retrieve_properties_ex(
            &pc,
            &[PropertyRequest {
                obj: vm.clone(),
                paths: vec!["config.hardware.device".into(), "name".into()],
            }],
            Some(100),
        );
        assert!(r.body.contains(r#"<specSet><propSet><type>VirtualMachine</type><pathSet>config.hardware.device</pathSet><pathSet>name</pathSet></propSet><objectSet><obj type="VirtualMachine">vm-42</obj><skip>false</skip></objectSet></specSet><options><maxObjects>100</maxObjects></options>"#), "{}", r.body);

        let nfc = MoRef::new("NfcService", "nfcService");
        let r = nfc_random_access_open(&nfc, &vm, 2001, Some(&snap), true);
        assert!(r.body.contains(r#"<NfcRandomAccessOpenReadonly xmlns="urn:internalvim25"><_this type="NfcService">nfcService</_this><vm type="VirtualMachine">vm-42</vm><snapshot type="VirtualMachineSnapshot">snapshot-7</snapshot><diskKey>2001</diskKey>"#));

        for r in [
            logout(&sm()),
            session_is_active(&sm(), "k", "u"),
            acquire_clone_ticket(&sm()),
            clone_session(&sm(), &Secret::new("t")),
            retrieve_internal_content(),
            find_by_inventory_path(&MoRef::new("SearchIndex", "SearchIndex"), "dc/vm/My VM"),
            find_by_uuid(&MoRef::new("SearchIndex", "SearchIndex"), "4201", false),
            continue_retrieve_properties_ex(&pc, "tok"),
            create_snapshot_task(&vm, "backup <1>", "", false, true),
            remove_snapshot_task(&snap, false, true),
            consolidate_vm_disks_task(&vm),
            relocate_vm_task(&vm, &MoRef::new("Datastore", "datastore-1")),
        ] {
            let (name, _) = parse_request(r.body.as_bytes()).unwrap();
            assert_eq!(name, r.method);
        }
        assert!(create_snapshot_task(&vm, "backup <1>", "", false, true)
            .body
            .contains("<name>backup &lt;1&gt;</name>"));
    }

    #[test]
    fn faults_round_trip() {
        let kinds = [
            FaultKind::InvalidLogin,
            FaultKind::NotAuthenticated,
            FaultKind::ManagedObjectNotFound(Some(MoRef::new(
                "VirtualMachineSnapshot",
                "snapshot-9",
            ))),
            FaultKind::MethodAlreadyDisabled("backup".into()),
            FaultKind::MethodDisabled("backup".into()),
            FaultKind::NotSupported,
            FaultKind::InvalidState,
            FaultKind::FileNotFound("[ds] x.vmdk".into()),
            FaultKind::InvalidArgument("changeId".into()),
            FaultKind::TaskInProgress,
            FaultKind::Other("SystemError".into()),
        ];
        for k in kinds {
            let env = fault_envelope(&k, "it <failed>");
            match parse_response(env.as_bytes()) {
                Err(Error::Fault(f)) => {
                    assert_eq!(f.kind, k);
                    assert_eq!(f.message, "it <failed>");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn responses_round_trip() {
        let disks = vec![VirtualDiskInfo {
            key: 2000,
            file_name: "[datastore @ 1] vm/vm.vmdk".into(),
            capacity: 1 << 30,
            disk_mode: "persistent".into(),
            thin: true,
            change_id: Some("52 00/1".into()),
            uuid: Some("6000".into()),
            controller_key: 1000,
            unit_number: 0,
        }];
        let obj = MoRef::new("VirtualMachine", "vm-1");
        let props = vec![
            (
                "config.hardware.device".to_string(),
                virtual_disks_xml(&disks),
            ),
            ("name".into(), simple_val("string", "VM <1>")),
        ];
        let body = response_envelope(
            "RetrievePropertiesEx",
            &format!(
                "<returnval><token>t1</token>{}</returnval>",
                object_content_xml(&obj, &props)
            ),
        );
        let r = parse_retrieve_result(&parse_response(body.as_bytes()).unwrap()).unwrap();
        assert_eq!(r.token.as_deref(), Some("t1"));
        assert_eq!(r.objects[0].obj, obj);
        assert_eq!(
            virtual_disks(r.objects[0].prop("config.hardware.device").unwrap()).unwrap(),
            disks
        );
        assert_eq!(r.objects[0].prop("name").unwrap().text, "VM <1>");

        let info = TaskInfo {
            task: MoRef::new("Task", "task-1"),
            state: TaskState::Error,
            result: None,
            error: Some(Fault {
                kind: FaultKind::InvalidState,
                message: "no".into(),
            }),
        };
        let val = Element::parse(task_info_xml(&info).as_bytes()).unwrap();
        assert_eq!(task_info(&val).unwrap(), info);

        let tree = vec![SnapshotNode {
            snapshot: MoRef::new("VirtualMachineSnapshot", "snapshot-1"),
            name: "a".into(),
            children: vec![SnapshotNode {
                snapshot: MoRef::new("VirtualMachineSnapshot", "snapshot-2"),
                name: "b".into(),
                children: vec![],
            }],
        }];
        assert_eq!(
            snapshot_tree(&Element::parse(snapshot_tree_xml(&tree).as_bytes()).unwrap()).unwrap(),
            tree
        );

        let dci = DiskChangeInfo {
            start_offset: 0,
            length: 1 << 20,
            changed_area: vec![(0, 512), (4096, 8192)],
        };
        let body = response_envelope("QueryChangedDiskAreas", &disk_change_info_xml(&dci));
        assert_eq!(
            parse_disk_change_info(&parse_response(body.as_bytes()).unwrap()).unwrap(),
            dci
        );

        let map = DiskBlockMap {
            lun_id: "naa.6000c29a1b2c3d4e".into(),
            capacity: 1 << 30,
            thin: true,
            redo_log: false,
            extents: vec![BlockMapExtent {
                virtual_offset: 0,
                lun_offset: 1 << 20,
                length: 1 << 30,
            }],
        };
        let body = response_envelope(SIM_QUERY_DISK_BLOCK_MAP, &disk_block_map_xml(&map));
        assert_eq!(
            parse_disk_block_map(&parse_response(body.as_bytes()).unwrap()).unwrap(),
            map
        );
        let vm42 = MoRef::new("VirtualMachine", "vm-42");
        let r = sim_query_disk_block_map(&vm42, None, 2001);
        assert!(r.body.contains(r#"<SimQueryDiskBlockMap xmlns="urn:vim25"><_this type="VirtualMachine">vm-42</_this><deviceKey>2001</deviceKey></SimQueryDiskBlockMap>"#), "{}", r.body);
        let no_lun = response_envelope(
            SIM_QUERY_DISK_BLOCK_MAP,
            "<returnval><capacity>1</capacity></returnval>",
        );
        assert!(parse_disk_block_map(&parse_response(no_lun.as_bytes()).unwrap()).is_err());

        let ctrls = vec![
            VirtualController {
                key: 1001,
                bus_number: 1,
                kind: ControllerKind::Scsi,
                type_name: "ParaVirtualSCSIController".into(),
            },
            VirtualController {
                key: 200,
                bus_number: 0,
                kind: ControllerKind::Ide,
                type_name: "VirtualIDEController".into(),
            },
            VirtualController {
                key: 15000,
                bus_number: 0,
                kind: ControllerKind::Other("VirtualAHCIController".into()),
                type_name: "VirtualAHCIController".into(),
            },
        ];
        // Malformed numbers are typed errors, not defaults.
        let bad_bus = Element::parse(br#"<val><VirtualDevice xsi:type="ParaVirtualSCSIController"><key>1000</key><busNumber>x</busNumber></VirtualDevice></val>"#).unwrap();
        assert!(matches!(
            virtual_controllers(&bad_bus),
            Err(Error::Malformed(_))
        ));
        let bad_extent = response_envelope(SIM_QUERY_DISK_BLOCK_MAP, "<returnval><lunId>naa.1</lunId><capacity>512</capacity><extent><virtualOffset>0</virtualOffset><lunOffset>-1</lunOffset><length>512</length></extent></returnval>");
        assert!(matches!(
            parse_disk_block_map(&parse_response(bad_extent.as_bytes()).unwrap()),
            Err(Error::Malformed(_))
        ));
        let xml = virtual_devices_xml(&ctrls, &disks);
        let el = Element::parse(xml.as_bytes()).unwrap();
        assert_eq!(virtual_controllers(&el).unwrap(), ctrls);
        assert_eq!(virtual_disks(&el).unwrap(), disks);

        assert!(parse_response(b"<notsoap/>").is_err());
        assert!(parse_retrieve_result(&Element::default())
            .unwrap()
            .objects
            .is_empty());
    }
}
