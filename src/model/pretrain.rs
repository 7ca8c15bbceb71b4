//! `BiEncoderForPretraining`: the bi-encoder plus the VMLM / SMRM heads and the CMR loss
//! (spec §6.2–6.4, fixtures README "Loss semantics").
//!
//! Two head weights are tied to the IMAGE tower upstream: the MLM decoder is
//! `img_model.bert.embeddings.word_embeddings.weight` (although MLM runs on the text tower) and
//! the MRFR output is `img_embeddings.img_linear.weight` used transposed. burn modules cannot
//! share a `Param`, so the heads hold only their own weights and read the tied tensors from the
//! tower at forward time; autodiff then sums both uses into the one tower parameter, as PyTorch
//! does for the shared storage.
//!
//! Every loss here is per prediction (`reduction='none'`); the training objective is the mean
//! over all elements ([`TaskOutput::loss`]), which for MRFR / MRC-KL averages over the feature /
//! class axis too (the reference's `loss.mean()`).

use std::fmt;
use std::str::FromStr;

use burn::module::Param;
use burn::nn::{LayerNorm, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, log_softmax};

use super::biencoder::{BiEncoder, dot_scores};
use super::config::{BiEncoderConfig, IMG_FEAT_DIM};
use super::image::RegionBatch;
use super::transformer::layer_norm;

/// Soft-label classes of the BUTD detector (1600 objects + background).
pub const REGION_CLASSES: usize = 1601;

/// How the other tower's `[CLS]` state is fused into the predicting tower (`--cls_concat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClsConcat {
    /// No fusion: plain MLM / MRM (the reference's default `""`, reference issue #8).
    #[serde(alias = "", alias = "plain")]
    None,
    /// `seq + other[:, 0:1]`: the paper's VMLM / SMRM.
    #[default]
    Add,
    /// `seq * other[:, 0:1]`.
    Multiply,
}

impl ClsConcat {
    pub const ALL: [ClsConcat; 3] = [ClsConcat::None, ClsConcat::Add, ClsConcat::Multiply];

    /// The name the fixtures use (`plain` for `""`).
    pub fn fixture_name(self) -> &'static str {
        match self {
            ClsConcat::None => "plain",
            ClsConcat::Add => "add",
            ClsConcat::Multiply => "multiply",
        }
    }

    /// `seq`: `[batch, len, H]`, `other`: the other tower's `[batch, 1 + m, H]` output (run
    /// only when fused) → `[batch, len, H]`.
    fn fuse<B: Backend>(self, seq: Tensor<B, 3>, other: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let Some(other) = other else { return seq };
        let [b, _, h] = other.dims();
        let cls = other.slice([0..b, 0..1, 0..h]);
        match self {
            ClsConcat::None => seq,
            ClsConcat::Add => seq + cls,
            ClsConcat::Multiply => seq * cls,
        }
    }
}

impl fmt::Display for ClsConcat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClsConcat::None => "none",
            ClsConcat::Add => "add",
            ClsConcat::Multiply => "multiply",
        })
    }
}

impl FromStr for ClsConcat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "none" | "plain" => Ok(ClsConcat::None),
            "add" => Ok(ClsConcat::Add),
            "multiply" => Ok(ClsConcat::Multiply),
            other => Err(format!(
                "unknown cls_concat {other:?} (expected none, add or multiply)"
            )),
        }
    }
}

pub use crate::pretrain_task::PretrainTask;

/// `BertOnlyMLMHead` without its decoder weight: `LN(gelu(dense(x))) · E_imgᵀ + bias`.
#[derive(Module, Debug)]
pub struct MlmHead<B: Backend> {
    /// `cls.predictions.transform.dense`.
    pub dense: Linear<B>,
    /// `cls.predictions.transform.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// `cls.predictions.bias` `[V]`.
    pub bias: Param<Tensor<B, 1>>,
}

