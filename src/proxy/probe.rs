//! Gateway liveness (issue 3): each gateway gets an OPTIONS every `interval`; any
//! final response means it is up, no final response within `timeout` means it is
//! down, and a down gateway is skipped by routing until it answers again. Sans-IO:
//! time comes in as `now`, datagrams to send are polled.

use crate::sip::message::{CSeq, HeaderName, Response, Via};
use crate::sip::transaction::client::{ClientEvent, ClientNonInvite};
use crate::sip::transaction::{Reliability, TimerConfig};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Probe {
    name: String,
    addr: SocketAddr,
    up: bool,
    next_at: Instant,
    seq: u32,
    /// The OPTIONS in flight: its branch, transaction and answer deadline.
    inflight: Option<(String, ClientNonInvite, Instant)>,
}

pub struct GatewayProber {
    probes: Vec<Probe>,
    local: SocketAddr,
    interval: Duration,
    timeout: Duration,
    timers: TimerConfig,
    out: VecDeque<(SocketAddr, Bytes)>,
    salt: u64,
}

impl GatewayProber {
    /// Every gateway starts as up, so calls flow before the first probe answers.
    pub fn new(
        now: Instant,
        gateways: &[(String, SocketAddr)],
        local: SocketAddr,
        interval: Duration,
        timeout: Duration,
        timers: TimerConfig,
    ) -> GatewayProber {
        GatewayProber {
            probes: gateways
                .iter()
                .map(|(name, addr)| Probe {
                    name: name.clone(),
                    addr: *addr,
                    up: true,
                    next_at: now,
                    seq: 0,
                    inflight: None,
                })
                .collect(),
            local,
            interval,
            timeout,
            timers,
            out: VecDeque::new(),
            salt: rand::random(),
        }
    }

    pub fn set_local(&mut self, local: SocketAddr) {
        self.local = local;
    }

    pub fn is_up(&self, name: &str) -> bool {
        self.probes
            .iter()
            .find(|p| p.name == name)
            .is_none_or(|p| p.up)
    }

    /// (name, up) of every gateway.
    pub fn states(&self) -> Vec<(String, bool)> {
        self.probes.iter().map(|p| (p.name.clone(), p.up)).collect()
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.out.pop_front()
    }

    fn options(&self, p: &Probe, branch: &str) -> Bytes {
        let local = self.local;
        Bytes::from(format!(
            "OPTIONS sip:{addr} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};rport;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:tandem@{local}>;tag=probe{salt:x}\r\n\
             To: <sip:{addr}>\r\n\
             Call-ID: probe-{salt:x}-{name}@{local}\r\n\
             CSeq: {seq} OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            addr = p.addr,
            salt = self.salt,
            name = p.name,
            seq = p.seq,
        ))
    }

    /// Starts due probes, retransmits, and marks silent gateways down.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.probes.len() {
            let addr = self.probes[i].addr;
            if let Some((_, tx, deadline)) = &mut self.probes[i].inflight {
                tx.handle_timeout(now);
                while let Some(b) = tx.poll_transmit() {
                    self.out.push_back((addr, b));
                }
                if now >= *deadline {
                    let p = &mut self.probes[i];
                    if p.up {
                        tracing::warn!(gateway = %p.name, addr = %p.addr, "gateway stopped answering OPTIONS");
                    }
                    p.up = false;
                    p.inflight = None;
                }
            }
            if self.probes[i].inflight.is_none() && now >= self.probes[i].next_at {
                let branch = format!(
                    "z9hG4bK-probe{:x}-{}-{}",
                    self.salt & 0xffff,
                    i,
                    self.probes[i].seq + 1
                );
                self.probes[i].seq += 1;
                self.probes[i].next_at = now + self.interval;
                let bytes = self.options(&self.probes[i], &branch);
                let mut tx = ClientNonInvite::new(now, Reliability::Unreliable, self.timers, bytes);
                while let Some(b) = tx.poll_transmit() {
                    self.out.push_back((self.probes[i].addr, b));
                }
                self.probes[i].inflight = Some((branch, tx, now + self.timeout));
            }
        }
    }

    /// A response to one of our probes? Any final response means the gateway is up.
    pub fn on_response(&mut self, now: Instant, resp: &Response, bytes: Bytes) -> bool {
        let branch = resp
            .header(&HeaderName::Via)
            .and_then(Via::parse_all)
            .and_then(|v| v.into_iter().next())
            .and_then(|v| v.branch().map(str::to_string));
        let is_options = resp
            .header(&HeaderName::CSeq)
            .and_then(CSeq::parse)
            .is_some_and(|c| c.method == "OPTIONS");
        let (Some(branch), true) = (branch, is_options) else {
            return false;
        };
        let Some(p) = self
            .probes
            .iter_mut()
            .find(|p| p.inflight.as_ref().is_some_and(|(b, _, _)| *b == branch))
        else {
            return false;
        };
        if let Some((_, tx, _)) = &mut p.inflight {
            let _ = tx.handle_response(now, resp.status, bytes);
            while let Some(e) = tx.poll_event() {
                if let ClientEvent::Final(..) = e {
                    if !p.up {
                        tracing::info!(gateway = %p.name, addr = %p.addr, "gateway answers OPTIONS again");
                    }
                    p.up = true;
                    p.inflight = None;
                    break;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's 200, built the way Tandem builds its own (§8.2.6).
    fn ok_for(req: &Bytes) -> (Response, Bytes) {
        let crate::sip::message::Message::Request(r) = crate::sip::message::parse(req).unwrap()
        else {
            panic!("a probe is a request")
        };
        let resp = crate::sip::message::build::response_to(&r, 200, Some("gw"));
        let bytes = resp.to_bytes();
        (resp, bytes)
    }

    #[test]
    fn silent_gateway_goes_down_and_comes_back_when_it_answers() {
        let t0 = Instant::now();
        let gw: SocketAddr = "127.0.0.1:5090".parse().unwrap();
        let mut p = GatewayProber::new(
            t0,
            &[("gw".into(), gw)],
            "127.0.0.1:5060".parse().unwrap(),
            Duration::from_secs(10),
            Duration::from_secs(5),
            TimerConfig::default(),
        );
        assert!(p.is_up("gw"));
        p.handle_timeout(t0);
        let (to, first) = p.poll_transmit().expect("an OPTIONS");
        assert_eq!(to, gw);
        assert!(first.starts_with(b"OPTIONS sip:127.0.0.1:5090 SIP/2.0"));
        // retransmitted at T1, then marked down at the timeout
        p.handle_timeout(t0 + Duration::from_millis(500));
        assert!(p.poll_transmit().is_some());
        p.handle_timeout(t0 + Duration::from_secs(5));
        assert!(!p.is_up("gw"));
        // the next probe, answered: up again
        p.handle_timeout(t0 + Duration::from_secs(10));
        let (_, req) = std::iter::from_fn(|| p.poll_transmit())
            .last()
            .expect("next OPTIONS");
        let (resp, bytes) = ok_for(&req);
        assert!(p.on_response(t0 + Duration::from_secs(10), &resp, bytes));
        assert!(p.is_up("gw"));
        assert_eq!(p.states(), vec![("gw".to_string(), true)]);
    }
}
