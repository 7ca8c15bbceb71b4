//! A Milvus collection as a store (feature `milvus`), and the upload that fills it.
//!
//! ```text
//! COLLECTION        row (Int64, primary key: the image's row in the index order)
//!                   image_id (VarChar), captions (VarChar: JSON [{"id", "text"}]), vector
//! COLLECTION_texts  row (Int64, primary key), text_id, image_id, text (VarChar), vector
//! ```
//!
//! Both use the inner-product metric, so scores are the model's dot products, as in the
//! directory store. The image collection's description holds the index metadata without its id
//! lists (model, source dbs, box selection, the Milvus index type) as JSON: the re-ranker and
//! the query side read it back.
//!
//! Rows are keyed by their position in the index order, so an upload is resumable: before
//! inserting, the rows already stored are read back (strong consistency) and only the missing
//! ones are sent; Milvus does not deduplicate primary keys on insert, so this is what keeps each
//! id stored once after a `kill -9`.
//!
//! Milvus queries only loaded collections and loads only indexed ones, so the upload declares
//! the index and loads the collection first (a rerun can then read what is stored), inserts,
//! and at the end waits for the data to be persisted and indexed before loading it again.
//!
//! Two traps of the 2.3 servers: `flush()` returns before the segments are persisted (the
//! upload polls them until all are Flushed, then the index until it covers every row, then
//! reloads; otherwise searches run on a temporary index), and search results carry no
//! primary-field name (the hits are read from their id and score columns, not through the
//! SDK's row view).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use milvus::v2::prelude::{
    ClientV2, CollectionSchema, ConnectConfig, ConsistencyLevel, CreateCollectionRequest,
    CreateIndexRequest, DataType, DescribeCollectionRequest, DescribeIndexRequest, Error,
    FieldData, FieldSchema, FlushRequest, GetCollectionStatsRequest, HasCollectionRequest,
    IndexParam, IndexStateCode, IndexType, InsertRequest, ListPersistentSegmentsRequest,
    LoadCollectionRequest, MetricType, QueryRequest, ReleaseCollectionRequest, RetryConfig,
    SearchRequest, SearchVectors, SegmentState, TelemetryConfig,
};
use serde::{Deserialize, Serialize};

use super::{
    MilvusIndex, MilvusIndexKind, MilvusSearchParams, MilvusUrl, StoreCounts, StoreHealth,
    VectorStore,
};
use crate::retrieval::RetrievalError;
use crate::retrieval::format::{IndexMeta, StoredIndex};
use crate::retrieval::pipeline::{Caption, Query, ResultHit};

const ROW: &str = "row";
const IMAGE_ID: &str = "image_id";
const CAPTIONS: &str = "captions";
const TEXT_ID: &str = "text_id";
const TEXT: &str = "text";
const VECTOR: &str = "vector";
/// Longest id stored (image db names, caption ids).
const MAX_ID_LEN: usize = 1024;
/// Milvus' VarChar limit, for the captions JSON and the caption text.
const MAX_TEXT_LEN: usize = 65_535;
/// Most rows one query may return (Milvus' offset + limit cap).
const QUERY_WINDOW: i64 = 16_384;

/// What the image collection's description records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CollectionInfo {
    /// `lightningdot-milvus`.
    format: String,
    /// The index metadata without id lists.
    meta: IndexMeta,
    /// Milvus index type name (`FLAT`, `HNSW`, ...).
    index: String,
    /// Whether a caption collection goes with it.
    texts: bool,
}

const INFO_FORMAT: &str = "lightningdot-milvus";

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Limit of connecting.
    pub connect_timeout: Duration,
    /// Limit of each RPC attempt.
    pub timeout: Duration,
    /// Attempts per RPC, the first included (transport failures and retryable server codes).
    pub attempts: u32,
    /// `user:password` or an API key, for servers with authentication.
    pub token: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            attempts: 3,
            token: None,
        }
    }
}

/// A connection: the SDK is async; this crate's callers are not, so each connection owns a
/// small runtime and blocks on it (also from tokio's blocking pool, where the server calls it).
struct Conn {
    url: MilvusUrl,
    /// Always `Some` until dropped (taken by `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    client: ClientV2,
}

