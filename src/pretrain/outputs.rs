//! Every output of one task's forward pass under the names of fixtures
//! pretrain/expected/outputs.safetensors (`mlm.add.prediction_scores`, `mrfr.plain.loss_row_mean`,
//! `itm.scores`, …), for `lightningdot forward --task mlm|…` and the parity tests.

use burn::prelude::*;

use super::batch::PretrainHostBatch;
use crate::model::{
    BiEncoderForPretraining, ClsConcat, PretrainInput, PretrainTask, cross_entropy, kl_elementwise,
    mrc_targets,
};
use crate::tensor_io::HostTensor;

/// Named host tensors (f32; `mrc.target_class` holds exact small integers).
pub type NamedOutputs = Vec<(String, HostTensor<f32>)>;

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor<f32> {
    HostTensor {
        shape: t.dims().to_vec(),
        values: t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default(),
    }
}

/// Runs `batch.task` in every mode of `modes` (eval mode: no dropout) and names the outputs.
/// Mode-independent tensors (tower outputs) are written once, with both towers run even when a
/// mode would not need the other one. Also writes `{task}.{mode}.loss`, the reduced objective.
pub fn task_outputs<B: Backend>(
    model: &BiEncoderForPretraining<B>,
    batch: &PretrainHostBatch,
    modes: &[ClsConcat],
    device: &B::Device,
) -> NamedOutputs {
    let input: PretrainInput<B> = batch.to_device(device);
    let task = batch.task;
    let mut out: NamedOutputs = Vec::new();
    let mut push = |name: String, t: HostTensor<f32>| out.push((name, t));
    match task {
        PretrainTask::Itm => {
            let o = model.itm(&input);
            push("itm.txt_pooled".into(), host(o.txt_pooled));
            push("itm.img_pooled".into(), host(o.img_pooled));
            push("itm.scores".into(), host(o.scores));
            push("itm.loss".into(), host(o.loss_task.clone().mean()));
            push("itm.loss_task".into(), host(o.loss_task));
        }
        PretrainTask::Mlm => {
            let pos = input
                .masked_positions
                .clone()
                .unwrap_or_else(|| empty(device));
            let targets = input.mlm_targets.clone().unwrap_or_else(|| empty(device));
            let txt = model
                .bert
                .text
                .sequence_output(input.input_ids.clone(), input.attention_mask.clone());
            push("mlm.txt_sequence_output".into(), host(txt));
            let img = model.bert.image.sequence_output(&input.regions);
            push("mlm.img_sequence_output".into(), host(img));
            for &mode in modes {
                let m = mode.fixture_name();
                let o = model.mlm(&input, pos.clone(), targets.clone(), mode);
                push(format!("mlm.{m}.masked_output"), host(o.masked_output));
                push(
                    format!("mlm.{m}.prediction_scores"),
                    host(o.prediction_scores),
                );
                push(format!("mlm.{m}.loss"), host(o.loss_task.clone().mean()));
                push(format!("mlm.{m}.loss_task"), host(o.loss_task));
            }
        }
        PretrainTask::Mrfr | PretrainTask::Mrckl | PretrainTask::Mrc => {
            let pos = input
                .masked_positions
                .clone()
                .unwrap_or_else(|| empty(device));
            // mrc and mrckl share one batch and one set of tower outputs (named `mrc.*`).
            let base = if task == PretrainTask::Mrfr {
                "mrfr"
            } else {
                "mrc"
            };
            let txt = model
                .bert
                .text
                .sequence_output(input.input_ids.clone(), input.attention_mask.clone());
            push(format!("{base}.txt_sequence_output"), host(txt));
            let mut towers_written = false;
            for &mode in modes {
                let m = mode.fixture_name();
                let h = model.mrm_hidden(&input, pos.clone(), mode);
                if !towers_written {
                    push(format!("{base}.img_embeddings"), host(h.img_embeddings));
                    push(
                        format!("{base}.img_sequence_output"),
                        host(h.img_sequence_output),
                    );
                    towers_written = true;
                }
                push(
                    format!("{base}.{m}.masked_output"),
                    host(h.masked_output.clone()),
                );
                if task == PretrainTask::Mrfr {
                    let pred = model.mrfr_prediction(h.masked_output);
                    let [s, _] = pred.dims();
                    let se = match &input.feat_targets {
                        Some(t) => (pred.clone() - t.clone()).square(),
                        None => pred.zeros_like(),
                    };
                    push(format!("mrfr.{m}.prediction_feat"), host(pred));
                    push(format!("mrfr.{m}.loss"), host(se.clone().mean()));
                    push(
                        format!("mrfr.{m}.loss_row_mean"),
                        host(se.mean_dim(1).reshape([s])),
                    );
                    continue;
                }
                let logits = model.region_logits(h.masked_output);
                let [s, _] = logits.dims();
                let Some(soft) = input.label_targets.clone() else {
                    continue;
                };
                let hard = mrc_targets(soft.clone());
                if task == PretrainTask::Mrc {
                    let ce = cross_entropy(logits.clone(), hard);
                    push(format!("mrc.{m}.logits"), host(logits));
                    push(format!("mrc.{m}.loss"), host(ce.clone().mean()));
                    push(format!("mrc.{m}.loss_task"), host(ce));
                } else {
                    let kl = kl_elementwise(logits.clone(), soft);
                    push(format!("mrc.{m}.logits"), host(logits));
                    push(format!("mrckl.{m}.loss"), host(kl.clone().mean()));
                    push(
                        format!("mrckl.{m}.kl_row_sum"),
                        host(kl.sum_dim(1).reshape([s])),
                    );
                }
            }
            if let Some(soft) = input.label_targets.clone() {
                push("mrc.target_class".into(), host(mrc_targets(soft).float()));
            }
        }
    }
    out
}

fn empty<B: Backend>(device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::<B, 1, Int>::zeros([0], device)
}
