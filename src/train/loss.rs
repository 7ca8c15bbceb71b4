//! The fine-tuning objective (spec §2.5, §5) and burn-train's [`TrainStep`] for the bi-encoder.
//!
//! `S = T·Iᵀ` over the batch, no temperature, no margin: `loss_nce_img` = mean NLL of each
//! caption against all images (text query), `loss_nce_txt` = mean NLL of each image against all
//! captions (image query), `loss = 0.5·loss_nce_txt + 0.5·loss_nce_img`. Duplicate images in a
//! batch stay negatives of each other, as in the reference. With hard negatives only the first
//! `B` rows are queries; they score against every candidate row.

use burn::prelude::*;
use burn::tensor::Transaction;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
    state::{FormatOptions, NumericMetricState},
};
use burn::train::{ItemLazy, TrainOutput, TrainStep};

use crate::model::{BiEncoder, RegionBatch};

/// One training batch on the device.
#[derive(Debug, Clone)]
pub struct TrainBatch<B: Backend> {
    /// `[n_txt, len]` caption ids: rows `0..queries` are the batch's captions, then negatives.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[n_txt, len]`, 1 = token, 0 = padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `n_img` images: rows `0..queries` are the captions' own images, then negatives.
    pub regions: RegionBatch<B>,
    /// `B`, the number of positive pairs.
    pub queries: usize,
    /// Multiplies the loss before backward (`1 / gradient_accumulation_steps`, as the reference
    /// divides the loss).
    pub loss_scale: f32,
}

/// The step's losses, each `[1]`.
#[derive(Debug, Clone)]
pub struct ContrastiveLosses<B: Backend> {
    /// `0.5·loss_i2t + 0.5·loss_t2i`.
    pub loss: Tensor<B, 1>,
    /// `loss_nce_txt`: image queries against the captions (text retrieval).
    pub loss_i2t: Tensor<B, 1>,
    /// `loss_nce_img`: caption queries against the images (image retrieval).
    pub loss_t2i: Tensor<B, 1>,
    /// Correct arg-max count averaged over the two directions (the reference's `is_correct`).
    pub correct: Tensor<B, 1>,
}

/// Mean of `−log softmax(q · cᵀ)[i, i]` over the `q` rows (`q`: `[n_q, P]`, `c`: `[n_c, P]`,
/// `n_c ≥ n_q`, the positive of row `i` is row `i` of `c`), and the number of rows whose best
/// candidate is the positive.
fn nll<B: Backend>(q: Tensor<B, 2>, c: Tensor<B, 2>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [n, _] = q.dims();
    let targets = Tensor::<B, 1, Int>::arange(0..n as i64, &q.device()).reshape([n, 1]);
    let scores = q.matmul(c.transpose());
    let correct = scores
        .clone()
        .argmax(1)
        .equal(targets.clone())
        .int()
        .sum()
        .float();
    let picked = log_softmax(scores, 1).gather(1, targets);
    (picked.mean().neg(), correct)
}

/// The symmetric in-batch loss of caption vectors `txt` `[n_txt, P]` and image vectors `img`
/// `[n_img, P]` whose first `queries` rows are the positive pairs.
pub fn contrastive_loss<B: Backend>(
    txt: Tensor<B, 2>,
    img: Tensor<B, 2>,
    queries: usize,
) -> ContrastiveLosses<B> {
    let (loss_i2t, c_i2t) = nll(img.clone().narrow(0, 0, queries), txt.clone());
    let (loss_t2i, c_t2i) = nll(txt.narrow(0, 0, queries), img);
    let loss = loss_i2t.clone().mul_scalar(0.5) + loss_t2i.clone().mul_scalar(0.5);
    ContrastiveLosses {
        loss,
        loss_i2t,
        loss_t2i,
        correct: (c_i2t + c_t2i).mul_scalar(0.5),
    }
}

/// Forward both towers and the loss (in f32, whatever the model's float type).
pub fn batch_losses<B: Backend>(
    model: &BiEncoder<B>,
    batch: TrainBatch<B>,
) -> ContrastiveLosses<B> {
    let txt = model.encode_text(batch.input_ids, batch.attention_mask);
    let img = model.encode_image(&batch.regions);
    contrastive_loss(
        txt.cast(burn::tensor::FloatDType::F32),
        img.cast(burn::tensor::FloatDType::F32),
        batch.queries,
    )
}

