//! Resume: a run stopped after epoch 1 and rerun ends with exactly the weights, optimizer
//! trajectory and metrics of an uninterrupted run (hard negatives and gradient accumulation on,
//! so mining, sampling and the schedule are covered); `kill -9` at arbitrary moments of a CLI
//! run, then rerunning the same command, also ends there.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use burn_store::ModuleSnapshot;
use lightningdot::conversion::ModelDir;
use lightningdot::device::CpuBackend;
use lightningdot::train::synthetic::{SyntheticSpec, write_synthetic};
use lightningdot::train::{Dashboard, RunOptions, TrainOverrides, TrainPlan, run};
use serde_json::{Value, json};

type TB = Autodiff<CpuBackend>;

/// burn-flex's RNG (dropout masks) is one per process: runs of parallel tests would draw from
/// it in interleaved order, so the tests of this file take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn config(dir: &Path) -> std::path::PathBuf {
    let spec = SyntheticSpec {
        images: 24,
        train_captions_per_image: 4,
        eval_captions_per_image: 2,
        ..Default::default()
    };
    write_synthetic(
        dir,
        &spec,
        &json!({
            "num_train_epochs": 3, "train_batch_size": 8, "gradient_accumulation_steps": 2,
            "num_hard_negatives": 2, "hard_negatives_sampling": "random"
        }),
    )
    .unwrap()
}

fn plan(cfg: &Path, out: &Path) -> TrainPlan {
    TrainPlan::resolve(
        cfg,
        &TrainOverrides {
            output_dir: Some(out.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn opts(stop: Option<usize>) -> RunOptions {
    RunOptions {
        dashboard: Dashboard::Plain,
        progress_interval: Duration::from_secs(60),
        stop_after_epoch: stop,
        test: false,
    }
}

/// Every parameter of a model directory, by path.
fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let md = ModelDir::open(dir).unwrap();
    let model = md.load::<CpuBackend>(dir, &Default::default()).unwrap();
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
    // Wall-clock time is the only field allowed to differ.
    for e in m["epochs"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("seconds");
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
    assert_eq!(weights(&a.join("best")).len(), wa.len());
}

#[test]
fn stop_after_epoch_1_and_resume_equals_uninterrupted() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (full, split) = (tmp.path().join("full"), tmp.path().join("split"));

    let a = run::<TB>(&plan(&cfg, &full), &opts(None), Default::default()).unwrap();
    assert!(a.complete() && a.resumed_after.is_none());

    let b1 = run::<TB>(&plan(&cfg, &split), &opts(Some(1)), Default::default()).unwrap();
    assert_eq!(b1.epochs_done, 1);
    assert!(!b1.complete());
    let b2 = run::<TB>(&plan(&cfg, &split), &opts(None), Default::default()).unwrap();
    assert_eq!(b2.resumed_after, Some(1));
    assert!(b2.complete());
    assert_same_run(&full, &split);

    // A complete run is left as it is.
    let again = run::<TB>(&plan(&cfg, &split), &opts(None), Default::default()).unwrap();
    assert_eq!(again.resumed_after, Some(3));
    assert_same_run(&full, &split);

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
fn kill_9_at_any_moment_then_rerun_equals_uninterrupted() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (full, killed) = (tmp.path().join("full"), tmp.path().join("killed"));
    run::<TB>(&plan(&cfg, &full), &opts(None), Default::default()).unwrap();

    let cmd = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lightningdot"));
        c.args(["train", "--dashboard", "plain", "--no-test", "--config"])
            .arg(&cfg)
            .arg("--output-dir")
            .arg(&killed)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    // One epoch's duration, to aim the kills inside the epochs.
    let raw: Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("metrics.json")).unwrap()).unwrap();
    let epoch_s = raw["epochs"][0]["seconds"].as_f64().unwrap();
    let committed = || {
        std::fs::read_to_string(killed.join("state/progress.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["epoch"].as_u64())
            .unwrap_or(0)
    };
    // (wait for this many committed epochs, then this long) before each SIGKILL: while
    // loading; mid-epoch 2; right after a commit (mining, next epoch's start); late in epoch 3
    // (validation, commit).
    let plan = [(0, 0.15), (1, 0.5 * epoch_s), (2, 0.0), (2, 0.95 * epoch_s)];
    let (mut kills, mut mid_run_kills) = (0, 0);
    for (wait_epochs, delay_s) in plan {
        let mut child = cmd().spawn().unwrap();
        let t = Instant::now();
        while committed() < wait_epochs
            && child.try_wait().unwrap().is_none()
            && t.elapsed() < Duration::from_secs(300)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_secs_f64(delay_s));
        if child.try_wait().unwrap().is_none() {
            // SIGKILL, not a polite stop.
            child.kill().unwrap();
            let _ = child.wait();
            kills += 1;
            let done = committed();
            println!("killed {delay_s:.2}s after epoch {wait_epochs}; epochs committed: {done}");
            if done > 0 {
                mid_run_kills += 1;
            }
        }
        let _ = child.wait();
    }
    assert!(kills > 0, "the run finished before any kill");
    assert!(mid_run_kills > 0, "no kill after a committed epoch");
    let status = cmd().status().unwrap();
    assert!(status.success());
    assert!(!killed.join(".staging").exists() && !killed.join(".commit").exists());
    assert_same_run(&full, &killed);
}
