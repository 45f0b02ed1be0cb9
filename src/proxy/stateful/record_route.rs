//! Our own header values: the Via we push on forwarded requests (RFC 3261 §16.6
//! step 8), the Record-Route we insert (§16.6 step 4, doubled across transports
//! per RFC 5658), and recognising our Route when requests come back (§16.4).

use super::{Hop, Proxy};
use crate::sip::message::NameAddr;
use crate::sip::transport::Protocol;
use std::net::SocketAddr;

impl Proxy {
    /// Our Via for a request leaving over `transport`. `rport` over UDP (RFC
    /// 3581) so the response comes back to the port we sent from.
    pub(super) fn via_value(&self, transport: Protocol, branch: &str) -> String {
        match transport {
            Protocol::Udp => format!("SIP/2.0/UDP {};rport;branch={branch}", self.cfg.local),
            Protocol::Tcp => format!("SIP/2.0/TCP {};branch={branch}", self.cfg.local),
        }
    }

    /// Our Record-Route URI as seen from one side of the dialog: over TCP it names
    /// that side's connection (a flow token, RFC 5626 §5.3) so requests towards
    /// it reuse the flow.
    fn route_uri(&self, side: Hop) -> String {
        match side.protocol {
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
    pub(super) fn record_route_values(&self, inbound: Hop, outbound: Hop) -> Vec<String> {
        if inbound.protocol == Protocol::Udp && outbound.protocol == Protocol::Udp {
            vec![self.route_uri(outbound)]
        } else {
            vec![self.route_uri(outbound), self.route_uri(inbound)]
        }
    }

    /// The connection a Route of ours names (its flow token), if any.
    pub fn flow_of_route(&self, route: &str) -> Option<SocketAddr> {
        let na = NameAddr::parse(route)?;
        self.flow_tokens.decode(na.uri.user.as_deref()?)
    }

    /// Whether a Route URI names this proxy (loose routing, RFC 3261 §16.4).
    pub fn is_own_route(&self, route: &str) -> bool {
        let Some(na) = NameAddr::parse(route) else {
            return false;
        };
        let u = &na.uri;
        let host = u.host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<std::net::IpAddr>().ok() == Some(self.cfg.local.ip())
            && u.port.unwrap_or(5060) == self.cfg.local.port()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::stateful::ProxyConfig;
    use crate::sip::transaction::TimerConfig;
    use std::time::Duration;

    fn proxy() -> Proxy {
        Proxy::new(ProxyConfig {
            local: "192.0.2.1:5060".parse().unwrap(),
            timers: TimerConfig::default(),
            timer_c: Duration::from_secs(180),
        })
    }

    fn hop(transport: Protocol, addr: &str) -> Hop {
        Hop {
            protocol: transport,
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn udp_to_udp_gets_one_record_route() {
        let p = proxy();
        let v = p.record_route_values(
            hop(Protocol::Udp, "10.0.0.1:5060"),
            hop(Protocol::Udp, "10.0.0.2:5060"),
        );
        assert_eq!(v, ["<sip:192.0.2.1:5060;lr>"]);
    }

    #[test]
    fn udp_to_tcp_gets_two_record_routes_each_naming_its_side() {
        // RFC 5658 §3.2: the callee (TCP) sees the first, with its flow token
        let p = proxy();
        let callee: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let v = p.record_route_values(
            hop(Protocol::Udp, "10.0.0.1:5060"),
            hop(Protocol::Tcp, "10.0.0.2:40000"),
        );
        assert_eq!(v.len(), 2);
        assert!(v[0].ends_with("@192.0.2.1:5060;transport=tcp;lr>"), "{v:?}");
        assert_eq!(p.flow_of_route(&v[0]), Some(callee));
        assert_eq!(v[1], "<sip:192.0.2.1:5060;lr>");
        assert_eq!(p.flow_of_route(&v[1]), None);
        assert!(v.iter().all(|r| p.is_own_route(r)));
    }

    #[test]
    fn own_route_needs_our_address_and_port() {
        let p = proxy();
        assert!(
            p.is_own_route("<sip:192.0.2.1;lr>"),
            "5060 is the default port"
        );
        assert!(!p.is_own_route("<sip:192.0.2.1:5070;lr>"));
        assert!(!p.is_own_route("<sip:192.0.2.9:5060;lr>"));
        assert!(!p.is_own_route("garbage"));
    }
}
