//! The transport's part of the top Via (RFC 3261 §18.2.1, RFC 3581): what a server
//! writes into a request's Via when it arrives, and where the response to it goes.
//! Pure functions of the message and the peer address, so the node only calls them.

use super::Protocol;
use crate::sip::message::scan::split_commas;
use crate::sip::message::values::param;
use crate::sip::message::{HeaderName, Request, Via};
use std::net::SocketAddr;

/// RFC 3261 §18.2.1 and RFC 3581 §4: records where the request really came from in
/// its top Via (`received` when the sent-by host is not the source, `rport` filled
/// in when asked for), so the response goes back there (§18.2.2). Returns the top
/// Via as stamped; `None` when the request has no usable Via (nowhere to answer).
pub fn stamp_via(req: &mut Request, peer: SocketAddr) -> Option<Via> {
    let h = req.headers.first_mut(&HeaderName::Via)?;
    let mut vias = Via::parse_all(&h.value)?;
    let top = vias.first_mut()?;
    let rport = top.params.iter().position(|(n, _)| n == "rport");
    let mut changed = false;
    if let Some(i) = rport {
        top.params[i].1 = Some(peer.port().to_string());
        changed = true;
    }
    let host_is_peer = top.host_ip() == Some(peer.ip());
    if !host_is_peer || rport.is_some() {
        top.params.retain(|(n, _)| n != "received");
        top.params
            .push(("received".into(), Some(peer.ip().to_string())));
        changed = true;
    }
    if changed {
        let mut v = top.to_value();
        // the other values of this header field stay as they were
        let rest = split_commas(&h.value)
            .map(|parts| parts[1..].join(", "))
            .unwrap_or_default();
        if !rest.is_empty() {
            v.push_str(", ");
            v.push_str(&rest);
        }
        h.value = v;
    }
    Some(vias.swap_remove(0))
}

/// Where the response to a request goes (RFC 3261 §18.2.2 with RFC 3581 §4).
/// Over a connection: back over it, to the peer. Over UDP: always the source
/// address (`received`), at the source port when the top Via asked for `rport`,
/// else at the Via's port (5060 when absent); without a usable Via, the source
/// address and port. Never anywhere but the source host.
pub fn response_dest(via: Option<&Via>, protocol: Protocol, peer: SocketAddr) -> SocketAddr {
    if protocol.is_reliable() {
        return peer;
    }
    let Some(via) = via else {
        return peer;
    };
    let port = match param(&via.params, "rport") {
        Some(_) => peer.port(),
        None => via.port.unwrap_or(5060),
    };
    SocketAddr::new(peer.ip(), port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Message};

    fn request(via: &str) -> Request {
        let text = format!(
            "OPTIONS sip:tandem.example SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@x>;tag=1\r\n\
             To: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        }
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rport_is_filled_and_received_added() {
        // RFC 3581 §4: rport gets the source port, received the source address,
        // even when the sent-by host is the source.
        let mut r = request("SIP/2.0/UDP 10.0.0.1:5070;rport;branch=z9hG4bK1");
        let via = stamp_via(&mut r, peer("203.0.113.9:40000")).unwrap();
        assert_eq!(
            r.header(&HeaderName::Via).unwrap(),
            "SIP/2.0/UDP 10.0.0.1:5070;rport=40000;branch=z9hG4bK1;received=203.0.113.9"
        );
        assert_eq!(
            response_dest(Some(&via), Protocol::Udp, peer("203.0.113.9:40000")),
            peer("203.0.113.9:40000")
        );
    }

    #[test]
    fn sent_by_host_that_is_the_source_is_left_alone() {
        // RFC 3261 §18.2.1: received only when the host differs from the source.
        let mut r = request("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1");
        let via = stamp_via(&mut r, peer("127.0.0.1:5070")).unwrap();
        assert_eq!(
            r.header(&HeaderName::Via).unwrap(),
            "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1"
        );
        assert_eq!(
            response_dest(Some(&via), Protocol::Udp, peer("127.0.0.1:5070")),
            peer("127.0.0.1:5070")
        );
    }

    #[test]
    fn without_rport_the_response_goes_to_the_source_host_at_the_via_port() {
        // RFC 3261 §18.2.2: received address, sent-by port (5060 when absent).
        let mut r = request("SIP/2.0/UDP host5.example.com;branch=z9hG4bK1");
        let via = stamp_via(&mut r, peer("127.0.0.7:41000")).unwrap();
        assert_eq!(
            r.header(&HeaderName::Via).unwrap(),
            "SIP/2.0/UDP host5.example.com;branch=z9hG4bK1;received=127.0.0.7"
        );
        assert_eq!(
            response_dest(Some(&via), Protocol::Udp, peer("127.0.0.7:41000")),
            peer("127.0.0.7:5060")
        );
    }

    #[test]
    fn a_stale_received_is_replaced_and_lower_vias_kept() {
        let mut r = request(
            "SIP/2.0/UDP 10.0.0.1;received=1.1.1.1;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK0",
        );
        stamp_via(&mut r, peer("192.0.2.1:5060")).unwrap();
        assert_eq!(
            r.header(&HeaderName::Via).unwrap(),
            "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;received=192.0.2.1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK0"
        );
    }

    #[test]
    fn over_a_connection_the_response_goes_back_over_it() {
        let r = request("SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK1");
        let via = r.top_via().unwrap();
        assert_eq!(
            response_dest(Some(&via), Protocol::Tcp, peer("198.51.100.1:33000")),
            peer("198.51.100.1:33000")
        );
    }

    #[test]
    fn an_unusable_via_gives_nothing_and_the_source_is_answered() {
        let mut r = request("garbage");
        assert!(stamp_via(&mut r, peer("127.0.0.1:5070")).is_none());
        assert_eq!(
            response_dest(None, Protocol::Udp, peer("127.0.0.1:5070")),
            peer("127.0.0.1:5070")
        );
    }
}
