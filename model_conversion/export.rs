//! The model back to PyTorch: `.pt` files in the reference's layouts, loadable by the original
//! LightningDOT code with `torch.load` + `load_state_dict(strict=True)` (spec §3.2–3.4).
//!
//! | layout | top level | written by the reference |
//! |---|---|---|
//! | pre-training | flat `dict`: `bert.`-prefixed bi-encoder, then `cls`, `feat_regress`, `region_classifier`, `itm_output` | pretrain.py `ModelSaver` (LightningDot.pt, `model_step_N.pt`) |
//! | bi-encoder | `OrderedDict`: `img_model.*`, `txt_model.*` | `BiEncoder.state_dict()` |
//! | fine-tune | `dict` `{model_dict, optimizer_dict, scheduler_dict, offset, epoch, encoder_params}` | train_itm.py `_save_checkpoint` (coco-ft.pt) |
//!
//! Keys come out in `state_dict()` order (module registration order), names are the inverse of
//! the [`keymap`](super::keymap) maps, Linear weights go back to `[out, in]`, LayerNorm
//! `gamma`/`beta` back to `weight`/`bias`. The tied head aliases of the pre-training layout
//! ([`TIED_PRETRAIN_KEYS`]) are written as second names of the tower tensor's storage, exactly as
//! `torch.save` stores tied parameters.

use std::path::Path;
use std::sync::LazyLock;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{ModuleSnapshot, TensorSnapshot};
use half::f16;
use regex::Regex;

use super::checkpoint::{Checkpoint, Layout};
use super::error::ConvertError;
use super::keymap::TIED_PRETRAIN_KEYS;
use super::load::is_linear_weight;
use super::model_dir::ModelDir;
use super::pretrain::HEADS_RECORD;
use super::torch_writer::{Storage, TorchDict, TorchFile, TorchTensor, TorchValue};
use crate::model::{BiEncoder, BiEncoderForPretraining};

/// burn backbone path → PyTorch, the inverse of the keymap's `RULES`.
static INVERSE_RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (
            r"^encoder\.layers\.(\d+)\.attention\.(query|key|value)\.",
            "encoder.layer.$1.attention.self.$2.",
        ),
        (
            r"^encoder\.layers\.(\d+)\.attention\.output\.",
            "encoder.layer.$1.attention.output.dense.",
        ),
        (
            r"^encoder\.layers\.(\d+)\.attention\.output_norm\.",
            "encoder.layer.$1.attention.output.LayerNorm.",
        ),
        (
            r"^encoder\.layers\.(\d+)\.intermediate\.",
            "encoder.layer.$1.intermediate.dense.",
        ),
        (
            r"^encoder\.layers\.(\d+)\.output\.",
            "encoder.layer.$1.output.dense.",
        ),
        (
            r"^encoder\.layers\.(\d+)\.output_norm\.",
            "encoder.layer.$1.output.LayerNorm.",
        ),
        (
            r"^(embeddings|img_embeddings)\.layer_norm\.",
            "$1.LayerNorm.",
        ),
    ]
    .into_iter()
    .map(|(p, r)| (Regex::new(p).expect("static regex"), r))
    .collect()
});

/// burn's LayerNorm `gamma`/`beta` are PyTorch's `weight`/`bias`.
fn torch_param_name(path: &str) -> String {
    if let Some(s) = path.strip_suffix(".gamma") {
        format!("{s}.weight")
    } else if let Some(s) = path.strip_suffix(".beta") {
        format!("{s}.bias")
    } else {
        path.to_string()
    }
}

fn backbone_key(path: &str) -> String {
    for (re, rep) in INVERSE_RULES.iter() {
        if re.is_match(path) {
            return re.replace(path, *rep).into_owned();
        }
    }
    path.to_string()
}

/// Maps a burn [`BiEncoder`] parameter path to its `BiEncoder.state_dict()` key (the inverse of
/// [`biencoder_key_to_burn`](super::biencoder_key_to_burn)), or `None` outside both towers.
pub fn biencoder_burn_to_key(path: &str) -> Option<String> {
    let path = torch_param_name(path);
    let (tower, rest) = if let Some(r) = path.strip_prefix("image.") {
        ("img_model", r)
    } else if let Some(r) = path.strip_prefix("text.") {
        ("txt_model", r)
    } else {
        return None;
    };
    if let Some(r) = rest.strip_prefix("projection.") {
        let (part, param) = r.split_once('.')?;
        let idx = match part {
            "dense" => "0",
            "layer_norm" => "2",
            "output" => "3",
            _ => return None,
        };
        return Some(format!("{tower}.encode_proj.{idx}.{param}"));
    }
    Some(format!("{tower}.bert.{}", backbone_key(rest)))
}

