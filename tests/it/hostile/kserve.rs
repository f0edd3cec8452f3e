//! KServe requests against a live image classifier: counts, pixels and queue space are bounded before any image
//! is decoded, and a bad image fails its request (naming it) without touching the others.

use super::battery::{fast_args, Battery};
use crate::common::TestServer;
use base64::Engine as _;
use serde_json::json;
use std::path::PathBuf;
use teal::config::ServeArgs;

fn photo(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/photos").join(name);
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap())
}

fn png(w: u32, h: u32) -> String {
    let img = image::RgbImage::new(w, h);
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

fn infer(images: Vec<String>) -> String {
    json!({"inputs": [{"name": "image", "shape": [images.len()], "datatype": "BYTES", "data": images}]}).to_string()
}

const INFER: &str = "/v2/models/classifier/infer";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_kserve_requests_are_bounded_before_decoding() {
    let models = tempfile::tempdir().unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0");
    let args = ServeArgs {
        blue: Some(dir),
        served_model_name: Some("classifier".into()),
        models_dir: Some(models.path().to_path_buf()),
        max_request_pixels: Some(2_000_000),
        ..fast_args()
    };
    let s = TestServer::start_args(args).await;
    let probe =
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [photo("chelsea.png")]}]});
    let mut b = Battery::with(s, models, (INFER.into(), probe)).await;
    let json_ct = Some("application/json");
    // ~44,000 tiny PNGs in one 4 MiB request: refused by count before a single one is expanded.
    let tiny = png(1, 1);
    let many = vec![tiny.clone(); 40_000];
    let (s, v) = b.send(INFER, json_ct, infer(many)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("40000 images; at most 64 per request"), "{v}");
    b.check("40,000 tiny PNGs in one request").await;
    // Pixels across the request are counted from the headers before decoding.
    let (s, v) = b.send(INFER, json_ct, infer(vec![png(1000, 1000), png(1000, 1001)])).await;
    assert!(s == 400 && v["error"].as_str().unwrap().contains("per-request limit"), "{v}");
    b.check("images over the per-request pixel limit").await;
    // One bad image fails its request, naming it; the good ones in the same request cost nothing more.
    let mixed = vec![photo("chelsea.png"), "bm90IGFuIGltYWdl".to_string(), photo("coffee.png")];
    let (s, v) = b.send(INFER, json_ct, infer(mixed)).await;
    assert!(s == 400 && v["error"].as_str().unwrap().contains("image[1]: not a JPEG or PNG image"), "{v}");
    b.check("a batch with one bad image").await;
    let (s, v) = b.send(INFER, json_ct, infer(vec!["!!!".into()])).await;
    assert!(s == 400 && v["error"].as_str().unwrap().contains("not valid base64"), "{v}");
    b.check("invalid base64").await;
    let (s, v) = b.send(INFER, Some("text/plain"), infer(vec![tiny.clone()])).await;
    assert_eq!(s, 415, "{v}");
    assert!(v["error"].is_string(), "KServe's error shape: {v}");
    b.check("KServe infer as text/plain").await;
    let fp32 = json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0.0]}]});
    let (s, v) = b.send(INFER, json_ct, fp32.to_string()).await;
    assert!(s == 400 && v["error"].as_str().unwrap().contains("this model takes FP32"), "{v}");
    b.check("an FP32 tensor of the wrong shape").await;
    let shape = json!({"inputs": [{"name": "image", "shape": [4611686018427387904i64, 4], "datatype": "BYTES", "data": [tiny]}]});
    let (s, v) = b.send(INFER, json_ct, shape.to_string()).await;
    assert!(s == 400 && v["error"].as_str().unwrap().contains("does not match"), "{v}");
    b.check("a shape whose product overflows").await;
    let (s, v) = b.send(INFER, json_ct, "{\"inputs\": [").await;
    assert!(s == 400 && v["error"].is_string(), "{v}");
    b.check("malformed KServe JSON").await;
    b.report("kserve");
}
