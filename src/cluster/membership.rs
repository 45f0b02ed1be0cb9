//! Cluster membership, seed 000 FIG. 4D (node death), as a state machine with no
//! IO and no clock of its own, in the quinn-proto style: the caller reads the
//! nodes table, hands the reading to [`Membership::on_reading`] together with the
//! [`Instant`] it was taken at, and carries out the [`MembershipEvent`]s it gets
//! back. Tests drive it with instants they advance by hand.
//!
//! # Liveness is decided by one clock source: this node's monotonic clock
//!
//! Each node increments its `beat` counter with every heartbeat. A peer's counter
//! is only compared for change, never read as a time. A peer is dead when its
//! counter has not changed for `node_timeout` of *this node's* time, counted from
//! the reading at which we last saw it change; the first sighting starts the
//! clock, so a peer that just appeared is never judged before a whole timeout.
//! Neither the database's clock nor the peers' clocks take part: staleness used to
//! be `now() - heartbeat_at` in SQL, so a database whose clock stepped (NTP, a
//! failover to a server with another clock) could kill every node at once, or
//! keep a dead one alive, whatever the nodes' own timers said.
//!
//! Time only advances through readings: a reading is the only new information,
//! so nothing can die between two of them and there is no `poll_timeout` (the
//! caller reads on its heartbeat tick anyway). And a gap of a whole timeout
//! between two of *our* readings (the database unreachable, this task starved)
//! restarts every live peer's clock: we were not watching, so the peers'
//! silence over that time says nothing about them; most likely they could not
//! reach the database either.

use crate::location::NodeId;
use crate::store::postgres::PeerRow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the caller does after a reading, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A peer seen for the first time, or a dead one beating again (restarted):
    /// it takes calls again.
    Alive(NodeId),
    /// A peer died: drop its bindings from this node's table now.
    Drop(NodeId),
    /// A peer died: tombstone its rows in the database. Every node that sees the
    /// death asks; the database lets one do it, once, and only if the peer's
    /// counter still is `beat`, the value it was judged dead by
    /// (`PgCluster::purge_dead`).
    Purge { node: NodeId, beat: i64 },
}

#[derive(Debug)]
struct PeerState {
    node: NodeId,
    sip_addr: String,
    /// `sip_addr` parsed once per change, for [`Membership::peer_at`] on every
    /// request.
    sip_socket: Option<SocketAddr>,
    beat: i64,
    /// When (our clock) we last saw `beat` change, or first saw the peer.
    changed_at: Instant,
    dead: bool,
}

/// This node's view of its peers: who is alive and where they take SIP.
#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    timeout: Duration,
    /// In first-sighting order, so events come out in a stable order; a cluster
    /// has a handful of nodes, a scan is cheaper than hashing.
    peers: Vec<PeerState>,
    last_reading: Option<Instant>,
}

impl Membership {
    /// `me` is this node (its own row is ignored); a peer whose counter stays
    /// put for `node_timeout` (`cluster.node_timeout_ms`) is dead.
    pub fn new(me: NodeId, node_timeout: Duration) -> Membership {
        Membership {
            me,
            timeout: node_timeout,
            peers: Vec::new(),
            last_reading: None,
        }
    }

