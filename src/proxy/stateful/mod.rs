//! The stateful proxy core (RFC 3261 §16), sans-IO: it takes requests and
//! responses with `now`, keeps one client transaction per branch, and produces
//! actions the node carries out (send these bytes there; answer the server
//! transaction with this response). Knows nothing of sockets or of the location
//! table: the node resolves targets and hands them in.

use super::flow_token::FlowTokens;
use crate::sip::message::build::SERVER;
use crate::sip::message::validate::max_forwards;
use crate::sip::message::{HeaderName, Method, Request, Response, Via};
use crate::sip::transaction::client::{ClientEvent, ClientInvite, ClientNonInvite};
use crate::sip::transaction::key::TxKey;
use crate::sip::transaction::{Reliability, TimerConfig};
use crate::sip::transport::Protocol;
use bytes::Bytes;
use std::cmp::Reverse;
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
/// (for TCP, the connection from that address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    pub transport: Protocol,
    pub addr: SocketAddr,
}

fn reliability(t: Protocol) -> Reliability {
    if t.is_reliable() {
        Reliability::Reliable
    } else {
        Reliability::Unreliable
    }
}

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

enum ClientTx {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

impl ClientTx {
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            ClientTx::Invite(t) => t.poll_timeout(),
            ClientTx::NonInvite(t) => t.poll_timeout(),
        }
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        match self {
            ClientTx::Invite(t) => t.poll_transmit(),
            ClientTx::NonInvite(t) => t.poll_transmit(),
        }
    }
    fn poll_event(&mut self) -> Option<ClientEvent> {
        match self {
            ClientTx::Invite(t) => t.poll_event(),
            ClientTx::NonInvite(t) => t.poll_event(),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        match self {
            ClientTx::Invite(t) => t.handle_timeout(now),
            ClientTx::NonInvite(t) => t.handle_timeout(now),
        }
    }
    fn is_terminated(&self) -> bool {
        match self {
            ClientTx::Invite(t) => t.is_terminated(),
            ClientTx::NonInvite(t) => t.is_terminated(),
        }
    }
}

/// One client transaction: a forwarded request or a CANCEL of one.
struct Branch {
    server: TxKey,
    tx: ClientTx,
    dest: SocketAddr,
    /// The request as sent (for CANCEL and ACK construction).
    sent: Request,
    target: Target,
    /// A final response arrived (or the branch timed out).
    done: bool,
    /// A provisional response arrived (CANCEL may be sent, §9.1).
    ringing: bool,
    /// CANCEL wanted before any provisional arrived; sent on the first 1xx.
    cancel_pending: bool,
    is_cancel: bool,
}

/// One proxied request (server transaction) and its branches.
struct Context {
    request: Request,
    invite: bool,
    /// Branch ids (our Via branch) of the forwarded request.
    branches: Vec<String>,
    /// Serial targets not tried yet.
    next: VecDeque<Target>,
    /// Best final response so far (§16.7 step 6).
    best: Option<(u16, Bytes)>,
    final_sent: bool,
    cancelled: bool,
    /// Timer C (§16.6 step 11): an INVITE that has not been answered is cancelled.
    timer_c: Option<Instant>,
    /// This context's entry in `Proxy::timer_c_owner`.
    timer_c_id: Option<u64>,
    record_route: bool,
    /// Where the request came from: the caller's side of a Record-Route.
    inbound: Hop,
    /// Peer nodes already tried (a retry after a stale entry goes elsewhere).
    tried_peers: Vec<String>,
    /// A peer's "no such binding" answers waiting for the node's retry decision.
    stale: Vec<(u16, Response)>,
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
    /// Keyed by `branch|METHOD` (a CANCEL shares its INVITE's branch, §9.1).
    branches: HashMap<String, Branch>,
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    actions: VecDeque<Action>,
    /// Timer C id → the context it belongs to; removed when it fires.
    timer_c_owner: HashMap<u64, TxKey>,
    counter: u64,
    salt: u64,
    flow_tokens: FlowTokens,
}

fn branch_key(branch: &str, method: &str) -> String {
    format!("{branch}|{method}")
}

