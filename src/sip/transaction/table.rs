//! Server transaction table for the hot path (RFC 3261 §17.2.3 matching is done by
//! the caller, which turns a request into a key `K`).
//!
//! Memory: one map entry per live transaction (key + a compact core; INVITE cores are
//! boxed so the common non-INVITE entry stays small) and one queue slot per armed
//! timer. Timer durations are a small fixed set (T1·2^n ≤ T2, T4, 64*T1), and every
//! timer is armed at `now + duration`, so one FIFO per distinct duration is already
//! sorted: arming is a push, expiry a pop, amortised O(1). Cancelled timers are
//! deleted lazily: a popped `(deadline, key)` fires only if the entry still has
//! that deadline armed.

use std::collections::hash_map::{Entry as MapEntry, HashMap};
use std::collections::VecDeque;
use std::hash::Hash;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use super::server::{
    Fired, InviteCore, NonInviteCore, ServerError, ServerInviteState, ServerNonInviteState,
};
use super::{Reliability, TimerConfig, TransactionKind};

/// What to do with an incoming request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// A transaction was created: pass the request to the TU, which must answer
    /// through [`ServerTransactions::send_response`].
    New,
    /// Absorbed (§17.2.1, §17.2.2): send `resend` if present, don't pass it up.
    Retransmission { resend: Option<Bytes> },
    /// `max_entries` live transactions: answer statelessly (e.g. 503) instead.
    Full,
}

/// Produced by [`ServerTransactions::handle_timeout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerOutput<K> {
    /// Timer G: send these bytes again on the transaction's transport.
    Retransmit(K, Bytes),
    /// Timer H: the ACK never came; the transaction is gone (§17.2.1).
    AckTimeout(K),
}

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    #[error("no such server transaction")]
    NotFound,
    #[error(transparent)]
    Transaction(#[from] ServerError),
}

/// State of a live entry, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    NonInvite(ServerNonInviteState),
    Invite(ServerInviteState),
}

#[derive(Debug)]
enum Entry {
    NonInvite(NonInviteCore),
    // Boxed: INVITEs are rarer and their core is larger.
    Invite(Box<InviteCore>),
}

impl Entry {
    fn new(kind: TransactionKind, reliability: Reliability) -> Self {
        match kind {
            TransactionKind::NonInvite => Entry::NonInvite(NonInviteCore::new(reliability)),
            TransactionKind::Invite => Entry::Invite(Box::new(InviteCore::new(reliability))),
        }
    }

    fn timers(&self) -> [Option<Instant>; 2] {
        match self {
            Entry::NonInvite(c) => c.timers(),
            Entry::Invite(c) => c.timers(),
        }
    }

    fn state(&self) -> ServerState {
        match self {
            Entry::NonInvite(c) => ServerState::NonInvite(c.state()),
            Entry::Invite(c) => ServerState::Invite(c.state()),
        }
    }

    fn is_terminated(&self) -> bool {
        matches!(
            self.state(),
            ServerState::NonInvite(ServerNonInviteState::Terminated)
                | ServerState::Invite(ServerInviteState::Terminated)
        )
    }
}

/// One FIFO of timers that all share the same duration.
#[derive(Debug)]
struct TimerQueue<K> {
    after: Duration,
    items: VecDeque<(Instant, K)>,
}

/// Server transactions keyed by `K` (the caller's §17.2.3 match key: branch,
/// sent-by and method, with ACK mapped to INVITE).
///
/// `now` must not go backwards between calls. Per-timeout work allocates nothing
/// except key clones for re-armed Timer G outputs.
#[derive(Debug)]
pub struct ServerTransactions<K> {
    timers: TimerConfig,
    max_entries: usize,
    entries: HashMap<K, Entry>,
    queues: Vec<TimerQueue<K>>,
    out: Vec<TimerOutput<K>>,
}

