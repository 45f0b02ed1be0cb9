//! The application's start-up and shutdown: opens the store, loads or joins the
//! location table, binds the transports and the admin listener, builds the
//! [`Node`] with everything it needs, then serves and runs the periodic tasks
//! (transaction timers, binding expiry, polls, CDRs). The wiring lives here so
//! the node itself only handles messages and timers.

use crate::admin::NodeStatus;
use crate::admission::overload::CallOverload;
use crate::cluster::{self, Cluster};
use crate::config::Config;
use crate::config::StoreBackend;
use crate::location::{now_ms, LocationTable, NodeId};
use crate::node::{Node, NodeHandle, NodeParts, Routing};
use crate::proxy::cdr::CallsHousekeeping;
use crate::registrar::poll::ContactPoller;
use crate::registrar::Registrar;
use crate::routing::targets::Routes;
use crate::routing::DialPlan;
use crate::sip::transaction::TimerConfig;
use crate::sip::transport::flows::Flows;
use crate::sip::transport::tcp::TcpLimits;
use crate::sip::transport::{tcp, udp, Handler};
use crate::store::postgres::PgCluster;
use crate::store::{self, StoreOp, StoreWriter};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started node: its bound addresses and its tasks.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    store_task: Option<JoinHandle<()>>,
}

impl RunningNode {
    /// Stops listening and waits until the store has committed everything queued.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        let store_task = self.store_task.take();
        // The node holds the last writer handles; dropping it closes the queue.
        drop(self);
        if let Some(t) = store_task {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

pub async fn start(cfg: Config) -> Result<RunningNode, StartError> {
    // The recorder must exist before the first metric (the bindings gauge below):
    // values emitted earlier go nowhere and a fresh node would show no gauge.
    crate::admin::prometheus();
    let mut store = store::open(&cfg).await?;
    let now = now_ms();
    let users = store.load_users().await?;
    let location = Arc::new(LocationTable::new());
    let node_id = NodeId(cfg.node.id.as_str().into());
    // In a cluster the composite table comes from the join snapshot, once the
    // node knows its SIP address (below); a single node restores its own rows.
    let cluster_db = match (&cfg.store.backend, &cfg.store.url) {
        (StoreBackend::Postgres, Some(url)) => {
            Some(PgCluster::connect(url, node_id.clone()).await?)
        }
        _ => {
            let bindings = store.load_bindings(now).await?;
            tracing::info!(
                bindings = bindings.len(),
                "bindings restored from the store"
            );
            location.load(bindings);
            None
        }
    };
    metrics::gauge!("tandem_bindings_active").set(location.len() as f64);
    let (writer, store_task) = StoreWriter::spawn(store, cfg.store.batch_max);
    let registrar = Registrar::new(
        &cfg,
        users,
        location.clone(),
        writer.clone(),
        Instant::now(),
    );
    // The listeners are bound now (their addresses are needed to join a cluster
    // and to build the node) but served only once the node's table is loaded:
    // until then the kernel queues what arrives, rather than the node answering
    // from an empty table.
    let mut udp_socks = Vec::new();
    for addr in &cfg.sip.udp {
        let bind_err = |source| StartError::Bind {
            proto: "udp",
            addr: *addr,
            source,
        };
        let sock = Arc::new(udp::bind(*addr).map_err(bind_err)?);
        let local = sock.local_addr().map_err(bind_err)?;
        tracing::info!(%local, "listening on UDP");
        udp_socks.push((sock, local));
    }
    let udp_addrs: Vec<SocketAddr> = udp_socks.iter().map(|(_, a)| *a).collect();
    let mut tcp_listeners = Vec::new();
    for addr in &cfg.sip.tcp {
        let bind_err = |source| StartError::Bind {
            proto: "tcp",
            addr: *addr,
            source,
        };
        let l = bind_tcp(*addr).map_err(bind_err)?;
        let local = l.local_addr().map_err(bind_err)?;
        tracing::info!(%local, "listening on TCP");
        tcp_listeners.push((l, local));
    }
    let tcp_addrs: Vec<SocketAddr> = tcp_listeners.iter().map(|(_, a)| *a).collect();
    let admin_listener = if cfg.admin.enabled {
        let l = tokio::net::TcpListener::bind(cfg.admin.listen)
            .await
            .map_err(|source| StartError::Bind {
                proto: "tcp (admin)",
                addr: cfg.admin.listen,
                source,
            })?;
        tracing::info!(local = ?l.local_addr().ok(), "admin listener (/health, /metrics)");
        Some(l)
    } else {
        None
    };
    let admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let mut tasks = Vec::new();
    let cluster = match cluster_db {
        Some(db) => {
            let advertise = cfg
                .cluster
                .advertise
                .or(udp_addrs.first().copied())
                .or(tcp_addrs.first().copied())
                .map(|a| a.to_string())
                .unwrap_or_default();
            let (listener, upto) = cluster::join(&db, &advertise, &location).await?;
            metrics::gauge!("tandem_bindings_active").set(location.len() as f64);
            let cluster = Arc::new(Cluster::new(
                db,
                Duration::from_millis(cfg.cluster.node_timeout_ms),
            ));
            tasks.push(tokio::spawn(cluster::replicate(
                cluster.clone(),
                listener,
                upto,
                location.clone(),
                Duration::from_millis(cfg.cluster.poll_interval_ms),
            )));
            tasks.push(tokio::spawn(cluster::membership(
                cluster.clone(),
                location.clone(),
                cfg.cluster.clone(),
            )));
            Some(cluster)
        }
        None => None,
    };
    // Requests are forwarded from the first UDP listener (Via, Record-Route).
    let outbound = udp_socks.first().cloned();
    let local = outbound
        .as_ref()
        .map(|(_, a)| *a)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5060)));
    let reg = &cfg.registrar;
    let poller = reg.poll_contacts.then(|| {
        ContactPoller::new(
            local,
            Duration::from_secs(reg.poll_interval_secs),
            Duration::from_millis(reg.poll_timeout_ms),
            reg.poll_max_misses,
        )
    });
    let flows = Arc::new(Flows::default());
    let node = Arc::new(Node::new(NodeParts {
        registrar,
        admission: crate::node::front_of(&cfg),
        timers: TimerConfig {
            t1: Duration::from_millis(cfg.sip.t1_ms),
            t2: Duration::from_millis(cfg.sip.t2_ms),
            t4: Duration::from_millis(cfg.sip.t4_ms),
        },
        max_transactions: cfg.sip.max_transactions,
        max_calls: cfg.calls.max_calls,
        timer_c: Duration::from_secs(cfg.calls.timer_c_secs),
        outbound,
        routing: Routing {
            routes: Routes {
                // validated when the config was loaded
                dial_plan: DialPlan::new(cfg.routes.clone()).unwrap_or_default(),
                gateways: cfg.gateways.clone(),
            },
            authenticate_calls: cfg.calls.authenticate,
            trusted: cfg.calls.trusted.clone(),
            probe_interval: Duration::from_millis(cfg.calls.gateway_probe_interval_ms),
            probe_timeout: Duration::from_millis(cfg.calls.gateway_probe_timeout_ms),
        },
        flows: flows.clone(),
        cluster,
        poller,
        // validated when the config was loaded
        overload: cfg.admission.calls.overload().ok().flatten().map(|c| {
            let now = crate::node::Now::read();
            CallOverload::new(c, now.at, now.unix_ms())
        }),
    }));
    let handler: Arc<dyn Handler> = Arc::new(NodeHandle(node.clone()));
    for (sock, _) in &udp_socks {
        // two receivers per socket so both cores parse when the load calls for it
        for _ in 0..2 {
            tasks.push(tokio::spawn(udp::serve(
                sock.clone(),
                cfg.sip.max_message_size,
                handler.clone(),
            )));
        }
    }
    let limits = TcpLimits {
        max_message_size: cfg.sip.max_message_size,
        max_connections: cfg.sip.tcp_max_connections,
        message_timeout: Duration::from_millis(cfg.sip.tcp_message_timeout_ms),
        idle_timeout: Duration::from_secs(cfg.sip.tcp_idle_timeout_secs),
    };
    for (l, _) in tcp_listeners {
        tasks.push(tokio::spawn(tcp::serve(
            l,
            limits.clone(),
            handler.clone(),
            flows.clone(),
        )));
    }
    if let Some(l) = admin_listener {
        let status: Arc<dyn NodeStatus> = node.clone();
        tasks.push(tokio::spawn(crate::admin::serve(l, status)));
    }
    if reg.poll_contacts || reg.unregister_on_flow_close {
        tasks.push(tokio::spawn(refresh_polls(
            node.clone(),
            reg.unregister_on_flow_close,
            // new bindings start being polled within this; closed flows are
            // noticed within it
            Duration::from_secs(reg.poll_interval_secs.clamp(1, 5)),
        )));
    }
    tasks.push(tokio::spawn(transaction_timers(node.clone())));
    tasks.push(tokio::spawn(expire_bindings(location, writer, node_id)));
    tasks.push(tokio::spawn(calls_housekeeping(CallsHousekeeping::new(
        node.calls().clone(),
        cfg.cdr_path(),
        Duration::from_secs(cfg.calls.linger_secs),
        cfg.calls.max_calls,
    ))));
    Ok(RunningNode {
        node,
        udp: udp_addrs,
        tcp: tcp_addrs,
        admin,
        tasks,
        store_task: Some(store_task),
    })
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    tokio::net::TcpListener::from_std(sock.into())
}

