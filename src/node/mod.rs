//! One Tandem node: the core that takes framed messages from the transports, runs
//! them through validation and the transaction layer, and hands new requests to the
//! registrar or answers them itself (RFC 3261 §8.2, §16.3, §17.2.3, §18.2).

mod cpu;
mod overload;
mod register;
mod uas;

pub use register::{front_of, RegisterFront};

use crate::admission::overload::CallOverload;
use crate::cluster::Cluster;
use crate::proxy::calls::CallTable;
use crate::proxy::calls::{CallKey, DialogId, EndReason};
use crate::proxy::probe::GatewayProber;
use crate::proxy::stateful::{Action, Hop, Plan, Proxy, ProxyConfig, Target};
use crate::registrar::poll::{ContactPoller, PollTarget};
use crate::registrar::Registrar;
use crate::routing::targets::{self, Me, Reach, Resolved, Routes};
use crate::sip::authenticator::Role;
use crate::sip::message::build::{new_tag, raw_top_via, response_to, stateless_error};
use crate::sip::message::validate::{validate_request, Rejection};
use crate::sip::message::{parse, HeaderName, Message, Method, Request, Response, Via};
use crate::sip::transaction::key::TxKey;
use crate::sip::transaction::table::{RequestOutcome, ServerTransactions, TimerOutput};
use crate::sip::transaction::{Reliability, TimerConfig, TransactionKind};
use crate::sip::transport::flows::Flows;
use crate::sip::transport::via::stamp_via;
use crate::sip::transport::{Handler, Protocol, Replier, Source};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, instrument};

pub struct Node {
    registrar: Registrar,
    /// Seed 002's REGISTER front end; `None` when `[admission] enabled = false`.
    admission: Option<Mutex<RegisterFront>>,
    transactions: Mutex<ServerTransactions<TxKey>>,
    /// Where to send responses that are produced later than the request's handling:
    /// INVITE final responses (Timer G) and every proxied request's answers.
    invite_targets: Mutex<ReplyTargets>,
    calls: Arc<Mutex<CallTable>>,
    proxy: Mutex<Proxy>,
    /// The UDP socket requests are forwarded from (the first UDP listener); none
    /// when the node listens on TCP only (then nothing is forwarded).
    outbound: Option<Arc<tokio::net::UdpSocket>>,
    /// Digit analysis: the dial plan and the gateways of each group, in order.
    routing: Routing,
    /// OPTIONS probes of the gateways; a silent gateway is skipped.
    prober: Mutex<Option<GatewayProber>>,
    /// Held while the proxy's actions are taken and carried out, so two receive
    /// tasks cannot reorder them (a 180 overtaking its 200 breaks callers).
    proxy_out: Mutex<()>,
    /// Open TCP connections by peer: phones registered over TCP are reached over
    /// the connection they registered on.
    flows: Arc<Flows>,
    /// Set when the node is part of a PostgreSQL cluster.
    cluster: Option<Arc<Cluster>>,
    /// OPTIONS polls of this node's phones (`registrar.poll_contacts`).
    poller: Mutex<Option<ContactPoller>>,
    /// Call overload control (`[admission.calls]`); none when it is off.
    overload: Option<Mutex<CallOverload>>,
}

/// Everything a node is built from (see `crate::app::start`, which binds the
/// sockets and joins the cluster first, so nothing is filled in later).
pub struct NodeParts {
    pub registrar: Registrar,
    pub admission: Option<Mutex<RegisterFront>>,
    pub timers: TimerConfig,
    pub max_transactions: usize,
    pub max_calls: usize,
    /// Timer C of proxied INVITEs (RFC 3261 §16.6 step 11).
    pub timer_c: Duration,
    /// The socket requests are forwarded from and its address (Via, Record-Route).
    pub outbound: Option<(Arc<tokio::net::UdpSocket>, SocketAddr)>,
    pub routing: Routing,
    /// The transports' registry of open TCP connections.
    pub flows: Arc<Flows>,
    pub cluster: Option<Arc<Cluster>>,
    pub poller: Option<ContactPoller>,
    /// Call overload control of new INVITEs; `None`: every INVITE is proxied.
    pub overload: Option<CallOverload>,
}

