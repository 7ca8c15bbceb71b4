//! `lightningdot demo`: the whole pipeline on data embedded in the binary.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use lightningdot::device::DeviceSpec;

use super::parity;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the working directory (converted model, outputs) here instead of a temp dir.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
}

pub fn run(args: DemoArgs, device: DeviceSpec) -> Result<()> {
    let dir = match &args.workdir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("lightningdot-demo-{}", std::process::id())),
    };
    let result = parity::run(&dir, device);
    if args.workdir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result.map(|_| ())
}
