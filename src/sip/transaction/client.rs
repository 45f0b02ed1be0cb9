//! Client transactions, RFC 3261 §17.1 (INVITE per RFC 6026).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use super::{valid_status, Reliability, TimerConfig};

/// Illegal calls into a client transaction.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    #[error("status code {0} is outside 100..=699")]
    InvalidStatus(u16),
}

/// Reported to the TU through `poll_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A 1xx; every one is passed up (§17.1.1.2, §17.1.2.2).
    Provisional(u16, Bytes),
    /// A final response. For INVITE, each 2xx received in Accepted is passed up too
    /// (RFC 6026 §8.4), so the TU can ACK retransmitted and forked 2xx.
    Final(u16, Bytes),
    /// Timer B or F fired with no final response.
    Timeout,
    /// `handle_transport_error` was called (§17.1.4).
    TransportError,
    /// The transaction reached Terminated; emitted exactly once, last.
    Terminated,
}

/// RFC 3261 §17.1.2.2, Figure 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// RFC 3261 §17.1.1.2, Figure 5, as updated by RFC 6026 §7.2 (Accepted state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    Calling,
    Proceeding,
    Completed,
    /// RFC 6026: a 2xx arrived; further 2xx go to the TU until Timer M.
    Accepted,
    Terminated,
}

/// A retransmission timer: deadline and the interval that produced it.
#[derive(Debug, Clone, Copy)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}

fn min_deadline(retransmit: Option<Retransmit>, end: Option<Instant>) -> Option<Instant> {
    [retransmit.map(|r| r.at), end].into_iter().flatten().min()
}

/// Non-INVITE client transaction, RFC 3261 §17.1.2.
///
/// Timer E retransmits the request (T1 doubling to T2; T2 once Proceeding) on
/// unreliable transports, Timer F (64*T1) times out, Timer K (T4 unreliable, 0
/// reliable) absorbs retransmitted finals in Completed.
#[derive(Debug)]
pub struct ClientNonInvite {
    request: Bytes,
    timers: TimerConfig,
    reliability: Reliability,
    state: ClientNonInviteState,
    timer_e: Option<Retransmit>,
    /// Timer F (Trying/Proceeding) or K (Completed).
    end: Option<Instant>,
    transmits: VecDeque<Bytes>,
    events: VecDeque<ClientEvent>,
}

impl ClientNonInvite {
    /// Queues the first transmission of `request` and arms Timers E and F.
    pub fn new(
        now: Instant,
        reliability: Reliability,
        timers: TimerConfig,
        request: Bytes,
    ) -> Self {
        let timer_e = (!reliability.is_reliable()).then(|| Retransmit {
            at: now + timers.t1,
            interval: timers.t1,
        });
        Self {
            transmits: VecDeque::from([request.clone()]),
            request,
            timers,
            reliability,
            state: ClientNonInviteState::Trying,
            timer_e,
            end: Some(now + timers.t1_x64()),
            events: VecDeque::new(),
        }
    }

    /// A response matched this transaction (§17.1.3). Responses after the first
    /// final are absorbed.
    pub fn handle_response(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Bytes,
    ) -> Result<(), ClientError> {
        use ClientNonInviteState::*;
        if !valid_status(status) {
            return Err(ClientError::InvalidStatus(status));
        }
        match self.state {
            Trying | Proceeding if status < 200 => {
                self.state = Proceeding;
                self.events
                    .push_back(ClientEvent::Provisional(status, bytes));
            }
            Trying | Proceeding => {
                self.events.push_back(ClientEvent::Final(status, bytes));
                self.timer_e = None;
                if self.reliability.is_reliable() {
                    self.terminate(); // Timer K = 0
                } else {
                    self.state = Completed;
                    self.end = Some(now + self.timers.t4); // Timer K
                }
            }
            Completed | Terminated => {}
        }
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        use ClientNonInviteState::*;
        match self.state {
            Trying | Proceeding => {
                // F wins over a simultaneous E.
                if due(self.end, now) {
                    self.events.push_back(ClientEvent::Timeout);
                    self.terminate();
                    return;
                }
                if let Some(e) = self.timer_e.filter(|e| e.at <= now) {
                    self.transmits.push_back(self.request.clone());
                    // §17.1.2.2: doubling capped at T2 in Trying, T2 flat in Proceeding.
                    let interval = if self.state == Proceeding {
                        self.timers.t2
                    } else {
                        self.timers.next_capped(e.interval)
                    };
                    self.timer_e = Some(Retransmit {
                        at: now + interval,
                        interval,
                    });
                }
            }
            Completed if due(self.end, now) => self.terminate(),
            _ => {}
        }
    }

