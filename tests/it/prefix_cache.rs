//! Prefix caching as a client sees it: greedy answers are the same with the cache on and off (shared and
//! unshared prefixes, sequential and concurrent, under preemption), `usage.prompt_tokens_details.cached_tokens`
//! counts exactly the whole blocks reused, the metrics add up, and `--no-prefix-cache` reuses nothing.

use crate::common;

use common::TestServer;
use serde_json::{json, Value};
use teal::config::ServeArgs;

/// A greedy completion: its text and its usage object.
async fn complete(s: &TestServer, model: &str, prompt: Value, max_tokens: usize) -> (String, Value) {
    let body =
        json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true});
    let v: Value = s.post("/v1/completions", body).await.json().await.unwrap();
    let text = v["choices"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {v}")).to_string();
    (text, v["usage"].clone())
}

fn cached(usage: &Value) -> u64 {
    usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or_else(|| panic!("no cached_tokens in {usage}"))
}

/// Every prompt, one at a time and then all at once (twice: the second round finds the first's blocks).
async fn answers(s: &TestServer, model: &str, prompts: &[String], max_tokens: usize) -> Vec<Vec<String>> {
    let mut solo = vec![];
    for p in prompts {
        solo.push(complete(s, model, json!(p), max_tokens).await.0);
    }
    let mut rounds = vec![solo];
    for _ in 0..2 {
        let futs = prompts.iter().map(|p| complete(s, model, json!(p), max_tokens));
        rounds.push(futures::future::join_all(futs).await.into_iter().map(|(t, _)| t).collect());
    }
    rounds
}

fn story_prompts() -> Vec<String> {
    let shared = "Once upon a time, there was a little girl named Lily. She liked to play outside with her";
    let mut p: Vec<String> = ["dog.", "mom and dad.", "friends in the park.", "ball. One day,", "toys.", "cat, Tom."]
        .iter()
        .map(|end| format!("{shared} {end}"))
        .collect();
    p.extend(["The little dog".to_string(), "A big red ball was".into(), "Tom and Sue went to the".into()]);
    p
}

#[tokio::test]
async fn greedy_answers_are_the_same_with_the_cache_on_and_off_under_preemption() {
    // 160 tokens of cache for 9 requests of ~25 + 40 tokens: preemption is certain when they run together.
    let pool = ServeArgs { max_total_tokens: Some(160), block_size: Some(8), ..Default::default() };
    let off = TestServer::start(common::stories_dir(), ServeArgs { no_prefix_cache: Some(true), ..pool.clone() }).await;
    let prompts = story_prompts();
    let want = answers(&off, "stories260K", &prompts, 40).await;
    for round in &want[1..] {
        assert_eq!(round, &want[0], "without the cache, batching changes nothing");
    }
    assert_eq!(off.metric("teal_prefix_cache_hit_tokens_total{model=\"stories260K\"}").await, Some(0.0));
    off.stop().await.unwrap();

    let on = TestServer::start(common::stories_dir(), pool).await;
    let got = answers(&on, "stories260K", &prompts, 40).await;
    for (i, round) in got.iter().enumerate() {
        assert_eq!(round, &want[0], "round {i} with the prefix cache");
    }
    let hits = on.metric("teal_prefix_cache_hit_tokens_total{model=\"stories260K\"}").await.unwrap();
    let pre = on.metric("teal_preemptions_total{model=\"stories260K\"}").await.unwrap();
    assert!(hits >= 100.0, "the shared prefix was reused ({hits} tokens)");
    assert!(pre >= 1.0, "the pool was meant to force preemption ({pre})");
    assert!(on.wait_metric("teal_kv_cache_usage_ratio{model=\"stories260K\"}", 0.0).await, "all blocks released");
}

