//! Pre-training throughput per task at BERT-base size on CPU: one training micro-step of
//! `BiEncoderForPretraining` (forward of both towers fused with `cls_concat add`, the task's head
//! and loss, backward, global-norm clipping at 5.0 and UNITER's AdamW update) for each of
//! mlm, mrfr, mrckl and itm, against the same step in PyTorch (benches/pytorch_pretrain.py) in
//! the same run, with the same thread count.
//!
//! The batch has the reference collate's form, built directly as a [`PretrainHostBatch`] from a
//! fixed-seed generator (no LMDB): 8 captions of 24 word pieces (`[CLS]` + 22 + `[SEP]`) and 8
//! images of 36 regions; MLM masks round(15%) of each caption's inner tokens (80/10/10
//! corruption), MRM round(15%) of each image's regions (features zeroed, `mask_embedding[1]`
//! added); itm uses all 8 pairs. Tokens = text slots + region slots incl. the image `[CLS]` slot
//! and padding ([`PretrainHostBatch::tokens`], the token-bucket measure). The reference's
//! micro-batches hold 10240 such tokens (≈ 60-130 pairs) on a GPU; this is a CPU-sized slice.
//!
//! `cargo bench --bench pretrain` (Python: `LIGHTNINGDOT_PYTHON` or `.venv/bin/python`; without
//! Python / torch only the lightningdot numbers are printed). Knobs:
//! `LIGHTNINGDOT_BENCH_QUICK=1` (tiny towers: 2 layers, hidden 64; 1 warm-up + 2 timed steps),
//! `LIGHTNINGDOT_BENCH_STEPS` (timed steps per task, default 3), `LIGHTNINGDOT_BENCH_WARMUP`
//! (untimed steps before them, default 1), `LIGHTNINGDOT_BENCH_PAIRS` (default 8),
//! `LIGHTNINGDOT_BENCH_TXT_LEN` (default 24), `LIGHTNINGDOT_BENCH_BOXES` (default 36),
//! `LIGHTNINGDOT_BENCH_TASKS` (default `mlm,mrfr,mrckl,itm`; `mrc` also works).
//!
//! Full size on a 2-core machine: about 10-25 s per step and side, so roughly 5-15 minutes for
//! the default 4 tasks x (1 + 3) steps on both sides; peak memory ~2.7 GB (burn) and ~4.5 GB
//! (PyTorch), one after the other (PyTorch runs first and exits before the burn model is built).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use lightningdot::conversion::{param_ids, pretrain_no_decay};
use lightningdot::device::CpuBackend;
use lightningdot::model::{
    BiEncoderConfig, BiEncoderForPretraining, ClsConcat, EncoderConfig, IMG_FEAT_DIM, IMG_POS_DIM,
    PretrainInput, PretrainTask, REGION_CLASSES,
};
use lightningdot::pretrain::{PretrainHostBatch, WarmupLinear};
use lightningdot::tensor_io::HostTensor;
use lightningdot::train::HfAdamW;
use lightningdot::train::data::SplitMix64;

type TB = Autodiff<CpuBackend>;
type Model = BiEncoderForPretraining<TB>;

const CLS: i64 = 101;
const SEP: i64 = 102;
const MASK: i64 = 103;
const MASK_PROB: f64 = 0.15;
/// pretrain.py's config: peak LR 5e-5, 10K warm-up updates of 300K (the LR does not change the
/// cost of a step; it only keeps the update realistic).
const SCHEDULE: (f64, usize, usize) = (5e-5, 10_000, 300_000);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// round(15% of `n`), at least one (the Python side uses the same count).
fn masked_count(n: usize) -> usize {
    ((MASK_PROB * n as f64 + 0.5) as usize).max(1)
}

/// Benchmark sizes.
struct Shape {
    pairs: usize,
    txt_len: usize,
    boxes: usize,
}

