//! Model loading: turns a Hugging Face directory or a GGUF file into a ready `Model` (weights on the device,
//! tokenizer, chat template, limits). Architecture code lives one file per family (llama.rs); the file formats
//! live in weights.rs and gguf_meta.rs.

pub mod chat_template;
pub mod classifier;
pub mod config;
pub mod cpu_quant;
pub mod efficientnet_lite;
pub mod embedding;
pub mod estimate;
pub mod files;
pub mod gguf;
mod gguf_meta;
mod gguf_spm;
pub mod grammar;
pub mod image;
pub mod linear;
pub mod llama;
pub mod pickle;
pub mod pth;
pub mod safetensors_check;
pub mod shared;
pub mod tokenizer;
pub mod weights;

use crate::error::{Result, TealError};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use chat_template::ChatTemplate;
use files::ModelDir;
use llama::Llama;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizer::TextTokenizer;
use weights::WeightSource;

/// How to load: the device, and the dtype (`None`: f32 on CPU for dense checkpoints, GGUF kept quantized).
#[derive(Clone)]
pub struct LoadOptions {
    /// Where the weights and the KV pool live.
    pub device: Device,
    pub dtype: Option<DType>,
    /// Where objects identical to those of other loaded models are shared (None: a private registry).
    pub share: Option<shared::TensorRegistry>,
}

/// A text-generation model version: weights, tokenizer, chat template and limits. Immutable after load and
/// shareable between threads. (Embedding models are `embedding::Embedder`, image classifiers
/// `classifier::Classifier`.)
pub struct LanguageModel {
    pub name: String,
    pub source: PathBuf,
    pub llama: Llama,
    pub tokenizer: TextTokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Longest prompt + completion the model accepts.
    pub max_context: usize,
    /// Human-readable weight format, e.g. "gguf Q4_1" or "safetensors F32".
    pub format: String,
}

/// Where a model's files are, once resolved from a user-supplied path.
enum Layout {
    HfDir(PathBuf),
    Gguf(PathBuf),
    /// A directory holding one PyTorch checkpoint (an image classifier with its teal.toml).
    Pth(PathBuf),
}

fn is_pth(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "pth" || e == "pt")
}

/// The kind of the model at `path`: the one its teal.toml declares (`kind = ...`), else what its files say (a
/// PyTorch checkpoint: an image classifier; a sentence-transformers or BERT directory: embeddings; a causal LM
/// directory or GGUF file: text generation).
pub fn detect_kind(path: &Path, declared: Option<&str>) -> Result<crate::slot::ModelKind> {
    use crate::slot::ModelKind;
    if let Some(k) = declared {
        return ModelKind::parse(k).ok_or_else(|| {
            TealError::InvalidModel(format!(
                "teal.toml: unknown kind {k:?} (text-generation, embedding, image-classification)"
            ))
        });
    }
    Ok(match resolve(path)? {
        Layout::Pth(_) => ModelKind::ImageClassification,
        Layout::HfDir(dir) if embedding::is_embedding_dir(&dir) => ModelKind::Embedding,
        _ => ModelKind::TextGeneration,
    })
}

fn resolve(path: &Path) -> Result<Layout> {
    if path.is_file() {
        return if path.extension().is_some_and(|e| e == "gguf") {
            Ok(Layout::Gguf(path.to_path_buf()))
        } else {
            Err(TealError::UnsupportedModel(format!("{}: not a .gguf file or a model directory", path.display())))
        };
    }
    if !path.is_dir() {
        return Err(TealError::ModelNotFound(path.display().to_string()));
    }
    if path.join("config.json").is_file() {
        return Ok(Layout::HfDir(path.to_path_buf()));
    }
    let files: Vec<PathBuf> =
        std::fs::read_dir(path).map_err(|e| TealError::io(path, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    let ggufs: Vec<&PathBuf> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "gguf")).collect();
    let pths: Vec<&PathBuf> = files.iter().filter(|p| is_pth(p)).collect();
    match ggufs.as_slice() {
        [one] => Ok(Layout::Gguf((*one).clone())),
        [] if pths.len() == 1 => Ok(Layout::Pth(pths[0].clone())),
        [] if pths.len() > 1 => {
            Err(TealError::InvalidModel(format!("{}: several .pth files; name one in teal.toml", path.display())))
        }
        [] => Err(TealError::InvalidModel(format!("{}: no config.json, .gguf or .pth file", path.display()))),
        _ => Err(TealError::InvalidModel(format!("{}: several .gguf files; name one", path.display()))),
    }
}

