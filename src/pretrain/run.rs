//! The pre-training run (spec §6.5): a `Learner` over [`BiEncoderForPretraining`] with UNITER's
//! AdamW ([`HfAdamW::uniter`]) and the [`WarmupLinear`] schedule, run by [`crate::run`]'s engine
//! with one period per `valid_steps` optimizer updates. The domain parts live here:
//!
//! * every update sums the gradients of `gradient_accumulation_steps` micro-batches of ONE task
//!   (drawn from the mixture at the start of the cycle), clips at `grad_norm` and steps;
//! * a commit writes `last/`, `ckpt/step-N/`, the data position and `metrics.json`; a rerun
//!   with the same settings resumes after the last commit, drawing exactly the batches and
//!   masks the uninterrupted run would have.
//!
//! ```text
//! OUTPUT_DIR/run.json        resolved settings
//! OUTPUT_DIR/last/           pre-training directory after the last period: a model directory
//!                            (`train`, `eval`, `index` read it) + heads.mpk
//! OUTPUT_DIR/ckpt/step-N/    the same after update N (hard links: no copy)
//! OUTPUT_DIR/state/          optimizer moments + progress.json (step, data position)
//! OUTPUT_DIR/metrics.json    per period: train loss per task, validation per task, LR, speed
//! OUTPUT_DIR/train.log       run notes
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::optim::lr_scheduler::LrScheduler;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::LearningRateMetric;
use burn::train::{ItemLazy, Learner, LearningComponentsMarker, SupervisedTraining};
use serde::{Deserialize, Serialize};

use super::data::{LoaderState, TrainData, ValSet};
use super::step::{StepInput, TaskLossMetric, ValLoader, ValMetric, ValReport, Validation};
use super::{PretrainError, PretrainPlan, PretrainSettings, WarmupLinear};
use crate::conversion::{
    HeadsSource, ModelSource, RecordPrecision, load_pretraining_source_with, param_ids,
    pretrain_no_decay, write_pretrain_dir,
};
use crate::model::{BiEncoderConfig, BiEncoderForPretraining, ClsConcat, PretrainTask};
use crate::rng::SplitMix64;
use crate::run::engine::{Launch, TrainItem, ValidItem};
use crate::run::output::{LAST_DIR, PeriodState, link_tree};
use crate::run::{Dashboard, Notes, OutputDir, Period, PeriodEnd, PeriodResult};
use crate::train::init::{ModelInit, initial_model_with, vocab_source, with_dropout};
use crate::train::{HfAdamW, Init, Precision};

/// The learning components of a pre-training run on backend `B`.
pub type PretrainComponents<B> =
    LearningComponentsMarker<B, WarmupLinear, BiEncoderForPretraining<B>, HfAdamW<B>>;

/// `OUTPUT_DIR/ckpt/step-N/`: the pre-training directory after update N.
const CKPT_DIR: &str = "ckpt";

/// Options that do not change what is trained.
#[derive(Debug, Clone)]
pub struct PretrainRunOptions {
    pub dashboard: Dashboard,
    /// Plain mode: seconds between progress lines.
    pub progress_interval: Duration,
    /// Stop cleanly after committing this many checkpoint periods in this process.
    pub stop_after_periods: Option<usize>,
}

impl Default for PretrainRunOptions {
    fn default() -> Self {
        Self {
            dashboard: Dashboard::Auto,
            progress_interval: Duration::from_secs(10),
            stop_after_periods: None,
        }
    }
}

/// `state/progress.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PretrainProgress {
    /// Checkpoint periods committed.
    pub period: usize,
    /// Optimizer updates done (= the reference's `global_step`).
    pub step: usize,
    pub loader: Option<LoaderState>,
}

/// Training numbers of one task over a period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainTaskStats {
    pub micro_batches: usize,
    pub mean_loss: f64,
    pub tokens: usize,
}

/// One committed checkpoint in `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub step: usize,
    pub period: usize,
    pub lr: f64,
    pub train: BTreeMap<String, TrainTaskStats>,
    pub val: Option<ValReport>,
    pub seconds: f64,
    /// Text + region slots (padding included) per second of training.
    pub tokens_per_second: f64,
}

/// `metrics.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PretrainMetrics {
    pub checkpoints: Vec<CheckpointRecord>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct PretrainSummary {
    pub output_dir: std::path::PathBuf,
    /// The update the run resumed after (`None`: started from the initial weights).
    pub resumed_at: Option<usize>,
    pub steps_done: usize,
    pub num_train_steps: usize,
    pub checkpoints: Vec<CheckpointRecord>,
}

