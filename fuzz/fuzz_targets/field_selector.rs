#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mock_device_testkit::fuzz::field_selector(data));
