//! The KServe Open Inference Protocol (v2) over REST for image classifiers: server and model health, model
//! metadata, and `POST /v2/models/{name}[/versions/{v}]/infer`. Inputs: `image` (BYTES, each element an encoded
//! JPEG or PNG as base64 text or `{"b64": ...}`) or `input` (FP32 [N, 3, H, W], already preprocessed). Outputs:
//! `labels` (BYTES [N, k]), `scores` (FP32 softmax probabilities [N, k]), `class_ids` (INT64 [N, k]) and, only when
//! named in `outputs`, `logits` (FP32 [N, classes]); k is the `top_k` parameter (default 5). Errors are
//! `{"error": "..."}` with a 4xx/5xx status, as the protocol specifies. JSON only (the binary tensor extension is
//! not implemented).

#![deny(clippy::indexing_slicing)]

use super::limits::RequestLimits;
use super::{AppState, ServedBy};
use crate::backend::Backend;
use crate::batcher::{Batcher, InferError};
use crate::models::classifier::Classifier;
use crate::models::image;
use crate::router::SlotLease;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

/// A v2 error: `{"error": message}`.
pub struct V2Error(StatusCode, String);

impl V2Error {
    fn bad(msg: impl Into<String>) -> Self {
        V2Error(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

/// The status and message of the OpenAI-shaped error, in KServe's shape: which failure gets which status is
/// decided once, in api/error.rs and the `From` conversions into `ApiError`.
impl From<super::error::ApiError> for V2Error {
    fn from(e: super::error::ApiError) -> Self {
        V2Error(e.status, e.message)
    }
}

impl From<super::body::BodyError> for V2Error {
    fn from(e: super::body::BodyError) -> Self {
        super::error::ApiError::from(e).into()
    }
}

impl From<super::limits::PoolError> for V2Error {
    fn from(e: super::limits::PoolError) -> Self {
        super::error::ApiError::from(e).into()
    }
}

impl From<InferError> for V2Error {
    fn from(e: InferError) -> Self {
        super::error::ApiError::from(e).into()
    }
}

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
}

pub async fn server_live() -> Json<Value> {
    Json(json!({"live": true}))
}

pub async fn server_ready(State(state): State<AppState>) -> Response {
    let ready = state.router.peek().is_some();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"ready": ready}))).into_response()
}

pub async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "teal", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
}

/// The live classifier, if `name` (and `version`, when given) names it.
fn classifier<'a>(
    state: &AppState,
    lease: &'a SlotLease,
    name: &str,
    version: Option<&str>,
) -> Result<&'a Batcher<Classifier>, V2Error> {
    if !state.router.accepts(name, lease) || version.is_some_and(|v| v != lease.identity.version) {
        let what = match version {
            Some(v) => format!("{name} version {v}"),
            None => name.to_string(),
        };
        return Err(V2Error(StatusCode::NOT_FOUND, format!("model {what} is not served here")));
    }
    match &lease.backend {
        Backend::Classify(b) => Ok(b),
        _ => Err(V2Error::bad(format!(
            "model {name} is a {} model; v2 inference serves image classifiers",
            lease.identity.kind
        ))),
    }
}

fn live(state: &AppState) -> Result<SlotLease, V2Error> {
    state.router.lease().ok_or_else(|| V2Error(StatusCode::SERVICE_UNAVAILABLE, "no model is ready".into()))
}

fn metadata(state: &AppState, name: &str, version: Option<&str>) -> Result<Json<Value>, V2Error> {
    let lease = live(state)?;
    let b = classifier(state, &lease, name, version)?;
    let s = b.model().input_size() as i64;
    Ok(Json(json!({
        "name": name, "versions": [lease.identity.version], "platform": "teal",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                   {"name": "input", "datatype": "FP32", "shape": [-1, 3, s, s]}],
        "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "class_ids", "datatype": "INT64", "shape": [-1, -1]},
                    {"name": "logits", "datatype": "FP32", "shape": [-1, b.model().net.num_classes]}],
    })))
}

