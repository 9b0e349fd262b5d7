//! The local HTTP API: JSON under `/v1`, Prometheus metrics at `/metrics`.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /v1/status` | peers, own products, subscriptions with lag, forks, recent rejections |
//! | `GET /v1/catalog?q=&domain=&owner=&tag=&pii=&version=&limit=&offset=` | ranked search with facets; each hit says which peers hold its log |
//! | `GET /v1/products` | every catalog entry held, by product id |
//! | `POST /v1/products` | publish: the body is a descriptor YAML file |
//! | `GET /v1/lineage/{id}?direction=upstream\|downstream&depth=&format=json\|dot\|mermaid` | product-level lineage, declared and observed edges |
//! | `GET /v1/impact/{id}?depth=` | downstream products and owners affected by a change, with hops |
//! | `GET /v1/trace/{id}?key=` | a record traced back through cited events to its sources, each hop verified |
//! | `GET /v1/health?stale_after=7d` | stale owners, missing inputs, lineage cycles, undeclared consumption |
//! | `GET /v1/products/{id}` | a product's catalog entry and the head this node holds |
//! | `POST /v1/products/{id}/events` | append: `{"key": "k", "value": {...}}` or `{"key": "k", "delete": true}`, optional `"causes"` |
//! | `GET /v1/products/{id}/events?from=&limit=` | the log, each event re-verified |
//! | `GET /v1/products/{id}/record?key=` | a record from the live replica |
//! | `GET /v1/subscriptions`, `POST /v1/subscriptions` `{"product": id}`, `DELETE /v1/subscriptions/{id}` | subscriptions |
//! | `GET /v1/forks` | fork proofs held, with the proof bytes in hex |
//!
//! Errors are `{"error": "..."}` with 400 (bad request), 404 (unknown) or 500. The API has no
//! authentication: keep it on loopback (the default).

use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use mesh_protocol::{EventRef, Operation, ProductId, VerifiedCatalogEntry};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::lineage::{Direction, Impact, LineageError};
use crate::node::{NodeError, NodeHandle};
use crate::search::{SearchRequest, SearchResponse};

/// Largest request body: a payload at its 256 KiB limit, escaped as JSON, fits.
const BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Most events one `events` request returns.
const EVENTS_LIMIT_MAX: usize = 10_000;

/// Builds the router. Used by `serve` and by tests that drive the API in-process.
pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/catalog", get(catalog))
        .route("/v1/products", post(publish).get(products))
        .route("/v1/lineage/{id}", get(lineage))
        .route("/v1/impact/{id}", get(impact))
        .route("/v1/trace/{id}", get(trace))
        .route("/v1/health", get(health))
        .route("/v1/products/{id}", get(product))
        .route("/v1/products/{id}/events", post(append).get(events))
        .route("/v1/products/{id}/record", get(record))
        .route("/v1/subscriptions", get(subscriptions).post(subscribe))
        .route("/v1/subscriptions/{id}", delete(unsubscribe))
        .route("/v1/forks", get(forks))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            in_node_span,
        ))
        .with_state(node)
}

/// Runs each request in the node's `node{id=…}` span, as every other task of the node runs:
/// axum serves each connection on a task of its own, outside the span of the server's task.
async fn in_node_span(
    State(node): State<NodeHandle>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    next.run(request).instrument(node.span()).await
}

