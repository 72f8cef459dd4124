//! The embedded server's HTTP API: the subset of Consul's that the product and common clients
//! use, with Consul's shapes, status codes and index headers.
//!
//! Served: `/v1/kv`, `/v1/txn`, `/v1/session`, `/v1/status`, `/v1/agent` (self, members,
//! services and checks, TTL updates), `/v1/catalog` (nodes, node, services, service), `/v1/health`
//! (node, checks, service with `passing`, state) and `/v1/event` (fire, list). TTL, HTTP and TCP
//! checks work (the server runs the probes); script checks are registered but not run.
//!
//! For the Consul CLI commands users try first: `/v1/agent/self` with `Stats` (`consul info`),
//! `/v1/catalog/datacenters`, node and service maintenance (`consul maint`), `/v1/agent/reload`
//! and `/v1/operator/raft/configuration`. Every other `/v1/` path, and `consul exec`'s event,
//! is refused with a plain-text 501 that says so, which Consul's CLI prints.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::server::Core;
use super::state::{
    is_maintenance, Behavior, Check, Entry, PutOptions, Session, State, StateError, TxnOp,
    UserEvent,
};
use crate::util::duration::{parse_duration, DurationError};
use crate::util::json::canonical_keys;
use crate::wire::HealthStatus;

/// Fields of a service registration, and of a check; request keys match them case-insensitively.
const SERVICE_FIELDS: &[&str] = &[
    "ID",
    "Name",
    "Tags",
    "Port",
    "Address",
    "Meta",
    "Check",
    "Checks",
    "EnableTagOverride",
    "Kind",
];
const CHECK_FIELDS: &[&str] = &[
    "CheckID",
    "ID",
    "Name",
    "TTL",
    "HTTP",
    "TCP",
    "Args",
    "Interval",
    "Timeout",
    "Status",
    "Notes",
    "ServiceID",
    "DeregisterCriticalServiceAfter",
    "Header",
    "Method",
];

/// A registration body with Consul's key spelling, at every level that has one.
fn canonical_service(v: &mut Value) {
    canonical_keys(v, SERVICE_FIELDS);
    if let Some(c) = v.get_mut("Check") {
        canonical_keys(c, CHECK_FIELDS);
    }
    if let Some(Value::Array(cs)) = v.get_mut("Checks") {
        cs.iter_mut().for_each(|c| canonical_keys(c, CHECK_FIELDS));
    }
}

type Q = Query<HashMap<String, String>>;

/// The router of the embedded server.
pub fn router(core: Core) -> Router {
    Router::new()
        .route(
            "/v1/kv/",
            get(kv_get_root).put(kv_put_root).delete(kv_delete_root),
        )
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/txn", put(txn))
        .route("/v1/session/create", put(session_create))
        .route("/v1/session/destroy/{id}", put(session_destroy))
        .route("/v1/session/renew/{id}", put(session_renew))
        .route("/v1/session/info/{id}", get(session_info))
        .route("/v1/session/list", get(session_list))
        .route("/v1/session/node/{node}", get(session_node))
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/members", get(agent_members))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/service/register", put(service_register))
        .route("/v1/agent/service/deregister/{id}", put(service_deregister))
        .route("/v1/agent/checks", get(agent_checks))
        .route("/v1/agent/check/register", put(check_register))
        .route("/v1/agent/check/deregister/{id}", put(check_deregister))
        .route("/v1/agent/check/pass/{id}", put(check_pass))
        .route("/v1/agent/check/warn/{id}", put(check_warn))
        .route("/v1/agent/check/fail/{id}", put(check_fail))
        .route("/v1/agent/check/update/{id}", put(check_update))
        .route("/v1/catalog/node/{node}", get(catalog_node))
        .route("/v1/health/checks/{name}", get(health_checks))
        .route("/v1/health/state/{state}", get(health_state))
        .route("/v1/event/fire/{name}", put(event_fire))
        .route("/v1/event/list", get(event_list))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/health/node/{node}", get(health_node))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/catalog/datacenters", get(catalog_datacenters))
        .route("/v1/agent/reload", put(agent_reload))
        .route("/v1/agent/maintenance", put(node_maintenance))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(service_maintenance),
        )
        .route("/v1/operator/raft/configuration", get(raft_configuration))
        .fallback(unsupported)
        .with_state(core)
}

/// Any path not served. Under `/v1/` it is an API this server does not have: a 501 whose
/// plain-text body Consul's CLI prints ("Unexpected response code: 501 (...)"), instead of an
/// empty 404 that reads like a missing key. Elsewhere, Consul's empty 404.
async fn unsupported(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if !path.starts_with("/v1/") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let why = if path.starts_with("/v1/agent/force-leave/") {
        "it is a single node, with no other members to remove"
    } else if path == "/v1/agent/monitor" {
        "its log is the servant agent's own output (set SERVANT_LOG for more)"
    } else if path.starts_with("/v1/agent/join/") {
        "it is a single-node server, not a distributed store"
    } else {
        "it serves only the Consul API subset listed in the README"
    };
    refuse(&format!("{method} {path}"), why)
}

/// A refusal of something `servant agent -dev` does not do: 501 with a plain-text reason.
fn refuse(what: &str, why: &str) -> Response {
    text(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "servant agent -dev does not support {what}: {why}; use a real Consul agent for it"
        ),
    )
}

fn with_index(mut r: Response, index: u64) -> Response {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&index.max(1).to_string()) {
        h.insert("X-Consul-Index", v);
    }
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    r
}

fn json_at(index: u64, v: Value) -> Response {
    with_index((StatusCode::OK, axum::Json(v)).into_response(), index)
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into(),
    )
        .into_response()
}

fn state_error(e: StateError) -> Response {
    match e {
        StateError::TooLarge => text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({}) too large, max size: {} bytes",
                "value",
                super::state::MAX_VALUE_BYTES
            ),
        ),
        StateError::InvalidSession(_) | StateError::BadTtl(_) | StateError::Refused(_) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        StateError::BadRequest(m) => text(StatusCode::BAD_REQUEST, m),
        StateError::NotFound(m) => text(StatusCode::NOT_FOUND, m),
    }
}

fn core_error(e: super::server::CoreError) -> Response {
    text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// `index` and `wait` of a blocking read; wait is clamped to 10 minutes and gets Consul's
/// jitter of up to wait/16.
fn blocking(q: &HashMap<String, String>) -> Result<(u64, Duration), BadInput> {
    let index = match q.get("index") {
        Some(i) => i
            .parse::<u64>()
            .map_err(|_| BadInput(format!("Invalid index: {i}")))?,
        None => 0,
    };
    let wait = match q.get("wait") {
        Some(w) => parse_duration(w).map_err(|_| BadInput(format!("Invalid wait time: {w}")))?,
        None => Duration::from_secs(300),
    };
    let wait = clamp_wait(wait);
    let jitter = if wait.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_nanos(rand_nanos() % (wait.as_nanos() as u64 / 16).max(1))
    };
    Ok((index, wait + jitter))
}

