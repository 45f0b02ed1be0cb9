//! Server transactions, RFC 3261 §17.2 (INVITE per RFC 6026).
//!
//! Each machine is a compact "core" (also stored per entry by
//! [`super::table::ServerTransactions`]) wrapped with output queues.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use super::{valid_status, Reliability, TimerConfig};

/// Illegal calls into a server transaction.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ServerError {
    #[error("status code {0} is outside 100..=699")]
    InvalidStatus(u16),
    #[error("a final response was already sent")]
    FinalAlreadySent,
    #[error("the transaction is terminated")]
    Terminated,
}

/// Reported to the TU through `poll_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// Timer H fired: the ACK for a non-2xx final never came (§17.2.1).
    AckTimeout,
    /// `handle_transport_error` was called (§17.2.4).
    TransportError,
    /// The transaction reached Terminated; emitted exactly once, last.
    Terminated,
}

/// RFC 3261 §17.2.2, Figure 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// RFC 3261 §17.2.1, Figure 7, as updated by RFC 6026 §7.1 (Accepted state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    Proceeding,
    Completed,
    Confirmed,
    /// RFC 6026: a 2xx was sent; INVITE retransmissions are absorbed until Timer L.
    Accepted,
    Terminated,
}

/// Result of a timer expiry in a core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fired {
    Nothing,
    /// Timer G: resend the final response.
    Retransmit(Bytes),
    /// Timer H: now Terminated.
    AckTimeout,
    /// Timer I, J or L: now Terminated.
    Terminated,
}

fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}

// ---------------------------------------------------------------------------
// Cores: state + timers only. Timer values come from a `TimerConfig` passed in so
// that a table of hundreds of thousands of entries stores it once.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) struct NonInviteCore {
    /// Last response sent, resent on request retransmissions.
    last: Option<Bytes>,
    timer_j: Option<Instant>,
    state: ServerNonInviteState,
    reliability: Reliability,
}

impl NonInviteCore {
    pub(crate) fn new(reliability: Reliability) -> Self {
        Self {
            last: None,
            timer_j: None,
            state: ServerNonInviteState::Trying,
            reliability,
        }
    }

    pub(crate) fn state(&self) -> ServerNonInviteState {
        self.state
    }

    /// [retransmit timer, state-ending timer].
    pub(crate) fn timers(&self) -> [Option<Instant>; 2] {
        [None, self.timer_j]
    }

    /// §17.2.2: discarded in Trying, otherwise the last response is resent.
    pub(crate) fn on_retransmission(&self) -> Option<Bytes> {
        match self.state {
            ServerNonInviteState::Proceeding | ServerNonInviteState::Completed => self.last.clone(),
            _ => None,
        }
    }

    /// Returns the bytes to transmit now.
    pub(crate) fn send_response(
        &mut self,
        now: Instant,
        timers: &TimerConfig,
        status: u16,
        bytes: Bytes,
    ) -> Result<Bytes, ServerError> {
        use ServerNonInviteState::*;
        match self.state {
            Terminated => return Err(ServerError::Terminated),
            Completed => return Err(ServerError::FinalAlreadySent),
            Trying | Proceeding => {}
        }
        if !valid_status(status) {
            return Err(ServerError::InvalidStatus(status));
        }
        if status < 200 {
            self.state = Proceeding;
            self.last = Some(bytes.clone());
        } else if self.reliability.is_reliable() {
            // Timer J is 0 on reliable transports: no retransmission can arrive to absorb.
            self.terminate();
        } else {
            self.state = Completed;
            self.last = Some(bytes.clone());
            self.timer_j = Some(now + timers.t1_x64());
        }
        Ok(bytes)
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Fired {
        if self.state == ServerNonInviteState::Completed && due(self.timer_j, now) {
            self.terminate();
            return Fired::Terminated;
        }
        Fired::Nothing
    }

    pub(crate) fn terminate(&mut self) {
        self.state = ServerNonInviteState::Terminated;
        self.last = None;
        self.timer_j = None;
    }
}

#[derive(Debug, Clone)]
pub(crate) struct InviteCore {
    /// Last provisional (Proceeding) or non-2xx final (Completed) response.
    last: Option<Bytes>,
    timer_g: Option<Instant>,
    /// Timer H (Completed), I (Confirmed) or L (Accepted).
    end: Option<Instant>,
    state: ServerInviteState,
    reliability: Reliability,
    /// Timer G firings so far; the interval is min(T1 * 2^n, T2).
    g_fired: u8,
}

impl InviteCore {
    pub(crate) fn new(reliability: Reliability) -> Self {
        Self {
            last: None,
            timer_g: None,
            end: None,
            state: ServerInviteState::Proceeding,
            reliability,
            g_fired: 0,
        }
    }

