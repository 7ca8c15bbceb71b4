//! Search by photo: an image that is not in the index → the BUTD detector → UNITER's box rule
//! (the index's own selection, [`crate::regions`]) → the image tower → the best captions and
//! the most similar indexed images, both by dot product against the index's vectors.
//!
//! The regions go through exactly the steps `extract` + `index` take (float16 rounding, the
//! first `nbb` boxes), so uploading an image the index was built from gives back its stored
//! vector, and that image as the most similar one.

use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;

use super::pipeline::{IndexSummary, Pipeline, Query, ResultHit, SearchResponse, SearchService};
use super::{ErrorClass, RetrievalError};
use crate::data::img_db::ImgDbOptions;
use crate::data::{IMG_FEAT_DIM, collate_images};
use crate::model::detector::{DetectError, Detector, ImageError, decode_image};
use crate::regions::{fix_detection_count, region_features};

/// Why a photo could not be searched.
#[derive(Debug, thiserror::Error)]
pub enum PhotoError {
    /// Not a decodable JPEG / PNG.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Decoded, but the detector found no usable regions (e.g. a 1-pixel-high strip).
    #[error("no regions: {0}")]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Retrieval(#[from] RetrievalError),
    /// The detector and the image tower do not fit together (a setup error, found at load).
    #[error(
        "the detector makes {detector}-d region features but the image tower reads {tower}-d \
         features: use the detector the index's img_db was extracted with"
    )]
    FeatureDim { detector: usize, tower: usize },
}

impl PhotoError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Image(_) | Self::Detect(_) => ErrorClass::BadRequest,
            Self::Retrieval(e) => e.class(),
            Self::FeatureDim { .. } => ErrorClass::Internal,
        }
    }
}

/// Milliseconds per stage of one photo search.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct PhotoTimings {
    /// Image file → pixels.
    pub decode: f64,
    /// The detector (preprocessing, backbone, RPN, RoI head, selection).
    pub detect: f64,
    /// The image tower.
    pub encode: f64,
    /// Dot products against the captions and the images.
    pub candidates: f64,
    pub total: f64,
}

/// An uploaded photo as the image tower saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedPhoto {
    /// `[dim]` the image tower's vector.
    pub vector: Vec<f32>,
    /// Regions fed to the tower (UNITER's box count).
    pub regions: usize,
    /// Decoded size `[height, width]`.
    pub image_size: [usize; 2],
    pub timings: PhotoTimings,
}

/// The answer to a photo: `{"captions": [...], "images": [...], "regions", "image_size",
/// "timings_ms"}`; caption hits carry `text` and `image`, image hits their `captions`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhotoResponse {
    pub captions: Vec<ResultHit>,
    pub images: Vec<ResultHit>,
    pub regions: usize,
    pub image_size: [usize; 2],
    pub timings_ms: PhotoTimings,
}

/// A photo search service with its types erased (what the HTTP server holds).
pub trait PhotoService: Send + Sync {
    /// `bytes`: a JPEG or PNG file.
    fn search_photo(&self, bytes: &[u8], k: usize) -> Result<PhotoResponse, PhotoError>;
}

/// A [`Pipeline`] with a detector: answers text / image-id queries as the pipeline does, and
/// photos.
pub struct PhotoPipeline<B: Backend> {
    pipeline: Pipeline<B>,
    detector: Detector<B>,
    boxes: ImgDbOptions,
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl<B: Backend> PhotoPipeline<B> {
    /// Checks that the detector's features fit the image tower and takes the box rule of the
    /// index's img_db (UNITER's defaults when the index does not record it).
    pub fn new(pipeline: Pipeline<B>, mut detector: Detector<B>) -> Result<Self, PhotoError> {
        let d = detector.config.feature_dim();
        if d != IMG_FEAT_DIM {
            return Err(PhotoError::FeatureDim {
                detector: d,
                tower: IMG_FEAT_DIM,
            });
        }
        let boxes: ImgDbOptions = pipeline.meta().images.selection.unwrap_or_default();
        fix_detection_count(&mut detector.config, &boxes);
        Ok(Self {
            pipeline,
            detector,
            boxes,
        })
    }

    pub fn pipeline(&self) -> &Pipeline<B> {
        &self.pipeline
    }

    /// Decodes, detects and encodes one JPEG / PNG file.
    pub fn encode_photo(&self, bytes: &[u8]) -> Result<EncodedPhoto, PhotoError> {
        let started = Instant::now();
        let img = decode_image(bytes, &self.detector.config, "uploaded image")?;
        let decoded = Instant::now();
        let det = self.detector.detect(&img)?;
        let detected = Instant::now();
        let regions = region_features(&det, &self.boxes);
        let batch = collate_images(&[&regions]).map_err(RetrievalError::from)?;
        let vector = self.pipeline.encoder().encode_regions(&batch);
        let encoded = Instant::now();
        Ok(EncodedPhoto {
            vector,
            regions: regions.num_bb,
            image_size: [img.height, img.width],
            timings: PhotoTimings {
                decode: ms(decoded - started),
                detect: ms(detected - decoded),
                encode: ms(encoded - detected),
                candidates: 0.0,
                total: ms(encoded - started),
            },
        })
    }
}

impl<B: Backend> PhotoService for PhotoPipeline<B> {
    fn search_photo(&self, bytes: &[u8], k: usize) -> Result<PhotoResponse, PhotoError> {
        let started = Instant::now();
        let photo = self.encode_photo(bytes)?;
        let searched = Instant::now();
        let (captions, images) = self.pipeline.nearest_to_image(&photo.vector, k)?;
        let mut timings = photo.timings;
        timings.candidates = ms(searched.elapsed());
        timings.total = ms(started.elapsed());
        Ok(PhotoResponse {
            captions,
            images,
            regions: photo.regions,
            image_size: photo.image_size,
            timings_ms: timings,
        })
    }
}

impl<B: Backend> SearchService for PhotoPipeline<B> {
    fn search(&self, query: &Query, k: usize) -> Result<SearchResponse, RetrievalError> {
        self.pipeline.search(query, k)
    }

    fn summary(&self) -> IndexSummary {
        self.pipeline.summary()
    }

    fn has_image(&self, id: &str) -> bool {
        self.pipeline.has_image(id)
    }
}
