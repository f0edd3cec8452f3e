//! The KServe Open Inference Protocol (v2) over REST for image classifiers: server and model health, model
//! metadata, and `POST /v2/models/{name}[/versions/{v}]/infer`. Inputs: `image` (BYTES, each element an encoded
//! JPEG or PNG as base64 text or `{"b64": ...}`) or `input` (FP32 [N, 3, H, W], already preprocessed). Outputs:
//! `labels` (BYTES [N, k]), `scores` (FP32 softmax probabilities [N, k]), `class_ids` (INT64 [N, k]) and, only when
//! named in `outputs`, `logits` (FP32 [N, classes]); k is the `top_k` parameter (default 5). Errors are
//! `{"error": "..."}` with a 4xx/5xx status, as the protocol specifies. JSON only (the binary tensor extension is
//! not implemented).

use super::{AppState, ServedBy};
use crate::backend::Backend;
use crate::batcher::{Batcher, InferError};
use crate::models::classifier::Classifier;
use crate::models::image;
use crate::router::SlotLease;
use axum::body::Bytes;
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

impl From<InferError> for V2Error {
    fn from(e: InferError) -> Self {
        match e {
            InferError::Overloaded(_) => V2Error(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            InferError::Stopped => V2Error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            InferError::Failed(cause) => {
                tracing::error!(error = %cause, "inference failed");
                V2Error(StatusCode::INTERNAL_SERVER_ERROR, "inference failed".into())
            }
        }
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

pub async fn infer(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Result<Response, V2Error> {
    run(state, name, None, body).await
}

pub async fn version_infer(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, V2Error> {
    run(state, name, Some(version), body).await
}

async fn run(state: AppState, name: String, version: Option<String>, body: Bytes) -> Result<Response, V2Error> {
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
    let model = b.model().clone();
    let max_pixels = state.max_image_pixels;
    let tensors = tokio::task::spawn_blocking(move || to_tensors(&model, input, max_pixels))
        .await
        .map_err(|e| V2Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let n = tensors.len();
    let logits = b.infer(tensors).await?;
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
fn to_tensors(model: &Classifier, input: InferInput, max_pixels: u64) -> Result<Vec<Vec<f32>>, V2Error> {
    match input.datatype.as_str() {
        "BYTES" => {
            let items = input
                .data
                .as_array()
                .ok_or_else(|| V2Error::bad(format!("input {}: data must be an array", input.name)))?;
            if items.is_empty() {
                return Err(V2Error::bad(format!("input {}: no images", input.name)));
            }
            let count: i64 = input.shape.iter().product();
            if input.shape.is_empty() || count != items.len() as i64 {
                return Err(V2Error::bad(format!(
                    "input {}: shape {:?} does not match {} elements",
                    input.name,
                    input.shape,
                    items.len()
                )));
            }
            items.iter().enumerate().map(|(i, item)| image_tensor(model, &input.name, i, item, max_pixels)).collect()
        }
        "FP32" => fp32_tensors(model, &input),
        other => Err(V2Error::bad(format!(
            "input {}: datatype {other} is not accepted (BYTES images or FP32 tensors)",
            input.name
        ))),
    }
}

fn image_tensor(model: &Classifier, name: &str, i: usize, item: &Value, max_pixels: u64) -> Result<Vec<f32>, V2Error> {
    let text = match item {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o
            .get("b64")
            .and_then(Value::as_str)
            .ok_or_else(|| V2Error::bad(format!("input {name}[{i}]: expected a base64 string or {{\"b64\": ...}}")))?,
        _ => return Err(V2Error::bad(format!("input {name}[{i}]: expected a base64 string"))),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| V2Error::bad(format!("input {name}[{i}]: not valid base64: {e}")))?;
    let img = image::decode(&bytes, max_pixels).map_err(|e| V2Error::bad(format!("input {name}[{i}]: {e}")))?;
    image::preprocess(&img, &model.preprocess).map_err(|e| V2Error::bad(format!("input {name}[{i}]: {e}")))
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
        let p = softmax(row);
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
        for &i in &order[..k] {
            labels.push(json!(model.labels[i]));
            scores.push(json!(p[i]));
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
