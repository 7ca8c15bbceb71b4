//! `lightningdot forward [--task …] --checkpoint … --inputs IN.safetensors --out OUT.safetensors`:
//! the tool for comparing a conversion against a PyTorch dump.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use clap::{Args, ValueEnum};
use lightningdot::conversion::{HeadsSource, LoadOptions, UniterSource, load_pretraining_source};
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::forward::{HostBatch, forward_stages};
use lightningdot::model::{ClsConcat, PretrainTask, RANK_MARGIN, rank_loss};
use lightningdot::pretrain::{PretrainHostBatch, task_outputs};
use lightningdot::rerank::ItmHostBatch;
use lightningdot::tensor_io::{HostTensor, TensorFile, write_f32};

use super::{ModelArgs, detector};

fn shown(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Which model the batch is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Task {
    /// Both bi-encoder towers on a `txt.*` / `img.*` batch (fixtures/batch/inputs.safetensors).
    #[default]
    Biencoder,
    /// The UNITER cross-encoder on a single-stream batch (`input_ids`, `img_feat`,
    /// `img_pos_feat`, `attn_masks`, `gather_index`; uniter_itm/batch/*.safetensors).
    UniterItm,
    /// Pre-training VMLM on pretrain/batch/mlm.safetensors (`mlm.*` outputs).
    Mlm,
    /// Pre-training MRFR on pretrain/batch/mrfr.safetensors (`mrfr.*`).
    Mrfr,
    /// Pre-training MRC-KL on pretrain/batch/mrc.safetensors (`mrc.*`, `mrckl.*`).
    Mrckl,
    /// Pre-training MRC (cross-entropy) on pretrain/batch/mrc.safetensors (`mrc.*`).
    Mrc,
    /// Pre-training CMR on pretrain/batch/itm.safetensors (`itm.*`).
    Itm,
    /// The BUTD region detector on one `--image` (`--checkpoint` = a directory with
    /// pytorch_model.bin + config.yaml, or the .bin with config.yaml beside it): every stage
    /// under the names of fixtures/butd/stages; with `--proposals` the ROI head alone.
    Detector,
}

impl Task {
    fn pretrain(self) -> Option<PretrainTask> {
        match self {
            Task::Biencoder | Task::UniterItm | Task::Detector => None,
            Task::Mlm => Some(PretrainTask::Mlm),
            Task::Mrfr => Some(PretrainTask::Mrfr),
            Task::Mrckl => Some(PretrainTask::Mrckl),
            Task::Mrc => Some(PretrainTask::Mrc),
            Task::Itm => Some(PretrainTask::Itm),
        }
    }
}

/// `--cls-concat` (pre-training tasks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CliClsConcat {
    /// No fusion (the reference's default `""`; named `plain` in the outputs).
    None,
    Add,
    Multiply,
}

impl From<CliClsConcat> for ClsConcat {
    fn from(c: CliClsConcat) -> Self {
        match c {
            CliClsConcat::None => ClsConcat::None,
            CliClsConcat::Add => ClsConcat::Add,
            CliClsConcat::Multiply => ClsConcat::Multiply,
        }
    }
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// What to run.
    #[arg(long, value_enum, default_value_t = Task::Biencoder)]
    pub task: Task,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch in the reference collate form (biencoder: `txt.input_ids`, `txt.attention_mask`,
    /// `img.img_feat`, `img.img_pos_feat`, `img.attention_mask`; uniter-itm: see --task).
    #[arg(long, required_unless_present = "image")]
    pub inputs: Option<PathBuf>,
    /// detector: the image file (PNG or JPEG).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// detector: boxes `[R, 4]` (resized-image pixels) under the name `boxes` in a
    /// safetensors file, fed straight to the ROI head (fixtures/butd/fixed_proposals).
    #[arg(long, requires = "image")]
    pub proposals: Option<PathBuf>,
    /// Where to write the stages (biencoder: `txt.pooled`, `img.pooled`, `scores.txt_x_img`, …;
    /// uniter-itm: `txt_embeddings`, `img_embeddings`, `embedding_output`, `sequence_output`,
    /// `pooled`, `rank_scores`, `itm_scores`, and `rank_loss` with --sample-size).
    #[arg(long)]
    pub out: PathBuf,
    /// uniter-itm: the UniterConfig JSON, `uniter-base` or `uniter-large` (default: the
    /// config.json beside the checkpoint, else sizes read from its tensors).
    #[arg(long)]
    pub uniter_config: Option<String>,
    /// uniter-itm: prefix every output name with `P.` (e.g. `eval` to match
    /// uniter_itm/expected/outputs.safetensors).
    #[arg(long)]
    pub prefix: Option<String>,
    /// uniter-itm: rows per item (positive first) to also write UNITER's triplet `rank_loss`.
    #[arg(long)]
    pub sample_size: Option<usize>,
    /// Pre-training tasks: how the other tower's `[CLS]` is fused; repeat for several modes
    /// (default: all three). `itm` ignores it.
    #[arg(long, value_enum)]
    pub cls_concat: Vec<CliClsConcat>,
}

struct ForwardTask<'a> {
    args: &'a ForwardArgs,
    batch: HostBatch,
}

