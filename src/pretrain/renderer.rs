//! Progress lines without a terminal for pre-training (CI, pipes, nohup): every few seconds the
//! period's progress, each task's latest training loss and the LR; after each period's
//! validation, every validation number.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use burn::train::LearnerSummary;
use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

/// Plain-text progress lines on stdout.
pub struct PretrainRenderer {
    names: HashMap<MetricId, String>,
    values: BTreeMap<String, f64>,
    interval: Duration,
    last_print: Option<Instant>,
    period_start: Instant,
}

impl PretrainRenderer {
    pub fn new(interval: Duration) -> Self {
        Self {
            names: HashMap::new(),
            values: BTreeMap::new(),
            interval,
            last_print: None,
            period_start: Instant::now(),
        }
    }

    fn record(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state
            && let Some(name) = self.names.get(&entry.metric_id)
        {
            self.values.insert(name.clone(), value.current());
        }
    }

    fn line(&self, prefix: &str) -> String {
        self.values
            .iter()
            .filter(|(k, v)| k.starts_with(prefix) && v.is_finite())
            .map(|(k, v)| format!("{} {v:.4}", &k[prefix.len()..]))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl MetricsRendererTraining for PretrainRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }

    fn render_train(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        let Some(p) = item.progress else { return };
        if p.items_processed <= 1 {
            self.period_start = Instant::now();
        }
        let done = p.items_processed >= p.items_total;
        let due = self.last_print.is_none_or(|t| t.elapsed() >= self.interval);
        if !(done || due) {
            return;
        }
        self.last_print = Some(Instant::now());
        let secs = self.period_start.elapsed().as_secs_f64().max(1e-9);
        println!(
            "period {}/{}  micro-batch {}/{}  loss [{}]  lr {:.3e}  {:.2} micro-batches/s",
            item.global_progress.items_processed,
            item.global_progress.items_total,
            p.items_processed,
            p.items_total,
            self.line("Loss "),
            self.values
                .get("Learning Rate")
                .copied()
                .unwrap_or(f64::NAN),
            p.items_processed as f64 / secs,
        );
    }

    fn render_valid(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        println!(
            "period {}/{}  validation [{}]",
            item.global_progress.items_processed,
            item.global_progress.items_total,
            self.line("Val ")
        );
    }

    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for PretrainRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}

    fn render_test(&mut self, _item: EvaluationProgress, _indicators: Vec<ProgressType>) {}
}

impl MetricsRenderer for PretrainRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}
