//! `lightningdot serve --index DIR --checkpoint … [--addr 127.0.0.1:8080] [--images DIR]`: the
//! HTTP service and search page (lightningdot::serve).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use burn::prelude::Backend;
use clap::Args;
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::retrieval::SearchService;
use lightningdot::serve::{self, ServeOptions};

use super::ModelArgs;
use super::search::{IndexQueryArgs, load_pipeline};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: IndexQueryArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Directory with the collection's JPEGs, for thumbnails on the page (`36013.jpg`,
    /// `COCO_val2014_000000391895.jpg` or `<image id without .npz>.jpg`).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Searches computed at once (default: the number of CPU threads); others wait.
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// Search by photo (POST /search/image, the page's upload control) with this BUTD
    /// detector (pytorch_model.bin + config.yaml; the one the index's img_db was extracted with).
    #[arg(long)]
    pub detector: Option<PathBuf>,
    /// Largest accepted photo upload, MiB.
    #[arg(long, default_value_t = 10)]
    pub max_upload_mb: usize,
}

struct ServeTask<'a> {
    args: &'a ServeArgs,
}

impl BackendTask for ServeTask<'_> {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let a = self.args;
        let started = std::time::Instant::now();
        let pipeline = load_pipeline::<B>(&a.model, &a.index, device.clone())?;
        let summary = pipeline.summary();
        let mut options = ServeOptions {
            images_dir: a.images.clone(),
            max_upload_bytes: a.max_upload_mb.saturating_mul(1 << 20),
            ..Default::default()
        };
        let service: Arc<dyn SearchService> = match &a.detector {
            Some(dir) => {
                let photo = Arc::new(super::photo::with_detector(pipeline, dir, &device)?);
                options.photo = Some(serve::PhotoHandle(photo.clone()));
                photo
            }
            None => Arc::new(pipeline),
        };
        if let Some(n) = a.max_concurrent {
            options.max_concurrent = n.max(1);
        }
        let load_s = started.elapsed().as_secs_f64();
        serve::run(service, options, a.addr, |addr| {
            tracing::info!(
                "loaded {} images, {} captions ({}-d{}) in {load_s:.1}s",
                summary.images,
                summary.texts,
                summary.dim,
                if summary.ann { ", HNSW" } else { "" }
            );
            println!("serving on http://{addr}/ (Ctrl-C stops)");
        })
        .map_err(|e| anyhow::anyhow!("cannot serve on {}: {e}", a.addr))
    }
}

pub fn run(args: ServeArgs, device: DeviceSpec) -> Result<()> {
    if let Some(dir) = &args.images
        && !dir.is_dir()
    {
        anyhow::bail!("--images {}: not a directory", dir.display());
    }
    run_on(device, ServeTask { args: &args })?
}
