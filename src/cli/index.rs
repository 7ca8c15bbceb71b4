//! `lightningdot index --checkpoint … --img-db DIR [--txt-db DIR] --out INDEX_DIR`: every image
//! (and caption) through its tower once, written as an index directory (retrieval::format).

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::Backend;
use clap::Args;
use lightningdot::data::{ImgDb, ImgDbOptions, Tokenizer, TxtDb};
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::retrieval::{
    self, AnnInfo, BuildOptions, BuildReport, VectorDtype, build_index, model_info,
};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image db directory (UNITER feature LMDB); every image in it is indexed.
    #[arg(long, required_unless_present = "from")]
    pub img_db: Option<PathBuf>,
    /// Text db directory: also index its captions (image -> text search) and keep each image's
    /// ground-truth captions for display.
    #[arg(long)]
    pub txt_db: Option<PathBuf>,
    /// Output index directory (written atomically).
    #[arg(long, required_unless_present = "to")]
    pub out: Option<PathBuf>,
    /// Upload to a Milvus collection instead of writing a directory:
    /// `milvus://HOST:PORT/COLLECTION` (captions go to COLLECTION_texts). Resumable: a rerun
    /// sends only what is missing. Needs a build with `--features milvus`.
    #[arg(long, conflicts_with_all = ["out", "ann", "force"])]
    pub to: Option<lightningdot::retrieval::MilvusUrl>,
    /// With --to: upload this existing index directory (no model, no re-encoding).
    #[arg(long, requires = "to", conflicts_with_all = ["img_db", "txt_db"])]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub milvus: super::store::MilvusIndexArgs,
    /// Stored vector type: f32, or f16 (half the size; search computes in f32).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: VectorDtype,
    /// Images / captions per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Also build an HNSW graph over the images, for `search --ann` / `serve --ann`.
    #[arg(long)]
    pub ann: bool,
    /// HNSW graph degree (M).
    #[arg(long, default_value_t = 16)]
    pub ann_connectivity: usize,
    /// HNSW candidate list size while building (efConstruction).
    #[arg(long, default_value_t = 128)]
    pub ann_expansion_add: usize,
    /// Default HNSW candidate list size while searching (efSearch; `--ef` overrides it later).
    #[arg(long, default_value_t = 128)]
    pub ann_expansion_search: usize,
    /// Query tokenizer (vocab.txt, tokenizer.json or a directory) to check against the txt_db's
    /// stored token ids; default: the model directory's copy or the --txt-config directory.
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Image db box selection: detector confidence threshold (-1 = fixed --num-bb db).
    #[arg(long, default_value_t = 0.2, allow_hyphen_values = true)]
    pub conf_th: f32,
    /// Image db box selection: most boxes per image.
    #[arg(long, default_value_t = 100)]
    pub max_bb: usize,
    /// Image db box selection: fewest boxes per image.
    #[arg(long, default_value_t = 10)]
    pub min_bb: usize,
    /// Image db box selection: boxes per image when --conf-th is -1.
    #[arg(long, default_value_t = 36)]
    pub num_bb: usize,
    /// Read the compressed (npz) feature LMDB.
    #[arg(long)]
    pub compressed_db: bool,
}

fn parse_dtype(s: &str) -> Result<VectorDtype, String> {
    s.parse()
}

struct IndexTask<'a> {
    args: &'a IndexArgs,
    out: PathBuf,
    img_db: ImgDb,
    txt_db: Option<TxtDb>,
}