/// Consul holds a blocking read at most 10 minutes, whatever `wait` asks.
pub fn clamp_wait(wait: Duration) -> Duration {
    wait.min(Duration::from_secs(600))
}

/// A query parameter that does not parse: HTTP 400 with the message.
struct BadInput(String);

impl IntoResponse for BadInput {
    fn into_response(self) -> Response {
        text(StatusCode::BAD_REQUEST, self.0)
    }
}

fn rand_nanos() -> u64 {
    crate::util::hash::stable_hash(&[&crate::util::time::now_ns().to_string()])
}

fn entry_json(key: &str, e: &Entry, with_value: bool) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": key,
        "Flags": e.flags,
        "Value": if with_value && !e.value.is_empty() { Value::String(base64::engine::general_purpose::STANDARD.encode(&e.value)) } else { Value::Null },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let Some(s) = &e.session {
        v["Session"] = json!(s);
    }
    v
}

async fn kv_get_root(st: AxState<Core>, q: Q) -> Response {
    kv_read(st.0, String::new(), q.0).await
}
async fn kv_get(st: AxState<Core>, Path(key): Path<String>, q: Q) -> Response {
    kv_read(st.0, key, q.0).await
}

async fn kv_read(core: Core, key: String, q: HashMap<String, String>) -> Response {
    let (index, wait) = match blocking(&q) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    if q.contains_key("keys") {
        let sep = q.get("separator").cloned();
        let (idx, keys) = core
            .block(index, wait, |st| st.keys(&key, sep.as_deref()))
            .await;
        if keys.is_empty() {
            return with_index(StatusCode::NOT_FOUND.into_response(), idx);
        }
        return json_at(idx, json!(keys));
    }
    if q.contains_key("recurse") {
        let (idx, list) = core
            .block(index, wait, |st| {
                let (i, entries) = st.list(&key);
                (
                    i,
                    entries
                        .into_iter()
                        .map(|(k, e)| entry_json(k, e, true))
                        .collect::<Vec<_>>(),
                )
            })
            .await;
        if list.is_empty() {
            return with_index(StatusCode::NOT_FOUND.into_response(), idx);
        }
        return json_at(idx, Value::Array(list));
    }
    let (idx, entry) = core
        .block(index, wait, |st| {
            (
                st.get(&key)
                    .map(|e| e.modify_index)
                    .unwrap_or_else(|| st.kv_table_index()),
                st.get(&key).cloned(),
            )
        })
        .await;
    match entry {
        None => with_index(StatusCode::NOT_FOUND.into_response(), idx),
        Some(e) if q.contains_key("raw") => {
            with_index((StatusCode::OK, e.value).into_response(), idx)
        }
        Some(e) => json_at(idx, json!([entry_json(&key, &e, true)])),
    }
}

fn num(q: &HashMap<String, String>, k: &str) -> Result<Option<u64>, BadInput> {
    match q.get(k) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| BadInput(format!("Invalid {k} value: {v:?}"))),
    }
}

async fn kv_put_root(st: AxState<Core>, q: Q, body: Bytes) -> Response {
    kv_write(st.0, String::new(), q.0, body).await
}
async fn kv_put(st: AxState<Core>, Path(key): Path<String>, q: Q, body: Bytes) -> Response {
    kv_write(st.0, key, q.0, body).await
}