pub async fn model_metadata(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, V2Error> {
    metadata(&state, &name, None)
}

pub async fn version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, V2Error> {
    metadata(&state, &name, Some(&version))
}

pub async fn model_ready(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, V2Error> {
    let lease = live(&state)?;
    classifier(&state, &lease, &name, None)?;
    Ok(Json(json!({"name": name, "ready": true})))
}

pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: axum::extract::Request,
) -> Result<Response, V2Error> {
    run(state, name, None, req).await
}

pub async fn version_infer(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Result<Response, V2Error> {
    run(state, name, Some(version), req).await
}

/// How many images (or tensors) an input holds, refused past the per-request limit before anything is decoded.
fn input_count(input: &InferInput, limits: &RequestLimits) -> Result<usize, V2Error> {
    let n = match input.datatype.as_str() {
        "BYTES" => input.data.as_array().map_or(0, Vec::len),
        _ => input.shape.first().and_then(|&n| usize::try_from(n).ok()).unwrap_or(0),
    };
    if n > limits.max_images_per_request {
        return Err(V2Error::bad(format!(
            "input {}: {n} images; at most {} per request",
            input.name, limits.max_images_per_request
        )));
    }
    Ok(n.max(1))
}

async fn run(
    state: AppState,
    name: String,
    version: Option<String>,
    req: axum::extract::Request,
) -> Result<Response, V2Error> {
    let body = super::body::read(req, true, false).await?;
    let req: InferRequest =
        serde_json::from_slice(&body).map_err(|e| V2Error::bad(format!("invalid JSON body: {e}")))?;
    let lease = live(&state)?;
    let b = classifier(&state, &lease, &name, version.as_deref())?;
    let top_k = top_k(&req, b.model().net.num_classes)?;
    let want_logits = req.outputs.as_ref().is_some_and(|o| o.iter().any(|o| o.name == "logits"));
    if let Some(bad) =
        req.outputs.iter().flatten().find(|o| !["labels", "scores", "class_ids", "logits"].contains(&o.name.as_str()))
    {
        return Err(V2Error::bad(format!(
            "unknown output {:?}; outputs are labels, scores, class_ids, logits",
            bad.name
        )));
    }
    let [input] = <[InferInput; 1]>::try_from(req.inputs)
        .map_err(|v| V2Error::bad(format!("expected exactly one input, got {}", v.len())))?;
    // Queue space first, then the decoding: a request the queue cannot take costs no decoding.
    let held = b.reserve(input_count(&input, &state.limits)?)?;
    let (model, limits) = (b.model().clone(), state.limits.clone());
    let tensors = state.cpu.run(move || to_tensors(&model, input, &limits)).await??;
    let n = tensors.len();
    let logits = b.infer_reserved(held, tensors).await?;
    let outputs = outputs(b.model(), &logits, top_k, want_logits, req.outputs.as_deref());
    let mut resp = Json(json!({
        "model_name": name, "model_version": lease.identity.version, "id": req.id.unwrap_or_default(),
        "outputs": outputs,
    }))
    .into_response();
    resp.extensions_mut().insert(ServedBy::of(&lease));
    tracing::debug!(images = n, "v2 infer");
    Ok(resp)
}

fn top_k(req: &InferRequest, classes: usize) -> Result<usize, V2Error> {
    let from_outputs = req.outputs.iter().flatten().filter_map(|o| o.parameters.as_ref()?.get("top_k").cloned()).next();
    let v = req.parameters.as_ref().and_then(|p| p.get("top_k").cloned()).or(from_outputs);
    match v {
        None => Ok(5.min(classes)),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(k) if (1..=classes as u64).contains(&k) => Ok(k as usize),
            _ => Err(V2Error::bad(format!("top_k must be an integer in 1..={classes}"))),
        },
        Some(_) => Err(V2Error::bad("top_k must be an integer")),
    }
}

/// The model inputs of one request: decoded and preprocessed images, or the FP32 tensor split per image.
fn to_tensors(model: &Classifier, input: InferInput, limits: &RequestLimits) -> Result<Vec<Vec<f32>>, V2Error> {
    match input.datatype.as_str() {
        "BYTES" => {
            let items = input
                .data
                .as_array()
                .ok_or_else(|| V2Error::bad(format!("input {}: data must be an array", input.name)))?;
            if items.is_empty() {
                return Err(V2Error::bad(format!("input {}: no images", input.name)));
            }
            let count = input.shape.iter().try_fold(1i64, |n, &d| n.checked_mul(d));
            if input.shape.is_empty() || count != Some(items.len() as i64) {
                return Err(V2Error::bad(format!(
                    "input {}: shape {:?} does not match {} elements",
                    input.name,
                    input.shape,
                    items.len()
                )));
            }
            let encoded = items
                .iter()
                .enumerate()
                .map(|(i, item)| image_bytes(&input.name, i, item))
                .collect::<Result<Vec<_>, _>>()?;
            check_pixels(&input.name, &encoded, limits)?;
            encoded
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    let img = image::decode(bytes, limits.max_image_pixels)
                        .map_err(|e| V2Error::bad(format!("input {}[{i}]: {e}", input.name)))?;
                    image::preprocess(&img, &model.preprocess)
                        .map_err(|e| V2Error::bad(format!("input {}[{i}]: {e}", input.name)))
                })
                .collect()
        }
        "FP32" => fp32_tensors(model, &input),
        other => Err(V2Error::bad(format!(
            "input {}: datatype {other} is not accepted (BYTES images or FP32 tensors)",
            input.name
        ))),
    }
}

