//! SIP messages: Tandem's own types, parser and serialiser (RFC 3261 §7, §25).
//!
//! The parser is ours (see `docs/decisions.md`, "SIP message parser"): it keeps
//! header values as text and parses the few the core needs on demand (`values`),
//! so unknown headers and methods pass through untouched. Validation of what a
//! request must carry (§8.2) lives in `validate`.

pub mod build;
pub mod header;
pub mod parse;
pub mod scan;
pub mod uri;
pub mod validate;
pub mod values;

pub use header::{Header, HeaderName, Headers};
pub use parse::{parse, ParseError};
pub use uri::{Scheme, Uri};
pub use values::{CSeq, Contacts, NameAddr, Via};

use bytes::Bytes;
use std::fmt;
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Extension(Box<str>),
}

impl Method {
    /// Methods are case-sensitive (RFC 3261 §7.1): `register` is an extension method.
    pub fn from_wire(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Extension(other.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
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
            Method::Extension(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: Headers,
    pub body: Bytes,
    /// Typed views of From, To, CSeq and Contact, parsed on first use: validation,
    /// the transaction key, the registrar and the response builder all need them.
    /// Those headers are never changed after parsing (only the top Via is).
    pub(crate) parsed: ParsedHeaders,
}

/// Lazily parsed header values; `None` inside means the header is absent or malformed.
#[derive(Debug, Clone, Default)]
pub(crate) struct ParsedHeaders {
    from: OnceLock<Option<NameAddr>>,
    to: OnceLock<Option<NameAddr>>,
    cseq: OnceLock<Option<CSeq>>,
    contacts: OnceLock<Option<Vec<Contacts>>>,
}

/// A cache of values derived from the headers: equal requests have equal caches.
impl PartialEq for ParsedHeaders {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ParsedHeaders {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

// A request carries its parsed-header cache inline; a message is moved once from
// the parser to the core, so boxing it would only add an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

impl Request {
    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name)
    }

    /// The topmost Via value (the first value of the first Via header).
    pub fn top_via(&self) -> Option<Via> {
        top_via(&self.headers)
    }

    pub fn cseq(&self) -> Option<&CSeq> {
        self.parsed
            .cseq
            .get_or_init(|| CSeq::parse(self.headers.get(&HeaderName::CSeq)?))
            .as_ref()
    }

    pub fn from(&self) -> Option<&NameAddr> {
        self.parsed
            .from
            .get_or_init(|| NameAddr::parse(self.headers.get(&HeaderName::From)?))
            .as_ref()
    }

    pub fn to(&self) -> Option<&NameAddr> {
        self.parsed
            .to
            .get_or_init(|| NameAddr::parse(self.headers.get(&HeaderName::To)?))
            .as_ref()
    }

    /// Every Contact header field value, parsed; `None` if any is malformed.
    pub fn contacts(&self) -> Option<&[Contacts]> {
        self.parsed
            .contacts
            .get_or_init(|| {
                self.headers
                    .get_all(&HeaderName::Contact)
                    .map(Contacts::parse)
                    .collect()
            })
            .as_deref()
    }

    pub fn call_id(&self) -> Option<&str> {
        self.headers.get(&HeaderName::CallId)
    }
}

impl Response {
    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name)
    }

    /// The topmost Via value: the hop this response is for (RFC 3261 §17.1.3
    /// matches client transactions on its branch).
    pub fn top_via(&self) -> Option<Via> {
        top_via(&self.headers)
    }
}

/// The first value of the first Via header of a message.
fn top_via(headers: &Headers) -> Option<Via> {
    Via::parse_all(headers.get(&HeaderName::Via)?)?
        .into_iter()
        .next()
}

/// Standard reason phrases (RFC 3261 §21 and extensions Tandem sends).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        603 => "Decline",
        _ => "Unknown",
    }
}