    /// The transport failed to send the request (§17.1.4): Terminated.
    pub fn handle_transport_error(&mut self, now: Instant) {
        let _ = now;
        if !self.is_terminated() {
            self.events.push_back(ClientEvent::TransportError);
            self.terminate();
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        min_deadline(self.timer_e, self.end)
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientNonInviteState::Terminated
    }

    fn terminate(&mut self) {
        self.state = ClientNonInviteState::Terminated;
        self.timer_e = None;
        self.end = None;
        self.events.push_back(ClientEvent::Terminated);
    }
}

/// INVITE client transaction, RFC 3261 §17.1.1 with RFC 6026 §7.2.
///
/// ACK for a non-2xx final (§17.1.1.3) is built by the caller, since this layer
/// cannot build SIP: [`ClientInvite::handle_response`] takes a closure that is called
/// at most once, on the first 300–699 response, where the caller has the parsed
/// response (for the To tag) in scope. The ACK is transmitted then and again for
/// each retransmitted final. On a 2xx we implement RFC 6026: Accepted for Timer M
/// (64*T1), passing every 2xx to the TU, which sends the 2xx ACK itself (§13.2.2.4).
/// No timer runs in Proceeding: the TU bounds it (Timer C, CANCEL).
#[derive(Debug)]
pub struct ClientInvite {
    request: Bytes,
    ack: Option<Bytes>,
    timers: TimerConfig,
    reliability: Reliability,
    state: ClientInviteState,
    timer_a: Option<Retransmit>,
    /// Timer B (Calling), D (Completed) or M (Accepted).
    end: Option<Instant>,
    transmits: VecDeque<Bytes>,
    events: VecDeque<ClientEvent>,
}

impl ClientInvite {
    /// Queues the first transmission of `request` and arms Timers A and B.
    pub fn new(
        now: Instant,
        reliability: Reliability,
        timers: TimerConfig,
        request: Bytes,
    ) -> Self {
        let timer_a = (!reliability.is_reliable()).then(|| Retransmit {
            at: now + timers.t1,
            interval: timers.t1,
        });
        Self {
            transmits: VecDeque::from([request.clone()]),
            request,
            ack: None,
            timers,
            reliability,
            state: ClientInviteState::Calling,
            timer_a,
            end: Some(now + timers.t1_x64()),
            events: VecDeque::new(),
        }
    }

    /// A response matched this transaction (§17.1.3). `make_ack` builds the ACK
    /// for a non-2xx final; it is called only for the first 300–699 response.
    pub fn handle_response(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Bytes,
        make_ack: impl FnOnce() -> Bytes,
    ) -> Result<(), ClientError> {
        use ClientInviteState::*;
        if !valid_status(status) {
            return Err(ClientError::InvalidStatus(status));
        }
        match (self.state, status) {
            (Calling | Proceeding, 100..=199) => {
                // §17.1.1.2: stop retransmitting; Timer B only matters in Calling.
                self.state = Proceeding;
                self.timer_a = None;
                self.end = None;
                self.events
                    .push_back(ClientEvent::Provisional(status, bytes));
            }
            (Calling | Proceeding, 200..=299) => {
                self.state = Accepted;
                self.timer_a = None;
                self.end = Some(now + self.timers.t1_x64()); // Timer M
                self.events.push_back(ClientEvent::Final(status, bytes));
            }
            (Calling | Proceeding, _) => {
                self.timer_a = None;
                let ack = make_ack();
                self.transmits.push_back(ack.clone());
                self.events.push_back(ClientEvent::Final(status, bytes));
                if self.reliability.is_reliable() {
                    self.terminate(); // Timer D = 0
                } else {
                    self.ack = Some(ack);
                    self.state = Completed;
                    self.end = Some(now + self.timers.timer_d());
                }
            }
            // Retransmitted non-2xx final: resend the ACK, don't bother the TU.
            (Completed, 300..=699) => {
                if let Some(ack) = &self.ack {
                    self.transmits.push_back(ack.clone());
                }
            }
            (Accepted, 200..=299) => self.events.push_back(ClientEvent::Final(status, bytes)),
            _ => {}
        }
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        use ClientInviteState::*;
        match self.state {
            Calling => {
                // B wins over a simultaneous A.
                if due(self.end, now) {
                    self.events.push_back(ClientEvent::Timeout);
                    self.terminate();
                    return;
                }
                if let Some(a) = self.timer_a.filter(|a| a.at <= now) {
                    self.transmits.push_back(self.request.clone());
                    // §17.1.1.2: Timer A doubles with no T2 cap (unlike E and G).
                    let interval = a.interval * 2;
                    self.timer_a = Some(Retransmit {
                        at: now + interval,
                        interval,
                    });
                }
            }
            Completed | Accepted if due(self.end, now) => self.terminate(),
            _ => {}
        }
    }

