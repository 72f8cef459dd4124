//! The agent's metrics: one `prometheus_client` registry that the agent owns and each part
//! adds its metrics to when the agent wires it, served at `/metrics` (`api.rs`). Names start
//! with `servant_`, use base units, and labels stay bounded (never a job ID).
//!
//! Metrics a part keeps up to date itself (counters, gauges it sets) are registered into
//! `registry_mut()`. Metrics read from elsewhere at scrape time (the containers' use, from the
//! Engine) are a `Collector` plus a `Refresh` the scrape awaits first.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::process::stats::ContainerMonitor;
use crate::wire::resource::ContainerUsage;

/// The metrics each part keeps itself, made by the agent before the parts and registered once.
#[derive(Clone, Debug, Default)]
pub struct PartMetrics {
    pub jobs: crate::jobs::metrics::JobMetrics,
    pub apps: crate::apps::metrics::AppMetrics,
    pub checks: crate::checks::metrics::CheckMetrics,
    pub templates: crate::templates::metrics::TemplateMetrics,
    pub registrator: crate::registrator::RegistratorMetrics,
}

impl PartMetrics {
    pub fn register(&self, m: &mut AgentMetrics) {
        let r = m.registry_mut();
        self.jobs.register(r);
        self.apps.register(r);
        self.checks.register(r);
        self.templates.register(r);
        self.registrator.register(r);
    }
}

/// Something a scrape brings up to date before the registry is encoded.
pub trait Refresh: Send + Sync + 'static {
    fn refresh(&self) -> BoxFuture<'_, ()>;
}

/// The registry and what refreshes before each scrape.
#[derive(Default)]
pub struct AgentMetrics {
    registry: Registry,
    refresh: Vec<Arc<dyn Refresh>>,
}

/// The exposition formats `/metrics` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus' classic text format, 0.0.4: the default.
    Text,
    /// OpenMetrics 1.0 text, when the scraper asks for it.
    OpenMetrics,
}

impl Format {
    /// From a request's `Accept` header: OpenMetrics only when asked for.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

impl AgentMetrics {
    /// A registry with `servant_build_info`.
    pub fn new() -> Self {
        let mut m = AgentMetrics::default();
        let info: Family<Vec<(String, String)>, Gauge> = Family::default();
        info.get_or_create(&vec![(
            "version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )])
        .set(1);
        m.registry
            .register("servant_build_info", "The servant build (always 1)", info);
        m
    }

    /// Where a part registers the metrics it keeps.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The container gauges, read from `monitor` at each scrape.
    pub fn add_containers(&mut self, monitor: ContainerMonitor) {
        self.registry
            .register_collector(Box::new(ContainerGauges(monitor.clone())));
        self.refresh.push(Arc::new(ContainerGauges(monitor)));
    }

    /// The metrics in `format`, after every refresh.
    pub async fn render(&self, format: Format) -> Result<String, std::fmt::Error> {
        for r in &self.refresh {
            r.refresh().await;
        }
        let mut out = String::new();
        match format {
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
    }
}

/// The container gauges of DESIGN's "Web UI, API, metrics": one series per running container
/// of this node, gone with the container.
#[derive(Debug)]
struct ContainerGauges(ContainerMonitor);

impl Refresh for ContainerGauges {
    fn refresh(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Within Prometheus' default scrape timeout (10 s); else the previous sample.
            let _ = self.0.usage(std::time::Duration::from_secs(5)).await;
        })
    }
}

/// A container's labels: its name, image, what it runs for (`job` or `app`) and the app's
/// name. Never the job's key: job IDs are unbounded.
fn labels(c: &ContainerUsage) -> Vec<(&'static str, String)> {
    let kind = if c.app.is_some() {
        "app"
    } else if c.job.is_some() {
        "job"
    } else {
        "other"
    };
    vec![
        ("name", c.name.clone()),
        ("image", c.image.clone()),
        ("kind", kind.to_string()),
        ("app", c.app.clone().unwrap_or_default()),
    ]
}

/// The container gauges' names, help and value.
type GaugeOf = fn(&ContainerUsage) -> f64;
const CONTAINER_GAUGES: [(&str, &str, GaugeOf); 3] = [
    (
        "servant_container_cpu_usage_ratio",
        "CPU a running container used between the last two samples, in CPUs (1 = one whole CPU)",
        |c| c.cpu_percent / 100.0,
    ),
    (
        "servant_container_memory_usage_bytes",
        "Memory a running container uses, without the inactive page cache (as docker stats)",
        |c| c.memory_bytes as f64,
    ),
    (
        "servant_container_memory_limit_bytes",
        "A running container's memory limit (the machine's memory when it has none)",
        |c| c.memory_limit_bytes as f64,
    ),
];

impl Collector for ContainerGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(containers) = self.0.latest() else {
            return Ok(());
        };
        for (name, help, value) in CONTAINER_GAUGES {
            let g = ConstGauge::new(0.0f64);
            let mut family = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            for c in containers.iter() {
                let ls = labels(c);
                let m = family.encode_family(&ls)?;
                ConstGauge::new(value(c)).encode(m)?;
            }
        }
        Ok(())
    }
}

/// The names of the container gauges, for the README and tests.
pub fn container_gauge_names() -> impl Iterator<Item = &'static str> {
    CONTAINER_GAUGES.iter().map(|(n, _, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn build_info_in_both_formats() {
        let m = AgentMetrics::new();
        let text = m.render(Format::Text).await.unwrap();
        assert!(
            text.contains(&format!(
                "servant_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let om = m.render(Format::OpenMetrics).await.unwrap();
        assert!(om.trim_end().ends_with("# EOF"), "{om}");
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
    }

    #[test]
    fn container_labels_are_bounded() {
        let c = ContainerUsage {
            id: "0123".into(),
            name: "happy_turing".into(),
            image: "img:1".into(),
            job: Some("jobs/some-unique-id".into()),
            app: None,
            cpu_percent: 150.0,
            memory_bytes: 1,
            memory_limit_bytes: 2,
        };
        let ls = labels(&c);
        assert!(
            ls.iter().all(|(_, v)| !v.contains("some-unique-id")),
            "{ls:?}"
        );
        assert!(ls.contains(&("kind", "job".to_string())));
        assert_eq!((CONTAINER_GAUGES[0].2)(&c), 1.5);
    }
}
