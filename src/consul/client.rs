//! Transport: address, token, TLS, error classification and the blocking-query plumbing.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

/// Where and how to reach the local Consul agent. Defaults and environment follow Consul's CLI.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// `host:port`, `http://host:port` or `https://host:port` (CONSUL_HTTP_ADDR).
    pub address: Option<String>,
    /// ACL token sent as `X-Consul-Token` (CONSUL_HTTP_TOKEN).
    pub token: Option<String>,
    /// PEM CA bundle to trust (CONSUL_CACERT).
    pub ca_cert: Option<String>,
    /// PEM client certificate for mutual TLS (CONSUL_CLIENT_CERT).
    pub client_cert: Option<String>,
    /// PEM key of the client certificate (CONSUL_CLIENT_KEY).
    pub client_key: Option<String>,
}

impl ClientConfig {
    /// Reads Consul's own variables; explicit values set later win.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        ClientConfig {
            address: var("CONSUL_HTTP_ADDR"),
            token: var("CONSUL_HTTP_TOKEN"),
            ca_cert: var("CONSUL_CACERT"),
            client_cert: var("CONSUL_CLIENT_CERT"),
            client_key: var("CONSUL_CLIENT_KEY"),
        }
    }

    /// The base URL, with a scheme: https when a CA or client certificate is configured and the
    /// address names none, as Consul's CLI does with CONSUL_HTTP_SSL.
    pub fn base_url(&self) -> String {
        let addr = self
            .address
            .clone()
            .unwrap_or_else(|| "127.0.0.1:8500".to_string());
        if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            let tls = std::env::var("CONSUL_HTTP_SSL")
                .map(|v| v == "true" || v == "1")
                .unwrap_or(false);
            let scheme = if tls { "https" } else { "http" };
            format!("{scheme}://{}", addr.trim_end_matches('/'))
        }
    }
}

