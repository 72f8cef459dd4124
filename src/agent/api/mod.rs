//! The agent's HTTP API: job and app logs from this node's disk (`servant logs` and
//! `servant app logs` read them here), `/metrics` for Prometheus, and the read-only JSON API
//! of the whole cluster under `/v1/` (`jobs`: the cluster's jobs from KV; `nodes`: catalog nodes
//! with health, report and servant; `services` with their health;
//! `apps`: tasks, topology, app states, unplaced replicas; `containers`: this node's).

pub mod apps;
pub mod containers;
pub mod hub;
pub mod jobs;
pub mod nodes;
pub mod services;
pub mod stream;
pub mod triggers;
pub mod ui;
pub mod writes;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::metrics::{AgentMetrics, Format};
use crate::consul::{Client, ConsulError};
use crate::process::stats::ContainerMonitor;
use crate::process::LogPaths;
use crate::wire::Namespace;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Where the worker keeps job logs.
    pub log_dir: PathBuf,
    /// Where the supervisor keeps app logs.
    pub apps_log_dir: PathBuf,
    /// This node's name, reported by `/v1/agent`.
    pub node: String,
    /// What `/metrics` serves.
    pub metrics: Arc<AgentMetrics>,
    /// The Consul the JSON API reads the cluster's state from.
    pub client: Client,
    /// The KV paths (under the `kv_prefix`).
    pub layout: Namespace,
    /// This node's containers, for `/v1/containers`.
    pub containers: ContainerMonitor,
    /// The shared watches every `/v1/` read and every dashboard stream takes its data from.
    pub hub: hub::Hub,
    /// For reading a running job's log from the agent on its node.
    pub peer: reqwest::Client,
    /// Whether Consul enforces ACLs, once known (it does not change while Consul runs).
    pub acls: Arc<tokio::sync::OnceCell<bool>>,
    /// The secret values of this node's running jobs, redacted from their logs as served.
    pub secrets: crate::util::redact::SecretRegistry,
}

impl ApiState {
    /// Whether Consul enforces ACLs: asked once, then remembered (an error is not).
    pub async fn acls_on(&self) -> Result<bool, ConsulError> {
        self.acls
            .get_or_try_init(|| self.client.acls_enabled())
            .await
            .copied()
    }

