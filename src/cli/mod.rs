//! Subcommands and their flags (clap derive); each subcommand has its own file.

mod bench;
mod convert;
mod demo;
mod detector;
mod eval;
mod export;
mod extract;
mod forward;
mod index;
mod inspect;
mod parity;
mod photo;
mod prepare;
mod pretrain;
mod rerank;
mod run_args;
mod search;
mod serve;
mod store;
mod train;
mod upload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lightningdot::conversion::{LoadOptions, ModelSource};
use lightningdot::device::DeviceSpec;

/// LightningDOT image-text retrieval in pure Rust (burn): convert the released PyTorch
/// checkpoints, run and compare both towers.
#[derive(Parser, Debug)]
#[command(name = "lightningdot", version, about)]
struct Cli {
    /// Device to run on: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, global = true, default_value = "cpu", value_parser = parse_device)]
    device: DeviceSpec,
    /// Log level filter (e.g. info, debug, lightningdot=trace); RUST_LOG also works.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job on embedded data: parity with PyTorch, fine-tune, recall, index, queries.
    Demo(demo::DemoArgs),
    /// Parity (embedded tiny model, one training step) and throughput at full size on a device,
    /// with no files: one table, optionally JSON.
    Bench(bench::BenchArgs),
    /// Recall@1/5/10 in both directions on the splits of an eval config (like eval_itm.py).
    Eval(eval::EvalArgs),
    /// List a checkpoint's keys, shapes and dtypes, its layout and what conversion would do.
    Inspect(inspect::InspectArgs),
    /// Convert a PyTorch checkpoint into a model directory (burn record + configs).
    Convert(convert::ConvertArgs),
    /// Write a model back to a PyTorch checkpoint in the reference's layouts (--layout).
    Export(export::ExportArgs),
    /// Run a batch (reference collate form) through the towers, the cross-encoder or a
    /// pre-training task and write every output.
    Forward(forward::ForwardArgs),
    /// Detect regions in a folder of images with the BUTD detector and write a UNITER img_db.
    Extract(extract::ExtractArgs),
    /// Build databases from your own files: `prepare captions` (txt_db).
    Prepare(prepare::PrepareArgs),
    /// Encode every image (and caption) of the dbs once into an index directory.
    Index(index::IndexArgs),
    /// Query an index: text -> images, or --image ID -> captions.
    Search(search::SearchArgs),
    /// Serve an index over HTTP (POST /search, /healthz, /metrics) with a search page.
    Serve(serve::ServeArgs),
    /// Fine-tune on Flickr30k / COCO (like train_itm.py): dashboard, best/last checkpoints, resume.
    Train(train::TrainArgs),
    /// Pre-train with VMLM, SMRM (MRFR, MRC-KL) and CMR (like pretrain.py): dashboard, checkpoints, resume.
    Pretrain(pretrain::PretrainArgs),
}

/// How to find and size the model; shared by every command that loads one.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A released `.pt` file (any layout) or a directory written by `convert`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Image tower config: a UniterConfig JSON (config/img_base.json form) or `uniter-base`.
    #[arg(long)]
    pub img_config: Option<String>,
    /// Text tower config: an HF BERT config.json, a directory holding one, or `bert-base-cased`.
    #[arg(long)]
    pub txt_config: Option<String>,
    /// Projection size (`project_dim`); inferred from the checkpoint when omitted.
    #[arg(long)]
    pub project_dim: Option<usize>,
    /// Report checkpoint keys without a parameter, and parameters without a key, instead of failing.
    #[arg(long)]
    pub allow_partial: bool,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        ModelSource {
            checkpoint: self.checkpoint.clone(),
            img_config: self.img_config.clone(),
            txt_config: self.txt_config.clone(),
            project_dim: self.project_dim,
            options: LoadOptions {
                allow_partial: self.allow_partial,
            },
        }
    }
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
        .map_err(|e: lightningdot::device::DeviceError| e.to_string())
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub fn main() -> ExitCode {
    // `index --from INDEX_DIR --to milvus://…` uploads without a model: --checkpoint is checked
    // by `index` itself (clap cannot make a flattened argument optional for one command).
    let command = <Cli as clap::CommandFactory>::command().mut_subcommand("index", |c| {
        c.mut_arg("checkpoint", |a| {
            a.required(false)
                .default_value("-")
                .hide_default_value(true)
        })
    });
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The demo prints its own steps; per-epoch commit logs would bury them.
    let demo_default = matches!(cli.command, Command::Demo(_)) && cli.log == "info";
    init_logging(if demo_default {
        "info,lightningdot::train=warn,lightningdot::run=warn"
    } else {
        &cli.log
    });
    let result = match cli.command {
        Command::Demo(a) => demo::run(a, cli.device),
        Command::Bench(a) => bench::run(a, cli.device),
        Command::Eval(a) => eval::run(a, cli.device),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a, cli.device),
        Command::Export(a) => export::run(a),
        Command::Forward(a) => forward::run(a, cli.device),
        Command::Extract(a) => extract::run(a, cli.device),
        Command::Prepare(a) => prepare::run(a),
        Command::Index(a) => index::run(a, cli.device),
        Command::Search(a) => search::run(a, cli.device),
        Command::Serve(a) => serve::run(a, cli.device),
        Command::Train(a) => train::run(a, cli.device),
        Command::Pretrain(a) => pretrain::run(a, cli.device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line a user can act on: the chain joined, no backtrace.
            // Error types that print their source inline would repeat it here, so skip causes
            // already contained in the message.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
