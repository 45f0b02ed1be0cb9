//! The one digest authenticator (RFC 3261 §22, RFC 7616/8760) for every request
//! Tandem authenticates: REGISTERs as a registrar (401, `WWW-Authenticate`,
//! credentials in `Authorization`, §22.2) and requests it forwards as a proxy
//! (407, `Proxy-Authenticate`, credentials in `Proxy-Authorization`, §22.3). The
//! accounts, realm, algorithms and nonces are shared, so a nonce issued in a 401
//! is as good in a 407 and one replay check covers both.

use super::auth::{self, Algorithm, NonceCheck, NonceManager};
use super::message::build::{new_tag, response_to};
use super::message::{HeaderName, Request, Response};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Which side of RFC 3261 §22 is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A registrar or UAS: 401 with `WWW-Authenticate` (§22.2).
    Registrar,
    /// A proxy: 407 with `Proxy-Authenticate` (§22.3).
    Proxy,
}

impl Role {
    fn credentials(self) -> HeaderName {
        match self {
            Role::Registrar => HeaderName::Authorization,
            Role::Proxy => HeaderName::ProxyAuthorization,
        }
    }
    fn challenge(self) -> (u16, HeaderName) {
        match self {
            Role::Registrar => (401, HeaderName::WwwAuthenticate),
            Role::Proxy => (407, HeaderName::ProxyAuthenticate),
        }
    }
}

/// Why a request was not authenticated, with the response to send.
#[derive(Debug)]
pub enum Denied {
    /// No (valid) credentials: a fresh challenge, one per algorithm.
    Challenge(Response),
    /// The credentials header does not parse: 400.
    Malformed(Response),
}

impl Denied {
    pub fn into_response(self) -> Response {
        match self {
            Denied::Challenge(r) | Denied::Malformed(r) => r,
        }
    }
}

enum Verdict {
    Ok,
    Challenge { stale: bool },
    Malformed,
}

pub struct Authenticator {
    realm: String,
    algorithms: Vec<Algorithm>,
    /// username → password.
    users: HashMap<String, String>,
    nonces: NonceManager,
}

impl Authenticator {
    pub fn new(
        realm: String,
        algorithms: Vec<Algorithm>,
        users: HashMap<String, String>,
        nonce_ttl: Duration,
        now: Instant,
    ) -> Authenticator {
        Authenticator {
            realm,
            algorithms,
            users,
            nonces: NonceManager::new(nonce_ttl, now),
        }
    }

    /// Whether `user` has an account.
    pub fn is_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Checks the request's digest credentials for `user` (the AOR's user for a
    /// REGISTER, the From user for a call). `Ok(())` when they are valid and
    /// fresh; otherwise the challenge (or 400) to answer with.
    pub fn check(&self, req: &Request, role: Role, user: &str, now: Instant) -> Result<(), Denied> {
        match self.verdict(req, &role.credentials(), user, now) {
            Verdict::Ok => Ok(()),
            Verdict::Challenge { stale } => {
                Err(Denied::Challenge(self.challenge(req, role, stale, now)))
            }
            Verdict::Malformed => {
                metrics::counter!("tandem_auth_failures_total", "reason" => "malformed")
                    .increment(1);
                let mut r = response_to(req, 400, Some(&new_tag()));
                r.reason = match role {
                    Role::Registrar => "Malformed Authorization",
                    Role::Proxy => "Malformed Proxy-Authorization",
                }
                .into();
                Err(Denied::Malformed(r))
            }
        }
    }

