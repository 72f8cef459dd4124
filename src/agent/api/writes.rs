//! The dashboard's writes: submit and stop a job, put and remove a task.
//!
//! - **Cross-site requests are refused.** A write must carry `X-Servant-Request` and a JSON
//!   body; a browser sends neither from another site's form, and will not send them from another
//!   site's script without a CORS preflight, which this API never grants. An `Origin` or
//!   `Sec-Fetch-Site` that names another site is refused too.
//! - **The caller's token.** With Consul's ACLs on, a write needs the caller's token
//!   (`X-Consul-Token`) and runs with it, never with the agent's; Consul decides.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::info;

use super::{ApiError, ApiState};
use crate::consul::{Client, ConsulError, KvPutOptions};
use crate::jobs::spec::parse_job;
use crate::jobs::submit::{enqueue, new_id, SubmitError};
use crate::wire::{parse_task, HealthStatus, JobKey};

/// Why a write was refused before it reached Consul.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cross-site request refused: {0}")]
    CrossSite(String),
    #[error("Consul's ACLs are on: this write needs your Consul ACL token (X-Consul-Token, or the dashboard's token button)")]
    NoToken,
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("consul: {0}")]
    Consul(#[from] ConsulError),
}

impl IntoResponse for WriteError {
    fn into_response(self) -> Response {
        let status = match &self {
            WriteError::CrossSite(_) => StatusCode::FORBIDDEN,
            WriteError::NoToken => StatusCode::UNAUTHORIZED,
            WriteError::Bad(_) => StatusCode::BAD_REQUEST,
            WriteError::Conflict(_) => StatusCode::CONFLICT,
            WriteError::NotFound(_) => StatusCode::NOT_FOUND,
            WriteError::Consul(ConsulError::PermissionDenied { .. }) => StatusCode::FORBIDDEN,
            WriteError::Consul(_) => StatusCode::BAD_GATEWAY,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

impl From<ApiError> for WriteError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Consul(c) => WriteError::Consul(c),
            ApiError::NotFound(why) => WriteError::NotFound(why),
            other => WriteError::Bad(other.to_string()),
        }
    }
}

/// The cross-site checks (pure): the marker header, JSON when there is a body, and no foreign
/// `Origin` or `Sec-Fetch-Site`.
pub fn same_site(headers: &HeaderMap, has_body: bool) -> Result<(), WriteError> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Err(WriteError::CrossSite(format!(
                "the browser says it comes from a {site} page"
            )));
        }
    }
    if let (Some(origin), Some(host)) = (get("origin"), get("host")) {
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or(origin);
        if bare != host {
            return Err(WriteError::CrossSite(format!(
                "origin {origin} is not this agent ({host})"
            )));
        }
    }
    if get("x-servant-request").is_none() {
        return Err(WriteError::CrossSite(
            "a write needs the header X-Servant-Request: 1 (the dashboard sends it; a cross-site form cannot)".into(),
        ));
    }
    if has_body {
        let ct = get(header::CONTENT_TYPE.as_str()).unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(WriteError::CrossSite(format!(
                "a write's body must be application/json, not {ct:?}"
            )));
        }
    }
    Ok(())
}

/// The client a write runs with, and who the caller is for the log: the caller's token when
/// given (named by its accessor ID and description, never its secret); with ACLs on, one is
/// required.
async fn caller(st: &ApiState, headers: &HeaderMap) -> Result<(Client, String), WriteError> {
    match super::caller_token(headers) {
        Some(t) => {
            let client = st.client.with_token(Some(t));
            let who = match client.acl_token_self().await {
                Ok((accessor, description)) => {
                    format!("token {accessor} ({description})")
                }
                // ACLs off, or a token Consul does not know (the write itself will say).
                Err(_) => "a token Consul could not name".to_string(),
            };
            Ok((client, who))
        }
        None if st.acls_on().await? => Err(WriteError::NoToken),
        None => Ok((st.client.clone(), "no token (ACLs off)".to_string())),
    }
}

/// `POST /v1/jobs`: a job document (as stored in KV) plus where to run it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Submit {
    /// A node's queue; absent: any node.
    pub node: Option<String>,
    /// Every node with a live servant.
    #[serde(default)]
    pub all: bool,
    /// Queue on a node that has no live servant.
    #[serde(default)]
    pub force: bool,
    /// The job ID; absent: a fresh one.
    #[serde(rename = "ID")]
    pub id: Option<String>,
    /// The rest: the job document (`Command`, `Timeout`, `Type`, `Env`...).
    #[serde(flatten)]
    pub job: Map<String, Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Submitted {
    #[serde(rename = "ID")]
    pub id: String,
    /// The job keys written, relative to the `kv_prefix` (the `<key>` of `/v1/jobs/<key>`).
    pub keys: Vec<String>,
}

