//! Image region features (UNITER `DetectFeatLmdb`, spec §4.1).
//!
//! An image db directory holds one LMDB per detection setting plus a `{image name: num_bb}` json:
//!
//! ```text
//! <dir>/feat_th0.2_max100_min10[_compressed]/data.mdb   conf_th = 0.2, max_bb = 100, min_bb = 10
//! <dir>/nbb_th0.2_max100_min10.json
//! <dir>/feat_numbb36[_compressed]/data.mdb               conf_th = -1: fixed num_bb = 36
//! ```
//!
//! Keys are image file names (`flickr30k_000000001076.npz`), plus `__keys__` = JSON list of all
//! names. Each value holds the arrays `features` (N, 2048), `norm_bb` (N, 6) =
//! `[x1, y1, x2, y2, w, h]` (normalised), `conf` (N) and `soft_labels` (N, 1601), float16, boxes
//! sorted by confidence so a prefix keeps the best ones. Values are either a msgpack dict of
//! msgpack-numpy arrays or, in `_compressed` dbs, `np.savez_compressed` bytes.
//!
//! Reading mirrors `DetectFeatLmdb.__getitem__`: take the first `num_bb` rows, widen to f32, and
//! append the box area `w * h` as a 7th position column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;

use super::DataError;
use super::codec::{self, RawArray};
use super::json::read_json;
use super::lmdb::{self, LmdbReader};

pub use super::codec::{FloatDtype, NdArray};
pub use crate::region_dims::{IMG_FEAT_DIM, IMG_POS_DIM};
/// Stored `norm_bb` width.
const BB_DIM: usize = 6;
/// LMDB key listing every image name.
pub(crate) const KEYS_KEY: &str = "__keys__";

/// Which LMDB of an image db directory to read and how many boxes to take (UNITER's
/// `conf_th` / `max_bb` / `min_bb` / `num_bb` / `compressed_db` options).
/// Serialised as it is into `run.json` and `index.json` (`compressed` for `compressed_db`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImgDbOptions {
    /// Detector confidence threshold; `-1` selects the fixed-`num_bb` db `feat_numbb{num_bb}`.
    pub conf_th: f32,
    /// Upper clamp of the box count.
    pub max_bb: usize,
    /// Lower clamp of the box count.
    pub min_bb: usize,
    /// Box count when `conf_th == -1`.
    pub num_bb: usize,
    /// Read the `_compressed` (npz) LMDB instead of the msgpack one.
    pub compressed: bool,
}

impl ImgDbOptions {
    /// `th0.2_max100_min10`, or `None` for the fixed-count db (`conf_th == -1`).
    fn setting(&self) -> Option<String> {
        (self.conf_th != -1.0).then(|| {
            format!(
                "th{}_max{}_min{}",
                py_float(self.conf_th),
                self.max_bb,
                self.min_bb
            )
        })
    }

    /// Directory name of the LMDB these options read (`feat_th0.2_max100_min10[_compressed]`
    /// or `feat_numbb36[_compressed]`).
    pub fn lmdb_name(&self) -> String {
        let suffix = if self.compressed { "_compressed" } else { "" };
        match self.setting() {
            Some(s) => format!("feat_{s}{suffix}"),
            None => format!("feat_numbb{}{suffix}", self.num_bb),
        }
    }

    /// File name of the `{image: num_bb}` table (`nbb_th0.2_max100_min10.json`); `None` for
    /// the fixed-count db.
    pub fn nbb_name(&self) -> Option<String> {
        self.setting().map(|s| format!("nbb_{s}.json"))
    }

    /// UNITER's box count of one image from its stored confidences (`dtype` as stored):
    /// `clamp(#(conf > conf_th), min_bb, max_bb)` (max_bb wins), or `num_bb` for the
    /// fixed-count db.
    pub fn nbb(&self, conf: &[f32], dtype: FloatDtype) -> usize {
        if self.conf_th == -1.0 {
            return self.num_bb;
        }
        // numpy compares a float16 array with a Python float in float16, so round the threshold
        // the same way; the stored values are exact in f32.
        let th = match dtype {
            FloatDtype::F16 => f16::from_f32(self.conf_th).to_f32(),
            _ => self.conf_th,
        };
        let above = conf.iter().filter(|&&c| c > th).count();
        above.max(self.min_bb).min(self.max_bb)
    }
}

