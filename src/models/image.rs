//! Images in, model input out: decoding (JPEG, PNG) under a pixel limit, and the preprocessing a classifier
//! version was trained with - resize of the shorter side, center crop, per-channel normalization - as its
//! teal.toml states it, so that the preprocessing travels and is versioned with the weights. The resize is the
//! antialiased convolution torchvision gets from Pillow (fast_image_resize implements the same filters), the
//! crop offsets round as torchvision's `CenterCrop` does. The resize reproduces Pillow's resampling exactly
//! (the filter scaled by the downscale factor, weights in 22-bit fixed point, a horizontal then a vertical
//! pass each rounded to 8 bits), because torchvision resizes PIL images with it and the weights were trained
//! on its output: a resize that differs by one level in a fifth of the pixels moves probabilities by 1e-3.

#![deny(clippy::indexing_slicing)]

use serde::{Deserialize, Serialize};

/// A classifier's preprocessing (teal.toml `[image]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// The shorter side is resized to this many pixels (aspect ratio kept).
    pub resize: u32,
    /// Then a centered square of this side is cut out: the model's input size.
    pub crop: u32,
    /// Per-channel (R, G, B) mean and standard deviation, on pixel values scaled to 0..1.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    #[serde(default)]
    pub interpolation: Interpolation,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    #[default]
    Bilinear,
    Bicubic,
}

impl Preprocess {
    pub fn validate(&self) -> Result<(), String> {
        if self.crop == 0 || self.resize < self.crop || self.resize > 4096 {
            return Err(format!("image: need 0 < crop ({}) <= resize ({}) <= 4096", self.crop, self.resize));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err("image: mean must be finite and std positive".into());
        }
        Ok(())
    }
}

/// Why an input image was refused (each a 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("empty image")]
    Empty,
    #[error("not a JPEG or PNG image")]
    NotAnImage,
    #[error("image is {width}x{height} = {pixels} pixels; the limit is {limit}")]
    TooLarge { width: u32, height: u32, pixels: u64, limit: u64 },
    #[error("image is {width}x{height}: an aspect ratio over 16:1 is not accepted")]
    AspectRatio { width: u32, height: u32 },
    #[error("image data is corrupt or truncated: {0}")]
    Corrupt(String),
}

/// A decoded 8-bit RGB image.
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

fn format_of(bytes: &[u8]) -> Result<image::ImageFormat, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    match image::guess_format(bytes) {
        Ok(f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg)) => Ok(f),
        _ => Err(ImageError::NotAnImage),
    }
}

/// A JPEG's or PNG's width and height from its header alone (nothing is decoded).
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    let format = format_of(bytes)?;
    image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| ImageError::Corrupt(e.to_string()))
}

/// Decodes a JPEG or PNG, refusing it before decoding when it has more than `max_pixels` pixels.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Rgb, ImageError> {
    let format = format_of(bytes)?;
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (width, height) = dimensions(bytes)?;
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(ImageError::TooLarge { width, height, pixels, limit: max_pixels });
    }
    let mut r = reader();
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    r.limits(limits);
    let img = r.decode().map_err(|e| ImageError::Corrupt(e.to_string()))?.to_rgb8();
    Ok(Rgb { width: img.width(), height: img.height(), pixels: img.into_raw() })
}

/// torchvision's `Resize(size)` output size: the shorter side becomes `size`, the longer one `size * long /
/// short` truncated.
fn resized_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = (size as u64 * long as u64 / short.max(1) as u64) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `CenterCrop` offset: round((size - crop) / 2) with Python's round-half-to-even.
fn crop_offset(size: u32, crop: u32) -> u32 {
    ((size - crop) as f64 / 2.0).round_ties_even() as u32
}

/// Fixed-point precision of Pillow's 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn filter(kind: Interpolation, x: f64) -> f64 {
    let x = x.abs();
    match kind {
        Interpolation::Bilinear => (1.0 - x).max(0.0),
        Interpolation::Bicubic => {
            let a = -0.5;
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * a
            } else {
                0.0
            }
        }
    }
}

