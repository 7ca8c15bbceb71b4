//! # lightningdot
//!
//! LightningDOT (Sun et al., NAACL 2021, "Pre-training Visual-Semantic Embeddings for Real-Time
//! Image-Text Retrieval") in pure Rust on burn: a UNITER image tower over region features and a
//! BERT text tower, each pooled at token 0 through a projection head and scored by dot product.
//!
//! ```no_run
//! use lightningdot::conversion::ModelSource;
//! use lightningdot::device::CpuBackend;
//!
//! let source = ModelSource { checkpoint: "flickr-ft.pt".into(), ..Default::default() };
//! let (model, config, _report) = source.load::<CpuBackend>(&Default::default()).unwrap();
//! # let _ = (model, config);
//! ```
//!
//! Modules, with one-way dependencies: [`model`] (burn only) ← [`conversion`] (PyTorch files);
//! [`data`] (UNITER LMDB data, knows nothing of the model); [`region_dims`] (the region sizes both
//! share); [`encode`] (where data meets the model: batches and whole corpora → vectors);
//! [`eval`] (recall) ← [`rerank`] (cross-encoder) ← [`evaluation`] (the eval job);
//! [`run`] (the training run engine) ← [`train`], [`pretrain`]; [`retrieval`] (index, search,
//! query pipeline) ← [`serve`] (HTTP). Helpers: [`fsio`] (atomic writes, JSON files),
//! [`tensor_io`] (safetensors), [`batch`] (batch checks), [`rng`], [`device`], [`progress`].

pub mod batch;
#[path = "../model_conversion/mod.rs"]
pub mod conversion;
pub mod data;
pub mod device;
pub mod encode;
pub mod eval;
pub mod evaluation;
pub mod forward;
pub mod fsio;
pub mod model;
pub mod pretrain;
pub mod pretrain_task;
pub mod progress;
pub mod region_dims;
pub mod regions;
pub mod rerank;
pub mod retrieval;
pub mod rng;
pub mod run;
pub mod search;
pub mod serve;
pub mod tensor_io;
pub mod train;
