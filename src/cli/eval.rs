//! `lightningdot eval --config EVAL.json --checkpoint FILE.pt|DIR`: recall@1/5/10 both ways,
//! like the reference's eval_itm.py.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::Backend;
use clap::Args;
use lightningdot::conversion::{LoadOptions, ModelSource};
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::eval::{
    self, EvalConfig, EvalReport, embed_split, evaluate, format_table, open_split,
};
use lightningdot::tensor_io::write_f32;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Eval config in the reference's form (config/flickr30k_eval_config.json).
    #[arg(long)]
    pub config: PathBuf,
    /// A released `.pt` file (any layout) or a directory written by `convert`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which split: dev, test, or all (every split the config names; dev first, as the reference).
    #[arg(long, default_value = "all")]
    pub split: String,
    /// Write the recall as JSON: {"test": {"image_retrieval": {"r1", "r5", "r10"}, "text_retrieval": {...}, "n_texts", "n_images"}}.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write caption/image embeddings and their score matrix (safetensors; ids in the metadata).
    #[arg(long)]
    pub dump_embeddings: Option<PathBuf>,
    /// Write every query's top-10 result ids (JSON).
    #[arg(long)]
    pub dump_ranks: Option<PathBuf>,
    /// Encoding batch size (default: the config's valid_batch_size, else 80 like the reference).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base directory for the config's relative db paths (default: the config file's directory).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Override the config's image tower config (UniterConfig JSON).
    #[arg(long)]
    pub img_config: Option<String>,
    /// Override the config's text tower config (HF config.json or directory).
    #[arg(long)]
    pub txt_config: Option<String>,
}

struct EvalTask<'a> {
    args: &'a EvalArgs,
    cfg: EvalConfig,
}

type Dump = (
    Vec<(String, lightningdot::tensor_io::HostTensor<f32>)>,
    Vec<(String, String)>,
);

impl BackendTask for EvalTask<'_> {
    type Output = Result<(EvalReport, Dump, serde_json::Value)>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let a = self.args;
        let splits = self.cfg.splits(&a.split)?;
        let (img_cfg, txt_cfg) = self.cfg.model_configs();
        let source = ModelSource {
            checkpoint: a.checkpoint.clone(),
            img_config: a.img_config.clone().or(img_cfg),
            txt_config: a.txt_config.clone().or(txt_cfg),
            project_dim: self.cfg.project_dim,
            options: LoadOptions::default(),
        };
        let (model, mcfg, _) = source
            .load::<B>(&device)
            .with_context(|| format!("loading {}", a.checkpoint.display()))?;
        tracing::info!(
            "model: project_dim {}, image tower {} layers, text tower {} layers",
            mcfg.project_dim,
            mcfg.img.num_hidden_layers,
            mcfg.txt.num_hidden_layers
        );
        let batch = a.batch_size.or(self.cfg.valid_batch_size).unwrap_or(80);
        let mut report = EvalReport::default();
        let (mut tensors, mut meta) = (Vec::new(), Vec::new());
        let mut ranks = serde_json::Map::new();
        let multi = splits.len() > 1;
        for split in &splits {
            let (txt_db, img_db) =
                open_split(split, &self.cfg).with_context(|| format!("{} split", split.name))?;
            let started = std::time::Instant::now();
            let emb = embed_split(&model, &txt_db, &img_db, batch, &device)
                .with_context(|| format!("{} split", split.name))?;
            let encode_s = started.elapsed().as_secs_f64();
            let (recall, rankings) = evaluate::<B>(&emb, &device);
            tracing::info!(
                "{}: encoded {} captions + {} images in {:.1}s, searched in {:.2}s",
                split.name,
                emb.txt_ids.len(),
                emb.img_ids.len(),
                encode_s,
                started.elapsed().as_secs_f64() - encode_s
            );
            println!("{}", format_table(split.name, &recall));
            report.set(split.name, recall);
            let prefix = if multi {
                format!("{}.", split.name)
            } else {
                String::new()
            };
            if a.dump_embeddings.is_some() {
                tensors.extend(eval::embeddings_tensors(&emb, &prefix));
                meta.extend(eval::embeddings_metadata(&emb, &prefix));
            }
            let to_map = |v: &Vec<(String, Vec<String>)>| {
                serde_json::Value::Object(
                    v.iter()
                        .map(|(k, r)| (k.clone(), serde_json::json!(r)))
                        .collect(),
                )
            };
            ranks.insert(
                split.name.to_string(),
                serde_json::json!({
                    "text_query_top10_images": to_map(&rankings.text_query),
                    "image_query_top10_texts": to_map(&rankings.image_query),
                }),
            );
        }
        Ok((report, (tensors, meta), serde_json::Value::Object(ranks)))
    }
}

pub fn run(args: EvalArgs, device: DeviceSpec) -> Result<()> {
    let cfg = EvalConfig::from_file(&args.config, args.data_root.as_deref())?;
    let (report, (tensors, meta), ranks) = run_on(device, EvalTask { args: &args, cfg })??;
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        lightningdot::tensor_io::write_atomic(p, text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.dump_embeddings {
        let meta: HashMap<String, String> = meta.into_iter().collect();
        write_f32(p, &tensors, Some(meta))?;
    }
    if let Some(p) = &args.dump_ranks {
        let text = serde_json::to_string_pretty(&ranks)? + "\n";
        lightningdot::tensor_io::write_atomic(p, text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
