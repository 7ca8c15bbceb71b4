//! `lightningdot search --index DIR --checkpoint … [-k 10] [--json] "a man riding a wave"`
//! (text → images) or `--image ID` (image → captions).

use std::path::PathBuf;

use anyhow::Result;
use burn::prelude::Backend;
use clap::Args;
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::retrieval::{
    CandidateMode, Pipeline, PipelineOptions, Query, QuerySource, SearchResponse, StoredIndex,
    VectorStore, check_k, open_index_store,
};

use super::ModelArgs;

/// Flags shared by `search` and `serve`: which index, tokenizer and candidate search.
#[derive(Args, Debug, Clone)]
pub struct IndexQueryArgs {
    /// Index directory written by `lightningdot index` (or --store).
    #[arg(long, required_unless_present = "store")]
    pub index: Option<PathBuf>,
    #[command(flatten)]
    pub store: super::store::StoreArgs,
    /// Query tokenizer: vocab.txt, tokenizer.json or a directory holding one (default: the
    /// model directory's copy, else the --txt-config directory).
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Approximate search with the index's HNSW graph (built by `index --ann`).
    #[arg(long)]
    pub ann: bool,
    /// HNSW search width (efSearch) with --ann or a Milvus HNSW / DiskANN --store; larger is
    /// slower and closer to exact.
    #[arg(long)]
    pub ef: Option<usize>,
    /// Exact search without holding the vectors on the device: each query streams them from
    /// the memory-mapped file in chunks (bounded memory for very large collections; slower).
    #[arg(long, conflicts_with = "ann")]
    pub stream: bool,
    #[command(flatten)]
    pub rerank: super::rerank::RerankArgs,
}

impl IndexQueryArgs {
    pub fn options(&self) -> PipelineOptions {
        PipelineOptions {
            mode: if self.ann {
                CandidateMode::Ann
            } else if self.stream {
                CandidateMode::ExactStreamed
            } else {
                CandidateMode::Exact
            },
            ann_expansion: self.ef,
            rerank_depth: self.rerank.rerank_k,
            ..Default::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: IndexQueryArgs,
    /// Text query (text -> images).
    #[arg(required_unless_present_any = ["image", "photo"], conflicts_with_all = ["image", "photo"])]
    pub query: Option<String>,
    /// Query with an indexed image id instead (image -> captions; needs an index built with --txt-db).
    #[arg(long, conflicts_with = "photo")]
    pub image: Option<String>,
    /// Query with a photo (JPEG / PNG) instead: its captions and the most similar indexed
    /// images (needs --detector).
    #[arg(long, requires = "detector")]
    pub photo: Option<PathBuf>,
    /// The BUTD detector for --photo (pytorch_model.bin + config.yaml; the one the index's
    /// img_db was extracted with).
    #[arg(long)]
    pub detector: Option<PathBuf>,
    /// Number of results.
    #[arg(short, long, default_value_t = 10, allow_negative_numbers = true)]
    pub k: i64,
    /// Print `{"results": [{"id": ..., "score": ...}, ...], "timings_ms": {...}}`.
    #[arg(long)]
    pub json: bool,
    /// Only results matching this Milvus boolean expression over the stored fields (with
    /// --store), e.g. `image_id like "flickr30k_00001%"` or `row < 1000`.
    #[arg(long, requires = "store")]
    pub filter: Option<String>,
}

/// Loads model, tokenizer and index into a pipeline (what `search` and `serve` run).
pub fn load_pipeline<B: Backend>(
    model: &ModelArgs,
    index: &IndexQueryArgs,
    device: B::Device,
) -> Result<Pipeline<B>> {
    if index.ef.is_some() && !index.ann && index.store.store.is_none() {
        anyhow::bail!("--ef needs --ann or --store");
    }
    let store: Box<dyn VectorStore> = match (&index.store.store, &index.index) {
        (Some(url), _) => super::store::open(url, &index.store, index.ef)?,
        (None, Some(dir)) => open_index_store::<B>(dir, &index.options(), device.clone())?,
        (None, None) => anyhow::bail!("give --index DIR or --store milvus://HOST:PORT/COLLECTION"),
    };
    let source = QuerySource {
        model: model.source(),
        vocab: index.vocab.clone(),
        options: index.options(),
    };
    let pipeline = Pipeline::load(&source, store, device.clone())?;
    match index.rerank.spec() {
        Some(spec) => Ok(spec.attach(pipeline, &device)?),
        None => Ok(pipeline),
    }
}

struct SearchTask<'a> {
    args: &'a SearchArgs,
    query: Query,
    k: usize,
}

impl BackendTask for SearchTask<'_> {
    type Output = Result<SearchResponse>;

