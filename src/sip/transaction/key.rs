//! The server transaction key (RFC 3261 §17.2.3), computed from a parsed request.
//! The transaction state machines themselves never look at SIP; this is the one
//! place that turns a request into the key they are filed under.

use crate::sip::message::{Request, Via};

/// RFC 3261 §17.2.3 server transaction key: branch, sent-by and method (ACK is
/// matched with its INVITE). RFC 2543 requests without the magic cookie are keyed
/// by Call-ID, From tag and CSeq number instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxKey {
    branch: Box<str>,
    sent_by: Box<str>,
    method: Box<str>,
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
        }
    }
}

impl TxKey {
    /// Whether this is an INVITE server transaction.
    pub fn is_invite(&self) -> bool {
        &*self.method == "INVITE"
    }
}