/// Maps a burn [`BiEncoderForPretraining`] parameter path to its key in the pre-training layout
/// (the inverse of [`pretrain_key_to_burn`](super::pretrain_key_to_burn)). The tied aliases
/// have no parameter of their own and are not produced here.
pub fn pretrain_burn_to_key(path: &str) -> Option<String> {
    let path = torch_param_name(path);
    if let Some(rest) = path.strip_prefix("bert.") {
        return biencoder_burn_to_key(rest).map(|k| format!("bert.{k}"));
    }
    let rest = path.strip_prefix("heads.")?;
    let (head, rest) = rest.split_once('.')?;
    let key = match (head, rest) {
        ("cls", "bias") => "cls.predictions.bias".to_string(),
        ("cls", r) => {
            let (part, param) = r.split_once('.')?;
            let part = match part {
                "dense" => "dense",
                "layer_norm" => "LayerNorm",
                _ => return None,
            };
            format!("cls.predictions.transform.{part}.{param}")
        }
        ("feat_regress", "bias") => "feat_regress.bias".to_string(),
        ("feat_regress", r) | ("region_classifier", r) => {
            let (part, param) = r.split_once('.')?;
            let idx = match (head, part) {
                (_, "dense") => "0",
                (_, "layer_norm") => "2",
                ("region_classifier", "output") => "3",
                _ => return None,
            };
            format!("{head}.net.{idx}.{param}")
        }
        ("itm_output", p) => format!("itm_output.{p}"),
        _ => return None,
    };
    Some(key)
}

/// Order of one tower's keys in `state_dict()` (after `img_model.` / `txt_model.`); the
/// `bert.encoder.layer.` slot stands for every layer, each in [`LAYER_ORDER`].
const TOWER_ORDER: &[&str] = &[
    "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.position_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.LayerNorm.bias",
    "bert.img_embeddings.img_linear.weight",
    "bert.img_embeddings.img_linear.bias",
    "bert.img_embeddings.img_layer_norm.weight",
    "bert.img_embeddings.img_layer_norm.bias",
    "bert.img_embeddings.pos_layer_norm.weight",
    "bert.img_embeddings.pos_layer_norm.bias",
    "bert.img_embeddings.pos_linear.weight",
    "bert.img_embeddings.pos_linear.bias",
    "bert.img_embeddings.mask_embedding.weight",
    "bert.img_embeddings.LayerNorm.weight",
    "bert.img_embeddings.LayerNorm.bias",
    "bert.encoder.layer.",
    "bert.pooler.dense.weight",
    "bert.pooler.dense.bias",
    "encode_proj.0.weight",
    "encode_proj.0.bias",
    "encode_proj.2.weight",
    "encode_proj.2.bias",
    "encode_proj.3.weight",
    "encode_proj.3.bias",
];

const LAYER_ORDER: &[&str] = &[
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];

/// The heads in `BiEncoderForPretraining.state_dict()` order, tied aliases included (fixtures
/// checkpoint-manifests/biencoder_pretraining.json).
const HEAD_ORDER: &[&str] = &[
    "cls.predictions.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.decoder.weight",
    "feat_regress.weight",
    "feat_regress.bias",
    "feat_regress.net.0.weight",
    "feat_regress.net.0.bias",
    "feat_regress.net.2.weight",
    "feat_regress.net.2.bias",
    "region_classifier.net.0.weight",
    "region_classifier.net.0.bias",
    "region_classifier.net.2.weight",
    "region_classifier.net.2.bias",
    "region_classifier.net.3.weight",
    "region_classifier.net.3.bias",
    "itm_output.weight",
    "itm_output.bias",
];

type Rank = [usize; 4];

fn position(list: &[&str], key: &str) -> Option<usize> {
    list.iter().position(|k| *k == key)
}

