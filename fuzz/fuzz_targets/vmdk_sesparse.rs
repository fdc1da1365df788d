//! seSparse constant/volatile headers, directory and table walk.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut file = 0xCAFE_BABEu64.to_le_bytes().to_vec();
    file.extend_from_slice(data);
    let _ = vmdk_format::fuzzing::read_image(&file);
});
