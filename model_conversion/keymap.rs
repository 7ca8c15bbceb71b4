//! PyTorch state_dict key → burn parameter path (spec §3.3, §13.2).
//!
//! | PyTorch (`BiEncoder.state_dict()`)                      | burn (`BiEncoder`)                          |
//! |---------------------------------------------------------|---------------------------------------------|
//! | `img_model.bert.…` / `txt_model.bert.…`                 | `image.…` / `text.…`                        |
//! | `….encode_proj.{0,2,3}.…`                               | `….projection.{dense,layer_norm,output}.…`  |
//! | `encoder.layer.{i}.attention.self.{query,key,value}`    | `encoder.layers.{i}.attention.{query,…}`    |
//! | `encoder.layer.{i}.attention.output.dense / .LayerNorm` | `….attention.output / .output_norm`         |
//! | `encoder.layer.{i}.intermediate.dense`                  | `encoder.layers.{i}.intermediate`           |
//! | `encoder.layer.{i}.output.dense / .LayerNorm`           | `encoder.layers.{i}.output / .output_norm`  |
//! | `{embeddings,img_embeddings}.LayerNorm`                 | `….layer_norm`                              |
//! | LayerNorm `weight`/`bias` (or old `gamma`/`beta`)       | `gamma`/`beta` (renamed by the loader)      |
//!
//! Linear weights are transposed (`[out, in]` → `[in, out]`) by the loader, which knows from the
//! model which parameters are Linear.

use std::sync::LazyLock;

use regex::Regex;

static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (
            r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.",
            "encoder.layers.$1.attention.$2.",
        ),
        (
            r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.",
            "encoder.layers.$1.attention.output.",
        ),
        (
            r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.",
            "encoder.layers.$1.attention.output_norm.",
        ),
        (
            r"^encoder\.layer\.(\d+)\.intermediate\.dense\.",
            "encoder.layers.$1.intermediate.",
        ),
        (
            r"^encoder\.layer\.(\d+)\.output\.dense\.",
            "encoder.layers.$1.output.",
        ),
        (
            r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.",
            "encoder.layers.$1.output_norm.",
        ),
        (
            r"^(embeddings|img_embeddings)\.LayerNorm\.",
            "$1.layer_norm.",
        ),
    ]
    .into_iter()
    .map(|(p, r)| (Regex::new(p).expect("static regex"), r))
    .collect()
});

/// Old TF-style `gamma`/`beta` suffixes as `weight`/`bias` (what PyTorch loaders rename).
pub(super) fn gamma_beta_to_weight_bias(key: &str) -> String {
    if let Some(s) = key.strip_suffix(".gamma") {
        format!("{s}.weight")
    } else if let Some(s) = key.strip_suffix(".beta") {
        format!("{s}.bias")
    } else {
        key.to_string()
    }
}

/// Maps a key inside one UNITER/BERT backbone (`embeddings.…`, `encoder.layer.…`, …) to the burn
/// path inside a tower. Old `gamma`/`beta` suffixes become `weight`/`bias`.
fn backbone_key(key: &str) -> String {
    let key = gamma_beta_to_weight_bias(key);
    for (re, rep) in RULES.iter() {
        if re.is_match(&key) {
            return re.replace(&key, *rep).into_owned();
        }
    }
    key
}

/// Maps a `BiEncoder.state_dict()` key to its burn path, or `None` when the key belongs to
/// neither tower.
pub fn biencoder_key_to_burn(key: &str) -> Option<String> {
    let (tower, rest) = if let Some(r) = key.strip_prefix("img_model.") {
        ("image", r)
    } else if let Some(r) = key.strip_prefix("txt_model.") {
        ("text", r)
    } else {
        return None;
    };
    if let Some(r) = rest.strip_prefix("bert.") {
        return Some(format!("{tower}.{}", backbone_key(r)));
    }
    let r = rest.strip_prefix("encode_proj.")?;
    let (idx, param) = r.split_once('.')?;
    let part = match idx {
        "0" => "dense",
        "2" => "layer_norm",
        "3" => "output",
        _ => return None,
    };
    Some(format!("{tower}.projection.{part}.{param}"))
}

/// Maps a UNITER checkpoint key (`uniter.…` upstream or `bert.…` as vendored by LightningDOT) to
/// a path inside the image tower, or `None` for heads (`cls.*`, `feat_regress.*`, `itm_output.*`…).
pub fn uniter_key_to_image_tower(key: &str) -> Option<String> {
    let rest = key
        .strip_prefix("uniter.")
        .or_else(|| key.strip_prefix("bert."))?;
    Some(backbone_key(rest))
}

/// Maps a key of a UNITER retrieval checkpoint (`UniterForImageTextRetrieval.state_dict()`) to
/// its path in [`UniterItm`](crate::model::UniterItm): the backbone under `prefix` (`uniter.`
/// upstream, `bert.` as vendored by LightningDOT) and the `rank_output` / `itm_output` heads;
/// `None` for anything else (pre-training heads such as `cls.*`, `feat_regress.*`).
pub fn uniter_itm_key_to_burn(key: &str, prefix: &str) -> Option<String> {
    if let Some(rest) = key.strip_prefix(prefix) {
        return Some(backbone_key(rest));
    }
    ["rank_output.", "itm_output."]
        .iter()
        .any(|h| key.starts_with(h))
        .then(|| key.to_string())
}

