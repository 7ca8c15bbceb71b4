//! `lightningdot prepare captions`: a UNITER txt_db from a user's caption file, as the
//! reference's `uniter_model/prepro.py --task itm` writes it (spec §4.2).
//!
//! Input: the Karpathy `dataset_*.json` form (a list of images with `filename` and
//! `sentences[{raw, sentid, ...}]`) or JSON lines `{"image": ..., "caption": ..., "id": ...}`.
//! Output directory: the LMDB (key = caption id, value = lz4 frame of the msgpack of the
//! sentence with `toked_caption`, `input_ids`, `img_fname` added), `id2len.json`,
//! `txt2img.json`, `img2txts.json` (dataset order) and `meta.json` (token ids, `v_range`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lightningdot::data::Tokenizer;
use lightningdot::data::img_db::{FloatDtype, ImgDbOptions, ImgDump};
use lightningdot::data::writer::{encode_txt_value, write_lmdb};
use lightningdot::fsio::write_dir_atomically;

use super::extract::{BoxSelectionArgs, ImgDbSink};
use rmpv::Value;
use serde_json::Value as Json;

#[derive(Args, Debug)]
pub struct PrepareArgs {
    #[command(subcommand)]
    pub what: PrepareCommand,
}

#[derive(Subcommand, Debug)]
pub enum PrepareCommand {
    /// Captions → txt_db (Karpathy json or JSON lines).
    Captions(CaptionArgs),
    /// Per-image `.npz` region features from any BUTD extractor → img_db (UNITER's
    /// `convert_imgdir.py`).
    Features(FeatureArgs),
}

#[derive(Args, Debug)]
pub struct FeatureArgs {
    /// Directory of `<image>.npz` files (`features`, `norm_bb`, `conf`, `soft_labels`).
    #[arg(long)]
    pub npz: PathBuf,
    /// The image db directory to write (its LMDB is continued if it exists).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub selection: BoxSelectionArgs,
}

#[derive(Args, Debug)]
pub struct CaptionArgs {
    /// Karpathy `dataset_*.json` or JSON lines `{"image": ..., "caption": ...}`. As in
    /// prepro.py, a path naming `coco` or `flickr` gives UNITER's feature names
    /// (`flickr30k_000000001002.npz`); any other file gives `<image stem>.npz`, the names
    /// `extract` writes.
    #[arg(long)]
    pub annotations: PathBuf,
    /// BERT vocabulary: a vocab.txt / tokenizer.json or a directory holding one (cased).
    #[arg(long)]
    pub vocab: PathBuf,
    /// The txt_db directory to create.
    #[arg(long)]
    pub out: PathBuf,
}

/// How image file names become feature names (`img_fname`).
#[derive(Debug, Clone, Copy)]
enum Naming {
    Coco(&'static str),
    Flickr,
    Stem,
}

impl Naming {
    /// prepro.py's rule: the annotation path decides.
    fn for_path(path: &Path) -> Self {
        let p = path.display().to_string().to_lowercase();
        if p.contains("coco") {
            if p.contains("train") {
                Naming::Coco("train2014")
            } else {
                Naming::Coco("val2014")
            }
        } else if p.contains("flickr") {
            Naming::Flickr
        } else {
            Naming::Stem
        }
    }

    /// `(image_id, img_fname)` of an image file name.
    fn name(self, filename: &str) -> Result<(Option<i64>, String)> {
        let stem = filename.split(".jpg").next().unwrap_or(filename);
        if let Naming::Stem = self {
            let stem = Path::new(filename)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok((None, format!("{stem}.npz")));
        }
        let digits = if stem.chars().any(|c| c.is_ascii_alphabetic()) {
            stem.rsplit('_').next().unwrap_or(stem)
        } else {
            stem
        };
        let id: i64 = digits
            .parse()
            .with_context(|| format!("image {filename:?} has no numeric id"))?;
        let fname = match self {
            Naming::Coco(split) => format!("coco_{split}_{id:012}.npz"),
            _ => format!("flickr30k_{id:012}.npz"),
        };
        Ok((Some(id), fname))
    }
}

fn to_msgpack(v: &Json) -> Value {
    match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (_, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => Value::Array(a.iter().map(to_msgpack).collect()),
        Json::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::from(k.as_str()), to_msgpack(v)))
                .collect(),
        ),
    }
}

