//! burn-train's steps for pre-training: [`TrainStep`] runs one micro-batch of one task,
//! [`InferenceStep`] runs the whole validation (one item per checkpoint period, like the
//! fine-tuning dev recall: burn-train 0.21 has no end-of-epoch hook for metrics), and the
//! numeric metrics the dashboard shows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use serde::{Deserialize, Serialize};

use super::PretrainError;
use super::data::ValSet;
use crate::model::{BiEncoderForPretraining, ClsConcat, PretrainInput, PretrainTask};

/// One micro-batch on the device.
#[derive(Debug, Clone)]
pub struct StepInput<B: Backend> {
    pub input: PretrainInput<B>,
    pub task: PretrainTask,
    pub mode: ClsConcat,
    /// Text + region slots of the batch, padding included.
    pub tokens: usize,
}

/// A step's numbers, still on the device.
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend> {
    pub task: PretrainTask,
    pub loss: Tensor<B, 1>,
    pub correct: Option<Tensor<B, 1>>,
    pub predictions: usize,
    pub tokens: usize,
}

/// Host copy of a step's numbers.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub task: PretrainTask,
    pub loss: f64,
    /// Correct arg-max predictions / predictions (`None` for MRFR).
    pub accuracy: Option<f64>,
    pub tokens: usize,
}

impl<B: Backend> ItemLazy for StepOutput<B> {
    type ItemSync = StepStats;

    fn sync(self) -> StepStats {
        let scalar = |t: Tensor<B, 1>| t.into_scalar().elem::<f64>();
        StepStats {
            task: self.task,
            loss: scalar(self.loss),
            accuracy: self
                .correct
                .map(|c| scalar(c) / self.predictions.max(1) as f64),
            tokens: self.tokens,
        }
    }
}

impl<B: AutodiffBackend> TrainStep for BiEncoderForPretraining<B> {
    type Input = StepInput<B>;
    type Output = StepOutput<B::InnerBackend>;

    /// The loss is not divided by the accumulation count: pretrain.py sums the gradients of
    /// its micro-batches (spec §6.5).
    fn step(&self, item: StepInput<B>) -> TrainOutput<Self::Output> {
        let out = self.task_loss(&item.input, item.task, item.mode);
        let loss = out.loss.clone().cast(burn::tensor::FloatDType::F32);
        let grads = loss.backward();
        TrainOutput::new(
            self,
            grads,
            StepOutput {
                task: item.task,
                loss: out.loss.inner(),
                correct: out.correct.map(|c| c.inner()),
                predictions: out.predictions,
                tokens: item.tokens,
            },
        )
    }
}

/// The training loss of one task as a dashboard metric: the mean over the period's steps of
/// that task (steps of other tasks leave it unchanged).
#[derive(Clone)]
pub struct TaskLossMetric {
    task: PretrainTask,
    name: MetricName,
    sum: f64,
    count: usize,
    last: f64,
}

impl TaskLossMetric {
    pub fn new(task: PretrainTask) -> Self {
        Self {
            task,
            name: Arc::new(format!("Loss {task}")),
            sum: 0.0,
            count: 0,
            last: f64::NAN,
        }
    }

    fn mean(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }
}

/// The metrics' input.
#[derive(Debug, Clone, Copy)]
pub struct StepStatsInput(pub StepStats);

impl Adaptor<StepStatsInput> for StepStats {
    fn adapt(&self) -> StepStatsInput {
        StepStatsInput(*self)
    }
}

impl Metric for TaskLossMetric {
    type Input = StepStatsInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &StepStatsInput, _m: &MetricMetadata) -> SerializedEntry {
        if item.0.task == self.task {
            self.sum += item.0.loss;
            self.count += 1;
            self.last = item.0.loss;
        }
        SerializedEntry::new(
            format!("{}: {:.4} (mean {:.4})", self.name, self.last, self.mean()),
            self.last.to_string(),
        )
    }

    fn clear(&mut self) {
        self.sum = 0.0;
        self.count = 0;
        self.last = f64::NAN;
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }
}

impl Numeric for TaskLossMetric {
    fn value(&self) -> NumericEntry {
        NumericEntry::Value(self.last)
    }

    fn running_value(&self) -> NumericEntry {
        NumericEntry::Value(self.mean())
    }
}

/// Validation numbers of one task over every validation set (prediction-weighted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    /// Mean training objective.
    pub loss: f64,
    /// Arg-max accuracy (`None` for MRFR).
    pub accuracy: Option<f64>,
    pub predictions: usize,
}

/// Validation result: per task, and per `{task}_{set}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValReport {
    pub tasks: BTreeMap<String, TaskScore>,
    pub sets: BTreeMap<String, TaskScore>,
}

#[derive(Default)]
struct Acc {
    loss: f64,
    correct: f64,
    has_acc: bool,
    n: usize,
}

impl Acc {
    fn score(&self) -> TaskScore {
        let n = self.n.max(1) as f64;
        TaskScore {
            loss: self.loss / n,
            accuracy: self.has_acc.then(|| self.correct / n),
            predictions: self.n,
        }
    }
}

