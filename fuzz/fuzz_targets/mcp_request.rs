#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tailpass::fuzz_targets::mcp_request(data));
