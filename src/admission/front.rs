//! The composed REGISTER front end of seed 002 (FIG. 3's queue management module
//! 72 and registration queue 62): classification (FIG. 6), the load measure and
//! the grant rule (FIG. 5), the staggered retry schedule, the token table and the
//! queue. Sans-IO like `sip::ping`: every input carries `now`, outputs are
//! verdicts and polled events, nothing reads a clock.
//!
//! The grant rule is one comparison for token requests and initial REGISTERs
//! alike: the projected wait of the backlog (queued registrations plus tokens
//! granted and not yet used, since those devices are on their way) against
//! `target_wait`. Priority and token-priority REGISTERs are not subject to it,
//! only to their class's capacity; refreshes not even to that.

use super::classify::{classify, Basis, PriorityRules, RegisterFacts};
use super::load::ServiceRate;
use super::queue::{Capacity, Dequeued, Full, RegistrationQueue};
use super::schedule::RetrySchedule;
use super::tokens::{RegistrationToken, TokenTable};
use super::RegistrationClass;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Everything the front is built from (the future `[admission]` section).
#[derive(Debug, Clone)]
pub struct FrontConfig {
    pub rules: PriorityRules,
    /// Grant tokens and queue initial REGISTERs while the projected wait is
    /// below this.
    pub target_wait: Duration,
    /// No REGISTER waits longer in the queue (below Timer F, 32 s).
    pub max_wait: Duration,
    /// An entry's rank improves by one class per this much waiting.
    pub aging: Duration,
    pub capacity: Capacity,
    /// How long a granted token stays valid (seed 002 FIG. 5 step 112).
    pub token_timeout: Duration,
    /// How long after its Retry-After a refused phone's retry still counts as
    /// a token registration.
    pub implicit_window: Duration,
    pub max_tokens: usize,
    pub max_implicit: usize,
    /// Registrations per second assumed before any is measured.
    pub initial_rate: f64,
    /// The service-rate estimate never falls below this.
    pub min_rate: f64,
    pub rate_interval: Duration,
    /// Weight of the newest interval in the service-rate average.
    pub rate_alpha: f64,
    /// Retry jitter as a fraction of the slot spacing (< ½).
    pub jitter: f64,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            rules: PriorityRules::default(),
            target_wait: Duration::from_secs(2),
            max_wait: Duration::from_secs(8),
            aging: Duration::from_secs(2),
            capacity: Capacity {
                priority: 1_000,
                token: 10_000,
                initial: 10_000,
            },
            token_timeout: Duration::from_secs(30),
            implicit_window: Duration::from_secs(30),
            max_tokens: 50_000,
            max_implicit: 200_000,
            initial_rate: 200.0,
            min_rate: 1.0,
            rate_interval: Duration::from_secs(1),
            rate_alpha: 0.3,
            jitter: 0.25,
        }
    }
}

/// What becomes of one REGISTER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Queued in this class; it comes out of [`Front::pop`] or
    /// [`Front::poll_expired`].
    Queued(RegistrationClass),
    /// Answer `503 Service Unavailable` with this `Retry-After`.
    Refuse { retry_after_secs: u32 },
}

/// The answer to a token request (seed 002 FIG. 5 steps 106 and 108).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVerdict {
    Grant {
        token: RegistrationToken,
        timeout: Duration,
    },
    Refuse {
        retry_after_secs: u32,
    },
}

/// A REGISTER refused on arrival, handed back to be answered `503` with this
/// `Retry-After`.
#[derive(Debug)]
pub struct Refused<T> {
    pub item: T,
    pub retry_after_secs: u32,
}

/// A REGISTER that waited `max_wait`: answer 503 with this Retry-After (its
/// retry inside the window is served at token priority).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired<T> {
    pub item: T,
    pub class: RegistrationClass,
    pub waited: Duration,
    pub retry_after_secs: u32,
}

/// What the front has done since it started (the node publishes these as
/// Prometheus counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tokens_granted: u64,
    /// Token requests answered 503 + Retry-After.
    pub tokens_denied: u64,
    /// Explicit tokens that expired unused.
    pub tokens_expired: u64,
    /// REGISTERs that carried a valid explicit token.
    pub tokens_used: u64,
    /// REGISTERs served at token priority by their implicit token.
    pub implicit_used: u64,
    /// REGISTERs answered 503 + Retry-After on arrival (load or a full class).
    pub refused: u64,
    /// REGISTERs answered 503 + Retry-After after waiting `max_wait`.
    pub expired_in_queue: u64,
    /// REGISTERs queued, per class (priority, token, initial).
    pub queued: [u64; 3],
}