async fn kv_write(core: Core, key: String, q: HashMap<String, String>, body: Bytes) -> Response {
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if key.starts_with('\0') {
        // The data file keeps its own row there.
        return text(
            StatusCode::BAD_REQUEST,
            "Invalid key name: it may not start with a NUL byte",
        );
    }
    let (flags, cas) = match (num(&q, "flags"), num(&q, "cas")) {
        (Ok(f), Ok(c)) => (f.unwrap_or(0), c),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let o = PutOptions {
        flags,
        cas,
        acquire: q.get("acquire").cloned(),
        release: q.get("release").cloned(),
    };
    let value = body.to_vec();
    match core
        .write(move |st, now| st.put(&key, value, &o, now))
        .await
    {
        Ok(Ok(b)) => json_at(0, json!(b)),
        Ok(Err(e)) => state_error(e),
        Err(e) => core_error(e),
    }
}

async fn kv_delete_root(st: AxState<Core>, q: Q) -> Response {
    kv_del(st.0, String::new(), q.0).await
}
async fn kv_delete(st: AxState<Core>, Path(key): Path<String>, q: Q) -> Response {
    kv_del(st.0, key, q.0).await
}

async fn kv_del(core: Core, key: String, q: HashMap<String, String>) -> Response {
    let cas = match num(&q, "cas") {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    // As in Consul: `cas` wins over `recurse` (a single-key delete), and deleting the root
    // needs `recurse`.
    let recurse = q.contains_key("recurse") && cas.is_none();
    if key.is_empty() && !recurse {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    match core.write(move |st, _| st.delete(&key, recurse, cas)).await {
        Ok(b) => json_at(0, json!(b)),
        Err(e) => core_error(e),
    }
}

#[derive(Deserialize)]
struct TxnItem {
    #[serde(rename = "KV")]
    kv: Option<TxnKv>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnKv {
    verb: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    index: u64,
    #[serde(default)]
    session: String,
}

/// Why a transaction's operation is refused (HTTP 400).
#[derive(Debug, thiserror::Error)]
enum TxnOpError {
    #[error("Failed to parse body: illegal base64 data: {0}")]
    Base64(base64::DecodeError),
    #[error("Failed to parse body: a key may not start with a NUL byte")]
    NulKey,
    #[error("Failed to parse body: unknown KV verb {0:?}")]
    Verb(String),
}

fn txn_op(kv: TxnKv) -> Result<TxnOp, TxnOpError> {
    let value = match kv.value {
        Some(v) => base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .map_err(TxnOpError::Base64)?,
        None => Vec::new(),
    };
    if kv.key.starts_with('\0') {
        return Err(TxnOpError::NulKey);
    }
    let (key, flags, index, session) = (kv.key, kv.flags, kv.index, kv.session);
    Ok(match kv.verb.as_str() {
        "set" => TxnOp::Set { key, value, flags },
        "cas" => TxnOp::Cas {
            key,
            value,
            flags,
            index,
        },
        "lock" => TxnOp::Lock {
            key,
            value,
            flags,
            session,
        },
        "unlock" => TxnOp::Unlock {
            key,
            value,
            flags,
            session,
        },
        "get" => TxnOp::Get { key },
        "get-tree" => TxnOp::GetTree { key },
        "check-index" => TxnOp::CheckIndex { key, index },
        "check-session" => TxnOp::CheckSession { key, session },
        "check-not-exists" => TxnOp::CheckNotExists { key },
        "delete" => TxnOp::Delete { key },
        "delete-tree" => TxnOp::DeleteTree { key },
        "delete-cas" => TxnOp::DeleteCas { key, index },
        other => return Err(TxnOpError::Verb(other.to_string())),
    })
}

async fn txn(AxState(core): AxState<Core>, body: Bytes) -> Response {
    let items = serde_json::from_slice::<Value>(&body).and_then(|mut v| {
        if let Value::Array(items) = &mut v {
            for it in items.iter_mut() {
                canonical_keys(it, &["KV"]);
                if let Some(kv) = it.get_mut("KV") {
                    canonical_keys(kv, &["Verb", "Key", "Value", "Flags", "Index", "Session"]);
                }
            }
        }
        serde_json::from_value::<Vec<TxnItem>>(v)
    });
    let items: Vec<TxnItem> = match items {
        Ok(v) => v,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Failed to parse body: {e}"),
            )
        }
    };
    let mut ops = Vec::new();
    for it in items {
        let Some(kv) = it.kv else {
            return text(
                StatusCode::BAD_REQUEST,
                "Failed to parse body: only KV operations are supported",
            );
        };
        match txn_op(kv) {
            Ok(op) => ops.push(op),
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    let outcome = core
        .write(move |st: &mut State, now| {
            st.txn(&ops, now).map(|verdict| {
                verdict.map(|results| {
                    let mut out = Vec::new();
                    for (op, r) in ops.iter().zip(results) {
                        match (op, r) {
                            (TxnOp::GetTree { key }, _) => out.extend(
                                st.tree(key)
                                    .iter()
                                    .map(|(k, e)| json!({"KV": entry_json(k, e, true)})),
                            ),
                            (TxnOp::Get { .. }, Some((k, e))) => {
                                out.push(json!({"KV": entry_json(&k, &e, true)}))
                            }
                            (_, Some((k, e))) => out.push(json!({"KV": entry_json(&k, &e, false)})),
                            (_, None) => {}
                        }
                    }
                    (st.index, out)
                })
            })
        })
        .await;
    match outcome {
        Ok(Ok(Ok((idx, results)))) => json_at(idx, json!({"Results": results, "Errors": null})),
        Ok(Ok(Err(errors))) => {
            let errs: Vec<Value> = errors
                .into_iter()
                .map(|(i, w)| json!({"OpIndex": i, "What": w.to_string()}))
                .collect();
            (
                StatusCode::CONFLICT,
                axum::Json(json!({"Results": null, "Errors": errs})),
            )
                .into_response()
        }
        Ok(Err(e)) => state_error(e),
        Err(e) => core_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct SessionBody {
    name: String,
    node: Option<String>,
    checks: Option<Vec<String>>,
    #[serde(rename = "TTL")]
    ttl: String,
    behavior: String,
    lock_delay: Option<Value>,
}

fn session_json(s: &Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "NodeChecks": s.checks,
        "ServiceChecks": null,
        "LockDelay": s.lock_delay_ms * 1_000_000,
        "Behavior": match s.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
        "TTL": if s.ttl_secs > 0 { format!("{}s", s.ttl_secs) } else { String::new() },
        "CreateIndex": s.create_index,
        "ModifyIndex": s.create_index,
    })
}

async fn session_create(AxState(core): AxState<Core>, body: Bytes) -> Response {
    let b: SessionBody = if body.is_empty() {
        SessionBody::default()
    } else {
        let parsed = serde_json::from_slice::<Value>(&body).and_then(|mut v| {
            canonical_keys(
                &mut v,
                &["Name", "Node", "Checks", "TTL", "Behavior", "LockDelay"],
            );
            serde_json::from_value(v)
        });
        match parsed {
            Ok(b) => b,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Request decode failed: {e}"),
                )
            }
        }
    };
    let behavior = match b.behavior.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Invalid Behavior setting '{other}'"),
            )
        }
    };
    let lock_delay_ms = match b.lock_delay {
        None | Some(Value::Null) => 15_000,
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|ns| {
                // Consul reads a number under 1000 as seconds, anything else as nanoseconds.
                if ns < 1000 {
                    ns * 1000
                } else {
                    ns / 1_000_000
                }
            })
            .unwrap_or(15_000),
        Some(Value::String(s)) => match parse_duration(&s) {
            Ok(d) => d.as_millis() as u64,
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Request decode failed: invalid LockDelay {s:?}"),
                )
            }
        },
        Some(other) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Request decode failed: invalid LockDelay {other}"),
            )
        }
    };
    if lock_delay_ms > 60_000 {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Invalid lock-delay, must be less than 60s",
        );
    }
    let ttl_secs = if b.ttl.is_empty() {
        None
    } else {
        match parse_duration(&b.ttl) {
            // "0s" means no TTL, as in Consul.
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d.as_secs()),
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Request decode failed: invalid TTL {:?}", b.ttl),
                )
            }
        }
    };
    let node = b.node.unwrap_or_else(|| core.node().to_string());
    if node != core.node() {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Missing node registration",
        );
    }
    let checks = b.checks.unwrap_or_else(|| vec!["serfHealth".to_string()]);
    let s = Session {
        id: uuid::Uuid::new_v4().to_string(),
        name: b.name,
        node,
        checks,
        ttl_secs: 0,
        behavior,
        lock_delay_ms,
        create_index: 0,
        expires_at_ms: 0,
    };
    let ttl_text = b.ttl.clone();
    let made = core
        .write(move |st, now| {
            for c in s.checks.iter().filter(|c| c.as_str() != "serfHealth") {
                match st.checks.get(c.as_str()) {
                    None => {
                        return Err(StateError::Refused(format!(
                            "Missing check '{c}' registration"
                        )))
                    }
                    Some(chk) if chk.status == HealthStatus::Critical => {
                        return Err(StateError::Refused(format!(
                            "Check '{c}' is in critical state"
                        )))
                    }
                    Some(_) => {}
                }
            }
            st.session_create(s, ttl_secs, &ttl_text, now)
        })
        .await;
    match made {
        Ok(Ok(id)) => json_at(0, json!({"ID": id})),
        Ok(Err(e)) => state_error(e),
        Err(e) => core_error(e),
    }
}

async fn session_destroy(AxState(core): AxState<Core>, Path(id): Path<String>) -> Response {
    match core
        .write(move |st, now| st.session_destroy(&id, now))
        .await
    {
        Ok(_) => json_at(0, json!(true)),
        Err(e) => core_error(e),
    }
}