fn biencoder_rank(key: &str) -> Option<Rank> {
    let (tower, rest) = if let Some(r) = key.strip_prefix("img_model.") {
        (0, r)
    } else {
        (1, key.strip_prefix("txt_model.")?)
    };
    if let Some(r) = rest.strip_prefix("bert.encoder.layer.") {
        let (layer, suffix) = r.split_once('.')?;
        let slot = position(TOWER_ORDER, "bert.encoder.layer.")?;
        return Some([
            tower,
            slot,
            layer.parse().ok()?,
            position(LAYER_ORDER, suffix)?,
        ]);
    }
    Some([tower, position(TOWER_ORDER, rest)?, 0, 0])
}

fn pretrain_rank(key: &str) -> Option<Rank> {
    match key.strip_prefix("bert.") {
        Some(rest) => biencoder_rank(rest),
        None => Some([2, position(HEAD_ORDER, key)?, 0, 0]),
    }
}

/// One key of an exported state_dict, in PyTorch orientation.
struct Entry {
    key: String,
    shape: Vec<usize>,
    source: EntrySource,
}

enum EntrySource {
    /// A parameter of the model; Linear weights go back to `[out, in]`.
    Param {
        snapshot: TensorSnapshot,
        transpose: bool,
    },
    /// A tied alias: a second name of this key's storage.
    Tied(&'static str),
}

/// Names every parameter of `module` with `map` and adds the `tied` aliases `(alias, tower key)`,
/// all in `state_dict()` order. A parameter without a name or a key without a known position is
/// an error rather than a file that differs from the reference's.
fn entries<B: Backend, M: Module<B>>(
    module: &M,
    map: impl Fn(&str) -> Option<String>,
    rank: impl Fn(&str) -> Option<Rank>,
    tied: &[(&'static str, &'static str)],
) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for snapshot in module.collect(None, None, false) {
        let path = snapshot.full_path();
        let key = map(&path).ok_or_else(|| format!("no PyTorch name for parameter {path}"))?;
        let transpose = is_linear_weight(&snapshot);
        let mut shape = snapshot.shape.to_vec();
        if transpose {
            shape.reverse();
        }
        entries.push(Entry {
            key,
            shape,
            source: EntrySource::Param {
                snapshot,
                transpose,
            },
        });
    }
    for &(alias, tower) in tied {
        let shape = entries
            .iter()
            .find(|e| e.key == tower)
            .map(|e| e.shape.clone())
            .ok_or_else(|| format!("tied tensor {tower} missing from the model"))?;
        entries.push(Entry {
            key: alias.to_string(),
            shape,
            source: EntrySource::Tied(tower),
        });
    }
    let mut ranked = Vec::with_capacity(entries.len());
    for e in entries {
        let r = rank(&e.key).ok_or_else(|| format!("no reference position for key {}", e.key))?;
        ranked.push((r, e));
    }
    ranked.sort_by_key(|(r, _)| *r);
    Ok(ranked.into_iter().map(|(_, e)| e).collect())
}

fn pretraining_entries<B: Backend>(
    model: &BiEncoderForPretraining<B>,
) -> Result<Vec<Entry>, String> {
    entries(
        model,
        pretrain_burn_to_key,
        pretrain_rank,
        &TIED_PRETRAIN_KEYS,
    )
}

fn biencoder_entries<B: Backend>(model: &BiEncoder<B>) -> Result<Vec<Entry>, String> {
    entries(model, biencoder_burn_to_key, biencoder_rank, &[])
}

fn keys_and_shapes(
    entries: Result<Vec<Entry>, String>,
) -> Result<Vec<(String, Vec<usize>)>, ConvertError> {
    Ok(entries
        .map_err(ConvertError::Export)?
        .into_iter()
        .map(|e| (e.key, e.shape))
        .collect())
}

/// The `(key, shape)` list [`export_pretraining_pt`] writes for `model`, in file order, tied
/// aliases included; no weights are read.
pub fn pretraining_export_keys<B: Backend>(
    model: &BiEncoderForPretraining<B>,
) -> Result<Vec<(String, Vec<usize>)>, ConvertError> {
    keys_and_shapes(pretraining_entries(model))
}

/// The `(key, shape)` list of the state_dict [`export_biencoder_pt`] writes for `model`, in file
/// order; no weights are read.
pub fn biencoder_export_keys<B: Backend>(
    model: &BiEncoder<B>,
) -> Result<Vec<(String, Vec<usize>)>, ConvertError> {
    keys_and_shapes(biencoder_entries(model))
}

