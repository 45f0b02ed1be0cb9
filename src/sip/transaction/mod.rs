//! Sans-IO SIP transaction layer (RFC 3261 §17, with RFC 6026 "Accepted" states).
//!
//! State machines in the style of quinn-proto: no IO and no clock. Every input takes
//! `now`; outputs (bytes to transmit, events, the next deadline) are polled. Messages
//! are opaque serialized bytes and status codes are plain `u16`: this layer never
//! parses SIP. Matching a message to a transaction (§17.1.3, §17.2.3) is the caller's
//! job; [`table::ServerTransactions`] then keeps the server side keyed by the caller's key.
//!
//! `now` is expected to be monotonically non-decreasing across calls.

use std::time::Duration;

pub mod client;
pub mod key;
pub mod server;
pub mod table;

/// Timer base values, RFC 3261 §17.1.1.1 and Table 4 (§A). T1 and T2 must be non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate; base of every retransmission timer.
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// Maximum time a message remains in the network.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// 64*T1: Timers B, F, H (RFC 3261) and L, M (RFC 6026).
    pub fn t1_x64(&self) -> Duration {
        self.t1 * 64
    }

    /// Next retransmit interval after `current`: doubled, capped at T2
    /// (Timers E and G, RFC 3261 §17.1.2.2 / §17.2.1).
    pub fn next_capped(&self, current: Duration) -> Duration {
        (current * 2).min(self.t2)
    }

    /// Timer D, RFC 3261 §17.1.1.2: "at least 32 seconds" on unreliable transports.
    /// Kept at least 64*T1 so it still covers the server's Timer G window if T1 is raised.
    pub fn timer_d(&self) -> Duration {
        Duration::from_secs(32).max(self.t1_x64())
    }
}

/// Transport reliability, which decides whether retransmission timers run (§17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reliability {
    /// TCP/TLS/SCTP: Timers A, E, G are not armed and D, I, J, K are zero.
    Reliable,
    /// UDP: requests and responses are retransmitted by the transaction.
    Unreliable,
}

impl Reliability {
    pub fn is_reliable(self) -> bool {
        matches!(self, Reliability::Reliable)
    }
}

/// Which server/client transaction state machine a request needs (§17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionKind {
    Invite,
    NonInvite,
}

/// Status codes a transaction accepts (§7.2: 100–699).
pub(crate) fn valid_status(status: u16) -> bool {
    (100..=699).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_rfc_3261_table_4() {
        let t = TimerConfig::default();
        assert_eq!(t.t1, Duration::from_millis(500));
        assert_eq!(t.t2, Duration::from_secs(4));
        assert_eq!(t.t4, Duration::from_secs(5));
        assert_eq!(t.t1_x64(), Duration::from_secs(32));
        assert_eq!(t.timer_d(), Duration::from_secs(32));
    }

    #[test]
    fn doubling_is_capped_at_t2() {
        let t = TimerConfig::default();
        let mut d = t.t1;
        let mut seen = vec![d];
        for _ in 0..6 {
            d = t.next_capped(d);
            seen.push(d);
        }
        let ms: Vec<u128> = seen.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 4000, 4000, 4000]);
    }

    #[test]
    fn timer_d_follows_large_t1() {
        let t = TimerConfig {
            t1: Duration::from_secs(1),
            ..TimerConfig::default()
        };
        assert_eq!(t.timer_d(), Duration::from_secs(64));
    }

    #[test]
    fn status_range() {
        assert!(!valid_status(99));
        assert!(valid_status(100));
        assert!(valid_status(699));
        assert!(!valid_status(700));
    }
}
