//! The HTTP service (axum + tokio): the model and index load once, every request shares them.
//!
//! | route | what |
//! |---|---|
//! | `POST /search` | `{"query": "...", "k": 10}` or `{"image_id": "...", "k": 10}` (optional `"filter"`: a Milvus boolean expression) → the CLI's `--json` answer |
//! | `GET /healthz` | `{"status": "ok", "images", "texts", "dim", "ann", "thumbnails", "store"}`; 503 and `"status": "unavailable"` while the vector store is down |
//! | `GET /metrics` | Prometheus text: requests by route and status, latency histograms |
//! | `GET /` | a search page (embedded; `/?q=TEXT` or `/?image=ID` runs a query on load) |
//! | `GET /thumbnails/{id}` | the JPEG of an indexed image from `--images DIR` |
//! | `POST /search/image?k=10` | an uploaded JPEG / PNG → captions and similar images ([`photo`], `--detector`) |
//!
//! Bad requests get a 4xx and `{"error": "one line"}`; a vector store that cannot be reached a
//! 503 with the same body. Searches run on tokio's blocking pool,
//! at most `max_concurrent` at once (the rest wait), so the async workers stay responsive.

pub mod metrics;
pub mod photo;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::retrieval::{ErrorClass, Query, RetrievalError, SearchService, check_k};
pub use metrics::Metrics;
pub use photo::PhotoHandle;

/// The page served at `/`.
pub const PAGE: &str = include_str!("page.html");
/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Directory holding the collection's JPEGs (thumbnails on the page).
    pub images_dir: Option<PathBuf>,
    /// Searches computed at once; more wait their turn.
    pub max_concurrent: usize,
    /// Search by photo (`POST /search/image`), when a detector is loaded.
    pub photo: Option<PhotoHandle>,
    /// Largest accepted photo upload, bytes.
    pub max_upload_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            images_dir: None,
            max_concurrent: std::thread::available_parallelism().map_or(2, |n| n.get()),
            photo: None,
            max_upload_bytes: photo::DEFAULT_MAX_UPLOAD,
        }
    }
}

/// Shared by every request.
pub struct AppState {
    service: Arc<dyn SearchService>,
    metrics: Metrics,
    images_dir: Option<PathBuf>,
    permits: Semaphore,
    photo: Option<PhotoHandle>,
    max_upload: usize,
}

