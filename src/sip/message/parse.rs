//! Message framing and the start line / header section parser (RFC 3261 §7).

use super::header::{Header, HeaderName, Headers};
use super::uri::Uri;
use super::{Message, Method, Request, Response};
use bytes::Bytes;
use std::borrow::Cow;

/// Why a message could not be parsed, and the status a UAS answers a request with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// 400, or 505 for an unknown SIP version (RFC 3261 §8.2.x / RFC 4475 `badvers`).
    pub status: u16,
    pub reason: &'static str,
    /// Whether the bytes looked like a request (so a stateless error reply makes sense).
    pub is_request: bool,
}

impl ParseError {
    fn bad(reason: &'static str, is_request: bool) -> Self {
        ParseError {
            status: 400,
            reason,
            is_request,
        }
    }
}

/// Where the header section ends: the offset of the body. Accepts bare LF line
/// ends, which some old phones send.
pub fn header_end(buf: &[u8]) -> Option<usize> {
    if let Some(i) = memchr::memmem::find(buf, b"\r\n\r\n") {
        return Some(i + 4);
    }
    memchr::memmem::find(buf, b"\n\n").map(|i| i + 2)
}

/// Parses one datagram (or one framed stream message). A datagram's body is what
/// Content-Length says; trailing octets are ignored (RFC 4475 `dblreq`), a
/// Content-Length beyond the datagram is an error (`clerr`), and without
/// Content-Length the body is the rest of the datagram (RFC 3261 §18.3, `inv2543`).
pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
    let looks_request = !buf.starts_with(b"SIP/");
    let (head, body_start) = match header_end(buf) {
        Some(end) => (&buf[..end], end),
        // No empty line: the datagram is all header section.
        None => (buf, buf.len()),
    };
    let head = std::str::from_utf8(head)
        .map_err(|_| ParseError::bad("header section is not UTF-8", looks_request))?;
    let mut lines = unfold_lines(head);
    if lines.is_empty() {
        return Err(ParseError::bad("empty message", looks_request));
    }
    let start = lines.remove(0);
    let mut headers = Headers(Vec::with_capacity(lines.len()));
    for line in &lines {
        let colon = line
            .find(':')
            .ok_or_else(|| ParseError::bad("header line without colon", looks_request))?;
        let name = line[..colon].trim_end_matches([' ', '\t']);
        if !super::scan::is_token(name) {
            return Err(ParseError::bad("malformed header name", looks_request));
        }
        let value = line[colon + 1..].trim_matches([' ', '\t']);
        headers.0.push(Header {
            name: HeaderName::from_wire(name),
            value: value.to_string(),
        });
    }
    let rest = &buf[body_start..];
    let body = match headers.count(&HeaderName::ContentLength) {
        0 => Bytes::copy_from_slice(rest),
        1 => {
            let v = headers.get(&HeaderName::ContentLength).unwrap_or("");
            // RFC 4475 `ncl`: a negative or non-numeric length is never used as a count
            let n = super::values::parse_scalar(v, u32::MAX as u64)
                .ok_or_else(|| ParseError::bad("malformed Content-Length", looks_request))?
                as usize;
            if n > rest.len() {
                return Err(ParseError::bad(
                    "Content-Length larger than the message",
                    looks_request,
                ));
            }
            Bytes::copy_from_slice(&rest[..n])
        }
        _ => {
            return Err(ParseError::bad(
                "more than one Content-Length",
                looks_request,
            ))
        }
    };
    if looks_request {
        parse_request_line(&start, headers, body).map(Message::Request)
    } else {
        parse_status_line(&start, headers, body).map(Message::Response)
    }
}

/// Splits the header section into lines and joins folded continuation lines
/// (RFC 3261 §7.3.1: a line starting with SP/HT continues the previous one).
/// Lines borrow from `head` unless folding had to join them.
pub fn unfold_lines(head: &str) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<'_, str>> = Vec::with_capacity(16);
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        // The start line cannot be folded into; a header line can.
        if line.starts_with([' ', '\t']) && out.len() > 1 {
            if let Some(prev) = out.last_mut() {
                let joined = prev.to_mut();
                joined.push(' ');
                joined.push_str(line.trim_start_matches([' ', '\t']));
                continue;
            }
        }
        out.push(Cow::Borrowed(line));
    }
    out
}