async fn session_renew(AxState(core): AxState<Core>, Path(id): Path<String>) -> Response {
    let id2 = id.clone();
    match core
        .write(move |st, now| st.session_renew(&id2, now).map(session_json))
        .await
    {
        Ok(Some(s)) => json_at(0, json!([s])),
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        ),
        Err(e) => core_error(e),
    }
}

async fn session_info(AxState(core): AxState<Core>, Path(id): Path<String>, q: Q) -> Response {
    let (index, wait) = match blocking(&q.0) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let (idx, s) = core
        .block(index, wait, |st| {
            (
                st.sessions_index.max(1),
                st.sessions.get(&id).map(session_json),
            )
        })
        .await;
    json_at(idx, s.map(|s| json!([s])).unwrap_or(Value::Null))
}

async fn session_list(AxState(core): AxState<Core>, q: Q) -> Response {
    sessions_where(core, q.0, None).await
}

async fn session_node(AxState(core): AxState<Core>, Path(node): Path<String>, q: Q) -> Response {
    sessions_where(core, q.0, Some(node)).await
}

async fn sessions_where(core: Core, q: HashMap<String, String>, node: Option<String>) -> Response {
    let (index, wait) = match blocking(&q) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let (idx, list) = core
        .block(index, wait, |st| {
            (
                st.sessions_index.max(1),
                st.sessions
                    .values()
                    .filter(|s| node.as_ref().is_none_or(|n| &s.node == n))
                    .map(session_json)
                    .collect::<Vec<_>>(),
            )
        })
        .await;
    json_at(idx, Value::Array(list))
}

async fn status_leader(AxState(core): AxState<Core>) -> Response {
    axum::Json(json!(raft_addr(&core))).into_response()
}

async fn status_peers(AxState(core): AxState<Core>) -> Response {
    axum::Json(json!([raft_addr(&core)])).into_response()
}

fn member(core: &Core) -> Value {
    json!({"Name": core.node(), "Addr": core.addr(), "Port": 8301, "Tags": {"role": "consul", "dc": "dc1", "build": "servant-dev"}, "Status": 1})
}

/// The server's Raft address: `<addr>:8300`, bracketed for IPv6.
fn raft_addr(core: &Core) -> String {
    match core.addr().parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(a)) => format!("[{a}]:8300"),
        _ => format!("{}:8300", core.addr()),
    }
}

/// `/v1/agent/self`, with the `Stats` sections `consul info` prints, for one node that is its
/// own leader.
async fn agent_self(AxState(core): AxState<Core>) -> Response {
    let (index, services, checks, ttls, scripts) = core
        .read(|st| {
            let count = |f: fn(&Check) -> bool| st.checks.values().filter(|c| f(c)).count();
            (
                st.index,
                st.services.len(),
                st.checks.len(),
                count(|c| c.ttl_ms > 0),
                count(|c| check_type(c) == "script"),
            )
        })
        .await;
    let s = |v: &dyn ToString| v.to_string();
    let arch = match std::env::consts::ARCH {
        // Go's names, which Consul prints.
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let stats = json!({
        "agent": {"check_monitors": s(&scripts), "check_ttls": s(&ttls), "checks": s(&checks), "services": s(&services)},
        "build": {"prerelease": "", "revision": "servant-dev", "version": "1.8.7", "servant": env!("CARGO_PKG_VERSION")},
        "consul": {"acl": "disabled", "bootstrap": "false", "known_datacenters": "1", "leader": "true", "leader_addr": raft_addr(&core), "server": "true"},
        "raft": {
            "applied_index": s(&index), "commit_index": s(&index), "fsm_pending": "0", "last_contact": "0",
            "last_log_index": s(&index), "last_log_term": "1", "last_snapshot_index": "0", "last_snapshot_term": "0",
            "latest_configuration": format!("[{{Suffrage:Voter ID:{} Address:{}}}]", node_id(&core), raft_addr(&core)),
            "latest_configuration_index": "0", "num_peers": "0", "protocol_version": "3", "protocol_version_max": "3",
            "protocol_version_min": "0", "snapshot_version_max": "1", "snapshot_version_min": "0", "state": "Leader", "term": "1",
        },
        "runtime": {"arch": arch, "cpu_count": s(&cpus), "os": std::env::consts::OS},
        "serf_lan": {
            "coordinate_resets": "0", "encrypted": "false", "event_queue": "0", "event_time": "1", "failed": "0",
            "health_score": "0", "intent_queue": "0", "left": "0", "member_time": "1", "members": "1",
            "query_queue": "0", "query_time": "1",
        },
    });
    axum::Json(json!({
        "Config": {"Datacenter": "dc1", "NodeName": core.node(), "NodeID": node_id(&core), "Server": true, "Version": "1.8.7", "Revision": "servant-dev"},
        "Member": member(&core),
        "Stats": stats,
        "Meta": {},
    }))
    .into_response()
}

async fn catalog_datacenters() -> Response {
    axum::Json(json!(["dc1"])).into_response()
}

/// `consul reload`: the embedded server has no configuration files, so there is nothing to
/// reload; Consul answers a reload that changes nothing with an empty 200.
async fn agent_reload() -> Response {
    StatusCode::OK.into_response()
}

/// `/v1/operator/raft/configuration`: one voter, the leader.
async fn raft_configuration(AxState(core): AxState<Core>) -> Response {
    axum::Json(json!({
        "Servers": [{"ID": node_id(&core), "Node": core.node(), "Address": raft_addr(&core), "Leader": true, "ProtocolVersion": "3", "Voter": true}],
        "Index": 0,
    }))
    .into_response()
}

/// Go's `strconv.ParseBool`, which Consul uses for `enable`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `enable` and `reason` of a maintenance request, with Consul's 400 texts.
fn maintenance_args(q: &HashMap<String, String>) -> Result<(bool, String), BadInput> {
    let Some(v) = q.get("enable") else {
        return Err(BadInput("Missing value for enable".into()));
    };
    let Some(enable) = go_bool(v) else {
        return Err(BadInput(format!("Invalid value for enable: {v:?}")));
    };
    Ok((enable, q.get("reason").cloned().unwrap_or_default()))
}

async fn node_maintenance(AxState(core): AxState<Core>, q: Q) -> Response {
    let (enable, reason) = match maintenance_args(&q.0) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    match core
        .write(move |st, now| st.node_maintenance(enable, &reason, now))
        .await
    {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => core_error(e),
    }
}

async fn service_maintenance(
    AxState(core): AxState<Core>,
    Path(id): Path<String>,
    q: Q,
) -> Response {
    let (enable, reason) = match maintenance_args(&q.0) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    match core
        .write(move |st, now| st.service_maintenance(&id, enable, &reason, now))
        .await
    {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => state_error(e),
        Err(e) => core_error(e),
    }
}

async fn agent_members(AxState(core): AxState<Core>) -> Response {
    axum::Json(json!([member(&core)])).into_response()
}

fn service_view(id: &str, reg: &Value) -> Value {
    json!({
        "ID": id,
        "Service": reg.get("Name").cloned().unwrap_or(Value::Null),
        "Tags": reg.get("Tags").cloned().unwrap_or(json!([])),
        "Meta": reg.get("Meta").cloned().unwrap_or(json!({})),
        "Port": reg.get("Port").cloned().unwrap_or(json!(0)),
        "Address": reg.get("Address").cloned().unwrap_or(json!("")),
    })
}

async fn agent_services(AxState(core): AxState<Core>) -> Response {
    let map = core
        .read(|st| {
            st.services
                .iter()
                .map(|(id, r)| (id.clone(), service_view(id, r)))
                .collect::<serde_json::Map<_, _>>()
        })
        .await;
    axum::Json(Value::Object(map)).into_response()
}

/// Why a check in a registration is refused (HTTP 400, in Consul's words).
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("Invalid check {field}: {error}")]
    Duration {
        field: &'static str,
        error: DurationError,
    },
    #[error("Invalid check: one of TTL, HTTP, TCP or Args is required")]
    Kind,
    /// Consul words this one per endpoint: see `service_register`.
    #[error("Bad check status")]
    Status,
}

