//! Pre-training heads, losses, gradients and one optimizer step against the reference
//! (fixtures pretrain/: `BiEncoderForPretraining` on the tiny model, fp32, dropout off).
//! Tolerances from pretrain/expected/tolerances.json's README suggestions: losses atol 1e-5
//! (+ rtol 1e-6), head outputs atol 1e-4, gradient norms rtol 1e-4 (attention key biases
//! skipped: mathematically zero), parameters after the step atol 1e-6.

mod common;

use std::collections::BTreeMap;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, ParamId};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn_store::ModuleSnapshot;
use common::*;
use lightningdot::conversion::{
    Checkpoint, LoadOptions, TIED_PRETRAIN_KEYS, load_pretraining, manifest_coverage, param_ids,
    pretrain_key_to_burn, pretrain_no_decay, resolve_path,
};
use lightningdot::device::CpuBackend;
use lightningdot::model::{
    BiEncoderConfig, BiEncoderForPretraining, ClsConcat, EncoderConfig, PretrainTask,
};
use lightningdot::pretrain::{PretrainHostBatch, WarmupLinear, task_outputs};
use lightningdot::tensor_io::{HostTensor, TensorFile};
use lightningdot::train::init::with_dropout;
use lightningdot::train::{HfAdamW, global_grad_norm};
use serde_json::Value;

type TB = Autodiff<CpuBackend>;

fn pretrain_dir() -> std::path::PathBuf {
    fixtures().join("pretrain")
}

fn json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(pretrain_dir().join(path)).unwrap()).unwrap()
}

fn model<B: Backend>() -> (BiEncoderForPretraining<B>, BiEncoderConfig) {
    let source = tiny_source("pretrain/checkpoint/model_step_0.pt");
    let ckpt = Checkpoint::open(&source.checkpoint).unwrap();
    let cfg = with_dropout(source.resolve_config(&ckpt).unwrap(), 0.0);
    let (model, report, _) =
        load_pretraining::<B>(&ckpt, &cfg, &Default::default(), LoadOptions::default()).unwrap();
    assert_eq!(report.applied, 119, "121 keys minus the 2 tied aliases");
    (model, cfg)
}

fn batch(task: PretrainTask, cfg: &BiEncoderConfig) -> PretrainHostBatch {
    let file = match task {
        PretrainTask::Mrckl => "mrc",
        t => t.name(),
    };
    let f = TensorFile::open(&pretrain_dir().join(format!("batch/{file}.safetensors"))).unwrap();
    let b = PretrainHostBatch::from_file(&f, task).unwrap();
    b.validate(cfg).unwrap();
    b
}

fn json_key(task: PretrainTask) -> &'static str {
    task.name()
}

#[test]
fn every_task_and_mode_matches_the_reference_outputs() {
    let (model, cfg) = model::<CpuBackend>();
    let expected = TensorFile::open(&pretrain_dir().join("expected/outputs.safetensors")).unwrap();
    let losses = json("expected/losses_and_grads.json");
    let mut got: BTreeMap<String, HostTensor<f32>> = BTreeMap::new();
    for task in PretrainTask::ALL {
        let b = batch(task, &cfg);
        for (name, t) in task_outputs(&model, &b, &ClsConcat::ALL, &Default::default()) {
            got.insert(name, t);
        }
    }
    let mut worst = 0f32;
    for name in expected.names() {
        let want = if name == "mrc.target_class" {
            let t = expected.i64(&name).unwrap();
            HostTensor {
                shape: t.shape,
                values: t.values.iter().map(|&v| v as f32).collect(),
            }
        } else {
            expected.f32(&name).unwrap()
        };
        let g = got
            .get(&name)
            .unwrap_or_else(|| panic!("{name} not produced"));
        let d = max_abs_diff(&name, g, &want);
        let tol = if name.ends_with("loss_task")
            || name.ends_with("kl_row_sum")
            || name.ends_with("loss_row_mean")
        {
            1e-5 + 1e-6 * want.values.iter().fold(0f32, |m, v| m.max(v.abs()))
        } else {
            1e-4
        };
        assert!(d <= tol, "{name}: max abs diff {d:e} > {tol:e}");
        worst = worst.max(d);
    }
    println!(
        "{} outputs compared, worst {worst:.2e}",
        expected.names().len()
    );
    // The reduced objectives (pretrain.py's `loss.mean()`).
    for task in PretrainTask::ALL {
        for mode in ClsConcat::ALL {
            let m = mode.fixture_name();
            let key = if task == PretrainTask::Itm {
                "itm.loss".to_string()
            } else {
                format!("{}.{m}.loss", task.name())
            };
            let m = if task == PretrainTask::Itm {
                "plain"
            } else {
                m
            };
            let exp = losses[json_key(task)][m]["loss"].as_f64().unwrap();
            let g = got[&key].values[0] as f64;
            let tol = 1e-5 + 1e-6 * exp.abs();
            println!("{key}: {g:.9} (reference {exp:.9})");
            assert!((g - exp).abs() <= tol, "{key}: {g} vs {exp}");
        }
    }
}

