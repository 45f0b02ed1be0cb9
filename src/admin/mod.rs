//! The admin HTTP listener: `/health` (JSON) and `/metrics` (Prometheus text).

use crate::node::Node;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls reuse it).
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
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
}

pub async fn serve(listener: tokio::net::TcpListener, node: Arc<Node>) {
    let handle = prometheus().clone();
    let app = Router::new()
        .route("/health", get(health))
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