impl Drop for Conn {
    /// The last owner may be an async task (the HTTP server's state is dropped on its
    /// runtime), where a blocking shutdown would panic.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One line: SDK messages can carry gRPC details over several lines.
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_missing_collection(e: &Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("collection not found")
        || text.contains("can't find collection")
        || text.contains("collection not exist")
        || text.contains("does not exist")
}

fn is_transport(e: &Error) -> bool {
    match e {
        Error::Grpc(_) | Error::Timeout(_) | Error::Cancelled(_) => true,
        Error::RetryExhausted { source, .. } => is_transport(source),
        _ => false,
    }
}

impl Conn {
    fn connect(url: &MilvusUrl, options: &ConnectOptions) -> Result<Self, RetrievalError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("milvus-client")
            .enable_all()
            .build()
            .map_err(|e| RetrievalError::Store {
                store: url.to_string(),
                reason: format!("cannot start the client runtime: {e}"),
            })?;
        let mut config = ConnectConfig::new()
            .uri(url.endpoint())
            .connect_timeout(options.connect_timeout)
            .rpc_timeout(options.timeout)
            .retry(
                RetryConfig::new()
                    .max_attempts(options.attempts.max(1))
                    .max_retry_timeout(options.timeout * options.attempts.max(1))
                    .max_backoff(Duration::from_secs(1)),
            )
            .telemetry(TelemetryConfig::new().enabled(false));
        if let Some(token) = &options.token {
            config = config.token(token.clone());
        }
        let client =
            rt.block_on(ClientV2::new(&config))
                .map_err(|e| RetrievalError::StoreUnavailable {
                    store: url.to_string(),
                    reason: format!("cannot connect to Milvus: {}", one_line(e)),
                })?;
        Ok(Self {
            url: url.clone(),
            rt: Some(rt),
            client,
        })
    }

    // The SDK's own error, turned into a RetrievalError by `Conn::error` at every call site.
    #[allow(clippy::result_large_err)]
    fn block<T>(&self, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => Err(Error::Unexpected("the client is closed".into())),
        }
    }

    /// A Milvus error as this crate's: unreachable and missing collections are
    /// [`RetrievalError::StoreUnavailable`] (503), the rest [`RetrievalError::Store`].
    fn error(&self, what: &str, e: Error) -> RetrievalError {
        let store = self.url.to_string();
        if is_transport(&e) {
            RetrievalError::StoreUnavailable {
                store,
                reason: format!("{what}: Milvus is unreachable ({})", one_line(e)),
            }
        } else if is_missing_collection(&e) {
            RetrievalError::StoreUnavailable {
                store,
                reason: format!(
                    "{what}: the collection does not exist (upload it with `lightningdot index --to {}`)",
                    self.url
                ),
            }
        } else {
            RetrievalError::Store {
                store,
                reason: format!("{what}: {}", one_line(e)),
            }
        }
    }

    fn has_collection(&self, name: &str) -> Result<bool, RetrievalError> {
        let req = HasCollectionRequest::builder()
            .collection_name(name)
            .build()
            .map_err(|e| self.error("has_collection", e))?;
        self.block(self.client.has_collection(req))
            .map(|r| r.exists())
            .map_err(|e| self.error("has_collection", e))
    }

    fn missing(&self, name: &str) -> RetrievalError {
        RetrievalError::StoreUnavailable {
            store: self.url.to_string(),
            reason: format!(
                "collection {name} does not exist (upload it with `lightningdot index --to {}`)",
                self.url
            ),
        }
    }

    /// The collection's description and vector size.
    fn describe(&self, name: &str) -> Result<(String, usize), RetrievalError> {
        let req = DescribeCollectionRequest::builder()
            .collection_name(name)
            .build()
            .map_err(|e| self.error("describe_collection", e))?;
        let r = self
            .block(self.client.describe_collection(req))
            .map_err(|e| self.error("describe_collection", e))?;
        let desc = r.description();
        let dim = desc
            .get_schema()
            .get_fields()
            .iter()
            .find(|f| f.get_name() == VECTOR)
            .map(|f| f.get_dimension() as usize)
            .ok_or_else(|| RetrievalError::Store {
                store: self.url.to_string(),
                reason: format!(
                    "collection {name} has no {VECTOR:?} field: not written by lightningdot"
                ),
            })?;
        Ok((desc.get_description().to_string(), dim))
    }

    fn row_count(&self, name: &str) -> Result<usize, RetrievalError> {
        let req = GetCollectionStatsRequest::builder()
            .collection_name(name)
            .build()
            .map_err(|e| self.error("get_collection_stats", e))?;
        let r = self
            .block(self.client.get_collection_stats(req))
            .map_err(|e| self.error("get_collection_stats", e))?;
        Ok(r.row_count().unwrap_or(0).max(0) as usize)
    }

    /// Primary keys stored in `name` (strongly consistent: every acknowledged insert counts).
    fn stored_rows(&self, name: &str, upto: i64) -> Result<HashSet<i64>, RetrievalError> {
        let mut rows = HashSet::new();
        let mut start = 0;
        while start < upto {
            let req = QueryRequest::builder()
                .collection_name(name)
                .filter(format!(
                    "{ROW} >= {start} and {ROW} < {}",
                    start + QUERY_WINDOW
                ))
                .output_fields([ROW])
                .limit(QUERY_WINDOW)
                .consistency_level(ConsistencyLevel::Strong)
                .build()
                .map_err(|e| self.error("query", e))?;
            let r = self
                .block(self.client.query(req))
                .map_err(|e| self.error("query stored rows", e))?;
            if let Some(v) = r.results().get_output_field(ROW).and_then(|f| f.as_int64()) {
                rows.extend(v.iter().copied());
            }
            start += QUERY_WINDOW;
        }
        Ok(rows)
    }
}

