//! What PrepareForAccess uses: `DisableMethods` / `EnableMethods`
//! (internal), and `RelocateVM_Task`, the call they keep from running.

use std::fmt::Write as _;

use crate::xml::escape;

use super::envelope::{request, tag, MoRef, Namespace, Request};

/// `RelocateVM_Task` to another datastore (what PrepareForAccess blocks).
pub fn relocate_vm_task(vm: &MoRef, datastore: &MoRef) -> Request {
    request(
        Namespace::Vim25,
        "RelocateVM_Task",
        vm,
        &format!("<spec>{}</spec>", datastore.xml("datastore")),
    )
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
