//! Tandem SIP parser evaluation harness (see docs/decisions.md, "SIP message parser").
//!
//! Standalone: not part of the tandem build. Usage (from docs/parser-eval):
//!   CARGO_TARGET_DIR=/tmp/parser-eval-target cargo run --release --features tandem -- all
//!   cargo run --release -- all [CORPUS_DIR] [ITERATIONS]
//!   cargo run --release -- corpus [CORPUS_DIR]
//!   cargo run --release -- registrar
//!   cargo run --release -- bench [ITERATIONS]
//!
//! Every candidate is driven the same way:
//! * `parse`  : the library's message-level parse only ("shallow");
//! * `fields` : parse + the typed accessors a softswitch needs on every message
//!   (all Via values, From, To, Call-ID, CSeq, all Contacts, and Max-Forwards /
//!   Expires / Content-Length when present). A message is "accepted" only if
//!   all of these succeed ("deep"); this is the verdict compared with INDEX.md.
//! * `bench`  : parse + Via branch, From/To URI, Call-ID, CSeq, Contact, Expires,
//!   folded into a checksum so a lazy parser cannot skip the work.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

// ---------------------------------------------------------------- common --

#[derive(Debug, Default, Clone)]
struct Fields {
    start: String,
    via_count: usize,
    via_transport: String,
    via_host: String,
    via_port: Option<u16>,
    via_branch: Option<String>,
    from_uri: String,
    from_tag: Option<String>,
    to_uri: String,
    call_id: String,
    cseq: (u32, String),
    /// (uri, host, port, [(param name, value)])
    contacts: Vec<(String, String, Option<u16>, Vec<(String, Option<String>)>)>,
    /// each Contact value as the library serializes it again (for a 200 OK)
    contact_wire: Vec<String>,
    max_forwards: Option<u8>,
    expires: Option<u32>,
    content_length: Option<usize>,
    body_len: usize,
}

type Res<T> = Result<T, String>;

struct Candidate {
    name: &'static str,
    version: &'static str,
    /// message-level parse only
    parse: fn(&[u8]) -> Res<()>,
    /// parse + typed access to the core headers
    fields: fn(&[u8]) -> Res<Fields>,
    /// benchmark body: parse + accessors, returns a checksum
    bench: fn(&[u8]) -> usize,
}

fn candidates() -> Vec<Candidate> {
    let mut v = vec![
        Candidate {
            name: "rsipstack",
            version: "0.7.14 (rsipstack::sip)",
            parse: rsip_impl::parse,
            fields: rsip_impl::fields,
            bench: rsip_impl::bench,
        },
        Candidate {
            name: "ezk-sip-types",
            version: "0.6.5 (+ ezk-sip-core 0.9.2 framing glue)",
            parse: ezk_impl::parse,
            fields: ezk_impl::fields,
            bench: ezk_impl::bench,
        },
    ];
    #[cfg(feature = "tandem")]
    {
        v.push(Candidate {
            name: "tandem",
            version: "tandem::sip::message::parse (main working tree)",
            parse: tandem_impl::parse,
            fields: tandem_impl::fields,
            bench: tandem_impl::bench,
        });
        // the same parser followed by tandem::sip::message::validate::validate_request
        v.push(Candidate {
            name: "tandem+validate",
            version: "tandem parse + validate_request (requests only)",
            parse: tandem_impl::parse,
            fields: tandem_impl::fields_validated,
            bench: tandem_impl::bench,
        });
    }
    let only = std::env::var("CANDIDATES").ok();
    if let Some(only) = only {
        v.retain(|c| only.split(',').any(|n| n == c.name));
    }
    v
}

/// Run `f`, turning a panic into an error (a parser must not break).
fn guarded<T>(f: impl FnOnce() -> Res<T>) -> Res<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("PANIC: {msg}"))
        }
    }
}

fn short(s: &str) -> String {
    let s = s.replace(['\r', '\n'], " ");
    if s.chars().count() > 90 {
        format!("{}...", s.chars().take(90).collect::<String>())
    } else {
        s
    }
}

// ------------------------------------------------------------- rsipstack --

mod rsip_impl {
    use super::{Fields, Res};
    use rsipstack::sip::headers::untyped::ToTypedHeader;
    use rsipstack::sip::{HasHeaders, Header, HeadersExt, SipMessage};

    pub fn parse(b: &[u8]) -> Res<()> {
        rsipstack::sip::parser::parse_message(b)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn hp(h: &rsipstack::sip::HostWithPort) -> (String, Option<u16>) {
        (h.host.to_string(), h.port.as_ref().map(|p| p.value()))
    }

    fn params(ps: &[rsipstack::sip::Param]) -> Vec<(String, Option<String>)> {
        ps.iter()
            .map(|p| {
                let s = p.to_string();
                let s = s.trim_start_matches(';');
                match s.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (s.to_string(), None),
                }
            })
            .collect()
    }

