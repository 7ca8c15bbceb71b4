//! Read-only access to the LMDB environments written by py-lmdb.
//!
//! Environments are opened `READ_ONLY | NO_LOCK`: heed's bundled LMDB uses a lock-file layout that
//! differs from py-lmdb's, so with locking one side fails with `MDB_VERSION_MISMATCH`; without a
//! lock file a read-only (`chmod -w`) directory also works.
//!
//! heed refuses to open the same path twice in one process (`EnvAlreadyOpened`), so handles are
//! shared through a process-wide registry of weak references: opening an already open path returns
//! the live handle, and the environment closes when the last handle drops.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};

use super::DataError;

/// One open LMDB environment and its unnamed database (keys and values are raw bytes).
pub(crate) struct LmdbReader {
    path: PathBuf,
    env: Env<WithoutTls>,
    db: Database<'static, Bytes, Bytes>,
}

static REGISTRY: LazyLock<Mutex<HashMap<PathBuf, Weak<LmdbReader>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Opens (or re-uses) the read-only environment in directory `dir`.
///
/// `what` names the db in the not-found error ("image feature LMDB", "text db LMDB").
pub(crate) fn open(dir: &Path, what: &'static str) -> Result<Arc<LmdbReader>, DataError> {
    if !dir.join("data.mdb").is_file() {
        return Err(DataError::NotFound {
            what,
            path: dir.to_path_buf(),
        });
    }
    let canonical = dir.canonicalize().map_err(|e| DataError::io(dir, e))?;

    // A poisoned registry only means another thread panicked while holding it; the map itself
    // is still consistent (inserts are single statements).
    let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(live) = registry.get(&canonical).and_then(Weak::upgrade) {
        return Ok(live);
    }
    let reader = Arc::new(open_env(dir, &canonical)?);
    registry.retain(|_, weak| weak.strong_count() > 0);
    registry.insert(canonical, Arc::downgrade(&reader));
    Ok(reader)
}

fn open_env(dir: &Path, canonical: &Path) -> Result<LmdbReader, DataError> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    // SAFETY: READ_ONLY means this process never writes the map; NO_LOCK shifts reader/writer
    // exclusion to the user, which is fine for dbs that are not being written while read.
    unsafe { options.flags(EnvFlags::READ_ONLY | EnvFlags::NO_LOCK) };
    // Map the file's length, not the writer's map size: UNITER writes its dbs with a 1 TiB
    // map size, a reservation that fails under an address-space limit (`ulimit -v`, qemu-user).
    // LMDB still maps at least the pages in use. 64 KiB is a multiple of every OS page size.
    let file = dir.join("data.mdb");
    let len = std::fs::metadata(&file)
        .map_err(|e| DataError::io(&file, e))?
        .len();
    const MAP_UNIT: usize = 64 << 10;
    options.map_size((len as usize).div_ceil(MAP_UNIT).max(1) * MAP_UNIT);

    // The previous handle of this path may still be closing on another thread (its Arc reached
    // zero but heed has not yet forgotten the path); that window is microseconds wide.
    let mut attempt = 0;
    let env = loop {
        // SAFETY: the map is only read, through heed's bounds-checked API.
        match unsafe { options.open(canonical) } {
            Err(heed::Error::EnvAlreadyOpened) if attempt < 50 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            other => break other.map_err(|e| DataError::lmdb(dir, e))?,
        }
    };

    check_covered(dir, &env, len)?;

    let rtxn = env.read_txn().map_err(|e| DataError::lmdb(dir, e))?;
    let db = env
        .open_databases_and_commit(rtxn, |opener, rtxn| {
            opener
                .open_database::<Bytes, Bytes>(rtxn, None)
                .map(CommitOrAbort::<_, ()>::Commit)
        })
        .map_err(|e: heed::Error| DataError::lmdb(dir, e))?
        .unwrap_commit()
        .ok_or_else(|| DataError::invalid(dir, "LMDB has no unnamed database"))?;

    Ok(LmdbReader {
        path: dir.to_path_buf(),
        env,
        db,
    })
}

/// Refuses a `data.mdb` shorter than the pages in use. LMDB validates only the two meta pages
/// at open; a page past the end of the file is first touched through the memory map, where it
/// raises SIGBUS and kills the process without a message. `actual`: `data.mdb`'s length.
fn check_covered(dir: &Path, env: &Env<WithoutTls>, actual: u64) -> Result<(), DataError> {
    let pages = env.info().last_page_number as u64 + 1;
    let page_size = env.unnamed_database_stat().page_size;
    let expected = pages.saturating_mul(page_size as u64);
    if actual < expected {
        return Err(DataError::TruncatedLmdb {
            path: dir.to_path_buf(),
            actual,
            expected,
            pages,
            page_size,
        });
    }
    Ok(())
}

impl LmdbReader {
    /// The directory as the caller named it (for messages).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the value stored under `key`, inside one read transaction (the slice borrows
    /// the memory map, so it cannot outlive the call). `Ok(None)` when the key is absent.
    pub(crate) fn with_value<T>(
        &self,
        key: &str,
        f: impl FnOnce(&[u8]) -> Result<T, DataError>,
    ) -> Result<Option<T>, DataError> {
        let rtxn = self.env.read_txn().map_err(|e| self.err(e))?;
        match self
            .db
            .get(&rtxn, key.as_bytes())
            .map_err(|e| self.err(e))?
        {
            Some(bytes) => f(bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `key` is present.
    pub(crate) fn contains(&self, key: &str) -> Result<bool, DataError> {
        self.with_value(key, |_| Ok(())).map(|v| v.is_some())
    }

    /// All keys in LMDB order (byte order). Keys that are not UTF-8 are reported as corrupt.
    pub(crate) fn keys(&self) -> Result<Vec<String>, DataError> {
        let rtxn = self.env.read_txn().map_err(|e| self.err(e))?;
        let mut keys = Vec::new();
        for entry in self.db.iter(&rtxn).map_err(|e| self.err(e))? {
            let (key, _) = entry.map_err(|e| self.err(e))?;
            let key = std::str::from_utf8(key).map_err(|_| {
                DataError::corrupt(
                    &self.path,
                    &String::from_utf8_lossy(key),
                    "key is not UTF-8",
                )
            })?;
            keys.push(key.to_string());
        }
        Ok(keys)
    }

    fn err(&self, e: heed::Error) -> DataError {
        DataError::lmdb(&self.path, e)
    }
}