/// Squared L2 norm of every parameter's gradient, by id.
fn grad_norms<M: Module<TB>>(model: &M, grads: &GradientsParams) -> BTreeMap<ParamId, f64> {
    struct V<'a> {
        grads: &'a GradientsParams,
        out: BTreeMap<ParamId, f64>,
    }
    impl burn::module::ModuleVisitor<TB> for V<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<TB, D>>) {
            if let Some(g) = self.grads.get::<CpuBackend, D>(p.id) {
                let n = g.square().sum().into_scalar().elem::<f64>().sqrt();
                self.out.insert(p.id, n);
            }
        }
    }
    let mut v = V {
        grads,
        out: BTreeMap::new(),
    };
    model.visit(&mut v);
    v.out
}

/// The burn path of a PyTorch name of the pre-training layout (tied aliases → tower path).
fn burn_path(name: &str, ids: &BTreeMap<String, ParamId>) -> String {
    let name = TIED_PRETRAIN_KEYS
        .iter()
        .find(|(h, _)| *h == name)
        .map(|(_, t)| *t)
        .unwrap_or(name);
    let p = pretrain_key_to_burn(name).unwrap_or_else(|| panic!("{name}: no burn path"));
    resolve_path(ids, &p).unwrap_or_else(|| panic!("{name}: {p} is not a parameter"))
}

#[test]
fn every_gradient_norm_matches_the_reference() {
    let (model, cfg) = model::<TB>();
    let ids = param_ids(&model);
    let want = json("expected/losses_and_grads.json");
    let mut checked = 0;
    let mut worst = 0f64;
    for task in PretrainTask::ALL {
        let input = batch(task, &cfg).to_device::<TB>(&Default::default());
        // CMR ignores cls_concat: the fixture has it once.
        let modes: &[ClsConcat] = if task == PretrainTask::Itm {
            &[ClsConcat::None]
        } else {
            &ClsConcat::ALL
        };
        for &mode in modes {
            let w = &want[json_key(task)][mode.fixture_name()];
            let out = model.task_loss(&input, task, mode);
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            let norms = grad_norms(&model, &grads);
            for (name, v) in w["grad_l2_norm"].as_object().unwrap() {
                let id = ids[&burn_path(name, &ids)];
                // null = no gradient; those are checked below via params_without_grad.
                let Some(exp) = v.as_f64() else { continue };
                if name.ends_with("attention.self.key.bias") {
                    continue;
                }
                let got = norms.get(&id).copied().unwrap_or_else(|| {
                    panic!("{task}/{mode}: {name} has no gradient (reference {exp})")
                });
                let rel = (got - exp).abs() / exp.abs().max(1e-30);
                assert!(
                    rel < 1e-4 || (got - exp).abs() < 1e-9,
                    "{task}/{mode}: grad norm of {name} {got} vs {exp} (rel {rel:.1e})"
                );
                worst = worst.max(rel);
                checked += 1;
            }
            for name in w["params_without_grad"].as_array().unwrap() {
                let name = name.as_str().unwrap();
                let id = ids[&burn_path(name, &ids)];
                // Row 0 of mask_embedding is padding upstream: a zero gradient is no gradient.
                let n = norms.get(&id).copied().unwrap_or(0.0);
                assert!(n == 0.0, "{task}/{mode}: {name} has a gradient ({n})");
            }
            let total = global_grad_norm(&model, &grads);
            let exp = w["total_grad_norm"].as_f64().unwrap();
            assert!(
                (total - exp).abs() / exp < 1e-4,
                "{task}/{mode}: total grad norm {total} vs {exp}"
            );
        }
    }
    println!("{checked} gradient norms within rel {worst:.1e}");
    assert!(checked > 1000);
}

/// Row-major values of a parameter in PyTorch orientation.
fn torch_values(model: &BiEncoderForPretraining<TB>, path: &str) -> Vec<f32> {
    let snap = model
        .collect(None, None, false)
        .into_iter()
        .find(|s| s.full_path() == path)
        .unwrap_or_else(|| panic!("{path}"));
    let linear = snap.module_type().unwrap_or_default() == "Struct:Linear";
    let shape = snap.shape.to_vec();
    let v: Vec<f32> = snap.to_data().unwrap().convert::<f32>().into_vec().unwrap();
    if linear && path.ends_with(".weight") && shape.len() == 2 {
        let [r, c] = [shape[0], shape[1]];
        (0..c * r).map(|i| v[(i % r) * c + i / r]).collect()
    } else {
        v
    }
}