    pub fn fields(b: &[u8]) -> Res<Fields> {
        let e = |x: rsipstack::sip::Error| x.to_string();
        let msg = rsipstack::sip::parser::parse_message(b).map_err(e)?;
        let mut f = Fields::default();
        f.start = match &msg {
            SipMessage::Request(r) => format!("{} {}", r.method, r.uri),
            SipMessage::Response(r) => format!("{}", r.status_code.code()),
        };
        f.body_len = match &msg {
            SipMessage::Request(r) => r.body.len(),
            SipMessage::Response(r) => r.body.len(),
        };
        let mut first = true;
        for h in msg.headers().iter() {
            match h {
                Header::Via(v) => {
                    // a Via header line may carry several comma-separated values
                    for val in split_commas(v.value()) {
                        let t = rsipstack::sip::typed::Via::parse(&val).map_err(e)?;
                        f.via_count += 1;
                        if first {
                            first = false;
                            f.via_transport = t.transport.to_string();
                            (f.via_host, f.via_port) = hp(&t.uri.host_with_port);
                            f.via_branch = t.branch().map(|b| b.to_string());
                        }
                    }
                }
                Header::MaxForwards(v) if f.max_forwards.is_none() => {
                    f.max_forwards = Some(v.value().trim().parse::<u8>().map_err(|x| format!("Max-Forwards: {x}"))?)
                }
                Header::Expires(v) if f.expires.is_none() => {
                    f.expires = Some(v.value().trim().parse::<u32>().map_err(|x| format!("Expires: {x}"))?)
                }
                Header::ContentLength(v) if f.content_length.is_none() => {
                    f.content_length =
                        Some(v.value().trim().parse::<usize>().map_err(|x| format!("Content-Length: {x}"))?)
                }
                _ => {}
            }
        }
        if f.via_count == 0 {
            return Err("no Via".into());
        }
        let from = msg.from_header().map_err(e)?.typed().map_err(e)?;
        f.from_uri = from.uri.to_string();
        f.from_tag = from.tag().map(|t| t.to_string());
        let to = msg.to_header().map_err(e)?.typed().map_err(e)?;
        f.to_uri = to.uri.to_string();
        f.call_id = msg.call_id_header().map_err(e)?.value().to_string();
        let cseq = msg.cseq_header().map_err(e)?.typed().map_err(e)?;
        f.cseq = (cseq.seq, cseq.method.to_string());
        for c in msg.contact_headers() {
            if c.value().trim() == "*" {
                continue;
            }
            for t in rsipstack::sip::typed::Contact::parse_header_list(c.value()).map_err(e)? {
                let (h, p) = hp(&t.uri.host_with_port);
                let mut ps = params(&t.uri.params);
                ps.insert(0, ("<uri-params>".into(), None));
                ps.push(("<header-params>".into(), None));
                ps.extend(params(&t.params));
                f.contact_wire.push(t.to_string());
                f.contacts.push((t.uri.to_string(), h, p, ps));
            }
        }
        Ok(f)
    }

    /// Quote- and angle-bracket-aware split of a header value on commas.
    pub fn split_commas(s: &str) -> Vec<String> {
        let (mut out, mut cur, mut q, mut a, mut esc) = (Vec::new(), String::new(), false, false, false);
        for ch in s.chars() {
            if esc {
                esc = false;
                cur.push(ch);
                continue;
            }
            match ch {
                '\\' if q => esc = true,
                '"' => q = !q,
                '<' if !q => a = true,
                '>' if !q => a = false,
                ',' if !q && !a => {
                    out.push(cur.trim().to_string());
                    cur.clear();
                    continue;
                }
                _ => {}
            }
            cur.push(ch);
        }
        if !cur.trim().is_empty() {
            out.push(cur.trim().to_string());
        }
        out
    }

    pub fn bench(b: &[u8]) -> usize {
        let msg = match rsipstack::sip::parser::parse_message(b) {
            Ok(m) => m,
            Err(_) => return 0,
        };
        let mut n = 0usize;
        if let Ok(v) = msg.via_header() {
            if let Ok(t) = v.typed() {
                n += t.branch().map(|b| b.to_string().len()).unwrap_or(0);
            }
        }
        if let Ok(Ok(f)) = msg.from_header().map(|h| h.typed()) {
            n += f.uri.host_with_port.port.map(|p| p.value() as usize).unwrap_or(1);
            n += f.uri.user().map(|u| u.len()).unwrap_or(0);
            n += f.tag().map(|t| t.to_string().len()).unwrap_or(0);
        }
        if let Ok(Ok(t)) = msg.to_header().map(|h| h.typed()) {
            n += t.uri.user().map(|u| u.len()).unwrap_or(0);
        }
        if let Ok(c) = msg.call_id_header() {
            n += c.value().len();
        }
        if let Ok(Ok(c)) = msg.cseq_header().map(|h| h.typed()) {
            n += c.seq as usize;
        }
        if let Ok(Ok(c)) = msg.contact_header().map(|h| h.typed()) {
            n += c.uri.host_with_port.port.map(|p| p.value() as usize).unwrap_or(1);
        }
        if let Some(e) = msg.expires_header() {
            n += e.value().trim().parse::<u32>().unwrap_or(0) as usize;
        }
        n
    }
}

