//! Box arithmetic on the host, in float32 as the reference does it: the R-CNN box transform
//! (behaviour 7), clipping, and torchvision's CPU NMS (behaviour 9). Boxes are `(x1, y1, x2, y2)`.

/// One box `(x1, y1, x2, y2)` in pixels.
pub type Box4 = [f32; 4];

/// `Box2BoxTransform.apply_deltas` for one box and one `(dx, dy, dw, dh)`: deltas divided by
/// `weights`, `dw`/`dh` clamped to `log(1000 / 16)`, widths without +1.
pub fn apply_deltas(b: &Box4, d: &[f32], weights: &[f32; 4]) -> Box4 {
    let clamp = (1000.0f64 / 16.0).ln() as f32;
    let width = b[2] - b[0];
    let height = b[3] - b[1];
    let ctr_x = b[0] + 0.5 * width;
    let ctr_y = b[1] + 0.5 * height;
    let dx = d[0] / weights[0];
    let dy = d[1] / weights[1];
    let dw = (d[2] / weights[2]).min(clamp);
    let dh = (d[3] / weights[3]).min(clamp);
    let pred_ctr_x = dx * width + ctr_x;
    let pred_ctr_y = dy * height + ctr_y;
    let pred_w = dw.exp() * width;
    let pred_h = dh.exp() * height;
    [
        pred_ctr_x - 0.5 * pred_w,
        pred_ctr_y - 0.5 * pred_h,
        pred_ctr_x + 0.5 * pred_w,
        pred_ctr_y + 0.5 * pred_h,
    ]
}

/// Clamps x to `[0, w]` and y to `[0, h]` (`_clip_box`; `(h, w)` of the resized image).
pub fn clip(b: &Box4, h: f32, w: f32) -> Box4 {
    [
        b[0].clamp(0.0, w),
        b[1].clamp(0.0, h),
        b[2].clamp(0.0, w),
        b[3].clamp(0.0, h),
    ]
}

/// Indices of `scores` sorted descending; equal scores keep the lower index first (the stable
/// sort torchvision's NMS and the reference's sorts use).
pub fn argsort_desc(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// torchvision's CPU `nms`: kept indices in descending score order. Box j is suppressed when
/// its float32 IoU with a kept box is strictly above `thresh` (compared in double).
pub fn nms(boxes: &[Box4], scores: &[f32], thresh: f64) -> Vec<usize> {
    let area = |b: &Box4| (b[2] - b[0]) * (b[3] - b[1]);
    let areas: Vec<f32> = boxes.iter().map(area).collect();
    let order = argsort_desc(scores);
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i];
        for &j in &order[oi + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            let iou = inter / (areas[i] + areas[j] - inter);
            if f64::from(iou) > thresh {
                suppressed[j] = true;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nms_keeps_lower_index_on_ties_and_is_strict() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 5.0],
        ];
        // IoU of box 2 with box 0 is exactly 0.5: not suppressed at 0.5.
        assert_eq!(nms(&boxes, &[1.0, 1.0, 0.5], 0.5), vec![0, 2]);
        assert_eq!(nms(&boxes, &[1.0, 1.0, 0.5], 0.4), vec![0]);
    }
}