    fn run<B: Backend>(self, device: B::Device) -> Result<SearchResponse> {
        let pipeline = load_pipeline::<B>(&self.args.model, &self.args.index, device)?;
        Ok(pipeline.search_filtered(&self.query, self.k, self.args.filter.as_deref())?)
    }
}

struct PhotoTask<'a> {
    args: &'a SearchArgs,
    photo: &'a std::path::Path,
    detector: &'a std::path::Path,
}

impl BackendTask for PhotoTask<'_> {
    type Output = Result<lightningdot::retrieval::PhotoResponse>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let pipeline = load_pipeline::<B>(&self.args.model, &self.args.index, device.clone())?;
        let photo = super::photo::with_detector(pipeline, self.detector, &device)?;
        super::photo::search_file(&photo, self.photo, self.args.k)
    }
}

pub fn run(args: SearchArgs, device: DeviceSpec) -> Result<()> {
    let k = check_k(args.k)?;
    if args.detector.is_some() && args.photo.is_none() {
        anyhow::bail!("--detector is for a --photo query");
    }
    if let (Some(photo), Some(detector)) = (&args.photo, &args.detector) {
        let task = PhotoTask {
            args: &args,
            photo,
            detector,
        };
        let resp = run_on(device, task)??;
        if args.json {
            println!("{}", serde_json::to_string(&resp)?);
        } else {
            super::photo::print_tables(&resp);
        }
        return Ok(());
    }
    let query = match (&args.query, &args.image) {
        (_, Some(id)) => Query::Image(id.clone()),
        (Some(q), None) => Query::Text(q.clone()),
        (None, None) => anyhow::bail!("give a text query or --image ID"),
    };
    if let Some(dir) = args.index.index.as_ref().filter(|d| !d.is_dir()) {
        // Before loading the model: a typo should not cost a model load.
        StoredIndex::open(dir)?;
    }
    let resp = run_on(
        device,
        SearchTask {
            args: &args,
            query: query.clone(),
            k,
        },
    )??;
    if args.json {
        println!("{}", serde_json::to_string(&resp)?);
    } else {
        print_table(&resp, &query);
    }
    Ok(())
}

fn print_table(resp: &SearchResponse, query: &Query) {
    let id_width = resp
        .results
        .iter()
        .map(|r| r.id.len())
        .max()
        .unwrap_or(2)
        .max(2);
    println!("{:>4}  {:>10}  {:<id_width$}  text", "rank", "score", "id");
    for (i, r) in resp.results.iter().enumerate() {
        let text = match query {
            Query::Text(_) => r
                .captions
                .as_ref()
                .and_then(|c| c.first())
                .and_then(|c| c.text.clone())
                .unwrap_or_default(),
            Query::Image(_) => r.text.clone().unwrap_or_default(),
        };
        println!(
            "{:>4}  {:>10.4}  {:<id_width$}  {}",
            i + 1,
            r.score,
            r.id,
            text
        );
    }
    let t = resp.timings_ms;
    let rerank = match (t.rerank, &resp.reranker) {
        (Some(ms), Some(name)) => format!(", re-rank ({name}) {ms:.2} ms"),
        _ => String::new(),
    };
    println!(
        "{} search: encode {:.2} ms, candidates {:.2} ms{rerank}, total {:.2} ms",
        resp.search, t.encode, t.candidates, t.total
    );
}
