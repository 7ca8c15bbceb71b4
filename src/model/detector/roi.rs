//! ROI head (behaviours 10–13 of the fixture README): torchvision RoIPool on res4, the res5
//! blocks (stride 1, dilation 2 unless `res5halve`), mean over 14x14, and the class / box /
//! attribute predictors.

use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;

use super::backbone::{BlockShape, Bottleneck, make_stage};
use super::boxes::Box4;
use super::config::DetectorConfig;

/// ROIs per res5 pass: bounds the `[R, D, 14, 14]` activations (300 full-size ROIs at once
/// would need ~0.5 GB per tensor) without changing any value.
const ROI_CHUNK: usize = 32;

/// `box_predictor`: background is the LAST class, boxes are class-specific without a
/// background box, attributes are predicted from the feature and the argmax class's embedding.
#[derive(Module, Debug)]
pub struct BoxPredictor<B: Backend> {
    pub cls_score: Linear<B>,
    pub bbox_pred: Linear<B>,
    pub cls_embedding: Embedding<B>,
    pub fc_attr: Linear<B>,
    pub attr_score: Linear<B>,
}

/// `roi_heads` of the checkpoint.
#[derive(Module, Debug)]
pub struct RoiHeads<B: Backend> {
    pub res5: Vec<Bottleneck<B>>,
    pub box_predictor: BoxPredictor<B>,
}

/// The ROI head's outputs for R regions (host values, row-major).
#[derive(Debug, Clone)]
pub struct RoiOutput {
    /// `[R, D]` mean of res5 over 14x14.
    pub feature_pooled: Vec<f32>,
    /// `[R, C+1]` class logits, background last.
    pub cls_logits: Vec<f32>,
    /// `[R, NA+1]` attribute logits, "no attribute" last.
    pub attr_logits: Vec<f32>,
    /// `[R, 4C]` class-specific box deltas.
    pub box_deltas: Vec<f32>,
    /// Region count R.
    pub rows: usize,
}

fn linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Zeros)
        .init(device)
}

/// Host copy of a float tensor.
pub(super) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

impl<B: Backend> RoiHeads<B> {
    pub(super) fn new(cfg: &DetectorConfig, device: &B::Device) -> Self {
        let d = cfg.feature_dim();
        let res5 = make_stage(
            3,
            BlockShape {
                in_channels: cfg.res4_channels(),
                bottleneck: cfg.num_groups * cfg.width_per_group * 8,
                out_channels: d,
                // res5halve keeps detectron2's res5; otherwise the VG model's stride 1,
                // dilation 2 variant.
                stride: if cfg.res5_halve { 2 } else { 1 },
                dilation: if cfg.res5_halve { 1 } else { 2 },
                groups: cfg.num_groups,
                stride_in_1x1: cfg.stride_in_1x1,
            },
            device,
        );
        let (c, na) = (cfg.num_classes, cfg.num_attrs);
        Self {
            res5,
            box_predictor: BoxPredictor {
                cls_score: linear(d, c + 1, device),
                bbox_pred: linear(d, 4 * c, device),
                cls_embedding: EmbeddingConfig::new(c + 1, d / 8)
                    .with_initializer(Initializer::Zeros)
                    .init(device),
                fc_attr: linear(d + d / 8, d / 4, device),
                attr_score: linear(d / 4, na + 1, device),
            },
        }
    }

    /// res5 on pooled maps `[R, C4, 14, 14]` → `[R, D, 14, 14]`.
    pub fn res5(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.res5.iter().fold(x, |x, b| b.forward(x))
    }

