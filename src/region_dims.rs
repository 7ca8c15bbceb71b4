//! The region contract between the detector, the image dbs and the image tower: a BUTD region
//! is `IMG_FEAT_DIM` features and `IMG_POS_DIM` box values. Both [`crate::data`] and
//! [`crate::model`] re-export these; neither depends on the other for them.

/// Region feature size (BUTD ResNet-101 pool5; `dvl.const.IMG_DIM`, not configurable upstream).
pub const IMG_FEAT_DIM: usize = 2048;
/// Box feature size: the 6 stored `norm_bb` columns `[x1, y1, x2, y2, w, h]` plus the area.
pub const IMG_POS_DIM: usize = 7;
