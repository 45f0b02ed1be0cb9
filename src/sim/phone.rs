//! One simulated phone, sans-IO (the house style of `sip::transaction` and
//! `sip::ping`): inputs are `handle_timeout(now)` and `handle_response(now, resp)`,
//! outputs are polled (`poll_transmit`, `poll_timeout`). No sockets, no clock, so
//! the tests drive it in virtual time.
//!
//! The phone follows seed 002 FIG. 7: register with the primary; when a registrar
//! stops answering (Timer F), fail over to the next one in the list; while on a
//! secondary or tertiary, ping the primary with OPTIONS and, once it answers,
//! re-home: register with it (after asking for a token in token mode) and
//! unregister from the backup. Each request is an RFC 3261 §17.1.2 non-INVITE
//! client transaction over UDP (`ClientNonInvite`: Timer E retransmissions, Timer F).

use super::profile::{Mode, Profile};
use crate::sip::auth::{authorization, pick_challenge, Challenge};
use crate::sip::message::{CSeq, HeaderName, Response};
use crate::sip::transaction::client::{ClientEvent, ClientNonInvite};
use crate::sip::transaction::Reliability;
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// At most this many registrars (primary, secondary, tertiary: FIG. 7).
pub const MAX_REGISTRARS: usize = 3;

/// The `Registration-Token` header of docs/token-protocol.md.
pub const TOKEN_HEADER: &str = "Registration-Token";

/// What a phone counted; the report adds them up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhoneStats {
    /// When the phone sent its first request (token request or REGISTER).
    pub first_attempt: Option<Instant>,
    /// When a REGISTER of it was first answered 2xx.
    pub registered: Option<Instant>,
    /// New requests (first transmissions), REGISTER and OPTIONS.
    pub requests: u32,
    /// Timer E retransmissions (RFC 3261 §17.1.2.2).
    pub retransmissions: u32,
    pub status_503: u32,
    pub status_401: u32,
    /// Transactions that ended on Timer F.
    pub timeouts: u32,
    pub failovers: u32,
    pub rehomes: u32,
    /// Explicit tokens granted.
    pub tokens: u32,
    /// REGISTER attempts (not counting the answer to a 401).
    pub attempts: u32,
}

/// Where the phone is in FIG. 7.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not started; `wake` is its start time.
    Idle,
    /// Token mode: an OPTIONS `Registration-Token: request` to `reg` is in flight,
    /// or (no transaction) the phone waits for its `Retry-After` to ask again.
    AskToken {
        reg: u8,
    },
    /// A REGISTER to `reg` is in flight, or (no transaction) the phone waits for a
    /// 503's `Retry-After` to try again.
    Register {
        reg: u8,
        token: Option<String>,
        /// 401s answered in this attempt (a third means the password is wrong).
        auth_tries: u8,
    },
    /// Bound at `reg`: refresh at `refresh_at`; on a backup, ping the primary at
    /// `ping_at` (None while a ping is in flight).
    Registered {
        reg: u8,
        refresh_at: Instant,
        ping_at: Option<Instant>,
    },
    /// Re-homed: REGISTER Expires: 0 to the backup `from` in flight.
    Unregister {
        from: u8,
        auth_tries: u8,
    },
    GaveUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Register,
    Options,
}

#[derive(Debug)]
struct Tx {
    kind: Kind,
    reg: u8,
    branch: String,
    ct: ClientNonInvite,
}

/// How a transaction ended.
enum Outcome<'a> {
    Final(u16, &'a Response),
    /// Timer F, or the transport refused the request (§17.1.4).
    Timeout,
}

/// One phone: `{user_prefix}{index}@{domain}`.
#[derive(Debug)]
pub struct Phone {
    index: u32,
    /// The simulator socket this phone sends from (Via, Contact).
    local: SocketAddr,
    priority: bool,
    state: State,
    tx: Option<Tx>,
    /// The state's next action when no transaction is in flight.
    wake: Option<Instant>,
    /// Registrar index of the binding the phone holds, if any.
    bound: Option<u8>,
    /// REGISTER CSeq per registrar: one Call-ID per registrar (RFC 3261 §10.2.4).
    cseq: [u32; MAX_REGISTRARS],
    /// OPTIONS CSeq per registrar (their own Call-ID per registrar).
    ocseq: [u32; MAX_REGISTRARS],
    /// The last challenge of each registrar and its nonce-count: later REGISTERs
    /// carry credentials at once (RFC 3261 §22.3), as phones do.
    challenge: [Option<(Challenge, u32)>; MAX_REGISTRARS],
    /// Registrars that failed since the last successful registration.
    failed: [bool; MAX_REGISTRARS],
    /// Expires to ask for (raised by a 423's Min-Expires, RFC 3261 §10.2.8).
    expires: u32,
    branches: u32,
    /// REGISTER attempts since the last successful registration.
    attempts_left: u32,
    pub stats: PhoneStats,
    out: VecDeque<(SocketAddr, Bytes)>,
}

