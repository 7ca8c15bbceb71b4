//! `lightningdot eval --config EVAL.json --checkpoint FILE.pt|DIR`: recall@1/5/10 both ways,
//! like the reference's eval_itm.py; with `--rerank-checkpoint UNITER.pt|DIR` also after
//! re-ranking the top-K with a UNITER cross-encoder (rerank.py, spec §8), and `--uniter-only`
//! for ranking the whole split by the cross-encoder.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use clap::Args;
use lightningdot::conversion::{LoadOptions, ModelSource, UniterSource};
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::eval::{
    self, EvalConfig, Recall, SplitRecall, embed_split, evaluate, format_table, open_split,
};
use lightningdot::rerank::{self, CrossEncoder, DEFAULT_BATCH, SplitPairs};
use lightningdot::tensor_io::{HostTensor, write_f32};
use serde::Serialize;
use serde_json::{Value, json};

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

struct EvalTask<'a> {
    args: &'a EvalArgs,
    cfg: EvalConfig,
    ks: Vec<usize>,
}

type Dump = (Vec<(String, HostTensor<f32>)>, Vec<(String, String)>);

/// Recall of both directions for one ranking.
#[derive(Debug, Serialize)]
struct RecallPair {
    image_retrieval: Recall,
    text_retrieval: Recall,
}

impl From<&SplitRecall> for RecallPair {
    fn from(r: &SplitRecall) -> Self {
        Self {
            image_retrieval: r.image_retrieval,
            text_retrieval: r.text_retrieval,
        }
    }
}

/// A JSON object whose keys keep their insertion order (K in increasing order, dev before test).
#[derive(Debug)]
struct Ordered<V>(Vec<(String, V)>);

impl<V: Serialize> Serialize for Ordered<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// One split of the eval JSON: the first-stage recall (as before), then "rerank" and
/// "uniter_only" when a cross-encoder was given.
#[derive(Debug, Serialize)]
struct SplitOut {
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    first_stage: Option<SplitRecall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rerank: Option<Ordered<RecallPair>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uniter_only: Option<RecallPair>,
    /// Only without a first stage (which carries them).
    #[serde(skip_serializing_if = "Option::is_none")]
    n_texts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n_images: Option<usize>,
}

