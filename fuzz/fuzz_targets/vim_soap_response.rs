//! Every response parser of vim-soap on arbitrary bytes: typed results or
//! typed errors, never a panic, a hang or a runaway allocation.
#![no_main]

use vim_soap::codec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = codec::parse_request(data);
    let Ok(resp) = codec::parse_response(data) else { return };
    let _ = codec::parse_service_content(&resp);
    let _ = codec::parse_user_session(&resp);
    let _ = codec::parse_string(&resp);
    let _ = codec::parse_bool(&resp);
    let _ = codec::parse_moref(&resp);
    let _ = codec::parse_generic_service_ticket(&resp);
    let _ = codec::parse_internal_content(&resp);
    let _ = codec::parse_host_service_ticket(&resp);
    let _ = codec::parse_disk_change_info(&resp);
    let _ = codec::parse_disk_block_map(&resp);
    if let Ok(r) = codec::parse_retrieve_result(&resp) {
        for o in &r.objects {
            for (_, v) in &o.props {
                let _ = codec::virtual_disks(v);
                let _ = codec::virtual_controllers(v);
                let _ = codec::task_info(v);
                let _ = codec::snapshot_tree(v);
            }
        }
    }
});
