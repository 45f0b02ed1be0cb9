//! Polling registered phones (seed 000 FIG. 4B): the owner node sends each of its
//! UDP bindings an OPTIONS every `interval`; a binding whose phone has not
//! answered `max_misses` polls in a row is deleted (here and, through the store,
//! everywhere). Any response counts as an answer: a phone that says 405 or 481 is
//! alive. Sans-IO: time comes in as `now`, datagrams and deletions are polled.

use crate::sip::message::{CSeq, HeaderName, Response, Via};
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

struct Entry {
    target: PollTarget,
    next_at: Instant,
    misses: u32,
    /// The poll in flight: its branch and answer deadline.
    inflight: Option<(String, Instant)>,
}

pub struct ContactPoller {
    local: SocketAddr,
    interval: Duration,
    timeout: Duration,
    max_misses: u32,
    entries: HashMap<(String, String), Entry>,
    by_branch: HashMap<String, (String, String)>,
    out: VecDeque<(SocketAddr, Bytes)>,
    gone: VecDeque<PollTarget>,
    counter: u64,
    salt: u32,
}

impl ContactPoller {
    pub fn new(
        local: SocketAddr,
        interval: Duration,
        timeout: Duration,
        max_misses: u32,
    ) -> ContactPoller {
        ContactPoller {
            local,
            interval,
            timeout,
            max_misses: max_misses.max(1),
            entries: HashMap::new(),
            by_branch: HashMap::new(),
            out: VecDeque::new(),
            gone: VecDeque::new(),
            counter: 0,
            salt: rand::random(),
        }
    }

    pub fn set_local(&mut self, local: SocketAddr) {
        self.local = local;
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
                    if let Some((b, _)) = old.and_then(|e| e.inflight) {
                        self.by_branch.remove(&b);
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
            if let Some((b, _)) = e.inflight {
                self.by_branch.remove(&b);
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
        self.out.pop_front()
    }

    /// A binding whose phone stopped answering: delete it.
    pub fn poll_gone(&mut self) -> Option<PollTarget> {
        self.gone.pop_front()
    }

    fn options(&self, t: &PollTarget, branch: &str, seq: u64) -> Bytes {
        let local = self.local;
        Bytes::from(format!(
            "OPTIONS {contact} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};rport;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:tandem@{local}>;tag=poll{salt:x}\r\n\
             To: <{aor}>\r\n\
             Call-ID: poll-{salt:x}-{seq}@{local}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            contact = t.contact,
            aor = t.aor,
            salt = self.salt,
        ))
    }

    /// Starts due polls and counts the unanswered ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut gone = Vec::new();
        let mut start = Vec::new();
        for (k, e) in self.entries.iter_mut() {
            if let Some((b, deadline)) = &e.inflight {
                if now < *deadline {
                    continue;
                }
                self.by_branch.remove(b);
                e.inflight = None;
                e.misses += 1;
                if e.misses >= self.max_misses {
                    gone.push(k.clone());
                    continue;
                }
            }
            if now >= e.next_at {
                start.push(k.clone());
            }
        }
        for k in gone {
            if let Some(e) = self.entries.remove(&k) {
                self.gone.push_back(e.target);
            }
        }
        for k in start {
            self.counter += 1;
            let seq = self.counter;
            let branch = format!("z9hG4bK-poll{:x}-{seq}", self.salt);
            let Some(e) = self.entries.get(&k) else {
                continue;
            };
            let bytes = self.options(&e.target, &branch, seq);
            let dest = e.target.dest;
            let e = self.entries.get_mut(&k).expect("present");
            e.next_at = now + self.interval;
            e.inflight = Some((branch.clone(), now + self.timeout));
            self.by_branch.insert(branch, k);
            self.out.push_back((dest, bytes));
        }
    }

    /// A response to one of our polls? The phone is alive.
    pub fn on_response(&mut self, resp: &Response) -> bool {
        let is_options = resp
            .header(&HeaderName::CSeq)
            .and_then(CSeq::parse)
            .is_some_and(|c| c.method == "OPTIONS");
        if !is_options || resp.status < 200 {
            return is_options && self.is_ours(resp);
        }
        let Some(branch) = branch_of(resp) else {
            return false;
        };
        let Some(k) = self.by_branch.remove(&branch) else {
            return false;
        };
        if let Some(e) = self.entries.get_mut(&k) {
            e.inflight = None;
            e.misses = 0;
        }
        true
    }

    fn is_ours(&self, resp: &Response) -> bool {
        branch_of(resp).is_some_and(|b| self.by_branch.contains_key(&b))
    }
}

fn branch_of(resp: &Response) -> Option<String> {
    resp.header(&HeaderName::Via)
        .and_then(Via::parse_all)
        .and_then(|v| v.into_iter().next())
        .and_then(|v| v.branch().map(str::to_string))
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
                    assert!(p.on_response(&answer(&req, 405)));
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
        assert!(!p.on_response(&answer(&req, 200)));
    }
}