/// The pixels of every image, from their headers, against the per-image and per-request limits: nothing is
/// decoded until all of them fit.
fn check_pixels(name: &str, encoded: &[Vec<u8>], limits: &RequestLimits) -> Result<(), V2Error> {
    let mut total: u64 = 0;
    for (i, bytes) in encoded.iter().enumerate() {
        let (w, h) = image::dimensions(bytes).map_err(|e| V2Error::bad(format!("input {name}[{i}]: {e}")))?;
        total = total.saturating_add(u64::from(w) * u64::from(h));
        if total > limits.max_request_pixels {
            return Err(V2Error::bad(format!(
                "input {name}: the images hold more than {} pixels together (the per-request limit)",
                limits.max_request_pixels
            )));
        }
    }
    Ok(())
}

fn image_bytes(name: &str, i: usize, item: &Value) -> Result<Vec<u8>, V2Error> {
    let text = match item {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o
            .get("b64")
            .and_then(Value::as_str)
            .ok_or_else(|| V2Error::bad(format!("input {name}[{i}]: expected a base64 string or {{\"b64\": ...}}")))?,
        _ => return Err(V2Error::bad(format!("input {name}[{i}]: expected a base64 string"))),
    };
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| V2Error::bad(format!("input {name}[{i}]: not valid base64: {e}")))
}

fn flatten(v: &Value, out: &mut Vec<f32>) -> Result<(), String> {
    match v {
        Value::Array(a) => a.iter().try_for_each(|x| flatten(x, out)),
        Value::Number(n) => n.as_f64().map(|x| out.push(x as f32)).ok_or_else(|| "not a number".to_string()),
        _ => Err("FP32 data must be numbers".into()),
    }
}

fn fp32_tensors(model: &Classifier, input: &InferInput) -> Result<Vec<Vec<f32>>, V2Error> {
    let s = model.input_size() as i64;
    let n = match input.shape.as_slice() {
        [n, 3, h, w] if *n >= 1 && *h == s && *w == s => *n as usize,
        _ => {
            return Err(V2Error::bad(format!(
                "input {}: shape {:?}; this model takes FP32 [N, 3, {s}, {s}]",
                input.name, input.shape
            )))
        }
    };
    let mut flat = Vec::new();
    flatten(&input.data, &mut flat).map_err(|e| V2Error::bad(format!("input {}: {e}", input.name)))?;
    let per = (3 * s * s) as usize;
    if flat.len() != n * per {
        return Err(V2Error::bad(format!(
            "input {}: {} values for shape {:?} ({} expected)",
            input.name,
            flat.len(),
            input.shape,
            n * per
        )));
    }
    if flat.iter().any(|x| !x.is_finite()) {
        return Err(V2Error::bad(format!("input {}: values must be finite", input.name)));
    }
    Ok(flat.chunks(per).map(<[f32]>::to_vec).collect())
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = x.iter().map(|v| ((v - m) as f64).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| (v / sum) as f32).collect()
}

fn outputs(
    model: &Classifier,
    logits: &[Vec<f32>],
    k: usize,
    want_logits: bool,
    requested: Option<&[RequestedOutput]>,
) -> Vec<Value> {
    let n = logits.len();
    let (mut labels, mut scores, mut ids) = (vec![], vec![], vec![]);
    for row in logits {
        let mut ranked: Vec<(usize, f32)> = softmax(row).into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        for &(i, prob) in ranked.iter().take(k) {
            labels.push(json!(model.labels.get(i)));
            scores.push(json!(prob));
            ids.push(json!(i));
        }
    }
    let all = [
        ("labels", json!({"name": "labels", "datatype": "BYTES", "shape": [n, k], "data": labels})),
        ("scores", json!({"name": "scores", "datatype": "FP32", "shape": [n, k], "data": scores})),
        ("class_ids", json!({"name": "class_ids", "datatype": "INT64", "shape": [n, k], "data": ids})),
    ];
    let wanted = |name: &str| requested.is_none_or(|r| r.iter().any(|o| o.name == name));
    let mut out: Vec<Value> = all.into_iter().filter(|(name, _)| wanted(name)).map(|(_, v)| v).collect();
    if want_logits {
        let flat: Vec<f32> = logits.iter().flatten().copied().collect();
        let classes = logits.first().map_or(0, Vec::len);
        out.push(json!({"name": "logits", "datatype": "FP32", "shape": [n, classes], "data": flat}));
    }
    out
}