impl<K: Hash + Eq + Clone> ServerTransactions<K> {
    /// Panics if T1 or T2 is zero: Timer G would re-fire at the same instant forever.
    pub fn new(timers: TimerConfig, max_entries: usize) -> Self {
        assert!(
            !timers.t1.is_zero() && !timers.t2.is_zero(),
            "T1 and T2 must be positive"
        );
        Self {
            timers,
            max_entries,
            entries: HashMap::new(),
            queues: Vec::new(),
            out: Vec::new(),
        }
    }

    /// A request arrived: either a retransmission of a live transaction, or a new one.
    pub fn handle_request(
        &mut self,
        now: Instant,
        key: K,
        kind: TransactionKind,
        reliability: Reliability,
    ) -> RequestOutcome {
        let _ = now; // no timer runs before the TU's first response
        let len = self.entries.len();
        match self.entries.entry(key) {
            MapEntry::Occupied(o) => RequestOutcome::Retransmission {
                resend: match o.get() {
                    Entry::NonInvite(c) => c.on_retransmission(),
                    Entry::Invite(c) => c.on_retransmission(),
                },
            },
            MapEntry::Vacant(_) if len >= self.max_entries => RequestOutcome::Full,
            MapEntry::Vacant(v) => {
                v.insert(Entry::new(kind, reliability));
                RequestOutcome::New
            }
        }
    }

    /// An ACK arrived whose key matches an INVITE (§17.2.3). Returns true if a
    /// transaction absorbed it; false means it goes to the TU (ACK for a 2xx,
    /// or no such transaction).
    pub fn handle_ack(&mut self, now: Instant, key: &K) -> bool {
        let Some(Entry::Invite(core)) = self.entries.get_mut(key) else {
            return false;
        };
        let before = core.timers();
        let absorbed = core.handle_ack(now, &self.timers);
        let (after, terminated) = (core.timers(), core.state() == ServerInviteState::Terminated);
        self.settle(now, key, before, after, terminated);
        absorbed
    }

    /// The TU responds. Returns the bytes to transmit now; the table keeps them for
    /// answering retransmissions and for Timer G.
    pub fn send_response(
        &mut self,
        now: Instant,
        key: &K,
        status: u16,
        bytes: Bytes,
    ) -> Result<Bytes, TableError> {
        let entry = self.entries.get_mut(key).ok_or(TableError::NotFound)?;
        let before = entry.timers();
        let out = match entry {
            Entry::NonInvite(c) => c.send_response(now, &self.timers, status, bytes),
            Entry::Invite(c) => c.send_response(now, &self.timers, status, bytes),
        }?;
        let (after, terminated) = (entry.timers(), entry.is_terminated());
        self.settle(now, key, before, after, terminated);
        Ok(out)
    }

    /// Sending on the transaction's transport failed (§17.2.4): drop it.
    /// Returns whether it existed.
    pub fn handle_transport_error(&mut self, now: Instant, key: &K) -> bool {
        let _ = now;
        self.remove(key)
    }

