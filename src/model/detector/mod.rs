//! The Bottom-Up-Attention (BUTD) Faster R-CNN region-feature extractor: the PyTorch port of
//! the Caffe Visual Genome detector in `lxmert/modeling_frcnn.py` / `processing_image.py` of
//! huggingface/transformers-research-projects, whose weights are `unc-nlp/frcnn-vg-finetuned`.
//! The numbered behaviours cited in this module are those of `fixtures/butd/README.md`.
//!
//! Convolutions run on the burn backend; the selection decisions (top-k, NMS, argmaxes) and
//! RoIPool run on the host in float32 exactly as the reference orders them. One image per
//! forward pass: batching pads images and changes the results (fixtures `batch/`).

mod backbone;
mod boxes;
mod config;
mod postprocess;
mod preprocess;
mod random;
mod roi;
mod rpn;

pub use backbone::{Bottleneck, ConvBn, FrozenBatchNorm, ResNetC4, Stem};
pub use boxes::{Box4, apply_deltas, clip, nms};
pub use config::{DetectorConfig, DetectorConfigError};
pub use postprocess::{RoiPredictions, Selection, SelectionError, softmax};
pub use preprocess::{
    DecodedImage, ImageError, Preprocessed, decode_image, load_image, preprocess, resized_size,
};
pub use roi::{BoxPredictor, RoiHeads, RoiOutput, roi_pool};
pub use rpn::{AnchorGenerator, ProposalGenerator, RpnHead, RpnOutput, cell_anchors};

use burn::prelude::*;

use crate::tensor_io::{HostTensor, StoredTensor};

/// Stride of res4 (anchors and RoIPool's `1/16`).
const RES4_STRIDE: f32 = 16.0;

/// The detector's weights, named as the reference's state dict names them (a `ConvBn` adds a
/// `conv` level under the reference's conv name).
#[derive(Module, Debug)]
pub struct DetectorModel<B: Backend> {
    pub backbone: ResNetC4<B>,
    pub proposal_generator: ProposalGenerator<B>,
    pub roi_heads: RoiHeads<B>,
}

impl<B: Backend> DetectorModel<B> {
    /// A model of `cfg`'s sizes with zero weights (and config anchors), to be loaded.
    pub fn new(cfg: &DetectorConfig, device: &B::Device) -> Self {
        Self {
            backbone: ResNetC4::new(cfg, device),
            proposal_generator: ProposalGenerator::new(cfg, device),
            roi_heads: RoiHeads::new(cfg, device),
        }
    }
}

/// Why one image produced no detections.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("image of {height}x{width} pixels resizes to {h}x{w}: too thin for the detector")]
    TooThin {
        height: usize,
        width: usize,
        h: usize,
        w: usize,
    },
    #[error(transparent)]
    Selection(#[from] SelectionError),
}

/// The final regions of one image (`n` detections, D features, C classes).
#[derive(Debug, Clone)]
pub struct Detections {
    /// Original image size `(H0, W0)`.
    pub image_size: (usize, usize),
    /// `[n, 4]` boxes in original-image pixels (not re-clipped).
    pub boxes: Vec<Box4>,
    /// `[n, 4]` boxes divided by `(w, h) * scale` in float32 (the reference's
    /// `normalized_boxes`, right for one image).
    pub normalized_boxes: Vec<Box4>,
    /// `[n, 4]` the kept ROIs' proposals (before box regression), original pixels.
    pub proposal_boxes: Vec<Box4>,
    /// `[n]` class index (0-based, background excluded) and its probability.
    pub obj_ids: Vec<usize>,
    pub obj_probs: Vec<f32>,
    /// `[n]` attribute index (0-based, "no attribute" excluded) and probability.
    pub attr_ids: Vec<usize>,
    pub attr_probs: Vec<f32>,
    /// `[n, D]` region features (mean-pooled res5, `pool5_flat` of the Caffe model).
    pub features: Vec<f32>,
    pub feature_dim: usize,
    /// `[n, C+1]` class probabilities, background LAST (the converted model's order).
    pub cls_probs: Vec<f32>,
}

impl Detections {
    /// Number of regions n.
    pub fn len(&self) -> usize {
        self.obj_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.obj_ids.is_empty()
    }
}

/// Everything computed for one image, for the stage dump and the tests.
#[derive(Debug, Clone)]
pub struct DetectorRun {
    pub preprocessed: Preprocessed,
    /// res4 `[C4, H4, W4]` (host) and its shape.
    pub res4: Vec<f32>,
    pub res4_shape: (usize, usize, usize),
    /// RPN head outputs `[A, H4, W4]` / `[4A, H4, W4]`.
    pub objectness: Vec<f32>,
    pub anchor_deltas: Vec<f32>,
    pub rpn: RpnOutput,
    pub roi: RoiOutput,
    pub preds: RoiPredictions,
    pub selection: Selection,
    pub detections: Detections,
}