/// The dial plan and where its gateway groups lead, and who may call unchallenged.
pub struct Routing {
    pub routes: Routes,
    /// Challenge requests to forward with 407 unless they come from a gateway or
    /// a trusted address.
    pub authenticate_calls: bool,
    pub trusted: Vec<std::net::IpAddr>,
    /// Gateway OPTIONS probes: how often, and how long silent means down.
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
}

/// The one clock reading an event is handled with (a message's arrival, a timer
/// tick, a commit's completion): every state machine and table the event touches
/// sees the same instant, and the node reads the clock once per event.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// For timers (monotonic).
    pub at: Instant,
    /// For what is recorded or compared across nodes (expiry, the call table).
    pub wall: SystemTime,
}

impl Now {
    pub fn read() -> Now {
        Now {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// `wall` in Unix milliseconds, as the location table keeps time.
    pub fn unix_ms(&self) -> crate::location::UnixMs {
        crate::location::unix_ms(self.wall)
    }
}

/// The transports' handler: a cheap clone of the node.
#[derive(Clone)]
pub struct NodeHandle(pub Arc<Node>);

impl Handler for NodeHandle {
    fn on_message(&self, data: Bytes, source: Source) {
        self.0.handle(&self.0, data, source);
    }
}

fn method_label(m: &Method) -> &'static str {
    // Bounded label values: extension methods from the wire are untrusted.
    match m {
        Method::Invite => "INVITE",
        Method::Ack => "ACK",
        Method::Bye => "BYE",
        Method::Cancel => "CANCEL",
        Method::Register => "REGISTER",
        Method::Options => "OPTIONS",
        Method::Info => "INFO",
        Method::Update => "UPDATE",
        Method::Prack => "PRACK",
        Method::Subscribe => "SUBSCRIBE",
        Method::Notify => "NOTIFY",
        Method::Refer => "REFER",
        Method::Message => "MESSAGE",
        Method::Publish => "PUBLISH",
        Method::Extension(_) => "other",
    }
}

/// RFC 3261 §18.2.2: where the answer to a request from `src` goes.
fn response_dest(via: Option<&Via>, src: &Source) -> SocketAddr {
    crate::sip::transport::via::response_dest(via, src.protocol, src.peer)
}

impl Node {
    pub fn new(parts: NodeParts) -> Node {
        let local = parts
            .outbound
            .as_ref()
            .map(|(_, a)| *a)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5060)));
        let routing = parts.routing;
        // gateways with `probe = false` are never probed, so always up
        let probed: Vec<(String, SocketAddr)> = routing
            .routes
            .gateways
            .iter()
            .filter(|g| g.probe)
            .map(|g| (g.name.clone(), g.address))
            .collect();
        let prober = (!probed.is_empty()).then(|| {
            GatewayProber::new(
                Instant::now(),
                &probed,
                local,
                routing.probe_interval,
                routing.probe_timeout,
                parts.timers,
            )
        });
        Node {
            registrar: parts.registrar,
            admission: parts.admission,
            transactions: Mutex::new(ServerTransactions::new(
                parts.timers,
                parts.max_transactions,
            )),
            invite_targets: Mutex::new(ReplyTargets::default()),
            calls: Arc::new(Mutex::new(CallTable::new(parts.max_calls))),
            proxy: Mutex::new(Proxy::new(ProxyConfig {
                local,
                timers: parts.timers,
                timer_c: parts.timer_c,
            })),
            outbound: parts.outbound.map(|(sock, _)| sock),
            routing,
            prober: Mutex::new(prober),
            proxy_out: Mutex::new(()),
            flows: parts.flows,
            cluster: parts.cluster,
            poller: Mutex::new(parts.poller),
            overload: parts.overload.map(Mutex::new),
        }
    }

    /// The bindings to poll and the TCP bindings whose connection closed, from
    /// the location table (run every few seconds, not per tick: it walks the
    /// whole table). `flow_close` says whether closed flows unregister.
    pub fn refresh_polls(&self, flow_close: bool) {
        let now = Now::read();
        let me = self.registrar.node_id().clone();
        let mut targets = Vec::new();
        let mut closed = Vec::new();
        let polling = self.poller.lock().is_some();
        for b in self.registrar.location().snapshot() {
            if b.owner != me {
                continue;
            }
            let dest = b.source.addr;
            match b.source.protocol {
                Protocol::Udp if polling => targets.push(PollTarget {
                    aor: b.aor,
                    key: b.key,
                    version: b.version,
                    contact: b.contact,
                    dest,
                }),
                Protocol::Tcp if flow_close && !self.flows.is_open(dest) => closed.push(b),
                _ => {}
            }
        }
        for b in closed {
            if self.registrar.drop_binding(&b.aor, &b.key, b.version) {
                tracing::info!(aor = %b.aor, source = %b.source, "TCP flow closed; binding removed");
                metrics::counter!("tandem_bindings_removed_total", "reason" => "flow_closed")
                    .increment(1);
            }
        }
        if let Some(p) = self.poller.lock().as_mut() {
            p.sync(now.at, targets);
        }
        metrics::gauge!("tandem_bindings_active").set(self.registrar.location().len() as f64);
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The call-state table (read by `GET /calls`, fed by the proxy).
    pub fn calls(&self) -> &Arc<Mutex<CallTable>> {
        &self.calls
    }

    pub(crate) fn proxy_owns_route(&self, route: &str) -> bool {
        self.outbound.is_some() && self.proxy.lock().is_own_route(route)
    }

    /// Cancels a proxied INVITE; false if `invite` is not being proxied.
    pub(crate) fn proxy_cancel(&self, now: Now, invite: &TxKey) -> bool {
        let ours = self.proxy.lock().cancel(now.at, invite);
        if ours {
            self.run_proxy_actions(now);
        }
        ours
    }

    /// Carries out what the proxy asked for.
    fn run_proxy_actions(&self, now: Now) {
        let _in_order = self.proxy_out.lock();
        // carrying out an action may give the proxy more to do (a retry)
        loop {
            let actions: Vec<Action> = {
                let mut p = self.proxy.lock();
                std::iter::from_fn(|| p.poll_action()).collect()
            };
            if actions.is_empty() {
                break;
            }
            self.carry_out(now, actions);
        }
    }

    fn carry_out(&self, now: Now, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send {
                    to,
                    transport,
                    bytes,
                } => match transport {
                    Protocol::Udp => {
                        if let Some(sock) = &self.outbound {
                            Replier::Udp(sock.clone()).send(to, bytes);
                        }
                    }
                    // No connection is opened towards a phone: if its flow closed,
                    // the branch times out (RFC 5626 §5.3 flow failure).
                    Protocol::Tcp => match self.flows.get(to) {
                        Some(flow) => flow.send(to, bytes),
                        None => debug!(%to, "tcp flow closed; request not sent"),
                    },
                },
                Action::Respond {
                    server,
                    status,
                    bytes,
                } => {
                    let sent = self
                        .transactions
                        .lock()
                        .send_response(now.at, &server, status, bytes);
                    metrics::counter!("tandem_sip_responses_total", "method" => if server.is_invite() { "INVITE" } else { "other" }, "status" => status_label(status)).increment(1);
                    match sent {
                        Ok(b) => {
                            if let Some((reply, dest)) = self.invite_targets.lock().get(&server) {
                                reply.send(*dest, b);
                            }
                        }
                        Err(e) => debug!(error = %e, status, "proxied response not sent"),
                    }
                }
                Action::Answered {
                    call,
                    to_tag,
                    target,
                } => {
                    let key = CallKey {
                        call_id: call.0,
                        from_tag: call.1,
                    };
                    let where_to = target.dest.to_string();
                    self.calls.lock().on_answered(
                        now.wall,
                        &key,
                        &to_tag,
                        &where_to,
                        target.gateway.as_deref(),
                    );
                }
                Action::Provisional { call, to_tag } => {
                    let key = CallKey {
                        call_id: call.0,
                        from_tag: call.1,
                    };
                    self.calls
                        .lock()
                        .on_provisional(now.wall, &key, to_tag.as_deref());
                }
                Action::Failed {
                    call,
                    status,
                    cancelled,
                } => {
                    let key = CallKey {
                        call_id: call.0,
                        from_tag: call.1,
                    };
                    let mut calls = self.calls.lock();
                    if cancelled {
                        calls.on_cancelled(now.wall, &key);
                    } else {
                        let reason = if status == 408 {
                            EndReason::Timeout
                        } else {
                            EndReason::Rejected
                        };
                        calls.on_failed(now.wall, &key, status, reason);
                    }
                }
                Action::PeerHasNoBinding { server, peer, uri } => {
                    // seed 000: the owner no longer has the phone; our entry is
                    // stale: remove it, look again, and try where it is now
                    let mut retry = Vec::new();
                    if let Ok(u) = crate::sip::message::Uri::parse(&uri) {
                        let aor = u.aor_key();
                        let owner = crate::location::NodeId(peer.as_str().into());
                        let location = self.registrar.location();
                        let n = location.remove_owned(&aor, &owner);
                        if n > 0 {
                            tracing::info!(%peer, %aor, removed = n, "stale cluster entry removed");
                            metrics::counter!("tandem_cluster_stale_entries_removed_total")
                                .increment(n as u64);
                        }
                        retry = targets::peer_targets(
                            &location.lookup(&aor, now.unix_ms()),
                            &uri,
                            self.registrar.node_id(),
                            &self.reach(now),
                        );
                    }
                    self.proxy.lock().retry_after_stale(now.at, &server, retry);
                }
            }
        }
    }

    /// The node's tables as target resolution sees them.
    fn reach(&self, now: Now) -> NodeReach<'_> {
        NodeReach {
            node: self,
            now: now.unix_ms(),
        }
    }

    /// A new request for a user (§16): digit analysis, then the stateful proxy.
    fn forward(&self, now: Now, key: TxKey, mut req: Request, src: &Source, dest: SocketAddr) {
        // issue 9 item 6: past capacity a new call is refused before any work
        if req.method == Method::Invite {
            if let Some(r) = self.admit_call(now, &mut req) {
                return self.respond(now, &key, &req, src, dest, r);
            }
        }
        // RFC 3261 §22.3: local users' calls are authenticated (407); gateways and
        // trusted addresses are not challenged.
        // A request from another node of the cluster is for a phone registered
        // here (seed 000): its caller was authenticated where it came in.
        let from_peer = self.cluster.as_ref().and_then(|c| c.peer_at(src.peer));
        let r = &self.routing;
        let ip = src.peer.ip();
        let trusted = from_peer.is_some()
            || r.trusted.contains(&ip)
            || r.routes.gateways.iter().any(|g| g.address.ip() == ip);
        if r.authenticate_calls && !trusted {
            // RFC 3261 §22.3: the From user's credentials in Proxy-Authorization
            let user = req
                .from()
                .and_then(|f| f.uri.user_unescaped())
                .unwrap_or_default();
            let checked = self
                .registrar
                .authenticator()
                .check(&req, Role::Proxy, &user, now.at);
            if let Err(denied) = checked {
                return self.respond(now, &key, &req, src, dest, denied.into_response());
            }
        }
        let me = Me {
            node: self.registrar.node_id(),
            clustered: self.cluster.as_ref().is_some(),
        };
        let plan = match targets::resolve(
            &req.uri,
            from_peer.is_some(),
            &me,
            &self.routing.routes,
            &self.reach(now),
        ) {
            Resolved::Plan(plan) if self.outbound.is_some() => plan,
            // RFC 3261 §16.5: unknown → 404; a known user with no way to it → 480.
            other => {
                let status = other.status().unwrap_or(480);
                let r = response_to(&req, status, Some(&new_tag()));
                return self.respond(now, &key, &req, src, dest, r);
            }
        };
        if req.method == Method::Invite {
            let call = CallKey {
                call_id: req.call_id().unwrap_or("").to_string(),
                from_tag: req.from().and_then(|f| f.tag()).unwrap_or("").to_string(),
            };
            let caller = req
                .from()
                .map(|f| f.uri.as_str().to_string())
                .unwrap_or_default();
            let mut calls = self.calls.lock();
            if !calls.on_invite(now.wall, call.clone(), &caller, req.uri.as_str())
                && calls.get(&call).is_none()
            {
                // the call-state table is full of live calls
                drop(calls);
                let r = response_to(&req, 503, Some(&new_tag()));
                return self.respond(now, &key, &req, src, dest, r);
            }
        }
        self.invite_targets
            .lock()
            .insert(now.at, key.clone(), (src.reply.clone(), dest));
        // Dialog-creating requests are record-routed so the dialog passes through.
        let record_route = matches!(
            req.method,
            Method::Invite | Method::Subscribe | Method::Refer
        );
        self.proxy
            .lock()
            .forward(now.at, key, req, plan, record_route, src.flow());
        self.run_proxy_actions(now);
    }

    /// A request inside a record-routed dialog (§16.4, §16.12): pop our Route and
    /// send it on to the next Route or the Request-URI.
    fn forward_in_dialog(
        &self,
        now: Now,
        key: Option<TxKey>,
        mut req: Request,
        src: &Source,
        dest: SocketAddr,
    ) {
        // §16.4: our Route entries come off: two when the dialog was double
        // record-routed (RFC 5658), and the last names the side the request goes
        // to; over TCP its flow token says which connection.
        let mut flow = None;
        while let Some(top) = req.headers.first_value(&HeaderName::Route) {
            if !self.proxy_owns_route(top) {
                break;
            }
            flow = self.proxy.lock().flow_of_route(top);
            req.headers.pop_first_value(&HeaderName::Route);
        }
        if req.method == Method::Bye {
            // the table finds the dialog from either side
            let id = DialogId {
                call_id: req.call_id().unwrap_or("").to_string(),
                from_tag: req.from().and_then(|f| f.tag()).unwrap_or("").to_string(),
                to_tag: req.to().and_then(|t| t.tag()).unwrap_or("").to_string(),
            };
            self.calls.lock().on_bye(now.wall, &id);
        }
        let next_route = req
            .headers
            .first_value(&HeaderName::Route)
            .and_then(|r| crate::sip::message::NameAddr::parse(r).map(|n| n.uri));
        if let (None, Some(peer)) = (&next_route, flow) {
            let hop = Hop {
                protocol: Protocol::Tcp,
                addr: peer,
            };
            if self.flows.is_open(peer) {
                return self.forward_in_dialog_to(now, key, req, src, dest, hop);
            }
            // RFC 5626 §5.3: the flow the dialog used is gone.
            if let Some(key) = key {
                let r = response_to(&req, 430, Some(&new_tag()));
                self.respond(now, &key, &req, src, dest, r);
            }
            return;
        }
        let next = next_route.unwrap_or_else(|| req.uri.clone());
        let host = next.host.trim_start_matches('[').trim_end_matches(']');
        let Some(next_hop) = host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, next.port.unwrap_or(5060)))
        else {
            if let Some(key) = key {
                let r = response_to(&req, 404, Some(&new_tag()));
                self.respond(now, &key, &req, src, dest, r);
            }
            return;
        };
        let hop = Hop {
            protocol: Protocol::Udp,
            addr: next_hop,
        };
        self.forward_in_dialog_to(now, key, req, src, dest, hop);
    }

    /// Sends an in-dialog request on to `next`: an ACK statelessly, anything
    /// else through the stateful proxy.
    fn forward_in_dialog_to(
        &self,
        now: Now,
        key: Option<TxKey>,
        req: Request,
        src: &Source,
        dest: SocketAddr,
        next: Hop,
    ) {
        match key {
            None => self.proxy.lock().forward_stateless(req, next),
            Some(key) => {
                self.invite_targets
                    .lock()
                    .insert(now.at, key.clone(), (src.reply.clone(), dest));
                let target = Target {
                    uri: req.uri.as_str().to_string(),
                    dest: next.addr,
                    transport: next.protocol,
                    gateway: None,
                    peer: None,
                };
                self.proxy.lock().forward(
                    now.at,
                    key,
                    req,
                    Plan::Parallel(vec![target]),
                    false,
                    src.flow(),
                );
            }
        }
        self.run_proxy_actions(now);
    }

    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    pub fn active_transactions(&self) -> usize {
        self.transactions.lock().len()
    }

    /// Entry point for every framed message. Never panics on wire input.
    pub fn handle(&self, this: &Arc<Node>, data: Bytes, src: Source) {
        // the one clock reading this message is handled with
        let now = Now::read();
        let msg = match parse(&data) {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("tandem_sip_parse_errors_total", "transport" => src.protocol.as_str(), "reason" => "syntax").increment(1);
                debug!(source = %src, reason = e.reason, "unparseable message");
                // Responses that do not parse are dropped (RFC 4475 `scalarlg`, `bigcode`).
                if e.is_request {
                    if let Some(r) = stateless_error(&data, e.status, e.reason) {
                        // §18.2.2 applies to stateless answers too: the Via port
                        // unless the request asked for rport
                        let dest = response_dest(raw_top_via(&data).as_ref(), &src);
                        src.reply.send(dest, r);
                    }
                }
                return;
            }
        };
        match msg {
            Message::Request(req) => self.handle_request(now, this, req, src),
            Message::Response(resp) => {
                if self.proxy.lock().on_response(now.at, &resp, data.clone()) {
                    self.run_proxy_actions(now);
                    return;
                }
                if let Some(p) = self.prober.lock().as_mut() {
                    if p.on_response(now.at, &resp, data.clone()) {
                        return;
                    }
                }
                if let Some(p) = self.poller.lock().as_mut() {
                    if p.on_response(now.at, &resp, &data) {
                        return;
                    }
                }
                // A response that matches no client transaction is dropped
                // (RFC 3261 §18.1.2; RFC 4475 `unreason`, `bcast`).
                metrics::counter!("tandem_sip_stray_responses_total").increment(1);
                debug!(source = %src, status = resp.status, "response matches no transaction; dropped");
            }
        }
    }

    #[instrument(level = "debug", skip_all, fields(method = %req.method, source = %src))]
    fn handle_request(&self, now: Now, this: &Arc<Node>, mut req: Request, src: Source) {
        metrics::counter!("tandem_sip_requests_total", "method" => method_label(&req.method))
            .increment(1);
        let Some(via) = stamp_via(&mut req, src.peer) else {
            // Without a usable Via there is nowhere to answer (RFC 3261 §18.2.2).
            metrics::counter!("tandem_sip_parse_errors_total", "transport" => src.protocol.as_str(), "reason" => "via").increment(1);
            if let Some(r) = stateless_error(&req.to_bytes(), 400, "Malformed Via") {
                src.reply.send(src.peer, r);
            }
            return;
        };
        let dest = response_dest(Some(&via), &src);
        if let Err(Rejection { status, reason }) = validate_request(&req) {
            metrics::counter!("tandem_sip_parse_errors_total", "transport" => src.protocol.as_str(), "reason" => "invalid").increment(1);
            if req.method != Method::Ack {
                let mut r = response_to(&req, status, Some(&new_tag()));
                r.reason = reason.to_string();
                if status == 501 {
                    r.headers.push(HeaderName::Allow, uas::ALLOW);
                }
                self.send_stateless(&req, &src, dest, r);
            }
            return;
        }
        let reliability = if src.protocol.is_reliable() {
            Reliability::Reliable
        } else {
            Reliability::Unreliable
        };
        if req.method == Method::Ack {
            // An ACK for a non-2xx final response belongs to the INVITE transaction
            // (§17.2.3); an ACK for a 2xx goes end to end along the route set
            // (§16.11: forwarded statelessly), or is dropped if it is not ours.
            let key = TxKey::for_request(&req, &via, "INVITE");
            if self.transactions.lock().handle_ack(now.at, &key) {
                return;
            }
            let top_route = req.headers.first_value(&HeaderName::Route);
            if top_route.is_some_and(|r| self.proxy_owns_route(r)) {
                self.forward_in_dialog(now, None, req, &src, dest);
            }
            return;
        }
        let (kind, method) = match req.method {
            Method::Invite => (TransactionKind::Invite, "INVITE"),
            _ => (TransactionKind::NonInvite, req.method.as_str()),
        };
        let key = TxKey::for_request(&req, &via, method);
        let outcome =
            self.transactions
                .lock()
                .handle_request(now.at, key.clone(), kind, reliability);
        match outcome {
            RequestOutcome::Retransmission { resend } => {
                metrics::counter!("tandem_sip_retransmissions_total", "method" => method_label(&req.method)).increment(1);
                if req.method == Method::Register {
                    self.register_retransmitted(now);
                }
                if let Some(b) = resend {
                    src.reply.send(dest, b);
                }
                return;
            }
            RequestOutcome::Full => {
                let mut r = response_to(&req, 503, Some(&new_tag()));
                r.headers.push(HeaderName::RetryAfter, "5");
                self.send_stateless(&req, &src, dest, r);
                return;
            }
            RequestOutcome::New => {}
        }
        if kind == TransactionKind::Invite && !src.protocol.is_reliable() {
            self.invite_targets
                .lock()
                .insert(now.at, key.clone(), (src.reply.clone(), dest));
        }
        match uas::route(&req, |r| self.proxy_owns_route(r)) {
            uas::Route::Respond(r) => self.respond(now, &key, &req, &src, dest, r),
            uas::Route::TokenRequest(ok) => self.token_request(now, &key, &req, &src, dest, ok),
            uas::Route::Cancel { invite } => {
                // §16.10: a CANCEL for an INVITE being proxied cancels its
                // branches (their 487s make the INVITE's final answer); an INVITE
                // answered here already has its final answer, so 200 suffices.
                let known =
                    self.proxy_cancel(now, &invite) || self.transactions.lock().contains(&invite);
                let r = response_to(&req, if known { 200 } else { 481 }, Some(&new_tag()));
                self.respond(now, &key, &req, &src, dest, r)
            }
            uas::Route::Register => self.register(now, this, key, req, src, dest),
            uas::Route::Forward => self.forward(now, key, req, &src, dest),
            uas::Route::InDialog => self.forward_in_dialog(now, Some(key), req, &src, dest),
        }
    }

    /// Sends a response through the request's server transaction.
    fn respond(
        &self,
        now: Now,
        key: &TxKey,
        req: &Request,
        src: &Source,
        dest: SocketAddr,
        resp: Response,
    ) {
        metrics::counter!("tandem_sip_responses_total", "method" => method_label(&req.method), "status" => status_label(resp.status)).increment(1);
        let bytes = resp.to_bytes();
        let sent = self
            .transactions
            .lock()
            .send_response(now.at, key, resp.status, bytes);
        match sent {
            Ok(b) => src.reply.send(dest, b),
            Err(e) => debug!(error = %e, "response not sent through transaction"),
        }
    }

    fn send_stateless(&self, req: &Request, src: &Source, dest: SocketAddr, resp: Response) {
        metrics::counter!("tandem_sip_responses_total", "method" => method_label(&req.method), "status" => status_label(resp.status)).increment(1);
        src.reply.send(dest, resp.to_bytes());
    }

    /// Runs due transaction timers (Timer G retransmissions, H, I, J expiry).
    pub fn on_tick(self: &Arc<Node>) {
        let now = Now::read();
        self.admission_tick(now, self);
        {
            let mut p = self.proxy.lock();
            if p.poll_timeout().is_some_and(|t| t <= now.at) {
                p.handle_timeout(now.at);
            }
            metrics::gauge!("tandem_proxy_contexts").set(p.active() as f64);
        }
        self.run_proxy_actions(now);
        let probes: Vec<(SocketAddr, Bytes)> = match self.prober.lock().as_mut() {
            Some(p) => {
                p.handle_timeout(now.at);
                for (name, up) in p.states() {
                    metrics::gauge!("tandem_gateway_up", "gateway" => name).set(if up {
                        1.0
                    } else {
                        0.0
                    });
                }
                std::iter::from_fn(|| p.poll_transmit()).collect()
            }
            None => Vec::new(),
        };
        let mut gone = Vec::new();
        let polls: Vec<(SocketAddr, Bytes)> = match self.poller.lock().as_mut() {
            Some(p) => {
                p.handle_timeout(now.at);
                gone.extend(std::iter::from_fn(|| p.poll_gone()));
                std::iter::from_fn(|| p.poll_transmit()).collect()
            }
            None => Vec::new(),
        };
        if let Some(sock) = &self.outbound {
            for (to, b) in probes.into_iter().chain(polls) {
                Replier::Udp(sock.clone()).send(to, b);
            }
        }
        for t in gone {
            // seed 000 FIG. 4B: the phone stopped answering its owner's polls
            if self.registrar.drop_binding(&t.aor, &t.key, t.version) {
                tracing::info!(aor = %t.aor, contact = %t.contact, "phone stopped answering OPTIONS; binding removed");
                metrics::counter!("tandem_bindings_removed_total", "reason" => "poll").increment(1);
                metrics::gauge!("tandem_bindings_active")
                    .set(self.registrar.location().len() as f64);
            }
        }
        let mut out = Vec::new();
        {
            let mut t = self.transactions.lock();
            out.extend(t.handle_timeout(now.at));
            metrics::gauge!("tandem_transactions_active").set(t.len() as f64);
        }
        let mut targets = self.invite_targets.lock();
        for o in out {
            match o {
                TimerOutput::Retransmit(k, b) => {
                    if let Some((reply, dest)) = targets.get(&k) {
                        reply.send(*dest, b);
                    }
                }
                TimerOutput::AckTimeout(k) => {
                    targets.remove(&k);
                }
            }
        }
        // Entries whose transaction ended are dropped once they are old enough to
        // be worth checking: no scan of the whole map per tick.
        let t = self.transactions.lock();
        targets.expire(now.at, |k| t.contains(k));
    }
}

