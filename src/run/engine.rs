//! The period loop, as a burn-train [`SupervisedLearningStrategy`] (burn-train's own loop falls
//! short of what these runs need):
//!
//! * the LR schedule advances once per optimizer update (burn-train steps it per micro-batch,
//!   which is wrong under gradient accumulation);
//! * the gradients of `accumulation` micro-batches are summed into one update; a trailing
//!   partial group is applied or means the period was cut short, as the domain says;
//! * the domain seeds the backend RNG (dropout) per period, so a resumed run equals an
//!   uninterrupted one;
//! * after validation the domain commits the period atomically (burn-train's checkpointer
//!   writes files in place from a background thread);
//! * an error inside burn-train's thread is handed back to [`launch`]'s caller.

use std::sync::Arc;
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn::module::AutodiffModule;
use burn::optim::GradientsAccumulator;
use burn::train::renderer::MetricsRenderer;
use burn::train::{
    EventProcessorTraining, InferenceStep, Interrupter, Learner, LearnerEvent,
    LearningComponentsTypes, SupervisedLearningStrategy, SupervisedTraining,
    SupervisedTrainingEventProcessor, TrainLoader, TrainStep, TrainingComponents, TrainingItem,
    TrainingStrategy, ValidLoader,
};

use super::{Dashboard, Notes, RunError};

/// What one training step reports (`TrainStep::Output`).
pub type TrainItem<LC> = <<LC as LearningComponentsTypes>::TrainingModel as TrainStep>::Output;
/// What one validation step reports (`InferenceStep::Output`).
pub type ValidItem<LC> = <<LC as LearningComponentsTypes>::InferenceModel as InferenceStep>::Output;

/// Whether the run goes on after a period.
pub enum PeriodEnd {
    Continue,
    Stop,
}

/// A finished, validated period, handed to [`Period::commit`].
pub struct PeriodResult<'a, LC: LearningComponentsTypes, P: Period<LC> + ?Sized> {
    pub period: usize,
    /// The weights after the period (inference module).
    pub model: &'a LC::InferenceModel,
    pub train: P::TrainStats,
    pub valid: P::ValidStats,
    /// Learning rate of the period's last update.
    pub lr: f64,
    /// Optimizer updates done after this period.
    pub updates: usize,
    pub started: Instant,
    /// Seconds spent training (validation excluded).
    pub train_seconds: f64,
}

/// The domain of a run: fine-tuning or pre-training.
pub trait Period<LC: LearningComponentsTypes>: Send + Sync + 'static {
    type Error: From<RunError> + Send + 'static;
    /// Folded from the period's training steps.
    type TrainStats: Default;
    /// Folded from the validation steps.
    type ValidStats: Default;

    /// `"epoch"` or `"period"`, for notes.
    const UNIT: &'static str;
    /// Whether a trailing partial accumulation group is applied (fine-tuning: an epoch's last
    /// batches) or can only mean the period was cut short (pre-training counts whole updates).
    const APPLY_PARTIAL_GROUP: bool;

    /// Optimizer updates committed so far.
    fn updates_done(&self) -> usize;
    /// Seeds the backend and readies the training loader for `period`.
    fn begin(&self, period: usize);
    fn observe_train(&self, stats: &mut Self::TrainStats, item: &TrainItem<LC>);
    fn observe_valid(&self, stats: &mut Self::ValidStats, item: &ValidItem<LC>);
    /// Writes the period's commit and says whether to go on.
    fn commit(&self, done: PeriodResult<'_, LC, Self>) -> Result<PeriodEnd, Self::Error>;
    /// The error a loader or the loop left, if any.
    fn take_error(&self) -> Result<(), Self::Error>;
    fn set_error(&self, e: Self::Error);
}

/// The strategy burn-train runs: our loop over the periods.
struct Engine<P> {
    period: Arc<P>,
    notes: Notes,
    /// Micro-batches per optimizer update.
    accumulation: usize,
}

impl<LC: LearningComponentsTypes, P: Period<LC>> SupervisedLearningStrategy<LC> for Engine<P> {
    fn fit(
        &self,
        components: TrainingComponents<LC>,
        mut learner: Learner<LC>,
        train: TrainLoader<LC>,
        valid: ValidLoader<LC>,
        starting_period: usize,
    ) -> (LC::TrainingModel, SupervisedTrainingEventProcessor<LC>) {
        let mut processor = components.event_processor;
        for period in starting_period..=components.num_epochs {
            let end = run_period(
                self,
                period,
                components.num_epochs,
                &mut learner,
                (&train, &valid),
                &mut processor,
                &components.interrupter,
            );
            match end {
                Ok(PeriodEnd::Continue) => {}
                Ok(PeriodEnd::Stop) => break,
                Err(e) => {
                    self.period.set_error(e);
                    break;
                }
            }
        }
        (learner.model(), processor)
    }
}