/// prepro.py's `bert_tokenize`: each whitespace word through WordPiece; the word's first piece,
/// then `@@<piece>` for the others (reconstructable tokens).
fn bert_tokenize(tok: &Tokenizer, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
    if text.contains("@@") {
        bail!("caption {text:?} contains '@@', the continuation marker of toked_caption");
    }
    let mut ids = Vec::new();
    let mut words = Vec::new();
    for word in text.split_whitespace() {
        let pieces = tok.encode_words(word)?;
        for (i, &id) in pieces.iter().enumerate() {
            let piece = tok.id_to_token(id).unwrap_or_default();
            words.push(if i == 0 { piece } else { format!("@@{piece}") });
        }
        ids.extend(pieces);
    }
    Ok((ids, words))
}

/// One caption: its id, image feature name and the record fields.
struct Caption {
    id: String,
    img_fname: String,
    len: usize,
    value: Value,
}

fn read_captions(args: &CaptionArgs, tok: &Tokenizer) -> Result<Vec<Caption>> {
    let text = std::fs::read_to_string(&args.annotations)
        .with_context(|| format!("cannot read {}", args.annotations.display()))?;
    let naming = Naming::for_path(&args.annotations);
    // (sentence fields, image file name, caption id)
    let mut items: Vec<(serde_json::Map<String, Json>, String, String)> = Vec::new();
    if text.trim_start().starts_with('[') {
        let data: Vec<Json> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a Karpathy annotation list",
                args.annotations.display()
            )
        })?;
        for img in data {
            let filename = img["filename"]
                .as_str()
                .context("an image entry has no \"filename\"")?
                .to_string();
            for s in img["sentences"]
                .as_array()
                .context("an image entry has no \"sentences\"")?
            {
                let s = s
                    .as_object()
                    .context("a sentence is not an object")?
                    .clone();
                let id = match &s.get("sentid") {
                    Some(Json::Number(n)) => n.to_string(),
                    Some(Json::String(v)) => v.clone(),
                    _ => bail!("a sentence of {filename} has no \"sentid\""),
                };
                items.push((s, filename.clone(), id));
            }
        }
    } else {
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Map<String, Json> =
                serde_json::from_str(line).with_context(|| {
                    format!(
                        "{} line {}: not a JSON object",
                        args.annotations.display(),
                        i + 1
                    )
                })?;
            let image = v
                .get("image")
                .and_then(Json::as_str)
                .with_context(|| format!("line {}: no \"image\"", i + 1))?
                .to_string();
            let caption = v
                .get("caption")
                .and_then(Json::as_str)
                .with_context(|| format!("line {}: no \"caption\"", i + 1))?
                .to_string();
            let id = match v.get("id") {
                Some(Json::Number(n)) => n.to_string(),
                Some(Json::String(s)) => s.clone(),
                _ => i.to_string(),
            };
            let mut s = v.clone();
            s.insert("raw".into(), Json::String(caption));
            items.push((s, image, id));
        }
    }
    let mut out = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::new();
    for (mut s, filename, id) in items {
        if !seen.insert(id.clone()) {
            bail!("caption id {id} appears twice");
        }
        let (image_id, img_fname) = naming.name(&filename)?;
        let raw = s
            .get("raw")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        let (input_ids, toked) = bert_tokenize(tok, &raw)?;
        if let Some(image_id) = image_id {
            s.insert("image_id".into(), Json::from(image_id));
        }
        s.insert("toked_caption".into(), Json::from(toked));
        s.insert("input_ids".into(), Json::from(input_ids.clone()));
        s.insert("img_fname".into(), Json::from(img_fname.clone()));
        out.push(Caption {
            id,
            img_fname,
            len: input_ids.len(),
            value: to_msgpack(&Json::Object(s)),
        });
    }
    if out.is_empty() {
        bail!("{}: no captions", args.annotations.display());
    }
    Ok(out)
}

/// `json.dump` of an ordered mapping (Python's default separators).
fn py_json_object<'a>(entries: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let body: Vec<String> = entries
        .into_iter()
        .map(|(k, v)| format!("{}: {v}", Json::from(k)))
        .collect();
    format!("{{{}}}", body.join(", "))
}

#[derive(serde::Serialize)]
struct Meta {
    annotations: Vec<String>,
    output: String,
    task: &'static str,
    bert: String,
    #[serde(rename = "UNK")]
    unk: u32,
    #[serde(rename = "CLS")]
    cls: u32,
    #[serde(rename = "SEP")]
    sep: u32,
    #[serde(rename = "MASK")]
    mask: u32,
    v_range: [usize; 2],
}

