//! OPTIONS pings (RFC 3261 §11): "are you there?" asked of a peer, answered by any
//! final response. One sans-IO pinger serves both Tandem's users of it: the
//! registrar's polls of registered phones (seed 000 FIG. 4B) and the proxy's probes
//! of gateways. It builds the requests, matches answers by Via branch, retransmits
//! over UDP when asked to (a non-INVITE client transaction, §17.1.2), and reports
//! each ping once: answered, or not answered by its deadline. When to ping and
//! what an answer means stay with its users.

use super::message::{CSeq, HeaderName, Response};
use super::transaction::client::ClientNonInvite;
use super::transaction::{Reliability, TimerConfig};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What became of one ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingEvent<K> {
    /// A final response (any status: a peer that says 405 or 481 is alive).
    Answered(K),
    /// No final response within the timeout.
    Unanswered(K),
}

/// One outstanding ping, named by its Via branch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PingId(String);

struct Ping<K> {
    key: K,
    dest: SocketAddr,
    /// Retransmissions over UDP (§17.1.2.2), when the pinger does them.
    tx: Option<ClientNonInvite>,
}

pub struct Pinger<K> {
    local: SocketAddr,
    timeout: Duration,
    /// Some: retransmit with these timers until answered or timed out.
    retransmit: Option<TimerConfig>,
    /// Names the user in branches, tags and Call-IDs (`poll`, `probe`).
    label: &'static str,
    salt: u32,
    counter: u64,
    inflight: HashMap<String, Ping<K>>,
    /// Deadlines in the order the pings were sent: one timeout for all, so they
    /// are also in deadline order (no heap). Answered entries are skipped lazily.
    deadlines: VecDeque<(Instant, String)>,
    out: VecDeque<(SocketAddr, Bytes)>,
    events: VecDeque<PingEvent<K>>,
}

impl<K: Clone> Pinger<K> {
    /// `local`: our address for Via and From. `timeout`: how long an answer may
    /// take. `retransmit`: resend over UDP at T1, 2·T1, … (§17.1.2.2) meanwhile.
    pub fn new(
        local: SocketAddr,
        timeout: Duration,
        retransmit: Option<TimerConfig>,
        label: &'static str,
    ) -> Pinger<K> {
        Pinger {
            local,
            timeout,
            retransmit,
            label,
            salt: rand::random(),
            counter: 0,
            inflight: HashMap::new(),
            deadlines: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Sends an OPTIONS for `uri` (To: `to`) to `dest`; `key` comes back in the
    /// ping's event.
    pub fn ping(&mut self, now: Instant, key: K, dest: SocketAddr, uri: &str, to: &str) -> PingId {
        self.counter += 1;
        let n = self.counter;
        let branch = format!("z9hG4bK-{}{:x}-{n}", self.label, self.salt);
        let local = self.local;
        let bytes = Bytes::from(format!(
            "OPTIONS {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};rport;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:tandem@{local}>;tag={label}{salt:x}\r\n\
             To: <{to}>\r\n\
             Call-ID: {label}-{salt:x}-{n}@{local}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            label = self.label,
            salt = self.salt,
        ));
        let tx = match self.retransmit {
            Some(timers) => {
                let mut tx = ClientNonInvite::new(now, Reliability::Unreliable, timers, bytes);
                while let Some(b) = tx.poll_transmit() {
                    self.out.push_back((dest, b));
                }
                Some(tx)
            }
            None => {
                self.out.push_back((dest, bytes));
                None
            }
        };
        let deadline = now + self.timeout;
        self.inflight.insert(branch.clone(), Ping { key, dest, tx });
        self.deadlines.push_back((deadline, branch.clone()));
        PingId(branch)
    }

    /// Forgets a ping nobody waits for any more (its answer will match nothing).
    pub fn forget(&mut self, id: &PingId) {
        self.inflight.remove(&id.0);
    }

    /// Retransmits, and reports the pings whose deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for p in self.inflight.values_mut() {
            let Some(tx) = &mut p.tx else { continue };
            tx.handle_timeout(now);
            while let Some(b) = tx.poll_transmit() {
                self.out.push_back((p.dest, b));
            }
        }
        while let Some((at, _)) = self.deadlines.front() {
            if *at > now {
                break;
            }
            let Some((_, branch)) = self.deadlines.pop_front() else {
                break;
            };
            if let Some(p) = self.inflight.remove(&branch) {
                self.events.push_back(PingEvent::Unanswered(p.key));
            }
        }
    }

    /// Takes a response if it answers one of our pings (then `true`): a final
    /// response reports the ping answered; a provisional one is absorbed.
    pub fn on_response(&mut self, now: Instant, resp: &Response, bytes: &Bytes) -> bool {
        let is_options = resp
            .header(&HeaderName::CSeq)
            .and_then(CSeq::parse)
            .is_some_and(|c| c.method == "OPTIONS");
        if !is_options {
            return false;
        }
        let Some(branch) = branch_of(resp) else {
            return false;
        };
        let Some(p) = self.inflight.get_mut(&branch) else {
            return false;
        };
        if let Some(tx) = &mut p.tx {
            // keeps the transaction's state right (a 1xx stops retransmissions
            // at T1, §17.1.2.2)
            let _ = tx.handle_response(now, resp.status, bytes.clone());
            while tx.poll_event().is_some() {}
        }
        if resp.status >= 200 {
            if let Some(p) = self.inflight.remove(&branch) {
                self.events.push_back(PingEvent::Answered(p.key));
            }
        }
        true
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<PingEvent<K>> {
        self.events.pop_front()
    }

    /// The earliest deadline of a ping in flight (or a stale entry's, which only
    /// means an early wake-up).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.front().map(|(at, _)| *at)
    }

