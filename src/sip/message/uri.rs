//! URIs (RFC 3261 §19.1, RFC 3966 for `tel:`). The raw text is kept verbatim so a
//! binding is echoed exactly as the phone sent it (RFC 4475 `cparam02`, `regescrt`);
//! the parsed parts are for comparison and routing.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    raw: String,
    pub scheme: Scheme,
    /// User part, still %-escaped as on the wire (`None` when absent).
    pub user: Option<String>,
    /// Host, lower-cased; IPv6 references keep their brackets. Empty for non-SIP schemes.
    pub host: String,
    pub port: Option<u16>,
    /// URI parameters (`;name=value`), names lower-cased.
    pub params: Vec<(String, Option<String>)>,
    /// Whether a `?headers` component is present.
    pub has_headers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("URI has no scheme")]
    NoScheme,
    #[error("URI contains white space or brackets")]
    BadChar,
    #[error("SIP URI has a malformed host")]
    BadHost,
    #[error("SIP URI has a malformed port")]
    BadPort,
    #[error("SIP URI has a malformed parameter")]
    BadParam,
    #[error("tel URI is malformed")]
    BadTel,
}

fn is_scheme(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

impl Uri {
    pub fn parse(raw: &str) -> Result<Uri, UriError> {
        if raw.is_empty()
            || raw
                .bytes()
                .any(|c| c.is_ascii_whitespace() || c == b'<' || c == b'>' || c < 0x20)
        {
            return Err(UriError::BadChar);
        }
        let colon = raw.find(':').ok_or(UriError::NoScheme)?;
        let scheme_s = &raw[..colon];
        if !is_scheme(scheme_s) {
            return Err(UriError::NoScheme);
        }
        let scheme = if scheme_s.eq_ignore_ascii_case("sip") {
            Scheme::Sip
        } else if scheme_s.eq_ignore_ascii_case("sips") {
            Scheme::Sips
        } else if scheme_s.eq_ignore_ascii_case("tel") {
            Scheme::Tel
        } else {
            Scheme::Other(scheme_s.to_ascii_lowercase())
        };
        let rest = &raw[colon + 1..];
        match scheme {
            Scheme::Sip | Scheme::Sips => Self::parse_sip(raw, scheme, rest),
            Scheme::Tel => {
                // RFC 3966: telephone-subscriber, then parameters.
                let (number, params) = rest.split_once(';').unwrap_or((rest, ""));
                if number.is_empty()
                    || !number.bytes().all(|c| {
                        c.is_ascii_hexdigit()
                            || matches!(c, b'+' | b'-' | b'.' | b'(' | b')' | b'*' | b'#')
                    })
                {
                    return Err(UriError::BadTel);
                }
                Ok(Uri {
                    raw: raw.to_string(),
                    scheme,
                    user: Some(number.to_string()),
                    host: String::new(),
                    port: None,
                    params: parse_uri_params(params)?,
                    has_headers: false,
                })
            }
            Scheme::Other(_) => {
                if rest.is_empty() {
                    return Err(UriError::NoScheme);
                }
                Ok(Uri {
                    raw: raw.to_string(),
                    scheme,
                    user: None,
                    host: String::new(),
                    port: None,
                    params: Vec::new(),
                    has_headers: false,
                })
            }
        }
    }

    fn parse_sip(raw: &str, scheme: Scheme, rest: &str) -> Result<Uri, UriError> {
        // The user part may hold escaped characters, ';' (RFC 4475 `semiuri`) and even
        // '?' (RFC 3261 §25.1 `user-unreserved`, RFC 4475 `intmeth`), but never an
        // unescaped '@'; neither may host, parameters or headers. So the last '@'
        // separates userinfo from host, and `?headers` starts after it.
        let (user, after_user) = match rest.rfind('@') {
            Some(i) => {
                let userinfo = &rest[..i];
                if userinfo.is_empty() {
                    return Err(UriError::BadHost);
                }
                // password is kept inside `user` (rarely used, never for AOR matching)
                let user = userinfo.split(':').next().unwrap_or(userinfo);
                (Some(user.to_string()), &rest[i + 1..])
            }
            None => (None, rest),
        };
        let (hostpart, has_headers) = match after_user.find('?') {
            Some(i) => (&after_user[..i], true),
            None => (after_user, false),
        };
        let (hostport, params) = match hostpart.find(';') {
            Some(i) => (&hostpart[..i], &hostpart[i + 1..]),
            None => (hostpart, ""),
        };
        let (host, port) = split_host_port(hostport)?;
        Ok(Uri {
            raw: raw.to_string(),
            scheme,
            user,
            host,
            port,
            params: parse_uri_params(params)?,
            has_headers,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The user part with %-escapes decoded (RFC 3261 §19.1.4 compares unescaped).
    pub fn user_unescaped(&self) -> Option<String> {
        self.user.as_deref().map(unescape)
    }

    /// The address-of-record key: `scheme:user@host` with the host lower-cased and the
    /// user unescaped, no port or parameters (RFC 3261 §10.3 step 5).
    pub fn aor_key(&self) -> String {
        let scheme = match &self.scheme {
            Scheme::Sip | Scheme::Sips => "sip",
            Scheme::Tel => "tel",
            Scheme::Other(s) => s.as_str(),
        };
        match self.user_unescaped() {
            Some(u) if self.is_sip() => format!("{scheme}:{u}@{}", self.host),
            Some(u) => format!("{scheme}:{u}"),
            None => format!("{scheme}:{}", self.host),
        }
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Decodes %HH escapes once (RFC 4475 `esc01`: no recursive unescaping). A `%` not
/// followed by two hex digits is kept literally (RFC 4475 `esc02`).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            // both are ASCII hex digits, so the slice is on char boundaries
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn split_host_port(hp: &str) -> Result<(String, Option<u16>), UriError> {
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let end = rest.find(']').ok_or(UriError::BadHost)?;
        let h = &rest[..end];
        if h.is_empty()
            || !h
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return Err(UriError::BadHost);
        }
        let after = &rest[end + 1..];
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(UriError::BadPort)?),
        };
        (format!("[{}]", h.to_ascii_lowercase()), port)
    } else {
        let (h, p) = match hp.rfind(':') {
            Some(i) => (&hp[..i], Some(&hp[i + 1..])),
            None => (hp, None),
        };
        if h.is_empty()
            || !h
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        {
            return Err(UriError::BadHost);
        }
        (h.to_ascii_lowercase(), p)
    };
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
                return Err(UriError::BadPort);
            }
            Some(p.parse::<u16>().map_err(|_| UriError::BadPort)?)
        }
    };
    Ok((host, port))
}

