//! Learning end to end on a synthetic task (captions predictable from the region features,
//! generated in the test): a tiny model from random weights goes from chance to text→image
//! recall@1 above 0.9 on held-out captions (the time is printed, not asserted: speed belongs
//! in benchmarks), and `best/` is a model
//! directory that `lightningdot eval` scores exactly as `metrics.json` records.

use std::process::Command;
use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use lightningdot::device::CpuBackend;
use lightningdot::train::metric::EvalSplit;
use lightningdot::train::synthetic::{SyntheticSpec, write_synthetic};
use lightningdot::train::{Dashboard, RunOptions, TrainOverrides, TrainPlan, run};
use serde_json::{Value, json};

type TB = Autodiff<CpuBackend>;

#[test]
fn learns_from_chance_to_recall_above_0_9() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_synthetic(
        tmp.path(),
        &SyntheticSpec::default(),
        &json!({"num_train_epochs": 40}),
    )
    .unwrap();
    let plan = TrainPlan::resolve(&cfg, &TrainOverrides::default()).unwrap();
    let s = &plan.settings;

    // Chance level before training: the initial (random) model on the dev split.
    let device = Default::default();
    let (model, _, _) = lightningdot::train::init::initial_model::<CpuBackend>(s, &device).unwrap();
    let dev = EvalSplit::open(
        "dev",
        &s.dev.txt_db,
        &s.dev.img_db,
        s.img_db,
        64,
        Default::default(),
    )
    .unwrap();
    let before = dev.recall(&model, &device).unwrap();
    println!(
        "before training: text->image R@1 {:.3}",
        before.image_retrieval.r1
    );
    assert!(before.image_retrieval.r1 < 0.2, "{before:?}");

    let started = Instant::now();
    let opts = RunOptions {
        dashboard: Dashboard::Plain,
        progress_interval: Duration::from_secs(30),
        ..Default::default()
    };
    let summary = run::<TB>(&plan, &opts, Default::default()).unwrap();
    let elapsed = started.elapsed();
    for e in &summary.epochs {
        println!(
            "epoch {}: loss {:.4} dev text->image R@1 {:.3} mean {:.3}",
            e.epoch, e.train_loss, e.dev.image_retrieval.r1, e.dev_mean
        );
    }
    println!("trained in {:.1}s", elapsed.as_secs_f64());
    assert!(summary.complete());
    let last = summary.epochs.last().unwrap();
    assert!(last.dev.image_retrieval.r1 > 0.9, "{:?}", last.dev);
    let test = summary.test.clone().expect("test recall of best/");
    assert!(test.image_retrieval.r1 > 0.9, "{test:?}");

    // metrics.json and best/ as `eval` sees them.
    let out = tmp.path().join("out");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(
        metrics["epochs"].as_array().unwrap().len(),
        s.num_train_epochs
    );
    let json_out = tmp.path().join("eval.json");
    let status = Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args(["eval", "--split", "test", "--config"])
        .arg(&cfg)
        .arg("--checkpoint")
        .arg(out.join("best"))
        .arg("--json")
        .arg(&json_out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let eval: Value = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    assert_eq!(
        eval["test"], metrics["test"],
        "eval of best/ equals metrics.json's test recall"
    );
}
