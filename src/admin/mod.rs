//! The admin HTTP listener: `/health` (JSON), `/metrics` (Prometheus text) and
//! `/calls` (the call-state table as JSON).

use crate::node::Node;
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
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("tandem_call_setup_seconds".into()),
                &[
                    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0,
                ],
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed (e.g. by a test harness).
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "tandem_sip_requests_total",
        "SIP requests received, by method"
    );
    describe_counter!(
        "tandem_sip_responses_total",
        "SIP responses sent, by request method and status"
    );
    describe_counter!(
        "tandem_sip_retransmissions_total",
        "Retransmitted requests absorbed by a transaction"
    );
    describe_counter!(
        "tandem_sip_parse_errors_total",
        "Messages rejected as malformed, by transport and reason"
    );
    describe_counter!(
        "tandem_sip_stray_responses_total",
        "Responses that matched no transaction (dropped)"
    );
    describe_counter!("tandem_register_total", "REGISTER outcomes");
    describe_counter!(
        "tandem_auth_failures_total",
        "Digest authentication failures, by reason"
    );
    describe_gauge!("tandem_bindings_active", "Bindings in the location table");
    describe_counter!(
        "tandem_bindings_expired_total",
        "Bindings removed on expiry"
    );
    describe_gauge!("tandem_transactions_active", "Live server transactions");
    describe_gauge!("tandem_tcp_connections", "Open TCP connections");
    describe_counter!(
        "tandem_tcp_connections_refused_total",
        "TCP connections refused at the connection limit"
    );
    describe_counter!("tandem_store_commits_total", "Store transactions committed");
    describe_histogram!(
        "tandem_store_batch_size",
        "Binding changes per store transaction (group commit)"
    );
    describe_gauge!(
        "tandem_calls_active",
        "Calls in the call-state table not yet ended (trying, early, confirmed)"
    );
    describe_counter!(
        "tandem_call_attempts_total",
        "Routed INVITEs by outcome (answered, rejected, cancelled, timeout, failed)"
    );
    describe_histogram!(
        "tandem_call_setup_seconds",
        "Time from INVITE to answer of answered calls"
    );
    describe_counter!(
        "tandem_cdrs_dropped_total",
        "Finished calls dropped before a CDR was written (queue full)"
    );
}

pub async fn serve(listener: tokio::net::TcpListener, node: Arc<Node>) {
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

async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let body = serde_json::json!({
        "status": "ok",
        "bindings": node.registrar().location().len(),
        "transactions": node.active_transactions(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// `GET /calls`: `{"calls":[…]}`, active calls first (oldest first), then calls
/// that ended within `calls.linger_secs` (most recent first). See
/// [`crate::proxy::calls::Call`] for the fields; timestamps are Unix milliseconds.
async fn calls(State(node): State<Arc<Node>>) -> impl IntoResponse {
    // copy under the lock, serialize after releasing it
    let calls = node.calls().lock().snapshot();
    #[derive(serde::Serialize)]
    struct Body {
        calls: Vec<crate::proxy::calls::Call>,
    }
    // cannot fail: plain structs with string keys
    let body = serde_json::to_string(&Body { calls }).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}
