//! A tiny cursor over a header value, with the RFC 3261 §25.1 lexical helpers
//! (`SWS`, `token`, `quoted-string`). Values from the wire are untrusted: every
//! helper returns `None` instead of panicking on short or odd input.

/// RFC 3261 §25.1 `token` characters.
#[inline]
pub fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

#[inline]
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

#[derive(Debug, Clone)]
pub struct Scanner<'a> {
    pub s: &'a str,
    pub pos: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(s: &'a str) -> Self {
        Scanner { s, pos: 0 }
    }

    #[inline]
    pub fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    /// Skips linear white space (unfolded header values only contain SP and HTAB).
    #[inline]
    pub fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `c` (after optional white space, RFC 3261 `SWS c SWS`).
    pub fn eat(&mut self, c: u8) -> bool {
        let save = self.pos;
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            self.skip_ws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    /// A run of token characters (at least one).
    pub fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if is_token_char(c) {
                self.pos += 1;
            } else {
                break;
            }
        }
        (self.pos > start).then(|| &self.s[start..self.pos])
    }

    /// Takes bytes while `f` holds (possibly none).
    pub fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if f(c) {
                self.pos += 1;
            } else {
                break;
            }
        }
        // Only ASCII predicates are used, so `pos` stays on a char boundary
        // unless `f` accepts bytes >= 0x80, in which case it accepts whole chars.
        &self.s[start..self.pos]
    }

    /// A quoted string including its quotes; returns the raw slice. Backslash
    /// escapes any octet (RFC 3261 `quoted-pair`). `None` when unterminated.
    pub fn quoted(&mut self) -> Option<&'a str> {
        let b = self.s.as_bytes();
        if b.get(self.pos) != Some(&b'"') {
            return None;
        }
        let start = self.pos;
        let mut i = self.pos + 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'"' => {
                    self.pos = i + 1;
                    return Some(&self.s[start..self.pos]);
                }
                _ => i += 1,
            }
        }
        None
    }
}

/// Splits a header value on top-level commas (outside quotes and `<>`), RFC 3261 §7.3.1.
/// Returns `None` for an element that is empty (e.g. `a,,b`), which is malformed.
pub fn split_commas(v: &str) -> Option<Vec<&str>> {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut in_quote = false;
    let mut in_angle = false;
    while i < b.len() {
        match b[i] {
            b'\\' if in_quote => i += 1,
            b'"' if !in_angle => in_quote = !in_quote,
            b'<' if !in_quote => in_angle = true,
            b'>' if !in_quote => in_angle = false,
            b',' if !in_quote && !in_angle => {
                let part = v[start..i].trim();
                if part.is_empty() {
                    return None;
                }
                out.push(part);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let part = v.get(start..).unwrap_or("").trim();
    if part.is_empty() {
        return None;
    }
    out.push(part);
    Some(out)
}

/// Parses `*( SEMI generic-param )` into (name, value) pairs. Empty names (`;;`)
/// are malformed (RFC 4475 §3.1.2.1 `badinv01`).
pub fn params<'a>(sc: &mut Scanner<'a>) -> Option<Vec<(&'a str, Option<&'a str>)>> {
    let mut out = Vec::new();
    loop {
        if !sc.eat(b';') {
            sc.skip_ws();
            return Some(out);
        }
        let name = sc.token()?;
        let value = if sc.eat(b'=') {
            // RFC 3261 §20.42: `via-received = "received" EQUAL (IPv4address /
            // IPv6address)`, an IPv6 address without brackets (RFC 5118 §4.5)
            if name.eq_ignore_ascii_case("received")
                && !matches!(sc.peek(), Some(b'[' | b'"'))
                && sc
                    .rest()
                    .bytes()
                    .take_while(|c| *c != b';')
                    .any(|c| c == b':')
            {
                let v = sc.take_while(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.');
                if v.is_empty() {
                    return None;
                }
                Some(v)
            } else {
                Some(param_value(sc)?)
            }
        } else {
            None
        };
        out.push((name, value));
    }
}

/// `token / host / quoted-string` (RFC 3261 `gen-value`).
pub fn param_value<'a>(sc: &mut Scanner<'a>) -> Option<&'a str> {
    match sc.peek()? {
        b'"' => sc.quoted(),
        b'[' => {
            let v = sc.take_while(|c| c != b']');
            if sc.peek() == Some(b']') {
                sc.pos += 1;
                Some(&sc.s[sc.pos - v.len() - 1..sc.pos])
            } else {
                None
            }
        }
        _ => sc.token(),
    }
}

/// Removes the quotes and quoted-pair escapes of a quoted string.
pub fn unquote(q: &str) -> String {
    let inner = q
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(q);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_commas_only() {
        let v = r#""a, b" <sip:x@y>;p=1, <sip:z@w,>"#;
        assert_eq!(
            split_commas(v).unwrap(),
            vec![r#""a, b" <sip:x@y>;p=1"#, "<sip:z@w,>"]
        );
        assert!(split_commas("a,,b").is_none());
        assert!(split_commas("a,").is_none());
    }

    #[test]
    fn params_with_lws_and_rejects_empty() {
        let mut sc = Scanner::new(" ;  tag =  abc ; lr;q= \"x y\"");
        let p = params(&mut sc).unwrap();
        assert_eq!(
            p,
            vec![("tag", Some("abc")), ("lr", None), ("q", Some("\"x y\""))]
        );
        let mut sc = Scanner::new(";;");
        assert!(params(&mut sc).is_none());
        // an IPv6 `received` has no brackets (RFC 3261 §20.42)
        let mut sc = Scanner::new(";received=2001:db8::9:1;rport=5;branch=z9hG4bKx");
        let p = params(&mut sc).unwrap();
        assert_eq!(p[0], ("received", Some("2001:db8::9:1")));
        assert_eq!(p[1], ("rport", Some("5")));
        assert!(sc.at_end());
    }

    #[test]
    fn quoted_handles_escapes_and_unterminated() {
        let mut sc = Scanner::new(r#""J \"x\\" rest"#);
        assert_eq!(sc.quoted(), Some(r#""J \"x\\""#));
        assert_eq!(unquote(r#""J \"x\\""#), r#"J "x\"#);
        let mut sc = Scanner::new("\"open");
        assert!(sc.quoted().is_none());
    }
}
