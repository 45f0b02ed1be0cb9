//! The stateful proxy core (RFC 3261 §16), sans-IO: it takes requests and
//! responses with `now`, keeps one client transaction per branch, and produces
//! actions the node carries out (send these bytes there; answer the server
//! transaction with this response). Knows nothing of sockets or of the location
//! table: the node resolves targets and hands them in.
//!
//! One concern a file: [`context`] is the response context of one proxied
//! request (§16.7 step 6 best response), [`branch`] one client transaction and
//! the CANCEL/ACK it derives, [`record_route`] our Via and Record-Route values,
//! [`responses`] what a branch's answer does, [`cancel`] §16.10, [`timers`] the
//! timer wheel with Timer C.

mod branch;
mod cancel;
mod context;
mod record_route;
mod responses;
mod timers;

#[cfg(test)]
mod tests;

use self::branch::{Branch, BranchKey};
use self::context::Context;
use self::timers::Due;
use super::flow_token::FlowTokens;
use crate::admission::overload::CallLoad;
use crate::sip::message::validate::max_forwards;
use crate::sip::message::{Header, HeaderName, Request};
use crate::sip::transaction::key::TxKey;
use crate::sip::transaction::TimerConfig;
use crate::sip::transport::Protocol;
use bytes::Bytes;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Where one branch goes: the Request-URI to put in the request and the address
/// to send it to (for a registered phone: the address its REGISTER came from, so
/// NAT'd phones are reached through their own binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub uri: String,
    pub dest: SocketAddr,
    /// UDP to `dest`, or TCP over the connection from `dest` (a flow).
    pub transport: Protocol,
    /// The gateway's name when the target is a gateway.
    pub gateway: Option<String>,
    /// The cluster node that owns the phone's binding, when the request goes to
    /// that node rather than to the phone (seed 000: the owner delivers it).
    pub peer: Option<String>,
}

/// Where a request came from or goes to: the transport and the peer's address
/// (for TCP, the connection from that address). The same value type the
/// transports report a message's source with.
pub use crate::sip::transport::Flow as Hop;

/// How the targets of one request are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// All at once (forking to a user's bindings, RFC 3261 §16.6).
    Parallel(Vec<Target>),
    /// One after another while each fails with 503, 408 or a timeout (a gateway group).
    Serial(Vec<Target>),
}

/// What the node must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes (a request downstream, or a stateless ACK).
    Send {
        to: SocketAddr,
        transport: Protocol,
        bytes: Bytes,
    },
    /// Answer the server transaction `server` with this response.
    Respond {
        server: TxKey,
        status: u16,
        bytes: Bytes,
    },
    /// For the call-state table (INVITEs only): a branch answered, rang, or the
    /// call failed. `call` is (Call-ID, From tag).
    Answered {
        call: (String, String),
        to_tag: String,
        target: Target,
    },
    Provisional {
        call: (String, String),
        to_tag: Option<String>,
    },
    /// `cancelled` is true only when the caller cancelled (not for Timer C).
    Failed {
        call: (String, String),
        status: u16,
        cancelled: bool,
    },
    /// A peer node answered 404/480 for a request sent to it for its phone: it
    /// no longer has the binding (seed 000's stale entry). `uri` is the
    /// Request-URI it was asked for. The proxy waits for
    /// [`Proxy::retry_after_stale`] before it counts the branch as failed.
    PeerHasNoBinding {
        server: TxKey,
        peer: String,
        uri: String,
    },
}

pub struct ProxyConfig {
    /// Our address, for Via and Record-Route.
    pub local: SocketAddr,
    pub timers: TimerConfig,
    pub timer_c: Duration,
}

