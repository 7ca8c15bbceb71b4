//! Strict, shape-checked loading of checkpoint tensors into burn modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::{Module, ParamId};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn_store::{ModuleSnapshot, TensorSnapshot};

use super::checkpoint::{Checkpoint, CheckpointTensor, Layout};
use super::error::ConvertError;
use super::keymap::{biencoder_key_to_burn, uniter_key_to_image_tower};
use crate::model::{BiEncoder, BiEncoderConfig, EncoderConfig, ImageEncoder};

/// How strict loading is.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Report unexpected and missing keys instead of failing (`--allow-partial`).
    pub allow_partial: bool,
}

/// What a load did, for logs and `inspect`.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Parameters set from the file.
    pub applied: usize,
    /// File keys that are not model weights by design (optimizer state, pre-training heads…).
    pub ignored: Vec<String>,
    /// File keys with no parameter (only non-empty with `allow_partial`).
    pub unexpected: Vec<String>,
    /// Parameters the file did not provide, left at their initial values.
    pub missing: Vec<String>,
}

/// A model parameter as the loader sees it.
pub(super) struct Param {
    /// Shape in burn orientation.
    shape: Vec<usize>,
    /// Linear weights are stored `[in, out]` in burn, `[out, in]` in PyTorch.
    transpose: bool,
    container_stack: Vec<String>,
    id: ParamId,
}

impl Param {
    /// The shape the PyTorch file must have.
    fn torch_shape(&self) -> Vec<usize> {
        if self.transpose {
            self.shape.iter().rev().copied().collect()
        } else {
            self.shape.clone()
        }
    }
}

/// Linear weights are stored `[in, out]` in burn, `[out, in]` in PyTorch.
pub(super) fn is_linear_weight(s: &TensorSnapshot) -> bool {
    let name = s.path_stack.as_ref().and_then(|p| p.last());
    s.module_type().as_deref() == Some("Struct:Linear")
        && name.map(String::as_str) == Some("weight")
        && s.shape.len() == 2
}

pub(super) fn model_params<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, Param> {
    module
        .collect(None, None, false)
        .into_iter()
        .map(|s| {
            let param = Param {
                shape: s.shape.to_vec(),
                transpose: is_linear_weight(&s),
                container_stack: s.container_stack.clone().unwrap_or_default(),
                id: s.tensor_id.unwrap_or_default(),
            };
            (s.full_path(), param)
        })
        .collect()
}

/// Every parameter's burn path (`bert.image.encoder.layers.0.attention.query.weight`, LayerNorms
/// as `gamma`/`beta`) and id.
pub fn param_ids<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, ParamId> {
    model_params(module)
        .into_iter()
        .map(|(path, p)| (path, p.id))
        .collect()
}

/// Resolves a PyTorch-style `….weight`/`….bias` path (as the key maps produce) to the burn
/// parameter path of `params` (`gamma`/`beta` for LayerNorms).
pub fn resolve_path(params: &BTreeMap<String, ParamId>, path: &str) -> Option<String> {
    resolve_key(params, path)
}

/// The key of `params` that a mapped `….weight`/`….bias` path names: itself, or the
/// `gamma`/`beta` burn gives LayerNorm parameters.
fn resolve_key<V>(params: &BTreeMap<String, V>, path: &str) -> Option<String> {
    if params.contains_key(path) {
        return Some(path.to_string());
    }
    let alt = if let Some(s) = path.strip_suffix(".weight") {
        format!("{s}.gamma")
    } else if let Some(s) = path.strip_suffix(".bias") {
        format!("{s}.beta")
    } else {
        return None;
    };
    params.contains_key(&alt).then_some(alt)
}

/// [`resolve_key`] with the parameter it names.
fn resolve<'a>(params: &'a BTreeMap<String, Param>, path: &str) -> Option<(String, &'a Param)> {
    let key = resolve_key(params, path)?;
    params.get(&key).map(|p| (key, p))
}

