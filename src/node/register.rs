//! The node's REGISTER path with seed 002's front end: authorise (challenges are
//! answered at once), classify and queue, serve in class order at the rate the
//! store commits, answer `503` + a scheduled `Retry-After` what cannot be served
//! in time. The decisions are `crate::admission::Front`'s; this file only carries
//! them out (docs/token-protocol.md).

use super::cpu::CpuMeter;
use super::{Node, Now};
use crate::admission::pace::Pace;
use crate::admission::{
    Dequeued, Front, FrontConfig, Refused, RegisterFacts, RegistrationClass, Snapshot, TokenVerdict,
};
use crate::registrar::{Authorized, Outcome};
use crate::sip::message::build::{new_tag, response_to};
use crate::sip::message::values::param;
use crate::sip::message::{Contacts, HeaderName, Request, Response};
use crate::sip::transaction::key::TxKey;
use crate::sip::transport::{Replier, Source};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, instrument};

/// A REGISTER between authorisation and its binding write.
pub(super) struct Pending {
    key: TxKey,
    /// Shared with the late-100 list (weakly), which must not keep it alive.
    req: Arc<Request>,
    src: Source,
    dest: SocketAddr,
    authorized: Authorized,
    arrived: Instant,
}

/// The front end's state in the node: the pure front plus what is being served.
pub struct RegisterFront {
    front: Front<Pending>,
    /// REGISTERs taken from the queue whose answers wait for the store.
    in_flight: usize,
    max_in_flight: usize,
    pace: Option<Pace>,
    /// One task pumps at a time; the others leave the work to it (see `pump`).
    pumping: bool,
    /// Queued REGISTERs, oldest first, owed a `100 Trying` if they are still
    /// unanswered after `trying_after` (UDP) or [`TRYING_AFTER_RELIABLE`] (TCP);
    /// see `Node::register`.
    trying: VecDeque<LateTrying>,
    trying_reliable: VecDeque<LateTrying>,
    trying_after: Duration,
    /// The machine's CPU, sampled every [`CPU_SAMPLE`]; busy at or above
    /// `cpu_saturated` (a fraction) counts as saturation. `None`: ignored.
    cpu: Option<(CpuMeter, f64)>,
    cpu_sampled: Option<Instant>,
}

/// How often the CPU is sampled (a few samples per service-rate interval).
const CPU_SAMPLE: Duration = Duration::from_millis(250);

/// A `100 Trying` owed to a queued REGISTER: when it was queued, its
/// transaction, where the answer goes, and the request (gone once served: most
/// are, and building their 100 up front would cost every REGISTER).
type LateTrying = (Instant, TxKey, Replier, SocketAddr, Weak<Request>);

/// Over TCP a `100` may be sent at any time (RFC 4320 §4.1); it is sent to a
/// REGISTER still unanswered after this, so one served at once gets only its 200.
const TRYING_AFTER_RELIABLE: Duration = Duration::from_millis(200);

impl RegisterFront {
    /// `trying_after`: how long a UDP client's Timer E takes to reach T2
    /// ([`timer_e_reaches_t2`]).
    /// `cpu_saturation_percent`: 0 ignores the CPU.
    pub fn new(
        cfg: FrontConfig,
        max_in_flight: usize,
        service_rate_limit: u32,
        trying_after: Duration,
        cpu_saturation_percent: u8,
    ) -> RegisterFront {
        RegisterFront {
            cpu: (cpu_saturation_percent > 0).then(|| {
                (
                    CpuMeter::default(),
                    f64::from(cpu_saturation_percent) / 100.0,
                )
            }),
            cpu_sampled: None,
            trying: VecDeque::new(),
            trying_reliable: VecDeque::new(),
            trying_after,
            // tokens must be unguessable: seeded from the OS
            front: Front::new(cfg, StdRng::from_os_rng()),
            in_flight: 0,
            max_in_flight,
            pace: Pace::new(service_rate_limit),
            pumping: false,
        }
    }

    /// The next REGISTER to serve, if one is waiting and there is room for it.
    fn next(&mut self, now: Instant) -> Option<Dequeued<Pending>> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        if let Some(p) = &mut self.pace {
            // only take an allowance when something waits for it
            if self.front.queued() == 0 || !p.try_take(now) {
                return None;
            }
        }
        let d = self.front.pop(now)?;
        self.in_flight += 1;
        Some(d)
    }
}

/// RFC 4320 §4.1: a `100` to a non-INVITE request over UDP must not be sent
/// before the client's Timer E has grown to T2 (T1, 2·T1, 4·T1, … until the
/// interval reaches T2: 3.5 s with the default 500 ms and 4 s).
pub fn timer_e_reaches_t2(t1: Duration, t2: Duration) -> Duration {
    let mut total = Duration::ZERO;
    let mut interval = t1.max(Duration::from_millis(1));
    while interval < t2 {
        total += interval;
        interval *= 2;
    }
    total
}