    pub(crate) fn state(&self) -> ServerInviteState {
        self.state
    }

    pub(crate) fn timers(&self) -> [Option<Instant>; 2] {
        [self.timer_g, self.end]
    }

    /// §17.2.1: resend the last provisional or final; absorbed in Confirmed and,
    /// per RFC 6026 §7.1, in Accepted (the TU retransmits 2xx itself).
    pub(crate) fn on_retransmission(&self) -> Option<Bytes> {
        match self.state {
            ServerInviteState::Proceeding | ServerInviteState::Completed => self.last.clone(),
            _ => None,
        }
    }

    pub(crate) fn send_response(
        &mut self,
        now: Instant,
        timers: &TimerConfig,
        status: u16,
        bytes: Bytes,
    ) -> Result<Bytes, ServerError> {
        use ServerInviteState::*;
        match self.state {
            Terminated => return Err(ServerError::Terminated),
            Completed | Confirmed => return Err(ServerError::FinalAlreadySent),
            Proceeding | Accepted => {}
        }
        if !valid_status(status) {
            return Err(ServerError::InvalidStatus(status));
        }
        if self.state == Accepted {
            // RFC 6026 §7.1: 2xx retransmissions from the TU pass through; nothing else may.
            return if (200..300).contains(&status) {
                Ok(bytes)
            } else {
                Err(ServerError::FinalAlreadySent)
            };
        }
        match status {
            100..=199 => self.last = Some(bytes.clone()),
            200..=299 => {
                self.state = Accepted;
                self.last = None;
                self.end = Some(now + timers.t1_x64()); // Timer L
            }
            _ => {
                self.state = Completed;
                self.last = Some(bytes.clone());
                if !self.reliability.is_reliable() {
                    self.timer_g = Some(now + timers.t1);
                }
                self.end = Some(now + timers.t1_x64()); // Timer H, all transports
            }
        }
        Ok(bytes)
    }