impl PretrainSummary {
    pub fn complete(&self) -> bool {
        self.steps_done >= self.num_train_steps
    }
}

/// State shared by the training loader and the loop.
struct LoaderShared {
    data: Mutex<TrainData>,
    /// Micro-batches the next `iter()` serves.
    micro_steps: AtomicUsize,
    mode: ClsConcat,
    config: BiEncoderConfig,
    error: Mutex<Option<PretrainError>>,
}

impl LoaderShared {
    fn set_error(&self, e: PretrainError) {
        if let Ok(mut g) = self.error.lock()
            && g.is_none()
        {
            *g = Some(e);
        }
    }

    fn take_error(&self) -> Result<(), PretrainError> {
        match self.error.lock().ok().and_then(|mut g| g.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The period's micro-batches as a burn [`DataLoader`], collated by a background thread two
/// ahead of the training step.
struct PretrainLoader<B: Backend> {
    shared: Arc<LoaderShared>,
    device: B::Device,
}

struct PretrainIter<B: Backend> {
    rx: Receiver<Result<super::data::MicroBatch, PretrainError>>,
    shared: Arc<LoaderShared>,
    device: B::Device,
    done: usize,
    total: usize,
}

impl<B: Backend> Iterator for PretrainIter<B> {
    type Item = StepInput<B>;

    fn next(&mut self) -> Option<StepInput<B>> {
        match self.rx.recv() {
            Ok(Ok(mb)) => {
                self.done += 1;
                Some(StepInput {
                    input: mb.batch.to_device(&self.device),
                    task: mb.batch.task,
                    mode: self.shared.mode,
                    tokens: mb.batch.tokens(),
                })
            }
            Ok(Err(e)) => {
                self.shared.set_error(e);
                None
            }
            Err(_) => None,
        }
    }
}

impl<B: Backend> DataLoaderIterator<StepInput<B>> for PretrainIter<B> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total)
    }
}

impl<B: Backend> DataLoader<B, StepInput<B>> for PretrainLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<StepInput<B>> + 'a> {
        let shared = self.shared.clone();
        let total = shared.micro_steps.load(Ordering::SeqCst);
        let (tx, rx) = sync_channel(2);
        let producer = shared.clone();
        std::thread::spawn(move || {
            let Ok(mut data) = producer.data.lock() else {
                return;
            };
            for _ in 0..total {
                let item = data.next_batch().and_then(|mb| {
                    mb.batch.validate(&producer.config)?;
                    Ok(mb)
                });
                let failed = item.is_err();
                // A closed channel means the loop stopped (interrupt): the state is then not
                // committed, so running ahead is harmless.
                if tx.send(item).is_err() || failed {
                    break;
                }
            }
        });
        Box::new(PretrainIter::<B> {
            rx,
            shared,
            device: self.device.clone(),
            done: 0,
            total,
        })
    }

    fn num_items(&self) -> usize {
        self.shared.micro_steps.load(Ordering::SeqCst)
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, StepInput<B>>> {
        Arc::new(Self {
            shared: self.shared.clone(),
            device: device.clone(),
        })
    }

    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<B, StepInput<B>>> {
        // Single-device training only.
        Arc::new(Self {
            shared: self.shared.clone(),
            device: self.device.clone(),
        })
    }
}

/// A seed of the backend RNG (dropout) for period `p`.
fn period_seed(seed: u64, p: usize) -> u64 {
    SplitMix64::new(seed, 30, p as u64).next_u64()
}

/// The pre-training domain of the run engine.
struct Pretraining<B: AutodiffBackend> {
    settings: PretrainSettings,
    opts: PretrainRunOptions,
    device: B::Device,
    model_config: BiEncoderConfig,
    vocab_dir: Option<std::path::PathBuf>,
    out: OutputDir,
    shared: Arc<LoaderShared>,
    validation: Arc<Validation>,
    optim: HfAdamW<B>,
    notes: Notes,
    periods_this_process: AtomicUsize,
    state: Mutex<(PretrainProgress, PretrainMetrics)>,
}

/// Per task: loss sum, micro-batches, tokens; and the period's tokens.
#[derive(Default)]
struct PeriodStats {
    per_task: BTreeMap<PretrainTask, (f64, usize, usize)>,
    tokens: usize,
}