#[test]
fn one_optimizer_step_matches_the_reference() {
    let want = json("expected/optimizer_step.json");
    let opts = &want["optimizer"]["options"];
    let (model, cfg) = model::<TB>();
    let ids = param_ids(&model);

    // Weight-decay groups by name, as build_optimizer forms them.
    for (group, decayed) in [("decay", true), ("no_decay", false)] {
        let names = want["param_groups"][group]
            .as_array()
            .unwrap_or_else(|| panic!("param_groups.{group}"));
        for n in names {
            let path = burn_path(n.as_str().unwrap(), &ids);
            assert_eq!(
                !pretrain_no_decay(&path),
                decayed,
                "{n} ({path}) in the wrong weight-decay group"
            );
        }
    }
    let no_decay = ids
        .iter()
        .filter(|(p, _)| pretrain_no_decay(p))
        .map(|(_, id)| *id)
        .collect();

    let input = batch(PretrainTask::Mrfr, &cfg).to_device::<TB>(&Default::default());
    let out = model.task_loss(&input, PretrainTask::Mrfr, ClsConcat::None);
    let loss = out.loss.clone().into_scalar().elem::<f64>();
    assert!((loss - want["loss_before"].as_f64().unwrap()).abs() < 1e-5);
    let grads = GradientsParams::from_grads(out.loss.backward(), &model);

    let mut sched = WarmupLinear::new(
        opts["learning_rate"].as_f64().unwrap(),
        opts["warmup_steps"].as_u64().unwrap() as usize,
        opts["num_train_steps"].as_u64().unwrap() as usize,
    );
    let lr = sched.step();
    assert!((lr - want["lr_this_step"].as_f64().unwrap()).abs() < 1e-15);
    let betas = opts["betas"].as_array().unwrap();
    let mut optim = HfAdamW::<TB>::uniter(
        opts["grad_norm"].as_f64().unwrap(),
        (betas[0].as_f64().unwrap(), betas[1].as_f64().unwrap()),
        opts["weight_decay"].as_f64().unwrap(),
        no_decay,
    );
    let model = optim.step(lr, model, grads);
    let norm = optim.last_grad_norm().unwrap();
    let exp_norm = want["total_grad_norm_before_clip"].as_f64().unwrap();
    assert!(
        (norm - exp_norm).abs() / exp_norm < 1e-4,
        "{norm} vs {exp_norm}"
    );

    let after =
        TensorFile::open(&pretrain_dir().join("expected/optimizer_step_params_after.safetensors"))
            .unwrap();
    let mut worst = 0f32;
    for name in after.names() {
        let exp = after.f32(&name).unwrap();
        let got = torch_values(&model, &burn_path(&name, &ids));
        assert_eq!(got.len(), exp.values.len(), "{name}");
        let d = got
            .iter()
            .zip(&exp.values)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{name}: max abs diff {d:.2e}");
        assert!(d <= 1e-6, "{name} after the step: {d:e}");
        worst = worst.max(d);
    }
    println!("parameters after the step within {worst:.2e}");

    let valid = model.valid();
    let input = batch(PretrainTask::Mrfr, &cfg).to_device::<CpuBackend>(&Default::default());
    let loss_after = valid
        .task_loss(&input, PretrainTask::Mrfr, ClsConcat::None)
        .loss
        .into_scalar()
        .elem::<f64>();
    let exp_after = want["loss_after_one_step"].as_f64().unwrap();
    println!("loss after the step {loss_after:.8} (reference {exp_after:.8})");
    assert!((loss_after - exp_after).abs() < 1e-5);
}

#[test]
fn lr_schedule_matches_the_reference_table() {
    let want = json("expected/optimizer_step.json");
    let table = &want["lr_schedule_examples"];
    let cases = [
        ("fixture", WarmupLinear::new(1e-4, 4, 20)),
        (
            "config/pretrain-alldata-base.json",
            WarmupLinear::new(5e-5, 10_000, 300_000),
        ),
    ];
    let mut n = 0;
    for (key, sched) in cases {
        for (step, lr) in table[key].as_object().unwrap() {
            let step: usize = step.parse().unwrap();
            let exp = lr.as_f64().unwrap();
            let got = sched.lr_at(step);
            assert!(
                (got - exp).abs() <= 1e-12 * exp.abs().max(1e-8),
                "{key} step {step}: {got} vs {exp}"
            );
            n += 1;
        }
    }
    assert!(n > 15);
}

#[test]
fn full_size_pretraining_manifest_is_fully_covered() {
    let entries: Vec<(String, Vec<usize>)> =
        manifest_entries(&fixtures().join("checkpoint-manifests/biencoder_pretraining.json"))
            .into_iter()
            .filter(|(k, _)| !TIED_PRETRAIN_KEYS.iter().any(|(h, _)| h == k))
            .collect();
    let n = entries.len();
    let cfg = BiEncoderConfig {
        img: EncoderConfig::uniter_base(),
        txt: EncoderConfig::bert_base_cased(),
        project_dim: 768,
    };
    let model = BiEncoderForPretraining::<CpuBackend>::new(&cfg, &Default::default());
    let matched = manifest_coverage(&model, entries, pretrain_key_to_burn).unwrap();
    assert_eq!(matched, n);
    println!("{matched} keys + 2 tied aliases cover the full-size pre-training model");
}
