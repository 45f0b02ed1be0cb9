//! Call overload control (issue 9 item 6), sans-IO: for each new out-of-dialog
//! INVITE, admit it or refuse it at once with `503` + `Retry-After`, so the
//! calls already admitted finish instead of the whole node sinking under
//! retransmissions. In-dialog requests, CANCEL, ACK and BYE never come here.
//!
//! The load measure is the one the REGISTER front uses (`load`): a projected
//! wait, backlog ÷ service rate. For calls the backlog is the proxied INVITEs
//! that no response (not even `100 Trying`) has come back for yet, and the rate
//! is how many such first answers arrive per second. By Little's law the ratio
//! is the time an INVITE now spends between Tandem forwarding it and Tandem
//! reading its first answer; responses wait in the same socket queue as new
//! requests, so this is the node's own queueing delay, the first thing that
//! grows past capacity (`docs/decisions.md`, "Call overload control"). Ringing
//! does not count: a call that rang is answered, so a busy evening of long
//! ring times is not mistaken for overload.
//!
//! RFC 7339 (SIP overload control): an upstream server that puts `oc` in its
//! Via gets the loss algorithm's feedback (§7) in the Via of our responses:
//! [`Feedback`], rendered by [`stamp_oc`].
//!
//! Every input carries `now`; nothing here reads a clock.

use super::load::ServiceRate;
use crate::sip::message::scan::split_commas;
use crate::sip::message::Via;
use std::time::{Duration, Instant};

/// What the controller is tuned with (`[admission.calls]`).
#[derive(Debug, Clone, PartialEq)]
pub struct OverloadConfig {
    /// Refuse new INVITEs while the projected wait is at or above this.
    pub target_wait: Duration,
    /// The backlog never counts as overload below this many unanswered INVITEs
    /// (a slow gateway on a quiet node is not an overloaded node).
    pub min_backlog: usize,
    /// First answers per second assumed until one is measured.
    pub initial_rate: f64,
    /// `Retry-After` of a refusal (RFC 3261 §21.5.4).
    pub retry_after_secs: u32,
    /// `oc-validity` of RFC 7339 feedback (§5.2).
    pub oc_validity: Duration,
    /// A backlog over the limit is absorbed this long before the first
    /// refusal: a burst (a stall of the node or of the next hop) that the
    /// queue rides out is not overload. Not applied again while refusals are
    /// recent, so a standing overload is held at the limit.
    pub burst: Duration,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        OverloadConfig {
            target_wait: Duration::from_millis(100),
            min_backlog: 100,
            initial_rate: 1000.0,
            retry_after_secs: 2,
            oc_validity: Duration::from_millis(2000),
            burst: Duration::from_millis(300),
        }
    }
}

/// The proxy's INVITE counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallLoad {
    /// Proxied INVITEs no response has come back for yet.
    pub unanswered: usize,
    /// INVITEs that got their first response (or ended without one) since the
    /// node started: a monotonic counter.
    pub answered_total: u64,
}

/// The decision for one new INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallVerdict {
    Admit,
    /// Answer `503 Service Unavailable` with this `Retry-After` (seconds).
    Refuse {
        retry_after_secs: u32,
    },
}

/// RFC 7339 §5.2 feedback for an upstream that asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback {
    /// `oc`: percentage of its requests the upstream should not send (§7).
    pub reduction: u8,
    /// `oc-validity`, milliseconds.
    pub validity_ms: u64,
    /// `oc-seq`: when the reduction was set, Unix milliseconds (rendered as
    /// seconds with a fraction, so it still increases across a restart).
    pub seq_unix_ms: u64,
}

/// How often the RFC 7339 reduction is recomputed: long enough to count
/// hundreds of INVITEs at a busy node, short against `oc-validity`.
const REDUCTION_INTERVAL: Duration = Duration::from_millis(500);
/// The service rate's averaging interval and weight.
const RATE_INTERVAL: Duration = Duration::from_millis(100);
const RATE_ALPHA: f64 = 0.3;
/// Refusals this recent mean the overload is standing: no burst allowance.
const CALM: Duration = Duration::from_secs(2);

pub struct CallOverload {
    cfg: OverloadConfig,
    rate: ServiceRate,
    last: CallLoad,
    /// `Instant` ↔ Unix time, fixed at construction, for `oc-seq`.
    epoch: (Instant, u64),
    /// INVITEs admitted and refused in the current reduction interval.
    admitted: u64,
    refused: u64,
    interval_start: Instant,
    reduction: u8,
    reduction_set_at: Instant,
    /// Since when the backlog has been at or over the limit.
    over_since: Option<Instant>,
    last_refusal: Option<Instant>,
}