/// The checkpoint tensors `map` gives a path, and the keys it does not (ignored by design).
pub(super) fn select_tensors(
    ckpt: &Checkpoint,
    map: impl Fn(&str) -> Option<String>,
) -> (BTreeMap<String, &CheckpointTensor>, Vec<String>) {
    let mut tensors = BTreeMap::new();
    let mut ignored = Vec::new();
    for (k, t) in &ckpt.tensors {
        if map(k).is_some() {
            tensors.insert(k.clone(), t);
        } else {
            ignored.push(k.clone());
        }
    }
    (tensors, ignored)
}

/// One checkpoint entry matched to a parameter.
struct Matched<'a> {
    key: String,
    path: String,
    param: &'a Param,
}

/// The shape-checked assignment of file keys to parameters.
pub(super) struct Plan<'a> {
    matched: Vec<Matched<'a>>,
    pub(super) unexpected: Vec<String>,
    pub(super) missing: Vec<String>,
}

pub(super) fn plan<'a>(
    params: &'a BTreeMap<String, Param>,
    entries: impl IntoIterator<Item = (String, Vec<usize>)>,
    map: impl Fn(&str) -> Option<String>,
    optional_missing: impl Fn(&str) -> bool,
    opts: LoadOptions,
) -> Result<Plan<'a>, ConvertError> {
    let mut matched = Vec::new();
    let mut unexpected = Vec::new();
    let mut covered = BTreeSet::new();
    for (key, shape) in entries {
        let Some((path, param)) = map(&key).and_then(|p| resolve(params, &p)) else {
            unexpected.push(key);
            continue;
        };
        let expected = param.torch_shape();
        if shape != expected {
            return Err(ConvertError::ShapeMismatch {
                key,
                found: shape,
                expected,
            });
        }
        covered.insert(path.clone());
        matched.push(Matched { key, path, param });
    }
    let missing: Vec<String> = params
        .keys()
        .filter(|p| !covered.contains(*p))
        .cloned()
        .collect();
    if !opts.allow_partial {
        if let Some(first) = unexpected.first() {
            return Err(ConvertError::UnexpectedKeys {
                count: unexpected.len(),
                first: first.clone(),
            });
        }
        let required: Vec<&String> = missing.iter().filter(|p| !optional_missing(p)).collect();
        if let Some(first) = required.first() {
            return Err(ConvertError::MissingKeys {
                count: required.len(),
                first: (*first).clone(),
            });
        }
    }
    Ok(Plan {
        matched,
        unexpected,
        missing,
    })
}

impl Plan<'_> {
    /// Number of file keys matched to a parameter.
    pub(super) fn matched_len(&self) -> usize {
        self.matched.len()
    }
}

fn transpose_2d(data: TensorData) -> TensorData {
    let [r, c] = [data.shape[0], data.shape[1]];
    let v: Vec<f32> = data.into_vec().unwrap_or_default();
    let mut out = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    TensorData::new(out, [c, r])
}

/// Reads the planned tensors as f32 and writes them into the module in the device's default
/// float type (bf16 after `--precision bf16`: burn-store applies a snapshot in the snapshot's
/// own dtype, which would leave f32 weights in a bf16 model).
pub(super) fn apply_plan<B: Backend, M: Module<B>>(
    mut module: M,
    file: &Path,
    plan: &Plan<'_>,
    tensors: &BTreeMap<String, &CheckpointTensor>,
) -> Result<(M, usize), ConvertError> {
    let dtype = module
        .devices()
        .first()
        .map(|d| burn::tensor::DType::from(burn::tensor::get_device_settings::<B>(d).float_dtype))
        .unwrap_or(burn::tensor::DType::F32);
    let mut snaps = Vec::with_capacity(plan.matched.len());
    for m in &plan.matched {
        let mut data = tensors[&m.key].to_f32(file, &m.key)?;
        if m.param.transpose {
            data = transpose_2d(data);
        }
        if dtype != burn::tensor::DType::F32 {
            data = data.convert_dtype(dtype);
        }
        let path_stack = m.path.split('.').map(str::to_string).collect();
        snaps.push(TensorSnapshot::from_data(
            data,
            path_stack,
            m.param.container_stack.clone(),
            m.param.id,
        ));
    }
    let result = module.apply(snaps, None, None, false);
    if let Some(e) = result.errors.first() {
        return Err(ConvertError::Apply(format!("{e:?}")));
    }
    Ok((module, result.applied.len()))
}

