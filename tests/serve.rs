//! The HTTP service in-process on 127.0.0.1:0: the same top-10 as the reference evaluation over
//! HTTP, 4xx with a message for bad requests, health/metrics/page/thumbnails, and a bounded
//! loopback load test.

mod common;
mod fixture_index;
mod http;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fixture_index::*;
use lightningdot::retrieval::SearchService;
use lightningdot::serve::{self, RunningServer, ServeOptions};
use serde_json::json;

fn start(images_dir: Option<PathBuf>) -> RunningServer {
    let service: Arc<dyn SearchService> = Arc::new(pipeline());
    serve::spawn(
        service,
        ServeOptions {
            images_dir,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

fn result_ids(v: &serde_json::Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn http_search_reproduces_eval_top10() {
    let server = start(None);
    let want = expected();
    for (sentid, raw) in caption_queries() {
        let r = http::search(server.addr, &json!({"query": raw, "k": 10})).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.headers.to_ascii_lowercase().contains("application/json"));
        let v = r.json();
        assert_eq!(
            result_ids(&v),
            ids(&want["text_query_top10_images"][&sentid]),
            "caption {sentid}"
        );
        assert!(v["results"][0]["score"].is_number());
    }
    for img in ids(&want["img_ids_order"]) {
        let r = http::search(server.addr, &json!({"image_id": img, "k": 10})).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            result_ids(&r.json()),
            ids(&want["image_query_top10_texts"][&img]),
            "image {img}"
        );
    }
    // k defaults to 10.
    let r = http::search(server.addr, &json!({"query": "a dog"})).unwrap();
    assert_eq!(result_ids(&r.json()).len(), 10);
    server.stop().unwrap();
}

#[test]
fn bad_requests_get_4xx_with_a_message() {
    let server = start(None);
    let addr = server.addr;
    let post =
        |ct: Option<&str>, body: &[u8]| http::request(addr, "POST", "/search", ct, body).unwrap();
    let json_ct = Some("application/json");
    let cases: Vec<(&str, http::Reply, u16, &str)> = vec![
        (
            "empty query",
            http::search(addr, &json!({"query": ""})).unwrap(),
            400,
            "empty",
        ),
        (
            "blank query",
            http::search(addr, &json!({"query": "  \t"})).unwrap(),
            400,
            "empty",
        ),
        (
            "oversized query",
            http::search(addr, &json!({"query": "word ".repeat(1000)})).unwrap(),
            400,
            "characters long",
        ),
        (
            "too many tokens",
            http::search(addr, &json!({"query": "dog ".repeat(100)})).unwrap(),
            400,
            "tokens long",
        ),
        (
            "k = 0",
            http::search(addr, &json!({"query": "a dog", "k": 0})).unwrap(),
            400,
            "k must be",
        ),
        (
            "k > 10000",
            http::search(addr, &json!({"query": "a dog", "k": 10001})).unwrap(),
            400,
            "k must be",
        ),
        (
            "k negative",
            http::search(addr, &json!({"query": "a", "k": -3})).unwrap(),
            400,
            "k must be",
        ),
        (
            "k not a number",
            http::search(addr, &json!({"query": "a", "k": "ten"})).unwrap(),
            422,
            "k",
        ),
        (
            "malformed JSON",
            post(json_ct, b"{\"query\": \"a dog\""),
            400,
            "JSON",
        ),
        (
            "not an object",
            post(json_ct, b"[1, 2]"),
            422,
            "invalid type",
        ),
        (
            "unknown field",
            http::search(addr, &json!({"q": "a dog"})).unwrap(),
            422,
            "unknown field",
        ),
        (
            "no query",
            http::search(addr, &json!({"k": 3})).unwrap(),
            400,
            "missing",
        ),
        (
            "both kinds",
            http::search(addr, &json!({"query": "a", "image_id": "b"})).unwrap(),
            400,
            "not both",
        ),
        (
            "unknown image id",
            http::search(addr, &json!({"image_id": "nope.npz"})).unwrap(),
            404,
            "unknown image id",
        ),
        (
            "no content type",
            post(None, b"{\"query\": \"a dog\"}"),
            415,
            "Content-Type",
        ),
        (
            "body too large",
            post(
                json_ct,
                format!("{{\"query\": \"{}\"}}", "x".repeat(70_000)).as_bytes(),
            ),
            413,
            "",
        ),
        ("GET /search", http::get(addr, "/search").unwrap(), 405, ""),
        (
            "unknown route",
            http::get(addr, "/nope").unwrap(),
            404,
            "no such route",
        ),
    ];
    for (name, r, status, needle) in cases {
        assert_eq!(r.status, status, "{name}: {}", r.text());
        let text = r.text();
        if !needle.is_empty() {
            let v = r.json();
            let msg = v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {text}"));
            assert!(msg.contains(needle), "{name}: {msg:?} lacks {needle:?}");
            assert!(!msg.contains('\n'), "{name}: {msg:?}");
        }
    }
    // The server is still healthy after all of that.
    assert_eq!(http::get(addr, "/healthz").unwrap().status, 200);
    server.stop().unwrap();
}

#[test]
fn healthz_metrics_page_and_thumbnails() {
    let images = tempfile::tempdir().unwrap();
    // Flickr30K names its JPEGs by number.
    std::fs::write(images.path().join("1027.jpg"), b"\xff\xd8\xff\xe0fake jpeg").unwrap();
    let server = start(Some(images.path().to_path_buf()));
    let addr = server.addr;

    let h = http::get(addr, "/healthz").unwrap();
    assert_eq!(h.status, 200);
    let v = h.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(
        (v["images"].as_u64(), v["texts"].as_u64()),
        (Some(20), Some(100))
    );
    assert_eq!(v["thumbnails"], true);

    let page = http::get(addr, "/").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.headers.to_ascii_lowercase().contains("text/html"));
    assert!(page.text().contains("<title>LightningDOT search</title>"));

    let t = http::get(addr, "/thumbnails/flickr30k_000000001027.npz").unwrap();
    assert_eq!(t.status, 200);
    assert!(t.headers.to_ascii_lowercase().contains("image/jpeg"));
    assert_eq!(t.body, b"\xff\xd8\xff\xe0fake jpeg");
    assert_eq!(
        http::get(addr, "/thumbnails/flickr30k_000000001008.npz")
            .unwrap()
            .status,
        404,
        "indexed, but no file"
    );
    assert_eq!(http::get(addr, "/thumbnails/nope.npz").unwrap().status, 404);
    assert_eq!(
        http::get(addr, "/thumbnails/..%2F..%2Fetc%2Fpasswd")
            .unwrap()
            .status,
        404
    );

    for _ in 0..3 {
        http::search(addr, &json!({"query": "a dog", "k": 5})).unwrap();
    }
    http::search(addr, &json!({"query": "", "k": 5})).unwrap();
    let m = http::get(addr, "/metrics").unwrap();
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(
        text.contains("# TYPE lightningdot_http_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("lightningdot_http_requests_total{route=\"/search\",status=\"200\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("lightningdot_http_requests_total{route=\"/search\",status=\"400\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lightningdot_search_duration_seconds_count 4"),
        "{text}"
    );
    assert!(text.contains("lightningdot_search_duration_seconds_bucket{le=\"+Inf\"} 4"));
    assert!(text.contains("lightningdot_stage_duration_seconds_count{stage=\"encode\"} 3"));
    server.stop().unwrap();
}

#[test]
fn bounded_load_test_has_no_errors() {
    const REQUESTS: usize = 2000;
    const CONCURRENCY: usize = 16;
    let deadline = Duration::from_secs(240);
    let server = start(None);
    let addr: SocketAddr = server.addr;
    let queries = Arc::new(caption_queries());
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (queries, next, errors) = (queries.clone(), next.clone(), errors.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= REQUESTS || started.elapsed() > deadline {
                        break;
                    }
                    let body = if i % 5 == 4 {
                        json!({"image_id": "flickr30k_000000001027.npz", "k": 10})
                    } else {
                        json!({"query": queries[i % queries.len()].1, "k": 10})
                    };
                    match http::search(addr, &body) {
                        Ok(r) if r.status == 200 && result_ids(&r.json()).len() == 10 => {}
                        other => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("request {i} failed: {other:?}");
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = next.load(Ordering::Relaxed).min(REQUESTS);
    eprintln!(
        "load test: {sent} requests, {CONCURRENCY} concurrent, {secs:.1}s, {:.0} req/s",
        sent as f64 / secs
    );
    assert_eq!(sent, REQUESTS, "did not finish within {deadline:?}");
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    let h = http::get(addr, "/healthz").unwrap();
    assert_eq!(h.status, 200);
    let m = http::get(addr, "/metrics").unwrap().text();
    assert!(
        m.contains(&format!(
            "lightningdot_http_requests_total{{route=\"/search\",status=\"200\"}} {REQUESTS}"
        )),
        "{m}"
    );
    assert!(m.contains("lightningdot_searches_in_flight 0"));
    server.stop().unwrap();
}