fn run_period<LC: LearningComponentsTypes, P: Period<LC>>(
    engine: &Engine<P>,
    period: usize,
    num_periods: usize,
    learner: &mut Learner<LC>,
    (train, valid): (&TrainLoader<LC>, &ValidLoader<LC>),
    processor: &mut SupervisedTrainingEventProcessor<LC>,
    interrupter: &Interrupter,
) -> Result<PeriodEnd, P::Error> {
    let p = &*engine.period;
    let started = Instant::now();
    p.begin(period);
    let global = Progress::new(period, num_periods);
    let accum = engine.accumulation;
    let mut updates = p.updates_done();

    let mut iterator = train.iter();
    let mut accumulator = GradientsAccumulator::<LC::TrainingModel>::new();
    let (mut in_group, mut iteration) = (0, 0);
    let mut stats = P::TrainStats::default();
    while let Some(batch) = iterator.next() {
        iteration += 1;
        if in_group == 0 {
            learner.lr_step();
        }
        let progress = iterator.progress();
        let out = learner.train_step(batch);
        p.observe_train(&mut stats, &out.item);
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
    let cut = interrupter.should_stop() || (in_group > 0 && !P::APPLY_PARTIAL_GROUP);
    if in_group > 0 && !cut {
        // The period's last, partial accumulation group (its LR was scheduled at its start).
        learner.optimizer_step(accumulator.grads());
        updates += 1;
    }
    processor.process_train(LearnerEvent::EndEpoch(period));
    p.take_error()?;
    if cut {
        engine.notes.info(&format!(
            "{} {period} interrupted at update {updates}: not saved (rerun the command to redo it)",
            P::UNIT
        ));
        return Ok(PeriodEnd::Stop);
    }
    let train_seconds = started.elapsed().as_secs_f64();

    let model = learner.model().valid();
    let mut valid_stats = P::ValidStats::default();
    let mut viter = valid.iter();
    while let Some(item) = viter.next() {
        let progress = viter.progress();
        let out = model.step(item);
        p.observe_valid(&mut valid_stats, &out);
        processor.process_valid(LearnerEvent::ProcessedItem(TrainingItem::new(
            out,
            progress,
            global.clone(),
            None,
            None,
        )));
    }
    processor.process_valid(LearnerEvent::EndEpoch(period));
    p.take_error()?;
    p.commit(PeriodResult {
        period,
        model: &model,
        train: stats,
        valid: valid_stats,
        lr: learner.lr_current(),
        updates,
        started,
        train_seconds,
    })
}

/// How [`launch`] shows and positions the run.
pub struct Launch<R> {
    /// The run's notes (kept quiet while the dashboard owns the terminal).
    pub notes: Notes,
    /// Micro-batches per optimizer update.
    pub accumulation: usize,
    pub num_periods: usize,
    /// Periods already committed by an earlier process (`None`: a fresh run).
    pub resumed: Option<usize>,
    pub dashboard: Dashboard,
    /// The renderer when the dashboard is off (plain progress lines).
    pub plain: R,
}

/// Runs `training` (built with its loaders and metrics) from `learner` under the period loop,
/// with the dashboard or plain lines; returns the first error the loop or a loader met.
pub fn launch<
    LC: LearningComponentsTypes + Send + 'static,
    P: Period<LC>,
    R: MetricsRenderer + 'static,
>(
    period: Arc<P>,
    training: SupervisedTraining<LC>,
    learner: Learner<LC>,
    how: Launch<R>,
) -> Result<(), P::Error> {
    let strategy: Arc<dyn SupervisedLearningStrategy<LC>> = Arc::new(Engine {
        period: period.clone(),
        notes: how.notes.clone(),
        accumulation: how.accumulation,
    });
    let mut training = training
        // The CLI already installed a tracing subscriber; burn-train's would fail.
        .with_application_logger(None)
        .num_epochs(how.num_periods)
        .with_training_strategy(TrainingStrategy::Custom(strategy));
    if let Some(done) = how.resumed {
        // Only moves the first period: no burn-train checkpointer is registered, the domain
        // restored the state itself.
        training = training.checkpoint(done);
    }
    training = if how.dashboard.is_tui() {
        how.notes.set_quiet(true);
        // Not `.persistent()`: burn-train 0.21 only waits for a key press after training in
        // persistent mode, so the process exits when training ends.
        let r = burn::train::renderer::tui::TuiMetricsRendererWrapper::new(
            training.interrupter(),
            how.resumed,
        );
        training.renderer(r)
    } else {
        training.renderer(how.plain)
    };
    // Dropping the result closes the dashboard and restores the terminal.
    drop(training.launch(learner));
    how.notes.set_quiet(false);
    period.take_error()
}
