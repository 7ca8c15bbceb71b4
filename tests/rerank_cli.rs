//! The `lightningdot` binary with a UNITER cross-encoder: `eval --rerank-checkpoint`,
//! `eval --uniter-only`, `forward --task uniter-itm`, `convert` of a UNITER file, and one clear
//! error line for each kind of bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use lightningdot::tensor_io::TensorFile;
use serde_json::Value;

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

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn itm(path: &str) -> String {
    s(&fixtures().join("uniter_itm").join(path))
}

fn eval_args(extra: &[&str]) -> Vec<String> {
    let f = fixtures();
    let mut a = vec![
        "eval".to_string(),
        "--config".into(),
        s(&f.join("config/eval_config.json")),
    ];
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn run(args: &[String]) -> Output {
    bin(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn expected() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("uniter_itm/rerank/rerank_recall.json")).unwrap(),
    )
    .unwrap()
}

fn triple(v: &Value, a: &str, b: &str, c: &str) -> [f64; 3] {
    [a, b, c].map(|k| v[k].as_f64().unwrap())
}

#[test]
fn eval_reranks_every_k_into_the_json() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("recall.json");
    let ckpt = s(&fixtures().join("checkpoints/biencoder.best.pt"));
    let rr = itm("checkpoint/model.pt");
    let out = run(&eval_args(&[
        "--checkpoint",
        &ckpt,
        "--rerank-checkpoint",
        &rr,
        "--rerank-k",
        "20,5,10",
        "--json",
        &s(&json),
    ]));
    let stdout = ok(&out);
    assert!(stdout.contains("K = 20"), "{stdout}");
    let v = read_json(&json);
    let test = &v["test"];
    // The first stage is unchanged, the re-ranked recall is added per K (in increasing order).
    assert_eq!(test["image_retrieval"]["r10"], 0.48);
    let keys: Vec<&String> = test["rerank"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 3);
    // Written in increasing K (serde_json's map re-sorts them when parsed, so read the text).
    let text = std::fs::read_to_string(&json).unwrap();
    let at = |k: &str| text.find(&format!("\"{k}\": {{")).unwrap();
    assert!(at("5") < at("10") && at("10") < at("20"), "{text}");
    let want = &expected()["recall_rerank_fp16_scores"];
    for k in ["5", "10", "20"] {
        let got = &test["rerank"][k];
        assert_eq!(
            triple(&got["image_retrieval"], "r1", "r5", "r10"),
            triple(&want["image_retrieval (text query)"][k], "1", "5", "10"),
            "K={k}"
        );
        assert_eq!(
            triple(&got["text_retrieval"], "r1", "r5", "r10"),
            triple(&want["text_retrieval (image query)"][k], "1", "5", "10"),
            "K={k}"
        );
    }
}

#[test]
fn eval_uniter_only_needs_no_bi_encoder_and_dumps_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("recall.json");
    let scores = tmp.path().join("scores.safetensors");
    let rr = itm("checkpoint/model_step_0.pt");
    ok(&run(&eval_args(&[
        "--uniter-only",
        "--rerank-checkpoint",
        &rr,
        "--json",
        &s(&json),
        "--dump-uniter-scores",
        &s(&scores),
    ])));
    let v = read_json(&json);
    let want = &expected()["uniter_only_recall_correct"];
    let got = &v["test"]["uniter_only"];
    assert_eq!(
        triple(&got["image_retrieval"], "r1", "r5", "r10"),
        triple(want, "img_r1", "img_r5", "img_r10")
    );
    assert_eq!(
        triple(&got["text_retrieval"], "r1", "r5", "r10"),
        triple(want, "txt_r1", "txt_r5", "txt_r10")
    );
    assert_eq!(v["test"]["n_texts"], 100);
    assert!(v["test"].get("rerank").is_none());
    let file = TensorFile::open(&scores).unwrap();
    assert_eq!(file.f32("scores_fp32").unwrap().shape, vec![100, 20]);
    assert_eq!(file.f32("scores_fp16").unwrap().shape, vec![100, 20]);
    assert!(file.metadata().contains_key("img_ids"));
}