/// Reads the parameters' values into one storage each (f32, or rounded to f16 like
/// `tensor.half()`); aliases name their tower tensor's storage.
fn state_dict(entries: Vec<Entry>, half: bool) -> Result<(Vec<TorchTensor>, Vec<Storage>), String> {
    let mut storages = Vec::new();
    let mut tensors = Vec::with_capacity(entries.len());
    let mut tied = Vec::new();
    for e in entries {
        let storage = match e.source {
            EntrySource::Param {
                snapshot,
                transpose,
            } => {
                storages.push(read_param(&snapshot, transpose, half)?);
                storages.len() - 1
            }
            EntrySource::Tied(tower) => {
                // Resolved below: the tower tensor may come later in the file.
                tied.push((tensors.len(), tower));
                usize::MAX
            }
        };
        tensors.push(TorchTensor {
            key: e.key,
            storage,
            shape: e.shape,
        });
    }
    for (i, tower) in tied {
        let storage = tensors
            .iter()
            .find(|t| t.key == tower)
            .map(|t| t.storage)
            .ok_or_else(|| format!("tied tensor {tower} missing from the model"))?;
        tensors[i].storage = storage;
    }
    Ok((tensors, storages))
}

fn read_param(snapshot: &TensorSnapshot, transpose: bool, half: bool) -> Result<Storage, String> {
    let path = snapshot.full_path();
    let data = snapshot
        .to_data()
        .map_err(|e| format!("cannot read parameter {path}: {e:?}"))?;
    let data = match data.dtype {
        DType::F32 => data,
        _ => data.convert::<f32>(),
    };
    let shape = data.shape.to_vec();
    let mut values: Vec<f32> = data
        .into_vec()
        .map_err(|e| format!("cannot read parameter {path}: {e:?}"))?;
    if transpose {
        values = transpose_2d(&values, shape[0], shape[1]);
    }
    Ok(if half {
        Storage::F16(values.iter().map(|&v| f16::from_f32(v)).collect())
    } else {
        Storage::F32(values)
    })
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major.
fn transpose_2d(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = v[i * cols + j];
        }
    }
    out
}

/// Writes `model` as a pre-training checkpoint (LightningDot.pt / pretrain.py `model_step_N.pt`
/// layout, spec §3.4): a flat dict, `bert.*` then the heads, with `cls.predictions.decoder.weight`
/// and `feat_regress.weight` sharing the image tower's storages. f16 storages with `half`, as
/// the released files. Written atomically; returns the number of keys.
pub fn export_pretraining_pt<B: Backend>(
    model: &BiEncoderForPretraining<B>,
    path: &Path,
    half: bool,
) -> Result<usize, ConvertError> {
    let write_err = |reason: String| ConvertError::Write {
        path: path.display().to_string(),
        reason,
    };
    let (tensors, storages) = pretraining_entries(model)
        .and_then(|e| state_dict(e, half))
        .map_err(write_err)?;
    // ModelSaver builds a plain dict (a comprehension over state_dict()).
    let file = TorchFile {
        root: TorchDict::state_dict(tensors, false),
        storages,
    };
    file.write(path)
}

/// Writes `model` as `BiEncoder.state_dict()` (an `OrderedDict`, spec §3.3), or with `wrapper`
/// in the fine-tune form of coco-ft.pt (spec §3.2): `{model_dict: <state_dict>, optimizer_dict:
/// None, scheduler_dict: None, offset: 0, epoch: 0, encoder_params: None}`, which both
/// `load_state_dict(ckpt["model_dict"])` and DPR's `CheckpointState(**ckpt)` accept (no
/// optimizer state is carried over). Written atomically; returns the number of tensors.
pub fn export_biencoder_pt<B: Backend>(
    model: &BiEncoder<B>,
    path: &Path,
    half: bool,
    wrapper: bool,
) -> Result<usize, ConvertError> {
    let write_err = |reason: String| ConvertError::Write {
        path: path.display().to_string(),
        reason,
    };
    let (tensors, storages) = biencoder_entries(model)
        .and_then(|e| state_dict(e, half))
        .map_err(write_err)?;
    let model_dict = TorchDict::state_dict(tensors, true);
    let root = if wrapper {
        TorchDict {
            ordered: false,
            entries: vec![
                ("model_dict".into(), TorchValue::Dict(model_dict)),
                ("optimizer_dict".into(), TorchValue::None),
                ("scheduler_dict".into(), TorchValue::None),
                ("offset".into(), TorchValue::Int(0)),
                ("epoch".into(), TorchValue::Int(0)),
                ("encoder_params".into(), TorchValue::None),
            ],
        }
    } else {
        model_dict
    };
    TorchFile { root, storages }.write(path)
}

