//! Loading from the layouts users have (sharded safetensors with an index, a directory holding one GGUF,
//! f16 weights) and clear errors, never panics, for broken model files.

use crate::common;
use common::copy_dir;

use crate::common::direct::greedy;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use teal::models::{load, LoadOptions};

const CPU: LoadOptions = LoadOptions { device: Device::Cpu, dtype: None, share: None };

fn first_greedy(dir: &Path, opts: &LoadOptions) -> (Vec<f32>, Vec<u32>) {
    let m = load(dir, opts).unwrap();
    let ids = m.tokenizer.encode("Once upon a time", true).unwrap();
    greedy(&m, &ids, 16).unwrap()
}

#[test]
fn sharded_safetensors_with_an_index_load_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::stories_dir();
    copy_dir(&src, dir.path());
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let shard: HashMap<String, Tensor> = part.iter().map(|n| ((*n).clone(), tensors[*n].clone())).collect();
        candle_core::safetensors::save(&shard, dir.path().join(file)).unwrap();
        for n in part {
            map.insert((*n).clone(), file.into());
        }
    }
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(first_greedy(dir.path(), &CPU), first_greedy(&src, &CPU));
}

#[test]
fn f16_weights_stay_close_to_f32() {
    let src = common::stories_dir();
    let (l32, _) = first_greedy(&src, &CPU);
    let (l16, _) = first_greedy(&src, &LoadOptions { device: Device::Cpu, dtype: Some(DType::F16), share: None });
    let scale = l32.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = l32.iter().zip(&l16).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
    assert!(err < 2e-2, "f16 logits relative error {err}");
}

fn broken_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&common::stories_dir(), dir.path());
    edit(dir.path());
    dir
}

fn load_error(dir: &Path) -> String {
    match load(dir, &CPU) {
        Ok(_) => panic!("{} loaded although broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_model_files_give_precise_errors() {
    let truncated = broken_copy(|d| {
        let f = d.join("model.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(load_error(truncated.path()).contains("safetensors"), "{}", load_error(truncated.path()));
    let bad_config = broken_copy(|d| std::fs::write(d.join("config.json"), "{\"model_type\": \"llama\",").unwrap());
    assert!(load_error(bad_config.path()).contains("config.json"));
    let no_tok = broken_copy(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    assert!(load_error(no_tok.path()).contains("tokenizer.json missing"));
    let wrong_shape = broken_copy(|d| {
        let text = std::fs::read_to_string(d.join("config.json")).unwrap();
        std::fs::write(d.join("config.json"), text.replace("\"intermediate_size\": 172", "\"intermediate_size\": 200"))
            .unwrap();
    });
    assert!(load_error(wrong_shape.path()).contains("shape"), "{}", load_error(wrong_shape.path()));
    let bad_template = broken_copy(|d| {
        let text = std::fs::read_to_string(d.join("tokenizer_config.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut v = v.as_object().unwrap().clone();
        v.insert("chat_template".into(), "{% for m in messages %}".into());
        std::fs::write(d.join("tokenizer_config.json"), serde_json::Value::Object(v).to_string()).unwrap();
    });
    assert!(load_error(bad_template.path()).contains("chat template"));
    assert!(load_error(Path::new("/nonexistent/model")).contains("not found"));
}

#[test]
fn a_truncated_or_foreign_gguf_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::smollm_path()).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let err = load(&cut, &CPU).err().expect("truncated GGUF loaded").to_string();
    assert!(err.contains("cut.gguf"), "{err}");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf file at all").unwrap();
    assert!(load(&junk, &CPU).err().expect("junk loaded").to_string().contains("not a valid GGUF"));
}

#[test]
fn a_directory_with_one_gguf_is_a_model() {
    let m = load(&common::smollm_dir(), &CPU).unwrap();
    assert_eq!(m.name, "smollm2");
    assert!(m.format.starts_with("gguf"), "{}", m.format);
    assert_eq!(m.max_context, 8192);
}
