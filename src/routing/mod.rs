//! Digit analysis (seed 000's "digit analysis module"): resolves the Request-URI of
//! an INVITE to a target — a local user (whose bindings the proxy looks up in the
//! location table) or a route pattern's gateway group, with the number translated
//! for it. Pure: no IO, no clock. Syntax and rules: `docs/dial-plan.md`.

mod config;
mod pattern;
pub mod targets;

pub use config::{GatewayConfig, RouteConfig};
pub use pattern::{MatchInfo, PatternError, RoutePattern, Specificity, MAX_POSITIONS};

use crate::sip::message::{Scheme, Uri};

/// A configured route that failed validation; `key()` names it as in the config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routes[{index}].{field}: {reason}")]
pub struct DialPlanError {
    /// Index in the configured `routes`.
    pub index: usize,
    /// `pattern`, `gateway_group`, `strip` or `prefix`.
    pub field: &'static str,
    pub reason: String,
}

impl DialPlanError {
    /// The config key, e.g. `routes[2].pattern`.
    pub fn key(&self) -> String {
        format!("routes[{}].{}", self.index, self.field)
    }
}

#[derive(Debug, Clone)]
struct Route {
    index: usize,
    pattern: RoutePattern,
    gateway_group: String,
    strip: usize,
    prefix: String,
}

/// The result of analysing a dialed number against the route patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// Index of the matching route in the configured `routes`.
    pub route_index: usize,
    pub gateway_group: String,
    /// The number to send: dialed digits without the part before `.`, then without
    /// `strip` more leading digits, then with `prefix` prepended.
    pub number: String,
}

/// Where a Request-URI goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A local user: look up the bindings of `aor` (no binding → 480).
    Local { aor: String },
    /// A route pattern matched: send `number` to the gateway group.
    Gateway(RouteMatch),
    /// Neither (→ 404).
    NotFound,
}

/// The route patterns, ordered most specific first.
#[derive(Debug, Clone, Default)]
pub struct DialPlan {
    routes: Vec<Route>,
}