/// The state `GET /admission` shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub queued_priority: usize,
    pub queued_token: usize,
    pub queued_initial: usize,
    /// Explicit tokens not yet expired, and those not yet used.
    pub tokens_outstanding: usize,
    pub tokens_pending: usize,
    pub implicit_tokens: usize,
    pub service_rate: f64,
    pub projected_wait: Duration,
    /// How far ahead the retry schedule has handed out slots.
    pub retry_horizon: Duration,
    pub counts: Counts,
}

struct Waiting<T> {
    item: T,
    /// The implicit-token key, so an expired entry's retry keeps its place.
    key: String,
}

pub struct Front<T> {
    cfg: FrontConfig,
    tokens: TokenTable,
    queue: RegistrationQueue<Waiting<T>>,
    rate: ServiceRate,
    schedule: RetrySchedule,
    expired: VecDeque<Expired<T>>,
    counts: Counts,
}

impl<T> Front<T> {
    /// `rng` makes the tokens and the jitter: seed it from the OS
    /// (`StdRng::from_os_rng()`) outside tests, or tokens become guessable.
    pub fn new(cfg: FrontConfig, mut rng: StdRng) -> Front<T> {
        let schedule_rng = StdRng::seed_from_u64(rng.random());
        Front {
            tokens: TokenTable::new(cfg.max_tokens, cfg.max_implicit, rng),
            queue: RegistrationQueue::new(cfg.capacity, cfg.aging, cfg.max_wait),
            rate: ServiceRate::new(
                cfg.initial_rate,
                cfg.min_rate,
                cfg.rate_interval,
                cfg.rate_alpha,
            ),
            schedule: RetrySchedule::new(cfg.jitter, schedule_rng),
            expired: VecDeque::new(),
            counts: Counts::default(),
            cfg,
        }
    }

    /// Seed 002 FIG. 6: classifies one REGISTER and queues or refuses it.
    pub fn on_register(&mut self, now: Instant, facts: &RegisterFacts<'_>, item: T) -> Verdict {
        match self.offer(now, facts, item) {
            Ok(class) => Verdict::Queued(class),
            Err(r) => Verdict::Refuse {
                retry_after_secs: r.retry_after_secs,
            },
        }
    }

    /// [`on_register`](Self::on_register) that hands a refused item back, so
    /// the caller can answer it.
    pub fn offer(
        &mut self,
        now: Instant,
        facts: &RegisterFacts<'_>,
        item: T,
    ) -> Result<RegistrationClass, Refused<T>> {
        let offered = self.decide(now, facts, item);
        if let Ok(class) = &offered {
            self.counts.queued[*class as usize] += 1;
        }
        offered
    }

    fn decide(
        &mut self,
        now: Instant,
        facts: &RegisterFacts<'_>,
        item: T,
    ) -> Result<RegistrationClass, Refused<T>> {
        self.rate.tick(now, self.queue.len());
        let c = classify(&self.cfg.rules, &mut self.tokens, now, facts);
        let key = facts.implicit_key();
        match c.basis {
            Basis::Token => self.counts.tokens_used += 1,
            Basis::ImplicitToken => self.counts.implicit_used += 1,
            _ => {}
        }
        let early = match c.basis {
            Basis::Refresh => {
                self.queue
                    .push_over_capacity(now, Waiting { item, key }, c.class);
                return Ok(c.class);
            }
            Basis::Initial { early, .. } => early,
            _ => None,
        };
        // Initial registrations are the ones the load decides on (seed 002
        // FIG. 3: "if registration queue 62 contains greater than a threshold
        // number of requests … may deny the initial registration request").
        if c.class == RegistrationClass::Initial && !self.under_target() {
            let retry_after_secs = self.refuse_register(now, &key, early);
            return Err(Refused {
                item,
                retry_after_secs,
            });
        }
        match self.queue.push(now, Waiting { item, key }, c.class) {
            Ok(()) => Ok(c.class),
            Err(Full(w)) => {
                let retry_after_secs = self.refuse_register(now, &w.key, early);
                Err(Refused {
                    item: w.item,
                    retry_after_secs,
                })
            }
        }
    }

    /// REGISTERs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Seed 002 FIG. 5: grants a token to `device` (its AOR) while the
    /// projected wait is under the target, else refuses with a scheduled retry.
    pub fn on_token_request(&mut self, now: Instant, device: &str) -> TokenVerdict {
        self.token_request(now, device, false)
    }

