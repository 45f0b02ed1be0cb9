//! Seed 002 FIG. 6: which of the three priorities a REGISTER gets. Pure: the
//! facts come in as a plain struct (the node extracts them from the message), the
//! verdict of the token table is asked for, and nothing here reads a clock or
//! parses SIP.

use super::tokens::{ImplicitCheck, TokenCheck, TokenTable};
use super::RegistrationClass;
use std::collections::HashSet;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClassifyError {
    #[error("`{0}` is not a network (expected an address or address/prefix)")]
    BadNetwork(String),
}

/// An IPv4 or IPv6 network in CIDR notation (`10.1.0.0/16`, `2001:db8::/32`);
/// a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 phone seen through a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u32::from(net) as u128,
                u32::from(ip) as u128,
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

impl FromStr for IpNetwork {
    type Err = ClassifyError;

    fn from_str(s: &str) -> Result<IpNetwork, ClassifyError> {
        let bad = || ClassifyError::BadNetwork(s.to_string());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNetwork { addr, prefix })
    }
}

/// What makes a REGISTER a priority registration (seed 002 FIG. 6 step 122):
/// configured devices ("gateway devices 16 may be granted priority in
/// registration since they are shared resources"), by AOR or by source network,
/// and requests that "include tags … specifying a high priority", here a
/// `Resource-Priority` in a configured namespace (RFC 4412).
#[derive(Debug, Clone, Default)]
pub struct PriorityRules {
    /// AORs as the registrar names them (the caller normalises).
    pub aors: HashSet<String>,
    pub networks: Vec<IpNetwork>,
    /// Resource-Priority namespaces, lowercase (`ets`, `wps`, `dsn`, …).
    pub namespaces: HashSet<String>,
}

impl PriorityRules {
    /// Seed 002 FIG. 6 step 122: a configured device, a source in a priority
    /// network, or a `Resource-Priority` in a configured namespace.
    pub fn is_priority(&self, aor: &str, source: IpAddr, resource_priority: Option<&str>) -> bool {
        self.aors.contains(aor)
            || self.networks.iter().any(|n| n.contains(source))
            || resource_priority.is_some_and(|rp| self.names_namespace(rp))
    }

    fn names_namespace(&self, resource_priority: &str) -> bool {
        // RFC 4412 §3.1: Resource-Priority = r-value *(COMMA r-value),
        // r-value = namespace "." r-priority; namespaces compare
        // case-insensitively.
        resource_priority.split(',').any(|r| {
            r.trim().split_once('.').is_some_and(|(ns, prio)| {
                !prio.trim().is_empty() && self.namespaces.contains(&ns.trim().to_ascii_lowercase())
            })
        })
    }
}

/// What the classifier needs to know about one REGISTER.
#[derive(Debug, Clone, Copy)]
pub struct RegisterFacts<'a> {
    pub aor: &'a str,
    pub source: IpAddr,
    /// The `Resource-Priority` header value, if any.
    pub resource_priority: Option<&'a str>,
    /// The token the request carries, if any.
    pub token: Option<&'a str>,
    /// `+sip.instance` of the contact (RFC 5626), else the Call-ID: what tells
    /// one phone of an AOR from another across retries.
    pub instance: &'a str,
    /// A binding of this AOR and instance already exists on this node.
    pub binding_exists: bool,
}

impl RegisterFacts<'_> {
    /// The implicit token's key: AOR and instance.
    pub fn implicit_key(&self) -> String {
        format!("{}\u{0}{}", self.aor, self.instance)
    }
}

/// Why a request got its class; the front and `GET /admission` use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    PriorityDevice,
    PriorityNetwork,
    ResourcePriority,
    /// A valid, unexpired explicit token (FIG. 6 step 132).
    Token,
    /// A retry inside the window of its implicit token.
    ImplicitToken,
    /// A refresh of a binding this node holds: never refused.
    Refresh,
    /// An initial registration (step 136). `token`: what was wrong with the
    /// token it carried, if it carried one (invalid or expired tokens fall back
    /// to third priority, never dropped). `early`: it came before its implicit
    /// token's window, which opens after `early`.
    Initial {
        token: Option<TokenCheck>,
        early: Option<Duration>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub class: RegistrationClass,
    pub basis: Basis,
}

