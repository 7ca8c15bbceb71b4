//! The training and validation data of a pre-training run (spec §6.1): one stream per
//! `{task}_{dataset}` of the config, each a token-bucketed pass over its corpus (the
//! concatenation of the dataset's db pairs), and the task mixture that picks a stream at the
//! start of every accumulation cycle.
//!
//! Determinism: every random draw comes from a [`PyRandom`] seeded from the run seed and a
//! position — a stream's epoch order from `(seed, stream, epoch)`, a batch's masks from
//! `(seed, stream, epoch, batch)` — except the task mixture, whose generator state is saved.
//! A run resumed from [`LoaderState`] therefore draws exactly what the uninterrupted run drew.
//! (pretrain.py draws masks in DataLoader workers, so its masks cannot be replayed anyway;
//! the rules are reproduced, see `data::pretrain`.)

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::PretrainError;
use super::batch::PretrainHostBatch;
use super::config::PretrainSettings;
use crate::data::pretrain::{
    BUCKET_SIZE, PretrainBatch, PretrainDataOptions, PretrainDataset, PretrainItem, PretrainTask,
    PyRandom, PyRandomState, SIZE_MULTIPLE, TaskMixture, TaskSchedule, TokenBucketSampler,
    collate_indices,
};
use crate::data::{DataError, ImgDb, ImgDbOptions, TxtDb};

use crate::tensor_io::HostTensor;
use crate::train::data::SplitMix64;

/// A seed for `(seed, a, b, c)`.
fn derive(seed: u64, a: u64, b: u64, c: u64) -> u64 {
    SplitMix64::new(
        seed.wrapping_add(c.wrapping_mul(0xD6E8_FEB8_6659_FD93)),
        a,
        b,
    )
    .next_u64()
}

/// Opens each db once (tasks and datasets share them).
#[derive(Default)]
struct DbCache {
    txt: HashMap<PathBuf, Arc<TxtDb>>,
    img: HashMap<PathBuf, Arc<ImgDb>>,
}

impl DbCache {
    fn dataset(
        &mut self,
        txt: &std::path::Path,
        img: &std::path::Path,
        img_options: ImgDbOptions,
        options: PretrainDataOptions,
    ) -> Result<PretrainDataset, DataError> {
        let t = match self.txt.get(txt) {
            Some(t) => t.clone(),
            None => {
                let t = Arc::new(TxtDb::open(txt)?);
                self.txt.insert(txt.to_path_buf(), t.clone());
                t
            }
        };
        let i = match self.img.get(img) {
            Some(i) => i.clone(),
            None => {
                let i = Arc::new(ImgDb::open(img, img_options)?);
                self.img.insert(img.to_path_buf(), i.clone());
                i
            }
        };
        PretrainDataset::new(t, i, options)
    }
}

/// The items of one or more db pairs, indexed as one list (the reference's `ConcatDataset`).
pub struct Corpus {
    parts: Vec<PretrainDataset>,
    /// Start index of every part, plus the total.
    offsets: Vec<usize>,
}

impl Corpus {
    fn new(parts: Vec<PretrainDataset>) -> Self {
        let mut offsets = vec![0];
        for p in &parts {
            offsets.push(offsets.last().copied().unwrap_or(0) + p.len());
        }
        Self { parts, offsets }
    }

    pub fn len(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Text word pieces + regions of every item.
    fn lens(&self) -> Vec<usize> {
        self.parts
            .iter()
            .flat_map(|p| p.lens().iter().copied())
            .collect()
    }

    fn item(
        &self,
        task: PretrainTask,
        index: usize,
        rng: &mut PyRandom,
    ) -> Result<PretrainItem, DataError> {
        let part = self
            .offsets
            .partition_point(|&o| o <= index)
            .saturating_sub(1);
        let part = part.min(self.parts.len().saturating_sub(1));
        self.parts[part].item(task, index - self.offsets[part], rng)
    }

    /// Items `indices` with masks drawn from `rng`, collated.
    fn batch(
        &self,
        task: PretrainTask,
        indices: &[usize],
        rng: &mut PyRandom,
    ) -> Result<PretrainBatch, DataError> {
        collate_indices(task, indices, |i| self.item(task, i, rng))
    }
}

/// The device-ready host form of a collated batch.
pub fn host_batch(b: &PretrainBatch) -> PretrainHostBatch {
    let (rows, len, n) = (b.batch_size(), b.txt_len(), b.max_regions());
    let t = |values: &[i64], shape: Vec<usize>| HostTensor {
        shape,
        values: values.to_vec(),
    };
    let task = b.task;
    let masked = match task {
        PretrainTask::Mlm => b.masked_text_positions.clone(),
        PretrainTask::Itm => Vec::new(),
        _ => b.masked_region_positions.clone(),
    };
    let s = masked.len();
    PretrainHostBatch {
        task,
        input_ids: t(&b.txts.input_ids, vec![rows, len]),
        attention_mask: t(&b.txts.attention_mask, vec![rows, len]),
        img_feat: HostTensor {
            shape: vec![rows, n, crate::region_dims::IMG_FEAT_DIM],
            values: b.imgs.img_feat.clone(),
        },
        img_pos_feat: HostTensor {
            shape: vec![rows, n, crate::region_dims::IMG_POS_DIM],
            values: b.imgs.img_pos_feat.clone(),
        },
        img_attention_mask: t(&b.imgs.attention_mask, vec![rows, n + 1]),
        img_masks: b.img_masks.as_ref().map(|m| HostTensor {
            shape: vec![rows, n],
            values: m.iter().map(|&x| i64::from(x)).collect(),
        }),
        masked_positions: masked,
        mlm_targets: b.mlm_targets.clone(),
        feat_targets: b.feat_targets.as_ref().map(|v| HostTensor {
            shape: vec![s, crate::region_dims::IMG_FEAT_DIM],
            values: v.clone(),
        }),
        label_targets: b.label_targets.as_ref().map(|v| HostTensor {
            shape: vec![s, b.label_dim],
            values: v.clone(),
        }),
    }
}

/// Where one stream stands: its sampler epoch (0 = not started) and the next batch of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub epoch: u64,
    pub pos: usize,
}