/// `RegionFeatureRegression` without its tied weight: `LN(gelu(net.0(x))) · W_img_linear + bias`.
#[derive(Module, Debug)]
pub struct FeatRegression<B: Backend> {
    /// `feat_regress.net.0`.
    pub dense: Linear<B>,
    /// `feat_regress.net.2`.
    pub layer_norm: LayerNorm<B>,
    /// `feat_regress.bias` `[2048]`.
    pub bias: Param<Tensor<B, 1>>,
}

/// `RegionClassification`: `net.3(LN(gelu(net.0(x))))`.
#[derive(Module, Debug)]
pub struct RegionClassifier<B: Backend> {
    /// `region_classifier.net.0`.
    pub dense: Linear<B>,
    /// `region_classifier.net.2`.
    pub layer_norm: LayerNorm<B>,
    /// `region_classifier.net.3`.
    pub output: Linear<B>,
}

/// The pre-training heads (everything of the LightningDot.pt layout outside `bert.*`).
#[derive(Module, Debug)]
pub struct PretrainHeads<B: Backend> {
    /// `cls.predictions.*`.
    pub cls: MlmHead<B>,
    pub feat_regress: FeatRegression<B>,
    pub region_classifier: RegionClassifier<B>,
    /// Present in the checkpoints; no loss uses it.
    pub itm_output: Linear<B>,
}

impl<B: Backend> PretrainHeads<B> {
    /// PyTorch-default initialisation, as the reference (it never calls `init_weights` on the
    /// heads): Linear U(±1/√fan_in), LayerNorm 1/0, the bare output biases 0.
    pub fn new(hidden: usize, vocab: usize, device: &B::Device) -> Self {
        Self {
            cls: MlmHead {
                dense: LinearConfig::new(hidden, hidden).init(device),
                layer_norm: layer_norm(hidden, device),
                bias: Param::from_tensor(Tensor::zeros([vocab], device)),
            },
            feat_regress: FeatRegression {
                dense: LinearConfig::new(hidden, hidden).init(device),
                layer_norm: layer_norm(hidden, device),
                bias: Param::from_tensor(Tensor::zeros([IMG_FEAT_DIM], device)),
            },
            region_classifier: RegionClassifier {
                dense: LinearConfig::new(hidden, hidden).init(device),
                layer_norm: layer_norm(hidden, device),
                output: LinearConfig::new(hidden, REGION_CLASSES).init(device),
            },
            itm_output: LinearConfig::new(hidden, 2).init(device),
        }
    }
}

/// The bi-encoder with its pre-training heads. Field names follow the state_dict (`bert.*`).
#[derive(Module, Debug)]
pub struct BiEncoderForPretraining<B: Backend> {
    pub bert: BiEncoder<B>,
    pub heads: PretrainHeads<B>,
}

/// Word-masking outputs; `S` = masked tokens.
#[derive(Debug, Clone)]
pub struct MlmOutput<B: Backend> {
    /// `[batch, L, H]` text tower output.
    pub txt_sequence_output: Tensor<B, 3>,
    /// `[batch, 1 + n, H]` image tower output (`None` when `cls_concat` is none: unused).
    pub img_sequence_output: Option<Tensor<B, 3>>,
    /// `[S, H]` head input.
    pub masked_output: Tensor<B, 2>,
    /// `[S, V]`.
    pub prediction_scores: Tensor<B, 2>,
    /// `[S]` cross-entropy per masked token.
    pub loss_task: Tensor<B, 1>,
}

/// Region-masking hidden states; `S` = masked regions.
#[derive(Debug, Clone)]
pub struct MrmHidden<B: Backend> {
    /// `[batch, L, H]` (`None` when `cls_concat` is none: unused).
    pub txt_sequence_output: Option<Tensor<B, 3>>,
    /// `[batch, n, H]` region embeddings (masked rows carry `mask_embedding[1]`).
    pub img_embeddings: Tensor<B, 3>,
    /// `[batch, 1 + n, H]`.
    pub img_sequence_output: Tensor<B, 3>,
    /// `[S, H]` head input.
    pub masked_output: Tensor<B, 2>,
}

