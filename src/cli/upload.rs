//! `lightningdot index … --to milvus://HOST:PORT/COLLECTION`: encode the dbs and stream the
//! vectors into Milvus in batches, or (`--from INDEX_DIR`) upload an index directory without
//! re-encoding. Both resume: only rows the collection lacks are encoded and sent.

use super::index::IndexArgs;

#[cfg(not(feature = "milvus"))]
pub fn run(
    _args: &IndexArgs,
    url: &lightningdot::retrieval::MilvusUrl,
    _device: lightningdot::device::DeviceSpec,
) -> anyhow::Result<()> {
    anyhow::bail!("{url}: this build has no Milvus support (rebuild with `--features milvus`)")
}

#[cfg(feature = "milvus")]
pub use with_milvus::run;

#[cfg(feature = "milvus")]
mod with_milvus {
    use std::collections::HashMap;
    use std::time::Instant;

    use anyhow::{Context, Result};
    use burn::prelude::Backend;
    use lightningdot::data::{ImgDb, TxtDb};
    use lightningdot::device::{BackendTask, DeviceSpec, run_on};
    use lightningdot::encode::{Progress, encode_image_rows, encode_text_rows};
    use lightningdot::progress::bar;
    use lightningdot::retrieval::build::read_captions;
    use lightningdot::retrieval::format::{FORMAT, ImageSection, IndexMeta, TextSection, VERSION};
    use lightningdot::retrieval::store::{
        ImageRow, StoredCaption, TextRow, UploadOptions, UploadReport, Uploader, upload_index,
    };
    use lightningdot::retrieval::{MilvusUrl, StoredIndex, VectorDtype, model_info};

    use super::IndexArgs;
    use crate::cli::store::connect_options;

    /// Seconds each Milvus request may take before it is retried.
    const TIMEOUT_S: u64 = 60;

    fn upload_options(args: &IndexArgs) -> UploadOptions {
        UploadOptions {
            index: args.milvus.index(),
            batch_rows: args.milvus.upload_batch.max(1),
            ..Default::default()
        }
    }

    fn print_report(url: &MilvusUrl, r: &UploadReport, seconds: f64) {
        let rate = |n: usize| {
            if r.insert_seconds > 0.0 {
                n as f64 / r.insert_seconds
            } else {
                0.0
            }
        };
        println!(
            "uploaded {} images{} ({:.0} rows/s inserting; {} images{} were already there), \
             flushed, indexed and loaded in {:.1}s ({:.1}s total) -> {url}",
            r.images_sent,
            if r.texts_sent + r.texts_present > 0 {
                format!(" + {} captions", r.texts_sent)
            } else {
                String::new()
            },
            rate(r.images_sent + r.texts_sent),
            r.images_present,
            if r.texts_sent + r.texts_present > 0 {
                format!(" + {} captions", r.texts_present)
            } else {
                String::new()
            },
            r.finish_seconds,
            seconds,
        );
    }

    pub fn run(args: &IndexArgs, url: &MilvusUrl, device: DeviceSpec) -> Result<()> {
        let started = Instant::now();
        let connect = connect_options(TIMEOUT_S);
        if let Some(dir) = &args.from {
            let index = StoredIndex::open(dir)?;
            let bars = std::cell::RefCell::new(HashMap::new());
            let report = upload_index(
                &index,
                url,
                upload_options(args),
                &connect,
                &|what, done, total| {
                    let mut bars = bars.borrow_mut();
                    let pb = bars
                        .entry(what.to_string())
                        .or_insert_with(|| bar(total, what));
                    pb.set_position(done as u64);
                    if done >= total {
                        pb.finish_and_clear();
                    }
                },
            )?;
            print_report(url, &report, started.elapsed().as_secs_f64());
            return Ok(());
        }
        let Some(img_db) = &args.img_db else {
            anyhow::bail!("give --img-db DIR (to encode) or --from INDEX_DIR (to upload an index)");
        };
        let img_db = ImgDb::open(img_db, args.img_db_options())?;
        let txt_db = args.txt_db.as_ref().map(TxtDb::open).transpose()?;
        if let Some(db) = &txt_db {
            super::super::index::check_vocab(args, db)?;
        }
        let report = run_on(
            device,
            EncodeUpload {
                args,
                url,
                img_db,
                txt_db,
                connect,
            },
        )??;
        print_report(url, &report, started.elapsed().as_secs_f64());
        Ok(())
    }

