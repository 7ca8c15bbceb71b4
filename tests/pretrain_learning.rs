//! Pre-training end to end on a synthetic corpus (generated in the test, captions and region
//! classes predictable from the region features): a tiny model from random weights, all four
//! tasks of the released config mixed per accumulation cycle, a few hundred updates, and every
//! task's validation loss goes down; the output's `last/` is a model directory that `eval`
//! and `train` accept.

use std::process::Command;
use std::time::Duration;

use burn::backend::Autodiff;
use lightningdot::device::CpuBackend;
use lightningdot::model::BiEncoderForPretraining;
use lightningdot::pretrain::data::ValSet;
use lightningdot::pretrain::step::validate;
use lightningdot::pretrain::synthetic::write_pretrain_synthetic;
use lightningdot::pretrain::{PretrainOverrides, PretrainPlan, PretrainRunOptions, run};
use lightningdot::train::Dashboard;
use lightningdot::train::init::{ModelInit, initial_model_with};
use lightningdot::train::synthetic::SyntheticSpec;
use serde_json::json;

type TB = Autodiff<CpuBackend>;

#[test]
fn every_task_loss_goes_down() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_pretrain_synthetic(tmp.path(), &SyntheticSpec::default(), &json!({})).unwrap();
    let plan = PretrainPlan::resolve(&cfg, &PretrainOverrides::default()).unwrap();
    let s = &plan.settings;

    // The initial model's validation, with the run's seed (same initial weights as the run).
    let device = Default::default();
    <CpuBackend as burn::prelude::Backend>::seed(&device, s.seed);
    let mi = ModelInit {
        init: &s.init,
        img_config: s.img_config.as_deref(),
        txt_config: s.txt_config.as_deref(),
        project_dim: s.project_dim,
        dropout: 0.0,
    };
    let (bert, bcfg, _) = initial_model_with::<CpuBackend>(&mi, &device).unwrap();
    let model = BiEncoderForPretraining::with_biencoder(bert, &bcfg, &device).zero_mask_row();
    let sets = ValSet::open_all(s).unwrap();
    let before = validate(&model, &sets, s.cls_concat, &device).unwrap();

    let opts = PretrainRunOptions {
        dashboard: Dashboard::Plain,
        progress_interval: Duration::from_secs(30),
        stop_after_periods: None,
    };
    let summary = run::<TB>(&plan, &opts, Default::default()).unwrap();
    assert!(summary.complete());
    assert_eq!(
        summary.checkpoints.len(),
        4,
        "200 updates, a checkpoint every 50"
    );
    let after = summary.checkpoints.last().unwrap().val.clone().unwrap();
    for (task, b) in &before.tasks {
        let a = &after.tasks[task];
        println!(
            "{task}: validation loss {:.4} -> {:.4}, accuracy {:?} -> {:?}",
            b.loss, a.loss, b.accuracy, a.accuracy
        );
        assert!(a.loss < b.loss, "{task}: loss {} -> {}", b.loss, a.loss);
    }
    assert_eq!(before.tasks.len(), 4);
    // Every task was trained, each cycle on one task.
    let trained: usize = summary
        .checkpoints
        .iter()
        .flat_map(|c| c.train.values())
        .map(|t| t.micro_batches)
        .sum();
    assert_eq!(trained, 200 * 2);
    for c in &summary.checkpoints {
        println!(
            "update {}: {:?}",
            c.step,
            c.train
                .iter()
                .map(|(t, s)| format!("{t} {:.3} x{}", s.mean_loss, s.micro_batches))
                .collect::<Vec<_>>()
        );
    }

    // last/ is a plain model directory for the rest of the tool chain.
    let last = plan.output_dir.join("last");
    assert!(last.join("heads.mpk").is_file());
    assert!(plan.output_dir.join("ckpt/step-200/model.mpk").is_file());
    assert!(plan.output_dir.join("ckpt/step-50/heads.mpk").is_file());
    let eval_cfg = tmp.path().join("ft_config.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args(["eval", "--config"])
        .arg(&eval_cfg)
        .arg("--checkpoint")
        .arg(&last)
        .args(["--split", "dev"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "eval of last/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));

    // Fine-tuning starts from it like from any bi-encoder (the heads are not part of it).
    let init = lightningdot::train::Init::Biencoder(last.clone());
    let mi = ModelInit {
        init: &init,
        img_config: None,
        txt_config: None,
        project_dim: None,
        dropout: 0.1,
    };
    let (_, cfg, what) = initial_model_with::<CpuBackend>(&mi, &Default::default()).unwrap();
    assert_eq!(cfg.project_dim, 32);
    println!("fine-tuning init: {what}");
}
