//! What the agent asks of Consul, counted by part and endpoint: `servant_consul_requests_total
//! {part,endpoint,outcome}` and `servant_consul_response_bytes_total{part,endpoint}`, so the load
//! model of ARCHITECTURE.md can be checked, loop by loop, on a live cluster. Every clone of a `Client` counts into the
//! same series; the agent registers them.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The endpoint of a request path, bounded: never a key, a session ID or a service name.
/// `/v1/kv/...` is `kv`; `/v1/txn` is `txn`; otherwise the two segments after `/v1/`
/// (`session/renew`, `health/service`, `catalog/services`, `agent/check`).
pub fn endpoint(path: &str) -> String {
    let rest = path.split('?').next().unwrap_or("");
    let rest = rest.strip_prefix("/v1/").unwrap_or(rest);
    let mut parts = rest.split('/').filter(|p| !p.is_empty());
    match (parts.next(), parts.next()) {
        (Some("kv"), _) | (Some("txn"), _) => rest.split('/').next().unwrap_or("").to_string(),
        (Some(a), Some(b)) => format!("{a}/{b}"),
        (Some(a), None) => a.to_string(),
        _ => "other".into(),
    }
}

#[derive(Clone, Debug, Default)]
pub struct ConsulMetrics {
    requests: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    renewals: Counter,
}

impl ConsulMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "servant_consul_requests",
            "HTTP requests this agent made to Consul, by part of the agent (jobs, apps, sessions, ...), endpoint and outcome (ok, not_found, an HTTP status class, or unreachable)",
            self.requests.clone(),
        );
        r.register(
            "servant_consul_response_bytes",
            "Bytes of Consul's answers to this agent, by part of the agent and endpoint",
            self.bytes.clone(),
        );
        r.register(
            "servant_session_renewals",
            "Sessions this agent renewed (its jobs and apps sessions)",
            self.renewals.clone(),
        );
    }

    pub(crate) fn renewed(&self) {
        self.renewals.inc();
    }

    pub(crate) fn record(&self, part: &str, path: &str, outcome: &str, bytes: usize) {
        let ep = endpoint(path);
        self.requests
            .get_or_create(&vec![
                ("part".to_string(), part.to_string()),
                ("endpoint".to_string(), ep.clone()),
                ("outcome".to_string(), outcome.to_string()),
            ])
            .inc();
        if bytes > 0 {
            self.bytes
                .get_or_create(&vec![
                    ("part".to_string(), part.to_string()),
                    ("endpoint".to_string(), ep),
                ])
                .inc_by(bytes as u64);
        }
    }
}

/// The outcome label of an HTTP status.
pub(crate) fn outcome(status: u16) -> &'static str {
    match status {
        200..=299 => "ok",
        404 => "not_found",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_never_carry_keys_ids_or_names() {
        for (path, want) in [
            ("/v1/kv/jobs/secret-id", "kv"),
            ("/v1/kv/", "kv"),
            ("/v1/txn", "txn"),
            ("/v1/session/renew/0c1d-uuid", "session/renew"),
            ("/v1/health/service/web", "health/service"),
            ("/v1/catalog/services", "catalog/services"),
            ("/v1/agent/check/update/servant:web", "agent/check"),
            ("/v1/status/leader", "status/leader"),
            ("/v1/kv/a?recurse", "kv"),
        ] {
            assert_eq!(endpoint(path), want, "{path}");
        }
    }
}