impl<B: AutodiffBackend> Pretraining<B> {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, (PretrainProgress, PretrainMetrics)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn num_periods(&self) -> usize {
        self.settings
            .num_train_steps
            .div_ceil(self.settings.valid_steps)
    }
}

impl<B: AutodiffBackend> Period<PretrainComponents<B>> for Pretraining<B> {
    type Error = PretrainError;
    type TrainStats = PeriodStats;
    type ValidStats = ();
    const UNIT: &'static str = "period";
    const APPLY_PARTIAL_GROUP: bool = false;

    fn updates_done(&self) -> usize {
        self.lock_state().0.step
    }

    fn begin(&self, period: usize) {
        let s = &self.settings;
        B::seed(&self.device, period_seed(s.seed, period));
        let step = self.updates_done();
        let updates = s.valid_steps.min(s.num_train_steps.saturating_sub(step));
        self.shared
            .micro_steps
            .store(updates * s.gradient_accumulation_steps, Ordering::SeqCst);
    }

    fn observe_train(&self, stats: &mut PeriodStats, item: &TrainItem<PretrainComponents<B>>) {
        let step = item.clone().sync();
        let e = stats.per_task.entry(step.task).or_default();
        e.0 += step.loss;
        e.1 += 1;
        e.2 += step.tokens;
        stats.tokens += step.tokens;
    }

    fn observe_valid(&self, _: &mut (), _: &ValidItem<PretrainComponents<B>>) {
        // The validation report is collected by `Validation` itself (one item per set).
    }

    fn commit(
        &self,
        done: PeriodResult<'_, PretrainComponents<B>, Self>,
    ) -> Result<PeriodEnd, PretrainError> {
        let s = &self.settings;
        let (period, step) = (done.period, done.updates);
        let val = match self.validation.last.lock().ok().and_then(|mut g| g.take()) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => return Err(PretrainError::Model(format!("validation: {e}"))),
            None => None,
        };
        let record = CheckpointRecord {
            step,
            period,
            lr: done.lr,
            train: done
                .train
                .per_task
                .iter()
                .map(|(t, (sum, n, tok))| {
                    (
                        t.name().to_string(),
                        TrainTaskStats {
                            micro_batches: *n,
                            mean_loss: sum / (*n).max(1) as f64,
                            tokens: *tok,
                        },
                    )
                })
                .collect(),
            val,
            seconds: done.started.elapsed().as_secs_f64(),
            tokens_per_second: done.train.tokens as f64 / done.train_seconds.max(1e-9),
        };

        let (mut progress, mut metrics) = self.lock_state().clone();
        progress.period = period;
        progress.step = step;
        progress.loader = Some(
            self.shared
                .data
                .lock()
                .map_err(|_| PretrainError::Model("data loader panicked".into()))?
                .state(),
        );
        metrics.checkpoints.retain(|c| c.step < step);
        let summary = summarize(&record);
        metrics.checkpoints.push(record);

        let state = PeriodState {
            optimizer: self.optim.state_tensors(),
            progress: &progress,
            metrics: &metrics,
        };
        self.out.commit_period(state, |staging| {
            let last = staging.join(LAST_DIR);
            write_pretrain_dir(
                done.model.clone(),
                &self.model_config,
                RecordPrecision::F32,
                &last,
                true,
                self.vocab_dir.as_deref(),
            )?;
            let ckpt = staging.join(CKPT_DIR);
            let old_ckpt = self.out.path(CKPT_DIR);
            if old_ckpt.is_dir() {
                link_tree(&old_ckpt, &ckpt)?;
            }
            link_tree(&last, &ckpt.join(format!("step-{step}")))?;
            Ok::<(), PretrainError>(())
        })?;
        self.notes.info(&format!(
            "update {step}/{}: {summary}; committed to {}",
            s.num_train_steps,
            self.out.root().display()
        ));
        *self.lock_state() = (progress, metrics);

        let n = self.periods_this_process.fetch_add(1, Ordering::SeqCst) + 1;
        if self.opts.stop_after_periods == Some(n) && step < s.num_train_steps {
            self.notes.info(&format!(
                "stopping after update {step} as asked; rerun to continue"
            ));
            return Ok(PeriodEnd::Stop);
        }
        Ok(PeriodEnd::Continue)
    }

    fn take_error(&self) -> Result<(), PretrainError> {
        self.shared.take_error()
    }

    fn set_error(&self, e: PretrainError) {
        self.shared.set_error(e);
    }
}