/// A check from a registration body (Consul's field names), for the service `service`.
fn check_from(
    v: &Value,
    default_id: &str,
    service: Option<(&str, &str)>,
) -> Result<Check, CheckError> {
    let get = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let ms = |field: &'static str, default: u64| -> Result<u64, CheckError> {
        match get(field) {
            Some(t) => Ok(parse_duration(&t)
                .map_err(|error| CheckError::Duration { field, error })?
                .as_millis()
                .min(u128::from(u64::MAX / 2)) as u64),
            None => Ok(default),
        }
    };
    let ttl_ms = ms("TTL", 0)?;
    let probe = match (get("HTTP"), get("TCP")) {
        (Some(url), _) => Some(super::state::Probe {
            target: url,
            http: true,
            interval_ms: ms("Interval", 10_000)?.max(100),
            timeout_ms: ms("Timeout", 10_000)?.max(1),
        }),
        (None, Some(addr)) => Some(super::state::Probe {
            target: addr,
            http: false,
            interval_ms: ms("Interval", 10_000)?.max(100),
            timeout_ms: ms("Timeout", 10_000)?.max(1),
        }),
        _ => None,
    };
    if ttl_ms == 0 && probe.is_none() && v.get("Args").is_none() {
        return Err(CheckError::Kind);
    }
    // Consul starts checks critical until they first pass, unless told otherwise.
    let status = match get("Status").filter(|s| !s.is_empty()) {
        Some(s) => HealthStatus::parse(&s).ok_or(CheckError::Status)?,
        None => HealthStatus::Critical,
    };
    let (output, status) = if ttl_ms > 0 || probe.is_some() {
        (String::new(), status)
    } else {
        // Script checks are not run here (Consul too runs them only with enable_script_checks).
        (
            "the embedded server does not run script checks".into(),
            HealthStatus::Critical,
        )
    };
    Ok(Check {
        id: get("CheckID")
            .or_else(|| get("ID"))
            .unwrap_or_else(|| default_id.to_string()),
        name: get("Name").unwrap_or_else(|| {
            format!(
                "Service '{}' check",
                service.map(|s| s.1).unwrap_or(default_id)
            )
        }),
        status,
        notes: get("Notes").unwrap_or_default(),
        output,
        service_id: service
            .map(|s| s.0.to_string())
            .or_else(|| get("ServiceID"))
            .unwrap_or_default(),
        service_name: service.map(|s| s.1.to_string()).unwrap_or_default(),
        ttl_ms,
        expires_at_ms: 0,
        probe,
    })
}

async fn service_register(AxState(core): AxState<Core>, body: Bytes) -> Response {
    let mut reg: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "Request decode failed: expected a JSON object",
            )
        }
    };
    canonical_service(&mut reg);
    let Some(name) = reg.get("Name").and_then(Value::as_str).map(str::to_string) else {
        return text(StatusCode::BAD_REQUEST, "Missing service name");
    };
    let id = reg
        .get("ID")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| name.clone());
    let mut bodies: Vec<Value> = reg
        .get("Checks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(c) = reg.get("Check").filter(|c| c.is_object()) {
        bodies.insert(0, c.clone());
    }
    let mut checks = Vec::new();
    for (i, c) in bodies.iter().enumerate() {
        let default_id = if bodies.len() == 1 {
            format!("service:{id}")
        } else {
            format!("service:{id}:{}", i + 1)
        };
        match check_from(c, &default_id, Some((&id, &name))) {
            Ok(c) => checks.push(c),
            Err(CheckError::Status) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Status for checks must 'passing', 'warning', 'critical'",
                )
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    let outcome = core
        .write(move |st, now| st.service_register(&id, reg, checks, now))
        .await;
    match outcome {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => core_error(e),
    }
}

async fn service_deregister(AxState(core): AxState<Core>, Path(id): Path<String>) -> Response {
    let id2 = id.clone();
    let removed = core
        .write(move |st, now| st.service_deregister(&id2, now))
        .await;
    match removed {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => text(StatusCode::NOT_FOUND, format!("Unknown service {id:?}")),
        Err(e) => core_error(e),
    }
}

/// A stable node ID, shaped like Consul's, derived from the node name.
fn node_id(core: &Core) -> String {
    let h = format!(
        "{:016x}{:016x}",
        crate::util::hash::stable_hash(&[core.node()]),
        crate::util::hash::stable_hash(&[core.node(), "id"])
    );
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn node_json(core: &Core) -> Value {
    json!({"ID": node_id(core), "Node": core.node(), "Address": core.addr(), "Datacenter": "dc1", "TaggedAddresses": {"lan": core.addr(), "wan": core.addr()}, "Meta": {}})
}

async fn catalog_nodes(AxState(core): AxState<Core>, q: Q) -> Response {
    let (index, wait) = match blocking(&q.0) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let (idx, _) = core
        .block(index, wait, |st| (st.catalog_index.max(1), ()))
        .await;
    json_at(idx, json!([node_json(&core)]))
}

async fn catalog_services(AxState(core): AxState<Core>, q: Q) -> Response {
    let (index, wait) = match blocking(&q.0) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let (idx, map) = core
        .block(index, wait, |st| {
            let mut m = serde_json::Map::new();
            m.insert("consul".into(), json!([]));
            for reg in st.services.values() {
                if let Some(n) = reg.get("Name").and_then(Value::as_str) {
                    let tags = m.entry(n.to_string()).or_insert(json!([]));
                    if let (Some(all), Some(new)) = (
                        tags.as_array_mut(),
                        reg.get("Tags").and_then(Value::as_array),
                    ) {
                        for t in new {
                            if !all.contains(t) {
                                all.push(t.clone());
                            }
                        }
                    }
                }
            }
            (st.catalog_index.max(1), m)
        })
        .await;
    json_at(idx, Value::Object(map))
}

fn instances(st: &State, name: &str, tag: Option<&str>) -> Vec<(String, Value)> {
    st.services
        .iter()
        .filter(|(_, r)| r.get("Name").and_then(Value::as_str) == Some(name))
        .filter(|(_, r)| {
            tag.is_none_or(|t| {
                r.get("Tags")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(t)))
            })
        })
        .map(|(id, r)| (id.clone(), r.clone()))
        .collect()
}

