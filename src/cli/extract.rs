//! `lightningdot extract --detector DIR --images DIR|LIST.txt --out IMG_DB`: BUTD region
//! features of a folder of images, written as a UNITER img_db (spec §4.1).
//! Records: [`lightningdot::regions::uniter_record`]. The record key of `photos/cat.jpg` is
//! `cat.npz`, as UNITER names a feature file by its image.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::Backend;
use clap::Args;
use lightningdot::conversion::{DetectorSource, LoadOptions};
use lightningdot::data::img_db::{ImgDbOptions, ImgDump};
use lightningdot::data::writer::{ImgDbAppender, ImgDbEncoding};
use lightningdot::device::{BackendTask, DeviceSpec, run_on};
use lightningdot::model::detector::load_image;
use lightningdot::progress::bar;
use lightningdot::regions::{box_count, fix_detection_count, uniter_record};

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// The detector: a directory with pytorch_model.bin + config.yaml (unc-nlp/frcnn-vg-finetuned),
    /// or the .bin with config.yaml beside it.
    #[arg(long)]
    pub detector: PathBuf,
    /// A directory of images (.jpg, .jpeg, .png; not recursive) or a text file with one image
    /// path per line (relative paths are relative to the file's directory).
    #[arg(long)]
    pub images: PathBuf,
    /// The image db directory to write (created; an existing one is continued).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub selection: BoxSelectionArgs,
    /// Images per committed LMDB transaction (a killed run resumes after the last one).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

/// UNITER's box selection of an img_db (`conf_th` / `min_bb` / `max_bb`, or a fixed `num_bb`).
#[derive(Args, Debug, Clone)]
pub struct BoxSelectionArgs {
    /// UNITER's confidence threshold for the per-image box count (nbb json).
    #[arg(long, default_value_t = 0.2)]
    pub conf_th: f32,
    /// Lower clamp of the box count.
    #[arg(long, default_value_t = 10)]
    pub min_bb: usize,
    /// Upper clamp of the box count.
    #[arg(long, default_value_t = 100)]
    pub max_bb: usize,
    /// A fixed number of regions per image instead (`feat_numbb{N}`, read with `conf_th: -1,
    /// num_bb: N`); `extract` sets the detector's min / max detections to N.
    #[arg(long, conflicts_with_all = ["conf_th", "min_bb", "max_bb"])]
    pub num_bb: Option<usize>,
    /// Write the `_compressed` (npz) records instead of msgpack.
    #[arg(long)]
    pub compressed: bool,
}

impl BoxSelectionArgs {
    /// The img_db options these flags select.
    pub fn options(&self) -> Result<ImgDbOptions> {
        if self.num_bb == Some(0) {
            bail!("--num-bb must be at least 1");
        }
        if self.min_bb > self.max_bb {
            bail!(
                "--min-bb {} is larger than --max-bb {}",
                self.min_bb,
                self.max_bb
            );
        }
        Ok(match self.num_bb {
            Some(n) => ImgDbOptions {
                conf_th: -1.0,
                num_bb: n,
                compressed: self.compressed,
                ..Default::default()
            },
            None => ImgDbOptions {
                conf_th: self.conf_th,
                min_bb: self.min_bb,
                max_bb: self.max_bb,
                compressed: self.compressed,
                ..Default::default()
            },
        })
    }
}

/// An img_db being written: the LMDB (committed in batches), the nbb table and the list of
/// skipped inputs.
pub struct ImgDbSink {
    out: PathBuf,
    options: ImgDbOptions,
    db: ImgDbAppender,
    nbb_path: Option<PathBuf>,
    nbb: BTreeMap<String, usize>,
    skipped: Vec<Skipped>,
}

