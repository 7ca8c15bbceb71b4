//! `lightningdot demo`: the main job end to end on data embedded in the binary, in about a
//! minute on two cores. A tiny bi-encoder is fine-tuned from random weights on a synthetic
//! collection of captioned scenes (`train::scenes`), recall is measured before and after, an
//! index is built and free-text queries are answered from it. The parity check against the
//! reference PyTorch outputs (`parity`) runs first; `--parity` runs only that, `--serve` serves
//! the search page on the demo's index afterwards.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use lightningdot::conversion::ModelSource;
use lightningdot::data::{ImgDb, Tokenizer, TxtDb};
use lightningdot::device::{DeviceSpec, TrainTask, run_train_on};
use lightningdot::eval::SplitRecall;
use lightningdot::retrieval::{
    BuildOptions, Pipeline, PipelineOptions, Query, QueryEncoder, SearchService, StoredIndex,
    build_index, model_info,
};
use lightningdot::serve::{self, ServeOptions};
use lightningdot::train::metric::EvalSplit;
use lightningdot::train::scenes::{Scene, ScenesSpec, write_scenes};
use lightningdot::train::{Dashboard, RunOptions, TrainOverrides, TrainPlan};
use serde_json::json;

use super::parity;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the working directory (data, trained model, index) here instead of a temp dir.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Only the parity check of the embedded model against the reference PyTorch outputs.
    #[arg(long, conflicts_with = "serve")]
    pub parity: bool,
    /// After the demo, serve the search page on its index until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
    /// Address for --serve.
    #[arg(long, default_value = "127.0.0.1:8080", requires = "serve")]
    pub addr: SocketAddr,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 80)]
    pub epochs: usize,
}

/// The queries the demo answers: free text, one scene each.
const QUERIES: [&str; 3] = [
    "a dog with a red ball on the grass",
    "a child in the water with the blue ball",
    "on the street the woman with a red ball",
];

pub fn run(args: DemoArgs, device: DeviceSpec) -> Result<()> {
    let temp = args.workdir.is_none();
    let dir = match &args.workdir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("lightningdot-demo-{}", std::process::id())),
    };
    let result = run_in(&args, &dir, device);
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(args: &DemoArgs, dir: &Path, device: DeviceSpec) -> Result<()> {
    println!("== parity: the embedded tiny model against the reference PyTorch outputs");
    parity::run(&dir.join("parity"), device)?;
    if args.parity {
        return Ok(());
    }
    println!();
    println!("== retrieval: fine-tune, index and search a small captioned collection");
    let vocab = dir.join("parity/txt_model_config/vocab.txt");
    let tokenizer = Tokenizer::from_path(&vocab)?;
    let data = dir.join("scenes");
    let spec = ScenesSpec::default();
    let config = write_scenes(
        &data,
        &spec,
        &tokenizer,
        &json!({ "num_train_epochs": args.epochs, "learning_rate": 1e-3 }),
    )?;
    let scenes = Scene::all();
    println!(
        "1. data      {} scenes x {} regions; captions: {} train, {} test  ({})",
        scenes.len(),
        3 * spec.regions_per_concept,
        scenes.len() * spec.train_captions_per_image,
        scenes.len() * spec.eval_captions_per_image,
        data.display()
    );
    let plan = TrainPlan::resolve(&config, &TrainOverrides::default())?;
    let outcome = run_train_on(
        device,
        Demo {
            plan: &plan,
            tokenizer,
            index: dir.join("index"),
        },
    )??;
    let right = print_outcome(&outcome, &scenes);
    // The collection is easy once learned (R@1 1.00 and every query right after 80 epochs):
    // falling short means training is broken, and the first command must say so.
    if right < outcome.answers.len() || outcome.after.image_retrieval.r1 < MIN_R1 {
        anyhow::bail!(
            "the demo model did not learn the collection: {right} of {} queries right, \
             text->image R@1 {:.2} (expected >= {MIN_R1}; try --epochs {})",
            outcome.answers.len(),
            outcome.after.image_retrieval.r1,
            2 * args.epochs
        );
    }
    if args.serve {
        serve_index(outcome.pipeline, args.addr)?;
    }
    Ok(())
}

struct Demo<'a> {
    plan: &'a TrainPlan,
    tokenizer: Tokenizer,
    index: PathBuf,
}

/// What the demo measured, and the pipeline over its index.
struct Outcome {
    before: SplitRecall,
    after: SplitRecall,
    answers: Vec<(String, lightningdot::retrieval::SearchResponse)>,
    pipeline: Arc<dyn SearchService>,
}

