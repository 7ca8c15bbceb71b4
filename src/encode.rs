//! Host batches (from [`crate::data`]) through the model towers to host vectors.
//! The one place where data meets the model; eval, index and serve all go through it.

use burn::prelude::*;

use crate::data::{ImageBatch, TextBatch};
use crate::model::{BiEncoder, IMG_FEAT_DIM, IMG_POS_DIM, RegionBatch};

pub(crate) fn ints<B: Backend>(
    values: &[i64],
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    Tensor::<B, 1, Int>::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
        .reshape(shape)
}

pub(crate) fn floats<B: Backend>(
    values: &[f32],
    shape: [usize; 3],
    device: &B::Device,
) -> Tensor<B, 3> {
    Tensor::<B, 1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
        .reshape(shape)
}

/// A `[rows, cols]` host tensor on the device.
pub(crate) fn host_ints<B: Backend>(
    t: &crate::tensor_io::HostTensor<i64>,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    ints(&t.values, [t.shape[0], t.shape[1]], device)
}

/// A `[d0, d1, d2]` host tensor on the device.
pub(crate) fn host_floats<B: Backend>(
    t: &crate::tensor_io::HostTensor<f32>,
    device: &B::Device,
) -> Tensor<B, 3> {
    floats(&t.values, [t.shape[0], t.shape[1], t.shape[2]], device)
}

/// Device tensors of a text batch: `input_ids`, `attention_mask`, both `[batch, len]`.
pub fn text_tensors<B: Backend>(
    batch: &TextBatch,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let shape = [batch.batch, batch.len];
    (
        ints(&batch.input_ids, shape, device),
        ints(&batch.attention_mask, shape, device),
    )
}

/// Device tensors of an image batch.
pub fn region_tensors<B: Backend>(batch: &ImageBatch, device: &B::Device) -> RegionBatch<B> {
    let (b, n) = (batch.batch, batch.max_regions);
    RegionBatch {
        img_feat: floats(&batch.img_feat, [b, n, IMG_FEAT_DIM], device),
        img_pos_feat: floats(&batch.img_pos_feat, [b, n, IMG_POS_DIM], device),
        attention_mask: ints(&batch.attention_mask, [b, n + 1], device),
        img_masks: None,
    }
}

/// Row-major host copy of a `[rows, dim]` tensor.
pub fn to_host<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap_or_default()
}

/// Caption vectors, row-major `[batch, P]`.
pub fn encode_texts<B: Backend>(
    model: &BiEncoder<B>,
    batch: &TextBatch,
    device: &B::Device,
) -> Vec<f32> {
    let (ids, mask) = text_tensors(batch, device);
    to_host(model.encode_text(ids, mask))
}

/// Image vectors, row-major `[batch, P]`.
pub fn encode_images<B: Backend>(
    model: &BiEncoder<B>,
    batch: &ImageBatch,
    device: &B::Device,
) -> Vec<f32> {
    to_host(model.encode_image(&region_tensors(batch, device)))
}
