//! GGUF headers: any bytes parse to a header or a precise error, within the header caps.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = teal::models::gguf::parse(data, data.len() as u64);
});
