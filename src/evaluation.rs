//! The eval job behind `lightningdot eval`: recall@1/5/10 both ways over the splits of an eval
//! config, like the reference's eval_itm.py — first stage (bi-encoder + exact search), then
//! optionally re-ranking each query's top-K with a UNITER cross-encoder (rerank.py) and ranking
//! the whole split by the cross-encoder alone (spec §7, §8).
//!
//! It sits above [`crate::eval`] (first stage) and [`crate::rerank`] (cross-encoder), which
//! depends on `eval`; the CLI only parses flags, prints [`SplitOutcome`]s and writes files.

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::Backend;
use serde::Serialize;
use serde_json::{Value, json};

use crate::conversion::{ConvertError, ModelSource, UniterSource};
use crate::eval::{
    EvalConfig, EvalError, Recall, SplitRecall, embed_split, embeddings_metadata,
    embeddings_tensors, evaluate, open_split,
};
use crate::model::BiEncoder;
use crate::rerank::{self, CrossEncoder, RerankError, SplitPairs};
use crate::tensor_io::HostTensor;

/// The cross-encoder part of a job.
#[derive(Debug, Clone)]
pub struct RerankSpec {
    pub source: UniterSource,
    /// Pairs per cross-encoder forward pass.
    pub batch_size: usize,
    /// Re-rank depths K (increasing); empty: no re-ranking of the first stage.
    pub ks: Vec<usize>,
    /// Also rank every caption × image pair by the cross-encoder alone (slow).
    pub uniter_only: bool,
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalJob {
    pub config: EvalConfig,
    /// The config file, named in errors (a wrong db path is usually a wrong line in it).
    pub config_path: PathBuf,
    /// `dev`, `test` or `all` (every split the config names; dev first, as the reference).
    pub split: String,
    /// The bi-encoder; `None` runs only the cross-encoder's UNITER-only ranking.
    pub model: Option<ModelSource>,
    pub rerank: Option<RerankSpec>,
    /// Encoding batch size.
    pub batch_size: usize,
    /// Keep embeddings + score matrices ([`EvalOutcome::embeddings`]).
    pub keep_embeddings: bool,
    /// Keep the UNITER-only score matrices ([`EvalOutcome::uniter_scores`]).
    pub keep_uniter_scores: bool,
}

/// Why an eval job failed; one line naming the split or file.
#[derive(Debug, thiserror::Error)]
pub enum EvalJobError {
    #[error(transparent)]
    Config(Box<EvalError>),
    #[error("loading {path}: {source}")]
    Load {
        path: String,
        source: Box<ConvertError>,
    },
    #[error("loading re-ranker {path}: {source}")]
    LoadReranker {
        path: String,
        source: Box<ConvertError>,
    },
    #[error("{split} split of {config}: {source}")]
    Open {
        split: &'static str,
        config: String,
        source: Box<EvalError>,
    },
    #[error("{split} split: {source}")]
    Encode {
        split: &'static str,
        source: Box<EvalError>,
    },
    #[error("{split} split: {what}: {source}")]
    Rerank {
        split: &'static str,
        what: &'static str,
        source: Box<RerankError>,
    },
}

impl From<EvalError> for EvalJobError {
    fn from(e: EvalError) -> Self {
        Self::Config(Box::new(e))
    }
}

/// Named tensors and their metadata, for a safetensors file.
pub type Dump = (Vec<(String, HostTensor<f32>)>, Vec<(String, String)>);

/// Recall of both directions for one ranking.
#[derive(Debug, Clone, Serialize)]
pub struct RecallPair {
    pub image_retrieval: Recall,
    pub text_retrieval: Recall,
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
#[derive(Debug, Clone)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<V: Serialize> Serialize for Ordered<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// One split of the eval JSON: the first-stage recall, then "rerank" and "uniter_only" when a
/// cross-encoder was given.
#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub first_stage: Option<SplitRecall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank: Option<Ordered<RecallPair>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uniter_only: Option<RecallPair>,
    /// Only without a first stage (which carries them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_texts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_images: Option<usize>,
}

/// The re-ranked recall of one split.
#[derive(Debug, Clone)]
pub struct RerankResult {
    pub per_k: Vec<(usize, SplitRecall)>,
    pub pairs: usize,
    pub seconds: f64,
}

/// The cross-encoder-only recall of one split.
#[derive(Debug, Clone)]
pub struct UniterOnlyResult {
    pub recall: SplitRecall,
    pub pairs: usize,
    pub seconds: f64,
}

/// Everything measured on one split, for printing.
#[derive(Debug, Clone)]
pub struct SplitOutcome {
    pub name: &'static str,
    pub first_stage: Option<SplitRecall>,
    pub rerank: Option<RerankResult>,
    pub uniter_only: Option<UniterOnlyResult>,
}

/// What a job produced.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    pub splits: Vec<SplitOutcome>,
    /// The eval JSON (`{"test": {"image_retrieval": …, "text_retrieval": …, "n_texts", …}}`).
    pub report: Ordered<SplitReport>,
    /// Every query's top-10 result ids per split (first stage).
    pub ranks: Value,
    pub embeddings: Dump,
    pub uniter_scores: Dump,
}

