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
//! [`data`] (UNITER LMDB data, knows nothing of the model); [`tensor_io`] (safetensors batches);
//! [`device`] (backend selection); [`retrieval`] (index, search, query pipeline) ← [`serve`] (HTTP).

#[path = "../model_conversion/mod.rs"]
pub mod conversion;
pub mod data;
pub mod device;
pub mod encode;
pub mod eval;
pub mod inference;
pub mod model;
pub mod pretrain;
pub mod progress;
pub mod regions;
pub mod rerank;
pub mod retrieval;
pub mod search;
pub mod serve;
pub mod tensor_io;
pub mod train;