/// Builds a [`BiEncoder`] of `cfg` and fills it from any bi-encoder layout (fine-tune wrapper,
/// pre-training state_dict, plain state_dict). fp16 weights are widened to f32.
pub fn load_biencoder<B: Backend>(
    ckpt: &Checkpoint,
    cfg: &BiEncoderConfig,
    device: &B::Device,
    opts: LoadOptions,
) -> Result<(BiEncoder<B>, LoadReport), ConvertError> {
    if ckpt.layout == Layout::Detector {
        return Err(ConvertError::UnknownLayout {
            path: ckpt.path.display().to_string(),
            sample: "this is the BUTD region-feature detector; use it with `extract --detector` or `forward --task detector`".into(),
        });
    }
    if ckpt.layout == Layout::Uniter {
        return Err(ConvertError::UnknownLayout {
            path: ckpt.path.display().to_string(),
            sample: "a UNITER checkpoint holds one tower only; use it as --img-checkpoint for training or as a re-ranker".into(),
        });
    }
    let model = BiEncoder::<B>::new(cfg, device);
    let params = model_params(&model);
    let (tensors, ignored) = ckpt.biencoder_tensors();
    let entries = tensors.iter().map(|(k, t)| (k.clone(), t.shape()));
    let plan = plan(&params, entries, biencoder_key_to_burn, |_| false, opts)?;
    let (model, applied) = apply_plan(model, &ckpt.path, &plan, &tensors)?;
    if !ignored.is_empty() {
        tracing::info!(
            "{}: ignored {} non-bi-encoder key(s) ({})",
            ckpt.path.display(),
            ignored.len(),
            summarize(&ignored)
        );
    }
    Ok((
        model,
        LoadReport {
            applied,
            ignored,
            unexpected: plan.unexpected,
            missing: plan.missing,
        },
    ))
}

/// Builds an [`ImageEncoder`] and fills its backbone from a UNITER checkpoint (`uniter.` or
/// `bert.` prefix). The projection head is not in UNITER files and keeps its initial values;
/// a missing backbone key is an error unless `allow_partial` (the reference silently leaves it
/// random).
pub fn load_image_tower<B: Backend>(
    ckpt: &Checkpoint,
    cfg: &EncoderConfig,
    project_dim: usize,
    device: &B::Device,
    opts: LoadOptions,
) -> Result<(ImageEncoder<B>, LoadReport), ConvertError> {
    let model = ImageEncoder::<B>::new(cfg, project_dim, device);
    let params = model_params(&model);
    let (tensors, ignored) = select_tensors(ckpt, uniter_key_to_image_tower);
    let entries = tensors.iter().map(|(k, t)| (k.clone(), t.shape()));
    let plan = plan(
        &params,
        entries,
        uniter_key_to_image_tower,
        |p| p.starts_with("projection."),
        opts,
    )?;
    let (model, applied) = apply_plan(model, &ckpt.path, &plan, &tensors)?;
    Ok((
        model,
        LoadReport {
            applied,
            ignored,
            unexpected: plan.unexpected,
            missing: plan.missing,
        },
    ))
}

/// Checks that `module` accounts for every `(key, shape)` of a checkpoint manifest under `map`,
/// with equal shapes, and that every parameter is covered. Returns the number of matched keys.
/// No weights are read: this is what the full-size manifest tests run.
pub fn manifest_coverage<B: Backend, M: Module<B>>(
    module: &M,
    entries: Vec<(String, Vec<usize>)>,
    map: impl Fn(&str) -> Option<String>,
) -> Result<usize, ConvertError> {
    let params = model_params(module);
    let plan = plan(&params, entries, map, |_| false, LoadOptions::default())?;
    Ok(plan.matched.len())
}

pub(super) fn summarize(keys: &[String]) -> String {
    let mut groups: BTreeMap<&str, usize> = BTreeMap::new();
    for k in keys {
        *groups.entry(k.split('.').next().unwrap_or("")).or_default() += 1;
    }
    groups
        .iter()
        .map(|(g, n)| format!("{g}.*: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
