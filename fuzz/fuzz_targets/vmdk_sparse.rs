//! Hosted sparse header, footer, grain directory and table walk, grain
//! inflation, over an arbitrary in-memory file.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vmdk_format::fuzzing::read_image(data);
});
