//! Building UNITER-format LMDBs: image dbs in either encoding and caption records.
//!
//! The readers never use this module; it exists for tests (temporary dbs, corrupt records) and
//! for converting an image db between the msgpack and the compressed (npz) encodings. The Python
//! readers accept the output: msgpack-numpy maps with binary keys (byte-identical to
//! `convert_imgdir.py`'s records for the fixture db), npz members `<field>.npy` deflated,
//! `__keys__` as a JSON list, lz4-framed msgpack captions.

use std::io::{Cursor, Write};
use std::path::Path;

use half::f16;
use half::slice::HalfFloatSliceExt;
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, EnvOpenOptions};
use rmpv::Value;
use serde::Serialize;

use super::DataError;
use super::img_db::{FloatDtype, ImgDump, KEYS_KEY, NdArray};
use super::txt_db::TxtRecord;

/// How image records are encoded (`compressed_db` false / true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImgDbEncoding {
    /// `feat_*` LMDBs: msgpack dict of msgpack-numpy arrays.
    Msgpack,
    /// `feat_*_compressed` LMDBs: `np.savez_compressed` bytes.
    Compressed,
}

/// Writes `entries` into a new (or existing) LMDB in directory `dir`, creating the directory.
/// Values are stored verbatim, so this can also produce corrupt records on purpose.
pub fn write_lmdb<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    dir: &Path,
    entries: &[(K, V)],
) -> Result<(), DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let payload: usize = entries
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len())
        .sum();
    // Pages and B-tree overhead stay well under 2x the payload; round to 1 MiB, a multiple of
    // every page size LMDB runs with.
    let map_size = (payload * 2 + (16 << 20)).next_multiple_of(1 << 20);
    let lmdb_err = |e| DataError::lmdb(dir, e);
    let (env, db) = create_env(dir, map_size)?;
    let mut wtxn = env.write_txn().map_err(lmdb_err)?;
    for (key, value) in entries {
        db.put(&mut wtxn, key.as_ref(), value.as_ref())
            .map_err(lmdb_err)?;
    }
    wtxn.commit().map_err(lmdb_err)?;
    Ok(())
}

/// Opens (creating) the environment in `dir` and its unnamed database for writing.
fn create_env(
    dir: &Path,
    map_size: usize,
) -> Result<(heed::Env, Database<'static, Bytes, Bytes>), DataError> {
    let lmdb_err = |e| DataError::lmdb(dir, e);
    // SAFETY: the caller owns `dir` while writing; nothing else writes this map.
    let env = unsafe { EnvOpenOptions::new().map_size(map_size).open(dir) }.map_err(lmdb_err)?;
    let wtxn = env.write_txn().map_err(lmdb_err)?;
    let db: Database<'static, Bytes, Bytes> = env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            opener
                .create_database::<Bytes, Bytes>(wtxn, None)
                .map(CommitOrAbort::<_, ()>::Commit)
        })
        .map_err(|e: heed::Error| lmdb_err(e))?
        .unwrap_commit();
    Ok((env, db))
}

/// Writes an image feature LMDB (e.g. `<img_db>/feat_th0.2_max100_min10_compressed`) holding
/// `records` and the `__keys__` list of their names in the given order.
pub fn write_img_db(
    lmdb_dir: &Path,
    records: &[(String, ImgDump)],
    encoding: ImgDbEncoding,
) -> Result<(), DataError> {
    let mut entries = Vec::with_capacity(records.len() + 1);
    for (name, dump) in records {
        entries.push((
            name.clone().into_bytes(),
            encode_img_record(dump, encoding)?,
        ));
    }
    let names: Vec<&str> = records.iter().map(|(n, _)| n.as_str()).collect();
    entries.push((KEYS_KEY.as_bytes().to_vec(), keys_value(&names)));
    write_lmdb(lmdb_dir, &entries)
}

/// The `__keys__` value: `json.dumps(list)` spacing, as convert_imgdir.py writes it.
fn keys_value(names: &[&str]) -> Vec<u8> {
    let names: Vec<String> = names
        .iter()
        .map(|n| serde_json::Value::from(*n).to_string())
        .collect();
    format!("[{}]", names.join(", ")).into_bytes()
}

/// An image feature LMDB filled batch by batch: each [`ImgDbAppender::commit`] is one LMDB
/// transaction holding the batch's records and the updated `__keys__`, so a killed run leaves
/// the db as of its last commit (never a half record) and a rerun continues from
/// [`ImgDbAppender::names`].
pub struct ImgDbAppender {
    dir: std::path::PathBuf,
    env: heed::Env,
    db: Database<'static, Bytes, Bytes>,
    names: Vec<String>,
    known: std::collections::HashSet<String>,
}

impl ImgDbAppender {
    /// Opens (creating if needed) the LMDB in directory `lmdb_dir`.
    pub fn open(lmdb_dir: &Path) -> Result<Self, DataError> {
        std::fs::create_dir_all(lmdb_dir).map_err(|e| DataError::io(lmdb_dir, e))?;
        let lmdb_err = |e| DataError::lmdb(lmdb_dir, e);
        // The map is virtual address space, not disk: 1 TiB covers any image collection.
        let (env, db) = create_env(lmdb_dir, 1 << 40)?;
        let rtxn = env.read_txn().map_err(lmdb_err)?;
        let mut names = Vec::new();
        for entry in db.iter(&rtxn).map_err(lmdb_err)? {
            let (key, _) = entry.map_err(lmdb_err)?;
            if key != KEYS_KEY.as_bytes() {
                names.push(String::from_utf8_lossy(key).into_owned());
            }
        }
        drop(rtxn);
        Ok(Self {
            dir: lmdb_dir.to_path_buf(),
            env,
            db,
            known: names.iter().cloned().collect(),
            names,
        })
    }