/// What a training step reports (detached from the graph).
#[derive(Debug, Clone)]
pub struct ContrastiveOutput<B: Backend> {
    pub losses: ContrastiveLosses<B>,
    pub queries: usize,
}

impl<B: AutodiffBackend> TrainStep for BiEncoder<B> {
    type Input = TrainBatch<B>;
    type Output = ContrastiveOutput<B::InnerBackend>;

    fn step(&self, batch: TrainBatch<B>) -> TrainOutput<Self::Output> {
        let queries = batch.queries;
        let scale = batch.loss_scale;
        let l = batch_losses(self, batch);
        let scaled = if scale == 1.0 {
            l.loss.clone()
        } else {
            l.loss.clone().mul_scalar(scale)
        };
        let grads = scaled.backward();
        let losses = ContrastiveLosses {
            loss: l.loss.inner(),
            loss_i2t: l.loss_i2t.inner(),
            loss_t2i: l.loss_t2i.inner(),
            correct: l.correct.inner(),
        };
        TrainOutput::new(self, grads, ContrastiveOutput { losses, queries })
    }
}

/// Host copy of a step's numbers (what the train metrics read).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    pub loss: f64,
    pub loss_i2t: f64,
    pub loss_t2i: f64,
    /// In-batch accuracy averaged over both directions.
    pub accuracy: f64,
    pub queries: usize,
}

impl<B: Backend> ItemLazy for ContrastiveOutput<B> {
    type ItemSync = StepStats;

    fn sync(self) -> StepStats {
        let l = self.losses;
        let data = Transaction::default()
            .register(l.loss)
            .register(l.loss_i2t)
            .register(l.loss_t2i)
            .register(l.correct)
            .execute();
        let v: Vec<f64> = data
            .into_iter()
            .map(|d| {
                d.convert::<f64>()
                    .into_vec::<f64>()
                    .ok()
                    .and_then(|v| v.first().copied())
                    .unwrap_or(f64::NAN)
            })
            .collect();
        StepStats {
            loss: v[0],
            loss_i2t: v[1],
            loss_t2i: v[2],
            accuracy: v[3] / self.queries.max(1) as f64,
            queries: self.queries,
        }
    }
}

/// Which [`StepStats`] number a [`StepMetric`] shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepValue {
    Loss,
    LossTextToImage,
    LossImageToText,
    Accuracy,
}

/// A per-step training number as a burn-train numeric metric (epoch mean weighted by pairs).
#[derive(Clone)]
pub struct StepMetric {
    which: StepValue,
    name: MetricName,
    state: NumericMetricState,
}

impl StepMetric {
    pub fn new(which: StepValue) -> Self {
        let name = match which {
            StepValue::Loss => "Loss",
            StepValue::LossTextToImage => "Loss text->image",
            StepValue::LossImageToText => "Loss image->text",
            StepValue::Accuracy => "In-batch accuracy",
        };
        Self {
            which,
            name: std::sync::Arc::new(name.to_string()),
            state: NumericMetricState::new(),
        }
    }
}

/// [`StepMetric`]'s input.
#[derive(Debug, Clone, Copy)]
pub struct StepStatsInput(pub StepStats);

impl Adaptor<StepStatsInput> for StepStats {
    fn adapt(&self) -> StepStatsInput {
        StepStatsInput(*self)
    }
}

impl Metric for StepMetric {
    type Input = StepStatsInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &StepStatsInput, _metadata: &MetricMetadata) -> SerializedEntry {
        let s = item.0;
        let v = match self.which {
            StepValue::Loss => s.loss,
            StepValue::LossTextToImage => s.loss_t2i,
            StepValue::LossImageToText => s.loss_i2t,
            StepValue::Accuracy => s.accuracy,
        };
        self.state.update(
            v,
            s.queries.max(1),
            FormatOptions::new(self.name()).precision(4),
        )
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: self.which == StepValue::Accuracy,
        }
        .into()
    }
}

impl Numeric for StepMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}
