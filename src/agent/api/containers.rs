//! `/v1/containers`: this node's running containers with their CPU and memory use, from the
//! agent's `ContainerMonitor` (the sample `/metrics` and the `resource` report share).

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::ApiState;
use crate::wire::resource::ContainerUsage;

/// How long an answer waits for a fresh sample before it gives the previous one.
const SAMPLE_WAIT: Duration = Duration::from_secs(2);

/// The answer of `/v1/containers`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerList {
    /// The node they run on (this agent's): containers are per node.
    pub node: String,
    /// Whether a Docker Engine answered; without one the list is empty.
    pub docker: bool,
    pub containers: Vec<ContainerUsage>,
}

/// This node's containers, waiting at most `wait` for a fresh sample.
pub async fn list_of(st: &ApiState, wait: Duration) -> ContainerList {
    let usage = st.containers.usage(wait).await;
    ContainerList {
        node: st.node.clone(),
        docker: usage.is_some(),
        containers: usage.map(|u| u.as_ref().clone()).unwrap_or_default(),
    }
}

/// `GET /v1/containers`.
pub async fn list(State(st): State<ApiState>) -> Json<ContainerList> {
    Json(list_of(&st, SAMPLE_WAIT).await)
}