    /// A token request with what tells a priority device (FIG. 6 step 122):
    /// a priority device is granted one whatever the load, as its REGISTER
    /// would be queued whatever the load.
    pub fn on_token_request_from(
        &mut self,
        now: Instant,
        device: &str,
        source: IpAddr,
        resource_priority: Option<&str>,
    ) -> TokenVerdict {
        let priority = self
            .cfg
            .rules
            .is_priority(device, source, resource_priority);
        self.token_request(now, device, priority)
    }

    fn token_request(&mut self, now: Instant, device: &str, priority: bool) -> TokenVerdict {
        self.rate.tick(now, self.queue.len());
        if priority || self.under_target() {
            let timeout = self.cfg.token_timeout;
            if let Ok(token) = self.tokens.grant(now, device, timeout) {
                self.counts.tokens_granted += 1;
                return TokenVerdict::Grant { token, timeout };
            }
        }
        self.counts.tokens_denied += 1;
        self.rate.on_refused(now, self.queue.len());
        TokenVerdict::Refuse {
            retry_after_secs: self.next_retry(now),
        }
    }

    /// `n` registrations completed (the registrar's answers): feeds the
    /// service rate.
    pub fn on_served(&mut self, now: Instant, n: u64) {
        self.rate.on_served(now, n, self.queue.len());
    }

    /// The CPU was saturated at `now` (FIG. 5 step 102: the node's own load).
    pub fn on_cpu_saturated(&mut self, now: Instant) {
        self.rate.on_cpu_saturated(now, self.queue.len());
    }

    /// A phone retransmitted a REGISTER at `now` (its answer is late).
    pub fn on_retransmission(&mut self, now: Instant) {
        self.rate.on_late(now, self.queue.len());
    }

    /// The next REGISTER to serve, aged priority first.
    pub fn pop(&mut self, now: Instant) -> Option<Dequeued<T>> {
        self.rate.tick(now, self.queue.len());
        let d = self.queue.pop(now)?;
        Some(Dequeued {
            item: d.item.item,
            class: d.class,
            waited: d.waited,
        })
    }