/// A string literal of Milvus' expression language.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Output fields of a search, by name: one value per hit.
type Columns = HashMap<String, Vec<String>>;

/// A Milvus collection opened for search.
pub struct MilvusStore {
    conn: Conn,
    meta: IndexMeta,
    kind: MilvusIndexKind,
    counts: StoreCounts,
    has_texts: bool,
    params: MilvusSearchParams,
}

impl MilvusStore {
    /// Connects, checks the collection exists and reads its metadata and size.
    pub fn open(
        url: &MilvusUrl,
        params: MilvusSearchParams,
        options: &ConnectOptions,
    ) -> Result<Self, RetrievalError> {
        let conn = Conn::connect(url, options)?;
        if !conn.has_collection(&url.collection)? {
            return Err(conn.missing(&url.collection));
        }
        let (description, dim) = conn.describe(&url.collection)?;
        let info: CollectionInfo = serde_json::from_str(&description)
            .ok()
            .filter(|i: &CollectionInfo| i.format == INFO_FORMAT)
            .ok_or_else(|| RetrievalError::Store {
                store: url.to_string(),
                reason: "the collection was not written by `lightningdot index --to` (no metadata in its description)".into(),
            })?;
        let kind = info.index.parse().unwrap_or_default();
        let has_texts = info.texts && conn.has_collection(&url.texts_collection())?;
        let counts = StoreCounts {
            images: conn.row_count(&url.collection)?,
            texts: if has_texts {
                conn.row_count(&url.texts_collection())?
            } else {
                0
            },
            dim,
            ann: kind != MilvusIndexKind::Flat,
        };
        Ok(Self {
            conn,
            meta: info.meta,
            kind,
            counts,
            has_texts,
            params,
        })
    }

    /// The Milvus index the collection was built with.
    pub fn index_kind(&self) -> MilvusIndexKind {
        self.kind
    }

    fn search(
        &self,
        collection: &str,
        vector: &[f32],
        k: usize,
        filter: Option<&str>,
        output: &[&str],
    ) -> Result<(Vec<f32>, Columns), RetrievalError> {
        let mut req = SearchRequest::builder()
            .collection_name(collection)
            .vector_field(VECTOR)
            .vectors(SearchVectors::Float(vec![vector.to_vec()]))
            .output_fields(output.iter().copied())
            .limit(k as i64)
            .metric_type(MetricType::Ip)
            .extra_params(self.params.params(self.kind, k))
            .consistency_level(ConsistencyLevel::Bounded);
        if let Some(f) = filter {
            req = req.filter(f);
        }
        let req = req.build().map_err(|e| self.conn.error("search", e))?;
        let resp = self.conn.block(self.conn.client.search(req)).map_err(|e| {
            let err = self.conn.error("search", e);
            // The server rejects a malformed filter: the request's fault, not the store's.
            match (err, filter) {
                (RetrievalError::Store { reason, .. }, Some(f)) => {
                    RetrievalError::BadRequest(format!("filter {f:?}: {reason}"))
                }
                (err, _) => err,
            }
        })?;
        let Some(hit) = resp.results().iter().next() else {
            return Ok((Vec::new(), HashMap::new()));
        };
        let scores = hit.get_scores().to_vec();
        let mut fields = HashMap::new();
        for name in output {
            let values = hit
                .get_output_field(name)
                .and_then(|f| f.as_varchar())
                .map(<[String]>::to_vec)
                .unwrap_or_default();
            if values.len() != scores.len() {
                return Err(RetrievalError::Store {
                    store: self.conn.url.to_string(),
                    reason: format!(
                        "search returned {} {name} values for {} hits",
                        values.len(),
                        scores.len()
                    ),
                });
            }
            fields.insert(name.to_string(), values);
        }
        Ok((scores, fields))
    }
}

impl VectorStore for MilvusStore {
    fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    fn counts(&self) -> StoreCounts {
        self.counts
    }

    fn has_texts(&self) -> bool {
        self.has_texts
    }

