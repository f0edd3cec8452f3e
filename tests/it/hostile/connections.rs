//! Connections that hold the server without completing anything: a thousand sockets that never finish their
//! headers, and a streaming client that stops reading.

use super::battery::{fast_args, Battery};
use crate::common::ADMIN_TOKEN;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_header_sockets_starve_nothing() {
    let mut b = Battery::start(fast_args()).await;
    let addr = b.s.url.trim_start_matches("http://").to_string();
    let mut socks = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        socks.push(s);
    }
    let t0 = Instant::now();
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .get(format!("{}/admin/slots", b.s.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("the admin API answers within 1 s while 1000 sockets hold the API port");
    assert_eq!(r.status(), 200);
    eprintln!("admin answered in {:.1} ms beside 1000 slow-header sockets", t0.elapsed().as_secs_f64() * 1e3);
    b.check("1000 slow-header sockets").await;
    // The header deadline (2 s here) closes them all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut closed = 0;
    for s in socks.iter_mut().take(50) {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            // A 408 response before the close counts too.
            Ok(Ok(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(closed, 50, "slow-header sockets are closed after the header deadline");
    b.check("slow-header sockets closed after the deadline").await;
    b.report("slow headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_gets_408() {
    let mut b = Battery::start(fast_args()).await;
    let addr = b.s.url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head =
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(b"{\"model\": ").await.unwrap();
    // The body deadline is 3 s here: send nothing more and read the answer.
    let mut answer = vec![];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server never answered a stalled body");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    b.check("a request body that never finishes").await;
    b.report("slow body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_client_that_stops_reading_is_cut_and_its_kv_freed() {
    let mut b = Battery::start(fast_args()).await;
    let addr: std::net::SocketAddr = b.s.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    // Large chunks (20 alternatives per token) so the response outgrows the socket buffers.
    let body = serde_json::json!({"model": "stories", "prompt": "Once", "max_tokens": 490, "stream": true,
                                  "logprobs": 5, "temperature": 1.0, "ignore_eos": true})
    .to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body.as_bytes()).await.unwrap();
    // Never read. The write deadline (2 s here) cuts the connection if the server's writes stall; either way the
    // request must be gone from the engine (its KV blocks freed) shortly after.
    let t0 = Instant::now();
    let mut gone = false;
    while t0.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if b.s.metric("teal_running_requests").await == Some(0.0) && t0.elapsed() > Duration::from_secs(1) {
            gone = true;
            break;
        }
    }
    assert!(gone, "the stalled request still holds the engine");
    assert_eq!(b.s.metric("teal_kv_cache_usage_ratio").await, Some(0.0), "its KV blocks were freed");
    eprintln!("the never-reading client's request left the engine after {:.1} s", t0.elapsed().as_secs_f64());
    b.check("a streaming client that never reads").await;
    b.report("stalled reader");
}