    /// With ACLs on, whether the caller's token may read `key` (a job's or a task's), which a
    /// log of it needs. Ok with ACLs off; else why not.
    async fn may_read(&self, headers: &HeaderMap, key: &str) -> Result<(), ApiError> {
        if !self.acls_on().await? {
            return Ok(());
        }
        let Some(token) = caller_token(headers) else {
            return Err(ApiError::NoToken(format!("Consul's ACLs are on: a log needs a Consul ACL token that may read {key} (X-Consul-Token; servant logs sends its -token or CONSUL_HTTP_TOKEN)")));
        };
        match self
            .client
            .with_token(Some(token))
            .kv_get(key, &crate::consul::QueryOptions::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(ConsulError::PermissionDenied { .. }) => Err(ApiError::Forbidden(format!(
                "this token may not read {key}, so it may not read its log"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

/// The caller's Consul token (`X-Consul-Token`), if it sent one.
pub fn caller_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// Why a JSON API request failed; answered as `{"error": "..."}` with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A stored document that is not what its key promises.
    #[error("{0}")]
    Unreadable(String),
    /// The agent's watches have not heard from Consul yet.
    #[error("{0}")]
    Unavailable(String),
    /// With ACLs on, the request needs a token and has none.
    #[error("{0}")]
    NoToken(String),
    /// The caller's token may not read what this shows.
    #[error("{0}")]
    Forbidden(String),
    #[error("consul: {0}")]
    Consul(#[from] ConsulError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unreadable(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NoToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            // The agent answers; what it asked could not be answered.
            ApiError::Consul(_) => StatusCode::BAD_GATEWAY,
        };
        (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no endpoint {}", uri.path()))
}

async fn bad_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on {}: writes are POST /v1/jobs, DELETE /v1/jobs/<key>, PUT and DELETE /v1/tasks/<name>; everything else is GET",
        uri.path()
    ))
}

#[derive(Deserialize)]
struct LogQuery {
    /// The job's KV key, e.g. `jobs/job1` (with the kv_prefix, if any).
    key: String,
    /// `stdout`, `stderr`, or both when absent.
    stream: Option<String>,
}

#[derive(Deserialize)]
struct AppLogQuery {
    /// The app's (task's) name.
    name: String,
    /// `stdout`, `stderr`, or both when absent.
    stream: Option<String>,
}

async fn logs(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<LogQuery>,
) -> Response {
    if let Err(refused) = st.may_read(&headers, &q.key).await {
        return refused.into_response();
    }
    let paths = LogPaths::for_key(&st.log_dir, &q.key);
    serve_log(
        paths,
        q.stream.as_deref(),
        &format!("job {}", q.key),
        &st.node,
        &st.secrets,
    )
    .await
}

async fn app_logs(
    State(st): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<AppLogQuery>,
) -> Response {
    if let Err(refused) = st.may_read(&headers, &st.layout.task(&q.name)).await {
        return refused.into_response();
    }
    let paths = LogPaths::for_key(&st.apps_log_dir, &q.name);
    serve_log(
        paths,
        q.stream.as_deref(),
        &format!("app {}", q.name),
        &st.node,
        &st.secrets,
    )
    .await
}

/// One stream of a log, or both (stdout, then stderr); 404 when neither exists. A running job's
/// secrets are redacted (once it ends its files are rewritten redacted).
async fn serve_log(
    paths: LogPaths,
    stream: Option<&str>,
    what: &str,
    node: &str,
    secrets: &crate::util::redact::SecretRegistry,
) -> Response {
    // Looked up before and after reading: a job that starts or ends meanwhile is redacted.
    let before = secrets.get(&paths.stdout);
    let read = |p: PathBuf| async move { tokio::fs::read(&p).await.ok() };
    let redact = |b: Option<Vec<u8>>| {
        let red = before.clone().or_else(|| secrets.get(&paths.stdout));
        match (b, red) {
            (Some(b), Some(r)) => Some(r.redact_growing(&b)),
            (b, _) => b,
        }
    };
    let body = match stream {
        Some("stdout") => redact(read(paths.stdout.clone()).await),
        Some("stderr") => redact(read(paths.stderr.clone()).await),
        None | Some("") => {
            let out = read(paths.stdout.clone()).await;
            let err = read(paths.stderr.clone()).await;
            match (redact(out), redact(err)) {
                (None, None) => None,
                (o, e) => {
                    let mut v = o.unwrap_or_default();
                    v.extend(e.unwrap_or_default());
                    Some(v)
                }
            }
        }
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown stream {other:?}: use stdout or stderr"),
            )
                .into_response()
        }
    };
    match body {
        Some(b) => (StatusCode::OK, b).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no log of {what} on node {node}"),
        )
            .into_response(),
    }
}

async fn agent(State(st): State<ApiState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "Node": st.node, "Pid": std::process::id() }))
}

/// The metrics in Prometheus' text format, or OpenMetrics when the scraper asks for it.
async fn metrics(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match st.metrics.render(format).await {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        )
            .into_response(),
    }
}

/// The router of the agent API.
pub fn router(st: ApiState) -> Router {
    Router::new()
        .route("/v1/logs", get(logs))
        .route("/v1/app-logs", get(app_logs))
        .route("/v1/agent", get(agent))
        .route("/v1/jobs", get(jobs::list).post(writes::submit))
        .route("/v1/jobs/{*key}", get(jobs::show).delete(writes::stop_job))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/apps", get(apps::list))
        .route("/v1/containers", get(containers::list))
        .route("/v1/services", get(services::list))
        .route("/v1/triggers", get(triggers::list))
        .route(
            "/v1/tasks/{name}",
            axum::routing::put(writes::put_task).delete(writes::remove_task),
        )
        .route("/v1/stream", get(stream::stream))
        .route("/metrics", get(metrics))
        .route("/", get(ui::to_ui))
        .route("/ui", get(ui::to_ui))
        .route("/ui/", get(ui::page))
        .route("/ui/{*path}", get(ui::asset))
        .fallback(no_route)
        .method_not_allowed_fallback(bad_method)
        .with_state(st)
}