impl BackendTask for IndexTask<'_> {
    type Output = Result<BuildReport>;

    fn run<B: Backend>(self, device: B::Device) -> Result<BuildReport> {
        let a = self.args;
        let (model, cfg, _) = a
            .model
            .source()
            .load::<B>(&device)
            .with_context(|| format!("loading {}", a.model.checkpoint.display()))?;
        let options = BuildOptions {
            batch_size: a.batch_size,
            dtype: a.dtype,
            ann: a.ann.then_some(AnnInfo {
                connectivity: a.ann_connectivity.max(2),
                expansion_add: a.ann_expansion_add.max(1),
                expansion_search: a.ann_expansion_search.max(1),
                crc32: None,
            }),
            overwrite: a.force,
        };
        let report = build_index(
            &model,
            model_info(&a.model.checkpoint, &cfg),
            &self.img_db,
            self.txt_db.as_ref(),
            &self.out,
            &options,
            &device,
        )?;
        Ok(report)
    }
}

impl IndexArgs {
    /// The box selection of `--img-db` (UNITER's conf_th / max_bb / min_bb / num_bb flags).
    pub fn img_db_options(&self) -> ImgDbOptions {
        ImgDbOptions {
            conf_th: self.conf_th,
            max_bb: self.max_bb,
            min_bb: self.min_bb,
            num_bb: self.num_bb,
            compressed: self.compressed_db,
        }
    }
}

pub fn run(args: IndexArgs, device: DeviceSpec) -> Result<()> {
    if args.from.is_none() && args.model.checkpoint.as_os_str() == "-" {
        anyhow::bail!("--checkpoint is required (except with --from INDEX_DIR --to milvus://…)");
    }
    if let Some(url) = &args.to {
        return super::upload::run(&args, url, device);
    }
    let (Some(out), Some(img_db)) = (args.out.clone(), args.img_db.as_ref()) else {
        anyhow::bail!("give --img-db DIR and --out INDEX_DIR (or --to milvus://…)");
    };
    let img_db = ImgDb::open(img_db, args.img_db_options())?;
    let txt_db = args.txt_db.as_ref().map(TxtDb::open).transpose()?;
    if out.exists() && !args.force {
        anyhow::bail!(
            "{} already exists (pass --force to replace it)",
            out.display()
        );
    }
    if let Some(db) = &txt_db {
        check_vocab(&args, db)?;
    }
    let started = std::time::Instant::now();
    let report = run_on(
        device,
        IndexTask {
            args: &args,
            out: out.clone(),
            img_db,
            txt_db,
        },
    )??;
    if report.captions_without_image > 0 {
        tracing::warn!(
            "{} captions name an image the img_db does not hold (indexed, but no image shares them)",
            report.captions_without_image
        );
    }
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    println!(
        "indexed {} images ({:.1}/s){} as {}-d {} vectors{} in {:.1}s -> {}",
        report.images,
        rate(report.images, report.image_seconds),
        if report.texts > 0 {
            format!(
                " + {} captions ({:.1}/s)",
                report.texts,
                rate(report.texts, report.text_seconds)
            )
        } else {
            String::new()
        },
        report.dim,
        match args.dtype {
            VectorDtype::F32 => "f32",
            VectorDtype::F16 => "f16",
        },
        if args.ann {
            format!(" + HNSW graph ({:.1}s)", report.ann_seconds)
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// Warns when the query tokenizer would not reproduce the txt_db's token ids.
pub(super) fn check_vocab(args: &IndexArgs, db: &TxtDb) -> Result<()> {
    let Ok(path) = retrieval::resolve_vocab(
        args.vocab.as_deref(),
        &args.model.checkpoint,
        args.model.txt_config.as_deref(),
    ) else {
        tracing::info!(
            "no tokenizer vocabulary found: not checking how queries will be tokenized (pass --vocab)"
        );
        return Ok(());
    };
    let tok = Tokenizer::from_path(&path)?;
    let (checked, differ) = retrieval::check_tokenizer(&tok, db, 1000)?;
    if differ.is_empty() {
        tracing::info!(
            "tokenizer {} reproduces the stored ids of {checked} captions",
            tok.source().display()
        );
    } else {
        tracing::warn!(
            "tokenizer {} differs from the txt_db on {} of {checked} captions (first: {}): \
             text queries will not be tokenized as the captions were",
            tok.source().display(),
            differ.len(),
            differ[0]
        );
    }
    Ok(())
}
