//! Gateway liveness (issue 3): each gateway gets an OPTIONS every `interval`; any
//! final response means it is up, no final response within `timeout` means it is
//! down, and a down gateway is skipped by routing until it answers again. Sans-IO:
//! time comes in as `now`, datagrams to send are polled.

use crate::sip::message::Response;
use crate::sip::ping::{PingEvent, Pinger};
use crate::sip::transaction::TimerConfig;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Probe {
    name: String,
    addr: SocketAddr,
    up: bool,
    next_at: Instant,
    /// An OPTIONS is in flight (one at a time per gateway).
    inflight: bool,
}

pub struct GatewayProber {
    probes: Vec<Probe>,
    interval: Duration,
    /// The wire part: OPTIONS out, retransmitted over UDP, answers matched.
    pinger: Pinger<usize>,
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
                    inflight: false,
                })
                .collect(),
            interval,
            pinger: Pinger::new(local, timeout, Some(timers), "probe"),
        }
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
        self.pinger.poll_transmit()
    }

    /// Starts due probes, retransmits, and marks silent gateways down.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pinger.handle_timeout(now);
        self.take_events();
        for (i, p) in self.probes.iter_mut().enumerate() {
            if !p.inflight && now >= p.next_at {
                p.next_at = now + self.interval;
                p.inflight = true;
                let uri = format!("sip:{}", p.addr);
                self.pinger.ping(now, i, p.addr, &uri, &uri);
            }
        }
    }

    /// A response to one of our probes? Any final response means the gateway is up.
    pub fn on_response(&mut self, now: Instant, resp: &Response, bytes: Bytes) -> bool {
        let ours = self.pinger.on_response(now, resp, &bytes);
        self.take_events();
        ours
    }

    fn take_events(&mut self) {
        while let Some(e) = self.pinger.poll_event() {
            let (i, up) = match e {
                PingEvent::Answered(i) => (i, true),
                PingEvent::Unanswered(i) => (i, false),
            };
            let Some(p) = self.probes.get_mut(i) else {
                continue;
            };
            p.inflight = false;
            if p.up != up {
                if up {
                    tracing::info!(gateway = %p.name, addr = %p.addr, "gateway answers OPTIONS again");
                } else {
                    tracing::warn!(gateway = %p.name, addr = %p.addr, "gateway stopped answering OPTIONS");
                }
            }
            p.up = up;
        }
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