    /// Pings in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }
}

fn branch_of(resp: &Response) -> Option<String> {
    resp.top_via()?.branch().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::build::response_to;
    use crate::sip::message::{parse, Message};

    fn answer(req: &Bytes, status: u16) -> (Response, Bytes) {
        let Message::Request(r) = parse(req).unwrap() else {
            panic!("a ping is a request")
        };
        let resp = response_to(&r, status, Some("peer"));
        let bytes = resp.to_bytes();
        (resp, bytes)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_final_answer_of_any_status_reports_the_ping_answered_once() {
        let t0 = Instant::now();
        let mut p = Pinger::new(addr("127.0.0.1:5060"), Duration::from_secs(2), None, "poll");
        p.ping(
            t0,
            "a",
            addr("127.0.0.1:5001"),
            "sip:a@127.0.0.1:5001",
            "sip:a@h",
        );
        let (to, req) = p.poll_transmit().unwrap();
        assert_eq!(to, addr("127.0.0.1:5001"));
        let text = std::str::from_utf8(&req).unwrap();
        assert!(
            text.starts_with("OPTIONS sip:a@127.0.0.1:5001 SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nTo: <sip:a@h>\r\n"), "{text}");
        assert!(text.contains(";rport;branch=z9hG4bK-poll"), "{text}");
        // a provisional answer is ours but answers nothing yet
        let (trying, tb) = answer(&req, 100);
        assert!(p.on_response(t0, &trying, &tb));
        assert_eq!(p.poll_event(), None);
        let (resp, rb) = answer(&req, 405);
        assert!(p.on_response(t0, &resp, &rb));
        assert_eq!(p.poll_event(), Some(PingEvent::Answered("a")));
        // a retransmitted answer matches nothing any more
        assert!(!p.on_response(t0, &resp, &rb));
        p.handle_timeout(t0 + Duration::from_secs(3));
        assert_eq!(p.poll_event(), None, "an answered ping does not time out");
    }

    #[test]
    fn an_unanswered_ping_is_reported_at_its_deadline_not_before() {
        let t0 = Instant::now();
        let mut p = Pinger::new(addr("127.0.0.1:5060"), Duration::from_secs(2), None, "poll");
        p.ping(
            t0,
            1,
            addr("127.0.0.1:5001"),
            "sip:a@127.0.0.1:5001",
            "sip:a@h",
        );
        p.ping(
            t0 + Duration::from_secs(1),
            2,
            addr("127.0.0.1:5002"),
            "sip:b@127.0.0.1:5002",
            "sip:b@h",
        );
        assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(2)));
        p.handle_timeout(t0 + Duration::from_millis(1999));
        assert_eq!(p.poll_event(), None);
        p.handle_timeout(t0 + Duration::from_secs(2));
        assert_eq!(p.poll_event(), Some(PingEvent::Unanswered(1)));
        assert_eq!(p.poll_event(), None);
        p.handle_timeout(t0 + Duration::from_secs(3));
        assert_eq!(p.poll_event(), Some(PingEvent::Unanswered(2)));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn retransmits_over_udp_when_asked_and_a_forgotten_ping_matches_nothing() {
        let t0 = Instant::now();
        let mut p = Pinger::new(
            addr("127.0.0.1:5060"),
            Duration::from_secs(5),
            Some(TimerConfig::default()),
            "probe",
        );
        let id = p.ping(
            t0,
            "gw",
            addr("127.0.0.1:5090"),
            "sip:127.0.0.1:5090",
            "sip:127.0.0.1:5090",
        );
        let (_, first) = p.poll_transmit().unwrap();
        // §17.1.2.2 Timer E: again at T1
        p.handle_timeout(t0 + Duration::from_millis(500));
        let (_, again) = p.poll_transmit().expect("a retransmission");
        assert_eq!(first, again);
        p.forget(&id);
        let (resp, rb) = answer(&first, 200);
        assert!(!p.on_response(t0, &resp, &rb));
        p.handle_timeout(t0 + Duration::from_secs(6));
        assert_eq!(p.poll_event(), None, "a forgotten ping is never reported");
    }

    #[test]
    fn responses_to_other_methods_or_branches_are_not_ours() {
        let t0 = Instant::now();
        let mut p: Pinger<u8> =
            Pinger::new(addr("127.0.0.1:5060"), Duration::from_secs(2), None, "poll");
        p.ping(
            t0,
            1,
            addr("127.0.0.1:5001"),
            "sip:a@127.0.0.1:5001",
            "sip:a@h",
        );
        let (_, req) = p.poll_transmit().unwrap();
        let text = std::str::from_utf8(&req).unwrap();
        let other_branch = text.replace(";branch=z9hG4bK-poll", ";branch=z9hG4bK-else");
        let (resp, rb) = answer(&Bytes::from(other_branch), 200);
        assert!(!p.on_response(t0, &resp, &rb));
        let other_method = text.replace("CSeq: 1 OPTIONS", "CSeq: 1 INFO");
        let (resp, rb) = answer(&Bytes::from(other_method), 200);
        assert!(!p.on_response(t0, &resp, &rb));
        assert_eq!(p.in_flight(), 1);
    }
}
