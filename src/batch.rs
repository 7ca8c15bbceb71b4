//! Host batches are checked before any tensor is built: a wrong shape or an id outside a table
//! would panic or abort inside burn. Each batch type's `validate` (parity forward inputs,
//! cross-encoder batches, pre-training batches) reports through this one error type.

use crate::tensor_io::TensorIoError;

/// A batch that does not fit the task or the model.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Io(#[from] TensorIoError),
    #[error("{name} has shape {found:?}, expected {expected}")]
    Shape {
        name: &'static str,
        found: Vec<usize>,
        expected: String,
    },
    #[error("{name} holds {value}, outside [0, {limit})")]
    Range {
        name: &'static str,
        value: i64,
        limit: usize,
    },
    #[error("{0}")]
    Invalid(String),
}

/// `Ok` when `ok`, else a [`BatchError::Shape`] naming `name`, its shape and `expected()`.
pub fn check_shape(
    name: &'static str,
    found: &[usize],
    ok: bool,
    expected: impl FnOnce() -> String,
) -> Result<(), BatchError> {
    if ok {
        Ok(())
    } else {
        Err(BatchError::Shape {
            name,
            found: found.to_vec(),
            expected: expected(),
        })
    }
}