/// What resuming needs to continue the data exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoaderState {
    pub schedule: TaskSchedule,
    pub mixture_rng: PyRandomState,
    pub streams: Vec<StreamState>,
}

/// One `{task}_{dataset}` stream.
struct TaskStream {
    name: String,
    task: PretrainTask,
    corpus: Arc<Corpus>,
    sampler: TokenBucketSampler,
    state: StreamState,
    batches: Vec<Vec<usize>>,
}

impl TaskStream {
    fn load_epoch(&mut self, seed: u64, index: usize) -> Result<(), PretrainError> {
        let mut rng = PyRandom::seed(derive(seed, 10 + index as u64, self.state.epoch, 0));
        self.batches = self.sampler.batches(&mut rng);
        if self.batches.is_empty() {
            return Err(PretrainError::Config(format!(
                "{}: the token-bucket sampler yields no batch ({} items; every bucket's last \
                 batch is dropped): lower train_batch_size or use more data",
                self.name,
                self.corpus.len()
            )));
        }
        Ok(())
    }

    fn next(&mut self, seed: u64, index: usize) -> Result<PretrainBatch, PretrainError> {
        if self.state.epoch == 0 || self.state.pos >= self.batches.len() {
            self.state = StreamState {
                epoch: self.state.epoch + 1,
                pos: 0,
            };
            self.load_epoch(seed, index)?;
        }
        let e = self.state;
        let mut rng = PyRandom::seed(derive(seed, 10 + index as u64, e.epoch, 1 + e.pos as u64));
        let batch = self
            .corpus
            .batch(self.task, &self.batches[e.pos], &mut rng)?;
        self.state.pos += 1;
        Ok(batch)
    }
}

/// All training streams and the task mixture.
pub struct TrainData {
    seed: u64,
    streams: Vec<TaskStream>,
    mixture: TaskMixture,
    schedule: TaskSchedule,
    mixture_rng: PyRandom,
    by_name: HashMap<String, usize>,
}

/// One micro-batch: which stream it came from and the batch.
pub struct MicroBatch {
    pub stream: usize,
    pub batch: PretrainHostBatch,
}

