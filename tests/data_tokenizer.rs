//! WordPiece parity with the ids stored in the fixture txt_db (tokenized by the reference's
//! prepro with pytorch-pretrained-bert, cased).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lightningdot::data::{Tokenizer, TxtDb};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

fn vocab_dir() -> PathBuf {
    fixtures().join("config/txt_model_config")
}

fn txt_db() -> TxtDb {
    TxtDb::open(fixtures().join("data/txt_db/itm_flickr_tiny_test_tiny-cased.db")).unwrap()
}

fn assert_matches_db(tok: &Tokenizer) {
    let db = txt_db();
    for id in db.ids() {
        let rec = db.get(id).unwrap();
        let raw = rec.raw.as_deref().unwrap();
        assert_eq!(
            tok.encode_words(raw).unwrap(),
            rec.input_ids,
            "caption {id}: {raw:?}"
        );
        let mut with_specials = vec![101];
        with_specials.extend(&rec.input_ids);
        with_specials.push(102);
        assert_eq!(tok.encode(raw).unwrap(), with_specials, "caption {id}");
    }
}

#[test]
fn vocab_file_and_directory_encode_all_captions_like_the_db() {
    let from_file = Tokenizer::from_path(vocab_dir().join("vocab.txt")).unwrap();
    assert_eq!(from_file.vocab_size(), 128);
    assert_eq!((from_file.cls_id(), from_file.sep_id()), (101, 102));
    assert_matches_db(&from_file);
    let from_dir = Tokenizer::from_path(vocab_dir()).unwrap();
    assert_matches_db(&from_dir);
}

#[test]
fn annotation_sentences_encode_like_the_db() {
    let text =
        std::fs::read_to_string(fixtures().join("data/annotations/flickr_tiny_test.json")).unwrap();
    let images: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tok = Tokenizer::from_path(vocab_dir()).unwrap();
    let db = txt_db();
    let mut n = 0;
    for image in images.as_array().unwrap() {
        for sent in image["sentences"].as_array().unwrap() {
            let id = sent["sentid"].as_u64().unwrap().to_string();
            let raw = sent["raw"].as_str().unwrap();
            assert_eq!(
                tok.encode_words(raw).unwrap(),
                db.get(&id).unwrap().input_ids,
                "{id}"
            );
            n += 1;
        }
    }
    assert_eq!(n, 100);
}

#[test]
fn cased_wordpiece_details() {
    let tok = Tokenizer::from_path(vocab_dir()).unwrap();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    // No lower-casing: "The" and "the" are different entries.
    assert_ne!(id("The"), id("the"));
    assert_eq!(tok.encode_words("The the").unwrap(), [id("The"), id("the")]);
    // Continuation pieces, punctuation split, unknown words, accents kept (so unknown here).
    assert_eq!(
        tok.encode_words("dogs running!").unwrap(),
        [id("dog"), id("##s"), id("run"), id("##ning"), id("!")]
    );
    assert_eq!(tok.encode_words("zebra").unwrap(), [100]);
    assert_eq!(tok.encode_words("dög").unwrap(), [100]);
    // Special tokens written in text stay whole, as in transformers' BertTokenizer.
    assert_eq!(
        tok.encode_words("a [MASK] dog").unwrap(),
        [id("a"), 103, id("dog")]
    );
    assert_eq!(tok.encode("").unwrap(), [101, 102]);
}

#[test]
fn tokenizer_json_matches_vocab() {
    let vocab = std::fs::read_to_string(vocab_dir().join("vocab.txt")).unwrap();
    let vocab: HashMap<&str, usize> = vocab.lines().enumerate().map(|(i, t)| (t, i)).collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": false, "lowercase": false},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]},
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    });
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tokenizer.json"), json.to_string()).unwrap();
    let tok = Tokenizer::from_path(tmp.path()).unwrap();
    assert!(tok.source().ends_with("tokenizer.json"));
    assert_matches_db(&tok);
}

#[test]
fn directory_without_vocab_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = Tokenizer::from_path(tmp.path()).unwrap_err().to_string();
    assert!(
        msg.contains("neither vocab.txt nor tokenizer.json"),
        "{msg}"
    );
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");

    let missing = tmp.path().join("nope/vocab.txt");
    let msg = Tokenizer::from_path(&missing).unwrap_err().to_string();
    assert!(
        msg.contains("not found") && msg.contains("nope/vocab.txt"),
        "{msg}"
    );

    std::fs::write(tmp.path().join("tokenizer.json"), "{ not json").unwrap();
    let msg = Tokenizer::from_path(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");
    assert!(!msg.contains('\n'));
}