// ---------------------------------------------------------- ezk-sip-types --

mod ezk_impl {
    //! ezk-sip-types has no whole-message entry point; the message assembly below
    //! is `ezk_sip_core::transport::parse::parse_complete_sip` (0.9.2, the UDP /
    //! complete-datagram path) reproduced with the public ezk-sip-types API.
    use super::{Fields, Res};
    use bytes::Bytes;
    use ezk_sip_types::header::typed::{
        CSeq, CallID, Contact, ContentLength, Expires, FromTo, MaxForwards, Via,
    };
    use ezk_sip_types::msg::{Line, MessageLine, PullParser};
    use ezk_sip_types::parse::Parse;
    use ezk_sip_types::print::AppendCtx;
    use ezk_sip_types::uri::SipUriUserPart;
    use ezk_sip_types::{Headers, Name};

    pub struct Msg {
        pub line: MessageLine,
        pub headers: Headers,
        pub body: Bytes,
    }

    pub fn parse_msg(bytes: &[u8]) -> Res<Msg> {
        let buffer = Bytes::copy_from_slice(bytes);
        let mut parser = PullParser::new(&buffer, 0);
        let mut line_opt = None;
        let mut headers = Headers::new();
        for item in &mut parser {
            let line = item.map_err(|_| "incomplete message head".to_string())?;
            let line = std::str::from_utf8(line).map_err(|_| "invalid UTF-8 in header line".to_string())?;
            if line_opt.is_none() {
                match MessageLine::parse(&buffer)(line) {
                    Ok((_, l)) => line_opt = Some(l),
                    Err(_) => return Err(format!("invalid start line {line:?}")),
                }
            } else {
                match ezk_sip_types::_private_reexport::nom::Finish::finish(Line::parse(&buffer, line)) {
                    Ok((_, l)) => headers.insert(l.name, l.value),
                    Err(e) => return Err(format!("malformed header line: {e}")),
                }
            }
        }
        let head_end = parser.head_end();
        let body = match headers.get_named::<ContentLength>() {
            Ok(len) => {
                if len.0 == 0 {
                    Bytes::new()
                } else if buffer.len() >= head_end + len.0 {
                    buffer.slice(head_end..head_end + len.0)
                } else {
                    return Err("incomplete body (Content-Length > available)".into());
                }
            }
            Err(_) => {
                if head_end == buffer.len() {
                    Bytes::new()
                } else {
                    buffer.slice(head_end..)
                }
            }
        };
        Ok(Msg {
            line: line_opt.ok_or("no start line")?,
            headers,
            body,
        })
    }

    pub fn parse(b: &[u8]) -> Res<()> {
        parse_msg(b).map(|_| ())
    }

    fn host(h: &ezk_sip_types::host::HostPort) -> (String, Option<u16>) {
        (h.host.to_string(), h.port)
    }

    fn params<S: ezk_sip_types::uri::params::ParamsSpec>(p: &ezk_sip_types::uri::params::Params<S>) -> Vec<(String, Option<String>)> {
        // Params has no public iterator: take the names from its rendering and
        // the values from get_val (the stored, decoded value).
        let s = p.to_string();
        s.split(';')
            .filter(|x| !x.is_empty())
            .map(|x| {
                let n = x.split_once('=').map(|(n, _)| n).unwrap_or(x);
                (n.to_string(), p.get_val(n).map(|v| v.to_string()))
            })
            .collect()
    }

