//! `lightningdot forward --task detector`: every stage of the BUTD detector on one image.

use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use lightningdot::conversion::{DetectorSource, LoadOptions};
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::model::detector::load_image;
use lightningdot::tensor_io::{TensorFile, write_tensors};

use super::forward::ForwardArgs;

struct DetectorForward<'a> {
    args: &'a ForwardArgs,
    boxes: Option<Vec<[f32; 4]>>,
}

impl BackendTask for DetectorForward<'_> {
    type Output = Result<usize>;

    fn run<B: Backend>(self, device: B::Device) -> Result<usize> {
        let a = self.args;
        let source = DetectorSource {
            path: a.model.checkpoint.clone(),
            config: None,
            options: LoadOptions {
                allow_partial: a.model.allow_partial,
            },
        };
        let (det, _) = source.load::<B>(&device)?;
        let Some(image) = a.image.as_ref() else {
            bail!("--task detector needs --image");
        };
        let img = load_image(image, &det.config)?;
        let stages = match &self.boxes {
            Some(boxes) => det.run_on_boxes(&img, boxes)?.stages(&det.config),
            None => det.run(&img)?.stages(&det.config, &img),
        };
        let meta = [("image".to_string(), image.display().to_string())].into();
        write_tensors(&a.out, &stages, Some(meta))?;
        Ok(stages.len())
    }
}

/// `forward --task detector`.
pub fn run(args: &ForwardArgs, device: DeviceSpec) -> Result<()> {
    if args.inputs.is_some() {
        bail!("--task detector reads --image, not --inputs");
    }
    let m = &args.model;
    if m.img_config.is_some() || m.txt_config.is_some() || m.project_dim.is_some() {
        bail!("--img-config, --txt-config and --project-dim size the bi-encoder, not the detector");
    }
    let boxes = match &args.proposals {
        Some(p) => {
            let t = TensorFile::open(p)?
                .f32("boxes")
                .with_context(|| format!("proposals {}", p.display()))?;
            if t.shape.len() != 2 || t.shape[1] != 4 {
                bail!(
                    "{}: boxes must be [R, 4] (x1, y1, x2, y2), got {:?}",
                    p.display(),
                    t.shape
                );
            }
            Some(
                t.values
                    .chunks_exact(4)
                    .map(|c| [c[0], c[1], c[2], c[3]])
                    .collect(),
            )
        }
        None => None,
    };
    let n = run_on(device, DetectorForward { args, boxes })??;
    println!("wrote {n} tensors to {}", args.out.display());
    Ok(())
}
