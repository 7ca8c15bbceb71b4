//! Data layer: UNITER LMDB readers, WordPiece tokenization and host-side batching.
//!
//! Everything here produces plain host arrays (`Vec<f32>` / `Vec<i64>` in row-major order with
//! their shapes alongside); turning them into tensors is the caller's job, so this module does not
//! know about burn or the model.
//!
//! | module | job | reference |
//! |---|---|---|
//! | [`img_db`] | region features of one image from a `DetectFeatLmdb` directory | spec §4.1 |
//! | [`txt_db`] | tokenized captions and the id/image maps of a `TxtTokLmdb` directory | spec §4.2 |
//! | [`tokenizer`] | BERT cased WordPiece for free text (queries, db parity) | spec §4.2, §13 |
//! | [`dataset`] | the eval item list (one item per caption, id2len order) | spec §4.4, §7 |
//! | [`collate`] | padded text / image batches as `itm_fast_collate` builds them | spec §4.4 |
//! | [`pretrain`] | pre-training recipe: CPython RNG, masking, token buckets, task mixture, task batches | spec §4.5, §6.1 – §6.3 |
//! | [`writer`] | building LMDBs (tests, format conversion); never used by the readers | - |
//!
//! All fallible calls return [`DataError`], whose `Display` is one line naming the file or key.

mod codec;
pub mod collate;
pub mod dataset;
mod error;
pub mod img_db;
mod json;
mod lmdb;
pub mod pretrain;
pub mod tokenizer;
pub mod txt_db;
pub mod writer;

pub use collate::{ImageBatch, TextBatch, collate_images, collate_texts};
pub use dataset::{EvalItem, ItmEvalDataset};
pub use error::DataError;
pub use img_db::{
    FloatDtype, IMG_FEAT_DIM, IMG_POS_DIM, ImgDb, ImgDbOptions, ImgDump, NdArray, RegionFeatures,
};
pub use tokenizer::Tokenizer;
pub use txt_db::{TxtDb, TxtMeta, TxtRecord};
