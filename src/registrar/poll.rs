//! Polling registered phones (seed 000 FIG. 4B): the owner node sends each of its
//! UDP bindings an OPTIONS every `interval`; a binding whose phone has not
//! answered `max_misses` polls in a row is deleted (here and, through the store,
//! everywhere). Any response counts as an answer: a phone that says 405 or 481 is
//! alive. Sans-IO: time comes in as `now`, datagrams and deletions are polled.

use crate::sip::message::Response;
use crate::sip::ping::{PingEvent, PingId, Pinger};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One binding to poll, as the location table has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollTarget {
    pub aor: String,
    pub key: String,
    pub version: u64,
    pub contact: String,
    pub dest: SocketAddr,
}

type EntryKey = (String, String);

struct Entry {
    target: PollTarget,
    next_at: Instant,
    misses: u32,
    /// The poll in flight.
    inflight: Option<PingId>,
}

pub struct ContactPoller {
    interval: Duration,
    max_misses: u32,
    entries: HashMap<EntryKey, Entry>,
    gone: VecDeque<PollTarget>,
    /// The wire part: OPTIONS out, answers matched. Sent once per poll, no
    /// retransmission: a lost poll is a miss, and `max_misses` absorbs losses.
    pinger: Pinger<EntryKey>,
}

impl ContactPoller {
    pub fn new(
        local: SocketAddr,
        interval: Duration,
        timeout: Duration,
        max_misses: u32,
    ) -> ContactPoller {
        ContactPoller {
            interval,
            max_misses: max_misses.max(1),
            entries: HashMap::new(),
            gone: VecDeque::new(),
            pinger: Pinger::new(local, timeout, None, "poll"),
        }
    }

    /// The bindings to poll now: new ones are polled within an interval (spread
    /// so a restart does not poll everyone at once), changed ones start afresh,
    /// missing ones are forgotten.
    pub fn sync(&mut self, now: Instant, targets: Vec<PollTarget>) {
        let mut keep = HashMap::with_capacity(targets.len());
        let n = targets.len().max(1) as u32;
        for (i, t) in targets.into_iter().enumerate() {
            let k = (t.aor.clone(), t.key.clone());
            let e = match self.entries.remove(&k) {
                Some(e) if e.target == t => e,
                old => {
                    if let Some(id) = old.and_then(|e| e.inflight) {
                        self.pinger.forget(&id);
                    }
                    Entry {
                        target: t,
                        next_at: now + self.interval / n * i as u32,
                        misses: 0,
                        inflight: None,
                    }
                }
            };
            keep.insert(k, e);
        }
        for (_, e) in self.entries.drain() {
            if let Some(id) = e.inflight {
                self.pinger.forget(&id);
            }
        }
        self.entries = keep;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.pinger.poll_transmit()
    }

    /// A binding whose phone stopped answering: delete it.
    pub fn poll_gone(&mut self) -> Option<PollTarget> {
        self.gone.pop_front()
    }

    /// Starts due polls and counts the unanswered ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pinger.handle_timeout(now);
        self.take_events();
        for (k, e) in self.entries.iter_mut() {
            if e.inflight.is_none() && now >= e.next_at {
                e.next_at = now + self.interval;
                let t = &e.target;
                e.inflight = Some(self.pinger.ping(now, k.clone(), t.dest, &t.contact, &t.aor));
            }
        }
    }

    /// A response to one of our polls? The phone is alive.
    pub fn on_response(&mut self, now: Instant, resp: &Response, bytes: &Bytes) -> bool {
        let ours = self.pinger.on_response(now, resp, bytes);
        self.take_events();
        ours
    }

    fn take_events(&mut self) {
        while let Some(event) = self.pinger.poll_event() {
            match event {
                PingEvent::Answered(k) => {
                    if let Some(e) = self.entries.get_mut(&k) {
                        e.inflight = None;
                        e.misses = 0;
                    }
                }
                PingEvent::Unanswered(k) => {
                    let Some(e) = self.entries.get_mut(&k) else {
                        continue;
                    };
                    e.inflight = None;
                    e.misses += 1;
                    if e.misses >= self.max_misses {
                        if let Some(e) = self.entries.remove(&k) {
                            self.gone.push_back(e.target);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(user: &str, port: u16) -> PollTarget {
        PollTarget {
            aor: format!("sip:{user}@h"),
            key: format!("sip:{user}@127.0.0.1:{port}"),
            version: 1,
            contact: format!("sip:{user}@127.0.0.1:{port}"),
            dest: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The phone's answer, built the way Tandem builds its own (§8.2.6).
    fn answer(req: &Bytes, status: u16) -> Response {
        match crate::sip::message::parse(req).unwrap() {
            crate::sip::message::Message::Request(r) => {
                crate::sip::message::build::response_to(&r, status, Some("phone"))
            }
            _ => panic!("a poll is a request"),
        }
    }

    #[test]
    fn a_phone_that_answers_stays_and_a_silent_one_goes_after_max_misses() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut p = ContactPoller::new("127.0.0.1:5060".parse().unwrap(), 10 * sec, 2 * sec, 3);
        p.sync(t0, vec![target("alive", 5001), target("silent", 5002)]);
        let mut t = t0;
        for _round in 0..5 {
            p.handle_timeout(t);
            while let Some((dest, req)) = p.poll_transmit() {
                assert!(req.starts_with(b"OPTIONS sip:"));
                if dest.port() == 5001 {
                    // any final answer counts, even 405
                    let r = answer(&req, 405);
                    assert!(p.on_response(t, &r, &r.to_bytes()));
                }
            }
            t += 3 * sec; // past the answer deadline
            p.handle_timeout(t);
            t += 10 * sec;
        }
        let gone: Vec<PollTarget> = std::iter::from_fn(|| p.poll_gone()).collect();
        assert_eq!(gone, vec![target("silent", 5002)]);
        assert_eq!(p.len(), 1, "the answering phone is still polled");
    }

    #[test]
    fn a_re_registered_binding_starts_afresh_and_unknown_answers_are_not_ours() {
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        let mut p = ContactPoller::new("127.0.0.1:5060".parse().unwrap(), 10 * sec, 2 * sec, 2);
        p.sync(t0, vec![target("a", 5001)]);
        p.handle_timeout(t0);
        let (_, req) = p.poll_transmit().unwrap();
        p.handle_timeout(t0 + 3 * sec); // one miss
                                        // the phone re-registered (new version): the count starts again
        let mut fresh = target("a", 5001);
        fresh.version = 2;
        p.sync(t0 + 4 * sec, vec![fresh]);
        p.handle_timeout(t0 + 4 * sec);
        p.handle_timeout(t0 + 7 * sec); // one miss of the new binding
        assert!(p.poll_gone().is_none());
        // the old poll's late answer matches nothing any more
        let r = answer(&req, 200);
        assert!(!p.on_response(t0, &r, &r.to_bytes()));
    }
}
