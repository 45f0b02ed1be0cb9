//! Typed views of the header values the core relies on: Via (RFC 3261 §20.42),
//! name-addr/addr-spec (From, To, Contact: §20.10, §25.1) and CSeq (§20.16).

use super::scan::{params, split_commas, unquote, Scanner};
use super::uri::Uri;
use std::net::IpAddr;

pub type Params = Vec<(String, Option<String>)>;

fn owned(p: Vec<(&str, Option<&str>)>) -> Params {
    p.into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.map(str::to_string)))
        .collect()
}

pub fn param<'a>(params: &'a Params, name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// `UDP`, `TCP`, `TLS`, … (upper-cased).
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    /// Parses every Via value in one header field (comma-separated).
    pub fn parse_all(v: &str) -> Option<Vec<Via>> {
        split_commas(v)?.into_iter().map(Via::parse_one).collect()
    }

    pub fn parse_one(v: &str) -> Option<Via> {
        let mut sc = Scanner::new(v);
        sc.skip_ws();
        let proto = sc.token()?;
        if !proto.eq_ignore_ascii_case("SIP") || !sc.eat(b'/') {
            return None;
        }
        let version = sc.token()?;
        if version != "2.0" || !sc.eat(b'/') {
            return None;
        }
        let transport = sc.token()?.to_ascii_uppercase();
        sc.skip_ws();
        let host = if sc.peek() == Some(b'[') {
            let h = sc.take_while(|c| c != b']');
            if sc.peek() != Some(b']') {
                return None;
            }
            sc.pos += 1;
            format!("{}]", h.to_ascii_lowercase())
        } else {
            let h = sc.take_while(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
            if h.is_empty() {
                return None;
            }
            h.to_ascii_lowercase()
        };
        let port = if sc.eat(b':') {
            let p = sc.take_while(|c| c.is_ascii_digit());
            if p.is_empty() || p.len() > 5 {
                return None;
            }
            Some(p.parse::<u16>().ok()?)
        } else {
            None
        };
        let params = owned(params(&mut sc)?);
        if !sc.at_end() {
            return None;
        }
        Some(Via {
            transport,
            host,
            port,
            params,
        })
    }

    pub fn branch(&self) -> Option<&str> {
        param(&self.params, "branch").flatten()
    }

    /// The value as written on the wire (`SIP/2.0/UDP host:port;param=value…`),
    /// for a Via that was changed after parsing (RFC 3261 §18.2.1 `received`,
    /// RFC 7339 §5.2 `oc`).
    pub fn to_value(&self) -> String {
        let mut v = format!("SIP/2.0/{} {}", self.transport, self.sent_by());
        for (n, val) in &self.params {
            v.push(';');
            v.push_str(n);
            if let Some(val) = val {
                v.push('=');
                v.push_str(val);
            }
        }
        v
    }

    /// `sent-by` as written (`host[:port]`), part of the transaction key (§17.2.3).
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    pub fn host_ip(&self) -> Option<IpAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }
}

/// `name-addr` or `addr-spec` with header parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: Uri,
    pub params: Params,
}

impl NameAddr {
    pub fn parse(v: &str) -> Option<NameAddr> {
        let mut sc = Scanner::new(v);
        sc.skip_ws();
        let display;
        match sc.peek()? {
            b'"' => {
                display = Some(unquote(sc.quoted()?));
                sc.skip_ws();
                if sc.peek() != Some(b'<') {
                    return None;
                }
            }
            b'<' => display = None,
            _ => {
                // Either `*(token LWS) <uri>` or a bare addr-spec.
                let rest = sc.rest();
                match rest.find('<') {
                    Some(i) if !rest[..i].contains([':', '"']) => {
                        let words = rest[..i].trim();
                        // RFC 4475 `baddn`: display names are tokens or quoted strings
                        if !words
                            .split([' ', '\t'])
                            .filter(|w| !w.is_empty())
                            .all(super::scan::is_token)
                        {
                            return None;
                        }
                        display = (!words.is_empty()).then(|| words.to_string());
                        sc.pos += i;
                    }
                    _ => {
                        // addr-spec: the URI ends at the first ';' (§20.10: its
                        // parameters are header parameters) and may not hold '?' or ','.
                        let end = rest.find([';', ' ', '\t']).unwrap_or(rest.len());
                        let raw = &rest[..end];
                        if raw.contains(['?', ',']) {
                            return None;
                        }
                        let uri = Uri::parse(raw).ok()?;
                        sc.pos += end;
                        let params = owned(params(&mut sc)?);
                        if !sc.at_end() {
                            return None;
                        }
                        return Some(NameAddr {
                            display: None,
                            uri,
                            params,
                        });
                    }
                }
            }
        }
        // at '<'
        sc.pos += 1;
        let raw = sc.take_while(|c| c != b'>');
        if sc.peek() != Some(b'>') {
            return None;
        }
        sc.pos += 1;
        let uri = Uri::parse(raw).ok()?;
        let params = owned(params(&mut sc)?);
        if !sc.at_end() {
            return None;
        }
        Some(NameAddr {
            display,
            uri,
            params,
        })
    }

