//! A minimal writer of PyTorch's zip checkpoint format (`torch.save`, torch ≥ 1.6), without
//! libtorch (spec §3.2).
//!
//! The archive holds, under a folder named after the file's stem (as torch names it):
//!
//! ```text
//! STEM/data.pkl        pickle protocol 2: the object tree, tensors as
//!                      torch._utils._rebuild_tensor_v2(persistent_id(('storage', torch.FloatStorage,
//!                      '<n>', 'cpu', numel)), 0, size, stride, False, OrderedDict())
//! STEM/byteorder       "little"
//! STEM/data/<n>        raw little-endian elements of storage n
//! STEM/version         "3\n"
//! ```
//!
//! Entries are stored (not deflated) and each member's data starts on a 64-byte boundary, as
//! torch writes them: `torch.load` reads unaligned members too (plain and `mmap=True`, checked
//! with torch 2.15), but aligned storages keep memory-mapped tensors naturally aligned. torch's
//! optional `.data/serialization_id`, `.format_version` and `.storage_alignment` records are left
//! out; `torch.load` does not need them. Two tensors naming the same storage load as views of
//! one storage, which is how `torch.save` stores tied parameters.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use half::f16;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::error::ConvertError;

/// One storage (a flat buffer) of the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// `torch.FloatStorage`.
    F32(Vec<f32>),
    /// `torch.HalfStorage`.
    F16(Vec<f16>),
}

impl Storage {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn torch_class(&self) -> &'static str {
        match self {
            Storage::F32(_) => "FloatStorage",
            Storage::F16(_) => "HalfStorage",
        }
    }

    fn byte_len(&self) -> u64 {
        let elem = match self {
            Storage::F32(_) => 4,
            Storage::F16(_) => 2,
        };
        self.len() as u64 * elem
    }

    /// Writes the elements little-endian through a bounded buffer (no full-size byte copy).
    fn write_le<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        const CHUNK: usize = 1 << 14;
        let mut buf = Vec::with_capacity(CHUNK * 4);
        match self {
            Storage::F32(v) => {
                for chunk in v.chunks(CHUNK) {
                    buf.clear();
                    buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                    w.write_all(&buf)?;
                }
            }
            Storage::F16(v) => {
                for chunk in v.chunks(CHUNK) {
                    buf.clear();
                    buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                    w.write_all(&buf)?;
                }
            }
        }
        Ok(())
    }
}

/// A named tensor of a state_dict: a contiguous row-major view of a whole storage (offset 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensor {
    pub key: String,
    /// Index into [`TorchFile::storages`]; several tensors may share one (tied weights).
    pub storage: usize,
    /// Size in PyTorch orientation (Linear weights `[out, in]`); its product must equal the
    /// storage's length.
    pub shape: Vec<usize>,
}

/// A value of the pickled object tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorchValue {
    /// A tensor (see [`TorchTensor`]).
    Tensor {
        storage: usize,
        shape: Vec<usize>,
    },
    /// A string-keyed dict, in insertion order.
    Dict(TorchDict),
    Int(i64),
    None,
}

/// A dict with string keys, pickled in entry order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TorchDict {
    /// `collections.OrderedDict` (what `Module.state_dict()` returns) instead of a plain `dict`.
    pub ordered: bool,
    pub entries: Vec<(String, TorchValue)>,
}

impl TorchDict {
    /// A state_dict of `tensors`, in their order.
    pub fn state_dict(tensors: Vec<TorchTensor>, ordered: bool) -> Self {
        Self {
            ordered,
            entries: tensors
                .into_iter()
                .map(|t| {
                    let value = TorchValue::Tensor {
                        storage: t.storage,
                        shape: t.shape,
                    };
                    (t.key, value)
                })
                .collect(),
        }
    }
}

/// What `torch.save(root, path)` writes: the object tree and the storages it refers to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TorchFile {
    pub root: TorchDict,
    pub storages: Vec<Storage>,
}

