//! The burn-train wiring of fine-tuning: a `Learner` over the bi-encoder
//! ([`TrainStep`](burn::train::TrainStep) in [`super::loss`],
//! [`InferenceStep`](burn::train::InferenceStep) in [`super::metric`]), the [`HfAdamW`]
//! optimizer and the [`LinearWarmupDecay`] schedule, run by [`crate::run`]'s engine with one
//! period per epoch. The domain parts live here:
//!
//! * the loader's permutation and the backend RNG (dropout) depend on `(seed, epoch)` only, so a
//!   resumed run equals an uninterrupted one;
//! * the epoch's trailing partial accumulation group is applied;
//! * a commit writes `last/`, `best/` (when the dev mean recall improved), `epoch-N/` and
//!   `metrics.json` ([`super::checkpoint`]) — burn-train's checkpointer tracks no best model;
//! * hard negatives are mined between epochs.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::optim::lr_scheduler::LrScheduler;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::LearningRateMetric;
use burn::train::{Learner, LearningComponentsMarker, SupervisedTraining};

use super::checkpoint::{BEST_DIR, EpochRecord, MetricsLog, RunProgress};
use super::config::{Precision, TrainPlan, TrainSettings};
use super::data::{ErrorSlot, LoaderShared, TrainLoader as ItmTrainLoader, TrainSet};
use super::hard_negatives::{MiningSettings, mine};
use super::init::vocab_source;
use super::loss::{StepMetric, StepValue};
use super::metric::{DevLoader, DevRecallMetric, EvalSplit, RecallValue};
use super::renderer::PlainRenderer;
use super::{HfAdamW, LinearWarmupDecay, TrainError};
use crate::conversion::{ModelDir, RecordPrecision, write_model_dir_with_vocab};
use crate::eval::SplitRecall;
use crate::model::{BiEncoder, BiEncoderConfig};
use crate::rng::SplitMix64;
use crate::run::engine::{Launch, TrainItem, ValidItem};
use crate::run::output::{LAST_DIR, PeriodState, link_tree};
use crate::run::{Dashboard, Notes, OutputDir, Period, PeriodEnd, PeriodResult};

/// The learning components of a fine-tuning run on backend `B`.
pub type ItmComponents<B> =
    LearningComponentsMarker<B, LinearWarmupDecay, BiEncoder<B>, HfAdamW<B>>;

/// Options that do not change what is trained (so a rerun may differ in them).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dashboard: Dashboard,
    /// Plain mode: seconds between progress lines.
    pub progress_interval: Duration,
    /// Stop cleanly after committing this epoch (a rerun continues from there).
    pub stop_after_epoch: Option<usize>,
    /// Evaluate `best/` on the test split at the end, when the config has one.
    pub test: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            dashboard: Dashboard::Auto,
            progress_interval: Duration::from_secs(10),
            stop_after_epoch: None,
            test: true,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub output_dir: PathBuf,
    /// The epoch the run resumed after (`None`: started from the initial weights).
    pub resumed_after: Option<usize>,
    /// Finished epochs in total.
    pub epochs_done: usize,
    pub num_epochs: usize,
    pub best_epoch: Option<usize>,
    /// Every finished epoch, as in `metrics.json`.
    pub epochs: Vec<EpochRecord>,
    pub test: Option<SplitRecall>,
}

impl TrainSummary {
    pub fn complete(&self) -> bool {
        self.epochs_done >= self.num_epochs
    }
}

/// The fine-tuning domain of the run engine: everything an epoch needs besides what
/// burn-train hands it.
struct FineTune<B: AutodiffBackend> {
    settings: TrainSettings,
    opts: RunOptions,
    device: B::Device,
    model_config: BiEncoderConfig,
    vocab_dir: Option<PathBuf>,
    out: OutputDir,
    shared: Arc<LoaderShared>,
    optim: HfAdamW<B>,
    error: ErrorSlot,
    notes: Notes,
    /// Mutable run state: progress and metrics of the committed epochs.
    state: Mutex<(RunProgress, MetricsLog)>,
}

/// The backend seed of `epoch` (dropout masks).
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    SplitMix64::new(seed, 3, epoch as u64).next_u64()
}

/// Pairs-weighted sum of the step losses (kept on the device until the epoch ends).
#[derive(Default)]
struct LossSum<B: Backend> {
    sum: Option<Tensor<B, 1>>,
    pairs: usize,
}