    pub fn tag(&self) -> Option<&str> {
        param(&self.params, "tag").flatten()
    }
}

/// A Contact header value: `*` or a list of name-addrs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contacts {
    Wildcard,
    List(Vec<NameAddr>),
}

impl Contacts {
    pub fn parse(v: &str) -> Option<Contacts> {
        if v.trim() == "*" {
            return Some(Contacts::Wildcard);
        }
        split_commas(v)?
            .into_iter()
            .map(NameAddr::parse)
            .collect::<Option<Vec<_>>>()
            .map(Contacts::List)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: String,
}

impl CSeq {
    /// RFC 3261 §20.16: the number is a 32-bit unsigned integer (RFC 4475 `scalar02`).
    pub fn parse(v: &str) -> Option<CSeq> {
        let mut it = v.split_ascii_whitespace();
        let n = it.next()?;
        let m = it.next()?;
        if it.next().is_some() || n.len() > 10 || !n.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let seq = u32::try_from(n.parse::<u64>().ok()?).ok()?;
        if !super::scan::is_token(m) {
            return None;
        }
        Some(CSeq {
            seq,
            method: m.to_string(),
        })
    }
}

/// A decimal scalar bounded by `max` (Max-Forwards ≤ 255, Expires ≤ 2^32-1).
pub fn parse_scalar(v: &str, max: u64) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|n| *n <= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_odd_lws() {
        let v = Via::parse_all("SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8  , SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].transport, "TCP");
        assert_eq!(v[0].host, "spindle.example.com");
        assert_eq!(v[0].branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(v[1].branch(), Some("z9hG4bK30239"));
        let v = Via::parse_one("SIP/2.0/UDP [2001:db8::1]:5060;rport;branch=z9hG4bKx").unwrap();
        assert_eq!(v.host, "[2001:db8::1]");
        assert_eq!(v.port, Some(5060));
        assert_eq!(param(&v.params, "rport"), Some(None));
        assert!(Via::parse_all("SIP/2.0/UDP 192.0.2.15;;,;,,").is_none());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(r#""Quoted string \"\"" <sip:jdrosen@example.com> ; newparam = newvalue ; secondparam ; q = 0.33"#).unwrap();
        assert_eq!(n.display.as_deref(), Some(r#"Quoted string """#));
        assert_eq!(param(&n.params, "q"), Some(Some("0.33")));
        let n = NameAddr::parse("sip:user@example.com;unknownparam").unwrap();
        assert_eq!(n.uri.as_str(), "sip:user@example.com");
        assert_eq!(param(&n.params, "unknownparam"), Some(None));
        let n = NameAddr::parse("<sip:user@example.com;unknownparam>").unwrap();
        assert_eq!(n.uri.param("unknownparam"), Some(None));
        let n = NameAddr::parse(r#""caller"<sip:caller@example.com>;tag=323"#).unwrap();
        assert_eq!(n.tag(), Some("323"));
        let c = r#"<sip:alice@192.0.2.1:5060;transport=tcp>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";reg-id=1;expires=3600"#;
        let n = NameAddr::parse(c).unwrap();
        assert_eq!(
            param(&n.params, "+sip.instance"),
            Some(Some("\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\""))
        );
        assert_eq!(param(&n.params, "reg-id"), Some(Some("1")));
    }

    #[test]
    fn name_addr_rejects_torture_cases() {
        assert!(NameAddr::parse("\"Mr. J. User <sip:j.user@example.com>").is_none()); // quotbal
        assert!(NameAddr::parse("Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_none()); // baddn
        assert!(NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_none()); // regbadct
        assert!(NameAddr::parse("\"Watson, Thomas\" < sip:t.watson@example.org >").is_none()); // badaspec
        assert!(NameAddr::parse("\"Joe\" <sip:joe@example.org>;;;;").is_none());
        // badinv01
    }

    #[test]
    fn cseq_bounds() {
        assert_eq!(CSeq::parse("0009\t INVITE").unwrap().seq, 9);
        assert!(CSeq::parse("36893488147419103232 INVITE").is_none());
        assert!(CSeq::parse("4294967296 INVITE").is_none());
        assert_eq!(CSeq::parse("4294967295 INVITE").unwrap().seq, u32::MAX);
        assert_eq!(parse_scalar("0068", 255), Some(68));
        assert_eq!(parse_scalar("300", 255), None);
    }
}
