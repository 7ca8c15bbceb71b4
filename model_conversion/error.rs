//! Conversion errors: one line each, naming the file, key and shapes involved.

/// Everything that can go wrong between a `.pt` file and a loaded model.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a readable PyTorch checkpoint ({reason})")]
    NotTorch { path: String, reason: String },
    #[error("{path}: no tensors found (is this a state_dict checkpoint?)")]
    Empty { path: String },
    #[error("{path}: unrecognised checkpoint layout; first keys: {sample}")]
    UnknownLayout { path: String, sample: String },
    #[error("{path}: tensor {key} could not be read ({reason}); the file may be truncated")]
    TensorData {
        path: String,
        key: String,
        reason: String,
    },
    #[error(
        "shape mismatch for {key}: checkpoint has {found:?}, model expects {expected:?} (check --img-config/--txt-config)"
    )]
    ShapeMismatch {
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error(
        "{count} checkpoint key(s) have no parameter in the model, e.g. {first} (use --allow-partial to ignore)"
    )]
    UnexpectedKeys { count: usize, first: String },
    #[error(
        "{count} model parameter(s) missing from the checkpoint, e.g. {first} (use --allow-partial to keep them random)"
    )]
    MissingKeys { count: usize, first: String },
    #[error("{path}: {reason}")]
    ModelDir { path: String, reason: String },
    #[error("{path}: not a usable UNITER cross-encoder checkpoint: {reason}")]
    NotUniter { path: String, reason: String },
    #[error("{path}: cannot write PyTorch checkpoint: {reason}")]
    Write { path: String, reason: String },
    #[error("cannot map the model to PyTorch keys: {0}")]
    Export(String),
    #[error(transparent)]
    Config(#[from] crate::model::ConfigError),
    #[error("applying weights failed: {0}")]
    Apply(String),
}