impl Phone {
    /// A phone that starts at `start`.
    pub fn new(
        p: &Profile,
        index: u32,
        local: SocketAddr,
        priority: bool,
        start: Instant,
    ) -> Phone {
        Phone {
            index,
            local,
            priority,
            state: State::Idle,
            tx: None,
            wake: Some(start),
            bound: None,
            cseq: [0; MAX_REGISTRARS],
            ocseq: [0; MAX_REGISTRARS],
            challenge: Default::default(),
            failed: [false; MAX_REGISTRARS],
            expires: p.expires,
            branches: 0,
            attempts_left: p.max_attempts,
            stats: PhoneStats::default(),
            out: VecDeque::new(),
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn is_priority(&self) -> bool {
        self.priority
    }

    /// The registrar (0 = primary) holding this phone's binding, if any.
    pub fn bound(&self) -> Option<u8> {
        self.bound
    }

    pub fn gave_up(&self) -> bool {
        self.state == State::GaveUp
    }

    /// Nothing more to wait for: gave up, or registered where it belongs (the
    /// primary; or a backup when it will not ping the primary).
    pub fn is_settled(&self, p: &Profile) -> bool {
        match self.state {
            State::GaveUp => true,
            State::Registered { reg, .. } => reg == 0 || p.ping_interval.is_zero(),
            _ => false,
        }
    }

    /// A short name of the state, for per-phone lines.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Idle => "idle",
            State::AskToken { .. } => "asking-token",
            State::Register { .. } => "registering",
            State::Registered { .. } => "registered",
            State::Unregister { .. } => "unregistering",
            State::GaveUp => "gave-up",
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.out.pop_front()
    }

    /// The next instant `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.tx {
            Some(tx) => tx.ct.poll_timeout(),
            None => self.wake,
        }
    }

    /// Runs the transaction's timers and the state's due action.
    pub fn handle_timeout(&mut self, p: &Profile, now: Instant) {
        if let Some(tx) = &mut self.tx {
            tx.ct.handle_timeout(now);
            while let Some(b) = tx.ct.poll_transmit() {
                self.stats.retransmissions += 1;
                self.out.push_back((p.registrars[tx.reg as usize], b));
            }
            let mut timed_out = false;
            while let Some(ev) = tx.ct.poll_event() {
                timed_out |= matches!(ev, ClientEvent::Timeout | ClientEvent::TransportError);
            }
            if timed_out {
                if let Some(tx) = self.tx.take() {
                    self.stats.timeouts += 1;
                    self.on_outcome(p, now, tx, Outcome::Timeout);
                }
            }
        }
        self.run_due(p, now);
    }

    /// Takes a response whose Call-ID names this phone; `false` if it answers no
    /// transaction of ours (a late retransmission, a stray).
    pub fn handle_response(&mut self, p: &Profile, now: Instant, resp: &Response) -> bool {
        let Some(tx) = &mut self.tx else {
            return false;
        };
        // RFC 3261 §17.1.3: the top Via branch and the CSeq method
        let branch_ok = resp
            .top_via()
            .is_some_and(|v| v.branch() == Some(tx.branch.as_str()));
        let method = match tx.kind {
            Kind::Register => "REGISTER",
            Kind::Options => "OPTIONS",
        };
        let method_ok = resp
            .header(&HeaderName::CSeq)
            .and_then(CSeq::parse)
            .is_some_and(|c| c.method == method);
        if !branch_ok || !method_ok {
            return false;
        }
        if resp.status < 200 {
            // Proceeding: Timer E now fires every T2 (§17.1.2.2)
            let _ = tx.ct.handle_response(now, resp.status, Bytes::new());
            while tx.ct.poll_event().is_some() {}
            return true;
        }
        if let Some(tx) = self.tx.take() {
            match resp.status {
                401 | 407 => self.stats.status_401 += 1,
                503 => self.stats.status_503 += 1,
                _ => {}
            }
            self.on_outcome(p, now, tx, Outcome::Final(resp.status, resp));
        }
        self.run_due(p, now);
        true
    }

    /// Performs the state's action if its time has come and no transaction runs.
    fn run_due(&mut self, p: &Profile, now: Instant) {
        if self.tx.is_some() || self.wake.is_none_or(|w| w > now) {
            return;
        }
        self.wake = None;
        match self.state.clone() {
            State::Idle => self.begin(p, now, 0),
            State::AskToken { reg } => self.send_options(p, now, reg, true),
            State::Register { reg, token, .. } => {
                self.state = State::Register {
                    reg,
                    token: token.clone(),
                    auth_tries: 0,
                };
                self.attempt(p, now, reg, token.as_deref());
            }
            State::Registered {
                reg,
                refresh_at,
                ping_at,
            } => {
                if refresh_at <= now {
                    // a refresh needs no token: a node never refuses one
                    self.state = State::Register {
                        reg,
                        token: None,
                        auth_tries: 0,
                    };
                    self.attempt(p, now, reg, None);
                } else if ping_at.is_some_and(|t| t <= now) {
                    // FIG. 7 step 176: is the primary back?
                    self.state = State::Registered {
                        reg,
                        refresh_at,
                        ping_at: None,
                    };
                    self.send_options(p, now, 0, false);
                    self.wake = Some(refresh_at);
                } else {
                    self.wake = Some(ping_at.map_or(refresh_at, |t| t.min(refresh_at)));
                }
            }
            State::Unregister { .. } | State::GaveUp => {}
        }
    }

    /// Starts registering with `reg`: ask for a token first in token mode.
    fn begin(&mut self, p: &Profile, now: Instant, reg: u8) {
        match p.mode {
            Mode::Token => {
                self.state = State::AskToken { reg };
                self.send_options(p, now, reg, true);
            }
            Mode::Plain => {
                self.state = State::Register {
                    reg,
                    token: None,
                    auth_tries: 0,
                };
                self.attempt(p, now, reg, None);
            }
        }
    }

    /// A new REGISTER attempt, unless the phone used them all.
    fn attempt(&mut self, p: &Profile, now: Instant, reg: u8, token: Option<&str>) {
        if self.attempts_left == 0 {
            self.give_up();
            return;
        }
        self.attempts_left -= 1;
        self.stats.attempts += 1;
        let expires = self.expires;
        self.send_register(p, now, reg, expires, token);
    }

    fn give_up(&mut self) {
        self.state = State::GaveUp;
        self.wake = None;
        self.bound = None;
    }

    /// `reg` failed (Timer F, a 5xx): fail over to the first registrar in list
    /// order that has not failed since the last registration (FIG. 7 step 168).
    /// While re-homing, the phone is still bound to its backup and stays there.
    fn fail(&mut self, p: &Profile, now: Instant, reg: u8) {
        if let Some(b) = self.bound.filter(|&b| b != reg) {
            self.registered(p, now, b, false);
            return;
        }
        self.bound = None;
        self.failed[reg as usize] = true;
        match (0..p.registrars.len()).find(|&i| !self.failed[i]) {
            Some(next) => {
                self.stats.failovers += 1;
                self.begin(p, now, next as u8);
            }
            None => self.give_up(),
        }
    }

    /// Bound at `reg`: schedule the refresh (half the interval, as most phones do)
    /// and, on a backup, the next ping of the primary.
    fn registered(&mut self, p: &Profile, now: Instant, reg: u8, fresh: bool) {
        let (refresh_at, ping_at) = match self.state {
            State::Registered {
                reg: r,
                refresh_at,
                ping_at,
            } if r == reg && !fresh => (refresh_at, ping_at),
            _ => (
                now + Duration::from_secs(u64::from(self.expires.max(2) / 2)),
                None,
            ),
        };
        let ping_at = if reg != 0 && !p.ping_interval.is_zero() {
            Some(ping_at.unwrap_or(now + p.ping_interval))
        } else {
            None
        };
        self.state = State::Registered {
            reg,
            refresh_at,
            ping_at,
        };
        self.wake = Some(ping_at.map_or(refresh_at, |t| t.min(refresh_at)));
    }

    fn on_outcome(&mut self, p: &Profile, now: Instant, tx: Tx, outcome: Outcome<'_>) {
        match (self.state.clone(), tx.kind) {
            (State::AskToken { reg }, Kind::Options) => self.on_token_answer(p, now, reg, outcome),
            (
                State::Register {
                    reg,
                    token,
                    auth_tries,
                },
                Kind::Register,
            ) => self.on_register_answer(p, now, reg, token, auth_tries, outcome),
            (State::Registered { reg, .. }, Kind::Options) => match outcome {
                // any final answer means the primary is alive again: re-home
                Outcome::Final(..) => self.begin(p, now, 0),
                Outcome::Timeout => self.registered(p, now, reg, false),
            },
            (State::Unregister { from, auth_tries }, Kind::Register) => {
                if let Outcome::Final(401 | 407, resp) = outcome {
                    if auth_tries < 2 && self.learn_challenge(from, resp) {
                        self.state = State::Unregister {
                            from,
                            auth_tries: auth_tries + 1,
                        };
                        self.send_register(p, now, from, 0, None);
                        return;
                    }
                }
                let home = self.bound.unwrap_or(0);
                self.registered(p, now, home, true);
            }
            _ => {}
        }
    }

    fn on_token_answer(&mut self, p: &Profile, now: Instant, reg: u8, outcome: Outcome<'_>) {
        let Outcome::Final(status, resp) = outcome else {
            return self.fail(p, now, reg);
        };
        match status {
            503 => match retry_after(resp) {
                // docs/token-protocol.md: ask again after Retry-After
                Some(wait) => self.wake = Some(now + wait),
                // RFC 3263 §4.3: a 503 without Retry-After: try the next server
                None => self.fail(p, now, reg),
            },
            500..=599 => self.fail(p, now, reg),
            _ => {
                // a 200 with a grant carries a token; a 200 without one (no
                // admission control), or any other answer: register at once
                let token = (status == 200).then(|| granted_token(resp)).flatten();
                if token.is_some() {
                    self.stats.tokens += 1;
                }
                self.state = State::Register {
                    reg,
                    token: token.clone(),
                    auth_tries: 0,
                };
                self.attempt(p, now, reg, token.as_deref());
            }
        }
    }

    fn on_register_answer(
        &mut self,
        p: &Profile,
        now: Instant,
        reg: u8,
        token: Option<String>,
        auth_tries: u8,
        outcome: Outcome<'_>,
    ) {
        let Outcome::Final(status, resp) = outcome else {
            return self.fail(p, now, reg);
        };
        match status {
            200..=299 => {
                self.stats.registered.get_or_insert(now);
                self.failed = [false; MAX_REGISTRARS];
                self.attempts_left = p.max_attempts;
                match self.bound.replace(reg) {
                    Some(from) if from != reg => {
                        // FIG. 7: re-homed; leave the backup (RFC 3261 §10.2.2)
                        self.stats.rehomes += 1;
                        self.state = State::Unregister {
                            from,
                            auth_tries: 0,
                        };
                        self.send_register(p, now, from, 0, None);
                    }
                    _ => self.registered(p, now, reg, true),
                }
            }
            401 | 407 => {
                // RFC 3261 §22.2: answer the challenge (same attempt); a third
                // challenge in a row means the password is wrong
                if auth_tries >= 2 || !self.learn_challenge(reg, resp) {
                    return self.give_up();
                }
                self.state = State::Register {
                    reg,
                    token: token.clone(),
                    auth_tries: auth_tries + 1,
                };
                let expires = self.expires;
                self.send_register(p, now, reg, expires, token.as_deref());
            }
            423 => {
                // RFC 3261 §10.2.8: ask again with at least Min-Expires
                let min = resp
                    .header(&HeaderName::MinExpires)
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(m) if m > self.expires => {
                        self.expires = m;
                        self.attempt(p, now, reg, token.as_deref());
                    }
                    _ => self.give_up(),
                }
            }
            503 => match retry_after(resp) {
                // the implicit token: wait, then retry on the same registrar
                // (new transaction, same Call-ID, CSeq + 1; RFC 3261 §21.5.4)
                Some(wait) => {
                    self.state = State::Register {
                        reg,
                        token,
                        auth_tries: 0,
                    };
                    self.wake = Some(now + wait);
                }
                None => self.fail(p, now, reg),
            },
            408 | 500..=599 => self.fail(p, now, reg),
            _ => self.give_up(),
        }
    }

    /// Keeps the first supported challenge of a 401/407; false if there is none.
    fn learn_challenge(&mut self, reg: u8, resp: &Response) -> bool {
        let values = resp.headers.iter().filter(|h| {
            h.name == HeaderName::WwwAuthenticate || h.name == HeaderName::ProxyAuthenticate
        });
        match pick_challenge(values.map(|h| h.value.as_str())) {
            Some(ch) => {
                self.challenge[reg as usize] = Some((ch, 0));
                true
            }
            None => false,
        }
    }

    fn next_branch(&mut self, p: &Profile) -> String {
        self.branches += 1;
        format!("z9hG4bK-{:08x}-{}-{}", p.salt, self.index, self.branches)
    }

    fn start_tx(
        &mut self,
        p: &Profile,
        now: Instant,
        kind: Kind,
        reg: u8,
        branch: String,
        req: Bytes,
    ) {
        self.stats.first_attempt.get_or_insert(now);
        self.stats.requests += 1;
        let mut ct = ClientNonInvite::new(now, Reliability::Unreliable, p.timers, req);
        let dest = p.registrars[reg as usize];
        while let Some(b) = ct.poll_transmit() {
            self.out.push_back((dest, b));
        }
        self.tx = Some(Tx {
            kind,
            reg,
            branch,
            ct,
        });
    }

    /// OPTIONS to `reg`: a token request (token mode) or a ping (FIG. 7 step 176).
    fn send_options(&mut self, p: &Profile, now: Instant, reg: u8, token_request: bool) {
        self.ocseq[reg as usize] += 1;
        let branch = self.next_branch(p);
        let mut m = String::with_capacity(512);
        let user = p.user(self.index);
        let _ = write!(
            m,
            "OPTIONS sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};rport;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\n\
             To: <sip:{domain}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} OPTIONS\r\n",
            domain = p.domain,
            local = self.local,
            tag = p.tag(self.index, 'o', reg),
            call_id = p.call_id(self.index, 'o', reg),
            cseq = self.ocseq[reg as usize],
        );
        if token_request {
            let _ = write!(m, "{TOKEN_HEADER}: request\r\n");
            if self.priority {
                // a priority device's token request is granted whatever the load
                m.push_str("Resource-Priority: ets.0\r\n");
            }
        }
        m.push_str("User-Agent: tandem-sim\r\nContent-Length: 0\r\n\r\n");
        self.start_tx(p, now, Kind::Options, reg, branch, Bytes::from(m));
    }

    /// REGISTER to `reg` (Expires 0 unregisters), with credentials for the last
    /// challenge of that registrar if there was one.
    fn send_register(
        &mut self,
        p: &Profile,
        now: Instant,
        reg: u8,
        expires: u32,
        token: Option<&str>,
    ) {
        let r = reg as usize;
        self.cseq[r] += 1;
        let branch = self.next_branch(p);
        let user = p.user(self.index);
        let ruri = format!("sip:{}", p.domain);
        let mut m = String::with_capacity(768);
        let _ = write!(
            m,
            "REGISTER {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};rport;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{local}>;+sip.instance=\"<urn:uuid:{uuid}>\"\r\n\
             Expires: {expires}\r\n",
            domain = p.domain,
            local = self.local,
            tag = p.tag(self.index, 'r', reg),
            call_id = p.call_id(self.index, 'r', reg),
            cseq = self.cseq[r],
            uuid = p.instance(self.index),
        );
        if let Some((ch, nc)) = &mut self.challenge[r] {
            *nc += 1;
            let cnonce = format!("{:08x}{:x}", p.salt, self.branches);
            let auth = authorization(ch, "REGISTER", &ruri, &user, &p.password, &cnonce, *nc);
            let _ = write!(m, "Authorization: {auth}\r\n");
        }
        if let Some(t) = token {
            let _ = write!(m, "{TOKEN_HEADER}: {t}\r\n");
        }
        if self.priority {
            // RFC 4412: a node with namespace `ets` in priority_namespaces
            // serves these first
            m.push_str("Resource-Priority: ets.0\r\n");
        }
        m.push_str("User-Agent: tandem-sim\r\nContent-Length: 0\r\n\r\n");
        self.start_tx(p, now, Kind::Register, reg, branch, Bytes::from(m));
    }
}

