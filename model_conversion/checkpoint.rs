//! Opening a `.pt` file and recognising which of the reference's layouts it holds (spec §3.2).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use burn_store::TensorSnapshot;
use burn_store::pytorch::PytorchReader;
use burn_store::pytorch::reader::FileFormat;

use super::error::ConvertError;

/// Serialisation container of a torch file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchFormat {
    /// torch ≥ 1.6 zip archive.
    Zip,
    /// The pre-1.6 pickle stream.
    Legacy,
    /// A bare pickle or tar (older torchvision).
    Other,
}

/// Which reference object a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// DPR `CheckpointState` wrapper of coco-ft.pt / flickr-ft.pt: weights under `model_dict`.
    FineTuneWrapper,
    /// `BiEncoderForPretraining` state_dict (LightningDot.pt): `bert.`-prefixed BiEncoder + heads.
    Pretraining,
    /// A plain `BiEncoder.state_dict()` (`img_model.*`, `txt_model.*`).
    BiEncoderStateDict,
    /// A UNITER checkpoint (uniter-base.pt, ITM models): `uniter.*` or `bert.*` backbone.
    Uniter,
    /// The BUTD Faster R-CNN region-feature extractor (`backbone.*`, `proposal_generator.*`,
    /// `roi_heads.*`): `pytorch_model.bin` of unc-nlp/frcnn-vg-finetuned.
    Detector,
}

impl Layout {
    /// Human description for `inspect`.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::FineTuneWrapper => {
                "fine-tuned bi-encoder wrapper (model_dict; optimizer/scheduler state ignored), like coco-ft.pt / flickr-ft.pt"
            }
            Layout::Pretraining => {
                "pre-training state_dict (bert.-prefixed bi-encoder + MLM/MRFR/MRC/ITM heads), like LightningDot.pt"
            }
            Layout::BiEncoderStateDict => "plain bi-encoder state_dict (img_model.*, txt_model.*)",
            Layout::Uniter => {
                "UNITER checkpoint (image-tower initialisation or re-ranker), like uniter-base.pt"
            }
            Layout::Detector => {
                "BUTD Faster R-CNN region-feature extractor, like pytorch_model.bin of unc-nlp/frcnn-vg-finetuned"
            }
        }
    }
}

/// One tensor of the file, read lazily.
#[derive(Clone)]
pub struct CheckpointTensor {
    pub(crate) snapshot: TensorSnapshot,
}

impl std::fmt::Debug for CheckpointTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {:?}", self.dtype(), self.shape())
    }
}

impl CheckpointTensor {
    /// Shape as stored (PyTorch orientation: Linear weights are `[out, in]`).
    pub fn shape(&self) -> Vec<usize> {
        self.snapshot.shape.to_vec()
    }

    /// Stored element type (F16 for apex-O2 checkpoints).
    pub fn dtype(&self) -> DType {
        self.snapshot.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// Values widened to f32 (fp16/bf16/f64 are converted exactly as `tensor.float()` does).
    pub fn to_f32(&self, file: &Path, key: &str) -> Result<TensorData, ConvertError> {
        let err = |reason: String| ConvertError::TensorData {
            path: file.display().to_string(),
            key: key.to_string(),
            reason,
        };
        // A truncated storage can make the lazy reader panic deep inside burn-store; turn that
        // into an error naming the tensor instead of aborting the process.
        let snap = self.snapshot.clone();
        let data = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| snap.to_data()))
            .map_err(|_| err("reader panicked".into()))?
            .map_err(|e| err(format!("{e:?}")))?;
        if data.num_elements() != self.numel() {
            return Err(err(format!(
                "{} values for shape {:?}",
                data.num_elements(),
                self.shape()
            )));
        }
        Ok(match data.dtype {
            DType::F32 => data,
            _ => data.convert::<f32>(),
        })
    }
}