impl DialPlan {
    /// Validates every route (pattern syntax, gateway group, prefix, strip) and
    /// orders them by specificity, ties in configuration order.
    pub fn new(routes: Vec<RouteConfig>) -> Result<DialPlan, DialPlanError> {
        let mut out: Vec<Route> = Vec::with_capacity(routes.len());
        for (index, r) in routes.into_iter().enumerate() {
            let err = |field, reason: String| DialPlanError {
                index,
                field,
                reason,
            };
            let pattern = RoutePattern::parse(&r.pattern)
                .map_err(|e| err("pattern", format!("{:?}: {e}", r.pattern)))?;
            if let Some(other) = out.iter().find(|o| o.pattern.same_strings(&pattern)) {
                return Err(err(
                    "pattern",
                    format!(
                        "{:?} matches the same numbers as routes[{}].pattern {:?}, so it would never be chosen",
                        r.pattern,
                        other.index,
                        other.pattern.as_str()
                    ),
                ));
            }
            if r.gateway_group.is_empty() {
                return Err(err("gateway_group", "must not be empty".into()));
            }
            if !is_dialable(&r.prefix) {
                return Err(err(
                    "prefix",
                    format!(
                        "{:?}: only digits, '*', '#' and a leading '+' are allowed",
                        r.prefix
                    ),
                ));
            }
            // What is left after the `.` for the shortest match; `strip` may remove
            // all of it only when a prefix replaces it.
            let left = pattern.min_len() - pattern.pre_dot_len();
            let strip = r.strip as usize;
            if strip > left || (strip == left && r.prefix.is_empty()) {
                return Err(err(
                    "strip",
                    format!(
                        "{strip} leaves no digits to send for the shortest match of {:?} ({left} after the '.')",
                        r.pattern
                    ),
                ));
            }
            out.push(Route {
                index,
                pattern,
                gateway_group: r.gateway_group,
                strip,
                prefix: r.prefix,
            });
        }
        // stable: equal specificity keeps configuration order
        out.sort_by_key(|r| r.pattern.specificity());
        Ok(DialPlan { routes: out })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// The most specific route matching the whole dialed string, with the
    /// translated number.
    pub fn analyse(&self, dialed: &str) -> Option<RouteMatch> {
        self.routes.iter().find_map(|r| {
            let m = r.pattern.matches(dialed)?;
            let sent = m.sent(dialed);
            // validated: strip <= what is left after the '.' in any match
            let rest = &sent[r.strip.min(sent.len())..];
            Some(RouteMatch {
                route_index: r.index,
                gateway_group: r.gateway_group.clone(),
                number: format!("{}{rest}", r.prefix),
            })
        })
    }

    /// Resolves a Request-URI: a sip/sips URI whose AOR key (`Uri::aor_key`) is a
    /// local user (`is_local_user` decides: configured account or registered
    /// binding) → `Local`; else its dialed number analysed against the patterns →
    /// `Gateway`; else `NotFound`.
    pub fn resolve(&self, uri: &Uri, is_local_user: impl Fn(&str) -> bool) -> Destination {
        if uri.is_sip() && uri.user.is_some() {
            let aor = uri.aor_key();
            if is_local_user(&aor) {
                return Destination::Local { aor };
            }
        }
        dialed_number(uri)
            .and_then(|d| self.analyse(&d))
            .map_or(Destination::NotFound, Destination::Gateway)
    }
}

/// Optional leading `+`, then digits, `*` and `#` (may be empty).
fn is_dialable(s: &str) -> bool {
    let s = s.strip_prefix('+').unwrap_or(s);
    s.bytes()
        .all(|c| c.is_ascii_digit() || c == b'*' || c == b'#')
}

/// RFC 3966 §5.1.1 visual separators.
fn is_visual_separator(c: char) -> bool {
    matches!(c, '-' | '.' | '(' | ')')
}

fn without_separators(s: &str) -> String {
    s.chars().filter(|&c| !is_visual_separator(c)).collect()
}

/// A user part that is a telephone number: optional leading `+`, then digits, `*`,
/// `#` and visual separators, with at least one digit, `*` or `#`.
fn looks_like_phone_number(s: &str) -> bool {
    let body = s.strip_prefix('+').unwrap_or(s);
    body.chars()
        .any(|c| c.is_ascii_digit() || c == '*' || c == '#')
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || c == '*' || c == '#' || is_visual_separator(c))
}