impl TorchFile {
    /// Writes the file atomically (sibling temp file, then rename over `path`) and returns the
    /// number of tensors in the tree. Storages no tensor refers to are not written.
    pub fn write(&self, path: &Path) -> Result<usize, ConvertError> {
        let err = |reason: String| ConvertError::Write {
            path: path.display().to_string(),
            reason,
        };
        let mut used = vec![false; self.storages.len()];
        let mut tensors = 0;
        let pickle = pickle(&self.root, &self.storages, &mut used, &mut tensors).map_err(err)?;
        let archive = archive_name(path);
        let tmp = temp_path(path);
        let result = std::fs::File::create(&tmp)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                self.write_zip(&mut w, &archive, &pickle, &used)?;
                let f = w.into_inner().map_err(|e| e.to_string())?;
                f.sync_all().map_err(|e| e.to_string())
            })
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(tensors)
    }

    fn write_zip<W: Write + Seek>(
        &self,
        w: &mut W,
        archive: &str,
        pickle: &[u8],
        used: &[bool],
    ) -> Result<(), String> {
        let mut zip = ZipWriter::new(w);
        let entry = |name: String, len: u64, zip: &mut ZipWriter<&mut W>| {
            let opts = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Stored)
                .last_modified_time(DateTime::DEFAULT)
                .with_alignment(64)
                .large_file(len >= u64::from(u32::MAX));
            zip.start_file(format!("{archive}/{name}"), opts)
                .map_err(|e| format!("{name}: {e}"))
        };
        entry("data.pkl".into(), pickle.len() as u64, &mut zip)?;
        zip.write_all(pickle).map_err(|e| e.to_string())?;
        entry("byteorder".into(), 6, &mut zip)?;
        zip.write_all(b"little").map_err(|e| e.to_string())?;
        for (i, s) in self.storages.iter().enumerate().filter(|(i, _)| used[*i]) {
            entry(format!("data/{i}"), s.byte_len(), &mut zip)?;
            s.write_le(&mut zip).map_err(|e| format!("data/{i}: {e}"))?;
        }
        entry("version".into(), 2, &mut zip)?;
        zip.write_all(b"3\n").map_err(|e| e.to_string())?;
        zip.finish().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// torch names the archive folder after the file's stem; anything odd falls back to `archive`,
/// which readers accept just as well (they take the folder of the first member).
fn archive_name(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .unwrap_or("archive")
        .to_string()
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

// Pickle opcodes (protocol 2), as Python's pickle module emits them.
const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const GLOBAL: u8 = b'c';
const REDUCE: u8 = b'R';
const BINPERSID: u8 = b'Q';
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const EMPTY_DICT: u8 = b'}';
const SETITEMS: u8 = b'u';
const BINUNICODE: u8 = b'X';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const NEWFALSE: u8 = 0x89;
const NONE: u8 = b'N';

/// Items per SETITEMS, as Python batches them.
const BATCH: usize = 1000;

fn pickle(
    root: &TorchDict,
    storages: &[Storage],
    used: &mut [bool],
    tensors: &mut usize,
) -> Result<Vec<u8>, String> {
    let mut p = Pickler {
        out: vec![PROTO, 2],
        storages,
        used,
        tensors,
    };
    p.dict(root)?;
    p.out.push(STOP);
    Ok(p.out)
}

struct Pickler<'a> {
    out: Vec<u8>,
    storages: &'a [Storage],
    used: &'a mut [bool],
    tensors: &'a mut usize,
}

