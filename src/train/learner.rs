//! The burn-train wiring: a `Learner` over the bi-encoder ([`TrainStep`](burn::train::TrainStep)
//! in [`super::loss`], [`InferenceStep`](burn::train::InferenceStep) in [`super::metric`]), the
//! [`HfAdamW`] optimizer and the [`LinearWarmupDecay`] schedule, launched by
//! `SupervisedTraining` with burn-train's metrics, metric logs and dashboard, and a custom
//! epoch loop ([`SupervisedLearningStrategy`]) where burn-train's single-device loop falls short:
//!
//! * the schedule advances once per optimizer update (burn-train steps it per micro-batch, which
//!   is wrong under gradient accumulation), and a trailing partial accumulation group is applied;
//! * the backend RNG (dropout) is reseeded from `(seed, epoch)` at every epoch and the loader's
//!   permutation depends on `(seed, epoch)` only, so a resumed run equals an uninterrupted one;
//! * after validation, `last/`, `best/`, the optimizer state and `metrics.json` are committed
//!   together, atomically ([`super::checkpoint`]) — burn-train's checkpointer writes files in
//!   place from a background thread and tracks no best model;
//! * hard negatives are mined between epochs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::data::dataloader::Progress;
use burn::module::AutodiffModule;
use burn::optim::GradientsAccumulator;
use burn::optim::lr_scheduler::LrScheduler;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::LearningRateMetric;
use burn::train::{
    EventProcessorTraining, InferenceStep, Interrupter, Learner, LearnerEvent,
    LearningComponentsMarker, LearningResult, SupervisedLearningStrategy, SupervisedTraining,
    SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents, TrainingItem,
    TrainingStrategy, ValidLoader,
};

use super::checkpoint::{
    BEST_DIR, EpochRecord, LAST_DIR, MetricsLog, OPTIM_STATE, OutputDir, PROGRESS_FILE, RUN_FILE,
    RunProgress, STATE_DIR, read_json, write_json,
};
use super::config::{Init, Precision, TrainPlan, TrainSettings};
use super::data::{ErrorSlot, LoaderShared, TrainLoader as ItmTrainLoader, TrainSet};
use super::hard_negatives::{MiningSettings, mine};
use super::loss::{StepMetric, StepValue};
use super::metric::{DevLoader, DevRecallMetric, EvalSplit, RecallValue};
use super::renderer::PlainRenderer;
use super::{HfAdamW, LinearWarmupDecay, TrainError};
use crate::conversion::{ModelDir, RecordPrecision, write_model_dir_with_vocab};
use crate::eval::SplitRecall;
use crate::model::{BiEncoder, BiEncoderConfig};

/// The learning components of a fine-tuning run on backend `B`.
pub type ItmComponents<B> =
    LearningComponentsMarker<B, LinearWarmupDecay, BiEncoder<B>, HfAdamW<B>>;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dashboard {
    /// burn-train's terminal dashboard when stdout is a terminal, plain lines otherwise.
    #[default]
    Auto,
    Tui,
    Plain,
}

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

/// Appends run notes to `OUTPUT_DIR/train.log`, and logs them unless the dashboard owns the
/// terminal (stderr lines would tear its screen).
#[derive(Clone)]
pub(crate) struct Notes {
    file: Arc<Mutex<Option<std::fs::File>>>,
    quiet: Arc<std::sync::atomic::AtomicBool>,
}