impl AppState {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The routes, with their shared state.
pub fn router(service: Arc<dyn SearchService>, options: ServeOptions) -> Router {
    let state = Arc::new(AppState {
        service,
        metrics: Metrics::default(),
        images_dir: options.images_dir,
        permits: Semaphore::new(options.max_concurrent.max(1)),
        photo: options.photo,
        max_upload: options.max_upload_bytes,
    });
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/search", post(search))
        .route("/search/image", post(photo::search_image))
        .route("/thumbnails/{id}", get(thumbnail))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves `app` on `listener` (TCP_NODELAY on every connection) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` and serves until Ctrl-C (blocking; builds its own runtime).
pub fn run(
    service: Arc<dyn SearchService>,
    options: ServeOptions,
    addr: SocketAddr,
    on_ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        on_ready(listener.local_addr()?);
        let app = router(service, options);
        serve(listener, app, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })
}

/// A server running on a background thread (tests, benchmarks); stops when dropped.
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish, and waits for the thread.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.shutdown_now()
    }

    fn shutdown_now(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.shutdown_now();
    }
}

/// Starts a server on `addr` (port 0 picks a free one) in a background thread.
pub fn spawn(
    service: Arc<dyn SearchService>,
    options: ServeOptions,
    addr: SocketAddr,
) -> std::io::Result<RunningServer> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(service, options);
    let thread = std::thread::Builder::new()
        .name("lightningdot-serve".into())
        .spawn(move || {
            rt.block_on(serve(listener, app, async {
                let _ = rx.await;
            }))
        })?;
    Ok(RunningServer {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": msg.to_string() }))).into_response()
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        "/search" => "/search",
        "/search/image" => "/search/image",
        p if p.starts_with("/thumbnails/") => "/thumbnails",
        _ => "other",
    }
}

async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let started = Instant::now();
    let res = next.run(req).await;
    state.metrics.record_request(route, res.status().as_u16());
    if route == "/search" {
        state.metrics.observe_search(started.elapsed());
    }
    if route == "/search/image" {
        state.metrics.observe_photo_search(started.elapsed());
    }
    res
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let s = state.service.summary();
    // A remote store's check is a network round trip: off the async workers.
    let service = state.service.clone();
    let store = tokio::task::spawn_blocking(move || service.health())
        .await
        .unwrap_or_else(|e| crate::retrieval::StoreHealth::unavailable("store", e));
    let status = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = axum::Json(json!({
        "status": if store.is_ok() { "ok" } else { "unavailable" },
        "images": s.images,
        "texts": s.texts,
        "dim": s.dim,
        "ann": s.ann,
        "reranker": s.reranker,
        "thumbnails": state.images_dir.is_some(),
        "photo": state.photo.is_some(),
        "store": store,
    }));
    (status, body).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// `POST /search` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub k: Option<i64>,
    /// Boolean expression over the store's fields (Milvus stores only).
    #[serde(default)]
    pub filter: Option<String>,
}

impl SearchBody {
    /// The query and k it asks for, or why it is invalid.
    pub fn parse(self) -> Result<(Query, usize), RetrievalError> {
        self.parse_filtered().map(|(q, k, _)| (q, k))
    }

    /// The query, k and filter it asks for, or why it is invalid.
    pub fn parse_filtered(self) -> Result<(Query, usize, Option<String>), RetrievalError> {
        let filter = self.filter.filter(|f| !f.trim().is_empty());
        let k = check_k(self.k.unwrap_or(10))?;
        let q = match (self.query, self.image_id) {
            (Some(q), None) => Query::Text(q),
            (None, Some(id)) => Query::Image(id),
            (Some(_), Some(_)) => {
                return Err(RetrievalError::BadRequest(
                    "give either \"query\" or \"image_id\", not both".into(),
                ));
            }
            (None, None) => {
                return Err(RetrievalError::BadRequest(
                    "missing \"query\" (text -> images) or \"image_id\" (image -> texts)".into(),
                ));
            }
        };
        Ok((q, k, filter))
    }
}

fn status_of(e: &RetrievalError) -> StatusCode {
    status_for(e.class())
}

/// The HTTP status of an error class (every route answers errors the same way).
pub(crate) fn status_for(class: ErrorClass) -> StatusCode {
    match class {
        ErrorClass::BadRequest => StatusCode::BAD_REQUEST,
        ErrorClass::NotFound => StatusCode::NOT_FOUND,
        ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn search(
    State(state): State<Arc<AppState>>,
    body: Result<axum::Json<SearchBody>, JsonRejection>,
) -> Response {
    let body = match body {
        Ok(axum::Json(b)) => b,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    let (query, k, filter) = match body.parse_filtered() {
        Ok(v) => v,
        Err(e) => return error(status_of(&e), e),
    };
    let Ok(_permit) = state.permits.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    };
    state.metrics.enter();
    let service = state.service.clone();
    let answer =
        tokio::task::spawn_blocking(move || service.search_filtered(&query, k, filter.as_deref()))
            .await;
    state.metrics.leave();
    match answer {
        Ok(Ok(resp)) => {
            state
                .metrics
                .observe_stages(resp.timings_ms.encode, resp.timings_ms.candidates);
            if let Some(ms) = resp.timings_ms.rerank {
                state.metrics.observe_rerank(ms);
            }
            axum::Json(resp).into_response()
        }
        Ok(Err(e)) => {
            if matches!(e.class(), ErrorClass::Internal | ErrorClass::Unavailable) {
                tracing::error!("search failed: {e}");
            }
            error(status_of(&e), e)
        }
        Err(e) => {
            tracing::error!("search task failed: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "search failed")
        }
    }
}

/// File names a JPEG of image db entry `id` may have: `{stem}.jpg` (and .jpeg/.png), COCO's
/// `COCO_{split}_{number}.jpg` for `coco_{split}_{number}.npz`, and Flickr30K's `{number}.jpg`
/// for `flickr30k_{zero-padded number}.npz`.
pub fn thumbnail_names(id: &str) -> Vec<String> {
    let stem = id.strip_suffix(".npz").unwrap_or(id);
    let mut names: Vec<String> = ["jpg", "jpeg", "png"]
        .iter()
        .map(|e| format!("{stem}.{e}"))
        .collect();
    if let Some(rest) = stem.strip_prefix("coco_") {
        names.push(format!("COCO_{rest}.jpg"));
    }
    if let Some((_, num)) = stem.rsplit_once('_')
        && !num.is_empty()
        && num.chars().all(|c| c.is_ascii_digit())
    {
        let n = num.trim_start_matches('0');
        names.push(format!("{}.jpg", if n.is_empty() { "0" } else { n }));
    }
    names
}

fn find_thumbnail(dir: &Path, id: &str) -> Option<PathBuf> {
    thumbnail_names(id)
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

async fn thumbnail(State(state): State<Arc<AppState>>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(dir) = &state.images_dir else {
        return error(
            StatusCode::NOT_FOUND,
            "the server was started without --images",
        );
    };
    // Only indexed ids, and nothing that could leave the directory.
    if id.contains(['/', '\\']) || id.starts_with('.') || !state.service.has_image(&id) {
        return error(StatusCode::NOT_FOUND, format!("unknown image id {id:?}"));
    }
    let Some(path) = find_thumbnail(dir, &id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no image file for {id:?} in {}", dir.display()),
        );
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let ct = if path.extension().is_some_and(|e| e == "png") {
                "image/png"
            } else {
                "image/jpeg"
            };
            (
                [
                    (header::CONTENT_TYPE, ct),
                    (header::CACHE_CONTROL, "max-age=3600"),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {}: {e}", path.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_names_cover_flickr_and_coco() {
        let f = thumbnail_names("flickr30k_000000036013.npz");
        assert!(f.contains(&"36013.jpg".to_string()));
        assert!(f.contains(&"flickr30k_000000036013.jpg".to_string()));
        let c = thumbnail_names("coco_val2014_000000391895.npz");
        assert!(c.contains(&"COCO_val2014_000000391895.jpg".to_string()));
    }

    #[test]
    fn body_validation() {
        let b = |s: &str| serde_json::from_str::<SearchBody>(s).unwrap().parse();
        assert_eq!(
            b(r#"{"query": "a dog"}"#).unwrap(),
            (Query::Text("a dog".into()), 10)
        );
        assert!(matches!(
            b(r#"{"query": "x", "k": 0}"#),
            Err(RetrievalError::BadK { .. })
        ));
        assert!(matches!(
            b(r#"{"query": "x", "k": 10001}"#),
            Err(RetrievalError::BadK { .. })
        ));
        assert!(b(r#"{"query": "x", "image_id": "y"}"#).is_err());
        assert!(b(r#"{}"#).is_err());
        assert!(serde_json::from_str::<SearchBody>(r#"{"q": "x"}"#).is_err());
    }
}
