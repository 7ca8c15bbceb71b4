//! LightningDOT model as burn modules (spec §2, §10). Depends on burn only: no I/O here.

mod biencoder;
mod config;
pub mod detector;
mod embeddings;
mod image;
mod pretrain;
mod projection;
mod stages;
mod text;
mod transformer;
mod uniter;

pub use biencoder::{BiEncoder, dot_scores};
pub use config::{
    BiEncoderConfig, ConfigError, EncoderConfig, IMAGE_CLS_TOKEN_ID, IMG_FEAT_DIM, IMG_POS_DIM,
    LAYER_NORM_EPS,
};
pub use embeddings::{ImageEmbeddings, TextEmbeddings};
pub use image::{ImageEncoder, RegionBatch};
pub use pretrain::{
    BiEncoderForPretraining, ClsConcat, FeatRegression, ItmOutput, MlmHead, MlmOutput, MrmHidden,
    PretrainHeads, PretrainInput, PretrainTask, REGION_CLASSES, RegionClassifier, TaskOutput,
    cross_entropy, kl_elementwise, mrc_targets,
};
pub use projection::{ProjectionHead, ProjectionStages};
pub use stages::{NamedTensor, TowerStages};
pub use text::TextEncoder;
pub use transformer::{Attention, Encoder, Layer, MASK_BIAS, Pooler};
pub use uniter::{ItmInput, ItmStages, RANK_MARGIN, UniterItm, rank_loss};