/// Serves the API on `addr` until `shutdown` is cancelled. Returns the bound address.
pub async fn serve(
    node: NodeHandle,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the API to {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let span = node.span();
    let app = router(node);
    let task = tokio::spawn(
        async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = result {
                tracing::error!("API server: {e}");
            }
        }
        .instrument(span),
    );
    tracing::info!(%bound, "HTTP API listening");
    Ok((bound, task))
}

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let code = match e {
            NodeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn product_id(text: &str) -> Result<ProductId, ApiError> {
    text.parse()
        .map_err(|e| bad_request(format!("invalid product id {text:?}: {e}")))
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn status(State(node): State<NodeHandle>) -> ApiResult<crate::node::Status> {
    Ok(Json(node.status()?))
}

/// A catalog entry as the API shows it.
#[derive(Debug, Serialize)]
pub struct EntryView {
    pub product: ProductId,
    pub owner_peer: String,
    pub revision: u64,
    pub entry_id: String,
    pub signed_at_micros: u64,
    pub descriptor: mesh_protocol::Descriptor,
}

impl EntryView {
    pub fn new(entry: &VerifiedCatalogEntry) -> Self {
        let e = entry.entry();
        Self {
            product: e.product.clone(),
            owner_peer: e.product.owner().to_string(),
            revision: e.revision,
            entry_id: entry.id().to_string(),
            signed_at_micros: e.timestamp_micros,
            descriptor: e.descriptor.clone(),
        }
    }
}

/// `GET /v1/catalog` parameters: a ranked search.
#[derive(Debug, Deserialize)]
struct CatalogQuery {
    q: Option<String>,
    domain: Option<String>,
    owner: Option<String>,
    tag: Option<String>,
    pii: Option<bool>,
    version: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn catalog(
    State(node): State<NodeHandle>,
    Query(query): Query<CatalogQuery>,
) -> ApiResult<SearchResponse> {
    let request = SearchRequest {
        query: query.q.unwrap_or_default(),
        domain: query.domain,
        owner: query.owner,
        tag: query.tag,
        pii: query.pii,
        version: query.version,
        limit: query.limit.unwrap_or(0),
        offset: query.offset.unwrap_or(0),
    };
    let response = blocking(move || Ok(node.search(&request)?)).await?;
    Ok(Json(response))
}

/// Every catalog entry this node holds, sorted by product id.
async fn products(State(node): State<NodeHandle>) -> ApiResult<Vec<EntryView>> {
    let mut entries: Vec<EntryView> = node.catalog().iter().map(EntryView::new).collect();
    entries.sort_by(|a, b| a.product.cmp(&b.product));
    Ok(Json(entries))
}

#[derive(Debug, Deserialize)]
struct LineageQuery {
    direction: Option<String>,
    depth: Option<u32>,
    format: Option<String>,
}

/// Longest walk the API does; deeper requests are cut to it.
const LINEAGE_DEPTH_MAX: u32 = 64;
/// Most products one lineage answer holds (a DOT or Mermaid drawing of more is unreadable).
const LINEAGE_PRODUCTS_MAX: usize = 10_000;
/// Most products one impact answer lists.
const IMPACT_PRODUCTS_MAX: usize = 100_000;

/// Runs `work` on a blocking thread: searches, traces and lineage graphs (up to a second to
/// build) must not hold up the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::node::spawn_blocking(work)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

async fn lineage(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(query): Query<LineageQuery>,
) -> Result<Response, ApiError> {
    let id = product_id(&id)?;
    let direction: Direction = query
        .direction
        .as_deref()
        .unwrap_or("upstream")
        .parse()
        .map_err(|e: LineageError| bad_request(e.to_string()))?;
    let depth = query.depth.unwrap_or(3).min(LINEAGE_DEPTH_MAX);
    let walked = blocking(move || {
        let graph = node.lineage_graph();
        let reached = graph
            .reach_count(&id, direction, depth)
            .map_err(lineage_error)?;
        if reached > LINEAGE_PRODUCTS_MAX {
            return Err(bad_request(format!(
                "the {direction} lineage of {id} within {depth} hops has {reached} products, \
                 over the {LINEAGE_PRODUCTS_MAX} one answer holds: ask for fewer hops"
            )));
        }
        graph.walk(&id, direction, depth).map_err(lineage_error)
    })
    .await?;
    match query.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(walked).into_response()),
        "dot" => Ok(walked.to_dot().into_response()),
        "mermaid" => Ok(walked.to_mermaid().into_response()),
        other => Err(bad_request(format!(
            "unknown format {other:?}: use json, dot or mermaid"
        ))),
    }
}

fn lineage_error(e: LineageError) -> ApiError {
    match e {
        LineageError::UnknownProduct { .. } => ApiError(StatusCode::NOT_FOUND, e.to_string()),
        _ => bad_request(e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct DepthQuery {
    depth: Option<u32>,
}

async fn impact(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(query): Query<DepthQuery>,
) -> ApiResult<Impact> {
    let id = product_id(&id)?;
    let depth = query
        .depth
        .unwrap_or(LINEAGE_DEPTH_MAX)
        .min(LINEAGE_DEPTH_MAX);
    let impact = blocking(move || {
        let graph = node.lineage_graph();
        let reached = graph
            .reach_count(&id, Direction::Downstream, depth)
            .map_err(lineage_error)?;
        if reached > IMPACT_PRODUCTS_MAX {
            return Err(bad_request(format!(
                "{reached} products are downstream of {id} within {depth} hops, over the \
                 {IMPACT_PRODUCTS_MAX} one answer holds: ask for fewer hops"
            )));
        }
        graph.impact(&id, depth).map_err(lineage_error)
    })
    .await?;
    Ok(Json(impact))
}

#[derive(Debug, Deserialize)]
struct TraceQuery {
    key: String,
}

async fn trace(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(query): Query<TraceQuery>,
) -> ApiResult<crate::trace::Trace> {
    let id = product_id(&id)?;
    let traced = blocking(move || Ok(node.trace(&id, query.key.as_bytes())?)).await?;
    Ok(Json(traced))
}

#[derive(Debug, Deserialize)]
struct HealthQuery {
    /// How long an owner may go unseen, e.g. `7d` (default) or `90s`.
    stale_after: Option<String>,
    /// Most items per list (default 100).
    limit: Option<usize>,
}

async fn health(
    State(node): State<NodeHandle>,
    Query(query): Query<HealthQuery>,
) -> ApiResult<crate::discovery::DiscoveryHealth> {
    let stale_after = match query.stale_after {
        Some(text) => humantime::parse_duration(&text)
            .map_err(|e| bad_request(format!("invalid stale_after {text:?}: {e}")))?,
        None => std::time::Duration::from_secs(7 * 24 * 3600),
    };
    let mut report = blocking(move || Ok(node.health(stale_after))).await?;
    let limit = query.limit.unwrap_or(100);
    report.lineage.truncate(limit);
    report.stale_owners.truncate(limit);
    Ok(Json(report))
}

async fn publish(State(node): State<NodeHandle>, body: String) -> ApiResult<EntryView> {
    let entry = node.publish_yaml(&body).await?;
    Ok(Json(EntryView::new(&entry)))
}

#[derive(Debug, Serialize)]
struct ProductView {
    #[serde(flatten)]
    entry: EntryView,
    head_seq: u64,
    subscribed: bool,
}

async fn product(State(node): State<NodeHandle>, Path(id): Path<String>) -> ApiResult<ProductView> {
    let id = product_id(&id)?;
    let entry = node.catalog_entry(&id).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no product {id} in the catalog"),
        )
    })?;
    Ok(Json(ProductView {
        entry: EntryView::new(&entry),
        head_seq: node.head_seq(&id),
        subscribed: node.subscriptions()?.contains(&id),
    }))
}

/// An append request.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    pub key: String,
    /// The record's new value (any JSON); absent for a delete.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    #[serde(default)]
    pub delete: bool,
    /// Upstream events this event was derived from.
    #[serde(default)]
    pub causes: Vec<EventRef>,
}

