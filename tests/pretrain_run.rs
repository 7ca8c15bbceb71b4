//! Pre-training runs: a run stopped after its first checkpoint and rerun ends bit-identical to
//! an uninterrupted one (weights, heads, optimizer trajectory, data order and masks, metrics);
//! `kill -9` of the CLI mid-run then a rerun, likewise; bad configs fail with one line before
//! anything is loaded; `forward --task` on the fixture batches from the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use burn_store::ModuleSnapshot;
use common::fixtures;
use lightningdot::conversion::{ModelSource, load_pretraining_source, param_ids};
use lightningdot::device::CpuBackend;
use lightningdot::pretrain::synthetic::write_pretrain_synthetic;
use lightningdot::pretrain::{PretrainOverrides, PretrainPlan, PretrainRunOptions, run};
use lightningdot::tensor_io::TensorFile;
use lightningdot::train::Dashboard;
use lightningdot::train::synthetic::SyntheticSpec;
use serde_json::{Value, json};

type TB = Autodiff<CpuBackend>;

/// burn-flex's RNG (dropout masks) is one per process: the runs of this file take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn small_spec() -> SyntheticSpec {
    SyntheticSpec {
        images: 16,
        train_captions_per_image: 8,
        eval_captions_per_image: 2,
        ..Default::default()
    }
}

fn config(dir: &Path) -> PathBuf {
    write_pretrain_synthetic(
        dir,
        &small_spec(),
        &json!({"num_train_steps": 24, "valid_steps": 8, "warmup_steps": 4,
                "gradient_accumulation_steps": 3, "train_batch_size": 160}),
    )
    .unwrap()
}

