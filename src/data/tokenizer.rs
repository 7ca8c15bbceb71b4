//! BERT cased WordPiece tokenization (spec §4.2, §13 item 10).
//!
//! Built like the reference's tokenizer for `bert-base-cased`: BERT normalizer without
//! lower-casing or accent stripping (control characters removed, CJK characters isolated), BERT
//! pre-tokenizer (whitespace + punctuation split), WordPiece with `##` continuations and
//! `[UNK]`, and `[CLS] … [SEP]` around a single sequence. The txt_db captions were tokenized word
//! by word on whitespace with the same pipeline, so encoding a record's `raw` text reproduces its
//! stored `input_ids`.

use std::path::{Path, PathBuf};

use tokenizers::AddedToken;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;

use super::DataError;
use super::error::one_line;

const CLS: &str = "[CLS]";
const SEP: &str = "[SEP]";
const UNK: &str = "[UNK]";
/// Kept whole when they appear in text, as transformers' BertTokenizer does.
const SPECIALS: [&str; 5] = ["[PAD]", UNK, CLS, SEP, "[MASK]"];

/// A WordPiece tokenizer loaded from a `vocab.txt` or a `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    cls_id: u32,
    sep_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `path`: a `vocab.txt`, a `tokenizer.json`, or a directory holding one of them (a
    /// `vocab.txt` wins, because its pipeline is pinned here to the reference's cased settings).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let file = if path.is_dir() {
            ["vocab.txt", "tokenizer.json"]
                .iter()
                .map(|f| path.join(f))
                .find(|p| p.is_file())
                .ok_or_else(|| DataError::Tokenizer {
                    path: path.to_path_buf(),
                    reason: "directory has neither vocab.txt nor tokenizer.json".into(),
                })?
        } else if path.is_file() {
            path.to_path_buf()
        } else {
            return Err(DataError::NotFound {
                what: "tokenizer vocab",
                path: path.to_path_buf(),
            });
        };
        let inner = if file.extension().is_some_and(|e| e == "json") {
            from_tokenizer_json(&file)?
        } else {
            from_vocab(&file)?
        };
        let id = |tok: &str| {
            inner.token_to_id(tok).ok_or_else(|| DataError::Tokenizer {
                path: file.clone(),
                reason: format!("vocabulary has no {tok} token"),
            })
        };
        let (cls_id, sep_id) = (id(CLS)?, id(SEP)?);
        Ok(Self {
            inner,
            source: file,
            cls_id,
            sep_id,
        })
    }

    /// `[CLS] pieces… [SEP]` ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        self.run(text, true)
    }

    /// WordPiece ids of `text` without special tokens (what the txt_db stores as `input_ids`).
    pub fn encode_words(&self, text: &str) -> Result<Vec<u32>, DataError> {
        self.run(text, false)
    }

    /// Id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn cls_id(&self) -> u32 {
        self.cls_id
    }

    pub fn sep_id(&self) -> u32 {
        self.sep_id
    }

    /// Number of vocabulary entries (including special tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The file the tokenizer was built from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    fn run(&self, text: &str, specials: bool) -> Result<Vec<u32>, DataError> {
        self.inner
            .encode(text, specials)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| DataError::Tokenizer {
                path: self.source.clone(),
                reason: one_line(format!("cannot encode {text:?}: {e}")),
            })
    }
}

fn from_vocab(file: &Path) -> Result<tokenizers::Tokenizer, DataError> {
    let err = |reason: String| DataError::Tokenizer {
        path: file.to_path_buf(),
        reason: one_line(reason),
    };
    let bytes = std::fs::read(file).map_err(|e| DataError::io(file, e))?;
    let vocab = WordPiece::read_bytes(&bytes).map_err(|e| err(e.to_string()))?;
    let model = WordPiece::builder()
        .vocab(vocab)
        .unk_token(UNK.into())
        .continuing_subword_prefix("##".into())
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, Some(false), false)))
        .map_err(|e| err(e.to_string()))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| err(format!("vocabulary has no {t} token")))
    };
    let processor = BertProcessing::new((SEP.into(), id(SEP)?), (CLS.into(), id(CLS)?));
    tok.with_post_processor(Some(processor));
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .filter(|t| tok.token_to_id(t).is_some())
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| err(e.to_string()))?;
    Ok(tok)
}

fn from_tokenizer_json(file: &Path) -> Result<tokenizers::Tokenizer, DataError> {
    let mut tok = tokenizers::Tokenizer::from_file(file).map_err(|e| DataError::Tokenizer {
        path: file.to_path_buf(),
        reason: one_line(e.to_string()),
    })?;
    // Batches are padded by the collate functions; the tokenizer must return raw lengths.
    tok.with_padding(None);
    tok.with_truncation(None)
        .map_err(|e| DataError::Tokenizer {
            path: file.to_path_buf(),
            reason: one_line(e.to_string()),
        })?;
    Ok(tok)
}
