//! The proxy's timers: every client transaction's next deadline and each
//! INVITE's Timer C (RFC 3261 §16.6 step 11, §16.8), in one heap.

use super::branch::BranchKey;
use super::Proxy;
use crate::sip::transaction::key::TxKey;
use std::cmp::Ordering;
use std::time::Instant;

/// What a heap entry wakes up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TimerKey {
    /// A client transaction's retransmission or timeout.
    Branch(BranchKey),
    /// Timer C, by its id in `Proxy::timer_c_owner`.
    TimerC(u64),
}

/// A heap entry. Entries are never removed early: one that fires and finds its
/// deadline moved (a re-armed Timer C, a transaction that went on) does nothing.
#[derive(Debug)]
pub(super) struct Due {
    pub(super) at: Instant,
    pub(super) key: TimerKey,
}

// Ordered by deadline alone, reversed: `BinaryHeap` is a max-heap and the
// earliest deadline must come out first.
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl Proxy {
    /// Runs due timers (client transactions, Timer C).
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.timers.peek().is_some_and(|d| d.at <= now) {
            let Some(Due { at, key }) = self.timers.pop() else {
                break;
            };
            match key {
                TimerKey::TimerC(id) => self.on_timer_c(now, at, id),
                TimerKey::Branch(key) => {
                    let due = self
                        .branches
                        .get(&key)
                        .and_then(|b| b.tx.poll_timeout())
                        .is_some_and(|t| t <= now);
                    if due {
                        if let Some(b) = self.branches.get_mut(&key) {
                            b.tx.handle_timeout(now);
                        }
                        self.drive(now, &key, None);
                    }
                }
            }
        }
    }

    /// The earliest timer, for the node's tick.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|d| d.at)
    }

    /// (Re)starts Timer C of `server`'s context. A fresh id each time, so the
    /// entry of the previous deadline, still in the heap, finds no owner.
    pub(super) fn arm_timer_c(&mut self, now: Instant, server: &TxKey) {
        let Some(ctx) = self.contexts.get_mut(server) else {
            return;
        };
        if let Some(old) = ctx.timer_c_id.take() {
            self.timer_c_owner.remove(&old);
        }
        self.counter += 1;
        let id = self.counter;
        let at = now + self.cfg.timer_c;
        ctx.timer_c = Some(at);
        ctx.timer_c_id = Some(id);
        self.timer_c_owner.insert(id, server.clone());
        self.timers.push(Due {
            at,
            key: TimerKey::TimerC(id),
        });
    }

    /// Timer C fired (§16.8): what still rings is cancelled, and the caller gets
    /// 408 unless a branch already failed with something better.
    fn on_timer_c(&mut self, now: Instant, at: Instant, id: u64) {
        let Some(server) = self.timer_c_owner.remove(&id) else {
            return;
        };
        // an entry left from before a 2xx or a re-arm: the context moved on
        if self
            .contexts
            .get(&server)
            .is_none_or(|c| c.timer_c != Some(at))
        {
            return;
        }
        if let Some(ctx) = self.contexts.get_mut(&server) {
            ctx.timer_c = None;
            ctx.timer_c_id = None;
            ctx.timed_out = true;
            if ctx.best.is_none() {
                ctx.best = Some((408, ctx.own_response(408)));
            }
        }
        self.cancel(now, &server);
    }
}