impl Default for ImgDbOptions {
    /// The values of every LightningDOT config: 0.2 / 100 / 10 / 36, msgpack db.
    fn default() -> Self {
        Self {
            conf_th: 0.2,
            max_bb: 100,
            min_bb: 10,
            num_bb: 36,
            compressed: false,
        }
    }
}

/// Every array of one image record, unsliced, in stored order (`get_dump` of the reference minus
/// its slicing; used to re-encode dbs).
#[derive(Debug, Clone, PartialEq)]
pub struct ImgDump {
    pub fields: Vec<(String, NdArray)>,
}

impl ImgDump {
    /// Every array of an `.npz` file (`np.savez[_compressed]`), as a BUTD extractor writes one
    /// per image; float16 / float32 / float64 arrays only.
    pub fn from_npz(bytes: &[u8]) -> Result<Self, String> {
        Ok(Self {
            fields: codec::npz_all(bytes)?
                .into_iter()
                .map(|(n, a)| (n, a.to_nd()))
                .collect(),
        })
    }

    /// The array stored under `name`.
    pub fn get(&self, name: &str) -> Option<&NdArray> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }
}

/// The boxes of one image as the encoders consume them.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionFeatures {
    /// `[num_bb, IMG_FEAT_DIM]` row-major.
    pub features: Vec<f32>,
    /// `[num_bb, IMG_POS_DIM]` row-major: `[x1, y1, x2, y2, w, h, w * h]`.
    pub boxes: Vec<f32>,
    /// Number of boxes taken.
    pub num_bb: usize,
}

impl RegionFeatures {
    /// The encoders' input from `n` stored rows: `features` `[n, IMG_FEAT_DIM]` and `norm_bb`
    /// `[n, 6]` (`[x1, y1, x2, y2, w, h]`), to which the area `w * h` is appended as the
    /// reference's `_get_img_feat` does.
    pub fn from_norm_bb(features: Vec<f32>, norm_bb: &[f32]) -> Self {
        let n = norm_bb.len() / BB_DIM;
        let mut boxes = Vec::with_capacity(n * IMG_POS_DIM);
        for b in norm_bb.chunks_exact(BB_DIM) {
            boxes.extend_from_slice(b);
            boxes.push(b[4] * b[5]);
        }
        Self {
            features,
            boxes,
            num_bb: n,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Msgpack,
    Npz,
}

/// Where the per-image box count comes from.
#[derive(Debug)]
enum NbbSource {
    /// The `nbb_th*.json` table (the normal case).
    Table {
        path: PathBuf,
        map: HashMap<String, usize>,
    },
    /// `conf_th == -1`: the same count for every image.
    Fixed(usize),
    /// No table: recount from each record's `conf`.
    FromConf,
}

/// A read-only image feature db. Cheap to share across threads (`Send + Sync`).
pub struct ImgDb {
    dir: PathBuf,
    lmdb: Arc<LmdbReader>,
    encoding: Encoding,
    nbb: NbbSource,
    options: ImgDbOptions,
    names: Vec<String>,
}

impl std::fmt::Debug for ImgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImgDb")
            .field("lmdb", &self.lmdb.path())
            .field("options", &self.options)
            .field("images", &self.names.len())
            .finish()
    }
}

