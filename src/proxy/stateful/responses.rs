//! What a branch's response or failure does (RFC 3261 §16.7): provisional and
//! 2xx responses go upstream at once, other finals compete for the best
//! response, and the context ends when no branch is left.

use super::branch::BranchKey;
use super::timers::{Due, TimerKey};
use super::{call_of, Action, Proxy};
use crate::sip::message::{CSeq, HeaderName, Method, NameAddr, Response};
use crate::sip::transaction::client::ClientEvent;
use crate::sip::transaction::key::TxKey;
use bytes::Bytes;
use std::time::Instant;

impl Proxy {
    /// A response arrived from downstream. Returns false if it matches no branch
    /// (the node then drops it, or forwards a 2xx retransmission statelessly).
    pub fn on_response(&mut self, now: Instant, resp: &Response, bytes: Bytes) -> bool {
        // §17.1.3: matched on the top Via's branch and the CSeq method
        let Some(via) = resp.top_via() else {
            return false;
        };
        let Some(branch) = via.branch() else {
            return false;
        };
        let Some(cseq) = resp.header(&HeaderName::CSeq).and_then(CSeq::parse) else {
            return false;
        };
        let key = BranchKey {
            branch: branch.to_string(),
            method: Method::from_wire(&cseq.method),
        };
        let Some(b) = self.branches.get_mut(&key) else {
            return false;
        };
        if b.on_response(now, resp, bytes) {
            // the events this queued are about `resp`: it is handed on parsed
            self.drive(now, &key, Some(resp));
        }
        true
    }

    /// Flushes a client transaction's transmissions and events, re-arms its timer.
    /// `resp` is the response just passed to it, if any: the one its
    /// Provisional/Final event is about.
    pub(super) fn drive(&mut self, now: Instant, key: &BranchKey, resp: Option<&Response>) {
        let mut events = Vec::new();
        {
            let Some(b) = self.branches.get_mut(key) else {
                return;
            };
            while let Some(bytes) = b.tx.poll_transmit() {
                self.actions.push_back(Action::Send {
                    to: b.dest(),
                    transport: b.target.transport,
                    bytes,
                });
            }
            while let Some(e) = b.tx.poll_event() {
                events.push(e);
            }
            let next = b.tx.poll_timeout();
            // one heap entry per deadline: a response that leaves the deadline
            // where it was adds nothing
            if let Some(at) = next.filter(|&t| b.armed != Some(t)) {
                self.timers.push(Due {
                    at,
                    key: TimerKey::Branch(key.clone()),
                });
            }
            b.armed = next;
        }
        for e in events {
            self.on_client_event(now, key, e, resp);
        }
        if self.branches.get(key).is_some_and(|b| b.tx.is_terminated()) {
            self.branches.remove(key);
        }
    }

    fn on_client_event(
        &mut self,
        now: Instant,
        key: &BranchKey,
        event: ClientEvent,
        resp: Option<&Response>,
    ) {
        let Some(b) = self.branches.get_mut(key) else {
            return;
        };
        if b.is_cancel {
            return; // responses to our CANCELs need no further action
        }
        let server = b.server.clone();
        if matches!(event, ClientEvent::Provisional(..) | ClientEvent::Final(..)) {
            self.mark_answered(&server);
        }
        let Some(b) = self.branches.get_mut(key) else {
            return;
        };
        match event {
            ClientEvent::Provisional(status, _) => {
                b.ringing = true;
                if b.cancel_pending {
                    b.cancel_pending = false;
                    self.send_cancel(now, key);
                }
                if status == 100 {
                    return; // §16.7 step 5: 100 is not forwarded
                }
                // Response events only come out of `on_response`, which passes
                // the parsed response along.
                let Some(up) = resp.and_then(upstream) else {
                    return;
                };
                self.on_provisional(now, &server, status, up);
            }
            ClientEvent::Final(status, _) => {
                let first = !b.done;
                b.done = true;
                let up = resp.and_then(upstream);
                if (200..300).contains(&status) {
                    if let Some(up) = up {
                        self.on_2xx(now, &server, key, first, status, up);
                    }
                    return;
                }
                if !first {
                    return;
                }
                let target = b.target.clone();
                if let (Some(peer), 404 | 480, Some(up)) = (&target.peer, status, &up) {
                    if let Some(ctx) = self.contexts.get_mut(&server) {
                        ctx.stale.push((status, up.clone()));
                        self.actions.push_back(Action::PeerHasNoBinding {
                            server: server.clone(),
                            peer: peer.clone(),
                            uri: target.uri.clone(),
                        });
                        return;
                    }
                }
                if status >= 600 {
                    // §16.7 step 5: a 6xx ends the search; what still rings is
                    // cancelled (§16.10) and the 6xx goes up once they are done.
                    self.cancel_others(now, &server, key);
                }
                self.on_branch_failed(now, &server, status, up);
            }
            ClientEvent::Timeout | ClientEvent::TransportError => {
                if !b.done {
                    b.done = true;
                    self.on_branch_failed(now, &server, 408, None);
                }
            }
            ClientEvent::Terminated => {}
        }
    }