    /// One reading of the nodes table, taken at `now`. A peer missing from a
    /// reading is treated as silent (nothing deletes node rows; if something did,
    /// the peer's bindings must still go).
    pub fn on_reading(&mut self, now: Instant, rows: &[PeerRow]) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        let blind = self
            .last_reading
            .is_some_and(|t| now.saturating_duration_since(t) >= self.timeout);
        self.last_reading = Some(now);
        for row in rows.iter().filter(|r| r.node != self.me) {
            let Some(p) = self.peers.iter_mut().find(|p| p.node == row.node) else {
                self.peers.push(PeerState {
                    node: row.node.clone(),
                    sip_addr: row.sip_addr.clone(),
                    sip_socket: row.sip_addr.parse().ok(),
                    beat: row.beat,
                    changed_at: now,
                    dead: false,
                });
                events.push(MembershipEvent::Alive(row.node.clone()));
                continue;
            };
            if p.sip_addr != row.sip_addr {
                p.sip_addr = row.sip_addr.clone();
                p.sip_socket = row.sip_addr.parse().ok();
            }
            // Any change counts, backwards too: a counter that went back (its row
            // recreated) still proves the peer wrote.
            if p.beat != row.beat {
                p.beat = row.beat;
                p.changed_at = now;
                if p.dead {
                    p.dead = false;
                    events.push(MembershipEvent::Alive(p.node.clone()));
                }
            }
        }
        for p in self.peers.iter_mut().filter(|p| !p.dead) {
            if blind {
                p.changed_at = now;
            }
            if now.saturating_duration_since(p.changed_at) >= self.timeout {
                p.dead = true;
                events.push(MembershipEvent::Drop(p.node.clone()));
                events.push(MembershipEvent::Purge {
                    node: p.node.clone(),
                    beat: p.beat,
                });
            }
        }
        events
    }

    fn live(&self) -> impl Iterator<Item = &PeerState> {
        self.peers.iter().filter(|p| !p.dead)
    }

    /// The live peer whose SIP address is `addr` (a request from another node).
    pub fn peer_at(&self, addr: SocketAddr) -> Option<&NodeId> {
        self.live()
            .find(|p| p.sip_socket == Some(addr))
            .map(|p| &p.node)
    }

    /// Where a live peer takes SIP.
    pub fn sip_addr_of(&self, node: &NodeId) -> Option<&str> {
        self.live()
            .find(|p| &p.node == node)
            .map(|p| p.sip_addr.as_str())
    }

    /// How many peers are alive.
    pub fn alive(&self) -> usize {
        self.live().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MembershipEvent::*;

    const TIMEOUT: Duration = Duration::from_millis(1500);
    const BEAT: Duration = Duration::from_millis(200);

    fn id(n: &str) -> NodeId {
        NodeId(n.into())
    }

    fn row(n: &str, beat: i64) -> PeerRow {
        PeerRow {
            node: id(n),
            sip_addr: format!("127.0.0.{}:5060", n.as_bytes()[0] - b'a' + 2),
            beat,
        }
    }

    fn membership() -> Membership {
        Membership::new(id("me"), TIMEOUT)
    }

    fn died(n: &str, beat: i64) -> Vec<MembershipEvent> {
        vec![Drop(id(n)), Purge { node: id(n), beat }]
    }

    /// Readings every `BEAT` after `from`, the last one exactly at `until`, peer
    /// `n` frozen at `beat`; returns every event and `until`.
    fn frozen(
        m: &mut Membership,
        from: Instant,
        until: Instant,
        n: &str,
        beat: i64,
    ) -> (Vec<MembershipEvent>, Instant) {
        let (mut t, mut events) = (from, Vec::new());
        while t < until {
            t = (t + BEAT).min(until);
            events.extend(m.on_reading(t, &[row(n, beat)]));
        }
        (events, t)
    }

    #[test]
    fn a_peer_whose_counter_keeps_moving_stays_alive() {
        let mut m = membership();
        let t0 = Instant::now();
        assert_eq!(m.on_reading(t0, &[row("a", 1)]), vec![Alive(id("a"))]);
        // an hour of readings, each with a new counter
        for i in 1..=18_000 {
            let events = m.on_reading(t0 + BEAT * i, &[row("a", 1 + i as i64)]);
            assert!(events.is_empty(), "reading {i}: {events:?}");
        }
        assert_eq!(m.alive(), 1);
        assert_eq!(m.sip_addr_of(&id("a")), Some("127.0.0.2:5060"));
    }

    #[test]
    fn a_stopped_counter_is_dropped_after_exactly_the_timeout_and_once() {
        let mut m = membership();
        let t0 = Instant::now();
        m.on_reading(t0, &[row("a", 7)]);
        m.on_reading(t0 + BEAT, &[row("a", 8)]); // last change, at t0 + 200 ms
        let changed = t0 + BEAT;
        // unchanged right up to the timeout: alive, still taking calls
        let just_before = changed + TIMEOUT - Duration::from_millis(1);
        let (events, _) = frozen(&mut m, changed, just_before, "a", 8);
        assert!(events.is_empty(), "{events:?}");
        assert!(m.on_reading(just_before, &[row("a", 8)]).is_empty());
        assert!(m.peer_at("127.0.0.2:5060".parse().unwrap()).is_some());
        // at the timeout: dropped and purged, by the counter it died with
        assert_eq!(
            m.on_reading(changed + TIMEOUT, &[row("a", 8)]),
            died("a", 8)
        );
        assert_eq!(m.sip_addr_of(&id("a")), None);
        assert_eq!(m.peer_at("127.0.0.2:5060".parse().unwrap()), None);
        assert_eq!(m.alive(), 0);
        // and never again while it stays silent: one drop, one purge request
        let (events, _) = frozen(&mut m, changed + TIMEOUT, changed + TIMEOUT * 20, "a", 8);
        assert!(events.is_empty(), "{events:?}");
    }

    /// Replaces the integration test's fixed real-time sleep: over any number of
    /// later readings (other peers coming and going included) a death asks for
    /// one purge.
    #[test]
    fn a_dead_peer_is_purged_once_whatever_follows() {
        let mut m = membership();
        let t0 = Instant::now();
        m.on_reading(t0, &[row("a", 1), row("b", 1)]);
        let mut purges = Vec::new();
        for i in 1..=100u32 {
            // a stops at once; b keeps beating; c appears half way
            let mut rows = vec![row("a", 1), row("b", 1 + i as i64)];
            if i >= 50 {
                rows.push(row("c", i as i64));
            }
            for e in m.on_reading(t0 + BEAT * i, &rows) {
                if let Purge { node, beat } = e {
                    purges.push((node, beat, i));
                }
            }
        }
        // 1500 ms / 200 ms: the 8th reading (1600 ms) is the first at or past it
        assert_eq!(purges, vec![(id("a"), 1, 8)]);
        assert_eq!(m.alive(), 2);
    }

    #[test]
    fn a_dead_peer_that_beats_again_is_alive_and_can_die_again() {
        let mut m = membership();
        let t0 = Instant::now();
        m.on_reading(t0, &[row("a", 5)]);
        let (events, t) = frozen(&mut m, t0, t0 + TIMEOUT, "a", 5);
        assert_eq!(events, died("a", 5));
        // restarted: its counter moves again (announce increments it)
        assert_eq!(m.on_reading(t + BEAT, &[row("a", 6)]), vec![Alive(id("a"))]);
        assert_eq!(m.sip_addr_of(&id("a")), Some("127.0.0.2:5060"));
        // and dies again: dropped and purged again, by the new counter
        let (events, _) = frozen(&mut m, t + BEAT, t + BEAT + TIMEOUT, "a", 6);
        assert_eq!(events, died("a", 6));
    }

    #[test]
    fn a_peer_seen_for_the_first_time_gets_a_whole_timeout() {
        let mut m = membership();
        let t0 = Instant::now();
        // a's counter has not moved for ages by any clock but ours: it was just
        // now that we first saw it
        m.on_reading(t0, &[row("b", 1)]);
        let first = t0 + Duration::from_secs(3600);
        assert_eq!(
            m.on_reading(first, &[row("a", 42), row("b", 2)]),
            vec![Alive(id("a"))]
        );
        let mut t = first;
        while t + BEAT < first + TIMEOUT {
            t += BEAT;
            let events = m.on_reading(
                t,
                &[
                    row("a", 42),
                    row("b", 3 + t.duration_since(first).as_millis() as i64),
                ],
            );
            assert!(events.is_empty(), "{events:?}");
        }
        assert_eq!(
            m.on_reading(first + TIMEOUT, &[row("a", 42), row("b", 99)]),
            died("a", 42)
        );
    }

    #[test]
    fn this_nodes_own_row_is_ignored() {
        let mut m = membership();
        let t0 = Instant::now();
        let own = [PeerRow {
            node: id("me"),
            sip_addr: "127.0.0.9:5060".into(),
            beat: 1,
        }];
        assert!(m.on_reading(t0, &own).is_empty());
        // frozen for ten timeouts (as a reading taken just before our own
        // heartbeat commits would be): never judged
        for i in 1..=75 {
            assert!(m.on_reading(t0 + BEAT * i, &own).is_empty());
        }
        assert_eq!(m.alive(), 0);
        assert_eq!(m.sip_addr_of(&id("me")), None);
        assert_eq!(m.peer_at("127.0.0.9:5060".parse().unwrap()), None);
    }

    /// The heartbeat value is compared for change only, so values that look like
    /// a wall clock far off (the database's clock a century out, or stepping
    /// back) decide nothing: only our instants do.
    #[test]
    fn the_databases_clock_makes_no_difference() {
        const CENTURY_US: i64 = 100 * 365 * 86_400 * 1_000_000;
        let t0 = Instant::now();
        // beats as microsecond timestamps: one peer's far in the future, one's
        // in 1970 and stepping backwards
        let skewed = |i: u32| {
            [
                row("a", 1_700_000_000_000_000 + CENTURY_US + i as i64),
                row("b", 1_000_000 - i as i64 * 1_000),
            ]
        };
        let mut m = membership();
        assert_eq!(
            m.on_reading(t0, &skewed(0)),
            vec![Alive(id("a")), Alive(id("b"))]
        );
        for i in 1..=50 {
            assert!(m.on_reading(t0 + BEAT * i, &skewed(i)).is_empty());
        }
        // both freeze at those values: dropped after exactly our timeout
        let last = t0 + BEAT * 50;
        let frozen_rows = skewed(50);
        assert!(m
            .on_reading(last + TIMEOUT - Duration::from_millis(1), &frozen_rows)
            .is_empty());
        let mut expect = died("a", frozen_rows[0].beat);
        expect.extend(died("b", frozen_rows[1].beat));
        assert_eq!(m.on_reading(last + TIMEOUT, &frozen_rows), expect);
    }

    #[test]
    fn a_gap_in_our_own_readings_restarts_the_peers_clocks() {
        let mut m = membership();
        let t0 = Instant::now();
        m.on_reading(t0, &[row("a", 1)]);
        // we could not read for two timeouts (the database was down): a's silence
        // over that time is not held against it
        let back = t0 + TIMEOUT * 2;
        assert!(m.on_reading(back, &[row("a", 1)]).is_empty());
        assert_eq!(m.alive(), 1);
        // but from then on our clock runs again
        let (events, _) = frozen(&mut m, back, back + TIMEOUT, "a", 1);
        assert_eq!(events, died("a", 1));
    }

    #[test]
    fn a_peer_missing_from_the_reading_is_silent() {
        let mut m = membership();
        let t0 = Instant::now();
        m.on_reading(t0, &[row("a", 1), row("b", 1)]);
        let mut events = Vec::new();
        for i in 1..=8 {
            events.extend(m.on_reading(t0 + BEAT * i, &[row("b", 1 + i as i64)]));
        }
        assert_eq!(events, died("a", 1));
    }

    #[test]
    fn a_peer_that_moves_is_found_at_its_new_address() {
        let mut m = membership();
        let t0 = Instant::now();
        m.on_reading(t0, &[row("a", 1)]);
        let moved = PeerRow {
            sip_addr: "192.0.2.1:5070".into(),
            ..row("a", 2)
        };
        assert!(m.on_reading(t0 + BEAT, &[moved]).is_empty());
        assert_eq!(m.peer_at("127.0.0.2:5060".parse().unwrap()), None);
        assert_eq!(m.peer_at("192.0.2.1:5070".parse().unwrap()), Some(&id("a")));
    }
}