async fn catalog_service(AxState(core): AxState<Core>, Path(name): Path<String>, q: Q) -> Response {
    let (index, wait) = match blocking(&q.0) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let tag = q.0.get("tag").cloned();
    let (idx, list) = core
        .block(index, wait, |st| {
            (
                st.catalog_index.max(1),
                instances(st, &name, tag.as_deref()),
            )
        })
        .await;
    let out: Vec<Value> = list
        .iter()
        .map(|(id, r)| {
            json!({
                "ID": node_id(&core), "Node": core.node(), "Address": core.addr(), "Datacenter": "dc1",
                "ServiceID": id, "ServiceName": name,
                "ServiceTags": r.get("Tags").cloned().unwrap_or(json!([])),
                "ServiceAddress": r.get("Address").cloned().unwrap_or(json!("")),
                "ServicePort": r.get("Port").cloned().unwrap_or(json!(0)),
                "ServiceMeta": r.get("Meta").cloned().unwrap_or(json!({})),
            })
        })
        .collect();
    json_at(idx, Value::Array(out))
}

/// serfHealth: always passing, the one node being the server itself.
fn serf_health() -> Check {
    Check {
        id: SERF_HEALTH.into(),
        name: "Serf Health Status".into(),
        status: HealthStatus::Passing,
        notes: String::new(),
        output: "Agent alive and reachable".into(),
        service_id: String::new(),
        service_name: String::new(),
        ttl_ms: 0,
        expires_at_ms: 0,
        probe: None,
    }
}

const SERF_HEALTH: &str = "serfHealth";

fn check_json(core: &Core, st: &State, c: &Check) -> Value {
    let tags = st
        .services
        .get(&c.service_id)
        .and_then(|r| r.get("Tags").cloned())
        .unwrap_or(json!([]));
    json!({"Node": core.node(), "CheckID": c.id, "Name": c.name, "Status": c.status, "Notes": c.notes, "Output": c.output, "ServiceID": c.service_id, "ServiceName": c.service_name, "ServiceTags": tags, "Type": check_type(c)})
}

/// Consul's `Type` of a check.
fn check_type(c: &Check) -> &'static str {
    match &c.probe {
        _ if c.id == SERF_HEALTH => "",
        _ if is_maintenance(&c.id) => "maintenance",
        Some(p) if p.http => "http",
        Some(_) => "tcp",
        None if c.ttl_ms > 0 => "ttl",
        None => "script",
    }
}

/// serfHealth and every registered check, optionally only those matching `keep`.
fn all_checks(core: &Core, st: &State, keep: impl Fn(&Check) -> bool) -> Vec<Value> {
    checks_of(st, keep)
        .iter()
        .map(|c| check_json(core, st, c))
        .collect()
}

/// serfHealth and the registered checks that match `keep`.
fn checks_of(st: &State, keep: impl Fn(&Check) -> bool) -> Vec<std::borrow::Cow<'_, Check>> {
    std::iter::once(std::borrow::Cow::Owned(serf_health()))
        .chain(st.checks.values().map(std::borrow::Cow::Borrowed))
        .filter(|c| keep(c))
        .collect()
}

async fn agent_checks(AxState(core): AxState<Core>) -> Response {
    let map = core
        .read(|st| {
            st.checks
                .values()
                .map(|c| (c.id.clone(), check_json(&core, st, c)))
                .collect::<serde_json::Map<_, _>>()
        })
        .await;
    axum::Json(Value::Object(map)).into_response()
}

async fn check_register(AxState(core): AxState<Core>, body: Bytes) -> Response {
    let mut v: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "Request decode failed: expected a JSON object",
            )
        }
    };
    canonical_keys(&mut v, CHECK_FIELDS);
    let Some(name) = v.get("Name").and_then(Value::as_str).map(str::to_string) else {
        return text(StatusCode::BAD_REQUEST, "Missing check name");
    };
    let service = v
        .get("ServiceID")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut check = match check_from(&v, &name, None) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let outcome = core
        .write(move |st, now| {
            if let Some(sid) = &service {
                match st.services.get(sid) {
                    Some(reg) => {
                        check.service_name = reg
                            .get("Name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    }
                    None => {
                        return Err(StateError::BadRequest(format!(
                            "ServiceID {sid:?} does not exist"
                        )))
                    }
                }
            }
            st.check_register(check, now);
            Ok(())
        })
        .await;
    match outcome {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => state_error(e),
        Err(e) => core_error(e),
    }
}

async fn check_deregister(AxState(core): AxState<Core>, Path(id): Path<String>) -> Response {
    let id2 = id.clone();
    match core
        .write(move |st, now| st.check_deregister(&id2, now))
        .await
    {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Unknown check {id:?}"),
        ),
        Err(e) => core_error(e),
    }
}

async fn set_check(
    core: Core,
    id: String,
    status: HealthStatus,
    output: Option<String>,
) -> Response {
    let id2 = id.clone();
    match core
        .write(move |st, now| st.check_update(&id2, status, output, now))
        .await
    {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Unknown check {id:?}"),
        ),
        Err(e) => core_error(e),
    }
}

async fn check_pass(AxState(core): AxState<Core>, Path(id): Path<String>, q: Q) -> Response {
    set_check(core, id, HealthStatus::Passing, q.0.get("note").cloned()).await
}
async fn check_warn(AxState(core): AxState<Core>, Path(id): Path<String>, q: Q) -> Response {
    set_check(core, id, HealthStatus::Warning, q.0.get("note").cloned()).await
}
async fn check_fail(AxState(core): AxState<Core>, Path(id): Path<String>, q: Q) -> Response {
    set_check(core, id, HealthStatus::Critical, q.0.get("note").cloned()).await
}

async fn check_update(
    AxState(core): AxState<Core>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let given = v.get("Status").and_then(Value::as_str).unwrap_or("");
    let Some(status) = HealthStatus::parse(given) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("Invalid check status: '{given}'"),
        );
    };
    set_check(
        core,
        id,
        status,
        v.get("Output").and_then(Value::as_str).map(str::to_string),
    )
    .await
}