impl Notes {
    pub(crate) fn new(dir: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("train.log"))
            .ok();
        Self {
            file: Arc::new(Mutex::new(file)),
            quiet: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    pub(crate) fn set_quiet(&self, q: bool) {
        self.quiet.store(q, Ordering::SeqCst);
    }

    pub(crate) fn info(&self, msg: &str) {
        if let Ok(mut f) = self.file.lock()
            && let Some(f) = f.as_mut()
        {
            let _ = writeln!(f, "{} {msg}", utc_now());
        }
        if !self.quiet.load(Ordering::SeqCst) {
            tracing::info!("{msg}");
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days; no time-zone database needed).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Everything the epoch loop needs besides what burn-train hands it.
struct EpochContext<B: AutodiffBackend> {
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

/// burn-train's single-device loop with the changes listed in the module doc.
struct EpochLoop<B: AutodiffBackend> {
    ctx: Arc<EpochContext<B>>,
}

enum EpochEnd {
    Continue,
    Stop,
}

/// The backend seed of `epoch` (dropout masks).
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    super::data::SplitMix64::new(seed, 3, epoch as u64).next_u64()
}

impl<B: AutodiffBackend> EpochLoop<B> {
    fn epoch(
        &self,
        epoch: usize,
        learner: &mut Learner<ItmComponents<B>>,
        train: &TrainLoader<ItmComponents<B>>,
        valid: &ValidLoader<ItmComponents<B>>,
        processor: &mut SupervisedTrainingEventProcessor<ItmComponents<B>>,
        interrupter: &Interrupter,
    ) -> Result<EpochEnd, TrainError> {
        let ctx = &*self.ctx;
        let s = &ctx.settings;
        let num_epochs = s.num_train_epochs;
        let started = Instant::now();
        B::seed(&ctx.device, epoch_seed(s.seed, epoch));
        ctx.shared.epoch.store(epoch, Ordering::SeqCst);
        let global = Progress::new(epoch, num_epochs);
        let accum = s.gradient_accumulation_steps;
        let mut updates = ctx.lock_state().0.updates;

        let mut iterator = train.iter();
        let mut accumulator = GradientsAccumulator::<BiEncoder<B>>::new();
        let mut in_group = 0;
        let mut iteration = 0;
        let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
        let mut pairs = 0usize;
        while let Some(batch) = iterator.next() {
            iteration += 1;
            if in_group == 0 {
                learner.lr_step();
            }
            let progress = iterator.progress();
            let out = learner.train_step(batch);
            let q = out.item.queries;
            let l = out.item.losses.loss.clone().mul_scalar(q as f64);
            loss_sum = Some(match loss_sum {
                Some(t) => t + l,
                None => l,
            });
            pairs += q;
            in_group += 1;
            if accum == 1 {
                learner.optimizer_step(out.grads);
                updates += 1;
                in_group = 0;
            } else {
                accumulator.accumulate(&learner.model(), out.grads);
                if in_group == accum {
                    learner.optimizer_step(accumulator.grads());
                    updates += 1;
                    in_group = 0;
                }
            }
            processor.process_train(LearnerEvent::ProcessedItem(TrainingItem::new(
                out.item,
                progress,
                global.clone(),
                Some(iteration),
                Some(learner.lr_current()),
            )));
            if interrupter.should_stop() {
                break;
            }
        }
        drop(iterator);
        if in_group > 0 && !interrupter.should_stop() {
            // The epoch's last, partial accumulation group (its LR was scheduled at its start).
            learner.optimizer_step(accumulator.grads());
            updates += 1;
        }
        processor.process_train(LearnerEvent::EndEpoch(epoch));
        ctx.take_error()?;
        if interrupter.should_stop() {
            ctx.notes.info(&format!(
                "epoch {epoch} interrupted: not saved (rerun the command to redo it)"
            ));
            return Ok(EpochEnd::Stop);
        }
        let train_loss = loss_sum
            .map(|t| t.into_scalar().elem::<f64>() / pairs.max(1) as f64)
            .unwrap_or(f64::NAN);

        // Validation: one item, the whole dev split (see super::metric).
        let model = learner.model().valid();
        let mut recall = None;
        let mut viter = valid.iter();
        while let Some(item) = viter.next() {
            let progress = viter.progress();
            let out = model.step(item);
            recall = out.recall.clone();
            processor.process_valid(LearnerEvent::ProcessedItem(TrainingItem::new(
                out,
                progress,
                global.clone(),
                None,
                None,
            )));
        }
        processor.process_valid(LearnerEvent::EndEpoch(epoch));
        ctx.take_error()?;
        let recall =
            recall.ok_or_else(|| TrainError::Model("validation produced no recall".into()))?;

        self.commit(
            epoch,
            &model,
            recall,
            train_loss,
            learner.lr_current(),
            updates,
            started,
        )?;

        if ctx.opts.stop_after_epoch == Some(epoch) && epoch < num_epochs {
            ctx.notes.info(&format!(
                "stopping after epoch {epoch} as asked; rerun to continue"
            ));
            return Ok(EpochEnd::Stop);
        }
        if epoch < num_epochs && s.num_hard_negatives > 0 {
            ctx.mine_negatives(&model, epoch + 1)?;
        }
        Ok(EpochEnd::Continue)
    }

    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        epoch: usize,
        model: &BiEncoder<B::InnerBackend>,
        dev: SplitRecall,
        train_loss: f64,
        lr: f64,
        updates: usize,
        started: Instant,
    ) -> Result<(), TrainError> {
        let ctx = &*self.ctx;
        let s = &ctx.settings;
        let mean = dev.mean();
        let (mut progress, mut metrics) = ctx.lock_state().clone();
        // The reference compares with a best value it never updates, so it rewrites "best"
        // every epoch; here best/ changes only when the dev mean recall improves.
        let improved = progress.best_metric.is_none_or(|b| mean > b);
        if improved {
            progress.best_epoch = Some(epoch);
            progress.best_metric = Some(mean);
        }
        progress.epoch = epoch;
        progress.updates = updates;
        metrics.epochs.retain(|e| e.epoch < epoch);
        metrics.epochs.push(EpochRecord {
            epoch,
            dev,
            dev_mean: mean,
            train_loss,
            lr,
            updates,
            seconds: started.elapsed().as_secs_f64(),
        });
        metrics.best_epoch = progress.best_epoch;

        let staging = ctx.out.begin()?;
        let last = staging.join(LAST_DIR);
        write_model_dir_with_vocab(
            model.clone(),
            &ctx.model_config,
            RecordPrecision::F32,
            None,
            &last,
            true,
            ctx.vocab_dir.as_deref(),
        )?;
        if improved {
            link_tree(&last, &staging.join(BEST_DIR))?;
        }
        if s.save_all_epochs {
            link_tree(&last, &staging.join(format!("epoch-{epoch}")))?;
        }
        let state = staging.join(STATE_DIR);
        std::fs::create_dir_all(&state).map_err(|e| TrainError::output(&state, e))?;
        let (tensors, meta) = ctx.optim.state_tensors();
        crate::tensor_io::write_f32(&state.join(OPTIM_STATE), &tensors, Some(meta)).map_err(
            |e| TrainError::output(&state, format!("cannot write optimizer state: {e}")),
        )?;
        write_json(&state.join(PROGRESS_FILE), &progress)?;
        write_json(&staging.join(super::checkpoint::METRICS_FILE), &metrics)?;
        ctx.out.commit()?;
        ctx.notes.info(&format!(
            "epoch {epoch}: dev mean recall {:.2}{}; train loss {train_loss:.4}; committed to {}",
            100.0 * mean,
            if improved { " (best so far)" } else { "" },
            ctx.out.root().display()
        ));
        *ctx.lock_state() = (progress, metrics);
        Ok(())
    }
}

/// Hard-links every file of `src` into a new tree `dst` (same file system: instant, no copy).
pub(crate) fn link_tree(src: &Path, dst: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(dst).map_err(|e| TrainError::output(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| TrainError::output(src, e))? {
        let entry = entry.map_err(|e| TrainError::output(src, e))?;
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            link_tree(&entry.path(), &to)?;
        } else if std::fs::hard_link(entry.path(), &to).is_err() {
            std::fs::copy(entry.path(), &to).map_err(|e| TrainError::output(&to, e))?;
        }
    }
    Ok(())
}

impl<B: AutodiffBackend> EpochContext<B> {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, (RunProgress, MetricsLog)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_error(&self) -> Result<(), TrainError> {
        match self.error.lock().ok().and_then(|mut g| g.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
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

impl<B: AutodiffBackend> SupervisedLearningStrategy<ItmComponents<B>> for EpochLoop<B> {
    fn fit(
        &self,
        components: TrainingComponents<ItmComponents<B>>,
        mut learner: Learner<ItmComponents<B>>,
        train: TrainLoader<ItmComponents<B>>,
        valid: ValidLoader<ItmComponents<B>>,
        starting_epoch: usize,
    ) -> (
        BiEncoder<B>,
        SupervisedTrainingEventProcessor<ItmComponents<B>>,
    ) {
        let mut processor = components.event_processor;
        for epoch in starting_epoch..=components.num_epochs {
            let end = self.epoch(
                epoch,
                &mut learner,
                &train,
                &valid,
                &mut processor,
                &components.interrupter,
            );
            match end {
                Ok(EpochEnd::Continue) => {}
                Ok(EpochEnd::Stop) => break,
                Err(e) => {
                    super::data::set_error(&self.ctx.error, e);
                    break;
                }
            }
        }
        (learner.model(), processor)
    }
}

/// `OUTPUT_DIR/run.json`: written by the first run; a rerun must resolve to the same settings.
pub(crate) fn check_run_file<T: serde::Serialize>(
    out: &OutputDir,
    s: &T,
) -> Result<(), TrainError> {
    let p = out.path(RUN_FILE);
    // Compare in the file's form (f32 fields print shortest, e.g. conf_th 0.2).
    let new: serde_json::Value = serde_json::to_string(s)
        .and_then(|t| serde_json::from_str(&t))
        .map_err(|e| TrainError::output(&p, e))?;
    if !p.is_file() {
        return write_json(&p, s);
    }
    let old: serde_json::Value = read_json(&p)?;
    if old == new {
        return Ok(());
    }
    let empty = serde_json::Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let diffs: Vec<String> = n
        .iter()
        .filter(|(k, v)| o.get(*k) != Some(*v))
        .map(|(k, v)| {
            let was = o
                .get(k)
                .map(|x| x.to_string())
                .unwrap_or_else(|| "absent".into());
            format!("{k} {was} -> {v}")
        })
        .collect();
    Err(TrainError::Resume {
        path: out.root().display().to_string(),
        reason: format!(
            "it holds a run with other settings ({}); use another --output-dir, or delete it to start over",
            diffs.join("; ")
        ),
    })
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

/// Makes bf16 the device's default float type. burn fixes a device's defaults once, at its
/// first tensor: this must run before any tensor exists on `device`, and succeeds again later
/// only when bf16 is already the default (a process that runs several bf16 tasks).
pub fn set_bf16<B: Backend>(device: &B::Device) -> Result<(), TrainError> {
    match burn::tensor::set_default_dtypes::<B>(
        device,
        burn::tensor::FloatDType::BF16,
        <B::IntElem as burn::tensor::Element>::dtype(),
    ) {
        Ok(()) => Ok(()),
        Err(_)
            if burn::tensor::get_device_settings::<B>(device).float_dtype
                == burn::tensor::FloatDType::BF16 =>
        {
            Ok(())
        }
        Err(e) => Err(TrainError::Device(format!(
            "cannot switch to bf16 (tensors in another precision exist already on this device): {e:?}"
        ))),
    }
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
    if s.precision == Precision::Bf16 {
        set_bf16::<B>(&device)?;
    }
    let out = OutputDir::prepare(&plan.output_dir)?;
    check_run_file(&out, s)?;
    let notes = Notes::new(out.root());
    let error: ErrorSlot = Arc::default();

    let t = Instant::now();
    let set = Arc::new(TrainSet::open(&s.train, s.img_db.into(), s.max_txt_len)?);
    let dev = Arc::new(EvalSplit::open(
        "dev",
        &s.dev.txt_db,
        &s.dev.img_db,
        s.img_db.into(),
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

    let progress = out.progress()?;
    let metrics = out.metrics()?;
    let resumed_after = progress.as_ref().map(|p| p.epoch);
    let optim = HfAdamW::<B>::new(s.max_grad_norm);
    let (model, model_config, vocab_dir) = match &progress {
        Some(p) => {
            let last = out.path(LAST_DIR);
            let resume_err = |reason: String| TrainError::Resume {
                path: out.root().display().to_string(),
                reason,
            };
            let md = ModelDir::open(&last).map_err(|e| resume_err(e.to_string()))?;
            let model = md
                .load::<B>(&last, &device)
                .map_err(|e| resume_err(e.to_string()))?;
            let file = crate::tensor_io::TensorFile::open(&out.path(STATE_DIR).join(OPTIM_STATE))
                .map_err(|e| resume_err(format!("optimizer state: {e}")))?;
            optim
                .load_state(&file, &device)
                .map_err(|e| resume_err(format!("optimizer state: {e}")))?;
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
            let vocab = match &s.init {
                Init::Biencoder(p) if p.is_dir() => Some(p.clone()),
                _ => s
                    .txt_config
                    .as_ref()
                    .map(PathBuf::from)
                    .filter(|p| p.is_dir()),
            };
            (model, cfg, vocab)
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

    let ctx = Arc::new(EpochContext::<B> {
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
        let strategy: Arc<dyn SupervisedLearningStrategy<ItmComponents<B>>> =
            Arc::new(EpochLoop { ctx: ctx.clone() });
        let train_loader = Arc::new(ItmTrainLoader::<B>::new(shared.clone(), device.clone()));
        let valid_loader = Arc::new(DevLoader { split: dev.clone() });
        let mut training =
            SupervisedTraining::<ItmComponents<B>>::new(out.root(), train_loader, valid_loader)
                // The CLI already installed a tracing subscriber; burn-train's would fail.
                .with_application_logger(None)
                .num_epochs(s.num_train_epochs)
                .with_training_strategy(TrainingStrategy::Custom(strategy))
                .metric_train_numeric(StepMetric::new(StepValue::Loss))
                .metric_train_numeric(StepMetric::new(StepValue::LossTextToImage))
                .metric_train_numeric(StepMetric::new(StepValue::LossImageToText))
                .metric_train_numeric(StepMetric::new(StepValue::Accuracy))
                .metric_train_numeric(LearningRateMetric::new());
        for v in RecallValue::ALL {
            training = training.metric_valid_numeric(DevRecallMetric::new(v));
        }
        if let Some(e) = resumed_after {
            // Only moves the first epoch: no burn-train checkpointer is registered, the state
            // was restored above.
            training = training.checkpoint(e);
        }
        let tui = match opts.dashboard {
            Dashboard::Auto => std::io::IsTerminal::is_terminal(&std::io::stdout()),
            Dashboard::Tui => true,
            Dashboard::Plain => false,
        };
        training = if tui {
            notes.set_quiet(true);
            // Not `.persistent()`: burn-train 0.21 only waits for a key press after training
            // in persistent mode, so the process exits when training ends.
            let r = burn::train::renderer::tui::TuiMetricsRendererWrapper::new(
                training.interrupter(),
                resumed_after,
            );
            training.renderer(r)
        } else {
            training.renderer(PlainRenderer::new(opts.progress_interval))
        };
        let learner = Learner::new(model, optim, scheduler);
        let result: LearningResult<BiEncoder<B::InnerBackend>> = training.launch(learner);
        // Dropping the renderer closes the dashboard and restores the terminal.
        drop(result);
        notes.set_quiet(false);
        if let Some(e) = error.lock().ok().and_then(|mut g| g.take()) {
            return Err(e);
        }
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
            s.img_db.into(),
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