/// The files holding a model's weights (what its digest covers): the .gguf file, or the safetensors files.
pub fn weight_files(path: &Path) -> Result<Vec<PathBuf>> {
    match resolve(path)? {
        Layout::HfDir(dir) => safetensors_files(&dir),
        Layout::Gguf(file) | Layout::Pth(file) => Ok(vec![file]),
    }
}

/// The name a model is known by (what clients put in `model`): its directory's or file's name, without the
/// extension.
pub fn model_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "model".into())
}

/// Loads a model from a directory (HF layout, or one .gguf inside) or a .gguf file.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LanguageModel> {
    let name = model_name(path);
    let mut model = match resolve(path)? {
        Layout::HfDir(dir) => load_hf(&dir, opts)?,
        Layout::Gguf(file) => load_gguf(&file, opts)?,
        Layout::Pth(file) => {
            return Err(TealError::UnsupportedModel(format!(
                "{}: a PyTorch checkpoint is not a causal LM",
                file.display()
            )))
        }
    };
    model.name = name;
    model.source = path.to_path_buf();
    Ok(model)
}

/// Most shards one index may name.
const MAX_SHARDS: usize = 4096;

/// The safetensors files of a HF directory: one file, or every shard named by the index, each inside the
/// directory.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let md = ModelDir::of(dir)?;
    if let Some(single) = md.find("model.safetensors")? {
        return Ok(vec![single]);
    }
    let index = "model.safetensors.index.json";
    let Some(idx) = md.read_json(index, files::MAX_TOKENIZER_BYTES)? else {
        return Err(TealError::InvalidModel(format!("{}: no model.safetensors or index", dir.display())));
    };
    let map = idx
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| TealError::InvalidModel(format!("{}/{index}: weight_map missing", dir.display())))?;
    let mut names: Vec<&str> = map.values().filter_map(Value::as_str).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() || names.len() > MAX_SHARDS {
        return Err(TealError::InvalidModel(format!("{index}: {} shards (1 to {MAX_SHARDS})", names.len())));
    }
    names
        .into_iter()
        .map(|f| md.find(f)?.ok_or_else(|| TealError::InvalidModel(format!("shard '{f}' is missing"))))
        .collect()
}

fn json_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    }
}

/// A special token in tokenizer_config.json: a string or an AddedToken object.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// The chat template of tokenizer_config.json (a string, or a list of named templates) or chat_template.jinja.
fn hf_chat_template(dir: &ModelDir, tcfg: &Value) -> Result<Option<String>> {
    let from_cfg = match tcfg.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Value::as_str).map(String::from)),
        _ => None,
    };
    match from_cfg {
        Some(t) => Ok(Some(t)),
        None => dir.read_text("chat_template.jinja", files::MAX_TOKENIZER_CONFIG_BYTES),
    }
}

