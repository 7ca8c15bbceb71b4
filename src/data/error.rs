//! The one error type of the data layer.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading or writing data.
///
/// `Display` is a single line that names the file, directory or record key involved, so that a
/// CLI can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A required file or directory does not exist.
    #[error("{what} not found: {}", path.display())]
    NotFound { what: &'static str, path: PathBuf },

    /// Reading or writing a file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// LMDB refused to open or read an environment.
    #[error("LMDB error in {}: {source}", path.display())]
    Lmdb {
        path: PathBuf,
        #[source]
        source: heed::Error,
    },

    /// An LMDB's `data.mdb` is shorter than the pages its meta page says are in use: an
    /// interrupted copy or download. Reading it would fault (SIGBUS) on the missing pages.
    #[error(
        "truncated LMDB {}: data.mdb is {actual} bytes but its meta page says {expected} bytes \
         ({pages} pages of {page_size}) are in use; copy or download it again",
        path.display()
    )]
    TruncatedLmdb {
        path: PathBuf,
        actual: u64,
        expected: u64,
        pages: u64,
        page_size: u32,
    },

    /// A JSON file does not parse or lacks a required field.
    #[error("invalid JSON in {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A key is absent from an LMDB (e.g. an image name unknown to the image db).
    #[error("{what} '{key}' not found in {}", db.display())]
    MissingKey {
        what: &'static str,
        key: String,
        db: PathBuf,
    },

    /// A record exists but its bytes do not decode to what the format promises.
    #[error("corrupt record '{key}' in {}: {reason}", db.display())]
    CorruptRecord {
        key: String,
        db: PathBuf,
        reason: String,
    },

    /// A file parsed but its content is unusable (wrong shape, inconsistent maps, ...).
    #[error("invalid {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },

    /// A caption refers to an image the image db does not hold.
    #[error("image '{img}' of caption '{txt_id}' is not in image db {}", img_db.display())]
    MissingImage {
        txt_id: String,
        img: String,
        img_db: PathBuf,
    },

    /// A text db has no captions, so there is nothing to evaluate or train on.
    #[error("empty split: text db {} has no captions (id2len.json is empty)", path.display())]
    EmptySplit { path: PathBuf },

    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },

    /// A pre-training setting is unusable (task mixture, sampler, task name, RNG state).
    #[error("invalid pre-training setting: {0}")]
    PretrainConfig(String),

    /// A record cannot serve a pre-training task (a caption without word pieces for MLM, an
    /// image without boxes for region masking); the reference would crash on it.
    #[error("{task}: caption '{key}' in {} cannot be used: {reason}", db.display())]
    Unusable {
        task: &'static str,
        key: String,
        db: PathBuf,
        reason: String,
    },

    /// Inputs handed to a collate function are inconsistent.
    #[error("cannot collate batch: {0}")]
    Batch(String),
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn lmdb(path: &Path, source: heed::Error) -> Self {
        Self::Lmdb {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(db: &Path, key: &str, reason: impl Into<String>) -> Self {
        Self::CorruptRecord {
            key: key.to_string(),
            db: db.to_path_buf(),
            reason: one_line(reason.into()),
        }
    }

    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            reason: one_line(reason.into()),
        }
    }
}

/// Third-party messages sometimes span lines; the contract is one line per error.
pub(crate) fn one_line(s: String) -> String {
    if s.contains('\n') {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        s
    }
}
