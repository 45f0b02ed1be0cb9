//! One branch: a client transaction for a forwarded request or for a CANCEL of
//! one, and the requests derived from what was sent (CANCEL §9.1, ACK §17.1.1.3).

use super::Target;
use crate::sip::message::scan::split_commas;
use crate::sip::message::{HeaderName, Headers, Method, Request, Response};
use crate::sip::transaction::client::{ClientInvite, ClientNonInvite, ClientTransaction};
use crate::sip::transaction::key::TxKey;
use crate::sip::transaction::{Reliability, TimerConfig};
use crate::sip::transport::Protocol;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Instant;

/// A client transaction's key: our Via branch and the CSeq method, since a
/// CANCEL shares its INVITE's branch (§9.1) and responses are matched on both
/// (§17.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct BranchKey {
    pub(super) branch: String,
    pub(super) method: Method,
}

/// One client transaction: a forwarded request or a CANCEL of one.
pub(super) struct Branch {
    pub(super) server: TxKey,
    pub(super) tx: Box<dyn ClientTransaction + Send>,
    /// The request as sent (for CANCEL and ACK construction).
    pub(super) sent: Request,
    pub(super) target: Target,
    /// A final response arrived (or the branch timed out).
    pub(super) done: bool,
    /// A provisional response arrived (CANCEL may be sent, §9.1).
    pub(super) ringing: bool,
    /// CANCEL wanted before any provisional arrived; sent on the first 1xx.
    pub(super) cancel_pending: bool,
    pub(super) is_cancel: bool,
    /// The deadline already in the proxy's timer heap for this transaction.
    pub(super) armed: Option<Instant>,
}

fn reliability(t: Protocol) -> Reliability {
    if t.is_reliable() {
        Reliability::Reliable
    } else {
        Reliability::Unreliable
    }
}

impl Branch {
    /// Starts the client transaction for `sent` (an INVITE gets the INVITE state
    /// machine, §17.1.1; anything else the non-INVITE one, §17.1.2).
    pub(super) fn new(
        now: Instant,
        server: TxKey,
        target: Target,
        sent: Request,
        timers: TimerConfig,
    ) -> Branch {
        let rel = reliability(target.transport);
        let bytes = sent.to_bytes();
        let tx: Box<dyn ClientTransaction + Send> = if sent.method == Method::Invite {
            Box::new(ClientInvite::new(now, rel, timers, bytes))
        } else {
            Box::new(ClientNonInvite::new(now, rel, timers, bytes))
        };
        Branch {
            server,
            tx,
            sent,
            is_cancel: false,
            target,
            done: false,
            ringing: false,
            cancel_pending: false,
            armed: None,
        }
    }

    /// A CANCEL branch for this one (§9.1), to the same destination.
    pub(super) fn cancel(&self, now: Instant, timers: TimerConfig) -> Branch {
        let cancel = derived_request(&self.sent, Method::Cancel, None);
        let mut b = Branch::new(
            now,
            self.server.clone(),
            self.target.clone(),
            cancel,
            timers,
        );
        b.is_cancel = true;
        b
    }

    pub(super) fn dest(&self) -> SocketAddr {
        self.target.dest
    }

    /// Passes a matched response to the client transaction; for a non-2xx final
    /// to an INVITE it builds the hop-by-hop ACK from the parsed response
    /// (§17.1.1.3), so the response is not parsed again.
    pub(super) fn on_response(&mut self, now: Instant, resp: &Response, bytes: Bytes) -> bool {
        let sent = &self.sent;
        let mut make_ack = || derived_request(sent, Method::Ack, Some(resp)).to_bytes();
        self.tx
            .on_response(now, resp.status, bytes, &mut make_ack)
            .is_ok()
    }
}

/// CANCEL or ACK for a sent INVITE (§9.1, §17.1.1.3): same Request-URI, top Via,
/// From, Call-ID, CSeq number and Route; To from `resp` when given (ACK: it
/// carries the callee's tag).
pub(super) fn derived_request(sent: &Request, method: Method, resp: Option<&Response>) -> Request {
    let mut headers = Headers::default();
    if let Some(v) = sent.headers.get(&HeaderName::Via) {
        let top = split_commas(v)
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
    use crate::sip::message::build::response_to;
    use crate::sip::message::{parse, Message};

    fn sent() -> Request {
        let Message::Request(r) = parse(
            b"INVITE sip:bob@10.0.0.9:5062 SIP/2.0\r\n\
              Via: SIP/2.0/UDP 10.0.0.2;rport;branch=z9hG4bK-ours, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\n\
              Route: <sip:10.0.0.7;lr>\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:bob@h>\r\n\
              Call-ID: d1\r\nCSeq: 7 INVITE\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap() else {
            panic!()
        };
        r
    }

    #[test]
    fn cancel_copies_the_top_via_route_and_cseq_number() {
        let c = derived_request(&sent(), Method::Cancel, None);
        let text = String::from_utf8(c.to_bytes().to_vec()).unwrap();
        assert!(text.starts_with("CANCEL sip:bob@10.0.0.9:5062 SIP/2.0\r\n"));
        assert_eq!(
            c.headers.get_all(&HeaderName::Via).collect::<Vec<_>>(),
            ["SIP/2.0/UDP 10.0.0.2;rport;branch=z9hG4bK-ours"]
        );
        assert_eq!(c.header(&HeaderName::CSeq), Some("7 CANCEL"));
        assert_eq!(c.header(&HeaderName::Route), Some("<sip:10.0.0.7;lr>"));
        assert_eq!(c.header(&HeaderName::To), Some("<sip:bob@h>"));
    }

    #[test]
    fn ack_takes_the_to_tag_of_the_response() {
        let s = sent();
        let resp = response_to(&s, 486, Some("callee"));
        let ack = derived_request(&s, Method::Ack, Some(&resp));
        assert_eq!(ack.header(&HeaderName::To), Some("<sip:bob@h>;tag=callee"));
        assert_eq!(ack.header(&HeaderName::CSeq), Some("7 ACK"));
    }
}