fn class_label(c: RegistrationClass) -> &'static str {
    match c {
        RegistrationClass::Priority => "priority",
        RegistrationClass::TokenHolder => "token",
        RegistrationClass::Initial => "initial",
    }
}

/// What the classifier needs, read from the request (RFC 5626 §4.1: the
/// instance identifies the phone across Call-IDs; without one, the Call-ID,
/// which a phone keeps across its retries, RFC 3261 §10.2.4).
fn instance_of(req: &Request) -> &str {
    req.contacts()
        .and_then(|cs| {
            cs.iter().find_map(|c| match c {
                Contacts::List(l) => l
                    .iter()
                    .find_map(|na| param(&na.params, "+sip.instance").flatten()),
                Contacts::Wildcard => None,
            })
        })
        .or_else(|| req.call_id())
        .unwrap_or("")
}

fn refusal(req: &Request, retry_after_secs: u32) -> Response {
    let mut r = response_to(req, 503, Some(&new_tag()));
    r.headers
        .push(HeaderName::RetryAfter, retry_after_secs.to_string());
    r
}

impl Node {
    #[instrument(level = "debug", skip_all)]
    pub(super) fn register(
        &self,
        now: Now,
        this: &Arc<Node>,
        key: TxKey,
        req: Request,
        src: Source,
        dest: SocketAddr,
    ) {
        // RFC 3261 §10.3 steps 1-4 first: a challenge costs nothing to send and
        // is never held back by admission (seed 002 queues the binding writes).
        let authorized = match self.registrar.authorize(&req, now.at) {
            Ok(a) => a,
            Err(r) => return self.respond(now, &key, &req, &src, dest, r),
        };
        let Some(front) = &self.admission else {
            let p = Pending {
                key,
                req: Arc::new(req),
                src,
                dest,
                authorized,
                arrived: now.at,
            };
            return self.serve(now, this, p, false);
        };
        // The request moves into the queue; the facts borrow from a second
        // handle on it.
        let req = Arc::new(req);
        let held = req.clone();
        let instance = instance_of(&held);
        let aor = authorized.aor.clone();
        let me = self.registrar.node_id();
        let binding_exists = self.registrar.location().any(&aor, now.unix_ms(), |b| {
            &b.owner == me && (b.instance.as_deref() == Some(instance) || b.call_id == instance)
        });
        let facts = RegisterFacts {
            aor: &aor,
            source: src.peer.ip(),
            resource_priority: held.headers.get(&HeaderName::ResourcePriority),
            token: held.headers.get(&HeaderName::RegistrationToken),
            instance,
            binding_exists,
        };
        // A queued REGISTER's retransmissions meet its server transaction,
        // never the queue. One still unanswered after a while is told `100
        // Trying`: over TCP after 200 ms; over UDP only once its phone's Timer E
        // has reached T2 (RFC 4320 §4.1: an earlier 100 is forbidden), which a
        // REGISTER served within the target wait never does: it is answered
        // before its first retransmission.
        let trying = Arc::downgrade(&req);
        let reliable = src.protocol.is_reliable();
        let (tx, reply) = (key.clone(), (src.reply.clone(), dest));
        let pending = Pending {
            key,
            req,
            src,
            dest,
            authorized,
            arrived: now.at,
        };
        let offered = front.lock().front.offer(now.at, &facts, pending);
        match offered {
            Ok(_) => {
                self.pump(this);
                // Served at once (nothing left waiting): no 100 will be owed,
                // so nothing is kept for it (the usual case, even in a storm).
                let mut f = front.lock();
                if f.front.queued() > 0 {
                    let owed = (now.at, tx, reply.0, reply.1, trying);
                    if reliable {
                        f.trying_reliable.push_back(owed);
                    } else {
                        f.trying.push_back(owed);
                    }
                }
            }
            Err(Refused {
                item: p,
                retry_after_secs,
            }) => {
                metrics::counter!("tandem_register_total", "outcome" => "refused").increment(1);
                let r = refusal(&p.req, retry_after_secs);
                self.respond(now, &p.key, &p.req, &p.src, p.dest, r);
            }
        }
    }

    /// A `100 Trying` through the REGISTER's transaction, if it is still
    /// waiting (a served REGISTER's request is gone, and its transaction would
    /// refuse a provisional after its final answer anyway).
    fn send_trying(
        &self,
        now: Now,
        tx: &TxKey,
        reply: &Replier,
        dest: SocketAddr,
        req: &Weak<Request>,
    ) {
        let Some(req) = req.upgrade() else {
            return;
        };
        let b = response_to(&req, 100, None).to_bytes();
        let sent = self.transactions.lock().send_response(now.at, tx, 100, b);
        if let Ok(b) = sent {
            metrics::counter!("tandem_sip_responses_total", "method" => "REGISTER", "status" => "100").increment(1);
            reply.send(dest, b);
        }
    }