    pub fn fields(b: &[u8]) -> Res<Fields> {
        let e = |x: ezk_sip_types::header::HeaderError| x.to_string();
        let m = parse_msg(b)?;
        let h = &m.headers;
        let mut f = Fields::default();
        f.start = match &m.line {
            MessageLine::Request(r) => format!("{} {}", r.method, r.uri.default_print_ctx()),
            MessageLine::Response(s) => format!("{}", s.code.into_u16()),
        };
        f.body_len = m.body.len();
        let vias: Vec<Via> = h.get_named().map_err(e)?;
        let raw_vias = h.get_raw(&Name::VIA).count();
        if vias.is_empty() || vias.len() < raw_vias {
            return Err(format!("Via: {} raw values, {} decoded", raw_vias, vias.len()));
        }
        f.via_count = vias.len();
        f.via_transport = vias[0].transport.to_string();
        (f.via_host, f.via_port) = host(&vias[0].sent_by);
        f.via_branch = vias[0].params.get_val("branch").map(|b| b.to_string());
        let from: FromTo = h.get(Name::FROM).map_err(e)?;
        f.from_uri = from.uri.uri.default_print_ctx().to_string();
        f.from_tag = from.tag.as_ref().map(|t| t.to_string());
        let to: FromTo = h.get(Name::TO).map_err(e)?;
        f.to_uri = to.uri.uri.default_print_ctx().to_string();
        f.call_id = h.get_named::<CallID>().map_err(e)?.0.to_string();
        let cseq: CSeq = h.get_named().map_err(e)?;
        f.cseq = (cseq.cseq, cseq.method.to_string());
        if h.contains(&Name::CONTACT) {
            let star = h.get_raw(&Name::CONTACT).any(|v| v.trim() == "*");
            if !star {
                let cs: Vec<Contact> = h.get_named().map_err(e)?;
                if cs.is_empty() {
                    return Err("Contact present but no value decoded".into());
                }
                for c in cs {
                    let (ho, p) = host(&c.uri.uri.host_port);
                    let mut ps = vec![("<uri-params>".to_string(), None)];
                    ps.extend(params(&c.uri.uri.uri_params));
                    ps.push(("<header-params>".into(), None));
                    ps.extend(params(&c.params));
                    f.contact_wire.push(c.default_print_ctx().to_string());
                    f.contacts.push((c.uri.uri.default_print_ctx().to_string(), ho, p, ps));
                }
            }
        }
        if h.contains(&Name::MAX_FORWARDS) {
            f.max_forwards = Some(h.get_named::<MaxForwards>().map_err(e)?.0);
        }
        if h.contains(&Name::EXPIRES) {
            f.expires = Some(h.get_named::<Expires>().map_err(e)?.0);
        }
        if h.contains(&Name::CONTENT_LENGTH) {
            f.content_length = Some(h.get_named::<ContentLength>().map_err(e)?.0);
        }
        Ok(f)
    }

    pub fn bench(b: &[u8]) -> usize {
        let m = match parse_msg(b) {
            Ok(m) => m,
            Err(_) => return 0,
        };
        let h = &m.headers;
        let mut n = 0usize;
        if let Ok(v) = h.get_named::<Via>() {
            n += v.params.get_val("branch").map(|b| b.len()).unwrap_or(0);
        }
        if let Ok(f) = h.get::<FromTo>(Name::FROM) {
            n += f.uri.uri.host_port.port.unwrap_or(1) as usize;
            if let SipUriUserPart::User(u) = &f.uri.uri.user_part {
                n += u.len();
            }
            n += f.tag.map(|t| t.len()).unwrap_or(0);
        }
        if let Ok(t) = h.get::<FromTo>(Name::TO) {
            if let SipUriUserPart::User(u) = &t.uri.uri.user_part {
                n += u.len();
            }
        }
        if let Ok(c) = h.get_named::<CallID>() {
            n += c.0.len();
        }
        if let Ok(c) = h.get_named::<CSeq>() {
            n += c.cseq as usize;
        }
        if let Ok(c) = h.get_named::<Contact>() {
            n += c.uri.uri.host_port.port.unwrap_or(1) as usize;
        }
        if let Ok(e) = h.get_named::<Expires>() {
            n += e.0 as usize;
        }
        n
    }
}

// ----------------------------------------------------------------- tandem --

// Tandem's parser is compiled straight from the main crate's source tree (the
// module only uses std, bytes, memchr and thiserror), so the harness does not
// build the whole softswitch. Path is relative to this file:
// docs/parser-eval/src/main.rs -> src/sip/message/mod.rs
#[cfg(feature = "tandem")]
#[allow(dead_code, unused_imports)]
#[path = "../../../src/sip/message/mod.rs"]
mod tandem_message;

#[cfg(feature = "tandem")]
mod tandem_impl {
    use super::tandem_message as tm;
    use super::{Fields, Res};
    use tm::values::{parse_scalar, Contacts, CSeq, NameAddr, Via};
    use tm::{HeaderName, Headers, Message};

    pub fn parse(b: &[u8]) -> Res<()> {
        tm::parse(b).map(|_| ()).map_err(|e| format!("{} {}", e.status, e.reason))
    }

