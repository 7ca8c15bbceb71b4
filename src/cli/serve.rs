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
}

struct ServeTask<'a> {
    args: &'a ServeArgs,
}

impl BackendTask for ServeTask<'_> {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let a = self.args;
        let started = std::time::Instant::now();
        let pipeline = load_pipeline::<B>(&a.model, &a.index, device)?;
        let summary = pipeline.summary();
        let service: Arc<dyn SearchService> = Arc::new(pipeline);
        let mut options = ServeOptions {
            images_dir: a.images.clone(),
            ..Default::default()
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
