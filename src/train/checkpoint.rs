//! What a fine-tuning run leaves in `OUTPUT_DIR` (committed per epoch by [`crate::run`]'s
//! protocol, so a `kill -9` at any moment loses at most the epoch in progress):
//!
//! ```text
//! OUTPUT_DIR/run.json       resolved settings; a rerun resumes only with the same settings
//! OUTPUT_DIR/last/          model directory after the last finished epoch (`--checkpoint` accepts it)
//! OUTPUT_DIR/best/          model directory of the epoch with the best dev mean recall
//! OUTPUT_DIR/state/         optimizer moments (optim.safetensors) + progress.json: what resuming needs besides last/
//! OUTPUT_DIR/metrics.json   every epoch's dev recall; at the end the test recall of best/
//! OUTPUT_DIR/epoch-N/       with save_all_epochs: the model after epoch N
//! OUTPUT_DIR/train/, valid/ burn-train's metric logs (per epoch)
//! ```

use serde::{Deserialize, Serialize};

use crate::eval::SplitRecall;

/// `OUTPUT_DIR/best/`: the model directory of the epoch with the best dev mean recall.
pub const BEST_DIR: &str = "best";

/// `state/progress.json`: where the run stands after its last committed epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    /// Last finished epoch (1-based).
    pub epoch: usize,
    /// Optimizer updates done (the LR schedule's position).
    pub updates: usize,
    pub best_epoch: Option<usize>,
    /// Dev mean recall of `best_epoch`.
    pub best_metric: Option<f64>,
}

/// One finished epoch in `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Dev recall in the eval JSON form (`image_retrieval`, `text_retrieval`, `n_texts`, `n_images`).
    pub dev: SplitRecall,
    /// `(IR + TR) / 2` averaged over R@1/5/10: the model-selection metric.
    pub dev_mean: f64,
    /// Mean training loss of the epoch (weighted by pairs).
    pub train_loss: f64,
    /// Learning rate of the epoch's last update.
    pub lr: f64,
    /// Optimizer updates done after this epoch.
    pub updates: usize,
    /// Wall-clock seconds of training + validation.
    pub seconds: f64,
}

/// `metrics.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsLog {
    pub epochs: Vec<EpochRecord>,
    pub best_epoch: Option<usize>,
    /// Test recall of `best/` in the eval JSON form (written at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<SplitRecall>,
}