    fn headers(m: &Message) -> &Headers {
        match m {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    fn fields_of(m: &Message) -> Res<Fields> {
        let h = headers(m);
        let mut f = Fields::default();
        match m {
            Message::Request(r) => {
                f.start = format!("{} {}", r.method, r.uri);
                f.body_len = r.body.len();
            }
            Message::Response(r) => {
                f.start = r.status.to_string();
                f.body_len = r.body.len();
            }
        }
        for v in h.get_all(&HeaderName::Via) {
            for via in Via::parse_all(v).ok_or("malformed Via")? {
                if f.via_count == 0 {
                    f.via_transport = via.transport.clone();
                    f.via_host = via.host.clone();
                    f.via_port = via.port;
                    f.via_branch = via.branch().map(str::to_string);
                }
                f.via_count += 1;
            }
        }
        if f.via_count == 0 {
            return Err("no Via".into());
        }
        let from = NameAddr::parse(h.get(&HeaderName::From).ok_or("missing From")?).ok_or("malformed From")?;
        f.from_uri = from.uri.to_string();
        f.from_tag = from.tag().map(str::to_string);
        let to = NameAddr::parse(h.get(&HeaderName::To).ok_or("missing To")?).ok_or("malformed To")?;
        f.to_uri = to.uri.to_string();
        f.call_id = h.get(&HeaderName::CallId).ok_or("missing Call-ID")?.to_string();
        let cseq = CSeq::parse(h.get(&HeaderName::CSeq).ok_or("missing CSeq")?).ok_or("malformed CSeq")?;
        f.cseq = (cseq.seq, cseq.method);
        for c in h.get_all(&HeaderName::Contact) {
            if let Contacts::List(list) = Contacts::parse(c).ok_or("malformed Contact")? {
                for na in list {
                    let mut ps = vec![("<uri-params>".to_string(), None)];
                    ps.extend(na.uri.params.iter().cloned());
                    ps.push(("<header-params>".into(), None));
                    ps.extend(na.params.iter().cloned());
                    // Tandem keeps the URI and parameter text verbatim; a 200 OK
                    // echoes the binding from these parts:
                    let mut wire = format!("<{}>", na.uri);
                    for (n, v) in &na.params {
                        wire.push(';');
                        wire.push_str(n);
                        if let Some(v) = v {
                            wire.push('=');
                            wire.push_str(v);
                        }
                    }
                    f.contact_wire.push(wire);
                    f.contacts.push((na.uri.to_string(), na.uri.host.clone(), na.uri.port, ps));
                }
            }
        }
        if let Some(v) = h.get(&HeaderName::MaxForwards) {
            f.max_forwards = Some(parse_scalar(v, 255).ok_or("malformed Max-Forwards")? as u8);
        }
        if let Some(v) = h.get(&HeaderName::Expires) {
            f.expires = Some(parse_scalar(v, u32::MAX as u64).ok_or("malformed Expires")? as u32);
        }
        if let Some(v) = h.get(&HeaderName::ContentLength) {
            f.content_length = Some(parse_scalar(v, u32::MAX as u64).ok_or("malformed Content-Length")? as usize);
        }
        Ok(f)
    }

    pub fn fields(b: &[u8]) -> Res<Fields> {
        let m = tm::parse(b).map_err(|e| format!("{} {}", e.status, e.reason))?;
        fields_of(&m)
    }

    /// fields() plus Tandem's request validation layer (RFC 3261 §8.2 checks:
    /// single-value headers, CSeq/method match, scalar bounds).
    pub fn fields_validated(b: &[u8]) -> Res<Fields> {
        let m = tm::parse(b).map_err(|e| format!("{} {}", e.status, e.reason))?;
        if let Message::Request(r) = &m {
            tm::validate::validate_request(r).map_err(|e| format!("validate: {} {}", e.status, e.reason))?;
        }
        fields_of(&m)
    }

    pub fn bench(b: &[u8]) -> usize {
        let Ok(Message::Request(r)) = tm::parse(b) else {
            return 0;
        };
        let mut n = 0usize;
        if let Some(v) = r.top_via() {
            n += v.branch().map(str::len).unwrap_or(0);
        }
        if let Some(f) = r.from() {
            n += f.uri.port.unwrap_or(1) as usize;
            n += f.uri.user.as_deref().map(str::len).unwrap_or(0);
            n += f.tag().map(str::len).unwrap_or(0);
        }
        if let Some(t) = r.to() {
            n += t.uri.user.as_deref().map(str::len).unwrap_or(0);
        }
        if let Some(c) = r.call_id() {
            n += c.len();
        }
        if let Some(c) = r.cseq() {
            n += c.seq as usize;
        }
        if let Some(Contacts::List(l)) = r.header(&HeaderName::Contact).and_then(Contacts::parse) {
            n += l.first().and_then(|c| c.uri.port).unwrap_or(1) as usize;
        }
        if let Some(e) = r.header(&HeaderName::Expires).and_then(|v| parse_scalar(v, u32::MAX as u64)) {
            n += e as usize;
        }
        n
    }
}

// ----------------------------------------------------------------- corpus --

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    Accept,
    Reject,
    Either,
}

/// Expected parser verdict per file, from tests/conformance/rfc4475/INDEX.md:
/// VALID / VALID (parse) -> Accept; INVALID -> Reject, except the 10 files the
/// RFC lets a liberal element accept -> Either; test.dat (malformed, not
/// classified by the RFC) -> Reject.
const EXPECT: &[(&str, Expect)] = {
    use Expect::*;
    &[
        ("wsinv.dat", Accept),
        ("intmeth.dat", Accept),
        ("esc01.dat", Accept),
        ("escnull.dat", Accept),
        ("esc02.dat", Accept),
        ("lwsdisp.dat", Accept),
        ("longreq.dat", Accept),
        ("dblreq.dat", Accept),
        ("semiuri.dat", Accept),
        ("transports.dat", Accept),
        ("mpart01.dat", Accept),
        ("unreason.dat", Accept),
        ("noreason.dat", Accept),
        ("badinv01.dat", Reject),
        ("clerr.dat", Reject),
        ("ncl.dat", Reject),
        ("scalar02.dat", Reject),
        ("scalarlg.dat", Reject),
        ("quotbal.dat", Either),
        ("ltgtruri.dat", Either),
        ("lwsruri.dat", Either),
        ("lwsstart.dat", Either),
        ("trws.dat", Either),
        ("escruri.dat", Either),
        ("baddate.dat", Either),
        ("regbadct.dat", Either),
        ("badaspec.dat", Either),
        ("baddn.dat", Either),
        ("badvers.dat", Reject),
        ("mismatch01.dat", Reject),
        ("mismatch02.dat", Reject),
        ("bigcode.dat", Reject),
        ("badbranch.dat", Accept),
        ("insuf.dat", Reject),
        ("unkscm.dat", Accept),
        ("novelsc.dat", Accept),
        ("unksm2.dat", Accept),
        ("bext01.dat", Accept),
        ("invut.dat", Accept),
        ("regaut01.dat", Accept),
        ("multi01.dat", Reject),
        ("mcl01.dat", Reject),
        ("bcast.dat", Accept),
        ("zeromf.dat", Accept),
        ("cparam01.dat", Accept),
        ("cparam02.dat", Accept),
        ("regescrt.dat", Accept),
        ("sdp01.dat", Accept),
        ("inv2543.dat", Accept),
        ("test.dat", Reject),
    ]
};

fn run_corpus(dir: &Path, verbose: bool) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().map(|x| x == "dat").unwrap_or(false))
        .collect();
    files.sort();
    assert_eq!(files.len(), EXPECT.len(), "expected {} .dat files", EXPECT.len());
    let cands = candidates();
    println!("# RFC 4475 corpus: {} files in {}", files.len(), dir.display());
    println!("# columns per candidate: shallow (message parse only) / deep (parse + core typed headers); verdict uses deep");
    print!("{:<16} {:<7}", "file", "expect");
    for c in &cands {
        print!(" | {:<22}", c.name);
    }
    println!();
    let mut ok = vec![0usize; cands.len()];
    let mut bad: Vec<Vec<String>> = vec![Vec::new(); cands.len()];
    let mut details = Vec::new();
    for p in &files {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let exp = EXPECT.iter().find(|(n, _)| *n == name).map(|(_, e)| *e).expect("file in EXPECT");
        let data = std::fs::read(p).unwrap();
        print!("{:<16} {:<7}", name, format!("{exp:?}"));
        for (i, c) in cands.iter().enumerate() {
            let s = guarded(|| (c.parse)(&data));
            let d = guarded(|| (c.fields)(&data));
            let acc = d.is_ok();
            let good = match exp {
                Expect::Accept => acc,
                Expect::Reject => !acc,
                Expect::Either => true,
            };
            if good {
                ok[i] += 1;
            } else {
                bad[i].push(name.clone());
            }
            let sv = if s.is_ok() { "acc" } else { "REJ" };
            let dv = if acc { "acc" } else { "REJ" };
            print!(" | {sv}/{dv} {:<14}", if good { "ok" } else { "MISHANDLED" });
            match &d {
                Err(err) => details.push(format!("  {:<14} {:<16} rejected: {}", c.name, name, short(err))),
                Ok(f) if verbose => details.push(format!("  {:<14} {:<16} accepted: {}", c.name, name, short(&format!("{f:?}")))),
                _ => {}
            }
        }
        println!();
    }
    println!();
    for (i, c) in cands.iter().enumerate() {
        println!(
            "SUMMARY {:<14} {}/{} handled as INDEX says; mishandled: {}",
            c.name,
            ok[i],
            files.len(),
            if bad[i].is_empty() { "none".to_string() } else { bad[i].join(", ") }
        );
    }
    println!("\n# reasons (deep):");
    for d in details {
        println!("{d}");
    }
}