impl crate::admin::NodeStatus for Node {
    fn bindings(&self) -> usize {
        self.registrar.location().len()
    }
    fn transactions(&self) -> usize {
        self.active_transactions()
    }
    fn calls(&self) -> Vec<crate::proxy::calls::Call> {
        // copied under the lock; the admin listener serialises after releasing it
        self.calls.lock().snapshot()
    }
    fn admission(&self) -> Option<crate::admission::Snapshot> {
        self.admission_snapshot()
    }
}

/// The node's tables as [`targets::resolve`] reads them, at one instant.
struct NodeReach<'a> {
    node: &'a Node,
    now: crate::location::UnixMs,
}

impl Reach for NodeReach<'_> {
    fn is_user(&self, user: &str) -> bool {
        self.node.registrar.is_user(user)
    }
    fn bindings(&self, aor: &str) -> Vec<crate::location::Binding> {
        self.node.registrar.location().lookup(aor, self.now)
    }
    fn peer_addr(&self, node: &crate::location::NodeId) -> Option<SocketAddr> {
        self.node
            .cluster
            .as_ref()
            .and_then(|c| c.sip_addr_of(node))
            .and_then(|a| a.parse().ok())
    }
    fn flow_open(&self, addr: SocketAddr) -> bool {
        self.node.flows.is_open(addr)
    }
    fn gateway_up(&self, name: &str) -> bool {
        self.node
            .prober
            .lock()
            .as_ref()
            .is_none_or(|p| p.is_up(name))
    }
}