/// RFC 3261 §16.7 step 6: 6xx beat everything; otherwise the lowest class wins
/// (3xx < 4xx < 5xx), and within a class the first seen stays.
fn better(new: u16, old: u16) -> bool {
    if old >= 600 {
        return false;
    }
    if new >= 600 {
        return true;
    }
    new / 100 < old / 100
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

    /// Whether a server transaction is being proxied (a CANCEL for it is ours).
    pub fn is_proxying(&self, server: &TxKey) -> bool {
        self.contexts.contains_key(server)
    }

    fn new_branch(&mut self) -> String {
        self.counter += 1;
        format!("z9hG4bK-t{:x}-{:x}", self.salt & 0xffff_ffff, self.counter)
    }

    fn via_value(&self, transport: Protocol, branch: &str) -> String {
        match transport {
            Protocol::Udp => format!("SIP/2.0/UDP {};rport;branch={branch}", self.cfg.local),
            Protocol::Tcp => format!("SIP/2.0/TCP {};branch={branch}", self.cfg.local),
        }
    }

    /// Our Record-Route URI as seen from one side of the dialog: over TCP it names
    /// that side's connection (a flow token) so requests towards it reuse the flow.
    fn route_uri(&self, side: Hop) -> String {
        match side.transport {
            Protocol::Udp => format!("<sip:{};lr>", self.cfg.local),
            Protocol::Tcp => format!(
                "<sip:{}@{};transport=tcp;lr>",
                self.flow_tokens.encode(side.addr),
                self.cfg.local
            ),
        }
    }

    /// Record-Route values to put on top of a request going from `inbound` to
    /// `outbound`, topmost first. The same transport on both sides (UDP): one
    /// entry. Otherwise two (RFC 5658 §3.2 double record-routing): the callee sees
    /// the first, the caller the second, each naming its own side.
    fn record_route_values(&self, inbound: Hop, outbound: Hop) -> Vec<String> {
        if inbound.transport == Protocol::Udp && outbound.transport == Protocol::Udp {
            vec![self.route_uri(outbound)]
        } else {
            vec![self.route_uri(outbound), self.route_uri(inbound)]
        }
    }

    /// The connection a Route of ours names (its flow token), if any.
    pub fn flow_of_route(&self, route: &str) -> Option<SocketAddr> {
        let na = crate::sip::message::NameAddr::parse(route)?;
        self.flow_tokens.decode(na.uri.user.as_deref()?)
    }

    /// Whether a Route URI names this proxy (loose routing, RFC 3261 §16.4).
    pub fn is_own_route(&self, route: &str) -> bool {
        let Some(na) = crate::sip::message::NameAddr::parse(route) else {
            return false;
        };
        let u = &na.uri;
        let host = u.host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<std::net::IpAddr>().ok() == Some(self.cfg.local.ip())
            && u.port.unwrap_or(5060) == self.cfg.local.port()
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
        let invite = request.method == Method::Invite;
        let (first, next): (Vec<Target>, VecDeque<Target>) = match plan {
            Plan::Parallel(t) => (t, VecDeque::new()),
            Plan::Serial(mut t) => {
                if t.is_empty() {
                    (t, VecDeque::new())
                } else {
                    let rest = t.split_off(1);
                    (t, rest.into())
                }
            }
        };
        let ctx = Context {
            request,
            invite,
            branches: Vec::new(),
            next,
            best: None,
            final_sent: false,
            cancelled: false,
            timer_c: invite.then(|| now + self.cfg.timer_c),
            timer_c_id: None,
            record_route,
            inbound,
            tried_peers: Vec::new(),
            stale: Vec::new(),
        };
        let mut ctx = ctx;
        if let Some(t) = ctx.timer_c {
            // Timer C entries name the context by a number, found in `timer_c_owner`
            // (no scan of the contexts when one fires).
            self.counter += 1;
            let id = self.counter;
            self.timer_c_owner.insert(id, server.clone());
            self.timers.push(Reverse((t, format!("C|{id}"))));
            ctx.timer_c_id = Some(id);
        }
        self.contexts.insert(server.clone(), ctx);
        if invite {
            // §16.2: a stateful proxy answers an INVITE with 100 Trying itself.
            let ctx = &self.contexts[&server];
            let trying = crate::sip::message::build::response_to(&ctx.request, 100, None);
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

    fn start_branch(&mut self, now: Instant, server: &TxKey, target: Target) {
        let branch = self.new_branch();
        let Some(ctx) = self.contexts.get(server) else {
            return;
        };
        let mut req = ctx.request.clone();
        // §16.6: Request-URI, Max-Forwards, Record-Route, Via.
        if let Ok(uri) = crate::sip::message::Uri::parse(&target.uri) {
            req.uri = uri;
        }
        let mf = max_forwards(&req).saturating_sub(1);
        req.headers.remove_all(&HeaderName::MaxForwards);
        req.headers.push(HeaderName::MaxForwards, mf.to_string());
        if ctx.record_route {
            let outbound = Hop {
                transport: target.transport,
                addr: target.dest,
            };
            let values = self.record_route_values(ctx.inbound, outbound);
            for value in values.into_iter().rev() {
                req.headers.0.insert(
                    0,
                    crate::sip::message::Header {
                        name: HeaderName::RecordRoute,
                        value,
                    },
                );
            }
        }
        let via = self.via_value(target.transport, &branch);
        let Some(ctx) = self.contexts.get_mut(server) else {
            return;
        };
        if let Some(p) = &target.peer {
            ctx.tried_peers.push(p.clone());
        }
        req.headers.0.insert(
            0,
            crate::sip::message::Header {
                name: HeaderName::Via,
                value: via,
            },
        );
        let bytes = req.to_bytes();
        let invite = ctx.invite;
        ctx.branches.push(branch.clone());
        let tx = if invite {
            ClientTx::Invite(ClientInvite::new(
                now,
                reliability(target.transport),
                self.cfg.timers,
                bytes,
            ))
        } else {
            ClientTx::NonInvite(ClientNonInvite::new(
                now,
                reliability(target.transport),
                self.cfg.timers,
                bytes,
            ))
        };
        let method = req.method.as_str().to_string();
        let key = branch_key(&branch, &method);
        self.branches.insert(
            key.clone(),
            Branch {
                server: server.clone(),
                tx,
                dest: target.dest,
                sent: req,
                target,
                done: false,
                ringing: false,
                cancel_pending: false,
                is_cancel: false,
            },
        );
        self.drive(now, &key);
    }

    /// Flushes a client transaction's transmissions and events, re-arms its timer.
    fn drive(&mut self, now: Instant, key: &str) {
        let mut events = Vec::new();
        {
            let Some(b) = self.branches.get_mut(key) else {
                return;
            };
            while let Some(bytes) = b.tx.poll_transmit() {
                self.actions.push_back(Action::Send {
                    to: b.dest,
                    transport: b.target.transport,
                    bytes,
                });
            }
            while let Some(e) = b.tx.poll_event() {
                events.push(e);
            }
            if let Some(t) = b.tx.poll_timeout() {
                self.timers.push(Reverse((t, key.to_string())));
            }
        }
        for e in events {
            self.on_client_event(now, key, e);
        }
        if self.branches.get(key).is_some_and(|b| b.tx.is_terminated()) {
            self.branches.remove(key);
        }
    }

    fn on_client_event(&mut self, now: Instant, key: &str, event: ClientEvent) {
        let Some(b) = self.branches.get_mut(key) else {
            return;
        };
        if b.is_cancel {
            return; // responses to our CANCELs need no further action
        }
        let server = b.server.clone();
        match event {
            ClientEvent::Provisional(status, bytes) => {
                b.ringing = true;
                if b.cancel_pending {
                    b.cancel_pending = false;
                    self.send_cancel(now, key);
                }
                if status == 100 {
                    return; // §16.7 step 5: 100 is not forwarded
                }
                let Some(resp) = upstream(&bytes) else { return };
                let to_tag = crate::sip::message::Message::Response(resp.clone());
                let to_tag = match &to_tag {
                    crate::sip::message::Message::Response(r) => r
                        .header(&HeaderName::To)
                        .and_then(crate::sip::message::NameAddr::parse)
                        .and_then(|t| t.tag().map(str::to_string)),
                    _ => None,
                };
                if let Some(ctx) = self.contexts.get(&server) {
                    if !ctx.final_sent {
                        if ctx.invite {
                            self.actions.push_back(Action::Provisional {
                                call: call_of(&ctx.request),
                                to_tag,
                            });
                        }
                        self.actions.push_back(Action::Respond {
                            server,
                            status,
                            bytes: resp.to_bytes(),
                        });
                    }
                }
            }
            ClientEvent::Final(status, bytes) => {
                let first = !b.done;
                b.done = true;
                let target = b.target.clone();
                let Some(resp) = upstream(&bytes) else { return };
                if (200..300).contains(&status) {
                    // §16.7 step 5: every 2xx is forwarded at once, even after another
                    // branch answered (forked 2xx reach the caller, who BYEs extras).
                    let to_tag = resp
                        .header(&HeaderName::To)
                        .and_then(crate::sip::message::NameAddr::parse)
                        .and_then(|t| t.tag().map(str::to_string))
                        .unwrap_or_default();
                    let bytes = resp.to_bytes();
                    let already = self.contexts.get(&server).is_some_and(|c| c.final_sent);
                    let mut call = None;
                    if let Some(ctx) = self.contexts.get_mut(&server) {
                        ctx.final_sent = true;
                        ctx.timer_c = None;
                        call = ctx.invite.then(|| call_of(&ctx.request));
                    }
                    if let (false, Some(call)) = (already, call) {
                        self.actions.push_back(Action::Answered {
                            call,
                            to_tag,
                            target,
                        });
                    }
                    self.actions.push_back(Action::Respond {
                        server: server.clone(),
                        status,
                        bytes,
                    });
                    if first {
                        self.cancel_others(now, &server, key);
                    }
                    self.maybe_done(&server);
                    return;
                }
                if !first {
                    return;
                }
                if let (Some(peer), 404 | 480) = (&target.peer, status) {
                    if let Some(ctx) = self.contexts.get_mut(&server) {
                        ctx.stale.push((status, resp));
                        self.actions.push_back(Action::PeerHasNoBinding {
                            server: server.clone(),
                            peer: peer.clone(),
                            uri: target.uri.clone(),
                        });
                        return;
                    }
                }
                self.on_branch_failed(now, &server, status, Some(resp));
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

    /// After a peer said it no longer has the phone (seed 000): the node removed
    /// the stale entry and looked again; `targets` are where the phone is now.
    /// Peers already tried are skipped. The stale answer then counts as a
    /// failed branch (the call fails with it if nothing else answers).
    pub fn retry_after_stale(&mut self, now: Instant, server: &TxKey, targets: Vec<Target>) {
        let Some(ctx) = self.contexts.get_mut(server) else {
            return;
        };
        let stale = std::mem::take(&mut ctx.stale);
        if !ctx.cancelled && !ctx.final_sent {
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
    }

    fn on_branch_failed(
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
        if matches!(status, 503 | 408) && !ctx.cancelled {
            if let Some(next) = ctx.next.pop_front() {
                self.start_branch(now, server, next);
                return;
            }
        }
        let status = if status == 503 { 500 } else { status };
        let bytes = match resp {
            Some(mut r) => {
                r.status = status;
                if status == 500 {
                    r.reason = crate::sip::message::reason_phrase(500).to_string();
                }
                r.to_bytes()
            }
            None => {
                let mut r = crate::sip::message::build::response_to(
                    &ctx.request,
                    status,
                    Some(&crate::sip::message::build::new_tag()),
                );
                r.headers.push(HeaderName::Server, SERVER);
                r.to_bytes()
            }
        };
        match &ctx.best {
            Some((old, _)) if !better(status, *old) => {}
            _ => ctx.best = Some((status, bytes)),
        }
        self.maybe_done(server);
    }

    /// When every branch is done and no serial target remains, the best final
    /// response goes upstream (if none did yet) and the context ends.
    fn maybe_done(&mut self, server: &TxKey) {
        let Some(ctx) = self.contexts.get(server) else {
            return;
        };
        let pending = ctx.branches.iter().any(|b| {
            let method = if ctx.invite {
                "INVITE"
            } else {
                ctx.request.method.as_str()
            };
            self.branches
                .get(&branch_key(b, method))
                .is_some_and(|b| !b.done)
        });
        if pending || !ctx.next.is_empty() && !ctx.cancelled && !ctx.final_sent {
            return;
        }
        let Some(ctx) = self.contexts.remove(server) else {
            return;
        };
        if let Some(id) = ctx.timer_c_id {
            self.timer_c_owner.remove(&id);
        }
        if !ctx.final_sent {
            let (status, bytes) = ctx.best.unwrap_or_else(|| {
                let r = crate::sip::message::build::response_to(
                    &ctx.request,
                    408,
                    Some(&crate::sip::message::build::new_tag()),
                );
                (408, r.to_bytes())
            });
            if ctx.invite {
                self.actions.push_back(Action::Failed {
                    call: call_of(&ctx.request),
                    status,
                    cancelled: ctx.cancelled,
                });
            }
            self.actions.push_back(Action::Respond {
                server: server.clone(),
                status,
                bytes,
            });
        }
    }

    fn finish_with(&mut self, server: &TxKey, status: u16) {
        if let Some(ctx) = self.contexts.get_mut(server) {
            let r = crate::sip::message::build::response_to(
                &ctx.request,
                status,
                Some(&crate::sip::message::build::new_tag()),
            );
            ctx.best = Some((status, r.to_bytes()));
        }
        self.maybe_done(server);
    }

    fn cancel_others(&mut self, now: Instant, server: &TxKey, except: &str) {
        let Some(ctx) = self.contexts.get(server) else {
            return;
        };
        let keys: Vec<String> = ctx
            .branches
            .iter()
            .map(|b| branch_key(b, "INVITE"))
            .filter(|k| k != except)
            .collect();
        for k in keys {
            self.cancel_branch(now, &k);
        }
    }

    fn cancel_branch(&mut self, now: Instant, key: &str) {
        let Some(b) = self.branches.get_mut(key) else {
            return;
        };
        if b.done {
            return;
        }
        if b.ringing {
            self.send_cancel(now, key);
        } else {
            // §9.1: a CANCEL may only follow a provisional response.
            b.cancel_pending = true;
        }
    }

    /// §9.1: CANCEL with the branch's Request-URI, Via, From, To, Call-ID, CSeq
    /// number and Route.
    fn send_cancel(&mut self, now: Instant, key: &str) {
        let Some(b) = self.branches.get(key) else {
            return;
        };
        let cancel = derived_request(&b.sent, Method::Cancel, None);
        let branch = key.split('|').next().unwrap_or("").to_string();
        let ckey = branch_key(&branch, "CANCEL");
        let tx = ClientNonInvite::new(
            now,
            reliability(b.target.transport),
            self.cfg.timers,
            cancel.to_bytes(),
        );
        let entry = Branch {
            server: b.server.clone(),
            tx: ClientTx::NonInvite(tx),
            dest: b.dest,
            sent: cancel,
            target: b.target.clone(),
            done: false,
            ringing: false,
            cancel_pending: false,
            is_cancel: true,
        };
        self.branches.insert(ckey.clone(), entry);
        self.drive(now, &ckey);
    }

    /// The caller cancelled (§16.10): every pending branch is cancelled; the
    /// branches' 487s then make the final answer. Returns whether `server` is ours.
    pub fn cancel(&mut self, now: Instant, server: &TxKey) -> bool {
        let Some(ctx) = self.contexts.get_mut(server) else {
            return false;
        };
        ctx.cancelled = true;
        ctx.next.clear();
        let keys: Vec<String> = ctx
            .branches
            .iter()
            .map(|b| branch_key(b, "INVITE"))
            .collect();
        for k in keys {
            self.cancel_branch(now, &k);
        }
        true
    }

    /// A response arrived from downstream. Returns false if it matches no branch
    /// (the node then drops it, or forwards a 2xx retransmission statelessly).
    pub fn on_response(&mut self, now: Instant, resp: &Response, bytes: Bytes) -> bool {
        let Some(via) = resp
            .header(&HeaderName::Via)
            .and_then(Via::parse_all)
            .and_then(|v| v.into_iter().next())
        else {
            return false;
        };
        let Some(branch) = via.branch() else {
            return false;
        };
        let Some(method) = resp
            .header(&HeaderName::CSeq)
            .and_then(crate::sip::message::CSeq::parse)
            .map(|c| c.method)
        else {
            return false;
        };
        let key = branch_key(branch, &method);
        let Some(b) = self.branches.get_mut(&key) else {
            return false;
        };
        let result = match &mut b.tx {
            ClientTx::Invite(t) => {
                let sent = b.sent.clone();
                let resp_for_ack = resp.clone();
                t.handle_response(now, resp.status, bytes, move || {
                    // §17.1.1.3: the ACK for a non-2xx final response
                    derived_request(&sent, Method::Ack, Some(&resp_for_ack)).to_bytes()
                })
            }
            ClientTx::NonInvite(t) => t.handle_response(now, resp.status, bytes),
        };
        if result.is_err() {
            return true;
        }
        self.drive(now, &key);
        true
    }

    /// Runs due timers (client transactions, Timer C).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.timers.pop() else {
                break;
            };
            if let Some(id) = key.strip_prefix("C|") {
                // Timer C: cancel what is still ringing (§16.8).
                let owner = id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| self.timer_c_owner.remove(&id));
                let found =
                    owner.filter(|k| self.contexts.get(k).is_some_and(|c| c.timer_c == Some(at)));
                if let Some(server) = found {
                    self.cancel(now, &server);
                    if let Some(ctx) = self.contexts.get_mut(&server) {
                        ctx.timer_c = None;
                        if ctx.best.is_none() {
                            let r = crate::sip::message::build::response_to(
                                &ctx.request,
                                408,
                                Some(&crate::sip::message::build::new_tag()),
                            );
                            ctx.best = Some((408, r.to_bytes()));
                        }
                    }
                }
                continue;
            }
            let due = self
                .branches
                .get(&key)
                .and_then(|b| b.tx.poll_timeout())
                .is_some_and(|t| t <= now);
            if due {
                if let Some(b) = self.branches.get_mut(&key) {
                    b.tx.handle_timeout(now);
                }
                self.drive(now, &key);
            }
        }
    }

    /// The earliest timer, for the node's tick.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Forwards a request statelessly (an ACK for a 2xx, §16.11): our Via on top,
    /// Max-Forwards decremented.
    pub fn forward_stateless(&mut self, mut req: Request, next: Hop) {
        let mf = max_forwards(&req).saturating_sub(1);
        req.headers.remove_all(&HeaderName::MaxForwards);
        req.headers.push(HeaderName::MaxForwards, mf.to_string());
        let branch = self.new_branch();
        req.headers.0.insert(
            0,
            crate::sip::message::Header {
                name: HeaderName::Via,
                value: self.via_value(next.transport, &branch),
            },
        );
        self.actions.push_back(Action::Send {
            to: next.addr,
            transport: next.transport,
            bytes: req.to_bytes(),
        });
    }
}

/// (Call-ID, From tag) of a request: the call-state table's key.
fn call_of(req: &Request) -> (String, String) {
    (
        req.call_id().unwrap_or("").to_string(),
        req.from().and_then(|f| f.tag()).unwrap_or("").to_string(),
    )
}

/// The response with our Via removed, for upstream (§16.7 step 3).
fn upstream(bytes: &Bytes) -> Option<Response> {
    let crate::sip::message::Message::Response(mut r) = crate::sip::message::parse(bytes).ok()?
    else {
        return None;
    };
    r.headers.pop_first_value(&HeaderName::Via);
    r.headers.get(&HeaderName::Via)?; // a response for us alone has nowhere to go
    Some(r)
}

/// CANCEL or ACK for a sent INVITE (§9.1, §17.1.1.3): same Request-URI, top Via,
/// From, Call-ID, CSeq number and Route; To from `resp` when given (ACK).
fn derived_request(sent: &Request, method: Method, resp: Option<&Response>) -> Request {
    let mut headers = crate::sip::message::Headers::default();
    if let Some(v) = sent.headers.get(&HeaderName::Via) {
        let top = crate::sip::message::scan::split_commas(v)
            .and_then(|p| p.first().map(|s| s.to_string()))
            .unwrap_or_else(|| v.to_string());
        headers.push(HeaderName::Via, top);
    }
    headers.push(HeaderName::MaxForwards, "70");
    for name in [HeaderName::From, HeaderName::CallId] {
        if let Some(v) = sent.headers.get(&name) {
            headers.push(name, v);
        }
    }
    let to = resp
        .and_then(|r| r.header(&HeaderName::To))
        .or_else(|| sent.headers.get(&HeaderName::To));
    if let Some(v) = to {
        headers.push(HeaderName::To, v);
    }
    let seq = sent.cseq().map(|c| c.seq).unwrap_or(1);
    headers.push(HeaderName::CSeq, format!("{seq} {}", method.as_str()));
    for r in sent.headers.get_all(&HeaderName::Route) {
        headers.push(HeaderName::Route, r);
    }
    Request {
        method,
        uri: sent.uri.clone(),
        headers,
        body: Bytes::new(),
        parsed: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Message};

    fn request(text: &str) -> Request {
        match parse(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            _ => panic!("not a request"),
        }
    }

    #[test]
    fn timer_c_cancels_a_call_that_rings_forever() {
        let t0 = Instant::now();
        let mut p = Proxy::new(ProxyConfig {
            local: "127.0.0.1:5060".parse().unwrap(),
            timers: TimerConfig::default(),
            timer_c: Duration::from_secs(180),
        });
        let inv = request(
            "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc1\r\n\
             From: <sip:a@h>;tag=1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: tc\r\nCSeq: 1 INVITE\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        );
        let via = inv.top_via().unwrap();
        let server = TxKey::for_request(&inv, &via, "INVITE");
        let dest: SocketAddr = "127.0.0.1:5090".parse().unwrap();
        let target = Target {
            uri: "sip:bob@127.0.0.1:5090".into(),
            dest,
            transport: Protocol::Udp,
            gateway: None,
            peer: None,
        };
        let caller = Hop {
            transport: Protocol::Udp,
            addr: "127.0.0.1:5070".parse().unwrap(),
        };
        p.forward(
            t0,
            server.clone(),
            inv,
            Plan::Parallel(vec![target]),
            true,
            caller,
        );
        let sent = std::iter::from_fn(|| p.poll_action())
            .find_map(|a| match a {
                Action::Send { bytes, .. } => Some(bytes),
                _ => None,
            })
            .expect("the INVITE goes downstream");
        let fwd = request(std::str::from_utf8(&sent).unwrap());
        // the callee rings: 180 with the branch Tandem put in its Via
        let mut ringing = "SIP/2.0 180 Ringing\r\n".to_string();
        for h in fwd.headers.iter().filter(|h| {
            matches!(
                h.name,
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq
            )
        }) {
            ringing.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        ringing.push_str("To: <sip:bob@127.0.0.1>;tag=b\r\nContent-Length: 0\r\n\r\n");
        let Message::Response(r) = parse(ringing.as_bytes()).unwrap() else {
            panic!()
        };
        assert!(p.on_response(t0 + Duration::from_secs(1), &r, Bytes::from(ringing)));
        while p.poll_action().is_some() {}
        // nothing for 180 s: Timer C cancels the branch
        p.handle_timeout(t0 + Duration::from_secs(181));
        let cancel = std::iter::from_fn(|| p.poll_action()).find_map(|a| match a {
            Action::Send { bytes, .. } if bytes.starts_with(b"CANCEL") => Some(bytes),
            _ => None,
        });
        assert!(cancel.is_some(), "Timer C sends a CANCEL");
        assert!(p.timer_c_owner.is_empty(), "the fired timer is forgotten");
    }
}