impl<B: AutodiffBackend> Period<ItmComponents<B>> for FineTune<B> {
    type Error = TrainError;
    type TrainStats = LossSum<B::InnerBackend>;
    type ValidStats = Option<SplitRecall>;
    const UNIT: &'static str = "epoch";
    const APPLY_PARTIAL_GROUP: bool = true;

    fn updates_done(&self) -> usize {
        self.lock_state().0.updates
    }

    fn begin(&self, epoch: usize) {
        B::seed(&self.device, epoch_seed(self.settings.seed, epoch));
        self.shared.epoch.store(epoch, Ordering::SeqCst);
    }

    fn observe_train(&self, stats: &mut Self::TrainStats, item: &TrainItem<ItmComponents<B>>) {
        let l = item.losses.loss.clone().mul_scalar(item.queries as f64);
        stats.sum = Some(match stats.sum.take() {
            Some(t) => t + l,
            None => l,
        });
        stats.pairs += item.queries;
    }

    fn observe_valid(&self, stats: &mut Self::ValidStats, item: &ValidItem<ItmComponents<B>>) {
        *stats = item.recall.clone();
    }

    fn commit(
        &self,
        done: PeriodResult<'_, ItmComponents<B>, Self>,
    ) -> Result<PeriodEnd, TrainError> {
        let s = &self.settings;
        let epoch = done.period;
        let dev = done
            .valid
            .ok_or_else(|| TrainError::Model("validation produced no recall".into()))?;
        let train_loss = done
            .train
            .sum
            .map(|t| t.into_scalar().elem::<f64>() / done.train.pairs.max(1) as f64)
            .unwrap_or(f64::NAN);
        let mean = dev.mean();
        let (mut progress, mut metrics) = self.lock_state().clone();
        // The reference compares with a best value it never updates, so it rewrites "best"
        // every epoch; here best/ changes only when the dev mean recall improves.
        let improved = progress.best_metric.is_none_or(|b| mean > b);
        if improved {
            progress.best_epoch = Some(epoch);
            progress.best_metric = Some(mean);
        }
        progress.epoch = epoch;
        progress.updates = done.updates;
        metrics.epochs.retain(|e| e.epoch < epoch);
        metrics.epochs.push(EpochRecord {
            epoch,
            dev,
            dev_mean: mean,
            train_loss,
            lr: done.lr,
            updates: done.updates,
            seconds: done.started.elapsed().as_secs_f64(),
        });
        metrics.best_epoch = progress.best_epoch;

        let state = PeriodState {
            optimizer: self.optim.state_tensors(),
            progress: &progress,
            metrics: &metrics,
        };
        self.out.commit_period(state, |staging| {
            let last = staging.join(LAST_DIR);
            write_model_dir_with_vocab(
                done.model.clone(),
                &self.model_config,
                RecordPrecision::F32,
                None,
                &last,
                true,
                self.vocab_dir.as_deref(),
            )?;
            if improved {
                link_tree(&last, &staging.join(BEST_DIR))?;
            }
            if s.save_all_epochs {
                link_tree(&last, &staging.join(format!("epoch-{epoch}")))?;
            }
            Ok::<(), TrainError>(())
        })?;
        self.notes.info(&format!(
            "epoch {epoch}: dev mean recall {:.2}{}; train loss {train_loss:.4}; committed to {}",
            100.0 * mean,
            if improved { " (best so far)" } else { "" },
            self.out.root().display()
        ));
        *self.lock_state() = (progress, metrics);

        let num_epochs = s.num_train_epochs;
        if self.opts.stop_after_epoch == Some(epoch) && epoch < num_epochs {
            self.notes.info(&format!(
                "stopping after epoch {epoch} as asked; rerun to continue"
            ));
            return Ok(PeriodEnd::Stop);
        }
        if epoch < num_epochs && s.num_hard_negatives > 0 {
            self.mine_negatives(done.model, epoch + 1)?;
        }
        Ok(PeriodEnd::Continue)
    }