/// CMR outputs.
#[derive(Debug, Clone)]
pub struct ItmOutput<B: Backend> {
    /// `[batch, P]`.
    pub txt_pooled: Tensor<B, 2>,
    /// `[batch, P]`.
    pub img_pooled: Tensor<B, 2>,
    /// `[batch, batch]` caption × image.
    pub scores: Tensor<B, 2>,
    /// `[batch]` `0.5·NLL(text→image) + 0.5·NLL(image→text)` per pair.
    pub loss_task: Tensor<B, 1>,
}

/// A device batch of one task (see `crate::data::pretrain` for how it is built).
#[derive(Debug, Clone)]
pub struct PretrainInput<B: Backend> {
    /// `[batch, L]` caption ids (masked for MLM).
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, L]`.
    pub attention_mask: Tensor<B, 2, Int>,
    /// Regions; `img_masks` set (and masked features zeroed) for MRFR / MRC.
    pub regions: RegionBatch<B>,
    /// `[S]` flat positions of the predictions: `b·L + t` (MLM) or `b·(1+n) + 1 + j` (MRM).
    pub masked_positions: Option<Tensor<B, 1, Int>>,
    /// MLM: `[S]` original token ids.
    pub mlm_targets: Option<Tensor<B, 1, Int>>,
    /// MRFR: `[S, 2048]` unmasked features.
    pub feat_targets: Option<Tensor<B, 2>>,
    /// MRC / MRC-KL: `[S, 1601]` soft labels.
    pub label_targets: Option<Tensor<B, 2>>,
}

/// What one task step yields: the scalar objective and what the metrics need.
#[derive(Debug, Clone)]
pub struct TaskOutput<B: Backend> {
    /// `[1]` mean over every element of `loss_task` (pretrain.py's `loss.mean()`).
    pub loss: Tensor<B, 1>,
    /// Predictions scored (masked tokens / regions, or pairs).
    pub predictions: usize,
    /// `[1]` correct arg-max predictions (MLM, MRC, CMR both directions averaged); `None` for MRFR.
    pub correct: Option<Tensor<B, 1>>,
}

/// `[rows, H]` of a `[batch, len, H]` tensor at flat positions `[S]`.
fn gather_rows<B: Backend>(seq: Tensor<B, 3>, positions: Tensor<B, 1, Int>) -> Tensor<B, 2> {
    let [b, l, h] = seq.dims();
    seq.reshape([b * l, h]).select(0, positions)
}

/// `−log softmax(logits)[i, target_i]`: `[S, C]`, `[S]` → `[S]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [s, _] = logits.dims();
    log_softmax(logits, 1)
        .gather(1, targets.reshape([s, 1]))
        .reshape([s])
        .neg()
}

/// `kl_div(log_softmax(logits), targets, reduction='none')` = `t·(log t − log p)`, 0 where
/// `t == 0` (most fp16 soft labels): `[S, C]` → `[S, C]`.
pub fn kl_elementwise<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>) -> Tensor<B, 2> {
    let logp = log_softmax(logits, 1);
    // The clamp keeps log finite at t = 0, where the product is then exactly 0.
    let log_t = targets.clone().clamp_min(f32::MIN_POSITIVE).log();
    targets * (log_t - logp)
}

/// The MRC target `argmax(t[:, 1:]) + 1` (background excluded): `[S, C]` → `[S]`.
pub fn mrc_targets<B: Backend>(label_targets: Tensor<B, 2>) -> Tensor<B, 1, Int> {
    let [s, c] = label_targets.dims();
    label_targets
        .slice([0..s, 1..c])
        .argmax(1)
        .reshape([s])
        .add_scalar(1)
}

/// Count of rows whose arg-max equals the target: `[S, C]`, `[S]` → `[1]`.
fn correct_count<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [s, _] = logits.dims();
    logits
        .argmax(1)
        .reshape([s])
        .equal(targets)
        .int()
        .sum()
        .float()
}

fn required<T>(v: &Option<T>, what: &str, task: PretrainTask) -> T
where
    T: Clone,
{
    // The data layer always builds these for the task; a miss is a programming error.
    v.clone()
        .unwrap_or_else(|| panic!("a {task} batch must carry {what}"))
}

