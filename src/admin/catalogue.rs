//! Every metric Tandem exports, in one place: name, type, help text and labels.
//! `/metrics` describes them from this table, the README's metrics table is checked
//! against it, and a test checks that every metric the code emits is listed here
//! (with its type), so the three cannot drift apart.

/// A Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Label names (values come from fixed sets, so cardinality stays bounded).
    pub labels: &'static [&'static str],
}

const fn m(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        help,
        labels,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// The catalogue.
pub const METRICS: &[Metric] = &[
    m("tandem_sip_requests_total", Counter, &["method"], "SIP requests received, by method"),
    m("tandem_sip_responses_total", Counter, &["method", "status"], "SIP responses sent, by request method and status"),
    m("tandem_sip_retransmissions_total", Counter, &["method"], "Retransmitted requests absorbed by a transaction"),
    m("tandem_sip_parse_errors_total", Counter, &["transport", "reason"], "Messages rejected as malformed, by transport and reason"),
    m("tandem_sip_stray_responses_total", Counter, &[], "Responses that matched no transaction (dropped)"),
    m("tandem_register_total", Counter, &["outcome"], "REGISTER outcomes (ok, challenged, refused, store_error, ...)"),
    m("tandem_auth_failures_total", Counter, &["reason"], "Digest authentication failures, by reason"),
    m("tandem_bindings_active", Gauge, &[], "Bindings in the location table"),
    m("tandem_bindings_expired_total", Counter, &[], "Bindings removed on expiry"),
    m("tandem_bindings_removed_total", Counter, &["reason"], "Bindings removed because the phone stopped answering polls or its TCP flow closed, by reason"),
    m("tandem_transactions_active", Gauge, &[], "Live server transactions"),
    m("tandem_tcp_connections", Gauge, &[], "Open TCP connections"),
    m("tandem_tcp_connections_refused_total", Counter, &[], "TCP connections refused at the connection limit"),
    m("tandem_store_commits_total", Counter, &[], "Store transactions committed"),
    m("tandem_store_batch_size", Histogram, &[], "Binding changes per store transaction (group commit)"),
    m("tandem_store_commit_seconds", Histogram, &[], "Time one store transaction (a group commit) took"),
    m("tandem_proxy_contexts", Gauge, &[], "Requests being proxied (server transactions with branches)"),
    m("tandem_gateway_up", Gauge, &["gateway"], "1 while a probed gateway answers OPTIONS, 0 while it is skipped"),
    m("tandem_calls_active", Gauge, &[], "Calls in the call-state table not yet ended (trying, early, confirmed)"),
    m("tandem_call_attempts_total", Counter, &["outcome"], "Routed INVITEs by outcome (answered, rejected, cancelled, timeout, failed)"),
    m("tandem_call_setup_seconds", Histogram, &[], "Time from INVITE to answer of answered calls"),
    m("tandem_cdrs_dropped_total", Counter, &[], "Finished calls dropped before a CDR was written (queue full)"),
    m("tandem_calls_refused_total", Counter, &["reason"], "New INVITEs answered 503 + Retry-After by call overload control, by reason"),
    m("tandem_calls_unanswered_invites", Gauge, &[], "Proxied INVITEs no response has come back for yet (overload backlog)"),
    m("tandem_calls_projected_wait_seconds", Gauge, &[], "Overload load measure: unanswered INVITEs divided by first answers per second"),
    m("tandem_cluster_changes_applied_total", Counter, &[], "Peers' changes applied to this node's table"),
    m("tandem_cluster_change_seq", Gauge, &[], "The change sequence this node's table is current to"),
    m("tandem_cluster_peers_alive", Gauge, &[], "Peers with a fresh heartbeat"),
    m("tandem_cluster_peers_dead_total", Counter, &[], "Peers declared dead (heartbeat not renewed within the timeout)"),
    m("tandem_cluster_stale_entries_removed_total", Counter, &[], "Entries removed because their owner node no longer had the phone"),
    m("tandem_admission_queued_total", Counter, &["class"], "REGISTERs queued by the admission front end, by class (priority, token, initial)"),
    m("tandem_admission_wait_seconds", Histogram, &["class"], "Time REGISTERs waited in the admission queue before being served, by class"),
    m("tandem_admission_queue_depth", Gauge, &["class"], "REGISTERs waiting in the admission queue, by class"),
    m("tandem_admission_service_rate", Gauge, &[], "Measured registrations completed per second (the load measure's rate)"),
    m("tandem_admission_projected_wait_seconds", Gauge, &[], "Backlog (queued plus granted unused tokens) divided by the service rate"),
    m("tandem_admission_tokens_outstanding", Gauge, &[], "Explicit registration tokens granted and not yet expired"),
    m("tandem_admission_implicit_tokens", Gauge, &[], "Implicit tokens (refused phones' retry windows) remembered"),
    m("tandem_admission_tokens_total", Counter, &["event"], "Registration tokens granted, denied, expired (unused), used, and implicit tokens used"),
    m("tandem_admission_cpu_busy_ratio", Gauge, &[], "The machine's CPU busy fraction the admission load measure last sampled"),
    m("tandem_admission_refused_total", Counter, &["when"], "REGISTERs answered 503 + Retry-After by admission: on arrival or after max_wait"),
];

/// Histogram buckets, for the histograms that have them (others render as summaries).
pub const BUCKETS: &[(&str, &[f64])] = &[
    (
        "tandem_call_setup_seconds",
        &[
            0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0,
        ],
    ),
    (
        "tandem_store_commit_seconds",
        &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ],
    ),
    (
        "tandem_admission_wait_seconds",
        &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
    ),
];

