//! PyTorch checkpoints (legacy stream and zip) and raw pickles.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = teal::models::pth::read_bytes(data);
    let _ = teal::models::pickle::parse(data, 0, Default::default());
});
