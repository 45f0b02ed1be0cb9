//! What a request must carry before a UAS acts on it (RFC 3261 §8.2, §8.1.1) and
//! the scalar bounds of RFC 4475 §3.1.2.4. Parsing accepted the syntax of the
//! message as a whole; this checks the headers the core relies on.

use super::header::HeaderName;
use super::values::{self, Contacts, Via};
use super::{Method, Request};

/// A request that must be refused, with the status and reason phrase to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

fn bad(reason: &'static str) -> Rejection {
    Rejection {
        status: 400,
        reason,
    }
}

/// Headers that may appear only once (RFC 3261 §7.3.1; RFC 4475 `multi01`).
const SINGLE: [HeaderName; 7] = [
    HeaderName::From,
    HeaderName::To,
    HeaderName::CallId,
    HeaderName::CSeq,
    HeaderName::MaxForwards,
    HeaderName::Expires,
    HeaderName::ContentType,
];

pub fn validate_request(req: &Request) -> Result<(), Rejection> {
    let h = &req.headers;
    for name in &SINGLE {
        if h.count(name) > 1 {
            return Err(bad("Repeated Single-Value Header"));
        }
    }
    let mut vias = 0;
    for v in h.get_all(&HeaderName::Via) {
        vias += Via::parse_all(v).ok_or_else(|| bad("Malformed Via"))?.len();
    }
    if vias == 0 {
        return Err(bad("Missing Via"));
    }
    // RFC 3261 §8.1.1: To, From, CSeq, Call-ID are mandatory (RFC 4475 `insuf`).
    let call_id = h
        .get(&HeaderName::CallId)
        .ok_or_else(|| bad("Missing Call-ID"))?;
    if call_id.is_empty() || call_id.contains([' ', '\t']) {
        return Err(bad("Malformed Call-ID"));
    }
    h.get(&HeaderName::From)
        .ok_or_else(|| bad("Missing From"))?;
    req.from().ok_or_else(|| bad("Malformed From"))?;
    h.get(&HeaderName::To).ok_or_else(|| bad("Missing To"))?;
    req.to().ok_or_else(|| bad("Malformed To"))?;
    h.get(&HeaderName::CSeq)
        .ok_or_else(|| bad("Missing CSeq"))?;
    let cseq = req.cseq().ok_or_else(|| bad("Malformed CSeq"))?;
    // RFC 3261 §8.2: a CSeq method that differs from the request method is malformed;
    // for a method we do not implement, 501 is the better answer (RFC 4475 `mismatch02`).
    // ACK and CANCEL carry the INVITE's number with their own method, so the rule holds.
    if cseq.method != req.method.as_str() {
        return Err(match req.method {
            Method::Extension(_) => Rejection {
                status: 501,
                reason: "Not Implemented",
            },
            _ => bad("CSeq Method Mismatch"),
        });
    }
    if let Some(mf) = h.get(&HeaderName::MaxForwards) {
        values::parse_scalar(mf, 255).ok_or_else(|| bad("Malformed Max-Forwards"))?;
    }
    if let Some(e) = h.get(&HeaderName::Expires) {
        values::parse_scalar(e, u32::MAX as u64).ok_or_else(|| bad("Malformed Expires"))?;
    }
    for c in req.contacts().ok_or_else(|| bad("Malformed Contact"))? {
        if let Contacts::List(list) = c {
            for na in list {
                if let Some(e) = values::param(&na.params, "expires") {
                    values::parse_scalar(e.unwrap_or(""), u32::MAX as u64)
                        .ok_or_else(|| bad("Malformed Contact expires"))?;
                }
            }
        }
    }
    Ok(())
}

/// The Max-Forwards value, 70 when absent (RFC 2543 clients, RFC 4475 `inv2543`).
pub fn max_forwards(req: &Request) -> u8 {
    req.headers
        .get(&HeaderName::MaxForwards)
        .and_then(|v| values::parse_scalar(v, 255))
        .map(|v| v as u8)
        .unwrap_or(70)
}