async fn refresh_polls(node: Arc<Node>, flow_close: bool, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        node.refresh_polls(flow_close);
    }
}

async fn transaction_timers(node: Arc<Node>) {
    // 20 ms granularity: Timer G starts at T1 = 500 ms, so this is 4 % jitter at worst.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        node.on_tick();
    }
}

async fn expire_bindings(location: Arc<LocationTable>, writer: StoreWriter, me: NodeId) {
    // Bindings disappear within a second of their expiry (RFC 3261 §10.3).
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        // The deletes are queued under the table's lock (see `purge_expired_then`).
        let gone = location.purge_expired_then(now_ms(), |gone| {
            // peers' bindings are deleted by their owners (or purged if they die)
            writer.submit_detached(
                gone.iter()
                    .filter(|b| b.owner == me)
                    .map(|b| StoreOp::Delete {
                        aor: b.aor.clone(),
                        key: b.key.clone(),
                        version: b.version,
                    })
                    .collect(),
            )
        });
        if !gone.is_empty() {
            tracing::debug!(count = gone.len(), "bindings expired");
            metrics::counter!("tandem_bindings_expired_total").increment(gone.len() as u64);
            metrics::gauge!("tandem_bindings_active").set(location.len() as f64);
        }
    }
}

/// Once a second: drops calls that ended more than `calls.linger_secs` ago and
/// appends the newly finished ones to the CDR file (errors are logged, the CDRs
/// kept for the next try). When the task is aborted, dropping `h` writes the rest.
async fn calls_housekeeping(mut h: CallsHousekeeping) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        h.tick(std::time::SystemTime::now());
    }
}
