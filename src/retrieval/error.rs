//! One error type for index files, queries and the query pipeline.

use std::path::PathBuf;

use crate::data::DataError;

/// Why an index could not be built or read, or a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    #[error("index {}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(
        "no tokenizer vocabulary: pass --vocab FILE|DIR (a vocab.txt or tokenizer.json), or convert \
         the model with --txt-config DIR where DIR holds vocab.txt so that the model directory carries it"
    )]
    NoVocab,
    #[error("query is empty")]
    EmptyQuery,
    #[error("query is {chars} characters long; the limit is {max}")]
    QueryTooLong { chars: usize, max: usize },
    #[error(
        "query is {tokens} tokens long with [CLS] and [SEP]; the text tower takes at most {max}"
    )]
    TooManyTokens { tokens: usize, max: usize },
    #[error("k must be between 1 and {max} (got {k})")]
    BadK { k: i64, max: usize },
    #[error("unknown image id {0:?}")]
    UnknownImage(String),
    #[error("this index has no captions (build it with --txt-db to search images -> texts)")]
    NoTexts,
    #[error("this index has no approximate (HNSW) graph (build it with `index --ann`)")]
    NoAnn,
    #[error("approximate index: {0}")]
    Ann(String),
    #[error("re-ranker {name}: {reason}")]
    Rerank { name: String, reason: String },
    /// A model the pipeline needs could not be loaded.
    #[error("loading {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("{0}")]
    BadRequest(String),
    /// The vector store cannot be reached, or lacks the collection (retrying later may help).
    #[error("{store}: {reason}")]
    StoreUnavailable { store: String, reason: String },
    /// The vector store answered with an error.
    #[error("{store}: {reason}")]
    Store { store: String, reason: String },
}

/// How a caller (the HTTP server) should classify an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is wrong (HTTP 400).
    BadRequest,
    /// The request names something the index does not hold (HTTP 404).
    NotFound,
    /// The service failed (HTTP 500).
    Internal,
    /// A service it depends on (the vector store) is down (HTTP 503).
    Unavailable,
}

impl RetrievalError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::EmptyQuery
            | Self::QueryTooLong { .. }
            | Self::TooManyTokens { .. }
            | Self::BadK { .. }
            | Self::NoTexts
            | Self::NoAnn
            | Self::BadRequest(_) => ErrorClass::BadRequest,
            Self::UnknownImage(_) => ErrorClass::NotFound,
            Self::StoreUnavailable { .. } => ErrorClass::Unavailable,
            _ => ErrorClass::Internal,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.into(),
            reason: e.to_string(),
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
