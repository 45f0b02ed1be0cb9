//! Header names (with RFC 3261 §7.3.3 compact forms) and the ordered header list.

use std::fmt;

macro_rules! header_names {
    ($( $variant:ident => $canon:literal $(, $compact:literal)? ;)*) => {
        /// A header field name. Known names are an enum so lookups compare integers;
        /// anything else keeps its wire spelling.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum HeaderName {
            $( $variant, )*
            Other(Box<str>),
        }

        impl HeaderName {
            /// Maps a wire name (any case, compact or long) to a `HeaderName`.
            pub fn from_wire(name: &str) -> HeaderName {
                $(
                    if name.eq_ignore_ascii_case($canon) $(|| name.eq_ignore_ascii_case($compact))? {
                        return HeaderName::$variant;
                    }
                )*
                HeaderName::Other(name.into())
            }

            pub fn as_str(&self) -> &str {
                match self {
                    $( HeaderName::$variant => $canon, )*
                    HeaderName::Other(s) => s,
                }
            }
        }
    };
}

header_names! {
    Via => "Via", "v";
    From => "From", "f";
    To => "To", "t";
    CallId => "Call-ID", "i";
    CSeq => "CSeq";
    Contact => "Contact", "m";
    MaxForwards => "Max-Forwards";
    ContentLength => "Content-Length", "l";
    ContentType => "Content-Type", "c";
    ContentEncoding => "Content-Encoding", "e";
    Expires => "Expires";
    MinExpires => "Min-Expires";
    Authorization => "Authorization";
    ProxyAuthorization => "Proxy-Authorization";
    WwwAuthenticate => "WWW-Authenticate";
    ProxyAuthenticate => "Proxy-Authenticate";
    Route => "Route";
    RecordRoute => "Record-Route";
    Path => "Path";
    Require => "Require";
    ProxyRequire => "Proxy-Require";
    Supported => "Supported", "k";
    Unsupported => "Unsupported";
    Allow => "Allow";
    Accept => "Accept";
    UserAgent => "User-Agent";
    Server => "Server";
    Date => "Date";
    RetryAfter => "Retry-After";
    Subject => "Subject", "s";
    Event => "Event", "o";
    ReferTo => "Refer-To", "r";
    AllowEvents => "Allow-Events", "u";
    Timestamp => "Timestamp";
    ResourcePriority => "Resource-Priority";
    // Tandem's registration-token protocol (docs/token-protocol.md).
    RegistrationToken => "Registration-Token";
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    pub value: String,
}

/// Headers in wire order. Lookups are linear: SIP messages carry ~10–20 headers,
/// where a scan beats hashing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    pub fn get(&self, name: &HeaderName) -> Option<&str> {
        self.0
            .iter()
            .find(|h| same(&h.name, name))
            .map(|h| h.value.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| same(&h.name, name))
            .map(|h| h.value.as_str())
    }

    pub fn count(&self, name: &HeaderName) -> usize {
        self.0.iter().filter(|h| same(&h.name, name)).count()
    }

    pub fn push(&mut self, name: HeaderName, value: impl Into<String>) {
        self.0.push(Header {
            name,
            value: value.into(),
        });
    }

    pub fn remove_all(&mut self, name: &HeaderName) {
        self.0.retain(|h| !same(&h.name, name));
    }

    /// The first header with this name, mutable (e.g. the top Via for `received`).
    pub fn first_mut(&mut self, name: &HeaderName) -> Option<&mut Header> {
        self.0.iter_mut().find(|h| same(&h.name, name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    /// The first value of the first header with this name (header fields may hold
    /// comma-separated values, RFC 3261 §7.3.1), e.g. the top Route.
    pub fn first_value(&self, name: &HeaderName) -> Option<&str> {
        let v = self.get(name)?;
        super::scan::split_commas(v).and_then(|p| p.first().copied())
    }

    /// Removes the first value of the first header with this name, which may share
    /// its header field with further comma-separated values (a proxy popping its
    /// own Via, RFC 3261 §16.7 step 3, or its own Route, §16.4).
    pub fn pop_first_value(&mut self, name: &HeaderName) {
        let Some(i) = self.0.iter().position(|h| same(&h.name, name)) else {
            return;
        };
        let rest = super::scan::split_commas(&self.0[i].value)
            .map(|p| p[1..].join(", "))
            .unwrap_or_default();
        if rest.is_empty() {
            self.0.remove(i);
        } else {
            self.0[i].value = rest;
        }
    }
}

fn same(a: &HeaderName, b: &HeaderName) -> bool {
    match (a, b) {
        (HeaderName::Other(x), HeaderName::Other(y)) => x.eq_ignore_ascii_case(y),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case_insensitive_names() {
        assert_eq!(HeaderName::from_wire("v"), HeaderName::Via);
        assert_eq!(
            HeaderName::from_wire("MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::from_wire("i"), HeaderName::CallId);
        assert_eq!(HeaderName::from_wire("l").as_str(), "Content-Length");
        let mut h = Headers::default();
        h.push(HeaderName::from_wire("X-Foo"), "1");
        assert_eq!(h.get(&HeaderName::Other("x-foo".into())), Some("1"));
    }

    #[test]
    fn pop_first_value_keeps_the_rest_of_the_field() {
        let mut h = Headers::default();
        h.push(HeaderName::Route, "<sip:a;lr>, <sip:b;lr>");
        h.push(HeaderName::Route, "<sip:c;lr>");
        h.pop_first_value(&HeaderName::Route);
        assert_eq!(
            h.get_all(&HeaderName::Route).collect::<Vec<_>>(),
            vec!["<sip:b;lr>", "<sip:c;lr>"]
        );
        h.pop_first_value(&HeaderName::Route);
        assert_eq!(
            h.get_all(&HeaderName::Route).collect::<Vec<_>>(),
            vec!["<sip:c;lr>"]
        );
    }
}