pub struct Proxy {
    cfg: ProxyConfig,
    contexts: HashMap<TxKey, Context>,
    /// A CANCEL shares its INVITE's branch (§9.1): the key holds the method too.
    branches: HashMap<BranchKey, Branch>,
    timers: BinaryHeap<Due>,
    actions: VecDeque<Action>,
    /// Timer C id → the context it belongs to; removed when it fires or is re-armed.
    timer_c_owner: HashMap<u64, TxKey>,
    counter: u64,
    salt: u64,
    flow_tokens: FlowTokens,
    /// Call overload control's load (`crate::admission::overload`): INVITE
    /// contexts no branch has answered yet, and how many got a first answer.
    invites_unanswered: usize,
    invites_answered: u64,
}

impl Proxy {
    pub fn new(cfg: ProxyConfig) -> Proxy {
        Proxy {
            cfg,
            contexts: HashMap::new(),
            branches: HashMap::new(),
            timers: BinaryHeap::new(),
            actions: VecDeque::new(),
            timer_c_owner: HashMap::new(),
            counter: 0,
            salt: rand::random(),
            flow_tokens: FlowTokens::random(),
            invites_unanswered: 0,
            invites_answered: 0,
        }
    }

    pub fn set_local(&mut self, local: SocketAddr) {
        self.cfg.local = local;
    }

