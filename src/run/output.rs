//! A run's output directory and its commit protocol, written so that a `kill -9` at any moment
//! loses at most the period in progress and never leaves a half-written model under a final
//! name.
//!
//! A period is committed in three moves: everything is written into `.staging/` and synced;
//! `.staging` is renamed to `.commit` (the commit point: one atomic rename); then each entry of
//! `.commit` replaces its namesake (old one renamed to `.old-NAME` first, then deleted). Startup
//! deletes a leftover `.staging` (the period did not commit) and finishes a leftover `.commit`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RunError;

/// `OUTPUT_DIR/run.json`: the resolved settings; a rerun resumes only with the same settings.
pub const RUN_FILE: &str = "run.json";
/// `OUTPUT_DIR/metrics.json`: one record per committed period.
pub const METRICS_FILE: &str = "metrics.json";
/// `OUTPUT_DIR/state/`: what resuming needs besides `last/` (optimizer moments, progress).
pub const STATE_DIR: &str = "state";
/// `OUTPUT_DIR/last/`: the model after the last committed period.
pub const LAST_DIR: &str = "last";
pub const OPTIM_STATE: &str = "optim.safetensors";
/// `state/progress.json`: where the run stands after its last commit.
pub const PROGRESS_FILE: &str = "progress.json";
const STAGING: &str = ".staging";
const COMMIT: &str = ".commit";
const OLD_PREFIX: &str = ".old-";

/// The output directory and its commit protocol.
#[derive(Debug, Clone)]
pub struct OutputDir {
    root: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::output(path, e)
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
    pub fn prepare(root: &Path) -> Result<Self, RunError> {
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

    fn recover(&self) -> Result<(), RunError> {
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
    pub fn begin(&self) -> Result<PathBuf, RunError> {
        let staging = self.path(STAGING);
        remove_any(&staging).map_err(|e| io_err(&staging, e))?;
        std::fs::create_dir_all(&staging).map_err(|e| io_err(&staging, e))?;
        Ok(staging)
    }

    /// Atomically commits what `begin`'s directory holds, then moves it into place.
    pub fn commit(&self) -> Result<(), RunError> {
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
    fn apply(&self) -> Result<(), RunError> {
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

    /// `OUTPUT_DIR/NAME` parsed as JSON, `None` when absent.
    pub fn read_optional<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, RunError> {
        let p = self.path(name);
        if !p.is_file() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }

    /// `state/progress.json`, when a period has been committed.
    pub fn progress<T: DeserializeOwned>(&self) -> Result<Option<T>, RunError> {
        self.read_optional(&format!("{STATE_DIR}/{PROGRESS_FILE}"))
    }

    /// `metrics.json` (the default when absent).
    pub fn metrics<T: DeserializeOwned + Default>(&self) -> Result<T, RunError> {
        Ok(self.read_optional(METRICS_FILE)?.unwrap_or_default())
    }

    /// Rewrites `metrics.json` alone (atomic rename; used for a final evaluation).
    pub fn write_metrics<T: Serialize>(&self, m: &T) -> Result<(), RunError> {
        write_json(&self.path(METRICS_FILE), m)
    }

    /// `run.json`: written by the first run; a rerun must resolve to the same settings.
    pub fn check_run_file<T: Serialize>(&self, s: &T) -> Result<(), RunError> {
        let p = self.path(RUN_FILE);
        // Compare in the file's form (f32 fields print shortest, e.g. conf_th 0.2).
        let new: serde_json::Value = serde_json::to_string(s)
            .and_then(|t| serde_json::from_str(&t))
            .map_err(|e| io_err(&p, e))?;
        if !p.is_file() {
            return write_json(&p, s);
        }
        let old: serde_json::Value = read_json(&p)?;
        if old == new {
            return Ok(());
        }
        let empty = serde_json::Map::new();
        let (o, n) = (
            old.as_object().unwrap_or(&empty),
            new.as_object().unwrap_or(&empty),
        );
        let diffs: Vec<String> = n
            .iter()
            .filter(|(k, v)| o.get(*k) != Some(*v))
            .map(|(k, v)| {
                let was = o
                    .get(k)
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "absent".into());
                format!("{k} {was} -> {v}")
            })
            .collect();
        Err(self.resume_error(format!(
            "it holds a run with other settings ({}); use another --output-dir, or delete it to start over",
            diffs.join("; ")
        )))
    }

    /// Commits one period: `fill` writes the domain's files into the staging directory, then
    /// `state/` (optimizer moments, progress) and `metrics.json` are added and everything is
    /// committed at once.
    pub fn commit_period<E: From<RunError>>(
        &self,
        state: PeriodState<'_, impl Serialize, impl Serialize>,
        fill: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<(), E> {
        let staging = self.begin()?;
        fill(&staging)?;
        let dir = staging.join(STATE_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let (tensors, meta) = state.optimizer;
        crate::tensor_io::write_f32(&dir.join(OPTIM_STATE), &tensors, Some(meta))
            .map_err(|e| io_err(&dir, format!("cannot write optimizer state: {e}")))?;
        write_json(&dir.join(PROGRESS_FILE), state.progress)?;
        write_json(&staging.join(METRICS_FILE), state.metrics)?;
        Ok(self.commit()?)
    }

    /// The committed optimizer moments (`state/optim.safetensors`), for resuming.
    pub fn optimizer_state(&self) -> Result<crate::tensor_io::TensorFile, RunError> {
        crate::tensor_io::TensorFile::open(&self.path(STATE_DIR).join(OPTIM_STATE))
            .map_err(|e| self.resume_error(format!("optimizer state: {e}")))
    }

    /// Why resuming from this directory failed.
    pub fn resume_error(&self, reason: impl std::fmt::Display) -> RunError {
        RunError::Resume {
            path: self.root.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// An optimizer's moments as named host tensors + metadata (`state/optim.safetensors`).
pub type OptimizerState = (
    Vec<(String, crate::tensor_io::HostTensor<f32>)>,
    std::collections::HashMap<String, String>,
);

/// What every commit holds besides the domain's files.
pub struct PeriodState<'a, P, M> {
    /// The optimizer's moments as named host tensors + metadata.
    pub optimizer: OptimizerState,
    /// `state/progress.json`.
    pub progress: &'a P,
    /// `metrics.json`.
    pub metrics: &'a M,
}

/// Hard-links every file of `src` into a new tree `dst` (same file system: instant, no copy).
pub fn link_tree(src: &Path, dst: &Path) -> Result<(), RunError> {
    std::fs::create_dir_all(dst).map_err(|e| io_err(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| io_err(src, e))? {
        let entry = entry.map_err(|e| io_err(src, e))?;
        let to = dst.join(entry.file_name());
        if entry.path().is_dir() {
            link_tree(&entry.path(), &to)?;
        } else if std::fs::hard_link(entry.path(), &to).is_err() {
            std::fs::copy(entry.path(), &to).map_err(|e| io_err(&to, e))?;
        }
    }
    Ok(())
}

pub fn read_json<T: DeserializeOwned>(p: &Path) -> Result<T, RunError> {
    crate::fsio::read_json(p).map_err(|e| io_err(p, e.reason()))
}

/// Writes pretty JSON through a temp file + rename.
pub fn write_json<T: Serialize>(p: &Path, value: &T) -> Result<(), RunError> {
    crate::fsio::write_json(p, value).map_err(|e| io_err(p, e.reason()))
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
