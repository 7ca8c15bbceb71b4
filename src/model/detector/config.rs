//! The detector's `config.yaml`, read as the reference's `utils.Config` reads it: nested
//! mappings, every key reachable as written or upper-cased (the file is lower-case, the code
//! reads upper-case), a `null` value is an error.

use serde_yaml::Value;

/// Why a detector config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DetectorConfigError {
    #[error("config.yaml: not YAML ({0})")]
    Yaml(String),
    #[error("config.yaml: key {0} is missing")]
    Missing(String),
    #[error("config.yaml: key {key} is {reason}")]
    Invalid { key: String, reason: String },
}

/// Every value of `config.yaml` the reference reads at test time (`config.full.yaml` of the
/// fixtures documents each one). Training-only keys are not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// `model.pixel_mean` / `model.pixel_std`, per input channel as it reaches the network.
    pub pixel_mean: [f32; 3],
    pub pixel_std: [f32; 3],
    /// `input.format`: `BGR` (local files then reach the network as RGB, a reference quirk) or `RGB`.
    pub input_format: String,
    /// `input.min_size_test` / `input.max_size_test`: the shorter-edge resize rule.
    pub min_size_test: usize,
    pub max_size_test: usize,
    /// `pad_value`: written into the padded area after normalization.
    pub pad_value: f32,
    /// `model.max_pool`: the Caffe stem pool (3x3/2, pad 0, ceil mode) instead of pad 1.
    pub caffe_max_pool: bool,
    /// `min_detections` / `max_detections` (top level).
    pub min_detections: usize,
    pub max_detections: usize,
    /// `resnets.depth`: 50, 101 or 152.
    pub depth: usize,
    pub num_groups: usize,
    pub width_per_group: usize,
    pub stride_in_1x1: bool,
    pub res2_out_channels: usize,
    pub stem_out_channels: usize,
    /// `proposal_generator.hidden_channels` (-1: res4's channels).
    pub rpn_hidden_channels: i64,
    /// `proposal_generator.min_size`: proposals with a side `<=` this are dropped.
    pub proposal_min_size: f32,
    /// `anchor_generator.sizes[0]` / `aspect_ratios[0]` / `offset` (one feature level).
    pub anchor_sizes: Vec<f64>,
    pub aspect_ratios: Vec<f64>,
    pub anchor_offset: f32,
    pub rpn_nms_thresh: f64,
    pub pre_nms_topk_test: usize,
    pub post_nms_topk_test: usize,
    pub rpn_bbox_reg_weights: [f32; 4],
    /// `roi_heads.num_classes` (C, without background).
    pub num_classes: usize,
    /// `roi_heads.nms_thresh_test`: a scalar or the list tried in order.
    pub nms_thresh_test: Vec<f64>,
    pub pooler_resolution: usize,
    pub res5_halve: bool,
    /// `roi_box_head.num_attrs` (NA, without "no attribute").
    pub num_attrs: usize,
    pub roi_bbox_reg_weights: [f32; 4],
}

/// The value under a dotted path, matching each key as written or upper-cased.
fn lookup<'a>(root: &'a Value, path: &str) -> Result<&'a Value, DetectorConfigError> {
    let mut cur = root;
    for part in path.split('.') {
        let map = cur
            .as_mapping()
            .ok_or_else(|| DetectorConfigError::Missing(path.to_string()))?;
        cur = map
            .iter()
            .find(|(k, _)| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(part)))
            .map(|(_, v)| v)
            .ok_or_else(|| DetectorConfigError::Missing(path.to_string()))?;
    }
    if cur.is_null() {
        return Err(invalid(path, "null"));
    }
    Ok(cur)
}

fn invalid(key: &str, reason: &str) -> DetectorConfigError {
    DetectorConfigError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn f64_of(root: &Value, path: &str) -> Result<f64, DetectorConfigError> {
    lookup(root, path)?
        .as_f64()
        .ok_or_else(|| invalid(path, "not a number"))
}

fn usize_of(root: &Value, path: &str) -> Result<usize, DetectorConfigError> {
    lookup(root, path)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| invalid(path, "not a non-negative integer"))
}

