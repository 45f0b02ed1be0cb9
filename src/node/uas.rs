//! What to do with a new request (RFC 3261 §8.2 and §16.3 checks, OPTIONS §11):
//! a pure decision. The node carries it out; nothing here sends or changes state.

use crate::sip::message::build::{new_tag, response_to};
use crate::sip::message::validate::max_forwards;
use crate::sip::message::{HeaderName, Method, Request, Response, Scheme};
use crate::sip::transaction::key::TxKey;

pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER";
pub const ACCEPT: &str = "application/sdp";
/// Option tags Tandem implements (RFC 3327 Path).
pub const SUPPORTED: &[&str] = &["path"];

pub enum Route {
    Respond(Response),
    /// An OPTIONS to the node asking for a registration token
    /// (docs/token-protocol.md); the response is its capabilities answer, to
    /// which the node adds the token or which it replaces with a 503.
    TokenRequest(Response),
    Register,
    /// A new request for a user: digit analysis and the stateful proxy.
    Forward,
    /// A request inside a dialog Tandem record-routed (its top Route is ours).
    InDialog,
    /// A CANCEL (§9.2) of the INVITE transaction `invite`: the node cancels it if
    /// it is being proxied (§16.10) and answers the CANCEL 200, or 481 when no such
    /// INVITE exists.
    Cancel {
        invite: TxKey,
    },
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

/// Decides what a new request needs. `owns_route` says whether a Route URI names
/// this proxy (a dialog Tandem record-routed).
pub fn route(req: &Request, owns_route: impl Fn(&str) -> bool) -> Route {
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
        // §9.2: a CANCEL matches the INVITE with the same branch.
        return match req.top_via() {
            Some(via) => Route::Cancel {
                invite: TxKey::for_request(req, &via, "INVITE"),
            },
            None => Route::Respond(respond(400)),
        };
    }
    // §16.4: a request whose top Route is this proxy follows the route set of a
    // dialog Tandem record-routed.
    if let Some(top) = req.headers.first_value(&HeaderName::Route) {
        if owns_route(top) {
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
            let asks_token = req
                .headers
                .get(&HeaderName::RegistrationToken)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("request"));
            if asks_token {
                Route::TokenRequest(r)
            } else {
                Route::Respond(r)
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Message};

    fn req(start: &str, extra: &str) -> Request {
        let method = start.split(' ').next().unwrap();
        let text = format!(
            "{start} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n\
             From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\n\
             Call-ID: c1\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        }
    }

    fn status(r: Route) -> u16 {
        match r {
            Route::Respond(r) => r.status,
            _ => 0,
        }
    }

    const NOT_OURS: fn(&str) -> bool = |_| false;

    #[test]
    fn new_requests_for_users_are_forwarded_and_registers_registered() {
        assert!(matches!(
            route(&req("INVITE sip:bob@example.com", ""), NOT_OURS),
            Route::Forward
        ));
        assert!(matches!(
            route(&req("REGISTER sip:example.com", ""), NOT_OURS),
            Route::Register
        ));
    }

    #[test]
    fn cancel_names_the_invite_it_cancels_and_changes_nothing() {
        // §9.2: same branch, method INVITE
        let r = req("CANCEL sip:bob@example.com", "");
        let Route::Cancel { invite } = route(&r, NOT_OURS) else {
            panic!("CANCEL not routed as Cancel");
        };
        let inv = req("INVITE sip:bob@example.com", "");
        assert_eq!(
            invite,
            TxKey::for_request(&inv, &inv.top_via().unwrap(), "INVITE")
        );
    }

    #[test]
    fn scheme_method_and_extension_checks() {
        // §8.2.2.1: 416 for a scheme Tandem cannot serve
        assert_eq!(
            status(route(&req("INVITE unknownscheme:bob", ""), NOT_OURS)),
            416
        );
        // §8.2.1: 501 with Allow for an unknown method to Tandem itself
        match route(&req("FOO sip:example.com", ""), NOT_OURS) {
            Route::Respond(r) => {
                assert_eq!(r.status, 501);
                assert_eq!(r.header(&HeaderName::Allow), Some(ALLOW));
            }
            _ => panic!("no 501"),
        }
        // §8.2.2.3: an unsupported Require to Tandem itself
        match route(
            &req("OPTIONS sip:example.com", "Require: foo\r\n"),
            NOT_OURS,
        ) {
            Route::Respond(r) => {
                assert_eq!(r.status, 420);
                assert_eq!(r.header(&HeaderName::Unsupported), Some("foo"));
            }
            _ => panic!("no 420"),
        }
        // §16.3 step 4: Proxy-Require on a request to forward
        assert_eq!(
            status(route(
                &req("INVITE sip:bob@example.com", "Proxy-Require: foo\r\n"),
                NOT_OURS
            )),
            420
        );
        // §16.3 step 3: Max-Forwards 0 on a request to forward
        let mut r = req("MESSAGE sip:bob@example.com", "");
        r.headers.remove_all(&HeaderName::MaxForwards);
        r.headers.push(HeaderName::MaxForwards, "0");
        assert_eq!(status(route(&r, NOT_OURS)), 483);
    }

    #[test]
    fn options_to_tandem_lists_capabilities() {
        match route(&req("OPTIONS sip:example.com", ""), NOT_OURS) {
            Route::Respond(r) => {
                assert_eq!(r.status, 200);
                assert_eq!(r.header(&HeaderName::Allow), Some(ALLOW));
                assert_eq!(r.header(&HeaderName::Supported), Some("path"));
            }
            _ => panic!("OPTIONS not answered"),
        }
    }

    #[test]
    fn requests_routed_through_us_are_in_dialog_and_strays_get_481() {
        let ours = |r: &str| r.contains("127.0.0.1:5060");
        let r = req(
            "BYE sip:bob@127.0.0.1:5080",
            "Route: <sip:127.0.0.1:5060;lr>\r\n",
        );
        assert!(matches!(route(&r, ours), Route::InDialog));
        // §12.2.2: an in-dialog request Tandem is not part of
        assert_eq!(status(route(&r, NOT_OURS)), 481);
        let mut info = req("INFO sip:bob@127.0.0.1:5080", "");
        info.headers.remove_all(&HeaderName::To);
        info.headers
            .push(HeaderName::To, "<sip:bob@example.com>;tag=b");
        assert_eq!(status(route(&info, NOT_OURS)), 481);
    }
}