async fn catalog_node(AxState(core): AxState<Core>, Path(node): Path<String>) -> Response {
    if node != core.node() {
        return json_at(1, Value::Null);
    }
    let (idx, services) = core
        .read(|st| {
            (
                st.catalog_index.max(1),
                st.services
                    .iter()
                    .map(|(id, r)| (id.clone(), service_view(id, r)))
                    .collect::<serde_json::Map<_, _>>(),
            )
        })
        .await;
    json_at(idx, json!({"Node": node_json(&core), "Services": services}))
}

async fn health_node(AxState(core): AxState<Core>, Path(node): Path<String>, q: Q) -> Response {
    let (index, wait) = match blocking(&q.0) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let mine = node == core.node();
    let (idx, list) = core
        .block(index, wait, |st| {
            (
                st.catalog_index.max(1),
                if mine {
                    all_checks(&core, st, |_| true)
                } else {
                    Vec::new()
                },
            )
        })
        .await;
    json_at(idx, Value::Array(list))
}

async fn health_checks(AxState(core): AxState<Core>, Path(name): Path<String>, q: Q) -> Response {
    let (index, wait) = match blocking(&q.0) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let (idx, list) = core
        .block(index, wait, |st| {
            (
                st.catalog_index.max(1),
                all_checks(&core, st, |c| c.service_name == name),
            )
        })
        .await;
    json_at(idx, Value::Array(list))
}

async fn health_state(AxState(core): AxState<Core>, Path(state): Path<String>, q: Q) -> Response {
    // None: "any".
    let wanted = match state.as_str() {
        "any" => None,
        s => match HealthStatus::parse(s) {
            Some(h) => Some(h),
            None => return text(StatusCode::BAD_REQUEST, format!("Invalid state: {state}")),
        },
    };
    let (index, wait) = match blocking(&q.0) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let (idx, list) = core
        .block(index, wait, |st| {
            (
                st.catalog_index.max(1),
                all_checks(&core, st, |c| wanted.is_none_or(|w| c.status == w)),
            )
        })
        .await;
    json_at(idx, Value::Array(list))
}

fn event_json(e: &UserEvent) -> Value {
    json!({
        "ID": e.id, "Name": e.name,
        "Payload": if e.payload.is_empty() { Value::Null } else { json!(base64::engine::general_purpose::STANDARD.encode(&e.payload)) },
        "NodeFilter": "", "ServiceFilter": "", "TagFilter": "", "Version": 1, "LTime": e.ltime,
    })
}

async fn event_fire(
    AxState(core): AxState<Core>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if name == "_rexec" {
        // `consul exec`'s job event: no agent here would run it, and Consul's CLI would wait
        // out its quiet period and report "0 / 0 node(s)". Refused, so it stops with the reason.
        return refuse(
            "remote execution (consul exec)",
            "run commands with `servant start -c CMD` (add --wait for the output)",
        );
    }
    let id = uuid::Uuid::new_v4().to_string();
    let payload = body.to_vec();
    match core
        .write(move |st, _| event_json(&st.event_fire(&id, &name, payload)))
        .await
    {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => core_error(e),
    }
}

/// `/v1/event/list`: its index is a hash of the newest event's ID, as in Consul; clients compare
/// it with `!=`.
async fn event_list(AxState(core): AxState<Core>, q: Q) -> Response {
    let (index, wait) = match blocking(&q.0) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let name = q.0.get("name").cloned();
    let (_, list) = core
        .block(index, wait, |st| {
            let list: Vec<Value> = st
                .events
                .iter()
                .filter(|e| name.as_ref().is_none_or(|n| &e.name == n))
                .map(event_json)
                .collect();
            let hash = st
                .events
                .last()
                .map(|e| crate::util::hash::stable_hash(&[&e.id]))
                .unwrap_or(1);
            // A blocking list wakes when the hash differs from the one asked with.
            (
                if index != 0 && hash != index {
                    u64::MAX
                } else {
                    hash
                },
                (hash, list),
            )
        })
        .await;
    json_at(list.0, Value::Array(list.1))
}