    pub fn local(&self) -> SocketAddr {
        self.cfg.local
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn active(&self) -> usize {
        self.contexts.len()
    }

    /// Proxied INVITEs no response has come back for, and a count of first
    /// answers: the load measure of call overload control.
    pub fn invite_load(&self) -> CallLoad {
        CallLoad {
            unanswered: self.invites_unanswered,
            answered_total: self.invites_answered,
        }
    }

    /// The first response of any branch of `server`'s INVITE (or its end
    /// without one) takes it out of the backlog.
    fn mark_answered(&mut self, server: &TxKey) {
        if let Some(ctx) = self.contexts.get_mut(server) {
            if ctx.invite && !ctx.answered {
                ctx.answered = true;
                self.invites_unanswered = self.invites_unanswered.saturating_sub(1);
                self.invites_answered += 1;
            }
        }
    }

    /// Whether a server transaction is being proxied (a CANCEL for it is ours).
    pub fn is_proxying(&self, server: &TxKey) -> bool {
        self.contexts.contains_key(server)
    }

    /// A Via branch unique to this proxy instance (§8.1.1.7 magic cookie first).
    fn new_branch(&mut self) -> String {
        self.counter += 1;
        format!("z9hG4bK-t{:x}-{:x}", self.salt & 0xffff_ffff, self.counter)
    }

    /// Forwards a new request (server transaction `server`, already answered
    /// nothing) according to `plan`. `record_route` for dialog-creating requests.
    pub fn forward(
        &mut self,
        now: Instant,
        server: TxKey,
        request: Request,
        plan: Plan,
        record_route: bool,
        inbound: Hop,
    ) {
        let (first, next): (Vec<Target>, VecDeque<Target>) = match plan {
            Plan::Parallel(t) => (t, VecDeque::new()),
            Plan::Serial(mut t) => {
                let rest = if t.is_empty() {
                    Vec::new()
                } else {
                    t.split_off(1)
                };
                (t, rest.into())
            }
        };
        let ctx = Context::new(request, next, record_route, inbound);
        let invite = ctx.invite;
        if let Some(old) = self.contexts.insert(server.clone(), ctx) {
            // the transaction layer never hands the same key twice; if it
            // did, the replaced context leaves the backlog with it
            if old.invite && !old.answered {
                self.invites_unanswered = self.invites_unanswered.saturating_sub(1);
            }
        }
        if invite {
            self.invites_unanswered += 1;
            // §16.6 step 11: Timer C bounds an INVITE that rings and is never answered.
            self.arm_timer_c(now, &server);
            // §16.2: a stateful proxy answers an INVITE with 100 Trying itself.
            let trying =
                crate::sip::message::build::response_to(&self.contexts[&server].request, 100, None);
            self.actions.push_back(Action::Respond {
                server: server.clone(),
                status: 100,
                bytes: trying.to_bytes(),
            });
        }
        if first.is_empty() {
            self.finish_with(&server, 480);
            return;
        }
        for t in first {
            self.start_branch(now, &server, t);
        }
    }

    /// §16.6: a copy of the request for `target`, with its Request-URI,
    /// Max-Forwards, Record-Route and our Via, sent in a new client transaction.
    fn start_branch(&mut self, now: Instant, server: &TxKey, target: Target) {
        let branch = self.new_branch();
        let Some(ctx) = self.contexts.get(server) else {
            return;
        };
        let mut req = ctx.request.clone();
        if let Ok(uri) = crate::sip::message::Uri::parse(&target.uri) {
            req.uri = uri;
        }
        decrement_max_forwards(&mut req);
        if ctx.record_route {
            let outbound = Hop {
                protocol: target.transport,
                addr: target.dest,
            };
            let values = self.record_route_values(ctx.inbound, outbound);
            push_on_top(&mut req, HeaderName::RecordRoute, values);
        }
        push_on_top(
            &mut req,
            HeaderName::Via,
            vec![self.via_value(target.transport, &branch)],
        );
        let Some(ctx) = self.contexts.get_mut(server) else {
            return;
        };
        if let Some(p) = &target.peer {
            ctx.tried_peers.push(p.clone());
        }
        ctx.branches.push(branch.clone());
        let key = BranchKey {
            branch,
            method: req.method.clone(),
        };
        let b = Branch::new(now, server.clone(), target, req, self.cfg.timers);
        self.branches.insert(key.clone(), b);
        self.drive(now, &key, None);
    }

    /// After a peer said it no longer has the phone (seed 000): the node removed
    /// the stale entry and looked again; `targets` are where the phone is now.
    /// Peers already tried are skipped. The stale answer then counts as a
    /// failed branch (the call fails with it if nothing else answers).
    pub fn retry_after_stale(&mut self, now: Instant, server: &TxKey, targets: Vec<Target>) {
        let Some(ctx) = self.contexts.get_mut(server) else {
            return;
        };
        let stale = std::mem::take(&mut ctx.stale);
        if ctx.may_branch() {
            let fresh: Vec<Target> = targets
                .into_iter()
                .filter(|t| {
                    t.peer
                        .as_ref()
                        .is_some_and(|p| !ctx.tried_peers.contains(p))
                })
                .collect();
            for t in fresh {
                self.start_branch(now, server, t);
            }
        }
        for (status, resp) in stale {
            self.on_branch_failed(now, server, status, Some(resp));
        }
        // with no stale answer left to wait for, the context may be complete
        self.maybe_done(server);
    }

    /// Forwards a request statelessly (an ACK for a 2xx, §16.11): our Via on top,
    /// Max-Forwards decremented.
    pub fn forward_stateless(&mut self, mut req: Request, next: Hop) {
        decrement_max_forwards(&mut req);
        let branch = self.new_branch();
        push_on_top(
            &mut req,
            HeaderName::Via,
            vec![self.via_value(next.protocol, &branch)],
        );
        self.actions.push_back(Action::Send {
            to: next.addr,
            transport: next.protocol,
            bytes: req.to_bytes(),
        });
    }
}

/// §16.6 step 3: one less hop for the request we send on.
fn decrement_max_forwards(req: &mut Request) {
    let mf = max_forwards(req).saturating_sub(1);
    req.headers.remove_all(&HeaderName::MaxForwards);
    req.headers.push(HeaderName::MaxForwards, mf.to_string());
}

/// Puts header fields above all others, `values[0]` topmost (§16.6 steps 4 and 8).
fn push_on_top(req: &mut Request, name: HeaderName, values: Vec<String>) {
    let fields = values.into_iter().map(|value| Header {
        name: name.clone(),
        value,
    });
    req.headers.0.splice(0..0, fields);
}

/// (Call-ID, From tag) of a request: the call-state table's key.
fn call_of(req: &Request) -> (String, String) {
    (
        req.call_id().unwrap_or("").to_string(),
        req.from().and_then(|f| f.tag()).unwrap_or("").to_string(),
    )
}
