//! What a run leaves in `OUTPUT_DIR`, written so that a `kill -9` at any moment loses at most
//! the epoch in progress and never leaves a half-written model under a final name.
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
//!
//! An epoch is committed in three moves: everything is written into `.staging/` and synced;
//! `.staging` is renamed to `.commit` (the commit point: one atomic rename); then each entry of
//! `.commit` replaces its namesake (old one renamed to `.old-NAME` first, then deleted). Startup
//! deletes a leftover `.staging` (the epoch did not commit) and finishes a leftover `.commit`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::eval::SplitRecall;

pub const RUN_FILE: &str = "run.json";
pub const METRICS_FILE: &str = "metrics.json";
pub const STATE_DIR: &str = "state";
pub const LAST_DIR: &str = "last";
pub const BEST_DIR: &str = "best";
pub const OPTIM_STATE: &str = "optim.safetensors";
pub const PROGRESS_FILE: &str = "progress.json";
const STAGING: &str = ".staging";
const COMMIT: &str = ".commit";
const OLD_PREFIX: &str = ".old-";

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

/// The output directory and its commit protocol.
#[derive(Debug, Clone)]
pub struct OutputDir {
    root: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::output(path, e)
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsync every file and directory under `p` (so a committed epoch survives a power cut too).
fn sync_tree(p: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(p)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(p)? {
            sync_tree(&entry?.path())?;
        }
    }
    std::fs::File::open(p)?.sync_all()
}

impl OutputDir {
    /// Creates `root` if needed and finishes or discards an interrupted commit.
    pub fn prepare(root: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(root).map_err(|e| io_err(root, format!("cannot create: {e}")))?;
        let dir = Self {
            root: root.to_path_buf(),
        };
        dir.recover()?;
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn recover(&self) -> Result<(), TrainError> {
        let staging = self.path(STAGING);
        remove_any(&staging).map_err(|e| io_err(&staging, e))?;
        if self.path(COMMIT).is_dir() {
            self.apply()?;
        }
        // A crash between the two renames of a replacement leaves `.old-NAME` (the commit that
        // replaced NAME is then still pending and was applied above).
        let entries = std::fs::read_dir(&self.root).map_err(|e| io_err(&self.root, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(orig) = name.strip_prefix(OLD_PREFIX) {
                let target = self.path(orig);
                let res = if target.exists() {
                    remove_any(&entry.path())
                } else {
                    std::fs::rename(entry.path(), &target)
                };
                res.map_err(|e| io_err(&entry.path(), e))?;
            }
        }
        Ok(())
    }

    /// A fresh, empty staging directory for the next commit.
    pub fn begin(&self) -> Result<PathBuf, TrainError> {
        let staging = self.path(STAGING);
        remove_any(&staging).map_err(|e| io_err(&staging, e))?;
        std::fs::create_dir_all(&staging).map_err(|e| io_err(&staging, e))?;
        Ok(staging)
    }

    /// Atomically commits what `begin`'s directory holds, then moves it into place.
    pub fn commit(&self) -> Result<(), TrainError> {
        let staging = self.path(STAGING);
        sync_tree(&staging).map_err(|e| io_err(&staging, format!("cannot sync: {e}")))?;
        std::fs::rename(&staging, self.path(COMMIT))
            .map_err(|e| io_err(&staging, format!("cannot commit: {e}")))?;
        if let Ok(d) = std::fs::File::open(&self.root) {
            let _ = d.sync_all();
        }
        self.apply()
    }

    /// Moves every entry of `.commit` over its namesake, then removes `.commit`. Idempotent:
    /// entries already moved are no longer in `.commit`.
    fn apply(&self) -> Result<(), TrainError> {
        let commit = self.path(COMMIT);
        let mut names: Vec<String> = std::fs::read_dir(&commit)
            .map_err(|e| io_err(&commit, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        // The resume state goes last, so a reader never sees a state newer than last/.
        names.sort_by_key(|n| (n == STATE_DIR, n.clone()));
        for name in names {
            let src = commit.join(&name);
            let dst = self.path(&name);
            let old = self.path(&format!("{OLD_PREFIX}{name}"));
            remove_any(&old).map_err(|e| io_err(&old, e))?;
            if std::fs::symlink_metadata(&dst).is_ok() {
                std::fs::rename(&dst, &old).map_err(|e| io_err(&dst, e))?;
            }
            std::fs::rename(&src, &dst).map_err(|e| io_err(&dst, e))?;
            remove_any(&old).map_err(|e| io_err(&old, e))?;
        }
        std::fs::remove_dir_all(&commit).map_err(|e| io_err(&commit, e))
    }

    /// `state/progress.json`, when an epoch has been committed.
    pub fn progress(&self) -> Result<Option<RunProgress>, TrainError> {
        let p = self.path(STATE_DIR).join(PROGRESS_FILE);
        if !p.is_file() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }

    /// `metrics.json` (empty when absent).
    pub fn metrics(&self) -> Result<MetricsLog, TrainError> {
        let p = self.path(METRICS_FILE);
        if !p.is_file() {
            return Ok(MetricsLog::default());
        }
        read_json(&p)
    }

    /// Rewrites `metrics.json` alone (atomic rename; used for the final test recall).
    pub fn write_metrics(&self, m: &MetricsLog) -> Result<(), TrainError> {
        write_json(&self.path(METRICS_FILE), m)
    }
}

pub fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(p).map_err(|e| io_err(p, e))?;
    serde_json::from_str(&text).map_err(|e| io_err(p, format!("invalid JSON: {e}")))
}

/// Writes pretty JSON through a temp file + rename.
pub fn write_json<T: Serialize>(p: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| io_err(p, e))? + "\n";
    crate::tensor_io::write_atomic(p, text.as_bytes()).map_err(|e| io_err(p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_commits_are_finished_or_discarded() {
        let tmp = std::env::temp_dir().join(format!("ldot-commit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = OutputDir::prepare(&tmp).unwrap();
        // Epoch 1 commits normally.
        let s = out.begin().unwrap();
        std::fs::create_dir_all(s.join("last")).unwrap();
        std::fs::write(s.join("last/w"), "1").unwrap();
        std::fs::write(s.join("metrics.json"), "{}").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read_to_string(tmp.join("last/w")).unwrap(), "1");
        // Epoch 2 crashed while staging: discarded.
        let s = out.begin().unwrap();
        std::fs::create_dir_all(s.join("last")).unwrap();
        std::fs::write(s.join("last/w"), "2").unwrap();
        OutputDir::prepare(&tmp).unwrap();
        assert!(!tmp.join(".staging").exists());
        assert_eq!(std::fs::read_to_string(tmp.join("last/w")).unwrap(), "1");
        // Epoch 3 crashed mid-apply, between the two renames of `last`.
        std::fs::create_dir_all(tmp.join(".commit/last")).unwrap();
        std::fs::write(tmp.join(".commit/last/w"), "3").unwrap();
        std::fs::rename(tmp.join("last"), tmp.join(".old-last")).unwrap();
        OutputDir::prepare(&tmp).unwrap();
        assert_eq!(std::fs::read_to_string(tmp.join("last/w")).unwrap(), "3");
        assert!(!tmp.join(".old-last").exists() && !tmp.join(".commit").exists());
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