    /// §16.7 step 5: a provisional other than 100 goes upstream at once (until a
    /// final has), and restarts Timer C (§16.7 step 2).
    fn on_provisional(&mut self, now: Instant, server: &TxKey, status: u16, up: Response) {
        let Some(ctx) = self.contexts.get(server) else {
            return;
        };
        if ctx.final_sent {
            return;
        }
        if ctx.invite {
            if ctx.timer_c.is_some() {
                self.arm_timer_c(now, server);
            }
            self.actions.push_back(Action::Provisional {
                call: call_of(&self.contexts[server].request),
                to_tag: to_tag(&up),
            });
        }
        self.actions.push_back(Action::Respond {
            server: server.clone(),
            status,
            bytes: up.to_bytes(),
        });
    }

    /// §16.7 step 5: every 2xx is forwarded at once, even after another branch
    /// answered (forked 2xx reach the caller, who BYEs the extras). The first
    /// one cancels the other branches (§16.7 step 10).
    fn on_2xx(
        &mut self,
        now: Instant,
        server: &TxKey,
        key: &BranchKey,
        first: bool,
        status: u16,
        up: Response,
    ) {
        let mut answered = None;
        if let Some(ctx) = self.contexts.get_mut(server) {
            if !ctx.final_sent && ctx.invite {
                answered = Some(call_of(&ctx.request));
            }
            ctx.final_sent = true;
            ctx.timer_c = None;
        }
        if let (Some(call), Some(b)) = (answered, self.branches.get(key)) {
            self.actions.push_back(Action::Answered {
                call,
                to_tag: to_tag(&up).unwrap_or_default(),
                target: b.target.clone(),
            });
        }
        self.actions.push_back(Action::Respond {
            server: server.clone(),
            status,
            bytes: up.to_bytes(),
        });
        if first {
            self.cancel_others(now, server, key);
        }
        self.maybe_done(server);
    }

    /// A branch failed with `status` (`resp` is its response for upstream, or
    /// `None` for a timeout).
    pub(super) fn on_branch_failed(
        &mut self,
        now: Instant,
        server: &TxKey,
        status: u16,
        resp: Option<Response>,
    ) {
        let Some(ctx) = self.contexts.get_mut(server) else {
            return;
        };
        // A gateway that is overloaded or silent: the next one of its group is
        // tried, and its 503 never goes upstream (§16.7 step 6 turns it into 500).
        if matches!(status, 503 | 408) {
            if ctx.may_branch() {
                if let Some(next) = ctx.next.pop_front() {
                    self.start_branch(now, server, next);
                    return;
                }
            }
        } else {
            // Any other answer is the group's answer: the rest is not tried.
            ctx.next.clear();
        }
        ctx.offer(status, resp);
        self.maybe_done(server);
    }

    /// When every branch is done and no serial target remains, the best final
    /// response goes upstream (if none did yet) and the context ends.
    pub(super) fn maybe_done(&mut self, server: &TxKey) {
        let Some(ctx) = self.contexts.get(server) else {
            return;
        };
        let pending = ctx
            .branch_keys()
            .any(|k| self.branches.get(&k).is_some_and(|b| !b.done));
        // A peer's stale answer waits for `retry_after_stale` (the phone may be
        // found elsewhere), which the node calls for every PeerHasNoBinding.
        let waiting = !ctx.stale.is_empty();
        let serial_left = !ctx.next.is_empty() && ctx.may_branch();
        if pending || waiting || serial_left {
            return;
        }
        // an INVITE that ends unanswered (Timer B, no target) leaves the backlog
        self.mark_answered(server);
        let Some(ctx) = self.contexts.remove(server) else {
            return;
        };
        if let Some(id) = ctx.timer_c_id {
            self.timer_c_owner.remove(&id);
        }
        if ctx.final_sent {
            return;
        }
        let (status, bytes) = match ctx.best {
            Some(best) => best,
            None => (408, ctx.own_response(408)),
        };
        if ctx.invite {
            self.actions.push_back(Action::Failed {
                call: call_of(&ctx.request),
                status,
                cancelled: ctx.cancelled && !ctx.timed_out,
            });
        }
        self.actions.push_back(Action::Respond {
            server: server.clone(),
            status,
            bytes,
        });
    }

    /// Ends a context with a response of our own (no target to try).
    pub(super) fn finish_with(&mut self, server: &TxKey, status: u16) {
        if let Some(ctx) = self.contexts.get_mut(server) {
            ctx.best = Some((status, ctx.own_response(status)));
        }
        self.maybe_done(server);
    }
}

/// The response with our Via removed, for upstream (§16.7 step 3); `None` for a
/// response with no Via left (it was for us alone and has nowhere to go).
fn upstream(resp: &Response) -> Option<Response> {
    let mut r = resp.clone();
    r.headers.pop_first_value(&HeaderName::Via);
    r.headers.get(&HeaderName::Via)?;
    Some(r)
}

/// The callee's To tag: which dialog (fork) a response belongs to.
fn to_tag(resp: &Response) -> Option<String> {
    resp.header(&HeaderName::To)
        .and_then(NameAddr::parse)
        .and_then(|t| t.tag().map(str::to_string))
}