impl CallOverload {
    /// `unix_ms` is the wall-clock time at `now` (for `oc-seq` only).
    pub fn new(cfg: OverloadConfig, now: Instant, unix_ms: u64) -> CallOverload {
        let rate = ServiceRate::new(cfg.initial_rate, 1.0, RATE_INTERVAL, RATE_ALPHA);
        CallOverload {
            cfg,
            rate,
            last: CallLoad::default(),
            epoch: (now, unix_ms),
            admitted: 0,
            refused: 0,
            interval_start: now,
            reduction: 0,
            reduction_set_at: now,
            over_since: None,
            last_refusal: None,
        }
    }

    /// Takes in the proxy's counters (also called by [`Self::on_invite`]).
    pub fn observe(&mut self, now: Instant, load: CallLoad) {
        let served = load.answered_total.saturating_sub(self.last.answered_total);
        self.rate.on_served(now, served, load.unanswered);
        self.last = load;
        if now.saturating_duration_since(self.interval_start) >= REDUCTION_INTERVAL {
            let next = next_reduction(self.reduction, self.admitted, self.refused);
            if next != self.reduction {
                self.reduction = next;
                self.reduction_set_at = now;
            }
            self.admitted = 0;
            self.refused = 0;
            self.interval_start = now;
        }
    }

    /// A new out-of-dialog INVITE arrived; `load` is the proxy's counters now.
    pub fn on_invite(&mut self, now: Instant, load: CallLoad) -> CallVerdict {
        self.observe(now, load);
        let refuse = if load.unanswered < self.limit() {
            self.over_since = None;
            false
        } else {
            let since = *self.over_since.get_or_insert(now);
            let standing = self
                .last_refusal
                .is_some_and(|t| now.saturating_duration_since(t) < CALM);
            standing || now.saturating_duration_since(since) >= self.cfg.burst
        };
        if refuse {
            self.last_refusal = Some(now);
            self.refused += 1;
            CallVerdict::Refuse {
                retry_after_secs: self.cfg.retry_after_secs,
            }
        } else {
            self.admitted += 1;
            CallVerdict::Admit
        }
    }

    /// The most unanswered INVITEs before new ones are refused: the backlog
    /// the measured rate clears within the target wait.
    pub fn limit(&self) -> usize {
        let by_rate = (self.rate.per_sec() * self.cfg.target_wait.as_secs_f64()) as usize;
        by_rate.max(self.cfg.min_backlog)
    }

    /// The load measure: how long the current backlog takes to be answered.
    pub fn projected_wait(&self) -> Duration {
        self.rate.projected_wait(self.last.unanswered)
    }

    /// First answers per second, as estimated.
    pub fn rate(&self) -> f64 {
        self.rate.per_sec()
    }

    /// The RFC 7339 feedback to give an upstream that asked for it.
    pub fn feedback(&self) -> Feedback {
        let since = self
            .reduction_set_at
            .saturating_duration_since(self.epoch.0);
        Feedback {
            reduction: self.reduction,
            validity_ms: self.cfg.oc_validity.as_millis() as u64,
            seq_unix_ms: self.epoch.1 + since.as_millis() as u64,
        }
    }
}

/// RFC 7339 §7 (loss algorithm): the percentage of its INVITEs an upstream
/// should drop next, from the last interval's admissions and refusals.
///
/// An upstream that follows `prev` already drops that share; if we still had
/// to refuse a share `s` of what came, the total to drop is
/// 1 − (1 − prev)(1 − s). An interval without refusals lowers the reduction by
/// a quarter (at least one point), so an upstream probes its way back up
/// rather than returning all its traffic at once (which would overload us
/// again).
pub fn next_reduction(prev: u8, admitted: u64, refused: u64) -> u8 {
    let prev = prev.min(100);
    let seen = admitted + refused;
    if refused == 0 || seen == 0 {
        return prev - (prev / 4).max(1).min(prev);
    }
    let p = prev as f64 / 100.0;
    let s = refused as f64 / seen as f64;
    let total = 1.0 - (1.0 - p) * (1.0 - s);
    (total * 100.0).round().clamp(0.0, 100.0) as u8
}

/// Whether the upstream supports overload control (RFC 7339 §5.1: an `oc`
/// parameter, with or without a value, in the Via it added).
pub fn wants_oc(top_via: &Via) -> bool {
    top_via
        .params
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("oc"))
}