/// A loaded torch file: its tensors (keys as in the file, nested dicts joined with `.`), the
/// container format and the detected layout.
#[derive(Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: TorchFormat,
    pub layout: Layout,
    /// Every tensor of the file, by its flattened key.
    pub tensors: BTreeMap<String, CheckpointTensor>,
}

impl Checkpoint {
    /// Opens a `.pt`/`.bin` file and detects its layout. Never panics on bad input.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ConvertError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let mut head = [0u8; 8];
        let n = std::fs::File::open(&path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|source| ConvertError::Io {
                path: shown.clone(),
                source,
            })?;
        // A pickle starts with PROTO (0x80); a zip with "PK". Anything else cannot be torch.
        if n < 2 || !(head.starts_with(b"PK") || head[0] == 0x80) {
            return Err(ConvertError::NotTorch {
                path: shown,
                reason: "neither a torch zip archive nor a pickle stream".into(),
            });
        }
        if head.starts_with(b"PK") {
            // burn-store falls back to pickle parsing when the archive does not open, which
            // hides the real cause; name it here.
            let file = std::fs::File::open(&path).map_err(|source| ConvertError::Io {
                path: shown.clone(),
                source,
            })?;
            zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
                ConvertError::NotTorch {
                    path: shown.clone(),
                    reason: format!("zip archive is truncated or damaged ({e})"),
                }
            })?;
        }
        let reader = std::panic::catch_unwind(|| PytorchReader::new(&path))
            .map_err(|_| ConvertError::NotTorch {
                path: shown.clone(),
                reason: "the reader crashed on this file; it is probably truncated or corrupt"
                    .into(),
            })?
            .map_err(|e| ConvertError::NotTorch {
                path: shown.clone(),
                reason: one_line(&e.to_string()),
            })?;
        let format = match reader.metadata().format_type {
            FileFormat::Zip => TorchFormat::Zip,
            FileFormat::Legacy => TorchFormat::Legacy,
            _ => TorchFormat::Other,
        };
        let tensors: BTreeMap<String, CheckpointTensor> = reader
            .into_tensors()
            .into_iter()
            .map(|(k, snapshot)| (k, CheckpointTensor { snapshot }))
            .collect();
        if tensors.is_empty() {
            return Err(ConvertError::Empty { path: shown });
        }
        // burn-store fills storages it cannot read with zeros; check the bytes are all there so
        // a truncated or damaged download fails here instead of loading silently wrong weights.
        let elem = uniform_element_size(&tensors);
        verify_storages(&path, format, elem).map_err(|reason| ConvertError::NotTorch {
            path: shown.clone(),
            reason,
        })?;
        let layout = detect_layout(&tensors).ok_or_else(|| ConvertError::UnknownLayout {
            path: shown,
            sample: tensors
                .keys()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        Ok(Self {
            path,
            format,
            layout,
            tensors,
        })
    }

    /// The bi-encoder tensors under `BiEncoder.state_dict()` names (`img_model.*`, `txt_model.*`),
    /// as the reference's `load_biencoder_checkpoint` sees them, plus the keys it ignores.
    pub fn biencoder_tensors(&self) -> (BTreeMap<String, &CheckpointTensor>, Vec<String>) {
        let mut model = BTreeMap::new();
        let mut ignored = Vec::new();
        for (k, t) in &self.tensors {
            let stripped = match self.layout {
                Layout::FineTuneWrapper => k.strip_prefix("model_dict."),
                Layout::Pretraining => k.strip_prefix("bert."),
                Layout::BiEncoderStateDict => Some(k.as_str()),
                Layout::Uniter | Layout::Detector => None,
            };
            match stripped {
                Some(s) => {
                    model.insert(s.to_string(), t);
                }
                None => ignored.push(k.clone()),
            }
        }
        (model, ignored)
    }

    /// The element type most tensors are stored in.
    pub fn main_dtype(&self) -> DType {
        let mut counts: BTreeMap<String, (usize, DType)> = BTreeMap::new();
        for t in self.tensors.values() {
            let e = counts
                .entry(format!("{:?}", t.dtype()))
                .or_insert((0, t.dtype()));
            e.0 += 1;
        }
        counts
            .into_values()
            .max_by_key(|(n, _)| *n)
            .map(|(_, d)| d)
            .unwrap_or(DType::F32)
    }
}