impl<B: Backend> BiEncoderForPretraining<B> {
    /// Random heads (PyTorch defaults) on `cfg`'s towers.
    pub fn new(cfg: &BiEncoderConfig, device: &B::Device) -> Self {
        Self::with_biencoder(BiEncoder::new(cfg, device), cfg, device)
    }

    /// Zeroes `mask_embedding` row 0, as the reference's `UniterImageEmbeddings.forward` does in
    /// place before every masked forward: row 0 is then 0 in every output and after every step,
    /// while this port never reads it (spec §6.3).
    pub fn zero_mask_row(mut self) -> Self {
        let emb = &mut self.bert.image.img_embeddings.mask_embedding;
        emb.weight = emb.weight.clone().map(|w| {
            let [_, d] = w.dims();
            let track = w.is_require_grad();
            let zeros = Tensor::zeros([1, d], &w.device());
            // A fresh leaf: the parameter must not become a node of the assignment's graph
            // (its gradient would then never reach the optimizer).
            let w = w.slice_assign([0..1, 0..d], zeros).detach();
            if track { w.require_grad() } else { w }
        });
        self
    }

    /// Adds freshly initialised heads to a bi-encoder.
    pub fn with_biencoder(bert: BiEncoder<B>, cfg: &BiEncoderConfig, device: &B::Device) -> Self {
        Self {
            bert,
            heads: PretrainHeads::new(cfg.img.hidden_size, cfg.img.vocab_size, device),
        }
    }

    /// The MLM head on `[S, H]` → `[S, V]`, decoding with the image tower's word table.
    pub fn mlm_scores(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let head = &self.heads.cls;
        let h = head.layer_norm.forward(gelu(head.dense.forward(x)));
        let table = self.bert.image.embeddings.word_embeddings.weight.val();
        h.matmul(table.transpose()) + head.bias.val().unsqueeze::<2>()
    }

    /// The MRFR head on `[S, H]` → `[S, 2048]`. burn's `img_linear` weight is `[2048, H]`, i.e.
    /// the transpose of PyTorch's `[H, 2048]` that `F.linear(h, W.t())` multiplies by.
    pub fn mrfr_prediction(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let head = &self.heads.feat_regress;
        let h = head.layer_norm.forward(gelu(head.dense.forward(x)));
        let w = self.bert.image.img_embeddings.img_linear.weight.val();
        h.matmul(w.transpose()) + head.bias.val().unsqueeze::<2>()
    }

    /// The region classifier on `[S, H]` → `[S, 1601]`.
    pub fn region_logits(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let head = &self.heads.region_classifier;
        head.output
            .forward(head.layer_norm.forward(gelu(head.dense.forward(x))))
    }

    /// VMLM (spec §6.2). The image tower runs only when its `[CLS]` is fused.
    pub fn mlm(
        &self,
        input: &PretrainInput<B>,
        positions: Tensor<B, 1, Int>,
        targets: Tensor<B, 1, Int>,
        mode: ClsConcat,
    ) -> MlmOutput<B> {
        let txt = self
            .bert
            .text
            .sequence_output(input.input_ids.clone(), input.attention_mask.clone());
        let img =
            (mode != ClsConcat::None).then(|| self.bert.image.sequence_output(&input.regions));
        let fused = mode.fuse(txt.clone(), img.clone());
        let masked_output = gather_rows(fused, positions);
        let prediction_scores = self.mlm_scores(masked_output.clone());
        let loss_task = cross_entropy(prediction_scores.clone(), targets);
        MlmOutput {
            txt_sequence_output: txt,
            img_sequence_output: img,
            masked_output,
            prediction_scores,
            loss_task,
        }
    }