/// The value of the first Via header field with the feedback of RFC 7339
/// §5.2 on its first Via (`oc`, `oc-algo`, `oc-validity`, `oc-seq`), replacing
/// any the upstream put there; the other Vias of the field stay as they were.
/// `None` when the value does not parse.
pub fn stamp_oc(via_field: &str, fb: Feedback) -> Option<String> {
    let parts = split_commas(via_field)?;
    let mut top = Via::parse_all(parts.first()?)?.into_iter().next()?;
    top.params.retain(|(n, _)| {
        !["oc", "oc-algo", "oc-validity", "oc-seq"]
            .iter()
            .any(|p| n.eq_ignore_ascii_case(p))
    });
    let mut v = top.to_value();
    // §5.2: the loss algorithm is the one every client supports (§7), so it is
    // the one chosen; oc-seq = 1*12DIGIT "." 1*5DIGIT (§9 grammar).
    v.push_str(&format!(
        ";oc={};oc-algo=\"loss\";oc-validity={};oc-seq={}.{:03}",
        fb.reduction,
        fb.validity_ms,
        fb.seq_unix_ms / 1000,
        fb.seq_unix_ms % 1000
    ));
    for rest in &parts[1..] {
        v.push_str(", ");
        v.push_str(rest);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> OverloadConfig {
        OverloadConfig {
            target_wait: ms(200),
            min_backlog: 10,
            initial_rate: 100.0,
            retry_after_secs: 3,
            oc_validity: ms(2000),
            burst: Duration::ZERO,
        }
    }

    #[test]
    fn a_backlog_under_the_target_wait_is_admitted() {
        let t0 = Instant::now();
        let mut c = CallOverload::new(cfg(), t0, 1_000_000);
        // 100/s × 200 ms = 20
        assert_eq!(c.limit(), 20);
        let load = CallLoad {
            unanswered: 19,
            answered_total: 0,
        };
        assert_eq!(c.on_invite(t0, load), CallVerdict::Admit);
        let load = CallLoad {
            unanswered: 20,
            answered_total: 0,
        };
        assert_eq!(
            c.on_invite(t0, load),
            CallVerdict::Refuse {
                retry_after_secs: 3
            }
        );
        assert_eq!(c.projected_wait(), ms(200));
    }

    #[test]
    fn the_limit_follows_the_measured_answer_rate() {
        let t0 = Instant::now();
        let mut c = CallOverload::new(cfg(), t0, 0);
        let mut total = 0;
        // 100 ms intervals of 300 answers (3,000/s), backlog always present
        for i in 0..=40 {
            total += 300;
            c.observe(
                t0 + ms(100 * i),
                CallLoad {
                    unanswered: 50,
                    answered_total: total,
                },
            );
        }
        assert!((c.rate() - 3000.0).abs() < 10.0, "{}", c.rate());
        // 3,000/s × 200 ms
        assert!((595..=600).contains(&c.limit()), "{}", c.limit());
        // a backlog of 50 at 3,000/s is ~17 ms of waiting: admitted
        let load = CallLoad {
            unanswered: 50,
            answered_total: total,
        };
        assert_eq!(c.on_invite(t0 + ms(4050), load), CallVerdict::Admit);
    }

    #[test]
    fn answers_that_stop_coming_bring_refusals_and_their_return_admissions() {
        let t0 = Instant::now();
        let mut c = CallOverload::new(cfg(), t0, 0);
        c.observe(t0, CallLoad::default());
        // the node falls behind: nothing answered for a second while the
        // backlog sits; the rate estimate falls to its floor
        for i in 1..=10 {
            c.observe(
                t0 + ms(100 * i),
                CallLoad {
                    unanswered: 15,
                    answered_total: 0,
                },
            );
        }
        assert_eq!(c.limit(), 10, "the floor holds");
        let stuck = CallLoad {
            unanswered: 15,
            answered_total: 0,
        };
        assert!(matches!(
            c.on_invite(t0 + ms(1050), stuck),
            CallVerdict::Refuse { .. }
        ));
        // the backlog is answered: admitted again at once
        let drained = CallLoad {
            unanswered: 2,
            answered_total: 13,
        };
        assert_eq!(c.on_invite(t0 + ms(1060), drained), CallVerdict::Admit);
    }

    #[test]
    fn a_burst_is_absorbed_but_a_standing_backlog_is_refused_at_once() {
        let t0 = Instant::now();
        let mut c = CallOverload::new(
            OverloadConfig {
                burst: ms(300),
                ..cfg()
            },
            t0,
            0,
        );
        let over = CallLoad {
            unanswered: 50,
            answered_total: 0,
        };
        let under = CallLoad {
            unanswered: 5,
            answered_total: 0,
        };
        // over the limit for less than the burst allowance: admitted
        assert_eq!(c.on_invite(t0, over), CallVerdict::Admit);
        assert_eq!(c.on_invite(t0 + ms(299), over), CallVerdict::Admit);
        // a dip below restarts the allowance
        assert_eq!(c.on_invite(t0 + ms(300), under), CallVerdict::Admit);
        assert_eq!(c.on_invite(t0 + ms(310), over), CallVerdict::Admit);
        // over for the whole allowance: refused
        assert!(matches!(
            c.on_invite(t0 + ms(610), over),
            CallVerdict::Refuse { .. }
        ));
        // while refusals are recent, the next excursion over the limit is
        // refused at once (the overload is standing)
        assert_eq!(c.on_invite(t0 + ms(620), under), CallVerdict::Admit);
        assert!(matches!(
            c.on_invite(t0 + ms(630), over),
            CallVerdict::Refuse { .. }
        ));
        // after a calm spell the allowance applies again
        assert_eq!(c.on_invite(t0 + ms(640), under), CallVerdict::Admit);
        assert_eq!(c.on_invite(t0 + ms(2700), over), CallVerdict::Admit);
    }

    #[test]
    fn the_reduction_compounds_while_refusing_and_decays_after() {
        assert_eq!(next_reduction(0, 50, 50), 50);
        // the upstream drops 50 %, we still refuse half of the rest: 75 %
        assert_eq!(next_reduction(50, 50, 50), 75);
        assert_eq!(next_reduction(100, 0, 10), 100);
        assert_eq!(next_reduction(80, 100, 0), 60);
        assert_eq!(next_reduction(3, 100, 0), 2);
        assert_eq!(next_reduction(1, 0, 0), 0);
        assert_eq!(next_reduction(0, 0, 0), 0);
    }

    #[test]
    fn feedback_is_recomputed_each_interval_and_sequenced_by_its_time() {
        let t0 = Instant::now();
        let mut c = CallOverload::new(cfg(), t0, 1_700_000_000_000);
        let fb = c.feedback();
        assert_eq!(fb.reduction, 0);
        assert_eq!(fb.validity_ms, 2000);
        let over = CallLoad {
            unanswered: 1000,
            answered_total: 0,
        };
        for i in 0..4 {
            c.on_invite(t0 + ms(10 * i), over);
        }
        // the interval has not ended: the reduction is unchanged
        assert_eq!(c.feedback().reduction, 0);
        c.observe(t0 + ms(500), over);
        let fb = c.feedback();
        assert_eq!(fb.reduction, 100);
        assert_eq!(fb.seq_unix_ms, 1_700_000_000_500);
        // an unchanged value keeps its sequence number
        c.on_invite(t0 + ms(600), over);
        c.observe(t0 + ms(1000), over);
        assert_eq!(c.feedback().seq_unix_ms, 1_700_000_000_500);
    }

    #[test]
    fn oc_is_offered_only_to_an_upstream_that_asked() {
        let via = |s: &str| Via::parse_all(s).unwrap().remove(0);
        assert!(wants_oc(&via(
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;oc"
        )));
        assert!(wants_oc(&via(
            "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;oc-algo=\"loss,rate\";oc"
        )));
        assert!(!wants_oc(&via("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1")));
    }

    #[test]
    fn the_feedback_goes_on_the_top_via_only() {
        let fb = Feedback {
            reduction: 40,
            validity_ms: 2000,
            seq_unix_ms: 1_282_321_615_781,
        };
        let field = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;oc;oc-algo=\"loss,A\";received=10.0.0.1, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK0;oc";
        let v = stamp_oc(field, fb).unwrap();
        // RFC 7339 §5.2's example form
        assert_eq!(
            v,
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;received=10.0.0.1;oc=40;oc-algo=\"loss\";oc-validity=2000;oc-seq=1282321615.781, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK0;oc"
        );
        let parsed = Via::parse_all(&v).unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(parsed[0]
            .params
            .iter()
            .any(|(n, v)| n == "oc" && v.as_deref() == Some("40")));
        assert_eq!(stamp_oc("not a via", fb), None);
    }
}