    struct EncodeUpload<'a> {
        args: &'a IndexArgs,
        url: &'a MilvusUrl,
        img_db: ImgDb,
        txt_db: Option<TxtDb>,
        connect: lightningdot::retrieval::store::ConnectOptions,
    }

    impl BackendTask for EncodeUpload<'_> {
        type Output = Result<UploadReport>;

        fn run<B: Backend>(self, device: B::Device) -> Result<UploadReport> {
            let a = self.args;
            let (model, cfg, _) = a
                .model
                .source()
                .load::<B>(&device)
                .with_context(|| format!("loading {}", a.model.checkpoint.display()))?;
            let dim = if cfg.project_dim > 0 {
                cfg.project_dim
            } else {
                cfg.txt.hidden_size
            };
            let names = self.img_db.names();
            let captions = self
                .txt_db
                .as_ref()
                .map(|db| read_captions(db, &self.img_db))
                .transpose()?;
            // What build_index records, less the id lists (the rows carry them).
            let meta = IndexMeta {
                format: FORMAT.into(),
                version: VERSION,
                dim,
                dtype: VectorDtype::F32,
                model: model_info(&a.model.checkpoint, &cfg),
                images: ImageSection {
                    ids: Vec::new(),
                    img_db: self.img_db.dir().display().to_string(),
                    selection: Some(*self.img_db.options()),
                    captions: None,
                },
                texts: self.txt_db.as_ref().map(|db| TextSection {
                    txt_db: db.dir().display().to_string(),
                    ..Default::default()
                }),
                ann: None,
                written_by: format!("lightningdot {}", env!("CARGO_PKG_VERSION")),
            };
            let n_texts = captions.as_ref().map_or(0, |c| c.ids.len());
            let mut up = Uploader::start(
                self.url,
                &meta,
                dim,
                (names.len(), n_texts),
                captions.is_some(),
                upload_options(a),
                &self.connect,
            )?;
            let batch = a.batch_size.max(1);
            // Each image's ground-truth captions with their text, as the directory keeps them.
            let caption_rows: HashMap<&str, usize> = captions
                .iter()
                .flat_map(|c| c.ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)))
                .collect();
            let image_captions = |name: &str| -> Vec<StoredCaption> {
                let (Some(db), Some(c)) = (&self.txt_db, &captions) else {
                    return Vec::new();
                };
                db.txts_of_img(name)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|id| {
                        caption_rows.get(id.as_str()).map(|&i| StoredCaption {
                            id: id.clone(),
                            text: c.raw[i].clone(),
                        })
                    })
                    .collect()
            };
            let missing: Vec<usize> = (0..names.len()).filter(|&r| up.image_missing(r)).collect();
            encode_image_rows(
                &model,
                &self.img_db,
                names,
                &missing,
                batch,
                Progress::Bar("images"),
                &device,
                &mut |rows: &[usize],
                      v: &[f32]|
                 -> Result<(), lightningdot::retrieval::RetrievalError> {
                    let d = v.len() / rows.len().max(1);
                    let batch: Vec<ImageRow> = rows
                        .iter()
                        .zip(v.chunks(d.max(1)))
                        .map(|(&r, vector)| ImageRow {
                            row: r,
                            id: names[r].clone(),
                            captions: image_captions(&names[r]),
                            vector: vector.to_vec(),
                        })
                        .collect();
                    up.send_images(batch).map(|_| ())
                },
            )?;
            if let Some(c) = &captions {
                let missing: Vec<usize> =
                    (0..c.ids.len()).filter(|&r| up.text_missing(r)).collect();
                let tokens: Vec<&[u32]> = c.tokens.iter().map(Vec::as_slice).collect();
                encode_text_rows(
                    &model,
                    &tokens,
                    &missing,
                    batch,
                    Progress::Bar("captions"),
                    &device,
                    &mut |rows: &[usize], v: &[f32]| -> Result<(), lightningdot::retrieval::RetrievalError> {
                        let d = v.len() / rows.len().max(1);
                        let batch: Vec<TextRow> = rows
                            .iter()
                            .zip(v.chunks(d.max(1)))
                            .map(|(&r, vector)| TextRow {
                                row: r,
                                id: c.ids[r].clone(),
                                image: c.image[r].clone(),
                                text: c.raw[r].clone(),
                                vector: vector.to_vec(),
                            })
                            .collect();
                        up.send_texts(batch).map(|_| ())
                    },
                )?;
            }
            Ok(up.finish(captions.is_some())?)
        }
    }
}
