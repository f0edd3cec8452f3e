//! Every `teal bench` command end to end (the real binary) against a teal server with short settings: the
//! JSON results and the SVG charts are checked.

use crate::common;

use common::{bench, read_json, s, TestServer, ADMIN_TOKEN};
use std::path::Path;
use teal::config::ServeArgs;

/// Parses an SVG and returns how many <circle> elements and which texts it has.
fn svg_summary(p: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(p).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{} is not valid SVG: {e}", p.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let circles = doc.descendants().filter(|n| n.has_tag_name("circle")).count();
    let texts = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(|t| t.trim().to_string())
        .collect();
    (circles, texts)
}

fn copy_stories(root: &Path) {
    let dst = root.join("stories");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(common::stories_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bench_runs_end_to_end_against_teal() {
    let root = tempfile::tempdir().unwrap();
    copy_stories(root.path());
    let args = ServeArgs {
        blue: Some(root.path().join("stories")),
        green: Some(root.path().join("stories")),
        models_dir: Some(root.path().to_path_buf()),
        ..Default::default()
    };
    let srv = TestServer::start_args(args).await;
    srv.wait_slot("green", "ready").await;
    let out = tempfile::tempdir().unwrap();
    let o = |f: &str| out.path().join(f).display().to_string();
    let common = |json: &str| {
        vec![
            s("--url"),
            srv.url.clone(),
            s("--input-len"),
            s("16"),
            s("--output-len"),
            s("8"),
            s("--json"),
            o(json),
            s("--svg"),
            o(""),
        ]
    };
    let admin = vec![s("--admin-url"), srv.admin_url.clone(), s("--token"), s(ADMIN_TOKEN)];

    let mut args = vec![s("serve"), s("--concurrency"), s("1,2,4"), s("--requests"), s("6"), s("--rate"), s("50")];
    args.extend(common("serve.json"));
    let (ok, text) = bench(args).await;
    assert!(ok, "{text}");
    assert!(text.contains("c=4") && text.contains("rate=50/s"), "{text}");
    let v = read_json(&out.path().join("serve.json"));
    assert_eq!(v["results"].as_array().unwrap().len(), 4);
    let (circles, texts) = svg_summary(&out.path().join("latency_vs_concurrency.svg"));
    assert_eq!(circles, 3 * 6, "a point per concurrency level per series");
    assert!(texts.iter().any(|t| t == "concurrent requests"), "{texts:?}");

    chat_bench(common("chat.json"), out.path()).await;

    let flip = "flip --concurrency 4 --duration-s 1.5 --flip-every-ms 100 --settle-s 0.5";
    let mut args: Vec<String> = flip.split(' ').map(String::from).collect();
    args.extend(common("flip.json"));
    args.extend(admin.clone());
    let (ok, text) = bench(args).await;
    assert!(ok, "{text}");
    let v = read_json(&out.path().join("flip.json"));
    let r = &v["results"];
    assert!(r["flips"].as_u64().unwrap() >= 5, "{r}");
    assert_eq!((r["failed_requests"].as_u64(), r["flip_errors"].as_u64()), (Some(0), Some(0)));
    // The bench's count is the server's: every flip it reports happened, and no other.
    assert_eq!(r["flips"], srv.admin_json("/admin/slots").await["flips"], "{r}");
    let phases: Vec<&str> = r["phases"].as_array().unwrap().iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(phases, ["before", "during", "after"]);
    let (circles, texts) = svg_summary(&out.path().join("flip_timeline.svg"));
    assert!(circles > 10 && texts.iter().any(|t| t == "flip"), "{circles} {texts:?}");

    let live_before = srv.admin_json("/admin/slots").await["live"].as_str().unwrap().to_string();
    let standby = if live_before == "blue" { "green" } else { "blue" };
    let mut args = vec![s("cold-warm"), s("--standby-model"), s("stories"), s("--requests"), s("5")];
    args.extend(common("cold_warm.json"));
    args.extend(admin);
    let (ok, text) = bench(args).await;
    assert!(ok, "{text}");
    let v = read_json(&out.path().join("cold_warm.json"));
    let labels: Vec<&str> =
        v["results"]["phases"].as_array().unwrap().iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["warm first", "warm steady", "cold first", "cold steady"]);
    assert!(v["results"]["ratios"]["cold"]["ttft_p50"].as_f64().unwrap() > 0.0);
    svg_summary(&out.path().join("cold_warm_timeline.svg"));
    // The benchmark left the same slot live and unloaded what it loaded into the standby.
    let slots = srv.admin_json("/admin/slots").await;
    assert_eq!(slots["live"].as_str(), Some(live_before.as_str()));
    assert_eq!(slots["slots"][standby]["state"], "empty");
}

/// `teal bench chat`: three turns of two conversations; the third turn finds the first two in the cache.
async fn chat_bench(common: Vec<String>, out: &Path) {
    let mut args: Vec<String> =
        "chat --turns 3 --conversations 2 --concurrency 2 --shared-prefix 24".split(' ').map(String::from).collect();
    args.extend(common);
    let (ok, text) = bench(args).await;
    assert!(ok, "{text}");
    assert!(text.contains("TTFT p50 ms"), "{text}");
    let v = read_json(&out.join("chat.json"));
    let turns = v["results"].as_array().unwrap();
    assert_eq!(turns.len(), 3, "{v}");
    assert!(turns.iter().all(|t| t["errors"] == 0 && t["ttft_ms"]["p50"].as_f64().unwrap() > 0.0), "{v}");
    let cached = |t: usize| turns[t]["cached_tokens_mean"].as_f64().unwrap();
    let prompt = |t: usize| turns[t]["prompt_tokens_mean"].as_f64().unwrap();
    assert!(prompt(2) > prompt(0) && cached(2) >= 16.0, "turn 3 re-reads turns 1 and 2 from the cache: {v}");
}
