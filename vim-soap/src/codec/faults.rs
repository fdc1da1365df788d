//! SOAP faults: the kinds a disk kit tells apart and parsing them (and,
//! with `server`, building fault envelopes).

use crate::xml::Element;

use super::envelope::MoRef;
#[cfg(feature = "server")]
use super::envelope::{tag, ENVELOPE_CLOSE, ENVELOPE_OPEN};

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

    #[cfg(feature = "server")]
    pub(super) fn detail_xml(&self) -> String {
        match self {
            FaultKind::ManagedObjectNotFound(Some(o)) => o.xml("obj"),
            FaultKind::MethodAlreadyDisabled(m) => tag("sourceId", m),
            FaultKind::MethodDisabled(m) => tag("source", m),
            FaultKind::FileNotFound(f) => tag("file", f),
            FaultKind::InvalidArgument(p) => tag("invalidProperty", p),
            _ => String::new(),
        }
    }

    pub(super) fn from_detail(type_name: &str, d: &Element) -> Self {
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

pub(super) fn parse_fault(f: &Element) -> Fault {
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
#[cfg(feature = "server")]
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

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;
    use crate::codec::parse_response;
    use crate::Error;

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
}