/// `Retry-After: 12 (comment);duration=…` → 12 s (RFC 3261 §20.33).
fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.header(&HeaderName::RetryAfter)?.trim();
    let digits = v.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok().map(Duration::from_secs)
}

/// The token of a `Registration-Token: <hex>;expires=N` grant (32 hex digits).
fn granted_token(resp: &Response) -> Option<String> {
    let v = resp
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(TOKEN_HEADER))?
        .value
        .as_str();
    let hex = v.split(';').next()?.trim();
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::{challenges, parse_authorization, verify, Algorithm};
    use crate::sip::message::build::response_to;
    use crate::sip::message::{parse, Message, Request};
    use crate::sip::transaction::TimerConfig;

    const PRIMARY: &str = "127.0.0.1:5061";
    const SECONDARY: &str = "127.0.0.1:5062";

    fn profile(mode: Mode, registrars: &[&str]) -> Profile {
        Profile {
            registrars: registrars.iter().map(|r| r.parse().unwrap()).collect(),
            domain: "tandem.local".into(),
            user_prefix: "sim".into(),
            password: "pw".into(),
            expires: 3600,
            mode,
            ping_interval: Duration::from_secs(30),
            max_attempts: 5,
            timers: TimerConfig::default(),
            salt: 0xabcd,
        }
    }

    fn phone(p: &Profile, t0: Instant) -> Phone {
        Phone::new(p, 7, "127.0.0.1:40000".parse().unwrap(), false, t0)
    }

    /// Every request the phone sends up to `until`, with when and where, running
    /// its timers in virtual time.
    fn run_until(
        ph: &mut Phone,
        p: &Profile,
        until: Instant,
    ) -> Vec<(Instant, SocketAddr, Request)> {
        let mut sent = Vec::new();
        while let Some(t) = ph.poll_timeout().filter(|t| *t <= until) {
            ph.handle_timeout(p, t);
            sent.extend(drain(ph).into_iter().map(|(d, r)| (t, d, r)));
        }
        sent
    }

    fn drain(ph: &mut Phone) -> Vec<(SocketAddr, Request)> {
        let mut out = Vec::new();
        while let Some((dest, b)) = ph.poll_transmit() {
            match parse(&b).unwrap() {
                Message::Request(r) => out.push((dest, r)),
                Message::Response(_) => panic!("a phone sends requests"),
            }
        }
        out
    }

    fn answer(
        ph: &mut Phone,
        p: &Profile,
        now: Instant,
        req: &Request,
        status: u16,
        extra: &[(&str, &str)],
    ) {
        let mut resp = response_to(req, status, Some("reg"));
        for (n, v) in extra {
            resp.headers.push(HeaderName::from_wire(n), *v);
        }
        assert!(
            ph.handle_response(p, now, &resp),
            "the phone takes its answer"
        );
    }

    fn one(sent: Vec<(SocketAddr, Request)>) -> (SocketAddr, Request) {
        assert_eq!(sent.len(), 1, "{sent:?}");
        sent.into_iter().next().unwrap()
    }

    fn hdr<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Registers a fresh plain phone at `reg` through 401 and 200; returns the
    /// time it is registered.
    fn register_through_401(ph: &mut Phone, p: &Profile, now: Instant, req: &Request) {
        let [sha, md5] = challenges("tandem.local", "nonce1", false);
        answer(
            ph,
            p,
            now,
            req,
            401,
            &[("WWW-Authenticate", &sha), ("WWW-Authenticate", &md5)],
        );
        let (_, again) = one(drain(ph));
        assert!(hdr(&again, "Authorization").is_some());
        answer(ph, p, now, &again, 200, &[]);
    }

    #[test]
    fn answers_a_401_with_digest_credentials_for_the_first_supported_challenge() {
        let t0 = Instant::now();
        let p = profile(Mode::Plain, &[PRIMARY]);
        let mut ph = phone(&p, t0);
        let (dest, first) = one(run_until(&mut ph, &p, t0)
            .into_iter()
            .map(|(_, d, r)| (d, r))
            .collect());
        assert_eq!(dest, addr(PRIMARY));
        assert_eq!(first.method, crate::sip::message::Method::Register);
        assert!(hdr(&first, "Authorization").is_none());
        let contact = hdr(&first, "Contact").unwrap();
        assert!(
            contact.contains(&format!("+sip.instance=\"<urn:uuid:{}>\"", p.instance(7))),
            "{contact}"
        );
        // an unsupported algorithm first: the phone takes the MD5 one after it
        let odd = "Digest realm=\"tandem.local\", nonce=\"x\", algorithm=SHA-512-256, qop=\"auth\"";
        let md5 = crate::sip::auth::challenge("tandem.local", "n1", Algorithm::Md5, false);
        answer(
            &mut ph,
            &p,
            t0,
            &first,
            401,
            &[("WWW-Authenticate", odd), ("WWW-Authenticate", &md5)],
        );
        let (_, second) = one(drain(&mut ph));
        let auth = parse_authorization(hdr(&second, "Authorization").unwrap()).unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.algorithm),
            ("sim7", Algorithm::Md5)
        );
        assert_eq!(auth.uri, "sip:tandem.local");
        assert!(verify(&auth, "REGISTER", "pw"));
        // RFC 3261 §10.2.4: same Call-ID, CSeq + 1
        assert_eq!(second.call_id(), first.call_id());
        assert_eq!(second.cseq().unwrap().seq, first.cseq().unwrap().seq + 1);
        answer(&mut ph, &p, t0, &second, 200, &[]);
        assert_eq!(ph.bound(), Some(0));
        assert!(ph.is_settled(&p));
        assert_eq!(
            (ph.stats.status_401, ph.stats.attempts, ph.stats.requests),
            (1, 1, 2)
        );
        assert_eq!(ph.stats.registered, Some(t0));
        // the next REGISTER (the refresh, at half the expiry) carries credentials
        // at once, with the nonce-count moved on
        let refresh = run_until(&mut ph, &p, t0 + Duration::from_secs(1800));
        let auth = parse_authorization(hdr(&refresh[0].2, "Authorization").unwrap()).unwrap();
        assert_eq!(auth.nc, Some(2));
    }

    #[test]
    fn retransmits_on_timer_e_and_fails_over_to_the_secondary_on_timer_f() {
        let t0 = Instant::now();
        let p = profile(Mode::Plain, &[PRIMARY, SECONDARY]);
        let mut ph = phone(&p, t0);
        let sent = run_until(&mut ph, &p, t0 + Duration::from_secs(32));
        let to_primary: Vec<u128> = sent
            .iter()
            .filter(|(_, d, _)| *d == addr(PRIMARY))
            .map(|(t, _, _)| (*t - t0).as_millis())
            .collect();
        // RFC 3261 §17.1.2.2: T1 doubling to T2, then every T2, until Timer F (64·T1)
        assert_eq!(
            to_primary,
            [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        // Timer F at 32 s: the primary stopped answering, try the secondary
        let (t, dest, req) = sent.last().unwrap();
        assert_eq!((*t - t0, *dest), (Duration::from_secs(32), addr(SECONDARY)));
        assert_eq!(ph.stats.timeouts, 1);
        assert_eq!(ph.stats.failovers, 1);
        assert_eq!(ph.stats.retransmissions, 10);
        assert_eq!(ph.stats.requests, 2);
        assert_ne!(
            req.call_id(),
            sent[0].2.call_id(),
            "one Call-ID per registrar"
        );
        register_through_401(&mut ph, &p, *t, req);
        assert_eq!(ph.bound(), Some(1));
        assert!(
            !ph.is_settled(&p),
            "on a backup, the phone waits to re-home"
        );
    }

    #[test]
    fn after_a_provisional_retransmits_every_t2_and_gives_up_when_every_registrar_failed() {
        let t0 = Instant::now();
        let p = profile(Mode::Plain, &[PRIMARY]);
        let mut ph = phone(&p, t0);
        let (_, _, req) = run_until(&mut ph, &p, t0).pop().unwrap();
        answer(&mut ph, &p, t0 + Duration::from_millis(100), &req, 100, &[]);
        let times: Vec<u128> = run_until(&mut ph, &p, t0 + Duration::from_secs(40))
            .iter()
            .map(|(t, _, _)| (*t - t0).as_millis())
            .collect();
        // the first Timer E still fires at T1, then every T2 (§17.1.2.2 Proceeding)
        assert_eq!(times, [500, 4500, 8500, 12500, 16500, 20500, 24500, 28500]);
        assert!(ph.gave_up() && ph.is_settled(&p));
        assert_eq!(ph.bound(), None);
    }

    #[test]
    fn waits_retry_after_on_a_503_then_retries_the_same_registrar() {
        let t0 = Instant::now();
        let p = profile(Mode::Plain, &[PRIMARY, SECONDARY]);
        let mut ph = phone(&p, t0);
        let (_, _, first) = run_until(&mut ph, &p, t0).pop().unwrap();
        answer(&mut ph, &p, t0, &first, 503, &[("Retry-After", "7")]);
        assert_eq!(ph.stats.status_503, 1);
        assert_eq!(ph.poll_timeout(), Some(t0 + Duration::from_secs(7)));
        assert!(run_until(&mut ph, &p, t0 + Duration::from_millis(6999)).is_empty());
        let (t, dest, retry) = run_until(&mut ph, &p, t0 + Duration::from_secs(7))
            .pop()
            .unwrap();
        assert_eq!((t, dest), (t0 + Duration::from_secs(7), addr(PRIMARY)));
        assert_eq!(retry.call_id(), first.call_id());
        assert_eq!(retry.cseq().unwrap().seq, first.cseq().unwrap().seq + 1);
        assert_ne!(
            retry.top_via().unwrap().branch(),
            first.top_via().unwrap().branch()
        );
        assert_eq!(ph.stats.attempts, 2);
        // a 503 without Retry-After: the next server (RFC 3263 §4.3)
        answer(&mut ph, &p, t, &retry, 503, &[]);
        let (dest, _) = one(drain(&mut ph));
        assert_eq!(dest, addr(SECONDARY));
    }

    #[test]
    fn re_homes_to_the_primary_with_a_token_and_unregisters_from_the_secondary() {
        let t0 = Instant::now();
        let p = profile(Mode::Token, &[PRIMARY, SECONDARY, "127.0.0.1:5063"]);
        let mut ph = phone(&p, t0);
        // the primary is down: the token request times out, then the secondary
        let sent = run_until(&mut ph, &p, t0 + Duration::from_secs(32));
        assert!(sent
            .iter()
            .any(|(_, d, r)| *d == addr(PRIMARY) && hdr(r, TOKEN_HEADER) == Some("request")));
        let (t, dest, ask) = sent.last().unwrap().clone();
        assert_eq!(dest, addr(SECONDARY));
        assert_eq!(hdr(&ask, TOKEN_HEADER), Some("request"));
        // no admission control there: a 200 without a token, register at once
        answer(&mut ph, &p, t, &ask, 200, &[]);
        let (_, at_secondary) = one(drain(&mut ph));
        assert_eq!(hdr(&at_secondary, TOKEN_HEADER), None);
        register_through_401(&mut ph, &p, t, &at_secondary);
        assert_eq!(ph.bound(), Some(1));
        // ping the primary every ping interval; it does not answer the first one
        let pings = run_until(&mut ph, &p, t + Duration::from_secs(30));
        let (pt, pdest, ping) = pings.last().unwrap().clone();
        assert_eq!((pt, pdest), (t + Duration::from_secs(30), addr(PRIMARY)));
        assert_eq!(ping.method, crate::sip::message::Method::Options);
        assert_eq!(hdr(&ping, TOKEN_HEADER), None, "a ping asks for no token");
        let later = run_until(&mut ph, &p, pt + Duration::from_secs(62));
        let (pt, _, ping) = later
            .iter()
            .rfind(|(t, d, _)| *d == addr(PRIMARY) && *t == pt + Duration::from_secs(62))
            .cloned()
            .expect("the next ping, an interval after the last one timed out");
        // it answers: ask it for a token, get one, register with it
        answer(&mut ph, &p, pt, &ping, 200, &[]);
        let (dest, ask) = one(drain(&mut ph));
        assert_eq!(
            (dest, hdr(&ask, TOKEN_HEADER)),
            (addr(PRIMARY), Some("request"))
        );
        let token = "3f1c0a9e5d7b42c1a8e06b5f9d2c4e71";
        answer(
            &mut ph,
            &p,
            pt,
            &ask,
            200,
            &[(TOKEN_HEADER, &format!("{token};expires=30"))],
        );
        let (dest, reg) = one(drain(&mut ph));
        assert_eq!(
            (dest, hdr(&reg, TOKEN_HEADER)),
            (addr(PRIMARY), Some(token))
        );
        let [sha, _] = challenges("tandem.local", "n2", false);
        answer(&mut ph, &p, pt, &reg, 401, &[("WWW-Authenticate", &sha)]);
        let (_, reg2) = one(drain(&mut ph));
        assert_eq!(
            hdr(&reg2, TOKEN_HEADER),
            Some(token),
            "the token stays on the answer to the 401"
        );
        answer(&mut ph, &p, pt, &reg2, 200, &[]);
        // leave the secondary: REGISTER Expires: 0 on its Call-ID, with credentials
        let (dest, bye) = one(drain(&mut ph));
        assert_eq!(dest, addr(SECONDARY));
        assert_eq!(hdr(&bye, "Expires"), Some("0"));
        assert_eq!(bye.call_id(), at_secondary.call_id());
        assert!(hdr(&bye, "Authorization").is_some());
        answer(&mut ph, &p, pt, &bye, 200, &[]);
        assert_eq!(ph.bound(), Some(0));
        assert!(ph.is_settled(&p));
        assert_eq!(
            (ph.stats.rehomes, ph.stats.tokens, ph.stats.failovers),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_refused_token_request_is_asked_again_after_retry_after() {
        let t0 = Instant::now();
        let p = profile(Mode::Token, &[PRIMARY]);
        let mut ph = phone(&p, t0);
        let (_, _, ask) = run_until(&mut ph, &p, t0).pop().unwrap();
        answer(&mut ph, &p, t0, &ask, 503, &[("Retry-After", "12")]);
        assert!(drain(&mut ph).is_empty());
        let (t, _, again) = run_until(&mut ph, &p, t0 + Duration::from_secs(12))
            .pop()
            .unwrap();
        assert_eq!(t, t0 + Duration::from_secs(12));
        assert_eq!(hdr(&again, TOKEN_HEADER), Some("request"));
        assert_eq!(again.call_id(), ask.call_id());
        assert_eq!(
            ph.stats.attempts, 0,
            "asking for a token is not a REGISTER attempt"
        );
    }

    #[test]
    fn priority_phones_send_resource_priority_and_call_ids_name_the_phone() {
        let t0 = Instant::now();
        let p = profile(Mode::Plain, &[PRIMARY]);
        let mut ph = Phone::new(&p, 42, addr("127.0.0.1:40000"), true, t0);
        let (_, _, req) = run_until(&mut ph, &p, t0).pop().unwrap();
        assert_eq!(hdr(&req, "Resource-Priority"), Some("ets.0"));
        assert_eq!(p.phone_of(req.call_id().unwrap()), Some(42));
        let other = Profile {
            salt: 1,
            ..p.clone()
        };
        assert_eq!(
            other.phone_of(req.call_id().unwrap()),
            None,
            "another run's Call-ID"
        );
        assert_eq!(p.instance(42), p.instance(42));
        assert_ne!(p.instance(42), p.instance(43));
    }
}
