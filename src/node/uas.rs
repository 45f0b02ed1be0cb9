//! Requests Tandem answers itself (RFC 3261 §8.2 and §16.3 checks, OPTIONS §11).

use super::Node;
use crate::sip::message::build::{new_tag, response_to};
use crate::sip::message::validate::max_forwards;
use crate::sip::message::{HeaderName, Method, Request, Response, Scheme};

pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER";
pub const ACCEPT: &str = "application/sdp";
/// Option tags Tandem implements (RFC 3327 Path).
pub const SUPPORTED: &[&str] = &["path"];

pub enum Route {
    Respond(Response),
    Register,
    /// A new request for a user: digit analysis and the stateful proxy.
    Forward,
    /// A request inside a dialog Tandem record-routed (its top Route is ours).
    InDialog,
}

/// §8.2.2.3: option tags in `Require` (and, for requests Tandem would forward,
/// `Proxy-Require`, §16.3 step 4) that Tandem does not support.
fn unsupported(req: &Request, names: &[HeaderName]) -> Vec<String> {
    let mut out = Vec::new();
    for name in names {
        for v in req.headers.get_all(name) {
            for tag in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(tag)) {
                    out.push(tag.to_string());
                }
            }
        }
    }
    out
}

pub fn route(node: &Node, req: &Request) -> Route {
    // Each answer is final, so a fresh To tag per response is right (and costs
    // nothing on the REGISTER path, which answers elsewhere).
    let respond = |status| response_to(req, status, Some(&new_tag()));
    // §8.2.2.1 / §16.3 step 2: a scheme Tandem cannot serve (RFC 4475 `unkscm`, `novelsc`).
    if matches!(req.uri.scheme, Scheme::Other(_)) {
        return Route::Respond(respond(416));
    }
    // §8.2.1: methods Tandem does not know get 501 with Allow (RFC 4475 `intmeth`).
    if let Method::Extension(_) = req.method {
        let mut r = respond(501);
        r.headers.push(HeaderName::Allow, ALLOW);
        return Route::Respond(r);
    }
    // CANCEL is never refused for extensions (§8.2.2.3: Require is ignored on CANCEL).
    if req.method == Method::Cancel {
        return Route::Respond(cancel(node, req, respond));
    }
    // §16.4: a request whose top Route is this proxy follows the route set of a
    // dialog Tandem record-routed.
    if let Some(top) = req.headers.first_value(&HeaderName::Route) {
        if node.proxy_owns_route(top) {
            if !unsupported(req, &[HeaderName::ProxyRequire]).is_empty() {
                let mut r = respond(420);
                r.headers.push(
                    HeaderName::Unsupported,
                    unsupported(req, &[HeaderName::ProxyRequire]).join(", "),
                );
                return Route::Respond(r);
            }
            if max_forwards(req) == 0 {
                return Route::Respond(respond(483));
            }
            return Route::InDialog;
        }
    }
    // A request to a user is one Tandem would forward (as a proxy, once calls are
    // routed); a request to Tandem itself (no user part) it answers as a UAS.
    let would_forward = req.uri.user.is_some() && req.method != Method::Register;
    let headers: &[HeaderName] = if would_forward {
        &[HeaderName::Require, HeaderName::ProxyRequire]
    } else {
        &[HeaderName::Require]
    };
    let bad = unsupported(req, headers);
    if !bad.is_empty() {
        // §8.2.2.3 / §16.3 step 4 (RFC 4475 `bext01`)
        let mut r = respond(420);
        r.headers.push(HeaderName::Unsupported, bad.join(", "));
        return Route::Respond(r);
    }
    // §16.3 step 3: Max-Forwards 0 on a request to forward (RFC 4475 `zeromf`).
    if would_forward && max_forwards(req) == 0 {
        let mut r = respond(483);
        if req.method == Method::Options {
            r.headers.push(HeaderName::Allow, ALLOW);
        }
        return Route::Respond(r);
    }
    match req.method {
        Method::Register => Route::Register,
        Method::Options => {
            // §11.2: capabilities
            let mut r = respond(200);
            r.headers.push(HeaderName::Allow, ALLOW);
            r.headers.push(HeaderName::Accept, ACCEPT);
            r.headers.push(HeaderName::Supported, SUPPORTED.join(", "));
            Route::Respond(r)
        }
        Method::Bye => Route::Respond(respond(481)),
        _ => {
            // A new request for a user goes through digit analysis and the proxy;
            // one inside a dialog Tandem is not part of has nowhere to go (§12.2.2).
            let in_dialog = req.to().is_some_and(|t| t.tag().is_some());
            if in_dialog {
                Route::Respond(respond(481))
            } else {
                Route::Forward
            }
        }
    }
}

fn cancel(node: &Node, req: &Request, respond: impl Fn(u16) -> Response) -> Response {
    // §9.2: a CANCEL matches the INVITE with the same branch; every INVITE gets its
    // final answer at once here, so the CANCEL only needs its own 200 or 481.
    let Some(via) = req.top_via() else {
        return respond(400);
    };
    let key = crate::sip::transaction::key::TxKey::for_request(req, &via, "INVITE");
    // §16.10: a CANCEL for an INVITE being proxied cancels its branches; the
    // branches' 487s make the INVITE's final answer.
    if node.proxy_cancel(&key) {
        return respond(200);
    }
    if node.transactions.lock().contains(&key) {
        respond(200)
    } else {
        respond(481)
    }
}
