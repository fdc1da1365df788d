//! Descriptor parser: never panics; what it accepts round-trips.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmdk_format::fuzzing::descriptor_round_trip(data);
});