/// Registers every metric's help text with the recorder.
pub fn describe() {
    for metric in METRICS {
        match metric.kind {
            Counter => metrics::describe_counter!(metric.name, metric.help),
            Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// `counter!("tandem_x"` … in the sources: name → kind.
    fn emitted() -> BTreeMap<String, Kind> {
        let mut files = Vec::new();
        rust_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut out = BTreeMap::new();
        for f in files {
            if f.ends_with("admin/catalogue.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            for (mac, kind) in [
                ("counter!(", Counter),
                ("gauge!(", Gauge),
                ("histogram!(", Histogram),
            ] {
                for (i, _) in text.match_indices(mac) {
                    let rest = text[i + mac.len()..].trim_start();
                    let Some(rest) = rest.strip_prefix('"') else {
                        continue;
                    };
                    let name = &rest[..rest.find('"').unwrap()];
                    if let Some(prev) = out.insert(name.to_string(), kind) {
                        assert_eq!(prev, kind, "{name} emitted as two types ({})", f.display());
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_metric_the_code_emits_is_catalogued_with_its_type() {
        let emitted = emitted();
        assert!(
            emitted.len() > 10,
            "the source scan found too little: {emitted:?}"
        );
        for (name, kind) in &emitted {
            let m = find(name).unwrap_or_else(|| panic!("{name} is emitted but not in METRICS"));
            assert_eq!(m.kind, *kind, "{name}");
        }
        for m in METRICS {
            assert!(
                emitted.contains_key(m.name),
                "{} is catalogued but never emitted",
                m.name
            );
        }
    }

    #[test]
    fn names_are_unique_and_prometheus_shaped() {
        for (i, m) in METRICS.iter().enumerate() {
            assert!(
                METRICS[..i].iter().all(|o| o.name != m.name),
                "{} twice",
                m.name
            );
            assert!(m.name.starts_with("tandem_"));
            // Prometheus naming: counters end in _total, nothing else does
            assert_eq!(m.kind == Counter, m.name.ends_with("_total"), "{}", m.name);
            assert!(!m.help.is_empty());
        }
        for (name, _) in BUCKETS {
            assert_eq!(find(name).map(|m| m.kind), Some(Histogram));
        }
    }

    #[test]
    fn the_readme_table_lists_exactly_the_catalogue() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let mut rows = BTreeMap::new();
        for line in readme.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 4 {
                continue;
            }
            if let Some(name) = cells[1]
                .strip_prefix("`tandem_")
                .and_then(|n| n.strip_suffix('`'))
            {
                rows.insert(format!("tandem_{name}"), cells[2].to_string());
            }
        }
        for m in METRICS {
            assert_eq!(
                rows.remove(m.name).as_deref(),
                Some(m.kind.as_str()),
                "README metrics table: row for {}",
                m.name
            );
        }
        assert!(
            rows.is_empty(),
            "README lists metrics Tandem does not export: {rows:?}"
        );
    }
}
