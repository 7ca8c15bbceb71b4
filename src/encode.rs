//! Host batches (from [`crate::data`]) through the model towers to host vectors.
//! The one place where data meets the model; eval, training validation, hard-negative mining,
//! index building and serve all go through it. Whole corpora are encoded by
//! [`encode_texts_by_length`] and [`encode_images_by_size`].

use burn::prelude::*;

use crate::data::{DataError, ImageBatch, ImgDb, TextBatch, collate_texts, dataset::image_batch};
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

/// Whether corpus encoding shows a progress bar (off while a dashboard owns the terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Hidden,
    /// A bar with this label.
    Bar(&'static str),
}

/// Receives each encoded batch: its rows and their vectors, row-major.
pub type BatchSink<'a, E> = dyn FnMut(&[usize], &[f32]) -> Result<(), E> + 'a;

/// Encodes the items `rows` in batches of `batch_size`, largest first (`size(i)`): padding is
/// masked exactly, so grouping similar sizes only saves work. `encode(chunk)` returns the
/// chunk's vectors row-major; each chunk goes to `sink` with its rows.
fn encode_rows_by_size<E>(
    rows: &[usize],
    size: impl Fn(usize) -> usize,
    batch_size: usize,
    progress: Progress,
    mut encode: impl FnMut(&[usize]) -> Result<Vec<f32>, E>,
    sink: &mut BatchSink<'_, E>,
) -> Result<(), E> {
    let mut order = rows.to_vec();
    order.sort_by_key(|&i| std::cmp::Reverse(size(i)));
    let pb = match progress {
        Progress::Bar(what) => crate::progress::bar(rows.len(), what),
        Progress::Hidden => indicatif::ProgressBar::hidden(),
    };
    for chunk in order.chunks(batch_size.max(1)) {
        sink(chunk, &encode(chunk)?)?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(())
}

/// Caption vectors of `texts[r]` for every `r` in `rows` (token ids with `[CLS]`/`[SEP]`),
/// longest first, handed to `sink` batch by batch (an upload streams them).
pub fn encode_text_rows<B: Backend, E>(
    model: &BiEncoder<B>,
    texts: &[&[u32]],
    rows: &[usize],
    batch_size: usize,
    progress: Progress,
    device: &B::Device,
    sink: &mut BatchSink<'_, E>,
) -> Result<(), E> {
    let encode = |chunk: &[usize]| {
        let ids: Vec<&[u32]> = chunk.iter().map(|&i| texts[i]).collect();
        Ok(encode_texts(model, &collate_texts(&ids), device))
    };
    encode_rows_by_size(rows, |i| texts[i].len(), batch_size, progress, encode, sink)
}

/// Image vectors of `names[r]` for every `r` in `rows`, most boxes first, handed to `sink`
/// batch by batch.
#[allow(clippy::too_many_arguments)]
pub fn encode_image_rows<B: Backend, E: From<DataError>>(
    model: &BiEncoder<B>,
    img_db: &ImgDb,
    names: &[String],
    rows: &[usize],
    batch_size: usize,
    progress: Progress,
    device: &B::Device,
    sink: &mut BatchSink<'_, E>,
) -> Result<(), E> {
    let mut nbb = vec![0; names.len()];
    for &r in rows {
        nbb[r] = img_db.num_bb(&names[r])?;
    }
    let encode = |chunk: &[usize]| {
        let batch: Vec<&str> = chunk.iter().map(|&i| names[i].as_str()).collect();
        Ok(encode_images(model, &image_batch(img_db, &batch)?, device))
    };
    encode_rows_by_size(rows, |i| nbb[i], batch_size, progress, encode, sink)
}

/// Collects streamed batches into `[n, dim]` row-major in input order; returns it and `dim`.
fn collect_rows<E>(
    n: usize,
    stream: impl FnOnce(&mut BatchSink<'_, E>) -> Result<(), E>,
) -> Result<(Vec<f32>, usize), E> {
    let (mut rows, mut dim) = (Vec::new(), 0);
    stream(&mut |chunk: &[usize], v: &[f32]| {
        if dim == 0 {
            dim = v.len() / chunk.len().max(1);
            rows = vec![0f32; n * dim];
        }
        for (row, &i) in v.chunks(dim.max(1)).zip(chunk) {
            rows[i * dim..(i + 1) * dim].copy_from_slice(row);
        }
        Ok(())
    })?;
    Ok((rows, dim))
}

/// Caption vectors `[texts.len(), dim]` (row-major, input order) and `dim`; each text is its
/// token ids with `[CLS]`/`[SEP]`.
pub fn encode_texts_by_length<B: Backend>(
    model: &BiEncoder<B>,
    texts: &[&[u32]],
    batch_size: usize,
    progress: Progress,
    device: &B::Device,
) -> (Vec<f32>, usize) {
    let all: Vec<usize> = (0..texts.len()).collect();
    let collected = collect_rows::<std::convert::Infallible>(texts.len(), |sink| {
        encode_text_rows(model, texts, &all, batch_size, progress, device, sink)
    });
    match collected {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// Image vectors `[names.len(), dim]` (row-major, input order) and `dim`, batched by box count.
pub fn encode_images_by_size<B: Backend>(
    model: &BiEncoder<B>,
    img_db: &ImgDb,
    names: &[String],
    batch_size: usize,
    progress: Progress,
    device: &B::Device,
) -> Result<(Vec<f32>, usize), DataError> {
    let all: Vec<usize> = (0..names.len()).collect();
    collect_rows(names.len(), |sink| {
        encode_image_rows(
            model, img_db, names, &all, batch_size, progress, device, sink,
        )
    })
}
