#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tailpass::fuzz_targets::gateway_request(data));