/// `POST /v1/jobs`.
pub async fn submit(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Submitted>), WriteError> {
    same_site(&headers, true)?;
    let s: Submit = serde_json::from_slice(&body)
        .map_err(|e| WriteError::Bad(format!("not a job submission: {e}")))?;
    let (client, who) = caller(&st, &headers).await?;
    let id = s.id.clone().unwrap_or_else(new_id);
    let mut doc = s.job;
    doc.insert("ID".into(), Value::String(id.clone()));
    let bytes = serde_json::to_vec(&Value::Object(doc))
        .map_err(|e| WriteError::Bad(format!("cannot encode the job: {e}")))?;
    // Refuse here what an agent would reject, so the user hears it at once.
    parse_job(&id, &bytes).map_err(|e| WriteError::Bad(e.to_string()))?;
    let snap = st.hub.snapshot().await?;
    let live: Vec<String> = {
        let mut v: Vec<String> = snap
            .sessions
            .iter()
            .filter(|x| x.name == st.layout.jobs_session())
            .map(|x| x.node.clone())
            .filter(|n| {
                snap.checks.iter().any(|c| {
                    &c.node == n && c.check_id == "serfHealth" && c.status == HealthStatus::Passing
                })
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let targets: Vec<JobKey> = match (&s.node, s.all) {
        (Some(_), true) => return Err(WriteError::Bad("give Node or All, not both".into())),
        (None, true) if live.is_empty() => {
            return Err(WriteError::Bad("no alive node runs a servant agent".into()))
        }
        (None, true) => live
            .iter()
            .map(|n| JobKey::Node {
                node: n.clone(),
                id: id.clone(),
            })
            .collect(),
        (Some(n), false) if n.is_empty() => vec![JobKey::Any { id: id.clone() }],
        (Some(n), false) => {
            if !s.force && !live.contains(n) {
                return Err(WriteError::Bad(format!(
                    "node {n} runs no live servant agent: nothing would run the job (Force queues it anyway)"
                )));
            }
            vec![JobKey::Node {
                node: n.clone(),
                id: id.clone(),
            }]
        }
        (None, false) => vec![JobKey::Any { id: id.clone() }],
    };
    enqueue(&client, &st.layout, &id, &bytes, &targets)
        .await
        .map_err(|e| match e {
            SubmitError::Consul(c) => WriteError::Consul(c),
            other => WriteError::Conflict(other.to_string()),
        })?;
    let keys: Vec<String> = targets.iter().map(JobKey::relative).collect();
    info!(job = %id, keys = ?keys, with = %who, "dashboard: job submitted");
    Ok((StatusCode::CREATED, Json(Submitted { id, keys })))
}

/// `DELETE /v1/jobs/<key>`: stops a running job, or takes a queued one out of its queue. The
/// job key is deleted with the caller's token; the node that runs the job sees it go, stops the
/// job (SIGTERM, then SIGKILL after `kill_grace`) and writes a `failed` result that says it was
/// stopped. A queued job is simply gone: nothing ran.
pub async fn stop_job(
    State(st): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, WriteError> {
    same_site(&headers, false)?;
    let snap = st.hub.snapshot().await?;
    let view = super::jobs::show_of(&snap, &st.layout, &key)?;
    let was = match &view {
        crate::wire::JobView::Queued { .. } => "queued",
        crate::wire::JobView::Running { .. } => "running",
        crate::wire::JobView::Done { result, .. }
            if result.status == Some(crate::wire::JobStatus::Started) =>
        {
            "running"
        }
        crate::wire::JobView::Done { .. } => {
            return Err(WriteError::Conflict(format!(
                "job {key} has ended; there is nothing to stop"
            )))
        }
    };
    let (client, who) = caller(&st, &headers).await?;
    let full = format!("{}{key}", st.layout.prefix());
    client.kv_delete(&full, false, None).await?;
    info!(job = %key, was, with = %who, "dashboard: job stopped");
    Ok(Json(serde_json::json!({ "Key": key, "Was": was })))
}

/// `PUT /v1/tasks/<name>`: a task in App Manager's shape, checked before it is written.
pub async fn put_task(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, WriteError> {
    same_site(&headers, true)?;
    parse_task(&name, &body).map_err(|e| WriteError::Bad(e.to_string()))?;
    let (client, who) = caller(&st, &headers).await?;
    client
        .kv_put(&st.layout.task(&name), &body, &KvPutOptions::default())
        .await?;
    info!(task = %name, with = %who, "dashboard: task written");
    Ok(Json(serde_json::json!({ "Task": name })))
}

/// `DELETE /v1/tasks/<name>`.
pub async fn remove_task(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, WriteError> {
    same_site(&headers, false)?;
    if name.is_empty() || name.contains('/') {
        return Err(WriteError::Bad(format!(
            "task name {name:?} must be one non-empty path segment"
        )));
    }
    let (client, who) = caller(&st, &headers).await?;
    client
        .kv_delete(&st.layout.task(&name), false, None)
        .await?;
    info!(task = %name, with = %who, "dashboard: task removed");
    Ok(Json(serde_json::json!({ "Task": name, "Removed": true })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_site_writes_pass_and_cross_site_ones_are_refused() {
        let ok = [
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
            ("x-servant-request", "1"),
            ("content-type", "application/json"),
        ];
        assert!(same_site(&headers(&ok), true).is_ok());
        // curl: no Origin, no Sec-Fetch-Site.
        assert!(same_site(
            &headers(&[
                ("x-servant-request", "1"),
                ("content-type", "application/json")
            ]),
            true
        )
        .is_ok());
        for (what, h) in [
            ("another origin", {
                let mut v = ok.to_vec();
                v[1] = ("origin", "http://evil.example");
                v
            }),
            ("a cross-site fetch", {
                let mut v = ok.to_vec();
                v[2] = ("sec-fetch-site", "cross-site");
                v
            }),
            (
                "no marker header",
                ok.iter()
                    .copied()
                    .filter(|(k, _)| *k != "x-servant-request")
                    .collect(),
            ),
            ("a form's body", {
                let mut v = ok.to_vec();
                v[4] = ("content-type", "application/x-www-form-urlencoded");
                v
            }),
        ] {
            assert!(
                matches!(same_site(&headers(&h), true), Err(WriteError::CrossSite(_))),
                "{what} must be refused"
            );
        }
    }
}
