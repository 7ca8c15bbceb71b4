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

/// The reference's two fine-tune configs (spec §2.8), with their data layout.
fn reference_layout(root: &Path, coco: bool) -> std::path::PathBuf {
    let config = if coco {
        json!({
            "txt_model_type": "bert-base", "txt_model_config": "bert-base-cased",
            "img_model_type": "uniter-base", "img_model_config": "./config/img_base.json",
            "img_checkpoint": "./data/model/uniter-base.pt",
            "itm_global_file": "./data/meta/coco_meta.json",
            "train_batch_size": 64, "val_batch_size": 256, "gradient_accumulation_steps": 1,
            "learning_rate": 2e-05, "warmup_steps": 100, "valid_steps": 500,
            "num_train_epochs": 20, "seed": 42, "output_dir": "/storage/debug_coco",
            "max_txt_len": 60, "conf_th": 0.2, "max_bb": 100, "min_bb": 10, "num_bb": 36,
            "project_dim": 768,
            "train_txt_dbs": ["./data/db/itm_coco_train_base-cased.db", "./data/db/itm_coco_restval_base-cased.db"],
            "train_img_dbs": ["./data/img/coco_train2014/", "./data/img/coco_val2014"],
            "val_txt_db": "./data/db/itm_coco_val_base-cased.db", "val_img_db": "./data/img/coco_val2014/",
            "test_txt_db": "./data/db/itm_coco_test_base-cased.db", "test_img_db": "./data/img/coco_val2014/",
            "project_name": "itm-debug", "num_hard_negatives": 0, "hard_negatives_sampling": "none",
            "inf_minibatch_size": 0, "n_workers": 0, "fp16": true, "compressed_db": false, "pin_mem": true
        })
    } else {
        json!({
            "txt_model_type": "bert-base", "txt_model_config": "bert-base-cased",
            "img_model_type": "uniter-base", "img_model_config": "./config/img_base.json",
            "img_checkpoint": "./data/model/uniter-base.pt",
            "itm_global_file": "./data/meta/flickr_meta.json",
            "train_batch_size": 64, "gradient_accumulation_steps": 1, "learning_rate": 2e-05,
            "warmup_steps": 100, "valid_steps": 500, "num_train_epochs": 15, "seed": 42,
            "output_dir": "/storage/debug_flickr", "max_txt_len": 60, "conf_th": 0.2,
            "max_bb": 100, "min_bb": 10, "num_bb": 36, "project_dim": 768,
            "train_txt_dbs": ["./data/db/itm_flickr30k_train_base-cased.db"],
            "train_img_dbs": ["./data/img/flickr30k/"],
            "val_txt_db": "./data/db/itm_flickr30k_val_base-cased.db", "val_img_db": "./data/img/flickr30k/",
            "test_txt_db": "./data/db/itm_flickr30k_test_base-cased.db", "test_img_db": "./data/img/flickr30k/",
            "project_name": "itm-debug", "num_hard_negatives": 0, "hard_negatives_sampling": "none",
            "inf_minibatch_size": 0, "n_workers": 0, "fp16": true
        })
    };
    for key in ["train_txt_dbs", "train_img_dbs"] {
        for p in config[key].as_array().unwrap() {
            std::fs::create_dir_all(root.join(p.as_str().unwrap())).unwrap();
        }
    }
    for key in ["val_txt_db", "val_img_db", "test_txt_db", "test_img_db"] {
        std::fs::create_dir_all(root.join(config[key].as_str().unwrap())).unwrap();
    }
    std::fs::create_dir_all(root.join("config")).unwrap();
    let path = root.join(if coco {
        "config/coco_ft_config.json"
    } else {
        "config/flickr30k_ft_config.json"
    });
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    path
}

#[test]
fn the_reference_configs_are_read_as_they_are() {
    use lightningdot::train::{Init, Sampling, TrainOverrides, TrainPlan, Warmup};
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("data/model/LightningDot.pt");
    std::fs::create_dir_all(ckpt.parent().unwrap()).unwrap();
    std::fs::write(&ckpt, b"stand-in").unwrap();
    let ov = TrainOverrides {
        checkpoint: Some(ckpt.clone()),
        ..Default::default()
    };

    let flickr = TrainPlan::resolve(&reference_layout(tmp.path(), false), &ov).unwrap();
    let s = &flickr.settings;
    assert_eq!(s.init, Init::Biencoder(ckpt.clone()));
    assert_eq!(
        (s.train_batch_size, s.num_train_epochs, s.seed),
        (64, 15, 42)
    );
    assert_eq!(s.learning_rate, 2e-5);
    assert_eq!(s.warmup, Warmup::Steps(100), "warmup_steps is honoured");
    assert_eq!((s.max_txt_len, s.project_dim), (60, Some(768)));
    assert_eq!(s.hard_negatives_sampling, Sampling::None);
    assert_eq!(
        s.valid_batch_size, 80,
        "the reference's valid_batch_size default"
    );
    assert_eq!(s.dropout, 0.1);
    assert_eq!(
        s.img_config.as_deref(),
        Some("uniter-base"),
        "bundled img_base.json"
    );
    // Paths name the repository root from config/: resolved against the config's parent.
    assert!(
        s.train[0]
            .txt_db
            .ends_with("data/db/itm_flickr30k_train_base-cased.db")
    );
    assert!(s.train[0].txt_db.is_dir());
    assert!(s.test.as_ref().unwrap().img_db.is_dir());
    assert_eq!(flickr.output_dir, Path::new("/storage/debug_flickr"));

    let coco = TrainPlan::resolve(&reference_layout(tmp.path(), true), &ov).unwrap();
    let s = &coco.settings;
    assert_eq!(s.train.len(), 2);
    assert!(s.train[1].img_db.ends_with("data/img/coco_val2014"));
    assert_eq!(s.valid_batch_size, 256, "val_batch_size is honoured");
    assert_eq!(s.num_train_epochs, 20);

    // As it is, without the bi-encoder of train_flickr.sh: the UNITER file is missing here, and
    // even with it the text tower would need pretrained hub weights.
    let plain = TrainPlan::resolve(
        &reference_layout(tmp.path(), false),
        &TrainOverrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(plain.contains("img_checkpoint not found"), "{plain}");
    let uniter = tmp.path().join("data/model/uniter-base.pt");
    std::fs::write(&uniter, b"stand-in").unwrap();
    let plain = TrainPlan::resolve(
        &reference_layout(tmp.path(), false),
        &TrainOverrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        plain.contains("bert-base-cased") && plain.contains("--checkpoint"),
        "{plain}"
    );
}
