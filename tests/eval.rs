//! Evaluation against the reference eval_itm.py on the tiny dataset: recall exactly equal for
//! every checkpoint of expected/eval_recall.json, every query's top 10 equal to
//! expected/eval_ranks_top10.json, embeddings within 1e-4 of expected/eval_embeddings.safetensors.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;
use lightningdot::data::{ImgDb, TxtDb};
use lightningdot::device::CpuBackend;
use lightningdot::eval::{EvalConfig, embed_split, evaluate, open_split};
use lightningdot::tensor_io::TensorFile;
use serde_json::Value;

fn config() -> EvalConfig {
    EvalConfig::from_file(&fixtures().join("config/eval_config.json"), None).unwrap()
}

fn expected_recall() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("expected/eval_recall.json")).unwrap(),
    )
    .unwrap()
}

fn recall_of(v: &Value, prefix: &str) -> [f64; 3] {
    let obj = v.as_object().unwrap();
    let (_, r) = obj.iter().find(|(k, _)| k.starts_with(prefix)).unwrap();
    ["1", "5", "10"].map(|k| r[k].as_f64().unwrap())
}

fn run(
    checkpoint: &str,
) -> (
    lightningdot::eval::SplitEmbeddings,
    lightningdot::eval::SplitRecall,
    lightningdot::eval::Rankings,
) {
    let cfg = config();
    let split = &cfg.splits("test").unwrap()[0];
    let (txt_db, img_db) = open_split(split, &cfg).unwrap();
    let device = Default::default();
    let (model, _, _) = tiny_source(checkpoint).load::<CpuBackend>(&device).unwrap();
    // The reference's batch size (80) so batches match its padding, though results must not depend on it.
    let emb = embed_split(&model, &txt_db, &img_db, 80, &device).unwrap();
    let (recall, ranks) = evaluate::<CpuBackend>(&emb, &device);
    (emb, recall, ranks)
}

#[test]
fn recall_equals_reference_for_every_checkpoint() {
    let expected = expected_recall();
    let mut checked = 0;
    for (name, case) in expected.as_object().unwrap() {
        let Some(ckpt) = case.get("checkpoint").and_then(Value::as_str) else {
            continue; // rank_margin
        };
        let (_, r, _) = run(ckpt);
        let ir = recall_of(case, "image_retrieval_recall");
        let tr = recall_of(case, "txt_retrieval_recall");
        assert_eq!(
            [
                r.image_retrieval.r1,
                r.image_retrieval.r5,
                r.image_retrieval.r10
            ],
            ir,
            "{name}: image retrieval"
        );
        assert_eq!(
            [
                r.text_retrieval.r1,
                r.text_retrieval.r5,
                r.text_retrieval.r10
            ],
            tr,
            "{name}: text retrieval"
        );
        assert_eq!(r.n_texts as u64, case["n_texts"].as_u64().unwrap());
        assert_eq!(r.n_images as u64, case["n_images"].as_u64().unwrap());
        checked += 1;
    }
    assert_eq!(checked, 4);
}

#[test]
fn top10_of_every_query_equals_reference() {
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("expected/eval_ranks_top10.json")).unwrap(),
    )
    .unwrap();
    let (emb, _, ranks) = run("checkpoints/biencoder.best.pt");
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(emb.txt_ids, ids(&want["txt_ids_order"]));
    assert_eq!(emb.img_ids, ids(&want["img_ids_order"]));
    assert_eq!(ranks.text_query.len(), 100);
    for (q, got) in &ranks.text_query {
        assert_eq!(
            got,
            &ids(&want["text_query_top10_images"][q]),
            "text query {q}"
        );
    }
    assert_eq!(ranks.image_query.len(), 20);
    for (q, got) in &ranks.image_query {
        assert_eq!(
            got,
            &ids(&want["image_query_top10_texts"][q]),
            "image query {q}"
        );
    }
}

#[test]
fn dumped_embeddings_match_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let out = tmp.path().join("emb.safetensors");
    let json = tmp.path().join("recall.json");
    let status = Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args(["eval", "--config"])
        .arg(f.join("config/eval_config.json"))
        .arg("--checkpoint")
        .arg(f.join("checkpoints/biencoder.best.pt"))
        .arg("--dump-embeddings")
        .arg(&out)
        .arg("--json")
        .arg(&json)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    let got = TensorFile::open(&out).unwrap();
    let want = TensorFile::open(&f.join("expected/eval_embeddings.safetensors")).unwrap();
    assert_eq!(
        got.metadata()["txt_ids"],
        want.metadata()["txt_ids"].replace(", ", ",")
    );
    assert_eq!(
        got.metadata()["img_ids"],
        want.metadata()["img_ids"].replace(", ", ",")
    );
    for name in ["txt_emb", "img_emb", "scores_txt_x_img"] {
        let d = max_abs_diff(name, &got.f32(name).unwrap(), &want.f32(name).unwrap());
        assert!(d <= 1e-4, "{name}: {d}");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(report["test"]["image_retrieval"]["r10"], 0.48);
    assert_eq!(report["test"]["text_retrieval"]["r1"], 0.05);
    assert_eq!(report["test"]["n_images"], 20);
    assert!(report.get("dev").is_none());
}