/// Every way a Consul call can fail, classified by cause.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    /// The cause is in the message, not `source()`, so that logs show it too.
    #[error("cannot reach consul at {url}: {}", crate::util::error::chain(.cause))]
    Unreachable {
        url: String,
        /// Without its URL, which the message already names.
        cause: reqwest::Error,
    },
    /// A call to the embedded server in this process that did not complete. The cause is in
    /// the message, not `source()`, as for `Unreachable`.
    #[error("the embedded server did not answer {url}: {cause}")]
    InProcess { url: String, cause: InProcessError },
    #[error("permission denied by consul for {method} {path}: {body} (set CONSUL_HTTP_TOKEN or -token to a token whose policy allows it)")]
    PermissionDenied {
        method: String,
        path: String,
        body: String,
    },
    #[error("consul answered {status} to {method} {path}: {body}")]
    Status {
        status: u16,
        method: String,
        path: String,
        body: String,
    },
    #[error("cannot decode consul's answer to {path}: {detail}")]
    Decode { path: String, detail: String },
    #[error("bad TLS material {path}: {detail}")]
    Tls { path: String, detail: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

impl ConsulError {
    /// Errors worth retrying after a pause (network, 5xx, leader elections). Not 501: the
    /// embedded `-dev` server's answer to an API it does not have, which no retry changes.
    pub fn is_transient(&self) -> bool {
        match self {
            ConsulError::Unreachable { .. } | ConsulError::InProcess { .. } => true,
            ConsulError::Status { status, .. } => {
                (*status >= 500 && *status != 501) || *status == 429
            }
            _ => false,
        }
    }
}

/// Why a call to the embedded server in this process did not complete.
#[derive(Debug, thiserror::Error)]
pub enum InProcessError {
    #[error("cannot build the request: {0}")]
    Request(reqwest::Error),
    #[error("cannot read the answer: {0}")]
    Body(axum::Error),
    #[error("the call's task ended early: {0}")]
    Task(tokio::task::JoinError),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// Options of a read; `index` > 0 makes it a blocking query.
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    /// The `X-Consul-Index` from the previous answer; 0 means "answer now".
    pub index: u64,
    /// How long Consul may hold the request (Consul clamps it to 10 minutes).
    pub wait: Option<Duration>,
    /// Ask for a stale read from any server.
    pub stale: bool,
    /// Another datacenter to ask (`?dc=`); the agent's own when None.
    pub dc: Option<String>,
}

impl QueryOptions {
    pub fn blocking(index: u64, wait: Duration) -> Self {
        QueryOptions {
            index,
            wait: Some(wait),
            stale: false,
            dc: None,
        }
    }
}

/// Metadata of a read, from Consul's headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index`: the only index a blocking query may wait on.
    pub index: u64,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-LastContact` in milliseconds.
    pub last_contact_ms: u64,
}

/// The client: cheap to clone, one connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    metrics: super::metrics::ConsulMetrics,
    /// Which part of the agent asks, for the metrics' `part` label.
    part: &'static str,
    /// `servant agent -dev`'s embedded server, called in this process: the same handlers
    /// without a socket, HTTP's encoding or a connection task between them.
    local: Option<axum::Router>,
}

/// Consul's answer, its body read: status, query metadata and bytes.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub meta: QueryMeta,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Extra time granted to a blocking request beyond Consul's own jitter (wait/16).
const BLOCKING_SLACK: Duration = Duration::from_secs(5);
/// Timeout of a non-blocking request.
const PLAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    pub fn new(cfg: &ClientConfig) -> Result<Self, ConsulError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90));
        if let Some(ca) = &cfg.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| ConsulError::Tls {
                path: ca.clone(),
                detail: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ConsulError::Tls {
                    path: ca.clone(),
                    detail: e.to_string(),
                })?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert).map_err(|e| ConsulError::Tls {
                    path: cert.clone(),
                    detail: e.to_string(),
                })?;
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| ConsulError::Tls {
                    path: key.clone(),
                    detail: e.to_string(),
                })?);
                let id = reqwest::Identity::from_pem(&pem).map_err(|e| ConsulError::Tls {
                    path: cert.clone(),
                    detail: e.to_string(),
                })?;
                b = b.identity(id);
            }
            (Some(p), None) | (None, Some(p)) => {
                return Err(ConsulError::Tls {
                    path: p.clone(),
                    detail:
                        "a client certificate needs both CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY"
                            .into(),
                })
            }
            (None, None) => {}
        }
        let http = b.build().map_err(|e| ConsulError::Build(e.to_string()))?;
        Ok(Client {
            http,
            base: cfg.base_url(),
            token: cfg.token.clone(),
            metrics: Default::default(),
            part: "agent",
            local: None,
        })
    }

    /// The same client (one connection pool) sending `token` instead of its own: the agent API
    /// runs a dashboard user's write with that user's token.
    pub fn with_token(&self, token: Option<String>) -> Client {
        Client {
            http: self.http.clone(),
            base: self.base.clone(),
            token,
            metrics: self.metrics.clone(),
            part: self.part,
            local: self.local.clone(),
        }
    }

    /// The same client calling the embedded server `router` in this process instead of over
    /// TCP (`servant agent -dev`: the server it would reach at its base URL is that router).
    pub fn in_process(self, router: axum::Router) -> Client {
        Client {
            local: Some(router),
            ..self
        }
    }

    /// The ACL token this client sends, if any (the CLI passes it on to the agent API).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The same client, its requests counted under `part` (jobs, apps, checks...): the load
    /// model of ARCHITECTURE.md is per loop.
    pub fn for_part(&self, part: &'static str) -> Client {
        Client {
            part,
            ..self.clone()
        }
    }

    /// What this client (and every clone of it) asked of Consul, for `/metrics`.
    pub fn metrics(&self) -> &super::metrics::ConsulMetrics {
        &self.metrics
    }

    /// The base URL this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .timeout(PLAIN_TIMEOUT);
        if let Some(t) = &self.token {
            r = r.header("X-Consul-Token", t);
        }
        r
    }

    /// Adds index/wait/stale and a client timeout longer than wait + wait/16.
    pub(crate) fn query(&self, path: &str, q: &QueryOptions) -> RequestBuilder {
        let mut r = self.request(Method::GET, path);
        if q.index > 0 {
            r = r.query(&[("index", q.index.to_string())]);
            let wait = q
                .wait
                .unwrap_or(Duration::from_secs(300))
                .min(Duration::from_secs(600));
            r = r
                .query(&[("wait", format!("{}ms", wait.as_millis()))])
                .timeout(wait + wait / 16 + BLOCKING_SLACK);
        }
        if q.stale {
            r = r.query(&[("stale", "")]);
        }
        if let Some(dc) = &q.dc {
            r = r.query(&[("dc", dc)]);
        }
        r
    }

    /// Sends, reads the answer and classifies the status. Success and 404 come back as an
    /// answer (a missing key is not an error); everything else is a classified error.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        r: RequestBuilder,
    ) -> Result<Answer, ConsulError> {
        let (status, meta, body) = match &self.local {
            Some(router) => self.call_in_process(router, path, r).await?,
            None => self.call_over_http(path, r).await?,
        };
        self.metrics.record(
            self.part,
            path,
            super::metrics::outcome(status.as_u16()),
            body.len(),
        );
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(Answer { status, meta, body });
        }
        Err(classify(
            status,
            method,
            path,
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }

    /// Sends `r` over HTTP and reads the whole answer.
    async fn call_over_http(
        &self,
        path: &str,
        r: RequestBuilder,
    ) -> Result<(StatusCode, QueryMeta, Vec<u8>), ConsulError> {
        let resp = match r.send().await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.record(self.part, path, "unreachable", 0);
                return Err(ConsulError::Unreachable {
                    url: format!("{}{}", self.base, path),
                    cause: e.without_url(),
                });
            }
        };
        let status = resp.status();
        let meta = meta_of(resp.headers());
        match resp.bytes().await {
            Ok(b) => Ok((status, meta, b.to_vec())),
            Err(e) => {
                self.metrics.record(self.part, path, "unreachable", 0);
                Err(ConsulError::Decode {
                    path: path.to_string(),
                    detail: e.to_string(),
                })
            }
        }
    }

    /// Calls the embedded server's `router` with `r` in this process, within `r`'s timeout, and
    /// reads the whole answer.
    async fn call_in_process(
        &self,
        router: &axum::Router,
        path: &str,
        r: RequestBuilder,
    ) -> Result<(StatusCode, QueryMeta, Vec<u8>), ConsulError> {
        call_in_process(router, r).await.map_err(|cause| {
            self.metrics.record(self.part, path, "unreachable", 0);
            ConsulError::InProcess {
                url: format!("{}{}", self.base, path),
                cause,
            }
        })
    }

    pub(crate) fn json<T: DeserializeOwned>(path: &str, a: &Answer) -> Result<T, ConsulError> {
        serde_json::from_slice(&a.body).map_err(|e| ConsulError::Decode {
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    /// GET a JSON body with query metadata. A 404 or a `null` body yields `None` with the metadata.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        q: &QueryOptions,
        extra: &[(&str, String)],
    ) -> Result<(Option<T>, QueryMeta), ConsulError> {
        let r = self.query(path, q).query(extra);
        let a = self.send("GET", path, r).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Ok((None, a.meta));
        }
        // Consul answers `null` for some empty results (a missing session's info, for one).
        Ok((Self::json::<Option<T>>(path, &a)?, a.meta))
    }

    /// PUT with an optional JSON body. A 404 is an error here (unknown session, check, ...).
    async fn put_checked(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
        extra: &[(&str, String)],
    ) -> Result<Answer, ConsulError> {
        let mut r = self.request(Method::PUT, path).query(extra);
        if let Some(b) = body {
            r = r.json(b);
        }
        let a = self.send("PUT", path, r).await?;
        if a.status == StatusCode::NOT_FOUND {
            return Err(ConsulError::Status {
                status: 404,
                method: "PUT".into(),
                path: path.into(),
                body: a.text(),
            });
        }
        Ok(a)
    }

    /// PUT whose answer is JSON.
    pub(crate) async fn put_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
        extra: &[(&str, String)],
    ) -> Result<T, ConsulError> {
        let a = self.put_checked(path, body, extra).await?;
        Self::json(path, &a)
    }

    /// PUT whose answer body is ignored (Consul often answers `true` or nothing).
    pub(crate) async fn put_unit(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
        extra: &[(&str, String)],
    ) -> Result<(), ConsulError> {
        self.put_checked(path, body, extra).await.map(|_| ())
    }
}

pub(crate) fn classify(status: StatusCode, method: &str, path: &str, body: String) -> ConsulError {
    let body = body.trim().to_string();
    if status == StatusCode::FORBIDDEN
        || body.contains("Permission denied")
        || body.contains("ACL not found")
    {
        ConsulError::PermissionDenied {
            method: method.into(),
            path: path.into(),
            body,
        }
    } else {
        ConsulError::Status {
            status: status.as_u16(),
            method: method.into(),
            path: path.into(),
            body,
        }
    }
}

/// The in-process call itself: the same handlers a socket would reach, without the socket.
async fn call_in_process(
    router: &axum::Router,
    r: RequestBuilder,
) -> Result<(StatusCode, QueryMeta, Vec<u8>), InProcessError> {
    use tower::ServiceExt;
    let req = r.build().map_err(InProcessError::Request)?;
    let timeout = req.timeout().copied().unwrap_or(PLAIN_TIMEOUT);
    let req =
        axum::http::Request::<reqwest::Body>::try_from(req).map_err(InProcessError::Request)?;
    let read_only = req.method() == Method::GET;
    let call = router.clone().oneshot(req);
    let call = async move {
        let resp = match call.await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(InProcessError::Body)?;
        Ok((parts.status, meta_of(&parts.headers), body.to_vec()))
    };
    let answer = async move {
        if read_only {
            call.await
        } else {
            // A write runs to its end, as one sent over a socket does, should its caller give
            // up on the answer (a timeout, a stop): the server's handler is not cut midway.
            tokio::spawn(call).await.map_err(InProcessError::Task)?
        }
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| InProcessError::TimedOut(timeout))?
}

fn meta_of(h: &reqwest::header::HeaderMap) -> QueryMeta {
    let num = |k: &str| {
        h.get(k)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    QueryMeta {
        index: num("X-Consul-Index"),
        known_leader: h.get("X-Consul-KnownLeader").and_then(|v| v.to_str().ok()) == Some("true"),
        last_contact_ms: num("X-Consul-LastContact"),
    }
}

/// Percent-encodes each segment of a KV key for the URL path, keeping the `/` separators.
pub(crate) fn encode_key(key: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    const SEG: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'%')
        .add(b'\\')
        .add(b'^')
        .add(b'|')
        .add(b'[')
        .add(b']');
    key.split('/')
        .map(|s| utf8_percent_encode(s, SEG).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::ConsulError;

    fn status(status: u16) -> ConsulError {
        ConsulError::Status {
            status,
            method: "PUT".into(),
            path: "/v1/agent/force-leave/x".into(),
            body: String::new(),
        }
    }

    #[test]
    fn server_errors_are_retried_but_not_an_api_the_server_lacks() {
        assert!(status(500).is_transient());
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(501).is_transient());
        assert!(!status(404).is_transient());
    }
}
