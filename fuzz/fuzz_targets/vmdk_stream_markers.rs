//! streamOptimized marker walk and compressed grain parsing.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vmdk_format::fuzzing::walk_markers(data, 0);
    if data.len() > 8 {
        let lba = u64::from_le_bytes(data[..8].try_into().unwrap());
        if let Ok(vmdk_format::stream::GrainParse::Complete { compressed }) =
            vmdk_format::stream::parse_grain(data, 0, lba, 65536)
        {
            let mut out = vec![0u8; 65536];
            let _ = vmdk_format::stream::inflate_grain(compressed, &mut out, 0);
        }
    }
});