fn parse_version(v: &str, is_request: bool) -> Result<(), ParseError> {
    if v == "SIP/2.0" {
        return Ok(());
    }
    // A well-formed but different version gets 505 (RFC 3261 §8.2.x, RFC 4475 `badvers`).
    if let Some(rest) = v
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("SIP/"))
        .map(|_| &v[4..])
    {
        if let Some((maj, min)) = rest.split_once('.') {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
            if digits(maj) && digits(min) {
                if maj.trim_start_matches('0') == "2" && min.trim_start_matches('0').is_empty() {
                    return Ok(());
                }
                return Err(ParseError {
                    status: 505,
                    reason: "SIP version not supported",
                    is_request,
                });
            }
        }
    }
    Err(ParseError::bad("malformed SIP version", is_request))
}

fn parse_request_line(line: &str, headers: Headers, body: Bytes) -> Result<Request, ParseError> {
    // Request-Line = Method SP Request-URI SP SIP-Version: exactly single spaces
    // (RFC 4475 `lwsstart`, `trws`, `lwsruri` are rejected).
    let mut parts = line.split(' ');
    let (Some(m), Some(u), Some(v), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::bad("malformed Request-Line", true));
    };
    if !super::scan::is_token(m) {
        return Err(ParseError::bad("malformed method", true));
    }
    parse_version(v, true)?;
    let uri = Uri::parse(u).map_err(|_| ParseError::bad("malformed Request-URI", true))?;
    if uri.is_sip() && uri.has_headers {
        // RFC 3261 §19.1.5: headers are not allowed in a Request-URI (RFC 4475 `escruri`)
        return Err(ParseError::bad("Request-URI carries headers", true));
    }
    Ok(Request {
        method: Method::from_wire(m),
        uri,
        headers,
        body,
        parsed: Default::default(),
    })
}

fn parse_status_line(line: &str, headers: Headers, body: Bytes) -> Result<Response, ParseError> {
    let mut parts = line.splitn(3, ' ');
    let (Some(v), Some(code)) = (parts.next(), parts.next()) else {
        return Err(ParseError::bad("malformed Status-Line", false));
    };
    parse_version(v, false)?;
    let status = (code.len() == 3 && code.bytes().all(|c| c.is_ascii_digit()))
        .then(|| code.parse::<u16>().ok())
        .flatten()
        .filter(|s| (100..=699).contains(s))
        .ok_or_else(|| ParseError::bad("malformed status code", false))?;
    Ok(Response {
        status,
        reason: parts.next().unwrap_or("").to_string(),
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &[u8] = b"REGISTER sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-1\r\nMax-Forwards: 70\r\nFrom: <sip:u1@127.0.0.1>;tag=t1\r\nTo: <sip:u1@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContact: <sip:u1@127.0.0.1:5081>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn parses_register() {
        let Message::Request(r) = parse(REG).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(r.method, Method::Register);
        assert_eq!(r.call_id(), Some("c1"));
        assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bK-1"));
        assert_eq!(r.cseq().unwrap().seq, 1);
    }

    #[test]
    fn folded_and_compact_headers() {
        let m = b"OPTIONS sip:x@y SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKa\r\nf: <sip:a@b>\r\n ;tag=1\r\nt: sip:x@y\r\ni: abc\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";
        let Message::Request(r) = parse(m).unwrap() else {
            panic!()
        };
        assert_eq!(r.from().unwrap().tag(), Some("1"));
        assert_eq!(r.call_id(), Some("abc"));
    }

    #[test]
    fn framing_errors() {
        let mut long = REG.to_vec();
        long.extend_from_slice(b"garbage after");
        assert!(parse(&long).is_ok());
        let clerr = String::from_utf8(REG.to_vec())
            .unwrap()
            .replace("Content-Length: 0", "Content-Length: 10");
        assert_eq!(parse(clerr.as_bytes()).unwrap_err().status, 400);
        let ncl = String::from_utf8(REG.to_vec())
            .unwrap()
            .replace("Content-Length: 0", "Content-Length: -1");
        assert_eq!(parse(ncl.as_bytes()).unwrap_err().status, 400);
        let v = String::from_utf8(REG.to_vec())
            .unwrap()
            .replace("SIP/2.0\r\nVia", "SIP/7.0\r\nVia");
        assert_eq!(parse(v.as_bytes()).unwrap_err().status, 505);
        assert!(parse(b"SIP/2.0 1000 Big\r\n\r\n").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"\xff\xfe\r\n\r\n").is_err());
    }
}
