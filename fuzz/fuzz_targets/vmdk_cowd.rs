//! COWD header, directory and table walk. Inputs shorter than a header
//! get the COWD magic so the fuzzer spends its time past the magic check.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut file = b"COWD".to_vec();
    file.extend_from_slice(data);
    let _ = vmdk_format::fuzzing::read_image(&file);
});