    fn method(&self, _query: &Query) -> &'static str {
        "milvus"
    }

    fn image_vector(&self, id: &str) -> Result<Vec<f32>, RetrievalError> {
        let req = QueryRequest::builder()
            .collection_name(&self.conn.url.collection)
            .filter(format!("{IMAGE_ID} == {}", quoted(id)))
            .output_fields([VECTOR])
            .limit(1)
            .build()
            .map_err(|e| self.conn.error("query", e))?;
        let r = self
            .conn
            .block(self.conn.client.query(req))
            .map_err(|e| self.conn.error("query image vector", e))?;
        r.results()
            .get_output_field(VECTOR)
            .and_then(|f| f.as_float_vectors())
            .and_then(|v| v.first())
            .cloned()
            .ok_or_else(|| RetrievalError::UnknownImage(id.to_string()))
    }

    fn has_image(&self, id: &str) -> bool {
        self.image_vector(id).is_ok()
    }

    fn search_images(
        &self,
        vector: &[f32],
        k: usize,
        filter: Option<&str>,
    ) -> Result<Vec<ResultHit>, RetrievalError> {
        let (scores, mut fields) = self.search(
            &self.conn.url.collection,
            vector,
            k,
            filter,
            &[IMAGE_ID, CAPTIONS],
        )?;
        let ids = fields.remove(IMAGE_ID).unwrap_or_default();
        let captions = fields.remove(CAPTIONS).unwrap_or_default();
        Ok(scores
            .into_iter()
            .zip(ids)
            .zip(captions)
            .map(|((score, id), caps)| {
                let captions = self.has_texts.then(|| {
                    serde_json::from_str::<Vec<StoredCaption>>(&caps)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|c| Caption {
                            id: c.id,
                            text: c.text,
                        })
                        .collect()
                });
                ResultHit::image(id, score, captions)
            })
            .collect())
    }

    fn search_texts(
        &self,
        vector: &[f32],
        k: usize,
        filter: Option<&str>,
    ) -> Result<Vec<ResultHit>, RetrievalError> {
        if !self.has_texts {
            return Err(RetrievalError::NoTexts);
        }
        let (scores, mut fields) = self.search(
            &self.conn.url.texts_collection(),
            vector,
            k,
            filter,
            &[TEXT_ID, IMAGE_ID, TEXT],
        )?;
        let ids = fields.remove(TEXT_ID).unwrap_or_default();
        let images = fields.remove(IMAGE_ID).unwrap_or_default();
        let texts = fields.remove(TEXT).unwrap_or_default();
        Ok(scores
            .into_iter()
            .zip(ids)
            .zip(images.into_iter().zip(texts))
            // Text is stored as "" when the txt_db kept none.
            .map(|((score, id), (image, text))| {
                ResultHit::caption(id, score, (!text.is_empty()).then_some(text), Some(image))
            })
            .collect())
    }

    fn health(&self) -> StoreHealth {
        let store = self.conn.url.to_string();
        match self.conn.has_collection(&self.conn.url.collection) {
            Ok(true) => StoreHealth::ok(store),
            Ok(false) => {
                StoreHealth::unavailable(store, self.conn.missing(&self.conn.url.collection))
            }
            Err(e) => StoreHealth::unavailable(store, e),
        }
    }
}

/// A caption of an image row, as stored in its `captions` JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredCaption {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One image to upload.
#[derive(Debug, Clone)]
pub struct ImageRow {
    /// Position in the index order (the primary key).
    pub row: usize,
    pub id: String,
    pub captions: Vec<StoredCaption>,
    pub vector: Vec<f32>,
}

/// One caption to upload.
#[derive(Debug, Clone)]
pub struct TextRow {
    pub row: usize,
    pub id: String,
    pub image: String,
    pub text: Option<String>,
    pub vector: Vec<f32>,
}

/// How to upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub index: MilvusIndex,
    /// Rows per insert request.
    pub batch_rows: usize,
    /// Longest wait for flushing, index building and loading.
    pub wait: Duration,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            index: MilvusIndex::default(),
            batch_rows: 2000,
            wait: Duration::from_secs(1800),
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, Default)]
pub struct UploadReport {
    /// Rows stored before this run (resumed uploads).
    pub images_present: usize,
    pub texts_present: usize,
    /// Rows sent by this run.
    pub images_sent: usize,
    pub texts_sent: usize,
    /// Seconds spent inserting.
    pub insert_seconds: f64,
    /// Seconds spent waiting for flush, index and load.
    pub finish_seconds: f64,
}

/// Fills a collection pair: [`Uploader::start`] creates them (or reads what a killed run
/// stored), [`Uploader::send_images`] / [`Uploader::send_texts`] insert only missing rows,
/// [`Uploader::finish`] flushes, builds the index and loads.
pub struct Uploader {
    conn: Conn,
    options: UploadOptions,
    images_present: HashSet<i64>,
    texts_present: HashSet<i64>,
    report: UploadReport,
}