    /// SMRM up to the heads (spec §6.3): the image tower on the masked regions, fused with the
    /// text `[CLS]`, read at the masked positions (`positions` skip the image `[CLS]` slot).
    pub fn mrm_hidden(
        &self,
        input: &PretrainInput<B>,
        positions: Tensor<B, 1, Int>,
        mode: ClsConcat,
    ) -> MrmHidden<B> {
        let (cls, boxes) = self.bert.image.embed(&input.regions);
        let x = Tensor::cat(vec![cls, boxes.clone()], 1);
        let img = self
            .bert
            .image
            .encoder
            .forward(x, input.regions.attention_mask.clone());
        let txt = (mode != ClsConcat::None).then(|| {
            self.bert
                .text
                .sequence_output(input.input_ids.clone(), input.attention_mask.clone())
        });
        let fused = mode.fuse(img.clone(), txt.clone());
        MrmHidden {
            txt_sequence_output: txt,
            img_embeddings: boxes,
            img_sequence_output: img,
            masked_output: gather_rows(fused, positions),
        }
    }

    /// CMR (spec §6.4): in-batch symmetric NLL over `T·Iᵀ`, per pair.
    pub fn itm(&self, input: &PretrainInput<B>) -> ItmOutput<B> {
        let txt = self
            .bert
            .encode_text(input.input_ids.clone(), input.attention_mask.clone());
        let img = self.bert.encode_image(&input.regions);
        let [n, _] = txt.dims();
        let targets = Tensor::<B, 1, Int>::arange(0..n as i64, &txt.device());
        let scores = dot_scores(txt.clone(), img.clone());
        let l_t2i = cross_entropy(scores.clone(), targets.clone());
        let l_i2t = cross_entropy(scores.clone().transpose(), targets);
        ItmOutput {
            txt_pooled: txt,
            img_pooled: img,
            scores,
            loss_task: (l_t2i + l_i2t).mul_scalar(0.5),
        }
    }

    /// The training objective of `task` on `input`.
    pub fn task_loss(
        &self,
        input: &PretrainInput<B>,
        task: PretrainTask,
        mode: ClsConcat,
    ) -> TaskOutput<B> {
        match task {
            PretrainTask::Mlm => {
                let pos = required(&input.masked_positions, "masked positions", task);
                let targets = required(&input.mlm_targets, "MLM targets", task);
                let out = self.mlm(input, pos, targets.clone(), mode);
                let [s] = out.loss_task.dims();
                TaskOutput {
                    loss: out.loss_task.mean(),
                    predictions: s,
                    correct: Some(correct_count(out.prediction_scores, targets)),
                }
            }
            PretrainTask::Mrfr => {
                let pos = required(&input.masked_positions, "masked positions", task);
                let targets = required(&input.feat_targets, "feature targets", task);
                let h = self.mrm_hidden(input, pos, mode);
                let pred = self.mrfr_prediction(h.masked_output);
                let [s, _] = pred.dims();
                TaskOutput {
                    loss: (pred - targets).square().mean(),
                    predictions: s,
                    correct: None,
                }
            }
            PretrainTask::Mrckl | PretrainTask::Mrc => {
                let pos = required(&input.masked_positions, "masked positions", task);
                let soft = required(&input.label_targets, "soft-label targets", task);
                let h = self.mrm_hidden(input, pos, mode);
                let logits = self.region_logits(h.masked_output);
                let [s, _] = logits.dims();
                let hard = mrc_targets(soft.clone());
                let correct = Some(correct_count(logits.clone(), hard.clone()));
                let loss = if task == PretrainTask::Mrckl {
                    kl_elementwise(logits, soft).mean()
                } else {
                    cross_entropy(logits, hard).mean()
                };
                TaskOutput {
                    loss,
                    predictions: s,
                    correct,
                }
            }
            PretrainTask::Itm => {
                let out = self.itm(input);
                let [n] = out.loss_task.dims();
                let targets = Tensor::<B, 1, Int>::arange(0..n as i64, &out.scores.device());
                let c = correct_count(out.scores.clone(), targets.clone())
                    + correct_count(out.scores.transpose(), targets);
                TaskOutput {
                    loss: out.loss_task.mean(),
                    predictions: n,
                    correct: Some(c.mul_scalar(0.5)),
                }
            }
        }
    }
}
