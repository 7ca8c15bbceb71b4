//! Index + search on the fixture data reproduce the reference evaluation's top-10 of every query
//! (expected/eval_ranks_top10.json), querying by the raw caption text; the index format, ANN and
//! streamed search, the re-rank stage, query validation, and the CLI end to end.

mod common;
mod fixture_index;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::{assert_clean_error, fixtures};
use fixture_index::*;
use lightningdot::retrieval::{
    AnnInfo, BuildOptions, CandidateMode, ErrorClass, IndexMeta, PipelineOptions, Query, Reranker,
    RetrievalError, StoredIndex, VectorDtype, format,
};

fn top_ids(
    p: &lightningdot::retrieval::Pipeline<lightningdot::device::CpuBackend>,
    q: Query,
) -> Vec<String> {
    p.search(&q, 10)
        .unwrap()
        .results
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[test]
fn text_queries_by_raw_caption_reproduce_eval_top10() {
    let want = expected();
    let p = pipeline();
    for (sentid, raw) in caption_queries() {
        assert_eq!(
            top_ids(&p, Query::Text(raw.clone())),
            ids(&want["text_query_top10_images"][&sentid]),
            "caption {sentid}: {raw:?}"
        );
    }
}

#[test]
fn image_queries_reproduce_eval_top10() {
    let want = expected();
    let p = pipeline();
    let images = ids(&want["img_ids_order"]);
    assert_eq!(images.len(), 20);
    for img in images {
        assert_eq!(
            top_ids(&p, Query::Image(img.clone())),
            ids(&want["image_query_top10_texts"][&img]),
            "image {img}"
        );
    }
}

#[test]
fn results_carry_scores_captions_and_timings() {
    let p = pipeline();
    let (sentid, raw) = caption_queries().remove(0);
    let r = p.search(&Query::Text(raw), 20).unwrap();
    assert_eq!(
        r.results.len(),
        20,
        "k larger than the collection gives all of it"
    );
    assert!(r.results.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(r.search, "exact");
    assert!(r.timings_ms.total >= r.timings_ms.encode + r.timings_ms.candidates - 1e-6);
    // Every image has its 5 ground-truth captions, with text.
    for hit in &r.results {
        let caps = hit.captions.as_ref().unwrap();
        assert_eq!(caps.len(), 5, "{}", hit.id);
        assert!(
            caps.iter()
                .all(|c| c.text.as_deref().is_some_and(|t| !t.is_empty()))
        );
    }
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["results"][0]["id"].is_string());
    assert!(json["results"][0]["score"].is_number());
    // An image query returns captions with their text and image.
    let img = p.index().unwrap().image_ids()[0].clone();
    let r = p.search(&Query::Image(img), 3).unwrap();
    assert!(
        r.results
            .iter()
            .all(|h| h.text.is_some() && h.image.is_some())
    );
    let _ = sentid;
}

#[test]
fn index_files_are_documented_format_and_memory_mapped() {
    let dir = index_dir();
    let idx = StoredIndex::open(&dir).unwrap();
    let meta: &IndexMeta = idx.meta();
    assert_eq!(meta.format, format::FORMAT);
    assert_eq!((meta.dim, meta.dtype), (32, VectorDtype::F32));
    assert_eq!(idx.image_ids().len(), 20);
    assert_eq!(idx.text_ids().len(), 100);
    assert!(idx.image_ids()[0].ends_with(".npz"));
    // The box selection is recorded (a re-ranker reads the same regions); indexes written
    // before it was recorded still load.
    let selection = meta.images.selection.expect("box selection recorded");
    assert_eq!(selection, lightningdot::data::ImgDbOptions::default());
    let mut old = serde_json::to_value(meta).unwrap();
    old["images"].as_object_mut().unwrap().remove("selection");
    let old: IndexMeta = serde_json::from_value(old).unwrap();
    assert!(old.images.selection.is_none());
    // Rows of an f32 index are borrowed from the mapping, not copied.
    assert!(matches!(
        idx.image_vectors(0..20),
        std::borrow::Cow::Borrowed(_)
    ));
    // The vectors equal the reference evaluation's embeddings.
    let want = lightningdot::tensor_io::TensorFile::open(
        &fixtures().join("expected/eval_embeddings.safetensors"),
    )
    .unwrap();
    let img_emb = want.f32("img_emb").unwrap();
    let img_order: Vec<String> = serde_json::from_str(&want.metadata()["img_ids"]).unwrap();
    for (j, id) in img_order.iter().enumerate() {
        let row = idx.image_row(id).unwrap();
        let got = idx.image_vectors(row..row + 1);
        let exp = &img_emb.values[j * 32..(j + 1) * 32];
        let d = got
            .iter()
            .zip(exp)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "{id}: {d}");
    }
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(files.contains(&"index.json".to_string()), "{files:?}");
    assert!(
        files.contains(&"vectors.safetensors".to_string()),
        "{files:?}"
    );
}

