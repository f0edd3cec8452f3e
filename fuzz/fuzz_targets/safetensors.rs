//! safetensors headers, checked against a file a little longer than the input.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = teal::models::safetensors_check::check(data, data.len() as u64 + 64);
});
