//! The server transaction key (RFC 3261 §17.2.3), computed from a parsed request.
//! The transaction state machines themselves never look at SIP; this is the one
//! place that turns a request into the key they are filed under.

use crate::sip::message::{Request, Via};

/// RFC 3261 §17.2.3 server transaction key: branch, sent-by and method (ACK is
/// matched with its INVITE). RFC 2543 requests without the magic cookie are keyed
/// by Call-ID, From tag and CSeq number instead.
///
/// The CSeq number is part of the key too. A retransmission repeats it, and so
/// do the requests matched with another transaction (ACK for a non-2xx and
/// CANCEL carry their INVITE's, §17.1.1.3, §9.1), so no match is lost; but a
/// client that wrongly reuses a branch for its next request (SIPp's
/// `register_retry.xml` does, retrying a REGISTER after 503 with CSeq + 1) gets
/// a new transaction instead of the old transaction's answer again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxKey {
    branch: Box<str>,
    sent_by: Box<str>,
    method: Box<str>,
    seq: u32,
}

impl TxKey {
    pub fn for_request(req: &Request, via: &Via, method: &str) -> TxKey {
        let branch: Box<str> = match via.branch() {
            // RFC 4475 `badbranch`: a bare cookie is no transaction id
            Some(b) if b.starts_with("z9hG4bK") && b.len() > 7 => b.into(),
            _ => format!(
                "2543|{}|{}|{}",
                req.call_id().unwrap_or(""),
                req.from()
                    .and_then(|f| f.tag().map(str::to_string))
                    .unwrap_or_default(),
                req.cseq().map(|c| c.seq).unwrap_or(0)
            )
            .into(),
        };
        TxKey {
            branch,
            sent_by: via.sent_by().into(),
            method: method.into(),
            seq: req.cseq().map(|c| c.seq).unwrap_or(0),
        }
    }
}

impl TxKey {
    /// Whether this is an INVITE server transaction.
    pub fn is_invite(&self) -> bool {
        &*self.method == "INVITE"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Message};

    fn req(method: &str, branch: &str, cseq: u32) -> Request {
        let text = format!(
            "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
             From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\n\
             Call-ID: k1\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        }
    }

    fn key(r: &Request, method: &str) -> TxKey {
        TxKey::for_request(r, &r.top_via().unwrap(), method)
    }

    #[test]
    fn a_retransmission_matches_and_a_reused_branch_with_a_new_cseq_does_not() {
        let first = req("REGISTER", "z9hG4bK-1", 1);
        assert_eq!(key(&first, "REGISTER"), key(&first.clone(), "REGISTER"));
        let retry = req("REGISTER", "z9hG4bK-1", 2);
        assert_ne!(key(&first, "REGISTER"), key(&retry, "REGISTER"));
    }

    #[test]
    fn cancel_and_ack_still_find_their_invite() {
        // §9.1, §17.1.1.3: same branch and CSeq number as the INVITE
        let invite = req("INVITE", "z9hG4bK-7", 5);
        let cancel = req("CANCEL", "z9hG4bK-7", 5);
        let ack = req("ACK", "z9hG4bK-7", 5);
        assert_eq!(key(&invite, "INVITE"), key(&cancel, "INVITE"));
        assert_eq!(key(&invite, "INVITE"), key(&ack, "INVITE"));
    }
}
