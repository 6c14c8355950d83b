#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pixstore_fuzz::wire::check(data));