#[test]
fn f16_index_keeps_rankings_close() {
    let dir = build(
        "fixture-index-f16",
        BuildOptions {
            dtype: VectorDtype::F16,
            ..Default::default()
        },
    );
    let half = pipeline_with(&dir, PipelineOptions::default());
    let full = pipeline();
    let size = std::fs::metadata(dir.join("vectors.safetensors"))
        .unwrap()
        .len();
    let full_size = std::fs::metadata(index_dir().join("vectors.safetensors"))
        .unwrap()
        .len();
    assert!(size < full_size * 6 / 10, "{size} vs {full_size}");
    let mut same_top1 = 0;
    for (_, raw) in caption_queries() {
        let a = full.search(&Query::Text(raw.clone()), 10).unwrap();
        let b = half.search(&Query::Text(raw), 10).unwrap();
        for (x, y) in a.results.iter().zip(&b.results) {
            if x.id == y.id {
                assert!((x.score - y.score).abs() < 1e-2 * x.score.abs().max(1.0));
            }
        }
        same_top1 += usize::from(a.results[0].id == b.results[0].id);
    }
    assert!(same_top1 >= 95, "{same_top1}/100 equal top-1");
}

#[test]
fn streamed_and_ann_search_agree_with_exact() {
    let dir = build(
        "fixture-index-ann",
        BuildOptions {
            ann: Some(AnnInfo {
                connectivity: 8,
                expansion_add: 64,
                expansion_search: 64,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    assert!(dir.join(format::ANN_FILE).is_file());
    let exact = pipeline_with(&dir, PipelineOptions::default());
    let streamed = pipeline_with(
        &dir,
        PipelineOptions {
            mode: CandidateMode::ExactStreamed,
            chunk_rows: 3,
            ..Default::default()
        },
    );
    let ann = pipeline_with(
        &dir,
        PipelineOptions {
            mode: CandidateMode::Ann,
            ..Default::default()
        },
    );
    let want = expected();
    let mut ann_equal = 0;
    for (sentid, raw) in caption_queries() {
        let e = exact.search(&Query::Text(raw.clone()), 10).unwrap();
        let s = streamed.search(&Query::Text(raw.clone()), 10).unwrap();
        assert_eq!(e.results, s.results, "streamed, caption {sentid}");
        assert_eq!(s.search, "exact-streamed");
        let a = ann.search(&Query::Text(raw), 10).unwrap();
        assert_eq!(a.search, "ann");
        // Scores of ANN hits are exact dot products (host loop vs GEMM: summation order).
        for h in &a.results {
            let same = e.results.iter().find(|x| x.id == h.id);
            if let Some(x) = same {
                assert!((x.score - h.score).abs() <= 1e-5 * x.score.abs().max(1.0));
            }
        }
        let got: Vec<String> = a.results.iter().map(|r| r.id.clone()).collect();
        ann_equal += usize::from(got == ids(&want["text_query_top10_images"][&sentid]));
    }
    // 20 nodes and ef 64: the graph search visits everything.
    assert_eq!(ann_equal, 100);
    // An index without a graph refuses --ann with a clear error.
    let no_ann = StoredIndex::open(index_dir()).unwrap();
    assert!(no_ann.ann_path().is_none());
}

/// Scores each candidate by the reverse of its first-stage position, except one id it loves.
struct ReverseReranker {
    favourite: String,
}

impl Reranker for ReverseReranker {
    fn name(&self) -> &str {
        "reverse"
    }

    fn rerank_images(
        &self,
        query_text: &str,
        query_ids: &[u32],
        candidates: &[String],
    ) -> Result<Vec<f32>, RetrievalError> {
        assert!(!query_text.is_empty());
        assert_eq!((query_ids[0], *query_ids.last().unwrap()), (101, 102));
        Ok(candidates
            .iter()
            .enumerate()
            .map(|(i, c)| if *c == self.favourite { 1e6 } else { i as f32 })
            .collect())
    }

    fn rerank_texts(
        &self,
        _image: &str,
        candidates: &[String],
    ) -> Result<Vec<f32>, RetrievalError> {
        Ok(vec![0.0; candidates.len() + 1])
    }
}

#[test]
fn reranker_resorts_first_stage_candidates_by_its_score_alone() {
    let plain = pipeline();
    let (_, raw) = caption_queries().remove(3);
    let first = plain.search(&Query::Text(raw.clone()), 20).unwrap();
    // The favourite is the first stage's last candidate.
    let favourite = first.results[19].id.clone();
    let p = pipeline_with(
        &index_dir(),
        PipelineOptions {
            rerank_depth: 20,
            ..Default::default()
        },
    )
    .with_reranker(Arc::new(ReverseReranker {
        favourite: favourite.clone(),
    }));
    let r = p.search(&Query::Text(raw), 5).unwrap();
    assert_eq!(r.reranker.as_deref(), Some("reverse"));
    assert!(r.timings_ms.rerank.is_some());
    let got: Vec<&str> = r.results.iter().map(|h| h.id.as_str()).collect();
    // Favourite first, then the first stage's candidates 18, 17, 16, 15 (reverse order).
    let want: Vec<&str> = std::iter::once(favourite.as_str())
        .chain((15..19).rev().map(|i| first.results[i].id.as_str()))
        .collect();
    assert_eq!(got, want);
    for h in &r.results {
        let dot = first.results.iter().find(|x| x.id == h.id).unwrap().score;
        assert_eq!(h.first_stage_score, Some(dot));
    }
    // A re-ranker that returns the wrong number of scores is an error, not a panic.
    let img = p.index().unwrap().image_ids()[0].clone();
    let e = p.search(&Query::Image(img), 5).unwrap_err();
    assert!(
        e.to_string()
            .contains("returned 21 scores for 20 candidates"),
        "{e}"
    );
}

#[test]
fn bad_queries_are_client_errors() {
    let p = pipeline();
    let cases: Vec<(Query, usize, &str)> = vec![
        (Query::Text("".into()), 10, "empty"),
        (Query::Text("   ".into()), 10, "empty"),
        (Query::Text("a ".repeat(600)), 10, "characters long"),
        // The tiny text tower has 64 positions.
        (Query::Text("dog ".repeat(70)), 10, "tokens long"),
        (Query::Text("a dog".into()), 0, "k must be"),
        (Query::Text("a dog".into()), 10_001, "k must be"),
        (Query::Image("nope.npz".into()), 10, "unknown image id"),
    ];
    for (q, k, needle) in cases {
        let e = p.search(&q, k).unwrap_err();
        assert!(e.to_string().contains(needle), "{q:?}: {e}");
        assert_ne!(e.class(), ErrorClass::Internal, "{e}");
    }
}

#[test]
fn writes_are_atomic_and_refuse_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("idx");
    let mut meta = StoredIndex::open(index_dir()).unwrap().meta().clone();
    meta.texts = None;
    meta.images.captions = None;
    meta.ann = None;
    let vectors = vec![0.5f32; 20 * 32];
    format::write_index(&out, &meta, &vectors, None, false, |_| Ok(())).unwrap();
    assert!(StoredIndex::open(&out).unwrap().text_ids().is_empty());
    let e = format::write_index(&out, &meta, &vectors, None, false, |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    // A failure while writing leaves the old index and no temp directory behind.
    let e = format::write_index(&out, &meta, &vectors, None, true, |_| {
        Err(RetrievalError::Ann("boom".into()))
    })
    .unwrap_err();
    assert!(e.to_string().contains("boom"));
    StoredIndex::open(&out).unwrap();
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec!["idx".to_string()]);
    // Wrong sizes are refused.
    assert!(format::write_index(&out, &meta, &vectors[1..], None, true, |_| Ok(())).is_err());
    // A directory that is not an index gives one line naming it.
    let e = StoredIndex::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("index.json") && !e.contains('\n'), "{e}");
}

// ---- the binary ----

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run lightningdot")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn cli_convert_index_search_end_to_end() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let index = tmp.path().join("index");
    let out = bin(&[
        "convert",
        &s(&f.join(CHECKPOINT)),
        "--img-config",
        &s(&f.join("config/img_model_config.json")),
        "--txt-config",
        &s(&vocab_dir()),
        "--out",
        &s(&model),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        model.join("vocab.txt").is_file(),
        "convert copies the vocabulary"
    );

    let out = bin(&[
        "index",
        "--checkpoint",
        &s(&model),
        "--img-db",
        &s(&img_db_dir()),
        "--txt-db",
        &s(&txt_db_dir()),
        "--out",
        &s(&index),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("indexed 20 images") && stdout.contains("100 captions"),
        "{stdout}"
    );

    let want = expected();
    let search = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "search",
            "--index",
            &index.to_str().unwrap(),
            "--checkpoint",
        ];
        let m = s(&model);
        args.push(&m);
        args.extend_from_slice(extra);
        let out = bin(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for (sentid, raw) in caption_queries().into_iter().step_by(17) {
        let v = search(&["--json", &raw]);
        let got: Vec<String> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            ids(&want["text_query_top10_images"][&sentid]),
            "{sentid}"
        );
        assert!(v["results"][0]["score"].as_f64().is_some());
    }
    let img = "flickr30k_000000001027.npz";
    let v = search(&["--json", "-k", "10", "--image", img]);
    let got: Vec<String> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ids(&want["image_query_top10_texts"][img]));

    // Human output: a ranked table.
    let m = s(&model);
    let idx = s(&index);
    let out = bin(&[
        "search",
        "--index",
        &idx,
        "--checkpoint",
        &m,
        "-k",
        "3",
        "a dog",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.lines().nth(1).unwrap().trim_start().starts_with("1 "),
        "{text}"
    );

    // One clear error line for each kind of bad input.
    assert_clean_error(
        &bin(&[
            "search",
            "--index",
            &idx,
            "--checkpoint",
            &m,
            "-k",
            "0",
            "a dog",
        ]),
        "k must be between 1 and 10000",
    );
    assert_clean_error(
        &bin(&[
            "search",
            "--index",
            &idx,
            "--checkpoint",
            &m,
            "--image",
            "nope.npz",
        ]),
        "unknown image id",
    );
    assert_clean_error(
        &bin(&["search", "--index", &idx, "--checkpoint", &m, ""]),
        "query is empty",
    );
    assert_clean_error(
        &bin(&[
            "search",
            "--index",
            &s(&tmp.path().join("missing")),
            "--checkpoint",
            &m,
            "x",
        ]),
        "not found",
    );
    // A .pt checkpoint whose --txt-config is a file: no vocabulary to be found.
    assert_clean_error(
        &bin(&[
            "search",
            "--index",
            &idx,
            "--checkpoint",
            &s(&f.join(CHECKPOINT)),
            "--img-config",
            &s(&f.join("config/img_model_config.json")),
            "--txt-config",
            &s(&vocab_dir().join("config.json")),
            "a dog",
        ]),
        "--vocab",
    );
    // ... and with --vocab it works.
    let out = bin(&[
        "search",
        "--index",
        &idx,
        "--checkpoint",
        &s(&f.join(CHECKPOINT)),
        "--img-config",
        &s(&f.join("config/img_model_config.json")),
        "--txt-config",
        &s(&vocab_dir().join("config.json")),
        "--vocab",
        &s(&vocab_dir().join("vocab.txt")),
        "--json",
        "a dog",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean_error(
        &bin(&[
            "index",
            "--checkpoint",
            &m,
            "--img-db",
            &s(&img_db_dir()),
            "--out",
            &idx,
        ]),
        "already exists",
    );
    assert_clean_error(
        &bin(&[
            "search",
            "--index",
            &idx,
            "--checkpoint",
            &m,
            "--ann",
            "a dog",
        ]),
        "no approximate (HNSW) graph",
    );
}