fn bool_of(root: &Value, path: &str) -> Result<bool, DetectorConfigError> {
    lookup(root, path)?
        .as_bool()
        .ok_or_else(|| invalid(path, "not a boolean"))
}

fn f64_list(v: &Value, path: &str) -> Result<Vec<f64>, DetectorConfigError> {
    v.as_sequence()
        .ok_or_else(|| invalid(path, "not a list"))?
        .iter()
        .map(|x| {
            x.as_f64()
                .ok_or_else(|| invalid(path, "not a list of numbers"))
        })
        .collect()
}

fn f32_array<const N: usize>(root: &Value, path: &str) -> Result<[f32; N], DetectorConfigError> {
    let v = f64_list(lookup(root, path)?, path)?;
    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
    v.try_into()
        .map_err(|_| invalid(path, &format!("not a list of {N} numbers")))
}

/// `[[a, b, ...]]` (one feature level) or `[a, b, ...]`.
fn level_list(root: &Value, path: &str) -> Result<Vec<f64>, DetectorConfigError> {
    let v = lookup(root, path)?;
    let seq = v.as_sequence().ok_or_else(|| invalid(path, "not a list"))?;
    match seq.first() {
        Some(inner) if inner.is_sequence() => {
            if seq.len() != 1 {
                return Err(invalid(
                    path,
                    "given for several feature levels (C4 has one)",
                ));
            }
            f64_list(inner, path)
        }
        _ => f64_list(v, path),
    }
}

