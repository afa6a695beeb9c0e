#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tailpass::fuzz_targets::config_toml(data));