    /// Returns true if the ACK belongs to this transaction and was absorbed (§17.2.1).
    /// False in other states: in Accepted it is the ACK for a 2xx, which the TU handles.
    pub(crate) fn handle_ack(&mut self, now: Instant, timers: &TimerConfig) -> bool {
        match self.state {
            ServerInviteState::Completed => {
                self.timer_g = None;
                self.last = None;
                if self.reliability.is_reliable() {
                    self.terminate(); // Timer I is 0
                } else {
                    self.state = ServerInviteState::Confirmed;
                    self.end = Some(now + timers.t4); // Timer I
                }
                true
            }
            ServerInviteState::Confirmed => true,
            _ => false,
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, timers: &TimerConfig) -> Fired {
        match self.state {
            ServerInviteState::Completed => {
                // H wins over a simultaneous G: no point retransmitting once we give up.
                if due(self.end, now) {
                    self.terminate();
                    return Fired::AckTimeout;
                }
                if due(self.timer_g, now) {
                    self.g_fired = self.g_fired.saturating_add(1);
                    // Re-armed from `now`, so a late call does not cause a burst.
                    self.timer_g = Some(now + g_interval(timers, self.g_fired));
                    if let Some(last) = &self.last {
                        return Fired::Retransmit(last.clone());
                    }
                }
                Fired::Nothing
            }
            ServerInviteState::Confirmed | ServerInviteState::Accepted if due(self.end, now) => {
                self.terminate();
                Fired::Terminated
            }
            _ => Fired::Nothing,
        }
    }

    pub(crate) fn terminate(&mut self) {
        self.state = ServerInviteState::Terminated;
        self.last = None;
        self.timer_g = None;
        self.end = None;
    }
}

/// Timer G interval after `n` firings: min(T1 * 2^n, T2) (§17.2.1).
fn g_interval(timers: &TimerConfig, n: u8) -> Duration {
    let factor = 1u32 << u32::from(n.min(20));
    timers.t1.saturating_mul(factor).min(timers.t2)
}

fn min_deadline(timers: [Option<Instant>; 2]) -> Option<Instant> {
    timers.into_iter().flatten().min()
}

// ---------------------------------------------------------------------------
// Standalone machines with output queues.
// ---------------------------------------------------------------------------

/// Non-INVITE server transaction, RFC 3261 §17.2.2.
///
/// Trying → Proceeding (1xx) → Completed (final) → Terminated (Timer J = 64*T1 on
/// unreliable transports; immediately on reliable ones).
#[derive(Debug)]
pub struct ServerNonInvite {
    core: NonInviteCore,
    timers: TimerConfig,
    transmits: VecDeque<Bytes>,
    events: VecDeque<ServerEvent>,
}

impl ServerNonInvite {
    /// Created on receipt of the request, which the TU must answer via `send_response`.
    pub fn new(now: Instant, reliability: Reliability, timers: TimerConfig) -> Self {
        let _ = now; // no timer runs in Trying (§17.2.2)
        Self {
            core: NonInviteCore::new(reliability),
            timers,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A retransmission of the request arrived: queues the last response, if any.
    pub fn handle_request_retransmission(&mut self, now: Instant) {
        let _ = now;
        if let Some(b) = self.core.on_retransmission() {
            self.transmits.push_back(b);
        }
    }

    /// The TU responds: queues `bytes` for transmission and moves state.
    pub fn send_response(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Bytes,
    ) -> Result<(), ServerError> {
        let out = self.core.send_response(now, &self.timers, status, bytes)?;
        self.transmits.push_back(out);
        self.note_termination(false);
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let was = self.is_terminated();
        self.core.handle_timeout(now);
        self.note_termination(was);
    }

    /// The transport failed to send a response (§17.2.4): Terminated.
    pub fn handle_transport_error(&mut self, now: Instant) {
        let _ = now;
        if !self.is_terminated() {
            self.core.terminate();
            self.events.push_back(ServerEvent::TransportError);
            self.events.push_back(ServerEvent::Terminated);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        min_deadline(self.core.timers())
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    pub fn state(&self) -> ServerNonInviteState {
        self.core.state()
    }

    pub fn is_terminated(&self) -> bool {
        self.core.state() == ServerNonInviteState::Terminated
    }

    fn note_termination(&mut self, was_terminated: bool) {
        if !was_terminated && self.is_terminated() {
            self.events.push_back(ServerEvent::Terminated);
        }
    }
}

/// INVITE server transaction, RFC 3261 §17.2.1 with RFC 6026 §7.1.
///
/// We implement RFC 6026: on a 2xx the transaction enters Accepted for Timer L
/// (64*T1), absorbing INVITE retransmissions and passing the TU's 2xx
/// retransmissions through, instead of terminating at once as in RFC 3261 (which
/// would hand retransmitted INVITEs to the TU as new requests). The TU still owns
/// 2xx retransmission (§13.3.1.4). The TU must also send 100 Trying itself
/// (§17.2.1's 200 ms rule): this layer cannot build SIP.
#[derive(Debug)]
pub struct ServerInvite {
    core: InviteCore,
    timers: TimerConfig,
    transmits: VecDeque<Bytes>,
    events: VecDeque<ServerEvent>,
}

impl ServerInvite {
    pub fn new(now: Instant, reliability: Reliability, timers: TimerConfig) -> Self {
        let _ = now; // no timer runs in Proceeding (§17.2.1)
        Self {
            core: InviteCore::new(reliability),
            timers,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A retransmitted INVITE arrived: queues the last provisional or non-2xx final, if any.
    pub fn handle_request_retransmission(&mut self, now: Instant) {
        let _ = now;
        if let Some(b) = self.core.on_retransmission() {
            self.transmits.push_back(b);
        }
    }

    /// An ACK matched this transaction (§17.2.3). Returns true if absorbed
    /// (Completed → Confirmed, or a retransmitted ACK); false means it is not
    /// ours to absorb (e.g. the ACK for a 2xx in Accepted) and goes to the TU.
    pub fn handle_ack(&mut self, now: Instant) -> bool {
        let was = self.is_terminated();
        let absorbed = self.core.handle_ack(now, &self.timers);
        self.note_termination(was);
        absorbed
    }

    /// The TU responds: 1xx keeps Proceeding, 2xx → Accepted (further 2xx pass
    /// through), 300–699 → Completed with Timers G/H.
    pub fn send_response(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Bytes,
    ) -> Result<(), ServerError> {
        let out = self.core.send_response(now, &self.timers, status, bytes)?;
        self.transmits.push_back(out);
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let was = self.is_terminated();
        match self.core.handle_timeout(now, &self.timers) {
            Fired::Retransmit(b) => self.transmits.push_back(b),
            Fired::AckTimeout => self.events.push_back(ServerEvent::AckTimeout),
            Fired::Terminated | Fired::Nothing => {}
        }
        self.note_termination(was);
    }

    /// The transport failed to send a response (§17.2.4): Terminated.
    pub fn handle_transport_error(&mut self, now: Instant) {
        let _ = now;
        if !self.is_terminated() {
            self.core.terminate();
            self.events.push_back(ServerEvent::TransportError);
            self.events.push_back(ServerEvent::Terminated);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        min_deadline(self.core.timers())
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    pub fn state(&self) -> ServerInviteState {
        self.core.state()
    }

    pub fn is_terminated(&self) -> bool {
        self.core.state() == ServerInviteState::Terminated
    }

    fn note_termination(&mut self, was_terminated: bool) {
        if !was_terminated && self.is_terminated() {
            self.events.push_back(ServerEvent::Terminated);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn drain(tx: &mut impl FnMut() -> Option<Bytes>) -> Vec<Bytes> {
        std::iter::from_fn(tx).collect()
    }

    fn nist(rel: Reliability) -> (Instant, ServerNonInvite) {
        let t0 = Instant::now();
        (t0, ServerNonInvite::new(t0, rel, TimerConfig::default()))
    }

    fn ist(rel: Reliability) -> (Instant, ServerInvite) {
        let t0 = Instant::now();
        (t0, ServerInvite::new(t0, rel, TimerConfig::default()))
    }

    // ---- non-INVITE --------------------------------------------------------

    #[test]
    fn nist_unreliable_full_lifecycle() {
        let (t0, mut t) = nist(Reliability::Unreliable);
        assert_eq!(t.state(), ServerNonInviteState::Trying);
        assert_eq!(t.poll_timeout(), None);

        // §17.2.2: retransmissions in Trying are discarded.
        t.handle_request_retransmission(t0 + MS(100));
        assert_eq!(t.poll_transmit(), None);

        t.send_response(t0 + MS(200), 183, b("183")).unwrap();
        assert_eq!(t.state(), ServerNonInviteState::Proceeding);
        assert_eq!(t.poll_transmit(), Some(b("183")));
        t.handle_request_retransmission(t0 + MS(300));
        assert_eq!(t.poll_transmit(), Some(b("183")));

        t.send_response(t0 + MS(400), 200, b("200")).unwrap();
        assert_eq!(t.state(), ServerNonInviteState::Completed);
        assert_eq!(t.poll_transmit(), Some(b("200")));
        t.handle_request_retransmission(t0 + MS(500));
        assert_eq!(t.poll_transmit(), Some(b("200")));
        assert_eq!(t.poll_transmit(), None);

        // Timer J = 64*T1 from entering Completed; no retransmission timer.
        let j = t0 + MS(400) + Duration::from_secs(32);
        assert_eq!(t.poll_timeout(), Some(j));
        t.handle_timeout(j - MS(1));
        assert_eq!(t.state(), ServerNonInviteState::Completed);
        assert_eq!(t.poll_transmit(), None);
        assert_eq!(t.poll_event(), None);
        t.handle_timeout(j);
        assert!(t.is_terminated());
        assert_eq!(t.poll_event(), Some(ServerEvent::Terminated));
        assert_eq!(t.poll_event(), None);
        assert_eq!(t.poll_timeout(), None);

        // Terminated absorbs nothing further.
        t.handle_request_retransmission(j + MS(1));
        assert_eq!(t.poll_transmit(), None);
    }

    #[test]
    fn nist_reliable_terminates_on_final() {
        let (t0, mut t) = nist(Reliability::Reliable);
        t.send_response(t0, 404, b("404")).unwrap();
        assert!(t.is_terminated()); // Timer J = 0
        assert_eq!(t.poll_transmit(), Some(b("404")));
        assert_eq!(t.poll_event(), Some(ServerEvent::Terminated));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn nist_rejects_illegal_calls() {
        let (t0, mut t) = nist(Reliability::Unreliable);
        assert_eq!(
            t.send_response(t0, 99, b("x")),
            Err(ServerError::InvalidStatus(99))
        );
        assert_eq!(
            t.send_response(t0, 700, b("x")),
            Err(ServerError::InvalidStatus(700))
        );
        assert_eq!(t.state(), ServerNonInviteState::Trying);
        assert_eq!(t.poll_transmit(), None);

        t.send_response(t0, 200, b("200")).unwrap();
        assert_eq!(
            t.send_response(t0, 200, b("200")),
            Err(ServerError::FinalAlreadySent)
        );
        assert_eq!(
            t.send_response(t0, 180, b("180")),
            Err(ServerError::FinalAlreadySent)
        );
        t.handle_timeout(t0 + Duration::from_secs(32));
        assert_eq!(
            t.send_response(t0, 200, b("200")),
            Err(ServerError::Terminated)
        );
    }

    #[test]
    fn nist_transport_error() {
        let (t0, mut t) = nist(Reliability::Unreliable);
        t.send_response(t0, 100, b("100")).unwrap();
        t.handle_transport_error(t0);
        assert!(t.is_terminated());
        assert_eq!(t.poll_event(), Some(ServerEvent::TransportError));
        assert_eq!(t.poll_event(), Some(ServerEvent::Terminated));
        t.handle_transport_error(t0);
        assert_eq!(t.poll_event(), None);
    }

    // ---- INVITE ------------------------------------------------------------

    #[test]
    fn ist_proceeding_resends_last_provisional() {
        let (t0, mut t) = ist(Reliability::Unreliable);
        t.handle_request_retransmission(t0);
        assert_eq!(t.poll_transmit(), None); // nothing sent yet
        t.send_response(t0, 100, b("100")).unwrap();
        t.send_response(t0, 180, b("180")).unwrap();
        assert_eq!(t.poll_transmit(), Some(b("100")));
        assert_eq!(t.poll_transmit(), Some(b("180")));
        t.handle_request_retransmission(t0 + MS(500));
        assert_eq!(t.poll_transmit(), Some(b("180")));
        assert_eq!(t.state(), ServerInviteState::Proceeding);
        assert_eq!(t.poll_timeout(), None); // no timer in Proceeding
        assert!(!t.handle_ack(t0)); // ACK before a final does not match
    }

    #[test]
    fn ist_timer_g_doubles_to_t2_and_timer_h_reports_ack_timeout() {
        let (t0, mut t) = ist(Reliability::Unreliable);
        t.send_response(t0, 486, b("486")).unwrap();
        assert_eq!(t.state(), ServerInviteState::Completed);
        assert_eq!(t.poll_transmit(), Some(b("486")));

        // Fire every timer exactly at its deadline and record when G retransmits.
        let mut fired = Vec::new();
        let mut last_at = t0;
        while let Some(at) = t.poll_timeout() {
            last_at = at;
            t.handle_timeout(at);
            if let Some(bytes) = t.poll_transmit() {
                assert_eq!(bytes, b("486"));
                fired.push((at - t0).as_millis());
            }
        }
        // Intervals 0.5, 1, 2, 4, 4, ... (capped at T2) until H at 32 s.
        assert_eq!(
            fired,
            [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(last_at, t0 + Duration::from_secs(32));
        assert!(t.is_terminated());
        assert_eq!(t.poll_event(), Some(ServerEvent::AckTimeout));
        assert_eq!(t.poll_event(), Some(ServerEvent::Terminated));
        assert_eq!(t.poll_event(), None);
    }

    #[test]
    fn ist_retransmitted_invite_in_completed_resends_final() {
        let (t0, mut t) = ist(Reliability::Unreliable);
        t.send_response(t0, 180, b("180")).unwrap();
        t.send_response(t0, 603, b("603")).unwrap();
        drain(&mut || t.poll_transmit());
        t.handle_request_retransmission(t0 + MS(100));
        assert_eq!(t.poll_transmit(), Some(b("603")));
    }

    #[test]
    fn ist_ack_confirms_then_timer_i() {
        let (t0, mut t) = ist(Reliability::Unreliable);
        t.send_response(t0, 486, b("486")).unwrap();
        t.poll_transmit();
        t.handle_timeout(t0 + MS(500)); // one G retransmission
        assert_eq!(t.poll_transmit(), Some(b("486")));

        let ack_at = t0 + MS(700);
        assert!(t.handle_ack(ack_at));
        assert_eq!(t.state(), ServerInviteState::Confirmed);
        // Timer G stopped; only Timer I = T4 remains.
        assert_eq!(t.poll_timeout(), Some(ack_at + Duration::from_secs(5)));
        // ACK and INVITE retransmissions are absorbed silently.
        assert!(t.handle_ack(ack_at + MS(10)));
        t.handle_request_retransmission(ack_at + MS(20));
        t.handle_timeout(t0 + MS(1500)); // would have been G
        assert_eq!(t.poll_transmit(), None);
        assert_eq!(t.poll_event(), None);

        t.handle_timeout(ack_at + Duration::from_secs(5) - MS(1));
        assert_eq!(t.state(), ServerInviteState::Confirmed);
        t.handle_timeout(ack_at + Duration::from_secs(5));
        assert!(t.is_terminated());
        assert_eq!(t.poll_event(), Some(ServerEvent::Terminated));
        assert_eq!(t.poll_event(), None);
        assert!(!t.handle_ack(ack_at + Duration::from_secs(6)));
    }

    #[test]
    fn ist_reliable_no_timer_g_and_ack_terminates() {
        let (t0, mut t) = ist(Reliability::Reliable);
        t.send_response(t0, 480, b("480")).unwrap();
        t.poll_transmit();
        // Only Timer H, armed on every transport.
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(32)));
        t.handle_timeout(t0 + MS(500));
        assert_eq!(t.poll_transmit(), None);
        assert!(t.handle_ack(t0 + MS(600)));
        assert!(t.is_terminated()); // Timer I = 0
        assert_eq!(t.poll_event(), Some(ServerEvent::Terminated));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn ist_reliable_timer_h() {
        let (t0, mut t) = ist(Reliability::Reliable);
        t.send_response(t0, 480, b("480")).unwrap();
        t.handle_timeout(t0 + Duration::from_secs(32) - MS(1));
        assert_eq!(t.poll_event(), None);
        t.handle_timeout(t0 + Duration::from_secs(32));
        assert_eq!(t.poll_event(), Some(ServerEvent::AckTimeout));
        assert_eq!(t.poll_event(), Some(ServerEvent::Terminated));
    }

    #[test]
    fn ist_2xx_enters_accepted_rfc6026() {
        for rel in [Reliability::Unreliable, Reliability::Reliable] {
            let (t0, mut t) = ist(rel);
            t.send_response(t0, 180, b("180")).unwrap();
            t.send_response(t0 + MS(100), 200, b("200")).unwrap();
            assert_eq!(t.state(), ServerInviteState::Accepted);
            drain(&mut || t.poll_transmit());
            // Timer L = 64*T1 on all transports.
            let l = t0 + MS(100) + Duration::from_secs(32);
            assert_eq!(t.poll_timeout(), Some(l));

            // INVITE retransmissions absorbed, not answered.
            t.handle_request_retransmission(t0 + MS(600));
            assert_eq!(t.poll_transmit(), None);
            // The TU's 2xx retransmissions pass through; nothing else does.
            t.send_response(t0 + MS(600), 200, b("200")).unwrap();
            assert_eq!(t.poll_transmit(), Some(b("200")));
            assert_eq!(
                t.send_response(t0, 180, b("180")),
                Err(ServerError::FinalAlreadySent)
            );
            assert_eq!(
                t.send_response(t0, 500, b("500")),
                Err(ServerError::FinalAlreadySent)
            );
            // The ACK for a 2xx is the TU's.
            assert!(!t.handle_ack(t0 + MS(700)));
            assert_eq!(t.state(), ServerInviteState::Accepted);

            t.handle_timeout(l - MS(1));
            assert!(!t.is_terminated());
            t.handle_timeout(l);
            assert!(t.is_terminated());
            assert_eq!(t.poll_event(), Some(ServerEvent::Terminated));
            assert_eq!(
                t.send_response(l, 200, b("200")),
                Err(ServerError::Terminated)
            );
        }
    }

    #[test]
    fn ist_rejects_illegal_calls() {
        let (t0, mut t) = ist(Reliability::Unreliable);
        assert_eq!(
            t.send_response(t0, 42, b("x")),
            Err(ServerError::InvalidStatus(42))
        );
        t.send_response(t0, 486, b("486")).unwrap();
        for s in [180, 200, 486] {
            assert_eq!(
                t.send_response(t0, s, b("x")),
                Err(ServerError::FinalAlreadySent)
            );
        }
        t.handle_ack(t0);
        assert_eq!(
            t.send_response(t0, 200, b("x")),
            Err(ServerError::FinalAlreadySent)
        );
    }

    #[test]
    fn ist_late_timeout_does_not_burst() {
        let (t0, mut t) = ist(Reliability::Unreliable);
        t.send_response(t0, 486, b("486")).unwrap();
        t.poll_transmit();
        // Called 3 s late: one retransmission, re-armed from now with the next interval.
        let late = t0 + MS(3500);
        t.handle_timeout(late);
        assert_eq!(drain(&mut || t.poll_transmit()).len(), 1);
        assert_eq!(t.poll_timeout(), Some(late + MS(1000)));
    }

    #[test]
    fn ist_transport_error() {
        let (t0, mut t) = ist(Reliability::Unreliable);
        t.send_response(t0, 486, b("486")).unwrap();
        t.handle_transport_error(t0);
        assert!(t.is_terminated());
        assert_eq!(t.poll_event(), Some(ServerEvent::TransportError));
        assert_eq!(t.poll_event(), Some(ServerEvent::Terminated));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn g_interval_respects_custom_t2() {
        let timers = TimerConfig {
            t1: MS(100),
            t2: MS(250),
            t4: MS(1000),
        };
        let got: Vec<u128> = (0..5).map(|n| g_interval(&timers, n).as_millis()).collect();
        assert_eq!(got, [100, 200, 250, 250, 250]);
        assert_eq!(g_interval(&timers, 255), MS(250));
    }
}
