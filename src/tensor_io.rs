//! Named host tensors in safetensors files: reading reference batches and writing outputs.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// Why a tensor file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path}: tensor {name:?} is missing")]
    Missing { path: String, name: String },
    #[error("{path}: tensor {name:?} has dtype {dtype}, expected {expected}")]
    Dtype {
        path: String,
        name: String,
        dtype: String,
        expected: &'static str,
    },
}

/// A host tensor: row-major values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor<T> {
    pub shape: Vec<usize>,
    pub values: Vec<T>,
}

/// All tensors of one safetensors file, decoded to f32 or i64 on request.
pub struct TensorFile {
    path: String,
    bytes: Vec<u8>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self, TensorIoError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| TensorIoError::File {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        SafeTensors::deserialize(&bytes).map_err(|e| TensorIoError::File {
            path: shown.clone(),
            reason: format!("not a safetensors file ({e})"),
        })?;
        Ok(Self { path: shown, bytes })
    }

    fn view(&self, name: &str) -> Result<TensorView<'_>, TensorIoError> {
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| TensorIoError::File {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        st.tensor(name).map_err(|_| TensorIoError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }

    /// Tensor names in the file.
    pub fn names(&self) -> Vec<String> {
        SafeTensors::deserialize(&self.bytes)
            .map(|st| st.names().into_iter().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// True when `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.view(name).is_ok()
    }

    /// A float tensor (F32, F16, BF16 or F64) as f32.
    pub fn f32(&self, name: &str) -> Result<HostTensor<f32>, TensorIoError> {
        let v = self.view(name)?;
        let d = v.data();
        let values = match v.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            other => {
                return Err(TensorIoError::Dtype {
                    path: self.path.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                    expected: "a float type",
                });
            }
        };
        Ok(HostTensor {
            shape: v.shape().to_vec(),
            values,
        })
    }

    /// An integer or bool tensor as i64.
    pub fn i64(&self, name: &str) -> Result<HostTensor<i64>, TensorIoError> {
        let v = self.view(name)?;
        let d = v.data();
        let values = match v.dtype() {
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            Dtype::U8 | Dtype::BOOL => d.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(TensorIoError::Dtype {
                    path: self.path.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                    expected: "an integer type",
                });
            }
        };
        Ok(HostTensor {
            shape: v.shape().to_vec(),
            values,
        })
    }

    /// The `__metadata__` map.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        SafeTensors::read_metadata(&self.bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default()
    }
}

/// A host tensor of any dtype the project writes (outputs, detector stages, UNITER records).
#[derive(Debug, Clone, PartialEq)]
pub enum StoredTensor {
    F32(HostTensor<f32>),
    F16(HostTensor<half::f16>),
    I64(HostTensor<i64>),
    U8(HostTensor<u8>),
}

impl StoredTensor {
    fn dtype_shape_bytes(&self) -> (Dtype, &[usize], Vec<u8>) {
        match self {
            StoredTensor::F32(t) => (
                Dtype::F32,
                &t.shape,
                t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            StoredTensor::F16(t) => (
                Dtype::F16,
                &t.shape,
                t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            StoredTensor::I64(t) => (
                Dtype::I64,
                &t.shape,
                t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            StoredTensor::U8(t) => (Dtype::U8, &t.shape, t.values.clone()),
        }
    }
}

/// Writes f32 tensors to `path` through a temp file + rename, so a crash never leaves a
/// half-written file under the final name.
pub fn write_f32(
    path: &Path,
    tensors: &[(String, HostTensor<f32>)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), TensorIoError> {
    let tensors: Vec<(String, StoredTensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), StoredTensor::F32(t.clone())))
        .collect();
    write_tensors(path, &tensors, metadata)
}

/// Writes tensors of mixed dtypes to `path` atomically (temp file + rename).
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, StoredTensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<(), TensorIoError> {
    let err = |reason: String| TensorIoError::File {
        path: path.display().to_string(),
        reason,
    };
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let (dtype, shape, bytes) = t.dtype_shape_bytes();
            (n.clone(), dtype, shape.to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| err(format!("tensor {n}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let data = safetensors::serialize(views, metadata).map_err(|e| err(e.to_string()))?;
    crate::fsio::write_atomic(path, &data).map_err(|e| err(e.to_string()))
}
