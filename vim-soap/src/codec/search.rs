//! The search index: `FindByInventoryPath` and `FindByUuid`.

use super::envelope::{request, tag, MoRef, Namespace, Request};

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