fn prepare_captions(args: &CaptionArgs) -> Result<()> {
    let tok = Tokenizer::from_path(&args.vocab)?;
    let id = |t: &str| {
        tok.token_to_id(t)
            .with_context(|| format!("{}: vocabulary has no {t}", args.vocab.display()))
    };
    let meta = Meta {
        annotations: vec![args.annotations.display().to_string()],
        output: args.out.display().to_string(),
        task: "itm",
        bert: args.vocab.display().to_string(),
        unk: id("[UNK]")?,
        cls: tok.cls_id(),
        sep: tok.sep_id(),
        mask: id("[MASK]")?,
        v_range: [id("!")? as usize, tok.vocab_size()],
    };
    let captions = read_captions(args, &tok)?;
    let mut entries = Vec::with_capacity(captions.len());
    for c in &captions {
        entries.push((
            c.id.clone().into_bytes(),
            encode_txt_value(&c.value, &c.id)?,
        ));
    }
    let id2len = py_json_object(captions.iter().map(|c| (c.id.as_str(), c.len.to_string())));
    let txt2img = py_json_object(
        captions
            .iter()
            .map(|c| (c.id.as_str(), Json::from(c.img_fname.as_str()).to_string())),
    );
    let mut img2txts: Vec<(&str, Vec<&str>)> = Vec::new();
    for c in &captions {
        match img2txts.iter_mut().find(|(i, _)| *i == c.img_fname) {
            Some((_, ids)) => ids.push(&c.id),
            None => img2txts.push((&c.img_fname, vec![&c.id])),
        }
    }
    let img2txts = py_json_object(img2txts.iter().map(|(img, ids)| {
        let ids: Vec<String> = ids.iter().map(|i| Json::from(*i).to_string()).collect();
        (*img, format!("[{}]", ids.join(", ")))
    }));
    let mut meta_text = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    serde::Serialize::serialize(
        &meta,
        &mut serde_json::Serializer::with_formatter(&mut meta_text, fmt),
    )?;
    write_dir_atomically(&args.out, false, |tmp| {
        write_lmdb(tmp, &entries).map_err(|e| e.to_string())?;
        for (name, text) in [
            ("id2len.json", id2len.into_bytes()),
            ("txt2img.json", txt2img.into_bytes()),
            ("img2txts.json", img2txts.into_bytes()),
            ("meta.json", meta_text),
        ] {
            std::fs::write(tmp.join(name), text)
                .map_err(|e| format!("cannot write {name}: {e}"))?;
        }
        Ok(())
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            args.out.display(),
            e.unwrap_or_else(|f| f.reason())
        )
    })?;
    println!(
        "wrote {} captions of {} images to {}",
        captions.len(),
        captions
            .iter()
            .map(|c| c.img_fname.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        args.out.display()
    );
    Ok(())
}

/// `convert_imgdir.py`: every array cast to float16 and cut to the image's box count; a file
/// that does not load is reported and skipped.
fn prepare_features(args: &FeatureArgs) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.npz)
        .with_context(|| format!("cannot list {}", args.npz.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "npz"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no .npz files in {}", args.npz.display());
    }
    let options = args.selection.options()?;
    let mut sink = ImgDbSink::open(&args.out, options)?;
    let pb = lightningdot::progress::bar(files.len(), "features");
    let mut records = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let loaded = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| ImgDump::from_npz(&b))
            .and_then(|d| cut_record(d, &options));
        match loaded {
            Ok((dump, nbb)) => records.push((name, dump, nbb)),
            Err(e) => sink.skip(path, &e),
        }
        if records.len() >= 256 {
            sink.commit(std::mem::take(&mut records))?;
        }
        pb.inc(1);
    }
    sink.commit(records)?;
    pb.finish_and_clear();
    let (n, skipped) = sink.finish()?;
    println!(
        "wrote {n} records ({skipped} skipped, skipped.json) to {}",
        args.out.display()
    );
    Ok(())
}

/// The record convert_imgdir.py stores: float16, first `nbb` rows (`conf` decides).
fn cut_record(dump: ImgDump, options: &ImgDbOptions) -> Result<(ImgDump, usize), String> {
    let conf = dump.get("conf").ok_or("no 'conf' array")?;
    let nbb = options.nbb(&conf.data, conf.dtype);
    let mut fields = Vec::with_capacity(dump.fields.len());
    for (name, mut a) in dump.fields {
        let rows = match a.shape.len() {
            1 | 2 => a.shape[0].min(nbb),
            _ => return Err(format!("array '{name}' has {} dimensions", a.shape.len())),
        };
        let row_len = a.data.len() / a.shape[0].max(1);
        a.data.truncate(rows * row_len);
        a.shape[0] = rows;
        if a.dtype == FloatDtype::F32 {
            a.dtype = FloatDtype::F16;
        }
        fields.push((name, a));
    }
    Ok((ImgDump { fields }, nbb))
}

pub fn run(args: PrepareArgs) -> Result<()> {
    match args.what {
        PrepareCommand::Captions(a) => prepare_captions(&a),
        PrepareCommand::Features(a) => prepare_features(&a),
    }
}