#[test]
fn forward_uniter_itm_writes_reference_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let want =
        TensorFile::open(&fixtures().join("uniter_itm/expected/outputs.safetensors")).unwrap();
    for (batch, ckpt, extra) in [
        ("eval", "checkpoint/model.pt", vec![]),
        (
            "pairs",
            "checkpoint/model_step_0.pt",
            vec!["--sample-size", "3"],
        ),
    ] {
        let out_file = tmp.path().join(format!("{batch}.safetensors"));
        let inputs = itm(&format!("batch/{batch}.safetensors"));
        let mut args = vec!["forward", "--task", "uniter-itm", "--checkpoint"];
        let ck = itm(ckpt);
        let of = s(&out_file);
        args.extend([
            ck.as_str(),
            "--inputs",
            &inputs,
            "--out",
            &of,
            "--prefix",
            batch,
        ]);
        args.extend(extra);
        ok(&bin(&args));
        let got = TensorFile::open(&out_file).unwrap();
        let mut compared = 0;
        for name in want.names().into_iter().filter(|n| n.starts_with(batch)) {
            let d = max_abs_diff(&name, &got.f32(&name).unwrap(), &want.f32(&name).unwrap());
            assert!(d <= 1e-5, "{name}: {d:e}");
            compared += 1;
        }
        assert_eq!(compared, if batch == "eval" { 7 } else { 8 });
    }
}

#[test]
fn convert_a_uniter_file_then_use_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("reranker");
    let out = bin(&[
        "convert",
        &itm("checkpoint/model_step_0.pt"),
        "--out",
        &s(&dir),
    ]);
    let stdout = ok(&out);
    assert!(stdout.contains("`uniter.` prefix"), "{stdout}");
    let result = tmp.path().join("o.safetensors");
    ok(&bin(&[
        "forward",
        "--task",
        "uniter-itm",
        "--checkpoint",
        &s(&dir),
        "--inputs",
        &itm("batch/eval.safetensors"),
        "--out",
        &s(&result),
    ]));
    let got = TensorFile::open(&result)
        .unwrap()
        .f32("rank_scores")
        .unwrap();
    let want = TensorFile::open(&fixtures().join("uniter_itm/expected/outputs.safetensors"))
        .unwrap()
        .f32("eval.rank_scores")
        .unwrap();
    assert!(max_abs_diff("rank_scores", &got, &want) <= 1e-5);
}

#[test]
fn bad_rerank_inputs_are_clear_errors() {
    let f = fixtures();
    let ckpt = s(&f.join("checkpoints/biencoder.best.pt"));
    // A bi-encoder is not a cross-encoder.
    assert_clean_error(
        &run(&eval_args(&[
            "--checkpoint",
            &ckpt,
            "--rerank-checkpoint",
            &ckpt,
        ])),
        "not a usable UNITER cross-encoder checkpoint: it holds a fine-tuned bi-encoder",
    );
    // A config of the wrong size.
    let rr = itm("checkpoint/model.pt");
    assert_clean_error(
        &run(&eval_args(&[
            "--checkpoint",
            &ckpt,
            "--rerank-checkpoint",
            &rr,
            "--rerank-config",
            "uniter-base",
        ])),
        "shape mismatch for bert.",
    );
    // Bad K.
    assert_clean_error(
        &run(&eval_args(&[
            "--checkpoint",
            &ckpt,
            "--rerank-checkpoint",
            &rr,
            "--rerank-k",
            "10,0",
        ])),
        "--rerank-k",
    );
    // A missing file.
    assert_clean_error(
        &run(&eval_args(&[
            "--checkpoint",
            &ckpt,
            "--rerank-checkpoint",
            "/nonexistent/uniter.pt",
        ])),
        "uniter.pt",
    );
    // A bi-encoder batch fed to the cross-encoder.
    let tmp = tempfile::tempdir().unwrap();
    assert_clean_error(
        &bin(&[
            "forward",
            "--task",
            "uniter-itm",
            "--checkpoint",
            &rr,
            "--inputs",
            &s(&f.join("batch/inputs.safetensors")),
            "--out",
            &s(&tmp.path().join("o")),
        ]),
        "input_ids",
    );
    // Bi-encoder flags with the cross-encoder task.
    assert_clean_error(
        &bin(&[
            "forward",
            "--task",
            "uniter-itm",
            "--checkpoint",
            &rr,
            "--img-config",
            "uniter-base",
            "--inputs",
            &itm("batch/eval.safetensors"),
            "--out",
            &s(&tmp.path().join("o")),
        ]),
        "--uniter-config",
    );
    // A sample size that does not divide the batch.
    assert_clean_error(
        &bin(&[
            "forward",
            "--task",
            "uniter-itm",
            "--checkpoint",
            &rr,
            "--inputs",
            &itm("batch/eval.safetensors"),
            "--out",
            &s(&tmp.path().join("o")),
            "--sample-size",
            "3",
        ]),
        "--sample-size 3",
    );
}
