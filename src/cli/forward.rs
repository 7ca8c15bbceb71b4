//! `lightningdot forward --checkpoint … --inputs IN.safetensors --out OUT.safetensors`: the tool
//! for comparing a conversion against a PyTorch dump.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::Backend;
use clap::Args;
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::inference::{HostBatch, forward_stages};
use lightningdot::tensor_io::{TensorFile, write_f32};

use super::ModelArgs;

#[derive(Args, Debug)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch in the reference collate form (`txt.input_ids`, `txt.attention_mask`,
    /// `img.img_feat`, `img.img_pos_feat`, `img.attention_mask`).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write `txt.pooled`, `img.pooled`, `scores.txt_x_img`, `*.sequence_output` and
    /// every other stage.
    #[arg(long)]
    pub out: PathBuf,
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
            .with_context(|| format!("inputs {}", self.args.inputs.display()))?;
        let stages = forward_stages(&model, &self.batch, &device);
        let n = stages.len();
        write_f32(&self.args.out, &stages, None)?;
        Ok(n)
    }
}

pub fn run(args: ForwardArgs, device: DeviceSpec) -> Result<()> {
    let file = TensorFile::open(&args.inputs)?;
    let batch = HostBatch::from_file(&file)?;
    let n = run_on(device, ForwardTask { args: &args, batch })??;
    println!("wrote {n} tensors to {}", args.out.display());
    Ok(())
}
