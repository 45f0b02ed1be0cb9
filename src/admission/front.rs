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
use std::time::{Duration, Instant};

/// Everything the front is built from (the future `[admission]` section).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
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

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
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

/// A REGISTER that waited `max_wait`: answer 503 with this Retry-After (its
/// retry inside the window is served at token priority).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired<T> {
    pub item: T,
    pub class: RegistrationClass,
    pub waited: Duration,
    pub retry_after_secs: u32,
}

/// The state `GET /admission` will show.
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
}

struct Waiting<T> {
    item: T,
    /// The implicit-token key, so an expired entry's retry keeps its place.
    key: String,
}

pub struct Front<T> {
    cfg: AdmissionConfig,
    tokens: TokenTable,
    queue: RegistrationQueue<Waiting<T>>,
    rate: ServiceRate,
    schedule: RetrySchedule,
    expired: VecDeque<Expired<T>>,
}

impl<T> Front<T> {
    /// `rng` makes the tokens and the jitter: seed it from the OS
    /// (`StdRng::from_os_rng()`) outside tests, or tokens become guessable.
    pub fn new(cfg: AdmissionConfig, mut rng: StdRng) -> Front<T> {
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
            cfg,
        }
    }

    /// Seed 002 FIG. 6: classifies one REGISTER and queues or refuses it.
    pub fn on_register(&mut self, now: Instant, facts: &RegisterFacts<'_>, item: T) -> Verdict {
        self.rate.tick(now, self.queue.len());
        let c = classify(&self.cfg.rules, &mut self.tokens, now, facts);
        let key = facts.implicit_key();
        let early = match c.basis {
            Basis::Refresh => {
                self.queue
                    .push_over_capacity(now, Waiting { item, key }, c.class);
                return Verdict::Queued(c.class);
            }
            Basis::Initial { early, .. } => early,
            _ => None,
        };
        // Initial registrations are the ones the load decides on (seed 002
        // FIG. 3: "if registration queue 62 contains greater than a threshold
        // number of requests … may deny the initial registration request").
        if c.class == RegistrationClass::Initial && !self.under_target() {
            return self.refuse_register(now, &key, early);
        }
        match self.queue.push(now, Waiting { item, key }, c.class) {
            Ok(()) => Verdict::Queued(c.class),
            Err(Full(w)) => self.refuse_register(now, &w.key, early),
        }
    }

    /// Seed 002 FIG. 5: grants a token to `device` (its AOR) while the
    /// projected wait is under the target, else refuses with a scheduled retry.
    pub fn on_token_request(&mut self, now: Instant, device: &str) -> TokenVerdict {
        self.rate.tick(now, self.queue.len());
        if self.under_target() {
            let timeout = self.cfg.token_timeout;
            if let Ok(token) = self.tokens.grant(now, device, timeout) {
                return TokenVerdict::Grant { token, timeout };
            }
        }
        TokenVerdict::Refuse {
            retry_after_secs: self.next_retry(now),
        }
    }

    /// `n` registrations completed (the registrar's answers): feeds the
    /// service rate.
    pub fn on_served(&mut self, now: Instant, n: u64) {
        self.rate.on_served(now, n, self.queue.len());
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
        self.tokens.expire(now);
        self.queue.handle_timeout(now);
        while let Some(d) = self.queue.poll_expired() {
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
        }
    }

    /// FIG. 5 step 102: the wait a newcomer can expect.
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
    fn refuse_register(&mut self, now: Instant, key: &str, early: Option<Duration>) -> Verdict {
        let retry_after_secs = match early {
            Some(left) => (left.as_secs_f64().ceil() as u32).max(1),
            None => {
                let secs = self.next_retry(now);
                self.record_implicit(now, key, secs);
                secs
            }
        };
        Verdict::Refuse { retry_after_secs }
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
