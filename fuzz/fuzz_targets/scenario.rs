#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mock_accel_agent::fuzz::scenario(data));