fn detect_layout(tensors: &BTreeMap<String, CheckpointTensor>) -> Option<Layout> {
    let any = |p: &str| tensors.keys().any(|k| k.starts_with(p));
    if any("model_dict.img_model.") || any("model_dict.txt_model.") {
        Some(Layout::FineTuneWrapper)
    } else if any("bert.img_model.") || any("bert.txt_model.") {
        Some(Layout::Pretraining)
    } else if any("img_model.") || any("txt_model.") {
        Some(Layout::BiEncoderStateDict)
    } else if any("uniter.embeddings.") || any("bert.embeddings.") || any("bert.img_embeddings.") {
        Some(Layout::Uniter)
    } else if any("backbone.stem.") && any("proposal_generator.") && any("roi_heads.") {
        Some(Layout::Detector)
    } else {
        None
    }
}

fn uniform_element_size(tensors: &BTreeMap<String, CheckpointTensor>) -> Option<usize> {
    let mut sizes = tensors.values().map(|t| t.dtype().size());
    let first = sizes.next()?;
    sizes.all(|s| s == first).then_some(first)
}

/// Checks that every storage of the file is complete: zip members are read through (the zip
/// reader verifies their CRC-32); legacy files are walked storage by storage to the end.
fn verify_storages(path: &Path, format: TorchFormat, elem: Option<usize>) -> Result<(), String> {
    match format {
        TorchFormat::Zip => {
            let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
            let mut zip =
                zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).map_err(|e| e.to_string())?;
                let name = entry.name().to_string();
                std::io::copy(&mut entry, &mut std::io::sink())
                    .map_err(|e| format!("archive member {name} is damaged ({e})"))?;
            }
            Ok(())
        }
        TorchFormat::Legacy => match elem {
            Some(elem) => verify_legacy(path, elem),
            None => Ok(()),
        },
        TorchFormat::Other => Ok(()),
    }
}

/// Legacy layout: magic, protocol, sys-info and main pickles, the storage-key list, then for each
/// key an 8-byte element count followed by the raw elements.
fn verify_legacy(path: &Path, elem: usize) -> Result<(), String> {
    use burn_store::pytorch::pickle_reader::{Object, read_pickle, skip_pickle};
    use std::io::{Seek, SeekFrom};
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut r = std::io::BufReader::new(file);
    let bad = |what: &str| format!("legacy header damaged ({what})");
    for what in ["magic", "protocol", "sys info"] {
        read_pickle(&mut r).map_err(|_| bad(what))?;
    }
    skip_pickle(&mut r).map_err(|_| bad("main pickle"))?;
    let keys = match read_pickle(&mut r) {
        Ok(Object::List(keys)) => keys.len(),
        _ => return Err(bad("storage key list")),
    };
    let mut pos = r.stream_position().map_err(|e| e.to_string())?;
    let end = r.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
    for i in 0..keys {
        if pos + 8 > end {
            return Err(format!(
                "truncated: storage {i} of {keys} starts past the end of the file"
            ));
        }
        r.seek(SeekFrom::Start(pos)).map_err(|e| e.to_string())?;
        let mut n = [0u8; 8];
        r.read_exact(&mut n).map_err(|e| e.to_string())?;
        let bytes = u64::from_le_bytes(n).saturating_mul(elem as u64);
        pos = pos.saturating_add(8).saturating_add(bytes);
        if pos > end {
            return Err(format!(
                "truncated: storage {i} of {keys} needs {bytes} bytes, the file ends {} bytes early",
                pos - end
            ));
        }
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}