impl BackendTask for ForwardTask<'_> {
    type Output = Result<usize>;

    fn run<B: Backend>(self, device: B::Device) -> Result<usize> {
        let (model, cfg, _) = self.args.model.source().load::<B>(&device)?;
        self.batch
            .validate(&cfg)
            .with_context(|| format!("inputs {}", shown(&self.args.inputs)))?;
        let stages = forward_stages(&model, &self.batch, &device);
        let n = stages.len();
        write_f32(&self.args.out, &stages, None)?;
        Ok(n)
    }
}

struct UniterTask<'a> {
    args: &'a ForwardArgs,
    batch: ItmHostBatch,
}

impl BackendTask for UniterTask<'_> {
    type Output = Result<usize>;

    fn run<B: Backend>(self, device: B::Device) -> Result<usize> {
        let a = self.args;
        let source = UniterSource {
            checkpoint: a.model.checkpoint.clone(),
            config: a.uniter_config.clone(),
            options: LoadOptions {
                allow_partial: a.model.allow_partial,
            },
        };
        let (model, cfg, _) = source.load::<B>(&device)?;
        self.batch
            .validate(&cfg)
            .with_context(|| format!("inputs {}", shown(&a.inputs)))?;
        let rows = self.batch.len();
        if let Some(s) = a.sample_size
            && (s < 2 || !rows.is_multiple_of(s))
        {
            bail!("--sample-size {s} must be at least 2 and divide the batch of {rows} rows");
        }
        let stages = model.forward_stages(&self.batch.to_device::<B>(&device));
        let name = |stage: &str| match &a.prefix {
            Some(p) => format!("{p}.{stage}"),
            None => stage.to_string(),
        };
        let mut out: Vec<(String, HostTensor<f32>)> = stages
            .named()
            .into_iter()
            .map(|(stage, t)| {
                let (shape, values) = t.to_host();
                (name(stage), HostTensor { shape, values })
            })
            .collect();
        if let Some(s) = a.sample_size {
            let loss = rank_loss(stages.rank_scores, s, RANK_MARGIN);
            let shape = loss.dims().to_vec();
            let values = loss
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default();
            out.push((name("rank_loss"), HostTensor { shape, values }));
        }
        write_f32(&a.out, &out, None)?;
        Ok(out.len())
    }
}

struct PretrainForward<'a> {
    args: &'a ForwardArgs,
    batch: PretrainHostBatch,
}

impl BackendTask for PretrainForward<'_> {
    type Output = Result<usize>;

    fn run<B: Backend>(self, device: B::Device) -> Result<usize> {
        let a = self.args;
        let (model, cfg, heads) = load_pretraining_source::<B>(&a.model.source(), &device)?;
        if heads == HeadsSource::Initialised {
            tracing::warn!(
                "{} holds no pre-training heads: they are freshly initialised",
                a.model.checkpoint.display()
            );
        }
        self.batch
            .validate(&cfg)
            .with_context(|| format!("inputs {}", shown(&a.inputs)))?;
        let modes: Vec<ClsConcat> = if a.cls_concat.is_empty() {
            ClsConcat::ALL.to_vec()
        } else {
            a.cls_concat.iter().map(|&c| c.into()).collect()
        };
        let out = task_outputs(&model, &self.batch, &modes, &device);
        write_f32(&a.out, &out, None)?;
        Ok(out.len())
    }
}

pub fn run(args: ForwardArgs, device: DeviceSpec) -> Result<()> {
    if args.task == Task::Detector {
        return detector::run(&args, device);
    }
    if args.image.is_some() || args.proposals.is_some() {
        bail!("--image and --proposals apply to --task detector");
    }
    let Some(inputs) = args.inputs.as_ref() else {
        bail!("--inputs is required for --task {:?}", args.task);
    };
    let file = TensorFile::open(inputs)?;
    if args.task.pretrain().is_none() && !args.cls_concat.is_empty() {
        bail!("--cls-concat applies to the pre-training tasks (mlm, mrfr, mrckl, mrc, itm)");
    }
    let n = match args.task {
        Task::Biencoder => {
            if args.uniter_config.is_some() || args.prefix.is_some() || args.sample_size.is_some() {
                bail!("--uniter-config, --prefix and --sample-size apply to --task uniter-itm");
            }
            let batch = HostBatch::from_file(&file)?;
            run_on(device, ForwardTask { args: &args, batch })??
        }
        Task::UniterItm => {
            let m = &args.model;
            if m.img_config.is_some() || m.txt_config.is_some() || m.project_dim.is_some() {
                bail!(
                    "--img-config, --txt-config and --project-dim size the bi-encoder; \
                     give the cross-encoder's config with --uniter-config"
                );
            }
            let batch = ItmHostBatch::from_file(&file)
                .with_context(|| format!("inputs {}", shown(&args.inputs)))?;
            run_on(device, UniterTask { args: &args, batch })??
        }
        Task::Detector => return detector::run(&args, device),
        Task::Mlm | Task::Mrfr | Task::Mrckl | Task::Mrc | Task::Itm => {
            let task = args.task.pretrain().unwrap_or(PretrainTask::Itm);
            if args.uniter_config.is_some() || args.prefix.is_some() || args.sample_size.is_some() {
                bail!("--uniter-config, --prefix and --sample-size apply to --task uniter-itm");
            }
            let batch = PretrainHostBatch::from_file(&file, task)
                .with_context(|| format!("inputs {}", shown(&args.inputs)))?;
            run_on(device, PretrainForward { args: &args, batch })??
        }
    };
    println!("wrote {n} tensors to {}", args.out.display());
    Ok(())
}