    /// Drops a transaction without further output (e.g. the TU gave up on it).
    pub fn remove(&mut self, key: &K) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Runs every timer due at `now`. Terminated transactions are removed.
    /// Outputs not consumed from the iterator are dropped.
    pub fn handle_timeout(&mut self, now: Instant) -> impl Iterator<Item = TimerOutput<K>> + '_ {
        self.out.clear();
        for qi in 0..self.queues.len() {
            while let Some((at, key)) = pop_due(&mut self.queues[qi], now) {
                let Some(entry) = self.entries.get_mut(&key) else {
                    continue; // entry gone: stale timer
                };
                let before = entry.timers();
                if !before.contains(&Some(at)) {
                    continue; // timer cancelled or re-armed since: stale
                }
                let fired = match entry {
                    Entry::NonInvite(c) => c.handle_timeout(now),
                    Entry::Invite(c) => c.handle_timeout(now, &self.timers),
                };
                let (after, terminated) = (entry.timers(), entry.is_terminated());
                self.settle(now, &key, before, after, terminated);
                match fired {
                    Fired::Retransmit(bytes) => self.out.push(TimerOutput::Retransmit(key, bytes)),
                    Fired::AckTimeout => self.out.push(TimerOutput::AckTimeout(key)),
                    Fired::Terminated | Fired::Nothing => {}
                }
            }
        }
        self.out.drain(..)
    }

    /// Earliest pending deadline. May be earlier than needed, since cancelled
    /// timers are removed lazily; calling `handle_timeout` then is harmless.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|q| q.items.front().map(|&(at, _)| at))
            .min()
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    pub fn state(&self, key: &K) -> Option<ServerState> {
        self.entries.get(key).map(Entry::state)
    }

    /// Removes a terminated entry, or queues its newly armed timers.
    fn settle(
        &mut self,
        now: Instant,
        key: &K,
        before: [Option<Instant>; 2],
        after: [Option<Instant>; 2],
        terminated: bool,
    ) {
        if terminated {
            self.entries.remove(key);
            return;
        }
        for (b, a) in before.into_iter().zip(after) {
            if let Some(at) = a.filter(|&a| Some(a) != b) {
                self.arm(now, at, key.clone());
            }
        }
    }

    fn arm(&mut self, now: Instant, at: Instant, key: K) {
        let after = at.saturating_duration_since(now);
        let qi = match self.queues.iter().position(|q| q.after == after) {
            Some(qi) => qi,
            None => {
                self.queues.push(TimerQueue {
                    after,
                    items: VecDeque::new(),
                });
                self.queues.len() - 1
            }
        };
        self.queues[qi].items.push_back((at, key));
    }
}