/// Runs `job` on `device`.
pub fn run_eval<B: Backend>(
    job: &EvalJob,
    device: &B::Device,
) -> Result<EvalOutcome, EvalJobError> {
    let splits = job.config.splits(&job.split)?;
    let model = job
        .model
        .as_ref()
        .map(|s| load_model::<B>(s, device))
        .transpose()?;
    let cross = job
        .rerank
        .as_ref()
        .map(|r| load_cross_encoder::<B>(r, device))
        .transpose()?;
    let mut out = EvalOutcome {
        splits: Vec::new(),
        report: Ordered(Vec::new()),
        ranks: Value::Object(Default::default()),
        embeddings: Default::default(),
        uniter_scores: Default::default(),
    };
    let multi = splits.len() > 1;
    for split in &splits {
        let name = split.name;
        let (txt_db, img_db) =
            open_split(split, &job.config).map_err(|source| EvalJobError::Open {
                split: name,
                config: job.config_path.display().to_string(),
                source: Box::new(source),
            })?;
        let prefix = if multi {
            format!("{name}.")
        } else {
            String::new()
        };
        let rerank_err = |what, source| EvalJobError::Rerank {
            split: name,
            what,
            source: Box::new(source),
        };
        let pairs = match &cross {
            Some(_) => Some(SplitPairs::new(&txt_db, &img_db).map_err(|e| rerank_err("pairs", e))?),
            None => None,
        };
        let mut outcome = SplitOutcome {
            name,
            first_stage: None,
            rerank: None,
            uniter_only: None,
        };
        let mut report = SplitReport {
            first_stage: None,
            rerank: None,
            uniter_only: None,
            n_texts: None,
            n_images: None,
        };
        if let Some(model) = &model {
            let started = Instant::now();
            let emb =
                embed_split(model, &txt_db, &img_db, job.batch_size, device).map_err(|source| {
                    EvalJobError::Encode {
                        split: name,
                        source: Box::new(source),
                    }
                })?;
            let encode_s = started.elapsed().as_secs_f64();
            let (recall, rankings) = evaluate::<B>(&emb, device);
            tracing::info!(
                "{name}: encoded {} captions + {} images in {encode_s:.1}s, searched in {:.2}s",
                emb.txt_ids.len(),
                emb.img_ids.len(),
                started.elapsed().as_secs_f64() - encode_s
            );
            if let (Some(cross), Some(pairs), Some(spec)) = (&cross, &pairs, &job.rerank)
                && !spec.ks.is_empty()
            {
                let rr = rerank::rerank_split(cross, &emb, pairs, &img_db, &spec.ks, device)
                    .map_err(|e| rerank_err("re-ranking", e))?;
                report.rerank = Some(Ordered(
                    rr.per_k
                        .iter()
                        .map(|(k, r)| (k.to_string(), r.into()))
                        .collect(),
                ));
                outcome.rerank = Some(RerankResult {
                    per_k: rr.per_k,
                    pairs: rr.pairs,
                    seconds: rr.seconds,
                });
            }
            if job.keep_embeddings {
                out.embeddings.0.extend(embeddings_tensors(&emb, &prefix));
                out.embeddings.1.extend(embeddings_metadata(&emb, &prefix));
            }
            let to_map = |v: &Vec<(String, Vec<String>)>| {
                Value::Object(v.iter().map(|(k, r)| (k.clone(), json!(r))).collect())
            };
            if let Value::Object(m) = &mut out.ranks {
                m.insert(
                    name.to_string(),
                    json!({
                        "text_query_top10_images": to_map(&rankings.text_query),
                        "image_query_top10_texts": to_map(&rankings.image_query),
                    }),
                );
            }
            report.first_stage = Some(recall.clone());
            outcome.first_stage = Some(recall);
        }
        let uniter_only = job.rerank.as_ref().is_some_and(|r| r.uniter_only);
        if let (true, Some(cross), Some(pairs)) = (uniter_only, &cross, &pairs) {
            let only = rerank::uniter_only(cross, pairs, &img_db)
                .map_err(|e| rerank_err("UNITER-only ranking", e))?;
            let (nt, ni) = (pairs.txt_ids.len(), pairs.img_ids.len());
            report.uniter_only = Some((&only.recall).into());
            if report.first_stage.is_none() {
                report.n_texts = Some(nt);
                report.n_images = Some(ni);
            }
            if job.keep_uniter_scores {
                let shape = vec![nt, ni];
                let fp16 = only
                    .scores
                    .iter()
                    .map(|&s| half::f16::from_f32(s).to_f32())
                    .collect();
                let (tensors, meta) = &mut out.uniter_scores;
                tensors.push((
                    format!("{prefix}scores_fp32"),
                    HostTensor {
                        shape: shape.clone(),
                        values: only.scores,
                    },
                ));
                tensors.push((
                    format!("{prefix}scores_fp16"),
                    HostTensor {
                        shape,
                        values: fp16,
                    },
                ));
                meta.push((format!("{prefix}txt_ids"), json!(pairs.txt_ids).to_string()));
                meta.push((format!("{prefix}img_ids"), json!(pairs.img_ids).to_string()));
            }
            outcome.uniter_only = Some(UniterOnlyResult {
                recall: only.recall,
                pairs: nt * ni,
                seconds: only.seconds,
            });
        }
        out.report.0.push((name.to_string(), report));
        out.splits.push(outcome);
    }
    Ok(out)
}

fn load_model<B: Backend>(
    source: &ModelSource,
    device: &B::Device,
) -> Result<BiEncoder<B>, EvalJobError> {
    let (model, cfg, _) = source.load::<B>(device).map_err(|e| EvalJobError::Load {
        path: source.checkpoint.display().to_string(),
        source: Box::new(e),
    })?;
    tracing::info!(
        "model: project_dim {}, image tower {} layers, text tower {} layers",
        cfg.project_dim,
        cfg.img.num_hidden_layers,
        cfg.txt.num_hidden_layers
    );
    Ok(model)
}

fn load_cross_encoder<B: Backend>(
    spec: &RerankSpec,
    device: &B::Device,
) -> Result<CrossEncoder<B>, EvalJobError> {
    let (m, cfg, _) = spec
        .source
        .load::<B>(device)
        .map_err(|e| EvalJobError::LoadReranker {
            path: spec.source.checkpoint.display().to_string(),
            source: Box::new(e),
        })?;
    tracing::info!(
        "re-ranker: UNITER hidden {}, {} layers",
        cfg.hidden_size,
        cfg.num_hidden_layers
    );
    Ok(CrossEncoder::new(m, cfg, device.clone(), spec.batch_size))
}
