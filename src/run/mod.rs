//! The run engine under fine-tuning ([`crate::train`]) and pre-training ([`crate::pretrain`]):
//! one implementation of what a long training job needs besides its domain.
//!
//! | module | job |
//! |---|---|
//! | [`output`] | the output directory, its atomic commit protocol, `run.json`, resume state |
//! | [`notes`] | `train.log` and log lines that keep off the dashboard's screen |
//! | [`engine`] | burn-train's loop replaced by ours: accumulate → step → validate → commit, per period |
//!
//! A *period* is what one commit covers: an epoch when fine-tuning, `valid_steps` updates when
//! pre-training. The domain ([`engine::Period`]) says what a step reports, what validation
//! yields and what a commit writes; the engine owns the loop, seeding, gradient accumulation,
//! interruption, the dashboard and the error hand-off out of burn-train's thread.

pub mod engine;
pub mod notes;
pub mod output;

pub use engine::{Period, PeriodEnd, PeriodResult, launch};
pub use notes::Notes;
pub use output::OutputDir;

use burn::prelude::Backend;

/// Why the run machinery failed. `Display` is one line naming the directory.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("output directory {path}: {reason}")]
    Output { path: String, reason: String },
    #[error("cannot resume from {path}: {reason}")]
    Resume { path: String, reason: String },
    #[error("device: {0}")]
    Device(String),
}

impl RunError {
    pub fn output(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        RunError::Output {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dashboard {
    /// burn-train's terminal dashboard when stdout is a terminal, plain lines otherwise.
    #[default]
    Auto,
    Tui,
    Plain,
}

impl Dashboard {
    pub fn is_tui(self) -> bool {
        match self {
            Dashboard::Auto => std::io::IsTerminal::is_terminal(&std::io::stdout()),
            Dashboard::Tui => true,
            Dashboard::Plain => false,
        }
    }
}

/// Makes bf16 the device's default float type. burn fixes a device's defaults once, at its
/// first tensor: this must run before any tensor exists on `device`, and succeeds again later
/// only when bf16 is already the default (a process that runs several bf16 tasks).
pub fn set_bf16<B: Backend>(device: &B::Device) -> Result<(), RunError> {
    match burn::tensor::set_default_dtypes::<B>(
        device,
        burn::tensor::FloatDType::BF16,
        <B::IntElem as burn::tensor::Element>::dtype(),
    ) {
        Ok(()) => Ok(()),
        Err(_)
            if burn::tensor::get_device_settings::<B>(device).float_dtype
                == burn::tensor::FloatDType::BF16 =>
        {
            Ok(())
        }
        Err(e) => Err(RunError::Device(format!(
            "cannot switch to bf16 (tensors in another precision exist already on this device): {e:?}"
        ))),
    }
}

/// Opens `dir` for a run with `settings`: switches to bf16 first when asked (before any tensor
/// exists), finishes or discards an interrupted commit, checks `run.json`, opens the notes.
pub fn open<B: Backend, S: serde::Serialize>(
    dir: &std::path::Path,
    settings: &S,
    bf16: bool,
    device: &B::Device,
) -> Result<(OutputDir, Notes), RunError> {
    if bf16 {
        set_bf16::<B>(device)?;
    }
    let out = OutputDir::prepare(dir)?;
    out.check_run_file(settings)?;
    let notes = Notes::new(out.root());
    Ok((out, notes))
}
