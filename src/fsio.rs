//! Files that are never seen half-written: the one implementation of atomic file and directory
//! writes and of JSON side files, used by model directories, indexes, run outputs and the CLI.
//!
//! Errors carry the path and a reason; each caller wraps them in its own domain error (a model
//! directory, an index, a run) so that the user's one error line names what was being written.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a file or directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The destination exists and replacing it was not asked for.
    #[error("{}: already exists (pass --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    #[error("{}: invalid JSON: {reason}", path.display())]
    Json { path: PathBuf, reason: String },
}

impl FsError {
    pub fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    /// The reason alone, for callers whose error already names the path.
    pub fn reason(&self) -> String {
        match self {
            Self::Exists(_) => "already exists (pass --force to replace it)".into(),
            Self::Io { reason, .. } => reason.clone(),
            Self::Json { reason, .. } => format!("invalid JSON: {reason}"),
        }
    }
}

/// Writes bytes to a sibling temp file, then renames it over `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Creates directory `out` atomically: `fill` writes into a sibling temp directory, which is
/// renamed into place only when complete (an existing `out` is replaced only with `overwrite`).
/// `fill`'s own error comes back as `Err(Ok(e))`, a file-system failure as `Err(Err(..))`.
pub fn write_dir_atomically<E>(
    out: &Path,
    overwrite: bool,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), Result<E, FsError>> {
    if out.exists() && !overwrite {
        return Err(Err(FsError::Exists(out.to_path_buf())));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |p: &Path, what: &str, e: std::io::Error| -> Result<E, FsError> {
        Err(FsError::io(p, format!("{what}: {e}")))
    };
    std::fs::create_dir_all(parent).map_err(|e| io(parent, "cannot create parent", e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let tmp: PathBuf = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, "cannot create temp dir", e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Ok(e));
    }
    if out.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &old).map_err(|e| io(out, "cannot move old directory", e))?;
        std::fs::rename(&tmp, out).map_err(|e| io(out, "cannot rename into place", e))?;
        let _ = std::fs::remove_dir_all(old);
    } else {
        std::fs::rename(&tmp, out).map_err(|e| io(out, "cannot rename into place", e))?;
    }
    Ok(())
}

/// Parses a whole JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, FsError> {
    let bytes = std::fs::read(path).map_err(|e| FsError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| FsError::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes pretty JSON with a trailing newline through a temp file + rename.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FsError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| FsError::io(path, e))? + "\n";
    write_atomic(path, text.as_bytes()).map_err(|e| FsError::io(path, format!("cannot write: {e}")))
}
