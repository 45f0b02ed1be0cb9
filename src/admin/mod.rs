//! The admin HTTP listener: `/health` (JSON), `/metrics` (Prometheus text),
//! `/calls` (the call-state table as JSON) and `/admission` (seed 002's REGISTER
//! front end as JSON).

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
    /// The REGISTER front end's state; `None` when admission is off.
    fn admission(&self) -> Option<crate::admission::Snapshot>;
}

type Status = Arc<dyn NodeStatus>;

pub async fn serve(listener: tokio::net::TcpListener, node: Status) {
    let handle = prometheus().clone();
    let app = Router::new()
        .route("/health", get(health))
        .route("/calls", get(calls))
        .route("/admission", get(admission))
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

/// `GET /admission`: `{"enabled":false}`, or the queue per class, the tokens
/// outstanding, the measured service rate (registrations/s), the projected wait
/// and how far ahead retry slots are handed out (milliseconds), and the counts
/// since start.
async fn admission(State(node): State<Status>) -> impl IntoResponse {
    let body = match node.admission() {
        None => serde_json::json!({ "enabled": false }),
        Some(s) => {
            let c = s.counts;
            serde_json::json!({
                "enabled": true,
                "queued": {
                    "priority": s.queued_priority,
                    "token": s.queued_token,
                    "initial": s.queued_initial,
                },
                "tokens": {
                    "outstanding": s.tokens_outstanding,
                    "pending": s.tokens_pending,
                    "implicit": s.implicit_tokens,
                },
                "service_rate": s.service_rate,
                "projected_wait_ms": s.projected_wait.as_millis() as u64,
                "retry_horizon_ms": s.retry_horizon.as_millis() as u64,
                "counts": {
                    "tokens_granted": c.tokens_granted,
                    "tokens_denied": c.tokens_denied,
                    "tokens_expired": c.tokens_expired,
                    "tokens_used": c.tokens_used,
                    "implicit_used": c.implicit_used,
                    "refused_on_arrival": c.refused,
                    "refused_after_max_wait": c.expired_in_queue,
                },
            })
        }
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