fn pop_due<K>(q: &mut TimerQueue<K>, now: Instant) -> Option<(Instant, K)> {
    match q.items.front() {
        Some(&(at, _)) if at <= now => q.items.pop_front(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const S: fn(u64) -> Duration = Duration::from_secs;
    use Reliability::{Reliable, Unreliable};
    use TransactionKind::{Invite, NonInvite};

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn table(max: usize) -> (Instant, ServerTransactions<u64>) {
        (
            Instant::now(),
            ServerTransactions::new(TimerConfig::default(), max),
        )
    }

    fn queued(t: &ServerTransactions<u64>) -> usize {
        t.queues.iter().map(|q| q.items.len()).sum()
    }

    #[test]
    fn non_invite_unreliable_lifecycle() {
        let (t0, mut t) = table(10);
        assert_eq!(
            t.handle_request(t0, 1, NonInvite, Unreliable),
            RequestOutcome::New
        );
        assert_eq!(
            t.handle_request(t0 + MS(100), 1, NonInvite, Unreliable),
            RequestOutcome::Retransmission { resend: None }
        );
        assert_eq!(
            t.send_response(t0 + MS(200), &1, 200, b("200")),
            Ok(b("200"))
        );
        assert_eq!(
            t.handle_request(t0 + MS(300), 1, NonInvite, Unreliable),
            RequestOutcome::Retransmission {
                resend: Some(b("200"))
            }
        );
        // Timer J = 64*T1.
        let j = t0 + MS(200) + S(32);
        assert_eq!(t.poll_timeout(), Some(j));
        assert_eq!(t.handle_timeout(j - MS(1)).count(), 0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.handle_timeout(j).count(), 0);
        assert!(t.is_empty());
        assert_eq!(t.poll_timeout(), None);
        // After J a "retransmission" is a new transaction, as §17.2.2 intends.
        assert_eq!(
            t.handle_request(j, 1, NonInvite, Unreliable),
            RequestOutcome::New
        );
    }

    #[test]
    fn non_invite_provisional_is_resent() {
        let (t0, mut t) = table(10);
        t.handle_request(t0, 1, NonInvite, Unreliable);
        t.send_response(t0, &1, 100, b("100")).unwrap();
        assert_eq!(
            t.state(&1),
            Some(ServerState::NonInvite(ServerNonInviteState::Proceeding))
        );
        assert_eq!(
            t.handle_request(t0, 1, NonInvite, Unreliable),
            RequestOutcome::Retransmission {
                resend: Some(b("100"))
            }
        );
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn non_invite_reliable_removed_on_final() {
        let (t0, mut t) = table(10);
        t.handle_request(t0, 7, NonInvite, Reliable);
        assert_eq!(t.send_response(t0, &7, 404, b("404")), Ok(b("404")));
        assert!(t.is_empty()); // Timer J = 0
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(queued(&t), 0);
    }

    #[test]
    fn errors() {
        let (t0, mut t) = table(10);
        assert_eq!(
            t.send_response(t0, &9, 200, b("x")),
            Err(TableError::NotFound)
        );
        t.handle_request(t0, 9, NonInvite, Unreliable);
        assert_eq!(
            t.send_response(t0, &9, 1000, b("x")),
            Err(TableError::Transaction(ServerError::InvalidStatus(1000)))
        );
        t.send_response(t0, &9, 200, b("200")).unwrap();
        assert_eq!(
            t.send_response(t0, &9, 500, b("500")),
            Err(TableError::Transaction(ServerError::FinalAlreadySent))
        );
        // The failed call did not disturb the stored response or the timer.
        assert_eq!(
            t.handle_request(t0, 9, NonInvite, Unreliable),
            RequestOutcome::Retransmission {
                resend: Some(b("200"))
            }
        );
        assert_eq!(queued(&t), 1);
        // ACK on a non-INVITE entry never matches.
        assert!(!t.handle_ack(t0, &9));
    }

    #[test]
    fn bound_returns_full_until_expiry() {
        let (t0, mut t) = table(2);
        assert_eq!(t.max_entries(), 2);
        assert_eq!(
            t.handle_request(t0, 1, NonInvite, Unreliable),
            RequestOutcome::New
        );
        assert_eq!(
            t.handle_request(t0, 2, Invite, Unreliable),
            RequestOutcome::New
        );
        assert_eq!(
            t.handle_request(t0, 3, NonInvite, Unreliable),
            RequestOutcome::Full
        );
        assert!(!t.contains(&3));
        // Retransmissions of live entries are still absorbed when full.
        assert_eq!(
            t.handle_request(t0, 1, NonInvite, Unreliable),
            RequestOutcome::Retransmission { resend: None }
        );
        t.send_response(t0, &1, 200, b("200")).unwrap();
        t.handle_timeout(t0 + S(32)).for_each(drop);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.handle_request(t0 + S(32), 3, NonInvite, Unreliable),
            RequestOutcome::New
        );
        // remove() also frees a slot.
        assert!(t.remove(&2));
        assert!(!t.remove(&2));
        assert_eq!(
            t.handle_request(t0 + S(32), 4, NonInvite, Unreliable),
            RequestOutcome::New
        );
        assert_eq!(
            t.handle_request(t0 + S(32), 5, NonInvite, Unreliable),
            RequestOutcome::Full
        );
    }

    #[test]
    fn invite_timer_g_capped_then_timer_h() {
        let (t0, mut t) = table(10);
        t.handle_request(t0, 1, Invite, Unreliable);
        assert_eq!(t.send_response(t0, &1, 100, b("100")), Ok(b("100")));
        assert_eq!(
            t.handle_request(t0, 1, Invite, Unreliable),
            RequestOutcome::Retransmission {
                resend: Some(b("100"))
            }
        );
        t.send_response(t0, &1, 486, b("486")).unwrap();

        let mut retransmits = Vec::new();
        let mut ack_timeouts = Vec::new();
        while let Some(at) = t.poll_timeout() {
            for out in t.handle_timeout(at) {
                match out {
                    TimerOutput::Retransmit(k, bytes) => {
                        assert_eq!((k, bytes), (1, b("486")));
                        retransmits.push((at - t0).as_millis());
                    }
                    TimerOutput::AckTimeout(k) => ack_timeouts.push((k, at - t0)),
                }
            }
        }
        assert_eq!(
            retransmits,
            [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(ack_timeouts, [(1, S(32))]);
        assert!(t.is_empty());
        assert_eq!(queued(&t), 0);
    }

    #[test]
    fn invite_ack_stops_g_then_timer_i() {
        let (t0, mut t) = table(10);
        t.handle_request(t0, 1, Invite, Unreliable);
        t.send_response(t0, &1, 486, b("486")).unwrap();
        assert_eq!(t.handle_timeout(t0 + MS(500)).count(), 1);
        let ack_at = t0 + MS(600);
        assert!(t.handle_ack(ack_at, &1));
        assert!(t.handle_ack(ack_at, &1)); // retransmitted ACK absorbed
        assert!(!t.handle_ack(ack_at, &2)); // unknown: to the TU
        assert_eq!(
            t.state(&1),
            Some(ServerState::Invite(ServerInviteState::Confirmed))
        );
        assert_eq!(
            t.handle_request(ack_at, 1, Invite, Unreliable),
            RequestOutcome::Retransmission { resend: None }
        );
        // Stale G (1.5 s) and H (32 s) items fire nothing.
        let mut outs = 0;
        let mut last = t0;
        while let Some(at) = t.poll_timeout() {
            outs += t.handle_timeout(at).count();
            last = at;
            if t.is_empty() {
                break;
            }
        }
        assert_eq!(outs, 0);
        assert_eq!(last, ack_at + S(5)); // Timer I = T4
        assert!(t.is_empty());
        assert_eq!(t.handle_timeout(t0 + S(60)).count(), 0);
        assert_eq!(queued(&t), 0);
    }

    #[test]
    fn invite_reliable_no_g_and_ack_removes() {
        let (t0, mut t) = table(10);
        t.handle_request(t0, 1, Invite, Reliable);
        t.send_response(t0, &1, 603, b("603")).unwrap();
        assert_eq!(t.poll_timeout(), Some(t0 + S(32))); // H only
        assert!(t.handle_ack(t0 + S(1), &1));
        assert!(t.is_empty()); // Timer I = 0

        t.handle_request(t0, 2, Invite, Reliable);
        t.send_response(t0, &2, 603, b("603")).unwrap();
        let outs: Vec<_> = t.handle_timeout(t0 + S(32)).collect();
        assert_eq!(outs, [TimerOutput::AckTimeout(2)]);
        assert!(t.is_empty());
    }

    #[test]
    fn invite_2xx_accepted_absorbs_retransmissions_until_timer_l() {
        let (t0, mut t) = table(10);
        t.handle_request(t0, 1, Invite, Unreliable);
        t.send_response(t0, &1, 200, b("200")).unwrap();
        assert_eq!(
            t.handle_request(t0 + S(1), 1, Invite, Unreliable),
            RequestOutcome::Retransmission { resend: None }
        );
        assert_eq!(t.send_response(t0 + S(1), &1, 200, b("200")), Ok(b("200")));
        assert!(!t.handle_ack(t0 + S(1), &1)); // 2xx ACK is the TU's
        assert_eq!(t.poll_timeout(), Some(t0 + S(32))); // Timer L
        assert_eq!(t.handle_timeout(t0 + S(32)).count(), 0);
        assert!(t.is_empty());
    }

    #[test]
    fn transport_error_removes() {
        let (t0, mut t) = table(10);
        t.handle_request(t0, 1, Invite, Unreliable);
        t.send_response(t0, &1, 486, b("486")).unwrap();
        assert!(t.handle_transport_error(t0, &1));
        assert!(!t.handle_transport_error(t0, &1));
        assert_eq!(t.handle_timeout(t0 + S(60)).count(), 0);
    }

    #[test]
    fn key_reuse_ignores_stale_timers() {
        let (t0, mut t) = table(10);
        t.handle_request(t0, 1, Invite, Unreliable);
        t.send_response(t0, &1, 486, b("486")).unwrap();
        t.remove(&1);
        // Same key, new transaction, final sent later: old G/H items must not fire it.
        t.handle_request(t0 + MS(100), 1, Invite, Unreliable);
        t.send_response(t0 + MS(100), &1, 486, b("new")).unwrap();
        assert_eq!(t.handle_timeout(t0 + MS(500)).count(), 0);
        let outs: Vec<_> = t.handle_timeout(t0 + MS(600)).collect();
        assert_eq!(outs, [TimerOutput::Retransmit(1, b("new"))]);
        // Run every deadline up to the old H (32 s): only G retransmissions.
        while let Some(at) = t.poll_timeout().filter(|&at| at <= t0 + S(32)) {
            for out in t.handle_timeout(at) {
                assert!(
                    matches!(out, TimerOutput::Retransmit(1, _)),
                    "{out:?} at {at:?}"
                );
            }
        }
        assert!(t.contains(&1));
        let outs: Vec<_> = t.handle_timeout(t0 + MS(32_100)).collect();
        assert_eq!(outs, [TimerOutput::AckTimeout(1)]);
    }

    #[test]
    fn many_entries_expire_with_few_queues() {
        // 20k new non-INVITE per simulated second for 2 s, mixed with some INVITEs.
        let (t0, mut t) = table(100_000);
        let mut now = t0;
        for k in 0..40_000u64 {
            now = t0 + Duration::from_micros(50 * k);
            let kind = if k % 10 == 0 { Invite } else { NonInvite };
            assert_eq!(
                t.handle_request(now, k, kind, Unreliable),
                RequestOutcome::New
            );
            let status = if k % 20 == 0 { 486 } else { 200 };
            t.send_response(now, &k, status, b("r")).unwrap();
            if k % 40 == 0 {
                assert!(t.handle_ack(now, &k));
            }
            t.handle_timeout(now).for_each(drop);
        }
        assert_eq!(t.len(), 40_000);
        // Durations: T1, 2T1, 4T1 (=T2), 64*T1, T4.
        assert!(t.queues.len() <= 6, "{} queues", t.queues.len());
        let mut acks = 0;
        while let Some(at) = t.poll_timeout() {
            now = at;
            for out in t.handle_timeout(now) {
                acks += matches!(out, TimerOutput::AckTimeout(_)) as usize;
            }
        }
        assert!(t.is_empty());
        assert_eq!(acks, 1_000); // k % 20 == 0 minus the acked k % 40 == 0
        assert_eq!(queued(&t), 0);
        // Stale G items after H may linger up to one T2 past the last H.
        assert!(now <= t0 + S(2) + S(32) + S(4), "{:?}", now - t0);
    }

    #[test]
    #[should_panic(expected = "T1 and T2 must be positive")]
    fn zero_t2_rejected() {
        let timers = TimerConfig {
            t2: Duration::ZERO,
            ..TimerConfig::default()
        };
        let _ = ServerTransactions::<u64>::new(timers, 1);
    }

    #[test]
    fn entries_stay_small() {
        eprintln!(
            "Entry {} B, map slot (u64 key) {} B, timer item (u64 key) {} B, InviteCore {} B",
            std::mem::size_of::<Entry>(),
            std::mem::size_of::<(u64, Entry)>(),
            std::mem::size_of::<(Instant, u64)>(),
            std::mem::size_of::<InviteCore>()
        );
        // Non-INVITE entry: last response + Timer J + state; INVITE boxed.
        assert!(
            std::mem::size_of::<Entry>() <= 56,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }
}
