//! Search by photo from the command line (`search --photo FILE --detector DIR`) and the
//! detector loading `serve --detector DIR` shares with it.

use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::Backend;
use lightningdot::conversion::DetectorSource;
use lightningdot::retrieval::photo::PhotoService;
use lightningdot::retrieval::{PhotoPipeline, PhotoResponse, Pipeline, check_k};

/// The pipeline with the detector at `dir` (pytorch_model.bin + config.yaml).
pub fn with_detector<B: Backend>(
    pipeline: Pipeline<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<PhotoPipeline<B>> {
    let source = DetectorSource {
        path: dir.to_path_buf(),
        ..Default::default()
    };
    let (detector, _) = source
        .load::<B>(device)
        .with_context(|| format!("loading the detector {}", dir.display()))?;
    Ok(PhotoPipeline::new(pipeline, detector)?)
}

/// Reads `file` and searches with it.
pub fn search_file<B: Backend>(
    photo: &PhotoPipeline<B>,
    file: &Path,
    k: i64,
) -> Result<PhotoResponse> {
    let k = check_k(k)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(photo.search_photo(&bytes, k)?)
}

/// The two result lists as tables.
pub fn print_tables(resp: &PhotoResponse) {
    let width = resp
        .captions
        .iter()
        .chain(&resp.images)
        .map(|r| r.id.len())
        .max()
        .unwrap_or(2)
        .max(2);
    println!(
        "{} regions of a {}x{} photo",
        resp.regions, resp.image_size[1], resp.image_size[0]
    );
    println!(
        "captions\n{:>4}  {:>10}  {:<width$}  text",
        "rank", "score", "id"
    );
    for (i, r) in resp.captions.iter().enumerate() {
        let text = r.text.clone().unwrap_or_default();
        println!("{:>4}  {:>10.4}  {:<width$}  {text}", i + 1, r.score, r.id);
    }
    println!(
        "similar images\n{:>4}  {:>10}  {:<width$}  caption",
        "rank", "score", "id"
    );
    for (i, r) in resp.images.iter().enumerate() {
        let text = r
            .captions
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|c| c.text.clone())
            .unwrap_or_default();
        println!("{:>4}  {:>10.4}  {:<width$}  {text}", i + 1, r.score, r.id);
    }
    let t = resp.timings_ms;
    println!(
        "decode {:.1} ms, detector {:.1} ms, image tower {:.1} ms, candidates {:.2} ms, total {:.1} ms",
        t.decode, t.detect, t.encode, t.candidates, t.total
    );
}