impl Pickler<'_> {
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(GLOBAL);
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn string(&mut self, s: &str) {
        self.out.push(BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if (0..=0xff).contains(&v) {
            self.out.extend([BININT1, v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.out.push(BININT2);
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.out.push(BININT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            // Shortest two's-complement little-endian form, as pickle.encode_long.
            let bytes = v.to_le_bytes();
            let mut n = 8;
            while n > 1 && {
                let (last, prev) = (bytes[n - 1], bytes[n - 2]);
                (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0)
            } {
                n -= 1;
            }
            self.out.extend([LONG1, n as u8]);
            self.out.extend_from_slice(&bytes[..n]);
        }
    }

    fn int_tuple(&mut self, values: &[i64]) {
        if values.is_empty() {
            self.out.push(EMPTY_TUPLE);
            return;
        }
        if values.len() > 3 {
            self.out.push(MARK);
        }
        for &v in values {
            self.int(v);
        }
        self.out.push(match values.len() {
            1 => TUPLE1,
            2 => TUPLE2,
            3 => TUPLE3,
            _ => TUPLE,
        });
    }

    fn ordered_dict_new(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.extend([EMPTY_TUPLE, REDUCE]);
    }

    fn dict(&mut self, d: &TorchDict) -> Result<(), String> {
        if d.ordered {
            self.ordered_dict_new();
        } else {
            self.out.push(EMPTY_DICT);
        }
        for batch in d.entries.chunks(BATCH) {
            self.out.push(MARK);
            for (k, v) in batch {
                self.string(k);
                self.value(k, v)?;
            }
            self.out.push(SETITEMS);
        }
        Ok(())
    }

    fn value(&mut self, key: &str, v: &TorchValue) -> Result<(), String> {
        match v {
            TorchValue::Tensor { storage, shape } => self.tensor(key, *storage, shape),
            TorchValue::Dict(d) => self.dict(d),
            TorchValue::Int(i) => {
                self.int(*i);
                Ok(())
            }
            TorchValue::None => {
                self.out.push(NONE);
                Ok(())
            }
        }
    }

    /// `_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`; the storage is a
    /// persistent id, so a storage named twice is loaded once and shared.
    fn tensor(&mut self, key: &str, storage: usize, shape: &[usize]) -> Result<(), String> {
        let s = self.storages.get(storage).ok_or_else(|| {
            format!(
                "tensor {key} refers to storage {storage} of {}",
                self.storages.len()
            )
        })?;
        let numel: usize = shape.iter().product();
        if numel != s.len() {
            return Err(format!(
                "tensor {key} has shape {shape:?} ({numel} elements) but its storage holds {}",
                s.len()
            ));
        }
        self.used[storage] = true;
        *self.tensors += 1;
        let to_i64 = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let size: Vec<i64> = shape.iter().map(|&d| to_i64(d)).collect();
        // Contiguous row-major strides.
        let mut stride = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1].saturating_mul(size[i + 1]);
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(MARK);
        self.out.push(MARK);
        self.string("storage");
        self.global("torch", s.torch_class());
        self.string(&storage.to_string());
        self.string("cpu");
        self.int(to_i64(numel));
        self.out.push(TUPLE);
        self.out.push(BINPERSID);
        self.int(0);
        self.int_tuple(&size);
        self.int_tuple(&stride);
        self.out.push(NEWFALSE);
        self.ordered_dict_new();
        self.out.push(TUPLE);
        self.out.push(REDUCE);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: i64) -> Vec<u8> {
        let mut p = Pickler {
            out: Vec::new(),
            storages: &[],
            used: &mut [],
            tensors: &mut 0,
        };
        p.int(v);
        p.out
    }

    #[test]
    fn ints_use_the_shortest_opcode() {
        assert_eq!(ints(7), [BININT1, 7]);
        assert_eq!(ints(300), [BININT2, 0x2c, 0x01]);
        assert_eq!(ints(70_000), [BININT, 0x70, 0x11, 0x01, 0x00]);
        assert_eq!(ints(-1), [BININT, 0xff, 0xff, 0xff, 0xff]);
        // pickle.dumps(2**31, 2) == b'\x80\x02\x8a\x05\x00\x00\x00\x80\x00.'
        assert_eq!(ints(1 << 31), [LONG1, 5, 0, 0, 0, 0x80, 0]);
        assert_eq!(ints(1 << 40), [LONG1, 6, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn bad_storage_references_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pt");
        let file = TorchFile {
            root: TorchDict::state_dict(
                vec![TorchTensor {
                    key: "w".into(),
                    storage: 0,
                    shape: vec![2, 2],
                }],
                false,
            ),
            storages: vec![Storage::F32(vec![0.0; 3])],
        };
        let e = file.write(&path).unwrap_err().to_string();
        assert!(e.contains("x.pt") && e.contains("tensor w"), "{e}");
        assert!(!path.exists());
        let file = TorchFile {
            storages: vec![],
            ..file
        };
        assert!(file.write(&path).is_err());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temp file left"
        );
    }

    #[test]
    fn archive_folder_is_the_stem() {
        assert_eq!(
            archive_name(Path::new("/a/model_step_3.pt")),
            "model_step_3"
        );
        assert_eq!(archive_name(Path::new("LightningDot.pt")), "LightningDot");
        assert_eq!(archive_name(Path::new("odd name.pt")), "archive");
    }
}