    /// Record names committed so far (all runs), in commit order of this run's view.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Writes `records` and the new `__keys__` in one transaction.
    pub fn commit(
        &mut self,
        records: &[(String, ImgDump)],
        encoding: ImgDbEncoding,
    ) -> Result<(), DataError> {
        let lmdb_err = |e| DataError::lmdb(&self.dir, e);
        let mut wtxn = self.env.write_txn().map_err(lmdb_err)?;
        let mut added = Vec::new();
        for (name, dump) in records {
            let value = encode_img_record(dump, encoding)?;
            self.db
                .put(&mut wtxn, name.as_bytes(), &value)
                .map_err(lmdb_err)?;
            if !self.known.contains(name) && !added.contains(name) {
                added.push(name.clone());
            }
        }
        let refs: Vec<&str> = self
            .names
            .iter()
            .chain(&added)
            .map(String::as_str)
            .collect();
        self.db
            .put(&mut wtxn, KEYS_KEY.as_bytes(), &keys_value(&refs))
            .map_err(lmdb_err)?;
        wtxn.commit().map_err(lmdb_err)?;
        self.known.extend(added.iter().cloned());
        self.names.extend(added);
        Ok(())
    }
}

/// The LMDB value of one image record, each array stored with its own `dtype`.
pub fn encode_img_record(dump: &ImgDump, encoding: ImgDbEncoding) -> Result<Vec<u8>, DataError> {
    for (name, array) in &dump.fields {
        let count: usize = array.shape.iter().product();
        if count != array.data.len() {
            return Err(DataError::Batch(format!(
                "array '{name}' has shape {:?} but {} values",
                array.shape,
                array.data.len()
            )));
        }
    }
    match encoding {
        ImgDbEncoding::Msgpack => Ok(encode_msgpack(dump)),
        ImgDbEncoding::Compressed => encode_npz(dump),
    }
}

/// The LMDB value of one caption: lz4 frame of the msgpack dict `{input_ids, img_fname, raw}`.
pub fn encode_txt_record(record: &TxtRecord) -> Result<Vec<u8>, DataError> {
    #[derive(Serialize)]
    struct Stored<'a> {
        input_ids: &'a [u32],
        img_fname: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        raw: Option<&'a str>,
    }
    let packed = rmp_serde::to_vec_named(&Stored {
        input_ids: &record.input_ids,
        img_fname: &record.img_fname,
        raw: record.raw.as_deref(),
    })
    .map_err(|e| DataError::Batch(format!("cannot pack caption '{}': {e}", record.id)))?;
    lz4_frame(&packed, &record.id)
}

/// The LMDB value of a caption given as any msgpack map (prepro.py stores every annotation
/// field of the sentence plus its own): lz4 frame of the msgpack bytes.
pub fn encode_txt_value(value: &Value, id: &str) -> Result<Vec<u8>, DataError> {
    let mut packed = Vec::new();
    rmpv::encode::write_value(&mut packed, value)
        .map_err(|e| DataError::Batch(format!("cannot pack caption '{id}': {e}")))?;
    lz4_frame(&packed, id)
}

fn lz4_frame(packed: &[u8], id: &str) -> Result<Vec<u8>, DataError> {
    let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
    encoder
        .write_all(packed)
        .map_err(|e| DataError::Batch(format!("cannot compress caption '{id}': {e}")))?;
    encoder
        .finish()
        .map_err(|e| DataError::Batch(format!("cannot compress caption '{id}': {e}")))
}

/// Little-endian element bytes of `array` in its dtype.
fn element_bytes(array: &NdArray) -> Vec<u8> {
    match array.dtype {
        FloatDtype::F16 => {
            let mut halves = vec![f16::ZERO; array.data.len()];
            halves.convert_from_f32_slice(&array.data);
            halves.iter().flat_map(|h| h.to_le_bytes()).collect()
        }
        FloatDtype::F32 => array.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        FloatDtype::F64 => array
            .data
            .iter()
            .flat_map(|&x| f64::from(x).to_le_bytes())
            .collect(),
    }
}

fn encode_msgpack(dump: &ImgDump) -> Vec<u8> {
    let bin = |s: &str| Value::Binary(s.as_bytes().to_vec());
    let fields = dump
        .fields
        .iter()
        .map(|(name, array)| {
            let shape = array.shape.iter().map(|&d| Value::from(d as u64)).collect();
            let numpy = Value::Map(vec![
                (bin("nd"), Value::Boolean(true)),
                (bin("type"), Value::from(array.dtype.name())),
                (bin("kind"), Value::Binary(Vec::new())),
                (bin("shape"), Value::Array(shape)),
                (bin("data"), Value::Binary(element_bytes(array))),
            ]);
            (Value::from(name.as_str()), numpy)
        })
        .collect();
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &Value::Map(fields));
    out
}

fn encode_npz(dump: &ImgDump) -> Result<Vec<u8>, DataError> {
    let zip_err = |e: zip::result::ZipError| DataError::Batch(format!("cannot build npz: {e}"));
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, array) in &dump.fields {
        zip.start_file(format!("{name}.npy"), options)
            .map_err(zip_err)?;
        zip.write_all(&npy_bytes(array))
            .map_err(|e| DataError::Batch(format!("cannot build npz: {e}")))?;
    }
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

/// A version 1.0 `.npy` file, header padded to 64 bytes as numpy writes it.
fn npy_bytes(array: &NdArray) -> Vec<u8> {
    let dims: Vec<String> = array.shape.iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        array.dtype.name()
    );
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + array.data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&element_bytes(array));
    out
}