impl TrainData {
    /// Opens every training db and builds the streams (fails on an unusable dataset).
    pub fn open(s: &PretrainSettings) -> Result<Self, PretrainError> {
        let mut cache = DbCache::default();
        let options = PretrainDataOptions {
            max_txt_len: s.max_txt_len,
            mrm_prob: s.mrm_prob,
        };
        let corpora = s
            .train
            .iter()
            .map(|d| {
                let parts = d
                    .dbs
                    .iter()
                    .map(|p| cache.dataset(&p.txt_db, &p.img_db, s.img_db, options))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Arc::new(Corpus::new(parts)))
            })
            .collect::<Result<Vec<_>, DataError>>()?;
        let mut streams = Vec::new();
        let mut ratios = Vec::new();
        for (name, d, task, ratio) in s.task_streams() {
            let corpus = corpora[d].clone();
            let sampler = TokenBucketSampler::new(
                corpus.lens(),
                BUCKET_SIZE,
                s.train_batch_size,
                SIZE_MULTIPLE,
                true,
            )
            .map_err(|e| {
                PretrainError::Config(format!(
                    "{name}: train_batch_size {}: {e}",
                    s.train_batch_size
                ))
            })?;
            ratios.push((name.clone(), ratio));
            streams.push(TaskStream {
                name,
                task,
                corpus,
                sampler,
                state: StreamState::default(),
                batches: Vec::new(),
            });
        }
        let mixture = TaskMixture::new(&ratios)?;
        let by_name = streams
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        Ok(Self {
            seed: s.seed,
            streams,
            mixture,
            schedule: TaskSchedule::new(s.gradient_accumulation_steps)?,
            // MetaLoader's `random.seed(opts.seed)` stream.
            mixture_rng: PyRandom::seed(s.seed),
            by_name,
        })
    }

    /// `{task}_{dataset}` of every stream.
    pub fn stream_names(&self) -> Vec<String> {
        self.streams.iter().map(|s| s.name.clone()).collect()
    }

    /// The model task of stream `i`.
    pub fn stream_task(&self, i: usize) -> PretrainTask {
        self.streams[i].task
    }

    /// Items per stream's corpus (for logs).
    pub fn corpus_sizes(&self) -> Vec<usize> {
        self.streams.iter().map(|s| s.corpus.len()).collect()
    }

    pub fn state(&self) -> LoaderState {
        LoaderState {
            schedule: self.schedule.clone(),
            mixture_rng: self.mixture_rng.state(),
            streams: self.streams.iter().map(|s| s.state).collect(),
        }
    }

    /// Continues from a saved state (the same settings must have built `self`).
    pub fn restore(&mut self, st: &LoaderState) -> Result<(), PretrainError> {
        if st.streams.len() != self.streams.len() {
            return Err(PretrainError::Model(format!(
                "saved data state has {} task streams, the config {}",
                st.streams.len(),
                self.streams.len()
            )));
        }
        self.schedule = st.schedule.clone();
        self.mixture_rng = PyRandom::from_state(&st.mixture_rng)?;
        let seed = self.seed;
        for (i, (s, saved)) in self.streams.iter_mut().zip(&st.streams).enumerate() {
            s.state = *saved;
            s.batches.clear();
            if saved.epoch > 0 {
                s.load_epoch(seed, i)?;
            }
        }
        Ok(())
    }

    /// The next micro-batch: the task of the current accumulation cycle, its stream's next
    /// batch.
    pub fn next_batch(&mut self) -> Result<MicroBatch, PretrainError> {
        let name = self.schedule.next(&self.mixture, &mut self.mixture_rng);
        let stream = self.by_name.get(name).copied().unwrap_or(0);
        let batch = self.streams[stream].next(self.seed, stream)?;
        Ok(MicroBatch {
            stream,
            batch: host_batch(&batch),
        })
    }
}

/// A validation corpus with its fixed batches per task.
pub struct ValSet {
    pub name: String,
    corpus: Corpus,
    /// `(task, batches)`.
    tasks: Vec<(PretrainTask, Vec<Vec<usize>>)>,
    seed: u64,
}

impl ValSet {
    /// Opens every validation db; batches and masks are fixed for the run (derived from the
    /// seed), so checkpoints are compared on the same predictions.
    pub fn open_all(s: &PretrainSettings) -> Result<Vec<ValSet>, PretrainError> {
        let mut cache = DbCache::default();
        let options = PretrainDataOptions {
            max_txt_len: None,
            mrm_prob: s.mrm_prob,
        };
        let mut out = Vec::new();
        for (v, d) in s.val.iter().enumerate() {
            let ds = cache.dataset(&d.db.txt_db, &d.db.img_db, s.img_db, options)?;
            let corpus = Corpus::new(vec![ds]);
            let mut tasks = Vec::new();
            for (t, &task) in d.tasks.iter().enumerate() {
                let sampler = TokenBucketSampler::new(
                    corpus.lens(),
                    BUCKET_SIZE,
                    s.val_batch_size,
                    SIZE_MULTIPLE,
                    false,
                )
                .map_err(|e| {
                    PretrainError::Config(format!(
                        "val {}: val_batch_size {}: {e}",
                        d.name, s.val_batch_size
                    ))
                })?;
                let mut rng = PyRandom::seed(derive(s.seed, 1000 + v as u64, t as u64, 0));
                tasks.push((task, sampler.batches(&mut rng)));
            }
            out.push(ValSet {
                name: d.name.clone(),
                corpus,
                tasks,
                seed: s.seed,
            });
        }
        Ok(out)
    }

    /// Every validation batch of this set, task by task.
    pub fn batches(
        &self,
    ) -> impl Iterator<Item = Result<(PretrainTask, PretrainHostBatch), PretrainError>> + '_ {
        self.tasks
            .iter()
            .enumerate()
            .flat_map(move |(t, (task, batches))| {
                batches.iter().enumerate().map(move |(b, idx)| {
                    let mut rng = PyRandom::seed(derive(self.seed, 2000 + t as u64, b as u64, 7));
                    let batch = self.corpus.batch(*task, idx, &mut rng)?;
                    Ok((*task, host_batch(&batch)))
                })
            })
    }
}