/// `k` distinct values of `0..n` (partial Fisher-Yates).
fn choose(rng: &mut SplitMix64, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        let j = i + rng.below(n - i);
        all.swap(i, j);
    }
    all.truncate(k.min(n));
    all.sort_unstable();
    all
}

/// One task's batch in the reference collate form.
fn host_batch(task: PretrainTask, s: &Shape, vocab: usize) -> PretrainHostBatch {
    let (b, l, n) = (s.pairs, s.txt_len, s.boxes);
    let mut rng = SplitMix64::new(0, task as u64, 0);
    let id_hi = 28_000.min(vocab);
    let word = |rng: &mut SplitMix64| (1000 + rng.below(id_hi - 1000)) as i64;
    let mut ids = Vec::with_capacity(b * l);
    for _ in 0..b {
        ids.push(CLS);
        for _ in 1..l - 1 {
            ids.push(word(&mut rng));
        }
        ids.push(SEP);
    }
    let unit = |rng: &mut SplitMix64, len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
            .collect()
    };
    let mut img_feat = unit(&mut rng, b * n * IMG_FEAT_DIM);
    let img_pos_feat = unit(&mut rng, b * n * IMG_POS_DIM);

    let mut batch = PretrainHostBatch {
        task,
        input_ids: HostTensor {
            shape: vec![b, l],
            values: ids,
        },
        attention_mask: HostTensor {
            shape: vec![b, l],
            values: vec![1; b * l],
        },
        img_feat: HostTensor {
            shape: vec![b, n, IMG_FEAT_DIM],
            values: Vec::new(),
        },
        img_pos_feat: HostTensor {
            shape: vec![b, n, IMG_POS_DIM],
            values: img_pos_feat,
        },
        img_attention_mask: HostTensor {
            shape: vec![b, n + 1],
            values: vec![1; b * (n + 1)],
        },
        img_masks: None,
        masked_positions: Vec::new(),
        mlm_targets: Vec::new(),
        feat_targets: None,
        label_targets: None,
    };
    match task {
        PretrainTask::Mlm => {
            // random_word: 80% [MASK], 10% a random word, 10% unchanged.
            for r in 0..b {
                for c in choose(&mut rng, l - 2, masked_count(l - 2)) {
                    let at = r * l + c + 1;
                    batch.masked_positions.push(at as i64);
                    batch.mlm_targets.push(batch.input_ids.values[at]);
                    let u = rng.below(10);
                    if u < 8 {
                        batch.input_ids.values[at] = MASK;
                    } else if u < 9 {
                        batch.input_ids.values[at] = word(&mut rng);
                    }
                }
            }
        }
        PretrainTask::Mrfr | PretrainTask::Mrckl | PretrainTask::Mrc => {
            let mut masks = vec![0i64; b * n];
            let mut targets = Vec::new();
            for r in 0..b {
                for j in choose(&mut rng, n, masked_count(n)) {
                    masks[r * n + j] = 1;
                    batch.masked_positions.push((r * (n + 1) + 1 + j) as i64);
                    let row = &mut img_feat[(r * n + j) * IMG_FEAT_DIM..][..IMG_FEAT_DIM];
                    targets.extend_from_slice(row);
                    row.fill(0.0);
                }
            }
            let m = batch.masked_positions.len();
            if task == PretrainTask::Mrfr {
                batch.feat_targets = Some(HostTensor {
                    shape: vec![m, IMG_FEAT_DIM],
                    values: targets,
                });
            } else {
                let mut soft = unit(&mut rng, m * REGION_CLASSES);
                for row in soft.chunks_mut(REGION_CLASSES) {
                    let sum: f32 = row.iter().sum();
                    row.iter_mut().for_each(|v| *v /= sum);
                }
                batch.label_targets = Some(HostTensor {
                    shape: vec![m, REGION_CLASSES],
                    values: soft,
                });
            }
            batch.img_masks = Some(HostTensor {
                shape: vec![b, n],
                values: masks,
            });
        }
        PretrainTask::Itm => {}
    }
    batch.img_feat.values = img_feat;
    batch
}

