//! Region proposal network (behaviours 5–8 of the fixture README): 3x3 conv + ReLU, 1x1 convs
//! to A objectness logits and 4A deltas per cell; anchors; per-image top-k, clip, empty-box
//! filter, NMS and post-NMS top-k on the host.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use super::backbone::ConvShape;
use super::boxes::{Box4, apply_deltas, argsort_desc, clip, nms};
use super::config::DetectorConfig;

/// `rpn_head`: shared conv, objectness and delta convs (with biases).
#[derive(Module, Debug)]
pub struct RpnHead<B: Backend> {
    pub conv: Conv2d<B>,
    pub objectness_logits: Conv2d<B>,
    pub anchor_deltas: Conv2d<B>,
}

/// `anchor_generator`: the cell anchors `[A, 4]` of the one feature level. They are in the
/// checkpoint (a `ParameterList`) and the reference uses the loaded values.
#[derive(Module, Debug)]
pub struct AnchorGenerator<B: Backend> {
    pub cell_anchors: Vec<Param<Tensor<B, 2>>>,
}

/// `proposal_generator` of the checkpoint.
#[derive(Module, Debug)]
pub struct ProposalGenerator<B: Backend> {
    pub rpn_head: RpnHead<B>,
    pub anchor_generator: AnchorGenerator<B>,
}

/// Cell anchors computed from the config as the reference does (float64, stored float32):
/// sizes outer, aspect ratios inner, `w = sqrt(size^2 / r)`, `h = r * w`, centred at 0.
pub fn cell_anchors(cfg: &DetectorConfig) -> Vec<Box4> {
    let mut out = Vec::new();
    for &size in &cfg.anchor_sizes {
        for &r in &cfg.aspect_ratios {
            let w = (size * size / r).sqrt();
            let h = r * w;
            out.push([
                (-w / 2.0) as f32,
                (-h / 2.0) as f32,
                (w / 2.0) as f32,
                (h / 2.0) as f32,
            ]);
        }
    }
    out
}

impl<B: Backend> ProposalGenerator<B> {
    pub(super) fn new(cfg: &DetectorConfig, device: &B::Device) -> Self {
        let (c4, hidden, a) = (cfg.res4_channels(), cfg.rpn_hidden(), cfg.num_anchors());
        let mut conv = ConvShape::new([c4, hidden], 3);
        conv.padding = 1;
        let anchors: Vec<f32> = cell_anchors(cfg).into_iter().flatten().collect();
        let anchors = Tensor::<B, 1>::from_floats(anchors.as_slice(), device).reshape([a, 4]);
        Self {
            rpn_head: RpnHead {
                conv: conv.init(true, device),
                objectness_logits: ConvShape::new([hidden, a], 1).init(true, device),
                anchor_deltas: ConvShape::new([hidden, 4 * a], 1).init(true, device),
            },
            anchor_generator: AnchorGenerator {
                cell_anchors: vec![Param::from_tensor(anchors)],
            },
        }
    }

    /// res4 `[N, C4, H4, W4]` → objectness logits `[N, A, H4, W4]` and deltas `[N, 4A, H4, W4]`.
    pub fn head(&self, res4: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let t = burn::tensor::activation::relu(self.rpn_head.conv.forward(res4));
        (
            self.rpn_head.objectness_logits.forward(t.clone()),
            self.rpn_head.anchor_deltas.forward(t),
        )
    }

