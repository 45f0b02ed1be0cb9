//! The admin HTTP listener: `/health` (JSON), `/metrics` (Prometheus text) and
//! `/calls` (the call-state table as JSON).

pub mod catalogue;

use crate::proxy::calls::Call;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls reuse it).
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        // Histograms with buckets render as Prometheus histograms, others as summaries.
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in catalogue::BUCKETS {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                .expect("bucket lists are not empty");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed (e.g. by a test harness).
        let _ = metrics::set_global_recorder(recorder);
        catalogue::describe();
        handle
    })
}

/// What the admin listener may read of a node: a narrow, read-only view, so the
/// admin layer does not depend on the node (the node implements it).
pub trait NodeStatus: Send + Sync + 'static {
    /// Bindings in the location table (every node's, in a cluster).
    fn bindings(&self) -> usize;
    /// Live server transactions.
    fn transactions(&self) -> usize;
    /// A copy of the call-state table, as `GET /calls` lists it.
    fn calls(&self) -> Vec<Call>;
}

type Status = Arc<dyn NodeStatus>;

pub async fn serve(listener: tokio::net::TcpListener, node: Status) {
    let handle = prometheus().clone();
    let app = Router::new()
        .route("/health", get(health))
        .route("/calls", get(calls))
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        h.render(),
                    )
                }
            }),
        )
        .with_state(node);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin listener stopped");
    }
}

async fn health(State(node): State<Status>) -> impl IntoResponse {
    let body = serde_json::json!({
        "status": "ok",
        "bindings": node.bindings(),
        "transactions": node.transactions(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// `GET /calls`: `{"calls":[…]}`, active calls first (oldest first), then calls
/// that ended within `calls.linger_secs` (most recent first). See
/// [`crate::proxy::calls::Call`] for the fields; timestamps are Unix milliseconds.
async fn calls(State(node): State<Status>) -> impl IntoResponse {
    let calls = node.calls();
    #[derive(serde::Serialize)]
    struct Body {
        calls: Vec<Call>,
    }
    // cannot fail: plain structs with string keys
    let body = serde_json::to_string(&Body { calls }).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}