#[tokio::test]
async fn quantized_smollm2_answers_the_same_with_the_cache_on_and_off() {
    let system = "You are a careful assistant. Answer in one short paragraph, plainly, without lists. \
                  If you do not know, say so. Never invent facts, names or numbers.";
    let qs = ["What is the capital of France?", "Why is the sky blue?", "Name a primary color.", "What is 2 + 2?"];
    let mut prompts: Vec<String> = qs.iter().map(|q| format!("{system}\nQuestion: {q}\nAnswer:")).collect();
    prompts.extend(["def fibonacci(n):".to_string(), "The best way to learn a language is".into()]);
    let off =
        TestServer::start(common::smollm_dir(), ServeArgs { no_prefix_cache: Some(true), ..Default::default() }).await;
    let want = answers(&off, "smollm2", &prompts, 16).await;
    off.stop().await.unwrap();
    let on = TestServer::start(common::smollm_dir(), ServeArgs::default()).await;
    let got = answers(&on, "smollm2", &prompts, 16).await;
    assert_eq!(want[0], want[1], "without the cache, batching changes nothing");
    for (i, round) in got.iter().enumerate() {
        assert_eq!(round, &want[0], "round {i} with the prefix cache");
    }
    let hits = on.metric("teal_prefix_cache_hit_tokens_total{model=\"smollm2\"}").await.unwrap();
    assert!(hits >= 32.0, "the system prompt was reused ({hits} tokens)");
}