/// RoI-head-only outputs on given boxes (the fixtures' fixed-proposals case).
#[derive(Debug, Clone)]
pub struct FixedProposalsRun {
    pub boxes: Vec<Box4>,
    pub res4: Vec<f32>,
    pub res4_shape: (usize, usize, usize),
    /// `[R, C4, P, P]` RoIPool output.
    pub pooled: Vec<f32>,
    /// `[1, D, P, P]` res5 output of box 0.
    pub res5_first: Vec<f32>,
    pub roi: RoiOutput,
    pub preds: RoiPredictions,
}

/// A loaded detector: weights, config and device.
#[derive(Debug)]
pub struct Detector<B: Backend> {
    pub model: DetectorModel<B>,
    pub config: DetectorConfig,
    pub device: B::Device,
}

fn f32_tensor(shape: Vec<usize>, values: Vec<f32>) -> StoredTensor {
    StoredTensor::F32(HostTensor { shape, values })
}

fn i64_tensor(values: impl IntoIterator<Item = usize>) -> StoredTensor {
    let values: Vec<i64> = values.into_iter().map(|v| v as i64).collect();
    StoredTensor::I64(HostTensor {
        shape: vec![values.len()],
        values,
    })
}

fn boxes_tensor(b: &[Box4]) -> StoredTensor {
    f32_tensor(vec![b.len(), 4], b.iter().flatten().copied().collect())
}

impl<B: Backend> Detector<B> {
    /// res4 of one preprocessed image (host `[C4, H4, W4]`).
    fn backbone(&self, pre: &Preprocessed) -> (Vec<f32>, (usize, usize, usize), Tensor<B, 4>) {
        let (h, w) = pre.size;
        let x =
            Tensor::<B, 1>::from_floats(pre.image.as_slice(), &self.device).reshape([1, 3, h, w]);
        let res4 = self.model.backbone.forward(x);
        let [_, c4, h4, w4] = res4.dims();
        (roi::host(res4.clone()), (c4, h4, w4), res4)
    }

    fn checked_preprocess(&self, img: &DecodedImage) -> Result<Preprocessed, DetectError> {
        let (h, w) = resized_size(
            img.height,
            img.width,
            self.config.min_size_test,
            self.config.max_size_test,
        );
        if h == 0 || w == 0 {
            return Err(DetectError::TooThin {
                height: img.height,
                width: img.width,
                h,
                w,
            });
        }
        Ok(preprocess(img, &self.config))
    }

    fn pool(&self, res4: &[f32], shape: (usize, usize, usize), boxes: &[Box4]) -> Vec<f32> {
        let p = self.config.pooler_resolution;
        roi_pool(res4, shape, boxes, p, 1.0 / RES4_STRIDE)
    }

    /// The whole pipeline on one decoded image.
    pub fn run(&self, img: &DecodedImage) -> Result<DetectorRun, DetectError> {
        let cfg = &self.config;
        let pre = self.checked_preprocess(img)?;
        let (res4_host, res4_shape, res4) = self.backbone(&pre);
        let (c4, h4, w4) = res4_shape;
        let (logits, deltas) = self.model.proposal_generator.head(res4);
        let objectness = roi::host(logits);
        let anchor_deltas = roi::host(deltas);
        let cells = self.model.proposal_generator.cell_anchors();
        let rpn =
            rpn::select_proposals(cfg, &cells, &objectness, &anchor_deltas, (h4, w4), pre.size);
        let pooled = self.pool(&res4_host, res4_shape, &rpn.proposals);
        let p = cfg.pooler_resolution;
        let roi =
            self.model
                .roi_heads
                .forward(&pooled, rpn.proposals.len(), (c4, p), &self.device, None);
        let preds = postprocess::predictions(cfg, &roi, &rpn.proposals);
        let selection = postprocess::select(cfg, &preds, pre.size)?;
        let detections = self.detections(img, &pre, &rpn, &roi, &preds, &selection);
        Ok(DetectorRun {
            preprocessed: pre,
            res4: res4_host,
            res4_shape,
            objectness,
            anchor_deltas,
            rpn,
            roi,
            preds,
            selection,
            detections,
        })
    }

    /// Only the final regions of one image.
    pub fn detect(&self, img: &DecodedImage) -> Result<Detections, DetectError> {
        self.run(img).map(|r| r.detections)
    }

