//! The demo's collection: small synthetic "scenes" with real words, in the UNITER formats.
//!
//! Every image shows one subject (dog, cat, man, woman, child) with a ball (red or blue) in a
//! place (grass, street, water): 30 scenes. Each region feature carries the signature of one
//! of the scene's three concepts (plus noise), so a caption is predictable from the regions
//! the way a real caption is from detector features. Captions are sentences over the tiny
//! vocabulary (`tests/tiny/txt_model_config/vocab.txt`), tokenized with the tokenizer a query
//! will use, so free text like "a dog with a red ball in the water" finds its scene.
//!
//! Training captions mention one, two or all three concepts; dev and test captions mention
//! all three (one scene each), so recall@1 is well defined.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::data::SplitMix64;
use super::synthetic::{
    Caption, gaussian, image_dump, image_name, random_box, soft_labels, write_fine_tune_config,
    write_image_db, write_txt_db,
};
use crate::data::{DataError, IMG_FEAT_DIM, Tokenizer};

pub const SUBJECTS: [&str; 5] = ["dog", "cat", "man", "woman", "child"];
pub const COLORS: [&str; 2] = ["red", "blue"];
pub const PLACES: [&str; 3] = ["grass", "street", "water"];

/// One image of the collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scene {
    pub subject: &'static str,
    pub color: &'static str,
    pub place: &'static str,
}

impl Scene {
    /// All 30 scenes, image `i` is `all()[i]`.
    pub fn all() -> Vec<Scene> {
        SUBJECTS
            .iter()
            .flat_map(|&subject| {
                COLORS.iter().flat_map(move |&color| {
                    PLACES.iter().map(move |&place| Scene {
                        subject,
                        color,
                        place,
                    })
                })
            })
            .collect()
    }

    /// The scene's image id in the dbs.
    pub fn image_id(index: usize) -> String {
        image_name(index)
    }

    /// "dog, red ball, grass".
    pub fn describe(&self) -> String {
        format!("{}, {} ball, {}", self.subject, self.color, self.place)
    }

    fn preposition(&self) -> &'static str {
        if self.place == "water" { "in" } else { "on" }
    }

    /// A caption naming all three concepts, in one of several word orders.
    fn full_caption(&self, rng: &mut SplitMix64) -> String {
        let (s, c, p, on) = (self.subject, self.color, self.place, self.preposition());
        match rng.below(4) {
            0 => format!("a {s} with a {c} ball {on} the {p}"),
            1 => format!("{on} the {p} a {s} with a {c} ball"),
            2 => format!("the {c} ball with the {s} {on} the {p}"),
            _ => format!("a {s} {on} the {p} with the {c} ball"),
        }
    }

    /// A training caption: one, two or three of the concepts.
    fn train_caption(&self, rng: &mut SplitMix64) -> String {
        let (s, c, p, on) = (self.subject, self.color, self.place, self.preposition());
        match rng.below(5) {
            0 => format!("a {s} {on} the {p}"),
            1 => format!("the {s} with a {c} ball"),
            2 => format!("a {c} ball {on} the {p}"),
            _ => self.full_caption(rng),
        }
    }
}

/// Size of the collection's splits and the region noise.
#[derive(Debug, Clone)]
pub struct ScenesSpec {
    /// Regions per concept in every image (3 concepts).
    pub regions_per_concept: usize,
    pub train_captions_per_image: usize,
    pub eval_captions_per_image: usize,
    /// Std of the per-region noise around a concept signature (entries N(0, 1)).
    pub noise: f32,
    pub seed: u64,
}

impl Default for ScenesSpec {
    fn default() -> Self {
        Self {
            regions_per_concept: 3,
            train_captions_per_image: 12,
            eval_captions_per_image: 2,
            noise: 0.5,
            seed: 11,
        }
    }
}

/// Writes the collection into `dir` (img db, txt_train/dev/test dbs with raw captions, tiny
/// tower configs) and returns the fine-tune config's path; `overrides` replaces its fields.
pub fn write_scenes(
    dir: &Path,
    spec: &ScenesSpec,
    tokenizer: &Tokenizer,
    overrides: &Value,
) -> Result<PathBuf, DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut rng = SplitMix64::new(spec.seed, 13, 0);
    let scenes = Scene::all();
    let concepts: Vec<&str> = SUBJECTS
        .iter()
        .chain(&COLORS)
        .chain(&PLACES)
        .copied()
        .collect();
    let signatures: Vec<Vec<f32>> = concepts
        .iter()
        .map(|_| (0..IMG_FEAT_DIM).map(|_| gaussian(&mut rng)).collect())
        .collect();
    let signature = |word: &str| &signatures[concepts.iter().position(|c| *c == word).unwrap()];

    let mut records = Vec::with_capacity(scenes.len());
    for (i, scene) in scenes.iter().enumerate() {
        let n = 3 * spec.regions_per_concept;
        let (mut features, mut boxes) = (Vec::with_capacity(n * IMG_FEAT_DIM), Vec::new());
        for concept in [scene.subject, scene.color, scene.place] {
            for _ in 0..spec.regions_per_concept {
                let sig = signature(concept);
                features.extend(sig.iter().map(|s| s + spec.noise * gaussian(&mut rng)));
                boxes.extend(random_box(&mut rng));
            }
        }
        records.push((
            Scene::image_id(i),
            image_dump(features, boxes, soft_labels(i, n)),
        ));
    }
    write_image_db(&dir.join("img"), &records)?;

    let splits: [(&str, usize, bool); 3] = [
        ("txt_train.db", spec.train_captions_per_image, true),
        ("txt_dev.db", spec.eval_captions_per_image, false),
        ("txt_test.db", spec.eval_captions_per_image, false),
    ];
    let mut first_id = 0;
    for (db, per_image, train) in splits {
        let mut captions = Vec::new();
        for (i, scene) in scenes.iter().enumerate() {
            for _ in 0..per_image {
                let raw = if train {
                    scene.train_caption(&mut rng)
                } else {
                    scene.full_caption(&mut rng)
                };
                captions.push(Caption {
                    image: Scene::image_id(i),
                    input_ids: tokenizer.encode_words(&raw)?,
                    raw: Some(raw),
                });
            }
        }
        write_txt_db(&dir.join(db), &captions, first_id)?;
        first_id += captions.len();
    }
    write_fine_tune_config(dir, overrides)
}
