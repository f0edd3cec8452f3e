//! Model files are untrusted input: each hostile file, loaded into the standby through the admin API, ends as a
//! failed standby with a precise reason (or a 4xx at once), and the live slot keeps serving.

use super::battery::{fast_args, Battery};
use super::files::{self, gguf, gguf_str, gguf_u32};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_gguf_headers_fail_the_standby_with_their_reason() {
    let mut b = Battery::start(fast_args()).await;
    let arch = ("general.architecture", gguf_str("llama"));
    // The defect the issue names: general.alignment = 0 (a division by zero in candle's reader).
    files::write_gguf(&b.dir("align0"), &gguf(&[arch.clone(), ("general.alignment", gguf_u32(0))], &[], 0));
    b.load_fails("gguf alignment 0", "align0", "general.alignment 0").await;
    let mut counts = gguf(&[], &[], 0);
    counts[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    files::write_gguf(&b.dir("tensors2e40"), &counts);
    b.load_fails("gguf tensor count 2^40", "tensors2e40", "1099511627776 tensors").await;
    let mut counts = gguf(&[], &[], 0);
    counts[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    files::write_gguf(&b.dir("kv2e40"), &counts);
    b.load_fails("gguf metadata count 2^40", "kv2e40", "1099511627776 metadata entries").await;
    let mut long = (1u64 << 60).to_le_bytes().to_vec();
    long.extend(b"x");
    files::write_gguf(&b.dir("str2e60"), &gguf(&[("general.name", (8, long))], &[], 0));
    b.load_fails("gguf string of 2^60 bytes", "str2e60", "a string of 1152921504606846976 bytes").await;
    let past = gguf(std::slice::from_ref(&arch), &[("token_embd.weight", &[64, 512], 0, 0)], 1024);
    files::write_gguf(&b.dir("pastend"), &past);
    b.load_fails("gguf tensor past the end of the file", "pastend", "run past the end of the file").await;
    let huge = gguf(std::slice::from_ref(&arch), &[("w", &[1 << 32, 1 << 32, 1 << 20], 0, 0)], 64);
    files::write_gguf(&b.dir("hugedims"), &huge);
    b.load_fails("gguf dimensions overflowing", "hugedims", "elements").await;
    let mut nested = 9u32.to_le_bytes().to_vec();
    for _ in 0..3 {
        nested.extend(1u64.to_le_bytes());
        nested.extend(9u32.to_le_bytes());
    }
    files::write_gguf(&b.dir("nested"), &gguf(&[("k", (9, nested))], &[], 0));
    b.load_fails("gguf arrays nested without end", "nested", "nested deeper").await;
    files::write_gguf(&b.dir("gemma"), &gguf(&[("general.architecture", gguf_str("mamba9"))], &[], 0));
    b.load_fails("gguf unknown architecture", "gemma", "GGUF architecture 'mamba9'").await;
    std::fs::write(b.dir("empty").join("model.gguf"), b"").unwrap();
    b.load_fails("gguf empty file", "empty", "needs 4 bytes").await;
    b.report("gguf");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_hf_directories_fail_the_standby_with_their_reason() {
    let mut b = Battery::start(fast_args()).await;
    let d = b.dir("st2e60");
    files::stories_copy(&d);
    let mut claim = (1u64 << 60).to_le_bytes().to_vec();
    claim.extend(b"{}");
    std::fs::write(d.join("model.safetensors"), claim).unwrap();
    b.load_fails("safetensors header claiming 2^60 bytes", "st2e60", "a header of 1152921504606846976 bytes").await;
    let d = b.dir("stpast");
    files::stories_copy(&d);
    let header = r#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[512,64],"data_offsets":[0,131072]}}"#;
    std::fs::write(d.join("model.safetensors"), files::safetensors(header, 100)).unwrap();
    b.load_fails("safetensors tensor past the end of the file", "stpast", "outside the 100 data bytes").await;
    let d = b.dir("layers");
    files::stories_copy(&d);
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"num_hidden_layers\": 5", "\"num_hidden_layers\": 1099511627776");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    b.load_fails("config.json with 2^40 layers", "layers", "num_hidden_layers 1099511627776 is over the limit").await;
    let d = b.dir("bigconfig");
    files::stories_copy(&d);
    std::fs::write(d.join("config.json"), vec![b' '; 5 << 20]).unwrap();
    b.load_fails("config.json of 5 MiB", "bigconfig", "over the limit of 4194304 bytes").await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("tokenizer.json"), "{}").unwrap();
    let d = b.dir("toklink");
    files::stories_copy(&d);
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    b.load_fails("tokenizer.json symlinked out of the model directory", "toklink", "outside the model directory").await;
    let d = b.dir("shardout");
    files::stories_copy(&d);
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let index = json!({"weight_map": {"model.embed_tokens.weight": "../../../etc/passwd"}});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    b.load_fails("a shard index naming a file outside", "shardout", "must be a relative path inside").await;
    let d = b.dir("looptmpl");
    files::stories_copy(&d);
    let looping = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
    std::fs::write(d.join("tokenizer_config.json"), json!({"chat_template": looping}).to_string()).unwrap();
    b.load_fails("a chat template that loops", "looptmpl", "execution budget").await;
    b.report("hf");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pytorch_checkpoints_fail_the_standby_with_their_reason() {
    let mut b = Battery::start(fast_args()).await;
    // Two million nested TUPLE1s: a stack overflow in a recursive reader; refused at the object cap here.
    let d = b.dir("tuples");
    files::classifier_dir(&d, "w.pth", "");
    let mut deep = vec![0x80, 0x02, b'N'];
    deep.extend(std::iter::repeat_n(0x85u8, 2_000_000));
    deep.push(b'.');
    std::fs::write(d.join("w.pth"), files::legacy_pth(&deep, &[], &[])).unwrap();
    b.load_fails(".pth with 2M nested TUPLE1", "tuples", "more than 1048576 objects").await;
    // BINGET/BINPUT doubling: objects are shared, so the doubling costs nothing; the result is no state dict.
    let d = b.dir("memo");
    files::classifier_dir(&d, "w.pth", "");
    let mut memo = vec![0x80, 0x02, b']', b'q', 0];
    for _ in 0..400 {
        memo.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    memo.push(b'.');
    std::fs::write(d.join("w.pth"), files::legacy_pth(&memo, &[], &[])).unwrap();
    b.load_fails(".pth with memo doubling", "memo", "not a state dict").await;
    // A storage whose element count runs past the end of the file.
    let d = b.dir("storage");
    files::classifier_dir(&d, "w.pth", "");
    let mut storages = (1u64 << 40).to_le_bytes().to_vec();
    storages.extend([0u8; 16]);
    let sd = files::state_dict_pickle("stem.weight", "0", 4);
    std::fs::write(d.join("w.pth"), files::legacy_pth(&sd, &["0"], &storages)).unwrap();
    b.load_fails(".pth storage past the end of the file", "storage", "runs past the end of the file").await;
    let d = b.dir("opcode");
    files::classifier_dir(&d, "w.pth", "");
    std::fs::write(d.join("w.pth"), files::legacy_pth(b"\x80\x02cos\nsystem\n(X\x02\x00\x00\x00lsto.", &[], &[]))
        .unwrap();
    b.load_fails(".pth calling os.system (BUILD-free exploit shape)", "opcode", "not allowed").await;
    let d = b.dir("escape");
    files::classifier_dir(&d, "../../../etc/passwd", "");
    std::fs::write(d.join("decoy.pth"), b"PK").unwrap();
    b.load_fails("teal.toml weights outside the model directory", "escape", "must be a relative path inside").await;
    b.report("pth");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_load_requests_are_refused_or_bounded() {
    let mut b = Battery::start(fast_args()).await;
    b.load_refused("load path outside the model root", "../../etc", json!({}), 403, "outside the model root").await;
    b.load_refused("load of a missing model", "nope", json!({}), 404, "no model named").await;
    let d = b.dir("ok");
    files::stories_copy(&d);
    let gates = json!({"gates": {"smoke": {"requests": 100_000_000}}});
    b.load_refused("gate asking for 1e8 smoke requests", "ok", gates, 400, "smoke.requests").await;
    let bad = json!({"timeouts": {"warmup_s": -1}});
    b.load_refused("negative timeout", "ok", bad, 400, "timeouts").await;
    // A golden prompt longer than the model's context fails its gate with that reason, never retried forever.
    let long = "once upon a time ".repeat(400);
    let gates = json!({"gates": {"golden": {"cases": [{"prompt": long, "expect_contains": ["x"]}]}}});
    let (status, op) = b.load("ok", gates).await;
    assert_eq!((status, op["status"].as_str()), (202, Some("succeeded")), "{op}");
    assert_eq!(op["gates_passed"], false);
    let slots = b.s.admin_json("/admin/slots").await;
    let golden = slots["slots"]["green"]["gates"]["results"][1]["summary"].as_str().unwrap_or_default();
    assert!(golden.contains("exceed this model's limit of"), "{golden}");
    let r = b.s.admin(reqwest::Method::POST, "/admin/flip", Some(json!({}))).await;
    assert_eq!(r.status(), 409, "a standby that failed its gates is not flipped to");
    b.check("golden prompt longer than the context").await;
    // A stage that overruns its timeout fails the load with the stage named.
    let (_, op) = b.load("ok", json!({"timeouts": {"warmup_s": 0.001}})).await;
    assert_eq!(op["status"], "failed", "{op}");
    assert!(op["error"].as_str().unwrap_or_default().contains("warming timed out"), "{op}");
    b.check("warm-up past its timeout").await;
    // An operator cancels a running load.
    let r =
        b.s.admin(reqwest::Method::POST, "/admin/slots/green/load", Some(json!({"model": "ok", "timeouts": {}}))).await;
    let id = r.json::<serde_json::Value>().await.unwrap()["operation"]["id"].as_str().unwrap().to_string();
    let r = b.s.admin(reqwest::Method::POST, &format!("/admin/operations/{id}/cancel"), None).await;
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap();
    if status == 200 {
        assert_eq!((v["status"].as_str(), v["error"].as_str()), (Some("failed"), Some("cancelled by the operator")));
    } else {
        assert_eq!(status, 409, "only an operation that already finished may refuse a cancel: {v}");
    }
    let r = b.s.admin(reqwest::Method::POST, &format!("/admin/operations/{id}/cancel"), None).await;
    assert_eq!(r.status(), 409, "cancelling a finished operation");
    b.check("cancel a load").await;
    b.report("load requests");
}

/// A copy of a tiny GGUF fixture (tests/fixtures/tiny/) whose tensor `name` claims `dims` instead of its own (the
/// same number of dimensions; the data stays where it was).
fn gguf_with_dims(fixture: &str, name: &str, dims: &[u64]) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(fixture);
    let mut bytes = std::fs::read(path).unwrap();
    let mut info = (name.len() as u64).to_le_bytes().to_vec();
    info.extend(name.as_bytes());
    let at = bytes.windows(info.len()).position(|w| w == info).unwrap() + info.len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize, dims.len(), "{name}");
    for (i, d) in dims.iter().enumerate() {
        bytes[at + 4 + 8 * i..][..8].copy_from_slice(&d.to_le_bytes());
    }
    bytes
}

/// The families with their own tensors (Qwen2's q/k/v biases, Phi-3's fused projections): a tensor of the wrong
/// shape is refused by name, the live slot serving on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_qwen2_and_phi3_ggufs_fail_the_standby_with_their_reason() {
    let mut b = Battery::start(fast_args()).await;
    files::write_gguf(&b.dir("qbias"), &gguf_with_dims("qwen2.gguf", "blk.0.attn_q.bias", &[32]));
    b.load_fails(
        "qwen2 gguf with a q bias of half its length",
        "qbias",
        "tensor QBias(0) has shape [32], expected (64, 0)",
    )
    .await;
    files::write_gguf(&b.dir("fusedqkv"), &gguf_with_dims("phi3.gguf", "blk.0.attn_qkv.weight", &[64, 96]));
    b.load_fails(
        "phi3 gguf with a fused qkv of the wrong width",
        "fusedqkv",
        "tensor Qkv(0) has shape [96, 64], expected (128, 64)",
    )
    .await;
    files::write_gguf(&b.dir("fusedup"), &gguf_with_dims("phi3.gguf", "blk.0.ffn_up.weight", &[64, 191]));
    b.load_fails(
        "phi3 gguf with a fused gate/up of an odd width",
        "fusedup",
        "tensor GateUp(0) has shape [191, 64], expected (192, 64)",
    )
    .await;
    b.report("gguf families");
}
