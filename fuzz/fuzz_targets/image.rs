//! JPEG/PNG decoding under a pixel limit, then a classifier's preprocessing.
#![no_main]
use std::sync::OnceLock;

static PRE: OnceLock<teal::models::image::Preprocess> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let pre = PRE.get_or_init(|| teal::models::image::Preprocess {
        resize: 32,
        crop: 24,
        mean: [0.5; 3],
        std: [0.5; 3],
        interpolation: Default::default(),
    });
    if let Ok(img) = teal::models::image::decode(data, 1 << 22) {
        let _ = teal::models::image::preprocess(&img, pre);
    }
});