    fn take_error(&self) -> Result<(), TrainError> {
        match self.error.lock().ok().and_then(|mut g| g.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn set_error(&self, e: TrainError) {
        super::data::set_error(&self.error, e);
    }
}

impl<B: AutodiffBackend> FineTune<B> {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, (RunProgress, MetricsLog)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mines the negatives `epoch` trains with, using `model`'s current weights.
    fn mine_negatives(
        &self,
        model: &BiEncoder<B::InnerBackend>,
        epoch: usize,
    ) -> Result<(), TrainError> {
        let s = &self.settings;
        let t = Instant::now();
        let negatives = mine(
            model,
            &self.shared.set,
            &MiningSettings {
                k: s.num_hard_negatives,
                sampling: s.hard_negatives_sampling,
                seed: s.seed,
                epoch,
                batch_size: s.valid_batch_size,
            },
            &self.device,
        )?;
        if let Ok(mut g) = self.shared.negatives.write() {
            *g = Some(Arc::new(negatives));
        }
        self.notes.info(&format!(
            "mined {} hard negative(s) per caption and per image ({}) for epoch {epoch} in {:.1}s",
            s.num_hard_negatives,
            s.hard_negatives_sampling,
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// Token ids and lengths must fit the text tower's tables (an out-of-range id would abort inside
/// the embedding lookup).
fn check_token_ranges<'a>(
    captions: impl Iterator<Item = &'a [u32]>,
    split: &str,
    cfg: &BiEncoderConfig,
) -> Result<(), TrainError> {
    let (mut longest, mut max_id) = (0usize, 0u32);
    for c in captions {
        longest = longest.max(c.len());
        max_id = max_id.max(c.iter().copied().max().unwrap_or(0));
    }
    if longest > cfg.txt.max_position_embeddings {
        return Err(TrainError::Config(format!(
            "a {split} caption has {longest} tokens with [CLS]/[SEP], more than the text tower's \
             max_position_embeddings {} (lower max_txt_len)",
            cfg.txt.max_position_embeddings
        )));
    }
    if max_id as usize >= cfg.txt.vocab_size {
        return Err(TrainError::Config(format!(
            "the {split} captions use token id {max_id} but the text tower's vocabulary has {} \
             entries (txt_db tokenised for another model?)",
            cfg.txt.vocab_size
        )));
    }
    Ok(())
}

/// Trains as `plan` says on `device`. When `plan.output_dir` already holds a run with the same
/// settings, continues after its last committed epoch; when that run is complete, only the
/// final test evaluation is (re)done if missing.
pub fn run<B: AutodiffBackend>(
    plan: &TrainPlan,
    opts: &RunOptions,
    device: B::Device,
) -> Result<TrainSummary, TrainError> {
    let s = &plan.settings;
    let bf16 = s.precision == Precision::Bf16;
    let (out, notes) = crate::run::open::<B, _>(&plan.output_dir, s, bf16, &device)?;
    let error: ErrorSlot = Arc::default();

    let t = Instant::now();
    let set = Arc::new(TrainSet::open(&s.train, s.img_db, s.max_txt_len)?);
    let dev = Arc::new(EvalSplit::open(
        "dev",
        &s.dev.txt_db,
        &s.dev.img_db,
        s.img_db,
        s.valid_batch_size,
        error.clone(),
    )?);
    let accum = s.gradient_accumulation_steps;
    let shared = Arc::new(LoaderShared {
        set: set.clone(),
        negatives: std::sync::RwLock::new(None),
        epoch: std::sync::atomic::AtomicUsize::new(1),
        batch_size: s.train_batch_size,
        seed: s.seed,
        loss_scale: 1.0 / accum as f32,
        error: error.clone(),
    });
    let updates_per_epoch = shared.batches_per_epoch().div_ceil(accum);
    let total = updates_per_epoch * s.num_train_epochs;
    let warmup = s.warmup.steps(total);
    notes.info(&format!(
        "train: {} captions from {} db pair(s) ({} longer than max_txt_len {} dropped); dev: {} \
         captions, {} images; read in {:.1}s. {} updates ({} per epoch, batch {} x {} \
         accumulation), warmup {}, peak lr {:e}",
        set.len(),
        set.num_dbs(),
        set.dropped_long,
        s.max_txt_len,
        dev.num_captions(),
        dev.num_images(),
        t.elapsed().as_secs_f64(),
        total,
        updates_per_epoch,
        s.train_batch_size,
        accum,
        warmup,
        s.learning_rate
    ));

    let progress: Option<RunProgress> = out.progress()?;
    let metrics: MetricsLog = out.metrics()?;
    let resumed_after = progress.as_ref().map(|p| p.epoch);
    let optim = HfAdamW::<B>::new(s.max_grad_norm);
    let (model, model_config, vocab_dir) = match &progress {
        Some(p) => {
            let last = out.path(LAST_DIR);
            let md = ModelDir::open(&last).map_err(|e| out.resume_error(e))?;
            let model = md
                .load::<B>(&last, &device)
                .map_err(|e| out.resume_error(e))?;
            optim
                .load_state(&out.optimizer_state()?, &device)
                .map_err(|e| out.resume_error(format!("optimizer state: {e}")))?;
            notes.info(&format!(
                "resuming after epoch {} of {} from {}",
                p.epoch,
                s.num_train_epochs,
                out.root().display()
            ));
            (model, md.config, Some(last))
        }
        None => {
            // Randomly initialised parts (projection heads, towers without a checkpoint) must
            // not depend on what ran before in the process.
            B::seed(&device, s.seed);
            let (model, cfg, what) = super::init::initial_model::<B>(s, &device)?;
            notes.info(&format!("initial weights: {what}"));
            (model, cfg, vocab_source(&s.init, s.txt_config.as_deref()))
        }
    };
    check_token_ranges(
        set.items().iter().map(|i| i.input_ids.as_slice()),
        "train",
        &model_config,
    )?;
    check_token_ranges(dev.captions(), "dev", &model_config)?;
    let done = progress.as_ref().map(|p| p.epoch).unwrap_or(0);
    let scheduler = LinearWarmupDecay::new(s.learning_rate, warmup, total)
        .load_record::<B>(progress.as_ref().map(|p| p.updates).unwrap_or(0));

    let ctx = Arc::new(FineTune::<B> {
        settings: s.clone(),
        opts: opts.clone(),
        device: device.clone(),
        model_config,
        vocab_dir,
        out: out.clone(),
        shared: shared.clone(),
        optim: optim.clone(),
        error: error.clone(),
        notes: notes.clone(),
        state: Mutex::new((progress.clone().unwrap_or_default(), metrics)),
    });

    if done < s.num_train_epochs {
        if s.num_hard_negatives > 0 {
            // The reference can only train with negatives mined before the first epoch
            // (`--sample_init_hard_negatives`); a resumed run re-mines them from last/.
            ctx.mine_negatives(&model.valid(), done + 1)?;
        }
        let train_loader = Arc::new(ItmTrainLoader::<B>::new(shared.clone(), device.clone()));
        let valid_loader = Arc::new(DevLoader { split: dev.clone() });
        let mut training =
            SupervisedTraining::<ItmComponents<B>>::new(out.root(), train_loader, valid_loader)
                .metric_train_numeric(StepMetric::new(StepValue::Loss))
                .metric_train_numeric(StepMetric::new(StepValue::LossTextToImage))
                .metric_train_numeric(StepMetric::new(StepValue::LossImageToText))
                .metric_train_numeric(StepMetric::new(StepValue::Accuracy))
                .metric_train_numeric(LearningRateMetric::new());
        for v in RecallValue::ALL {
            training = training.metric_valid_numeric(DevRecallMetric::new(v));
        }
        let how = Launch {
            notes: notes.clone(),
            accumulation: s.gradient_accumulation_steps,
            num_periods: s.num_train_epochs,
            resumed: resumed_after,
            dashboard: opts.dashboard,
            plain: PlainRenderer::new(opts.progress_interval),
        };
        let learner = Learner::new(model, optim, scheduler);
        crate::run::launch(ctx.clone(), training, learner, how)?;
    }

    let (progress, mut metrics) = ctx.lock_state().clone();
    let complete = progress.epoch >= s.num_train_epochs;
    if complete
        && opts.test
        && metrics.test.is_none()
        && let Some(t) = &s.test
    {
        let best = out.path(BEST_DIR);
        let md = ModelDir::open(&best)?;
        let model = md.load::<B::InnerBackend>(&best, &device)?;
        let split = EvalSplit::open(
            "test",
            &t.txt_db,
            &t.img_db,
            s.img_db,
            s.valid_batch_size,
            error.clone(),
        )?;
        let started = Instant::now();
        let r = split.recall(&model, &device)?;
        notes.info(&format!(
            "test recall of best/ (epoch {}): mean {:.2} ({:.1}s)",
            progress.best_epoch.unwrap_or(0),
            100.0 * r.mean(),
            started.elapsed().as_secs_f64()
        ));
        metrics.test = Some(r);
        out.write_metrics(&metrics)?;
    }
    Ok(TrainSummary {
        output_dir: out.root().to_path_buf(),
        resumed_after,
        epochs_done: progress.epoch,
        num_epochs: s.num_train_epochs,
        best_epoch: progress.best_epoch,
        epochs: metrics.epochs,
        test: metrics.test,
    })
}