#[tokio::test]
async fn cached_tokens_count_exactly_the_whole_blocks_reused() {
    let s = TestServer::start(common::stories_dir(), ServeArgs { block_size: Some(16), ..Default::default() }).await;
    let base: Vec<u32> = (0..40).map(|i| 100 + i * 7 % 300).collect();
    let (_, u) = complete(&s, "stories260K", json!(base), 4).await;
    assert_eq!((u["prompt_tokens"].as_u64(), cached(&u)), (Some(40), 0), "nothing cached yet");
    let (_, u) = complete(&s, "stories260K", json!(base), 4).await;
    assert_eq!(cached(&u), 32, "the same 40 tokens: two whole blocks (the last token always runs)");
    let mut branch = base[..20].to_vec();
    branch.extend([5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    let (_, u) = complete(&s, "stories260K", json!(branch), 4).await;
    assert_eq!(cached(&u), 16, "shares one whole block");
    let mut other = base.clone();
    other[0] = 1;
    let (_, u) = complete(&s, "stories260K", json!(other), 4).await;
    assert_eq!(cached(&u), 0, "a different first token shares nothing");
    let exact: Vec<u32> = base[..32].to_vec();
    let (_, u) = complete(&s, "stories260K", json!(exact), 4).await;
    assert_eq!(cached(&u), 16, "a prompt of exactly two cached blocks reuses one: its last token must run");

    // Streaming reports it too, and the metrics add up: 32 + 16 + 0 + 16 + 32 hit tokens of
    // 40 + 40 + 30 + 40 + 32 + 40 prompt tokens.
    let body = json!({"model": "stories260K", "prompt": base, "max_tokens": 2, "stream": true,
                      "stream_options": {"include_usage": true}});
    let events = common::sse_events(s.post("/v1/completions", body).await).await;
    let chunks: Vec<Value> = events.iter().filter_map(|e| serde_json::from_str(e).ok()).collect();
    let usage = chunks.iter().rev().find(|e| e["usage"].is_object()).unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(cached(&usage["usage"]), 32, "{events:?}");
    let hits = s.metric("teal_prefix_cache_hit_tokens_total{model=\"stories260K\"}").await.unwrap();
    assert_eq!(hits, 96.0);
    let ratio = s.metric("teal_prefix_cache_hit_ratio{model=\"stories260K\"}").await.unwrap();
    assert!((ratio - 96.0 / 222.0).abs() < 1e-9, "{ratio}");
    assert!(s.metric("teal_prefix_cache_blocks{model=\"stories260K\"}").await.unwrap() >= 4.0);
}

#[tokio::test]
async fn with_no_prefix_cache_nothing_is_reused() {
    let s =
        TestServer::start(common::stories_dir(), ServeArgs { no_prefix_cache: Some(true), ..Default::default() }).await;
    let p: Vec<u32> = (0..48).map(|i| 50 + i).collect();
    for _ in 0..2 {
        let (_, u) = complete(&s, "stories260K", json!(p), 2).await;
        assert_eq!(cached(&u), 0);
    }
    assert_eq!(s.metric("teal_prefix_cache_blocks{model=\"stories260K\"}").await, Some(0.0));
}

#[tokio::test]
async fn a_chat_session_turn_reuses_the_conversation_before_it() {
    let s = TestServer::start(common::smollm_dir(), ServeArgs::default()).await;
    let mut messages = vec![json!({"role": "system", "content": "You are a helpful assistant who answers briefly."})];
    let mut last = 0;
    for q in ["Hello!", "What is the capital of France?", "And of Italy?", "Thanks. One more: Spain?"] {
        messages.push(json!({"role": "user", "content": q}));
        let body = json!({"model": "smollm2", "messages": messages, "max_tokens": 12, "temperature": 0});
        let v: Value = s.post("/v1/chat/completions", body).await.json().await.unwrap();
        let answer = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
        last = cached(&v["usage"]);
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    assert!(last >= 48, "turn 4 reuses the earlier turns' blocks ({last} cached tokens)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_up_leaves_the_configured_system_prompt_in_the_standby_cache() {
    let models = common::smollm_dir().parent().unwrap().to_path_buf();
    let args = ServeArgs { models_dir: Some(models), served_model_name: Some("smollm2".into()), ..Default::default() };
    let s = TestServer::start(common::smollm_path(), args).await;
    let system = "You are the support assistant of Teal Bank. Be brief, polite and exact. Never give financial advice.";
    let warm = json!({"cache_prompts": [{"messages": [{"role": "system", "content": system}]}]});
    let op = s.load("green", json!({"model": "smollm2", "version": "v2", "warmup": warm})).await;
    assert_eq!(op["status"], "succeeded", "{op}");
    let report = &s.admin_json("/admin/slots").await["slots"]["green"]["warmup"];
    assert!(report["cached_prompt_tokens"].as_u64().unwrap() >= 20, "{report}");
    let r = s.admin(reqwest::Method::POST, "/admin/flip", Some(json!({}))).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let messages =
        json!([{"role": "system", "content": system}, {"role": "user", "content": "Can I open an account?"}]);
    let body = json!({"model": "smollm2", "messages": messages, "max_tokens": 4, "temperature": 0});
    let v: Value = s.post("/v1/chat/completions", body).await.json().await.unwrap();
    assert!(cached(&v["usage"]) >= 16, "the first request after the flip found the system prompt: {v}");
}

#[tokio::test]
async fn a_cache_salt_shares_blocks_only_with_the_same_salt() {
    let s = TestServer::start(common::stories_dir(), ServeArgs { block_size: Some(16), ..Default::default() }).await;
    let p: Vec<u32> = (0..40).map(|i| 200 + i).collect();
    let ask = |salt: Option<&str>| {
        let mut b = json!({"model": "stories260K", "prompt": p, "max_tokens": 2, "temperature": 0});
        if let Some(salt) = salt {
            b["cache_salt"] = json!(salt);
        }
        b
    };
    let usage = |b: Value| async { s.post("/v1/completions", b).await.json::<Value>().await.unwrap()["usage"].clone() };
    assert_eq!(cached(&usage(ask(Some("tenant-a"))).await), 0);
    assert_eq!(cached(&usage(ask(Some("tenant-a"))).await), 32, "the same salt shares");
    assert_eq!(cached(&usage(ask(Some("tenant-b"))).await), 0, "another salt does not");
    assert_eq!(cached(&usage(ask(None)).await), 0, "nor does no salt");
    let r = s.post("/v1/completions", ask(Some(""))).await;
    assert_eq!(r.status(), 400);
    let long = "x".repeat(257);
    let r = s.post("/v1/completions", ask(Some(&long))).await;
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "cache_salt");
}
