//! Progress without a terminal (CI, pipes, nohup): burn-train's own fallback renderer prints
//! the raw progress structs and no metric values, so this one prints a line with the running
//! loss, the learning rate and the throughput every few seconds, and each epoch's dev recall.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use burn::train::LearnerSummary;
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

use super::metric::RecallValue;

/// Plain-text progress lines on stdout.
pub struct PlainRenderer {
    names: HashMap<MetricId, String>,
    values: HashMap<String, f64>,
    interval: Duration,
    last_print: Option<Instant>,
    epoch: usize,
    epoch_start: Instant,
    loss_sum: f64,
    loss_count: f64,
    /// The latest step's loss and pair count (it may belong to an epoch not yet rendered).
    last_loss: (f64, f64),
}

impl PlainRenderer {
    /// Prints a training line at most every `interval` (and at the end of every epoch).
    pub fn new(interval: Duration) -> Self {
        Self {
            names: HashMap::new(),
            values: HashMap::new(),
            interval,
            last_print: None,
            epoch: 0,
            epoch_start: Instant::now(),
            loss_sum: 0.0,
            loss_count: 0.0,
            last_loss: (0.0, 0.0),
        }
    }

    fn record(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state
            && let Some(name) = self.names.get(&entry.metric_id).cloned()
        {
            if name == "Loss" {
                let (v, n) = match value {
                    NumericEntry::Value(v) => (v, 1.0),
                    NumericEntry::Aggregated {
                        aggregated_value,
                        count,
                    } => (aggregated_value, count as f64),
                };
                if v.is_finite() {
                    self.loss_sum += v * n;
                    self.loss_count += n;
                    self.last_loss = (v * n, n);
                }
            }
            self.values.insert(name, value.current());
        }
    }
}

impl MetricsRendererTraining for PlainRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }

    fn render_train(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        let epoch = item.global_progress.items_processed;
        if epoch != self.epoch {
            // Metrics of this item were recorded before this first render of the epoch.
            self.epoch = epoch;
            (self.loss_sum, self.loss_count) = self.last_loss;
            self.last_print = Some(self.epoch_start);
        }
        let Some(p) = item.progress else { return };
        let done = p.items_processed >= p.items_total;
        let due = self.last_print.is_none_or(|t| t.elapsed() >= self.interval);
        if !(done || due) {
            return;
        }
        self.last_print = Some(Instant::now());
        let secs = self.epoch_start.elapsed().as_secs_f64().max(1e-9);
        let loss = if self.loss_count > 0.0 {
            self.loss_sum / self.loss_count
        } else {
            f64::NAN
        };
        let lr = self
            .values
            .get("Learning Rate")
            .copied()
            .unwrap_or(f64::NAN);
        println!(
            "epoch {}/{}  pairs {}/{}  step {}  loss {:.4}  lr {:.3e}  {:.1} pairs/s",
            epoch,
            item.global_progress.items_total,
            p.items_processed,
            p.items_total,
            item.iteration.unwrap_or(0),
            loss,
            lr,
            p.items_processed as f64 / secs,
        );
    }

    fn render_valid(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        // The next epoch's clock starts now.
        self.epoch_start = Instant::now();
        let v = |r: RecallValue| 100.0 * self.values.get(&r.name()).copied().unwrap_or(f64::NAN);
        println!(
            "epoch {}/{}  dev recall  text->image R@1/5/10 {:.2}/{:.2}/{:.2}  image->text R@1/5/10 {:.2}/{:.2}/{:.2}  mean {:.2}",
            item.global_progress.items_processed,
            item.global_progress.items_total,
            v(RecallValue::TextToImage(1)),
            v(RecallValue::TextToImage(5)),
            v(RecallValue::TextToImage(10)),
            v(RecallValue::ImageToText(1)),
            v(RecallValue::ImageToText(5)),
            v(RecallValue::ImageToText(10)),
            v(RecallValue::Mean),
        );
    }

    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}

    fn render_test(&mut self, _item: EvaluationProgress, _indicators: Vec<ProgressType>) {}
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}
