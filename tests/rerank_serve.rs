//! The cross-encoder as the query pipeline's second stage (`search` / `serve`
//! `--rerank-checkpoint`): results re-sorted by the UNITER score alone, the first stage's score
//! kept alongside, re-rank time reported separately by the pipeline, the CLI and /metrics.

mod common;
mod fixture_index;
mod http;

use std::process::Command;
use std::sync::Arc;

use common::*;
use fixture_index::*;
use lightningdot::conversion::UniterSource;
use lightningdot::data::{ImgDb, ImgDbOptions, TxtDb};
use lightningdot::device::CpuBackend;
use lightningdot::rerank::{CrossEncoder, UniterReranker};
use lightningdot::retrieval::{Pipeline, PipelineOptions, Query, RetrievalError, SearchService};
use serde_json::json;

type B = CpuBackend;

fn cross() -> CrossEncoder<B> {
    let (model, cfg, _) = UniterSource {
        checkpoint: fixtures().join("uniter_itm/checkpoint/model_step_0.pt"),
        ..Default::default()
    }
    .load::<B>(&Default::default())
    .unwrap();
    CrossEncoder::new(model, cfg, Default::default(), 16)
}

fn reranked(depth: usize, with_texts: bool) -> Pipeline<B> {
    let img_db = ImgDb::open(img_db_dir(), ImgDbOptions::default()).unwrap();
    let txt_db = with_texts.then(|| TxtDb::open(txt_db_dir()).unwrap());
    let reranker = UniterReranker::new(cross(), img_db, txt_db, "uniter:test".into());
    pipeline_with(
        &index_dir(),
        PipelineOptions {
            rerank_depth: depth,
            ..Default::default()
        },
    )
    .with_reranker(Arc::new(reranker))
}

#[test]
fn text_queries_are_resorted_by_the_cross_encoder() {
    let p = reranked(20, true);
    let plain = pipeline();
    let cross = cross();
    let img_db = ImgDb::open(img_db_dir(), ImgDbOptions::default()).unwrap();
    for (_, raw) in caption_queries().into_iter().take(5) {
        let q = Query::Text(raw.clone());
        let r = p.search(&q, 10).unwrap();
        assert_eq!(r.reranker.as_deref(), Some("uniter:test"));
        assert!(r.timings_ms.rerank.is_some());
        assert_eq!(r.results.len(), 10);
        // Scores are the cross-encoder's, best first, computed on the query's own token ids.
        let ids = p.encoder().tokenize(&raw).unwrap();
        for h in &r.results {
            let regions = img_db.get(&h.id).unwrap();
            let want = cross.score_text(&ids, &[&regions]).unwrap()[0];
            assert!(
                (h.score - want).abs() < 1e-5,
                "{}: {} vs {want}",
                h.id,
                h.score
            );
            assert!(h.first_stage_score.is_some());
        }
        assert!(r.results.windows(2).all(|w| w[0].score >= w[1].score));
        // The candidates are the first stage's: depth 20 = every image here, so the re-ranked
        // top 10 are the 10 best UNITER scores of all images.
        let first = plain.search(&q, 20).unwrap();
        let dot: std::collections::HashMap<&str, f32> = first
            .results
            .iter()
            .map(|h| (h.id.as_str(), h.score))
            .collect();
        for h in &r.results {
            assert_eq!(h.first_stage_score, Some(dot[h.id.as_str()]));
        }
    }
}

#[test]
fn image_queries_need_caption_ids() {
    let p = reranked(100, true);
    let r = p
        .search(&Query::Image("flickr30k_000000001076.npz".into()), 5)
        .unwrap();
    assert_eq!(r.results.len(), 5);
    assert!(r.results.windows(2).all(|w| w[0].score >= w[1].score));

    let p = reranked(100, false);
    let err = p
        .search(&Query::Image("flickr30k_000000001076.npz".into()), 5)
        .unwrap_err();
    // The client's request cannot be served by this deployment: a 400, not a server fault.
    assert!(matches!(err, RetrievalError::BadRequest(_)), "{err}");
    assert_eq!(err.class(), lightningdot::retrieval::ErrorClass::BadRequest);
    assert!(err.to_string().contains("--txt-db"), "{err}");
}

#[test]
fn serve_reports_first_stage_and_rerank_latency_separately() {
    let service: Arc<dyn SearchService> = Arc::new(reranked(20, true));
    let server =
        lightningdot::serve::spawn(service, Default::default(), "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let r = http::search(server.addr, &json!({"query": "a dog runs", "k": 3})).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["timings_ms"]["rerank"].as_f64().unwrap() > 0.0);
    assert_eq!(v["reranker"], "uniter:test");
    assert!(v["results"][0]["first_stage_score"].is_number());
    let m = http::get(server.addr, "/metrics").unwrap().text();
    for stage in ["first_stage", "rerank"] {
        let line = format!("lightningdot_stage_duration_seconds_count{{stage=\"{stage}\"}} 1");
        assert!(m.contains(&line), "{line} not in:\n{m}");
    }
    let h = http::get(server.addr, "/healthz").unwrap().json();
    assert_eq!(h["reranker"], "uniter:test");
    server.stop().unwrap();
}

#[test]
fn search_cli_reranks_and_reports_timing() {
    let f = fixtures();
    let out = Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args([
            "search",
            "--index",
            &index_dir().display().to_string(),
            "--checkpoint",
            &f.join(CHECKPOINT).display().to_string(),
            "--img-config",
            &f.join("config/img_model_config.json").display().to_string(),
            "--txt-config",
            &vocab_dir().display().to_string(),
            "--rerank-checkpoint",
            &f.join("uniter_itm/checkpoint/model.pt")
                .display()
                .to_string(),
            "--rerank-k",
            "20",
            "-k",
            "3",
            "--json",
            "a dog runs in the water",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 3);
    assert!(v["timings_ms"]["rerank"].is_number());
    assert_eq!(v["reranker"], "uniter:model.pt");

    // A bi-encoder given as the re-ranker: one clear error line.
    let out = Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args([
            "search",
            "--index",
            &index_dir().display().to_string(),
            "--checkpoint",
            &f.join(CHECKPOINT).display().to_string(),
            "--img-config",
            &f.join("config/img_model_config.json").display().to_string(),
            "--txt-config",
            &vocab_dir().display().to_string(),
            "--rerank-checkpoint",
            &f.join(CHECKPOINT).display().to_string(),
            "a dog",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("not a usable UNITER cross-encoder"),
        "{stderr}"
    );
}