/// Head keys of the pre-training layout that are the same tensor as a tower parameter (one
/// storage, two names): `(head key, tower key)`. Loading reads the tower key; saving writes both.
pub const TIED_PRETRAIN_KEYS: [(&str, &str); 2] = [
    (
        "cls.predictions.decoder.weight",
        "bert.img_model.bert.embeddings.word_embeddings.weight",
    ),
    (
        "feat_regress.weight",
        "bert.img_model.bert.img_embeddings.img_linear.weight",
    ),
];

/// Maps a key of the pre-training layout (`BiEncoderForPretraining.state_dict()`, LightningDot.pt)
/// to its path in [`BiEncoderForPretraining`](crate::model::BiEncoderForPretraining), or `None`
/// for a tied alias or an unknown key.
///
/// | PyTorch                                   | burn                                  |
/// |-------------------------------------------|---------------------------------------|
/// | `bert.{img,txt}_model.…`                  | `bert.{image,text}.…` (as above)      |
/// | `cls.predictions.transform.dense / .LayerNorm` | `heads.cls.dense / .layer_norm`  |
/// | `cls.predictions.bias`                    | `heads.cls.bias`                      |
/// | `feat_regress.net.{0,2}`, `feat_regress.bias` | `heads.feat_regress.{dense,layer_norm}`, `.bias` |
/// | `region_classifier.net.{0,2,3}`           | `heads.region_classifier.{dense,layer_norm,output}` |
/// | `itm_output`                              | `heads.itm_output`                    |
pub fn pretrain_key_to_burn(key: &str) -> Option<String> {
    if let Some(rest) = key.strip_prefix("bert.") {
        return biencoder_key_to_burn(rest).map(|p| format!("bert.{p}"));
    }
    let (head, rest) = key.split_once('.')?;
    let path = match (head, rest) {
        ("cls", "predictions.bias") => "heads.cls.bias".to_string(),
        ("cls", r) => {
            let r = r.strip_prefix("predictions.transform.")?;
            let (part, param) = r.split_once('.')?;
            let part = match part {
                "dense" => "dense",
                "LayerNorm" => "layer_norm",
                _ => return None,
            };
            format!("heads.cls.{part}.{param}")
        }
        ("feat_regress", "bias") => "heads.feat_regress.bias".to_string(),
        ("feat_regress", r) | ("region_classifier", r) => {
            let (idx, param) = r.strip_prefix("net.")?.split_once('.')?;
            let part = match (head, idx) {
                (_, "0") => "dense",
                (_, "2") => "layer_norm",
                ("region_classifier", "3") => "output",
                _ => return None,
            };
            format!("heads.{head}.{part}.{param}")
        }
        ("itm_output", p) => format!("heads.itm_output.{p}"),
        _ => return None,
    };
    Some(path)
}

/// Whether the parameter at burn `path` (of a bi-encoder or pre-training model) is exempt from
/// weight decay in pretrain.py's `build_optimizer`: its PyTorch name contains `bias`,
/// `LayerNorm.bias` or `LayerNorm.weight`. Only LayerNorms that PyTorch names `LayerNorm`
/// qualify — `img_layer_norm`, `pos_layer_norm`, `encode_proj.2`, `feat_regress.net.2` and
/// `region_classifier.net.2` ARE decayed (fixtures optimizer_step.json `param_groups`).
pub fn pretrain_no_decay(path: &str) -> bool {
    if path.ends_with(".bias") || path.ends_with(".beta") {
        return true;
    }
    let Some(norm) = path.strip_suffix(".gamma") else {
        return false;
    };
    // burn names of PyTorch's `….LayerNorm` modules (see the table at the top).
    norm.ends_with("embeddings.layer_norm")
        || norm.ends_with("output_norm")
        || norm.ends_with("heads.cls.layer_norm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_layer_keys() {
        assert_eq!(
            biencoder_key_to_burn(
                "img_model.bert.encoder.layer.11.attention.output.LayerNorm.weight"
            )
            .as_deref(),
            Some("image.encoder.layers.11.attention.output_norm.weight")
        );
        assert_eq!(
            biencoder_key_to_burn("txt_model.bert.encoder.layer.0.output.dense.bias").as_deref(),
            Some("text.encoder.layers.0.output.bias")
        );
        assert_eq!(
            biencoder_key_to_burn("txt_model.encode_proj.2.weight").as_deref(),
            Some("text.projection.layer_norm.weight")
        );
        assert_eq!(
            uniter_key_to_image_tower("uniter.img_embeddings.LayerNorm.gamma").as_deref(),
            Some("img_embeddings.layer_norm.weight")
        );
        assert_eq!(biencoder_key_to_burn("cls.predictions.bias"), None);
        assert_eq!(
            uniter_itm_key_to_burn("uniter.encoder.layer.3.output.LayerNorm.gamma", "uniter.")
                .as_deref(),
            Some("encoder.layers.3.output_norm.weight")
        );
        assert_eq!(
            uniter_itm_key_to_burn("rank_output.weight", "bert.").as_deref(),
            Some("rank_output.weight")
        );
        assert_eq!(
            uniter_itm_key_to_burn("uniter.pooler.dense.bias", "bert."),
            None
        );
        assert_eq!(
            uniter_itm_key_to_burn("cls.predictions.bias", "bert."),
            None
        );
        assert_eq!(
            biencoder_key_to_burn("txt_model.encode_proj.1.weight"),
            None
        );
    }
}
