//! `lightningdot eval --config EVAL.json --checkpoint FILE.pt|DIR`: recall@1/5/10 both ways,
//! like the reference's eval_itm.py; with `--rerank-checkpoint UNITER.pt|DIR` also after
//! re-ranking the top-K with a UNITER cross-encoder (rerank.py, spec §8), and `--uniter-only`
//! for ranking the whole split by the cross-encoder.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::Backend;
use clap::Args;
use lightningdot::conversion::{LoadOptions, ModelSource, UniterSource};
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::eval::{EvalConfig, SplitRecall, format_table};
use lightningdot::evaluation::{
    EvalJob, EvalJobError, EvalOutcome, RerankSpec, SplitOutcome, run_eval,
};
use lightningdot::rerank::{self, DEFAULT_BATCH};
use lightningdot::tensor_io::write_f32;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Eval config in the reference's form (config/flickr30k_eval_config.json).
    #[arg(long)]
    pub config: PathBuf,
    /// A released `.pt` file (any layout) or a directory written by `convert`.
    #[arg(long, required_unless_present = "uniter_only")]
    pub checkpoint: Option<PathBuf>,
    /// Which split: dev, test, or all (every split the config names; dev first, as the reference).
    #[arg(long, default_value = "all")]
    pub split: String,
    /// Write the recall as JSON: {"test": {"image_retrieval": {"r1", "r5", "r10"}, "text_retrieval": {...}, "n_texts", "n_images"}}
    /// (plus "rerank": {"K": {...}} and "uniter_only" with a cross-encoder).
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
    /// UNITER cross-encoder that re-ranks each query's top-K: a `.pt` file (`uniter.` or
    /// `bert.` prefix), a directory written by `convert`, or a directory holding model.pt + config.json.
    #[arg(long)]
    pub rerank_checkpoint: Option<PathBuf>,
    /// The cross-encoder's UniterConfig JSON, or `uniter-base` / `uniter-large` (default: the
    /// config.json beside the checkpoint, else sizes read from its tensors).
    #[arg(long, requires = "rerank_checkpoint")]
    pub rerank_config: Option<String>,
    /// Re-rank depths K, comma-separated (rerank.py's values by default).
    #[arg(long, requires = "rerank_checkpoint", default_value = "10,20,50,100")]
    pub rerank_k: String,
    /// Rank the whole split by the cross-encoder alone (every caption x image pair: slow).
    #[arg(long, requires = "rerank_checkpoint")]
    pub uniter_only: bool,
    /// Pairs per cross-encoder forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub rerank_batch_size: usize,
    /// With --uniter-only: write the cross-encoder score matrix (safetensors: `scores_fp32`, and
    /// `scores_fp16` = the same rounded to fp16 as inf_itm.py stores it; ids in the metadata).
    #[arg(long, requires = "uniter_only")]
    pub dump_uniter_scores: Option<PathBuf>,
}

struct EvalTask<'a>(&'a EvalJob);

impl BackendTask for EvalTask<'_> {
    type Output = Result<EvalOutcome, EvalJobError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        run_eval::<B>(self.0, &device)
    }
}

fn rerank_table(split: &str, what: &str, rows: &[(String, SplitRecall)]) -> String {
    let p = |x: f64| format!("{:6.2}", 100.0 * x);
    let mut s = format!(
        "{split}: {what}\n  {:<12} {:>27} | {:>27}\n  {:<12} {:>6}  {:>6}  {:>7}   | {:>6}  {:>6}  {:>7}",
        "",
        "image retrieval (text->img)",
        "text retrieval (img->text)",
        "",
        "R@1",
        "R@5",
        "R@10",
        "R@1",
        "R@5",
        "R@10"
    );
    for (name, r) in rows {
        s += &format!(
            "\n  {name:<12} {}  {}  {}    | {}  {}  {}",
            p(r.image_retrieval.r1),
            p(r.image_retrieval.r5),
            p(r.image_retrieval.r10),
            p(r.text_retrieval.r1),
            p(r.text_retrieval.r5),
            p(r.text_retrieval.r10)
        );
    }
    s
}

fn print_split(s: &SplitOutcome) {
    if let Some(first) = &s.first_stage {
        println!("{}", format_table(s.name, first));
        if let Some(rr) = &s.rerank {
            let mut rows = vec![("first stage".to_string(), first.clone())];
            rows.extend(
                rr.per_k
                    .iter()
                    .map(|(k, r)| (format!("K = {k}"), r.clone())),
            );
            let what = format!(
                "re-ranked by the cross-encoder ({} pairs in {:.1}s)",
                rr.pairs, rr.seconds
            );
            println!("{}", rerank_table(s.name, &what, &rows));
        }
    }
    if let Some(only) = &s.uniter_only {
        let what = format!(
            "ranked by the cross-encoder alone ({} pairs in {:.1}s)",
            only.pairs, only.seconds
        );
        let rows = [("UNITER only".to_string(), only.recall.clone())];
        println!("{}", rerank_table(s.name, &what, &rows));
    }
}

pub fn run(args: EvalArgs, device: DeviceSpec) -> Result<()> {
    let config = EvalConfig::from_file(&args.config, args.data_root.as_deref())?;
    if args.checkpoint.is_none() && (args.dump_embeddings.is_some() || args.dump_ranks.is_some()) {
        bail!("--dump-embeddings and --dump-ranks need the bi-encoder (--checkpoint)");
    }
    let ks = rerank::parse_ks(&args.rerank_k).map_err(|e| anyhow::anyhow!("--rerank-k: {e}"))?;
    let (img_cfg, txt_cfg) = config.model_configs();
    let model = args.checkpoint.as_ref().map(|checkpoint| ModelSource {
        checkpoint: checkpoint.clone(),
        img_config: args.img_config.clone().or(img_cfg),
        txt_config: args.txt_config.clone().or(txt_cfg),
        project_dim: config.project_dim,
        options: LoadOptions::default(),
    });
    let rerank = args.rerank_checkpoint.as_ref().map(|path| RerankSpec {
        source: UniterSource {
            checkpoint: path.clone(),
            config: args.rerank_config.clone(),
            options: LoadOptions::default(),
        },
        batch_size: args.rerank_batch_size,
        ks,
        uniter_only: args.uniter_only,
    });
    let job = EvalJob {
        batch_size: args.batch_size.or(config.valid_batch_size).unwrap_or(80),
        config,
        config_path: args.config.clone(),
        split: args.split.clone(),
        model,
        rerank,
        keep_embeddings: args.dump_embeddings.is_some(),
        keep_uniter_scores: args.dump_uniter_scores.is_some(),
    };
    let out = run_on(device, EvalTask(&job))??;
    for s in &out.splits {
        print_split(s);
    }
    if let Some(p) = &args.json {
        lightningdot::fsio::write_json(p, &out.report)?;
    }
    if let Some(p) = &args.dump_embeddings {
        let (tensors, meta) = out.embeddings;
        let meta: HashMap<String, String> = meta.into_iter().collect();
        write_f32(p, &tensors, Some(meta))?;
    }
    if let Some(p) = &args.dump_ranks {
        lightningdot::fsio::write_json(p, &out.ranks)?;
    }
    if let Some(p) = &args.dump_uniter_scores {
        let (tensors, meta) = out.uniter_scores;
        let meta: HashMap<String, String> = meta.into_iter().collect();
        write_f32(p, &tensors, Some(meta))?;
    }
    Ok(())
}
