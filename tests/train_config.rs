//! Bad fine-tune configs and flags fail before any training with one clear line naming the
//! field (checked through the CLI: exit status, a single `error:` line on stderr).

use std::path::Path;
use std::process::Command;

use lightningdot::train::synthetic::{SyntheticSpec, write_synthetic};
use serde_json::{Value, json};

fn small() -> SyntheticSpec {
    SyntheticSpec {
        images: 4,
        train_captions_per_image: 2,
        eval_captions_per_image: 1,
        ..Default::default()
    }
}

/// Runs `train` on a synthetic config with `overrides`, expecting failure; returns stderr.
fn fails(dir: &Path, overrides: Value, extra: &[&str]) -> String {
    let cfg = write_synthetic(dir, &small(), &overrides).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args(["train", "--dashboard", "plain", "--config"])
        .arg(&cfg)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    assert!(!dir.join("out/last").exists(), "nothing may be trained");
    stderr
}

fn one_error_line(stderr: &str, needles: &[&str]) {
    // Progress notes (tracing INFO lines) may precede the error.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" INFO "))
        .collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} missing from: {stderr}");
    }
}

#[test]
fn missing_train_db_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(
        tmp.path(),
        json!({"train_txt_dbs": ["txt_train.db", "nope.db"], "train_img_dbs": ["img", "img"]}),
        &[],
    );
    one_error_line(&e, &["train_txt_dbs[1]", "nope.db", "not found"]);
}

#[test]
fn missing_dev_split_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(
        tmp.path(),
        json!({"val_txt_db": null, "val_img_db": null}),
        &[],
    );
    one_error_line(&e, &["val_txt_db", "dev split"]);
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(tmp.path(), json!({"val_img_db": "imgs_elsewhere"}), &[]);
    one_error_line(&e, &["val_img_db", "imgs_elsewhere", "not found"]);
}

#[test]
fn batch_size_zero_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(tmp.path(), json!({"train_batch_size": 0}), &[]);
    one_error_line(&e, &["train_batch_size must be > 0"]);
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(tmp.path(), json!({}), &["--train-batch-size", "0"]);
    one_error_line(&e, &["--train-batch-size must be > 0"]);
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(tmp.path(), json!({"gradient_accumulation_steps": -2}), &[]);
    one_error_line(&e, &["gradient_accumulation_steps must be > 0"]);
}

#[test]
fn unknown_sampling_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(
        tmp.path(),
        json!({"num_hard_negatives": 2, "hard_negatives_sampling": "hardest"}),
        &[],
    );
    one_error_line(&e, &["hardest", "random, top, top-random, 10-20 or 20-30"]);
    // As a flag, clap reports it (usage lines follow the error line).
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(
        tmp.path(),
        json!({}),
        &["--hard-negatives-sampling", "hardest"],
    );
    assert!(e.starts_with("error: ") && e.contains("hardest"), "{e}");
    // Negatives without a sampling mode, or more than a rank window holds.
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(tmp.path(), json!({"num_hard_negatives": 2}), &[]);
    one_error_line(&e, &["num_hard_negatives is 2", "\"none\""]);
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(
        tmp.path(),
        json!({"num_hard_negatives": 12, "hard_negatives_sampling": "10-20"}),
        &[],
    );
    one_error_line(&e, &["must be <= 10"]);
}

#[test]
fn other_bad_values_are_refused() {
    let cases: Vec<(Value, Vec<&str>, Vec<&str>)> = vec![
        (
            json!({"learning_rate": -1.0}),
            vec![],
            vec!["learning_rate must be a positive number"],
        ),
        (
            json!({"num_train_epochs": null}),
            vec![],
            vec!["num_train_epochs is missing"],
        ),
        (
            json!({"caption_score_weight": 0.5}),
            vec![],
            vec!["caption_score_weight"],
        ),
        (
            json!({"biencoder_checkpoint": "no_such.pt"}),
            vec![],
            vec!["biencoder_checkpoint not found", "no_such.pt"],
        ),
        (
            json!({"max_txt_len": 0}),
            vec![],
            vec!["max_txt_len must be > 0"],
        ),
        (json!({}), vec!["--precision", "fp8"], vec!["fp8"]),
    ];
    for (over, flags, needles) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let e = fails(tmp.path(), over, &flags);
        assert!(e.starts_with("error: "), "{e}");
        for n in needles {
            assert!(e.contains(n), "{n:?} missing from: {e}");
        }
    }
}

#[test]
fn rerun_with_other_settings_in_the_same_output_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_synthetic(tmp.path(), &small(), &json!({"num_train_epochs": 1})).unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lightningdot"))
            .args(["train", "--dashboard", "plain", "--no-test", "--config"])
            .arg(&cfg)
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(run(&[]).status.success());
    let out = run(&["--learning-rate", "0.5"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    one_error_line(
        &e,
        &[
            "cannot resume",
            "learning_rate 0.001 -> 0.5",
            "--output-dir",
        ],
    );
}

#[test]
fn captions_outside_the_text_tower_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut small_vocab = lightningdot::train::synthetic::tiny_encoder_config();
    small_vocab["vocab_size"] = json!(100);
    let path = tmp.path().join("small_vocab.json");
    std::fs::write(&path, small_vocab.to_string()).unwrap();
    let e = fails(
        tmp.path(),
        json!({}),
        &["--txt-config", path.to_str().unwrap()],
    );
    one_error_line(&e, &["token id", "vocabulary has 100 entries"]);
}