/// A HF directory's config.json: its text (for the typed config) and its JSON.
fn hf_config(md: &ModelDir) -> Result<(config::LlamaConfig, Value)> {
    let text = md
        .read_text("config.json", files::MAX_CONFIG_BYTES)?
        .ok_or_else(|| TealError::InvalidModel(format!("{}: config.json missing", md.root().display())))?;
    let cfg = config::LlamaConfig::from_hf_json(&text)?;
    Ok((cfg, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn load_hf(dir: &Path, opts: &LoadOptions) -> Result<LanguageModel> {
    let md = ModelDir::of(dir)?;
    let (cfg, cfg_json) = hf_config(&md)?;
    let tok_path = md
        .find("tokenizer.json")?
        .ok_or_else(|| TealError::InvalidModel(format!("{}: tokenizer.json missing", dir.display())))?;
    let inner = TextTokenizer::from_file(&tok_path)?;
    let tcfg = md.read_json("tokenizer_config.json", files::MAX_TOKENIZER_CONFIG_BYTES)?.unwrap_or(Value::Null);
    let gcfg = md.read_json("generation_config.json", files::MAX_CONFIG_BYTES)?.unwrap_or(Value::Null);
    let id_of = |key: &str| token_str(tcfg.get(key)).and_then(|t| inner.token_to_id(&t));
    let bos = id_of("bos_token").or_else(|| json_ids(cfg_json.get("bos_token_id")).first().copied());
    let mut eos = json_ids(gcfg.get("eos_token_id"));
    eos.extend(json_ids(cfg_json.get("eos_token_id")));
    eos.extend(id_of("eos_token"));
    eos.dedup();
    let add_bos = tcfg.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false);
    let tokenizer = TextTokenizer::new(inner, bos, dedup(eos), add_bos);
    let chat_template = hf_chat_template(&md, &tcfg)?.map(ChatTemplate::new).transpose()?;
    let dtype = opts.dtype.unwrap_or(DType::F32);
    let mut src = WeightSource::safetensors(&safetensors_files(dir)?, dtype)?;
    let max_context = cfg.max_position_embeddings;
    let llama = Llama::load(cfg, &mut src, &opts.device, opts.share.clone().unwrap_or_default())?;
    check_vocab(&llama, &tokenizer)?;
    Ok(LanguageModel {
        name: String::new(),
        source: dir.to_path_buf(),
        llama,
        tokenizer,
        chat_template,
        max_context,
        format: format!("safetensors {dtype:?}"),
    })
}

impl LanguageModel {
    /// The same model with its weights moved to `device` (see `Llama::to_device`).
    pub fn into_device(self, device: &Device) -> Result<LanguageModel> {
        let llama = self.llama.to_device(device)?;
        Ok(LanguageModel { llama, ..self })
    }
}

fn dedup(mut v: Vec<u32>) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(*x));
    v
}

/// The tokenizer a GGUF file describes in its metadata (for any architecture; no tensor is read).
pub fn gguf_tokenizer(file: &Path) -> Result<TextTokenizer> {
    gguf_meta::tokenizer(&gguf::read(file)?)
}

fn load_gguf(file: &Path, opts: &LoadOptions) -> Result<LanguageModel> {
    let content = gguf::read(file)?;
    let cfg = gguf_meta::llama_config(&content)?;
    let side_tokenizer = ModelDir::of(file)?.find("tokenizer.json")?;
    let tokenizer = if let Some(side_tokenizer) = side_tokenizer {
        let inner = TextTokenizer::from_file(&side_tokenizer)?;
        let base = gguf_meta::tokenizer(&content).ok();
        let (bos, eos, add) = base.map(|b| (b.bos_id, b.eos_ids, b.add_bos)).unwrap_or((None, vec![], false));
        TextTokenizer::new(inner, bos, eos, add)
    } else {
        gguf_meta::tokenizer(&content)?
    };
    let chat_template = gguf_meta::chat_template(&content).map(ChatTemplate::new).transpose()?;
    let quant = dominant_quant(&content);
    let max_context = cfg.max_position_embeddings;
    let mut src = WeightSource::gguf(file, content, opts.dtype)?;
    let llama = Llama::load(cfg, &mut src, &opts.device, opts.share.clone().unwrap_or_default())?;
    check_vocab(&llama, &tokenizer)?;
    let format = match opts.dtype {
        Some(d) => format!("gguf {quant} dequantized to {d:?}"),
        None => format!("gguf {quant}"),
    };
    Ok(LanguageModel {
        name: String::new(),
        source: file.to_path_buf(),
        llama,
        tokenizer,
        chat_template,
        max_context,
        format,
    })
}

fn dominant_quant(c: &gguf_file::Content) -> String {
    let mut counts = std::collections::HashMap::new();
    for info in c.tensor_infos.values() {
        *counts.entry(format!("{:?}", info.ggml_dtype)).or_insert(0usize) += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k).unwrap_or_default()
}

fn check_vocab(llama: &Llama, tok: &TextTokenizer) -> Result<()> {
    let (model_vocab, tok_vocab) = (llama.config().vocab_size, tok.vocab_size());
    if tok_vocab > model_vocab {
        return Err(TealError::InvalidModel(format!(
            "tokenizer has {tok_vocab} tokens but the model's vocabulary is {model_vocab}"
        )));
    }
    Ok(())
}
