//! Serialising messages and building responses (RFC 3261 §8.2.6).

use super::header::{HeaderName, Headers};
use super::parse::{header_end, unfold_lines};
use super::values::Via;
use super::{reason_phrase, Request, Response};
use bytes::{BufMut, Bytes, BytesMut};

pub const SERVER: &str = concat!("Tandem/", env!("CARGO_PKG_VERSION"));

fn write_headers(out: &mut BytesMut, headers: &Headers, body_len: usize) {
    for h in headers.iter() {
        if h.name == HeaderName::ContentLength {
            continue;
        }
        out.put_slice(h.name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(h.value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: ");
    out.put_slice(itoa(body_len).as_bytes());
    out.put_slice(b"\r\n\r\n");
}

fn itoa(n: usize) -> String {
    n.to_string()
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            reason: reason_phrase(status).to_string(),
            headers: Headers::default(),
            body: Bytes::new(),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(512 + self.body.len());
        out.put_slice(b"SIP/2.0 ");
        out.put_slice(self.status.to_string().as_bytes());
        out.put_u8(b' ');
        out.put_slice(self.reason.as_bytes());
        out.put_slice(b"\r\n");
        write_headers(&mut out, &self.headers, self.body.len());
        out.put_slice(&self.body);
        out.freeze()
    }
}

impl Request {
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(512 + self.body.len());
        out.put_slice(self.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(self.uri.as_str().as_bytes());
        out.put_slice(b" SIP/2.0\r\n");
        write_headers(&mut out, &self.headers, self.body.len());
        out.put_slice(&self.body);
        out.freeze()
    }
}

/// A fresh To tag (RFC 3261 §19.3: at least 32 bits of randomness).
pub fn new_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A response to `req` (RFC 3261 §8.2.6.2): Via, From, To, Call-ID and CSeq copied;
/// a To tag is added to a non-100 response when the request had none.
pub fn response_to(req: &Request, status: u16, to_tag: Option<&str>) -> Response {
    let mut headers = Headers(Vec::with_capacity(10));
    for h in req.headers.iter() {
        match h.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                headers.0.push(h.clone())
            }
            HeaderName::To => {
                let has_tag = req.to().map(|t| t.tag().is_some()).unwrap_or(true);
                let mut value = h.value.clone();
                if status > 100 && !has_tag {
                    if let Some(tag) = to_tag {
                        value.push_str(";tag=");
                        value.push_str(tag);
                    }
                }
                headers.push(HeaderName::To, value);
            }
            HeaderName::Timestamp if status == 100 => headers.0.push(h.clone()),
            _ => {}
        }
    }
    headers.push(HeaderName::Server, SERVER);
    Response {
        status,
        reason: reason_phrase(status).to_string(),
        headers,
        body: Bytes::new(),
    }
}

/// A stateless error response for bytes that did not parse as a request: the
/// Via, From, To, Call-ID and CSeq lines are copied as they are. `None` when
/// there is no Via to route the answer by.
pub fn stateless_error(buf: &[u8], status: u16, reason: &str) -> Option<Bytes> {
    let end = header_end(buf).unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut headers = Headers::default();
    for line in unfold_lines(&head).into_iter().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = HeaderName::from_wire(name.trim_end());
        if matches!(
            name,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        ) {
            headers.push(name, value.trim());
        }
    }
    headers.get(&HeaderName::Via)?;
    headers.push(HeaderName::Server, SERVER);
    Some(
        Response {
            status,
            reason: reason.to_string(),
            headers,
            body: Bytes::new(),
        }
        .to_bytes(),
    )
}

/// The top Via of raw message bytes, for answering a message that did not parse.
pub fn raw_top_via(buf: &[u8]) -> Option<Via> {
    let end = header_end(buf).unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..end]);
    let lines = unfold_lines(&head);
    let value = lines.iter().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (HeaderName::from_wire(name.trim_end()) == HeaderName::Via).then_some(value)
    })?;
    Via::parse_all(value)?.into_iter().next()
}
