//! The service instance and its session manager: `RetrieveServiceContent`,
//! `Login` / `Logout`, clone tickets and generic service tickets.

use crate::xml::Element;
use crate::{Error, Result, Secret};

use super::envelope::{
    req_moref, req_text, request, returnval, service_instance, tag, MoRef, Namespace, Request,
};

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
