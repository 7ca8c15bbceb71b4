//! The pre-training data recipe (spec §4.5, §6.1 – §6.3; fixtures README "Pre-training
//! objectives"): everything random about a pre-training micro-batch, reproduced draw for draw
//! with CPython's `random`, and the task batches themselves. Host arrays only, like the rest of
//! [`crate::data`].
//!
//! | module | job | reference |
//! |---|---|---|
//! | [`pyrandom`] | CPython `random` (MT19937, `random`, `getrandbits`, `shuffle`, `choice`), resumable state | `_randommodule.c`, `random.py` |
//! | [`masking`] | MLM token masking and MRM region masking | `dvl/data/mlm.py::random_word`, `dvl/data/mrm.py::_get_img_mask` |
//! | [`sampler`] | token-budget batches of item indices | `uniter_model/data/sampler.py` |
//! | [`mixture`] | which task each micro-step trains | `uniter_model/data/loader.py::MetaLoader` |
//! | [`task`] | the task names (`mlm`, `mrfr`, `mrc`, `mrckl`, `itm`) | `pretrain.py` |
//! | [`dataset`] | items of one (txt_db, img_db) pair, their lengths, per-task items | `DetectFeatTxtTokDataset`, `MlmDataset`, `MrfrDataset`, `MrcDataset`, `ItmDataset` |
//! | [`collate`] | padded task batches with targets and masked positions | `mlm_collate`, `mrfr_collate`, `mrc_collate`, `itm_collate` |
//!
//! One micro-step, as `pretrain.py` runs it: `task = schedule.next(&mixture, &mut rng)`, take
//! the next batch of that task's sampler epoch (a new epoch when exhausted), then
//! `dataset.batch(task, &indices, &mut rng)`. In the reference the masks are drawn in
//! DataLoader worker processes, so only the rules, not a real run's masks, can be matched.

pub mod collate;
pub mod dataset;
pub mod masking;
pub mod mixture;
pub mod pyrandom;
pub mod sampler;
pub mod task;

pub use collate::PretrainItem;
pub use collate::{IMG_INPUT_ID, PretrainBatch, collate_indices, collate_pretrain};
pub use dataset::{PretrainDataOptions, PretrainDataset};
pub use masking::{IGNORE_LABEL, MLM_PROB, img_mask, random_word};
pub use mixture::{TaskMixture, TaskSchedule};
pub use pyrandom::{PyRandom, PyRandomState};
pub use sampler::{BUCKET_SIZE, SIZE_MULTIPLE, TokenBucketSampler};
pub use task::PretrainTask;