    /// The transport failed (§17.1.4): Terminated.
    pub fn handle_transport_error(&mut self, now: Instant) {
        let _ = now;
        if !self.is_terminated() {
            self.events.push_back(ClientEvent::TransportError);
            self.terminate();
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        min_deadline(self.timer_a, self.end)
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientInviteState::Terminated
    }

    fn terminate(&mut self) {
        self.state = ClientInviteState::Terminated;
        self.timer_a = None;
        self.end = None;
        self.ack = None;
        self.events.push_back(ClientEvent::Terminated);
    }
}

/// What a transaction user drives in either client transaction, so one that
/// holds both kinds (a proxy's branches: INVITEs and their CANCELs) needs no
/// per-kind copy of every call.
pub trait ClientTransaction {
    /// A response matched this transaction (§17.1.3). `make_ack` builds the ACK
    /// for a non-2xx final to an INVITE (§17.1.1.3); a non-INVITE transaction
    /// never calls it.
    fn on_response(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Bytes,
        make_ack: &mut dyn FnMut() -> Bytes,
    ) -> Result<(), ClientError>;
    fn handle_timeout(&mut self, now: Instant);
    fn handle_transport_error(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_transmit(&mut self) -> Option<Bytes>;
    fn poll_event(&mut self) -> Option<ClientEvent>;
    fn is_terminated(&self) -> bool;
}

impl ClientTransaction for ClientNonInvite {
    fn on_response(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Bytes,
        _make_ack: &mut dyn FnMut() -> Bytes,
    ) -> Result<(), ClientError> {
        ClientNonInvite::handle_response(self, now, status, bytes)
    }
    fn handle_timeout(&mut self, now: Instant) {
        ClientNonInvite::handle_timeout(self, now)
    }
    fn handle_transport_error(&mut self, now: Instant) {
        ClientNonInvite::handle_transport_error(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        ClientNonInvite::poll_timeout(self)
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        ClientNonInvite::poll_transmit(self)
    }
    fn poll_event(&mut self) -> Option<ClientEvent> {
        ClientNonInvite::poll_event(self)
    }
    fn is_terminated(&self) -> bool {
        ClientNonInvite::is_terminated(self)
    }
}

impl ClientTransaction for ClientInvite {
    fn on_response(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Bytes,
        make_ack: &mut dyn FnMut() -> Bytes,
    ) -> Result<(), ClientError> {
        ClientInvite::handle_response(self, now, status, bytes, make_ack)
    }
    fn handle_timeout(&mut self, now: Instant) {
        ClientInvite::handle_timeout(self, now)
    }
    fn handle_transport_error(&mut self, now: Instant) {
        ClientInvite::handle_transport_error(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        ClientInvite::poll_timeout(self)
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        ClientInvite::poll_transmit(self)
    }
    fn poll_event(&mut self) -> Option<ClientEvent> {
        ClientInvite::poll_event(self)
    }
    fn is_terminated(&self) -> bool {
        ClientInvite::is_terminated(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const S: fn(u64) -> Duration = Duration::from_secs;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn no_ack() -> Bytes {
        panic!("ACK must not be built here")
    }

    /// Runs every timer exactly at its deadline until none is left (or `until`),
    /// returning the offsets (ms from `t0`) at which a transmission was queued.
    fn run_timers(
        t0: Instant,
        until: Instant,
        mut poll_timeout: impl FnMut() -> Option<Instant>,
        mut fire: impl FnMut(Instant) -> usize,
    ) -> Vec<u128> {
        let mut out = Vec::new();
        while let Some(at) = poll_timeout().filter(|&at| at <= until) {
            for _ in 0..fire(at) {
                out.push((at - t0).as_millis());
            }
        }
        out
    }

    fn nict(rel: Reliability) -> (Instant, ClientNonInvite) {
        let t0 = Instant::now();
        let mut t = ClientNonInvite::new(t0, rel, TimerConfig::default(), b("REQ"));
        assert_eq!(t.poll_transmit(), Some(b("REQ")));
        assert_eq!(t.poll_transmit(), None);
        (t0, t)
    }

    fn ict(rel: Reliability) -> (Instant, ClientInvite) {
        let t0 = Instant::now();
        let mut t = ClientInvite::new(t0, rel, TimerConfig::default(), b("INV"));
        assert_eq!(t.poll_transmit(), Some(b("INV")));
        assert_eq!(t.poll_transmit(), None);
        (t0, t)
    }

    fn events_of(mut poll: impl FnMut() -> Option<ClientEvent>) -> Vec<ClientEvent> {
        std::iter::from_fn(&mut poll).collect()
    }

    // ---- non-INVITE --------------------------------------------------------

    #[test]
    fn nict_timer_e_doubles_to_t2_then_timer_f() {
        let (t0, t) = nict(Reliability::Unreliable);
        let t = std::cell::RefCell::new(t);
        let sent = run_timers(
            t0,
            t0 + S(100),
            || t.borrow().poll_timeout(),
            |at| {
                let mut t = t.borrow_mut();
                t.handle_timeout(at);
                std::iter::from_fn(|| t.poll_transmit()).count()
            },
        );
        assert_eq!(
            sent,
            [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        let mut t = t.into_inner();
        assert!(t.is_terminated());
        assert_eq!(
            events_of(|| t.poll_event()),
            [ClientEvent::Timeout, ClientEvent::Terminated]
        );
    }

    #[test]
    fn nict_proceeding_retransmits_every_t2() {
        let (t0, mut t) = nict(Reliability::Unreliable);
        t.handle_response(t0 + MS(100), 100, b("100")).unwrap();
        assert_eq!(t.state(), ClientNonInviteState::Proceeding);
        assert_eq!(
            t.poll_event(),
            Some(ClientEvent::Provisional(100, b("100")))
        );
        // The pending E (T1) still fires, then resets to T2.
        assert_eq!(t.poll_timeout(), Some(t0 + MS(500)));
        t.handle_timeout(t0 + MS(500));
        assert_eq!(t.poll_transmit(), Some(b("REQ")));
        assert_eq!(t.poll_timeout(), Some(t0 + MS(4500)));
        t.handle_timeout(t0 + MS(4500));
        assert_eq!(t.poll_transmit(), Some(b("REQ")));
        assert_eq!(t.poll_timeout(), Some(t0 + MS(8500)));
        // Each provisional goes up.
        t.handle_response(t0 + MS(5000), 100, b("100bis")).unwrap();
        assert_eq!(
            t.poll_event(),
            Some(ClientEvent::Provisional(100, b("100bis")))
        );
        // Timer F still bounds Proceeding.
        t.handle_timeout(t0 + S(32));
        assert_eq!(
            events_of(|| t.poll_event()),
            [ClientEvent::Timeout, ClientEvent::Terminated]
        );
    }

    #[test]
    fn nict_final_then_timer_k_absorbs_retransmissions() {
        let (t0, mut t) = nict(Reliability::Unreliable);
        let at = t0 + MS(700);
        t.handle_response(at, 200, b("200")).unwrap();
        assert_eq!(t.state(), ClientNonInviteState::Completed);
        assert_eq!(t.poll_event(), Some(ClientEvent::Final(200, b("200"))));
        // Only Timer K = T4 remains; E and F are gone.
        assert_eq!(t.poll_timeout(), Some(at + S(5)));
        t.handle_response(at + MS(10), 200, b("200")).unwrap();
        t.handle_response(at + MS(20), 180, b("180")).unwrap();
        t.handle_timeout(t0 + MS(1500));
        assert_eq!(t.poll_event(), None);
        assert_eq!(t.poll_transmit(), None);
        t.handle_timeout(at + S(5) - MS(1));
        assert!(!t.is_terminated());
        t.handle_timeout(at + S(5));
        assert!(t.is_terminated());
        assert_eq!(t.poll_event(), Some(ClientEvent::Terminated));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn nict_reliable_no_timer_e_and_k_zero() {
        let (t0, mut t) = nict(Reliability::Reliable);
        assert_eq!(t.poll_timeout(), Some(t0 + S(32))); // F only
        t.handle_timeout(t0 + MS(500));
        assert_eq!(t.poll_transmit(), None);
        t.handle_response(t0 + S(1), 404, b("404")).unwrap();
        assert!(t.is_terminated());
        assert_eq!(
            events_of(|| t.poll_event()),
            [ClientEvent::Final(404, b("404")), ClientEvent::Terminated]
        );
    }

    #[test]
    fn nict_reliable_timer_f() {
        let (t0, mut t) = nict(Reliability::Reliable);
        t.handle_timeout(t0 + S(32) - MS(1));
        assert_eq!(t.poll_event(), None);
        t.handle_timeout(t0 + S(32));
        assert_eq!(
            events_of(|| t.poll_event()),
            [ClientEvent::Timeout, ClientEvent::Terminated]
        );
    }

    #[test]
    fn nict_invalid_status_and_transport_error() {
        let (t0, mut t) = nict(Reliability::Unreliable);
        assert_eq!(
            t.handle_response(t0, 700, b("x")),
            Err(ClientError::InvalidStatus(700))
        );
        assert_eq!(t.state(), ClientNonInviteState::Trying);
        t.handle_transport_error(t0);
        t.handle_transport_error(t0);
        assert_eq!(
            events_of(|| t.poll_event()),
            [ClientEvent::TransportError, ClientEvent::Terminated]
        );
        // Late responses are absorbed.
        t.handle_response(t0, 200, b("200")).unwrap();
        assert_eq!(t.poll_event(), None);
    }

    // ---- INVITE ------------------------------------------------------------

    #[test]
    fn ict_timer_a_doubles_uncapped_then_timer_b() {
        let (t0, t) = ict(Reliability::Unreliable);
        let t = std::cell::RefCell::new(t);
        let sent = run_timers(
            t0,
            t0 + S(100),
            || t.borrow().poll_timeout(),
            |at| {
                let mut t = t.borrow_mut();
                t.handle_timeout(at);
                std::iter::from_fn(|| t.poll_transmit()).count()
            },
        );
        // 0.5, 1, 2, 4, 8, 16: §17.1.1.2 sets no T2 cap on Timer A.
        assert_eq!(sent, [500, 1500, 3500, 7500, 15500, 31500]);
        let mut t = t.into_inner();
        assert!(t.is_terminated());
        assert_eq!(
            events_of(|| t.poll_event()),
            [ClientEvent::Timeout, ClientEvent::Terminated]
        );
    }

    #[test]
    fn ict_provisional_stops_timers_a_and_b() {
        let (t0, mut t) = ict(Reliability::Unreliable);
        t.handle_timeout(t0 + MS(500));
        assert_eq!(t.poll_transmit(), Some(b("INV")));
        t.handle_response(t0 + MS(600), 100, b("100"), no_ack)
            .unwrap();
        t.handle_response(t0 + MS(700), 180, b("180"), no_ack)
            .unwrap();
        assert_eq!(t.state(), ClientInviteState::Proceeding);
        assert_eq!(
            events_of(|| t.poll_event()),
            [
                ClientEvent::Provisional(100, b("100")),
                ClientEvent::Provisional(180, b("180"))
            ]
        );
        assert_eq!(t.poll_timeout(), None);
        t.handle_timeout(t0 + S(100));
        assert_eq!(t.poll_transmit(), None);
        assert_eq!(t.poll_event(), None);
        assert_eq!(t.state(), ClientInviteState::Proceeding);
    }

    #[test]
    fn ict_non_2xx_sends_ack_and_absorbs_retransmissions_until_timer_d() {
        let (t0, mut t) = ict(Reliability::Unreliable);
        let built = Cell::new(0);
        let make_ack = || {
            built.set(built.get() + 1);
            b("ACK")
        };
        t.handle_response(t0 + MS(100), 180, b("180"), make_ack)
            .unwrap();
        assert_eq!(built.get(), 0);
        let at = t0 + MS(200);
        t.handle_response(at, 486, b("486"), make_ack).unwrap();
        assert_eq!(built.get(), 1);
        assert_eq!(t.state(), ClientInviteState::Completed);
        assert_eq!(t.poll_transmit(), Some(b("ACK")));
        assert_eq!(
            events_of(|| t.poll_event()),
            [
                ClientEvent::Provisional(180, b("180")),
                ClientEvent::Final(486, b("486"))
            ]
        );
        assert_eq!(t.poll_timeout(), Some(at + S(32))); // Timer D

        // A retransmitted final is answered with the stored ACK, not passed up.
        t.handle_response(at + MS(500), 486, b("486"), make_ack)
            .unwrap();
        assert_eq!(built.get(), 1);
        assert_eq!(t.poll_transmit(), Some(b("ACK")));
        assert_eq!(t.poll_event(), None);

        t.handle_timeout(at + S(32) - MS(1));
        assert_eq!(t.state(), ClientInviteState::Completed);
        t.handle_timeout(at + S(32));
        assert!(t.is_terminated());
        assert_eq!(t.poll_event(), Some(ClientEvent::Terminated));
        t.handle_response(at + S(33), 486, b("486"), make_ack)
            .unwrap();
        assert_eq!(t.poll_transmit(), None);
    }

    #[test]
    fn ict_reliable_no_timer_a_and_d_zero() {
        let (t0, mut t) = ict(Reliability::Reliable);
        assert_eq!(t.poll_timeout(), Some(t0 + S(32))); // B only
        t.handle_timeout(t0 + MS(500));
        assert_eq!(t.poll_transmit(), None);
        t.handle_response(t0 + S(1), 503, b("503"), || b("ACK"))
            .unwrap();
        assert_eq!(t.poll_transmit(), Some(b("ACK")));
        assert!(t.is_terminated());
        assert_eq!(
            events_of(|| t.poll_event()),
            [ClientEvent::Final(503, b("503")), ClientEvent::Terminated]
        );
    }

    #[test]
    fn ict_reliable_timer_b() {
        let (t0, mut t) = ict(Reliability::Reliable);
        t.handle_timeout(t0 + S(32) - MS(1));
        assert_eq!(t.poll_event(), None);
        t.handle_timeout(t0 + S(32));
        assert_eq!(
            events_of(|| t.poll_event()),
            [ClientEvent::Timeout, ClientEvent::Terminated]
        );
    }

    #[test]
    fn ict_2xx_accepted_passes_every_2xx_until_timer_m() {
        for rel in [Reliability::Unreliable, Reliability::Reliable] {
            let (t0, mut t) = ict(rel);
            let at = t0 + MS(300);
            t.handle_response(at, 200, b("200a"), no_ack).unwrap();
            assert_eq!(t.state(), ClientInviteState::Accepted);
            assert_eq!(t.poll_transmit(), None); // the TU ACKs a 2xx
            assert_eq!(t.poll_timeout(), Some(at + S(32))); // Timer M
                                                            // A retransmitted or forked 2xx goes up; anything else is absorbed.
            t.handle_response(at + MS(1), 200, b("200b"), no_ack)
                .unwrap();
            t.handle_response(at + MS(2), 180, b("180"), no_ack)
                .unwrap();
            t.handle_response(at + MS(3), 486, b("486"), no_ack)
                .unwrap();
            // Timer A no longer runs.
            t.handle_timeout(t0 + MS(500));
            assert_eq!(t.poll_transmit(), None);
            assert_eq!(
                events_of(|| t.poll_event()),
                [
                    ClientEvent::Final(200, b("200a")),
                    ClientEvent::Final(200, b("200b"))
                ]
            );
            t.handle_timeout(at + S(32));
            assert!(t.is_terminated());
            assert_eq!(t.poll_event(), Some(ClientEvent::Terminated));
        }
    }

    #[test]
    fn ict_invalid_status_and_transport_error() {
        let (t0, mut t) = ict(Reliability::Unreliable);
        assert_eq!(
            t.handle_response(t0, 0, b("x"), no_ack),
            Err(ClientError::InvalidStatus(0))
        );
        assert_eq!(t.state(), ClientInviteState::Calling);
        t.handle_transport_error(t0);
        assert!(t.is_terminated());
        assert_eq!(
            events_of(|| t.poll_event()),
            [ClientEvent::TransportError, ClientEvent::Terminated]
        );
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn late_timeout_does_not_burst() {
        let (t0, mut t) = ict(Reliability::Unreliable);
        t.handle_timeout(t0 + S(5)); // A was due at 0.5 s
        assert_eq!(std::iter::from_fn(|| t.poll_transmit()).count(), 1);
        assert_eq!(t.poll_timeout(), Some(t0 + S(6)));
    }
}