async fn append(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Json(body): Json<AppendBody>,
) -> ApiResult<crate::hub::Receipt> {
    let id = product_id(&id)?;
    let (op, payload) = match (body.delete, body.value) {
        (true, None) => (Operation::Delete, Bytes::new()),
        (false, Some(value)) => (Operation::Upsert, Bytes::from(value.to_string())),
        (true, Some(_)) => return Err(bad_request("a delete carries no value")),
        (false, None) => return Err(bad_request("give a \"value\", or \"delete\": true")),
    };
    let receipt = node
        .append(&id, Bytes::from(body.key), op, payload, body.causes)
        .await?;
    Ok(Json(receipt))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn events(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Vec<crate::node::EventView>> {
    let id = product_id(&id)?;
    let limit = query.limit.unwrap_or(100).min(EVENTS_LIMIT_MAX);
    Ok(Json(node.events(&id, query.from.unwrap_or(1), limit)?))
}

#[derive(Debug, Deserialize)]
struct RecordQuery {
    key: String,
}

#[derive(Debug, Serialize)]
struct RecordView {
    product: ProductId,
    key: String,
    value: serde_json::Value,
}

async fn record(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(query): Query<RecordQuery>,
) -> ApiResult<RecordView> {
    let id = product_id(&id)?;
    let value = node.get(&id, query.key.as_bytes())?.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no record {:?} in the replica of {id}", query.key),
        )
    })?;
    let value = serde_json::from_slice(&value).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&value).into_owned())
    });
    Ok(Json(RecordView {
        product: id,
        key: query.key,
        value,
    }))
}