    fn verdict(&self, req: &Request, header: &HeaderName, user: &str, now: Instant) -> Verdict {
        let mut saw_ours = None;
        for v in req.headers.get_all(header) {
            match auth::parse_authorization(v) {
                Ok(d) if d.realm == self.realm => {
                    saw_ours = Some(d);
                    break;
                }
                Ok(_) => {}
                // RFC 4475 `regaut01`: an unknown scheme is answered with our challenge
                Err(auth::AuthError::UnsupportedScheme) => {}
                Err(_) => return Verdict::Malformed,
            }
        }
        let Some(d) = saw_ours else {
            return Verdict::Challenge { stale: false };
        };
        if !self.algorithms.contains(&d.algorithm) {
            return Verdict::Challenge { stale: false };
        }
        // A wrong user, realm or password all get the same fresh challenge, and an
        // unknown user is verified against a dummy password so timing tells nothing.
        let password = self.users.get(&d.username).map(String::as_str);
        let ok = auth::verify(
            &d,
            req.method.as_str(),
            password.unwrap_or("\u{0}no-such-user"),
        ) && password.is_some()
            && d.username == user;
        match self.nonces.check_fresh(&d.nonce, now) {
            NonceCheck::Valid => {}
            // RFC 7616 §3.3 / RFC 2617 §3.2.1: a correct digest over an expired nonce
            // (or one issued before a restart) gets stale=true, so the phone retries
            // silently instead of asking its user for a password.
            NonceCheck::Stale | NonceCheck::Invalid if ok => {
                metrics::counter!("tandem_auth_failures_total", "reason" => "stale_nonce")
                    .increment(1);
                return Verdict::Challenge { stale: true };
            }
            _ => {
                metrics::counter!("tandem_auth_failures_total", "reason" => "invalid_nonce")
                    .increment(1);
                return Verdict::Challenge { stale: false };
            }
        }
        if !ok {
            metrics::counter!("tandem_auth_failures_total", "reason" => "credentials").increment(1);
            return Verdict::Challenge { stale: false };
        }
        if !self.nonces.accept_nc(&d.nonce, d.nc, now) {
            metrics::counter!("tandem_auth_failures_total", "reason" => "replay").increment(1);
            return Verdict::Challenge { stale: false };
        }
        Verdict::Ok
    }

