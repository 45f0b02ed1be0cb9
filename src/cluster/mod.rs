//! Seed 000's cluster procedures over the PostgreSQL store: every node keeps the
//! composite registration table (its own bindings and every peer's) in memory.
//!
//! - FIG. 4A/4B: a peer's registration or deletion reaches this node's table
//!   through [`replicate`] (NOTIFY as a hint, the change log as the truth).
//! - FIG. 4C: a joining node listens first, then loads one snapshot; the changes
//!   after the snapshot's sequence number follow with no gap ([`join`]).
//! - FIG. 4D: a peer whose heartbeat counter has not moved for the timeout, by
//!   this node's clock, is dead: its bindings leave this table at once, and one
//!   peer tombstones its rows in the database, once. [`membership::Membership`]
//!   decides (no IO); [`membership`] reads the nodes table and carries it out.

pub mod membership;

use crate::config::ClusterConfig;
use crate::location::{now_ms, LocationTable, NodeId};
use crate::store::postgres::PgCluster;
use crate::store::StoreError;
use membership::{Membership, MembershipEvent};
use parking_lot::Mutex;
use sqlx::postgres::PgListener;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Changes read per query while catching up.
const CATCH_UP_BATCH: i64 = 10_000;

/// A node's view of the cluster: who is alive, and where peers take SIP.
pub struct Cluster {
    pub db: PgCluster,
    /// Who is alive and where (fed by [`membership`]'s readings).
    pub membership: Mutex<Membership>,
    /// The change sequence this node's table is current to (reported with the
    /// heartbeat, so tombstones everyone has applied can be pruned).
    pub applied: AtomicI64,
}

impl Cluster {
    /// The timeout here is the default one: [`membership`] installs the one
    /// from `[cluster]` before its first reading (the node builds the `Cluster`
    /// before that task has its configuration), so this one never judges anyone.
    /// `node_timeout`: a peer whose heartbeat counter has not moved for this long
    /// (on this node's clock) is dead.
    pub fn new(db: PgCluster, node_timeout: Duration) -> Cluster {
        Cluster {
            membership: Mutex::new(Membership::new(db.node().clone(), node_timeout)),
            db,
            applied: AtomicI64::new(0),
        }
    }

    /// The live peer whose SIP address is `addr` (a request from another node).
    pub fn peer_at(&self, addr: std::net::SocketAddr) -> Option<NodeId> {
        self.membership.lock().peer_at(addr).cloned()
    }

    /// Where a live peer takes SIP.
    pub fn sip_addr_of(&self, node: &NodeId) -> Option<String> {
        self.membership.lock().sip_addr_of(node).map(str::to_string)
    }
}

/// FIG. 4C: announces this node, listens, then loads the snapshot into
/// `location`. Returns the listener and the sequence the table is current to.
pub async fn join(
    db: &PgCluster,
    sip_addr: &str,
    location: &LocationTable,
) -> Result<(PgListener, i64), StoreError> {
    db.announce(sip_addr).await?;
    let listener = db.listener().await?;
    let (bindings, upto) = db.snapshot(now_ms()).await?;
    tracing::info!(
        bindings = bindings.len(),
        upto,
        "joined the cluster: composite table loaded"
    );
    location.load(bindings);
    Ok((listener, upto))
}

/// FIG. 4A/4B: applies every change peers make, in sequence order, forever.
/// Wakes on each notification and at least every `poll`; errors (the database
/// restarting) are logged and retried from the last applied sequence.
pub async fn replicate(
    cluster: Arc<Cluster>,
    mut listener: PgListener,
    mut upto: i64,
    location: Arc<LocationTable>,
    poll: Duration,
) {
    loop {
        loop {
            match cluster.db.changes_since(upto, CATCH_UP_BATCH).await {
                Ok((changes, current_to)) => {
                    // moved by less than a whole window: caught up
                    let full = current_to - upto >= CATCH_UP_BATCH;
                    upto = current_to;
                    let mut applied = 0u64;
                    for c in changes {
                        // Applied even from a peer taken for dead: it may have
                        // restarted and registered before our next heartbeat
                        // reading. A dead peer's older changes that arrive after
                        // its bindings were dropped are followed by the purge's
                        // tombstones, so the table converges either way.
                        if location.apply_remote(c.binding, c.deleted) {
                            applied += 1;
                        }
                    }
                    if applied > 0 {
                        metrics::counter!("tandem_cluster_changes_applied_total")
                            .increment(applied);
                        metrics::gauge!("tandem_bindings_active").set(location.len() as f64);
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, upto, "reading cluster changes failed; retrying");
                    break;
                }
            }
        }
        cluster.applied.store(upto, Ordering::Relaxed);
        metrics::gauge!("tandem_cluster_change_seq").set(upto as f64);
        // A notification, a lost connection (try_recv reconnects on the next
        // call) or the poll interval: all mean "look again".
        match tokio::time::timeout(poll, listener.try_recv()).await {
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) => tracing::info!("cluster listener reconnecting"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cluster listener failed");
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// FIG. 4C/4D: writes this node's heartbeat and watches the peers'. A thin
/// shell around [`Membership`]: tick, heartbeat, read the nodes table, hand the
/// reading over with the time it was taken, carry out the events.
pub async fn membership(cluster: Arc<Cluster>, location: Arc<LocationTable>, cfg: ClusterConfig) {
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.heartbeat_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let prune_every = Duration::from_secs(cfg.tombstone_prune_secs.max(1));
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let applied = cluster.applied.load(Ordering::Relaxed);
        if let Err(e) = cluster.db.heartbeat(applied).await {
            tracing::warn!(error = %e, "heartbeat failed");
            continue;
        }
        let rows = match cluster.db.peers().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading the nodes table failed");
                continue;
            }
        };
        // A reading is timed when it arrives: a verdict can be off by one
        // query's latency, which is small beside the timeout.
        let (events, alive) = {
            let mut m = cluster.membership.lock();
            (m.on_reading(Instant::now(), &rows), m.alive())
        };
        for event in events {
            match event {
                MembershipEvent::Alive(node) => {
                    tracing::info!(node = %node.0, "peer alive");
                }
                MembershipEvent::Drop(node) => {
                    let dropped = location.remove_owner(&node);
                    tracing::warn!(node = %node.0, dropped, "peer stopped heartbeating; its bindings dropped");
                    metrics::counter!("tandem_cluster_peers_dead_total").increment(1);
                    metrics::gauge!("tandem_bindings_active").set(location.len() as f64);
                }
                MembershipEvent::Purge { node, beat } => {
                    match cluster.db.purge_dead(&node, beat).await {
                        // nothing to do: another peer claimed it, it beat again, or it
                        // had no bindings
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(node = %node.0, purged = n, "dead peer's bindings purged")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, node = %node.0, "purging a dead peer failed")
                        }
                    }
                }
            }
        }
        // Now and then, drop tombstones every other live node has applied; any
        // node may do it, doing it twice is harmless.
        if last_prune.elapsed() >= prune_every {
            last_prune = tokio::time::Instant::now();
            match cluster.db.prune_tombstones().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "tombstones pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning tombstones failed"),
            }
        }
        metrics::gauge!("tandem_cluster_peers_alive").set(alive as f64);
    }
}