    fn detections(
        &self,
        img: &DecodedImage,
        pre: &Preprocessed,
        rpn: &RpnOutput,
        roi: &RoiOutput,
        preds: &RoiPredictions,
        sel: &Selection,
    ) -> Detections {
        let [sy, sx] = pre.scale_yx;
        let (h, w) = pre.size;
        // `image_shapes * scales_yx` in float32, as the reference normalizes.
        let (oh, ow) = (h as f32 * sy, w as f32 * sx);
        let scale = |b: &Box4| [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy];
        let boxes: Vec<Box4> = sel.keep.iter().map(|&i| scale(&sel.max_boxes[i])).collect();
        let normalized_boxes = boxes
            .iter()
            .map(|b| [b[0] / ow, b[1] / oh, b[2] / ow, b[3] / oh])
            .collect();
        let d = roi.feature_pooled.len() / roi.rows.max(1);
        let c1 = self.config.num_classes + 1;
        Detections {
            image_size: (img.height, img.width),
            normalized_boxes,
            proposal_boxes: sel.keep.iter().map(|&i| scale(&rpn.proposals[i])).collect(),
            obj_ids: sel.keep.iter().map(|&i| sel.max_classes[i]).collect(),
            obj_probs: sel.keep.iter().map(|&i| sel.max_scores[i]).collect(),
            attr_ids: sel.keep.iter().map(|&i| preds.attr_ids[i]).collect(),
            attr_probs: sel.keep.iter().map(|&i| preds.attr_probs[i]).collect(),
            features: sel
                .keep
                .iter()
                .flat_map(|&i| roi.feature_pooled[i * d..(i + 1) * d].iter().copied())
                .collect(),
            feature_dim: d,
            cls_probs: sel
                .keep
                .iter()
                .flat_map(|&i| preds.cls_probs[i * c1..(i + 1) * c1].iter().copied())
                .collect(),
            boxes,
        }
    }

    /// The ROI head alone on `boxes` (resized-image pixels) of one image.
    pub fn run_on_boxes(
        &self,
        img: &DecodedImage,
        boxes: &[Box4],
    ) -> Result<FixedProposalsRun, DetectError> {
        let pre = self.checked_preprocess(img)?;
        let (res4, res4_shape, _) = self.backbone(&pre);
        let pooled = self.pool(&res4, res4_shape, boxes);
        let p = self.config.pooler_resolution;
        let mut res5_first = Vec::new();
        let roi = self.model.roi_heads.forward(
            &pooled,
            boxes.len(),
            (res4_shape.0, p),
            &self.device,
            Some(&mut res5_first),
        );
        let preds = postprocess::predictions(&self.config, &roi, boxes);
        Ok(FixedProposalsRun {
            boxes: boxes.to_vec(),
            res4,
            res4_shape,
            pooled,
            res5_first,
            roi,
            preds,
        })
    }
}

fn res4_tensor(res4: &[f32], (c4, h4, w4): (usize, usize, usize)) -> StoredTensor {
    f32_tensor(vec![1, c4, h4, w4], res4.to_vec())
}

/// The ROI-head stages shared by both runs (`roi.*`).
fn roi_stages(
    cfg: &DetectorConfig,
    roi: &RoiOutput,
    preds: &RoiPredictions,
) -> Vec<(String, StoredTensor)> {
    let r = roi.rows;
    let d = roi.feature_pooled.len() / r.max(1);
    let c = cfg.num_classes;
    vec![
        (
            "roi.feature_pooled".into(),
            f32_tensor(vec![r, d], roi.feature_pooled.clone()),
        ),
        (
            "roi.cls_logits".into(),
            f32_tensor(vec![r, c + 1], roi.cls_logits.clone()),
        ),
        (
            "roi.attr_logits".into(),
            f32_tensor(vec![r, cfg.num_attrs + 1], roi.attr_logits.clone()),
        ),
        (
            "roi.box_deltas".into(),
            f32_tensor(vec![r, 4 * c], roi.box_deltas.clone()),
        ),
        (
            "roi.cls_probs".into(),
            f32_tensor(vec![r, c + 1], preds.cls_probs.clone()),
        ),
        (
            "roi.attr_probs".into(),
            f32_tensor(vec![r], preds.attr_probs.clone()),
        ),
        (
            "roi.attr_ids".into(),
            i64_tensor(preds.attr_ids.iter().copied()),
        ),
    ]
}