impl ImgDb {
    /// Opens the LMDB of image db directory `dir` selected by `options` (see the module docs for
    /// the names). Without an nbb json the box count is recomputed from `conf` per image, and
    /// when the thresholded LMDB is also missing the reference's fallback `all[_compressed]` is
    /// tried.
    pub fn open(dir: impl AsRef<Path>, options: ImgDbOptions) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(DataError::NotFound {
                what: "image db directory",
                path: dir.to_path_buf(),
            });
        }
        let lmdb_dir = dir.join(options.lmdb_name());
        let (lmdb_dir, nbb) = match options.nbb_name() {
            None => (lmdb_dir, NbbSource::Fixed(options.num_bb)),
            Some(nbb_name) => {
                let nbb_path = dir.join(nbb_name);
                if nbb_path.is_file() {
                    let map = read_json(&nbb_path)?;
                    (
                        lmdb_dir,
                        NbbSource::Table {
                            path: nbb_path,
                            map,
                        },
                    )
                } else {
                    // The reference falls back to `all[_compressed]`; when that is absent too,
                    // the not-found error names the db the options asked for.
                    let suffix = if options.compressed {
                        "_compressed"
                    } else {
                        ""
                    };
                    let all = dir.join(format!("all{suffix}"));
                    let lmdb_dir = if !lmdb_dir.is_dir() && all.is_dir() {
                        all
                    } else {
                        lmdb_dir
                    };
                    (lmdb_dir, NbbSource::FromConf)
                }
            }
        };
        let lmdb = lmdb::open(&lmdb_dir, "image feature LMDB")?;
        let names = read_names(&lmdb)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            lmdb,
            encoding: if options.compressed {
                Encoding::Npz
            } else {
                Encoding::Msgpack
            },
            nbb,
            options,
            names,
        })
    }

    /// The image db directory given to [`ImgDb::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The LMDB directory actually read.
    pub fn lmdb_dir(&self) -> &Path {
        self.lmdb.path()
    }

    pub fn options(&self) -> &ImgDbOptions {
        &self.options
    }

    /// All image names: the `__keys__` list, or the LMDB keys when the db has none.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the LMDB holds a record for `name`.
    pub fn contains(&self, name: &str) -> Result<bool, DataError> {
        self.lmdb.contains(name)
    }

    /// The box count of `name` as the reference's `name2nbb` gives it (nbb json, fixed count,
    /// or recomputed from `conf`). [`ImgDb::get`] takes this many rows, fewer only if the record
    /// stores fewer.
    pub fn num_bb(&self, name: &str) -> Result<usize, DataError> {
        match &self.nbb {
            NbbSource::Table { path, map } => match map.get(name) {
                Some(&n) => Ok(n),
                // Name the LMDB when the image is unknown altogether, the json otherwise.
                None if !self.contains(name)? => Err(self.missing(name)),
                None => Err(DataError::MissingKey {
                    what: "image",
                    key: name.to_string(),
                    db: path.clone(),
                }),
            },
            NbbSource::Fixed(n) => Ok(*n),
            NbbSource::FromConf => self.with_fields(name, &["conf"], |arrays| {
                let conf = arrays[0].as_ref().ok_or("record has no 'conf' array")?;
                Ok(self.nbb_from_conf(conf))
            }),
        }
    }

    /// Features and positions of the first `num_bb` boxes of `name`.
    pub fn get(&self, name: &str) -> Result<RegionFeatures, DataError> {
        let wanted: &[&str] = match self.nbb {
            NbbSource::FromConf => &["features", "norm_bb", "conf"],
            _ => &["features", "norm_bb"],
        };
        let table_nbb = match self.nbb {
            NbbSource::FromConf => None,
            _ => Some(self.num_bb(name)?),
        };
        self.with_fields(name, wanted, |arrays| {
            let features = arrays[0].as_ref().ok_or("record has no 'features' array")?;
            let norm_bb = arrays[1].as_ref().ok_or("record has no 'norm_bb' array")?;
            if features.shape.len() != 2 || features.shape[1] != IMG_FEAT_DIM {
                return Err(format!(
                    "'features' has shape {:?}, expected [N, {IMG_FEAT_DIM}]",
                    features.shape
                ));
            }
            if norm_bb.shape.len() != 2 || norm_bb.shape[1] != BB_DIM {
                return Err(format!(
                    "'norm_bb' has shape {:?}, expected [N, {BB_DIM}]",
                    norm_bb.shape
                ));
            }
            if norm_bb.rows() != features.rows() {
                return Err(format!(
                    "'features' has {} rows but 'norm_bb' has {}",
                    features.rows(),
                    norm_bb.rows()
                ));
            }
            let nbb = match table_nbb {
                Some(n) => n,
                None => {
                    let conf = arrays[2].as_ref().ok_or("record has no 'conf' array")?;
                    self.nbb_from_conf(conf)
                }
            };
            // Python slicing: a record shorter than nbb yields what it has.
            let n = nbb.min(features.rows());
            Ok(RegionFeatures::from_norm_bb(
                features.prefix_f32(n),
                &norm_bb.prefix_f32(n),
            ))
        })
    }

    /// Detector class distributions of the first `num_bb` boxes of `name`: shape
    /// `[num_bb, 1601]` (index 0 = background), for region-classification pre-training.
    pub fn get_soft_labels(&self, name: &str) -> Result<NdArray, DataError> {
        let nbb = self.num_bb(name)?;
        self.with_fields(name, &["soft_labels"], |arrays| {
            let labels = arrays[0]
                .as_ref()
                .ok_or("record has no 'soft_labels' array")?;
            if labels.shape.len() != 2 {
                return Err(format!(
                    "'soft_labels' has shape {:?}, expected [N, classes]",
                    labels.shape
                ));
            }
            let n = nbb.min(labels.rows());
            Ok(NdArray {
                shape: vec![n, labels.shape[1]],
                data: labels.prefix_f32(n),
                dtype: labels.dtype,
            })
        })
    }

    /// Every array of the record of `name`, unsliced.
    pub fn get_dump(&self, name: &str) -> Result<ImgDump, DataError> {
        self.lmdb
            .with_value(name, |bytes| {
                let fields = match self.encoding {
                    Encoding::Msgpack => codec::msgpack_arrays(bytes),
                    Encoding::Npz => codec::npz_all(bytes),
                };
                let fields = fields.map_err(|e| DataError::corrupt(self.lmdb.path(), name, e))?;
                Ok(ImgDump {
                    fields: fields.into_iter().map(|(n, a)| (n, a.to_nd())).collect(),
                })
            })?
            .ok_or_else(|| self.missing(name))
    }

    /// Decodes the `wanted` arrays of `name` (absent ones as `None`) and hands them to `f`;
    /// string errors from either step become `CorruptRecord` naming the key.
    fn with_fields<T>(
        &self,
        name: &str,
        wanted: &[&str],
        f: impl FnOnce(&[Option<RawArray<'_>>]) -> Result<T, String>,
    ) -> Result<T, DataError> {
        self.lmdb
            .with_value(name, |bytes| {
                let arrays = match self.encoding {
                    Encoding::Msgpack => codec::msgpack_arrays(bytes).map(|mut all| {
                        wanted
                            .iter()
                            .map(|w| {
                                let i = all.iter().position(|(n, _)| n == w)?;
                                Some(all.swap_remove(i).1)
                            })
                            .collect::<Vec<_>>()
                    }),
                    // Only the members asked for are inflated.
                    Encoding::Npz => wanted
                        .iter()
                        .map(|w| codec::npz_array(bytes, w))
                        .collect::<Result<Vec<_>, _>>(),
                };
                arrays
                    .and_then(|arrays| f(&arrays))
                    .map_err(|e| DataError::corrupt(self.lmdb.path(), name, e))
            })?
            .ok_or_else(|| self.missing(name))
    }

    /// `clamp(#(conf > conf_th), min_bb, max_bb)` in the reference's order (max_bb wins).
    fn nbb_from_conf(&self, conf: &RawArray<'_>) -> usize {
        let all = conf.prefix_f32(conf.rows());
        self.options.nbb(&all, conf.dtype)
    }

    fn missing(&self, name: &str) -> DataError {
        DataError::MissingKey {
            what: "image",
            key: name.to_string(),
            db: self.lmdb.path().to_path_buf(),
        }
    }
}

fn read_names(lmdb: &LmdbReader) -> Result<Vec<String>, DataError> {
    let listed = lmdb.with_value(KEYS_KEY, |bytes| {
        serde_json::from_slice::<Vec<String>>(bytes).map_err(|e| {
            DataError::corrupt(
                lmdb.path(),
                KEYS_KEY,
                format!("not a JSON list of names: {e}"),
            )
        })
    })?;
    match listed {
        Some(names) => Ok(names),
        None => Ok(lmdb.keys()?.into_iter().filter(|k| k != KEYS_KEY).collect()),
    }
}

/// `str(float)` as Python writes it, which is how UNITER names the dbs (`0.2` -> "0.2",
/// `1.0` -> "1.0", `1e-05` -> "1e-05").
pub(crate) fn py_float(x: f32) -> String {
    let abs = x.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let s = format!("{x:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = format!("{x}");
    if s.contains('.') || !x.is_finite() {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::py_float;

    #[test]
    fn python_float_names() {
        assert_eq!(py_float(0.2), "0.2");
        assert_eq!(py_float(0.5), "0.5");
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.0), "0.0");
        assert_eq!(py_float(1e-5), "1e-05");
    }
}