async fn health_service(AxState(core): AxState<Core>, Path(name): Path<String>, q: Q) -> Response {
    let (index, wait) = match blocking(&q.0) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let passing = q.0.contains_key("passing");
    let tag = q.0.get("tag").cloned();
    let (idx, out) = core
        .block(index, wait, |st| {
            let out: Vec<Value> = instances(st, &name, tag.as_deref())
                .iter()
                .filter_map(|(id, r)| {
                    // The node's checks (serfHealth, node maintenance...) and the instance's own.
                    let checks = checks_of(st, |c| c.service_id.is_empty() || c.service_id == *id);
                    if passing && checks.iter().any(|c| c.status != HealthStatus::Passing) {
                        return None;
                    }
                    let checks: Vec<Value> = checks.iter().map(|c| check_json(&core, st, c)).collect();
                    Some(json!({"Node": node_json(&core), "Service": service_view(id, r), "Checks": checks}))
                })
                .collect();
            (st.catalog_index.max(1), out)
        })
        .await;
    json_at(idx, Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    use proptest::prelude::*;
    use tower::ServiceExt;

    /// A fresh server (its own data file) and a runtime whose clock is paused, so a blocking
    /// read's wait passes at once instead of holding the test.
    struct Fresh {
        app: Router,
        rt: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
    }

    impl Fresh {
        fn new() -> Fresh {
            // On tmpfs when there is one: each case makes a data file, and syncs cost nothing.
            let shm = std::path::Path::new("/dev/shm");
            let dir = if shm.is_dir() {
                tempfile::tempdir_in(shm).unwrap()
            } else {
                tempfile::tempdir().unwrap()
            };
            let core = Core::open(&dir.path().join("dev.redb"), "n1", "127.0.0.1").unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            Fresh {
                app: router(core),
                rt,
                _dir: dir,
            }
        }

        /// Status and body of one request; None when the request line is one that hyper would
        /// refuse before any handler.
        fn call(&self, method: &str, uri: &str, body: Vec<u8>) -> Option<(StatusCode, Bytes)> {
            let req = axum::http::Request::builder()
                .method(axum::http::Method::from_bytes(method.as_bytes()).ok()?)
                .uri(uri)
                .body(axum::body::Body::from(body))
                .ok()?;
            self.rt.block_on(async {
                let resp = self.app.clone().oneshot(req).await.unwrap();
                let status = resp.status();
                let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap();
                Some((status, bytes))
            })
        }
    }

    /// What a path segment or query value escapes: everything but letters and digits.
    const ESCAPE: &AsciiSet = NON_ALPHANUMERIC;

    fn method() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&["GET", "PUT", "DELETE", "POST", "HEAD"][..])
    }

    /// Paths under every route's fixed part, with a fuzzed rest.
    fn path() -> impl Strategy<Value = String> {
        const ROUTES: &[&str] = &[
            "/v1/kv/",
            "/v1/txn",
            "/v1/session/create",
            "/v1/session/destroy/",
            "/v1/session/renew/",
            "/v1/session/info/",
            "/v1/session/list",
            "/v1/session/node/",
            "/v1/status/leader",
            "/v1/agent/self",
            "/v1/agent/services",
            "/v1/agent/service/register",
            "/v1/agent/service/deregister/",
            "/v1/agent/service/maintenance/",
            "/v1/agent/checks",
            "/v1/agent/check/register",
            "/v1/agent/check/deregister/",
            "/v1/agent/check/pass/",
            "/v1/agent/check/update/",
            "/v1/agent/maintenance",
            "/v1/catalog/node/",
            "/v1/catalog/services",
            "/v1/catalog/service/",
            "/v1/health/checks/",
            "/v1/health/state/",
            "/v1/health/node/",
            "/v1/health/service/",
            "/v1/event/fire/",
            "/v1/event/list",
            "/v1/",
            "/",
        ];
        (prop::sample::select(ROUTES), "[ -~]{0,12}").prop_map(|(r, tail)| format!("{r}{tail}"))
    }

    /// A query string of known and other parameters with any values.
    fn query() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            prop::sample::select(
                &[
                    "index",
                    "wait",
                    "recurse",
                    "keys",
                    "separator",
                    "raw",
                    "cas",
                    "flags",
                    "acquire",
                    "release",
                    "enable",
                    "reason",
                    "passing",
                    "tag",
                    "note",
                    "name",
                ][..]
            )
            .prop_map(str::to_string),
            "[a-z]{1,6}",
        ];
        let value = prop_oneof![
            "\\PC{0,8}",
            Just("0".to_string()),
            Just("18446744073709551615".to_string()),
            Just("5s".to_string()),
            Just("true".to_string()),
        ];
        proptest::collection::vec((name, proptest::option::of(value)), 0..4).prop_map(|ps| {
            let ps: Vec<String> = ps
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={}", utf8_percent_encode(&v, ESCAPE)),
                    None => k,
                })
                .collect();
            if ps.is_empty() {
                String::new()
            } else {
                format!("?{}", ps.join("&"))
            }
        })
    }

    /// JSON bodies with the field names of Consul's requests, and any bytes.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "\\PC{0,8}".prop_map(Value::from),
            prop::sample::select(
                &["10s", "0s", "1h", "passing", "critical", "set", "lock", "delete", "aGk="][..]
            )
            .prop_map(Value::from),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            let field = prop::sample::select(
                &[
                    "KV",
                    "Verb",
                    "Key",
                    "Value",
                    "Flags",
                    "Index",
                    "Session",
                    "Name",
                    "ID",
                    "TTL",
                    "Behavior",
                    "LockDelay",
                    "Checks",
                    "Check",
                    "Node",
                    "Port",
                    "Tags",
                    "HTTP",
                    "TCP",
                    "Args",
                    "Interval",
                    "Timeout",
                    "Status",
                    "CheckID",
                    "ServiceID",
                    "Output",
                ][..],
            );
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(field, inner, 0..4).prop_map(|m| {
                    Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        });
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            value.prop_map(|v| v.to_string().into_bytes()),
        ]
    }

    proptest! {
        // Each case opens a data file (a few hundred ms unoptimised), so fewer cases, each a
        // sequence of requests on one server.
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Whatever the method, path, query and body, every request is answered, in order,
        /// against one server: no handler and no write on the writer thread panics.
        #[test]
        fn any_requests_are_answered(
            reqs in proptest::collection::vec((method(), path(), query(), body()), 1..16)
        ) {
            let server = Fresh::new();
            for (m, p, q, b) in reqs {
                if let Some((status, body)) = server.call(m, &format!("{p}{q}"), b) {
                    prop_assert!(status.as_u16() >= 200, "{m} {p}{q}: {status}");
                    // A write that panicked on the writer thread comes back as the core's error.
                    let text = String::from_utf8_lossy(&body);
                    prop_assert!(
                        !text.starts_with("the server is stopping")
                            && !text.starts_with("the write could not be made durable"),
                        "{m} {p}{q}: {text}"
                    );
                }
            }
        }

        /// Values PUT under any keys read back byte for byte, the last PUT of a key winning:
        /// raw, and as base64 in the JSON answer, under the key as written (its segments
        /// percent-encoded in the path, as clients send them).
        #[test]
        fn kv_puts_read_back_as_written(
            puts in proptest::collection::vec(
                (
                    proptest::collection::vec("\\PC{1,6}", 1..4),
                    proptest::collection::vec(any::<u8>(), 0..300),
                ),
                1..12,
            ),
        ) {
            let server = Fresh::new();
            let mut model = std::collections::BTreeMap::new();
            for (segments, value) in puts {
                let key = segments.join("/");
                if key.starts_with('\0') {
                    continue;
                }
                let path: Vec<String> = segments
                    .iter()
                    .map(|s| utf8_percent_encode(s, ESCAPE).to_string())
                    .collect();
                let url = format!("/v1/kv/{}", path.join("/"));
                let (status, put) = server.call("PUT", &url, value.clone()).unwrap();
                prop_assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&put));
                prop_assert_eq!(&put[..], b"true");
                model.insert(key, (url, value));
            }
            for (key, (url, value)) in model {
                let (status, raw) = server.call("GET", &format!("{url}?raw"), vec![]).unwrap();
                prop_assert_eq!(status, StatusCode::OK);
                prop_assert_eq!(&raw[..], &value[..], "{:?}", key);
                let (status, listed) = server.call("GET", &url, vec![]).unwrap();
                prop_assert_eq!(status, StatusCode::OK);
                let v: Value = serde_json::from_slice(&listed).unwrap();
                prop_assert_eq!(&v[0]["Key"], &json!(key));
                let want = if value.is_empty() {
                    Value::Null
                } else {
                    json!(base64::engine::general_purpose::STANDARD.encode(&value))
                };
                prop_assert_eq!(&v[0]["Value"], &want);
            }
        }
    }

    #[test]
    fn wait_longer_than_ten_minutes_is_clamped() {
        assert_eq!(
            clamp_wait(Duration::from_secs(900)),
            Duration::from_secs(600)
        );
        assert_eq!(clamp_wait(Duration::from_secs(5)), Duration::from_secs(5));
        let q: HashMap<String, String> = [
            ("index".to_string(), "5".to_string()),
            ("wait".to_string(), "15m".to_string()),
        ]
        .into_iter()
        .collect();
        let (i, w) = blocking(&q).ok().unwrap();
        assert_eq!(i, 5);
        assert!(
            w >= Duration::from_secs(600)
                && w <= Duration::from_secs(600) + Duration::from_secs(600) / 16
        );
    }
}
