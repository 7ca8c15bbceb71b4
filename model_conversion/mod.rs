//! Conversion of the released PyTorch checkpoints into the burn model (spec §3).
//!
//! Reads every layout the reference produced — the fine-tune wrapper (`model_dict`), the flat
//! pre-training state_dict (`bert.` prefix + heads), flat BiEncoder state_dicts, and UNITER files
//! (`uniter.` or `bert.` prefix, old `gamma`/`beta` names) — in zip or legacy torch format, fp32
//! or fp16, with burn-store's PyTorch reader (no libtorch). Loading is strict by default.
//! Writing goes the other way ([`export_pretraining_pt`], [`export_biencoder_pt`]) through a
//! small torch zip writer ([`TorchFile`]), again without libtorch (spec §3.2).

mod checkpoint;
mod detector;
mod error;
mod export;
mod keymap;
mod load;
mod model_dir;
mod pretrain;
mod torch_writer;
mod uniter_itm;

pub use checkpoint::{Checkpoint, CheckpointTensor, Layout, TorchFormat};
pub use detector::{
    DETECTOR_CONFIG, DETECTOR_WEIGHTS, DetectorSource, detector_key_to_burn,
    detector_manifest_coverage, load_detector, write_detector_dir,
};
pub use error::ConvertError;
pub use export::{
    biencoder_burn_to_key, biencoder_export_keys, export_biencoder_pt, export_pretraining_pt,
    pretrain_burn_to_key, pretraining_export_keys, source_has_heads,
};
pub use keymap::{
    TIED_PRETRAIN_KEYS, biencoder_key_to_burn, pretrain_key_to_burn, pretrain_no_decay,
    uniter_itm_key_to_burn, uniter_key_to_image_tower,
};
pub use load::{
    LoadOptions, LoadReport, load_biencoder, load_image_tower, manifest_coverage, param_ids,
    resolve_path,
};
pub use model_dir::{
    ModelDir, ModelSource, RecordPrecision, VOCAB_FILES, infer_project_dim, write_dir_atomically,
    write_model_dir, write_model_dir_with_vocab,
};
pub use pretrain::{
    HEADS_RECORD, HeadsSource, load_pretraining, load_pretraining_source,
    load_pretraining_source_with, write_pretrain_dir,
};
pub use torch_writer::{Storage, TorchDict, TorchFile, TorchTensor, TorchValue};
pub use uniter_itm::{
    UniterItmDir, UniterLoadReport, UniterSource, infer_uniter_config, load_uniter_itm,
    uniter_prefix, write_uniter_dir,
};