/// Tiny towers for `LIGHTNINGDOT_BENCH_QUICK` (vocabulary kept: the ids are real word pieces).
fn tiny(cfg: EncoderConfig) -> EncoderConfig {
    EncoderConfig {
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 256,
        ..cfg
    }
}

/// One micro-step: task loss, backward, clip + AdamW at the schedule's next LR. Returns the
/// updated model and the loss (reading it waits for the step on any backend).
fn step(
    model: Model,
    optim: &mut HfAdamW<TB>,
    sched: &mut WarmupLinear,
    input: &PretrainInput<TB>,
    task: PretrainTask,
) -> (Model, f64) {
    let t = Instant::now();
    let out = model.task_loss(input, task, ClsConcat::Add);
    let grads = GradientsParams::from_grads(out.loss.backward(), &model);
    let backward_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let model = optim.step(sched.step(), model, grads);
    let loss = out.loss.into_scalar().elem::<f64>();
    if std::env::var_os("LIGHTNINGDOT_BENCH_SPLIT").is_some() {
        // Where a step's time goes (CPU backends run eagerly, so the split is meaningful there).
        eprintln!(
            "  {task}: forward + backward {backward_s:.3} s, clip + AdamW {:.3} s",
            t.elapsed().as_secs_f64()
        );
    }
    (model, loss)
}

struct TaskTiming {
    warmup_s: f64,
    s_per_step: f64,
    loss: f64,
}

