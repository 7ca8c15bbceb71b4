//! Initial weights: a LightningDOT pre-training file (`LightningDot.pt` layout) loads both
//! towers; without a bi-encoder, a UNITER checkpoint initialises the image tower and an HF BERT
//! `pytorch_model.bin` (found in the `txt_model_config` directory, as `from_pretrained` does)
//! the text tower, with fresh N(0, 0.02) projection heads; such a model trains.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use burn::backend::Autodiff;
use burn_store::ModuleSnapshot;
use common::*;
use lightningdot::conversion::Checkpoint;
use lightningdot::device::CpuBackend;
use lightningdot::model::BiEncoder;
use lightningdot::train::init::initial_model;
use lightningdot::train::synthetic::{SyntheticSpec, write_synthetic};
use lightningdot::train::{Dashboard, Init, RunOptions, TrainOverrides, TrainPlan, run};
use serde_json::json;

fn values(model: &BiEncoder<CpuBackend>) -> BTreeMap<String, Vec<f32>> {
    model
        .collect(None, None, false)
        .into_iter()
        .map(|s| {
            (
                s.full_path(),
                s.to_data().unwrap().into_vec::<f32>().unwrap(),
            )
        })
        .collect()
}

fn file_tensor(ckpt: &Checkpoint, key: &str) -> Vec<f32> {
    ckpt.tensors[key]
        .to_f32(&ckpt.path, key)
        .unwrap()
        .into_vec()
        .unwrap()
}

fn small() -> SyntheticSpec {
    SyntheticSpec {
        images: 8,
        train_captions_per_image: 2,
        eval_captions_per_image: 1,
        ..Default::default()
    }
}

#[test]
fn pretraining_checkpoint_initialises_both_towers() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let cfg = write_synthetic(tmp.path(), &small(), &json!({})).unwrap();
    let plan = TrainPlan::resolve(
        &cfg,
        &TrainOverrides {
            checkpoint: Some(f.join("checkpoints/pretrain/model_step_1.pt")),
            img_config: Some(f.join("config/img_model_config.json").display().to_string()),
            txt_config: Some(f.join("config/txt_model_config").display().to_string()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(plan.settings.init, Init::Biencoder(_)));
    let (model, cfg, what) =
        initial_model::<CpuBackend>(&plan.settings, &Default::default()).unwrap();
    println!("{what}");
    assert_eq!(cfg.project_dim, 32);
    assert_eq!(cfg.txt.hidden_dropout_prob, 0.1, "training dropout");
    // Same weights as the eval path loads from that file.
    let (reference, _, _) = tiny_source("checkpoints/pretrain/model_step_1.pt")
        .load::<CpuBackend>(&Default::default())
        .unwrap();
    assert_eq!(values(&model), values(&reference));
}

#[test]
fn uniter_and_bert_checkpoints_initialise_the_towers_and_train() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let cfg = write_synthetic(tmp.path(), &small(), &json!({"num_train_epochs": 1})).unwrap();
    let uniter = f.join("uniter_itm/checkpoint/model_step_0.pt");
    let plan = TrainPlan::resolve(
        &cfg,
        &TrainOverrides {
            img_checkpoint: Some(uniter.clone()),
            txt_config: Some(f.join("config/txt_model_config").display().to_string()),
            img_config: Some(f.join("config/img_model_config.json").display().to_string()),
            ..Default::default()
        },
    )
    .unwrap();
    let bert = f.join("config/txt_model_config/pytorch_model.bin");
    assert_eq!(
        plan.settings.init,
        Init::Towers {
            img: Some(uniter.clone()),
            txt: Some(bert.clone())
        }
    );
    let (model, _, what) =
        initial_model::<CpuBackend>(&plan.settings, &Default::default()).unwrap();
    println!("{what}");
    let v = values(&model);
    let u = Checkpoint::open(&uniter).unwrap();
    assert_eq!(
        v["image.img_embeddings.img_linear.bias"],
        file_tensor(&u, "uniter.img_embeddings.img_linear.bias")
    );
    assert_eq!(
        v["image.embeddings.word_embeddings.weight"],
        file_tensor(&u, "uniter.embeddings.word_embeddings.weight")
    );
    // The flat BertModel file: no prefix, so it is read directly.
    let bert_file = burn_store::pytorch::PytorchReader::new(&bert).unwrap();
    let bert_tensors = bert_file.into_tensors();
    let word = bert_tensors["embeddings.word_embeddings.weight"]
        .to_data()
        .unwrap()
        .into_vec::<f32>()
        .unwrap();
    assert_eq!(v["text.embeddings.word_embeddings.weight"], word);
    let ln = bert_tensors["encoder.layer.1.output.LayerNorm.weight"]
        .to_data()
        .unwrap()
        .into_vec::<f32>()
        .unwrap();
    assert_eq!(v["text.encoder.layers.1.output_norm.gamma"], ln);
    // Fresh heads: zero biases, small weights.
    assert!(v["text.projection.dense.bias"].iter().all(|&x| x == 0.0));
    let w = &v["image.projection.output.weight"];
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    assert!((0.015..0.025).contains(&std), "projection init std {std}");

    let summary = run::<Autodiff<CpuBackend>>(
        &plan,
        &RunOptions {
            dashboard: Dashboard::Plain,
            progress_interval: Duration::from_secs(60),
            ..Default::default()
        },
        Default::default(),
    )
    .unwrap();
    assert!(summary.complete());
    // The vocabulary of the text config directory travels with the model directories.
    assert!(tmp.path().join("out/best/vocab.txt").is_file());
}