struct Outputs {
    report: Ordered<SplitOut>,
    dump: Dump,
    ranks: Value,
    uniter_scores: Dump,
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

impl BackendTask for EvalTask<'_> {
    type Output = Result<Outputs>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let a = self.args;
        let splits = self.cfg.splits(&a.split)?;
        let model = match &a.checkpoint {
            Some(checkpoint) => {
                let (img_cfg, txt_cfg) = self.cfg.model_configs();
                let source = ModelSource {
                    checkpoint: checkpoint.clone(),
                    img_config: a.img_config.clone().or(img_cfg),
                    txt_config: a.txt_config.clone().or(txt_cfg),
                    project_dim: self.cfg.project_dim,
                    options: LoadOptions::default(),
                };
                let (model, mcfg, _) = source
                    .load::<B>(&device)
                    .with_context(|| format!("loading {}", checkpoint.display()))?;
                tracing::info!(
                    "model: project_dim {}, image tower {} layers, text tower {} layers",
                    mcfg.project_dim,
                    mcfg.img.num_hidden_layers,
                    mcfg.txt.num_hidden_layers
                );
                Some(model)
            }
            None => None,
        };
        let cross = match &a.rerank_checkpoint {
            Some(path) => {
                let source = UniterSource {
                    checkpoint: path.clone(),
                    config: a.rerank_config.clone(),
                    options: LoadOptions::default(),
                };
                let (m, ucfg, _) = source
                    .load::<B>(&device)
                    .with_context(|| format!("loading re-ranker {}", path.display()))?;
                tracing::info!(
                    "re-ranker: UNITER hidden {}, {} layers",
                    ucfg.hidden_size,
                    ucfg.num_hidden_layers
                );
                Some(CrossEncoder::new(
                    m,
                    ucfg,
                    device.clone(),
                    a.rerank_batch_size,
                ))
            }
            None => None,
        };
        let batch = a.batch_size.or(self.cfg.valid_batch_size).unwrap_or(80);
        let mut report = Vec::new();
        let (mut tensors, mut meta) = (Vec::new(), Vec::new());
        let (mut u_tensors, mut u_meta) = (Vec::new(), Vec::new());
        let mut ranks = serde_json::Map::new();
        let multi = splits.len() > 1;
        for split in &splits {
            // Name the config too: a wrong db path is usually a wrong line in it.
            let (txt_db, img_db) = open_split(split, &self.cfg)
                .with_context(|| format!("{} split of {}", split.name, a.config.display()))?;
            let prefix = if multi {
                format!("{}.", split.name)
            } else {
                String::new()
            };
            let mut out = SplitOut {
                first_stage: None,
                rerank: None,
                uniter_only: None,
                n_texts: None,
                n_images: None,
            };
            let pairs = match &cross {
                Some(_) => Some(
                    SplitPairs::new(&txt_db, &img_db)
                        .with_context(|| format!("{} split", split.name))?,
                ),
                None => None,
            };
            if let Some(model) = &model {
                let started = std::time::Instant::now();
                let emb = embed_split(model, &txt_db, &img_db, batch, &device)
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
                if let (Some(cross), Some(pairs)) = (&cross, &pairs) {
                    let rr = rerank::rerank_split(cross, &emb, pairs, &img_db, &self.ks, &device)
                        .with_context(|| format!("{} split: re-ranking", split.name))?;
                    let mut rows = vec![("first stage".to_string(), recall.clone())];
                    rows.extend(
                        rr.per_k
                            .iter()
                            .map(|(k, r)| (format!("K = {k}"), r.clone())),
                    );
                    println!(
                        "{}",
                        rerank_table(
                            split.name,
                            &format!(
                                "re-ranked by the cross-encoder ({} pairs in {:.1}s)",
                                rr.pairs, rr.seconds
                            ),
                            &rows
                        )
                    );
                    out.rerank = Some(Ordered(
                        rr.per_k
                            .iter()
                            .map(|(k, r)| (k.to_string(), r.into()))
                            .collect(),
                    ));
                }
                out.first_stage = Some(recall);
                if a.dump_embeddings.is_some() {
                    tensors.extend(eval::embeddings_tensors(&emb, &prefix));
                    meta.extend(eval::embeddings_metadata(&emb, &prefix));
                }
                let to_map = |v: &Vec<(String, Vec<String>)>| {
                    Value::Object(v.iter().map(|(k, r)| (k.clone(), json!(r))).collect())
                };
                ranks.insert(
                    split.name.to_string(),
                    json!({
                        "text_query_top10_images": to_map(&rankings.text_query),
                        "image_query_top10_texts": to_map(&rankings.image_query),
                    }),
                );
            }
            if let (true, Some(cross), Some(pairs)) = (a.uniter_only, &cross, &pairs) {
                let only = rerank::uniter_only(cross, pairs, &img_db)
                    .with_context(|| format!("{} split: UNITER-only ranking", split.name))?;
                let n = pairs.txt_ids.len() * pairs.img_ids.len();
                println!(
                    "{}",
                    rerank_table(
                        split.name,
                        &format!(
                            "ranked by the cross-encoder alone ({n} pairs in {:.1}s)",
                            only.seconds
                        ),
                        &[("UNITER only".into(), only.recall.clone())]
                    )
                );
                out.uniter_only = Some((&only.recall).into());
                if out.first_stage.is_none() {
                    out.n_texts = Some(pairs.txt_ids.len());
                    out.n_images = Some(pairs.img_ids.len());
                }
                if a.dump_uniter_scores.is_some() {
                    let shape = vec![pairs.txt_ids.len(), pairs.img_ids.len()];
                    let fp16 = only
                        .scores
                        .iter()
                        .map(|&s| half::f16::from_f32(s).to_f32())
                        .collect();
                    u_tensors.push((
                        format!("{prefix}scores_fp32"),
                        HostTensor {
                            shape: shape.clone(),
                            values: only.scores,
                        },
                    ));
                    u_tensors.push((
                        format!("{prefix}scores_fp16"),
                        HostTensor {
                            shape,
                            values: fp16,
                        },
                    ));
                    u_meta.push((format!("{prefix}txt_ids"), json!(pairs.txt_ids).to_string()));
                    u_meta.push((format!("{prefix}img_ids"), json!(pairs.img_ids).to_string()));
                }
            }
            report.push((split.name.to_string(), out));
        }
        Ok(Outputs {
            report: Ordered(report),
            dump: (tensors, meta),
            ranks: Value::Object(ranks),
            uniter_scores: (u_tensors, u_meta),
        })
    }
}

pub fn run(args: EvalArgs, device: DeviceSpec) -> Result<()> {
    let cfg = EvalConfig::from_file(&args.config, args.data_root.as_deref())?;
    if args.checkpoint.is_none() && (args.dump_embeddings.is_some() || args.dump_ranks.is_some()) {
        bail!("--dump-embeddings and --dump-ranks need the bi-encoder (--checkpoint)");
    }
    let ks = rerank::parse_ks(&args.rerank_k).map_err(|e| anyhow::anyhow!("--rerank-k: {e}"))?;
    let out = run_on(
        device,
        EvalTask {
            args: &args,
            cfg,
            ks,
        },
    )??;
    if let Some(p) = &args.json {
        lightningdot::fsio::write_json(p, &out.report)?;
    }
    if let Some(p) = &args.dump_embeddings {
        let (tensors, meta) = out.dump;
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