/// Seed 002 FIG. 6, steps 122 → 126–132 → 136, in that order.
pub fn classify(
    rules: &PriorityRules,
    tokens: &mut TokenTable,
    now: Instant,
    facts: &RegisterFacts<'_>,
) -> Classification {
    use RegistrationClass::*;
    let is = |class, basis| Classification { class, basis };
    // step 122
    if rules.aors.contains(facts.aor) {
        return is(Priority, Basis::PriorityDevice);
    }
    if rules.networks.iter().any(|n| n.contains(facts.source)) {
        return is(Priority, Basis::PriorityNetwork);
    }
    if facts
        .resource_priority
        .is_some_and(|rp| rules.names_namespace(rp))
    {
        return is(Priority, Basis::ResourcePriority);
    }
    // steps 126–130
    let token = facts.token.map(|t| tokens.check(now, t.trim(), facts.aor));
    if token == Some(TokenCheck::Valid) {
        return is(TokenHolder, Basis::Token);
    }
    // A refresh keeps a registered phone registered: refusing it would turn a
    // working phone into one more initial registration later.
    if facts.binding_exists {
        return is(TokenHolder, Basis::Refresh);
    }
    let early = match tokens.check_implicit(now, &facts.implicit_key()) {
        ImplicitCheck::Inside => return is(TokenHolder, Basis::ImplicitToken),
        ImplicitCheck::Early { remaining } => Some(remaining),
        ImplicitCheck::None | ImplicitCheck::Late => None,
    };
    // step 136: everything else, invalid and expired tokens included
    is(Initial, Basis::Initial { token, early })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rules() -> PriorityRules {
        PriorityRules {
            aors: ["sip:gw1@example.com".to_string()].into(),
            networks: vec![
                "10.9.0.0/16".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            namespaces: ["ets".to_string()].into(),
        }
    }

    fn facts(aor: &str) -> RegisterFacts<'_> {
        RegisterFacts {
            aor,
            source: "192.0.2.10".parse().unwrap(),
            resource_priority: None,
            token: None,
            instance: "urn:uuid:1",
            binding_exists: false,
        }
    }

    fn table() -> TokenTable {
        TokenTable::new(10, 10, StdRng::seed_from_u64(2))
    }

    fn initial(token: Option<TokenCheck>, early: Option<Duration>) -> Classification {
        Classification {
            class: RegistrationClass::Initial,
            basis: Basis::Initial { token, early },
        }
    }

    fn class_of(basis: Basis) -> Classification {
        let class = match basis {
            Basis::PriorityDevice | Basis::PriorityNetwork | Basis::ResourcePriority => {
                RegistrationClass::Priority
            }
            Basis::Token | Basis::ImplicitToken | Basis::Refresh => RegistrationClass::TokenHolder,
            Basis::Initial { .. } => RegistrationClass::Initial,
        };
        Classification { class, basis }
    }

    #[test]
    fn networks_parse_and_match_by_prefix() {
        let n: IpNetwork = "10.9.0.0/16".parse().unwrap();
        assert!(n.contains("10.9.255.1".parse().unwrap()));
        assert!(!n.contains("10.10.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.9.0.7".parse().unwrap()), "v4-mapped");
        let one: IpNetwork = "192.0.2.1".parse().unwrap();
        assert!(one.contains("192.0.2.1".parse().unwrap()));
        assert!(!one.contains("192.0.2.2".parse().unwrap()));
        let all: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.5".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(
            "10.0.0.0/33".parse::<IpNetwork>(),
            Err(ClassifyError::BadNetwork("10.0.0.0/33".into()))
        );
        assert!("gateway".parse::<IpNetwork>().is_err());
    }

    #[test]
    fn a_configured_gateway_is_priority_by_aor_or_by_source_network() {
        let t0 = Instant::now();
        let (r, mut t) = (rules(), table());
        let gw = facts("sip:gw1@example.com");
        assert_eq!(
            classify(&r, &mut t, t0, &gw),
            class_of(Basis::PriorityDevice)
        );
        let mut by_net = facts("sip:gw2@example.com");
        by_net.source = "10.9.3.4".parse().unwrap();
        assert_eq!(
            classify(&r, &mut t, t0, &by_net),
            class_of(Basis::PriorityNetwork)
        );
        by_net.source = "2001:db8:1::5".parse().unwrap();
        assert_eq!(
            classify(&r, &mut t, t0, &by_net),
            class_of(Basis::PriorityNetwork)
        );
        by_net.source = "10.8.3.4".parse().unwrap();
        assert_eq!(classify(&r, &mut t, t0, &by_net), initial(None, None));
    }

    #[test]
    fn resource_priority_counts_only_in_a_configured_namespace() {
        let t0 = Instant::now();
        let (r, mut t) = (rules(), table());
        let mut f = facts("sip:a@example.com");
        f.resource_priority = Some("ETS.2");
        assert_eq!(
            classify(&r, &mut t, t0, &f),
            class_of(Basis::ResourcePriority)
        );
        f.resource_priority = Some("dsn.flash, ets.0");
        assert_eq!(
            classify(&r, &mut t, t0, &f),
            class_of(Basis::ResourcePriority)
        );
        f.resource_priority = Some("wps.1");
        assert_eq!(classify(&r, &mut t, t0, &f), initial(None, None));
        f.resource_priority = Some("ets");
        assert_eq!(
            classify(&r, &mut t, t0, &f),
            initial(None, None),
            "no r-priority"
        );
    }

    #[test]
    fn a_valid_token_is_token_priority_and_expired_or_forged_ones_fall_back_to_initial() {
        let t0 = Instant::now();
        let (r, mut t) = (rules(), table());
        let tok = t
            .grant(t0, "sip:a@example.com", Duration::from_secs(30))
            .unwrap();
        let mut f = facts("sip:a@example.com");
        f.token = Some(tok.as_str());
        assert_eq!(classify(&r, &mut t, t0, &f), class_of(Basis::Token));
        let late = t0 + Duration::from_secs(30);
        assert_eq!(
            classify(&r, &mut t, late, &f),
            initial(Some(TokenCheck::Expired), None)
        );
        f.token = Some("ffffffffffffffffffffffffffffffff");
        assert_eq!(
            classify(&r, &mut t, t0, &f),
            initial(Some(TokenCheck::Unknown), None)
        );
        let mut other = facts("sip:b@example.com");
        other.token = Some(tok.as_str());
        assert_eq!(
            classify(&r, &mut t, t0, &other),
            initial(Some(TokenCheck::WrongDevice), None)
        );
    }

    #[test]
    fn an_implicit_token_counts_only_inside_its_window() {
        let t0 = Instant::now();
        let (r, mut t) = (rules(), table());
        let f = facts("sip:a@example.com");
        let secs = Duration::from_secs;
        t.record_implicit(t0, &f.implicit_key(), secs(10), secs(20));
        assert_eq!(
            classify(&r, &mut t, t0 + secs(4), &f),
            initial(None, Some(secs(6)))
        );
        assert_eq!(
            classify(&r, &mut t, t0 + secs(10), &f),
            class_of(Basis::ImplicitToken)
        );
        assert_eq!(
            classify(&r, &mut t, t0 + secs(29), &f),
            class_of(Basis::ImplicitToken)
        );
        assert_eq!(classify(&r, &mut t, t0 + secs(30), &f), initial(None, None));
        // another instance of the same AOR holds no token
        let mut g = facts("sip:a@example.com");
        g.instance = "urn:uuid:2";
        assert_eq!(classify(&r, &mut t, t0 + secs(10), &g), initial(None, None));
    }

    #[test]
    fn a_refresh_is_token_priority_whatever_token_it_carries() {
        let t0 = Instant::now();
        let (r, mut t) = (rules(), table());
        let mut f = facts("sip:a@example.com");
        f.binding_exists = true;
        assert_eq!(classify(&r, &mut t, t0, &f), class_of(Basis::Refresh));
        f.token = Some("forged");
        assert_eq!(classify(&r, &mut t, t0, &f), class_of(Basis::Refresh));
        // but a gateway's refresh stays priority
        let mut gw = facts("sip:gw1@example.com");
        gw.binding_exists = true;
        assert_eq!(
            classify(&r, &mut t, t0, &gw),
            class_of(Basis::PriorityDevice)
        );
    }
}
