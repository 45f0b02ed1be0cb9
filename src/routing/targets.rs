//! Target resolution (RFC 3261 §16.5, seed 000's digit analysis and "device
//! process" lookup): a new request's Request-URI, the dial plan, the composite
//! registration table and what the node knows of peers, flows and gateways →
//! the branches the proxy tries. Pure: the node gathers the views, this decides.

use super::{Destination, DialPlan, GatewayConfig};
use crate::location::{Binding, NodeId};
use crate::proxy::stateful::{Plan, Target};
use crate::sip::message::Uri;
use crate::sip::transport::Protocol;
use std::collections::HashSet;
use std::net::SocketAddr;

/// The dial plan and where its gateway groups lead (fixed at start).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    pub dial_plan: DialPlan,
    pub gateways: Vec<GatewayConfig>,
}

/// What target resolution needs to know of the node at the moment of the request.
/// The node answers from its tables; tests answer from plain data.
pub trait Reach {
    /// Whether `user` is an account here (a known user without bindings gets 480,
    /// an unknown one 404).
    fn is_user(&self, user: &str) -> bool;
    /// The AOR's current bindings in the composite table (every node's).
    fn bindings(&self, aor: &str) -> Vec<Binding>;
    /// Where a live peer node takes SIP; `None` when it is dead, unknown, or this
    /// node is not in a cluster.
    fn peer_addr(&self, node: &NodeId) -> Option<SocketAddr>;
    /// Whether the TCP connection from `addr` is still open (RFC 5626 flow).
    fn flow_open(&self, addr: SocketAddr) -> bool;
    /// Whether a gateway answers its OPTIONS probes (always, if not probed).
    fn gateway_up(&self, name: &str) -> bool;
}

/// Who this node is, for deciding which bindings it delivers itself.
#[derive(Debug, Clone)]
pub struct Me<'a> {
    pub node: &'a NodeId,
    /// In a cluster, only bindings this node owns are delivered by it; the others
    /// go through their owner. A single node delivers every binding it has.
    pub clustered: bool,
}

/// The outcome of resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Branches to try.
    Plan(Plan),
    /// Nobody by that name or number: 404 (RFC 3261 §16.5).
    NotFound,
    /// A known user that no branch can reach now: 480.
    Unavailable,
}

impl Resolved {
    /// The status to answer with when there is nothing to try.
    pub fn status(&self) -> Option<u16> {
        match self {
            Resolved::Plan(_) => None,
            Resolved::NotFound => Some(404),
            Resolved::Unavailable => Some(480),
        }
    }
}

/// Resolves a new request for a user. `from_peer`: it came from another node of
/// the cluster, for a phone registered here, so only this node's phones are
/// tried (no loop back to peers).
pub fn resolve(
    uri: &Uri,
    from_peer: bool,
    me: &Me<'_>,
    routes: &Routes,
    reach: &impl Reach,
) -> Resolved {
    let user = uri.user_unescaped().unwrap_or_default();
    let destination = routes.dial_plan.resolve(uri, |aor| {
        reach.is_user(&user) || !reach.bindings(aor).is_empty()
    });
    match destination {
        Destination::Local { aor } => {
            let bindings = reach.bindings(&aor);
            let mut targets = Vec::new();
            if !from_peer {
                targets = peer_targets(&bindings, uri.as_str(), me.node, reach);
            }
            targets.extend(local_targets(&bindings, me, reach));
            let known = !bindings.is_empty() || reach.is_user(&user);
            match (targets.is_empty(), known) {
                (false, _) => Resolved::Plan(Plan::Parallel(targets)),
                (true, true) => Resolved::Unavailable,
                (true, false) => Resolved::NotFound,
            }
        }
        Destination::Gateway(m) => {
            let mut gws: Vec<&GatewayConfig> = routes
                .gateways
                .iter()
                .filter(|g| g.group == m.gateway_group)
                .collect();
            gws.sort_by_key(|g| g.order);
            // a gateway that stopped answering OPTIONS is skipped until it answers
            let targets: Vec<Target> = gws
                .into_iter()
                .filter(|g| reach.gateway_up(&g.name))
                .map(|g| Target {
                    uri: format!("sip:{}@{}", m.number, g.address),
                    dest: g.address,
                    transport: Protocol::Udp,
                    gateway: Some(g.name.clone()),
                    peer: None,
                })
                .collect();
            if targets.is_empty() {
                // the number is routed, its gateways are not reachable
                Resolved::Unavailable
            } else {
                Resolved::Plan(Plan::Serial(targets))
            }
        }
        Destination::NotFound => Resolved::NotFound,
    }
}