impl DetectorRun {
    /// Every stage under the fixture names (`stages/<image>.safetensors`).
    pub fn stages(&self, cfg: &DetectorConfig, img: &DecodedImage) -> Vec<(String, StoredTensor)> {
        let pre = &self.preprocessed;
        let (h, w) = pre.size;
        let (_, h4, w4) = self.res4_shape;
        let a = cfg.num_anchors();
        let rpn = &self.rpn;
        let sel = &self.selection;
        let det = &self.detections;
        let r = rpn.proposals.len();
        let n = det.len();
        let c = cfg.num_classes;
        let mut out: Vec<(String, StoredTensor)> = vec![
            (
                "input.decoded_u8".into(),
                StoredTensor::U8(HostTensor {
                    shape: vec![img.height, img.width, 3],
                    values: img.pixels.clone(),
                }),
            ),
            (
                "preprocess.image".into(),
                f32_tensor(vec![1, 3, h, w], pre.image.clone()),
            ),
            ("preprocess.image_size".into(), i64_tensor([h, w])),
            (
                "preprocess.scale_yx".into(),
                f32_tensor(vec![2], pre.scale_yx.to_vec()),
            ),
            (
                "backbone.res4".into(),
                res4_tensor(&self.res4, self.res4_shape),
            ),
            (
                "rpn.objectness_logits".into(),
                f32_tensor(vec![1, a, h4, w4], self.objectness.clone()),
            ),
            (
                "rpn.anchor_deltas".into(),
                f32_tensor(vec![1, 4 * a, h4, w4], self.anchor_deltas.clone()),
            ),
            ("rpn.anchors".into(), boxes_tensor(&rpn.anchors)),
            (
                "rpn.logits_flat".into(),
                f32_tensor(vec![rpn.logits.len()], rpn.logits.clone()),
            ),
            ("rpn.proposals_decoded".into(), boxes_tensor(&rpn.decoded)),
            (
                "rpn.pre_nms_topk_idx".into(),
                i64_tensor(rpn.topk_idx.iter().copied()),
            ),
            (
                "rpn.pre_nms_boxes_clipped".into(),
                boxes_tensor(&rpn.topk_clipped),
            ),
            ("rpn.proposals".into(), boxes_tensor(&rpn.proposals)),
            (
                "rpn.proposal_logits".into(),
                f32_tensor(vec![r], rpn.proposal_logits.clone()),
            ),
            (
                "rpn.proposal_src_rank".into(),
                i64_tensor(rpn.proposal_src_rank.iter().copied()),
            ),
        ];
        out.extend(roi_stages(cfg, &self.roi, &self.preds));
        out.extend([
            (
                "roi.pred_boxes".into(),
                f32_tensor(vec![r, 4 * c], self.preds.pred_boxes.clone()),
            ),
            (
                "det.max_scores_all".into(),
                f32_tensor(vec![r], sel.max_scores.clone()),
            ),
            (
                "det.max_classes_all".into(),
                i64_tensor(sel.max_classes.iter().copied()),
            ),
            ("det.max_boxes_all".into(), boxes_tensor(&sel.max_boxes)),
            ("det.keep".into(), i64_tensor(sel.keep.iter().copied())),
            (
                "det.boxes_resized".into(),
                boxes_tensor(
                    &sel.keep
                        .iter()
                        .map(|&i| sel.max_boxes[i])
                        .collect::<Vec<_>>(),
                ),
            ),
            ("det.boxes".into(), boxes_tensor(&det.boxes)),
            (
                "det.normalized_boxes".into(),
                boxes_tensor(&det.normalized_boxes),
            ),
            (
                "det.obj_ids".into(),
                i64_tensor(det.obj_ids.iter().copied()),
            ),
            (
                "det.obj_probs".into(),
                f32_tensor(vec![n], det.obj_probs.clone()),
            ),
            (
                "det.attr_ids".into(),
                i64_tensor(det.attr_ids.iter().copied()),
            ),
            (
                "det.attr_probs".into(),
                f32_tensor(vec![n], det.attr_probs.clone()),
            ),
            (
                "det.roi_features".into(),
                f32_tensor(vec![n, det.feature_dim], det.features.clone()),
            ),
            (
                "det.proposal_boxes".into(),
                boxes_tensor(&det.proposal_boxes),
            ),
        ]);
        out
    }
}

impl FixedProposalsRun {
    /// The stages of `fixed_proposals/<image>.safetensors`.
    pub fn stages(&self, cfg: &DetectorConfig) -> Vec<(String, StoredTensor)> {
        let (c4, _, _) = self.res4_shape;
        let p = cfg.pooler_resolution;
        let r = self.boxes.len();
        let d = self.res5_first.len() / (p * p).max(1);
        let mut out: Vec<(String, StoredTensor)> = vec![
            ("boxes".into(), boxes_tensor(&self.boxes)),
            (
                "backbone.res4".into(),
                res4_tensor(&self.res4, self.res4_shape),
            ),
            (
                "roi.pooler_out".into(),
                f32_tensor(vec![r, c4, p, p], self.pooled.clone()),
            ),
            (
                "roi.res5_out_box0".into(),
                f32_tensor(vec![1, d, p, p], self.res5_first.clone()),
            ),
        ];
        out.extend(roi_stages(cfg, &self.roi, &self.preds));
        out
    }
}