fn main() {
    let quick = std::env::var("LIGHTNINGDOT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let shape = Shape {
        pairs: env_usize("LIGHTNINGDOT_BENCH_PAIRS", 8).max(1),
        txt_len: env_usize("LIGHTNINGDOT_BENCH_TXT_LEN", 24).max(3),
        boxes: env_usize("LIGHTNINGDOT_BENCH_BOXES", 36).max(1),
    };
    let steps = env_usize("LIGHTNINGDOT_BENCH_STEPS", if quick { 2 } else { 3 }).max(1);
    let warmup = env_usize("LIGHTNINGDOT_BENCH_WARMUP", 1);
    let tasks: Vec<PretrainTask> = std::env::var("LIGHTNINGDOT_BENCH_TASKS")
        .unwrap_or_else(|_| "mlm,mrfr,mrckl,itm".into())
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().parse().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (img, txt) = if quick {
        (
            tiny(EncoderConfig::uniter_base()),
            tiny(EncoderConfig::bert_base_cased()),
        )
    } else {
        (
            EncoderConfig::uniter_base(),
            EncoderConfig::bert_base_cased(),
        )
    };
    let cfg = BiEncoderConfig {
        project_dim: img.hidden_size,
        img,
        txt,
    };
    let vocab = cfg.txt.vocab_size.min(cfg.img.vocab_size);
    let batches: Vec<PretrainHostBatch> = tasks
        .iter()
        .map(|&t| {
            let b = host_batch(t, &shape, vocab);
            b.validate(&cfg)
                .unwrap_or_else(|e| panic!("synthetic {t} batch: {e}"));
            b
        })
        .collect();
    let tokens = batches.first().map(|b| b.tokens()).unwrap_or(0);
    let mlm_s = masked_count(shape.txt_len - 2) * shape.pairs;
    let mrm_s = masked_count(shape.boxes) * shape.pairs;
    let size = if quick {
        "tiny towers (LIGHTNINGDOT_BENCH_QUICK: H 64, 2 layers, 4 heads, FFN 256, vocab 28996)"
    } else {
        "BERT-base towers (H 768, 12 layers, 12 heads, FFN 3072, vocab 28996)"
    };

    // PyTorch first: its process exits (freeing its memory) before the burn model is built, so
    // the two full-size models (~4 GB each with the Adam state) never coexist.
    let python = std::env::var("LIGHTNINGDOT_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    let out = std::env::temp_dir().join(format!(
        "lightningdot-pretrainbench-{}.json",
        std::process::id()
    ));
    let task_list = tasks.iter().map(|t| t.name()).collect::<Vec<_>>().join(",");
    eprintln!("running the PyTorch baseline ({python}) ...");
    let t = Instant::now();
    let status = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/pytorch_pretrain.py"
        ))
        .args(["--out", &out.display().to_string()])
        .args(["--tasks", &task_list])
        .args(["--pairs", &shape.pairs.to_string()])
        .args(["--txt-len", &shape.txt_len.to_string()])
        .args(["--boxes", &shape.boxes.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .args(["--steps", &steps.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--hidden", &cfg.img.hidden_size.to_string()])
        .args(["--layers", &cfg.img.num_hidden_layers.to_string()])
        .args(["--heads", &cfg.img.num_attention_heads.to_string()])
        .args(["--ffn", &cfg.img.intermediate_size.to_string()])
        .args(["--vocab", &vocab.to_string()])
        .args(["--project-dim", &cfg.project_dim.to_string()])
        .status();
    let py_note = match &status {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("{python} benches/pytorch_pretrain.py failed ({s})")),
        Err(e) => Some(format!("cannot run {python}: {e}")),
    };
    let py: Option<serde_json::Value> = py_note
        .is_none()
        .then(|| std::fs::read_to_string(&out).ok())
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok());
    let _ = std::fs::remove_file(&out);
    let py_wall = t.elapsed().as_secs_f64();

    eprintln!("running lightningdot ...");
    let t = Instant::now();
    let device = Default::default();
    TB::seed(&device, 0);
    let mut model = Model::new(&cfg, &device).zero_mask_row();
    let no_decay = param_ids(&model)
        .into_iter()
        .filter(|(path, _)| pretrain_no_decay(path))
        .map(|(_, id)| id)
        .collect();
    let mut optim = HfAdamW::<TB>::uniter(5.0, (0.9, 0.98), 0.01, no_decay);
    let mut sched = WarmupLinear::new(SCHEDULE.0, SCHEDULE.1, SCHEDULE.2);
    let build_s = t.elapsed().as_secs_f64();
    let num_params = model.num_params();
    let mut ours = BTreeMap::new();
    for (&task, hb) in tasks.iter().zip(&batches) {
        let input = hb.to_device::<TB>(&device);
        let t = Instant::now();
        for _ in 0..warmup {
            model = step(model, &mut optim, &mut sched, &input, task).0;
        }
        let warmup_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut loss = f64::NAN;
        for _ in 0..steps {
            let (m, l) = step(model, &mut optim, &mut sched, &input, task);
            model = m;
            loss = l;
        }
        let s_per_step = t.elapsed().as_secs_f64() / steps as f64;
        eprintln!("lightningdot {task}: {s_per_step:.3}s/step (loss {loss:.4})");
        ours.insert(
            task,
            TaskTiming {
                warmup_s,
                s_per_step,
                loss,
            },
        );
    }
    let ours_wall = t.elapsed().as_secs_f64() + build_s;
    let rss = peak_rss_mb();
    drop(model);

    let pyf = |task: PretrainTask, k: &str| {
        py.as_ref()
            .and_then(|v| v["tasks"][task.name()][k].as_f64())
    };
    println!();
    println!(
        "pre-training micro-step (forward + loss + backward + global-norm clip 5.0 + UNITER AdamW), \
         cls_concat add, CPU, {size}"
    );
    println!(
        "batch: {} captions x {} word pieces + {} images x {} regions = {tokens} tokens \
         (text + region slots incl. the image [CLS] slot and padding); masked: {mlm_s} tokens \
         (mlm), {mrm_s} regions (mrfr/mrckl); {warmup} warm-up + {steps} timed step(s) per task",
        shape.pairs, shape.txt_len, shape.pairs, shape.boxes
    );
    println!();
    println!(
        "| {:<6} | {:>13} | {:>13} | {:>7} | {:>13} | {:>13} |",
        "task", "lightningdot", "PyTorch", "ratio", "ldot tok/s", "PyTorch tok/s"
    );
    println!(
        "|{:-<8}|{:-<15}|{:-<15}|{:-<9}|{:-<15}|{:-<15}|",
        "", "", "", "", "", ""
    );
    let tok = tokens as f64;
    for (&task, o) in &ours {
        match pyf(task, "s_per_step") {
            Some(p) => println!(
                "| {:<6} | {:>11.3} s | {:>11.3} s | {:>6.2}x | {:>13.1} | {:>13.1} |",
                task.name(),
                o.s_per_step,
                p,
                o.s_per_step / p,
                tok / o.s_per_step,
                tok / p
            ),
            None => println!(
                "| {:<6} | {:>11.3} s | {:>13} | {:>7} | {:>13.1} | {:>13} |",
                task.name(),
                o.s_per_step,
                "-",
                "-",
                tok / o.s_per_step,
                "-"
            ),
        }
    }
    println!();
    let losses = ours
        .iter()
        .map(|(&t, o)| match pyf(t, "loss") {
            Some(p) => format!("{t} {:.4} / {p:.4}", o.loss),
            None => format!("{t} {:.4}", o.loss),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let warm = ours
        .iter()
        .map(|(&t, o)| match pyf(t, "warmup_s") {
            Some(p) => format!("{t} {:.1}s / {p:.1}s", o.warmup_s),
            None => format!("{t} {:.1}s", o.warmup_s),
        })
        .collect::<Vec<_>>()
        .join(", ");
    println!("last loss (lightningdot / PyTorch, random weights, a sanity check only): {losses}");
    println!("warm-up total (lightningdot / PyTorch): {warm}");
    let py_rss = py
        .as_ref()
        .and_then(|v| v["peak_rss_mb"].as_f64())
        .map(|r| format!("{r:.0} MB"))
        .unwrap_or_else(|| "-".into());
    println!(
        "peak RSS: lightningdot {rss:.0} MB, PyTorch {py_rss}; wall time incl. model build: \
         lightningdot {ours_wall:.0}s, PyTorch {py_wall:.0}s (incl. interpreter start-up)"
    );
    let py_params = py
        .as_ref()
        .and_then(|v| v["params"].as_u64())
        .map(|n| format!("{:.1}M", n as f64 / 1e6))
        .unwrap_or_else(|| "-".into());
    println!(
        "parameters: lightningdot {:.1}M, PyTorch {py_params} (both towers incl. poolers, heads, \
         mask_embedding)",
        num_params as f64 / 1e6
    );
    match (&py, &py_note) {
        (Some(v), _) => println!(
            "ratio = lightningdot / PyTorch time per step (below 1.0 = faster); tok/s = tokens / \
             (time per step). Both on {threads} CPU thread(s): burn-flex, and PyTorch {} \
             (transformers {}, attention {}) with torch.set_num_threads({}); AdamW: \
             HfAdamW::uniter vs torch.optim.AdamW (its default CPU implementation); one model \
             and optimizer carried across the tasks in this order.",
            v["torch"].as_str().unwrap_or("?"),
            v["transformers"].as_str().unwrap_or("?"),
            v["attn_implementation"].as_str().unwrap_or("?"),
            v["threads"].as_u64().unwrap_or(0)
        ),
        (None, note) => println!(
            "PyTorch baseline unavailable ({}); only lightningdot numbers above ({threads} CPU \
             thread(s)). Set LIGHTNINGDOT_PYTHON to a Python with torch + transformers, or \
             `python3 -m venv .venv && .venv/bin/pip install torch transformers`.",
            note.as_deref()
                .unwrap_or("its result file was missing or unreadable")
        ),
    }
}