impl Uploader {
    /// Connects and creates the collections for `meta` (`dim`-d vectors, captions when
    /// `texts`), or, when they exist, checks they match and reads which of the first
    /// `images` / `text_rows` rows they hold.
    pub fn start(
        url: &MilvusUrl,
        meta: &IndexMeta,
        dim: usize,
        rows: (usize, usize),
        texts: bool,
        options: UploadOptions,
        connect: &ConnectOptions,
    ) -> Result<Self, RetrievalError> {
        let conn = Conn::connect(url, connect)?;
        let kind = options.index.kind;
        // Check the parameters before anything is created.
        options.index.params(dim)?;
        let mut stripped = meta.clone();
        stripped.images.ids.clear();
        stripped.images.captions = None;
        stripped.texts = stripped.texts.map(|mut t| {
            t.ids.clear();
            t.raw.clear();
            t.image.clear();
            t
        });
        stripped.dim = dim;
        let info = CollectionInfo {
            format: INFO_FORMAT.into(),
            meta: stripped,
            index: kind.name().into(),
            texts,
        };
        let description = serde_json::to_string(&info).map_err(|e| RetrievalError::Store {
            store: url.to_string(),
            reason: e.to_string(),
        })?;
        let mut up = Self {
            conn,
            options,
            images_present: HashSet::new(),
            texts_present: HashSet::new(),
            report: UploadReport::default(),
        };
        if up.conn.has_collection(&url.collection)? {
            let (desc, stored_dim) = up.conn.describe(&url.collection)?;
            let stored: Option<CollectionInfo> = serde_json::from_str(&desc).ok();
            let stored_index = stored.as_ref().map(|i| i.index.clone());
            if stored_dim != dim || stored_index.as_deref() != Some(kind.name()) {
                return Err(RetrievalError::Store {
                    store: url.to_string(),
                    reason: format!(
                        "the collection exists with {stored_dim}-d vectors and index {}; this upload has {dim}-d vectors and {}: drop it or upload elsewhere",
                        stored_index.as_deref().unwrap_or("unknown"),
                        kind.name()
                    ),
                });
            }
            up.ready(&url.collection)?;
            up.images_present = up.conn.stored_rows(&url.collection, rows.0 as i64)?;
            tracing::info!(
                "{url}: resuming, {} of {} images already stored",
                up.images_present.len(),
                rows.0
            );
        } else {
            up.create(&url.collection, &description, dim, false)?;
            up.ready(&url.collection)?;
        }
        if texts {
            let name = url.texts_collection();
            if up.conn.has_collection(&name)? {
                up.ready(&name)?;
                up.texts_present = up.conn.stored_rows(&name, rows.1 as i64)?;
                tracing::info!(
                    "{url}: resuming, {} of {} captions already stored",
                    up.texts_present.len(),
                    rows.1
                );
            } else {
                up.create(&name, "lightningdot captions", dim, true)?;
                up.ready(&name)?;
            }
        }
        up.report.images_present = up.images_present.len();
        up.report.texts_present = up.texts_present.len();
        Ok(up)
    }

    fn create(
        &self,
        name: &str,
        description: &str,
        dim: usize,
        texts: bool,
    ) -> Result<(), RetrievalError> {
        let varchar = |n: &str, len: usize| {
            FieldSchema::new()
                .name(n)
                .data_type(DataType::VarChar)
                .max_length(len as u32)
        };
        let mut schema = CollectionSchema::new().add_field(
            FieldSchema::new()
                .name(ROW)
                .data_type(DataType::Int64)
                .primary_key(true),
        );
        schema = if texts {
            schema
                .add_field(varchar(TEXT_ID, MAX_ID_LEN))
                .add_field(varchar(IMAGE_ID, MAX_ID_LEN))
                .add_field(varchar(TEXT, MAX_TEXT_LEN))
        } else {
            schema
                .add_field(varchar(IMAGE_ID, MAX_ID_LEN))
                .add_field(varchar(CAPTIONS, MAX_TEXT_LEN))
        };
        schema = schema.add_field(
            FieldSchema::new()
                .name(VECTOR)
                .data_type(DataType::FloatVector)
                .dimension(dim as u32),
        );
        let req = CreateCollectionRequest::builder()
            .collection_name(name)
            .description(description)
            .schema(schema)
            .consistency_level(ConsistencyLevel::Bounded)
            .build()
            .map_err(|e| self.conn.error("create_collection", e))?;
        self.conn
            .block(self.conn.client.create_collection(req))
            .map_err(|e| self.conn.error(&format!("create collection {name}"), e))?;
        tracing::info!("{}: created collection {name} ({dim}-d)", self.conn.url);
        Ok(())
    }