    /// Expires REGISTERs that waited `max_wait` (each gets a slot and an
    /// implicit token) and forgets expired tokens.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.rate.tick(now, self.queue.len());
        self.counts.tokens_expired += self.tokens.expire(now) as u64;
        self.queue.handle_timeout(now);
        while let Some(d) = self.queue.poll_expired() {
            self.counts.expired_in_queue += 1;
            let retry_after_secs = self.next_retry(now);
            self.record_implicit(now, &d.item.key, retry_after_secs);
            self.expired.push_back(Expired {
                item: d.item.item,
                class: d.class,
                waited: d.waited,
                retry_after_secs,
            });
        }
    }

    pub fn poll_expired(&mut self) -> Option<Expired<T>> {
        self.expired.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work: the oldest
    /// queued REGISTER reaching `max_wait`. Tokens expire lazily.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.poll_timeout()
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            queued_priority: self.queue.len_of(RegistrationClass::Priority),
            queued_token: self.queue.len_of(RegistrationClass::TokenHolder),
            queued_initial: self.queue.len_of(RegistrationClass::Initial),
            tokens_outstanding: self.tokens.explicit_len(),
            tokens_pending: self.tokens.pending(),
            implicit_tokens: self.tokens.implicit_len(),
            service_rate: self.rate.per_sec(),
            projected_wait: self.projected_wait(),
            retry_horizon: self.schedule.horizon(now),
            counts: self.counts,
        }
    }

    /// FIG. 5 step 102: the wait a newcomer can expect: the queue and the
    /// tokens on their way.
    fn projected_wait(&self) -> Duration {
        self.rate
            .projected_wait(self.queue.len() + self.tokens.pending())
    }

    fn under_target(&self) -> bool {
        self.projected_wait() < self.cfg.target_wait
    }

    fn next_retry(&mut self, now: Instant) -> u32 {
        let drain = self.projected_wait();
        self.schedule.next_retry(now, drain, self.rate.spacing())
    }

    /// Refuses a REGISTER with a slot and records its implicit token. A retry
    /// that came before its window is told the time left to it: it keeps its
    /// slot instead of taking a new, later one.
    fn refuse_register(&mut self, now: Instant, key: &str, early: Option<Duration>) -> u32 {
        self.counts.refused += 1;
        self.rate.on_refused(now, self.queue.len());
        match early {
            Some(left) => (left.as_secs_f64().ceil() as u32).max(1),
            None => {
                let secs = self.next_retry(now);
                self.record_implicit(now, key, secs);
                secs
            }
        }
    }

    fn record_implicit(&mut self, now: Instant, key: &str, retry_after_secs: u32) {
        // Full table: nothing recorded, the retry is an initial request again.
        let _ = self.tokens.record_implicit(
            now,
            key,
            Duration::from_secs(retry_after_secs.into()),
            self.cfg.implicit_window,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use RegistrationClass::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 10 registrations a second, a 2 s target, no jitter: exact slots.
    fn config() -> FrontConfig {
        FrontConfig {
            rules: PriorityRules {
                aors: ["sip:gw@h".to_string()].into(),
                ..PriorityRules::default()
            },
            capacity: Capacity {
                priority: 2,
                token: 2,
                initial: 100,
            },
            token_timeout: secs(30),
            implicit_window: secs(20),
            initial_rate: 10.0,
            rate_alpha: 1.0,
            jitter: 0.0,
            ..FrontConfig::default()
        }
    }

    fn front() -> Front<u32> {
        Front::new(config(), StdRng::seed_from_u64(2))
    }

    fn phone(aor: &str) -> RegisterFacts<'_> {
        RegisterFacts {
            aor,
            source: IpAddr::from([192, 0, 2, 1]),
            resource_priority: None,
            token: None,
            instance: "urn:uuid:1",
            binding_exists: false,
        }
    }

    fn refuse(retry_after_secs: u32) -> Verdict {
        Verdict::Refuse { retry_after_secs }
    }

    fn token_retry(v: TokenVerdict) -> u32 {
        match v {
            TokenVerdict::Refuse { retry_after_secs } => retry_after_secs,
            TokenVerdict::Grant { .. } => panic!("granted"),
        }
    }

    #[test]
    fn tokens_are_granted_under_the_target_wait_and_denials_are_staggered_at_the_service_rate() {
        let t0 = Instant::now();
        let mut f = front();
        let mut granted = Vec::new();
        // 20 pending tokens at 10/s project a 2 s wait: the 21st is denied
        for k in 0..20 {
            match f.on_token_request(t0, &format!("sip:{k}@h")) {
                TokenVerdict::Grant { token, timeout } => {
                    assert_eq!(timeout, secs(30));
                    granted.push(token);
                }
                TokenVerdict::Refuse { .. } => panic!("request {k} refused"),
            }
        }
        let denials: Vec<u32> = (0..31)
            .map(|k| token_retry(f.on_token_request(t0, &format!("sip:late{k}@h"))))
            .collect();
        // slots from 2 s (the backlog drained) at 0.1 s: 2.0, 2.1 … 5.0; all
        // refused at one instant, so one phase: the arrival buckets spread
        // them over those seconds and at most SPILL (2) seconds past
        let mut per_second = std::collections::BTreeMap::new();
        for d in &denials {
            *per_second.entry(*d).or_insert(0) += 1;
        }
        assert_eq!(per_second.keys().next(), Some(&2), "{per_second:?}");
        assert!(*per_second.keys().last().unwrap() <= 7, "{per_second:?}");
        assert!(per_second.values().all(|n| *n <= 11), "{per_second:?}");
        let s = f.snapshot(t0);
        assert_eq!((s.tokens_outstanding, s.tokens_pending), (20, 20));
        assert_eq!(s.projected_wait, secs(2));
        assert_eq!(s.retry_horizon, ms(5100));
        // a token holder is queued although the wait is over the target
        let aor = "sip:0@h";
        let mut reg = phone(aor);
        reg.token = Some(granted[0].as_str());
        assert_eq!(f.on_register(t0, &reg, 1), Verdict::Queued(TokenHolder));
        assert_eq!(f.snapshot(t0).tokens_pending, 19);
        // once served and the tokens timed out, tokens are granted again
        assert_eq!(f.pop(t0 + ms(100)).map(|d| d.item), Some(1));
        f.handle_timeout(t0 + secs(30));
        assert_eq!(f.snapshot(t0 + secs(30)).tokens_outstanding, 0);
        assert!(matches!(
            f.on_token_request(t0 + secs(30), "sip:x@h"),
            TokenVerdict::Grant { .. }
        ));
        let c = f.snapshot(t0 + secs(30)).counts;
        assert_eq!(
            (
                c.tokens_granted,
                c.tokens_denied,
                c.tokens_used,
                c.tokens_expired
            ),
            (21, 31, 1, 19),
            "19 of the first 20 tokens expired unused"
        );
    }

    #[test]
    fn a_priority_device_gets_a_token_whatever_the_load() {
        let t0 = Instant::now();
        let mut f = front();
        let ip = IpAddr::from([192, 0, 2, 1]);
        for k in 0..20 {
            let aor = format!("sip:{k}@h");
            assert!(matches!(
                f.on_token_request_from(t0, &aor, ip, None),
                TokenVerdict::Grant { .. }
            ));
        }
        // the projected wait is at the target: phones are refused …
        assert!(matches!(
            f.on_token_request_from(t0, "sip:late@h", ip, None),
            TokenVerdict::Refuse { .. }
        ));
        // … the configured gateway is not
        assert!(matches!(
            f.on_token_request_from(t0, "sip:gw@h", ip, None),
            TokenVerdict::Grant { .. }
        ));
    }

    #[test]
    fn a_refused_register_gets_a_slot_and_its_retry_in_the_window_is_token_priority() {
        let t0 = Instant::now();
        let mut f = front();
        for k in 0..20 {
            let aor = format!("sip:{k}@h");
            assert_eq!(f.on_register(t0, &phone(&aor), k), Verdict::Queued(Initial));
        }
        let a = phone("sip:a@h");
        let b = phone("sip:b@h");
        assert_eq!(f.on_register(t0, &a, 100), refuse(2));
        assert_eq!(f.on_register(t0, &b, 101), refuse(3));
        assert_eq!(f.snapshot(t0).implicit_tokens, 2);
        // b comes back a second early: told the time left, its slot kept
        assert_eq!(f.on_register(t0 + secs(1), &b, 101), refuse(2));
        assert_eq!(f.snapshot(t0).retry_horizon, ms(2200), "no new slot taken");
        // a comes back on time: token priority although the queue is still long
        assert_eq!(
            f.on_register(t0 + secs(2), &a, 100),
            Verdict::Queued(TokenHolder)
        );
        assert_eq!(f.snapshot(t0).queued_token, 1);
        // (the initials that waited 2 s have aged to token rank and go first)
        assert_eq!(f.pop(t0 + secs(2)).map(|d| d.item), Some(0));
        // b comes back after its window (3 s + 20 s): initial again, a new slot;
        // nothing was served meanwhile with 20 waiting, so the measured rate is
        // the 1/s floor and the backlog takes 20 s
        let late = t0 + secs(23);
        assert_eq!(f.on_register(late, &b, 101), refuse(20));
        assert_eq!(f.snapshot(late).service_rate, 1.0);
        let c = f.snapshot(late).counts;
        assert_eq!((c.refused, c.implicit_used), (4, 1));
    }

    #[test]
    fn a_refresh_is_never_refused_even_over_the_target_and_a_full_class() {
        let t0 = Instant::now();
        let mut f = front();
        let tokens: Vec<_> = (0..3)
            .map(|_| match f.on_token_request(t0, "sip:a@h") {
                TokenVerdict::Grant { token, .. } => token,
                v => panic!("{v:?}"),
            })
            .collect();
        for k in 0..20 {
            let aor = format!("sip:{k}@h");
            f.on_register(t0, &phone(&aor), k);
        }
        let mut reg = phone("sip:a@h");
        for (k, t) in tokens.iter().enumerate().take(2) {
            reg.token = Some(t.as_str());
            assert_eq!(
                f.on_register(t0, &reg, 50 + k as u32),
                Verdict::Queued(TokenHolder)
            );
        }
        // the token class holds 2: a third token holder is refused with a slot
        reg.token = Some(tokens[2].as_str());
        assert!(matches!(
            f.on_register(t0, &reg, 52),
            Verdict::Refuse { .. }
        ));
        let mut refresh = phone("sip:c@h");
        refresh.binding_exists = true;
        assert_eq!(
            f.on_register(t0, &refresh, 60),
            Verdict::Queued(TokenHolder)
        );
        assert_eq!(f.snapshot(t0).queued_token, 3);
    }

    #[test]
    fn priority_devices_are_queued_over_the_target_and_refused_only_when_their_class_is_full() {
        let t0 = Instant::now();
        let mut f = front();
        for k in 0..20 {
            let aor = format!("sip:{k}@h");
            f.on_register(t0, &phone(&aor), k);
        }
        assert_eq!(f.on_register(t0, &phone("sip:x@h"), 99), refuse(2));
        let gw = phone("sip:gw@h");
        assert_eq!(f.on_register(t0, &gw, 1), Verdict::Queued(Priority));
        assert_eq!(f.on_register(t0, &gw, 2), Verdict::Queued(Priority));
        // 22 queued now: the backlog drains in 2.2 s, after the slot at 2.0 s
        assert_eq!(f.on_register(t0, &gw, 3), refuse(3));
        assert_eq!(f.pop(t0).map(|d| (d.item, d.class)), Some((1, Priority)));
    }

    #[test]
    fn a_register_waiting_max_wait_expires_with_a_slot_and_retries_at_token_priority() {
        let t0 = Instant::now();
        let mut f = front();
        let p = phone("sip:a@h");
        assert_eq!(f.on_register(t0, &p, 7), Verdict::Queued(Initial));
        assert_eq!(f.poll_timeout(), Some(t0 + secs(8)));
        f.handle_timeout(t0 + ms(7999));
        assert_eq!(f.poll_expired(), None);
        f.handle_timeout(t0 + secs(8));
        assert_eq!(
            f.poll_expired(),
            Some(Expired {
                item: 7,
                class: Initial,
                waited: secs(8),
                retry_after_secs: 1,
            })
        );
        assert_eq!(f.poll_timeout(), None);
        assert_eq!(
            f.on_register(t0 + secs(9), &p, 7),
            Verdict::Queued(TokenHolder)
        );
    }

    #[test]
    fn the_measured_service_rate_moves_the_projected_wait_and_the_grant_rule() {
        let t0 = Instant::now();
        let mut f = front();
        for k in 0..15 {
            let aor = format!("sip:{k}@h");
            f.on_register(t0, &phone(&aor), k);
        }
        assert_eq!(f.snapshot(t0).projected_wait, ms(1500));
        for _ in 0..5 {
            f.pop(t0 + ms(500));
        }
        f.on_served(t0 + ms(500), 5);
        // the interval ends with 10 still waiting: the node serves 5/s
        f.handle_timeout(t0 + secs(1));
        let s = f.snapshot(t0 + secs(1));
        assert_eq!(s.service_rate, 5.0);
        assert_eq!(s.queued_initial, 10);
        assert_eq!(s.projected_wait, secs(2));
        // denied, with slots 0.2 s apart after the 2 s backlog
        let r: Vec<u32> = (0..6)
            .map(|_| token_retry(f.on_token_request(t0 + secs(1), "sip:t@h")))
            .collect();
        assert_eq!(r, [2, 3, 3, 3, 3, 3]);
    }

    #[test]
    fn a_registration_storm_comes_back_at_the_service_rate_and_at_token_priority() {
        let t0 = Instant::now();
        let mut f = Front::new(
            FrontConfig {
                jitter: 0.25,
                capacity: Capacity {
                    priority: 2,
                    token: 100,
                    initial: 100,
                },
                ..config()
            },
            StdRng::seed_from_u64(7),
        );
        let aors: Vec<String> = (0..500).map(|k| format!("sip:{k}@h")).collect();
        let mut back_at = std::collections::BTreeMap::<u32, Vec<usize>>::new();
        let mut queued = 0;
        for (k, aor) in aors.iter().enumerate() {
            match f.on_register(t0, &phone(aor), k as u32) {
                Verdict::Queued(Initial) => queued += 1,
                Verdict::Refuse { retry_after_secs } => {
                    back_at.entry(retry_after_secs).or_default().push(k)
                }
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(queued, 20, "2 s of work at 10/s");
        // 480 retries from 2 s on at 10/s: about 48 s, never more than R+1 in
        // a second
        assert!(back_at.values().all(|v| v.len() <= 11), "{back_at:?}");
        let (first, last) = (
            *back_at.keys().next().unwrap(),
            *back_at.keys().last().unwrap(),
        );
        assert!(
            (2..=3).contains(&first) && (49..=53).contains(&last),
            "{first}..{last}"
        );
        // every retry that comes on time is token priority
        for (secs_out, ks) in &back_at {
            let at = t0 + secs(u64::from(*secs_out));
            for &k in ks {
                let v = f.on_register(at, &phone(&aors[k]), k as u32);
                assert_eq!(v, Verdict::Queued(TokenHolder), "phone {k} at {secs_out} s");
                f.pop(at);
            }
        }
    }
}