// -------------------------------------------------------------- registrar --

const REGISTER: &str = "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-12345-1-0\r\n\
Max-Forwards: 70\r\n\
From: <sip:u1@127.0.0.1>;tag=12345SIPpTag001\r\n\
To: <sip:u1@127.0.0.1>\r\n\
Call-ID: 1-12345@127.0.0.1\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:u1@127.0.0.1:5081>\r\n\
Expires: 3600\r\n\
User-Agent: SIPp\r\n\
Content-Length: 0\r\n\
\r\n";

const COMPACT: &str = "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
v: SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-compact-1\r\n\
Max-Forwards: 70\r\n\
f: <sip:u1@127.0.0.1>;tag=ctag1\r\n\
t: <sip:u1@127.0.0.1>\r\n\
i: compact-1@127.0.0.1\r\n\
CSeq: 1 REGISTER\r\n\
m: <sip:u1@127.0.0.1:5081>\r\n\
Expires: 3600\r\n\
l: 0\r\n\
\r\n";

const FOLDED: &str = "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5081\r\n ;branch=z9hG4bK-folded-1\r\n\
Max-Forwards: 70\r\n\
From: <sip:u1@127.0.0.1>\r\n\t;tag=foldtag1\r\n\
To: <sip:u1@127.0.0.1>\r\n\
Call-ID: folded-1@127.0.0.1\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:u1@127.0.0.1:5081>\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\
\r\n";

