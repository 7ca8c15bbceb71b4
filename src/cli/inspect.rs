//! `lightningdot inspect FILE.pt`: what a user runs first on a downloaded file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use lightningdot::conversion::{
    Checkpoint, Layout, TorchFormat, biencoder_key_to_burn, detector_key_to_burn,
    infer_project_dim, uniter_key_to_image_tower,
};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The checkpoint file (.pt / .bin, zip or legacy torch format).
    pub file: PathBuf,
    /// Print only the summary, not every key.
    #[arg(long)]
    pub summary: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let ckpt = Checkpoint::open(&args.file)?;
    let size = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    if !args.summary {
        println!("{:<72} {:>18} dtype", "key", "shape");
        for (k, t) in &ckpt.tensors {
            println!("{k:<72} {:>18} {:?}", format!("{:?}", t.shape()), t.dtype());
        }
        println!();
    }
    let format = match ckpt.format {
        TorchFormat::Zip => "torch zip archive (torch >= 1.6)",
        TorchFormat::Legacy => "legacy torch pickle stream (torch < 1.6)",
        TorchFormat::Other => "pickle/tar",
    };
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for t in ckpt.tensors.values() {
        *dtypes.entry(format!("{:?}", t.dtype())).or_default() += 1;
    }
    let params: usize = ckpt.tensors.values().map(|t| t.numel()).sum();
    println!(
        "file:      {} ({:.1} MB)",
        args.file.display(),
        size as f64 / 1e6
    );
    println!("format:    {format}");
    println!("layout:    {}", ckpt.layout.describe());
    println!(
        "tensors:   {} ({:.2}M values), dtypes {dtypes:?}",
        ckpt.tensors.len(),
        params as f64 / 1e6
    );

    println!("conversion would:");
    match ckpt.layout {
        Layout::Uniter => {
            let (backbone, heads): (Vec<_>, Vec<_>) = ckpt
                .tensors
                .keys()
                .partition(|k| uniter_key_to_image_tower(k).is_some());
            println!(
                "  - map {} backbone keys (uniter./bert. prefix, gamma/beta -> weight/bias) onto the image tower",
                backbone.len()
            );
            println!(
                "  - ignore {} head keys ({})",
                heads.len(),
                groups(heads.iter().map(|s| s.as_str()))
            );
            println!(
                "  - this file initialises the image tower (training) or the re-ranker; it is not a bi-encoder"
            );
            if heads
                .iter()
                .any(|k| k.starts_with("rank_output.") || k.starts_with("itm_output."))
            {
                println!(
                    "  - as a re-ranker (`convert`, --rerank-checkpoint): backbone + rank_output \
                     (from itm_output row 1 when absent), UNITER cross-encoder"
                );
            }
        }
        Layout::Detector => {
            let (weights, nbt): (Vec<_>, Vec<_>) = ckpt
                .tensors
                .keys()
                .partition(|k| detector_key_to_burn(k).is_some());
            println!(
                "  - map {} detector weights (backbone, RPN, ROI head; conv+BN pairs, gamma/beta -> weight/bias)",
                weights.len()
            );
            println!(
                "  - check {} BatchNorm num_batches_tracked counters (frozen BN: not used)",
                nbt.len()
            );
            println!(
                "  - use it with config.yaml beside it: `forward --task detector`, `extract --detector DIR`"
            );
        }
        _ => {
            let (model, ignored) = ckpt.biencoder_tensors();
            let strip = match ckpt.layout {
                Layout::FineTuneWrapper => "strip the `model_dict.` wrapper",
                Layout::Pretraining => "strip the `bert.` prefix",
                _ => "use keys as they are",
            };
            let unmapped: Vec<&String> = model
                .keys()
                .filter(|k| biencoder_key_to_burn(k).is_none())
                .collect();
            let linear = model
                .iter()
                .filter(|(k, t)| {
                    k.ends_with(".weight") && t.shape().len() == 2 && !k.contains("embeddings.")
                })
                .count();
            println!(
                "  - {strip}: {} bi-encoder tensors (image tower {}, text tower {})",
                model.len(),
                model.keys().filter(|k| k.starts_with("img_model.")).count(),
                model.keys().filter(|k| k.starts_with("txt_model.")).count()
            );
            if !ignored.is_empty() {
                println!(
                    "  - ignore {} other key(s): {}",
                    ignored.len(),
                    groups(ignored.iter().map(|s| s.as_str()))
                );
            }
            if ckpt.main_dtype() != burn::tensor::DType::F32 {
                println!(
                    "  - widen {:?} weights to f32 (`convert --half` keeps a half-precision record)",
                    ckpt.main_dtype()
                );
            }
            println!(
                "  - transpose {linear} Linear weights ([out, in] -> [in, out]), rename LayerNorm weight/bias -> gamma/beta"
            );
            println!(
                "  - project_dim = {} (inferred from encode_proj.3)",
                infer_project_dim(&ckpt)
            );
            if !unmapped.is_empty() {
                println!(
                    "  - WARNING: {} key(s) have no place in the model, e.g. {}",
                    unmapped.len(),
                    unmapped[0]
                );
            }
        }
    }
    Ok(())
}

fn groups<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    let mut g: BTreeMap<&str, usize> = BTreeMap::new();
    for k in keys {
        *g.entry(k.split('.').next().unwrap_or("")).or_default() += 1;
    }
    g.iter()
        .map(|(k, n)| format!("{k}.* x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
