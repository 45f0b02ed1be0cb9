//! The response context of one proxied request (RFC 3261 §16.7): its branches,
//! the serial targets still to try, and the best final response so far.

use super::branch::BranchKey;
use super::Hop;
use super::Target;
use crate::sip::message::build::{new_tag, response_to};
use crate::sip::message::{reason_phrase, Method, Request, Response};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Instant;

/// One proxied request (server transaction) and its branches.
pub(super) struct Context {
    pub(super) request: Request,
    pub(super) invite: bool,
    /// Branch ids (our Via branch) of the forwarded request.
    pub(super) branches: Vec<String>,
    /// Serial targets not tried yet.
    pub(super) next: VecDeque<Target>,
    /// Best final response so far (§16.7 step 6).
    pub(super) best: Option<(u16, Bytes)>,
    /// A 2xx went upstream: later finals (but further 2xx) stay here.
    pub(super) final_sent: bool,
    /// The caller cancelled (§16.10), or Timer C fired (§16.8).
    pub(super) cancelled: bool,
    /// Timer C fired: the call failed by timeout, not by the caller's CANCEL.
    pub(super) timed_out: bool,
    /// Timer C (§16.6 step 11): an INVITE that has not been answered is cancelled.
    pub(super) timer_c: Option<Instant>,
    /// This context's entry in `Proxy::timer_c_owner`.
    pub(super) timer_c_id: Option<u64>,
    pub(super) record_route: bool,
    /// Where the request came from: the caller's side of a Record-Route.
    pub(super) inbound: Hop,
    /// Peer nodes already tried (a retry after a stale entry goes elsewhere).
    pub(super) tried_peers: Vec<String>,
    /// A peer's "no such binding" answers waiting for the node's retry decision.
    pub(super) stale: Vec<(u16, Response)>,
    /// Some branch has answered (any response, `100 Trying` included): the
    /// INVITE no longer counts in the overload backlog.
    pub(super) answered: bool,
}

impl Context {
    pub(super) fn new(
        request: Request,
        next: VecDeque<Target>,
        record_route: bool,
        inbound: Hop,
    ) -> Context {
        Context {
            invite: request.method == Method::Invite,
            request,
            branches: Vec::new(),
            next,
            best: None,
            final_sent: false,
            cancelled: false,
            timed_out: false,
            timer_c: None,
            timer_c_id: None,
            record_route,
            inbound,
            tried_peers: Vec::new(),
            stale: Vec::new(),
            answered: false,
        }
    }

    /// The keys of the forwarded requests' client transactions (not their CANCELs).
    pub(super) fn branch_keys(&self) -> impl Iterator<Item = BranchKey> + '_ {
        self.branches.iter().map(|b| BranchKey {
            branch: b.clone(),
            method: self.request.method.clone(),
        })
    }

    /// Whether new branches may still start: not after the caller cancelled, a
    /// 2xx went upstream, or a 6xx arrived (§16.7 step 5: "MUST NOT create any
    /// new branches in this context").
    pub(super) fn may_branch(&self) -> bool {
        !self.cancelled && !self.final_sent && !self.has_6xx()
    }

    pub(super) fn has_6xx(&self) -> bool {
        self.best.as_ref().is_some_and(|(s, _)| *s >= 600)
    }

    /// A response this proxy makes itself for the request (no branch answered,
    /// or Timer C), with a fresh To tag (§8.2.6.2).
    pub(super) fn own_response(&self, status: u16) -> Bytes {
        response_to(&self.request, status, Some(&new_tag())).to_bytes()
    }

    /// A branch's failure (`resp` already stripped of our Via, or `None` when we
    /// make the response) is kept if it beats the best so far. A 503 is turned
    /// into 500 (§16.7 step 6: the upstream client must not think *we* are
    /// overloaded and fail over from us).
    pub(super) fn offer(&mut self, status: u16, resp: Option<Response>) {
        let status = if status == 503 { 500 } else { status };
        if self
            .best
            .as_ref()
            .is_some_and(|(old, _)| !better(status, *old))
        {
            return;
        }
        let bytes = match resp {
            Some(mut r) => {
                if r.status != status {
                    r.status = status;
                    r.reason = reason_phrase(status).to_string();
                }
                r.to_bytes()
            }
            None => self.own_response(status),
        };
        self.best = Some((status, bytes));
    }
}

/// RFC 3261 §16.7 step 6: 6xx beat everything; otherwise the lowest class wins
/// (3xx < 4xx < 5xx), and within a class the first seen stays.
pub(super) fn better(new: u16, old: u16) -> bool {
    if old >= 600 {
        return false;
    }
    if new >= 600 {
        return true;
    }
    new / 100 < old / 100
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Message};
    use crate::sip::transport::Protocol;

    fn ctx() -> Context {
        let Message::Request(req) = parse(
            b"INVITE sip:bob@h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n\
              From: <sip:a@h>;tag=1\r\nTo: <sip:bob@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .unwrap() else {
            panic!()
        };
        let inbound = Hop {
            protocol: Protocol::Udp,
            addr: "10.0.0.1:5060".parse().unwrap(),
        };
        Context::new(req, VecDeque::new(), false, inbound)
    }

    #[test]
    fn lowest_class_wins_and_first_of_a_class_stays() {
        assert!(better(302, 486));
        assert!(better(404, 500));
        assert!(!better(486, 404), "same class: the first seen stays");
        assert!(!better(500, 404));
        assert!(better(603, 302), "a 6xx beats a 3xx");
        assert!(!better(302, 600), "nothing beats a 6xx");
        assert!(!better(604, 603));
    }

    #[test]
    fn best_response_keeps_the_lowest_class_and_turns_503_into_500() {
        let mut c = ctx();
        c.offer(503, None);
        assert_eq!(c.best.as_ref().map(|b| b.0), Some(500));
        c.offer(486, None);
        c.offer(404, None);
        assert_eq!(c.best.as_ref().map(|b| b.0), Some(486));
        assert!(c.may_branch());
        c.offer(603, None);
        assert_eq!(c.best.as_ref().map(|b| b.0), Some(603));
        assert!(!c.may_branch(), "no new branch after a 6xx");
        c.offer(302, None);
        assert_eq!(c.best.as_ref().map(|b| b.0), Some(603));
        let bytes = &c.best.as_ref().unwrap().1;
        assert!(bytes.starts_with(b"SIP/2.0 603 "));
    }
}