    /// Whether image row `row` still has to be sent (lets the caller skip encoding it).
    pub fn image_missing(&self, row: usize) -> bool {
        !self.images_present.contains(&(row as i64))
    }

    /// Whether caption row `row` still has to be sent.
    pub fn text_missing(&self, row: usize) -> bool {
        !self.texts_present.contains(&(row as i64))
    }

    fn check(&self, id: &str, what: &str, len: usize, max: usize) -> Result<(), RetrievalError> {
        if len > max {
            return Err(RetrievalError::Store {
                store: self.conn.url.to_string(),
                reason: format!("{what} of {id:?} is {len} bytes; Milvus stores at most {max}"),
            });
        }
        Ok(())
    }

    fn insert(&self, name: &str, columns: Vec<FieldData>) -> Result<(), RetrievalError> {
        let req = InsertRequest::builder()
            .collection_name(name)
            .columns(columns)
            .build()
            .map_err(|e| self.conn.error("insert", e))?;
        self.conn
            .block(self.conn.client.insert(req))
            .map_err(|e| self.conn.error(&format!("insert into {name}"), e))?;
        Ok(())
    }

    /// Inserts the rows not yet stored, `batch_rows` per request. Returns how many were sent.
    pub fn send_images(&mut self, rows: Vec<ImageRow>) -> Result<usize, RetrievalError> {
        let started = Instant::now();
        let rows: Vec<ImageRow> = rows
            .into_iter()
            .filter(|r| self.image_missing(r.row))
            .collect();
        let mut sent = 0;
        for batch in rows.chunks(self.options.batch_rows.max(1)) {
            let mut keys = Vec::with_capacity(batch.len());
            let mut ids = Vec::with_capacity(batch.len());
            let mut caps = Vec::with_capacity(batch.len());
            let mut vectors = Vec::with_capacity(batch.len());
            for r in batch {
                let json = serde_json::to_string(&r.captions).unwrap_or_else(|_| "[]".into());
                self.check(&r.id, "the id", r.id.len(), MAX_ID_LEN)?;
                self.check(&r.id, "the captions JSON", json.len(), MAX_TEXT_LEN)?;
                keys.push(r.row as i64);
                ids.push(r.id.clone());
                caps.push(json);
                vectors.push(r.vector.clone());
            }
            self.insert(
                &self.conn.url.collection,
                vec![
                    FieldData::int64(ROW, keys.clone()),
                    FieldData::varchar(IMAGE_ID, ids),
                    FieldData::varchar(CAPTIONS, caps),
                    FieldData::float_vector(VECTOR, vectors),
                ],
            )?;
            self.images_present.extend(keys);
            sent += batch.len();
        }
        self.report.images_sent += sent;
        self.report.insert_seconds += started.elapsed().as_secs_f64();
        Ok(sent)
    }

    /// Inserts the caption rows not yet stored. Returns how many were sent.
    pub fn send_texts(&mut self, rows: Vec<TextRow>) -> Result<usize, RetrievalError> {
        let started = Instant::now();
        let name = self.conn.url.texts_collection();
        let rows: Vec<TextRow> = rows
            .into_iter()
            .filter(|r| self.text_missing(r.row))
            .collect();
        let mut sent = 0;
        for batch in rows.chunks(self.options.batch_rows.max(1)) {
            let mut keys = Vec::with_capacity(batch.len());
            let mut ids = Vec::with_capacity(batch.len());
            let mut images = Vec::with_capacity(batch.len());
            let mut texts = Vec::with_capacity(batch.len());
            let mut vectors = Vec::with_capacity(batch.len());
            for r in batch {
                let text = r.text.clone().unwrap_or_default();
                self.check(&r.id, "the id", r.id.len().max(r.image.len()), MAX_ID_LEN)?;
                self.check(&r.id, "the text", text.len(), MAX_TEXT_LEN)?;
                keys.push(r.row as i64);
                ids.push(r.id.clone());
                images.push(r.image.clone());
                texts.push(text);
                vectors.push(r.vector.clone());
            }
            self.insert(
                &name,
                vec![
                    FieldData::int64(ROW, keys.clone()),
                    FieldData::varchar(TEXT_ID, ids),
                    FieldData::varchar(IMAGE_ID, images),
                    FieldData::varchar(TEXT, texts),
                    FieldData::float_vector(VECTOR, vectors),
                ],
            )?;
            self.texts_present.extend(keys);
            sent += batch.len();
        }
        self.report.texts_sent += sent;
        self.report.insert_seconds += started.elapsed().as_secs_f64();
        Ok(sent)
    }

