//! Detector output → UNITER's region records: what `extract` stores per image and what a
//! search by photo feeds the image tower, so that an uploaded copy of an indexed image is
//! encoded exactly as the index encoded it.
//!
//! Records follow the fixture README's mapping (`fixtures/butd/uniter/`): `features` = the kept
//! regions' mean-pooled res5 features, `norm_bb` from the regressed boxes, `conf` = the best
//! foreground probability, `soft_labels` = the class probabilities with background moved FIRST;
//! all float16, in the detector's output order (descending confidence).

use half::f16;

use crate::data::RegionFeatures;
use crate::data::img_db::{FloatDtype, ImgDbOptions, ImgDump, NdArray};
use crate::model::detector::{Detections, DetectorConfig};

/// The UNITER record of one image's detections (float16 arrays: `features` `[n, D]`,
/// `norm_bb` `[n, 6]`, `conf` `[n]`, `soft_labels` `[n, C + 1]`).
pub fn uniter_record(det: &Detections) -> ImgDump {
    let n = det.len();
    let array = |shape: Vec<usize>, data: Vec<f32>| NdArray {
        shape,
        data,
        dtype: FloatDtype::F16,
    };
    // The converted model has background last; UNITER's soft labels have it first.
    let c1 = det.cls_probs.len() / n.max(1);
    let soft_labels: Vec<f32> = det
        .cls_probs
        .chunks_exact(c1.max(1))
        .flat_map(|row| {
            let (fg, bg) = row.split_at(c1 - 1);
            bg.iter().chain(fg).copied().collect::<Vec<_>>()
        })
        .collect();
    ImgDump {
        fields: vec![
            (
                "features".into(),
                array(vec![n, det.feature_dim], det.features.clone()),
            ),
            ("norm_bb".into(), array(vec![n, 6], norm_bb(det))),
            ("conf".into(), array(vec![n], det.obj_probs.clone())),
            ("soft_labels".into(), array(vec![n, c1], soft_labels)),
        ],
    }
}

/// `[n, 6]` boxes over the original size: `[x1, y1, x2, y2, w, h]`, each in `[0, 1]` for a box
/// inside the image.
fn norm_bb(det: &Detections) -> Vec<f32> {
    let (h0, w0) = (det.image_size.0 as f32, det.image_size.1 as f32);
    det.boxes
        .iter()
        .flat_map(|b| {
            let (x1, y1) = (b[0] / w0, b[1] / h0);
            let (bw, bh) = ((b[2] - b[0]) / w0, (b[3] - b[1]) / h0);
            [x1, y1, x1 + bw, y1 + bh, bw, bh]
        })
        .collect()
}

/// Rounded to float16 and back, as a stored record hands it out.
fn stored(values: &[f32]) -> Vec<f32> {
    values.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
}

/// UNITER's box count of one image (the img_db's nbb table entry): `options`' rule applied to
/// the confidences as stored (float16).
pub fn box_count(det: &Detections, options: &ImgDbOptions) -> usize {
    options.nbb(&stored(&det.obj_probs), FloatDtype::F16)
}

/// Makes the detector return exactly `num_bb` regions when `options` is a fixed-count db
/// (`conf_th == -1`, `feat_numbb{N}`), as UNITER's fixed-count features were extracted.
pub fn fix_detection_count(config: &mut DetectorConfig, options: &ImgDbOptions) {
    if options.conf_th == -1.0 {
        config.min_detections = options.num_bb;
        config.max_detections = options.num_bb;
    }
}

/// The image tower's input for one image's detections: the first [`box_count`] regions,
/// features and boxes rounded to float16, exactly what an img_db written by `extract` with
/// `options` hands out for this image.
pub fn region_features(det: &Detections, options: &ImgDbOptions) -> RegionFeatures {
    let n = box_count(det, options).min(det.len());
    let d = det.feature_dim;
    RegionFeatures::from_norm_bb(
        stored(&det.features[..n * d]),
        &stored(&norm_bb(det)[..n * 6]),
    )
}