    /// Pooled maps `[R, C4, P, P]` (host) → features and predictions. `res5_first` receives
    /// the res5 output of ROI 0 `[1, D, P, P]` when asked (a fixture stage).
    pub fn forward(
        &self,
        pooled: &[f32],
        rows: usize,
        (c4, p): (usize, usize),
        device: &B::Device,
        mut res5_first: Option<&mut Vec<f32>>,
    ) -> RoiOutput {
        let per_roi = c4 * p * p;
        let mut feature_pooled = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = ROI_CHUNK.min(rows - start);
            let data = &pooled[start * per_roi..(start + n) * per_roi];
            let x = Tensor::<B, 1>::from_floats(data, device).reshape([n, c4, p, p]);
            let y = self.res5(x);
            if start == 0
                && let Some(out) = res5_first.take()
            {
                *out = host(y.clone().narrow(0, 0, 1));
            }
            let [_, d, _, _] = y.dims();
            feature_pooled.extend(host(y.mean_dim(3).mean_dim(2).reshape([n, d])));
            start += n;
        }
        self.predict(feature_pooled, rows, device)
    }

    /// Predictors on region features `[R, D]` (host).
    pub fn predict(&self, feature_pooled: Vec<f32>, rows: usize, device: &B::Device) -> RoiOutput {
        let bp = &self.box_predictor;
        if rows == 0 {
            return RoiOutput {
                feature_pooled,
                cls_logits: Vec::new(),
                attr_logits: Vec::new(),
                box_deltas: Vec::new(),
                rows,
            };
        }
        let d = feature_pooled.len() / rows;
        let x = Tensor::<B, 1>::from_floats(feature_pooled.as_slice(), device).reshape([rows, d]);
        let cls = bp.cls_score.forward(x.clone());
        let deltas = bp.bbox_pred.forward(x.clone());
        let cls_logits = host(cls);
        // Argmax over all C+1 logits, background included, first index on ties.
        let classes = cls_logits.len() / rows;
        let max_class: Vec<i64> = cls_logits
            .chunks_exact(classes)
            .map(|row| argmax(row).0 as i64)
            .collect();
        let ids = Tensor::<B, 1, Int>::from_ints(max_class.as_slice(), device).reshape([1, rows]);
        let emb = bp.cls_embedding.forward(ids).reshape([rows, d / 8]);
        let attr_in = Tensor::cat(vec![x, emb], 1);
        let attr = burn::tensor::activation::relu(bp.fc_attr.forward(attr_in));
        let attr_logits = host(bp.attr_score.forward(attr));
        RoiOutput {
            feature_pooled,
            cls_logits,
            attr_logits,
            box_deltas: host(deltas),
            rows,
        }
    }
}

/// Index and value of the largest element; the first one on ties.
pub fn argmax(row: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best.1 || i == 0 {
            best = (i, v);
        }
    }
    best
}

/// torchvision's CPU `roi_pool` for one image: res4 `[C, H4, W4]` (host), boxes in resized-image
/// pixels → `[R, C, P, P]`. Corners are scaled by `1/16` and rounded half away from zero; bin
/// `p` covers cells `floor(p * bin) .. ceil((p + 1) * bin)` from the start corner, clipped to the
/// map; an empty bin is 0.
pub fn roi_pool(
    res4: &[f32],
    (c4, h4, w4): (usize, usize, usize),
    boxes: &[Box4],
    p: usize,
    spatial_scale: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; boxes.len() * c4 * p * p];
    for (r, b) in boxes.iter().enumerate() {
        let start_w = (b[0] * spatial_scale).round() as i64;
        let start_h = (b[1] * spatial_scale).round() as i64;
        let end_w = (b[2] * spatial_scale).round() as i64;
        let end_h = (b[3] * spatial_scale).round() as i64;
        let roi_w = (end_w - start_w + 1).max(1);
        let roi_h = (end_h - start_h + 1).max(1);
        let bin_h = roi_h as f32 / p as f32;
        let bin_w = roi_w as f32 / p as f32;
        let range = |i: usize, bin: f32, start: i64, size: usize| {
            let lo = (i as f32 * bin).floor() as i64 + start;
            let hi = ((i + 1) as f32 * bin).ceil() as i64 + start;
            (
                lo.clamp(0, size as i64) as usize,
                hi.clamp(0, size as i64) as usize,
            )
        };
        for ph in 0..p {
            let (hs, he) = range(ph, bin_h, start_h, h4);
            for pw in 0..p {
                let (ws, we) = range(pw, bin_w, start_w, w4);
                if he <= hs || we <= ws {
                    continue;
                }
                for c in 0..c4 {
                    let plane = &res4[c * h4 * w4..(c + 1) * h4 * w4];
                    let mut m = f32::MIN;
                    for y in hs..he {
                        for &v in &plane[y * w4 + ws..y * w4 + we] {
                            if v > m {
                                m = v;
                            }
                        }
                    }
                    out[((r * c4 + c) * p + ph) * p + pw] = m;
                }
            }
        }
    }
    out
}