#[test]
fn batch_size_does_not_change_results() {
    let cfg = config();
    let split = &cfg.splits("test").unwrap()[0];
    let txt_db = TxtDb::open(&split.txt_db).unwrap();
    let img_db = ImgDb::open(&split.img_db, cfg.img_db_options()).unwrap();
    let device = Default::default();
    let (model, _, _) = tiny_source("checkpoints/biencoder.best.pt")
        .load::<CpuBackend>(&device)
        .unwrap();
    let a = embed_split(&model, &txt_db, &img_db, 7, &device).unwrap();
    let b = embed_split(&model, &txt_db, &img_db, 100, &device).unwrap();
    let d = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    assert!(d(&a.txt, &b.txt) < 1e-5 && d(&a.img, &b.img) < 1e-5);
    let (ra, _) = evaluate::<CpuBackend>(&a, &device);
    let (rb, _) = evaluate::<CpuBackend>(&b, &device);
    assert_eq!(ra, rb);
}

fn eval_cli(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args(["eval", "--config"])
        .arg(config)
        .arg("--checkpoint")
        .arg(fixtures().join("checkpoints/biencoder.best.pt"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn assert_error(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {}", lines[0]);
}

/// Writes a variant of the fixture eval config (absolute paths) with `edit` applied.
fn variant(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> std::path::PathBuf {
    let f = fixtures();
    let mut v: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(f.join("config/eval_config.json")).unwrap())
            .unwrap();
    for k in [
        "txt_model_config",
        "img_model_config",
        "test_txt_db",
        "test_img_db",
    ] {
        let p = f.join(v[k].as_str().unwrap());
        v.insert(k.into(), Value::String(p.display().to_string()));
    }
    edit(&mut v);
    let p = dir.join("eval.json");
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    p
}

#[test]
fn bad_eval_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = variant(tmp.path(), |v| {
        v.insert(
            "test_txt_db".into(),
            Value::String("/nonexistent/itm_flickr30k_test.db".into()),
        );
    });
    assert_error(&eval_cli(&cfg, &[]), "/nonexistent/itm_flickr30k_test.db");

    let cfg = variant(tmp.path(), |v| {
        v.remove("test_img_db");
    });
    assert_error(&eval_cli(&cfg, &[]), "test_img_db");
    let intact = variant(tmp.path(), |_| {});
    assert_error(&eval_cli(&intact, &["--split", "dev"]), "no val_txt_db");
    assert_error(&eval_cli(&intact, &["--split", "train"]), "unknown split");

    // A caption whose image is not in the image db: copy the txt_db, point one caption elsewhere.
    let f = fixtures();
    let src = f.join("data/txt_db/itm_flickr_tiny_test_tiny-cased.db");
    let txt = TxtDb::open(&src).unwrap();
    let db = tmp.path().join("txt.db");
    std::fs::create_dir_all(&db).unwrap();
    let mut records = Vec::new();
    let mut txt2img: HashMap<String, String> = HashMap::new();
    for id in txt.ids() {
        let mut r = txt.get(id).unwrap();
        if id == "5003" {
            r.img_fname = "flickr30k_999999999999.npz".into();
        }
        txt2img.insert(id.clone(), r.img_fname.clone());
        records.push((
            id.clone(),
            lightningdot::data::writer::encode_txt_record(&r).unwrap(),
        ));
    }
    lightningdot::data::writer::write_lmdb(&db, &records).unwrap();
    for file in ["id2len.json", "meta.json", "img2txts.json"] {
        std::fs::copy(src.join(file), db.join(file)).unwrap();
    }
    std::fs::write(
        db.join("txt2img.json"),
        serde_json::to_string(&txt2img).unwrap(),
    )
    .unwrap();
    let cfg = variant(tmp.path(), |v| {
        v.insert(
            "test_txt_db".into(),
            Value::String(db.display().to_string()),
        );
    });
    assert_error(&eval_cli(&cfg, &[]), "flickr30k_999999999999.npz");

    // An empty split.
    let empty = tmp.path().join("empty.db");
    std::fs::create_dir_all(&empty).unwrap();
    lightningdot::data::writer::write_lmdb::<&str, &[u8]>(&empty, &[]).unwrap();
    std::fs::write(empty.join("id2len.json"), "{}").unwrap();
    std::fs::write(empty.join("txt2img.json"), "{}").unwrap();
    std::fs::write(empty.join("img2txts.json"), "{}").unwrap();
    std::fs::copy(src.join("meta.json"), empty.join("meta.json")).unwrap();
    let cfg = variant(tmp.path(), |v| {
        v.insert(
            "test_txt_db".into(),
            Value::String(empty.display().to_string()),
        );
    });
    assert_error(&eval_cli(&cfg, &[]), "empty split");
}

#[test]
fn data_root_remaps_relative_paths() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("eval.json");
    std::fs::copy(f.join("config/eval_config.json"), &cfg).unwrap();
    let out = eval_cli(&cfg, &["--data-root", &f.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("R@10  48.00"));
}