const INSTANCE: &str = "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK-inst-1\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@127.0.0.1>;tag=itag1\r\n\
To: <sip:alice@127.0.0.1>\r\n\
Call-ID: inst-1@192.0.2.1\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:alice@192.0.2.1:5060;transport=tcp>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1;expires=3600\r\n\
Supported: outbound, path\r\n\
Content-Length: 0\r\n\
\r\n";

const IPV6: &str = "REGISTER sip:[2001:db8::10]:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK-v6-1\r\n\
Max-Forwards: 70\r\n\
From: <sip:u1@[2001:db8::10]>;tag=v6tag1\r\n\
To: <sip:u1@[2001:db8::10]>\r\n\
Call-ID: v6-1@2001:db8::1\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:u1@[2001:db8::1]:5060>\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\
\r\n";

fn norm_host(h: &str) -> String {
    h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

fn param<'a>(ps: &'a [(String, Option<String>)], name: &str) -> Option<&'a Option<String>> {
    // only header (contact) params, i.e. after the <header-params> marker
    let start = ps.iter().position(|(n, _)| n == "<header-params>").map(|i| i + 1).unwrap_or(0);
    ps[start..].iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

type Check = fn(&Fields) -> Result<(), String>;

fn registrar_inputs() -> Vec<(&'static str, &'static str, Check)> {
    vec![
        ("typical SIPp REGISTER", REGISTER, |f| {
            chk(f.via_branch.as_deref() == Some("z9hG4bK-12345-1-0"), "branch")?;
            chk(f.call_id == "1-12345@127.0.0.1", "call-id")?;
            chk(f.cseq == (1, "REGISTER".into()), "cseq")?;
            chk(f.from_tag.as_deref() == Some("12345SIPpTag001"), "from tag")?;
            chk(f.contacts.len() == 1 && f.contacts[0].2 == Some(5081), "contact")?;
            chk(f.expires == Some(3600), "expires")
        }),
        ("compact v: i: m: f: t: l:", COMPACT, |f| {
            chk(f.via_branch.as_deref() == Some("z9hG4bK-compact-1"), "v: branch")?;
            chk(f.call_id == "compact-1@127.0.0.1", "i: call-id")?;
            chk(f.from_tag.as_deref() == Some("ctag1"), "f: tag")?;
            chk(f.to_uri.contains("u1@127.0.0.1"), "t: uri")?;
            chk(f.contacts.len() == 1 && f.contacts[0].2 == Some(5081), "m: contact")?;
            chk(f.content_length == Some(0), "l: content-length")
        }),
        ("folded Via and From lines", FOLDED, |f| {
            chk(f.via_branch.as_deref() == Some("z9hG4bK-folded-1"), "folded Via branch")?;
            chk(f.from_tag.as_deref() == Some("foldtag1"), "folded From tag")
        }),
        ("Contact +sip.instance/reg-id/expires", INSTANCE, |f| {
            chk(f.contacts.len() == 1, "one contact")?;
            let ps = &f.contacts[0].3;
            // the value may be kept quoted or unquoted, but it must be the URN
            let inst = param(ps, "+sip.instance").cloned().flatten().unwrap_or_default();
            chk(
                inst.trim_matches('"') == "<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>",
                "+sip.instance value",
            )?;
            chk(param(ps, "reg-id") == Some(&Some("1".into())), "reg-id")?;
            chk(param(ps, "expires") == Some(&Some("3600".into())), "contact expires")?;
            chk(f.contacts[0].0.to_ascii_lowercase().contains("transport=tcp"), "uri transport=tcp kept in URI")?;
            chk(param(ps, "transport").is_none(), "transport not a contact param")?;
            // echoed in the 200 OK, the binding must still carry the quoted instance
            chk(
                f.contact_wire[0]
                    .contains("+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\""),
                &format!("re-serialized Contact {:?}", f.contact_wire[0]),
            )
        }),
        ("IPv6 Via/Contact [2001:db8::1]:5060", IPV6, |f| {
            chk(norm_host(&f.via_host) == "2001:db8::1" && f.via_port == Some(5060), "Via sent-by")?;
            chk(f.contacts.len() == 1, "one contact")?;
            chk(
                norm_host(&f.contacts[0].1) == "2001:db8::1" && f.contacts[0].2 == Some(5060),
                "Contact host/port",
            )
        }),
    ]
}