/// Whether the model source at `path` (a `.pt` file or a directory) carries pre-training heads,
/// i.e. whether [`load_pretraining_source`](super::load_pretraining_source) would report
/// [`HeadsSource::Loaded`](super::HeadsSource::Loaded), without loading any weights.
pub fn source_has_heads(path: &Path) -> Result<bool, ConvertError> {
    if path.is_dir() {
        return Ok(
            ModelDir::is_model_dir(path) && path.join(format!("{HEADS_RECORD}.mpk")).is_file()
        );
    }
    Ok(Checkpoint::open(path)?.layout == Layout::Pretraining)
}

#[cfg(test)]
mod tests {
    use super::super::keymap::{biencoder_key_to_burn, pretrain_key_to_burn};
    use super::*;

    /// The forward map ends LayerNorm keys in `weight`/`bias`; burn names them `gamma`/`beta`.
    fn burn_name(mapped: &str, layer_norm: bool) -> String {
        if !layer_norm {
            return mapped.to_string();
        }
        mapped
            .replace(".weight", ".gamma")
            .replace(".bias", ".beta")
    }

    #[test]
    fn inverse_maps_round_trip() {
        let keys = [
            (
                "img_model.bert.encoder.layer.11.attention.self.query.weight",
                false,
            ),
            (
                "img_model.bert.encoder.layer.3.attention.output.dense.bias",
                false,
            ),
            (
                "img_model.bert.encoder.layer.3.attention.output.LayerNorm.weight",
                true,
            ),
            (
                "txt_model.bert.encoder.layer.0.intermediate.dense.weight",
                false,
            ),
            ("txt_model.bert.encoder.layer.0.output.dense.bias", false),
            (
                "txt_model.bert.encoder.layer.10.output.LayerNorm.bias",
                true,
            ),
            ("img_model.bert.img_embeddings.LayerNorm.weight", true),
            ("img_model.bert.img_embeddings.pos_layer_norm.bias", true),
            ("img_model.bert.img_embeddings.mask_embedding.weight", false),
            ("txt_model.bert.embeddings.LayerNorm.bias", true),
            ("txt_model.bert.pooler.dense.weight", false),
            ("txt_model.encode_proj.2.weight", true),
            ("img_model.encode_proj.3.bias", false),
        ];
        for (key, ln) in keys {
            let burn = burn_name(&biencoder_key_to_burn(key).unwrap(), ln);
            assert_eq!(biencoder_burn_to_key(&burn).as_deref(), Some(key), "{burn}");
            let pkey = format!("bert.{key}");
            let pburn = burn_name(&pretrain_key_to_burn(&pkey).unwrap(), ln);
            assert_eq!(pretrain_burn_to_key(&pburn).as_deref(), Some(pkey.as_str()));
        }
        for key in HEAD_ORDER {
            let Some(mapped) = pretrain_key_to_burn(key) else {
                assert!(TIED_PRETRAIN_KEYS.iter().any(|(a, _)| a == key), "{key}");
                continue;
            };
            let ln = key.contains("LayerNorm") || key.contains("net.2");
            let burn = burn_name(&mapped, ln);
            assert_eq!(pretrain_burn_to_key(&burn).as_deref(), Some(*key), "{burn}");
        }
        assert_eq!(pretrain_burn_to_key("heads.nope.weight"), None);
        assert_eq!(biencoder_burn_to_key("other.weight"), None);
    }

    #[test]
    fn ranks_follow_registration_order() {
        let keys = [
            "img_model.bert.embeddings.LayerNorm.bias",
            "img_model.bert.img_embeddings.pos_layer_norm.weight",
            "img_model.bert.img_embeddings.pos_linear.weight",
            "img_model.bert.encoder.layer.2.output.LayerNorm.bias",
            "img_model.bert.encoder.layer.10.attention.self.query.weight",
            "img_model.encode_proj.3.bias",
            "txt_model.bert.embeddings.word_embeddings.weight",
        ];
        let ranks: Vec<Rank> = keys.iter().map(|k| biencoder_rank(k).unwrap()).collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        assert!(
            pretrain_rank("bert.txt_model.encode_proj.3.bias")
                < pretrain_rank("cls.predictions.bias")
        );
        assert_eq!(biencoder_rank("img_model.unknown"), None);
    }
}