/// Where to send late responses of a server transaction, with the insertion
/// order so entries are checked for expiry oldest first (amortised O(1) a tick).
#[derive(Default)]
struct ReplyTargets {
    map: HashMap<TxKey, (Replier, SocketAddr)>,
    order: std::collections::VecDeque<(Instant, TxKey)>,
}

impl ReplyTargets {
    /// Checked for expiry after this long; a transaction still alive then is
    /// checked again one period later (an INVITE may ring for minutes).
    const CHECK_AFTER: Duration = Duration::from_secs(40);

    fn insert(&mut self, now: Instant, key: TxKey, target: (Replier, SocketAddr)) {
        if self.map.insert(key.clone(), target).is_none() {
            self.order.push_back((now, key));
        }
    }

    fn get(&self, key: &TxKey) -> Option<&(Replier, SocketAddr)> {
        self.map.get(key)
    }

    fn remove(&mut self, key: &TxKey) {
        self.map.remove(key);
    }

    fn expire(&mut self, now: Instant, alive: impl Fn(&TxKey) -> bool) {
        while let Some((at, _)) = self.order.front() {
            if *at + Self::CHECK_AFTER > now {
                break;
            }
            let Some((_, key)) = self.order.pop_front() else {
                break;
            };
            if !self.map.contains_key(&key) {
                continue;
            }
            if alive(&key) {
                self.order.push_back((now, key));
            } else {
                self.map.remove(&key);
            }
        }
    }
}

fn status_label(s: u16) -> &'static str {
    // Prometheus labels from a fixed set, so cardinality stays bounded.
    match s {
        100 => "100",
        180 => "180",
        183 => "183",
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        407 => "407",
        408 => "408",
        413 => "413",
        415 => "415",
        416 => "416",
        420 => "420",
        423 => "423",
        480 => "480",
        481 => "481",
        482 => "482",
        483 => "483",
        486 => "486",
        487 => "487",
        500 => "500",
        501 => "501",
        503 => "503",
        505 => "505",
        513 => "513",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        s if s < 600 => "5xx",
        _ => "6xx",
    }
}

/// A protocol label for a transport.
pub fn protocol_label(p: Protocol) -> &'static str {
    p.as_str()
}