impl TrainTask for Demo<'_> {
    type Output = Result<Outcome>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Outcome> {
        let s = &self.plan.settings;
        let split = s
            .test
            .as_ref()
            .context("the demo config has a test split")?;
        let test = EvalSplit::open(
            "test",
            &split.txt_db,
            &split.img_db,
            s.img_db,
            64,
            Default::default(),
        )?;
        let (initial, _, _) =
            lightningdot::train::init::initial_model::<B::InnerBackend>(s, &device)?;
        let before = test.recall(&initial, &device)?;

        let started = Instant::now();
        // burn-train's dashboard in a terminal, plain progress lines otherwise (CI, pipes).
        let opts = RunOptions {
            dashboard: Dashboard::Auto,
            progress_interval: Duration::from_secs(10),
            ..Default::default()
        };
        let summary = lightningdot::train::run::<B>(self.plan, &opts, device.clone())?;
        let train_seconds = started.elapsed().as_secs_f64();
        let after = summary.test.clone().context("test recall of best/")?;
        println!(
            "2. train     {} epochs in {train_seconds:.1}s -> {}",
            summary.epochs_done,
            summary.output_dir.join("best").display()
        );

        let best = summary.output_dir.join("best");
        let (model, cfg, _) = ModelSource {
            checkpoint: best.clone(),
            ..Default::default()
        }
        .load::<B::InnerBackend>(&device)?;
        let img_db = ImgDb::open(&split.img_db, s.img_db)?;
        let txt_db = TxtDb::open(&split.txt_db)?;
        let report = build_index(
            &model,
            model_info(&best, &cfg),
            &img_db,
            Some(&txt_db),
            &self.index,
            &BuildOptions {
                overwrite: true,
                ..Default::default()
            },
            &device,
        )?;
        println!(
            "3. index     {} images + {} captions, {}-d -> {}",
            report.images,
            report.texts,
            report.dim,
            self.index.display()
        );
        let encoder = QueryEncoder::new(model, &cfg, self.tokenizer, device.clone());
        let pipeline = Pipeline::new(
            encoder,
            StoredIndex::open(&self.index)?,
            PipelineOptions::default(),
            device,
        )?;
        let answers = QUERIES
            .iter()
            .map(|q| {
                Ok((
                    q.to_string(),
                    pipeline.search(&Query::Text(q.to_string()), 3)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Outcome {
            before,
            after,
            answers,
            pipeline: Arc::new(pipeline),
        })
    }
}

/// Text->image recall@1 on the test captions below which the demo reports a failure.
const MIN_R1: f64 = 0.9;

/// Prints recall and the query table; returns how many queries found their scene first.
fn print_outcome(o: &Outcome, scenes: &[Scene]) -> usize {
    println!("4. recall on the test captions (text -> image / image -> text, R@1 R@5 R@10):");
    for (name, r) in [("before", &o.before), ("after", &o.after)] {
        println!(
            "   {name:<7} {:.3} {:.3} {:.3}   /   {:.3} {:.3} {:.3}",
            r.image_retrieval.r1,
            r.image_retrieval.r5,
            r.image_retrieval.r10,
            r.text_retrieval.r1,
            r.text_retrieval.r5,
            r.text_retrieval.r10
        );
    }
    println!("5. free-text queries (top 3 of {} images):", scenes.len());
    let mut right = 0;
    for (query, resp) in &o.answers {
        println!("   \"{query}\"  ({:.1} ms)", resp.timings_ms.total);
        for (rank, hit) in resp.results.iter().enumerate() {
            let scene = scene_of(&hit.id, scenes);
            let matches = scene.is_some_and(|s| query_names(query, s));
            if rank == 0 && matches {
                right += 1;
            }
            println!(
                "     {}. {:>8.3}  {:<26}  {}",
                rank + 1,
                hit.score,
                hit.id,
                scene.map_or_else(|| "?".to_string(), |s| s.describe())
                    + if matches {
                        "  <- the scene asked for"
                    } else {
                        ""
                    }
            );
        }
    }
    println!(
        "{right} of {} queries answered with the scene asked for; text->image R@1 {:.2} -> {:.2}",
        o.answers.len(),
        o.before.image_retrieval.r1,
        o.after.image_retrieval.r1
    );
    right
}

fn scene_of<'a>(id: &str, scenes: &'a [Scene]) -> Option<&'a Scene> {
    (0..scenes.len())
        .find(|&i| Scene::image_id(i) == id)
        .map(|i| &scenes[i])
}

/// Whether `query` names all three of the scene's concepts.
fn query_names(query: &str, s: &Scene) -> bool {
    let words: Vec<&str> = query.split_whitespace().collect();
    [s.subject, s.color, s.place]
        .iter()
        .all(|c| words.contains(c))
}

fn serve_index(service: Arc<dyn SearchService>, addr: SocketAddr) -> Result<()> {
    serve::run(service, ServeOptions::default(), addr, |addr| {
        println!("serving the demo index on http://{addr}/ (Ctrl-C stops)");
    })
    .map_err(|e| anyhow::anyhow!("cannot serve on {addr}: {e}"))
}