/// Branches to the other nodes that own some of `bindings`: one per owner, with
/// Request-URI `uri` (seed 000: the owner node's device process delivers the call
/// over the phone's own flow). Dead or unknown owners are skipped: their phones
/// re-register elsewhere. Also what seed 000's retry after a stale entry tries,
/// given the AOR's bindings as they are after the stale ones were removed.
pub fn peer_targets(
    bindings: &[Binding],
    uri: &str,
    me: &NodeId,
    reach: &impl Reach,
) -> Vec<Target> {
    let mut seen = HashSet::new();
    let mut targets = Vec::new();
    for owner in bindings.iter().map(|b| &b.owner).filter(|o| *o != me) {
        if !seen.insert(owner) {
            continue;
        }
        let Some(dest) = reach.peer_addr(owner) else {
            continue;
        };
        targets.push(Target {
            uri: uri.to_string(),
            dest,
            transport: Protocol::Udp,
            gateway: None,
            peer: Some(owner.0.to_string()),
        });
    }
    targets
}

/// Branches to the phones this node delivers itself, where their REGISTER came
/// from (NAT-friendly): over UDP to that address, over TCP on that connection
/// while it is open (a closed flow is no way to the phone, RFC 5626 §5.3).
fn local_targets<'a>(
    bindings: &'a [Binding],
    me: &'a Me<'_>,
    reach: &'a impl Reach,
) -> impl Iterator<Item = Target> + 'a {
    bindings
        .iter()
        .filter(|b| !me.clustered || &b.owner == me.node)
        .filter(|b| match b.source.protocol {
            Protocol::Udp => true,
            Protocol::Tcp => reach.flow_open(b.source.addr),
        })
        .map(|b| Target {
            uri: b.contact.clone(),
            dest: b.source.addr,
            transport: b.source.protocol,
            gateway: None,
            peer: None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::Flow;
    use crate::routing::RouteConfig;
    use std::collections::HashMap;

    #[derive(Default)]
    struct World {
        users: Vec<&'static str>,
        bindings: HashMap<String, Vec<Binding>>,
        peers: HashMap<&'static str, SocketAddr>,
        open_flows: Vec<SocketAddr>,
        down: Vec<&'static str>,
    }

    impl Reach for World {
        fn is_user(&self, user: &str) -> bool {
            self.users.contains(&user)
        }
        fn bindings(&self, aor: &str) -> Vec<Binding> {
            self.bindings.get(aor).cloned().unwrap_or_default()
        }
        fn peer_addr(&self, node: &NodeId) -> Option<SocketAddr> {
            self.peers.get(&*node.0).copied()
        }
        fn flow_open(&self, addr: SocketAddr) -> bool {
            self.open_flows.contains(&addr)
        }
        fn gateway_up(&self, name: &str) -> bool {
            !self.down.contains(&name)
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn binding(aor: &str, contact: &str, source: &str, owner: &str) -> Binding {
        Binding {
            aor: aor.into(),
            key: contact.into(),
            contact: contact.into(),
            instance: None,
            reg_id: None,
            q: None,
            call_id: "c".into(),
            cseq: 1,
            expires_at: u64::MAX,
            path: Vec::new(),
            source: source.parse::<Flow>().unwrap(),
            user_agent: None,
            owner: NodeId(owner.into()),
            version: 1,
        }
    }

    fn routes() -> Routes {
        let gw = |name: &str, address: &str, order| GatewayConfig {
            name: name.into(),
            address: addr(address),
            group: "pstn".into(),
            order,
            probe: true,
        };
        Routes {
            dial_plan: DialPlan::new(vec![RouteConfig {
                pattern: "9.XXXX".into(),
                gateway_group: "pstn".into(),
                strip: 0,
                prefix: String::new(),
            }])
            .unwrap(),
            // configured out of order: `order` decides
            gateways: vec![
                gw("gw2", "127.0.0.1:5092", 2),
                gw("gw1", "127.0.0.1:5091", 1),
            ],
        }
    }

    fn uri(s: &str) -> Uri {
        Uri::parse(s).unwrap()
    }

    const A: &str = "node-a";

    fn me(clustered: bool) -> (NodeId, bool) {
        (NodeId(A.into()), clustered)
    }

    fn run(world: &World, u: &str, from_peer: bool, clustered: bool) -> Resolved {
        let (node, clustered) = me(clustered);
        resolve(
            &uri(u),
            from_peer,
            &Me {
                node: &node,
                clustered,
            },
            &routes(),
            world,
        )
    }

    fn targets(r: Resolved) -> Vec<(String, SocketAddr, Protocol, Option<String>)> {
        match r {
            Resolved::Plan(Plan::Parallel(t)) | Resolved::Plan(Plan::Serial(t)) => t
                .into_iter()
                .map(|t| (t.uri, t.dest, t.transport, t.peer.or(t.gateway)))
                .collect(),
            other => panic!("no plan: {other:?}"),
        }
    }

    #[test]
    fn a_local_user_forks_to_every_binding_at_its_source() {
        let mut w = World {
            users: vec!["bob"],
            open_flows: vec![addr("127.0.0.1:40001")],
            ..World::default()
        };
        w.bindings.insert(
            "sip:bob@example.com".into(),
            vec![
                binding(
                    "sip:bob@example.com",
                    "sip:bob@10.0.0.5:5060",
                    "udp:127.0.0.1:5070",
                    A,
                ),
                binding(
                    "sip:bob@example.com",
                    "sip:bob@10.0.0.6:5060;transport=tcp",
                    "tcp:127.0.0.1:40001",
                    A,
                ),
            ],
        );
        let r = run(&w, "sip:bob@example.com", false, false);
        assert!(matches!(r, Resolved::Plan(Plan::Parallel(_))));
        assert_eq!(
            targets(r),
            vec![
                (
                    "sip:bob@10.0.0.5:5060".into(),
                    addr("127.0.0.1:5070"),
                    Protocol::Udp,
                    None
                ),
                (
                    "sip:bob@10.0.0.6:5060;transport=tcp".into(),
                    addr("127.0.0.1:40001"),
                    Protocol::Tcp,
                    None
                ),
            ]
        );
    }

    #[test]
    fn a_closed_tcp_flow_is_no_way_to_the_phone() {
        let mut w = World {
            users: vec!["bob"],
            ..World::default()
        };
        w.bindings.insert(
            "sip:bob@example.com".into(),
            vec![binding(
                "sip:bob@example.com",
                "sip:bob@10.0.0.6",
                "tcp:127.0.0.1:40001",
                A,
            )],
        );
        // RFC 5626 §5.3: nothing left to try → the known user is unavailable
        assert_eq!(
            run(&w, "sip:bob@example.com", false, false),
            Resolved::Unavailable
        );
    }

    #[test]
    fn unknown_users_get_404_and_known_users_without_bindings_480() {
        let w = World {
            users: vec!["bob"],
            ..World::default()
        };
        assert_eq!(
            run(&w, "sip:carol@example.com", false, false),
            Resolved::NotFound
        );
        assert_eq!(Resolved::NotFound.status(), Some(404));
        assert_eq!(
            run(&w, "sip:bob@example.com", false, false),
            Resolved::Unavailable
        );
        assert_eq!(Resolved::Unavailable.status(), Some(480));
    }

    #[test]
    fn a_peers_phone_is_reached_through_its_owner_once_per_owner() {
        let mut w = World {
            peers: [("node-b", addr("127.0.0.2:5060"))].into_iter().collect(),
            ..World::default()
        };
        w.bindings.insert(
            "sip:bob@example.com".into(),
            vec![
                binding(
                    "sip:bob@example.com",
                    "sip:bob@10.0.0.5",
                    "udp:127.0.0.1:5070",
                    "node-b",
                ),
                binding(
                    "sip:bob@example.com",
                    "sip:bob@10.0.0.6",
                    "udp:127.0.0.1:5071",
                    "node-b",
                ),
                binding(
                    "sip:bob@example.com",
                    "sip:bob@10.0.0.7",
                    "udp:127.0.0.1:5072",
                    A,
                ),
                // a dead owner: skipped, its phones re-register elsewhere
                binding(
                    "sip:bob@example.com",
                    "sip:bob@10.0.0.8",
                    "udp:127.0.0.1:5073",
                    "node-c",
                ),
            ],
        );
        assert_eq!(
            targets(run(&w, "sip:bob@example.com", false, true)),
            vec![
                (
                    "sip:bob@example.com".into(),
                    addr("127.0.0.2:5060"),
                    Protocol::Udp,
                    Some("node-b".into())
                ),
                (
                    "sip:bob@10.0.0.7".into(),
                    addr("127.0.0.1:5072"),
                    Protocol::Udp,
                    None
                ),
            ]
        );
        // what a peer sent us goes to our own phones only: no loop back
        assert_eq!(
            targets(run(&w, "sip:bob@example.com", true, true)),
            vec![(
                "sip:bob@10.0.0.7".into(),
                addr("127.0.0.1:5072"),
                Protocol::Udp,
                None
            )]
        );
        // outside a cluster every binding is delivered here
        assert_eq!(
            targets(run(&w, "sip:bob@example.com", true, false)).len(),
            4
        );
    }

    #[test]
    fn after_a_stale_entry_is_removed_the_retry_goes_where_the_phone_is_now() {
        // seed 000: node-b said it no longer has bob; the node removed its entry
        // and asks again with what is left (bob moved to node-c)
        let w = World {
            peers: [
                ("node-b", addr("127.0.0.2:5060")),
                ("node-c", addr("127.0.0.3:5060")),
            ]
            .into_iter()
            .collect(),
            ..World::default()
        };
        let now = vec![binding(
            "sip:bob@example.com",
            "sip:bob@10.0.0.9",
            "udp:127.0.0.1:5090",
            "node-c",
        )];
        let t = peer_targets(&now, "sip:bob@example.com", &NodeId(A.into()), &w);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].dest, addr("127.0.0.3:5060"));
        assert_eq!(t[0].peer.as_deref(), Some("node-c"));
        // our own bindings never give a peer branch
        let mine = vec![binding(
            "sip:bob@example.com",
            "sip:bob@10.0.0.9",
            "udp:127.0.0.1:5090",
            A,
        )];
        assert!(peer_targets(&mine, "sip:bob@example.com", &NodeId(A.into()), &w).is_empty());
    }

    #[test]
    fn numbers_go_to_the_gateway_group_in_order_skipping_silent_gateways() {
        let w = World::default();
        assert_eq!(
            targets(run(&w, "sip:91234@example.com", false, false)),
            vec![
                (
                    "sip:1234@127.0.0.1:5091".into(),
                    addr("127.0.0.1:5091"),
                    Protocol::Udp,
                    Some("gw1".into())
                ),
                (
                    "sip:1234@127.0.0.1:5092".into(),
                    addr("127.0.0.1:5092"),
                    Protocol::Udp,
                    Some("gw2".into())
                ),
            ]
        );
        assert!(matches!(
            run(&w, "sip:91234@example.com", false, false),
            Resolved::Plan(Plan::Serial(_))
        ));
        let w = World {
            down: vec!["gw1"],
            ..World::default()
        };
        assert_eq!(
            targets(run(&w, "sip:91234@example.com", false, false))[0]
                .3
                .as_deref(),
            Some("gw2")
        );
        let w = World {
            down: vec!["gw1", "gw2"],
            ..World::default()
        };
        assert_eq!(
            run(&w, "sip:91234@example.com", false, false),
            Resolved::Unavailable
        );
        // a number no pattern matches
        assert_eq!(
            run(&w, "sip:1234@example.com", false, false),
            Resolved::NotFound
        );
    }
}