    /// The 401/407 with one challenge per configured algorithm, in order.
    fn challenge(&self, req: &Request, role: Role, stale: bool, now: Instant) -> Response {
        let (status, header) = role.challenge();
        let mut r = response_to(req, status, Some(&new_tag()));
        let nonce = self.nonces.issue(now);
        for alg in &self.algorithms {
            r.headers.push(
                header.clone(),
                auth::challenge(&self.realm, &nonce, *alg, stale),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Message};

    fn authenticator(now: Instant) -> Authenticator {
        Authenticator::new(
            "tandem.test".into(),
            vec![Algorithm::Sha256, Algorithm::Md5],
            [("alice".to_string(), "secret".to_string())]
                .into_iter()
                .collect(),
            Duration::from_secs(300),
            now,
        )
    }

    fn req(method: &str, extra: &str) -> Request {
        let text = format!(
            "{method} sip:bob@tandem.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a\r\n\
             From: <sip:alice@tandem.test>;tag=a\r\nTo: <sip:bob@tandem.test>\r\nCall-ID: c\r\n\
             CSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        }
    }

    /// The MD5 digest a phone would send for `nonce` (RFC 2617 §3.2.2, qop=auth).
    fn credentials(header: &str, method: &str, nonce: &str, password: &str) -> String {
        let ha1 = auth::ha1(Algorithm::Md5, "alice", "tandem.test", password);
        let ha2 = hex::encode(<md5::Md5 as md5::Digest>::digest(
            format!("{method}:sip:bob@tandem.test").as_bytes(),
        ));
        let response = hex::encode(<md5::Md5 as md5::Digest>::digest(
            format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}").as_bytes(),
        ));
        format!(
            "{header}: Digest username=\"alice\", realm=\"tandem.test\", nonce=\"{nonce}\", \
             uri=\"sip:bob@tandem.test\", algorithm=MD5, qop=auth, nc=00000001, \
             cnonce=\"c0ffee\", response=\"{response}\"\r\n"
        )
    }

    /// The nonce of a fresh challenge to an unsigned `method` request.
    fn fresh_nonce(a: &Authenticator, method: &str, role: Role, now: Instant) -> String {
        let r = a
            .check(&req(method, ""), role, "alice", now)
            .unwrap_err()
            .into_response();
        let header = role.challenge().1;
        let v = r.headers.get_all(&header).next().unwrap();
        let i = v.find("nonce=\"").unwrap() + 7;
        v[i..i + v[i..].find('"').unwrap()].to_string()
    }

    #[test]
    fn registrar_and_proxy_challenges_differ_only_in_status_and_headers() {
        let now = Instant::now();
        let a = authenticator(now);
        let Err(Denied::Challenge(r)) =
            a.check(&req("REGISTER", ""), Role::Registrar, "alice", now)
        else {
            panic!("no 401");
        };
        assert_eq!(r.status, 401);
        // one challenge per algorithm, in the configured order
        let v: Vec<&str> = r.headers.get_all(&HeaderName::WwwAuthenticate).collect();
        assert_eq!(v.len(), 2);
        assert!(v[0].contains("SHA-256") && v[1].contains("MD5"), "{v:?}");
        let Err(Denied::Challenge(r)) = a.check(&req("INVITE", ""), Role::Proxy, "alice", now)
        else {
            panic!("no 407");
        };
        assert_eq!(r.status, 407);
        assert_eq!(r.headers.get_all(&HeaderName::ProxyAuthenticate).count(), 2);
        assert_eq!(r.headers.get_all(&HeaderName::WwwAuthenticate).count(), 0);
    }

    #[test]
    fn valid_credentials_pass_once_and_a_replay_is_challenged() {
        let now = Instant::now();
        let a = authenticator(now);
        let nonce = fresh_nonce(&a, "INVITE", Role::Proxy, now);
        let signed = req(
            "INVITE",
            &credentials("Proxy-Authorization", "INVITE", &nonce, "secret"),
        );
        assert!(a.check(&signed, Role::Proxy, "alice", now).is_ok());
        // the same nc again is a replay
        assert!(matches!(
            a.check(&signed, Role::Proxy, "alice", now),
            Err(Denied::Challenge(_))
        ));
        // credentials in the registrar's header do not count for the proxy
        let wrong_header = req(
            "INVITE",
            &credentials("Authorization", "INVITE", &nonce, "secret"),
        );
        assert!(a.check(&wrong_header, Role::Proxy, "alice", now).is_err());
    }

    #[test]
    fn wrong_password_or_user_is_challenged_and_a_bad_header_is_400() {
        let now = Instant::now();
        let a = authenticator(now);
        let nonce = fresh_nonce(&a, "REGISTER", Role::Registrar, now);
        let bad = req(
            "REGISTER",
            &credentials("Authorization", "REGISTER", &nonce, "wrong"),
        );
        assert!(matches!(
            a.check(&bad, Role::Registrar, "alice", now),
            Err(Denied::Challenge(_))
        ));
        // right password, but for another user's AOR
        let other = req(
            "REGISTER",
            &credentials("Authorization", "REGISTER", &nonce, "secret"),
        );
        assert!(a.check(&other, Role::Registrar, "bob", now).is_err());
        let garbled = req("REGISTER", "Authorization: Digest username=\r\n");
        match a.check(&garbled, Role::Registrar, "alice", now) {
            Err(Denied::Malformed(r)) => assert_eq!(r.status, 400),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_correct_digest_over_an_expired_nonce_is_told_stale() {
        let now = Instant::now();
        let a = authenticator(now);
        let nonce = fresh_nonce(&a, "REGISTER", Role::Registrar, now);
        let signed = req(
            "REGISTER",
            &credentials("Authorization", "REGISTER", &nonce, "secret"),
        );
        let later = now + Duration::from_secs(301);
        let r = a
            .check(&signed, Role::Registrar, "alice", later)
            .unwrap_err()
            .into_response();
        assert!(
            r.headers
                .get_all(&HeaderName::WwwAuthenticate)
                .all(|v| v.contains("stale=true")),
            "{r:?}"
        );
    }
}