/// Runs every validation batch of `sets` in eval mode.
pub fn validate<B: Backend>(
    model: &BiEncoderForPretraining<B>,
    sets: &[ValSet],
    mode: ClsConcat,
    device: &B::Device,
) -> Result<ValReport, PretrainError> {
    let mut by_task: BTreeMap<String, Acc> = BTreeMap::new();
    let mut by_set: BTreeMap<String, Acc> = BTreeMap::new();
    for set in sets {
        for item in set.batches() {
            let (task, batch) = item?;
            let input = batch.to_device::<B>(device);
            let out = model.task_loss(&input, task, mode);
            let n = out.predictions;
            let loss = out.loss.into_scalar().elem::<f64>() * n as f64;
            let correct = out.correct.map(|c| c.into_scalar().elem::<f64>());
            for acc in [
                by_task.entry(task.name().to_string()).or_default(),
                by_set
                    .entry(format!("{}_{}", task.name(), set.name))
                    .or_default(),
            ] {
                acc.loss += loss;
                acc.n += n;
                if let Some(c) = correct {
                    acc.correct += c;
                    acc.has_acc = true;
                }
            }
        }
    }
    Ok(ValReport {
        tasks: by_task
            .iter()
            .map(|(k, a)| (k.clone(), a.score()))
            .collect(),
        sets: by_set.iter().map(|(k, a)| (k.clone(), a.score())).collect(),
    })
}

/// Shared by the validation loader, the model's [`InferenceStep`] and the run loop.
pub struct Validation {
    pub sets: Vec<ValSet>,
    pub mode: ClsConcat,
    /// The last report, for the checkpoint commit (the dashboard gets its copy as an item).
    pub last: Mutex<Option<Result<ValReport, String>>>,
}

/// The validation item: everything, once per checkpoint period.
#[derive(Clone)]
pub struct ValItem(pub Arc<Validation>);

/// What validation hands the metrics.
#[derive(Debug, Clone)]
pub struct ValOutput(pub Option<ValReport>);

impl ItemLazy for ValOutput {
    type ItemSync = ValOutput;

    fn sync(self) -> ValOutput {
        self
    }
}

impl<B: Backend> InferenceStep for BiEncoderForPretraining<B> {
    type Input = ValItem;
    type Output = ValOutput;

    fn step(&self, item: ValItem) -> ValOutput {
        let v = item.0;
        let device = self.devices().into_iter().next().unwrap_or_default();
        let r = validate(self, &v.sets, v.mode, &device);
        let out = ValOutput(r.as_ref().ok().cloned());
        if let Ok(mut g) = v.last.lock() {
            *g = Some(r.map_err(|e| e.to_string()));
        }
        out
    }
}

/// The validation loader: one [`ValItem`] per period.
pub struct ValLoader(pub Arc<Validation>);

struct Once(Option<ValItem>);

impl Iterator for Once {
    type Item = ValItem;

    fn next(&mut self) -> Option<ValItem> {
        self.0.take()
    }
}

impl DataLoaderIterator<ValItem> for Once {
    fn progress(&self) -> Progress {
        Progress::new(usize::from(self.0.is_none()), 1)
    }
}

impl<B: Backend> DataLoader<B, ValItem> for ValLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ValItem> + 'a> {
        Box::new(Once(Some(ValItem(self.0.clone()))))
    }

    fn num_items(&self) -> usize {
        1
    }

    fn to_device(&self, _device: &B::Device) -> Arc<dyn DataLoader<B, ValItem>> {
        Arc::new(ValLoader(self.0.clone()))
    }

    fn slice(&self, _start: usize, _end: usize) -> Arc<dyn DataLoader<B, ValItem>> {
        Arc::new(ValLoader(self.0.clone()))
    }
}

/// One validation number on the dashboard (one update per period).
#[derive(Clone)]
pub struct ValMetric {
    task: PretrainTask,
    /// Accuracy, else loss.
    accuracy: bool,
    name: MetricName,
    value: Option<f64>,
}

impl ValMetric {
    /// What the reference validates: MLM accuracy, MRFR loss, MRC accuracy, CMR accuracy.
    pub fn for_task(task: PretrainTask) -> Self {
        let accuracy = task != PretrainTask::Mrfr;
        let what = if accuracy { "accuracy" } else { "loss" };
        Self {
            task,
            accuracy,
            name: Arc::new(format!("Val {task} {what}")),
            value: None,
        }
    }
}

/// [`ValMetric`]'s input.
#[derive(Debug, Clone)]
pub struct ValInput(pub Option<ValReport>);

impl Adaptor<ValInput> for ValOutput {
    fn adapt(&self) -> ValInput {
        ValInput(self.0.clone())
    }
}

impl Metric for ValMetric {
    type Input = ValInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &ValInput, _m: &MetricMetadata) -> SerializedEntry {
        let score = item.0.as_ref().and_then(|r| r.tasks.get(self.task.name()));
        let v = score
            .and_then(|s| {
                if self.accuracy {
                    s.accuracy
                } else {
                    Some(s.loss)
                }
            })
            .unwrap_or(f64::NAN);
        self.value = Some(v);
        SerializedEntry::new(format!("{}: {v:.4}", self.name), v.to_string())
    }

    fn clear(&mut self) {
        self.value = None;
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: self.accuracy,
        }
        .into()
    }
}

impl Numeric for ValMetric {
    fn value(&self) -> NumericEntry {
        NumericEntry::Value(self.value.unwrap_or(f64::NAN))
    }

    fn running_value(&self) -> NumericEntry {
        self.value()
    }
}