impl DetectorConfig {
    /// Parses the reference's `config.yaml` text.
    pub fn from_yaml(text: &str) -> Result<Self, DetectorConfigError> {
        let root: Value =
            serde_yaml::from_str(text).map_err(|e| DetectorConfigError::Yaml(e.to_string()))?;
        let r = &root;
        let input_format = lookup(r, "input.format")?
            .as_str()
            .ok_or_else(|| invalid("input.format", "not a string"))?
            .to_ascii_uppercase();
        if input_format != "BGR" && input_format != "RGB" {
            return Err(invalid("input.format", "neither BGR nor RGB"));
        }
        // The reference raises NotImplementedError for any other value.
        if usize_of(r, "size_divisibility")? != 0 {
            return Err(invalid(
                "size_divisibility",
                "not 0 (the reference supports only 0)",
            ));
        }
        let norm = lookup(r, "resnets.norm")?.as_str().unwrap_or("");
        if !norm.eq_ignore_ascii_case("BN") {
            return Err(invalid("resnets.norm", "not BN (frozen batch norm)"));
        }
        if bool_of(r, "roi_box_head.cls_agnostic_bbox_reg")? {
            return Err(invalid(
                "roi_box_head.cls_agnostic_bbox_reg",
                "true (the reference's test-time selection needs class-specific boxes)",
            ));
        }
        if !bool_of(r, "roi_box_head.attr")? {
            return Err(invalid(
                "roi_box_head.attr",
                "false (the reference's ROI head always unpacks attribute scores)",
            ));
        }
        let nms = lookup(r, "roi_heads.nms_thresh_test")?;
        let nms_thresh_test = match nms.as_f64() {
            Some(t) => vec![t],
            None => f64_list(nms, "roi_heads.nms_thresh_test")?,
        };
        if nms_thresh_test.is_empty() {
            return Err(invalid("roi_heads.nms_thresh_test", "an empty list"));
        }
        let cfg = Self {
            pixel_mean: f32_array(r, "model.pixel_mean")?,
            pixel_std: f32_array(r, "model.pixel_std")?,
            input_format,
            min_size_test: usize_of(r, "input.min_size_test")?,
            max_size_test: usize_of(r, "input.max_size_test")?,
            pad_value: f64_of(r, "pad_value")? as f32,
            caffe_max_pool: bool_of(r, "model.max_pool")?,
            min_detections: usize_of(r, "min_detections")?,
            max_detections: usize_of(r, "max_detections")?,
            depth: usize_of(r, "resnets.depth")?,
            num_groups: usize_of(r, "resnets.num_groups")?,
            width_per_group: usize_of(r, "resnets.width_per_group")?,
            stride_in_1x1: bool_of(r, "resnets.stride_in_1x1")?,
            res2_out_channels: usize_of(r, "resnets.res2_out_channels")?,
            stem_out_channels: usize_of(r, "resnets.stem_out_channels")?,
            rpn_hidden_channels: lookup(r, "proposal_generator.hidden_channels")?
                .as_i64()
                .ok_or_else(|| invalid("proposal_generator.hidden_channels", "not an integer"))?,
            proposal_min_size: f64_of(r, "proposal_generator.min_size")? as f32,
            anchor_sizes: level_list(r, "anchor_generator.sizes")?,
            aspect_ratios: level_list(r, "anchor_generator.aspect_ratios")?,
            anchor_offset: f64_of(r, "anchor_generator.offset")? as f32,
            rpn_nms_thresh: f64_of(r, "rpn.nms_thresh")?,
            pre_nms_topk_test: usize_of(r, "rpn.pre_nms_topk_test")?,
            post_nms_topk_test: usize_of(r, "rpn.post_nms_topk_test")?,
            rpn_bbox_reg_weights: f32_array(r, "rpn.bbox_reg_weights")?,
            num_classes: usize_of(r, "roi_heads.num_classes")?,
            nms_thresh_test,
            pooler_resolution: usize_of(r, "roi_box_head.pooler_resolution")?,
            res5_halve: bool_of(r, "roi_box_head.res5halve")?,
            num_attrs: usize_of(r, "roi_box_head.num_attrs")?,
            roi_bbox_reg_weights: f32_array(r, "roi_box_head.bbox_reg_weights")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), DetectorConfigError> {
        self.stage_blocks()?;
        let positive = [
            ("resnets.num_groups", self.num_groups),
            ("resnets.width_per_group", self.width_per_group),
            ("resnets.res2_out_channels", self.res2_out_channels),
            ("resnets.stem_out_channels", self.stem_out_channels),
            ("input.min_size_test", self.min_size_test),
            ("input.max_size_test", self.max_size_test),
            ("roi_box_head.pooler_resolution", self.pooler_resolution),
            ("roi_heads.num_classes", self.num_classes),
            ("max_detections", self.max_detections),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "0"));
            }
        }
        if self.min_detections > self.max_detections {
            return Err(invalid("min_detections", "larger than max_detections"));
        }
        if self.anchor_sizes.is_empty() || self.aspect_ratios.is_empty() {
            return Err(invalid(
                "anchor_generator",
                "without sizes or aspect ratios",
            ));
        }
        if self.pixel_std.contains(&0.0) {
            return Err(invalid("model.pixel_std", "0 for a channel"));
        }
        Ok(())
    }

    /// Bottleneck blocks of res2, res3, res4 (res5 always has 3).
    pub fn stage_blocks(&self) -> Result<[usize; 3], DetectorConfigError> {
        match self.depth {
            50 => Ok([3, 4, 6]),
            101 => Ok([3, 4, 23]),
            152 => Ok([3, 8, 36]),
            _ => Err(invalid("resnets.depth", "not 50, 101 or 152")),
        }
    }

    /// Channels of res4, the RPN's and RoIPool's input (C4).
    pub fn res4_channels(&self) -> usize {
        self.res2_out_channels * 4
    }

    /// Channels of the res5 output: the region feature size D.
    pub fn feature_dim(&self) -> usize {
        self.res2_out_channels * 8
    }

    /// Anchors per feature-map cell (A).
    pub fn num_anchors(&self) -> usize {
        self.anchor_sizes.len() * self.aspect_ratios.len()
    }

    /// The RPN's hidden channels.
    pub fn rpn_hidden(&self) -> usize {
        if self.rpn_hidden_channels < 0 {
            self.res4_channels()
        } else {
            self.rpn_hidden_channels as usize
        }
    }

    /// Swap the decoded RGB pixels to BGR: the reference flips only when the format is RGB
    /// (`utils.img_tensorize`), so a BGR config feeds local files as RGB.
    pub fn feeds_bgr(&self) -> bool {
        self.input_format == "RGB"
    }
}
