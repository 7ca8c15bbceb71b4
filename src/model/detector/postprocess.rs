//! Test-time selection and outputs (behaviours 12–15 of the fixture README): class
//! probabilities, per-class boxes, `do_nms` over the list of NMS thresholds with min / max
//! detections, and the kept regions in original-image pixels.

use super::boxes::{Box4, apply_deltas, clip, nms};
use super::config::DetectorConfig;
use super::roi::{RoiOutput, argmax};

/// Softmax of one row in float32 (max-subtracted).
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|&v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Per-ROI predictions derived from the head's logits (host, row-major).
#[derive(Debug, Clone)]
pub struct RoiPredictions {
    /// `[R, C+1]` softmax over all logits.
    pub cls_probs: Vec<f32>,
    /// `[R, 4C]` class-specific boxes (resized pixels), before clipping.
    pub pred_boxes: Vec<f32>,
    /// `[R]` max / argmax of the softmax over the first NA attribute logits.
    pub attr_probs: Vec<f32>,
    pub attr_ids: Vec<usize>,
}

/// Class probabilities, regressed boxes (weights `roi_box_head.bbox_reg_weights`) and
/// attributes ("no attribute" dropped before the softmax).
pub fn predictions(cfg: &DetectorConfig, roi: &RoiOutput, proposals: &[Box4]) -> RoiPredictions {
    let (c, na) = (cfg.num_classes, cfg.num_attrs);
    let cls_probs: Vec<f32> = roi
        .cls_logits
        .chunks_exact(c + 1)
        .flat_map(softmax)
        .collect();
    let mut pred_boxes = Vec::with_capacity(roi.rows * 4 * c);
    for (r, deltas) in roi.box_deltas.chunks_exact(4 * c).enumerate() {
        for d in deltas.chunks_exact(4) {
            pred_boxes.extend(apply_deltas(&proposals[r], d, &cfg.roi_bbox_reg_weights));
        }
    }
    let (attr_probs, attr_ids) = roi
        .attr_logits
        .chunks_exact(na + 1)
        .map(|row| {
            let (i, p) = argmax(&softmax(&row[..na]));
            (p, i)
        })
        .unzip();
    RoiPredictions {
        cls_probs,
        pred_boxes,
        attr_probs,
        attr_ids,
    }
}

/// Why no detections could be selected.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    /// The reference crashes here (or silently reuses the previous image's results).
    #[error(
        "no NMS threshold of {thresholds:?} keeps min_detections = {min} regions (kept {kept:?} of {rois} proposals)"
    )]
    TooFewDetections {
        thresholds: Vec<f64>,
        min: usize,
        kept: Vec<usize>,
        rois: usize,
    },
}

/// `do_nms` result of one image.
#[derive(Debug, Clone)]
pub struct Selection {
    /// `[R]` best foreground probability, its class, and that class's clipped box.
    pub max_scores: Vec<f32>,
    pub max_classes: Vec<usize>,
    pub max_boxes: Vec<Box4>,
    /// Kept ROI indices in output order (descending probability).
    pub keep: Vec<usize>,
    /// The threshold that reached `min_detections`.
    pub nms_thresh: f64,
    /// Survivors per threshold tried (before truncation to `max_detections`).
    pub tries: Vec<(f64, usize)>,
}

/// Class-agnostic NMS on each ROI's best foreground box, trying the thresholds in order until
/// at least `min_detections` survive; at most `max_detections` are kept. `(h, w)` is the
/// resized image size.
pub fn select(
    cfg: &DetectorConfig,
    preds: &RoiPredictions,
    (h, w): (usize, usize),
) -> Result<Selection, SelectionError> {
    let c = cfg.num_classes;
    let rows = preds.cls_probs.len() / (c + 1);
    let mut max_scores = Vec::with_capacity(rows);
    let mut max_classes = Vec::with_capacity(rows);
    let mut max_boxes = Vec::with_capacity(rows);
    for r in 0..rows {
        let probs = &preds.cls_probs[r * (c + 1)..r * (c + 1) + c];
        let (cls, p) = argmax(probs);
        let b = &preds.pred_boxes[(r * c + cls) * 4..(r * c + cls) * 4 + 4];
        max_scores.push(p);
        max_classes.push(cls);
        max_boxes.push(clip(&[b[0], b[1], b[2], b[3]], h as f32, w as f32));
    }
    let mut tries = Vec::new();
    for &t in &cfg.nms_thresh_test {
        let mut keep = nms(&max_boxes, &max_scores, t);
        tries.push((t, keep.len()));
        keep.truncate(cfg.max_detections);
        if keep.len() >= cfg.min_detections {
            return Ok(Selection {
                max_scores,
                max_classes,
                max_boxes,
                keep,
                nms_thresh: t,
                tries,
            });
        }
    }
    Err(SelectionError::TooFewDetections {
        thresholds: cfg.nms_thresh_test.clone(),
        min: cfg.min_detections,
        kept: tries.iter().map(|t| t.1).collect(),
        rois: rows,
    })
}