async fn subscriptions(
    State(node): State<NodeHandle>,
) -> ApiResult<Vec<crate::node::SubscriptionView>> {
    Ok(Json(node.status()?.subscriptions))
}

#[derive(Debug, Deserialize)]
struct SubscribeBody {
    product: String,
}

async fn subscribe(
    State(node): State<NodeHandle>,
    Json(body): Json<SubscribeBody>,
) -> ApiResult<serde_json::Value> {
    let id = product_id(&body.product)?;
    node.subscribe(&id).await?;
    Ok(Json(
        serde_json::json!({ "subscribed": id, "held_seq": node.head_seq(&id) }),
    ))
}

async fn unsubscribe(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
) -> ApiResult<serde_json::Value> {
    let id = product_id(&id)?;
    node.unsubscribe(&id).await?;
    Ok(Json(serde_json::json!({ "unsubscribed": id })))
}

#[derive(Debug, Serialize)]
struct ForkProofView {
    product: ProductId,
    seq: u64,
    first: String,
    second: String,
    /// The encoded `ForkProof`, hex: anyone can check it with the protocol alone.
    proof_hex: String,
}

async fn forks(State(node): State<NodeHandle>) -> ApiResult<Vec<ForkProofView>> {
    let views = node
        .forks(None)?
        .into_iter()
        .map(|f| {
            let (a, b) = f.events();
            ForkProofView {
                product: f.product().clone(),
                seq: f.seq(),
                first: a.id().to_string(),
                second: b.id().to_string(),
                proof_hex: hex::encode(f.encode()),
            }
        })
        .collect();
    Ok(Json(views))
}

async fn metrics(State(node): State<NodeHandle>) -> Result<Response, ApiError> {
    let registry = node.metrics().registry();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Log lines, as the node's operator would read them.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[tokio::test]
    async fn what_a_request_logs_names_the_node() {
        let logs = Captured::default();
        // This thread's only: the test runtime runs every task on it.
        let _logging = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(logs.clone())
                .with_ansi(false)
                .finish(),
        );
        let node = crate::node::tests::memory_node(Vec::new()).await;
        let shutdown = CancellationToken::new();
        let (bound, server) = serve(node.clone(), ([127, 0, 0, 1], 0).into(), shutdown.clone())
            .await
            .unwrap();
        let yaml = "name: orders\ndomain: sales\nowner: sales@example.com\ndescription: x\n\
                    version: 1.0.0\nschema:\n  fields:\n    - name: id\n      type: string\n";
        let published = tokio::task::spawn_blocking(move || {
            ureq::post(format!("http://{bound}/v1/products")).send(yaml)
        });
        let response = published.await.unwrap().expect("published");
        assert_eq!(response.status(), 200);

        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let line = logs
            .lines()
            .find(|l| l.contains("published"))
            .unwrap_or_else(|| panic!("no publish logged in:\n{logs}"));
        let span = format!("node{{id={}}}", crate::network::short(&node.peer_id()));
        assert!(line.contains(&span), "{line}");
        shutdown.cancel();
        server.await.unwrap();
        node.shutdown().await;
    }
}