fn plan(cfg: &Path, out: &Path) -> PretrainPlan {
    PretrainPlan::resolve(
        cfg,
        &PretrainOverrides {
            output_dir: Some(out.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn opts(stop: Option<usize>) -> PretrainRunOptions {
    PretrainRunOptions {
        dashboard: Dashboard::Plain,
        progress_interval: Duration::from_secs(60),
        stop_after_periods: stop,
    }
}

/// Every parameter (towers and heads) of a pre-training directory, by path.
fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let source = ModelSource {
        checkpoint: dir.to_path_buf(),
        ..Default::default()
    };
    let (model, _, _) =
        load_pretraining_source::<CpuBackend>(&source, &Default::default()).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = model
        .collect(None, None, false)
        .into_iter()
        .map(|s| {
            (
                s.full_path(),
                s.to_data().unwrap().into_vec::<f32>().unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn metrics(out: &Path) -> Value {
    let mut m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    // Wall-clock numbers are the only fields allowed to differ.
    for c in m["checkpoints"].as_array_mut().unwrap() {
        let c = c.as_object_mut().unwrap();
        c.remove("seconds");
        c.remove("tokens_per_second");
    }
    m
}

fn assert_same_run(a: &Path, b: &Path) {
    let (wa, wb) = (weights(&a.join("last")), weights(&b.join("last")));
    assert_eq!(wa.len(), wb.len());
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(va == vb, "{na} differs after resuming");
    }
    assert_eq!(metrics(a), metrics(b));
    // Moments are keyed by parameter id, which differs between runs: compare them by path.
    let moments = |d: &Path| -> Vec<(String, Vec<f32>, Vec<f32>)> {
        let source = ModelSource {
            checkpoint: d.join("last"),
            ..Default::default()
        };
        let (model, _, _) =
            load_pretraining_source::<CpuBackend>(&source, &Default::default()).unwrap();
        let file = TensorFile::open(&d.join("state/optim.safetensors")).unwrap();
        param_ids(&model)
            .into_iter()
            .filter(|(_, id)| file.contains(&format!("{}.exp_avg", id.val())))
            .map(|(path, id)| {
                let get = |k: &str| file.f32(&format!("{}.{k}", id.val())).unwrap().values;
                (path, get("exp_avg"), get("exp_avg_sq"))
            })
            .collect()
    };
    let (ma, mb) = (moments(a), moments(b));
    assert!(ma.len() > 50, "{} parameters with moments", ma.len());
    assert!(ma == mb, "optimizer moments differ");
}

#[test]
fn stop_after_first_checkpoint_and_resume_equals_uninterrupted() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (full, split) = (tmp.path().join("full"), tmp.path().join("split"));

    let a = run::<TB>(&plan(&cfg, &full), &opts(None), Default::default()).unwrap();
    assert!(a.complete() && a.resumed_at.is_none());
    assert_eq!(a.checkpoints.len(), 3);

    let b1 = run::<TB>(&plan(&cfg, &split), &opts(Some(1)), Default::default()).unwrap();
    assert_eq!(b1.steps_done, 8);
    assert!(!b1.complete());
    let b2 = run::<TB>(&plan(&cfg, &split), &opts(None), Default::default()).unwrap();
    assert_eq!(b2.resumed_at, Some(8));
    assert!(b2.complete());
    assert_same_run(&full, &split);
    for step in [8, 16, 24] {
        assert!(split.join(format!("ckpt/step-{step}/heads.mpk")).is_file());
    }

    // Other settings in the same directory are refused, naming the difference.
    let mut other = plan(&cfg, &split);
    other.settings.learning_rate *= 2.0;
    let err = run::<TB>(&other, &opts(None), Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("learning_rate") && err.contains("--output-dir"),
        "{err}"
    );
}

#[test]
fn kill_9_mid_run_then_rerun_equals_uninterrupted() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (full, killed) = (tmp.path().join("full"), tmp.path().join("killed"));
    run::<TB>(&plan(&cfg, &full), &opts(None), Default::default()).unwrap();

    let cmd = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lightningdot"));
        c.args(["pretrain", "--dashboard", "plain", "--config"])
            .arg(&cfg)
            .arg("--output-dir")
            .arg(&killed)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let raw: Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("metrics.json")).unwrap()).unwrap();
    let period_s = raw["checkpoints"][0]["seconds"].as_f64().unwrap();
    let committed = || {
        std::fs::read_to_string(killed.join("state/progress.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["period"].as_u64())
            .unwrap_or(0)
    };
    // (committed periods to wait for, then this long) before each SIGKILL.
    let plan = [(0, 0.2), (1, 0.5 * period_s), (2, 0.0)];
    let (mut kills, mut mid_run_kills) = (0, 0);
    for (wait, delay_s) in plan {
        let mut child = cmd().spawn().unwrap();
        let t = Instant::now();
        while committed() < wait
            && child.try_wait().unwrap().is_none()
            && t.elapsed() < Duration::from_secs(300)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_secs_f64(delay_s));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            let _ = child.wait();
            kills += 1;
            if committed() > 0 {
                mid_run_kills += 1;
            }
        }
        let _ = child.wait();
    }
    assert!(kills > 0, "the run finished before any kill");
    assert!(mid_run_kills > 0, "no kill after a committed checkpoint");
    let status = cmd().status().unwrap();
    assert!(status.success());
    assert!(!killed.join(".staging").exists() && !killed.join(".commit").exists());
    assert_same_run(&full, &killed);
}

/// The CLI's stderr for `pretrain --config` with `edit` applied to the synthetic config.
fn config_error(edit: Value) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_pretrain_synthetic(tmp.path(), &small_spec(), &edit).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args(["pretrain", "--dashboard", "plain", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{edit} was accepted");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !tmp.path().join("pretrain_out/last").exists(),
        "{edit}: trained anyway"
    );
    err
}

#[test]
fn bad_configs_fail_with_one_clear_line() {
    let ds = |tasks: Value, ratios: Value, db: &str| json!([{"name": "syn", "db": [db], "img": ["img"], "tasks": tasks, "mix_ratio": ratios}]);
    let four = json!(["itm", "mlm", "mrfr", "mrckl"]);
    let cases = [
        (
            json!({"train_datasets": ds(json!(["itm", "mlmx"]), json!([1, 1]), "txt_train.db")}),
            "unknown task \"mlmx\"",
        ),
        (
            json!({"train_datasets": ds(four.clone(), json!([0, 0, 0, 0]), "txt_train.db")}),
            "every mix_ratio is 0",
        ),
        (
            json!({"train_datasets": ds(four.clone(), json!([1, 1]), "txt_train.db")}),
            "mix_ratio",
        ),
        (
            json!({"train_datasets": []}),
            "train_datasets is missing or empty",
        ),
        (
            json!({"train_datasets": ds(four.clone(), json!([1, 1, 1, 1]), "no_such.db")}),
            "no_such.db",
        ),
        (json!({"itm_neg_prob": 0.5}), "itm_neg_prob"),
        (json!({"cls_concat": "concat"}), "cls_concat"),
        (json!({"valid_steps": 0}), "valid_steps"),
        (json!({"teacher_checkpoint": "t.pt"}), "teacher_checkpoint"),
        (
            json!({"img_checkpoint": "./data/mode/uniter-base.pt"}),
            "img_checkpoint not found",
        ),
        (json!({"train_batch_size": 8}), "train_batch_size"),
    ];
    for (edit, want) in cases {
        let err = config_error(edit.clone());
        println!("{edit} -> {err}");
        assert!(err.contains(want), "{edit}: {err}");
    }
}

#[test]
fn forward_cli_writes_every_fixture_output() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let expected = TensorFile::open(&f.join("pretrain/expected/outputs.safetensors")).unwrap();
    let mut covered = std::collections::BTreeSet::new();
    for (task, batch) in [
        ("mlm", "mlm"),
        ("mrfr", "mrfr"),
        ("mrckl", "mrc"),
        ("mrc", "mrc"),
        ("itm", "itm"),
    ] {
        let out = tmp.path().join(format!("{task}.safetensors"));
        let o = Command::new(env!("CARGO_BIN_EXE_lightningdot"))
            .args(["forward", "--task", task, "--checkpoint"])
            .arg(f.join("pretrain/checkpoint/model_step_0.pt"))
            .arg("--img-config")
            .arg(f.join("config/img_model_config.json"))
            .arg("--txt-config")
            .arg(f.join("config/txt_model_config"))
            .arg("--inputs")
            .arg(f.join(format!("pretrain/batch/{batch}.safetensors")))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = TensorFile::open(&out).unwrap();
        for name in got.names() {
            if !expected.contains(&name) || name == "mrc.target_class" {
                continue;
            }
            let d = common::max_abs_diff(
                &name,
                &got.f32(&name).unwrap(),
                &expected.f32(&name).unwrap(),
            );
            assert!(d < 1e-4, "{name}: {d}");
            covered.insert(name);
        }
    }
    assert_eq!(
        covered.len() + 1,
        expected.names().len(),
        "every expected output but target_class"
    );

    // A batch of the wrong task and a mode for a non-pre-training task: one clear line each.
    let o = Command::new(env!("CARGO_BIN_EXE_lightningdot"))
        .args(["forward", "--task", "mrfr", "--checkpoint"])
        .arg(f.join("pretrain/checkpoint/model_step_0.pt"))
        .arg("--img-config")
        .arg(f.join("config/img_model_config.json"))
        .arg("--txt-config")
        .arg(f.join("config/txt_model_config"))
        .arg("--inputs")
        .arg(f.join("pretrain/batch/mlm.safetensors"))
        .arg("--out")
        .arg(tmp.path().join("x.safetensors"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("imgs.img_masks"), "{err}");
}

#[test]
fn the_reference_config_is_read_as_it_is() {
    // The released config/pretrain-alldata-base.json, its /db and /img mounts under a data
    // root (empty directories: nothing is opened before training starts).
    let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/pretrain-alldata-base.json");
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    let root = tempfile::tempdir().unwrap();
    for d in raw["train_datasets"]
        .as_array()
        .unwrap()
        .iter()
        .chain(raw["val_datasets"].as_array().unwrap())
    {
        for p in d["db"]
            .as_array()
            .unwrap()
            .iter()
            .chain(d["img"].as_array().unwrap())
        {
            let p = p.as_str().unwrap().trim_start_matches('/');
            std::fs::create_dir_all(root.path().join(p)).unwrap();
        }
    }
    // The config's img_checkpoint has the reference's typo (`data/mode/`).
    std::fs::create_dir_all(root.path().join("data/model")).unwrap();
    std::fs::write(root.path().join("data/model/uniter-base.pt"), b"").unwrap();
    let bert = root.path().join("bert.bin");
    std::fs::write(&bert, b"").unwrap();
    let plan = PretrainPlan::resolve(
        &cfg,
        &PretrainOverrides {
            data_root: Some(root.path().to_path_buf()),
            txt_checkpoint: Some(bert),
            output_dir: Some(root.path().join("out")),
            ..Default::default()
        },
    )
    .unwrap();
    let s = &plan.settings;
    assert_eq!(
        s.cls_concat,
        lightningdot::model::ClsConcat::Add,
        "the paper's default"
    );
    assert_eq!(
        (
            s.train_batch_size,
            s.gradient_accumulation_steps,
            s.num_train_steps
        ),
        (10240, 6, 300_000)
    );
    assert_eq!(s.betas, (0.9, 0.98));
    assert_eq!(s.train.len(), 4);
    assert_eq!(s.train[0].dbs.len(), 2, "coco_cap: train + restval");
    assert_eq!(s.val.len(), 4);
    match &s.init {
        lightningdot::train::Init::Towers { img: Some(p), .. } => {
            assert!(p.ends_with("data/model/uniter-base.pt"), "{}", p.display())
        }
        other => panic!("{other:?}"),
    }
    // The mixture: 144 pool entries, CMR 64, VMLM 40, MRFR 20, MRC-KL 20 (spec §6.1).
    let streams = s.task_streams();
    assert_eq!(streams.len(), 16);
    let total: usize = streams.iter().map(|x| x.3).sum();
    assert_eq!(total, 144);
    let share = |t: &str| -> usize {
        streams
            .iter()
            .filter(|x| x.0.starts_with(&format!("{t}_")))
            .map(|x| x.3)
            .sum()
    };
    assert_eq!(
        [share("itm"), share("mlm"), share("mrfr"), share("mrckl")],
        [64, 40, 20, 20]
    );
}
