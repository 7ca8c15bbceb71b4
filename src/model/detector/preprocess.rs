//! Preprocessing as `processing_image.py` does it for one image (behaviours 1–3 of the fixture
//! README): decode, channel order, shortest-edge resize with PyTorch's bilinear
//! (`align_corners=False`, no antialiasing) on float pixels, `(x - mean) / std`.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader};

use super::config::DetectorConfig;

/// Why an image file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot read image ({reason})")]
    Read { path: String, reason: String },
    #[error("{path}: cannot decode image ({reason})")]
    Decode { path: String, reason: String },
}

/// Decoded pixels `[H0, W0, 3]` u8, row-major, in the channel order fed to the network.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedImage {
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
}

/// Decodes PNG or JPEG bytes the way `cv2.imread(IMREAD_COLOR)` does for the reference:
/// EXIF orientation applied, grayscale expanded, alpha dropped (not composited), CMYK
/// converted; then ordered as `utils.img_tensorize` orders it for `cfg` (RGB for a BGR config).
pub fn decode_image(
    bytes: &[u8],
    cfg: &DetectorConfig,
    shown: &str,
) -> Result<DecodedImage, ImageError> {
    let err = |reason: String| ImageError::Decode {
        path: shown.to_string(),
        reason,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| err(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    img.apply_orientation(orientation);
    let rgb = img.to_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    if width == 0 || height == 0 {
        return Err(err("empty image".into()));
    }
    let mut pixels = rgb.into_raw();
    if cfg.feeds_bgr() {
        for px in pixels.chunks_exact_mut(3) {
            px.swap(0, 2);
        }
    }
    Ok(DecodedImage {
        height,
        width,
        pixels,
    })
}

/// Reads and decodes an image file ([`decode_image`]).
pub fn load_image(
    path: &std::path::Path,
    cfg: &DetectorConfig,
) -> Result<DecodedImage, ImageError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ImageError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    decode_image(&bytes, cfg, &shown)
}

/// The network input of one image.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// `[3, h, w]` normalized pixels, row-major.
    pub image: Vec<f32>,
    /// Resized size `(h, w)`.
    pub size: (usize, usize),
    /// `(H0 / h, W0 / w)` in float32.
    pub scale_yx: [f32; 2],
}

/// `ResizeShortestEdge` at test time: the resized `(h, w)`.
pub fn resized_size(h: usize, w: usize, min_size: usize, max_size: usize) -> (usize, usize) {
    let size = min_size as f64;
    let scale = size / h.min(w) as f64;
    let (mut newh, mut neww) = if h < w {
        (size, scale * w as f64)
    } else {
        (scale * h as f64, size)
    };
    if newh.max(neww) > max_size as f64 {
        let s = max_size as f64 / newh.max(neww);
        newh *= s;
        neww *= s;
    }
    ((newh + 0.5) as usize, (neww + 0.5) as usize)
}

/// Source indices and weights of one output axis of PyTorch's bilinear interpolation
/// (`align_corners=False`): `src = (dst + 0.5) * in / out - 0.5` clamped at 0.
fn axis_weights(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|d| {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Resizes and normalizes one decoded image: `[3, h, w]`.
pub fn preprocess(img: &DecodedImage, cfg: &DetectorConfig) -> Preprocessed {
    let (h0, w0) = (img.height, img.width);
    let (h, w) = resized_size(h0, w0, cfg.min_size_test, cfg.max_size_test);
    let ys = axis_weights(h0, h);
    let xs = axis_weights(w0, w);
    let px = |y: usize, x: usize, c: usize| f32::from(img.pixels[(y * w0 + x) * 3 + c]);
    let mut image = vec![0f32; 3 * h * w];
    for c in 0..3 {
        let (mean, std) = (cfg.pixel_mean[c], cfg.pixel_std[c]);
        for (oy, &(y0, y1, hy0, hy1)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, wx0, wx1)) in xs.iter().enumerate() {
                let top = wx0 * px(y0, x0, c) + wx1 * px(y0, x1, c);
                let bottom = wx0 * px(y1, x0, c) + wx1 * px(y1, x1, c);
                let v = hy0 * top + hy1 * bottom;
                image[(c * h + oy) * w + ox] = (v - mean) / std;
            }
        }
    }
    Preprocessed {
        image,
        size: (h, w),
        scale_yx: [h0 as f32 / h as f32, w0 as f32 / w as f32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_rule_matches_the_fixture_table() {
        // (H0, W0) -> (h, w) of the fixture README, min 192 / max 320.
        for ((h0, w0), want) in [
            ((240, 320), (192, 256)),
            ((400, 240), (320, 192)),
            ((333, 500), (192, 288)),
            ((151, 97), (299, 192)),
            ((100, 400), (80, 320)),
        ] {
            assert_eq!(resized_size(h0, w0, 192, 320), want, "{h0}x{w0}");
        }
    }
}
