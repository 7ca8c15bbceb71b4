//! One fine-tuning step reported the way `fixtures/expected/train_step.json` records the
//! reference's (train_itm.py on the fixture batch): the losses, the gradient L2 norm of named
//! parameters (PyTorch names), the global norm before clipping, and the loss after clip +
//! AdamW. `lightningdot bench` and the bf16 tests compare a step on any backend and precision
//! with these numbers; `tests/train_step.rs` checks the f32 CPU step in full detail.

use std::collections::HashMap;

use burn::module::{ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use burn::train::{ItemLazy, TrainStep};

use super::loss::{TrainBatch, batch_losses};
use super::{HfAdamW, TrainError, global_grad_norm};
use crate::conversion::{biencoder_key_to_burn, param_ids, resolve_path};
use crate::model::BiEncoder;

/// bf16's unit roundoff: 8 significant bits, so one rounding is off by at most 2^-8 relative.
pub const BF16_UNIT_ROUNDOFF: f64 = 1.0 / 256.0;

/// How many bf16 roundings the forward pass of a bi-encoder with `layers` layers per tower
/// makes on its longest path from the inputs to the scores: embeddings 4 (region features,
/// boxes, their sum, LayerNorm), each layer 10 (query/key/value, attention scores, probabilities,
/// context, attention output, residual + LayerNorm, intermediate, GELU, output, residual +
/// LayerNorm), the projection head 4, the scores 1. In the worst case these errors add up, so a
/// bf16 forward is within `roundings · u` (relative to each output's scale) of the f32 one, and
/// a backward, which passes the same operations again, within twice that.
pub fn bf16_forward_roundings(layers: usize) -> f64 {
    (4 + 10 * layers + 4 + 1) as f64
}

/// What one step produced.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    /// `0.5·loss_nce_txt + 0.5·loss_nce_img`.
    pub loss: f64,
    /// `loss_nce_txt` (image queries).
    pub loss_i2t: f64,
    /// `loss_nce_img` (caption queries).
    pub loss_t2i: f64,
    /// Gradient L2 norm of each requested parameter (PyTorch name), in request order.
    pub grad_norms: Vec<(String, f64)>,
    /// Global gradient norm before clipping.
    pub total_grad_norm: f64,
    /// The loss of the same batch after the clip + AdamW update.
    pub loss_after: f64,
}

/// Forward + backward on `batch`, then global-norm clipping at `max_grad_norm` and one AdamW
/// update at `lr`, reporting the gradient norms of `grad_names` (PyTorch `BiEncoder` names).
pub fn step_report<B: AutodiffBackend>(
    model: BiEncoder<B>,
    batch: TrainBatch<B>,
    grad_names: &[String],
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepReport, TrainError> {
    let ids = param_ids(&model);
    let mut wanted = HashMap::new();
    for name in grad_names {
        let id = biencoder_key_to_burn(name)
            .and_then(|p| resolve_path(&ids, &p))
            .and_then(|p| ids.get(&p).copied())
            .ok_or_else(|| TrainError::Model(format!("no parameter for {name}")))?;
        wanted.insert(id, name.clone());
    }

    let out = model.step(batch.clone());
    let stats = out.item.sync();
    let grads = out.grads;
    let mut norms = GradNorms::<B> {
        grads: &grads,
        wanted: &wanted,
        found: HashMap::new(),
        _b: std::marker::PhantomData,
    };
    model.visit(&mut norms);
    let grad_norms = grad_names
        .iter()
        .map(|n| {
            norms
                .found
                .get(n)
                .map(|v| (n.clone(), *v))
                .ok_or_else(|| TrainError::Model(format!("{n} has no gradient")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let total_grad_norm = global_grad_norm(&model, &grads);

    let mut optim = HfAdamW::<B>::new(max_grad_norm);
    let model = optim.step(lr, model, grads);
    let loss_after = batch_losses(&model, batch).loss.into_scalar().elem::<f64>();
    Ok(StepReport {
        loss: stats.loss,
        loss_i2t: stats.loss_i2t,
        loss_t2i: stats.loss_t2i,
        grad_norms,
        total_grad_norm,
        loss_after,
    })
}

/// Gradient L2 norms (computed in f32) of the parameters in `wanted`.
struct GradNorms<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    wanted: &'a HashMap<ParamId, String>,
    found: HashMap<String, f64>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorms<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(name) = self.wanted.get(&param.id) else {
            return;
        };
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.cast(FloatDType::F32).square().sum();
            let norm = sq.into_scalar().elem::<f64>().sqrt();
            self.found.insert(name.clone(), norm);
        }
    }
}