/// For each output pixel: the first input pixel and the fixed-point weights of the inputs it blends.
fn coefficients(in_size: usize, out_size: usize, kind: Interpolation) -> Vec<(usize, Vec<i32>)> {
    let support = match kind {
        Interpolation::Bilinear => 1.0,
        Interpolation::Bicubic => 2.0,
    };
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax).map(|x| filter(kind, (x as f64 - center + 0.5) / filterscale)).collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|k| {
                    let k = if total != 0.0 { k / total } else { *k } * (1u64 << PRECISION_BITS) as f64;
                    (if k < 0.0 { k - 0.5 } else { k + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One resampling pass along rows (horizontal) of an RGB image `w` x `h` to `out_w` columns.
fn resample_rows(src: &[u8], w: usize, h: usize, out_w: usize, kind: Interpolation) -> Vec<u8> {
    let coeffs = coefficients(w, out_w, kind);
    let mut out = vec![0u8; out_w * h * 3];
    for (row, out_row) in src.chunks_exact(w * 3).zip(out.chunks_exact_mut(out_w * 3)) {
        for ((xmin, k), px_out) in coeffs.iter().zip(out_row.chunks_exact_mut(3)) {
            let window = row.get(xmin * 3..(xmin + k.len()) * 3).unwrap_or_default();
            let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
            for (px, &kw) in window.chunks_exact(3).zip(k) {
                for (acc, &v) in ss.iter_mut().zip(px) {
                    *acc += v as i64 * kw as i64;
                }
            }
            for (o, acc) in px_out.iter_mut().zip(ss) {
                *o = clip8(acc);
            }
        }
    }
    out
}

/// The vertical pass: an RGB image `w` x `h` to `out_h` rows.
fn resample_cols(src: &[u8], w: usize, h: usize, out_h: usize, kind: Interpolation) -> Vec<u8> {
    let coeffs = coefficients(h, out_h, kind);
    let mut out = vec![0u8; w * out_h * 3];
    let mut acc = vec![0i64; w * 3];
    for ((ymin, k), out_row) in coeffs.iter().zip(out.chunks_exact_mut(w * 3)) {
        acc.fill(1 << (PRECISION_BITS - 1));
        for (row, &kw) in src.chunks_exact(w * 3).skip(*ymin).zip(k) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as i64 * kw as i64;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Pillow's `Image.resize` of an RGB image (horizontal pass, then vertical; a pass is skipped when that side
/// keeps its size).
fn resize(img: &Rgb, out_w: u32, out_h: u32, kind: Interpolation) -> Vec<u8> {
    let (w, h) = (img.width as usize, img.height as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let horizontal = if ow != w { resample_rows(&img.pixels, w, h, ow, kind) } else { img.pixels.clone() };
    if oh != h {
        resample_cols(&horizontal, ow, h, oh, kind)
    } else {
        horizontal
    }
}

/// The model input for one image: f32 [3, crop, crop], channel-major.
pub fn preprocess(img: &Rgb, p: &Preprocess) -> Result<Vec<f32>, ImageError> {
    if img.width == 0 || img.height == 0 || img.pixels.len() != img.width as usize * img.height as usize * 3 {
        return Err(ImageError::Corrupt("image has no pixels".into()));
    }
    // A thin sliver (1 x 40000) would resize to billions of pixels: refuse it before allocating anything.
    if img.width.max(img.height) as u64 > 16 * img.width.min(img.height) as u64 {
        return Err(ImageError::AspectRatio { width: img.width, height: img.height });
    }
    let (w, h) = resized_size(img.width, img.height, p.resize);
    let buf = resize(img, w, h, p.interpolation);
    let (c, top, left) = (p.crop as usize, crop_offset(h, p.crop) as usize, crop_offset(w, p.crop) as usize);
    let mut out = vec![0f32; 3 * c * c];
    let (red, rest) = out.split_at_mut(c * c);
    let (green, blue) = rest.split_at_mut(c * c);
    let planes = red.chunks_exact_mut(c).zip(green.chunks_exact_mut(c)).zip(blue.chunks_exact_mut(c));
    let norm = |v: u8, ch: usize| {
        let (m, s) = (p.mean.get(ch).copied().unwrap_or(0.0), p.std.get(ch).copied().unwrap_or(1.0));
        (v as f32 / 255.0 - m) / s
    };
    let rows = buf.chunks_exact(w as usize * 3).skip(top).take(c);
    for (row, ((r, g), b)) in rows.zip(planes) {
        let row =
            row.get(left * 3..(left + c) * 3).ok_or_else(|| ImageError::Corrupt("crop outside the image".into()))?;
        for (px, ((r, g), b)) in row.chunks_exact(3).zip(r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut())) {
            if let [pr, pg, pb] = px {
                (*r, *g, *b) = (norm(*pr, 0), norm(*pg, 1), norm(*pb, 2));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_torchvision() {
        assert_eq!(resized_size(451, 300, 256), (384, 256));
        assert_eq!(resized_size(300, 451, 256), (256, 384));
        assert_eq!(crop_offset(384, 224), 80);
        assert_eq!(crop_offset(225, 224), 0); // round(0.5) == 0
        assert_eq!(crop_offset(227, 224), 2); // round(1.5) == 2
    }

    #[test]
    fn refuses_bad_images_precisely() {
        assert_eq!(decode(b"", 10).err(), Some(ImageError::Empty));
        assert_eq!(decode(b"hello world", 10).err(), Some(ImageError::NotAnImage));
        let mut png = vec![];
        let img = image::RgbImage::from_pixel(40, 30, image::Rgb([10, 20, 30]));
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        assert!(matches!(decode(&png, 1000), Err(ImageError::TooLarge { pixels: 1200, .. })));
        assert!(matches!(decode(&png[..png.len() / 2], 10_000), Err(ImageError::Corrupt(_))));
        let sliver = Rgb { width: 1, height: 40_000, pixels: vec![0; 120_000] };
        let p = Preprocess {
            resize: 256,
            crop: 224,
            mean: [0.5; 3],
            std: [0.5; 3],
            interpolation: Interpolation::Bilinear,
        };
        assert_eq!(preprocess(&sliver, &p).err(), Some(ImageError::AspectRatio { width: 1, height: 40_000 }));
        let ok = decode(&png, 10_000).unwrap();
        assert_eq!((ok.width, ok.height, ok.pixels[..3].to_vec()), (40, 30, vec![10, 20, 30]));
    }
}