fn chk(c: bool, what: &str) -> Result<(), String> {
    if c {
        Ok(())
    } else {
        Err(format!("wrong/missing {what}"))
    }
}

fn run_registrar(verbose: bool) {
    println!("# registrar-daily inputs (PASS = accepted and the checked fields come out right)");
    for c in candidates() {
        for (label, msg, check) in registrar_inputs() {
            let r = guarded(|| (c.fields)(msg.as_bytes()));
            let verdict = match &r {
                Ok(f) => match check(f) {
                    Ok(()) => "PASS".to_string(),
                    Err(e) => format!("FAIL ({e})"),
                },
                Err(e) => format!("FAIL (rejected: {})", short(e)),
            };
            println!("REGISTRAR {:<14} {:<38} {}", c.name, label, verdict);
            if verbose {
                if let Ok(f) = &r {
                    println!("    {f:?}");
                }
            }
        }
    }
}

// ------------------------------------------------------------------ bench --

/// One timed round of `iters` calls; returns messages per second.
fn round(iters: usize, expect: usize, f: &dyn Fn() -> usize) -> f64 {
    let t = Instant::now();
    let mut acc = 0usize;
    for _ in 0..iters {
        acc = acc.wrapping_add(f());
    }
    let el = t.elapsed().as_secs_f64();
    assert_eq!(acc, expect.wrapping_mul(iters));
    black_box(acc);
    iters as f64 / el
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const ROUNDS: usize = 5;

fn run_bench(iters: usize) {
    let msg = REGISTER.as_bytes();
    println!(
        "# throughput: typical SIPp REGISTER ({} bytes), {} parses per round, {} rounds per candidate \
         interleaved (candidates take turns so background load hits all alike), 1 thread",
        msg.len(),
        iters,
        ROUNDS
    );
    println!("# 'full' = parse + Via branch, From/To URI, Call-ID, CSeq, Contact, Expires; 'parse-only' = message-level parse");
    let mut cands = candidates();
    // tandem+validate shares tandem's bench body
    let mut seen = Vec::new();
    cands.retain(|c| {
        let k = c.bench as usize;
        let new = !seen.contains(&k);
        seen.push(k);
        new
    });
    let mut full = vec![Vec::new(); cands.len()];
    let mut shallow = vec![Vec::new(); cands.len()];
    for c in &cands {
        assert!((c.bench)(msg) > 0, "{} failed to parse the benchmark message", c.name);
        for _ in 0..iters / 10 {
            black_box((c.bench)(black_box(msg)));
        }
    }
    for _ in 0..ROUNDS {
        for (i, c) in cands.iter().enumerate() {
            let e = (c.bench)(msg);
            full[i].push(round(iters, e, &|| (c.bench)(black_box(msg))));
            shallow[i].push(round(iters, 1, &|| (c.parse)(black_box(msg)).is_ok() as usize));
        }
    }
    for (i, c) in cands.iter().enumerate() {
        let (fm, sm) = (median(&full[i]), median(&shallow[i]));
        let fb = full[i].iter().cloned().fold(0.0, f64::max);
        let fw = full[i].iter().cloned().fold(f64::MAX, f64::min);
        println!(
            "BENCH {:<14} full: median {:>7.0} msg/s ({:.2} us/msg), best {:.0}, worst {:.0} | parse-only: median {:>7.0} msg/s ({:.2} us/msg)",
            c.name,
            fm,
            1e6 / fm,
            fb,
            fw,
            sm,
            1e6 / sm
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("all");
    let verbose = std::env::var("VERBOSE").is_ok();
    // shared/ sits beside the main checkout: <main>/docs/parser-eval -> <main>/../shared
    let default_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/conformance/rfc4475").to_string();
    // quiet the default panic message; guarded() reports panics itself
    std::panic::set_hook(Box::new(|_| {}));
    match cmd {
        "corpus" => run_corpus(Path::new(args.get(2).unwrap_or(&default_dir)), verbose),
        "registrar" => run_registrar(verbose),
        "bench" => run_bench(args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1_000_000)),
        "all" => {
            for c in candidates() {
                println!("CANDIDATE {} {}", c.name, c.version);
            }
            run_corpus(Path::new(args.get(2).unwrap_or(&default_dir)), verbose);
            println!();
            run_registrar(verbose);
            println!();
            run_bench(args.get(3).map(|s| s.parse().unwrap()).unwrap_or(1_000_000));
        }
        _ => eprintln!("usage: parser-eval [all [DIR [ITERS]] | corpus [DIR] | registrar | bench [ITERS]]"),
    }
}
