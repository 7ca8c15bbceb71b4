//! `POST /search/image?k=10`: search by an uploaded photo (`serve --detector DIR`).
//!
//! The body is the image itself (`Content-Type: image/jpeg` or `image/png`) or a
//! `multipart/form-data` form whose first file part is one (what a browser's file input
//! sends). Errors, as on the other routes, are one-line JSON: 415 for any other type, 413 above
//! the upload limit (checked on `Content-Length` before reading, and while reading), 400 for a
//! file that does not decode, 404 when the server has no detector.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AppState, error};
use crate::retrieval::photo::PhotoService;
use crate::retrieval::{ErrorClass, check_k};

/// Default largest accepted upload (`serve --max-upload-mb`).
pub const DEFAULT_MAX_UPLOAD: usize = 10 << 20;

/// The image types the detector decodes.
pub const IMAGE_TYPES: [&str; 2] = ["image/jpeg", "image/png"];

/// The photo service a server answers `/search/image` with.
#[derive(Clone)]
pub struct PhotoHandle(pub Arc<dyn PhotoService>);

impl std::fmt::Debug for PhotoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhotoHandle")
    }
}

/// `?k=` of `/search/image`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotoParams {
    #[serde(default)]
    pub k: Option<i64>,
}

/// Why an upload is refused before the detector sees it (status, message).
type Refusal = (StatusCode, String);

/// The media type of a `Content-Type` value, lower-cased, without parameters.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn unsupported(what: &str) -> Refusal {
    (
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "unsupported upload type {what:?}: send the photo as image/jpeg or image/png (raw \
             body, or a multipart/form-data file field)"
        ),
    )
}

/// The `boundary` parameter of a multipart `Content-Type`.
fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

/// The first file part of a `multipart/form-data` body (RFC 7578): its bytes and its own
/// Content-Type. Parts without a `filename` (plain form fields) are skipped.
pub fn multipart_file(body: &[u8], boundary: &str) -> Result<(Vec<u8>, String), String> {
    let delimiter = format!("--{boundary}");
    let mut at = find(body, delimiter.as_bytes(), 0)
        .ok_or("multipart body without its boundary".to_string())?;
    loop {
        at += delimiter.len();
        if body[at..].starts_with(b"--") {
            return Err("multipart body has no file part".into());
        }
        let head_end = find(body, b"\r\n\r\n", at)
            .ok_or("multipart part without a header block".to_string())?;
        let head = String::from_utf8_lossy(&body[at..head_end]).to_ascii_lowercase();
        let content_start = head_end + 4;
        let next = find(body, format!("\r\n{delimiter}").as_bytes(), content_start)
            .ok_or("multipart part without a closing boundary".to_string())?;
        let is_file = head
            .lines()
            .any(|l| l.starts_with("content-disposition:") && l.contains("filename="));
        if is_file {
            let ct = head
                .lines()
                .find_map(|l| l.strip_prefix("content-type:"))
                .map(media_type)
                .unwrap_or_default();
            return Ok((body[content_start..next].to_vec(), ct));
        }
        at = next + 2;
    }
}

/// The image bytes of a raw or multipart body (whose type [`read_upload`] checked).
fn image_bytes(content_type: &str, body: Bytes) -> Result<Vec<u8>, Refusal> {
    if IMAGE_TYPES.contains(&media_type(content_type).as_str()) {
        return Ok(body.to_vec());
    }
    let b = boundary(content_type).ok_or((
        StatusCode::BAD_REQUEST,
        "multipart/form-data without a boundary".to_string(),
    ))?;
    let (bytes, part_type) = multipart_file(&body, &b).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    if !IMAGE_TYPES.contains(&part_type.as_str()) {
        return Err(unsupported(&part_type));
    }
    Ok(bytes)
}

fn too_large(limit: usize) -> Refusal {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("upload is larger than the server's limit of {limit} bytes"),
    )
}

/// Content type checked, then the body read up to `limit` bytes.
async fn read_upload(headers: &HeaderMap, req: Request, limit: usize) -> Result<Vec<u8>, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let media = media_type(&content_type);
    if !IMAGE_TYPES.contains(&media.as_str()) && media != "multipart/form-data" {
        return Err(unsupported(if media.is_empty() {
            "(no Content-Type)"
        } else {
            &media
        }));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large(limit))?;
    if body.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "empty upload".into()));
    }
    image_bytes(&content_type, body)
}

pub(super) async fn search_image(
    State(state): State<Arc<AppState>>,
    params: Result<Query<PhotoParams>, QueryRejection>,
    req: Request,
) -> Response {
    let Some(photo) = state.photo.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "search by photo is off: start the server with --detector DIR",
        );
    };
    let k = match params {
        Ok(Query(p)) => match check_k(p.k.unwrap_or(10)) {
            Ok(k) => k,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let headers = req.headers().clone();
    let bytes = match read_upload(&headers, req, state.max_upload).await {
        Ok(b) => b,
        Err((status, msg)) => return error(status, msg),
    };
    let Ok(_permit) = state.permits.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    };
    state.metrics.enter();
    let answer = tokio::task::spawn_blocking(move || photo.0.search_photo(&bytes, k)).await;
    state.metrics.leave();
    match answer {
        Ok(Ok(resp)) => {
            let t = resp.timings_ms;
            state
                .metrics
                .observe_photo(t.decode + t.detect, t.encode, t.candidates);
            axum::Json(resp).into_response()
        }
        Ok(Err(e)) => {
            let class = e.class();
            if matches!(class, ErrorClass::Internal | ErrorClass::Unavailable) {
                tracing::error!("photo search failed: {e}");
            }
            let status = super::status_for(class);
            // Decoder messages can span lines; the answer is one line.
            error(status, e.to_string().replace('\n', " "))
        }
        Err(e) => {
            tracing::error!("photo search task failed: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "photo search failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_takes_the_first_file_part() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n5\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"photo\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\
\x89PNG\r\n--X\r\n--XyZ--\r\n";
        let (bytes, ct) = multipart_file(body, "XyZ").unwrap();
        assert_eq!(bytes, b"\x89PNG\r\n--X");
        assert_eq!(ct, "image/png");
        assert!(multipart_file(b"--XyZ--\r\n", "XyZ").is_err());
        assert!(multipart_file(b"no boundary", "XyZ").is_err());
        assert_eq!(
            boundary("multipart/form-data; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(media_type(" Image/PNG ; q=1"), "image/png");
    }
}