fn parse_uri_params(s: &str) -> Result<Vec<(String, Option<String>)>, UriError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(';')
        .map(|p| {
            let (n, v) = match p.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (p, None),
            };
            if n.is_empty() {
                return Err(UriError::BadParam);
            }
            Ok((n.to_ascii_lowercase(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sip_with_params_and_ipv6() {
        let u = Uri::parse("sip:alice@[2001:DB8::1]:5070;transport=tcp;lr").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.param("transport"), Some(Some("tcp")));
        assert_eq!(u.param("lr"), Some(None));
        assert_eq!(u.as_str(), "sip:alice@[2001:DB8::1]:5070;transport=tcp;lr");
    }

    #[test]
    fn user_part_may_hold_semicolons_and_escapes() {
        let u = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.aor_key(), "sip:user;par=u@example.net@example.com");
        // '?' belongs to the user part when an '@' follows (RFC 4475 intmeth)
        let u = Uri::parse("sip:a?b,/;;*:pw@example.com;x?h=v").unwrap();
        assert_eq!(u.user.as_deref(), Some("a?b,/;;*"));
        assert_eq!(u.host, "example.com");
        assert!(u.has_headers);
        let u = Uri::parse("sip:u@example.com?Route=%3Csip:x%3E").unwrap();
        assert_eq!(u.host, "example.com");
        assert!(u.has_headers);
        // %00 must not truncate (RFC 4475 escnull)
        let u = Uri::parse("sip:null-%00-null@example.com").unwrap();
        assert_eq!(u.aor_key(), "sip:null-\0-null@example.com");
    }

    #[test]
    fn rejects_malformed() {
        assert!(Uri::parse("<sip:a@b>").is_err());
        assert!(Uri::parse("sip:a@b c").is_err());
        assert!(Uri::parse("sip:a@b:99999").is_err());
        assert!(Uri::parse("sip:a@").is_err());
        assert!(Uri::parse("nocolon").is_err());
        assert!(Uri::parse("sip:a@h;;x").is_err());
    }

    #[test]
    fn other_schemes_are_opaque() {
        let u = Uri::parse("soap.beep://192.0.2.103:3002").unwrap();
        assert_eq!(u.scheme, Scheme::Other("soap.beep".into()));
        let t = Uri::parse("tel:+1-202-555-0100;phone-context=x").unwrap();
        assert_eq!(t.user.as_deref(), Some("+1-202-555-0100"));
        assert!(Uri::parse("tel:").is_err());
    }

    #[test]
    fn unescape_is_not_recursive_and_keeps_bare_percent() {
        assert_eq!(unescape("value%2541"), "value%41");
        assert_eq!(unescape("%Z%45"), "%ZE");
        assert_eq!(unescape("ab%"), "ab%");
    }
}
