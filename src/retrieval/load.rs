//! A query pipeline from paths: the one place `search`, `serve` and the demo assemble theirs
//! (the re-ranker is plugged in by [`crate::rerank::RerankerSpec::attach`], the detector by
//! [`super::PhotoPipeline`]).

use std::path::PathBuf;

use burn::prelude::Backend;

use super::pipeline::{Pipeline, PipelineOptions, QueryEncoder};
use super::store::{DirStore, VectorStore};
use super::{RetrievalError, StoredIndex, resolve_vocab};
use crate::conversion::ModelSource;
use crate::data::Tokenizer;

/// What answers queries besides the vectors: the bi-encoder, its tokenizer, the search options.
#[derive(Debug, Clone)]
pub struct QuerySource {
    pub model: ModelSource,
    /// Query tokenizer: vocab.txt, tokenizer.json or a directory holding one (default: the
    /// model directory's copy, else the text-config directory).
    pub vocab: Option<PathBuf>,
    pub options: PipelineOptions,
}

/// The index directory `dir` as a store (vectors on the device unless streamed).
pub fn open_index_store<B: Backend>(
    dir: &std::path::Path,
    options: &PipelineOptions,
    device: B::Device,
) -> Result<Box<dyn VectorStore>, RetrievalError> {
    Ok(Box::new(DirStore::<B>::open(
        StoredIndex::open(dir)?,
        options,
        device,
    )?))
}

impl<B: Backend> Pipeline<B> {
    /// Loads the model and tokenizer of `source` and serves queries over `store`.
    pub fn load(
        source: &QuerySource,
        store: Box<dyn VectorStore>,
        device: B::Device,
    ) -> Result<Self, RetrievalError> {
        let model = &source.model;
        let vocab = resolve_vocab(
            source.vocab.as_deref(),
            &model.checkpoint,
            model.txt_config.as_deref(),
        )?;
        let tokenizer = Tokenizer::from_path(&vocab)?;
        let (net, cfg, _) = model.load::<B>(&device).map_err(|e| RetrievalError::Load {
            path: model.checkpoint.display().to_string(),
            reason: e.to_string(),
        })?;
        if store.meta().model.checkpoint != model.checkpoint.display().to_string() {
            tracing::debug!(
                "index was built from {}, querying with {}",
                store.meta().model.checkpoint,
                model.checkpoint.display()
            );
        }
        let encoder = QueryEncoder::new(net, &cfg, tokenizer, device);
        Self::with_store(encoder, store, source.options)
    }
}
