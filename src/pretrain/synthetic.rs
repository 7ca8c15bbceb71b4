//! A pre-training config over the synthetic task of [`crate::train::synthetic`] (tests,
//! benchmarks): the train split as one corpus with all four tasks of the released config
//! (itm, mlm, mrfr, mrckl), the dev split as the validation corpus, tiny random towers.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::data::DataError;
use crate::train::synthetic::{SyntheticSpec, apply_overrides, write_synthetic};

/// Writes the synthetic dbs into `dir` and a pre-training config in the reference's form;
/// returns the config's path. `overrides` (a JSON object) replaces fields of the config.
pub fn write_pretrain_synthetic(
    dir: &Path,
    spec: &SyntheticSpec,
    overrides: &Value,
) -> Result<PathBuf, DataError> {
    write_synthetic(dir, spec, &json!({}))?;
    let tasks = json!(["itm", "mlm", "mrfr", "mrckl"]);
    let mut config = json!({
        "compressed_db": false,
        "txt_model_type": "bert-base", "txt_model_config": "txt_config.json",
        "img_model_type": "uniter-base", "img_model_config": "img_config.json",
        "model_config": "img_config.json",
        "output_dir": dir.join("pretrain_out"),
        "project_dim": 32, "mrm_prob": 0.15, "neg_size": 128, "nce_temp": 1.0,
        "itm_neg_prob": 0.0, "itm_ot_lambda": 0.0, "max_txt_len": 60,
        "conf_th": 0.2, "max_bb": 100, "min_bb": 10, "num_bb": 36,
        "train_batch_size": 256, "val_batch_size": 1024, "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3, "valid_steps": 50, "num_train_steps": 200,
        "optim": "adamw", "betas": [0.9, 0.98], "decay": "linear", "dropout": 0.1,
        "weight_decay": 0.01, "grad_norm": 5.0, "warmup_steps": 20, "seed": 42,
        "fp16": false, "n_workers": 1, "pin_mem": false, "rank": 0
    });
    let train = json!([{"name": "syn", "db": ["txt_train.db"], "img": ["img"],
                        "tasks": tasks, "mix_ratio": [16, 8, 4, 4]}]);
    let val = json!([{"name": "syn", "db": ["txt_dev.db"], "img": ["img"], "tasks": tasks}]);
    if let Some(c) = config.as_object_mut() {
        c.insert("train_datasets".into(), train);
        c.insert("val_datasets".into(), val);
    }
    apply_overrides(&mut config, overrides);
    let path = dir.join("pretrain_config.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&config).unwrap_or_default(),
    )
    .map_err(|e| DataError::io(&path, e))?;
    Ok(path)
}