    /// The loaded cell anchors `[A, 4]`.
    pub fn cell_anchors(&self) -> Vec<Box4> {
        let a = &self.anchor_generator.cell_anchors;
        let values: Vec<f32> = a
            .first()
            .map(|p| {
                p.val()
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        values
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect()
    }
}

/// Anchors of an `H4 x W4` grid, order (y, x, anchor): cell anchors shifted by
/// `offset * stride + stride * (x, y)` (float32).
pub fn grid_anchors(cells: &[Box4], h4: usize, w4: usize, stride: f32, offset: f32) -> Vec<Box4> {
    let mut out = Vec::with_capacity(h4 * w4 * cells.len());
    for y in 0..h4 {
        let sy = offset * stride + y as f32 * stride;
        for x in 0..w4 {
            let sx = offset * stride + x as f32 * stride;
            for c in cells {
                out.push([sx + c[0], sy + c[1], sx + c[2], sy + c[3]]);
            }
        }
    }
    out
}

/// Everything the RPN decides for one image (host values; `HWA = H4 * W4 * A`).
#[derive(Debug, Clone)]
pub struct RpnOutput {
    /// `[HWA, 4]` anchors, order (y, x, anchor).
    pub anchors: Vec<Box4>,
    /// `[HWA]` raw logits in the same order.
    pub logits: Vec<f32>,
    /// `[HWA, 4]` anchors + deltas, before clipping.
    pub decoded: Vec<Box4>,
    /// `[K]` indices of the K largest logits, descending.
    pub topk_idx: Vec<usize>,
    /// `[K, 4]` those proposals clipped to the resized image.
    pub topk_clipped: Vec<Box4>,
    /// `[R, 4]` proposals after the empty-box filter, NMS and top-k, descending logit.
    pub proposals: Vec<Box4>,
    /// `[R]` their logits.
    pub proposal_logits: Vec<f32>,
    /// `[R]` row of `topk_clipped` each proposal is.
    pub proposal_src_rank: Vec<usize>,
}

/// Proposal selection of one image from the head's outputs (host copies):
/// `logits` `[A, H4, W4]`, `deltas` `[4A, H4, W4]`; `(h, w)` the resized image size.
pub fn select_proposals(
    cfg: &DetectorConfig,
    cells: &[Box4],
    logits_ahw: &[f32],
    deltas_ahw: &[f32],
    (h4, w4): (usize, usize),
    (h, w): (usize, usize),
) -> RpnOutput {
    let a = cells.len();
    let hw = h4 * w4;
    let anchors = grid_anchors(cells, h4, w4, 16.0, cfg.anchor_offset);
    // (A, H, W) → (H, W, A); deltas (A, 4, H, W) → (H, W, A, 4).
    let mut logits = Vec::with_capacity(hw * a);
    let mut decoded = Vec::with_capacity(hw * a);
    for cell in 0..hw {
        for k in 0..a {
            logits.push(logits_ahw[k * hw + cell]);
            let d: [f32; 4] = std::array::from_fn(|j| deltas_ahw[(k * 4 + j) * hw + cell]);
            decoded.push(apply_deltas(
                &anchors[cell * a + k],
                &d,
                &cfg.rpn_bbox_reg_weights,
            ));
        }
    }
    let k = cfg.pre_nms_topk_test.min(logits.len());
    let mut topk_idx = argsort_desc(&logits);
    topk_idx.truncate(k);
    let (hf, wf) = (h as f32, w as f32);
    let topk_clipped: Vec<Box4> = topk_idx
        .iter()
        .map(|&i| clip(&decoded[i], hf, wf))
        .collect();
    let min = cfg.proposal_min_size;
    let nonempty: Vec<usize> = (0..k)
        .filter(|&r| {
            let b = &topk_clipped[r];
            b[2] - b[0] > min && b[3] - b[1] > min
        })
        .collect();
    let boxes: Vec<Box4> = nonempty.iter().map(|&r| topk_clipped[r]).collect();
    let scores: Vec<f32> = nonempty.iter().map(|&r| logits[topk_idx[r]]).collect();
    let mut keep = nms(&boxes, &scores, cfg.rpn_nms_thresh);
    keep.truncate(cfg.post_nms_topk_test);
    // NMS already returns descending scores; the reference sorts once more (a no-op).
    let proposal_src_rank: Vec<usize> = keep.iter().map(|&i| nonempty[i]).collect();
    RpnOutput {
        proposals: keep.iter().map(|&i| boxes[i]).collect(),
        proposal_logits: keep.iter().map(|&i| scores[i]).collect(),
        proposal_src_rank,
        anchors,
        logits,
        decoded,
        topk_idx,
        topk_clipped,
    }
}