    /// Flushes, waits until every segment is persisted, builds the index (when absent) and
    /// loads both collections.
    pub fn finish(mut self, texts: bool) -> Result<UploadReport, RetrievalError> {
        let started = Instant::now();
        let mut names = vec![self.conn.url.collection.clone()];
        if texts {
            names.push(self.conn.url.texts_collection());
        }
        let deadline = Instant::now() + self.options.wait;
        for name in &names {
            self.flush_and_wait(name, deadline)?;
            self.wait_indexed(name, deadline)?;
            // Reload, so that every sealed segment is served from its built index rather than
            // the interim one it was loaded with while growing.
            let req = ReleaseCollectionRequest::builder()
                .collection_name(name)
                .build()
                .map_err(|e| self.conn.error("release_collection", e))?;
            self.conn
                .block(self.conn.client.release_collection(req))
                .map_err(|e| self.conn.error(&format!("release {name}"), e))?;
            self.load(name)?;
            tracing::info!("{}: {name} flushed, indexed and loaded", self.conn.url);
        }
        self.report.finish_seconds = started.elapsed().as_secs_f64();
        Ok(self.report)
    }

    /// Makes `name` queryable (Milvus queries only loaded collections, and loads only indexed
    /// ones): the index, built on the still empty or partial collection, then a load. Rows
    /// inserted afterwards are visible to strongly consistent queries, so a rerun can tell
    /// what is stored.
    fn ready(&self, name: &str) -> Result<(), RetrievalError> {
        self.ensure_index(name)?;
        self.load(name)
    }

    fn load(&self, name: &str) -> Result<(), RetrievalError> {
        let req = LoadCollectionRequest::builder()
            .collection_name(name)
            .build()
            .map_err(|e| self.conn.error("load_collection", e))?;
        self.conn
            .block(self.conn.client.load_collection(req))
            .map_err(|e| self.conn.error(&format!("load {name}"), e))
    }