impl ImgDbSink {
    /// Opens (creating, or continuing) the img_db in `out`.
    pub fn open(out: &Path, options: ImgDbOptions) -> Result<Self> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let db = ImgDbAppender::open(&out.join(options.lmdb_name()))?;
        let nbb_path = options.nbb_name().map(|n| out.join(n));
        let nbb = match &nbb_path {
            Some(p) if p.is_file() => serde_json::from_slice(&std::fs::read(p)?)
                .with_context(|| format!("{}: not an nbb table", p.display()))?,
            _ => BTreeMap::new(),
        };
        Ok(Self {
            out: out.to_path_buf(),
            options,
            db,
            nbb_path,
            nbb,
            skipped: Vec::new(),
        })
    }

    /// Record names already in the db.
    pub fn names(&self) -> &[String] {
        self.db.names()
    }

    /// Reports and lists an input that is left out.
    pub fn skip(&mut self, path: &Path, reason: &str) {
        tracing::warn!("skipping {}: {reason}", path.display());
        self.skipped.push(Skipped {
            image: path.display().to_string(),
            reason: reason.to_string(),
        });
    }

    /// Commits `(name, record, nbb)` rows in one transaction.
    pub fn commit(&mut self, records: Vec<(String, ImgDump, usize)>) -> Result<()> {
        for (name, _, nbb) in &records {
            self.nbb.insert(name.clone(), *nbb);
        }
        // The table first: it may name records a crash keeps out of the db (they are redone
        // with the same values), never the reverse.
        if let Some(p) = &self.nbb_path {
            lightningdot::fsio::write_json(p, &self.nbb)?;
        }
        let records: Vec<(String, ImgDump)> = records.into_iter().map(|(n, d, _)| (n, d)).collect();
        let encoding = if self.options.compressed {
            ImgDbEncoding::Compressed
        } else {
            ImgDbEncoding::Msgpack
        };
        self.db.commit(&records, encoding)?;
        Ok(())
    }

    /// Final nbb table (only committed records) and `skipped.json`; returns the record and
    /// skip counts.
    pub fn finish(mut self) -> Result<(usize, usize)> {
        if let Some(p) = &self.nbb_path {
            let names: HashSet<&str> = self.db.names().iter().map(String::as_str).collect();
            self.nbb.retain(|k, _| names.contains(k.as_str()));
            lightningdot::fsio::write_json(p, &self.nbb)?;
        }
        lightningdot::fsio::write_json(&self.out.join("skipped.json"), &self.skipped)?;
        Ok((self.db.names().len(), self.skipped.len()))
    }
}

/// The images to process: `(record name, path)`.
fn list_images(images: &Path) -> Result<Vec<(String, PathBuf)>> {
    let paths: Vec<PathBuf> = if images.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(images)
            .with_context(|| format!("cannot list {}", images.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str())
                    })
            })
            .collect();
        v.sort();
        v
    } else {
        let text = std::fs::read_to_string(images)
            .with_context(|| format!("cannot read image list {}", images.display()))?;
        let base = images.parent().unwrap_or(Path::new("."));
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| base.join(l))
            .collect()
    };
    if paths.is_empty() {
        bail!("no images (.jpg, .jpeg, .png) in {}", images.display());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("{stem}.npz");
        if !seen.insert(name.clone()) {
            bail!(
                "two images map to the record name {name} (e.g. {}): record names are file stems",
                p.display()
            );
        }
        out.push((name, p));
    }
    Ok(out)
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    image: String,
    reason: String,
}

struct ExtractTask<'a> {
    args: &'a ExtractArgs,
    images: Vec<(String, PathBuf)>,
}

impl BackendTask for ExtractTask<'_> {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let a = self.args;
        let source = DetectorSource {
            path: a.detector.clone(),
            config: None,
            options: LoadOptions::default(),
        };
        let (mut det, _) = source.load::<B>(&device)?;
        let options = a.selection.options()?;
        fix_detection_count(&mut det.config, &options);
        let mut sink = ImgDbSink::open(&a.out, options)?;
        let done: HashSet<&str> = sink.names().iter().map(String::as_str).collect();
        let todo: Vec<(String, PathBuf)> = self
            .images
            .iter()
            .filter(|(n, _)| !done.contains(n.as_str()))
            .cloned()
            .collect();
        if todo.len() < self.images.len() {
            tracing::info!(
                "{}: {} of {} images already extracted, continuing",
                a.out.display(),
                self.images.len() - todo.len(),
                self.images.len()
            );
        }
        let started = Instant::now();
        let pb = bar(todo.len(), "extract");
        let mut written = 0usize;
        for chunk in todo.chunks(a.batch_size.max(1)) {
            let mut records = Vec::with_capacity(chunk.len());
            for (name, path) in chunk {
                let result = load_image(path, &det.config)
                    .map_err(anyhow::Error::from)
                    .and_then(|img| det.detect(&img).map_err(anyhow::Error::from));
                match result {
                    Ok(d) => {
                        let nbb = box_count(&d, &options);
                        records.push((name.clone(), uniter_record(&d), nbb));
                    }
                    Err(e) => sink.skip(path, &format!("{e:#}")),
                }
                pb.inc(1);
            }
            written += records.len();
            sink.commit(records)?;
        }
        pb.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        let (total, skipped) = sink.finish()?;
        println!(
            "extracted {written} images ({:.2} images/s), skipped {skipped} (skipped.json), {total} records in {}",
            written as f64 / secs.max(1e-9),
            a.out.join(options.lmdb_name()).display()
        );
        Ok(())
    }
}

pub fn run(args: ExtractArgs, device: DeviceSpec) -> Result<()> {
    args.selection.options()?;
    let images = list_images(&args.images)?;
    run_on(
        device,
        ExtractTask {
            args: &args,
            images,
        },
    )?
}