impl CheckpointRecord {
    /// One line: train loss per task, the validation numbers, throughput.
    pub fn summary(&self) -> String {
        summarize(self)
    }
}

fn summarize(r: &CheckpointRecord) -> String {
    let train: Vec<String> = r
        .train
        .iter()
        .map(|(t, s)| format!("{t} {:.4}", s.mean_loss))
        .collect();
    let val: Vec<String> = r
        .val
        .as_ref()
        .map(|v| {
            v.tasks
                .iter()
                .map(|(t, s)| match s.accuracy {
                    Some(a) => format!("{t} acc {:.2}%", 100.0 * a),
                    None => format!("{t} loss {:.4}", s.loss),
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "train loss [{}], validation [{}], {:.0} tokens/s",
        train.join(", "),
        val.join(", "),
        r.tokens_per_second
    )
}

/// The initial model (fresh run) with the run's dropout.
fn initial<B: Backend>(
    s: &PretrainSettings,
    device: &B::Device,
) -> Result<(BiEncoderForPretraining<B>, BiEncoderConfig, String), PretrainError> {
    match &s.init {
        Init::Biencoder(path) => {
            let source = ModelSource {
                checkpoint: path.clone(),
                img_config: s.img_config.clone(),
                txt_config: s.txt_config.clone(),
                project_dim: s.project_dim,
                options: Default::default(),
            };
            let (model, cfg, heads) =
                load_pretraining_source_with(&source, |c| with_dropout(c, s.dropout), device)?;
            let what = match heads {
                HeadsSource::Loaded => "bi-encoder and pre-training heads",
                HeadsSource::Initialised => "bi-encoder (pre-training heads freshly initialised)",
            };
            Ok((model, cfg, format!("{what} from {}", path.display())))
        }
        Init::Towers { .. } => {
            let mi = ModelInit {
                init: &s.init,
                img_config: s.img_config.as_deref(),
                txt_config: s.txt_config.as_deref(),
                project_dim: s.project_dim,
                dropout: s.dropout,
            };
            let (bert, cfg, what) = initial_model_with::<B>(&mi, device)?;
            let model = BiEncoderForPretraining::with_biencoder(bert, &cfg, device).zero_mask_row();
            Ok((model, cfg, format!("{what}, pre-training heads random")))
        }
    }
}

/// Pre-trains as `plan` says on `device`, resuming after the last committed checkpoint of
/// `plan.output_dir` when it holds a run with the same settings.
pub fn run<B: AutodiffBackend>(
    plan: &PretrainPlan,
    opts: &PretrainRunOptions,
    device: B::Device,
) -> Result<PretrainSummary, PretrainError> {
    let s = &plan.settings;
    let bf16 = s.precision == Precision::Bf16;
    let (out, notes) = crate::run::open::<B, _>(&plan.output_dir, s, bf16, &device)?;

    let t = Instant::now();
    let mut data = TrainData::open(s)?;
    let val_sets = ValSet::open_all(s)?;
    let names = data.stream_names();
    let sizes = data.corpus_sizes();
    notes.info(&format!(
        "{} task stream(s) [{}]; {} validation set(s); read in {:.1}s. {} updates of {} \
         micro-batch(es) of <= {} tokens, checkpoint every {}, warmup {}, peak lr {:e}, \
         cls_concat {}",
        names.len(),
        names
            .iter()
            .zip(&sizes)
            .map(|(n, k)| format!("{n}: {k} pairs"))
            .collect::<Vec<_>>()
            .join(", "),
        val_sets.len(),
        t.elapsed().as_secs_f64(),
        s.num_train_steps,
        s.gradient_accumulation_steps,
        s.train_batch_size,
        s.valid_steps,
        s.warmup_steps,
        s.learning_rate,
        s.cls_concat
    ));

    let progress: Option<PretrainProgress> = out.progress()?;
    let metrics: PretrainMetrics = out.metrics()?;
    let resume_err = |reason: String| out.resume_error(reason);
    let (model, model_config, vocab_dir) = match &progress {
        Some(p) => {
            let last = out.path(LAST_DIR);
            let source = ModelSource {
                checkpoint: last.clone(),
                ..Default::default()
            };
            let (model, cfg, heads) = load_pretraining_source_with::<B>(&source, |c| c, &device)
                .map_err(|e| resume_err(e.to_string()))?;
            if heads != HeadsSource::Loaded {
                return Err(resume_err(format!("{} has no heads.mpk", last.display())).into());
            }
            if let Some(l) = &p.loader {
                data.restore(l).map_err(|e| resume_err(e.to_string()))?;
            }
            notes.info(&format!(
                "resuming after update {} of {} from {}",
                p.step,
                s.num_train_steps,
                out.root().display()
            ));
            (model, cfg, Some(last))
        }
        None => {
            B::seed(&device, s.seed);
            let (model, cfg, what) = initial::<B>(s, &device)?;
            notes.info(&format!("initial weights: {what}"));
            (model, cfg, vocab_source(&s.init, s.txt_config.as_deref()))
        }
    };
    let no_decay = param_ids(&model)
        .into_iter()
        .filter(|(path, _)| pretrain_no_decay(path))
        .map(|(_, id)| id)
        .collect();
    let optim = HfAdamW::<B>::uniter(s.grad_norm, s.betas, s.weight_decay, no_decay);
    if progress.is_some() {
        optim
            .load_state(&out.optimizer_state()?, &device)
            .map_err(|e| resume_err(format!("optimizer state: {e}")))?;
    }
    let done = progress.as_ref().map(|p| p.step).unwrap_or(0);
    let periods_done = progress.as_ref().map(|p| p.period).unwrap_or(0);
    let resumed_at = progress.as_ref().map(|p| p.step);
    let scheduler = WarmupLinear::new(s.learning_rate, s.warmup_steps, s.num_train_steps)
        .load_record::<B>(done);

    let tasks: Vec<PretrainTask> = {
        let mut t: Vec<PretrainTask> = (0..names.len()).map(|i| data.stream_task(i)).collect();
        t.sort();
        t.dedup();
        t
    };
    let val_tasks: Vec<PretrainTask> = {
        let mut t: Vec<PretrainTask> = s.val.iter().flat_map(|v| v.tasks.iter().copied()).collect();
        t.sort();
        t.dedup();
        t
    };
    let shared = Arc::new(LoaderShared {
        data: Mutex::new(data),
        micro_steps: AtomicUsize::new(0),
        mode: s.cls_concat,
        config: model_config.clone(),
        error: Mutex::new(None),
    });
    let validation = Arc::new(Validation {
        sets: val_sets,
        mode: s.cls_concat,
        last: Mutex::new(None),
    });
    let ctx = Arc::new(Pretraining::<B> {
        settings: s.clone(),
        opts: opts.clone(),
        device: device.clone(),
        model_config,
        vocab_dir,
        out: out.clone(),
        shared: shared.clone(),
        validation: validation.clone(),
        optim: optim.clone(),
        notes: notes.clone(),
        periods_this_process: AtomicUsize::new(0),
        state: Mutex::new((progress.clone().unwrap_or_default(), metrics)),
    });

    if done < s.num_train_steps {
        let train_loader = Arc::new(PretrainLoader::<B> {
            shared: shared.clone(),
            device: device.clone(),
        });
        let valid_loader = Arc::new(ValLoader(validation));
        let mut training = SupervisedTraining::<PretrainComponents<B>>::new(
            out.root(),
            train_loader,
            valid_loader,
        );
        for &t in &tasks {
            training = training.metric_train_numeric(TaskLossMetric::new(t));
        }
        training = training.metric_train_numeric(LearningRateMetric::new());
        for &t in &val_tasks {
            training = training.metric_valid_numeric(ValMetric::for_task(t));
        }
        let how = Launch {
            notes: notes.clone(),
            accumulation: s.gradient_accumulation_steps,
            num_periods: ctx.num_periods(),
            resumed: (periods_done > 0).then_some(periods_done),
            dashboard: opts.dashboard,
            plain: super::renderer::PretrainRenderer::new(opts.progress_interval),
        };
        let learner = Learner::new(model, optim, scheduler);
        crate::run::launch(ctx.clone(), training, learner, how)?;
    }
    let (progress, metrics) = ctx.lock_state().clone();
    Ok(PretrainSummary {
        output_dir: out.root().to_path_buf(),
        resumed_at,
        steps_done: progress.step,
        num_train_steps: s.num_train_steps,
        checkpoints: metrics.checkpoints,
    })
}