/// The number dialed in a Request-URI: for sip/sips, the user part (unescaped), with
/// visual separators (`-.()`) removed when the URI has `user=phone` (then also
/// without the number's own `;` parameters) or the user part looks like a phone
/// number; for tel, the number without parameters or visual separators. `None` for
/// other schemes and for a SIP URI without a user part.
pub fn dialed_number(uri: &Uri) -> Option<String> {
    match uri.scheme {
        Scheme::Sip | Scheme::Sips => {
            let user = uri.user_unescaped()?;
            if uri.param("user") == Some(Some("phone")) {
                // telephone-subscriber: number, then ;isub= ;phone-context= …
                let number = user.split(';').next().unwrap_or_default();
                Some(without_separators(number))
            } else if looks_like_phone_number(&user) {
                Some(without_separators(&user))
            } else {
                Some(user)
            }
        }
        Scheme::Tel => uri.user.as_deref().map(without_separators),
        Scheme::Other(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RoutePattern {
        RoutePattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn route(pattern: &str, group: &str, strip: u32, prefix: &str) -> RouteConfig {
        RouteConfig {
            pattern: pattern.into(),
            gateway_group: group.into(),
            strip,
            prefix: prefix.into(),
        }
    }

    fn plan(routes: &[(&str, &str)]) -> DialPlan {
        DialPlan::new(routes.iter().map(|(pt, g)| route(pt, g, 0, "")).collect()).unwrap()
    }

    fn uri(s: &str) -> Uri {
        Uri::parse(s).unwrap()
    }

    #[test]
    fn dot_strips_the_access_code() {
        let pat = p("9.!");
        let m = pat.matches("95551234").unwrap();
        assert_eq!(m.sent("95551234"), "5551234");
        assert_eq!(m.pre_dot_len, 1);
        assert_eq!(m.wildcard_len, 7);
        let dp = DialPlan::new(vec![route("9.!", "pstn", 0, "")]).unwrap();
        assert_eq!(
            dp.analyse("95551234"),
            Some(RouteMatch {
                route_index: 0,
                gateway_group: "pstn".into(),
                number: "5551234".into()
            })
        );
        assert_eq!(dp.analyse("85551234"), None);
    }

    #[test]
    fn x_is_exactly_one_digit() {
        let pat = p("1XXX");
        assert!(pat.matches("1000").is_some());
        assert!(pat.matches("1999").is_some());
        assert!(pat.matches("100").is_none());
        assert!(pat.matches("10000").is_none());
        assert!(pat.matches("2000").is_none());
        assert!(pat.matches("10*0").is_none(), "X is 0-9 only");
        assert!(pat.matches("10a0").is_none());
    }

    #[test]
    fn ranges_and_sets() {
        let pat = p("[2-9]XX");
        assert!(pat.matches("200").is_some());
        assert!(pat.matches("999").is_some());
        assert!(pat.matches("100").is_none());
        assert!(pat.matches("000").is_none());
        let pat = p("[13-5]0");
        for ok in ["10", "30", "40", "50"] {
            assert!(pat.matches(ok).is_some(), "{ok}");
        }
        for no in ["20", "60", "00"] {
            assert!(pat.matches(no).is_none(), "{no}");
        }
        assert!(p("[7]").matches("7").is_some());
        assert!(p("[5-5]").matches("5").is_some());
    }

    #[test]
    fn bang_needs_at_least_one_digit() {
        let pat = p("9.!");
        assert!(pat.matches("9").is_none());
        assert!(pat.matches("91").is_some());
        assert!(pat.matches("9123456789012345678901234567890").is_some());
        assert!(pat.matches("91*").is_none(), "! is digits only");
        assert!(pat.matches("9+1").is_none());
        let any = p("!");
        assert!(any.matches("").is_none());
        assert!(any.matches("7").is_some());
        assert!(any.matches("alice").is_none());
    }

    #[test]
    fn literals_star_hash_plus() {
        let pat = p("*72!");
        assert!(pat.matches("*721000").is_some());
        assert!(pat.matches("#721000").is_none());
        assert!(p("#").matches("#").is_some());
        let e164 = p("+1[2-9]XXXXXXXXX");
        assert!(e164.matches("+12025550100").is_some());
        assert!(e164.matches("12025550100").is_none());
        assert!(e164.matches("+11025550100").is_none());
        assert!(p("+!").matches("+442071234567").is_some());
        assert!(p("+!").matches("+").is_none());
    }

    #[test]
    fn parse_errors() {
        use PatternError::*;
        let e = |s: &str| RoutePattern::parse(s).unwrap_err();
        assert_eq!(e(""), Empty);
        assert_eq!(
            e("[9-2]"),
            BadRange {
                range: "9-2".into(),
                pos: 1
            }
        );
        assert!(matches!(e("[2-]"), BadRange { .. }));
        assert!(matches!(e("[-2]"), BadRange { .. }));
        assert_eq!(e("9[2-9"), UnclosedBracket { pos: 1 });
        assert_eq!(e("9[2[3]]"), UnclosedBracket { pos: 1 });
        assert_eq!(e("92]"), UnopenedBracket { pos: 2 });
        assert_eq!(e("9[]"), EmptySet { pos: 1 });
        assert_eq!(e("9!1"), BangNotLast { pos: 1 });
        assert_eq!(e("9!!"), BangNotLast { pos: 1 });
        assert_eq!(e("!."), BangNotLast { pos: 0 });
        assert_eq!(e("9.1.!"), MultipleDots { pos: 3 });
        assert_eq!(e("9."), DotAtEnd);
        assert_eq!(e("."), DotAtEnd);
        assert_eq!(e("9a!"), InvalidChar { ch: 'a', pos: 1 });
        assert_eq!(e("1xxx"), InvalidChar { ch: 'x', pos: 1 });
        assert_eq!(e("9 1"), InvalidChar { ch: ' ', pos: 1 });
        assert_eq!(e("9é"), InvalidChar { ch: 'é', pos: 1 });
        assert_eq!(e("[1X]"), InvalidChar { ch: 'X', pos: 2 });
        assert_eq!(e("1+2"), PlusNotLeading { pos: 1 });
        assert_eq!(e("555-1234"), InvalidChar { ch: '-', pos: 3 });
        assert!(RoutePattern::parse(&"X".repeat(MAX_POSITIONS)).is_ok());
        assert_eq!(e(&"X".repeat(MAX_POSITIONS + 1)), TooLong);
        // errors read well
        assert_eq!(
            e("[9-2]").to_string(),
            "bad range \"9-2\" at position 1: ranges go from a lower to a higher digit, e.g. [2-9]"
        );
    }

    #[test]
    fn most_specific_wins() {
        let dp = plan(&[("!", "any"), ("1!", "one"), ("1XXX", "ext"), ("1000", "op")]);
        let g = |d: &str| dp.analyse(d).map(|m| m.gateway_group);
        assert_eq!(g("1000").as_deref(), Some("op"));
        assert_eq!(g("1234").as_deref(), Some("ext"));
        assert_eq!(g("15").as_deref(), Some("one"));
        assert_eq!(g("12345").as_deref(), Some("one"));
        assert_eq!(g("7").as_deref(), Some("any"));
        assert_eq!(g("*7"), None);
        assert_eq!(dp.analyse("1234").unwrap().route_index, 2);
    }

    #[test]
    fn specificity_order() {
        let s = |x: &str| p(x).specificity();
        // finite beats open-ended, fewer strings beat more
        assert!(s("1XXX") < s("1!"));
        assert!(s("XXXXXXXXXX") < s("9!"));
        assert!(s("1[2-4]XX") < s("1XXX"));
        assert!(s("1000") < s("1[2-4]XX"));
        // with '!': fewer strings of the same length
        assert!(s("12!") < s("1!"));
        assert!(s("95!") < s("9XXX!"));
        // equal density: the longer fixed part is a subset
        assert!(s("1X!") < s("1!"));
        // equal count: more literal positions
        assert!(s("1XX") < s("[0-1][0-4]X"));
        // the '.' does not change what matches
        assert_eq!(s("9.!"), s("9!"));
        // config order breaks full ties
        let dp = plan(&[("1X", "first"), ("X1", "second")]);
        assert_eq!(dp.analyse("11").unwrap().gateway_group, "first");
        let dp = plan(&[("X1", "first"), ("1X", "second")]);
        assert_eq!(dp.analyse("11").unwrap().gateway_group, "first");
    }

    #[test]
    fn open_pattern_beats_wider_open_pattern_regardless_of_order() {
        let dp = plan(&[("1!", "wide"), ("1X!", "narrow"), ("!", "all")]);
        assert_eq!(dp.analyse("123").unwrap().gateway_group, "narrow");
        assert_eq!(dp.analyse("12").unwrap().gateway_group, "wide");
        assert_eq!(dp.analyse("2").unwrap().gateway_group, "all");
    }

    #[test]
    fn translations_strip_and_prefix() {
        let dp = DialPlan::new(vec![
            // national: 9, then 0 + 10 digits → E.164 +1…
            route("9.0[2-9]XXXXXXXXX", "pstn", 1, "+1"),
            // international: 9 011 … → +…
            route("9.011!", "intl", 3, "+"),
            // site code: 8 + 2-digit site + extension → extension on that site's trunk
            route("8XX.XXXX", "sites", 0, ""),
            // emergency: replace the whole number
            route("911", "emergency", 3, "+12025550911"),
            // add a prefix only
            route("5XXX", "legacy", 0, "*55"),
        ])
        .unwrap();
        let n = |d: &str| dp.analyse(d).map(|m| (m.gateway_group, m.number));
        assert_eq!(
            n("902025550100"),
            Some(("pstn".into(), "+12025550100".into()))
        );
        assert_eq!(
            n("9011442071234567"),
            Some(("intl".into(), "+442071234567".into()))
        );
        assert_eq!(n("8421234"), Some(("sites".into(), "1234".into())));
        assert_eq!(n("911"), Some(("emergency".into(), "+12025550911".into())));
        assert_eq!(n("5123"), Some(("legacy".into(), "*555123".into())));
        assert_eq!(n("901025550100"), None);
    }

    #[test]
    fn e164_patterns() {
        let dp = plan(&[("+1!", "nanp"), ("+44!", "uk"), ("+!", "intl")]);
        let g = |d: &str| dp.analyse(d).map(|m| (m.gateway_group, m.number));
        assert_eq!(
            g("+12025550100"),
            Some(("nanp".into(), "+12025550100".into()))
        );
        assert_eq!(
            g("+442071234567"),
            Some(("uk".into(), "+442071234567".into()))
        );
        assert_eq!(
            g("+33142685300"),
            Some(("intl".into(), "+33142685300".into()))
        );
        assert_eq!(g("12025550100"), None);
    }

    #[test]
    fn dial_plan_validation() {
        let e = |r: Vec<RouteConfig>| DialPlan::new(r).unwrap_err();
        let err = e(vec![
            route("9.!", "pstn", 0, ""),
            route("[9-2]", "x", 0, ""),
        ]);
        assert_eq!(err.key(), "routes[1].pattern");
        assert!(err.reason.contains("[9-2]"), "{err}");
        assert!(err.to_string().starts_with("routes[1].pattern: "), "{err}");
        assert_eq!(
            e(vec![route("9!", "", 0, "")]).key(),
            "routes[0].gateway_group"
        );
        assert_eq!(e(vec![route("9!", "g", 0, "9a")]).key(), "routes[0].prefix");
        assert_eq!(e(vec![route("9!", "g", 0, "1+")]).key(), "routes[0].prefix");
        assert!(DialPlan::new(vec![route("9!", "g", 0, "+*#0")]).is_ok());
        // strip may not eat every digit of the shortest match
        assert_eq!(e(vec![route("9.!", "g", 1, "")]).key(), "routes[0].strip");
        assert_eq!(e(vec![route("9.XX", "g", 3, "0")]).key(), "routes[0].strip");
        assert!(DialPlan::new(vec![route("9.XX", "g", 2, "0")]).is_ok());
        assert!(DialPlan::new(vec![route("9.XX!", "g", 2, "")]).is_ok());
        // a route that can never be chosen
        let err = e(vec![route("9.!", "a", 0, ""), route("9!", "b", 0, "")]);
        assert_eq!(err.key(), "routes[1].pattern");
        assert!(err.reason.contains("routes[0]"), "{err}");
        let err = e(vec![route("[0-9]", "a", 0, ""), route("X", "b", 0, "")]);
        assert_eq!(err.key(), "routes[1].pattern");
        assert!(DialPlan::new(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn dialed_number_of_the_three_uri_forms() {
        assert_eq!(
            dialed_number(&uri("sip:1000@example.com")).as_deref(),
            Some("1000")
        );
        assert_eq!(
            dialed_number(&uri("sip:+12025550100@example.com;user=phone")).as_deref(),
            Some("+12025550100")
        );
        assert_eq!(
            dialed_number(&uri("tel:+1-202-555-0100")).as_deref(),
            Some("+12025550100")
        );
        // tel parameters are not part of the number
        assert_eq!(
            dialed_number(&uri("tel:555-0100;phone-context=example.com")).as_deref(),
            Some("5550100")
        );
        // user=phone: separators and the number's own parameters go
        assert_eq!(
            dialed_number(&uri(
                "sips:+1-(202)-555.0100;isub=12@example.com;user=phone"
            ))
            .as_deref(),
            Some("+12025550100")
        );
        // looks like a number without user=phone
        assert_eq!(
            dialed_number(&uri("sip:555-1234@example.com")).as_deref(),
            Some("5551234")
        );
        // escaped user part
        assert_eq!(
            dialed_number(&uri("sip:%2B44%20@example.com")).as_deref(),
            Some("+44 ")
        );
        assert_eq!(
            dialed_number(&uri("sip:%2A72@example.com")).as_deref(),
            Some("*72")
        );
        // names are returned unchanged (they match no pattern)
        assert_eq!(
            dialed_number(&uri("sip:alice.smith@example.com")).as_deref(),
            Some("alice.smith")
        );
        assert_eq!(dialed_number(&uri("sip:example.com")), None);
        assert_eq!(dialed_number(&uri("mailto:a@example.com")), None);
    }

    #[test]
    fn resolve_order() {
        let dp = DialPlan::new(vec![
            route("9.!", "pstn", 0, ""),
            route("+!", "e164", 0, ""),
            route("2XXX", "other-pbx", 0, ""),
        ])
        .unwrap();
        let local = |aor: &str| aor == "sip:1000@example.com" || aor == "sip:2000@example.com";
        // a local user wins over a pattern that matches its number
        assert_eq!(
            dp.resolve(&uri("sip:2000@Example.COM:5060;transport=tcp"), local),
            Destination::Local {
                aor: "sip:2000@example.com".into()
            }
        );
        assert_eq!(
            dp.resolve(&uri("sips:1000@example.com"), local),
            Destination::Local {
                aor: "sip:1000@example.com".into()
            }
        );
        assert_eq!(
            dp.resolve(&uri("sip:2001@example.com"), local),
            Destination::Gateway(RouteMatch {
                route_index: 2,
                gateway_group: "other-pbx".into(),
                number: "2001".into()
            })
        );
        assert_eq!(
            dp.resolve(&uri("sip:95551234@example.com"), local),
            Destination::Gateway(RouteMatch {
                route_index: 0,
                gateway_group: "pstn".into(),
                number: "5551234".into()
            })
        );
        assert_eq!(
            dp.resolve(&uri("sip:+12025550100@example.com;user=phone"), local),
            Destination::Gateway(RouteMatch {
                route_index: 1,
                gateway_group: "e164".into(),
                number: "+12025550100".into()
            })
        );
        assert_eq!(
            dp.resolve(&uri("tel:+1-202-555-0100"), |_| true),
            Destination::Gateway(RouteMatch {
                route_index: 1,
                gateway_group: "e164".into(),
                number: "+12025550100".into()
            })
        );
        assert_eq!(
            dp.resolve(&uri("sip:3000@example.com"), local),
            Destination::NotFound
        );
        assert_eq!(
            dp.resolve(&uri("sip:carol@example.com"), local),
            Destination::NotFound
        );
        assert_eq!(
            dp.resolve(&uri("sip:example.com"), |_| true),
            Destination::NotFound
        );
        // no patterns: only local users resolve
        let empty = DialPlan::default();
        assert_eq!(
            empty.resolve(&uri("sip:95551234@example.com"), local),
            Destination::NotFound
        );
        assert_eq!(
            empty.resolve(&uri("sip:1000@example.com"), local),
            Destination::Local {
                aor: "sip:1000@example.com".into()
            }
        );
    }
}