    /// Waits until the index covers every flushed row.
    fn wait_indexed(&self, name: &str, deadline: Instant) -> Result<(), RetrievalError> {
        loop {
            let req = DescribeIndexRequest::builder()
                .collection_name(name)
                .field_name(VECTOR)
                .build()
                .map_err(|e| self.conn.error("describe_index", e))?;
            let r = self
                .conn
                .block(self.conn.client.describe_index(req))
                .map_err(|e| self.conn.error(&format!("describe the index of {name}"), e))?;
            let done = r.indexes().iter().all(|i| {
                i.get_pending_rows() == 0
                    && i.get_indexed_rows() >= i.get_total_rows()
                    && matches!(i.get_state(), IndexStateCode::Finished)
            });
            if done && !r.indexes().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RetrievalError::Store {
                    store: self.conn.url.to_string(),
                    reason: format!("the index of {name} is still being built"),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn flush_and_wait(&self, name: &str, deadline: Instant) -> Result<(), RetrievalError> {
        let req = FlushRequest::builder()
            .collection_names([name])
            .build()
            .map_err(|e| self.conn.error("flush", e))?;
        self.conn
            .block(self.conn.client.flush(req))
            .map_err(|e| self.conn.error(&format!("flush {name}"), e))?;
        // flush() returns before the data is persisted on 2.3: poll the segments.
        loop {
            let req = ListPersistentSegmentsRequest::builder()
                .collection_name(name)
                .build()
                .map_err(|e| self.conn.error("list segments", e))?;
            let r = self
                .conn
                .block(self.conn.client.list_persistent_segments(req))
                .map_err(|e| self.conn.error(&format!("list segments of {name}"), e))?;
            let pending = r
                .segments()
                .iter()
                .filter(|s| !matches!(s.get_state(), SegmentState::Flushed | SegmentState::Dropped))
                .count();
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RetrievalError::Store {
                    store: self.conn.url.to_string(),
                    reason: format!("{pending} segments of {name} still not flushed"),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn ensure_index(&self, name: &str) -> Result<(), RetrievalError> {
        let describe = DescribeIndexRequest::builder()
            .collection_name(name)
            .field_name(VECTOR)
            .build()
            .map_err(|e| self.conn.error("describe_index", e))?;
        let exists = self
            .conn
            .block(self.conn.client.describe_index(describe))
            .map(|r| !r.indexes().is_empty())
            .unwrap_or(false);
        if exists {
            return Ok(());
        }
        let kind = self.options.index.kind;
        // The caption collection is searched exhaustively like the directory's (it is small
        // next to the images; image -> text search is not the latency-critical path).
        let (index_type, params) = if name == self.conn.url.collection {
            (
                match kind {
                    MilvusIndexKind::Flat => IndexType::Flat,
                    MilvusIndexKind::IvfFlat => IndexType::IvfFlat,
                    MilvusIndexKind::IvfPq => IndexType::IvfPq,
                    MilvusIndexKind::Hnsw => IndexType::Hnsw,
                    MilvusIndexKind::DiskAnn => IndexType::DiskAnn,
                },
                self.options.index.params(self.dim_of(name)?)?,
            )
        } else {
            (IndexType::Flat, HashMap::new())
        };
        let req = CreateIndexRequest::builder()
            .collection_name(name)
            .index_param(
                IndexParam::new()
                    .field_name(VECTOR)
                    .index_type(index_type)
                    .metric_type(MetricType::Ip)
                    .extra_params(params),
            )
            .sync(false)
            .build()
            .map_err(|e| self.conn.error("create_index", e))?;
        self.conn
            .block(self.conn.client.create_index(req))
            .map_err(|e| self.conn.error(&format!("build the index of {name}"), e))
    }

    fn dim_of(&self, name: &str) -> Result<usize, RetrievalError> {
        self.conn.describe(name).map(|(_, d)| d)
    }
}

/// Uploads an index directory (no re-encoding): its images (with their captions) and, when it
/// has them, its caption vectors. Resumable.
pub fn upload_index(
    index: &StoredIndex,
    url: &MilvusUrl,
    options: UploadOptions,
    connect: &ConnectOptions,
    progress: &dyn Fn(&str, usize, usize),
) -> Result<UploadReport, RetrievalError> {
    let texts = index.has_texts();
    let n_images = index.image_ids().len();
    let n_texts = index.text_ids().len();
    let batch = options.batch_rows.max(1);
    let mut up = Uploader::start(
        url,
        index.meta(),
        index.dim(),
        (n_images, n_texts),
        texts,
        options,
        connect,
    )?;
    let dim = index.dim();
    for start in (0..n_images).step_by(batch) {
        let end = (start + batch).min(n_images);
        let vectors = index.image_vectors(start..end);
        let rows = (start..end)
            .filter(|&r| up.image_missing(r))
            .map(|r| ImageRow {
                row: r,
                id: index.image_ids()[r].clone(),
                captions: image_captions(index, r),
                vector: vectors[(r - start) * dim..(r - start + 1) * dim].to_vec(),
            })
            .collect();
        up.send_images(rows)?;
        progress("images", end, n_images);
    }
    for start in (0..n_texts).step_by(batch) {
        let end = (start + batch).min(n_texts);
        let vectors = index.text_vectors(start..end).unwrap_or_default();
        let rows = (start..end)
            .filter(|&r| up.text_missing(r))
            .map(|r| TextRow {
                row: r,
                id: index.text_ids()[r].clone(),
                image: index.text_image(r).unwrap_or_default().to_string(),
                text: index.text_raw(r).map(str::to_string),
                vector: vectors[(r - start) * dim..(r - start + 1) * dim].to_vec(),
            })
            .collect();
        up.send_texts(rows)?;
        progress("captions", end, n_texts);
    }
    up.finish(texts)
}

/// The captions JSON of image row `row` of a directory index.
fn image_captions(index: &StoredIndex, row: usize) -> Vec<StoredCaption> {
    index
        .image_captions(row)
        .iter()
        .map(|c| StoredCaption {
            id: c.clone(),
            text: index
                .text_row(c)
                .and_then(|r| index.text_raw(r))
                .map(str::to_string),
        })
        .collect()
}

/// Whether `id`s are stored, for tests and checks: every primary key of `collection` with its
/// count (a resumed upload must leave each exactly once).
pub fn key_counts(
    url: &MilvusUrl,
    collection: &str,
    upto: usize,
    connect: &ConnectOptions,
) -> Result<HashMap<i64, usize>, RetrievalError> {
    let conn = Conn::connect(url, connect)?;
    if !conn.has_collection(collection)? {
        return Err(conn.missing(collection));
    }
    let mut counts = HashMap::new();
    let mut start = 0i64;
    while start < upto as i64 {
        let req = QueryRequest::builder()
            .collection_name(collection)
            .filter(format!(
                "{ROW} >= {start} and {ROW} < {}",
                start + QUERY_WINDOW / 2
            ))
            .output_fields([ROW])
            .limit(QUERY_WINDOW)
            .consistency_level(ConsistencyLevel::Strong)
            .build()
            .map_err(|e| conn.error("query", e))?;
        let r = conn
            .block(conn.client.query(req))
            .map_err(|e| conn.error("query keys", e))?;
        if let Some(v) = r.results().get_output_field(ROW).and_then(|f| f.as_int64()) {
            for k in v {
                *counts.entry(*k).or_insert(0) += 1;
            }
        }
        start += QUERY_WINDOW / 2;
    }
    Ok(counts)
}