    /// An `OPTIONS` with `Registration-Token: request` (docs/token-protocol.md):
    /// `ok` (the capabilities answer) with a token, or `503` + `Retry-After`.
    pub(super) fn token_request(
        &self,
        now: Now,
        key: &TxKey,
        req: &Request,
        src: &Source,
        dest: SocketAddr,
        mut ok: Response,
    ) {
        let Some(front) = &self.admission else {
            // no header in the 200: "register at once"
            return self.respond(now, key, req, src, dest, ok);
        };
        let Some(device) = req.from().map(|f| f.uri.aor_key()) else {
            return self.respond(now, key, req, src, dest, response_to(req, 400, None));
        };
        let rp = req.headers.get(&HeaderName::ResourcePriority);
        let verdict = front
            .lock()
            .front
            .on_token_request_from(now.at, &device, src.peer.ip(), rp);
        let r = match verdict {
            TokenVerdict::Grant { token, timeout } => {
                ok.headers.push(
                    HeaderName::RegistrationToken,
                    format!("{token};expires={}", timeout.as_secs()),
                );
                ok
            }
            TokenVerdict::Refuse { retry_after_secs } => refusal(req, retry_after_secs),
        };
        self.respond(now, key, req, src, dest, r);
    }

    /// The binding write and its answer (§10.3 steps 5-8). `admitted`: it came
    /// through the front, whose in-flight count its answer releases.
    fn serve(&self, now: Now, this: &Arc<Node>, p: Pending, admitted: bool) {
        let Pending {
            key,
            req,
            src,
            dest,
            authorized,
            ..
        } = p;
        match self
            .registrar
            .apply(&req, &authorized, src.flow(), now.unix_ms())
        {
            Outcome::Respond(r) => {
                self.respond(now, &key, &req, &src, dest, r);
                if admitted {
                    self.served(now, this);
                }
            }
            Outcome::AfterCommit(r, commit) => {
                let this = this.clone();
                commit.then(move |result| {
                    let r = match result {
                        Ok(()) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "binding not persisted; answering 500");
                            metrics::counter!("tandem_register_total", "outcome" => "store_error")
                                .increment(1);
                            response_to(&req, 500, Some(&new_tag()))
                        }
                    };
                    let now = Now::read();
                    this.respond(now, &key, &req, &src, dest, r);
                    if admitted {
                        this.served(now, &this);
                    }
                });
            }
        }
    }

    /// A served REGISTER's answer went out: it counts towards the service rate
    /// and makes room for the next.
    fn served(&self, now: Now, this: &Arc<Node>) {
        if let Some(front) = &self.admission {
            {
                let mut f = front.lock();
                f.in_flight = f.in_flight.saturating_sub(1);
                f.front.on_served(now.at, 1);
            }
            self.pump(this);
        }
    }

    /// Serves queued REGISTERs while there is room. One caller pumps at a time:
    /// a commit's continuation that finds a pump running leaves the work to it
    /// (it sees the freed room on its next look, taken under the same lock), so
    /// a commit that completes inline cannot recurse through `then`.
    pub(super) fn pump(&self, this: &Arc<Node>) {
        let Some(front) = &self.admission else {
            return;
        };
        {
            let mut f = front.lock();
            if f.pumping {
                return;
            }
            f.pumping = true;
        }
        loop {
            let now = Now::read();
            let next = {
                let mut f = front.lock();
                let n = f.next(now.at);
                if n.is_none() {
                    f.pumping = false;
                }
                n
            };
            let Some(d) = next else {
                break;
            };
            metrics::histogram!("tandem_admission_wait_seconds", "class" => class_label(d.class))
                .record(
                    now.at
                        .saturating_duration_since(d.item.arrived)
                        .as_secs_f64(),
                );
            self.serve(now, this, d.item, true);
        }
    }

    /// Timer work of the front: REGISTERs that waited `max_wait` are answered
    /// 503 with a slot; paced service resumes; the gauges are published.
    pub(super) fn admission_tick(&self, now: Now, this: &Arc<Node>) {
        let Some(front) = &self.admission else {
            return;
        };
        // /proc/stat is read outside the front's lock (REGISTERs keep flowing
        // meanwhile): the meter is taken out while it samples.
        let due = {
            let mut f = front.lock();
            if f.cpu_sampled.is_none_or(|t| now.at >= t + CPU_SAMPLE) {
                f.cpu_sampled = Some(now.at);
                Some(f.cpu.take())
            } else {
                None
            }
        };
        if let Some(mut cpu) = due {
            let busy = cpu.as_mut().and_then(|(meter, _)| meter.sample());
            if let Some(b) = busy {
                metrics::gauge!("tandem_admission_cpu_busy_ratio").set(b);
            }
            let mut f = front.lock();
            if busy.is_some_and(|b| cpu.as_ref().is_some_and(|(_, limit)| b >= *limit)) {
                f.front.on_cpu_saturated(now.at);
            }
            f.cpu = cpu;
        }
        let mut late_trying = Vec::new();
        let expired: Vec<_> = {
            let mut f = front.lock();
            let f = &mut *f;
            if f.front.poll_timeout().is_some_and(|t| t <= now.at) {
                f.front.handle_timeout(now.at);
            }
            let after = f.trying_after;
            while f
                .trying
                .front()
                .is_some_and(|(at, ..)| *at + after <= now.at)
            {
                late_trying.extend(f.trying.pop_front());
            }
            while f
                .trying_reliable
                .front()
                .is_some_and(|(at, ..)| *at + TRYING_AFTER_RELIABLE <= now.at)
            {
                late_trying.extend(f.trying_reliable.pop_front());
            }
            std::iter::from_fn(|| f.front.poll_expired()).collect()
        };
        for (_, tx, reply, dest, req) in late_trying {
            self.send_trying(now, &tx, &reply, dest, &req);
        }
        for e in expired {
            debug!(waited = ?e.waited, retry_after = e.retry_after_secs, "REGISTER waited too long; 503");
            let p = e.item;
            metrics::counter!("tandem_register_total", "outcome" => "refused").increment(1);
            self.respond(
                now,
                &p.key,
                &p.req,
                &p.src,
                p.dest,
                refusal(&p.req, e.retry_after_secs),
            );
        }
        self.pump(this);
        let s = front.lock().front.snapshot(now.at);
        publish(&s);
    }

    /// A REGISTER retransmission met its transaction: feeds the load measure.
    pub(super) fn register_retransmitted(&self, now: Now) {
        if let Some(front) = &self.admission {
            front.lock().front.on_retransmission(now.at);
        }
    }

    /// The front's state for `GET /admission`; `None` when admission is off.
    pub fn admission_snapshot(&self) -> Option<Snapshot> {
        let front = self.admission.as_ref()?;
        let s = front.lock().front.snapshot(Instant::now());
        Some(s)
    }
}

fn publish(s: &Snapshot) {
    for (class, n) in [
        ("priority", s.queued_priority),
        ("token", s.queued_token),
        ("initial", s.queued_initial),
    ] {
        metrics::gauge!("tandem_admission_queue_depth", "class" => class).set(n as f64);
    }
    metrics::gauge!("tandem_admission_service_rate").set(s.service_rate);
    metrics::gauge!("tandem_admission_projected_wait_seconds").set(s.projected_wait.as_secs_f64());
    metrics::gauge!("tandem_admission_tokens_outstanding").set(s.tokens_outstanding as f64);
    metrics::gauge!("tandem_admission_implicit_tokens").set(s.implicit_tokens as f64);
    let c = s.counts;
    for (event, n) in [
        ("granted", c.tokens_granted),
        ("denied", c.tokens_denied),
        ("expired", c.tokens_expired),
        ("used", c.tokens_used),
        ("implicit_used", c.implicit_used),
    ] {
        metrics::counter!("tandem_admission_tokens_total", "event" => event).absolute(n);
    }
    for (class, n) in ["priority", "token", "initial"].into_iter().zip(c.queued) {
        metrics::counter!("tandem_admission_queued_total", "class" => class).absolute(n);
    }
    metrics::counter!("tandem_admission_refused_total", "when" => "arrival").absolute(c.refused);
    metrics::counter!("tandem_admission_refused_total", "when" => "max_wait")
        .absolute(c.expired_in_queue);
}

/// The front end of a node, or `None` when `[admission] enabled = false`.
pub fn front_of(cfg: &crate::config::Config) -> Option<Mutex<RegisterFront>> {
    if !cfg.admission.enabled {
        return None;
    }
    // validated when the file was loaded
    let front = cfg.admission_front().ok()?;
    Some(Mutex::new(RegisterFront::new(
        front,
        cfg.admission.max_in_flight,
        cfg.admission.service_rate_limit,
        timer_e_reaches_t2(
            Duration::from_millis(cfg.sip.t1_ms),
            Duration::from_millis(cfg.sip.t2_ms),
        ),
        cfg.admission.cpu_saturation_percent,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_e_reaches_t2_after_three_and_a_half_seconds_by_default() {
        let ms = Duration::from_millis;
        assert_eq!(timer_e_reaches_t2(ms(500), ms(4000)), ms(3500));
        assert_eq!(timer_e_reaches_t2(ms(500), ms(500)), ms(0));
        assert_eq!(timer_e_reaches_t2(ms(100), ms(1000)), ms(1500));
    }
}
